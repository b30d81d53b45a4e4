//! The discovery cache: the live instances of one service, kept current by a backend's
//! watch.
//!
//! A backend's watcher task owns a [`DiscoveryFeed`] and tells it what the registry said:
//! a full listing ([`reset`](DiscoveryFeed::reset)), single puts and deletes, and whether
//! the registry is reachable. The feed decodes values with the registry's codec
//! (skipping and counting what does not decode), applies each update in O(1) to a
//! persistent map, and publishes an immutable [`Snapshot`] that any number of
//! [`Discovery`] handles load without locks, plus typed [`Change`]s to subscribers.
//! Operators' drain markers (recognised through the codec) keep instances out of the
//! set; the snapshot lists them apart ([`Snapshot::drained`]).

mod drained;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::{Codec, Instance, InstanceId, InvalidInput, ServiceName};

/// Whether the cache is following the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// The watch is established: the snapshot is current.
    Live,
    /// The registry cannot be reached: the snapshot is the last known set, kept and
    /// served, and the watcher keeps trying to reconnect.
    Stale {
        /// When the watch was lost.
        since: Instant,
    },
}

impl ConnectionState {
    /// Whether the snapshot is current.
    pub fn is_live(&self) -> bool {
        matches!(self, ConnectionState::Live)
    }

    /// How long the snapshot has been stale, if it is.
    pub fn stale_for(&self) -> Option<Duration> {
        match self {
            ConnectionState::Live => None,
            ConnectionState::Stale { since } => Some(since.elapsed()),
        }
    }
}

/// The instances of a service at one moment. Immutable: a new snapshot is published for
/// every change, sharing structure with the last.
pub struct Snapshot {
    service: ServiceName,
    entries: imbl::HashMap<Arc<str>, Arc<Instance>>,
    sorted: OnceLock<Arc<[Arc<Instance>]>>,
    revision: u64,
    version: u64,
    connection: ConnectionState,
    /// Drained ids, each with the instance to show for it.
    drained: imbl::OrdMap<InstanceId, Option<Arc<Instance>>>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("service", &self.service)
            .field("instances", &self.instances())
            .field("revision", &self.revision)
            .field("connection", &self.connection)
            .finish()
    }
}

impl Snapshot {
    fn empty(service: ServiceName) -> Self {
        Snapshot {
            service,
            entries: imbl::HashMap::new(),
            sorted: OnceLock::new(),
            revision: 0,
            version: 0,
            connection: ConnectionState::Live,
            drained: imbl::OrdMap::new(),
        }
    }

    /// The instances an operator drained (`Registry::drain`), sorted by id: out of
    /// [`instances`](Snapshot::instances), listed here for dashboards. Each comes with
    /// the instance its drain marker recorded, or the one still registered under it;
    /// `None` when neither is known.
    pub fn drained(&self) -> impl Iterator<Item = (&InstanceId, Option<&Arc<Instance>>)> + '_ {
        self.drained.iter().map(|(id, shown)| (id, shown.as_ref()))
    }

    /// Whether an operator drained the instance `id`.
    pub fn is_drained(&self, id: &InstanceId) -> bool {
        self.drained.contains_key(id)
    }

    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The instances, sorted by id. Built once per snapshot, on first use, so balancers
    /// can index it.
    pub fn instances(&self) -> &Arc<[Arc<Instance>]> {
        self.sorted.get_or_init(|| {
            let mut all: Vec<Arc<Instance>> = self.entries.values().cloned().collect();
            all.sort_by(|a, b| a.id().cmp(b.id()));
            all.into()
        })
    }

    /// The instance with this id, if present.
    pub fn get(&self, id: &InstanceId) -> Option<&Arc<Instance>> {
        let all = self.instances();
        all.binary_search_by(|i| i.id().cmp(id)).ok().map(|at| &all[at])
    }

    /// How many instances there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The registry revision this snapshot reflects (0 where the backend has none).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Counts published snapshots; a balancer can rebuild its tables when it changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether this set is current or the last known one.
    pub fn connection(&self) -> ConnectionState {
        self.connection
    }
}

