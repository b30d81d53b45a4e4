//! Two clients claiming one service and instance id: the second is refused at
//! `register`, naming the conflict; a live registration written over later shows
//! `Conflict` on its owner's handle, and is written back once the other's key goes.

mod common;

use common::*;
use etcd_client::PutOptions;
use leasehold::{Error, RegisterOptions, RegistrationState, Registry};
use leasehold_testkit::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_client_with_the_same_id_is_refused() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let first = connect(&etcd).await;
    let second = connect(&etcd).await;
    let registration = register(&first, "a").await;
    let owner = lease_of(&etcd, &key("a")).await;

    let refused = second
        .register(instance("a"), RegisterOptions::ttl(TTL))
        .await
        .unwrap_err();
    assert!(refused.is_conflict(), "{refused}");
    assert!(
        matches!(&refused, Error::Conflict { service, id, key: k } if service == "echo" && id == "a" && *k == key("a")),
        "{refused}"
    );
    assert_eq!(
        lease_of(&etcd, &key("a")).await,
        owner,
        "the first client's key is untouched"
    );
    assert_eq!(registration.state(), RegistrationState::Registered);

    // Once the first deregisters, the id is free for the second.
    registration.deregister().await.unwrap();
    let taken = register(&second, "a").await;
    assert_eq!(taken.state(), RegistrationState::Registered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwritten_registration_shows_conflict_and_comes_back() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let owner = connect(&etcd).await;
    let registration = register(&owner, "a").await;
    let mut other = raw(&etcd).await;
    let lease = other.lease_grant(60, None).await.unwrap().id();
    other
        .put(
            key("a"),
            "someone else",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    reaches(
        &registration,
        RegistrationState::Conflict,
        "the owner sees the conflict",
    )
    .await;
    let value = other.get(key("a"), None).await.unwrap();
    assert_eq!(
        value.kvs()[0].value(),
        b"someone else",
        "the owner does not fight the other client"
    );

    other.lease_revoke(lease).await.unwrap();
    reaches(
        &registration,
        RegistrationState::Registered,
        "written back once the other's key is gone",
    )
    .await;
    eventually("the owner's value back", || {
        let etcd = &etcd;
        async move {
            etcd.get(key("a"))
                .await
                .ok()
                .flatten()
                .is_some_and(|v| v != b"someone else")
        }
    })
    .await;
}
