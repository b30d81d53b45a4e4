//! The backend conformance suite: the behaviour every [`Registry`] backend must show,
//! checked against a real server.
//!
//! A backend crate implements [`Harness`] (how to get a client, how to crash one, how to
//! write a foreign value) and calls [`run`] from a test, or each case on its own, one
//! `#[tokio::test]` per case, for sharper failure reports. Every case uses service names
//! of its own (`conf-{case}-{name}-{random}`), so cases never see each other's keys and
//! can share one server, run in sequence or in parallel.
//!
//! A failed case panics with a message that starts with
//! `conformance case `{name}` failed:` and says what was expected and what was seen.
//! Waits poll with generous timeouts ([`WAIT`]); nothing asserts how fast a backend is,
//! except that a crashed client's instance stays until its TTL had a chance to run out.
//!
//! The suite needs the `conformance` feature. In a backend crate's `Cargo.toml`:
//!
//! ```toml
//! [dev-dependencies]
//! leasehold = { workspace = true, features = ["conformance"] }
//! ```
//!
//! The whole suite against the in-process registry, through [`MemoryHarness`]:
//!
//! ```
//! # #[tokio::main]
//! # async fn main() {
//! leasehold::conformance::run(&leasehold::conformance::MemoryHarness::new()).await;
//! # }
//! ```
//!
//! One test per case, the pattern a backend's test file follows (here with the memory
//! harness; a real backend starts its server with `leasehold-testkit` in `harness()`):
//!
//! ```no_run
//! use leasehold::conformance::{self, MemoryHarness};
//!
//! async fn harness() -> MemoryHarness {
//!     MemoryHarness::new()
//! }
//!
//! #[tokio::test]
//! async fn register() {
//!     conformance::register(&harness().await).await;
//! }
//!
//! #[tokio::test]
//! async fn lease_expiry() {
//!     conformance::lease_expiry(&harness().await).await;
//! }
//! # fn main() {}
//! ```

use std::collections::BTreeSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::memory::{MemoryRegistry, MemoryStore, DEFAULT_ROOT};
use crate::{
    Change, Changes, Discovery, Error, Instance, InstanceId, InstanceUpdate, Metadata, RegisterOptions,
    Registration, RegistrationState, Registry, Result, ServiceName, Snapshot, WatchOptions,
};

/// How long a case waits for anything that should happen (a watcher converging, a
/// registration recovering) before it fails. Generous, so a slow machine is never a
/// failure; a backend that never gets there still fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// The TTL of the lease-expiry case.
pub const EXPIRY_TTL: Duration = Duration::from_secs(2);

/// The TTL of registrations that must not expire during a case.
const LONG_TTL: Duration = Duration::from_secs(60);

/// How a backend under test is reached and disturbed.
///
/// All clients of one harness talk to one registry, as separate processes sharing a
/// cluster would.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The backend's client type.
    type Client: Registry + 'static;

    /// A new client of the registry under test, with its own session or lease.
    async fn client(&self) -> Result<Self::Client>;

    /// Simulates the process that owns `client` dying: its keepalives stop and nothing is
    /// deregistered, so its instances leave the registry only when their TTL runs out.
    /// The suite drops the client and its handles afterwards; that must not deregister
    /// anything either.
    async fn crash(&self, client: &Self::Client);

    /// Writes `value` at `key` (relative to `service`'s prefix in the format the
    /// clients use) without a lease, as a foreign or broken writer would. Creates
    /// parents as needed.
    async fn put_raw(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<()>;

    /// How long after [`EXPIRY_TTL`] a crashed client's instance may still be listed
    /// before the lease-expiry case fails (a server's expiry granularity, a negotiated
    /// session timeout). Default 10 s.
    fn expiry_slack(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Whether the registry's change notifications carry no values, so a watcher reads
    /// the state after the fact and quick successive changes to one key can reach it as
    /// one (ZooKeeper: two updates as one `updated`, or a node created and deleted
    /// before its data is read as nothing at all). The ordering case then checks the
    /// changes with such runs merged. Default `false`: etcd and memory events carry
    /// every value, and each change must be seen exactly once.
    fn coalesces_changes(&self) -> bool {
        false
    }
}

/// A [`Harness`] for the in-process registry: clients of one [`MemoryStore`].
#[derive(Clone, Debug, Default)]
pub struct MemoryHarness {
    store: MemoryStore,
}

impl MemoryHarness {
    /// A harness over a new, private store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store the clients share.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    type Client = MemoryRegistry;

    async fn client(&self) -> Result<MemoryRegistry> {
        Ok(MemoryRegistry::with_store(self.store.clone()))
    }

    async fn crash(&self, client: &MemoryRegistry) {
        client.crash();
    }

    async fn put_raw(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<()> {
        self.store
            .put_raw(&format!("{DEFAULT_ROOT}/{service}/{key}"), value);
        Ok(())
    }
}

/// One `#[tokio::test]` per case, each with its own harness from `$harness` (an
/// expression, evaluated in an async context, giving a [`Harness`]), so a backend's
/// test file names every case once and a failure names its case. The caller needs
/// `tokio` as a dev-dependency.
///
/// ```
/// use leasehold::conformance::MemoryHarness;
/// // In a backend crate's tests/conformance.rs: its own harness, started per case.
/// leasehold::conformance_tests!(MemoryHarness::new());
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            register, list, list_services, watch_from_empty, watch_with_existing,
            update_in_place, pause_resume, deregister, drop_deregisters, invalid_input,
            deleted_key_rewritten, corrupt_values_skipped, changes_exactly_once_in_order,
            many_services, many_watchers, lease_expiry, duplicate_id_refused,
            duplicate_id_written_back, reregister_after_drop, cancelled_register, drain);
    };
    (@cases $harness:expr; $($case:ident),*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case(&$harness).await;
            }
        )*
    };
}

