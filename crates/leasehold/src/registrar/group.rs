//! The task that owns the registrations of one TTL and their shared lease, and carries
//! out what their handles ask: register, pause, resume, update, deregister, and what an
//! operator's drain marker says. Owned by one task, so every change is serialized.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::claims::Claim;
use super::entry::Entry;
use super::leftover::Leftovers;
use super::{LeaseBackend, LeaseError, LeaseEvent};
use crate::registration::{Command, CommandSender};
use crate::{
    Backoff, Error, Instance, InstanceId, InstanceUpdate, Registration, RegistrationState, Result, Retries,
    ServiceName,
};

/// The most commands or registrations taken together into one batch, bounding a
/// batch's latency.
pub(super) const MAX_BATCH: usize = 4096;

/// What the [`Registrar`](super::Registrar) asks of a group.
pub(super) enum Control {
    Register {
        instance: Instance,
        claim: Claim,
        reply: oneshot::Sender<Result<Registration>>,
    },
    Shutdown(oneshot::Sender<()>),
}

type EventReceiver = mpsc::UnboundedReceiver<(u64, LeaseEvent)>;

/// The registrations of one TTL and their shared lease.
pub(super) struct Group<B: LeaseBackend> {
    pub(super) backend: Arc<B>,
    pub(super) ttl: Duration,
    pub(super) backoff: Backoff,
    pub(super) lease: Option<B::Lease>,
    /// Counts leases granted; events and keys carry the generation they belong to.
    pub(super) generation: u64,
    /// Backoff of lease grants (a registry that is down, or loses every lease).
    pub(super) lease_retries: Retries,
    /// No grant before this.
    pub(super) lease_retry_at: Option<Instant>,
    pub(super) entries: HashMap<u64, Entry>,
    /// Dirty registrations by when their next write is due.
    pub(super) due: BTreeSet<(Instant, u64)>,
    pub(super) events_tx: mpsc::UnboundedSender<(u64, LeaseEvent)>,
    /// When the current recovery began, for `leasehold_recovery_duration_seconds`.
    pub(super) recovering_since: Option<Instant>,
    /// Keys of deregistered registrations whose delete is still to land.
    pub(super) leftovers: Leftovers,
    commands: CommandSender,
    next_key: Arc<AtomicU64>,
}

/// A register call waiting for its answer: its registration's key, or why it failed.
type Answer = (u64, oneshot::Sender<Result<Registration>>, Result<()>);

