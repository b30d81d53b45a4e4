//! The registrar: keeps registrations written under a live lease, on any backend.
//!
//! A backend implements [`LeaseBackend`]: grant a lease (an etcd lease, a ZooKeeper
//! session, an in-process lease) and keep it alive, write and delete keys under it, and
//! say when it is lost. [`Registrar`] does the rest, the same way for every backend:
//!
//! - one lease per TTL per client, shared by all its registrations (keepalive cost is per
//!   process, not per instance), revoked when its last registration goes;
//! - on a lost lease or a key deleted by someone else: state `Recovering`, a new lease,
//!   every registration written again in one batch, then `Registered`; retried with
//!   jittered exponential backoff for as long as any handle lives;
//! - pause, resume, update and deregister, serialized per lease so they never race a
//!   recovery.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::registration::{Command, CommandSender};
use crate::{
    Backoff, Error, Instance, InstanceId, InvalidInput, RegisterOptions, Registration, RegistrationState,
    Result, ServiceName,
};

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
    /// ignore it.
    pub previous: Option<&'a str>,
}

/// The outcome of one write of a batch: the key written, or why this write alone failed.
pub type WriteOutcome = Result<String, Error>;

/// Tells the registrar what happened to a lease after it was granted.
///
/// Each lease gets its own `LeaseEvents`; events from a lease that has since been
/// replaced are ignored, so a backend never needs to know whether its lease is current.
#[derive(Clone, Debug)]
pub struct LeaseEvents {
    generation: u64,
    tx: mpsc::UnboundedSender<(u64, LeaseEvent)>,
}

#[derive(Debug)]
enum LeaseEvent {
    Lost(String),
    KeyDeleted(String),
    Drain {
        service: ServiceName,
        id: InstanceId,
        drained: bool,
    },
}

impl LeaseEvents {
    /// The lease is gone (keepalive answered TTL ≤ 0, stream ended, session expired).
    pub fn lost(&self, reason: impl Into<String>) {
        let _ = self.tx.send((self.generation, LeaseEvent::Lost(reason.into())));
    }

    /// A key written under this lease is no longer ours: deleted by someone else,
    /// expired, or overwritten under another lease. The registrar writes it again.
    pub fn key_deleted(&self, key: impl Into<String>) {
        let _ = self
            .tx
            .send((self.generation, LeaseEvent::KeyDeleted(key.into())));
    }

    /// An operator's drain marker for `service`/`id` appeared (`drained`) or went away.
    /// Backends report it for the services they hold registrations of; the registrar
    /// acts on it for its own registration of that id, if any.
    pub fn drain_changed(&self, service: ServiceName, id: InstanceId, drained: bool) {
        let _ = self
            .tx
            .send((self.generation, LeaseEvent::Drain { service, id, drained }));
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
    /// live client: [`Error::Conflict`]). A write that failed alone leaves nothing
    /// behind. The outer error fails the whole batch: the lease is lost, or the registry
    /// could not be reached (then nothing of the batch may be assumed written or not).
    async fn put(&self, lease: &Self::Lease, writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError>;

    /// Deletes keys written under the lease.
    async fn delete(&self, lease: &Self::Lease, keys: &[String]) -> Result<(), LeaseError>;

    /// Revokes the lease, removing its keys at once.
    async fn revoke(&self, lease: Self::Lease) -> Result<()>;
}

/// The most registrations written in one batch, bounding a batch's latency.
const MAX_BATCH: usize = 4096;

type Taken = Arc<Mutex<HashSet<(ServiceName, InstanceId)>>>;

/// Keeps registrations alive on a [`LeaseBackend`]; backends build their
/// [`Registry::register`](crate::Registry::register) on it.
pub struct Registrar<B: LeaseBackend> {
    backend: Arc<B>,
    backoff: Backoff,
    groups: Mutex<HashMap<Duration, mpsc::UnboundedSender<Control>>>,
    next_key: Arc<AtomicU64>,
    taken: Taken,
}

enum Control {
    Register(Instance, oneshot::Sender<Result<Registration>>),
    Shutdown(oneshot::Sender<()>),
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
            taken: Taken::default(),
        }
    }

