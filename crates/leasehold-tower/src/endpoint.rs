//! One client per instance, made on first need and dropped when the instance leaves
//! (go-kit's `Endpointer`).

use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use futures::future::{self, BoxFuture};
use leasehold::{Instance, Snapshot};

use crate::health::HealthCheck;
use crate::BoxError;

/// Makes the client (a tower service, a connection pool…) for one instance, as tower's
/// `MakeService` does: asynchronously, so a client that connects first (and fails
/// before anything is sent) makes no other request wait.
///
/// Called once per instance, on the first request that picks it, and again only if the
/// instance's address changes or a making failed. A plain closure
/// `Fn(&Instance) -> Result<E, BoxError>` is one.
pub trait MakeEndpoint: Send + Sync + 'static {
    /// The client. Cloned for every request, so it should be a cheap handle.
    type Endpoint: Clone + Send + 'static;

    /// Makes the client for `instance`.
    fn make_endpoint(&self, instance: &Instance) -> BoxFuture<'static, Result<Self::Endpoint, BoxError>>;

    /// Runs `check` on `instance` through its client, once: `Ok` if it passes, else
    /// preferably a [`ProbeError`](crate::probe::ProbeError). `None` (the default) when
    /// this kind of client has no health check; active checking then stays off, with a
    /// warning. The caller bounds it by the check's timeout. The clients of this crate
    /// run [`probe`](crate::probe)'s checks.
    fn probe(
        &self,
        _endpoint: Self::Endpoint,
        _instance: &Instance,
        _check: &HealthCheck,
    ) -> Option<BoxFuture<'static, Result<(), BoxError>>> {
        None
    }
}

impl<F, E> MakeEndpoint for F
where
    F: Fn(&Instance) -> Result<E, BoxError> + Send + Sync + 'static,
    E: Clone + Send + 'static,
{
    type Endpoint = E;
    fn make_endpoint(&self, instance: &Instance) -> BoxFuture<'static, Result<E, BoxError>> {
        Box::pin(future::ready(self(instance)))
    }
}

/// The slots by registry key.
type Slots<E> = imbl::HashMap<Arc<str>, Arc<Slot<E>>>;

/// One instance's client, made once.
struct Slot<E> {
    instance: Arc<Instance>,
    client: Mutex<Option<E>>,
    /// Held while the client is being made, so concurrent first requests make one.
    making: tokio::sync::Mutex<()>,
}

impl<E: Clone> Slot<E> {
    fn client(&self) -> Option<E> {
        self.client.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The clients of the instances in use, keyed by registry key.
///
/// [`get`](EndpointCache::get) makes a client on first need, outside any lock shared
/// with other instances: a lookup of a made client reads a lock-free map and one lock of
/// that instance's own; [`forget`](EndpointCache::forget) drops the client of an
/// instance that left (the last clone of a client going closes its connections).
pub struct EndpointCache<M: MakeEndpoint> {
    make: M,
    slots: ArcSwap<Slots<M::Endpoint>>,
    /// Serializes changes to the map (never held by a lookup, nor while making).
    writing: Mutex<()>,
}

impl<M: MakeEndpoint> fmt::Debug for EndpointCache<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointCache")
            .field("clients", &self.len())
            .finish_non_exhaustive()
    }
}

impl<M: MakeEndpoint> EndpointCache<M> {
    /// An empty cache making clients with `make`.
    pub fn new(make: M) -> Self {
        EndpointCache {
            make,
            slots: ArcSwap::from_pointee(imbl::HashMap::new()),
            writing: Mutex::new(()),
        }
    }

    /// The factory.
    pub fn maker(&self) -> &M {
        &self.make
    }

    /// The client for `instance`, made now if there is none or its address changed.
    pub async fn get(&self, instance: &Arc<Instance>) -> Result<M::Endpoint, BoxError> {
        let slot = self.slot(instance);
        if let Some(client) = slot.client() {
            return Ok(client);
        }
        let _making = slot.making.lock().await;
        if let Some(client) = slot.client() {
            return Ok(client);
        }
        let client = self.make.make_endpoint(instance).await?;
        tracing::debug!(service = %instance.service(), id = %instance.id(), key = instance.key(), addr = %instance.addr(), "made an endpoint");
        *slot.client.lock().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        Ok(client)
    }

    /// The made client for `instance`, if there is one.
    pub fn get_made(&self, instance: &Instance) -> Option<M::Endpoint> {
        let slots = self.slots.load();
        let slot = slots.get(instance.key())?;
        (slot.instance.addr() == instance.addr())
            .then(|| slot.client())
            .flatten()
    }

