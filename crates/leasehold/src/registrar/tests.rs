//! The registrar against backends that misbehave in one way each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::RegistrationState;

/// Grants leases that, once `broken`, are gone before anything is written under
/// them, as a registry that keeps losing its leases would.
#[derive(Default)]
struct VanishingLeases {
    broken: AtomicBool,
    events: Mutex<Option<LeaseEvents>>,
    grants: Mutex<Vec<Instant>>,
    enough: Mutex<Option<oneshot::Sender<()>>>,
}

const GRANTS: usize = 8;

#[async_trait]
impl LeaseBackend for VanishingLeases {
    type Lease = ();

    async fn grant(&self, _ttl: Duration, events: LeaseEvents) -> Result<()> {
        *self.events.lock().unwrap() = Some(events);
        let mut grants = self.grants.lock().unwrap();
        grants.push(Instant::now());
        if grants.len() == GRANTS {
            if let Some(enough) = self.enough.lock().unwrap().take() {
                let _ = enough.send(());
            }
        }
        Ok(())
    }

    async fn put(&self, _: &(), writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(LeaseError::Lost(Error::backend("test://", "lease not found")));
        }
        Ok(writes.iter().map(|w| Ok(w.instance.id().to_string())).collect())
    }

    async fn delete(&self, _: &(), _: &[String]) -> Result<(), LeaseError> {
        Ok(())
    }

    async fn revoke(&self, _: ()) -> Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_at_every_write_is_retried_with_backoff() {
    let backend = Arc::new(VanishingLeases::default());
    let (enough, reached) = oneshot::channel();
    *backend.enough.lock().unwrap() = Some(enough);
    let registrar = Registrar::new(backend.clone(), Backoff::default());
    let instance = Instance::builder("echo", "127.0.0.1:1").build().unwrap();
    let registration = registrar
        .register(instance, RegisterOptions::default())
        .await
        .unwrap();

    backend.broken.store(true, Ordering::SeqCst);
    let events = backend.events.lock().unwrap().clone().unwrap();
    events.lost("test");
    tokio::time::timeout(Duration::from_secs(600), reached)
        .await
        .expect("recovery keeps granting leases")
        .unwrap();

    let grants = backend.grants.lock().unwrap().clone();
    let retried_over = grants[GRANTS - 1] - grants[1];
    // Six waits of the default policy, without jitter: 0.1 + 0.2 + ... + 3.2 s.
    assert!(
        retried_over >= Duration::from_millis(6300),
        "{} recovery attempts within {retried_over:?}: no backoff",
        GRANTS - 1
    );
    assert_eq!(registration.state(), RegistrationState::Recovering);
}

/// Refuses, alone, every write of the ids in `refused` (as a registry refuses a value
/// too large for it), and counts each id's write attempts.
#[derive(Default)]
struct Picky {
    refused: Mutex<Vec<String>>,
    attempts: Mutex<std::collections::HashMap<String, usize>>,
    events: Mutex<Option<LeaseEvents>>,
}

