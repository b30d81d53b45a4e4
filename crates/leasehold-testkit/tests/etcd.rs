//! The etcd half of the testkit against the real `etcd` binary.

use std::time::Duration;

use leasehold_testkit::{Error, EtcdCluster, MemberState};

/// Polls `check` until it is true, panicking with `what` after a generous timeout.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    leasehold_testkit::eventually(what, Duration::from_secs(30), check).await
}

#[tokio::test]
async fn single_node_serves_and_survives_kill_and_restart() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    assert_eq!(etcd.len(), 1);
    let endpoint = etcd.endpoint(0);
    assert!(endpoint.starts_with("127.0.0.1:"), "{endpoint}");
    assert_eq!(etcd.client_url(), format!("http://{endpoint}"));
    assert_eq!(etcd.url("/svc"), format!("etcd://{endpoint}/svc"));

    let revision = etcd.put("/k", "v1").await.unwrap();
    assert!(revision > 1);
    assert_eq!(etcd.current_revision().await.unwrap(), revision);
    assert_eq!(etcd.get("/k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(etcd.get("/missing").await.unwrap(), None);

    etcd.kill(0).await.unwrap();
    assert_eq!(etcd.state(0).unwrap(), MemberState::Stopped);
    assert!(etcd.get("/k").await.is_err(), "a killed member answered");
    etcd.kill(0).await.unwrap(); // idempotent

    etcd.restart(0).await.unwrap();
    assert_eq!(etcd.state(0).unwrap(), MemberState::Running);
    assert_eq!(etcd.endpoint(0), endpoint, "restart moved the member");
    assert_eq!(etcd.get("/k").await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(etcd.current_revision().await.unwrap(), revision);
}

#[tokio::test]
async fn wipe_starts_an_empty_registry_on_the_same_port() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let endpoint = etcd.endpoint(0);
    for i in 0..5 {
        etcd.put(format!("/k{i}"), "v").await.unwrap();
    }
    etcd.wipe(0).await.unwrap();
    assert_eq!(etcd.endpoint(0), endpoint);
    assert_eq!(etcd.get("/k0").await.unwrap(), None);
    assert_eq!(etcd.current_revision().await.unwrap(), 1);
    // Still writable after the wipe.
    assert_eq!(etcd.put("/after", "wipe").await.unwrap(), 2);
}

#[tokio::test]
async fn pause_freezes_and_resume_thaws() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    etcd.put("/k", "v").await.unwrap();

    etcd.pause(0).unwrap();
    assert_eq!(etcd.state(0).unwrap(), MemberState::Paused);
    // The port is still open but nothing answers.
    let frozen = tokio::time::timeout(
        Duration::from_millis(500),
        tokio::net::TcpStream::connect(etcd.endpoint(0)),
    )
    .await;
    assert!(
        matches!(frozen, Ok(Ok(_))),
        "the kernel still accepts connections"
    );
    assert!(matches!(
        etcd.current_revision().await,
        Err(Error::NoLiveMember(_))
    ));

    etcd.resume(0).unwrap();
    assert_eq!(etcd.state(0).unwrap(), MemberState::Running);
    assert_eq!(etcd.get("/k").await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn compact_discards_old_revisions() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    for i in 0..5 {
        etcd.put("/k", format!("v{i}")).await.unwrap();
    }
    let revision = etcd.current_revision().await.unwrap();
    etcd.compact(revision).await.unwrap();
    // Compacting at or below the compacted revision is refused by etcd.
    let again = etcd.compact(revision - 1).await.unwrap_err();
    assert!(again.to_string().contains("compacted"), "{again}");
    assert_eq!(etcd.get("/k").await.unwrap().as_deref(), Some(&b"v4"[..]));
}

#[tokio::test]
async fn a_wiped_cluster_member_is_replaced_and_resyncs() {
    let etcd = EtcdCluster::start(3).await.unwrap();
    etcd.put("/k", "v").await.unwrap();
    let leader = etcd.leader().await.unwrap();
    let follower = (leader + 1) % 3;

    etcd.wipe(follower).await.unwrap();
    assert_eq!(etcd.state(follower).unwrap(), MemberState::Running);
    // With another member down, writes need the replaced member's vote.
    let other = (follower + 1) % 3;
    etcd.kill(other).await.unwrap();
    etcd.put("/k2", "v2").await.unwrap();
    assert_eq!(etcd.get("/k").await.unwrap().as_deref(), Some(&b"v"[..]));
    etcd.restart(other).await.unwrap();

    // The leader can be wiped too, and twice.
    let leader = etcd.leader().await.unwrap();
    etcd.wipe(leader).await.unwrap();
    etcd.wipe(leader).await.unwrap();
    etcd.leader().await.unwrap();
    assert_eq!(etcd.get("/k2").await.unwrap().as_deref(), Some(&b"v2"[..]));

    assert!(matches!(
        etcd.kill(3).await,
        Err(Error::NoSuchMember { index: 3, len: 3 })
    ));
}

#[tokio::test]
async fn cluster_elects_a_new_leader_when_the_leader_dies() {
    let etcd = EtcdCluster::start(3).await.unwrap();
    assert_eq!(etcd.endpoints().len(), 3);
    let url = etcd.url("root");
    assert!(url.starts_with("etcd://127.0.0.1:") && url.ends_with("/root") && url.matches(',').count() == 2);

    let leader = etcd.leader().await.unwrap();
    etcd.put("/k", "v").await.unwrap();

    etcd.kill(leader).await.unwrap();
    let new_leader = etcd.leader().await.unwrap();
    assert_ne!(new_leader, leader);
    assert_eq!(etcd.get("/k").await.unwrap().as_deref(), Some(&b"v"[..]));

    // The old leader rejoins as a follower with its data.
    etcd.restart(leader).await.unwrap();
    eventually("all three members to agree on a leader", || async {
        etcd.leader().await.is_ok()
    })
    .await;
    etcd.put("/k2", "v2").await.unwrap();

    // A paused leader is replaced too; resumed, it steps down.
    let leader = etcd.leader().await.unwrap();
    etcd.pause(leader).unwrap();
    let replacement = etcd.leader().await.unwrap();
    assert_ne!(replacement, leader);
    etcd.resume(leader).unwrap();
    etcd.leader().await.unwrap();
}

#[test]
fn a_panicking_test_leaves_no_server_behind() {
    let test = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let etcd = EtcdCluster::start_single().await.unwrap();
            etcd.pause(0).unwrap();
            let dir = etcd.dir().to_owned();
            std::panic::panic_any((etcd.endpoint(0), dir));
        })
    });
    let payload = test.join().unwrap_err();
    let (endpoint, dir) = *payload
        .downcast::<(String, std::path::PathBuf)>()
        .expect("the test's own panic");
    assert!(
        std::net::TcpStream::connect(&endpoint).is_err(),
        "etcd still listens on {endpoint}"
    );
    assert!(!dir.exists(), "{} was not deleted", dir.display());
}