    /// The backend this registrar writes through.
    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// Registers `instance` and keeps it registered until the returned handle is dropped
    /// or deregistered. Returns once the instance is written, or with the error that kept
    /// it from being written (nothing is retried in the background then).
    pub async fn register(&self, instance: Instance, options: RegisterOptions) -> Result<Registration> {
        options.validate()?;
        let identity = (instance.service().clone(), instance.id().clone());
        if !self.taken.lock().unwrap().insert(identity.clone()) {
            return Err(InvalidInput::new(
                "instance id",
                instance.id().as_str(),
                format!(
                    "is already registered for service {} by this client",
                    instance.service()
                ),
            )
            .into());
        }
        let (reply, answer) = oneshot::channel();
        let sent = self.control(options.ttl).send(Control::Register(instance, reply));
        let result = match sent {
            Ok(()) => answer.await.unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Closed),
        };
        if result.is_err() {
            self.taken.lock().unwrap().remove(&identity);
        }
        result
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
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let group = Group {
            backend: self.backend.clone(),
            ttl,
            backoff: self.backoff,
            delays: Box::new(self.backoff.delays()),
            lease: None,
            generation: 0,
            entries: HashMap::new(),
            events_tx,
            retry_at: None,
            commands,
            next_key: self.next_key.clone(),
            taken: self.taken.clone(),
        };
        tokio::spawn(group.run(control_rx, commands_rx, events_rx));
        groups.insert(ttl, control.clone());
        control
    }
}

/// One registration as its group keeps it.
struct Entry {
    instance: Instance,
    paused: bool,
    /// An operator's drain marker names it: out of the registry until undrained.
    drained: bool,
    /// Needs writing: new, updated, resumed, or lost with its lease or key.
    dirty: bool,
    /// The key it was last written at, and the lease generation it was written under.
    key: Option<(u64, String)>,
    state: watch::Sender<RegistrationState>,
    shown: watch::Sender<Instance>,
}

impl Entry {
    /// Whether it is kept out of the registry (paused by its owner or drained by an
    /// operator), so neither written nor recovered.
    fn is_out(&self) -> bool {
        self.paused || self.drained
    }

    /// The state of a registration kept out of the registry.
    fn out_state(&self) -> RegistrationState {
        if self.drained {
            RegistrationState::Drained
        } else {
            RegistrationState::Paused
        }
    }

    fn set_state(&self, state: RegistrationState) {
        self.state
            .send_if_modified(|s| std::mem::replace(s, state) != state);
    }
}

/// The registrations of one TTL and their shared lease; owned by one task, so every
/// change to them is serialized.
struct Group<B: LeaseBackend> {
    backend: Arc<B>,
    ttl: Duration,
    backoff: Backoff,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
    lease: Option<B::Lease>,
    /// Counts leases granted; events and keys carry the generation they belong to.
    generation: u64,
    entries: HashMap<u64, Entry>,
    events_tx: mpsc::UnboundedSender<(u64, LeaseEvent)>,
    retry_at: Option<Instant>,
    commands: CommandSender,
    next_key: Arc<AtomicU64>,
    taken: Taken,
}

