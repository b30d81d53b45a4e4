//! Balancers: which instance of a service the next request goes to.
//!
//! A [`Balancer`] picks from the instances of a discovery [`Snapshot`]
//! ([`Discovery::snapshot`](leasehold::Discovery::snapshot) is lock-free) and never locks
//! on the way. Balancers that need a table per set (smooth weighted round robin's weights,
//! the hash ring, the zones) build it once per published snapshot and keep it in an
//! [`ArcSwap`](arc_swap::ArcSwap), so steady-state picks only read.
//!
//! Used without tower, a balancer is all a plain client needs:
//!
//! ```
//! use std::sync::Arc;
//! use leasehold::Instance;
//! use leasehold_tower::balance::{Balancer, PickContext, RoundRobin};
//!
//! let set: Arc<[Arc<Instance>]> = ["127.0.0.1:7001", "127.0.0.1:7002"]
//!     .iter()
//!     .map(|addr| Arc::new(Instance::builder("echo", *addr).id(*addr).build().unwrap()))
//!     .collect();
//! let balancer = RoundRobin::new();
//! let first = balancer.pick_from(&set, &PickContext::new()).unwrap();
//! let second = balancer.pick_from(&set, &PickContext::new()).unwrap();
//! assert_ne!(first.addr(), second.addr());
//! ```
//!
//! With a [`Discovery`](leasehold::Discovery), pick from its snapshot:
//! `balancer.pick(&discovery.snapshot(), &PickContext::new())`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use leasehold::{Instance, Snapshot};

mod hash;
mod p2c;
mod random;
mod round_robin;
mod weighted;
mod zone;

pub use hash::ConsistentHash;
pub use p2c::PeakEwma;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;
pub use zone::ZoneAware;

/// The instances a balancer picks from: a snapshot's [`instances`](Snapshot::instances),
/// sorted by id. Balancers recognise a set they have seen by its pointer.
pub type InstanceSet = Arc<[Arc<Instance>]>;

/// What a balancer knows about one request: an optional key for consistent hashing, the
/// caller's zone, and a filter of the instances it may not use (ejected ones, ones this
/// request already failed on).
#[derive(Clone, Copy, Default)]
pub struct PickContext<'a> {
    key: Option<u64>,
    zone: Option<&'a str>,
    filter: Option<&'a dyn Fn(&Instance) -> bool>,
}

impl fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickContext")
            .field("key", &self.key)
            .field("zone", &self.zone)
            .field("filtered", &self.filter.is_some())
            .finish()
    }
}

impl<'a> PickContext<'a> {
    /// A context with no key, no zone and no filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the request key that [`ConsistentHash`] maps to an instance, hashed with
    /// xxh3 so every process maps a key the same way.
    pub fn with_key(self, key: impl AsRef<[u8]>) -> Self {
        self.with_key_hash(hash_key(key.as_ref()))
    }

    /// Sets the request key as an already computed hash (see [`hash_key`]).
    pub fn with_key_hash(mut self, hash: u64) -> Self {
        self.key = Some(hash);
        self
    }

    /// Sets the caller's zone, for [`ZoneAware`].
    pub fn with_zone(mut self, zone: &'a str) -> Self {
        self.zone = Some(zone);
        self
    }

    /// Restricts the pick to instances for which `allowed` returns true.
    pub fn with_filter(mut self, allowed: &'a dyn Fn(&Instance) -> bool) -> Self {
        self.filter = Some(allowed);
        self
    }

    /// The hashed request key, if any.
    pub fn key(&self) -> Option<u64> {
        self.key
    }

    /// The caller's zone, if any.
    pub fn zone(&self) -> Option<&'a str> {
        self.zone
    }

    /// Whether the filter lets `instance` be picked.
    pub fn allows(&self, instance: &Instance) -> bool {
        self.filter.is_none_or(|allowed| allowed(instance))
    }

    /// Whether a filter is set (so a balancer can skip filtering work without one).
    pub fn is_filtered(&self) -> bool {
        self.filter.is_some()
    }
}