/// Runs every case in sequence; panics at the first that fails, naming it.
pub async fn run<H: Harness>(harness: &H) {
    register(harness).await;
    list(harness).await;
    list_services(harness).await;
    watch_from_empty(harness).await;
    watch_with_existing(harness).await;
    update_in_place(harness).await;
    pause_resume(harness).await;
    deregister(harness).await;
    drop_deregisters(harness).await;
    invalid_input(harness).await;
    deleted_key_rewritten(harness).await;
    corrupt_values_skipped(harness).await;
    changes_exactly_once_in_order(harness).await;
    many_services(harness).await;
    many_watchers(harness).await;
    lease_expiry(harness).await;
    duplicate_id_refused(harness).await;
    duplicate_id_written_back(harness).await;
    reregister_after_drop(harness).await;
    cancelled_register(harness).await;
    drain(harness).await;
}

/// The state of one running case: its name, for failure messages, and a random tag for
/// its service names.
struct Case {
    name: &'static str,
    tag: String,
}

impl Case {
    fn new(name: &'static str) -> Self {
        tracing::info!(case = name, "conformance case starting");
        let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Case { name, tag }
    }

    fn service(&self, name: &str) -> ServiceName {
        let case = self.name.replace('_', "-");
        ServiceName::new(format!("conf-{case}-{name}-{}", self.tag)).expect("valid service name")
    }

    #[track_caller]
    fn fail(&self, message: impl Display) -> ! {
        panic!("conformance case `{}` failed: {message}", self.name)
    }

    #[track_caller]
    fn ok<T, E: Display>(&self, result: Result<T, E>, doing: impl Display) -> T {
        match result {
            Ok(value) => value,
            Err(e) => self.fail(format!("{doing}: unexpected error: {e}")),
        }
    }

    #[track_caller]
    fn check(&self, condition: bool, message: impl FnOnce() -> String) {
        if !condition {
            self.fail(message());
        }
    }

    async fn client<H: Harness>(&self, harness: &H) -> H::Client {
        self.ok(harness.client().await, "creating a client")
    }

    async fn register(&self, client: &dyn Registry, instance: Instance, ttl: Duration) -> Registration {
        let what = format!("registering {}/{}", instance.service(), instance.id());
        let registration = self.ok(client.register(instance, RegisterOptions::ttl(ttl)).await, &what);
        self.check(registration.state() == RegistrationState::Registered, || {
            format!(
                "{what}: expected state Registered once register returns, saw {:?}",
                registration.state()
            )
        });
        registration
    }

    async fn watch(&self, client: &dyn Registry, service: &ServiceName) -> Discovery {
        self.ok(
            client.watch(service, WatchOptions::default()).await,
            format!("watching {service}"),
        )
    }

    async fn listed(&self, client: &dyn Registry, service: &ServiceName) -> Vec<Instance> {
        self.ok(client.list(service).await, format!("listing {service}"))
    }

    /// Waits until `discovery` holds exactly the instances `ids`.
    async fn until_ids(&self, discovery: &Discovery, ids: &[&str]) -> Arc<Snapshot> {
        let mut want: Vec<&str> = ids.to_vec();
        want.sort_unstable();
        match discovery
            .wait_for(WAIT, |s| {
                s.instances()
                    .iter()
                    .map(|i| i.id().as_str())
                    .eq(want.iter().copied())
            })
            .await
        {
            Some(snapshot) => snapshot,
            None => self.fail(format!(
                "watcher of {}: expected instances {want:?} within {WAIT:?}, it holds {:?}",
                discovery.service(),
                ids_of(&discovery.snapshot())
            )),
        }
    }

