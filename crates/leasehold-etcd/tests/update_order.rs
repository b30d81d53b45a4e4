//! An update is never overtaken by an older one: not by a late copy of an update that a
//! frozen member applies when it resumes, and not among many updates in flight at once.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use etcd_client::{EventType, WatchOptions};
use futures::future::{join_all, maybe_done};
use leasehold::{InstanceId, InstanceUpdate, Registration};
use leasehold_testkit::EtcdCluster;
use tokio::time::Instant;

/// Rounds of freeze, old update, new update, resume: about 4 s each.
const ROUNDS: usize = 8;

/// Updates in flight at once on one registration, sent in waves.
const UPDATES: usize = 500;
const WAVE: usize = 50;

/// The versions a plain etcd watch saw put on one key, with when each arrived.
type Seen = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// The `version` field of a native value.
fn version_of(value: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(value).ok()?;
    json.get("version")?.as_str().map(str::to_owned)
}

/// Sets the registration's version to `version`. An update that times out while the
/// cluster elects a leader is made again: what is tested is the order, not that the
/// first try fits the request timeout.
async fn set_version(registration: &Registration, version: &str) {
    for tried in 1.. {
        let update = InstanceUpdate::new().version(Some(version.to_owned()));
        match registration.update(update).await {
            Ok(()) => return,
            Err(e) if e.is_unavailable() && tried < 3 => {
                eprintln!("update to {version} failed ({e}); again");
            }
            Err(e) => panic!("update to {version} failed: {e}"),
        }
    }
}

/// Records what `record` makes of every put of `key` that a plain etcd watch sees, in
/// the order etcd sends them (revision order).
async fn record<T: Send + 'static>(
    etcd: &EtcdCluster,
    key: String,
    record: impl Fn(&etcd_client::KeyValue) -> T + Send + 'static,
) -> Arc<Mutex<Vec<T>>> {
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let mut client = raw(etcd).await;
    let mut stream = client.watch(key, Some(WatchOptions::new())).await.unwrap();
    tokio::spawn({
        let recorded = recorded.clone();
        async move {
            let _client = client;
            while let Ok(Some(answer)) = stream.message().await {
                for event in answer.events() {
                    if let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) {
                        recorded.lock().unwrap().push(record(kv));
                    }
                }
            }
        }
    });
    recorded
}

/// When each put of `key` was seen, and the version it carries.
async fn record_versions(etcd: &EtcdCluster, key: String) -> Seen {
    record(etcd, key, |kv| (Instant::now(), version_of(kv.value()))).await
}

/// The versions in `seen` from `from` on.
fn versions(seen: &Seen, from: usize) -> Vec<String> {
    seen.lock().unwrap()[from..]
        .iter()
        .filter_map(|(_, version)| version.clone())
        .collect()
}

/// The version `key` holds now, read through member `index` alone.
async fn version_via(etcd: &EtcdCluster, index: usize, key: &str) -> Option<String> {
    let mut client = etcd_client::Client::connect([etcd.endpoint(index)], None)
        .await
        .unwrap();
    let answer = client.get(key, None).await.unwrap();
    answer.kvs().first().and_then(|kv| version_of(kv.value()))
}