/// A change to the cached set, as sent to subscribers.
#[derive(Clone, Debug)]
pub enum Change {
    /// An instance appeared.
    Added(Arc<Instance>),
    /// An instance went away.
    Removed(Arc<Instance>),
    /// An instance's fields changed in place.
    Updated {
        /// The instance before.
        old: Arc<Instance>,
        /// The instance now.
        new: Arc<Instance>,
    },
    /// The registry became unreachable; the set is kept and served.
    Stale {
        /// When the watch was lost.
        since: Instant,
    },
    /// The registry is reachable again and the set is current.
    Live,
    /// This subscriber fell too far behind and missed changes: here is the whole current
    /// set to start over from.
    Resync(Arc<Snapshot>),
}

/// Options for [`Registry::watch`](crate::Registry::watch).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct WatchOptions {
    guard: Option<f64>,
}

impl WatchOptions {
    /// Options with the empty-set guard at `fraction`, a number above 0 and at most 1
    /// (for example 0.5). The guard is off by default.
    ///
    /// With a guard of `f`, a full listing that would leave fewer than `f` times the
    /// instances of the last accepted set (a registry that comes back empty after a
    /// wipe, or a glitch that lists nothing — the Nacos #3880 failure) is not applied:
    /// the cache keeps serving the old set and logs a warning. Single deletes always
    /// apply, so instances that leave one by one still go; new instances still arrive.
    /// The held set is replaced by the next listing that passes the guard. This trades
    /// freshness for availability: use it where calling a stale address is cheaper than
    /// having none.
    ///
    /// ```
    /// let options = leasehold::WatchOptions::guard(0.5)?;
    /// assert_eq!(options.guard_fraction(), Some(0.5));
    /// let err = leasehold::WatchOptions::guard(1.5).unwrap_err();
    /// assert_eq!(err.field, "guard");
    /// # Ok::<(), leasehold::InvalidInput>(())
    /// ```
    pub fn guard(fraction: f64) -> Result<Self, InvalidInput> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(InvalidInput::new(
                "guard",
                &fraction.to_string(),
                "must be a fraction above 0 and at most 1",
            ));
        }
        Ok(WatchOptions {
            guard: Some(fraction),
        })
    }

    /// The empty-set guard's fraction, if the guard is on.
    pub fn guard_fraction(&self) -> Option<f64> {
        self.guard
    }
}

const CHANGE_BUFFER: usize = 4096;

struct Shared {
    current: ArcSwap<Snapshot>,
    changes: broadcast::Sender<Change>,
    versions: watch::Sender<u64>,
    skipped: AtomicU64,
}