    fn slot(&self, instance: &Arc<Instance>) -> Arc<Slot<M::Endpoint>> {
        if let Some(slot) = self.slots.load().get(instance.key()) {
            if slot.instance.addr() == instance.addr() {
                return slot.clone();
            }
        }
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let slots = self.slots.load_full();
        if let Some(slot) = slots.get(instance.key()) {
            if slot.instance.addr() == instance.addr() {
                return slot.clone();
            }
        }
        let slot = Arc::new(Slot {
            instance: instance.clone(),
            client: Mutex::new(None),
            making: tokio::sync::Mutex::new(()),
        });
        let mut next = (*slots).clone();
        next.insert(instance.shared_key().clone(), slot.clone());
        self.slots.store(Arc::new(next));
        slot
    }

    /// Drops the client of the instance at `key`: O(log n).
    pub fn forget(&self, key: &str) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let slots = self.slots.load_full();
        if slots.contains_key(key) {
            let mut next = (*slots).clone();
            next.remove(key);
            self.slots.store(Arc::new(next));
            tracing::debug!(key, "dropped the endpoint of an instance that left");
        }
    }

    /// Drops the clients of instances not in `snapshot` (or at another address there):
    /// O(n), for a resync.
    pub fn retain(&self, snapshot: &Snapshot) {
        let held: std::collections::HashMap<&str, &Instance> =
            snapshot.members().iter().map(|i| (i.key(), &**i)).collect();
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let slots = self.slots.load_full();
        let kept: Slots<M::Endpoint> = slots
            .iter()
            .filter(|(key, slot)| {
                held.get(&***key)
                    .is_some_and(|now| now.addr() == slot.instance.addr())
            })
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        if kept.len() != slots.len() {
            self.slots.store(Arc::new(kept));
        }
    }

    /// How many clients are held.
    pub fn len(&self) -> usize {
        self.slots.load().len()
    }

    /// Whether no client is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn instance(key: &str, addr: &str) -> Arc<Instance> {
        Arc::new(Instance::builder("svc", addr).id(key).build().unwrap())
    }

    /// Makes clients slowly for one address, at once for the others.
    struct Slow(Arc<AtomicUsize>);

    impl MakeEndpoint for Slow {
        type Endpoint = String;
        fn make_endpoint(&self, instance: &Instance) -> BoxFuture<'static, Result<String, BoxError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let addr = instance.addr().to_string();
            Box::pin(async move {
                if addr.ends_with(":1") {
                    tokio::time::sleep(Duration::from_secs(3_600)).await;
                }
                Ok(addr)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_making_holds_up_no_other_instance() {
        let made = Arc::new(AtomicUsize::new(0));
        let cache = Arc::new(EndpointCache::new(Slow(made.clone())));
        let fast = instance("fast", "10.0.0.2:2");
        assert_eq!(cache.get(&fast).await.unwrap(), "10.0.0.2:2");
        let slow = instance("slow", "10.0.0.1:1");
        let stuck = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get(&slow).await }
        });
        tokio::task::yield_now().await;
        let lookup = tokio::time::timeout(Duration::from_millis(10), cache.get(&fast)).await;
        assert_eq!(
            lookup.unwrap().unwrap(),
            "10.0.0.2:2",
            "the cached client came at once"
        );
        let other = instance("other", "10.0.0.3:3");
        let made_now = tokio::time::timeout(Duration::from_millis(10), cache.get(&other)).await;
        assert!(made_now.is_ok(), "another instance's client was made meanwhile");
        stuck.abort();
        assert_eq!(made.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn clients_follow_the_set() {
        let cache =
            EndpointCache::new(|i: &Instance| -> Result<String, BoxError> { Ok(i.addr().to_string()) });
        let a = instance("a", "10.0.0.1:80");
        cache.get(&a).await.unwrap();
        cache.get(&instance("b", "10.0.0.2:80")).await.unwrap();
        assert_eq!(cache.len(), 2);
        let moved = instance("a", "10.0.0.9:80");
        assert_eq!(
            cache.get(&moved).await.unwrap(),
            "10.0.0.9:80",
            "a new address, a new client"
        );
        cache.forget("b");
        assert_eq!(cache.len(), 1);
        let snapshot = Snapshot::of(
            leasehold::ServiceName::new("svc").unwrap(),
            [a].into_iter().collect(),
        );
        cache.retain(&snapshot);
        assert!(cache.is_empty(), "a's client was for its new address");
    }
}
