//! The in-process registry, for tests and demos.
//!
//! [`MemoryStore`] plays the server: a revisioned key-value store with leases that expire
//! TTL after their last keepalive and watches that see every change in order, like etcd.
//! [`MemoryRegistry`] is a client of it with the same semantics as the real backends: one
//! lease per TTL kept alive at TTL/3, recovery through the shared
//! [`Registrar`], one listing then incremental watch
//! events, and reconnection with a re-list when the store breaks its watches. Like the
//! real backends it refuses a live duplicate id of another client
//! ([`Error::Conflict`]), follows the services it registers in (deletes, drain
//! markers), and implements operator drain in the native format.
//!
//! The store can also misbehave on purpose — [`wipe`](MemoryStore::wipe) it,
//! make it [unreachable](MemoryStore::set_reachable), or [crash](MemoryRegistry::crash)
//! a client — so recovery paths can be exercised without a real server.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> leasehold::Result<()> {
//! use leasehold::memory::MemoryRegistry;
//! use leasehold::{Instance, RegisterOptions, Registry, ServiceName, WatchOptions};
//!
//! let registry = MemoryRegistry::new();
//! let echo = ServiceName::new("echo")?;
//! let discovery = registry.watch(&echo, WatchOptions::default()).await?;
//! let instance = Instance::builder("echo", "127.0.0.1:7001").id("e1").build()?;
//! let registration = registry.register(instance, RegisterOptions::default()).await?;
//! let snapshot = discovery
//!     .wait_for(std::time::Duration::from_secs(5), |s| s.len() == 1)
//!     .await
//!     .expect("the watcher sees the registration");
//! assert_eq!(snapshot.instances()[0].id().as_str(), "e1");
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::codec::{decode_listing, KeyContext};
use crate::formats::RegistryKind;
use crate::registrar::{LeaseBackend, LeaseError, LeaseEvents, Registrar, Write, WriteOutcome};
use crate::{
    Backoff, Codec, Discovery, DiscoveryFeed, Error, Instance, InstanceId, NativeCodec, RegisterOptions,
    Registration, Registry, RegistryUrl, Result, ServiceName, WatchOptions,
};

/// The default root of the native key layout.
pub const DEFAULT_ROOT: &str = "/leasehold/services";

/// Keys and values, in key order.
type Listing = Vec<(String, Vec<u8>)>;

/// How often the store looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(50);

/// One change seen by a store watch.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Event {
    Put {
        key: String,
        value: Vec<u8>,
        revision: u64,
    },
    Delete {
        key: String,
        revision: u64,
        /// The lease the key was under.
        lease: Option<u64>,
    },
}

struct Kv {
    value: Vec<u8>,
    lease: Option<u64>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: HashSet<String>,
    events: LeaseEvents,
}

struct Watcher {
    prefix: String,
    tx: mpsc::UnboundedSender<Event>,
}

#[derive(Default)]
struct State {
    revision: u64,
    kvs: BTreeMap<String, Kv>,
    leases: HashMap<u64, Lease>,
    next_lease: u64,
    watchers: Vec<Watcher>,
    unreachable: bool,
    reaper: Option<JoinHandle<()>>,
}

impl State {
    fn notify(&mut self, event: Event) {
        let key = match &event {
            Event::Put { key, .. } | Event::Delete { key, .. } => key,
        };
        self.watchers
            .retain(|w| !key.starts_with(&w.prefix) || w.tx.send(event.clone()).is_ok());
    }

