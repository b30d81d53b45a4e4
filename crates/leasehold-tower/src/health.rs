//! Active health checking: each instance probed at an interval, through its client.
//!
//! What one probe asks and what passes is [`probe`]'s, the same as for health-gated
//! registration ([`probe::HttpCheck`], [`probe::GrpcCheck`]); this module decides when
//! to ask and what a failure does to picks.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;
use leasehold::Instance;
use tokio::sync::watch;

use crate::endpoint::MakeEndpoint;
use crate::probe::{self, ProbeError};
use crate::router::Shared;

/// What an active health check asks each instance, and how often.
///
/// Opt-in per channel ([`BalanceOptions::health_check`](crate::BalanceOptions::health_check)).
/// Every `interval` (the first at once) each instance is probed through its client; one
/// that fails or does not answer within `timeout` is taken out of picks until a probe
/// passes, never leaving fewer than the outlier policy's minimum share of the set
/// ([`OutlierPolicy::min_available`](crate::OutlierPolicy::min_available)). So an
/// instance that dies is out within one interval (plus the timeout), even before any
/// request fails on it, and a client that starts after a crash never picks it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheck {
    /// What to ask.
    pub target: HealthTarget,
    /// Between probes of an instance. Default 5 s.
    pub interval: Duration,
    /// For one probe, making the instance's client included. Default
    /// [`probe::DEFAULT_TIMEOUT`] (2 s).
    pub timeout: Duration,
    /// Probes in flight at once. Default 64.
    pub concurrency: usize,
}

/// The question a health check asks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthTarget {
    /// gRPC's health protocol (`grpc.health.v1.Health/Check`) for this service name
    /// (`""`: the server as a whole); passes on `SERVING`. Needs tonic channels
    /// ([`TonicEndpoints`](crate::TonicEndpoints)).
    Grpc {
        /// The service name asked about.
        service: String,
    },
    /// An HTTP `GET` of this path; passes on a 2xx status. Needs hyper clients
    /// ([`HyperEndpoints`](crate::HyperEndpoints)).
    Http {
        /// The path, such as `/healthz`.
        path: String,
    },
}

impl HealthCheck {
    /// The gRPC health protocol, asking about `service` (`""`: the whole server).
    pub fn grpc(service: impl Into<String>) -> Self {
        Self::with(HealthTarget::Grpc {
            service: service.into(),
        })
    }

    /// An HTTP `GET` of `path`.
    pub fn http(path: impl Into<String>) -> Self {
        Self::with(HealthTarget::Http { path: path.into() })
    }

    fn with(target: HealthTarget) -> Self {
        HealthCheck {
            target,
            interval: Duration::from_secs(5),
            timeout: probe::DEFAULT_TIMEOUT,
            concurrency: 64,
        }
    }

    /// Sets the interval between probes.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets the timeout of one probe.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many probes run at once.
    pub fn concurrency(mut self, probes: usize) -> Self {
        self.concurrency = probes.max(1);
        self
    }
}

/// Probes every instance at each interval until the channel goes.
pub(crate) async fn run<M: MakeEndpoint>(
    shared: Weak<Shared<M>>,
    check: HealthCheck,
    mut closed: watch::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = closed.changed() => return,
        }
        let Some(members) = shared.upgrade().map(|s| s.discovery().snapshot()) else {
            return;
        };
        let n = members.len();
        let results: Vec<(Arc<Instance>, Option<bool>)> =
            futures::stream::iter(members.members().iter().cloned().map(|instance| {
                let shared = shared.clone();
                let check = &check;
                async move {
                    let passed = probe(shared, &instance, check).await;
                    (instance, passed)
                }
            }))
            .buffer_unordered(check.concurrency)
            .collect()
            .await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let outliers = shared.outliers();
        for (instance, passed) in results {
            match passed {
                Some(true) => outliers.mark_passing(&instance),
                Some(false) => {
                    outliers.mark_failing(&instance, n);
                }
                None => {
                    tracing::warn!(service = %instance.service(), "these clients have no health check; active checking is off");
                    return;
                }
            }
        }
    }
}

/// Whether `instance` passes; `None` if its client cannot be probed. Making the client
/// counts against the check's timeout: an instance that cannot be connected to in time
/// fails.
async fn probe<M: MakeEndpoint>(
    shared: Weak<Shared<M>>,
    instance: &Arc<Instance>,
    check: &HealthCheck,
) -> Option<bool> {
    let target = instance.addr().to_string();
    let mut unprobed = false;
    let once = async {
        // The channel is gone: nothing to take out.
        let Some(shared) = shared.upgrade() else {
            return Ok(());
        };
        let endpoint = shared
            .endpoints()
            .get(instance)
            .await
            .map_err(|source| ProbeError::Unreachable {
                target: target.clone(),
                source,
            })?;
        let Some(probe) = shared.endpoints().maker().probe(endpoint, instance, check) else {
            unprobed = true;
            return Ok(());
        };
        drop(shared);
        probe.await.map_err(|error| match error.downcast::<ProbeError>() {
            Ok(error) => *error,
            Err(source) => ProbeError::Unreachable {
                target: target.clone(),
                source,
            },
        })
    };
    let outcome = probe::within(check.timeout, &target, once).await;
    if unprobed {
        return None;
    }
    if let Err(error) = &outcome {
        tracing::debug!(service = %instance.service(), key = instance.key(), addr = %instance.addr(), %error, "health check failed");
    }
    Some(outcome.is_ok())
}
