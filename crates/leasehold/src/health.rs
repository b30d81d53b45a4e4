//! Health-gated registration: a registration that is in the registry only while a check
//! of the service itself passes.
//!
//! A [`Check`] asks the service whether it can serve (a TCP connect here; an HTTP GET
//! and the gRPC health protocol in `leasehold-tower`'s `probe` module). A [`HealthGate`]
//! runs it at an interval against one [`Registration`]: when the check fails the
//! registration is paused (out of the registry, state
//! [`Paused`](crate::RegistrationState::Paused)), and when it passes again it is
//! resumed. An instance that is up but cannot serve so leaves every client's set, as
//! Consul's and Kubernetes' readiness checks do, while its lease stays alive.
//!
//! ```no_run
//! # async fn demo(registry: &dyn leasehold::Registry) -> leasehold::Result<()> {
//! use std::time::Duration;
//! use leasehold::health::{HealthGate, TcpCheck};
//! use leasehold::{Instance, RegisterOptions};
//!
//! let instance = Instance::builder("echo", "127.0.0.1:7001").build()?;
//! let registration = registry.register(instance, RegisterOptions::default()).await?;
//! let check = TcpCheck::new("127.0.0.1:7001");
//! let gate = HealthGate::new(check).interval(Duration::from_secs(2)).spawn(registration.clone());
//! // ... the registration is paused while 127.0.0.1:7001 refuses connections.
//! drop(gate); // stops checking
//! # Ok(()) }
//! ```

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{BoxError, Registration, RegistrationState};

/// A check of the service behind a registration: `Ok` when it can serve.
///
/// Implementations bound nothing themselves: the [`HealthGate`] cuts each call off at
/// its timeout and counts that as a failure.
#[async_trait]
pub trait Check: Send + Sync + Debug + 'static {
    /// Asks the service once. The error says why it cannot serve, for the log.
    async fn check(&self) -> Result<(), BoxError>;
}

#[async_trait]
impl<C: Check + ?Sized> Check for Arc<C> {
    async fn check(&self) -> Result<(), BoxError> {
        (**self).check().await
    }
}

#[async_trait]
impl<C: Check + ?Sized> Check for Box<C> {
    async fn check(&self) -> Result<(), BoxError> {
        (**self).check().await
    }
}

/// Passes when a TCP connection to its address is accepted.
#[derive(Clone, Debug)]
pub struct TcpCheck {
    addr: String,
}

impl TcpCheck {
    /// A check that connects to `addr` (`host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        TcpCheck { addr: addr.into() }
    }
}

#[async_trait]
impl Check for TcpCheck {
    async fn check(&self) -> Result<(), BoxError> {
        tokio::net::TcpStream::connect(&self.addr)
            .await
            .map(drop)
            .map_err(|e| format!("connecting to {}: {e}", self.addr).into())
    }
}

/// What the last check said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// No check has finished yet.
    Unknown,
    /// The last check passed.
    Passing,
    /// The last check failed, for this reason.
    Failing(String),
}

/// Runs a [`Check`] at an interval and pauses or resumes a registration by its result.
#[derive(Debug)]
pub struct HealthGate<C> {
    check: C,
    interval: Duration,
    timeout: Duration,
}

impl<C: Check> HealthGate<C> {
    /// A gate running `check` every 2 s, each check cut off after 1 s.
    pub fn new(check: C) -> Self {
        HealthGate {
            check,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
        }
    }

