//! Keys of deregistered registrations whose delete did not reach the registry.
//!
//! Such a key lives under the group's shared lease, which the group's other
//! registrations keep alive, so it would never expire: a ghost listed for as long as the
//! process runs. Its delete is retried with backoff until it lands or the lease goes
//! (a lost, abandoned or revoked lease takes the key with it). The registration's claim
//! is held until then, so its id is not registered again while its old key still shows.

use tokio::time::Instant;

use super::entry::Entry;
use super::group::Group;
use super::{LeaseBackend, LeaseError};
use crate::Retries;

/// A deregistered registration whose key may still be in the registry.
pub(super) struct Leftover {
    /// The lease generation the key was written under.
    generation: u64,
    key: String,
    /// Holds the id's claim until the key is gone.
    _entry: Entry,
}

/// The leftovers of a group and when their delete is next tried.
#[derive(Default)]
pub(super) struct Leftovers {
    keys: Vec<Leftover>,
    retry_at: Option<Instant>,
    retries: Retries,
}

impl Leftovers {
    /// When the next delete is due, if any key is left.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| !self.keys.is_empty())
    }
}

impl<B: LeaseBackend> Group<B> {
    /// Keeps `key` of the deregistered `entry` to be deleted again later.
    pub(super) fn leave_behind(&mut self, key: String, entry: Entry) {
        tracing::warn!(service = %entry.instance.service(), id = %entry.instance.id(), %key, "deregistration did not reach the registry; retrying the delete");
        self.leftovers.keys.push(Leftover {
            generation: self.generation,
            key,
            _entry: entry,
        });
        self.schedule_leftovers();
    }

    /// Tries again to delete every leftover key of the current lease; the keys of an
    /// earlier lease went with it.
    pub(super) async fn delete_leftovers(&mut self) {
        self.leftovers.retry_at = None;
        let generation = self.generation;
        self.leftovers.keys.retain(|left| left.generation == generation);
        let Some(lease) = self.lease.as_ref().filter(|_| !self.leftovers.keys.is_empty()) else {
            self.leftovers = Leftovers::default();
            return;
        };
        let keys: Vec<String> = self.leftovers.keys.iter().map(|l| l.key.clone()).collect();
        match self.backend.delete(lease, &keys).await {
            Ok(()) => {
                tracing::info!(keys = keys.len(), "deregistered keys deleted on retry");
                self.leftovers = Leftovers::default();
            }
            Err(LeaseError::Lost(e)) => {
                // The lease is gone, and the keys with it.
                self.leftovers = Leftovers::default();
                self.lose(&e.to_string());
            }
            Err(LeaseError::Failed(e)) => {
                tracing::warn!(error = %e, keys = keys.len(), "deleting deregistered keys failed again; retrying");
                self.schedule_leftovers();
            }
        }
    }

    fn schedule_leftovers(&mut self) {
        let delay = self.leftovers.retries.next(self.backoff);
        self.leftovers.retry_at = Some(Instant::now() + delay);
    }
}
