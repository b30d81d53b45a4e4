//! Recovery paths of the registrar and the watcher, driven through the in-process
//! registry's fault injection.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use leasehold::memory::{MemoryRegistry, MemoryStore};
use leasehold::{
    Change, ConnectionState, Instance, InstanceId, InstanceUpdate, RegisterOptions, RegistrationState,
    Registry, ServiceName, WatchOptions,
};

#[tokio::test]
async fn lifecycle_is_seen_by_a_watcher() {
    let registry = MemoryRegistry::new();
    let discovery = registry.watch(&echo(), WatchOptions::default()).await.unwrap();
    let registration = register(&registry, "a").await;
    discovery.wait_for(WAIT, |s| s.len() == 1).await.expect("added");

    registration.pause().await.unwrap();
    assert_eq!(registration.state(), RegistrationState::Paused);
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .expect("paused is gone");

    registration.resume().await.unwrap();
    assert_eq!(registration.state(), RegistrationState::Registered);
    discovery
        .wait_for(WAIT, |s| s.len() == 1)
        .await
        .expect("resumed is back");

    let mut changes = discovery.changes();
    registration
        .update(InstanceUpdate::new().weight(7))
        .await
        .unwrap();
    match changes.next().await.unwrap() {
        Change::Updated { old, new } => assert_eq!((old.weight(), new.weight()), (1, 7)),
        other => panic!("expected an update, got {other:?}"),
    }

    registration.deregister().await.unwrap();
    assert_eq!(registration.state(), RegistrationState::Deregistered);
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .expect("deregistered is gone");
    assert_eq!(registry.store().lease_count(), 0, "the idle lease is revoked");
}

#[tokio::test]
async fn registrations_share_one_lease_per_ttl() {
    let registry = MemoryRegistry::new();
    let mut held = Vec::new();
    for n in 0..20 {
        held.push(register(&registry, &format!("i{n}")).await);
    }
    assert_eq!(registry.store().lease_count(), 1);
    held.push(
        registry
            .register(instance("short"), RegisterOptions::ttl(Duration::from_secs(2)))
            .await
            .unwrap(),
    );
    assert_eq!(registry.store().lease_count(), 2);
}

