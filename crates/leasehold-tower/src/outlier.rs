//! Passive health: ejecting instances that fail, for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use leasehold::{Instance, InstanceId, Snapshot};
use tokio::time::Instant;

/// When an instance is ejected and for how long (outlier detection, as Envoy's and
/// Finagle's failure accrual do it).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct OutlierPolicy {
    /// Consecutive failures (connection errors or classified failures) that eject an
    /// instance. Default 1: a refused connection is reason enough.
    pub consecutive_failures: u32,
    /// How long a first ejection lasts. Default 1 s.
    pub base_ejection: Duration,
    /// The cap on an ejection; each ejection of an instance that has not answered since
    /// lasts twice the last. Default 30 s.
    pub max_ejection: Duration,
    /// The fraction of the set that is never ejected: an ejection that would leave fewer
    /// than `ceil(min_available × n)` of `n` instances is refused, so a fault on the
    /// client's side cannot eject everything. Default 0.5.
    pub min_available: f64,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            min_available: 0.5,
        }
    }
}

impl OutlierPolicy {
    /// Sets the consecutive failures that eject an instance (at least 1).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = failures.max(1);
        self
    }

    /// Sets how long a first ejection lasts.
    pub fn base_ejection(mut self, period: Duration) -> Self {
        self.base_ejection = period;
        self
    }

    /// Sets the cap on an ejection.
    pub fn max_ejection(mut self, period: Duration) -> Self {
        self.max_ejection = period;
        self
    }

    /// Sets the fraction of the set never ejected (0 to 1).
    pub fn min_available(mut self, fraction: f64) -> Self {
        self.min_available = fraction.clamp(0.0, 1.0);
        self
    }

    /// A policy that never ejects.
    pub fn disabled() -> Self {
        OutlierPolicy {
            min_available: 1.0,
            ..Self::default()
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    failures: u32,
    /// Ejections since the instance last answered; sets the next ejection's length.
    ejections: u32,
}

/// Tracks failures per instance and the set of instances ejected now.
///
/// An ejected instance is left out of picks until its ejection ends; then it is tried
/// again (no active probing: the next request is the probe). An answer resets its
/// record; another failure ejects it again for twice as long, up to the cap. Reading the
/// ejected set takes no lock; recording an outcome takes a short one.
#[derive(Debug)]
pub struct OutlierDetector {
    policy: OutlierPolicy,
    health: Mutex<HashMap<InstanceId, Health>>,
    ejected: ArcSwap<HashMap<InstanceId, Instant>>,
}

impl OutlierDetector {
    /// A detector with `policy`.
    pub fn new(policy: OutlierPolicy) -> Self {
        OutlierDetector {
            policy,
            health: Mutex::new(HashMap::new()),
            ejected: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &OutlierPolicy {
        &self.policy
    }

    /// Whether `id` is ejected at `now`.
    pub fn is_ejected_at(&self, id: &InstanceId, now: Instant) -> bool {
        let ejected = self.ejected.load();
        !ejected.is_empty() && ejected.get(id).is_some_and(|until| *until > now)
    }

    /// Whether `id` is ejected now.
    pub fn is_ejected(&self, id: &InstanceId) -> bool {
        self.is_ejected_at(id, Instant::now())
    }

    /// Whether any instance is ejected now: a cheap check that lets callers skip
    /// filtering.
    pub fn any_ejected(&self) -> bool {
        let ejected = self.ejected.load();
        !ejected.is_empty() && {
            let now = Instant::now();
            ejected.values().any(|until| *until > now)
        }
    }

    /// The instances ejected now, with when each comes back.
    pub fn ejected(&self) -> Vec<(InstanceId, Instant)> {
        let now = Instant::now();
        let mut all: Vec<_> = self
            .ejected
            .load()
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(id, until)| (id.clone(), *until))
            .collect();
        all.sort();
        all
    }

    /// Records an answer from `instance`: its record is cleared.
    pub fn record_success(&self, instance: &Instance) {
        let mut health = self.health.lock().unwrap();
        if let Some(h) = health.get_mut(instance.id()) {
            *h = Health::default();
        }
    }

    /// Records a failure of `instance`, one of `snapshot`'s; returns whether it is
    /// ejected now.
    pub fn record_failure(&self, instance: &Instance, snapshot: &Snapshot) -> bool {
        let now = Instant::now();
        let mut health = self.health.lock().unwrap();
        let h = health.entry(instance.id().clone()).or_default();
        h.failures += 1;
        if h.failures < self.policy.consecutive_failures.max(1) {
            return false;
        }
        let ejected = self.ejected.load();
        if ejected.get(instance.id()).is_some_and(|until| *until > now) {
            return true;
        }
        let n = snapshot.len();
        let out = ejected
            .iter()
            .filter(|(id, until)| **until > now && snapshot.get(id).is_some())
            .count();
        let floor = (self.policy.min_available * n as f64).ceil() as usize;
        if n.saturating_sub(out + 1) < floor.max(1) {
            tracing::debug!(service = %instance.service(), id = %instance.id(), n, out, "not ejecting: too few would be left");
            return false;
        }
        let factor = 1u32.checked_shl(h.ejections.min(16)).unwrap_or(u32::MAX);
        let period = self
            .policy
            .base_ejection
            .saturating_mul(factor)
            .min(self.policy.max_ejection);
        h.ejections += 1;
        h.failures = 0;
        tracing::info!(service = %instance.service(), id = %instance.id(), addr = %instance.addr(), ?period, "ejecting a failing instance");
        metrics::counter!(leasehold::metrics::TOWER_EJECTIONS, "service" => instance.service().to_string())
            .increment(1);
        let mut next: HashMap<InstanceId, Instant> = ejected
            .iter()
            .filter(|(id, until)| **until > now && snapshot.get(id).is_some())
            .map(|(id, until)| (id.clone(), *until))
            .collect();
        // A period past what `Instant` can hold (`Duration::MAX`: "until it answers")
        // ends a century from now instead of overflowing.
        let until = now
            .checked_add(period)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        next.insert(instance.id().clone(), until);
        self.ejected.store(Arc::new(next));
        true
    }

    /// Forgets instances that are no longer in `snapshot`.
    pub fn retain(&self, snapshot: &Snapshot) {
        // Held until the ejected set is stored: `record_failure` rewrites that set under
        // the same lock, so neither can store over the other's ejection.
        let mut health = self.health.lock().unwrap();
        health.retain(|id, _| snapshot.get(id).is_some());
        let ejected = self.ejected.load();
        if ejected.keys().any(|id| snapshot.get(id).is_none()) {
            let kept = ejected
                .iter()
                .filter(|(id, _)| snapshot.get(id).is_some())
                .map(|(id, until)| (id.clone(), *until))
                .collect();
            self.ejected.store(Arc::new(kept));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::{DiscoveryFeed, NativeCodec, ServiceName, WatchOptions};

    fn snapshot(n: usize) -> Arc<Snapshot> {
        let (mut feed, discovery) = DiscoveryFeed::new(
            ServiceName::new("svc").unwrap(),
            Arc::new(NativeCodec),
            WatchOptions::default(),
        );
        let listing: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let instance = Instance::builder("svc", format!("10.0.0.{}:80", i + 1))
                    .id(format!("i{i}"))
                    .build()
                    .unwrap();
                (format!("i{i}"), serde_json::to_vec(&instance).unwrap())
            })
            .collect();
        feed.reset(listing, 1);
        discovery.snapshot()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_instance_is_ejected_then_reinstated_for_longer_each_time() {
        let set = snapshot(4);
        let detector = OutlierDetector::new(OutlierPolicy::default());
        let bad = &set.instances()[0];
        assert!(detector.record_failure(bad, &set));
        assert!(detector.is_ejected(bad.id()));
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert!(
            !detector.is_ejected(bad.id()),
            "reinstated after the base ejection"
        );
        assert!(detector.record_failure(bad, &set));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert!(detector.is_ejected(bad.id()), "the second ejection lasts 2 s");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(!detector.is_ejected(bad.id()));
        detector.record_success(bad);
        assert!(detector.record_failure(bad, &set));
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert!(!detector.is_ejected(bad.id()), "an answer resets the length");
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_below_the_minimum() {
        let set = snapshot(5);
        let detector = OutlierDetector::new(OutlierPolicy {
            min_available: 0.5,
            ..OutlierPolicy::default()
        });
        let ejected: Vec<bool> = set
            .instances()
            .iter()
            .map(|i| detector.record_failure(i, &set))
            .collect();
        assert_eq!(ejected, [true, true, false, false, false], "3 of 5 stay");
        assert_eq!(detector.ejected().len(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            detector.record_failure(&set.instances()[4], &set),
            "room again once they are back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_instance_is_never_ejected_and_disabled_ejects_nothing() {
        let one = snapshot(1);
        let detector = OutlierDetector::new(OutlierPolicy {
            min_available: 0.0,
            ..OutlierPolicy::default()
        });
        assert!(!detector.record_failure(&one.instances()[0], &one));
        let set = snapshot(3);
        let off = OutlierDetector::new(OutlierPolicy::disabled());
        assert!(set.instances().iter().all(|i| !off.record_failure(i, &set)));
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_are_counted() {
        let set = snapshot(3);
        let detector = OutlierDetector::new(OutlierPolicy {
            consecutive_failures: 3,
            ..OutlierPolicy::default()
        });
        let bad = &set.instances()[1];
        assert!(!detector.record_failure(bad, &set));
        assert!(!detector.record_failure(bad, &set));
        detector.record_success(bad);
        assert!(!detector.record_failure(bad, &set));
        assert!(!detector.record_failure(bad, &set));
        assert!(detector.record_failure(bad, &set));
    }
}
