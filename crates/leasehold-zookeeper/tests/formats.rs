//! The ZooKeeper formats in both directions against one real ZooKeeper: go-kit `sd/zk`'s
//! nodes as a raw client creates them the way go-kit does, and Curator x-discovery
//! against the real Curator (`leasehold_testkit::CuratorPeer`: Apache Curator's own
//! `ServiceDiscovery` in a JVM). Malformed values under a watched service are skipped
//! and counted while the watch goes on.
//!
//! The two formats live under different roots, so they share the server and run at once.

mod common;

use std::time::Duration;

use common::WAIT;
use leasehold::{Instance, RegisterOptions, RegistrationState, Registry, ServiceName, WatchOptions};
use leasehold_testkit::{CuratorInstance, CuratorPeer, ZkEnsemble};
use leasehold_zookeeper::ZkRegistry;
use zookeeper_client as zk;

const TTL: Duration = Duration::from_secs(10);

fn connect(zk: &ZkEnsemble, path_and_query: &str) -> ZkRegistry {
    common::logs();
    let url = format!("zk://{}{path_and_query}", zk.connect_string());
    ZkRegistry::connect(&url.parse().unwrap()).unwrap()
}

/// Polls `check` until it holds, up to [`WAIT`]; panics naming `what` otherwise.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    leasehold_testkit::eventually(what, WAIT, check).await
}