#[tokio::test]
async fn duplicate_registration_is_refused() {
    let registry = MemoryRegistry::new();
    let _first = register(&registry, "a").await;
    let err = registry
        .register(instance("a"), RegisterOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
}

#[tokio::test]
async fn dropping_the_handle_deregisters_at_once() {
    let registry = MemoryRegistry::new();
    let discovery = registry.watch(&echo(), WatchOptions::default()).await.unwrap();
    let registration = register(&registry, "a").await;
    let clone = registration.clone();
    drop(registration);
    let gone = discovery
        .wait_for(Duration::from_millis(300), |s| s.is_empty())
        .await;
    assert!(gone.is_none(), "a clone still holds it");
    drop(clone);
    discovery
        .wait_for(Duration::from_secs(2), |s| s.is_empty())
        .await
        .expect("gone well before the TTL");
}

#[tokio::test]
async fn a_crashed_client_expires_after_its_ttl() {
    let store = MemoryStore::new();
    let server = MemoryRegistry::with_store(store.clone());
    let client = MemoryRegistry::with_store(store);
    let discovery = client.watch(&echo(), WatchOptions::default()).await.unwrap();
    let registration = server
        .register(instance("a"), RegisterOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    discovery.wait_for(WAIT, |s| s.len() == 1).await.unwrap();
    server.crash();
    drop(registration);
    // Dropping the handle of a crashed client deregisters nothing: the instance stays
    // until its lease runs out.
    tokio::task::yield_now().await;
    assert_eq!(
        client.list(&echo()).await.unwrap().len(),
        1,
        "still registered after the crash"
    );
    discovery.wait_for(WAIT, |s| s.is_empty()).await.expect("expired");
}

#[tokio::test]
async fn a_wiped_store_gets_every_registration_back() {
    let registry = MemoryRegistry::new();
    let discovery = registry.watch(&echo(), WatchOptions::default()).await.unwrap();
    let a = registry
        .register(instance("a"), RegisterOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    let b = registry
        .register(instance("b"), RegisterOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    discovery.wait_for(WAIT, |s| s.len() == 2).await.unwrap();
    registry.store().wipe();
    assert!(a.wait_for(RegistrationState::Recovering, WAIT).await);
    assert!(a.wait_for(RegistrationState::Registered, WAIT).await);
    assert!(b.wait_for(RegistrationState::Registered, WAIT).await);
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 2 && s.connection().is_live())
        .await;
    assert!(snapshot.is_some(), "the watcher re-listed and sees both again");
}

#[tokio::test]
async fn a_key_deleted_by_someone_else_is_written_again() {
    let registry = MemoryRegistry::new();
    let operator = MemoryRegistry::with_store(registry.store().clone());
    let registration = register(&registry, "a").await;
    let discovery = operator.watch(&echo(), WatchOptions::default()).await.unwrap();
    let mut changes = discovery.changes();
    assert!(operator
        .deregister(&echo(), &InstanceId::new("a").unwrap())
        .await
        .unwrap());
    assert!(matches!(changes.next().await, Some(Change::Removed(_))));
    assert!(
        matches!(changes.next().await, Some(Change::Added(_))),
        "written again"
    );
    assert!(
        registration.wait_for(RegistrationState::Registered, WAIT).await,
        "the handle shows the registration repaired"
    );
}

#[tokio::test]
async fn an_outage_marks_the_cache_stale_and_keeps_the_set() {
    let registry = MemoryRegistry::new();
    let _a = register(&registry, "a").await;
    let discovery = registry.watch(&echo(), WatchOptions::default()).await.unwrap();
    registry.store().set_reachable(false);
    let stale = discovery
        .wait_for(WAIT, |s| matches!(s.connection(), ConnectionState::Stale { .. }))
        .await
        .expect("marked stale");
    assert_eq!(stale.len(), 1, "the last known set is still served");
    let err = registry
        .register(instance("b"), RegisterOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("memory://"), "{err}");
    registry.store().set_reachable(true);
    discovery
        .wait_for(WAIT, |s| s.connection().is_live())
        .await
        .expect("live again");
}

#[tokio::test]
async fn a_long_outage_loses_the_lease_and_recovers_it() {
    let registry = Arc::new(MemoryRegistry::new());
    let a = registry
        .register(instance("a"), RegisterOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    registry.store().set_reachable(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    registry.store().set_reachable(true);
    assert!(
        a.wait_for(RegistrationState::Recovering, WAIT).await,
        "lease loss noticed"
    );
    assert!(
        a.wait_for(RegistrationState::Registered, WAIT).await,
        "and repaired"
    );
    assert_eq!(registry.list(&echo()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn many_concurrent_registrations_all_land_on_one_lease() {
    let registry = MemoryRegistry::new();
    let before = registry.store().revision();
    let registrations = futures::future::try_join_all(
        (0..500).map(|n| registry.register(instance(&format!("i{n}")), RegisterOptions::default())),
    )
    .await
    .unwrap();
    assert_eq!(registrations.len(), 500);
    assert_eq!(registry.list(&echo()).await.unwrap().len(), 500);
    assert_eq!(registry.store().revision() - before, 500, "one revision per key");
    assert_eq!(registry.store().lease_count(), 1);
}

#[tokio::test]
async fn a_memory_url_picks_the_format_and_its_root() {
    let url = "memory://formats-test?format=go-zero".parse().unwrap();
    let registry = MemoryRegistry::connect(&url).unwrap();
    let instance = Instance::builder("user.rpc", "10.0.0.5:8080")
        .id("7587869950362034437")
        .build()
        .unwrap();
    let _registration = registry
        .register(instance, RegisterOptions::default())
        .await
        .unwrap();
    let raw = registry.store().dump("user.rpc/");
    assert_eq!(
        raw,
        [(
            "user.rpc/7587869950362034437".to_owned(),
            b"10.0.0.5:8080".to_vec()
        )]
    );
    assert_eq!(
        registry.list_services().await.unwrap(),
        [ServiceName::new("user.rpc").unwrap()]
    );
    let bad = "memory://x?format=consul".parse().unwrap();
    let err = MemoryRegistry::connect(&bad).unwrap_err().to_string();
    assert!(err.contains("unknown format \"consul\""), "{err}");
}

/// A registry that comes back empty does not empty a guarded cache (Nacos #3880); an
/// unguarded one follows the registry.
#[tokio::test]
async fn the_guard_keeps_the_set_when_the_registry_comes_back_empty() {
    let store = MemoryStore::new();
    let owner = MemoryRegistry::with_store(store.clone());
    let client = MemoryRegistry::with_store(store.clone());
    let guarded = client
        .watch(&echo(), WatchOptions::guard(0.5).unwrap())
        .await
        .unwrap();
    let plain = client.watch(&echo(), WatchOptions::default()).await.unwrap();
    let mut held = Vec::new();
    for id in ["a", "b", "c", "d"] {
        held.push(register(&owner, id).await);
    }
    guarded.wait_for(WAIT, |s| s.len() == 4).await.expect("all four");
    owner.crash();
    store.wipe();
    plain
        .wait_for(WAIT, |s| s.is_empty() && s.connection().is_live())
        .await
        .expect("re-listed empty");
    let snapshot = guarded
        .wait_for(WAIT, |s| s.connection().is_live())
        .await
        .expect("live again");
    assert_eq!(snapshot.len(), 4, "the guard refused the empty listing");
}

/// A deregistration that cannot reach the registry, while other registrations keep the
/// shared lease alive, is retried until its key is gone: the key must not stay listed
/// for as long as the process runs.
#[tokio::test]
async fn a_deregistration_that_failed_is_retried_until_the_key_is_gone() {
    let registry = MemoryRegistry::new();
    let gone = register(&registry, "gone").await;
    let _kept = register(&registry, "kept").await;

    registry.store().set_reachable(false);
    let failed = gone.deregister().await;
    assert!(failed.is_err(), "the registry is unreachable: {failed:?}");
    assert_eq!(gone.state(), RegistrationState::Deregistered);
    registry.store().set_reachable(true);

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ids = listed_ids(&registry).await;
        if ids == ["kept"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deregistered key is still listed: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its id is free again once the key is gone.
    registry
        .register(instance("gone"), RegisterOptions::default())
        .await
        .expect("registered again");
}

/// The delete a pause makes reaches the lease's follower after the resume may have
/// written the same key again; it must never be taken for a loss of the new write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_then_a_resume_is_never_taken_for_a_lost_key() {
    let registry = MemoryRegistry::new();
    let registration = register(&registry, "a").await;
    let mut states = registration.states();
    for round in 0..500 {
        registration.pause().await.unwrap();
        registration.resume().await.unwrap();
        assert_eq!(
            registration.state(),
            RegistrationState::Registered,
            "round {round}: state right after resume"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    states.mark_unchanged();
    assert_eq!(registration.state(), RegistrationState::Registered);
    registration.pause().await.unwrap();
    registration.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = *states.borrow_and_update();
    assert_eq!(
        seen,
        RegistrationState::Registered,
        "no late recovery after a resume"
    );
}
