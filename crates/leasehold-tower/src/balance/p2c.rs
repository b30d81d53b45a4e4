//! Power of two choices over peak-EWMA load.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasehold::{Change, Instance, Snapshot};
use rand::Rng;
use tokio::time::Instant;

use super::{first_allowed, Aligned, Balancer, Outcome, PickContext, Tables};

/// Power of two choices over peak-EWMA latency and requests in flight, as in Finagle,
/// linkerd and tower's `PeakEwma`: each pick draws two distinct instances at random and
/// takes the one with the lower cost, `latency estimate × (in-flight + 1)`.
///
/// The latency estimate is an exponentially weighted moving average that jumps to any
/// higher sample at once (the peak) and decays toward lower samples, and toward zero while
/// idle, over [`decay`](PeakEwma::decay), so a slow instance is avoided at once and tried
/// again later. A failure counts as a sample of at least
/// [`failure_penalty`](PeakEwma::failure_penalty). Load survives set changes: it is kept
/// per instance (by registry key) while it stays in the set; each set change costs
/// O(log n). It is learnt from [`start`](Balancer::start) and
/// [`finish`](Balancer::finish); without them every cost is equal and the choice is random.
#[derive(Debug)]
pub struct PeakEwma {
    decay_ns: f64,
    default_rtt: Duration,
    failure_penalty: Duration,
    epoch: Instant,
    /// Each member's load, aligned with the snapshot's slots.
    tables: Tables<Aligned<Arc<Load>>>,
}

#[derive(Debug)]
struct Load {
    in_flight: AtomicU32,
    /// The estimate in nanoseconds, as `f64` bits.
    estimate: AtomicU64,
    /// When the estimate was last updated, in nanoseconds since the balancer's epoch.
    stamp: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    /// Decay over 10 s, a 30 ms estimate for instances never measured, and a 1 s failure
    /// penalty.
    pub fn new() -> Self {
        PeakEwma {
            decay_ns: Duration::from_secs(10).as_nanos() as f64,
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
            epoch: Instant::now(),
            tables: Tables::default(),
        }
    }

    /// Sets how fast the estimate forgets: the time constant of its exponential decay.
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay_ns = decay.as_nanos().max(1) as f64;
        self
    }

    /// Sets the estimate an instance starts with before its first answer.
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt = rtt;
        self
    }

    /// Sets the latency a failed request counts as, at least.
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A load for an instance never measured, stamped `now` so instances that join
    /// together cost the same.
    fn new_load(&self, now: u64) -> Arc<Load> {
        Arc::new(Load {
            in_flight: AtomicU32::new(0),
            estimate: AtomicU64::new((self.default_rtt.as_nanos() as f64).to_bits()),
            stamp: AtomicU64::new(now),
        })
    }

    fn build(&self, snapshot: &Snapshot) -> Aligned<Arc<Load>> {
        let previous = self.tables.last();
        let now = self.now_ns();
        Aligned::build(snapshot.members(), |instance| {
            previous
                .as_ref()
                .and_then(|p| p.value.get(instance.key()).cloned())
                .unwrap_or_else(|| self.new_load(now))
        })
    }

    fn apply(&self, loads: &Aligned<Arc<Load>>, changes: &[Change]) -> Aligned<Arc<Load>> {
        let now = self.now_ns();
        let mut next = loads.clone();
        for change in changes {
            next.apply(change, |_| self.new_load(now));
        }
        next
    }

    fn load_of(&self, instance: &Instance) -> Option<Arc<Load>> {
        self.tables
            .last()
            .and_then(|t| t.value.get(instance.key()).cloned())
    }

    /// `estimate × (in-flight + 1)`, the estimate decayed toward zero since its last
    /// update.
    fn cost(&self, load: &Load, now: u64) -> f64 {
        let estimate = f64::from_bits(load.estimate.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(load.stamp.load(Ordering::Relaxed)) as f64;
        let decayed = estimate * (-elapsed / self.decay_ns).exp();
        decayed * f64::from(load.in_flight.load(Ordering::Relaxed) + 1)
    }

    /// Folds a sample into the estimate. Racing updates may lose one sample; the
    /// estimate stays a valid one.
    fn observe(&self, load: &Load, rtt: Duration) {
        let now = self.now_ns();
        let sample = rtt.as_nanos() as f64;
        let estimate = f64::from_bits(load.estimate.load(Ordering::Relaxed));
        let next = if sample > estimate {
            sample
        } else {
            let elapsed = now.saturating_sub(load.stamp.load(Ordering::Relaxed)) as f64;
            let keep = (-elapsed / self.decay_ns).exp();
            estimate * keep + sample * (1.0 - keep)
        };
        load.estimate.store(next.to_bits(), Ordering::Relaxed);
        load.stamp.store(now, Ordering::Relaxed);
    }
}

