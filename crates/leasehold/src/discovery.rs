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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
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

/// The instances of a service at one moment, in no particular order: a persistent
/// vector that the next snapshot shares all but O(log n) of, so publishing a change and
/// reading the new snapshot cost O(log n) whatever the size of the set.
///
/// Indexing is O(log n) (a few pointer hops), cloning O(1). Balancers index it as it is;
/// [`Snapshot::members`] gives it.
#[derive(Clone, Default)]
pub struct Instances(imbl::Vector<Arc<Instance>>);

impl Instances {
    /// How many instances there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The instance at `index`, in O(log n).
    pub fn get(&self, index: usize) -> Option<&Arc<Instance>> {
        self.0.get(index)
    }

    /// Every instance, in slot order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<Instance>> + '_ {
        self.0.iter()
    }

    /// Whether `self` and `other` are the same set (not only equal ones): a cheap check
    /// that a table built for one still fits the other.
    pub fn ptr_eq(&self, other: &Instances) -> bool {
        self.0.ptr_eq(&other.0)
    }
}

impl std::ops::Index<usize> for Instances {
    type Output = Arc<Instance>;
    fn index(&self, index: usize) -> &Arc<Instance> {
        &self.0[index]
    }
}

impl FromIterator<Arc<Instance>> for Instances {
    fn from_iter<T: IntoIterator<Item = Arc<Instance>>>(iter: T) -> Self {
        Instances(iter.into_iter().collect())
    }
}

impl fmt::Debug for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|i| i.key())).finish()
    }
}

/// The instances of a service at one moment. Immutable: a new snapshot is published for
/// every change, sharing structure with the last.
///
/// Each instance is identified by its registry [`key`](Instance::key). Readers that
/// follow every change use [`members`](Snapshot::members), which costs nothing to get;
/// [`instances`](Snapshot::instances) sorts a copy, for display and tests.
pub struct Snapshot {
    service: ServiceName,
    members: Instances,
    sorted: OnceLock<Arc<[Arc<Instance>]>>,
    revision: u64,
    version: u64,
    origin: u64,
    edits: Option<Arc<Edits>>,
    connection: ConnectionState,
    /// Drained ids, each with the instance to show for it.
    drained: imbl::OrdMap<InstanceId, Option<Arc<Instance>>>,
}

/// The changes that made one snapshot from the one before it, linked to the edits
/// before those while the feed's [`History`] keeps them.
struct Edits {
    version: u64,
    changes: Box<[Change]>,
    before: ArcSwapOption<Edits>,
}

/// The recent edits, so a reader holding a table built for an older snapshot of the same
/// cache can apply what changed instead of rebuilding.
#[derive(Default)]
struct History {
    recent: VecDeque<Arc<Edits>>,
}

impl History {
    /// How many publishes back a reader can catch up from.
    const DEPTH: usize = 256;
    /// Larger batches (a full listing) are not kept: a reader rebuilds, once.
    const MAX_BATCH: usize = 1024;

    fn record(&mut self, version: u64, changes: &[Change]) -> Option<Arc<Edits>> {
        if changes.len() > Self::MAX_BATCH {
            self.recent.clear();
            return None;
        }
        let edits = Arc::new(Edits {
            version,
            changes: changes.into(),
            before: ArcSwapOption::new(self.recent.back().cloned()),
        });
        self.recent.push_back(edits.clone());
        if self.recent.len() > Self::DEPTH {
            self.recent.pop_front();
            if let Some(oldest) = self.recent.front() {
                oldest.before.store(None);
            }
        }
        Some(edits)
    }
}

