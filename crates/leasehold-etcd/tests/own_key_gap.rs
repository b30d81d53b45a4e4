//! A delete of an own key while the own-key watch is cut off, followed by a compaction
//! past it, is still repaired: after any gap the client reads its own keys.

mod common;

use std::time::Duration;

use common::*;
use leasehold::{RegisterOptions, Registry};
use leasehold_testkit::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_during_a_gap_then_compaction_is_repaired() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let proxy = Proxy::start(etcd.endpoint(0)).await;
    // A TTL long enough that the lease outlives the cut: nothing but the own-key check
    // can bring the key back.
    let ttl = Duration::from_secs(20);
    let registry = connect_url(&format!("etcd://{}{ROOT}", proxy.endpoint)).await;
    let _registration = registry
        .register(instance("a"), RegisterOptions::ttl(ttl))
        .await
        .unwrap();
    let _b = registry
        .register(instance("b"), RegisterOptions::ttl(ttl))
        .await
        .unwrap();

    proxy.cut();
    let mut other = raw(&etcd).await;
    other.delete(key("a"), None).await.unwrap();
    for n in 0..5 {
        etcd.put(format!("/elsewhere/{n}"), "x").await.unwrap();
    }
    etcd.compact(etcd.current_revision().await.unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    let ka = key("a");
    eventually("the key deleted during the gap written again", || {
        exists(&etcd, &ka)
    })
    .await;
    assert!(exists(&etcd, &key("b")).await);
}