    /// Sets how often the check runs (at least 10 ms). The timeout is kept at or below
    /// it.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self.timeout = self.timeout.min(self.interval);
        self
    }

    /// Sets how long one check may take before it counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts checking now, and at every interval, for as long as the returned guard
    /// lives and the registration is not deregistered.
    ///
    /// The gate resumes only a registration it paused itself, so an application's own
    /// [`pause`](Registration::pause) is left alone. A registration drained by an
    /// operator stays drained whatever the check says.
    pub fn spawn(self, registration: Registration) -> HealthGuard {
        let (health_tx, health) = watch::channel(Health::Unknown);
        let task = tokio::spawn(self.run(registration, health_tx));
        HealthGuard { task, health }
    }

    async fn run(self, registration: Registration, health: watch::Sender<Health>) {
        let instance = registration.instance();
        let service = instance.service().to_string();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paused_by_us = false;
        loop {
            tick.tick().await;
            if registration.state() == RegistrationState::Deregistered {
                return;
            }
            let outcome = match tokio::time::timeout(self.timeout, self.check.check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            };
            let label = if outcome.is_ok() { "pass" } else { "fail" };
            metrics::counter!(crate::metrics::HEALTH_CHECKS, "service" => service.clone(), "outcome" => label)
                .increment(1);
            let result = match outcome {
                Ok(()) => {
                    health.send_if_modified(|h| std::mem::replace(h, Health::Passing) != Health::Passing);
                    if !paused_by_us {
                        continue;
                    }
                    tracing::info!(%service, id = %instance.id(), check = ?self.check, "health check passes; resuming the registration");
                    registration.resume().await.map(|()| paused_by_us = false)
                }
                Err(reason) => {
                    let failing = Health::Failing(reason.clone());
                    health.send_if_modified(|h| std::mem::replace(h, failing.clone()) != failing);
                    if paused_by_us || registration.state() == RegistrationState::Paused {
                        continue;
                    }
                    tracing::warn!(%service, id = %instance.id(), check = ?self.check, %reason, "health check fails; pausing the registration");
                    registration.pause().await.map(|()| paused_by_us = true)
                }
            };
            if let Err(e) = result {
                if e.is_closed() {
                    return;
                }
                tracing::warn!(%service, id = %instance.id(), error = %e, "health gate could not change the registration; trying at the next check");
            }
        }
    }
}

/// Keeps a [`HealthGate`] running; dropping it stops the checks (the registration stays
/// as the last check left it).
#[derive(Debug)]
pub struct HealthGuard {
    task: JoinHandle<()>,
    health: watch::Receiver<Health>,
}

impl HealthGuard {
    /// What the last check said.
    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    /// A receiver of every change of [`health`](HealthGuard::health).
    pub fn changes(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }
}

impl Drop for HealthGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::memory::MemoryRegistry;
    use crate::{Instance, RegisterOptions, Registry, ServiceName, WatchOptions};

    #[derive(Debug, Default)]
    struct Switch(AtomicBool);

    #[async_trait]
    impl Check for Switch {
        async fn check(&self) -> Result<(), BoxError> {
            match self.0.load(Ordering::SeqCst) {
                true => Ok(()),
                false => Err("switched off".into()),
            }
        }
    }

    #[tokio::test]
    async fn a_failing_check_pauses_and_a_passing_one_resumes() {
        let registry = MemoryRegistry::new();
        let service = ServiceName::new("echo").unwrap();
        let discovery = registry.watch(&service, WatchOptions::default()).await.unwrap();
        let instance = Instance::builder("echo", "127.0.0.1:7001")
            .id("e1")
            .build()
            .unwrap();
        let registration = registry
            .register(instance, RegisterOptions::default())
            .await
            .unwrap();
        let switch = Arc::new(Switch::default());
        let gate = HealthGate::new(switch.clone())
            .interval(Duration::from_millis(20))
            .spawn(registration.clone());
        let patience = Duration::from_secs(10);
        assert!(registration.wait_for(RegistrationState::Paused, patience).await);
        assert!(discovery.wait_for(patience, |s| s.is_empty()).await.is_some());
        assert!(matches!(gate.health(), Health::Failing(reason) if reason.contains("switched off")));

        switch.0.store(true, Ordering::SeqCst);
        assert!(
            registration
                .wait_for(RegistrationState::Registered, patience)
                .await
        );
        assert!(discovery.wait_for(patience, |s| s.len() == 1).await.is_some());
        assert_eq!(gate.health(), Health::Passing);
    }

    #[tokio::test]
    async fn an_owners_pause_is_left_alone() {
        let registry = MemoryRegistry::new();
        let instance = Instance::builder("echo", "127.0.0.1:7001").build().unwrap();
        let registration = registry
            .register(instance, RegisterOptions::default())
            .await
            .unwrap();
        registration.pause().await.unwrap();
        let switch = Arc::new(Switch(AtomicBool::new(true)));
        let gate = HealthGate::new(switch)
            .interval(Duration::from_millis(10))
            .spawn(registration.clone());
        let mut health = gate.changes();
        health.wait_for(|h| *h == Health::Passing).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(registration.state(), RegistrationState::Paused);
    }

    #[tokio::test]
    async fn tcp_checks_pass_on_an_open_port_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        TcpCheck::new(&addr).check().await.unwrap();
        drop(listener);
        let err = TcpCheck::new(&addr).check().await.unwrap_err().to_string();
        assert!(err.contains(&addr), "{err}");
    }
}