impl<B: LeaseBackend> Group<B> {
    /// Starts the task of a new group.
    pub(super) fn start(
        backend: Arc<B>,
        ttl: Duration,
        backoff: Backoff,
        next_key: Arc<AtomicU64>,
        control: mpsc::UnboundedReceiver<Control>,
    ) {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let group = Group {
            backend,
            ttl,
            backoff,
            lease: None,
            generation: 0,
            lease_retries: Retries::default(),
            lease_retry_at: None,
            entries: HashMap::new(),
            due: BTreeSet::new(),
            events_tx,
            recovering_since: None,
            leftovers: Leftovers::default(),
            commands,
            next_key,
        };
        tokio::spawn(group.run(control, commands_rx, events_rx));
    }

    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut commands: mpsc::UnboundedReceiver<(u64, Command)>,
        mut events: EventReceiver,
    ) {
        let mut control_open = true;
        while control_open || !self.entries.is_empty() {
            let wake = self.next_wakeup();
            tokio::select! {
                message = control.recv(), if control_open => match message {
                    Some(Control::Register { instance, claim, reply }) => {
                        // Registrations that arrive together are written together: one
                        // batch, as few round trips as the backend needs.
                        let mut batch = vec![(instance, claim, reply)];
                        let mut shutdown = None;
                        while batch.len() < MAX_BATCH {
                            match control.try_recv() {
                                Ok(Control::Register { instance, claim, reply }) => batch.push((instance, claim, reply)),
                                Ok(Control::Shutdown(done)) => {
                                    shutdown = Some(done);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        let answers = self.register(batch).await;
                        // What the backend said while writing (a drain marker) shows in
                        // the state the callers get.
                        while let Ok((generation, event)) = events.try_recv() {
                            self.event(generation, event).await;
                        }
                        self.answer(answers).await;
                        if let Some(done) = shutdown {
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
                Some(first) = commands.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match commands.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    self.commands(batch).await;
                }
                Some((generation, event)) = events.recv() => {
                    self.event(generation, event).await;
                }
                () = sleep_until(wake), if wake.is_some() => {
                    self.repair().await;
                }
            }
        }
        if let Err(e) = self.revoke().await {
            tracing::warn!(error = %e, "revoking an idle lease failed; it expires by itself");
        }
    }

    /// Writes a batch of new registrations. A write that failed alone fails its caller
    /// alone; the backend left nothing of it behind.
    #[tracing::instrument(name = "register", level = "info", skip_all, fields(registrations = batch.len(), ttl = ?self.ttl))]
    async fn register(
        &mut self,
        batch: Vec<(Instance, Claim, oneshot::Sender<Result<Registration>>)>,
    ) -> Vec<Answer> {
        let mut pending = Vec::with_capacity(batch.len());
        for (instance, claim, reply) in batch {
            let key = self.next_key.fetch_add(1, Ordering::Relaxed);
            self.entries
                .insert(key, Entry::new(instance, claim, self.backoff));
            pending.push((key, reply));
        }
        let keys: Vec<u64> = pending.iter().map(|(key, _)| *key).collect();
        let written = match self.ensure_lease().await {
            Ok(()) => self.write(&keys).await,
            Err(e) => {
                self.lease_retry_at = Some(Instant::now() + self.next_lease_delay());
                Err(e)
            }
        };
        let answers: Vec<Answer> = match written {
            Ok(failed) => {
                let mut failed: HashMap<u64, Error> = failed.into_iter().collect();
                pending
                    .into_iter()
                    .map(|(key, reply)| match failed.remove(&key) {
                        Some(e) => (key, reply, Err(e)),
                        None => (key, reply, Ok(())),
                    })
                    .collect()
            }
            Err(e) => {
                // Nothing of the batch may be assumed written or not. A lease that holds
                // only this batch is revoked below; one shared with live registrations is
                // given up (revoked in the background, its registrations written again
                // under a new one), so nothing the callers were told failed stays behind.
                if keys.len() < self.entries.len() && self.lease.is_some() {
                    self.abandon_lease("a batch of new registrations failed with no answer");
                }
                pending
                    .into_iter()
                    .map(|(key, reply)| (key, reply, Err(e.duplicate())))
                    .collect()
            }
        };
        for (key, _, outcome) in &answers {
            if outcome.is_err() {
                self.remove(*key);
            }
        }
        if self.entries.is_empty() {
            let _ = self.revoke().await;
        }
        answers
    }

    /// Answers register calls. A caller that gave up (its `register` future was
    /// dropped) leaves nothing behind: its registration is deregistered at once.
    async fn answer(&mut self, answers: Vec<Answer>) {
        for (key, reply, outcome) in answers {
            let answer = match outcome {
                Err(e) => Err(e),
                Ok(()) => match self.entries.get(&key) {
                    Some(entry) => Ok(Registration::new(
                        key,
                        entry.state.subscribe(),
                        entry.shown.subscribe(),
                        self.commands.clone(),
                        entry._claim.leaving(),
                    )),
                    None => Err(Error::Closed),
                },
            };
            if let Err(Ok(abandoned)) = reply.send(answer) {
                abandoned.disarm();
                tracing::debug!(key, "register was cancelled; deregistering what it wrote");
                if let Err(e) = self.deregister(key).await {
                    tracing::warn!(error = %e, "deregistering a cancelled registration failed; it expires with its lease");
                }
            }
        }
    }

    /// Carries out handles' commands in order; updates and resumes that arrive together
    /// are written in one batch.
    async fn commands(&mut self, batch: Vec<(u64, Command)>) {
        let mut waiting = Vec::new();
        for (key, command) in batch {
            match command {
                Command::Update(update, reply) => match self.apply_update(key, &update) {
                    Ok(true) => waiting.push((key, reply)),
                    Ok(false) => {
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Resume(reply) => match self.apply_resume(key) {
                    Ok(true) => waiting.push((key, reply)),
                    Ok(false) => {
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Pause(reply) => {
                    self.flush(&mut waiting).await;
                    let _ = reply.send(self.pause(key).await);
                }
                Command::Deregister(reply) => {
                    self.flush(&mut waiting).await;
                    let result = self.deregister(key).await;
                    if let Err(e) = &result {
                        tracing::warn!(error = %e, "deregistration did not reach the registry; the key expires with its lease");
                    }
                    reply.send(result);
                }
            }
        }
        self.flush(&mut waiting).await;
    }

    /// Applies an update to the registration; whether it needs writing.
    fn apply_update(&mut self, key: u64, update: &InstanceUpdate) -> Result<bool> {
        let entry = self.entries.get_mut(&key).ok_or(Error::Closed)?;
        let next = entry.instance.updated(update)?;
        entry.instance = next.clone();
        entry.shown.send_replace(next);
        entry.change = super::next_change();
        if entry.is_out() {
            return Ok(false);
        }
        entry.dirty = true;
        Ok(true)
    }

    /// Takes the registration out of pause; whether it needs writing (not if an
    /// operator drained it meanwhile).
    fn apply_resume(&mut self, key: u64) -> Result<bool> {
        let entry = self.entries.get_mut(&key).ok_or(Error::Closed)?;
        if !entry.paused {
            return Ok(false);
        }
        entry.paused = false;
        entry.change = super::next_change();
        if entry.drained {
            entry.set_state(RegistrationState::Drained);
            return Ok(false);
        }
        entry.dirty = true;
        entry.set_state(RegistrationState::Recovering);
        Ok(true)
    }

    async fn pause(&mut self, key: u64) -> Result<()> {
        let entry = self.entries.get(&key).ok_or(Error::Closed)?;
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
        self.unschedule(key);
        let entry = self.entries.get_mut(&key).expect("checked above");
        entry.paused = true;
        entry.dirty = false;
        entry.key = None;
        entry.set_state(entry.out_state());
        Ok(())
    }

    /// Removes the registration from the registry, then forgets it: its id is free
    /// again only once its key is gone.
    pub(super) async fn deregister(&mut self, key: u64) -> Result<()> {
        let written = self.current_key(key);
        let Some(entry) = self.remove(key) else {
            return Ok(());
        };
        let result = if self.entries.is_empty() {
            // Revoking the lease removes the key with it, in one request.
            self.revoke().await
        } else if let (Some(written), Some(lease)) = (written, &self.lease) {
            match self.backend.delete(lease, std::slice::from_ref(&written)).await {
                Ok(()) => Ok(()),
                Err(LeaseError::Lost(e)) => {
                    self.lose(&e.to_string());
                    Ok(())
                }
                Err(LeaseError::Failed(e)) => {
                    // The other registrations keep the lease alive: the key would stay
                    // for as long as they do. Its delete is retried in the background.
                    entry.set_state(RegistrationState::Deregistered);
                    self.leave_behind(written, entry);
                    return Err(e);
                }
            }
        } else {
            Ok(())
        };
        entry.set_state(RegistrationState::Deregistered);
        result
    }

    async fn shutdown(&mut self) {
        self.due.clear();
        let entries: Vec<Entry> = self.entries.drain().map(|(_, e)| e).collect();
        if let Err(e) = self.revoke().await {
            tracing::warn!(error = %e, "revoking the lease at shutdown failed; its keys expire with it");
        }
        for entry in entries {
            entry.set_state(RegistrationState::Deregistered);
        }
    }

    /// Forgets a registration (nothing is written or deleted).
    pub(super) fn remove(&mut self, key: u64) -> Option<Entry> {
        self.unschedule(key);
        self.entries.remove(&key)
    }

    pub(super) async fn event(&mut self, generation: u64, event: LeaseEvent) {
        // A drain marker is about the instance, not the lease: it counts whichever lease
        // reported it, also while no lease is held (a drained registration alone in its
        // group may hold none, and its undrain must still reach it).
        let about_markers = matches!(event, LeaseEvent::Drain { .. } | LeaseEvent::DrainedSet { .. });
        if !about_markers && (generation != self.generation || self.lease.is_none()) {
            return;
        }
        match event {
            LeaseEvent::Lost(reason) => self.lose(&reason),
            LeaseEvent::Replace(reason) => self.abandon_lease(&reason),
            LeaseEvent::KeyDeleted(deleted) => self.key_deleted(generation, &deleted),
            LeaseEvent::Drain { service, id, drained } => self.drain(&service, &id, drained).await,
            LeaseEvent::DrainedSet { service, ids } => {
                let ours: Vec<(InstanceId, bool)> = self
                    .entries
                    .values()
                    .filter(|e| e.instance.service() == &service)
                    .map(|e| (e.instance.id().clone(), ids.contains(e.instance.id())))
                    .collect();
                for (id, drained) in ours {
                    self.drain(&service, &id, drained).await;
                }
            }
        }
    }

    /// A key is gone: ours (write it again) or the one another client held against
    /// us (try ours again now).
    fn key_deleted(&mut self, generation: u64, deleted: &str) {
        let now = Instant::now();
        let hit: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                !e.is_out()
                    && (e.conflict.as_deref() == Some(deleted)
                        || e.key
                            .as_ref()
                            .is_some_and(|(g, k)| *g == generation && k == deleted))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in hit {
            let entry = self.entries.get_mut(&key).expect("found above");
            if entry.conflict.is_none() {
                tracing::warn!(service = %entry.instance.service(), id = %entry.instance.id(), "registration key deleted or taken by someone else; writing it again");
                entry.set_state(RegistrationState::Recovering);
                crate::metrics::recovery_started(&mut self.recovering_since, "key_lost");
            } else {
                tracing::info!(service = %entry.instance.service(), id = %entry.instance.id(), "the other registration of this id is gone; writing ours again");
            }
            entry.dirty = true;
            self.schedule(key, now);
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
            self.unschedule(key);
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
            self.schedule(key, Instant::now());
        }
    }

    /// The key a registration holds under the current lease, if any.
    pub(super) fn current_key(&self, key: u64) -> Option<String> {
        let entry = self.entries.get(&key)?;
        match &entry.key {
            Some((g, k)) if *g == self.generation && self.lease.is_some() => Some(k.clone()),
            _ => None,
        }
    }

    /// Writes now the registrations that `waiting` callers changed, and answers them.
    async fn flush(&mut self, waiting: &mut Vec<(u64, oneshot::Sender<Result<()>>)>) {
        if waiting.is_empty() {
            return;
        }
        let mut keys: Vec<u64> = waiting
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| self.entries.get(k).is_some_and(Entry::wants_write))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let written = match self.ensure_lease().await {
            Ok(()) => self.write(&keys).await,
            Err(e) => {
                for key in &keys {
                    if let Some(entry) = self.entries.get(key) {
                        entry.set_state(RegistrationState::Recovering);
                    }
                }
                self.lease_retry_at = Some(Instant::now() + self.next_lease_delay());
                Err(e)
            }
        };
        answer_writes(&written, std::mem::take(waiting));
    }
}

/// Answers the callers of a write: each with its own failure, the batch's, or `Ok`.
pub(super) fn answer_writes(
    written: &Result<Vec<(u64, Error)>>,
    replies: Vec<(u64, oneshot::Sender<Result<()>>)>,
) {
    for (key, reply) in replies {
        let answer = match written {
            Ok(failed) => match failed.iter().find(|(k, _)| *k == key) {
                Some((_, e)) => Err(e.duplicate()),
                None => Ok(()),
            },
            Err(e) => Err(e.duplicate()),
        };
        let _ = reply.send(answer);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
