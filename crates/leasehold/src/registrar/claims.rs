//! Which service/id pairs this client holds, so one client never registers an id twice,
//! and an id whose handle was just dropped is free again once its key is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::{Error, Instance, InstanceId, InvalidInput, Result, ServiceName};

type Identity = (ServiceName, InstanceId);

/// One held id, as the table sees it.
struct Held {
    /// Set once its handle is dropped or deregistered: a new `register` of the id waits
    /// for the release instead of being refused.
    leaving: Arc<AtomicBool>,
    /// Closed when the claim is released.
    released: watch::Receiver<()>,
    /// Tells this claim from a later one of the same id.
    serial: u64,
}

/// The ids this client holds.
#[derive(Default)]
pub(crate) struct Claims {
    held: Mutex<(u64, HashMap<Identity, Held>)>,
}

/// The right to register one service/id on this client. Released when dropped: by the
/// `register` call that made it if it never reached the registrar, else by the
/// registrar once the registration failed or its key is deleted.
pub(crate) struct Claim {
    claims: Arc<Claims>,
    identity: Identity,
    serial: u64,
    leaving: Arc<AtomicBool>,
    _release: watch::Sender<()>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("identity", &self.identity).finish()
    }
}

impl Claims {
    /// Claims `instance`'s id. An id held by a live registration of this client is
    /// refused; one that is leaving (its handle was dropped) is waited for, up to
    /// `patience`.
    pub(crate) async fn claim(self: &Arc<Self>, instance: &Instance, patience: Duration) -> Result<Claim> {
        let identity = (instance.service().clone(), instance.id().clone());
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let mut released = {
                let mut held = self.held.lock().unwrap();
                let (serial, table) = &mut *held;
                match table.get(&identity) {
                    Some(h) if h.leaving.load(Ordering::SeqCst) => h.released.clone(),
                    Some(_) => return Err(already_registered(instance)),
                    None => {
                        *serial += 1;
                        let (release, released) = watch::channel(());
                        let leaving = Arc::new(AtomicBool::new(false));
                        table.insert(
                            identity.clone(),
                            Held {
                                leaving: leaving.clone(),
                                released,
                                serial: *serial,
                            },
                        );
                        return Ok(Claim {
                            claims: self.clone(),
                            identity,
                            serial: *serial,
                            leaving,
                            _release: release,
                        });
                    }
                }
            };
            // `changed` fails once the sender (the claim) is dropped.
            let gone =
                tokio::time::timeout_at(deadline, async { while released.changed().await.is_ok() {} }).await;
            if gone.is_err() {
                return Err(Error::from(InvalidInput::new(
                    "instance id",
                    instance.id().as_str(),
                    format!(
                        "is still being deregistered for service {} by this client after {patience:?}",
                        instance.service()
                    ),
                )));
            }
        }
    }
}

fn already_registered(instance: &Instance) -> Error {
    InvalidInput::new(
        "instance id",
        instance.id().as_str(),
        format!(
            "is already registered for service {} by this client",
            instance.service()
        ),
    )
    .into()
}

impl Claim {
    /// The flag a registration handle sets when it goes, so the id can be claimed again
    /// as soon as its deregistration is done.
    pub(crate) fn leaving(&self) -> Arc<AtomicBool> {
        self.leaving.clone()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut held = self.claims.held.lock().unwrap();
        if held
            .1
            .get(&self.identity)
            .is_some_and(|h| h.serial == self.serial)
        {
            held.1.remove(&self.identity);
        }
    }
}
