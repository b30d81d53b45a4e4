//! Writes in flight: on a backend that keeps the order of writes of one registration
//! ([`LeaseBackend::pipelines_writes`]), an update is sent at once, not after the write
//! before it is answered, so a registration updated often never waits a round trip
//! behind its own previous update.
//!
//! Only updates and resumes fly. Everything else the group does (registering, pausing,
//! deregistering, events, repairs, giving up or revoking the lease) first waits for the
//! writes in flight to land ([`Group::settle`]), so it sees every answer, and the
//! lease is never given up under a write still using it.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::oneshot;

use super::batch::Sent;
use super::group::{answer_writes, Group};
use super::{LeaseBackend, LeaseError, Write, WriteOutcome};
use crate::{Instance, Result};

/// A write sent and not yet answered, with the callers waiting for it.
pub(super) struct Flight {
    generation: u64,
    sent: Sent,
    written: Result<Vec<WriteOutcome>, LeaseError>,
    replies: Vec<(u64, oneshot::Sender<Result<()>>)>,
}

/// What a write in flight needs of a registration, owned, as the group goes on.
struct Owned {
    instance: Instance,
    current: Option<String>,
    previous: Option<String>,
    change: u64,
}

pub(super) type Flights = futures::stream::FuturesUnordered<BoxFuture<'static, Flight>>;

impl<B: LeaseBackend> Group<B> {
    /// Sends the writes of `keys` under the current lease (there must be one) without
    /// waiting for them; `replies` are answered when they land.
    pub(super) fn launch(&mut self, keys: &[u64], replies: Vec<(u64, oneshot::Sender<Result<()>>)>) {
        let lease = Arc::clone(self.lease.as_ref().expect("launched under a lease"));
        let generation = self.generation;
        let sent = self.sendable(keys);
        let owned: Vec<Owned> = sent
            .iter()
            .map(|(k, _)| {
                let entry = &self.entries[k];
                let (current, previous) = entry.keys_under(generation);
                Owned {
                    instance: entry.instance.clone(),
                    current: current.map(str::to_owned),
                    previous: previous.map(str::to_owned),
                    change: entry.change,
                }
            })
            .collect();
        let backend = self.backend.clone();
        self.flights.push(Box::pin(async move {
            let written = if owned.is_empty() {
                Ok(Vec::new())
            } else {
                let writes: Vec<Write<'_>> = owned
                    .iter()
                    .map(|w| Write {
                        instance: &w.instance,
                        current: w.current.as_deref(),
                        previous: w.previous.as_deref(),
                        change: w.change,
                    })
                    .collect();
                backend.put(&lease, &writes).await
            };
            Flight {
                generation,
                sent,
                written,
                replies,
            }
        }));
    }

    /// Applies a landed write and answers its callers.
    pub(super) fn land(&mut self, flight: Flight) {
        let written = self.apply_written(flight.generation, &flight.sent, flight.written);
        answer_writes(&written, flight.replies);
    }

    /// Waits for every write in flight to land, and applies each.
    pub(super) async fn settle(&mut self) {
        while let Some(flight) = self.flights.next().await {
            self.land(flight);
        }
    }
}
