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