impl Balancer for PeakEwma {
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        let instances = snapshot.members();
        let n = instances.len();
        if n == 0 {
            return None;
        }
        let (a, b) = {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let b = if n > 1 {
                (a + rng.random_range(1..n)) % n
            } else {
                a
            };
            (a, b)
        };
        let a = first_allowed(instances, a, ctx)?;
        let b = first_allowed(instances, b, ctx)?;
        if a == b {
            return Some(instances[a].clone());
        }
        self.tables.with(
            snapshot,
            |snapshot| self.build(snapshot),
            |loads, changes, snapshot| {
                let next = self.apply(loads, changes);
                // Aligned by construction; a mismatch would mean a bug, so start over.
                if next.len() == snapshot.len() {
                    next
                } else {
                    self.build(snapshot)
                }
            },
            |loads| {
                let now = self.now_ns();
                let cost = |at: usize| loads.at(at).map_or(0.0, |load| self.cost(load, now));
                Some(instances[if cost(b) < cost(a) { b } else { a }].clone())
            },
        )
    }

    fn start(&self, instance: &Instance) {
        if let Some(load) = self.load_of(instance) {
            load.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn finish(&self, instance: &Instance, outcome: Outcome) {
        let Some(load) = self.load_of(instance) else {
            return;
        };
        let _ = load
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        match outcome {
            Outcome::Success(rtt) => self.observe(&load, rtt),
            Outcome::Failure(rtt) => self.observe(&load, rtt.max(self.failure_penalty)),
            Outcome::Cancelled => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{counts, of, set};
    use super::*;

    #[test]
    fn equal_loads_share_evenly() {
        let set = set(4, 0, |_| 1);
        let seen = counts(&PeakEwma::new(), &set, 10_000, |_| PickContext::new());
        assert_eq!(seen.len(), 4);
        assert!(seen.values().all(|&c| (2_200..=2_800).contains(&c)), "{seen:?}");
    }

    #[test]
    fn a_slow_instance_gets_only_what_two_choices_cannot_avoid() {
        let set = set(4, 0, |_| 1);
        let balancer = PeakEwma::new();
        balancer.pick(&set, &PickContext::new());
        for instance in set.members().iter() {
            let rtt = if instance.id().as_str() == "i00000" {
                500
            } else {
                5
            };
            balancer.start(instance);
            balancer.finish(instance, Outcome::Success(Duration::from_millis(rtt)));
        }
        let seen = counts(&balancer, &set, 10_000, |_| PickContext::new());
        // It wins no comparison, so it is picked only when drawn twice: never with two
        // distinct draws.
        assert_eq!(seen.get("i00000"), None, "{seen:?}");
    }

    #[test]
    fn requests_in_flight_raise_the_cost() {
        let set = set(2, 0, |_| 1);
        let balancer = PeakEwma::new();
        balancer.pick(&set, &PickContext::new());
        for _ in 0..3 {
            balancer.start(&set.members()[0]);
        }
        let seen = counts(&balancer, &set, 1_000, |_| PickContext::new());
        assert_eq!(seen.get("i00001"), Some(&1_000), "{seen:?}");
        for _ in 0..3 {
            balancer.finish(&set.members()[0], Outcome::Cancelled);
        }
        let seen = counts(&balancer, &set, 10_000, |_| PickContext::new());
        assert!(seen.values().all(|&c| (4_000..=6_000).contains(&c)), "{seen:?}");
    }

    #[test]
    fn load_survives_a_set_change() {
        let set4 = set(4, 0, |_| 1);
        let balancer = PeakEwma::new();
        balancer.pick(&set4, &PickContext::new());
        balancer.start(&set4.members()[1]);
        balancer.finish(&set4.members()[1], Outcome::Failure(Duration::from_millis(1)));
        let set2 = of(set4.members().iter().take(2).cloned().collect());
        let seen = counts(&balancer, &set2, 1_000, |_| PickContext::new());
        assert_eq!(seen.get("i00000"), Some(&1_000), "{seen:?}");
    }
}