/// The hash [`PickContext::with_key`] uses: xxh3-64, stable across processes and releases.
pub fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// How a request sent to a picked instance ended, reported to [`Balancer::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered, after this long.
    Success(Duration),
    /// Failed (connection error or a failure the caller classified), after this long.
    Failure(Duration),
    /// Abandoned by the caller before an answer; says nothing about the instance.
    Cancelled,
}

/// Picks the instance of a service that the next request goes to.
///
/// Implementations must be cheap and lock-free on [`pick_from`](Balancer::pick_from):
/// it runs once per request attempt on every caller's thread. Load-aware balancers learn
/// from [`start`](Balancer::start) and [`finish`](Balancer::finish), which the
/// [`Balanced`](crate::Balanced) service calls around every attempt; a caller that picks
/// by hand may call them too (or not: the others ignore them).
pub trait Balancer: Send + Sync + fmt::Debug {
    /// Picks one of `instances` that `ctx` allows; `None` if none is allowed.
    fn pick_from(&self, instances: &InstanceSet, ctx: &PickContext<'_>) -> Option<Arc<Instance>>;

    /// Picks one of the snapshot's instances that `ctx` allows; `None` if none is.
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        self.pick_from(snapshot.instances(), ctx)
    }

    /// A request is being sent to `instance`.
    fn start(&self, _instance: &Instance) {}

    /// A request sent to `instance` (announced by [`start`](Balancer::start)) ended.
    fn finish(&self, _instance: &Instance, _outcome: Outcome) {}
}

impl<B: Balancer + ?Sized> Balancer for Arc<B> {
    fn pick_from(&self, instances: &InstanceSet, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        (**self).pick_from(instances, ctx)
    }
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        (**self).pick(snapshot, ctx)
    }
    fn start(&self, instance: &Instance) {
        (**self).start(instance)
    }
    fn finish(&self, instance: &Instance, outcome: Outcome) {
        (**self).finish(instance, outcome)
    }
}

/// The balancers by name, for flags and configuration files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BalancerKind {
    /// [`RoundRobin`]: `round-robin`.
    RoundRobin,
    /// [`Random`]: `random`.
    Random,
    /// [`SmoothWeighted`]: `weighted`.
    Weighted,
    /// [`PeakEwma`]: `p2c`.
    P2c,
    /// [`ConsistentHash`]: `hash`.
    Hash,
}

impl BalancerKind {
    /// Every kind, in the order of [`NAMES`](Self::NAMES).
    pub const ALL: [BalancerKind; 5] = [
        BalancerKind::RoundRobin,
        BalancerKind::Random,
        BalancerKind::Weighted,
        BalancerKind::P2c,
        BalancerKind::Hash,
    ];

    /// The names [`FromStr`] accepts.
    pub const NAMES: [&'static str; 5] = ["round-robin", "random", "weighted", "p2c", "hash"];

    /// The kind's name.
    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|k| *k == self).unwrap_or(0)]
    }

    /// A new balancer of this kind with default settings.
    pub fn build(self) -> Arc<dyn Balancer> {
        match self {
            BalancerKind::RoundRobin => Arc::new(RoundRobin::new()),
            BalancerKind::Random => Arc::new(Random::new()),
            BalancerKind::Weighted => Arc::new(SmoothWeighted::new()),
            BalancerKind::P2c => Arc::new(PeakEwma::new()),
            BalancerKind::Hash => Arc::new(ConsistentHash::new()),
        }
    }
}

impl fmt::Display for BalancerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A balancer name that is not one of [`BalancerKind::NAMES`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown balancer {0:?}: expected one of round-robin, random, weighted, p2c, hash")]
pub struct UnknownBalancer(pub String);

impl FromStr for BalancerKind {
    type Err = UnknownBalancer;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .position(|name| *name == s)
            .map(|at| Self::ALL[at])
            .ok_or_else(|| UnknownBalancer(s.to_owned()))
    }
}

/// A table derived from one instance set, rebuilt when the set changes.
///
/// Holds the set it was built from, so recognising it is a pointer comparison and the
/// pointer cannot be reused while the table lives. Readers never lock; when two threads
/// see a new set at once both build and the last store wins.
pub(crate) struct PerSet<T> {
    current: ArcSwapOption<(InstanceSet, T)>,
}