    /// Writes `key`. A key taken from another lease is no longer that lease's: its
    /// owner is told, as etcd's own-key watch would tell it.
    fn put(&mut self, key: String, value: Vec<u8>, lease: Option<u64>) {
        self.revision += 1;
        if let Some(old) = self.kvs.get(&key).and_then(|kv| kv.lease) {
            if Some(old) != lease {
                if let Some(old) = self.leases.get_mut(&old) {
                    old.keys.remove(&key);
                    old.events.key_deleted(key.as_str());
                }
            }
        }
        if let Some(lease) = lease.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.insert(key.clone());
        }
        self.kvs.insert(
            key.clone(),
            Kv {
                value: value.clone(),
                lease,
            },
        );
        let revision = self.revision;
        self.notify(Event::Put { key, value, revision });
    }

    /// Deletes `key`; returns the lease it was under, if it existed.
    fn delete(&mut self, key: &str) -> Option<Option<u64>> {
        let kv = self.kvs.remove(key)?;
        if let Some(lease) = kv.lease.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.remove(key);
        }
        self.revision += 1;
        let revision = self.revision;
        self.notify(Event::Delete {
            key: key.to_owned(),
            revision,
            lease: kv.lease,
        });
        Some(kv.lease)
    }

    fn revoke(&mut self, id: u64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        let mut keys: Vec<_> = lease.keys.into_iter().collect();
        keys.sort();
        for key in keys {
            self.delete(&key);
        }
        true
    }

    /// The live lease other than `ours` that holds `key`, if any.
    fn held_by_other(&self, key: &str, ours: u64) -> Option<u64> {
        let holder = self.kvs.get(key)?.lease?;
        (holder != ours && self.leases.contains_key(&holder)).then_some(holder)
    }

    fn range(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.kvs
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, kv)| (k.clone(), kv.value.clone()))
            .collect()
    }

    fn check_reachable(&self) -> Result<()> {
        if self.unreachable {
            Err(Error::Unreachable {
                endpoints: "memory://".into(),
                source: "the in-process registry is set unreachable".into(),
            })
        } else {
            Ok(())
        }
    }
}

/// The in-process registry server: keys, revisions, leases and watches.
///
/// Clones share one store. Leases need a Tokio runtime: the first grant starts a task
/// that expires them.
#[derive(Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().unwrap();
        f.debug_struct("MemoryStore")
            .field("revision", &state.revision)
            .field("keys", &state.kvs.len())
            .field("leases", &state.leases.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The process-wide store called `name` (`memory://name`; `memory://` is the name
    /// `""`), so clients in one process that use the same URL share it.
    pub fn named(name: &str) -> MemoryStore {
        static STORES: OnceLock<Mutex<HashMap<String, MemoryStore>>> = OnceLock::new();
        STORES
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The current revision: the number of changes made so far.
    pub fn revision(&self) -> u64 {
        self.state.lock().unwrap().revision
    }

    /// How many leases are alive.
    pub fn lease_count(&self) -> usize {
        self.state.lock().unwrap().leases.len()
    }

    /// Every key and value under `prefix`, as a backend-agnostic view for tests.
    pub fn dump(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.state.lock().unwrap().range(prefix)
    }

    /// Writes a raw value with no lease, as a foreign writer would (for corrupt-value
    /// tests and other formats' keys).
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .put(key.to_owned(), value.to_vec(), None);
    }

    /// Deletes a raw key, as another client would; its owner is told.
    pub fn delete_raw(&self, key: &str) -> bool {
        let mut state = self.state.lock().unwrap();
        match state.delete(key) {
            Some(Some(lease)) => {
                if let Some(lease) = state.leases.get(&lease) {
                    lease.events.key_deleted(key);
                }
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    /// Loses every key and lease and breaks every watch, as a registry restarted with
    /// its data wiped. Clients recover: new leases, keys written again, watches re-listed.
    pub fn wipe(&self) {
        let mut state = self.state.lock().unwrap();
        state.kvs.clear();
        state.leases.clear();
        state.watchers.clear();
    }

    /// Makes the store unreachable (every request fails, every watch breaks) or
    /// reachable again. Leases keep their deadlines meanwhile, as a partitioned client's
    /// would: an outage longer than a TTL loses that lease.
    pub fn set_reachable(&self, reachable: bool) {
        let mut state = self.state.lock().unwrap();
        state.unreachable = !reachable;
        if !reachable {
            state.watchers.clear();
        }
    }

    fn grant(&self, ttl: Duration, events: LeaseEvents) -> Result<u64> {
        let mut state = self.state.lock().unwrap();
        state.check_reachable()?;
        if state.reaper.as_ref().is_none_or(|task| task.is_finished()) {
            state.reaper = Some(tokio::spawn(reap(Arc::downgrade(&self.state))));
        }
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: HashSet::new(),
                events,
            },
        );
        Ok(id)
    }

    /// Renews a lease; `Ok(false)` if it no longer exists.
    fn keep_alive(&self, id: u64) -> Result<bool> {
        let mut state = self.state.lock().unwrap();
        state.check_reachable()?;
        Ok(match state.leases.get_mut(&id) {
            Some(lease) => {
                lease.deadline = Instant::now() + lease.ttl;
                true
            }
            None => false,
        })
    }

    /// The keys and values under `prefix`, the revision, and a watch of every change
    /// after that revision: taken under one lock, so nothing falls between the listing
    /// and the watch.
    fn list_and_watch(&self, prefix: &str) -> Result<(Listing, u64, mpsc::UnboundedReceiver<Event>)> {
        let mut state = self.state.lock().unwrap();
        state.check_reachable()?;
        let (tx, rx) = mpsc::unbounded_channel();
        state.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            tx,
        });
        Ok((state.range(prefix), state.revision, rx))
    }
}

