//! The handle an application holds for one registered instance.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

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
    /// With no reply channel when sent by `Drop`.
    Deregister(Option<oneshot::Sender<Result<()>>>),
}

pub(crate) type CommandSender = mpsc::UnboundedSender<(u64, Command)>;

/// A registered instance: its state, and the means to pause, resume, update and
/// deregister it.
///
/// Clones share one registration. When the last clone is dropped the instance is
/// deregistered at once (revoke or delete), never left to expire; call
/// [`deregister`](Registration::deregister) to wait for that and see its result.
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
}

impl Drop for Inner {
    fn drop(&mut self) {
        if *self.state.borrow() != RegistrationState::Deregistered {
            let _ = self.commands.send((self.key, Command::Deregister(None)));
        }
    }
}

impl Registration {
    pub(crate) fn new(
        key: u64,
        state: watch::Receiver<RegistrationState>,
        instance: watch::Receiver<Instance>,
        commands: CommandSender,
    ) -> Self {
        Registration {
            inner: Arc::new(Inner {
                key,
                state,
                instance,
                commands,
            }),
        }
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
        self.request(|reply| Command::Deregister(Some(reply))).await
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