    /// Polls `condition` until it holds, failing after [`WAIT`] with `expected`.
    async fn eventually<F, Fut>(&self, expected: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !condition().await {
            if Instant::now() >= deadline {
                self.fail(format!("expected {expected} within {WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The next change other than a connection marker, failing after [`WAIT`].
    async fn next_change(&self, changes: &mut Changes, expected: &str) -> Change {
        loop {
            match tokio::time::timeout(WAIT, changes.next()).await {
                Ok(Some(Change::Stale { .. } | Change::Live)) => continue,
                Ok(Some(change)) => return change,
                Ok(None) => self.fail(format!("expected {expected}, the change stream ended")),
                Err(_) => self.fail(format!("expected {expected} within {WAIT:?}, saw no change")),
            }
        }
    }

    /// The next `n` changes, described as `+id`, `-id`, `~id`.
    async fn next_changes(&self, changes: &mut Changes, expected: &[&str]) -> Vec<String> {
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let change = match tokio::time::timeout(WAIT, changes.next()).await {
                Ok(Some(Change::Stale { .. } | Change::Live)) => continue,
                Ok(Some(change)) => change,
                Ok(None) => self.fail(format!(
                    "expected changes {expected:?}, the stream ended after {seen:?}"
                )),
                Err(_) => self.fail(format!(
                    "expected changes {expected:?} within {WAIT:?}, saw only {seen:?}"
                )),
            };
            seen.push(describe(&change));
        }
        seen
    }

    /// Every change up to and including `last`.
    async fn changes_until(&self, changes: &mut Changes, last: &str) -> Vec<String> {
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some(last) {
            match tokio::time::timeout(WAIT, changes.next()).await {
                Ok(Some(Change::Stale { .. } | Change::Live)) => {}
                Ok(Some(change)) => seen.push(describe(&change)),
                Ok(None) => self.fail(format!(
                    "expected changes up to {last}, the stream ended after {seen:?}"
                )),
                Err(_) => self.fail(format!(
                    "expected changes up to {last} within {WAIT:?}, saw only {seen:?}"
                )),
            }
        }
        seen
    }
}

/// Replays `changes` on an empty set: the ids present at the end, or the first change
/// that contradicts the set (an add of a present id, a removal or update of an absent
/// one), which is what seeing a change twice or out of order looks like.
fn replay(changes: &[impl AsRef<str>]) -> Result<BTreeSet<String>, String> {
    let mut present = BTreeSet::new();
    for change in changes.iter().map(AsRef::as_ref) {
        let (kind, id) = change.split_at(1);
        let valid = match kind {
            "+" => present.insert(id.to_owned()),
            "-" => present.remove(id),
            _ => present.contains(id),
        };
        if !valid {
            return Err(format!("{change} contradicts the set {present:?}"));
        }
    }
    Ok(present)
}

fn instance(service: &ServiceName, id: &str) -> Instance {
    Instance::builder(service.as_str(), "127.0.0.1:7001")
        .id(id)
        .build()
        .expect("valid instance")
}

fn ids_of(snapshot: &Snapshot) -> Vec<String> {
    snapshot.instances().iter().map(|i| i.id().to_string()).collect()
}

fn ids(instances: &[Instance]) -> Vec<String> {
    instances.iter().map(|i| i.id().to_string()).collect()
}

fn id(value: &str) -> InstanceId {
    InstanceId::new(value).expect("valid instance id")
}

fn describe(change: &Change) -> String {
    match change {
        Change::Added(i) => format!("+{}", i.id()),
        Change::Removed(i) => format!("-{}", i.id()),
        Change::Updated { new, .. } => format!("~{}", new.id()),
        Change::Stale { .. } => "stale".into(),
        Change::Live => "live".into(),
        Change::Resync(s) => format!("resync{:?}", ids_of(s)),
    }
}

/// A registration is written with every field, `Registered` when `register` returns, and
/// listed as written by its own client and by another.
pub async fn register<H: Harness>(harness: &H) {
    let case = Case::new("register");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let other = case.client(harness).await;
    let written = Instance::builder(service.as_str(), "http://127.0.0.1:7001/api")
        .id("r1")
        .metadata("protocol", "http")
        .metadata("team", "core")
        .weight(3)
        .zone("zone-a")
        .version("1.2.3")
        .build()
        .expect("valid instance");
    let registration = case.register(&owner, written.clone(), LONG_TTL).await;
    case.check(registration.instance() == written, || {
        format!(
            "the handle shows {:?}, expected {written:?}",
            registration.instance()
        )
    });
    for (who, client) in [("its own client", &owner), ("another client", &other)] {
        let listed = case.listed(client, &service).await;
        case.check(listed == [written.clone()], || {
            format!("`list` by {who}: expected exactly {written:?}, got {listed:?}")
        });
    }
    owner.shutdown().await;
    other.shutdown().await;
}

/// `list` returns the instances sorted by id, nothing for an unknown service, and follows
/// deregistrations at once.
pub async fn list<H: Harness>(harness: &H) {
    let case = Case::new("list");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let other = case.client(harness).await;
    let listed = case.listed(&other, &case.service("nothing-here")).await;
    case.check(listed.is_empty(), || {
        format!("an unknown service lists as empty, got {listed:?}")
    });
    let mut held = Vec::new();
    for name in ["c", "a", "b"] {
        held.push(case.register(&owner, instance(&service, name), LONG_TTL).await);
    }
    let listed = ids(&case.listed(&other, &service).await);
    case.check(listed == ["a", "b", "c"], || {
        format!("expected [a, b, c] sorted by id, got {listed:?}")
    });
    case.ok(held.remove(2).deregister().await, "deregistering b");
    let listed = ids(&case.listed(&other, &service).await);
    case.check(listed == ["a", "c"], || {
        format!("after deregistering b, expected [a, c], got {listed:?}")
    });
    owner.shutdown().await;
    other.shutdown().await;
}

/// `list_services` names every service with an instance, sorted and without duplicates.
pub async fn list_services<H: Harness>(harness: &H) {
    let case = Case::new("list_services");
    let first = case.service("one");
    let second = case.service("two");
    let owner = case.client(harness).await;
    let other = case.client(harness).await;
    let _held = [
        case.register(&owner, instance(&second, "a"), LONG_TTL).await,
        case.register(&owner, instance(&first, "a"), LONG_TTL).await,
        case.register(&owner, instance(&first, "b"), LONG_TTL).await,
    ];
    let services = case.ok(other.list_services().await, "listing services");
    for service in [&first, &second] {
        case.check(services.contains(service), || {
            format!("expected {service} among the services, got {services:?}")
        });
    }
    case.check(services.windows(2).all(|w| w[0] < w[1]), || {
        format!("services must be sorted and distinct, got {services:?}")
    });
    owner.shutdown().await;
    other.shutdown().await;
}

/// A watch of a service with no instances starts empty and live, then sees registrations
/// as `Added`, in the order they were made, with every field as written.
pub async fn watch_from_empty<H: Harness>(harness: &H) {
    let case = Case::new("watch_from_empty");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let discovery = case.watch(&watcher, &service).await;
    let snapshot = discovery.snapshot();
    case.check(snapshot.is_empty(), || {
        format!("expected an empty snapshot, got {:?}", ids_of(&snapshot))
    });
    case.check(snapshot.connection().is_live(), || {
        format!("expected a live watch, got {:?}", snapshot.connection())
    });
    let mut changes = discovery.changes();
    let mut held = Vec::new();
    for name in ["c", "a", "b"] {
        let written = Instance::builder(service.as_str(), "127.0.0.1:7001")
            .id(name)
            .metadata("name", name)
            .zone("zone-a")
            .build()
            .expect("valid instance");
        held.push(case.register(&owner, written, LONG_TTL).await);
    }
    let seen = case.next_changes(&mut changes, &["+c", "+a", "+b"]).await;
    case.check(seen == ["+c", "+a", "+b"], || {
        format!("expected [+c, +a, +b] in registration order, saw {seen:?}")
    });
    let snapshot = case.until_ids(&discovery, &["a", "b", "c"]).await;
    for registration in &held {
        let written = registration.instance();
        let seen = snapshot.get(written.id()).map(|i| (**i).clone());
        case.check(seen.as_ref() == Some(&written), || {
            format!("the watcher holds {seen:?}, expected {written:?}")
        });
    }
    owner.shutdown().await;
    watcher.shutdown().await;
}

/// A watch started after registrations holds them in its first snapshot, before any
/// change arrives.
pub async fn watch_with_existing<H: Harness>(harness: &H) {
    let case = Case::new("watch_with_existing");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let mut held = Vec::new();
    for name in ["a", "b", "c"] {
        held.push(case.register(&owner, instance(&service, name), LONG_TTL).await);
    }
    let discovery = case.watch(&watcher, &service).await;
    let seen = ids_of(&discovery.snapshot());
    case.check(seen == ["a", "b", "c"], || {
        format!("the first snapshot must hold the existing [a, b, c], it holds {seen:?}")
    });
    let mut changes = discovery.changes();
    held.push(case.register(&owner, instance(&service, "d"), LONG_TTL).await);
    let seen = case.next_changes(&mut changes, &["+d"]).await;
    case.check(seen == ["+d"], || {
        format!("existing instances must not be announced again: expected [+d], saw {seen:?}")
    });
    owner.shutdown().await;
    watcher.shutdown().await;
}

/// `update` changes metadata, weight and zone in place: watchers see one `Updated`
/// carrying the old and new instance, never a removal and an addition.
pub async fn update_in_place<H: Harness>(harness: &H) {
    let case = Case::new("update_in_place");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let written = Instance::builder(service.as_str(), "127.0.0.1:7001")
        .id("u1")
        .metadata("color", "blue")
        .zone("zone-a")
        .build()
        .expect("valid instance");
    let registration = case.register(&owner, written.clone(), LONG_TTL).await;
    let discovery = case.watch(&watcher, &service).await;
    case.until_ids(&discovery, &["u1"]).await;
    let mut changes = discovery.changes();
    let metadata = Metadata::from([("color".to_owned(), "green".to_owned())]);
    let update = InstanceUpdate::new()
        .metadata(metadata.clone())
        .weight(7)
        .zone(Some("zone-b".into()));
    case.ok(registration.update(update).await, "updating u1");
    let expected = written
        .updated(
            &InstanceUpdate::new()
                .metadata(metadata)
                .weight(7)
                .zone(Some("zone-b".into())),
        )
        .expect("valid update");
    case.check(registration.instance() == expected, || {
        format!(
            "the handle shows {:?} after the update, expected {expected:?}",
            registration.instance()
        )
    });
    match case.next_change(&mut changes, "one Updated").await {
        Change::Updated { old, new } => {
            case.check(*old == written, || {
                format!("Updated.old is {old:?}, expected {written:?}")
            });
            case.check(*new == expected, || {
                format!("Updated.new is {new:?}, expected {expected:?}")
            });
        }
        other => case.fail(format!("expected one Updated, saw {} first", describe(&other))),
    }
    let _sentinel = case
        .register(&owner, instance(&service, "sentinel"), LONG_TTL)
        .await;
    let seen = case.next_changes(&mut changes, &["+sentinel"]).await;
    case.check(seen == ["+sentinel"], || {
        format!("expected exactly one change for the update, then [+sentinel]; saw {seen:?} after it")
    });
    let listed = case.listed(&watcher, &service).await;
    case.check(listed.contains(&expected), || {
        format!("`list` must show the updated instance {expected:?}, got {listed:?}")
    });
    owner.shutdown().await;
    watcher.shutdown().await;
}

/// `pause` takes the instance out (state `Paused`, gone for watchers and `list`);
/// `resume` puts it back (state `Registered`).
pub async fn pause_resume<H: Harness>(harness: &H) {
    let case = Case::new("pause_resume");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let registration = case.register(&owner, instance(&service, "p1"), LONG_TTL).await;
    let discovery = case.watch(&watcher, &service).await;
    case.until_ids(&discovery, &["p1"]).await;

    case.ok(registration.pause().await, "pausing p1");
    case.check(registration.state() == RegistrationState::Paused, || {
        format!("expected state Paused, saw {:?}", registration.state())
    });
    case.until_ids(&discovery, &[]).await;
    let listed = case.listed(&watcher, &service).await;
    case.check(listed.is_empty(), || {
        format!("a paused instance must not be listed, got {listed:?}")
    });

    case.ok(registration.resume().await, "resuming p1");
    case.check(registration.state() == RegistrationState::Registered, || {
        format!(
            "expected state Registered after resume, saw {:?}",
            registration.state()
        )
    });
    case.until_ids(&discovery, &["p1"]).await;
    let listed = ids(&case.listed(&watcher, &service).await);
    case.check(listed == ["p1"], || {
        format!("a resumed instance must be listed, got {listed:?}")
    });
    owner.shutdown().await;
    watcher.shutdown().await;
}

/// `deregister` removes the instance at once, every clone shows `Deregistered`, a second
/// `deregister` is `Ok`, every other operation is `Error::Deregistered`, and the id can
/// be registered again.
pub async fn deregister<H: Harness>(harness: &H) {
    let case = Case::new("deregister");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let registration = case.register(&owner, instance(&service, "d1"), LONG_TTL).await;
    let clone = registration.clone();
    let discovery = case.watch(&watcher, &service).await;
    case.until_ids(&discovery, &["d1"]).await;

    case.ok(registration.deregister().await, "deregistering d1");
    for (who, handle) in [("the handle", &registration), ("its clone", &clone)] {
        case.check(handle.state() == RegistrationState::Deregistered, || {
            format!("{who}: expected state Deregistered, saw {:?}", handle.state())
        });
    }
    let listed = case.listed(&watcher, &service).await;
    case.check(listed.is_empty(), || {
        format!("`list` right after deregister returned must not show it, got {listed:?}")
    });
    case.until_ids(&discovery, &[]).await;

    case.ok(clone.deregister().await, "deregistering d1 a second time");
    let refused = [
        ("pause", registration.pause().await),
        ("resume", registration.resume().await),
        (
            "update",
            registration.update(InstanceUpdate::new().weight(2)).await,
        ),
    ];
    for (operation, result) in refused {
        match result {
            Err(Error::Deregistered { service: s, id }) if s == service.as_str() && id == "d1" => {}
            other => case.fail(format!(
                "{operation} after deregister: expected Error::Deregistered naming {service}/d1, got {other:?}"
            )),
        }
    }

    let again = case.register(&owner, instance(&service, "d1"), LONG_TTL).await;
    case.until_ids(&discovery, &["d1"]).await;
    drop(again);
    owner.shutdown().await;
    watcher.shutdown().await;
}

/// Dropping the last clone of a handle deregisters promptly, well before the TTL;
/// dropping another clone does nothing.
pub async fn drop_deregisters<H: Harness>(harness: &H) {
    let case = Case::new("drop_deregisters");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let registration = case.register(&owner, instance(&service, "x1"), LONG_TTL).await;
    let clone = registration.clone();
    let discovery = case.watch(&watcher, &service).await;
    case.until_ids(&discovery, &["x1"]).await;

    drop(registration);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = ids(&case.listed(&watcher, &service).await);
    case.check(listed == ["x1"], || {
        format!("a clone still holds x1, so dropping another must not deregister it; listed {listed:?}")
    });

    let dropped_at = Instant::now();
    drop(clone);
    case.check(WAIT < LONG_TTL, || "WAIT must be shorter than the TTL".into());
    case.until_ids(&discovery, &[]).await;
    tracing::info!(case = case.name, took = ?dropped_at.elapsed(), ttl = ?LONG_TTL, "dropped handle deregistered");
    owner.shutdown().await;
    watcher.shutdown().await;
}

/// A crashed client's instance stays while its lease may still be alive and is gone
/// after about its TTL.
pub async fn lease_expiry<H: Harness>(harness: &H) {
    let case = Case::new("lease_expiry");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let registration = case.register(&owner, instance(&service, "e1"), EXPIRY_TTL).await;
    let discovery = case.watch(&watcher, &service).await;
    case.until_ids(&discovery, &["e1"]).await;

    let crashed_at = Instant::now();
    harness.crash(&owner).await;
    drop(registration);
    drop(owner);
    // Kept alive at most TTL/3 before the crash, the lease has at least 2/3 of its TTL
    // left; a quarter is well inside that.
    tokio::time::sleep(EXPIRY_TTL / 4).await;
    let listed = ids(&case.listed(&watcher, &service).await);
    case.check(listed == ["e1"], || {
        format!(
            "{:?} after its client crashed, e1 (TTL {EXPIRY_TTL:?}) must still be listed: a crash \
             must not deregister; listed {listed:?}",
            crashed_at.elapsed()
        )
    });

    let limit = EXPIRY_TTL + harness.expiry_slack();
    let gone = discovery.wait_for(limit, |s| s.is_empty()).await;
    case.check(gone.is_some(), || {
        format!(
            "e1 must expire within its TTL {EXPIRY_TTL:?} + slack {:?} of the crash; {:?} later the \
             watcher still holds {:?}",
            harness.expiry_slack(),
            crashed_at.elapsed(),
            ids_of(&discovery.snapshot())
        )
    });
    tracing::info!(case = case.name, took = ?crashed_at.elapsed(), ttl = ?EXPIRY_TTL, "crashed client's instance expired");
    let listed = case.listed(&watcher, &service).await;
    case.check(listed.is_empty(), || {
        format!("an expired instance must not be listed, got {listed:?}")
    });
    watcher.shutdown().await;
}

/// 20 services of 5 instances, registered at once from one client, are all listed; the
/// client's `shutdown` deregisters them all.
pub async fn many_services<H: Harness>(harness: &H) {
    const SERVICES: usize = 20;
    const INSTANCES: usize = 5;
    let case = Case::new("many_services");
    let services: Vec<ServiceName> = (0..SERVICES).map(|n| case.service(&format!("s{n:02}"))).collect();
    let owner = case.client(harness).await;
    let other = case.client(harness).await;
    let registrations = futures::future::join_all(services.iter().flat_map(|service| {
        (0..INSTANCES).map(|n| {
            owner.register(
                instance(service, &format!("i{n}")),
                RegisterOptions::ttl(LONG_TTL),
            )
        })
    }))
    .await;
    let held: Vec<Registration> = registrations
        .into_iter()
        .map(|r| case.ok(r, "registering 100 instances at once"))
        .collect();

    let listed = case.ok(other.list_services().await, "listing services");
    let missing: Vec<&ServiceName> = services.iter().filter(|s| !listed.contains(s)).collect();
    case.check(missing.is_empty(), || {
        format!("services {missing:?} are not in list_services {listed:?}")
    });
    let expected: Vec<String> = (0..INSTANCES).map(|n| format!("i{n}")).collect();
    for service in &services {
        let seen = ids(&case.listed(&other, service).await);
        case.check(seen == expected, || {
            format!("{service}: expected {expected:?}, listed {seen:?}")
        });
    }

    owner.shutdown().await;
    if let Some(handle) = held.iter().find(|r| r.state() != RegistrationState::Deregistered) {
        case.fail(format!(
            "after shutdown every handle shows Deregistered; {} shows {:?}",
            handle.instance().id(),
            handle.state()
        ));
    }
    for service in &services {
        let seen = case.listed(&other, service).await;
        case.check(seen.is_empty(), || {
            format!("{service}: shutdown must deregister everything, still listed {seen:?}")
        });
    }
    other.shutdown().await;
}

/// Ten watchers of one service, on two clients, converge to the same set as
/// registrations come and go.
pub async fn many_watchers<H: Harness>(harness: &H) {
    let case = Case::new("many_watchers");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let first = case.client(harness).await;
    let second = case.client(harness).await;
    let mut discoveries = Vec::new();
    for n in 0..10 {
        let client = if n % 2 == 0 { &first } else { &second };
        discoveries.push(case.watch(client, &service).await);
    }
    let mut held = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        held.push(case.register(&owner, instance(&service, name), LONG_TTL).await);
    }
    let mut reference: Option<Arc<Snapshot>> = None;
    for discovery in &discoveries {
        let snapshot = case.until_ids(discovery, &["a", "b", "c", "d", "e"]).await;
        if let Some(reference) = &reference {
            case.check(snapshot.instances() == reference.instances(), || {
                format!(
                    "watchers disagree: {:?} vs {:?}",
                    snapshot.instances(),
                    reference.instances()
                )
            });
        }
        reference = Some(snapshot);
    }
    for registration in held.drain(..2) {
        case.ok(registration.deregister().await, "deregistering");
    }
    for discovery in &discoveries {
        case.until_ids(discovery, &["c", "d", "e"]).await;
    }
    owner.shutdown().await;
    first.shutdown().await;
    second.shutdown().await;
}

/// Bad input is refused with an error naming the field: by the builder (service name,
/// instance id, address, weight), by `register` (a TTL under one second, an id this
/// client has registered already) and by `update` (weight 0), and nothing is written.
pub async fn invalid_input<H: Harness>(harness: &H) {
    let case = Case::new("invalid_input");
    let service = case.service("svc");
    let builds = [
        (
            "service name",
            Instance::builder("bad/name", "127.0.0.1:1").build(),
        ),
        (
            "instance id",
            Instance::builder(service.as_str(), "127.0.0.1:1")
                .id("a/b")
                .build(),
        ),
        ("address", Instance::builder(service.as_str(), "no-port").build()),
        (
            "weight",
            Instance::builder(service.as_str(), "127.0.0.1:1")
                .weight(0)
                .build(),
        ),
    ];
    for (field, result) in builds {
        match result {
            Err(e) if e.field == field && e.to_string().contains(field) => {}
            other => case.fail(format!(
                "the builder must refuse a bad {field} with an error naming it, got {other:?}"
            )),
        }
    }

    let owner = case.client(harness).await;
    let other = case.client(harness).await;
    let short = owner
        .register(
            instance(&service, "short"),
            RegisterOptions::ttl(Duration::from_millis(500)),
        )
        .await;
    match short {
        Err(e @ Error::InvalidInput(_)) if e.to_string().contains("ttl") => {}
        other => case.fail(format!(
            "a TTL of 500ms must be refused with an error naming `ttl`, got {other:?}"
        )),
    }

    let first = case.register(&owner, instance(&service, "dup"), LONG_TTL).await;
    let again = owner
        .register(instance(&service, "dup"), RegisterOptions::ttl(LONG_TTL))
        .await;
    match again {
        Err(e) if e.to_string().contains("dup") => {}
        other => case.fail(format!(
            "registering id dup twice on one client must be refused with an error naming it, got {other:?}"
        )),
    }
    case.check(first.state() == RegistrationState::Registered, || {
        format!(
            "the refused duplicate must leave the first registration alone; it is {:?}",
            first.state()
        )
    });

    match first.update(InstanceUpdate::new().weight(0)).await {
        Err(e) if e.to_string().contains("weight") => {}
        other => case.fail(format!(
            "an update to weight 0 must be refused with an error naming `weight`, got {other:?}"
        )),
    }
    let listed = case.listed(&other, &service).await;
    case.check(listed == [instance(&service, "dup")], || {
        format!("only the first dup, unchanged, may be written; listed {listed:?}")
    });
    owner.shutdown().await;
    other.shutdown().await;
}

/// A key deleted by another client (`Registry::deregister`) is written again by its
/// owner; deregistering an unknown id reports `false`.
pub async fn deleted_key_rewritten<H: Harness>(harness: &H) {
    let case = Case::new("deleted_key_rewritten");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let operator = case.client(harness).await;
    let registration = case.register(&owner, instance(&service, "k1"), LONG_TTL).await;
    let discovery = case.watch(&operator, &service).await;
    case.until_ids(&discovery, &["k1"]).await;
    let mut changes = discovery.changes();

    let removed = case.ok(
        operator.deregister(&service, &id("k1")).await,
        "deregistering k1 from another client",
    );
    case.check(removed, || {
        "deregister of a registered id must report true".into()
    });
    let seen = case.next_changes(&mut changes, &["-k1", "+k1"]).await;
    case.check(seen == ["-k1", "+k1"], || {
        format!("the owner must write k1 again: expected [-k1, +k1], saw {seen:?}")
    });
    case.check(
        registration.wait_for(RegistrationState::Registered, WAIT).await,
        || {
            format!(
                "after writing k1 again its state must be Registered, it is {:?}",
                registration.state()
            )
        },
    );
    let listed = ids(&case.listed(&operator, &service).await);
    case.check(listed == ["k1"], || {
        format!("k1 must be listed again, got {listed:?}")
    });

    let unknown = case.ok(
        operator.deregister(&service, &id("never-registered")).await,
        "deregistering an unknown id",
    );
    case.check(!unknown, || {
        "deregister of an unknown id must report false".into()
    });
    owner.shutdown().await;
    operator.shutdown().await;
}

/// Values under a service's prefix that do not decode are skipped and counted, by
/// watchers started before and after them and by `list`; watchers keep following.
pub async fn corrupt_values_skipped<H: Harness>(harness: &H) {
    let case = Case::new("corrupt_values_skipped");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let early = case.watch(&watcher, &service).await;
    let _a = case.register(&owner, instance(&service, "a"), LONG_TTL).await;
    case.until_ids(&early, &["a"]).await;

    case.ok(
        harness.put_raw(&service, "junk", b"\x00{not json").await,
        "writing a corrupt value",
    );
    case.eventually("the early watcher to count the corrupt value as skipped", || {
        let skipped = early.skipped();
        async move { skipped >= 1 }
    })
    .await;
    let _b = case.register(&owner, instance(&service, "b"), LONG_TTL).await;
    let snapshot = case.until_ids(&early, &["a", "b"]).await;
    case.check(snapshot.connection().is_live(), || {
        format!(
            "a corrupt value must not break the watch, connection is {:?}",
            snapshot.connection()
        )
    });

    let late = case.watch(&watcher, &service).await;
    let seen = ids_of(&late.snapshot());
    case.check(seen == ["a", "b"], || {
        format!("a watch started after the corrupt value must list [a, b], it holds {seen:?}")
    });
    case.check(late.skipped() >= 1, || {
        format!(
            "a watch that listed the corrupt value must count it skipped, counted {}",
            late.skipped()
        )
    });
    let listed = ids(&case.listed(&watcher, &service).await);
    case.check(listed == ["a", "b"], || {
        format!("`list` must skip the corrupt value, got {listed:?}")
    });
    owner.shutdown().await;
    watcher.shutdown().await;
}

/// Every watcher sees each change exactly once and in order: registrations, updates,
/// pause and resume, deregistrations.
pub async fn changes_exactly_once_in_order<H: Harness>(harness: &H) {
    let case = Case::new("changes_exactly_once_in_order");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let watcher = case.client(harness).await;
    let same_client = case.watch(&owner, &service).await;
    let other_client = case.watch(&watcher, &service).await;
    let mut streams = [same_client.changes(), other_client.changes()];

    let a = case.register(&owner, instance(&service, "a"), LONG_TTL).await;
    let b = case.register(&owner, instance(&service, "b"), LONG_TTL).await;
    case.ok(
        a.update(InstanceUpdate::new().weight(2)).await,
        "updating a's weight",
    );
    case.ok(
        a.update(InstanceUpdate::new().zone(Some("zone-b".into()))).await,
        "updating a's zone",
    );
    case.ok(b.deregister().await, "deregistering b");
    case.ok(a.pause().await, "pausing a");
    case.ok(a.resume().await, "resuming a");
    case.ok(a.deregister().await, "deregistering a");
    let _sentinel = case.register(&owner, instance(&service, "z"), LONG_TTL).await;

    let expected = ["+a", "+b", "~a", "~a", "-b", "-a", "+a", "-a", "+z"];
    let coalesces = harness.coalesces_changes();
    for (who, changes) in [
        "a watcher on the registering client",
        "a watcher on another client",
    ]
    .into_iter()
    .zip(&mut streams)
    {
        let seen = match coalesces {
            false => case.next_changes(changes, &expected).await,
            true => case.changes_until(changes, "+z").await,
        };
        // A backend whose notifications carry no values cannot show every intermediate
        // change; it must still never contradict itself and must end where the writes did.
        let agrees = match coalesces {
            false => seen == expected,
            true => replay(&seen) == replay(&expected),
        };
        case.check(agrees, || {
            format!(
                "{who}: expected {expected:?} (coalescing: {coalesces}), saw {seen:?}: {:?}",
                replay(&seen)
            )
        });
    }
    owner.shutdown().await;
    watcher.shutdown().await;
}

/// A service/id held by a live registration of another client is refused at
/// `register` with [`Error::Conflict`] naming it, and the holder is left alone; once it
/// deregisters, the id is free.
pub async fn duplicate_id_refused<H: Harness>(harness: &H) {
    let case = Case::new("duplicate_id_refused");
    let service = case.service("svc");
    let first = case.client(harness).await;
    let second = case.client(harness).await;
    let held = case.register(&first, instance(&service, "x"), LONG_TTL).await;
    let other = Instance::builder(service.as_str(), "127.0.0.1:7002")
        .id("x")
        .build()
        .expect("valid instance");
    match second
        .register(other.clone(), RegisterOptions::ttl(LONG_TTL))
        .await
    {
        Err(Error::Conflict {
            service: s,
            id: i,
            key,
        }) => case.check(s == service.as_str() && i == "x" && !key.is_empty(), || {
            format!("the conflict must name {service}/x and the key held, got {s}/{i} at {key:?}")
        }),
        other => case.fail(format!(
            "registering x while another client holds it must fail with Error::Conflict, got {other:?}"
        )),
    }
    let listed = case.listed(&second, &service).await;
    case.check(listed == [instance(&service, "x")], || {
        format!("the refused register must leave the holder's x alone and write nothing, listed {listed:?}")
    });
    case.check(held.state() == RegistrationState::Registered, || {
        format!("the holder must stay Registered, it is {:?}", held.state())
    });
    case.ok(held.deregister().await, "deregistering the holder");
    let taken = case.register(&second, other.clone(), LONG_TTL).await;
    let listed = case.listed(&first, &service).await;
    case.check(listed == [other.clone()], || {
        format!("once the holder left, the second client's x must be listed alone, listed {listed:?}")
    });
    drop(taken);
    first.shutdown().await;
    second.shutdown().await;
}

/// A registration whose id another client took meanwhile (here: taken while it was
/// paused) shows `Conflict` and does not fight the other; once the other goes it writes
/// itself back and shows `Registered`.
pub async fn duplicate_id_written_back<H: Harness>(harness: &H) {
    let case = Case::new("duplicate_id_written_back");
    let service = case.service("svc");
    let first = case.client(harness).await;
    let second = case.client(harness).await;
    let watcher = case.client(harness).await;
    let discovery = case.watch(&watcher, &service).await;
    let mine = Instance::builder(service.as_str(), "127.0.0.1:7001")
        .id("x")
        .build()
        .expect("valid instance");
    let theirs = Instance::builder(service.as_str(), "127.0.0.1:7002")
        .id("x")
        .build()
        .expect("valid instance");
    let owner = case.register(&first, mine.clone(), LONG_TTL).await;
    case.ok(owner.pause().await, "pausing x");
    case.until_ids(&discovery, &[]).await;
    let intruder = case.register(&second, theirs.clone(), LONG_TTL).await;
    case.until_ids(&discovery, &["x"]).await;
    match owner.resume().await {
        Err(e) if e.is_conflict() => {}
        other => case.fail(format!(
            "resuming x while another client holds it must fail with Error::Conflict, got {other:?}"
        )),
    }
    case.check(owner.wait_for(RegistrationState::Conflict, WAIT).await, || {
        format!("the owner must show Conflict, it shows {:?}", owner.state())
    });
    let listed = case.listed(&watcher, &service).await;
    case.check(listed == [theirs.clone()], || {
        format!(
            "the other client's x must stay listed alone while the owner is in Conflict, listed {listed:?}"
        )
    });
    case.ok(intruder.deregister().await, "deregistering the other client's x");
    case.check(owner.wait_for(RegistrationState::Registered, WAIT).await, || {
        format!(
            "once the other x is gone the owner must write itself back and show Registered, it shows {:?}",
            owner.state()
        )
    });
    let snapshot = case.until_ids(&discovery, &["x"]).await;
    let seen = snapshot.instances()[0].addr().to_string();
    case.check(seen == mine.addr().to_string(), || {
        format!(
            "the owner's x ({}) must be back, the watcher holds {seen}",
            mine.addr()
        )
    });
    first.shutdown().await;
    second.shutdown().await;
    watcher.shutdown().await;
}

/// An id whose handle was just dropped can be registered again at once on the same
/// client, and ends up listed once.
pub async fn reregister_after_drop<H: Harness>(harness: &H) {
    let case = Case::new("reregister_after_drop");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let other = case.client(harness).await;
    for round in 0..3 {
        let registration = case.register(&owner, instance(&service, "again"), LONG_TTL).await;
        drop(registration);
        let again = case.register(&owner, instance(&service, "again"), LONG_TTL).await;
        let listed = ids(&case.listed(&other, &service).await);
        case.check(listed == ["again"], || {
            format!("round {round}: re-registered right after its drop, `again` must be listed once, listed {listed:?}")
        });
        drop(again);
    }
    owner.shutdown().await;
    let listed = case.listed(&other, &service).await;
    case.check(listed.is_empty(), || {
        format!("after shutdown nothing may stay, listed {listed:?}")
    });
    other.shutdown().await;
}

/// A `register` future dropped before it returns (a timeout, a `select!`) leaves no key
/// behind and never leaves the id refused.
pub async fn cancelled_register<H: Harness>(harness: &H) {
    let case = Case::new("cancelled_register");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let other = case.client(harness).await;
    for (round, after) in [0u64, 1, 3, 10, 30].into_iter().enumerate() {
        let cancelled = tokio::time::timeout(
            Duration::from_millis(after),
            owner.register(instance(&service, "c"), RegisterOptions::ttl(LONG_TTL)),
        )
        .await;
        match cancelled {
            // Done before the timeout: dropping the handle deregisters it.
            Ok(Ok(registration)) => drop(registration),
            Ok(Err(e)) => case.fail(format!("round {round}: registering c failed: {e}")),
            Err(_) => {}
        }
        case.eventually(
            &format!("round {round}: no key of c left after its register was cancelled"),
            || {
                let other = &other;
                let service = &service;
                async move { other.list(service).await.is_ok_and(|l| l.is_empty()) }
            },
        )
        .await;
        let registration = case.register(&owner, instance(&service, "c"), LONG_TTL).await;
        case.ok(registration.deregister().await, "deregistering c");
    }
    owner.shutdown().await;
    other.shutdown().await;
}

/// An operator's drain (native format): the instance leaves every watcher's set (shown
/// apart in `Snapshot::drained`), its owner shows `Drained` and does not write it back,
/// also across an update, a pause and a resume, until it is undrained. An id drained
/// before it registers starts `Drained`.
pub async fn drain<H: Harness>(harness: &H) {
    let case = Case::new("drain");
    let service = case.service("svc");
    let owner = case.client(harness).await;
    let operator = case.client(harness).await;
    let discovery = case.watch(&operator, &service).await;
    let d1 = case.register(&owner, instance(&service, "d1"), LONG_TTL).await;
    let _d2 = case.register(&owner, instance(&service, "d2"), LONG_TTL).await;
    case.until_ids(&discovery, &["d1", "d2"]).await;

    let registered = case.ok(operator.drain(&service, &id("d1")).await, "draining d1");
    case.check(registered, || "drain of a registered id must report true".into());
    let snapshot = case.until_ids(&discovery, &["d2"]).await;
    case.check(snapshot.is_drained(&id("d1")), || {
        format!(
            "the snapshot must list d1 as drained, it lists {:?}",
            snapshot
                .drained()
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
        )
    });
    let shown = snapshot
        .drained()
        .find(|(id, _)| id.as_str() == "d1")
        .and_then(|(_, i)| i.cloned());
    case.check(shown.as_deref() == Some(&d1.instance()), || {
        format!("the drained d1 must be shown with its instance, got {shown:?}")
    });
    case.check(d1.wait_for(RegistrationState::Drained, WAIT).await, || {
        format!("the owner of d1 must show Drained, it shows {:?}", d1.state())
    });
    case.ok(
        d1.update(InstanceUpdate::new().weight(7)).await,
        "updating drained d1",
    );
    case.ok(d1.pause().await, "pausing drained d1");
    case.ok(d1.resume().await, "resuming drained d1");
    case.check(d1.state() == RegistrationState::Drained, || {
        format!(
            "d1 must stay Drained across update, pause and resume, it shows {:?}",
            d1.state()
        )
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = ids(&case.listed(&operator, &service).await);
    case.check(listed == ["d2"], || {
        format!("the owner must not write a drained d1 back; listed {listed:?}")
    });

    let early = case.ok(
        operator.drain(&service, &id("d3")).await,
        "draining d3 before it registers",
    );
    case.check(!early, || {
        "drain of an id not registered must report false".into()
    });
    let d3 = case.ok(
        owner
            .register(instance(&service, "d3"), RegisterOptions::ttl(LONG_TTL))
            .await,
        "registering a drained d3",
    );
    case.check(d3.state() == RegistrationState::Drained, || {
        format!(
            "a registration whose id is drained must start Drained, it is {:?}",
            d3.state()
        )
    });

    let removed = case.ok(operator.undrain(&service, &id("d1")).await, "undraining d1");
    case.check(removed, || "undrain of a drained id must report true".into());
    case.check(d1.wait_for(RegistrationState::Registered, WAIT).await, || {
        format!(
            "undrained, d1 must be written back and show Registered, it shows {:?}",
            d1.state()
        )
    });
    let snapshot = case.until_ids(&discovery, &["d1", "d2"]).await;
    let weight = snapshot.get(&id("d1")).map(|i| i.weight());
    case.check(weight == Some(7), || {
        format!("d1 must come back with the update made while drained (weight 7), got {weight:?}")
    });
    case.ok(operator.undrain(&service, &id("d3")).await, "undraining d3");
    case.until_ids(&discovery, &["d1", "d2", "d3"]).await;
    let again = case.ok(operator.undrain(&service, &id("d3")).await, "undraining d3 twice");
    case.check(!again, || {
        "undrain of an id with no marker must report false".into()
    });
    owner.shutdown().await;
    operator.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::replay;

    #[test]
    fn replay_accepts_merged_histories_and_refuses_contradictions() {
        let expected = ["+a", "+b", "~a", "~a", "-b", "-a", "+a", "-a", "+z"];
        let merged = ["+a", "+b", "-b", "-a", "+z"];
        assert_eq!(replay(&expected), replay(&merged));
        assert!(replay(&["+a", "+a"]).is_err(), "an add seen twice");
        assert!(replay(&["-a"]).is_err(), "a removal of nothing");
        assert!(replay(&["~a"]).is_err(), "an update of nothing");
        assert_ne!(replay(&expected), replay(&["+a", "+z"]));
    }
}
