//! Writing many registrations in one request, and answering for each alone.

use tokio::time::Instant;

use super::group::{Group, MAX_BATCH};
use super::{LeaseBackend, LeaseError, Write, WriteOutcome};
use crate::{Error, RegistrationState, Result};

/// The registrations a write carried: each one's key in the group and the change it
/// carried ([`Entry::change`](super::entry::Entry)).
pub(super) type Sent = Vec<(u64, u64)>;

impl<B: LeaseBackend> Group<B> {
    /// Writes the given registrations in batches of at most [`MAX_BATCH`], under the
    /// current lease (there must be one), and waits for the answer. Returns the
    /// registrations whose write failed alone, with why: those stay dirty, `Recovering`
    /// (`Conflict` when another client holds the id), and are retried on their own
    /// backoff. The error fails the rest: the lease was lost, or the registry did not
    /// answer.
    pub(super) async fn write(&mut self, keys: &[u64]) -> Result<Vec<(u64, Error)>> {
        let mut failed = Vec::new();
        for chunk in keys.chunks(MAX_BATCH) {
            failed.extend(self.write_batch(chunk).await?);
        }
        Ok(failed)
    }

    async fn write_batch(&mut self, keys: &[u64]) -> Result<Vec<(u64, Error)>> {
        let Some(lease) = self.lease.as_ref() else {
            return Err(Error::Closed);
        };
        let generation = self.generation;
        let sent = self.sendable(keys);
        if sent.is_empty() {
            return Ok(Vec::new());
        }
        let written = {
            let writes: Vec<Write<'_>> = sent
                .iter()
                .map(|(k, _)| {
                    let entry = &self.entries[k];
                    let (current, previous) = entry.keys_under(generation);
                    Write {
                        instance: &entry.instance,
                        current,
                        previous,
                        change: entry.change,
                    }
                })
                .collect();
            self.backend.put(lease, &writes).await
        };
        self.apply_written(generation, &sent, written)
    }

    /// The registrations of `keys` still in the group, with the change each carries.
    pub(super) fn sendable(&self, keys: &[u64]) -> Sent {
        let sent: Sent = keys
            .iter()
            .filter_map(|k| self.entries.get(k).map(|entry| (*k, entry.change)))
            .collect();
        if !sent.is_empty() {
            metrics::histogram!(crate::metrics::WRITE_BATCH_SIZE).record(sent.len() as f64);
        }
        sent
    }

    /// Applies the answer to a write under lease `generation` that carried `sent`.
    /// An answer about a lease that is no longer the group's changes no registration:
    /// they are written again under the new one anyway. A registration changed again
    /// since (its later write still in flight) is left to that write; if this one
    /// landed, only the key it is at is recorded.
    pub(super) fn apply_written(
        &mut self,
        generation: u64,
        sent: &[(u64, u64)],
        written: Result<Vec<WriteOutcome>, LeaseError>,
    ) -> Result<Vec<(u64, Error)>> {
        let current = generation == self.generation && self.lease.is_some();
        let now = Instant::now();
        match written {
            Ok(outcomes) => {
                if current {
                    // The lease takes writes: grants back off from scratch next time.
                    self.lease_retries.reset();
                }
                let mut failed = Vec::new();
                for (&(key, change), outcome) in sent.iter().zip(outcomes) {
                    let latest = current && self.entries.get(&key).is_some_and(|e| e.change == change);
                    match outcome {
                        Ok(stored) if latest => {
                            self.unschedule(key);
                            self.entries
                                .get_mut(&key)
                                .expect("present")
                                .written(generation, stored);
                        }
                        Ok(stored) => {
                            if let Some(entry) = self.entries.get_mut(&key).filter(|_| current) {
                                entry.landed(generation, stored);
                            }
                        }
                        Err(e) => {
                            if latest {
                                let entry = self.entries.get_mut(&key).expect("present");
                                tracing::warn!(service = %entry.instance.service(), id = %entry.instance.id(), error = %e, "write failed");
                                entry.dirty = true;
                                match &e {
                                    Error::Conflict { key: held, .. } => {
                                        entry.conflict = Some(held.clone());
                                        entry.set_state(RegistrationState::Conflict);
                                    }
                                    _ => entry.set_state(RegistrationState::Recovering),
                                }
                                let delay = entry.next_delay();
                                self.schedule(key, now + delay);
                            }
                            failed.push((key, e));
                        }
                    }
                }
                Ok(failed)
            }
            Err(LeaseError::Lost(e)) => {
                if current {
                    // A lease lost as soon as it is written under: back off, or a
                    // registry that keeps losing leases is sent grants in a tight loop.
                    self.lose(&e.to_string());
                    self.lease_retry_at = Some(now + self.next_lease_delay());
                }
                Err(e)
            }
            Err(LeaseError::Failed(e)) => {
                for &(key, change) in sent {
                    let Some(entry) = self
                        .entries
                        .get_mut(&key)
                        .filter(|entry| current && entry.change == change)
                    else {
                        continue;
                    };
                    entry.dirty = true;
                    if entry.conflict.is_none() {
                        entry.set_state(RegistrationState::Recovering);
                    }
                    let delay = entry.next_delay();
                    self.schedule(key, now + delay);
                }
                Err(e)
            }
        }
    }
}
