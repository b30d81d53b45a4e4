//! Operator drain on a real ZooKeeper: a drained registration stays out across a server
//! restart that expires its session (its own recovery writes the others back, never
//! it), the marker outlives the owner's session, and formats with no place for a marker
//! refuse to drain.

mod common;

use std::time::Duration;

use common::{instance, nodes, reaches, service, until_nodes, url, WAIT};
use leasehold::{InstanceId, RegisterOptions, RegistrationState, Registry, WatchOptions};
use leasehold_testkit::zookeeper::ZkEnsemble;
use leasehold_zookeeper::ZkRegistry;

fn id(value: &str) -> InstanceId {
    InstanceId::new(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_registration_stays_out_across_a_server_restart() {
    let zk = ZkEnsemble::start_standalone().await.expect("ZooKeeper starts");
    let svc = service("drain-restart");
    let owner = common::client(&zk);
    let operator = common::client(&zk);
    let ttl = RegisterOptions::ttl(Duration::from_secs(2));
    let drained = owner.register(instance(&svc, "d"), ttl).await.unwrap();
    let live = owner.register(instance(&svc, "l"), ttl).await.unwrap();
    assert!(operator.drain(&svc, &id("d")).await.unwrap());
    reaches(&drained, RegistrationState::Drained, "d is drained").await;
    until_nodes(&zk, &svc, "l's node and d's marker", |n| {
        n.len() == 2 && n.iter().any(|n| n == "~drained-d")
    })
    .await;

    zk.kill(0).await.unwrap();
    reaches(
        &live,
        RegistrationState::Recovering,
        "the session expires while the server is down",
    )
    .await;
    zk.restart(0).await.unwrap();
    reaches(&live, RegistrationState::Registered, "l is written back").await;
    assert_eq!(drained.state(), RegistrationState::Drained);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let names = until_nodes(&zk, &svc, "l's new node and the marker", |n| n.len() == 2).await;
    assert!(
        names.iter().any(|n| n == "~drained-d")
            && !names
                .iter()
                .any(|n| n.starts_with("_c_") && n.get(36..37) == Some("d")),
        "the recovery must not write d back: {names:?}"
    );
    let discovery = operator.watch(&svc, WatchOptions::default()).await.unwrap();
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 1 && s.is_drained(&id("d")))
        .await
        .expect("a watcher holds l and shows d drained");
    assert_eq!(snapshot.instances()[0].id().as_str(), "l");

    assert!(operator.undrain(&svc, &id("d")).await.unwrap());
    reaches(
        &drained,
        RegistrationState::Registered,
        "undrained, d is written back",
    )
    .await;
    discovery
        .wait_for(WAIT, |s| s.len() == 2 && !s.is_drained(&id("d")))
        .await
        .expect("undrained, d is back");
    assert_eq!(nodes(&zk, &svc).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_without_markers_refuse_to_drain() {
    let zk = ZkEnsemble::start_standalone().await.expect("ZooKeeper starts");
    for format in ["curator", "go-kit"] {
        let registry = ZkRegistry::connect(&url(&zk, &format!("?format={format}"))).unwrap();
        let err = registry.drain(&service("x"), &id("a")).await.unwrap_err();
        assert!(err.is_unsupported() && err.to_string().contains(format), "{err}");
    }
}
