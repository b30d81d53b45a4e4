//! The registrar: keeps registrations written under a live lease, on any backend.
//!
//! A backend implements [`LeaseBackend`]: grant a lease (an etcd lease, a ZooKeeper
//! session, an in-process lease) and keep it alive, write and delete keys under it, and
//! say when it is lost. [`Registrar`] does the rest, the same way for every backend:
//!
//! - one lease per TTL per client, shared by all its registrations (keepalive cost is per
//!   process, not per instance), revoked when its last registration goes;
//! - on a lost lease or a key deleted by someone else: state `Recovering`, a new lease,
//!   every registration written again in batches, then `Registered`; retried with
//!   jittered exponential backoff for as long as any handle lives. A registration whose
//!   own write fails (too large, denied, its id held by another client) backs off on its
//!   own and never holds up the others;
//! - pause, resume, update and deregister, serialized per lease so they never race a
//!   recovery; updates that arrive while a write is in flight are written together
//!   after it, so a registration updated often costs one write per round trip;
//! - an operator's drain marker keeps a registration out of the registry until it is
//!   removed.
//!
//! The pieces: `claims` (which ids this client holds), `group` (the task that owns
//! the registrations of one TTL and its lifecycle commands), `batch` (writing many
//! registrations in one request and answering each alone) and `recovery` (leases,
//! backoff, repairs).

mod batch;
mod claims;
mod entry;
mod group;
mod leftover;
mod recovery;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::{Backoff, Error, Instance, InstanceId, RegisterOptions, Registration, Result, ServiceName};

pub(crate) use claims::Claim;
use claims::Claims;
use group::{Control, Group};

/// A failed write under a lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The lease is gone (expired, revoked, not found, session expired): grant a new one
    /// and write everything again.
    #[error("lease lost: {0}")]
    Lost(Error),
    /// Anything else; retried later on the same lease.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// One instance to write under a lease.
#[derive(Debug)]
pub struct Write<'a> {
    /// The instance to write.
    pub instance: &'a Instance,
    /// The key this registration holds under the current lease, to overwrite in place.
    pub current: Option<&'a str>,
    /// The key it held under an earlier lease, which may still show (a ZooKeeper node of
    /// a session not yet expired). A backend whose keys do not depend on the lease can
    /// ignore it. It is this client's own and never a conflict.
    pub previous: Option<&'a str>,
    /// Orders the writes of one key: a write with a higher `change` carries everything
    /// one with a lower `change` did (updates are cumulative). Increases over the
    /// process's life, also across registrations of the same id, so a backend that finds
    /// a higher one landed (a write resent, a late answer) never writes a lower one over
    /// it, nor removes it.
    pub change: u64,
}

