//! Passive health: ejecting instances that fail, for a while.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use leasehold::{Instance, Snapshot};
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

/// Why an instance is out.
#[derive(Clone, Debug)]
struct Out {
    instance: Arc<Instance>,
    /// When a passive ejection ends.
    until: Instant,
    /// Out because its active health check fails: until it passes.
    failing_check: bool,
}

impl Out {
    fn is_out_at(&self, now: Instant) -> bool {
        self.failing_check || self.until > now
    }
}

/// Tracks failures per instance (by registry key) and the instances out of picks now.
///
/// An ejected instance is left out of picks until its ejection ends; then it is tried
/// again (the next request is the probe). An answer resets its record; another failure
/// ejects it again for twice as long, up to the cap. An instance whose active health
/// check fails ([`mark_failing`](OutlierDetector::mark_failing)) is out until the check
/// passes. Neither ever leaves fewer than the policy's minimum of the set.
///
/// Reading the out set takes no lock. Recording a failure takes a short lock; recording
/// an answer takes it only while some instance has failures on record, so a healthy
/// set's responses take no lock at all.
#[derive(Debug)]
pub struct OutlierDetector {
    policy: OutlierPolicy,
    health: Mutex<HashMap<Arc<str>, Health>>,
    /// Whether `health` holds any record.
    records: AtomicBool,
    out: ArcSwap<HashMap<Arc<str>, Out>>,
}

