//! Updates of one registration made back to back (the second while the first's write is
//! in flight) end with the newest value in the registry: also when the key
//! moved on one version under our own lease behind this client's back (what a late copy
//! of an earlier update that got no answer does: a frozen member applying it when it
//! resumes; played here by a plain client putting under the registration's lease), and
//! also when the write before got no answer in time although it landed.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::PutOptions;
use futures::future::maybe_done;
use leasehold::{InstanceUpdate, Registration, Registry};
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

/// Sends `older`, then (a moment later, so the registrar is writing it on its own)
/// `newer`, and waits for both.
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

/// Forwards TCP connections to a target, and can hold what the target answers (not what
/// it is sent) until released: requests land, their answers wait, as on a link that
/// stalls one way.
struct AnswerHold {
    endpoint: String,
    held: tokio::sync::watch::Sender<bool>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl AnswerHold {
    async fn start(target: String) -> AnswerHold {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let (held, _) = tokio::sync::watch::channel(false);
        let acceptor = tokio::spawn({
            let held = held.clone();
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        continue;
                    };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
                    });
                    let mut held = held.subscribe();
                    tokio::spawn(async move {
                        let mut buf = vec![0; 64 * 1024];
                        loop {
                            let n = match out_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if held.wait_for(|held| !*held).await.is_err() {
                                return;
                            }
                            if in_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        AnswerHold {
            endpoint,
            held,
            acceptor,
        }
    }

    fn hold(&self) {
        self.held.send_replace(true);
    }

    fn release(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for AnswerHold {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// A resume whose write lands but gets no answer in time (its caller is told it
/// failed), and an update sent behind it that lands and is answered: the update's
/// value must stay in the registry. The resume's write created the key, so its
/// unanswered landing is removed; the update's, which only landed because the resume's
/// did, must not go with it.
///
/// The registry talks to one etcd through two links whose answers are held: the
/// resume's first try and the update go over the first; the resume's second try (the
/// first link left unanswered) over the second, still held when its time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_behind_an_unanswered_resume_stays_registered() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let first = AnswerHold::start(etcd.endpoint(0)).await;
    let second = AnswerHold::start(etcd.endpoint(0)).await;
    let registry = connect_url(&format!(
        "etcd://{},{}{ROOT}?request_timeout=1s",
        first.endpoint, second.endpoint
    ))
    .await;
    let registration = registry
        .register(
            instance("h"),
            leasehold::RegisterOptions::ttl(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    registration.pause().await.unwrap();
    assert!(!exists(&etcd, &key("h")).await);

    first.hold();
    second.hold();
    let resuming = tokio::spawn({
        let registration = registration.clone();
        async move { registration.resume().await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let updating = tokio::spawn({
        let registration = registration.clone();
        async move { registration.update(update("new")).await }
    });
    // The resume's first try gives up on the first link at 0.5 s and goes to the
    // second; the update's first try, sent at 0.25 s, still waits for its answer.
    tokio::time::sleep(Duration::from_millis(370)).await;
    first.release();
    let updated = updating.await.unwrap();
    // The resume's time (1 s) is up while the second link still holds its answer.
    tokio::time::sleep(Duration::from_millis(800)).await;
    second.release();
    let resumed = resuming.await.unwrap();
    eprintln!("resume: {resumed:?}; update: {updated:?}");
    assert!(
        resumed.is_err() && updated.is_ok(),
        "the links' timing did not give the case tested (the resume unanswered, the update answered): resume {resumed:?}, update {updated:?}"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = etcd.get(key("h")).await.unwrap();
    assert_eq!(registration.state(), leasehold::RegistrationState::Registered);
    assert_eq!(
        stored.as_deref().and_then(version_of).as_deref(),
        Some("new"),
        "the registration is Registered (resume answered {resumed:?}) and its key is gone"
    );
}
