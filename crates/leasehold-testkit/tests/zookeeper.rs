//! The ZooKeeper half of the testkit against the real ZooKeeper 3.8 jars.

use std::time::Duration;

use leasehold_testkit::{Error, MemberState, ZkEnsemble, ZkSession};

/// Long enough that a session opened by a test never expires on its own during it.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn standalone_serves_and_keeps_sessions_across_restart_but_not_wipe() {
    let zk = ZkEnsemble::start_standalone().await.unwrap();
    assert_eq!(zk.len(), 1);
    let endpoint = zk.endpoint(0);
    assert_eq!(zk.connect_string(), endpoint);
    assert_eq!(zk.url("/services"), format!("zk://{endpoint}/services"));
    assert_eq!(zk.mode(0).await.unwrap().as_deref(), Some("standalone"));
    assert!(zk.srvr(0).await.unwrap().contains("Zookeeper version: 3."));

    let session = ZkSession::open(&endpoint, SESSION_TIMEOUT).await.unwrap();
    assert_eq!(session.timeout(), SESSION_TIMEOUT);
    let (id, password) = (session.id(), session.password().to_vec());
    drop(session);

    zk.kill(0).await.unwrap();
    assert_eq!(zk.state(0).unwrap(), MemberState::Stopped);
    assert!(zk.srvr(0).await.is_err(), "a killed server answered");
    zk.restart(0).await.unwrap();
    assert_eq!(zk.endpoint(0), endpoint);
    // The session was persisted, so it is still live after the restart.
    let mut session = ZkSession::attach(&endpoint, id, &password).await.unwrap();
    session.ping().await.unwrap();
    drop(session);

    zk.wipe(0).await.unwrap();
    assert_eq!(zk.mode(0).await.unwrap().as_deref(), Some("standalone"));
    let error = ZkSession::attach(&endpoint, id, &password).await.unwrap_err();
    assert!(matches!(error, Error::SessionNotLive { .. }), "{error}");
}

#[tokio::test]
async fn expire_session_ends_a_live_session() {
    let zk = ZkEnsemble::start_standalone().await.unwrap();
    let mut session = ZkSession::open(&zk.endpoint(0), SESSION_TIMEOUT).await.unwrap();
    session.ping().await.unwrap();

    // A wrong password does not attach and leaves the session live. (The server drops
    // the session's current connection all the same, as a client would see on any
    // reconnect, so attach again.)
    let wrong = zk.expire_session(session.id(), b"not the password").await;
    assert!(matches!(wrong, Err(Error::SessionNotLive { .. })), "{wrong:?}");
    let mut session = ZkSession::attach(&zk.endpoint(0), session.id(), session.password())
        .await
        .unwrap();
    session.ping().await.unwrap();

    zk.expire_session(session.id(), session.password()).await.unwrap();
    assert!(
        session.ping().await.is_err(),
        "the expired session's connection still works"
    );
    let error = ZkSession::attach(&zk.endpoint(0), session.id(), session.password())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::SessionNotLive { .. }), "{error}");
    let again = zk.expire_session(session.id(), session.password()).await;
    assert!(matches!(again, Err(Error::SessionNotLive { .. })), "{again:?}");
}

#[tokio::test]
async fn pause_freezes_and_resume_thaws() {
    let zk = ZkEnsemble::start_standalone().await.unwrap();
    zk.pause(0).unwrap();
    assert_eq!(zk.state(0).unwrap(), MemberState::Paused);
    assert!(zk.srvr(0).await.is_err(), "a paused server answered");
    zk.resume(0).unwrap();
    assert_eq!(zk.state(0).unwrap(), MemberState::Running);
    assert_eq!(zk.mode(0).await.unwrap().as_deref(), Some("standalone"));
}

#[tokio::test]
async fn ensemble_elects_a_new_leader_and_takes_back_killed_and_wiped_servers() {
    let zk = ZkEnsemble::start(3).await.unwrap();
    let connect = zk.connect_string();
    assert_eq!(connect.split(',').count(), 3, "{connect}");
    assert_eq!(zk.url("root"), format!("zk://{connect}/root"));

    let mut modes = Vec::new();
    for i in 0..3 {
        modes.push(zk.mode(i).await.unwrap().unwrap());
    }
    modes.sort();
    assert_eq!(modes, ["follower", "follower", "leader"]);

    // A session opened on one server lives in the whole ensemble.
    let leader = zk.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    let session = ZkSession::open(&zk.endpoint(follower), SESSION_TIMEOUT)
        .await
        .unwrap();

    zk.kill(leader).await.unwrap();
    let new_leader = zk.leader().await.unwrap();
    assert_ne!(new_leader, leader);

    zk.restart(leader).await.unwrap();
    assert_eq!(zk.mode(leader).await.unwrap().as_deref(), Some("follower"));

    zk.wipe(leader).await.unwrap();
    assert_eq!(zk.mode(leader).await.unwrap().as_deref(), Some("follower"));
    // The wiped server resynced the session from the leader.
    let mut attached = ZkSession::attach(&zk.endpoint(leader), session.id(), session.password())
        .await
        .unwrap();
    attached.ping().await.unwrap();
    drop(attached);

    zk.expire_session(session.id(), session.password()).await.unwrap();
    let error = ZkSession::attach(&zk.endpoint(follower), session.id(), session.password())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::SessionNotLive { .. }), "{error}");
}
