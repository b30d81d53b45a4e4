//! An operator's drain on etcd: a marker beside the instance keys takes the instance out
//! and keeps its owner from writing it back until undrained; a registration whose marker
//! already exists starts drained; formats without a place for a marker refuse.

mod common;

use common::*;
use leasehold::{RegistrationState, Registry, ServiceName};
use leasehold_testkit::EtcdCluster;

fn marker(id: &str) -> String {
    format!("{ROOT}/echo/~drained-{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_takes_the_instance_out_until_undrained() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let owner = connect(&etcd).await;
    let operator = connect(&etcd).await;
    let registration = register(&owner, "a").await;
    let _b = register(&owner, "b").await;
    let id = leasehold::InstanceId::new("a").unwrap();
    assert!(operator.drain(&echo(), &id).await.unwrap(), "a is registered");
    let value = etcd
        .get(marker("a"))
        .await
        .unwrap()
        .expect("the marker is written");
    assert!(
        String::from_utf8_lossy(&value).contains("\"id\":\"a\""),
        "the marker holds the instance"
    );
    reaches(
        &registration,
        RegistrationState::Drained,
        "the owner sees the drain",
    )
    .await;
    eventually("the drained instance's key deleted", || async {
        !exists(&etcd, &key("a")).await
    })
    .await;
    // It stays out: the owner does not write it back while drained, across a TTL.
    tokio::time::sleep(TTL + std::time::Duration::from_secs(1)).await;
    assert!(!exists(&etcd, &key("a")).await);
    assert!(exists(&etcd, &key("b")).await, "the other instance is untouched");

    assert!(
        operator.undrain(&echo(), &id).await.unwrap(),
        "there was a marker"
    );
    assert!(
        !operator.undrain(&echo(), &id).await.unwrap(),
        "and now there is none"
    );
    reaches(
        &registration,
        RegistrationState::Registered,
        "written back once undrained",
    )
    .await;
    assert!(exists(&etcd, &key("a")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_of_a_drained_id_starts_drained() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let operator = connect(&etcd).await;
    let id = leasehold::InstanceId::new("a").unwrap();
    assert!(
        !operator.drain(&echo(), &id).await.unwrap(),
        "nothing registered yet"
    );
    let owner = connect(&etcd).await;
    let registration = register(&owner, "a").await;
    reaches(&registration, RegistrationState::Drained, "starts drained").await;
    assert!(!exists(&etcd, &key("a")).await, "never written while drained");
    // A later registration of another id of the same service is not drained.
    let b = register(&owner, "b").await;
    assert_eq!(b.state(), RegistrationState::Registered);
    operator.undrain(&echo(), &id).await.unwrap();
    registered(&registration).await;
    assert!(exists(&etcd, &key("a")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_without_markers_refuse_drain() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect_url(&format!("{}?format=go-kit", etcd.url("/services"))).await;
    let service = ServiceName::new("echo").unwrap();
    let refused = registry
        .drain(&service, &leasehold::InstanceId::new("a").unwrap())
        .await
        .unwrap_err();
    assert!(refused.is_unsupported(), "{refused}");
    assert!(
        refused.to_string().contains("go-kit"),
        "names the format: {refused}"
    );
}