/// Whether `name` is a protected sequential node name as go-zookeeper's
/// `CreateProtectedEphemeralSequential(path + "/")` makes it: `_c_{32 hex}-{10 digits}`.
fn is_go_kit_node(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("_c_") else {
        return false;
    };
    let (guid, sequence) = rest.split_at(rest.len().min(32));
    guid.len() == 32
        && guid.bytes().all(|b| b.is_ascii_hexdigit())
        && sequence.len() == 11
        && sequence.starts_with('-')
        && sequence[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Children of `path` with their data and whether each is ephemeral.
async fn children(client: &zk::Client, path: &str) -> Vec<(String, Vec<u8>, bool)> {
    let mut names = match client.list_children(path).await {
        Err(zk::Error::NoNode) => Vec::new(),
        other => other.unwrap(),
    };
    names.sort();
    let mut found = Vec::new();
    for name in names {
        if let Ok((data, stat)) = client.get_data(&format!("{path}/{name}")).await {
            found.push((name, data, stat.ephemeral_owner != 0));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_kit_and_curator_read_and_write_what_their_frameworks_do() {
    let server = ZkEnsemble::start_standalone().await.expect("ZooKeeper starts");
    tokio::join!(go_kit_both_ways(&server), curator_both_ways(&server));
}

/// go-kit `sd/zk`: `Registrar` creates `{Path}/{Name}/` as a protected ephemeral
/// sequential node holding the instance string; `Instancer` reads every child's data.
async fn go_kit_both_ways(server: &ZkEnsemble) {
    let registry = connect(server, "/services?format=go-kit");
    let hello = ServiceName::new("hello").unwrap();
    let discovery = registry.watch(&hello, WatchOptions::default()).await.unwrap();

    // As go-kit's client.Register does, through a plain client.
    let raw = common::raw(server).await;
    let open = zk::Acls::anyone_all();
    raw.mkdir("/services/hello", &zk::CreateMode::Persistent.with_acls(open))
        .await
        .unwrap();
    let guid = "6ba7b8109dad11d180b400c04fd430c8";
    let (_, sequence) = raw
        .create(
            &format!("/services/hello/_c_{guid}-"),
            b"10.0.0.5:8080",
            &zk::CreateMode::EphemeralSequential.with_acls(open),
        )
        .await
        .unwrap();
    let theirs = format!("_c_{guid}-{sequence}");
    assert!(is_go_kit_node(&theirs), "{theirs}");
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 1)
        .await
        .expect("go-kit's node is discovered");
    let expected = Instance::builder("hello", "10.0.0.5:8080")
        .id(theirs.as_str())
        .build()
        .unwrap();
    assert_eq!(*snapshot.instances()[0], expected);
    assert_eq!(registry.list(&hello).await.unwrap(), [expected]);

    let skipped = discovery.skipped();
    raw.create(
        "/services/hello/garbage",
        b"\xff not an address",
        &zk::CreateMode::Ephemeral.with_acls(open),
    )
    .await
    .unwrap();
    eventually("the malformed go-kit value is counted", || async {
        discovery.skipped() > skipped
    })
    .await;
    assert_eq!(discovery.snapshot().len(), 1);

    // go-kit's Deregister deletes its node.
    raw.delete(&format!("/services/hello/{theirs}"), None)
        .await
        .unwrap();
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .expect("the watcher follows go-kit's delete after the garbage");
    raw.delete("/services/hello/garbage", None).await.unwrap();

    // Weight, zone and metadata have no room in go-kit's format.
    let ours = Instance::builder("hello", "10.0.0.6:8080")
        .id("ours")
        .weight(5)
        .zone("z1")
        .metadata("k", "v")
        .build()
        .unwrap();
    let registration = registry.register(ours, RegisterOptions::ttl(TTL)).await.unwrap();
    assert!(registration.wait_for(RegistrationState::Registered, WAIT).await);
    let stored = children(&raw, "/services/hello").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (name, data, ephemeral) = &stored[0];
    assert!(is_go_kit_node(name), "named as go-kit names its nodes: {name}");
    assert_eq!(data, b"10.0.0.6:8080", "the bytes go-kit's Instancer reads");
    assert!(ephemeral);
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 1)
        .await
        .expect("our go-kit node is discovered");
    let found = &snapshot.instances()[0];
    assert_eq!(
        (
            found.id().as_str(),
            found.addr().as_str(),
            found.weight(),
            found.zone()
        ),
        (name.as_str(), "10.0.0.6:8080", 1, None)
    );
    assert!(found.metadata().is_empty());

    registration.deregister().await.unwrap();
    assert!(children(&raw, "/services/hello").await.is_empty());
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .expect("the deregistration is seen");
    registry.shutdown().await;
}

/// Curator x-discovery against Apache Curator itself.
async fn curator_both_ways(server: &ZkEnsemble) {
    let connect_string = server.connect_string();
    let peer = CuratorPeer::get().await.expect("the Curator peer builds");
    let registry = connect(server, "/curator?format=curator");
    let echo = ServiceName::new("echo").unwrap();
    let discovery = registry.watch(&echo, WatchOptions::default()).await.unwrap();

    let theirs = peer
        .register(
            &connect_string,
            "/curator",
            "echo",
            &CuratorInstance {
                id: "java-1",
                address: "10.0.0.5",
                port: 8080,
                payload: &[("zone", "z1"), ("region", "eu"), ("weight", "3")],
            },
        )
        .await
        .expect("Curator registers");
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 1)
        .await
        .expect("Curator's instance is discovered");
    // The peer registers with the uriSpec `{scheme}://{address}:{port}`, so the address
    // is what Curator's buildUriSpec() gives.
    let expected = Instance::builder("echo", "http://10.0.0.5:8080")
        .id("java-1")
        .zone("z1")
        .weight(3)
        .metadata("region", "eu")
        .build()
        .unwrap();
    assert_eq!(*snapshot.instances()[0], expected);
    assert_eq!(registry.list(&echo).await.unwrap(), [expected]);

    let ours = Instance::builder("echo", "10.0.0.6:9090")
        .id("rust-1")
        .metadata("k", "v")
        .zone("z2")
        .build()
        .unwrap();
    let registration = registry.register(ours, RegisterOptions::ttl(TTL)).await.unwrap();
    assert!(registration.wait_for(RegistrationState::Registered, WAIT).await);
    let raw = common::raw(server).await;
    let stored = children(&raw, "/curator/echo").await;
    let names: Vec<&str> = stored.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, ["java-1", "rust-1"], "Curator names nodes by id");
    assert!(stored.iter().all(|(_, _, ephemeral)| *ephemeral));

    let found = peer.query(&connect_string, "/curator", "echo").await.unwrap();
    let found: Vec<serde_json::Value> = found
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let rust = found
        .iter()
        .find(|i| i["id"] == "rust-1")
        .unwrap_or_else(|| panic!("Curator finds our instance: {found:?}"));
    assert_eq!(rust["name"], "echo");
    assert_eq!(rust["address"], "10.0.0.6");
    assert_eq!(rust["port"], 9090);
    assert_eq!(rust["serviceType"], "DYNAMIC");
    assert_eq!(rust["payload"]["k"], "v");
    assert_eq!(rust["payload"]["zone"], "z2");
    assert_eq!(found.len(), 2, "{found:?}");

    let skipped = discovery.skipped();
    raw.create(
        "/curator/echo/garbage",
        b"{\"name\":\"echo\",\"id\":",
        &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all()),
    )
    .await
    .unwrap();
    eventually("the malformed Curator value is counted", || async {
        discovery.skipped() > skipped
    })
    .await;
    assert_eq!(discovery.snapshot().len(), 2);
    // Curator's own query fails on a value it cannot read.
    raw.delete("/curator/echo/garbage", None).await.unwrap();

    theirs.unregister().await.expect("Curator unregisters");
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 1)
        .await
        .expect("Curator's unregistration is seen");
    assert_eq!(snapshot.instances()[0].id().as_str(), "rust-1");

    registration.deregister().await.unwrap();
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .expect("our deregistration is seen");
    let found = peer.query(&connect_string, "/curator", "echo").await.unwrap();
    assert!(found.is_empty(), "Curator no longer finds ours: {found:?}");
    registry.shutdown().await;
}