/// The next [`Write::change`]: one counter for the process.
pub(crate) fn next_change() -> u64 {
    static CHANGES: AtomicU64 = AtomicU64::new(1);
    CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The outcome of one write of a batch: the key written, or why this write alone failed.
pub type WriteOutcome = Result<String, Error>;

/// Tells the registrar what happened to a lease after it was granted.
///
/// Each lease gets its own `LeaseEvents`; events from a lease that has since been
/// replaced are ignored, so a backend never needs to know whether its lease is current.
/// Events sent before [`LeaseBackend::put`] returns for new registrations are applied
/// before their `register` calls are answered (so a registration whose drain marker
/// exists is `Drained` when `register` returns).
#[derive(Clone, Debug)]
pub struct LeaseEvents {
    generation: u64,
    tx: mpsc::UnboundedSender<(u64, LeaseEvent)>,
}

#[derive(Debug)]
pub(crate) enum LeaseEvent {
    Lost(String),
    Replace(String),
    KeyDeleted(String),
    Drain {
        service: ServiceName,
        id: InstanceId,
        drained: bool,
    },
    DrainedSet {
        service: ServiceName,
        ids: Vec<InstanceId>,
    },
}

impl LeaseEvents {
    fn send(&self, event: LeaseEvent) {
        let _ = self.tx.send((self.generation, event));
    }

    /// The lease is gone (keepalive answered TTL ≤ 0, stream ended, session expired).
    pub fn lost(&self, reason: impl Into<String>) {
        self.send(LeaseEvent::Lost(reason.into()));
    }

    /// The lease is alive but should be replaced: the registrar writes every
    /// registration under a new lease and then gives this one up
    /// ([`LeaseBackend::give_up`]), so nothing leaves the registry in between. An etcd
    /// backend asks for it when the lease may be revoked by a server defect.
    pub fn replace(&self, reason: impl Into<String>) {
        self.send(LeaseEvent::Replace(reason.into()));
    }

    /// A key is no longer ours, or a key another client held against us is gone:
    /// deleted by someone else, expired, overwritten under another lease, or found with
    /// a value this client did not leave it with (a registry that lost writes). The
    /// registrar writes its registration again: the one that held `key`, or the one
    /// refused with [`Error::Conflict`] naming `key`. Keys it does not know are ignored,
    /// so a backend may report every delete it sees under the services it follows.
    pub fn key_deleted(&self, key: impl Into<String>) {
        self.send(LeaseEvent::KeyDeleted(key.into()));
    }

    /// An operator's drain marker for `service`/`id` appeared (`drained`) or went away.
    /// Backends report it for the services they hold registrations of; the registrar
    /// acts on it for its own registration of that id, if any.
    pub fn drain_changed(&self, service: ServiceName, id: InstanceId, drained: bool) {
        self.send(LeaseEvent::Drain { service, id, drained });
    }

    /// Every drain marker of `service` now: the ids named are drained, every other
    /// registration of the service is not. A backend reports it when it starts
    /// following a service (its first write there under a lease, or
    /// [`LeaseBackend::follow_markers`]) and after any gap in following it, so a marker
    /// added or removed while it was not looking is never missed.
    pub fn drained_set(&self, service: ServiceName, ids: Vec<InstanceId>) {
        self.send(LeaseEvent::DrainedSet { service, ids });
    }

    /// Whether the registrar has gone, so the backend can stop keeping the lease alive.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What a backend provides for the registrar: leases and keys under them.
///
/// Dropping a `Lease` must stop keeping it alive (its keys then expire after the TTL);
/// [`revoke`](LeaseBackend::revoke) removes them at once.
#[async_trait]
pub trait LeaseBackend: Send + Sync + 'static {
    /// A live lease: whatever the backend needs to write under it and keep it alive.
    type Lease: Send + Sync + 'static;

    /// Grants a lease of `ttl` and starts keeping it alive; reports its loss and deleted
    /// keys through `events`. Fails with the registry's address when it cannot be reached
    /// within a bounded time.
    async fn grant(&self, ttl: Duration, events: LeaseEvents) -> Result<Self::Lease>;

    /// Writes the instances under the lease, in as few round trips as the backend can,
    /// and returns, in order, the outcome of each: the key it was written at (the
    /// backend's own full key), or why that one write failed alone (too large for the
    /// backend's request limit, permission denied on its key, the id held by another
    /// live client: [`Error::Conflict`], after which the backend reports
    /// [`key_deleted`](LeaseEvents::key_deleted) of the conflicting key when it goes).
    /// A write that failed alone leaves nothing behind. The outer error fails the whole
    /// batch: the lease is lost, or the registry could not be reached (then nothing of
    /// the batch may be assumed written or not).
    ///
    /// A backend that supports drain markers follows the services it writes to and
    /// reports their markers ([`drained_set`](LeaseEvents::drained_set) when it starts,
    /// before `put` returns; [`drain_changed`](LeaseEvents::drain_changed) after).
    async fn put(&self, lease: &Self::Lease, writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError>;

    /// Deletes keys written under the lease.
    async fn delete(&self, lease: &Self::Lease, keys: &[String]) -> Result<(), LeaseError>;

    /// Revokes the lease, removing its keys at once.
    async fn revoke(&self, lease: Self::Lease) -> Result<()>;

    /// Gives up a lease while its registrations are written again under a new one: it
    /// may still hold them, and keys of a failed batch nobody owns. The default revokes
    /// it now; a backend that can tell when the registrations have moved (etcd) keeps
    /// it until then, so they never leave the registry in between.
    async fn give_up(&self, lease: Self::Lease) {
        if let Err(e) = self.revoke(lease).await {
            tracing::warn!(error = %e, "revoking a given-up lease failed; it expires by itself");
        }
    }

    /// Starts following the drain markers of `services` under `lease`, as `put` does
    /// for the services it writes to: the registrar calls it after a new lease for the
    /// services whose registrations are all drained (nothing of theirs is written, yet
    /// an undrain must reach them). Backends without drain markers keep the default.
    async fn follow_markers(&self, lease: &Self::Lease, services: &[ServiceName]) -> Result<(), LeaseError> {
        let _ = (lease, services);
        Ok(())
    }
}

/// How long dropping the last handle of a registration may block a multi-thread
/// runtime's thread while its key is deleted (or its lease revoked), and how long a
/// `register` of the same id waits for that to finish.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Marks a claim as leaving when a `register` call is dropped before its answer.
struct LeaveOnDrop(Option<Arc<std::sync::atomic::AtomicBool>>);

impl LeaveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        if let Some(leaving) = &self.0 {
            leaving.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Keeps registrations alive on a [`LeaseBackend`]; backends build their
/// [`Registry::register`](crate::Registry::register) on it.
pub struct Registrar<B: LeaseBackend> {
    backend: Arc<B>,
    backoff: Backoff,
    groups: Mutex<HashMap<Duration, mpsc::UnboundedSender<Control>>>,
    next_key: Arc<AtomicU64>,
    claims: Arc<Claims>,
}

impl<B: LeaseBackend> std::fmt::Debug for Registrar<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl<B: LeaseBackend> Registrar<B> {
    /// A registrar over `backend`, recovering with `backoff`.
    pub fn new(backend: Arc<B>, backoff: Backoff) -> Self {
        Registrar {
            backend,
            backoff,
            groups: Mutex::new(HashMap::new()),
            next_key: Arc::new(AtomicU64::new(1)),
            claims: Arc::default(),
        }
    }

    /// The backend this registrar writes through.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Registers `instance` and keeps it registered until the returned handle is dropped
    /// or deregistered. Returns once the instance is written, or with the error that kept
    /// it from being written (nothing is retried in the background then, and nothing is
    /// left in the registry).
    ///
    /// Cancel-safe: dropped before it returns, the id is free again at once, and an
    /// instance written meanwhile is deregistered. An id of this client whose last handle
    /// was just dropped is registered as soon as its deregistration is done.
    pub async fn register(&self, instance: Instance, options: RegisterOptions) -> Result<Registration> {
        options.validate()?;
        let claim = self.claims.claim(&instance, DEREGISTER_TIMEOUT).await?;
        // Dropped before the answer, this call leaves its id to be released as soon as
        // the registrar has undone whatever it wrote.
        let cancelled = LeaveOnDrop(Some(claim.leaving()));
        let (reply, answer) = oneshot::channel();
        self.control(options.ttl)
            .send(Control::Register {
                instance,
                claim,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        let answer = answer.await.unwrap_or(Err(Error::Closed));
        cancelled.disarm();
        answer
    }

    /// Deregisters every registration of this registrar and revokes its leases.
    pub async fn shutdown(&self) {
        let controls: Vec<_> = self.groups.lock().unwrap().values().cloned().collect();
        for control in controls {
            let (done, finished) = oneshot::channel();
            if control.send(Control::Shutdown(done)).is_ok() {
                let _ = finished.await;
            }
        }
    }

    /// The control channel of the group for `ttl`, starting the group if there is none.
    fn control(&self, ttl: Duration) -> mpsc::UnboundedSender<Control> {
        let mut groups = self.groups.lock().unwrap();
        if let Some(group) = groups.get(&ttl).filter(|g| !g.is_closed()) {
            return group.clone();
        }
        let (control, control_rx) = mpsc::unbounded_channel();
        Group::start(
            self.backend.clone(),
            ttl,
            self.backoff,
            self.next_key.clone(),
            control_rx,
        );
        groups.insert(ttl, control.clone());
        control
    }
}

#[cfg(test)]
mod tests;
