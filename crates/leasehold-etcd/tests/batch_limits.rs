//! Batched writes fit etcd's request limit, and one write that cannot be written fails
//! alone, leaving nothing behind, while every other write of its batch goes through.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::GetOptions;
use leasehold::{Instance, RegisterOptions, RegistrationState, Registry};
use leasehold_testkit::EtcdCluster;

fn big(id: &str, bytes: usize) -> Instance {
    Instance::builder("echo", "127.0.0.1:7001")
        .id(id)
        .metadata("blob", "x".repeat(bytes))
        .build()
        .unwrap()
}

async fn count(etcd: &EtcdCluster) -> usize {
    let answer = raw(etcd)
        .await
        .get(
            format!("{ROOT}/echo/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    answer.kvs().len()
}

/// 130 registrations of 13 KB each (1.7 MB together, more than etcd's 1.5 MiB request
/// limit) are written again after their lease is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_of_more_than_one_request_of_data() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registrations: Vec<_> = futures::future::join_all(
        (0..130).map(|n| registry.register(big(&format!("i{n:03}"), 13_000), RegisterOptions::ttl(TTL))),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(count(&etcd).await, 130);
    let lease = raw(&etcd).await.get(key("i000"), None).await.unwrap().kvs()[0].lease();
    raw(&etcd).await.lease_revoke(lease).await.unwrap();
    for registration in &registrations {
        assert!(
            registration.wait_for(RegistrationState::Registered, WAIT).await
                && registration.state() == RegistrationState::Registered,
        );
    }
    eventually("all 130 written again", || async { count(&etcd).await == 130 }).await;
}

/// One 1.6 MB registration among 201 registered at once fails alone, with an error naming
/// it; the other 200 are registered, and nothing of the failed one is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_oversized_registration_fails_alone() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let mut instances: Vec<Instance> = (0..200).map(|n| instance(&format!("i{n:03}"))).collect();
    instances.insert(100, big("huge", 1_600_000));
    let results = futures::future::join_all(
        instances
            .into_iter()
            .map(|i| registry.register(i, RegisterOptions::ttl(TTL))),
    )
    .await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(failed.len(), 1, "only the huge one fails: {failed:?}");
    let error = failed[0].to_string();
    assert!(error.contains("huge"), "the error names it: {error}");
    assert!(failed[0].is_invalid_input(), "{error}");
    assert_eq!(
        count(&etcd).await,
        200,
        "every other one is registered, the huge one left nothing"
    );
    assert!(!exists(&etcd, &key("huge")).await);
    drop(results);
    eventually("all deregistered", || async { count(&etcd).await == 0 }).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A limit below etcd's (configured in the URL) splits batches smaller: 40 registrations
/// of 20 KB with a 64 KiB limit are all written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limit_splits_batches() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect_url(&format!("{}?max_request_bytes=65536", etcd.url(ROOT))).await;
    let results = futures::future::join_all(
        (0..40).map(|n| registry.register(big(&format!("i{n:02}"), 20_000), RegisterOptions::ttl(TTL))),
    )
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(count(&etcd).await, 40);
    let too_big = registry
        .register(big("over", 70_000), RegisterOptions::ttl(TTL))
        .await
        .unwrap_err();
    assert!(too_big.to_string().contains("max_request_bytes"), "{too_big}");
}
