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
