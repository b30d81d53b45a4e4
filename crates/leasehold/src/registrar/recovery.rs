//! Leases and repairs: granting a lease, noticing it is lost, writing back what is
//! missing, each registration on its own backoff and lease grants on the group's.

use std::time::Duration;

use tokio::time::Instant;

use super::group::Group;
use super::{LeaseBackend, LeaseEvents};
use crate::{RegistrationState, Result, ServiceName};

impl<B: LeaseBackend> Group<B> {
    /// Forgets the lease and puts every live registration into recovery.
    pub(super) fn lose(&mut self, reason: &str) {
        tracing::warn!(ttl = ?self.ttl, %reason, registrations = self.entries.len(), "lease lost; recovering");
        metrics::counter!(crate::metrics::LEASE_LOSSES).increment(1);
        crate::metrics::recovery_started(&mut self.recovering_since, "lease_lost");
        self.lease = None;
        self.rewrite_all(true);
    }

    /// Gives up the lease ([`LeaseBackend::give_up`](super::LeaseBackend::give_up), in
    /// the background) and writes every registration again under a new one: the lease
    /// may hold keys nobody owns, or may be revoked by the registry.
    pub(super) fn abandon_lease(&mut self, reason: &str) {
        if let Some(lease) = self.take_lease() {
            tracing::warn!(ttl = ?self.ttl, %reason, "giving up the lease; its registrations are written again under a new one");
            let backend = self.backend.clone();
            tokio::spawn(async move { backend.give_up(lease).await });
        }
        // The registrations are still where they were: their state does not change.
        self.rewrite_all(false);
    }

    /// The registrations that belong in the registry: neither paused nor drained.
    fn live(&self) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.is_out())
            .map(|(k, _)| *k)
            .collect()
    }

    /// Every registration in the registry is to be written again, now; `recovering`
    /// when they may be gone from it meanwhile (their state says so).
    fn rewrite_all(&mut self, recovering: bool) {
        let now = Instant::now();
        let live = self.live();
        if live.is_empty() {
            // Only drained (or paused) registrations: a lease is still needed to follow
            // their markers, or an undrain would never reach them.
            if let Some(drained) = self.entries.iter().find(|(_, e)| e.drained).map(|(k, _)| *k) {
                self.schedule(drained, now);
            }
        }
        for key in live {
            let entry = self.entries.get_mut(&key).expect("listed above");
            entry.dirty = true;
            if recovering && entry.conflict.is_none() {
                entry.set_state(RegistrationState::Recovering);
            }
            self.schedule(key, now);
        }
    }

    /// A lease if there is none. After a new grant every registration is to be written
    /// under it, and the drain markers of the services whose registrations are all
    /// drained are followed, so an undrain reaches them.
    pub(super) async fn ensure_lease(&mut self) -> Result<()> {
        if self.lease.is_some() {
            return Ok(());
        }
        let generation = self.generation + 1;
        let events = LeaseEvents {
            generation,
            tx: self.events_tx.clone(),
        };
        let lease = self.backend.grant(self.ttl, events).await?;
        self.generation = generation;
        let mut drained: Vec<ServiceName> = self
            .entries
            .values()
            .filter(|e| e.drained)
            .map(|e| e.instance.service().clone())
            .collect();
        drained.sort();
        drained.dedup();
        if !drained.is_empty() {
            if let Err(e) = self.backend.follow_markers(&lease, &drained).await {
                tracing::warn!(error = %e, "cannot follow the drain markers of drained registrations yet");
            }
        }
        self.lease = Some(lease);
        let now = Instant::now();
        let live = self.live();
        for key in live {
            self.entries.get_mut(&key).expect("listed above").dirty = true;
            self.schedule(key, now);
        }
        Ok(())
    }

    /// One recovery round: a lease if there is none, then every registration whose
    /// write is due.
    #[tracing::instrument(name = "recover", level = "info", skip_all, fields(ttl = ?self.ttl, generation = self.generation))]
    pub(super) async fn repair(&mut self) {
        let now = Instant::now();
        if self.leftovers.retry_at().is_some_and(|at| at <= now) {
            self.delete_leftovers().await;
        }
        if self.due.is_empty() {
            return;
        }
        if self.lease.is_none() {
            self.lease_retry_at = None;
            if let Err(e) = self.ensure_lease().await {
                tracing::warn!(error = %e, "cannot grant a lease yet; retrying");
                self.lease_retry_at = Some(Instant::now() + self.next_lease_delay());
                return;
            }
        }
        let due: Vec<u64> = self
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, key)| *key)
            .collect();
        let keys: Vec<u64> = due
            .into_iter()
            .filter(|k| self.entries.get(k).is_some_and(|e| e.wants_write()))
            .collect();
        if keys.is_empty() {
            self.drop_stale_schedule(now);
            return;
        }
        match self.write(&keys).await {
            Ok(failed) => {
                tracing::info!(
                    registrations = keys.len() - failed.len(),
                    failed = failed.len(),
                    "registrations written again"
                );
                let done = self.entries.values().all(|e| !e.wants_write());
                crate::metrics::recovery_finished(&mut self.recovering_since, done);
            }
            Err(e) => tracing::warn!(error = %e, "writing registrations failed; retrying"),
        }
    }

    /// Removes due times of registrations that no longer want a write.
    fn drop_stale_schedule(&mut self, now: Instant) {
        let stale: Vec<u64> = self
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, key)| *key)
            .filter(|k| !self.entries.get(k).is_some_and(|e| e.wants_write()))
            .collect();
        for key in stale {
            self.unschedule(key);
        }
    }

    /// When the group next has something to do: the first due write, but no grant
    /// before the lease backoff allows.
    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        let write = self
            .due
            .first()
            .map(|&(first, _)| match (self.lease.is_none(), self.lease_retry_at) {
                (true, Some(grant)) => first.max(grant),
                _ => first,
            });
        [write, self.leftovers.retry_at()].into_iter().flatten().min()
    }

    pub(super) fn next_lease_delay(&mut self) -> Duration {
        self.lease_retries.next(self.backoff)
    }

    /// The registration's next write is due at `at`.
    pub(super) fn schedule(&mut self, key: u64, at: Instant) {
        self.unschedule(key);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.due = Some(at);
            self.due.insert((at, key));
        }
    }

    pub(super) fn unschedule(&mut self, key: u64) {
        if let Some(at) = self.entries.get_mut(&key).and_then(|e| e.due.take()) {
            self.due.remove(&(at, key));
        }
    }

    /// Revokes the lease, if there is one.
    pub(super) async fn revoke(&mut self) -> Result<()> {
        match self.take_lease() {
            Some(lease) => self.backend.revoke(lease).await,
            None => Ok(()),
        }
    }

    /// Takes the lease out of the group, to give it up or revoke it; what is written
    /// afterwards goes under a new generation.
    fn take_lease(&mut self) -> Option<B::Lease> {
        let lease = self.lease.take()?;
        self.generation += 1;
        Some(lease)
    }
}
