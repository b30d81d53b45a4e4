//! The etcd backend against real etcd servers that crash, restart, lose their data,
//! lose their leader, freeze, compact and refuse credentials. Each test has its own
//! server. Recovery times are printed (run with `--nocapture` to read them); nothing
//! asserts on speed.

mod common;

use std::time::Duration;

use common::*;
use leasehold::{
    Change, Error, InstanceUpdate, RegisterOptions, Registration, RegistrationState, Registry, WatchOptions,
};
use leasehold_testkit::EtcdCluster;
use tokio::time::Instant;

/// The key is there, and still there after its TTL has passed: its lease is kept alive.
async fn kept_alive(etcd: &EtcdCluster, key: &str) {
    eventually("the key written again", || exists(etcd, key)).await;
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert!(
        exists(etcd, key).await,
        "{key} outlives its TTL: its lease is kept alive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_data_kept() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registration = register(&registry, "a").await;
    let discovery = watch_echo(&registry).await;
    assert_eq!(discovery.snapshot().len(), 1);
    let lease = lease_of(&etcd, &key("a")).await;
    let mut states = registration.states();
    states.mark_unchanged();

    etcd.kill(0).await.unwrap();
    let down = Instant::now();
    etcd.restart(0).await.unwrap();
    let up = Instant::now();
    registered(&registration).await;
    discovery
        .wait_for(WAIT, |s| s.connection().is_live() && s.len() == 1)
        .await
        .expect("the watcher is live again with the instance");
    eprintln!(
        "restart with data kept: etcd down for {:?}; registration and watcher back {:?} after etcd served again",
        up - down,
        up.elapsed()
    );
    kept_alive(&etcd, &key("a")).await;
    // etcd kept the lease, so nothing had to be written again.
    assert_eq!(lease_of(&etcd, &key("a")).await, lease);
    assert!(
        !states.has_changed().unwrap(),
        "the registration never left Registered"
    );
    // Still following: a change after the restart arrives.
    let b = register(&registry, "b").await;
    discovery.wait_for(WAIT, |s| s.len() == 2).await.expect("b seen");
    b.deregister().await.unwrap();
    registration.deregister().await.unwrap();
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .expect("both gone");
}

/// etcd comes back empty: registrations are written again, and watchers drop what the
/// new store does not hold, also one that was cut off until the new store's revision
/// had passed the one it had applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_wiped() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registration = register(&registry, "a").await;
    let ghost_owner = connect(&etcd).await;
    let _ghost = register(&ghost_owner, "ghost").await;
    let watcher = connect(&etcd).await;
    let discovery = watch_echo(&watcher).await;
    let proxy = Proxy::start(etcd.endpoint(0)).await;
    let far_watcher = connect_url(&format!("etcd://{}{ROOT}", proxy.endpoint)).await;
    let far = watch_echo(&far_watcher).await;
    assert_eq!(far.snapshot().len(), 2);
    let old_revision = etcd.current_revision().await.unwrap();

    proxy.cut();
    ghost_owner.crash();
    etcd.wipe(0).await.unwrap();
    let wiped = Instant::now();
    let ka = key("a");
    eventually("the registration written again into the empty etcd", || {
        exists(&etcd, &ka)
    })
    .await;
    let written = wiped.elapsed();
    registered(&registration).await;
    let only_a = |s: &leasehold::Snapshot| {
        let ids: Vec<&str> = s.instances().iter().map(|i| i.id().as_str()).collect();
        s.connection().is_live() && ids == ["a"]
    };
    discovery
        .wait_for(WAIT, only_a)
        .await
        .expect("the watcher follows the new store");
    eprintln!(
        "restart wiped: registration back in etcd {written:?} after the wipe; watcher current {:?} after",
        wiped.elapsed()
    );
    kept_alive(&etcd, &key("a")).await;

    // The cut-off watcher comes back after the new store has passed its revision.
    while etcd.current_revision().await.unwrap() <= old_revision + 2 {
        etcd.put("/elsewhere", "x").await.unwrap();
    }
    proxy.restore();
    far.wait_for(WAIT, only_a)
        .await
        .expect("the cut-off watcher drops what the new store does not hold");

    // Both follow the new store, not the old one's revisions.
    let b = register(&registry, "b").await;
    discovery
        .wait_for(WAIT, |s| s.len() == 2)
        .await
        .expect("b seen after the wipe");
    far.wait_for(WAIT, |s| s.len() == 2)
        .await
        .expect("b seen by the far watcher");
    drop(b);
    discovery.wait_for(WAIT, |s| s.len() == 1).await.expect("b gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_deleted_by_another_client_is_written_again() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registration = register(&registry, "a").await;
    let mut other = raw(&etcd).await;
    other.delete(key("a"), None).await.unwrap();
    let deleted = Instant::now();
    let ka = key("a");
    eventually("the deleted key written again", || exists(&etcd, &ka)).await;
    eprintln!(
        "key deleted by another client: written again after {:?}",
        deleted.elapsed()
    );
    registered(&registration).await;
    kept_alive(&etcd, &key("a")).await;

    // An admin deregistration through the Registry contract is the same delete.
    let admin = connect(&etcd).await;
    assert!(admin.deregister(&echo(), &"a".parse().unwrap()).await.unwrap());
    eventually("written again after an admin delete", || exists(&etcd, &ka)).await;
    assert!(!admin.deregister(&echo(), &"nope".parse().unwrap()).await.unwrap());

    registration.deregister().await.unwrap();
    eventually("gone for good once deregistered", || async {
        !exists(&etcd, &ka).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_values_are_skipped_and_counted() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    etcd.put(key("bad1"), b"\xff\x00 not json").await.unwrap();
    etcd.put(key("other"), br#"{"service":"other","id":"other","addr":"h:1"}"#)
        .await
        .unwrap();
    let registry = connect(&etcd).await;
    let discovery = watch_echo(&registry).await;
    assert!(discovery.snapshot().is_empty());
    assert_eq!(discovery.skipped(), 2);

    let _a = register(&registry, "a").await;
    etcd.put(key("bad2"), b"{").await.unwrap();
    let _b = register(&registry, "b").await;
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 2)
        .await
        .expect("the watcher keeps going past a corrupt value");
    assert!(snapshot.connection().is_live());
    assert_eq!(discovery.skipped(), 3);
    let listed: Vec<String> = registry
        .list(&echo())
        .await
        .unwrap()
        .iter()
        .map(|i| i.id().to_string())
        .collect();
    assert_eq!(listed, ["a", "b"]);
    assert_eq!(registry.list_services().await.unwrap(), [echo()]);

    // A good value over a corrupt key replaces it; a corrupt value over a good one
    // removes the instance it no longer describes.
    etcd.put(key("bad1"), serde_json::to_vec(&instance("bad1")).unwrap())
        .await
        .unwrap();
    discovery
        .wait_for(WAIT, |s| s.len() == 3)
        .await
        .expect("repaired value seen");
    etcd.put(key("bad1"), b"garbage again").await.unwrap();
    discovery
        .wait_for(WAIT, |s| s.len() == 2)
        .await
        .expect("corrupted value removed");
}

/// A 3-member cluster loses its leader while a client keeps updating an instance: no
/// registration is lost and the watcher sees every update exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_in_a_cluster() {
    let etcd = EtcdCluster::start(3).await.unwrap();
    let registry = connect(&etcd).await;
    let watcher = connect(&etcd).await;
    let discovery = watch_echo(&watcher).await;
    let mut changes = discovery.changes();
    let registrations: Vec<Registration> = futures::future::join_all(
        (0..20).map(|n| registry.register(instance(&format!("i{n:02}")), RegisterOptions::ttl(TTL))),
    )
    .await
    .into_iter()
    .collect::<Result<_, _>>()
    .unwrap();
    discovery
        .wait_for(WAIT, |s| s.len() == 20)
        .await
        .expect("all 20 seen");

    const LAST: u32 = 60;
    let updater = {
        let target = registrations[0].clone();
        tokio::spawn(async move {
            for weight in 2..=LAST {
                if target.update(InstanceUpdate::new().weight(weight)).await.is_err() {
                    // The write stays pending and lands with the recovery.
                    registered(&target).await;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = etcd.leader().await.unwrap();
    etcd.kill(leader).await.unwrap();
    let killed = Instant::now();
    updater.await.unwrap();
    let id = "i00".parse().unwrap();
    discovery
        .wait_for(WAIT, |s| s.get(&id).is_some_and(|i| i.weight() == LAST))
        .await
        .expect("the last update seen");
    eprintln!(
        "leader killed: all {LAST} updates applied and seen {:?} after the kill",
        killed.elapsed()
    );
    for registration in &registrations {
        registered(registration).await;
    }
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    assert_eq!(discovery.snapshot().len(), 20, "no registration lost");
    assert_eq!(registry.list(&echo()).await.unwrap().len(), 20);

    let mut weights = Vec::new();
    while let Ok(Some(change)) = tokio::time::timeout(Duration::from_millis(200), changes.next()).await {
        match change {
            Change::Updated { new, .. } if new.id() == &id => weights.push(new.weight()),
            Change::Updated { .. } | Change::Added(_) | Change::Stale { .. } | Change::Live => {}
            other => panic!("unexpected change {other:?}"),
        }
    }
    assert_eq!(
        weights,
        (2..=LAST).collect::<Vec<_>>(),
        "every update exactly once, in order"
    );
}

/// The leader of a 3-member cluster freezes for twice the TTL: clients move to the
/// other members, registrations stay, and the watcher keeps following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_paused_past_the_ttl() {
    let etcd = EtcdCluster::start(3).await.unwrap();
    let registry = connect(&etcd).await;
    let watcher = connect(&etcd).await;
    let registration = register(&registry, "a").await;
    let discovery = watch_echo(&watcher).await;
    assert_eq!(discovery.snapshot().len(), 1);

    let leader = etcd.leader().await.unwrap();
    etcd.pause(leader).unwrap();
    let paused = Instant::now();
    // A change made while the member is frozen reaches the watcher through another one.
    let mut weight = 1;
    let id = "a".parse().unwrap();
    let seen = loop {
        weight += 1;
        if registration
            .update(InstanceUpdate::new().weight(weight))
            .await
            .is_err()
        {
            registered(&registration).await;
        }
        let seen = discovery
            .wait_for(Duration::from_millis(500), |s| {
                s.get(&id).is_some_and(|i| i.weight() == weight)
            })
            .await;
        if seen.is_some() {
            break paused.elapsed();
        }
        assert!(
            paused.elapsed() < WAIT,
            "an update seen while the member is frozen"
        );
    };
    eprintln!("member paused: an update written and seen {seen:?} after the leader froze");
    tokio::time::sleep((TTL * 2).saturating_sub(paused.elapsed())).await;
    assert!(exists(&etcd, &key("a")).await, "still registered past the TTL");
    assert_eq!(registration.state(), RegistrationState::Registered);
    assert_eq!(discovery.snapshot().len(), 1);
    etcd.resume(leader).unwrap();
    kept_alive(&etcd, &key("a")).await;
    discovery
        .wait_for(WAIT, |s| s.connection().is_live() && s.len() == 1)
        .await
        .expect("live, with the instance");
}

/// A watcher cut off from etcd while changes happen and the history is compacted lists
/// again when it comes back, and reports exactly the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_a_watcher_lags() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let proxy = Proxy::start(etcd.endpoint(0)).await;
    let watcher = connect_url(&format!("etcd://{}{ROOT}", proxy.endpoint)).await;
    let ttl = RegisterOptions::ttl(Duration::from_secs(30));
    let a = registry.register(instance("a"), ttl).await.unwrap();
    let b = registry.register(instance("b"), ttl).await.unwrap();
    let c = registry.register(instance("c"), ttl).await.unwrap();
    let discovery = watch_echo(&watcher).await;
    assert_eq!(discovery.snapshot().len(), 3);
    let mut changes = discovery.changes();

    proxy.cut();
    discovery
        .wait_for(WAIT, |s| !s.connection().is_live())
        .await
        .expect("the cut-off watcher marks its set stale");
    b.deregister().await.unwrap();
    c.update(InstanceUpdate::new().weight(5)).await.unwrap();
    let d = registry.register(instance("d"), ttl).await.unwrap();
    let e = registry.register(instance("e"), ttl).await.unwrap();
    e.deregister().await.unwrap();
    etcd.compact(etcd.current_revision().await.unwrap())
        .await
        .unwrap();
    let ranges = watcher.range_requests();
    proxy.restore();
    let restored = Instant::now();
    discovery
        .wait_for(WAIT, |s| {
            let ids: Vec<&str> = s.instances().iter().map(|i| i.id().as_str()).collect();
            s.connection().is_live() && ids == ["a", "c", "d"]
        })
        .await
        .expect("live again with a, c and d");
    eprintln!(
        "compaction while lagging: re-listed and live {:?} after the network came back",
        restored.elapsed()
    );
    // The listing, and the continuity check of the resumed watch when etcd answers
    // progress before it reports the compaction.
    let sent = watcher.range_requests() - ranges;
    assert!((1..=2).contains(&sent), "one re-list, {sent} range requests");

    let mut seen = Vec::new();
    while let Ok(Some(change)) = tokio::time::timeout(Duration::from_millis(300), changes.next()).await {
        match change {
            Change::Added(i) => seen.push(format!("+{}", i.id())),
            Change::Removed(i) => seen.push(format!("-{}", i.id())),
            Change::Updated { old, new } => {
                seen.push(format!("~{}:{}->{}", new.id(), old.weight(), new.weight()))
            }
            Change::Stale { .. } | Change::Live => {}
            Change::Resync(_) => panic!("no resync expected"),
        }
    }
    seen.sort();
    assert_eq!(seen, ["+d", "-b", "~c:1->5"], "exactly the difference");

    // Following incrementally again.
    a.update(InstanceUpdate::new().weight(9)).await.unwrap();
    discovery
        .wait_for(WAIT, |s| {
            s.get(&"a".parse().unwrap()).is_some_and(|i| i.weight() == 9)
        })
        .await
        .expect("an update after the re-list");
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_and_never_shown() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let mut admin = raw(&etcd).await;
    admin.user_add("root", "r00t-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let endpoint = etcd.endpoint(0);

    let started = Instant::now();
    let url: leasehold::RegistryUrl = format!("etcd://root:hunter2@{endpoint}{ROOT}").parse().unwrap();
    let err = tokio::time::timeout(WAIT, leasehold_etcd::EtcdRegistry::connect(&url))
        .await
        .expect("bounded")
        .unwrap_err();
    eprintln!("wrong password: refused after {:?}: {err}", started.elapsed());
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains(&endpoint), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");

    let registry = connect_url(&format!("etcd://{endpoint}{ROOT}?user=root&password=r00t-pw")).await;
    assert!(!format!("{registry:?}").contains("r00t-pw"));
    let _a = register(&registry, "a").await;
    let discovery = watch_echo(&registry).await;
    assert_eq!(discovery.snapshot().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_fail_in_bounded_time() {
    // Nothing listens on a port just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let url: leasehold::RegistryUrl = format!("etcd://{closed}{ROOT}?connect_timeout=1s&request_timeout=2s")
        .parse()
        .unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(WAIT, leasehold_etcd::EtcdRegistry::connect(&url))
        .await
        .expect("bounded")
        .unwrap_err();
    eprintln!(
        "unreachable (closed port): error after {:?}: {err}",
        started.elapsed()
    );
    assert!(err.to_string().contains(&closed), "{err}");

    // A frozen server accepts connections and answers nothing.
    let etcd = EtcdCluster::start_single().await.unwrap();
    let endpoint = etcd.endpoint(0);
    let registry = connect_url(&format!("etcd://{endpoint}{ROOT}?request_timeout=2s")).await;
    etcd.pause(0).unwrap();
    let url: leasehold::RegistryUrl =
        format!("etcd://{endpoint}{ROOT}?connect_timeout=1s&request_timeout=2s")
            .parse()
            .unwrap();
    let started = Instant::now();
    let err = tokio::time::timeout(WAIT, leasehold_etcd::EtcdRegistry::connect(&url))
        .await
        .expect("bounded")
        .unwrap_err();
    eprintln!(
        "unreachable (frozen server): error after {:?}: {err}",
        started.elapsed()
    );
    assert!(err.to_string().contains(&endpoint), "{err}");

    // An established client's requests are bounded too.
    let err = tokio::time::timeout(WAIT, registry.register(instance("a"), RegisterOptions::ttl(TTL)))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
    let err = tokio::time::timeout(WAIT, registry.list(&echo()))
        .await
        .expect("bounded")
        .unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
    etcd.resume(0).unwrap();
    let _a = register(&registry, "a").await;
}

/// A crashed client stops keeping its lease alive and revokes nothing: its instance
/// goes when the TTL runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_client_expires_with_its_lease() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let watcher = connect(&etcd).await;
    let registration = register(&registry, "a").await;
    let discovery = watch_echo(&watcher).await;
    assert_eq!(discovery.snapshot().len(), 1);
    registry.crash();
    let crashed = Instant::now();
    discovery.wait_for(WAIT, |s| s.is_empty()).await.expect("expired");
    eprintln!(
        "crashed client: instance expired {:?} after the crash (TTL {TTL:?})",
        crashed.elapsed()
    );
    assert!(matches!(
        registry.register(instance("b"), RegisterOptions::ttl(TTL)).await,
        Err(Error::Closed)
    ));
    drop(registration);
}

/// A change made right after a watch starts, while the watch is being created, is
/// never lost (etcd 3.4 answers a progress request at once with the store's revision,
/// before the events below it that an unsynced watch is still to send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_right_after_watch_starts_are_seen() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let watcher = connect(&etcd).await;
    let mut writer = raw(&etcd).await;
    for round in 0..100 {
        let service = leasehold::ServiceName::new(format!("race{round}")).unwrap();
        let discovery = watcher.watch(&service, WatchOptions::default()).await.unwrap();
        let value = br#"{"service":"SERVICE","id":"x","addr":"127.0.0.1:1"}"#;
        let value = String::from_utf8_lossy(value).replace("SERVICE", service.as_str());
        writer
            .put(format!("{ROOT}/{service}/x"), value, None)
            .await
            .unwrap();
        discovery
            .wait_for(WAIT, |s| s.len() == 1)
            .await
            .unwrap_or_else(|| panic!("round {round}: the instance is seen"));
    }
}

/// go-zero names keys after the lease: a lost lease moves the registration to a key
/// named after the new one, and the old key is removed in the same transaction. etcd
/// is down for longer than the TTL, so the client gives the lease up even though etcd,
/// restarted with its data, would still hold it (and the old key) for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_zero_keys_follow_the_lease() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let url = format!("etcd://{}?format=go-zero", etcd.endpoint(0));
    let registry = connect_url(&url).await;
    let watcher = connect_url(&url).await;
    let service = leasehold::ServiceName::new("user.rpc").unwrap();
    let instance = leasehold::Instance::builder("user.rpc", "10.0.0.5:8080")
        .build()
        .unwrap();
    let registration = registry
        .register(instance, RegisterOptions::ttl(TTL))
        .await
        .unwrap();
    let discovery = watcher.watch(&service, WatchOptions::default()).await.unwrap();
    let mut client = raw(&etcd).await;
    let keys = |answer: etcd_client::GetResponse| -> Vec<(String, String)> {
        answer
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_owned(),
                    kv.value_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let prefix = etcd_client::GetOptions::new().with_prefix();
    let before = keys(client.get("user.rpc/", Some(prefix.clone())).await.unwrap());
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].1, "10.0.0.5:8080");
    assert!(
        before[0].0["user.rpc/".len()..].parse::<i64>().is_ok(),
        "{before:?}"
    );
    assert_eq!(discovery.snapshot().len(), 1);

    etcd.kill(0).await.unwrap();
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    etcd.restart(0).await.unwrap();
    registered(&registration).await;
    let mut client = raw(&etcd).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let after = keys(client.get("user.rpc/", Some(prefix.clone())).await.unwrap());
        if after.len() == 1 && after[0].0 != before[0].0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "one key, named after a new lease: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    discovery
        .wait_for(WAIT, |s| {
            s.connection().is_live() && s.len() == 1 && s.instances()[0].addr().as_str() == "10.0.0.5:8080"
        })
        .await
        .expect("the watcher holds the one instance under its new key");
    assert_eq!(registry.list_services().await.unwrap(), [service]);
}

/// One etcd revision whose deletes (with their previous values) make a watch answer
/// over tonic's default 4 MiB, somewhere else under the root: the watch of the
/// registry's own keys must read past it, or it stalls on that answer forever and a
/// key deleted by someone else afterwards is never written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_key_rewritten_after_a_huge_delete_elsewhere() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect(&etcd).await;
    let registration = register(&registry, "a").await;
    let mut other = raw(&etcd).await;
    let value = vec![b'x'; 1024 * 1024];
    for n in 0..6 {
        other
            .put(format!("{ROOT}/bulky/{n}"), value.clone(), None)
            .await
            .unwrap();
    }
    let prefix = etcd_client::DeleteOptions::new().with_prefix();
    other
        .delete(format!("{ROOT}/bulky/"), Some(prefix))
        .await
        .unwrap();
    other.delete(key("a"), None).await.unwrap();
    let ka = key("a");
    eventually("the deleted key written again", || exists(&etcd, &ka)).await;
    registered(&registration).await;
}

/// go-zero names keys after the shared lease, so two instances of one service from one
/// client share a key (documented on `GoZeroKey`). Writing every registration again
/// after a lost lease must not send that key twice in one transaction: etcd refuses
/// such a transaction whole, and every registration in it (of any service) would stay
/// `Recovering` forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_zero_shared_key_does_not_block_recovery() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect_url(&format!("etcd://{}?format=go-zero", etcd.endpoint(0))).await;
    let register = |service: &str, addr: &str| {
        let instance = leasehold::Instance::builder(service, addr).build().unwrap();
        registry.register(instance, RegisterOptions::ttl(TTL))
    };
    let registrations = [
        register("user.rpc", "10.0.0.5:8080").await.unwrap(),
        register("user.rpc", "10.0.0.6:8080").await.unwrap(),
        register("order.rpc", "10.0.0.7:8080").await.unwrap(),
    ];
    etcd.kill(0).await.unwrap();
    etcd.restart(0).await.unwrap();
    for registration in &registrations {
        registered(registration).await;
    }
    let order = leasehold::ServiceName::new("order.rpc").unwrap();
    eventually("order.rpc written again", || async {
        registry.list(&order).await.is_ok_and(|l| l.len() == 1)
    })
    .await;
}

/// An instance the format cannot carry (go-zero needs `host:port`) is refused at
/// `register` with the reason, and never takes down the registrations written in the
/// same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unencodable_instance_is_refused_alone() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = connect_url(&format!("etcd://{}?format=go-zero", etcd.endpoint(0))).await;
    let register = |service: String, addr: &str| {
        let instance = leasehold::Instance::builder(service, addr).build().unwrap();
        registry.register(instance, RegisterOptions::ttl(TTL))
    };
    let good = (0..40).map(|n| register(format!("s{n}.rpc"), "10.0.0.5:8080"));
    let bad = register("bad.rpc".into(), "http://example.com/path");
    let (good, bad) = futures::join!(futures::future::join_all(good), bad);
    let err = bad.expect_err("no host:port").to_string();
    assert!(err.contains("http://example.com/path"), "{err}");
    for (n, registration) in good.iter().enumerate() {
        assert!(
            registration.is_ok(),
            "s{n}.rpc: {:?}",
            registration.as_ref().err()
        );
    }
}
