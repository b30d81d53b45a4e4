//! Operator drain through the in-process registry: a drained registration stays out
//! across its own lease loss and recovery, an undrain made while its owner was cut off
//! still reaches it, and formats with no place for a marker refuse to drain.

mod common;

use std::time::Duration;

use common::*;
use leasehold::memory::MemoryRegistry;
use leasehold::{InstanceId, RegisterOptions, RegistrationState, Registry, ServiceName, WatchOptions};

fn id(value: &str) -> InstanceId {
    InstanceId::new(value).unwrap()
}

#[tokio::test]
async fn a_drained_registration_stays_out_across_a_lost_lease() {
    let owner = MemoryRegistry::new();
    let operator = MemoryRegistry::with_store(owner.store().clone());
    let discovery = operator.watch(&echo(), WatchOptions::default()).await.unwrap();
    let ttl = RegisterOptions::ttl(Duration::from_secs(1));
    let drained = owner.register(instance("d"), ttl).await.unwrap();
    let live = owner.register(instance("l"), ttl).await.unwrap();
    assert!(operator.drain(&echo(), &id("d")).await.unwrap());
    assert!(drained.wait_for(RegistrationState::Drained, WAIT).await);

    // Longer than the TTL: the lease is lost and everything is written again.
    owner.store().set_reachable(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    owner.store().set_reachable(true);
    assert!(
        live.wait_for(RegistrationState::Recovering, WAIT).await,
        "lease loss noticed"
    );
    assert!(
        live.wait_for(RegistrationState::Registered, WAIT).await,
        "and repaired"
    );
    assert_eq!(drained.state(), RegistrationState::Drained);
    let listed = listed_ids(&operator).await;
    assert_eq!(listed, ["l"], "the recovery must not write the drained one back");
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 1 && s.is_drained(&id("d")))
        .await
        .expect("the watcher holds l and shows d drained");
    assert_eq!(snapshot.instances()[0].id().as_str(), "l");

    assert!(operator.undrain(&echo(), &id("d")).await.unwrap());
    assert!(drained.wait_for(RegistrationState::Registered, WAIT).await);
    discovery
        .wait_for(WAIT, |s| s.len() == 2 && !s.is_drained(&id("d")))
        .await
        .expect("undrained, d is back");
}

#[tokio::test]
async fn an_undrain_while_the_owner_was_cut_off_reaches_it() {
    let owner = MemoryRegistry::new();
    let operator = MemoryRegistry::with_store(owner.store().clone());
    let drained = owner
        .register(instance("d"), RegisterOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    operator.drain(&echo(), &id("d")).await.unwrap();
    assert!(drained.wait_for(RegistrationState::Drained, WAIT).await);

    // Its only registration is drained, so nothing of it is written; the lease is lost
    // all the same and the marker goes while the owner cannot see it.
    owner.store().set_reachable(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    owner.store().set_reachable(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    operator.undrain(&echo(), &id("d")).await.unwrap();
    assert!(
        drained.wait_for(RegistrationState::Registered, WAIT).await,
        "the owner must learn of the undrain and write itself back; it is {:?}",
        drained.state()
    );
    assert_eq!(operator.list(&echo()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn formats_without_markers_refuse_to_drain() {
    let registry = MemoryRegistry::connect(&"memory://drain-formats?format=go-kit".parse().unwrap()).unwrap();
    let err = registry
        .drain(&ServiceName::new("hello").unwrap(), &id("a"))
        .await
        .unwrap_err();
    assert!(
        err.is_unsupported() && err.to_string().contains("go-kit"),
        "{err}"
    );
    let err = registry
        .undrain(&ServiceName::new("hello").unwrap(), &id("a"))
        .await
        .unwrap_err();
    assert!(err.is_unsupported(), "{err}");
}