async fn reap(state: Weak<Mutex<State>>) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let mut state = state.lock().unwrap();
        let now = Instant::now();
        let expired: Vec<u64> = state
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            tracing::debug!(lease = id, "memory registry: lease expired");
            state.revoke(id);
        }
    }
}

/// The lease backend of [`MemoryRegistry`].
#[derive(Debug)]
struct Backend {
    store: MemoryStore,
    root: String,
    codec: Arc<dyn Codec>,
    crashed: Arc<AtomicBool>,
}

/// A lease of [`MemoryRegistry`]; its keepalive task and the followers of its services
/// stop when it is dropped.
struct MemoryLease {
    id: u64,
    keepalive: JoinHandle<()>,
    events: LeaseEvents,
    /// The services whose keys and drain markers this lease follows.
    followed: Mutex<HashMap<ServiceName, JoinHandle<()>>>,
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.keepalive.abort();
        for (_, follower) in self.followed.lock().unwrap().drain() {
            follower.abort();
        }
    }
}

impl Backend {
    fn check_alive(&self) -> Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn unsupported_drain(&self) -> Error {
        Error::Unsupported {
            what: "operator drain".into(),
            by: format!("by the {} format", self.codec.name()),
        }
    }

    /// Starts following `services` under `lease`, those it does not follow yet: their
    /// drain markers now (before returning), then every marker change and every delete
    /// of another lease's key, so the registrar learns of drains and of conflicting keys
    /// that went away.
    fn follow(&self, lease: &MemoryLease, services: &[&ServiceName]) -> Result<()> {
        let mut followed = lease.followed.lock().unwrap();
        for service in services {
            if followed.get(*service).is_some_and(|task| !task.is_finished()) {
                continue;
            }
            let prefix = self.codec.service_prefix(&self.root, service);
            let (listing, _, events) = self.store.list_and_watch(&prefix)?;
            lease
                .events
                .drained_set((*service).clone(), self.markers(&prefix, &listing));
            let follower = Follower {
                store: self.store.clone(),
                codec: self.codec.clone(),
                service: (*service).clone(),
                prefix,
                lease_id: lease.id,
                lease: lease.events.clone(),
            };
            followed.insert((*service).clone(), tokio::spawn(follower.run(events)));
        }
        Ok(())
    }

    /// The ids drained by markers in a listing of `prefix`.
    fn markers(&self, prefix: &str, listing: &Listing) -> Vec<InstanceId> {
        listing
            .iter()
            .filter_map(|(key, _)| self.codec.parse_drain_marker(&key[prefix.len()..]))
            .collect()
    }

    /// The key of the live registration of another lease than `ours` that has
    /// `instance`'s id, if there is one.
    fn conflict(&self, state: &State, ours: u64, key: &str, instance: &Instance) -> Option<String> {
        if state.held_by_other(key, ours).is_some() {
            return Some(key.to_owned());
        }
        if self.codec.instance_key(instance, &KeyContext::default()) == instance.id().as_str() {
            // Keys are ids: no other key can hold this id.
            return None;
        }
        let prefix = self.codec.service_prefix(&self.root, instance.service());
        state
            .kvs
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| state.held_by_other(k, ours).is_some())
            .find(|(k, kv)| {
                self.codec
                    .decode(instance.service(), &k[prefix.len()..], &kv.value)
                    .is_ok_and(|other| other.id() == instance.id())
            })
            .map(|(k, _)| k.clone())
    }
}

