//! A discovery watch resumed after a gap says it is live only once what changed during
//! the gap is in its set ([`Change::Live`]: "the set is current").
//!
//! etcd sends a resumed watch's backlog from a loop that runs every 100 ms, and answers
//! a progress request at once. The watcher used to say it was live on that first answer:
//! a subscriber was told the set was current while it still lacked every instance
//! registered during the gap. The soak saw such a watcher as stale.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use leasehold::{Change, Codec, NativeCodec};
use leasehold_testkit::EtcdCluster;

const ADDED_IN_GAP: usize = 20;

/// Puts `key` through the members not frozen, tried again every 300 ms while they
/// elect a leader (the frozen member may have been it).
async fn put_soon(client: &mut etcd_client::Client, key: &str, value: Vec<u8>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let put = client.put(key, value.clone(), None);
        match tokio::time::timeout(Duration::from_millis(300), put).await {
            Ok(Ok(_)) => return,
            failed if tokio::time::Instant::now() >= deadline => panic!("cannot put {key}: {failed:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_watch_is_live_only_with_the_gap_applied() {
    let etcd = EtcdCluster::start(3).await.unwrap();
    let registry = connect(&etcd).await;
    let discovery = watch_echo(&registry).await;
    assert!(discovery.connection().is_live());
    let mut changes = discovery.changes();

    // Frozen, the member the watch is on leaves it silent, and what is written meanwhile
    // through the others is the backlog of the watch that resumes elsewhere.
    let on = tokio::time::timeout(WAIT, async {
        loop {
            let mut watched = Vec::new();
            for index in 0..etcd.len() {
                if etcd.watchers(index).await.unwrap() > 0 {
                    watched.push(index);
                }
            }
            match watched[..] {
                [on] => return on,
                [] => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => panic!("the watch should be on one member, not on {watched:?}"),
            }
        }
    })
    .await
    .expect("the watch is opened");
    let others: Vec<String> = (0..etcd.len())
        .filter(|&i| i != on)
        .map(|i| etcd.endpoint(i))
        .collect();
    let mut others = etcd_client::Client::connect(others, None).await.unwrap();
    etcd.pause(on).unwrap();
    let mut written = BTreeSet::new();
    for n in 0..ADDED_IN_GAP {
        let id = format!("gap{n:02}");
        let value = NativeCodec.encode(&instance(&id)).unwrap();
        put_soon(&mut others, &key(&id), value).await;
        written.insert(id);
    }
    assert!(
        discovery.connection().is_live(),
        "written before the watch on the frozen member noticed"
    );

    let mut added = BTreeSet::new();
    let mut stale = false;
    let live = tokio::time::timeout(WAIT, async {
        loop {
            match changes.next().await.expect("the watcher runs") {
                Change::Stale { .. } => stale = true,
                Change::Added(instance) => {
                    added.insert(instance.id().to_string());
                }
                Change::Live if stale => return,
                _ => {}
            }
        }
    })
    .await;
    etcd.resume(on).unwrap();
    live.unwrap_or_else(|_| panic!("the watch did not go stale and live again (stale: {stale})"));
    let missing: Vec<&String> = written.difference(&added).collect();
    assert!(
        missing.is_empty(),
        "the watcher said it was live without {} of the {ADDED_IN_GAP} instances registered while it was down: {missing:?}",
        missing.len()
    );
    assert_eq!(discovery.snapshot().len(), ADDED_IN_GAP);
    // And it follows on from there.
    let value = NativeCodec.encode(&instance("after")).unwrap();
    put_soon(&mut others, &key("after"), value).await;
    tokio::time::timeout(WAIT, async {
        while discovery.snapshot().len() != ADDED_IN_GAP + 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("an instance registered after the gap is seen");
}