/// A number no other cache's snapshots carry.
fn next_origin() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
        Self::of(service, Instances::default())
    }

    /// A snapshot of `instances`, outside any cache: for balancing over a fixed list,
    /// and for tests. It has no revision and no edits.
    pub fn of(service: ServiceName, instances: Instances) -> Self {
        Snapshot {
            service,
            members: instances,
            sorted: OnceLock::new(),
            revision: 0,
            version: 0,
            origin: next_origin(),
            edits: None,
            drained: imbl::OrdMap::new(),
            connection: ConnectionState::Live,
        }
    }

    /// The instances an operator drained (`Registry::drain`), sorted by id: out of the
    /// set ([`members`](Snapshot::members), [`instances`](Snapshot::instances)), listed
    /// here for dashboards and the xDS server. Each comes with the instance its drain
    /// marker recorded, or the one still registered under it; `None` when neither is
    /// known.
    pub fn drained(&self) -> impl Iterator<Item = (&InstanceId, Option<&Arc<Instance>>)> + '_ {
        self.drained.iter().map(|(id, shown)| (id, shown.as_ref()))
    }

    /// Whether an operator drained the instance `id`.
    pub fn is_drained(&self, id: &InstanceId) -> bool {
        self.drained.contains_key(id)
    }

    /// Identifies the cache this snapshot comes from: snapshots of one cache share it, and
    /// no other cache's do. With [`version`](Snapshot::version) it names a state of the set.
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The changes from this cache's snapshot at `version` to this one, oldest first,
    /// if they are still held (about the last 256 publishes, except full listings of
    /// more than 1,024 changes); `None` means: read [`members`](Snapshot::members) anew.
    /// Lets a reader that keeps a table per set pay per change, not per instance.
    /// Check [`origin`](Snapshot::origin) first: versions of other caches mean nothing
    /// here.
    pub fn changes_since(&self, version: u64) -> Option<Vec<Change>> {
        if version == self.version {
            return Some(Vec::new());
        }
        if version > self.version {
            return None;
        }
        let mut chain: Vec<Arc<Edits>> = Vec::new();
        let mut at = self.edits.clone()?;
        loop {
            let before = at.before.load_full();
            let reached = at.version == version + 1;
            chain.push(at);
            if reached {
                break;
            }
            at = before?;
        }
        Some(
            chain
                .iter()
                .rev()
                .flat_map(|edits| edits.changes.iter().cloned())
                .collect(),
        )
    }

    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The instances as the cache holds them, in no particular order: O(1) to get,
    /// O(log n) to index, shared with the snapshots before and after. What a reader
    /// that runs on every change (a balancer) should use.
    pub fn members(&self) -> &Instances {
        &self.members
    }

    /// The instances sorted by id (then key). Built once per snapshot, on first use, in
    /// O(n log n): for listings and tests, not for readers that run on every change.
    pub fn instances(&self) -> &Arc<[Arc<Instance>]> {
        self.sorted.get_or_init(|| {
            let mut all: Vec<Arc<Instance>> = self.members.iter().cloned().collect();
            all.sort_by(|a, b| a.id().cmp(b.id()).then_with(|| a.key().cmp(b.key())));
            all.into()
        })
    }

    /// An instance with this id, if present (through [`instances`](Snapshot::instances)).
    pub fn get(&self, id: &InstanceId) -> Option<&Arc<Instance>> {
        let all = self.instances();
        all.binary_search_by(|i| i.id().cmp(id)).ok().map(|at| &all[at])
    }

    /// How many instances there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
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
///
/// Changes are per registry key: `Added` and `Removed` name the instance at one key
/// ([`Instance::key`]), so when two keys briefly hold one id (a restart with a stable
/// id), the removal of the old key is not the removal of the live instance.
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
    set: SnapshotWriter,
    revision: u64,
    connection: ConnectionState,
    /// The size of the last set the guard accepted.
    healthy: usize,
    /// Keys whose bad values were logged, so each is logged once; a key leaves it when
    /// it decodes again or is deleted.
    logged: HashSet<Box<str>>,
    /// Drain markers and the instances they keep out of the set.
    drain: drained::DrainMarkers,
    /// A marker came or went since the last publish.
    markers_changed: bool,
}