impl<T> Default for PerSet<T> {
    fn default() -> Self {
        PerSet {
            current: ArcSwapOption::empty(),
        }
    }
}

impl<T> fmt::Debug for PerSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.current.load();
        f.debug_struct("PerSet")
            .field("instances", &set.as_deref().map(|entry| entry.0.len()))
            .finish()
    }
}

impl<T> PerSet<T> {
    /// Runs `f` on the table for `set`, building it with `build` first if `set` is new.
    pub(crate) fn with<R>(
        &self,
        set: &InstanceSet,
        build: impl FnOnce(&InstanceSet) -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        let guard = self.current.load();
        if let Some(entry) = guard.as_deref() {
            if Arc::ptr_eq(&entry.0, set) {
                return f(&entry.1);
            }
        }
        let entry = Arc::new((set.clone(), build(set)));
        self.current.store(Some(entry.clone()));
        f(&entry.1)
    }

    /// The last table built, whatever its set.
    pub(crate) fn last(&self) -> Option<Arc<(InstanceSet, T)>> {
        self.current.load_full()
    }
}

/// The first instance at or after `start` (wrapping) that `ctx` allows.
pub(crate) fn first_allowed(
    instances: &[Arc<Instance>],
    start: usize,
    ctx: &PickContext<'_>,
) -> Option<usize> {
    let n = instances.len();
    if n == 0 {
        return None;
    }
    if !ctx.is_filtered() {
        return Some(start % n);
    }
    (0..n)
        .map(|step| (start + step) % n)
        .find(|&at| ctx.allows(&instances[at]))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// `n` instances `i000`… at distinct addresses, zones `z0`, `z1`, … cycling through
    /// `zones`, and weights from `weight`.
    pub fn set(n: usize, zones: usize, weight: impl Fn(usize) -> u32) -> InstanceSet {
        (0..n)
            .map(|i| {
                let mut b = Instance::builder("svc", format!("10.0.{}.{}:80", i / 250, i % 250 + 1))
                    .id(format!("i{i:05}"))
                    .weight(weight(i));
                if zones > 0 {
                    b = b.zone(format!("z{}", i % zones));
                }
                Arc::new(b.build().unwrap())
            })
            .collect()
    }

    /// How many times each instance id was picked over `picks` picks.
    pub fn counts<'c>(
        balancer: &dyn Balancer,
        set: &InstanceSet,
        picks: usize,
        ctx: impl Fn(usize) -> PickContext<'c>,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..picks {
            let picked = balancer.pick_from(set, &ctx(i)).expect("a pick");
            *counts.entry(picked.id().to_string()).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_by_name_and_refuse_others() {
        for kind in BalancerKind::ALL {
            assert_eq!(kind.name().parse::<BalancerKind>(), Ok(kind));
        }
        let err = "least-conn".parse::<BalancerKind>().unwrap_err();
        assert!(err.to_string().contains("least-conn"), "{err}");
    }

    #[test]
    fn every_balancer_returns_none_on_an_empty_or_fully_filtered_set() {
        let empty: InstanceSet = Arc::new([]);
        let set = test_support::set(3, 0, |_| 1);
        let none = |_: &Instance| false;
        for kind in BalancerKind::ALL {
            let balancer = kind.build();
            assert!(
                balancer.pick_from(&empty, &PickContext::new()).is_none(),
                "{kind}"
            );
            let ctx = PickContext::new().with_key("k").with_filter(&none);
            assert!(balancer.pick_from(&set, &ctx).is_none(), "{kind}");
        }
    }

    #[test]
    fn every_balancer_honours_the_filter() {
        let set = test_support::set(5, 0, |i| i as u32 + 1);
        let only = |i: &Instance| i.id().as_str() == "i00003";
        for kind in BalancerKind::ALL {
            let balancer = kind.build();
            for n in 0..50 {
                let key = format!("k{n}");
                let ctx = PickContext::new().with_key(&key).with_filter(&only);
                assert_eq!(
                    balancer.pick_from(&set, &ctx).unwrap().id().as_str(),
                    "i00003",
                    "{kind}"
                );
            }
        }
    }
}
