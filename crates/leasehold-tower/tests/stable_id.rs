//! A ZooKeeper client that restarts with a stable id has two nodes for a moment: the old
//! one (its session not yet expired) and the new. Removing the old node must not remove
//! the live instance from the tower `Discover` stream or from a balanced channel.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use leasehold::{DiscoveryFeed, Instance, NativeCodec, ServiceName, WatchOptions};
use leasehold_tower::BoxError;
use tower::discover::Change;

fn node(id: &str, addr: &str) -> Vec<u8> {
    serde_json::to_vec(&Instance::builder("svc", addr).id(id).build().unwrap()).unwrap()
}

async fn next(stream: &mut leasehold_tower::DiscoverStream<String>) -> String {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(Change::Insert(key, addr)))) => format!("+{key}@{addr}"),
        Ok(Some(Ok(Change::Remove(key)))) => format!("-{key}"),
        _ => panic!("no change"),
    }
}

#[tokio::test]
async fn removing_the_old_node_of_a_restarted_instance_keeps_the_new_one() {
    let (mut feed, discovery) = DiscoveryFeed::new(
        ServiceName::new("svc").unwrap(),
        Arc::new(NativeCodec),
        WatchOptions::default(),
    );
    feed.reset([("_c_1-0000000001", node("worker", "10.0.0.1:80"))], 1);
    let make = |i: &Instance| -> Result<String, BoxError> { Ok(i.addr().to_string()) };
    let mut stream = leasehold_tower::discover(&discovery, make);
    assert_eq!(next(&mut stream).await, "+_c_1-0000000001@10.0.0.1:80");

    // The process restarts: its new node appears, then the old session's node goes.
    feed.put("_c_2-0000000002", &node("worker", "10.0.0.1:81"));
    feed.publish();
    feed.delete("_c_1-0000000001");
    feed.publish();
    assert_eq!(next(&mut stream).await, "+_c_2-0000000002@10.0.0.1:81");
    assert_eq!(next(&mut stream).await, "-_c_1-0000000001");

    let snapshot = discovery.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(
        snapshot.members()[0].addr().as_str(),
        "10.0.0.1:81",
        "the live instance stays"
    );
    drop(feed);
}
