//! The handle an application holds for one registered instance.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::RuntimeFlavor;
use tokio::sync::{mpsc, oneshot, watch};

use crate::registrar::DEREGISTER_TIMEOUT;

use crate::{Error, Instance, InstanceUpdate, InvalidInput, Result};

/// Where a registration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegistrationState {
    /// The instance is written in the registry and its lease is being kept alive.
    Registered,
    /// The lease or the key was lost (registry restarted, wiped, unreachable, key deleted
    /// by someone else); it is being written again with backoff, for as long as the
    /// handle lives.
    Recovering,
    /// Taken out of the registry on purpose ([`Registration::pause`]), to drain traffic;
    /// [`Registration::resume`] puts it back.
    Paused,
    /// Another live client wrote the same service and instance id over this
    /// registration. This client does not fight it; it writes itself again once the
    /// other's key is gone.
    Conflict,
    /// An operator drained the instance (`leasehold drain`, [`Registry::drain`](crate::Registry::drain)):
    /// it is out of every watcher's set and its owner does not write it back, across
    /// recoveries and registry restarts, until it is undrained.
    Drained,
    /// Removed for good; the handle can no longer be used.
    Deregistered,
}

/// Options for [`Registry::register`](crate::Registry::register).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegisterOptions {
    /// How long the registry keeps the instance after the last keepalive, for when the
    /// process dies without deregistering. At least one second; default 10 s.
    pub ttl: Duration,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        RegisterOptions {
            ttl: Duration::from_secs(10),
        }
    }
}

impl RegisterOptions {
    /// The shortest TTL accepted: etcd leases count whole seconds.
    pub const MIN_TTL: Duration = Duration::from_secs(1);

    /// Options with this TTL.
    pub fn ttl(ttl: Duration) -> Self {
        RegisterOptions { ttl }
    }

    /// Checks the options' rules.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.ttl < Self::MIN_TTL {
            return Err(InvalidInput::new(
                "ttl",
                &format!("{:?}", self.ttl),
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}

/// A request from a handle to the task that keeps its registration.
#[derive(Debug)]
pub(crate) enum Command {
    Pause(oneshot::Sender<Result<()>>),
    Resume(oneshot::Sender<Result<()>>),
    Update(InstanceUpdate, oneshot::Sender<Result<()>>),
    Deregister(Reply),
}

/// Who waits for a deregistration: an async caller, a `Drop` blocking its thread, or
/// nobody.
#[derive(Debug)]
pub(crate) enum Reply {
    Async(oneshot::Sender<Result<()>>),
    Blocking(std::sync::mpsc::SyncSender<Result<()>>),
    None,
}

impl Reply {
    /// Sends the outcome of a deregistration to whoever waits for it.
    pub(crate) fn send(self, result: Result<()>) {
        match self {
            Reply::Async(reply) => {
                let _ = reply.send(result);
            }
            Reply::Blocking(reply) => {
                let _ = reply.try_send(result);
            }
            Reply::None => {}
        }
    }
}

pub(crate) type CommandSender = mpsc::UnboundedSender<(u64, Command)>;

/// A registered instance: its state, and the means to pause, resume, update and
/// deregister it.
///
/// Clones share one registration. When the last clone is dropped the instance is
/// deregistered at once (revoke or delete), never left to expire, and its id is free for
/// a new registration as soon as that is done:
///
/// - in a multi-thread Tokio runtime (`#[tokio::main]`'s default) the drop blocks its
///   thread in place ([`tokio::task::block_in_place`]) until the registry acknowledged
///   the removal, at most [`DEREGISTER_TIMEOUT`], so a program that returns from `main`
///   leaves no key behind;
/// - in a current-thread runtime it cannot wait (the registrar runs on that very
///   thread): the removal is queued and done if the runtime keeps running; a program
///   about to exit should call [`deregister`](Registration::deregister) or
///   [`Registry::shutdown`](crate::Registry::shutdown) and await it;
/// - outside any runtime the removal is queued likewise.
///
/// Call [`deregister`](Registration::deregister) to wait for the removal and see its
/// result.
///
/// ```
/// # async fn demo(registry: &dyn leasehold::Registry) -> leasehold::Result<()> {
/// use leasehold::{Instance, InstanceUpdate, RegisterOptions, RegistrationState};
/// let instance = Instance::builder("echo", "127.0.0.1:7001").build()?;
/// let registration = registry.register(instance, RegisterOptions::default()).await?;
/// assert_eq!(registration.state(), RegistrationState::Registered);
/// registration.pause().await?; // drain
/// registration.update(InstanceUpdate::new().weight(5)).await?;
/// registration.resume().await?;
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Registration {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    key: u64,
    state: watch::Receiver<RegistrationState>,
    instance: watch::Receiver<Instance>,
    commands: CommandSender,
    /// Shared with the registrar's claim of the id: set when this registration goes, so
    /// a new `register` of the id waits for its removal instead of being refused.
    leaving: Arc<AtomicBool>,
    /// Set when the registrar dropped a handle nobody received (a cancelled
    /// `register`); it deregisters that one itself.
    disarmed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.disarmed.load(Ordering::SeqCst) || *self.state.borrow() == RegistrationState::Deregistered {
            return;
        }
        self.leaving.store(true, Ordering::SeqCst);
        let in_multi_thread_runtime = tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
        if !in_multi_thread_runtime {
            let _ = self.commands.send((self.key, Command::Deregister(Reply::None)));
            return;
        }
        let (reply, acknowledged) = std::sync::mpsc::sync_channel(1);
        if self
            .commands
            .send((self.key, Command::Deregister(Reply::Blocking(reply))))
            .is_err()
        {
            return;
        }
        // Another worker takes over this one's tasks meanwhile, so the registrar runs.
        let outcome = tokio::task::block_in_place(|| acknowledged.recv_timeout(DEREGISTER_TIMEOUT));
        match outcome {
            Ok(Ok(())) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "deregistering a dropped registration failed; its key expires with its lease")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                timeout = ?DEREGISTER_TIMEOUT,
                "deregistering a dropped registration is taking too long; it goes on in the background"
            ),
        }
    }
}