/// The leader frozen, then two updates: the first one's tries to the frozen leader,
/// or to a follower that forwards it to the frozen leader as a raft proposal, get no
/// answer, and it is sent again to another member, which applies it once a new leader
/// is elected; a newer update follows. When the former leader resumes it still holds
/// those proposals and they reach the new leader: such a late copy must change nothing,
/// or watchers see the instance go back to old metadata.
///
/// Before writes compared more than the key's lease, 42 rounds of 68 showed the old
/// value (each of 6 runs of this test failed), the registration's client on the leader
/// or on a follower alike, for about 0.26 s each time: until the registration was moved
/// to a new lease after the leader change (etcd before 3.4.28; later versions would
/// keep the old value until the next update). So the watch is what sees it, not a
/// read after the round. Freezing a follower the client used never showed it (0 rounds
/// of 14), presumably because its copy waits in the member's socket right before the
/// client's cancellation of that try, which it reads with it. The request timeout of
/// 4 s (a try every second) makes more late copies than the default 5 s (7 rounds of
/// 20) and still outlasts an election; 3 s did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_copy_of_an_update_never_overwrites_a_newer_one() {
    let etcd = EtcdCluster::start(3).await.unwrap();
    let registry = connect_url(&format!("{}?request_timeout=4s", etcd.url(ROOT))).await;
    let registration = register(&registry, "u").await;
    let seen = record_versions(&etcd, key("u")).await;
    let began = Instant::now();
    let mut stale = Vec::new();
    for round in 0..ROUNDS {
        let leader = etcd.leader().await.unwrap();
        registered(&registration).await;
        let watched_before = seen.lock().unwrap().len();
        etcd.pause(leader).unwrap();
        let (old, new) = (format!("old-{round}"), format!("new-{round}"));
        set_version(&registration, &old).await;
        set_version(&registration, &new).await;
        etcd.resume(leader).unwrap();
        // A late copy lands within milliseconds of the resume.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = version_via(&etcd, (leader + 1) % etcd.len(), &key("u")).await;
        let watched = versions(&seen, watched_before);
        let went_back = watched.iter().skip_while(|v| **v != new).any(|v| *v == old);
        eprintln!(
            "{:?} round {round}: froze the leader, member {leader}; the key holds {now:?}; watched {watched:?}",
            began.elapsed()
        );
        if now.as_deref() != Some(new.as_str()) || went_back {
            stale.push(format!("round {round}: {now:?} after {new}, watched {watched:?}"));
        }
    }
    eprintln!(
        "{} of {ROUNDS} rounds showed an older value after a newer one; stale for {:?}",
        stale.len(),
        stale_periods(&seen)
    );
    let last = format!("new-{}", ROUNDS - 1);
    eventually("the watcher saw the last update", || async {
        versions(&seen, 0).contains(&last)
    })
    .await;
    assert!(
        stale.is_empty(),
        "a late copy overwrote a newer update: {stale:?}"
    );
    // A rewrite of the same value (the registration moved to a new lease) is no step back.
    let seen = versions(&seen, 0);
    let backwards: Vec<_> = seen
        .windows(2)
        .filter(|pair| made(&pair[1]) < made(&pair[0]))
        .collect();
    assert!(
        backwards.is_empty(),
        "a watcher saw the instance go back: {backwards:?} in {seen:?}"
    );
}

/// Where `old-k` and `new-k` of round k come in the order updates were made.
fn made(version: &str) -> Option<usize> {
    let (kind, round) = version.split_once('-')?;
    let round: usize = round.parse().ok()?;
    Some(2 * round + usize::from(kind == "new"))
}

/// How long the key held a value older than one it held before, each time, until a
/// put of the newest value again.
fn stale_periods(seen: &Seen) -> Vec<Duration> {
    let mut periods = Vec::new();
    let (mut newest, mut since) = (None, None);
    for (when, version) in seen.lock().unwrap().iter() {
        let order = version.as_deref().and_then(made);
        match since {
            None if order < newest => since = Some(*when),
            Some(start) if order >= newest => {
                periods.push(*when - start);
                since = None;
            }
            _ => {}
        }
        newest = newest.max(order);
    }
    periods.extend(since.map(|start| start.elapsed()));
    periods
}