/// Follows one service for a lease: reports drain markers and deletes of other leases'
/// keys, and after the store broke the watch, the whole marker set again.
struct Follower {
    store: MemoryStore,
    codec: Arc<dyn Codec>,
    service: ServiceName,
    prefix: String,
    /// The lease followed. Deletes of its own keys are not reported from here: it made
    /// them itself, it expired, or another client made them and the store told the
    /// owner under its lock (`MemoryStore::delete_raw`). Seen here, a delete arrives
    /// after the store may have moved on (a pause then a resume writes the same key
    /// again), too late to tell an old delete from a new one.
    lease_id: u64,
    lease: LeaseEvents,
}

impl Follower {
    async fn run(self, mut events: mpsc::UnboundedReceiver<Event>) {
        loop {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Put { key, .. } => {
                        if let Some(id) = self.codec.parse_drain_marker(&key[self.prefix.len()..]) {
                            self.lease.drain_changed(self.service.clone(), id, true);
                        }
                    }
                    Event::Delete { key, lease, .. } => {
                        match self.codec.parse_drain_marker(&key[self.prefix.len()..]) {
                            Some(id) => self.lease.drain_changed(self.service.clone(), id, false),
                            None if lease == Some(self.lease_id) => {}
                            None => self.lease.key_deleted(key),
                        }
                    }
                }
            }
            events = loop {
                if self.lease.is_closed() {
                    return;
                }
                tokio::time::sleep(REAP_INTERVAL).await;
                if let Ok((listing, _, events)) = self.store.list_and_watch(&self.prefix) {
                    let drained = listing
                        .iter()
                        .filter_map(|(key, _)| self.codec.parse_drain_marker(&key[self.prefix.len()..]))
                        .collect();
                    self.lease.drained_set(self.service.clone(), drained);
                    break events;
                }
            };
        }
    }
}

#[async_trait]
impl LeaseBackend for Backend {
    type Lease = MemoryLease;

    async fn grant(&self, ttl: Duration, events: LeaseEvents) -> Result<MemoryLease> {
        self.check_alive()?;
        let id = self.store.grant(ttl, events.clone())?;
        let lease_events = events.clone();
        let store = self.store.clone();
        let crashed = self.crashed.clone();
        let keepalive = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                if crashed.load(Ordering::SeqCst) || events.is_closed() {
                    return;
                }
                match store.keep_alive(id) {
                    Ok(true) => {}
                    Ok(false) => {
                        events.lost(format!("lease {id} not found"));
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "memory registry: keepalive failed"),
                }
            }
        });
        Ok(MemoryLease {
            id,
            keepalive,
            events: lease_events,
            followed: Mutex::new(HashMap::new()),
        })
    }

    async fn put(&self, lease: &MemoryLease, writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError> {
        self.check_alive()?;
        let mut services: Vec<&ServiceName> = writes.iter().map(|w| w.instance.service()).collect();
        services.sort();
        services.dedup();
        self.follow(lease, &services)?;
        let mut encoded = Vec::with_capacity(writes.len());
        for write in writes {
            let instance = write.instance;
            let key = format!(
                "{}{}",
                self.codec.service_prefix(&self.root, instance.service()),
                self.codec.instance_key(instance, &KeyContext::default())
            );
            encoded.push((key, instance, self.codec.encode(instance).map_err(Error::from)));
        }
        let mut state = self.store.state.lock().unwrap();
        state.check_reachable()?;
        if !state.leases.contains_key(&lease.id) {
            return Err(LeaseError::Lost(Error::backend(
                "memory://",
                format!("lease {} not found", lease.id),
            )));
        }
        Ok(encoded
            .into_iter()
            .map(|(key, instance, value)| {
                let value = value?;
                // A registration whose id is drained starts Drained: the registrar
                // hears of the marker before it answers the caller.
                let marker = self.codec.drain_marker(instance.id()).map(|marker| {
                    format!(
                        "{}{marker}",
                        self.codec.service_prefix(&self.root, instance.service())
                    )
                });
                if marker.is_some_and(|marker| state.kvs.contains_key(&marker)) {
                    lease
                        .events
                        .drain_changed(instance.service().clone(), instance.id().clone(), true);
                }
                if let Some(held) = self.conflict(&state, lease.id, &key, instance) {
                    return Err(Error::Conflict {
                        service: instance.service().to_string(),
                        id: instance.id().to_string(),
                        key: held,
                    });
                }
                state.put(key.clone(), value, Some(lease.id));
                Ok(key)
            })
            .collect())
    }

    async fn delete(&self, _lease: &MemoryLease, keys: &[String]) -> Result<(), LeaseError> {
        self.check_alive()?;
        let mut state = self.store.state.lock().unwrap();
        state.check_reachable()?;
        for key in keys {
            state.delete(key);
        }
        Ok(())
    }

    async fn follow_markers(&self, lease: &MemoryLease, services: &[ServiceName]) -> Result<(), LeaseError> {
        self.check_alive()?;
        let services: Vec<&ServiceName> = services.iter().collect();
        Ok(self.follow(lease, &services)?)
    }

    async fn revoke(&self, lease: MemoryLease) -> Result<()> {
        self.check_alive()?;
        let mut state = self.store.state.lock().unwrap();
        state.check_reachable()?;
        state.revoke(lease.id);
        Ok(())
    }
}

