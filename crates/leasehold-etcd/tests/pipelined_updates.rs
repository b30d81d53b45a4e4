//! Updates of one registration in flight together end at the newest one, also when the
//! key moved on one version under our own lease behind this client's back: what a late
//! copy of an earlier update that got no answer does (a frozen member applying it when
//! it resumes). The late copy is played here by a plain client putting under the
//! registration's lease, which is what the copy's transaction does when it lands.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::PutOptions;
use futures::future::maybe_done;
use leasehold::{InstanceUpdate, Registration};
use leasehold_testkit::EtcdCluster;

/// Rounds of late copy, then two updates in flight together.
const ROUNDS: usize = 20;

/// The `version` field of a native value.
fn version_of(value: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    json.get("version")?.as_str().map(str::to_owned)
}

/// Puts `key` again under the lease it is bound to, with `version`: one more version
/// of the key that this client did not write itself.
async fn land_late_copy(etcd: &EtcdCluster, key: &str, version: &str) {
    let mut client = raw(etcd).await;
    let answer = client.get(key, None).await.unwrap();
    let kv = answer.kvs().first().expect("registered").clone();
    let mut json: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
    json["version"] = serde_json::Value::String(version.to_owned());
    client
        .put(
            key,
            serde_json::to_vec(&json).unwrap(),
            Some(PutOptions::new().with_lease(kv.lease())),
        )
        .await
        .unwrap();
}

fn update(version: &str) -> InstanceUpdate {
    InstanceUpdate::new().version(Some(version.to_owned()))
}

/// Sends `older`, then (a moment later, so the registrar has sent it on its own) `newer`,
/// and waits for both.
async fn two_updates_in_flight(registration: &Registration, older: &str, newer: &str) {
    let mut first = Box::pin(maybe_done(registration.update(update(older))));
    let _ = futures::poll!(first.as_mut());
    tokio::time::sleep(Duration::from_millis(1)).await;
    let second = registration.update(update(newer));
    let (_, second) = tokio::join!(first.as_mut(), second);
    first.as_mut().take_output().expect("awaited").unwrap();
    second.unwrap();
}

/// The older update's compare fails (the key is one version ahead of what it expects),
/// the newer one's succeeds (it expects exactly that version): the older one must not
/// then be written again over the newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_update_that_finds_its_key_moved_never_overwrites_a_newer_one() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registration = register(&registry, "p").await;
    let mut stale = Vec::new();
    for round in 0..ROUNDS {
        registered(&registration).await;
        land_late_copy(&etcd, &key("p"), &format!("late-{round}")).await;
        let (older, newer) = (format!("old-{round}"), format!("new-{round}"));
        two_updates_in_flight(&registration, &older, &newer).await;
        let stored = etcd.get(key("p")).await.unwrap().expect("registered");
        let held = version_of(&stored);
        if held.as_deref() != Some(newer.as_str()) {
            // Not a moment's overlap: nothing writes the newest value again.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let stored = etcd.get(key("p")).await.unwrap().expect("registered");
            stale.push(format!(
                "round {round}: etcd holds {held:?} after {newer}, {:?} 0.5 s later, the registration {:?}",
                version_of(&stored),
                registration.state()
            ));
        }
    }
    assert_eq!(
        registration.instance().version(),
        Some(format!("new-{}", ROUNDS - 1).as_str())
    );
    assert!(
        stale.is_empty(),
        "{} of {ROUNDS} rounds left the key at an older update while the registration shows the newest: {stale:?}",
        stale.len()
    );
}