/// Many updates of one registration in flight at once end at the last one sent, in
/// etcd, in a discovery and for the registration, and a watcher of the key never sees
/// them out of order. Updates are taken in the order they are sent: each is sent when
/// first polled, and each wave is polled once, in order, before the next; the waves
/// are a few milliseconds apart, so new updates arrive while earlier ones are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_updates_end_at_the_last_value() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registration = register(&registry, "r").await;
    let discovery = watch_echo(&registry).await;
    let seen = record_versions(&etcd, key("r")).await;

    let mut updates: Vec<_> = (0..UPDATES)
        .map(|i| {
            let update = InstanceUpdate::new().version(Some(format!("v{i:03}")));
            Box::pin(maybe_done(registration.update(update)))
        })
        .collect();
    for wave in updates.chunks_mut(WAVE) {
        for update in wave {
            let _ = futures::poll!(update.as_mut());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    join_all(updates.iter_mut().map(|update| update.as_mut())).await;
    for (i, update) in updates.iter_mut().enumerate() {
        let done = update.as_mut().take_output().expect("awaited");
        done.unwrap_or_else(|e| panic!("update {i} failed: {e}"));
    }

    let last = format!("v{:03}", UPDATES - 1);
    let applied = registration.instance().version().map(str::to_owned);
    assert_eq!(
        applied.as_deref(),
        Some(last.as_str()),
        "the registration shows the last update"
    );
    let stored = etcd.get(key("r")).await.unwrap().expect("registered");
    assert_eq!(version_of(&stored), applied, "etcd holds the last update");
    let id = InstanceId::new("r").unwrap();
    let shown = discovery
        .wait_for(WAIT, |snapshot| {
            snapshot.get(&id).and_then(|i| i.version()) == Some(last.as_str())
        })
        .await;
    assert!(
        shown.is_some(),
        "the discovery shows the last update, not {:?}",
        discovery
            .snapshot()
            .get(&id)
            .map(|i| i.version().map(str::to_owned))
    );
    eventually("the watcher saw the last update", || async {
        versions(&seen, 0).last() == Some(&last)
    })
    .await;
    let seen: Vec<usize> = versions(&seen, 0)
        .iter()
        .map(|v| v[1..].parse().unwrap())
        .collect();
    let backwards: Vec<_> = seen.windows(2).filter(|pair| pair[1] < pair[0]).collect();
    assert!(
        backwards.is_empty(),
        "a watcher saw updates out of order: {backwards:?} in {} puts",
        seen.len()
    );
    eprintln!("{} puts for {UPDATES} updates, in order", seen.len());
}

/// A late copy of an update made before a pause, applied after the resume: the resume
/// created the key again under the same lease, where it counts its versions from 1
/// again, so a compare of the lease and version would hold once more. The update's
/// transaction compares the key's mod revision (the exact state the registry last left
/// it in), which no later life of the key has: the copy changes nothing, and the
/// registration shows the update made while paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_copy_from_before_a_pause_never_overwrites_the_resumed_value() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registration = register(&registry, "c").await;
    let mut client = raw(&etcd).await;
    let found = client.get(key("c"), None).await.unwrap();
    let created = found.kvs().first().expect("registered").clone();
    assert_eq!(created.version(), 1, "a registration is created at version 1");
    let lease = created.lease();

    // The first update's transaction, as the registry sends it: the key as the
    // registration left it.
    set_version(&registration, "old").await;
    let stored = client.get(key("c"), None).await.unwrap();
    let old_value = stored.kvs().first().expect("updated").value().to_vec();
    assert_eq!(version_of(&old_value).as_deref(), Some("old"));
    let late_copy = etcd_client::Txn::new()
        .when([etcd_client::Compare::mod_revision(
            key("c"),
            etcd_client::CompareOp::Equal,
            created.mod_revision(),
        )])
        .and_then([etcd_client::TxnOp::put(
            key("c"),
            old_value,
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )]);

    registration.pause().await.unwrap();
    set_version(&registration, "new").await;
    registration.resume().await.unwrap();
    registered(&registration).await;
    let resumed = etcd.get(key("c")).await.unwrap().expect("resumed");
    assert_eq!(version_of(&resumed).as_deref(), Some("new"));

    // The copy a frozen member held since before the pause lands now.
    let landed = client.txn(late_copy).await.unwrap().succeeded();
    let stored = etcd.get(key("c")).await.unwrap().expect("registered");
    assert_eq!(registration.state(), leasehold::RegistrationState::Registered);
    assert_eq!(
        version_of(&stored).as_deref(),
        Some("new"),
        "a late copy from before the pause (its compare held: {landed}) put the older update back while the registration shows the newer one"
    );
}

