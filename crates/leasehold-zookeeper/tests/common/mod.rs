//! Shared pieces of the ZooKeeper backend's tests: a real server from the testkit, and
//! a raw client to look at and disturb the tree as another process would.

#![allow(dead_code)]

use std::time::Duration;

use leasehold::{
    Discovery, Instance, RegisterOptions, Registration, RegistrationState, Registry, RegistryUrl,
    ServiceName, WatchOptions,
};
use leasehold_testkit::zookeeper::ZkEnsemble;
use leasehold_zookeeper::ZkRegistry;
use zookeeper_client as zk;

/// How long a test waits for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(30);

pub const ROOT: &str = "/leasehold/services";

pub fn url(zk: &ZkEnsemble, query: &str) -> RegistryUrl {
    format!("{}{query}", zk.url(ROOT)).parse().unwrap()
}

/// Logs to the test output as `RUST_LOG` says.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn client(zk: &ZkEnsemble) -> ZkRegistry {
    logs();
    ZkRegistry::connect(&url(zk, "")).unwrap()
}

pub fn instance(service: &ServiceName, id: &str) -> Instance {
    Instance::builder(service.as_str(), "127.0.0.1:7001")
        .id(id)
        .build()
        .unwrap()
}

/// Registers the instance `id` of `svc` (see [`instance`]) on `registry` with `ttl`.
pub async fn register(registry: &ZkRegistry, svc: &ServiceName, id: &str, ttl: Duration) -> Registration {
    registry
        .register(instance(svc, id), RegisterOptions::ttl(ttl))
        .await
        .unwrap()
}

/// Watches `svc` on `registry`, once the watcher holds `count` instances.
pub async fn watch_until(registry: &ZkRegistry, svc: &ServiceName, count: usize) -> Discovery {
    let discovery = registry.watch(svc, WatchOptions::default()).await.unwrap();
    discovery
        .wait_for(WAIT, |s| s.len() == count)
        .await
        .unwrap_or_else(|| panic!("the watcher of {svc} holds {count} instances"));
    discovery
}

/// Waits up to [`WAIT`] for `discovery` to be live with `count` instances; fails with
/// `what`.
pub async fn live_with(discovery: &Discovery, count: usize, what: &str) {
    discovery
        .wait_for(WAIT, |s| s.connection().is_live() && s.len() == count)
        .await
        .expect(what);
}

/// Waits up to [`WAIT`] for `registration` to be in `state`; fails naming `what`.
pub async fn reaches(registration: &Registration, state: RegistrationState, what: &str) {
    leasehold_testkit::reaches(registration, state, WAIT, what).await
}

pub fn service(name: &str) -> ServiceName {
    ServiceName::new(format!("{name}-{}", &uuid_tag())).unwrap()
}

fn uuid_tag() -> String {
    format!("{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

/// A plain client of the ensemble, as another process (an operator, a foreign writer).
pub async fn raw(zk: &ZkEnsemble) -> zk::Client {
    zk::Client::connect(&zk.connect_string()).await.unwrap()
}

/// The node names under `service`, retried through reconnects.
pub async fn nodes(zk: &ZkEnsemble, service: &ServiceName) -> Vec<String> {
    let path = format!("{ROOT}/{service}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let attempt = async {
            let client = zk::Client::connector()
                .with_session_timeout(Duration::from_secs(5))
                .connect(&zk.connect_string())
                .await?;
            match client.list_children(&path).await {
                Err(zk::Error::NoNode) => Ok(Vec::new()),
                other => other,
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(mut names)) => {
                names.sort();
                return names;
            }
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => panic!("listing {path} failed: {other:?}"),
        }
    }
}

/// Polls `nodes` until `check` holds; panics naming `what` after [`WAIT`].
pub async fn until_nodes(
    zk: &ZkEnsemble,
    service: &ServiceName,
    what: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let names = nodes(zk, service).await;
        if check(&names) {
            return names;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: nodes under {service} are {names:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