impl<B: LeaseBackend> Group<B> {
    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut commands: mpsc::UnboundedReceiver<(u64, Command)>,
        mut events: mpsc::UnboundedReceiver<(u64, LeaseEvent)>,
    ) {
        let mut control_open = true;
        while control_open || !self.entries.is_empty() {
            let retry_at = self.retry_at;
            tokio::select! {
                message = control.recv(), if control_open => match message {
                    Some(Control::Register(instance, reply)) => {
                        // Registrations that arrive together are written together: one
                        // batch, as few round trips as the backend needs.
                        let mut batch = vec![(instance, reply)];
                        let mut deferred = None;
                        while batch.len() < MAX_BATCH {
                            match control.try_recv() {
                                Ok(Control::Register(instance, reply)) => batch.push((instance, reply)),
                                Ok(other) => {
                                    deferred = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.register(batch).await;
                        if let Some(Control::Shutdown(done)) = deferred {
                            self.shutdown().await;
                            let _ = done.send(());
                        }
                    }
                    Some(Control::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                    }
                    None => control_open = false,
                },
                Some((key, command)) = commands.recv() => self.command(key, command).await,
                Some((generation, event)) = events.recv() => self.event(generation, event).await,
                () = sleep_until(retry_at), if retry_at.is_some() => self.repair().await,
            }
        }
        if let Err(e) = self.revoke().await {
            tracing::warn!(error = %e, "revoking an idle lease failed; it expires by itself");
        }
    }

    /// Writes a batch of new registrations and answers each caller: all succeed or all
    /// fail together, and on failure nothing is left behind to retry.
    async fn register(&mut self, batch: Vec<(Instance, oneshot::Sender<Result<Registration>>)>) {
        let mut pending = Vec::with_capacity(batch.len());
        for (instance, reply) in batch {
            let key = self.next_key.fetch_add(1, Ordering::Relaxed);
            let (state, state_rx) = watch::channel(RegistrationState::Recovering);
            let (shown, shown_rx) = watch::channel(instance.clone());
            self.entries.insert(
                key,
                Entry {
                    instance,
                    paused: false,
                    drained: false,
                    dirty: true,
                    key: None,
                    state,
                    shown,
                },
            );
            pending.push((key, state_rx, shown_rx, reply));
        }
        let keys: Vec<u64> = pending.iter().map(|(key, ..)| *key).collect();
        let written = match self.ensure_lease().await {
            Ok(()) => self.write(&keys).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(mut failed) => {
                // A write that failed alone fails its caller alone; the backend left
                // nothing of it behind.
                for (key, _) in &failed {
                    self.entries.remove(key);
                }
                if self.entries.is_empty() {
                    let _ = self.revoke().await;
                }
                self.schedule_if_dirty();
                for (key, state_rx, shown_rx, reply) in pending {
                    let answer = match failed.iter().position(|(k, _)| *k == key) {
                        Some(at) => Err(failed.swap_remove(at).1),
                        None => Ok(Registration::new(key, state_rx, shown_rx, self.commands.clone())),
                    };
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                for key in &keys {
                    self.entries.remove(key);
                }
                if self.entries.is_empty() {
                    let _ = self.revoke().await;
                }
                for (.., reply) in pending {
                    let _ = reply.send(Err(e.duplicate()));
                }
            }
        }
    }

    async fn command(&mut self, key: u64, command: Command) {
        match command {
            Command::Pause(reply) => {
                let _ = reply.send(self.pause(key).await);
            }
            Command::Resume(reply) => {
                let _ = reply.send(self.resume(key).await);
            }
            Command::Update(update, reply) => {
                let _ = reply.send(self.update(key, &update).await);
            }
            Command::Deregister(reply) => {
                let result = self.deregister(key).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "deregistration did not reach the registry; the key expires with its lease");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
        }
    }

    async fn event(&mut self, generation: u64, event: LeaseEvent) {
        // A drain marker is about the instance, not the lease: it counts whichever
        // lease reported it, also while no lease is held (a drained registration alone
        // in its group holds none, and its undrain must still reach it).
        if let LeaseEvent::Drain { service, id, drained } = event {
            return self.drain(&service, &id, drained).await;
        }
        if generation != self.generation || self.lease.is_none() {
            return;
        }
        match event {
            LeaseEvent::Lost(reason) => self.lose(&reason),
            LeaseEvent::KeyDeleted(deleted) => {
                let current = Some((generation, deleted));
                if let Some(entry) = self
                    .entries
                    .values_mut()
                    .find(|e| !e.is_out() && e.key == current)
                {
                    tracing::warn!(service = %entry.instance.service(), id = %entry.instance.id(), "registration key deleted by someone else; writing it again");
                    entry.dirty = true;
                    entry.set_state(RegistrationState::Recovering);
                    self.retry_at = Some(Instant::now());
                }
            }
            LeaseEvent::Drain { service, id, drained } => self.drain(&service, &id, drained).await,
        }
    }

    /// An operator drained or undrained `service`/`id`: a drained registration's key is
    /// deleted and not written again; an undrained one is written again (unless its owner
    /// paused it).
    async fn drain(&mut self, service: &ServiceName, id: &InstanceId, drained: bool) {
        let Some(key) = self
            .entries
            .iter()
            .find(|(_, e)| e.instance.service() == service && e.instance.id() == id)
            .map(|(k, _)| *k)
        else {
            return;
        };
        let written = self.current_key(key);
        let entry = self.entries.get_mut(&key).expect("found above");
        if entry.drained == drained {
            return;
        }
        entry.drained = drained;
        if drained {
            tracing::warn!(%service, %id, "drained by an operator; out of the registry until undrained");
            entry.dirty = false;
            entry.key = None;
            entry.set_state(RegistrationState::Drained);
            if let (Some(written), Some(lease)) = (written, &self.lease) {
                match self.backend.delete(lease, &[written]).await {
                    Ok(()) => {}
                    Err(LeaseError::Lost(e)) => self.lose(&e.to_string()),
                    Err(LeaseError::Failed(e)) => {
                        tracing::warn!(%service, %id, error = %e, "deleting a drained registration failed; watchers skip it by its marker")
                    }
                }
            }
        } else if entry.paused {
            entry.set_state(RegistrationState::Paused);
        } else {
            tracing::info!(%service, %id, "undrained by an operator; writing it again");
            entry.dirty = true;
            entry.set_state(RegistrationState::Recovering);
            self.retry_at = Some(Instant::now());
        }
    }

    /// Forgets the lease and puts every live registration into recovery.
    fn lose(&mut self, reason: &str) {
        tracing::warn!(ttl = ?self.ttl, %reason, registrations = self.entries.len(), "lease lost; recovering");
        self.lease = None;
        for entry in self.entries.values_mut().filter(|e| !e.is_out()) {
            entry.dirty = true;
            entry.set_state(RegistrationState::Recovering);
        }
        self.retry_at = Some(Instant::now());
    }

    async fn ensure_lease(&mut self) -> Result<()> {
        if self.lease.is_some() {
            return Ok(());
        }
        let generation = self.generation + 1;
        let events = LeaseEvents {
            generation,
            tx: self.events_tx.clone(),
        };
        let lease = self.backend.grant(self.ttl, events).await?;
        self.lease = Some(lease);
        self.generation = generation;
        for entry in self.entries.values_mut().filter(|e| !e.is_out()) {
            entry.dirty = true;
        }
        Ok(())
    }

    /// Writes the given registrations in one batch. On failure they stay dirty and
    /// `Recovering` (`Conflict` when another client holds the id), and a retry is
    /// scheduled. Returns the registrations whose write failed alone, with why.
    async fn write(&mut self, keys: &[u64]) -> Result<Vec<(u64, Error)>> {
        let Some(lease) = self.lease.as_ref() else {
            return Err(Error::Closed);
        };
        let generation = self.generation;
        let written = {
            let writes: Vec<Write<'_>> = keys
                .iter()
                .filter_map(|k| self.entries.get(k))
                .map(|entry| {
                    let (current, previous) = match &entry.key {
                        Some((g, key)) if *g == generation => (Some(key.as_str()), None),
                        Some((_, key)) => (None, Some(key.as_str())),
                        None => (None, None),
                    };
                    Write {
                        instance: &entry.instance,
                        current,
                        previous,
                    }
                })
                .collect();
            self.backend.put(lease, &writes).await
        };
        let present: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| self.entries.contains_key(k))
            .collect();
        match written {
            Ok(outcomes) => {
                let mut failed = Vec::new();
                for (key, outcome) in present.iter().zip(outcomes) {
                    let entry = self.entries.get_mut(key).expect("present");
                    match outcome {
                        Ok(stored) => {
                            entry.key = Some((generation, stored));
                            entry.dirty = false;
                            entry.set_state(RegistrationState::Registered);
                        }
                        Err(e) => {
                            tracing::warn!(service = %entry.instance.service(), id = %entry.instance.id(), error = %e, "write failed");
                            entry.dirty = true;
                            entry.set_state(if e.is_conflict() {
                                RegistrationState::Conflict
                            } else {
                                RegistrationState::Recovering
                            });
                            failed.push((*key, e));
                        }
                    }
                }
                if failed.is_empty() {
                    self.delays = Box::new(self.backoff.delays());
                } else {
                    self.schedule_retry();
                }
                Ok(failed)
            }
            Err(LeaseError::Lost(e)) => {
                // A lease lost as soon as it is written under: back off, or a registry
                // that keeps losing leases is sent grants in a tight loop.
                self.lose(&e.to_string());
                self.schedule_retry();
                Err(e)
            }
            Err(LeaseError::Failed(e)) => {
                for key in &present {
                    let entry = self.entries.get_mut(key).expect("present");
                    entry.dirty = true;
                    entry.set_state(RegistrationState::Recovering);
                }
                self.schedule_retry();
                Err(e)
            }
        }
    }

    /// One recovery attempt: a lease if there is none, then every dirty registration.
    async fn repair(&mut self) {
        self.retry_at = None;
        if self.entries.values().all(|e| e.is_out() || !e.dirty) {
            return;
        }
        if let Err(e) = self.ensure_lease().await {
            tracing::warn!(error = %e, "cannot grant a lease yet; retrying");
            self.schedule_retry();
            return;
        }
        let dirty: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.is_out() && e.dirty)
            .map(|(k, _)| *k)
            .collect();
        match self.write(&dirty).await {
            Ok(failed) => {
                tracing::info!(
                    registrations = dirty.len() - failed.len(),
                    failed = failed.len(),
                    "registrations written again"
                );
                self.schedule_if_dirty();
            }
            Err(e) => tracing::warn!(error = %e, "writing registrations failed; retrying"),
        }
    }

    fn schedule_retry(&mut self) {
        let delay = self.delays.next().unwrap_or(self.backoff.max);
        self.retry_at = Some(Instant::now() + delay);
    }

    fn schedule_if_dirty(&mut self) {
        if self.retry_at.is_none() && self.entries.values().any(|e| !e.is_out() && e.dirty) {
            self.retry_at = Some(Instant::now());
        }
    }

    async fn pause(&mut self, key: u64) -> Result<()> {
        let entry = self.entry(key)?;
        if entry.paused {
            return Ok(());
        }
        if let Some(written) = self.current_key(key) {
            if let Some(lease) = &self.lease {
                match self.backend.delete(lease, &[written]).await {
                    Ok(()) => {}
                    Err(LeaseError::Lost(e)) => self.lose(&e.to_string()),
                    Err(LeaseError::Failed(e)) => return Err(e),
                }
            }
        }
        let entry = self.entries.get_mut(&key).expect("checked above");
        entry.paused = true;
        entry.dirty = false;
        entry.key = None;
        entry.set_state(entry.out_state());
        Ok(())
    }

    async fn resume(&mut self, key: u64) -> Result<()> {
        let entry = self.entries.get_mut(&key).ok_or(Error::Closed)?;
        if !entry.paused {
            return Ok(());
        }
        entry.paused = false;
        if entry.drained {
            entry.set_state(RegistrationState::Drained);
            return Ok(());
        }
        entry.dirty = true;
        entry.set_state(RegistrationState::Recovering);
        self.write_now(key).await
    }

    async fn update(&mut self, key: u64, update: &crate::InstanceUpdate) -> Result<()> {
        let entry = self.entries.get_mut(&key).ok_or(Error::Closed)?;
        let next = entry.instance.updated(update)?;
        entry.instance = next.clone();
        entry.shown.send_replace(next);
        if entry.is_out() {
            return Ok(());
        }
        entry.dirty = true;
        self.write_now(key).await
    }

    async fn write_now(&mut self, key: u64) -> Result<()> {
        if let Err(e) = self.ensure_lease().await {
            if let Some(entry) = self.entries.get(&key) {
                entry.set_state(RegistrationState::Recovering);
            }
            self.schedule_retry();
            return Err(e);
        }
        let result = self.write(&[key]).await;
        self.schedule_if_dirty();
        match result?.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    async fn deregister(&mut self, key: u64) -> Result<()> {
        let written = self.current_key(key);
        let Some(entry) = self.entries.remove(&key) else {
            return Ok(());
        };
        self.taken
            .lock()
            .unwrap()
            .remove(&(entry.instance.service().clone(), entry.instance.id().clone()));
        entry.set_state(RegistrationState::Deregistered);
        let mut result = Ok(());
        if self.entries.is_empty() {
            // Revoking the lease removes the key with it, in one request.
            result = self.revoke().await;
        } else if let (Some(written), Some(lease)) = (written, &self.lease) {
            result = match self.backend.delete(lease, &[written]).await {
                Ok(()) => Ok(()),
                Err(LeaseError::Lost(e)) => {
                    self.lose(&e.to_string());
                    Ok(())
                }
                Err(LeaseError::Failed(e)) => Err(e),
            };
        }
        result
    }

    async fn shutdown(&mut self) {
        {
            let mut taken = self.taken.lock().unwrap();
            for (_, entry) in self.entries.drain() {
                taken.remove(&(entry.instance.service().clone(), entry.instance.id().clone()));
                entry.set_state(RegistrationState::Deregistered);
            }
        }
        if let Err(e) = self.revoke().await {
            tracing::warn!(error = %e, "revoking the lease at shutdown failed; its keys expire with it");
        }
    }

    async fn revoke(&mut self) -> Result<()> {
        self.retry_at = None;
        match self.lease.take() {
            Some(lease) => {
                self.generation += 1;
                self.backend.revoke(lease).await
            }
            None => Ok(()),
        }
    }

    fn entry(&self, key: u64) -> Result<&Entry> {
        self.entries.get(&key).ok_or(Error::Closed)
    }

    /// The key a registration holds under the current lease, if any.
    fn current_key(&self, key: u64) -> Option<String> {
        let entry = self.entries.get(&key)?;
        match &entry.key {
            Some((g, k)) if *g == self.generation && self.lease.is_some() => Some(k.clone()),
            _ => None,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// Grants leases that, once `broken`, are gone before anything is written under
    /// them, as a registry that keeps losing its leases would.
    #[derive(Default)]
    struct VanishingLeases {
        broken: AtomicBool,
        events: Mutex<Option<LeaseEvents>>,
        grants: Mutex<Vec<Instant>>,
        enough: Mutex<Option<oneshot::Sender<()>>>,
    }

    const GRANTS: usize = 8;

    #[async_trait]
    impl LeaseBackend for VanishingLeases {
        type Lease = ();

        async fn grant(&self, _ttl: Duration, events: LeaseEvents) -> Result<()> {
            *self.events.lock().unwrap() = Some(events);
            let mut grants = self.grants.lock().unwrap();
            grants.push(Instant::now());
            if grants.len() == GRANTS {
                if let Some(enough) = self.enough.lock().unwrap().take() {
                    let _ = enough.send(());
                }
            }
            Ok(())
        }

        async fn put(&self, _: &(), writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(LeaseError::Lost(Error::backend("test://", "lease not found")));
            }
            Ok(writes.iter().map(|w| Ok(w.instance.id().to_string())).collect())
        }

        async fn delete(&self, _: &(), _: &[String]) -> Result<(), LeaseError> {
            Ok(())
        }

        async fn revoke(&self, _: ()) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lost_at_every_write_is_retried_with_backoff() {
        let backend = Arc::new(VanishingLeases::default());
        let (enough, reached) = oneshot::channel();
        *backend.enough.lock().unwrap() = Some(enough);
        let registrar = Registrar::new(backend.clone(), Backoff::default());
        let instance = Instance::builder("echo", "127.0.0.1:1").build().unwrap();
        let registration = registrar
            .register(instance, RegisterOptions::default())
            .await
            .unwrap();

        backend.broken.store(true, Ordering::SeqCst);
        let events = backend.events.lock().unwrap().clone().unwrap();
        events.lost("test");
        tokio::time::timeout(Duration::from_secs(600), reached)
            .await
            .expect("recovery keeps granting leases")
            .unwrap();

        let grants = backend.grants.lock().unwrap().clone();
        let retried_over = grants[GRANTS - 1] - grants[1];
        // Six waits of the default policy, without jitter: 0.1 + 0.2 + ... + 3.2 s.
        assert!(
            retried_over >= Duration::from_millis(6300),
            "{} recovery attempts within {retried_over:?}: no backoff",
            GRANTS - 1
        );
        assert_eq!(registration.state(), RegistrationState::Recovering);
    }
}
