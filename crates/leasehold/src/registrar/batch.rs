//! Writing many registrations in one request, and answering for each alone.

use tokio::time::Instant;

use super::group::{Group, MAX_BATCH};
use super::{LeaseBackend, LeaseError, Write};
use crate::{Error, RegistrationState, Result};

impl<B: LeaseBackend> Group<B> {
    /// Writes the given registrations in batches of at most [`MAX_BATCH`], under the
    /// current lease (there must be one). Returns the registrations whose write failed
    /// alone, with why: those stay dirty, `Recovering` (`Conflict` when another client
    /// holds the id), and are retried on their own backoff. The error fails the rest:
    /// the lease was lost, or the registry did not answer.
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
        let present: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| self.entries.contains_key(k))
            .collect();
        if present.is_empty() {
            return Ok(Vec::new());
        }
        let written = {
            let writes: Vec<Write<'_>> = present
                .iter()
                .map(|k| {
                    let entry = &self.entries[k];
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
            metrics::histogram!(crate::metrics::WRITE_BATCH_SIZE).record(writes.len() as f64);
            self.backend.put(lease, &writes).await
        };
        let now = Instant::now();
        match written {
            Ok(outcomes) => {
                // The lease takes writes: grants back off from scratch next time.
                self.lease_delays = Box::new(self.backoff.delays());
                let mut failed = Vec::new();
                for (key, outcome) in present.iter().zip(outcomes) {
                    match outcome {
                        Ok(stored) => {
                            self.unschedule(*key);
                            self.entries
                                .get_mut(key)
                                .expect("present")
                                .written(generation, stored);
                        }
                        Err(e) => {
                            let entry = self.entries.get_mut(key).expect("present");
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
                            self.schedule(*key, now + delay);
                            failed.push((*key, e));
                        }
                    }
                }
                Ok(failed)
            }
            Err(LeaseError::Lost(e)) => {
                // A lease lost as soon as it is written under: back off, or a registry
                // that keeps losing leases is sent grants in a tight loop.
                self.lose(&e.to_string());
                self.lease_retry_at = Some(now + self.next_lease_delay());
                Err(e)
            }
            Err(LeaseError::Failed(e)) => {
                for key in &present {
                    let entry = self.entries.get_mut(key).expect("present");
                    entry.dirty = true;
                    if entry.conflict.is_none() {
                        entry.set_state(RegistrationState::Recovering);
                    }
                    let delay = entry.next_delay();
                    self.schedule(*key, now + delay);
                }
                Err(e)
            }
        }
    }
}