impl Picky {
    fn attempts(&self, id: &str) -> usize {
        self.attempts.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl LeaseBackend for Picky {
    type Lease = ();

    async fn grant(&self, _ttl: Duration, events: LeaseEvents) -> Result<()> {
        *self.events.lock().unwrap() = Some(events);
        Ok(())
    }

    async fn put(&self, _: &(), writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError> {
        let refused = self.refused.lock().unwrap();
        let mut attempts = self.attempts.lock().unwrap();
        Ok(writes
            .iter()
            .map(|w| {
                let id = w.instance.id().to_string();
                *attempts.entry(id.clone()).or_default() += 1;
                if refused.contains(&id) {
                    Err(Error::backend("test://", format!("{id} is too large")))
                } else {
                    Ok(id)
                }
            })
            .collect())
    }

    async fn delete(&self, _: &(), _: &[String]) -> Result<(), LeaseError> {
        Ok(())
    }

    async fn revoke(&self, _: ()) -> Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_registration_that_keeps_failing_backs_off_alone() {
    let backend = Arc::new(Picky::default());
    let registrar = Registrar::new(backend.clone(), Backoff::default());
    let instance = |id: &str| Instance::builder("echo", "127.0.0.1:1").id(id).build().unwrap();
    let good = registrar
        .register(instance("good"), RegisterOptions::default())
        .await
        .unwrap();
    let bad = registrar
        .register(instance("bad"), RegisterOptions::default())
        .await
        .unwrap();
    backend.refused.lock().unwrap().push("bad".into());
    let events = backend.events.lock().unwrap().clone().unwrap();
    events.lost("test");
    assert!(
        good.wait_for(RegistrationState::Registered, Duration::from_secs(1))
            .await
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(bad.state(), RegistrationState::Recovering);

    // The good one's key is taken from it every 100 ms for 30 s: it is written again
    // each time at once, and the bad one's retries keep their own backoff.
    let events = backend.events.lock().unwrap().clone().unwrap();
    let (good_before, bad_before) = (backend.attempts("good"), backend.attempts("bad"));
    for _ in 0..300 {
        events.key_deleted("good");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(good.state(), RegistrationState::Registered);
    }
    let good_writes = backend.attempts("good") - good_before;
    let bad_writes = backend.attempts("bad") - bad_before;
    assert_eq!(good_writes, 300, "each loss of the good key is repaired at once");
    assert!(
        bad_writes <= 20,
        "the failing registration is retried on its own backoff, not with every other write: {bad_writes} attempts in 30 s"
    );
    assert_eq!(bad.state(), RegistrationState::Recovering);
}

/// How the test answers one held write.
type Answer = oneshot::Sender<Result<(), Error>>;

/// A backend that holds each write until the test answers it, to see what the
/// registrar sends while a write is in flight.
#[derive(Default)]
struct HeldWrites {
    /// Each write sent and not yet answered: the version it carried, and its answer.
    held: Mutex<Vec<(String, Answer)>>,
    /// What happened, in order: `put <version>` and `delete`.
    log: Mutex<Vec<String>>,
}

impl HeldWrites {
    /// The versions of the writes waiting for an answer, in the order they were sent.
    fn waiting(&self) -> Vec<String> {
        self.held.lock().unwrap().iter().map(|(v, _)| v.clone()).collect()
    }

    /// Answers the write of `version`.
    fn answer(&self, version: &str, answer: Result<(), Error>) {
        let mut held = self.held.lock().unwrap();
        let at = held
            .iter()
            .position(|(v, _)| v == version)
            .expect("a write of that version waits");
        let _ = held.remove(at).1.send(answer);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait]
impl LeaseBackend for HeldWrites {
    type Lease = ();

    async fn grant(&self, _ttl: Duration, _events: LeaseEvents) -> Result<()> {
        Ok(())
    }

    async fn put(&self, _: &(), writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError> {
        let [write] = writes else {
            panic!("one registration, one write at a time");
        };
        let version = write.instance.version().unwrap_or("").to_owned();
        self.log.lock().unwrap().push(format!("put {version}"));
        let (answer, answered) = oneshot::channel();
        self.held.lock().unwrap().push((version, answer));
        let outcome = answered.await.expect("the test answers every write");
        Ok(vec![outcome.map(|()| write.instance.id().to_string())])
    }

    async fn delete(&self, _: &(), _: &[String]) -> Result<(), LeaseError> {
        self.log.lock().unwrap().push("delete".into());
        Ok(())
    }

    async fn revoke(&self, _: ()) -> Result<()> {
        self.log.lock().unwrap().push("revoke".into());
        Ok(())
    }
}

/// Registers one instance on a [`HeldWrites`] and answers its first write.
async fn held_registration(backend: &Arc<HeldWrites>) -> (Registrar<HeldWrites>, Registration) {
    let instance = Instance::builder("echo", "127.0.0.1:1")
        .version("0")
        .build()
        .unwrap();
    let registering = tokio::spawn({
        let registrar = Registrar::new(backend.clone(), Backoff::default());
        async move {
            let registration = registrar.register(instance, RegisterOptions::default()).await;
            (registrar, registration)
        }
    });
    until(|| backend.waiting() == ["0"]).await;
    backend.answer("0", Ok(()));
    let (registrar, registration) = registering.await.unwrap();
    (registrar, registration.unwrap())
}

/// Starts `update(version)` in the background.
fn update(registration: &Registration, version: &str) -> Pending {
    let registration = registration.clone();
    let update = crate::InstanceUpdate::new().version(Some(version.to_owned()));
    tokio::spawn(async move { registration.update(update).await })
}

/// An update call running in the background.
type Pending = tokio::task::JoinHandle<Result<()>>;

/// Polls `done` until it holds, for up to a (paused) minute.
async fn until(done: impl Fn() -> bool) {
    for _ in 0..6_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened");
}

#[tokio::test(start_paused = true)]
async fn updates_made_during_a_write_go_in_one_write_after_it() {
    let backend = Arc::new(HeldWrites::default());
    let (_registrar, registration) = held_registration(&backend).await;
    let first = update(&registration, "1");
    until(|| backend.waiting() == ["1"]).await;
    let second = update(&registration, "2");
    let third = update(&registration, "3");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        backend.waiting(),
        ["1"],
        "nothing of the registration is sent while a write of it is unanswered"
    );

    backend.answer("1", Ok(()));
    first.await.unwrap().unwrap();
    until(|| backend.waiting() == ["3"]).await;
    backend.answer("3", Ok(()));
    second.await.unwrap().unwrap();
    third.await.unwrap().unwrap();
    assert_eq!(registration.state(), RegistrationState::Registered);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        backend.log(),
        ["put 0", "put 1", "put 3"],
        "the latest value, once"
    );
}

#[tokio::test(start_paused = true)]
async fn an_update_that_fails_leaves_the_one_behind_it_to_write_the_latest_value() {
    let backend = Arc::new(HeldWrites::default());
    let (_registrar, registration) = held_registration(&backend).await;
    let first = update(&registration, "1");
    until(|| backend.waiting() == ["1"]).await;
    let second = update(&registration, "2");
    tokio::time::sleep(Duration::from_millis(10)).await;

    backend.answer("1", Err(Error::backend("test://", "no answer")));
    assert!(first.await.unwrap().is_err(), "its caller learns it failed");
    until(|| backend.waiting() == ["2"]).await;
    backend.answer("2", Ok(()));
    second.await.unwrap().unwrap();
    until(|| registration.state() == RegistrationState::Registered).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        backend.log(),
        ["put 0", "put 1", "put 2"],
        "the failed value is not written again once a later one landed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deregistration_waits_for_the_update_in_flight() {
    let backend = Arc::new(HeldWrites::default());
    let (registrar, registration) = held_registration(&backend).await;
    // A second registration keeps the lease, so the first one's key is deleted alone.
    let other = Instance::builder("echo", "127.0.0.1:2")
        .version("other")
        .build()
        .unwrap();
    let registering = tokio::spawn(async move {
        let other = registrar.register(other, RegisterOptions::default()).await;
        (registrar, other)
    });
    until(|| backend.waiting() == ["other"]).await;
    backend.answer("other", Ok(()));
    let (_registrar, _other) = registering.await.unwrap();

    let first = update(&registration, "1");
    until(|| backend.waiting() == ["1"]).await;
    let deregistering = tokio::spawn(async move { registration.deregister().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        backend.log().last().map(String::as_str),
        Some("put 1"),
        "no delete before the update lands"
    );
    backend.answer("1", Ok(()));
    first.await.unwrap().unwrap();
    deregistering.await.unwrap().unwrap();
    assert_eq!(backend.log(), ["put 0", "put other", "put 1", "delete"]);
}