impl fmt::Debug for DiscoveryFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryFeed")
            .field("service", &self.service)
            .field("instances", &self.set.len())
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
            set: SnapshotWriter::new(service.clone()),
            revision: 0,
            connection: ConnectionState::Live,
            healthy: 0,
            logged: HashSet::new(),
            drain: drained::DrainMarkers::default(),
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

    /// The instance at `key`, which knows its key and shares the service name, so a
    /// cache of N instances costs little more than N decoded values.
    fn decode(&mut self, key: &str, value: &[u8]) -> Option<Arc<Instance>> {
        match self.codec.decode(&self.service, key, value) {
            Ok(mut instance) => {
                if !self.logged.is_empty() {
                    self.logged.remove(key);
                }
                instance.share_service(&self.service);
                instance.set_key(key);
                Some(Arc::new(instance))
            }
            Err(e) => {
                self.shared.skipped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::DISCOVERY_SKIPPED, "service" => self.service.to_string())
                    .increment(1);
                if self.logged.insert(key.into()) {
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
            Some(instance) if self.drain.is_drained(instance.id()) => {
                self.set.remove(key);
                self.drain.hold_out(instance.shared_key().clone(), instance);
                self.markers_changed = true;
            }
            Some(instance) => self.set.insert(instance),
            None => {
                self.set.remove(key);
                self.markers_changed |= self.drain.release(key);
            }
        }
    }

    /// Applies a delete of `key`.
    pub fn delete(&mut self, key: &str) {
        if let Some(id) = self.codec.parse_drain_marker(key) {
            return self.delete_marker(&id);
        }
        if !self.logged.is_empty() {
            self.logged.remove(key);
        }
        self.markers_changed |= self.drain.release(key);
        self.set.remove(key);
        if self.healthy > self.set.len() {
            self.healthy = self.set.len();
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
        let mut next: HashMap<Arc<str>, Arc<Instance>> = HashMap::new();
        let mut undecodable: HashSet<Box<str>> = HashSet::new();
        let mut markers = imbl::OrdMap::new();
        for (key, value) in listing {
            if let Some(id) = self.codec.parse_drain_marker(key.as_ref()) {
                markers.insert(id, self.marker_value(key.as_ref(), value.as_ref()));
                continue;
            }
            match self.decode(key.as_ref(), value.as_ref()) {
                Some(instance) => {
                    next.insert(instance.shared_key().clone(), instance);
                }
                None => {
                    undecodable.insert(key.as_ref().into());
                }
            }
        }
        // Undecodable keys that the listing no longer has are forgotten.
        self.logged.retain(|key| undecodable.contains(key));
        let next = self.drain.reset(markers, next);
        self.markers_changed = true;
        self.revision = revision;
        if let Some(fraction) = self.options.guard {
            let floor = (self.healthy as f64 * fraction).ceil() as usize;
            if next.len() < floor {
                tracing::warn!(
                    service = %self.service,
                    listed = next.len(),
                    held = self.set.len(),
                    floor,
                    "listing below the guard's floor; keeping the last healthy set"
                );
                for instance in next.into_values() {
                    self.set.insert(instance);
                }
                self.publish();
                return;
            }
        }
        let gone: Vec<Arc<str>> = self
            .set
            .keys()
            .filter(|key| !next.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            self.set.remove(&key);
        }
        for instance in next.into_values() {
            self.set.insert(instance);
        }
        self.healthy = self.set.len();
        self.publish();
    }

    /// Publishes the snapshot and the changes gathered since the last publish.
    pub fn publish(&mut self) {
        self.healthy = self.healthy.max(self.set.len());
        let changed = self.set.has_pending()
            || self.markers_changed
            || self.revision != self.shared.current.load().revision;
        if !changed {
            return;
        }
        self.store_snapshot();
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

    /// Publishes the set with the changes gathered since the last snapshot: stored as
    /// the snapshot's edits for readers that update tables, and sent to subscribers.
    fn store_snapshot(&mut self) {
        let (mut snapshot, changes) = self.set.publish(self.revision, self.connection);
        snapshot.drained = self.drained_view();
        self.markers_changed = false;
        let version = snapshot.version();
        self.shared.current.store(Arc::new(snapshot));
        metrics::counter!(crate::metrics::DISCOVERY_CHANGES, "service" => self.service.to_string())
            .increment(changes.len() as u64);
        metrics::gauge!(crate::metrics::DISCOVERY_INSTANCES, "service" => self.service.to_string())
            .set(self.set.len() as f64);
        for change in changes {
            let _ = self.shared.changes.send(change);
        }
        self.shared.versions.send_replace(version);
    }
}

/// A set of instances kept by hand, published as [`Snapshot`]s with their edits, as a
/// discovery cache publishes them: what a [`DiscoveryFeed`] keeps its set in, and what a
/// reader that derives sub-sets (a zone's instances) keeps them in, so readers of those
/// pay per change too.
///
/// Instances are identified by their [`key`](Instance::key). Removing one moves the last
/// slot into its place, so the set stays dense and indexable.
pub struct SnapshotWriter {
    service: ServiceName,
    /// The set, shared with the published snapshots.
    members: imbl::Vector<Arc<Instance>>,
    /// Each key's slot in `members`. The writer's alone: readers never look up by key,
    /// so a plain map (a third of a persistent one's memory) is enough.
    slots: HashMap<Arc<str>, u32>,
    pending: Vec<Change>,
    history: History,
    origin: u64,
    version: u64,
}

impl fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("service", &self.service)
            .field("instances", &self.members.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    /// An empty set of `service`'s instances.
    pub fn new(service: ServiceName) -> Self {
        SnapshotWriter {
            service,
            members: imbl::Vector::new(),
            slots: HashMap::new(),
            pending: Vec::new(),
            history: History::default(),
            origin: next_origin(),
            version: 0,
        }
    }

    /// How many instances the set holds, published or not.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether an instance is held at `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.slots.contains_key(key)
    }

    /// The keys held.
    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.slots.keys()
    }

    /// The instances held, in slot order.
    pub fn instances(&self) -> impl Iterator<Item = &Arc<Instance>> + '_ {
        self.members.iter()
    }

    /// Whether changes wait to be published.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Puts `instance` at its key (as an addition, or an update of what the key held),
    /// recorded for the next publish.
    pub fn insert(&mut self, instance: Arc<Instance>) {
        match self.slots.get(instance.key()) {
            Some(&slot) => {
                let old = self.members.set(slot as usize, instance.clone());
                if old != instance {
                    self.pending.push(Change::Updated { old, new: instance });
                }
            }
            None => {
                self.slots
                    .insert(instance.shared_key().clone(), self.members.len() as u32);
                self.members.push_back(instance.clone());
                self.pending.push(Change::Added(instance));
            }
        }
    }

    /// Removes the instance at `key`, moving the last slot into its place; whether
    /// there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some(slot) = self.slots.remove(key) else {
            return false;
        };
        let last = self.members.pop_back().expect("a slot implies a member");
        let old = if slot as usize == self.members.len() {
            last
        } else {
            self.slots.insert(last.shared_key().clone(), slot);
            self.members.set(slot as usize, last)
        };
        self.pending.push(Change::Removed(old));
        true
    }

    /// The next snapshot, at `revision` and `connection`, and the changes that made it.
    pub fn publish(&mut self, revision: u64, connection: ConnectionState) -> (Snapshot, Vec<Change>) {
        self.version += 1;
        let changes: Vec<Change> = self.pending.drain(..).collect();
        // A listing of thousands leaves a large buffer behind; keep a modest one.
        self.pending.shrink_to(64);
        let edits = self.history.record(self.version, &changes);
        let snapshot = Snapshot {
            service: self.service.clone(),
            members: Instances(self.members.clone()),
            sorted: OnceLock::new(),
            revision,
            version: self.version,
            origin: self.origin,
            edits,
            connection,
            drained: imbl::OrdMap::new(),
        };
        (snapshot, changes)
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
    fn undecodable_keys_are_forgotten_once_deleted_or_no_longer_listed() {
        let (mut feed, _discovery) = feed(WatchOptions::default());
        feed.put("junk-1", b"not json");
        feed.put("junk-2", b"not json");
        feed.publish();
        assert_eq!(feed.logged.len(), 2);
        feed.delete("junk-1");
        feed.publish();
        assert_eq!(feed.logged.len(), 1, "a deleted key is forgotten");
        feed.reset([("junk-3", b"not json".to_vec()), ("a", value("a", 1))], 2);
        let logged: Vec<&str> = feed.logged.iter().map(|k| &**k).collect();
        assert_eq!(logged, ["junk-3"], "a key no longer listed is forgotten");
    }

    #[tokio::test]
    async fn two_keys_with_one_id_are_two_instances_and_removing_the_old_keeps_the_new() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        feed.put("_c_old-0000000001", &value("stable", 1));
        feed.publish();
        let mut changes = discovery.changes();
        feed.put("_c_new-0000000002", &value("stable", 1));
        feed.delete("_c_old-0000000001");
        feed.publish();
        let snapshot = discovery.snapshot();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot.members()[0].key(), "_c_new-0000000002");
        assert_eq!(snapshot.members()[0].id().as_str(), "stable");
        match changes.next().await {
            Some(Change::Added(i)) => assert_eq!(i.key(), "_c_new-0000000002"),
            other => panic!("{other:?}"),
        }
        match changes.next().await {
            Some(Change::Removed(i)) => assert_eq!(i.key(), "_c_old-0000000001"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn members_stay_dense_through_deletes_in_any_order() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        let keys: Vec<String> = (0..200).map(|n| format!("k{n:03}")).collect();
        feed.reset(keys.iter().map(|k| (k.clone(), value(k, 1))), 1);
        for k in keys.iter().step_by(3) {
            feed.delete(k);
        }
        feed.put("k001", &value("k001", 9));
        feed.publish();
        let snapshot = discovery.snapshot();
        let mut held: Vec<&str> = snapshot.members().iter().map(|i| i.key()).collect();
        held.sort();
        let expected: Vec<&str> = keys
            .iter()
            .enumerate()
            .filter(|(n, _)| n % 3 != 0)
            .map(|(_, k)| k.as_str())
            .collect();
        assert_eq!(held, expected);
        assert_eq!(
            snapshot.get(&InstanceId::new("k001").unwrap()).unwrap().weight(),
            9,
            "a put to a held key updates its slot"
        );
    }

    fn keys_of(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match change {
                Change::Added(i) => format!("+{}", i.key()),
                Change::Removed(i) => format!("-{}", i.key()),
                Change::Updated { new, .. } => format!("~{}", new.key()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_reader_gets_the_changes_since_its_version_or_none_once_they_are_gone() {
        let (mut feed, discovery) = feed(WatchOptions::default());
        feed.reset([("a", value("a", 1))], 1);
        let start = discovery.snapshot();
        feed.put("b", &value("b", 1));
        feed.publish();
        feed.mark_stale();
        feed.put("a", &value("a", 2));
        feed.delete("b");
        feed.publish();
        let now = discovery.snapshot();
        assert_eq!(now.origin(), start.origin());
        assert_eq!(
            keys_of(&now.changes_since(start.version()).unwrap()),
            ["+b", "~a", "-b"]
        );
        assert!(now.changes_since(now.version()).unwrap().is_empty());
        for n in 0..History::DEPTH + 1 {
            feed.put("c", &value("c", n as u32 % 7 + 1));
            feed.publish();
        }
        assert!(discovery.snapshot().changes_since(start.version()).is_none());
        let listing: Vec<(String, Vec<u8>)> = (0..History::MAX_BATCH + 1)
            .map(|n| (format!("k{n}"), value(&format!("k{n}"), 1)))
            .collect();
        let before = discovery.snapshot();
        feed.reset(listing, 2);
        assert!(
            discovery.snapshot().changes_since(before.version()).is_none(),
            "a large listing is read anew"
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