/// A client of a [`MemoryStore`], implementing [`Registry`].
///
/// Clients of one store see each other's registrations, as processes sharing an etcd
/// cluster do.
pub struct MemoryRegistry {
    backend: Arc<Backend>,
    registrar: Registrar<Backend>,
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegistry")
            .field("root", &self.backend.root)
            .field("codec", &self.backend.codec.name())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// A client of a new, private store, with the native codec under [`DEFAULT_ROOT`].
    pub fn new() -> Self {
        Self::with_store(MemoryStore::new())
    }

    /// A client of `store`, with the native codec under [`DEFAULT_ROOT`].
    pub fn with_store(store: MemoryStore) -> Self {
        Self::with_options(store, DEFAULT_ROOT, Arc::new(NativeCodec), Backoff::default())
    }

    /// A client of `store` with every option.
    pub fn with_options(store: MemoryStore, root: &str, codec: Arc<dyn Codec>, backoff: Backoff) -> Self {
        let backend = Arc::new(Backend {
            store,
            root: root.trim_end_matches('/').to_owned(),
            codec,
            crashed: Arc::new(AtomicBool::new(false)),
        });
        MemoryRegistry {
            registrar: Registrar::new(backend.clone(), backoff),
            backend,
        }
    }

    /// A client for `memory://[name][/root][?format=...]`: the process-wide store of
    /// that name, in any of the [formats](crate::formats).
    pub fn connect(url: &RegistryUrl) -> Result<Self> {
        if url.scheme != "memory" {
            return Err(Error::invalid_url(url.to_string(), "not a memory:// URL"));
        }
        url.deny_unknown_params(&["format", "scheme"])?;
        let (codec, root) = crate::formats::layout_from_url(url, RegistryKind::Memory, DEFAULT_ROOT)?;
        let name = url.endpoints.join(",");
        Ok(Self::with_options(
            MemoryStore::named(&name),
            &root,
            codec,
            Backoff::default(),
        ))
    }

    /// The store this client talks to.
    pub fn store(&self) -> &MemoryStore {
        &self.backend.store
    }

    /// Simulates this client's process dying: keepalives stop and nothing is
    /// deregistered, so its instances vanish from the store only when their TTL runs out.
    /// Every later request of this client fails.
    pub fn crash(&self) {
        self.backend.crashed.store(true, Ordering::SeqCst);
    }

    fn prefix(&self, service: &ServiceName) -> String {
        self.backend.codec.service_prefix(&self.backend.root, service)
    }

    /// The instances of `service` with their full keys, sorted by id.
    fn instances(&self, service: &ServiceName) -> Result<Vec<(String, Instance)>> {
        self.backend.check_alive()?;
        self.backend.store.state.lock().unwrap().check_reachable()?;
        let prefix = self.prefix(service);
        let listing = relative(&prefix, self.backend.store.dump(&prefix));
        Ok(decode_listing(&*self.backend.codec, service, listing)
            .into_iter()
            .map(|(key, instance)| (format!("{prefix}{key}"), instance))
            .collect())
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, instance: Instance, options: RegisterOptions) -> Result<Registration> {
        self.backend.check_alive()?;
        self.registrar.register(instance, options).await
    }