impl Registration {
    pub(crate) fn new(
        key: u64,
        state: watch::Receiver<RegistrationState>,
        instance: watch::Receiver<Instance>,
        commands: CommandSender,
        leaving: Arc<AtomicBool>,
    ) -> Self {
        Registration {
            inner: Arc::new(Inner {
                key,
                state,
                instance,
                commands,
                leaving,
                disarmed: AtomicBool::new(false),
            }),
        }
    }

    /// Makes dropping this handle do nothing: the registrar deregisters it itself.
    pub(crate) fn disarm(&self) {
        self.inner.disarmed.store(true, Ordering::SeqCst);
    }

    /// The instance as last written (or to be written, while recovering).
    pub fn instance(&self) -> Instance {
        self.inner.instance.borrow().clone()
    }

    /// The current state.
    pub fn state(&self) -> RegistrationState {
        *self.inner.state.borrow()
    }

    /// A receiver that sees every state change, for logging or health checks.
    pub fn states(&self) -> watch::Receiver<RegistrationState> {
        self.inner.state.clone()
    }

    /// Waits until the registration is in `state`, up to `timeout`. Returns whether it
    /// got there.
    pub async fn wait_for(&self, state: RegistrationState, timeout: Duration) -> bool {
        let mut states = self.states();
        tokio::time::timeout(timeout, states.wait_for(|s| *s == state))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Takes the instance out of the registry but keeps the handle and the lease, so
    /// clients stop sending it new work (drain). State becomes `Paused`.
    pub async fn pause(&self) -> Result<()> {
        self.request(Command::Pause).await
    }

    /// Puts a paused instance back. On a registry that cannot be reached the error is
    /// returned and the registration stays `Recovering`, retried in the background.
    pub async fn resume(&self) -> Result<()> {
        self.request(Command::Resume).await
    }

    /// Changes metadata, weight, zone or version in place: same key, same lease, so
    /// watchers see one `updated` change rather than a removal and an addition.
    pub async fn update(&self, update: InstanceUpdate) -> Result<()> {
        self.request(|reply| Command::Update(update, reply)).await
    }

    /// Removes the instance from the registry now. Other clones of this handle see
    /// `Deregistered`. Deregistering twice is not an error.
    pub async fn deregister(&self) -> Result<()> {
        if self.state() == RegistrationState::Deregistered {
            return Ok(());
        }
        self.inner.leaving.store(true, Ordering::SeqCst);
        self.request(|reply| Command::Deregister(Reply::Async(reply)))
            .await
    }

    async fn request(&self, command: impl FnOnce(oneshot::Sender<Result<()>>) -> Command) -> Result<()> {
        let instance = self.instance();
        let deregistered = || Error::Deregistered {
            service: instance.service().to_string(),
            id: instance.id().to_string(),
        };
        if self.state() == RegistrationState::Deregistered {
            return Err(deregistered());
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send((self.inner.key, command(reply)))
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}