/// Updates fired back to back without awaiting (as the soak's registrants do, 20 ms
/// apart) while a member is frozen for 3 s and resumed, a few rounds, the leader and a
/// follower in turn: a watcher of the key must see the values in the order the updates
/// were made. It reproduced the soak's `seq backwards` (etcd, seeds 1-3, TTL 3 s) before
/// writes were ordered by their change: 2 runs of 2 with 10 rounds saw writes that had
/// landed put again over newer ones (`v440 v441 v442 v419 v440 v441`), a retry of an
/// older write after a resend found the key moved on.
///
/// After writes were ordered by change it still failed in some runs (1 of 2), as did the
/// etcd soak with updates after a long member freeze: a write sent behind an unanswered
/// one expected a lease and version; resent, it was found superseded and dropped, the
/// key reached that version again along other writes, and the frozen member's copy
/// landed. A registration's writes now go one at a time, each expecting a mod revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_updates_across_a_frozen_member_never_go_back() {
    let etcd = EtcdCluster::start(3).await.unwrap();
    let registry = connect_url(&format!("{}?request_timeout=4s", etcd.url(ROOT))).await;
    let registration = register(&registry, "p").await;
    let seen = record_versions(&etcd, key("p")).await;
    let puts = record_puts(&etcd, key("p")).await;
    let updater = tokio::spawn({
        let registration = registration.clone();
        async move {
            for i in 0u32.. {
                let handle = registration.clone();
                let update = InstanceUpdate::new().version(Some(format!("v{i:05}")));
                let mut call = Box::pin(async move {
                    let _ = handle.update(update).await;
                });
                // The first poll sends the command: updates are taken in this order.
                if futures::poll!(call.as_mut()).is_pending() {
                    tokio::spawn(call);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    for round in 0..10 {
        let leader = etcd.leader().await.unwrap();
        let frozen = if round % 2 == 0 {
            leader
        } else {
            (leader + 1) % etcd.len()
        };
        etcd.pause(frozen).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        etcd.resume(frozen).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        eprintln!("round {round}: froze member {frozen} (leader {leader})");
    }
    updater.abort();
    let last = registration.instance().version().map(str::to_owned).unwrap();
    eventually("the watcher saw the last update", || async {
        versions(&seen, 0).last() == Some(&last)
    })
    .await;
    let seen: Vec<u32> = versions(&seen, 0)
        .iter()
        .map(|v| v[1..].parse().unwrap())
        .collect();
    let backwards: Vec<_> = seen.windows(2).filter(|pair| pair[1] < pair[0]).collect();
    eprintln!("{} puts, {} steps back", seen.len(), backwards.len());
    let puts = puts.lock().unwrap().clone();
    for step in puts.windows(2).filter(|pair| pair[1].value < pair[0].value) {
        let at = puts.iter().position(|p| p == &step[1]).unwrap();
        eprintln!("around the step back:");
        for put in &puts[at.saturating_sub(3)..(at + 3).min(puts.len())] {
            eprintln!("  {put:?}");
        }
    }
    assert!(
        backwards.is_empty(),
        "a watcher saw the instance go back: {backwards:?}"
    );
}

/// One put of a key as a plain etcd watch saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Put {
    value: Option<String>,
    revision: i64,
    /// The key's version after the put (1 on creation).
    version: i64,
    lease: i64,
}

/// Every put of `key` a plain etcd watch sees, with its revision, version and lease.
async fn record_puts(etcd: &EtcdCluster, key: String) -> Arc<Mutex<Vec<Put>>> {
    record(etcd, key, |kv| Put {
        value: version_of(kv.value()),
        revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    })
    .await
}