    async fn watch(&self, service: &ServiceName, options: WatchOptions) -> Result<Discovery> {
        self.backend.check_alive()?;
        let prefix = self.prefix(service);
        let (listing, revision, events) = self.backend.store.list_and_watch(&prefix)?;
        let (mut feed, discovery) = DiscoveryFeed::new(service.clone(), self.backend.codec.clone(), options);
        feed.reset(relative(&prefix, listing), revision);
        let store = self.backend.store.clone();
        feed.spawn(move |feed| follow(feed, store, prefix, events));
        Ok(discovery)
    }

    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>> {
        Ok(self.instances(service)?.into_iter().map(|(_, i)| i).collect())
    }

    async fn list_services(&self) -> Result<Vec<ServiceName>> {
        self.backend.check_alive()?;
        self.backend.store.state.lock().unwrap().check_reachable()?;
        let root = match self.backend.root.as_str() {
            "" => String::new(),
            root => format!("{root}/"),
        };
        let mut services: Vec<ServiceName> = self
            .backend
            .store
            .dump(&root)
            .into_iter()
            .filter_map(|(key, _)| {
                let name = key[root.len()..].split('/').next()?;
                ServiceName::new(name).ok()
            })
            .collect();
        services.sort();
        services.dedup();
        Ok(services)
    }

    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        let mut found = false;
        for (key, _) in self.instances(service)?.into_iter().filter(|(_, i)| i.id() == id) {
            found |= self.backend.store.delete_raw(&key);
        }
        Ok(found)
    }

    async fn drain(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        let marker = self
            .backend
            .codec
            .drain_marker(id)
            .ok_or_else(|| self.backend.unsupported_drain())?;
        let current = self.instances(service)?.into_iter().find(|(_, i)| i.id() == id);
        let value = match &current {
            Some((_, instance)) => self.backend.codec.encode(instance)?,
            None => Vec::new(),
        };
        self.backend
            .store
            .put_raw(&format!("{}{marker}", self.prefix(service)), &value);
        Ok(current.is_some())
    }

    async fn undrain(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        let marker = self
            .backend
            .codec
            .drain_marker(id)
            .ok_or_else(|| self.backend.unsupported_drain())?;
        self.backend.check_alive()?;
        self.backend.store.state.lock().unwrap().check_reachable()?;
        Ok(self
            .backend
            .store
            .delete_raw(&format!("{}{marker}", self.prefix(service))))
    }

    async fn shutdown(&self) {
        self.registrar.shutdown().await;
    }
}

fn relative(prefix: &str, listing: Vec<(String, Vec<u8>)>) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    listing
        .into_iter()
        .map(move |(key, value)| (key[prefix.len()..].to_owned(), value))
}

/// The watcher task: applies events as they come, in batches; when the store breaks the
/// watch, marks the set stale and re-lists with backoff until it is back.
async fn follow(
    mut feed: DiscoveryFeed,
    store: MemoryStore,
    prefix: String,
    mut events: mpsc::UnboundedReceiver<Event>,
) {
    loop {
        while let Some(event) = events.recv().await {
            apply(&mut feed, &prefix, event);
            while let Ok(event) = events.try_recv() {
                apply(&mut feed, &prefix, event);
            }
            feed.publish();
        }
        feed.mark_stale();
        let mut delays = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
            factor: 2,
        }
        .delays();
        events = loop {
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
            if let Ok((listing, revision, events)) = store.list_and_watch(&prefix) {
                feed.reset(relative(&prefix, listing), revision);
                feed.mark_live();
                break events;
            }
        };
    }
}

fn apply(feed: &mut DiscoveryFeed, prefix: &str, event: Event) {
    match event {
        Event::Put { key, value, revision } => {
            feed.put(&key[prefix.len()..], &value);
            feed.set_revision(revision);
        }
        Event::Delete { key, revision, .. } => {
            feed.delete(&key[prefix.len()..]);
            feed.set_revision(revision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn services_are_listed_sorted_by_name() {
        let registry = MemoryRegistry::new();
        let mut held = Vec::new();
        for service in ["a-b", "a", "a.b", "b"] {
            let instance = Instance::builder(service, "127.0.0.1:1").build().unwrap();
            held.push(
                registry
                    .register(instance, RegisterOptions::default())
                    .await
                    .unwrap(),
            );
        }
        let listed: Vec<String> = registry
            .list_services()
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(listed, ["a", "a-b", "a.b", "b"]);
    }
}