/// Owned by every [`Discovery`] clone; stops the watcher when the last goes.
struct Handle {
    shared: Arc<Shared>,
    watcher: Mutex<Option<AbortHandle>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(task) = self.watcher.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// The live instances of one service, kept current by a watch.
///
/// Cheap to clone; clones share one cache and one watch, which stops when the last clone
/// is dropped. Reading the snapshot takes no lock.
///
/// ```
/// # async fn demo(registry: &dyn leasehold::Registry) -> leasehold::Result<()> {
/// use leasehold::{Change, ServiceName, WatchOptions};
/// let discovery = registry.watch(&ServiceName::new("echo")?, WatchOptions::default()).await?;
/// for instance in discovery.snapshot().instances().iter() {
///     println!("{} at {}", instance.id(), instance.addr());
/// }
/// let mut changes = discovery.changes();
/// while let Some(change) = changes.next().await {
///     if let Change::Added(instance) = change {
///         println!("new: {}", instance.addr());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Discovery {
    handle: Arc<Handle>,
    service: ServiceName,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// The service this cache follows.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The current set. Lock-free; the `Arc` stays valid however the set changes after.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.handle.shared.current.load_full()
    }

    /// Whether the set is current, or stale since when.
    pub fn connection(&self) -> ConnectionState {
        self.handle.shared.current.load().connection
    }

    /// How many values under the service's prefix did not decode and were skipped.
    pub fn skipped(&self) -> u64 {
        self.handle.shared.skipped.load(Ordering::Relaxed)
    }

    /// Subscribes to changes from now on.
    pub fn changes(&self) -> Changes {
        Changes {
            rx: self.handle.shared.changes.subscribe(),
            shared: Arc::downgrade(&self.handle.shared),
        }
    }

    /// A receiver of the snapshot version, to wake on every published change without
    /// reading them one by one.
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.handle.shared.versions.subscribe()
    }

    /// Waits until a snapshot satisfies `ready`, up to `timeout`; returns that snapshot,
    /// or `None` on timeout.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&Snapshot) -> bool,
    ) -> Option<Arc<Snapshot>> {
        let mut versions = self.versions();
        let wait = async {
            loop {
                let snapshot = self.snapshot();
                if ready(&snapshot) {
                    return Some(snapshot);
                }
                if versions.changed().await.is_err() {
                    let snapshot = self.snapshot();
                    return ready(&snapshot).then_some(snapshot);
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

/// A subscription to a [`Discovery`]'s changes.
///
/// It does not keep the watch alive: once the last [`Discovery`] handle is dropped the
/// watcher stops and [`next`](Changes::next) returns `None`, rather than waiting forever.
pub struct Changes {
    rx: broadcast::Receiver<Change>,
    /// Weak, so the cache and its change sender go with the last `Discovery` and the
    /// watcher, which closes `rx`.
    shared: Weak<Shared>,
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl Changes {
    /// The next change; [`Change::Resync`] if this subscriber lagged behind; `None` once
    /// the watch has ended for good.
    pub async fn next(&mut self) -> Option<Change> {
        match self.rx.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.rx = self.rx.resubscribe();
                let shared = self.shared.upgrade()?;
                Some(Change::Resync(shared.current.load_full()))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The changes as a `Stream`.
    pub fn into_stream(self) -> impl futures::Stream<Item = Change> + Send + 'static {
        futures::stream::unfold(self, |mut changes| async move {
            changes.next().await.map(|change| (change, changes))
        })
    }
}

/// The writing side of a discovery cache, owned by a backend's watcher task.
///
/// Keys given to the feed are relative to the service's prefix, as the codec's
/// [`instance_key`](Codec::instance_key) makes them. Updates are gathered until
/// [`publish`](DiscoveryFeed::publish), so a batch of events from one watch response
/// becomes one snapshot; [`reset`](DiscoveryFeed::reset) and the connection markers
/// publish at once.
pub struct DiscoveryFeed {
    shared: Arc<Shared>,
    handle: Weak<Handle>,
    service: ServiceName,
    codec: Arc<dyn Codec>,
    options: WatchOptions,
    entries: imbl::HashMap<Arc<str>, Arc<Instance>>,
    pending: Vec<Change>,
    revision: u64,
    version: u64,
    connection: ConnectionState,
    /// The size of the last set the guard accepted.
    healthy: usize,
    /// Keys whose bad values were logged, so each is logged once.
    logged: HashSet<String>,
    /// Drain markers and the instances they keep out of the set.
    drain: drained::DrainMarkers,
    /// A marker came or went since the last publish.
    markers_changed: bool,
}

impl fmt::Debug for DiscoveryFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryFeed")
            .field("service", &self.service)
            .field("instances", &self.entries.len())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl DiscoveryFeed {
    /// A new, empty cache for `service`, decoding with `codec`: the feed for the
    /// backend's watcher and the first [`Discovery`] handle.
    pub fn new(
        service: ServiceName,
        codec: Arc<dyn Codec>,
        options: WatchOptions,
    ) -> (DiscoveryFeed, Discovery) {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(Snapshot::empty(service.clone())),
            changes,
            versions: watch::channel(0).0,
            skipped: AtomicU64::new(0),
        });
        let handle = Arc::new(Handle {
            shared: shared.clone(),
            watcher: Mutex::new(None),
        });
        let feed = DiscoveryFeed {
            shared,
            handle: Arc::downgrade(&handle),
            service: service.clone(),
            codec,
            options,
            entries: imbl::HashMap::new(),
            pending: Vec::new(),
            revision: 0,
            version: 0,
            connection: ConnectionState::Live,
            healthy: 0,
            logged: HashSet::new(),
            drain: Default::default(),
            markers_changed: false,
        };
        (feed, Discovery { handle, service })
    }

    /// Runs the backend's watcher on the feed in a task that lives as long as some
    /// [`Discovery`] handle does.
    pub fn spawn<F, Fut>(self, watcher: F)
    where
        F: FnOnce(DiscoveryFeed) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(handle) = self.handle.upgrade() else {
            return;
        };
        let task = tokio::spawn(watcher(self));
        *handle.watcher.lock().unwrap() = Some(task.abort_handle());
    }

    /// The service this feed is for.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The last revision applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether every [`Discovery`] handle is gone, so the watcher can stop.
    pub fn is_closed(&self) -> bool {
        self.handle.strong_count() == 0
    }

    /// The instance at `key`, and the key as the map holds it. The key shares the id's
    /// string when they are equal (the native layout) and the instance shares the
    /// service name, so a cache of N instances costs little more than N decoded values.
    fn decode(&mut self, key: &str, value: &[u8]) -> Option<(Arc<str>, Arc<Instance>)> {
        match self.codec.decode(&self.service, key, value) {
            Ok(mut instance) => {
                if !self.logged.is_empty() {
                    self.logged.remove(key);
                }
                instance.share_service(&self.service);
                let key = match instance.id().as_str() == key {
                    true => instance.id().shared().clone(),
                    false => Arc::from(key),
                };
                Some((key, Arc::new(instance)))
            }
            Err(e) => {
                self.shared.skipped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::DISCOVERY_SKIPPED, "service" => self.service.to_string())
                    .increment(1);
                if self.logged.insert(key.to_owned()) {
                    tracing::warn!(service = %self.service, key, error = %e, "skipping a value that does not decode");
                }
                None
            }
        }
    }

    /// Applies a put of `value` at `key`. A value that does not decode is skipped and
    /// counted; whatever the key held before is removed, since it no longer holds it.
    pub fn put(&mut self, key: &str, value: &[u8]) {
        if let Some(id) = self.codec.parse_drain_marker(key) {
            return self.put_marker(id, key, value);
        }
        match self.decode(key, value) {
            Some((key, instance)) if self.drain.is_drained(instance.id()) => {
                if let Some(old) = self.entries.remove(&key) {
                    self.pending.push(Change::Removed(old));
                }
                self.drain.hold_out(key, instance);
                self.markers_changed = true;
            }
            Some((key, instance)) => match self.entries.insert(key, instance.clone()) {
                None => self.pending.push(Change::Added(instance)),
                Some(old) if old != instance => self.pending.push(Change::Updated { old, new: instance }),
                Some(_) => {}
            },
            None => self.delete(key),
        }
    }

    /// Applies a delete of `key`.
    pub fn delete(&mut self, key: &str) {
        if let Some(id) = self.codec.parse_drain_marker(key) {
            return self.delete_marker(&id);
        }
        self.markers_changed |= self.drain.release(key);
        if let Some(old) = self.entries.remove(key) {
            self.pending.push(Change::Removed(old));
        }
        if self.healthy > self.entries.len() {
            self.healthy = self.entries.len();
        }
    }

    /// Records the registry revision the applied updates reach.
    pub fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    /// Replaces the whole set with a full listing at `revision`, emits the exact
    /// difference, and publishes. Subject to the guard in [`WatchOptions`].
    pub fn reset<K, V>(&mut self, listing: impl IntoIterator<Item = (K, V)>, revision: u64)
    where
        K: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut next = imbl::HashMap::new();
        let mut markers = imbl::OrdMap::new();
        for (key, value) in listing {
            let key = key.as_ref();
            if let Some(id) = self.codec.parse_drain_marker(key) {
                markers.insert(id, self.marker_value(key, value.as_ref()));
            } else if let Some((key, instance)) = self.decode(key, value.as_ref()) {
                next.insert(key, instance);
            }
        }
        let next = self.drain.reset(markers, next);
        self.markers_changed = true;
        self.revision = revision;
        if let Some(fraction) = self.options.guard {
            let floor = (self.healthy as f64 * fraction).ceil() as usize;
            if next.len() < floor {
                tracing::warn!(
                    service = %self.service,
                    listed = next.len(),
                    held = self.entries.len(),
                    floor,
                    "listing below the guard's floor; keeping the last healthy set"
                );
                for (key, instance) in next {
                    match self.entries.insert(key, instance.clone()) {
                        None => self.pending.push(Change::Added(instance)),
                        Some(old) if old != instance => {
                            self.pending.push(Change::Updated { old, new: instance })
                        }
                        Some(_) => {}
                    }
                }
                self.publish();
                return;
            }
        }
        for (key, old) in self.entries.iter() {
            if !next.contains_key(key) {
                self.pending.push(Change::Removed(old.clone()));
            }
        }
        for (key, new) in next.iter() {
            match self.entries.get(key) {
                None => self.pending.push(Change::Added(new.clone())),
                Some(old) if old != new => self.pending.push(Change::Updated {
                    old: old.clone(),
                    new: new.clone(),
                }),
                Some(_) => {}
            }
        }
        self.entries = next;
        self.healthy = self.entries.len();
        self.publish();
    }

    /// Publishes the snapshot and the changes gathered since the last publish.
    pub fn publish(&mut self) {
        self.healthy = self.healthy.max(self.entries.len());
        let changed = !self.pending.is_empty()
            || self.markers_changed
            || self.revision != self.shared.current.load().revision;
        if !changed {
            return;
        }
        self.markers_changed = false;
        self.store_snapshot();
        metrics::counter!(crate::metrics::DISCOVERY_CHANGES, "service" => self.service.to_string())
            .increment(self.pending.len() as u64);
        for change in self.pending.drain(..) {
            let _ = self.shared.changes.send(change);
        }
        // A listing of thousands leaves a large buffer behind; keep a modest one.
        self.pending.shrink_to(64);
    }

    /// Marks the set stale: the registry cannot be reached. Kept and served meanwhile.
    pub fn mark_stale(&mut self) {
        if let ConnectionState::Live = self.connection {
            let since = Instant::now();
            tracing::warn!(service = %self.service, "registry unreachable; serving the last known set");
            self.connection = ConnectionState::Stale { since };
            crate::metrics::discovery_staleness(&self.service, Some(std::time::SystemTime::now()), None);
            self.store_snapshot();
            let _ = self.shared.changes.send(Change::Stale { since });
        }
    }

    /// Marks the set live again. Call after the watch is re-established and any listing
    /// has been applied.
    pub fn mark_live(&mut self) {
        if let ConnectionState::Stale { since } = self.connection {
            tracing::info!(service = %self.service, stale_for = ?since.elapsed(), "registry reachable again");
            self.connection = ConnectionState::Live;
            crate::metrics::discovery_staleness(&self.service, None, Some(since.elapsed()));
            self.store_snapshot();
            let _ = self.shared.changes.send(Change::Live);
        }
    }

    fn store_snapshot(&mut self) {
        self.version += 1;
        self.shared.current.store(Arc::new(Snapshot {
            service: self.service.clone(),
            entries: self.entries.clone(),
            sorted: OnceLock::new(),
            revision: self.revision,
            version: self.version,
            connection: self.connection,
            drained: self.drained_view(),
        }));
        self.shared.versions.send_replace(self.version);
        metrics::gauge!(crate::metrics::DISCOVERY_INSTANCES, "service" => self.service.to_string())
            .set(self.entries.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NativeCodec;

    fn value(id: &str, weight: u32) -> Vec<u8> {
        let instance = Instance::builder("echo", "127.0.0.1:1")
            .id(id)
            .weight(weight)
            .build()
            .unwrap();
        serde_json::to_vec(&instance).unwrap()
    }

    fn feed(options: WatchOptions) -> (DiscoveryFeed, Discovery) {
        DiscoveryFeed::new(ServiceName::new("echo").unwrap(), Arc::new(NativeCodec), options)
    }

    fn ids(snapshot: &Snapshot) -> Vec<String> {
        snapshot.instances().iter().map(|i| i.id().to_string()).collect()
    }

    #[tokio::test]
    async fn puts_and_deletes_publish_changes_in_order() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        let mut changes = discovery.changes();
        feed.put("a", &value("a", 1));
        feed.put("b", &value("b", 1));
        assert!(
            discovery.snapshot().is_empty(),
            "nothing is visible before publish"
        );
        feed.publish();
        feed.put("a", &value("a", 2));
        feed.delete("b");
        feed.delete("never-there");
        feed.publish();
        assert_eq!(ids(&discovery.snapshot()), ["a"]);
        assert_eq!(
            discovery
                .snapshot()
                .get(&InstanceId::new("a").unwrap())
                .unwrap()
                .weight(),
            2
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(match changes.next().await.unwrap() {
                Change::Added(i) => format!("+{}", i.id()),
                Change::Removed(i) => format!("-{}", i.id()),
                Change::Updated { new, .. } => format!("~{}", new.id()),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(seen, ["+a", "+b", "~a", "-b"]);
    }

    #[tokio::test]
    async fn reset_emits_the_exact_difference() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        feed.reset([("a", value("a", 1)), ("b", value("b", 1))], 5);
        let mut changes = discovery.changes();
        feed.reset([("b", value("b", 3)), ("c", value("c", 1))], 9);
        let snapshot = discovery.snapshot();
        assert_eq!(ids(&snapshot), ["b", "c"]);
        assert_eq!(snapshot.revision(), 9);
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(match changes.next().await.unwrap() {
                Change::Added(i) => format!("+{}", i.id()),
                Change::Removed(i) => format!("-{}", i.id()),
                Change::Updated { new, .. } => format!("~{}", new.id()),
                other => format!("{other:?}"),
            });
        }
        seen.sort();
        assert_eq!(seen, ["+c", "-a", "~b"]);
    }

    #[test]
    fn undecodable_values_are_skipped_and_counted() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        feed.put("a", &value("a", 1));
        feed.put("junk", b"not json");
        feed.put("junk", b"still not json");
        feed.publish();
        assert_eq!(ids(&discovery.snapshot()), ["a"]);
        assert_eq!(discovery.skipped(), 2);
        feed.put("a", b"{corrupted");
        feed.publish();
        assert!(
            discovery.snapshot().is_empty(),
            "a key that no longer decodes no longer holds an instance"
        );
    }

    #[test]
    fn guard_holds_the_set_against_an_empty_listing() {
        let (mut feed, discovery) = feed(WatchOptions::guard(0.5).unwrap());
        feed.reset(
            [
                ("a", value("a", 1)),
                ("b", value("b", 1)),
                ("c", value("c", 1)),
                ("d", value("d", 1)),
            ],
            1,
        );
        feed.reset(Vec::<(String, Vec<u8>)>::new(), 2);
        assert_eq!(discovery.snapshot().len(), 4, "an empty listing is refused");
        feed.reset([("a", value("a", 1)), ("b", value("b", 1))], 3);
        assert_eq!(
            ids(&discovery.snapshot()),
            ["a", "b"],
            "a listing at the floor applies"
        );
        feed.delete("a");
        feed.delete("b");
        feed.publish();
        assert!(discovery.snapshot().is_empty(), "single deletes always apply");
    }

    #[test]
    fn without_guard_an_empty_listing_empties_the_set() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        feed.reset([("a", value("a", 1))], 1);
        feed.reset(Vec::<(String, Vec<u8>)>::new(), 2);
        assert!(discovery.snapshot().is_empty());
    }

    #[tokio::test]
    async fn stale_and_live_are_marked_and_announced() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        let mut changes = discovery.changes();
        feed.mark_stale();
        assert!(discovery.connection().stale_for().is_some());
        feed.mark_live();
        assert!(discovery.connection().is_live());
        assert!(matches!(changes.next().await, Some(Change::Stale { .. })));
        assert!(matches!(changes.next().await, Some(Change::Live)));
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_a_resync() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        let mut changes = discovery.changes();
        for n in 0..(CHANGE_BUFFER + 10) {
            feed.put(&format!("k{n}"), &value(&format!("k{n}"), 1));
            feed.publish();
        }
        match changes.next().await {
            Some(Change::Resync(snapshot)) => assert_eq!(snapshot.len(), CHANGE_BUFFER + 10),
            other => panic!("expected a resync, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_watcher() {
        let (feed, discovery) = feed(WatchOptions::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        feed.spawn(|_feed| async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        let clone = discovery.clone();
        drop(discovery);
        drop(clone);
        assert!(
            rx.await.is_err(),
            "the watcher task was aborted and dropped its sender"
        );
    }

    #[tokio::test]
    async fn changes_end_when_the_watch_ends() {
        let (feed, discovery) = feed(WatchOptions::default());
        feed.spawn(|_feed| std::future::pending::<()>());
        let mut changes = discovery.changes();
        drop(discovery);
        let next = tokio::time::timeout(Duration::from_secs(10), changes.next()).await;
        assert!(
            matches!(next, Ok(None)),
            "a subscriber whose watch has stopped is told so, got {next:?}"
        );
    }
}
