//! Any change to an own key that is not this client's own write (a put without a lease
//! or under another lease that later expires) is noticed and repaired: the key ends up
//! under the owner's lease again.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::PutOptions;
use leasehold_testkit::EtcdCluster;

/// A key taken over by a lease nobody keeps alive (as a late write under a given-up
/// lease would leave it) is written back when that lease expires, not lost with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_bound_to_an_expiring_lease_is_written_back() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registration = register(&registry, "a").await;
    let ours = lease_of(&etcd, &key("a")).await.unwrap();
    let mut other = raw(&etcd).await;
    let orphan = other.lease_grant(2, None).await.unwrap().id();
    let value = other.get(key("a"), None).await.unwrap().kvs()[0].value().to_vec();
    other
        .put(key("a"), value, Some(PutOptions::new().with_lease(orphan)))
        .await
        .unwrap();
    // The orphan lease expires after 2 s; the key must come back under ours.
    tokio::time::sleep(Duration::from_secs(3)).await;
    eventually("the key under the owner's lease again", || async {
        lease_of(&etcd, &key("a")).await == Some(ours)
    })
    .await;
    registered(&registration).await;
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert_eq!(lease_of(&etcd, &key("a")).await, Some(ours), "and it stays");
}

/// A key overwritten without a lease (by an operator's tool) is taken back under the
/// owner's lease, so it does not outlive the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_put_without_a_lease_is_taken_back() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let _registration = register(&registry, "a").await;
    let ours = lease_of(&etcd, &key("a")).await.unwrap();
    let value = etcd.get(key("a")).await.unwrap().unwrap();
    etcd.put(key("a"), value).await.unwrap();
    eventually("the key under the owner's lease again", || async {
        lease_of(&etcd, &key("a")).await == Some(ours)
    })
    .await;
}
