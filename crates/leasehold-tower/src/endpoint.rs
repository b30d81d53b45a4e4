//! One client per instance, made on first need and dropped when the instance leaves
//! (go-kit's `Endpointer`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use leasehold::{Instance, InstanceId, Snapshot};

use crate::BoxError;

/// Makes the client (a tower service, a connection pool…) for one instance.
///
/// Called once per instance, on the first request that picks it, and again only if the
/// instance's address changes. Making should be cheap and not connect: a client that
/// connects lazily, as `tonic`'s `Endpoint::connect_lazy` does, lets a dead instance fail
/// on the request, where retries and ejection deal with it.
pub trait MakeEndpoint: Send + Sync + 'static {
    /// The client. Cloned for every request, so it should be a cheap handle.
    type Endpoint: Clone + Send + 'static;

    /// Makes the client for `instance`.
    fn make_endpoint(&self, instance: &Instance) -> Result<Self::Endpoint, BoxError>;
}

impl<F, E> MakeEndpoint for F
where
    F: Fn(&Instance) -> Result<E, BoxError> + Send + Sync + 'static,
    E: Clone + Send + 'static,
{
    type Endpoint = E;
    fn make_endpoint(&self, instance: &Instance) -> Result<E, BoxError> {
        self(instance)
    }
}

/// Each instance's client, with the instance it was made for.
type Entries<E> = HashMap<InstanceId, (Arc<Instance>, E)>;

/// The clients of the instances in use, keyed by instance id.
///
/// [`get`](EndpointCache::get) makes a client on first need; [`sync`](EndpointCache::sync)
/// drops the clients of instances that left the discovered set (the last clone of a
/// client going closes its connections).
#[derive(Debug)]
pub struct EndpointCache<M: MakeEndpoint> {
    make: M,
    entries: Mutex<Entries<M::Endpoint>>,
    /// The snapshot version last synced with, plus one (0: never).
    synced: AtomicU64,
}

impl<M: MakeEndpoint> EndpointCache<M> {
    /// An empty cache making clients with `make`.
    pub fn new(make: M) -> Self {
        EndpointCache {
            make,
            entries: Mutex::new(HashMap::new()),
            synced: AtomicU64::new(0),
        }
    }

    /// The client for `instance`, made now if there is none or its address changed.
    pub fn get(&self, instance: &Arc<Instance>) -> Result<M::Endpoint, BoxError> {
        let mut entries = self.entries.lock().unwrap();
        if let Some((known, endpoint)) = entries.get(instance.id()) {
            if known.addr() == instance.addr() {
                return Ok(endpoint.clone());
            }
        }
        let endpoint = self.make.make_endpoint(instance)?;
        tracing::debug!(service = %instance.service(), id = %instance.id(), addr = %instance.addr(), "made an endpoint");
        entries.insert(instance.id().clone(), (instance.clone(), endpoint.clone()));
        // The instance may come from a snapshot older than the one last synced with (a
        // request picked it just before it left): the next sync checks it again.
        self.synced.store(0, Ordering::Release);
        Ok(endpoint)
    }

    /// Drops the clients of instances not in `snapshot`; returns whether the snapshot
    /// was new to the cache or a client was made since the last sync. Cheap when not.
    pub fn sync(&self, snapshot: &Snapshot) -> bool {
        let version = snapshot.version() + 1;
        if self.synced.swap(version, Ordering::AcqRel) == version {
            return false;
        }
        self.entries.lock().unwrap().retain(|id, (known, _)| {
            let keep = snapshot.get(id).is_some_and(|now| now.addr() == known.addr());
            if !keep {
                tracing::debug!(service = %known.service(), %id, "dropped the endpoint of an instance that left");
            }
            keep
        });
        true
    }

    /// How many clients are held.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    /// Whether no client is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::{DiscoveryFeed, NativeCodec, ServiceName, WatchOptions};

    fn listing(ids: &[&str]) -> Vec<(String, Vec<u8>)> {
        ids.iter()
            .enumerate()
            .map(|(n, id)| {
                let instance = Instance::builder("svc", format!("10.0.0.{}:80", n + 1))
                    .id(*id)
                    .build()
                    .unwrap();
                (id.to_string(), serde_json::to_vec(&instance).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_client_made_for_an_instance_that_already_left_goes_at_the_next_sync() {
        let (mut feed, discovery) = DiscoveryFeed::new(
            ServiceName::new("svc").unwrap(),
            Arc::new(NativeCodec),
            WatchOptions::default(),
        );
        feed.reset(listing(&["x", "y"]), 1);
        let before = discovery.snapshot();
        feed.reset(listing(&["y"]), 2);
        let after = discovery.snapshot();
        let cache = EndpointCache::new(|_: &Instance| -> Result<(), BoxError> { Ok(()) });
        // A request picked x from the older snapshot while the prune task synced the
        // newer one: x's client is made after x left.
        assert!(cache.sync(&after));
        let x = before.get(&InstanceId::new("x").unwrap()).unwrap().clone();
        cache.get(&x).unwrap();
        cache.sync(&after);
        assert!(cache.is_empty(), "x's client is still held");
    }
}