impl OutlierDetector {
    /// A detector with `policy`.
    pub fn new(policy: OutlierPolicy) -> Self {
        OutlierDetector {
            policy,
            health: Mutex::new(HashMap::new()),
            records: AtomicBool::new(false),
            out: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &OutlierPolicy {
        &self.policy
    }

    /// Whether `instance` is out of picks at `now`.
    pub fn is_ejected_at(&self, instance: &Instance, now: Instant) -> bool {
        let out = self.out.load();
        !out.is_empty() && out.get(instance.key()).is_some_and(|o| o.is_out_at(now))
    }

    /// Whether `instance` is out of picks now.
    pub fn is_ejected(&self, instance: &Instance) -> bool {
        self.is_ejected_at(instance, Instant::now())
    }

    /// Whether any instance is out now: a cheap check that lets callers skip filtering.
    pub fn any_ejected(&self) -> bool {
        let out = self.out.load();
        !out.is_empty() && {
            let now = Instant::now();
            out.values().any(|o| o.is_out_at(now))
        }
    }

    /// The instances out at `now`: a short list, for [`PickContext::with_refused`](crate::balance::PickContext::with_refused).
    pub fn out_at(&self, now: Instant) -> Vec<Arc<Instance>> {
        let out = self.out.load();
        out.values()
            .filter(|o| o.is_out_at(now))
            .map(|o| o.instance.clone())
            .collect()
    }

    /// The instances ejected now, by registry key, with when each comes back (a
    /// century ahead for one whose health check fails).
    pub fn ejected(&self) -> Vec<(Arc<str>, Instant)> {
        let now = Instant::now();
        let far = now + Duration::from_secs(100 * 365 * 86_400);
        let mut all: Vec<_> = self
            .out
            .load()
            .iter()
            .filter(|(_, o)| o.is_out_at(now))
            .map(|(key, o)| (key.clone(), if o.failing_check { far } else { o.until }))
            .collect();
        all.sort();
        all
    }

    /// Records an answer from `instance`: its record is cleared.
    pub fn record_success(&self, instance: &Instance) {
        if !self.records.load(Ordering::Acquire) {
            return;
        }
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.remove(instance.key());
        self.records.store(!health.is_empty(), Ordering::Release);
    }

    /// Records a failure of `instance`, one of `snapshot`'s; returns whether it is out
    /// now.
    pub fn record_failure(&self, instance: &Arc<Instance>, snapshot: &Snapshot) -> bool {
        self.record_failure_in(instance, snapshot.len())
    }

    /// Records a failure of `instance`, one of a set of `n`; returns whether it is out
    /// now.
    pub fn record_failure_in(&self, instance: &Arc<Instance>, n: usize) -> bool {
        let now = Instant::now();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        self.records.store(true, Ordering::Release);
        let h = health.entry(instance.shared_key().clone()).or_default();
        h.failures += 1;
        if h.failures < self.policy.consecutive_failures.max(1) {
            return false;
        }
        let out = self.out.load();
        if out.get(instance.key()).is_some_and(|o| o.is_out_at(now)) {
            return true;
        }
        if !self.room_for_one_more(&out, n, now) {
            tracing::debug!(service = %instance.service(), key = instance.key(), n, "not ejecting: too few would be left");
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
        tracing::info!(service = %instance.service(), id = %instance.id(), key = instance.key(), addr = %instance.addr(), ?period, "ejecting a failing instance");
        metrics::counter!(leasehold::metrics::TOWER_EJECTIONS, "service" => instance.service().to_string())
            .increment(1);
        // A period past what `Instant` can hold (`Duration::MAX`: "until it answers")
        // ends a century from now instead of overflowing.
        let until = now
            .checked_add(period)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        self.store_out(&out, now, instance, until, false);
        true
    }

    /// Takes `instance`, one of a set of `n`, out of picks because its active health
    /// check fails, unless that would leave fewer than the minimum; returns whether it
    /// is out.
    pub fn mark_failing(&self, instance: &Arc<Instance>, n: usize) -> bool {
        let now = Instant::now();
        let _health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let out = self.out.load();
        if out.get(instance.key()).is_some_and(|o| o.failing_check) {
            return true;
        }
        let already_out = out.get(instance.key()).is_some_and(|o| o.is_out_at(now));
        if !already_out && !self.room_for_one_more(&out, n, now) {
            tracing::warn!(service = %instance.service(), key = instance.key(), n, "health check fails, but too few would be left to take it out");
            return false;
        }
        tracing::warn!(service = %instance.service(), id = %instance.id(), key = instance.key(), addr = %instance.addr(), "health check fails: out of picks until it passes");
        self.store_out(&out, now, instance, now, true);
        true
    }

    /// Puts `instance` back once its active health check passes.
    pub fn mark_passing(&self, instance: &Instance) {
        let _health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let out = self.out.load();
        if out.get(instance.key()).is_some_and(|o| o.failing_check) {
            tracing::info!(service = %instance.service(), key = instance.key(), "health check passes again");
            let mut next = (**out).clone();
            next.remove(instance.key());
            self.out.store(Arc::new(next));
        }
    }

    /// Whether one more can go out of a set of `n` with `out` out already.
    fn room_for_one_more(&self, out: &HashMap<Arc<str>, Out>, n: usize, now: Instant) -> bool {
        let gone = out.values().filter(|o| o.is_out_at(now)).count();
        let floor = (self.policy.min_available * n as f64).ceil() as usize;
        n.saturating_sub(gone + 1) >= floor.max(1)
    }

    fn store_out(
        &self,
        out: &HashMap<Arc<str>, Out>,
        now: Instant,
        instance: &Arc<Instance>,
        until: Instant,
        failing_check: bool,
    ) {
        let mut next: HashMap<Arc<str>, Out> = out
            .iter()
            .filter(|(_, o)| o.is_out_at(now))
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        next.insert(
            instance.shared_key().clone(),
            Out {
                instance: instance.clone(),
                until,
                failing_check,
            },
        );
        self.out.store(Arc::new(next));
    }

    /// Forgets the instance at `key`, which left the set: O(1) per change.
    pub fn forget(&self, key: &str) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.remove(key);
        self.records.store(!health.is_empty(), Ordering::Release);
        let out = self.out.load();
        if out.contains_key(key) {
            let mut next = (**out).clone();
            next.remove(key);
            self.out.store(Arc::new(next));
        }
    }

    /// Forgets instances that are no longer in `snapshot` (O(n): after a resync).
    pub fn retain(&self, snapshot: &Snapshot) {
        let keys: HashSet<&str> = snapshot.members().iter().map(|i| i.key()).collect();
        // Held until the out set is stored: `record_failure` rewrites that set under
        // the same lock, so neither can store over the other's ejection.
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.retain(|key, _| keys.contains(&**key));
        self.records.store(!health.is_empty(), Ordering::Release);
        let out = self.out.load();
        if out.keys().any(|key| !keys.contains(&**key)) {
            let kept = out
                .iter()
                .filter(|(key, _)| keys.contains(&***key))
                .map(|(k, o)| (k.clone(), o.clone()))
                .collect();
            self.out.store(Arc::new(kept));
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
        let bad = &set.members()[0];
        assert!(detector.record_failure(bad, &set));
        assert!(detector.is_ejected(bad));
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert!(!detector.is_ejected(bad), "reinstated after the base ejection");
        assert!(detector.record_failure(bad, &set));
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert!(detector.is_ejected(bad), "the second ejection lasts 2 s");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(!detector.is_ejected(bad));
        detector.record_success(bad);
        assert!(detector.record_failure(bad, &set));
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert!(!detector.is_ejected(bad), "an answer resets the length");
    }

    #[tokio::test(start_paused = true)]
    async fn never_ejects_below_the_minimum() {
        let set = snapshot(5);
        let detector = OutlierDetector::new(OutlierPolicy {
            min_available: 0.5,
            ..OutlierPolicy::default()
        });
        let ejected: Vec<bool> = set
            .members()
            .iter()
            .map(|i| detector.record_failure(i, &set))
            .collect();
        assert_eq!(ejected, [true, true, false, false, false], "3 of 5 stay");
        assert_eq!(detector.ejected().len(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            detector.record_failure(&set.members()[4], &set),
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
        assert!(!detector.record_failure(&one.members()[0], &one));
        let set = snapshot(3);
        let off = OutlierDetector::new(OutlierPolicy::disabled());
        assert!(set.members().iter().all(|i| !off.record_failure(i, &set)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_check_keeps_an_instance_out_until_it_passes_but_never_below_the_minimum() {
        let set = snapshot(4);
        let detector = OutlierDetector::new(OutlierPolicy::default().min_available(0.5));
        let [a, b, c, _] = [0, 1, 2, 3].map(|i| set.members()[i].clone());
        assert!(detector.mark_failing(&a, 4));
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert!(
            detector.is_ejected(&a),
            "out until the check passes, however long"
        );
        assert!(detector.mark_failing(&b, 4));
        assert!(
            !detector.mark_failing(&c, 4),
            "a third would leave fewer than half"
        );
        assert!(!detector.is_ejected(&c));
        detector.mark_passing(&a);
        assert!(!detector.is_ejected(&a));
        assert!(detector.mark_failing(&c, 4), "room again");
        assert_eq!(detector.out_at(Instant::now()).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn two_keys_with_one_id_are_judged_apart() {
        let old = Arc::new(
            Instance::builder("svc", "10.0.0.1:80")
                .id("stable")
                .build()
                .unwrap(),
        );
        let (mut feed, discovery) = DiscoveryFeed::new(
            ServiceName::new("svc").unwrap(),
            Arc::new(NativeCodec),
            WatchOptions::default(),
        );
        let value = serde_json::to_vec(&*old).unwrap();
        feed.reset(
            [
                ("_c_old", value.clone()),
                ("_c_new", value),
                (
                    "other",
                    serde_json::to_vec(
                        &Instance::builder("svc", "10.0.0.2:80")
                            .id("other")
                            .build()
                            .unwrap(),
                    )
                    .unwrap(),
                ),
            ],
            1,
        );
        let set = discovery.snapshot();
        let by_key = |key: &str| set.members().iter().find(|i| i.key() == key).unwrap().clone();
        let detector = OutlierDetector::new(OutlierPolicy::default().min_available(0.0));
        assert!(detector.record_failure(&by_key("_c_old"), &set));
        assert!(detector.is_ejected(&by_key("_c_old")));
        assert!(
            !detector.is_ejected(&by_key("_c_new")),
            "the live instance with the same id is not out"
        );
        detector.forget("_c_old");
        assert!(!detector.any_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_are_counted() {
        let set = snapshot(3);
        let detector = OutlierDetector::new(OutlierPolicy {
            consecutive_failures: 3,
            ..OutlierPolicy::default()
        });
        let bad = &set.members()[1];
        assert!(!detector.record_failure(bad, &set));
        assert!(!detector.record_failure(bad, &set));
        detector.record_success(bad);
        assert!(!detector.record_failure(bad, &set));
        assert!(!detector.record_failure(bad, &set));
        assert!(detector.record_failure(bad, &set));
    }
}
