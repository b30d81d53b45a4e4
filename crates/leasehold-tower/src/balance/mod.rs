//! Balancers: which instance of a service the next request goes to.
//!
//! A [`Balancer`] picks from the instances of a discovery [`Snapshot`]
//! ([`Discovery::snapshot`](leasehold::Discovery::snapshot) is lock-free) and never locks
//! on the way. Balancers that need a table per set (smooth weighted round robin's weight
//! classes, the zones, the loads) keep it for the last snapshot they saw and bring it up
//! to date with the snapshot's [edits](Snapshot::changes_since), so a change to a set of
//! 100,000 instances costs a reader what one change costs, not a rebuild. One balancer
//! belongs to one channel: its tables and counters are that channel's.
//!
//! Used without tower, a balancer is all a plain client needs:
//!
//! ```
//! use std::sync::Arc;
//! use leasehold::{Instance, ServiceName, Snapshot};
//! use leasehold_tower::balance::{Balancer, PickContext, RoundRobin};
//!
//! let set = ["127.0.0.1:7001", "127.0.0.1:7002"]
//!     .iter()
//!     .map(|addr| Arc::new(Instance::builder("echo", *addr).id(*addr).build().unwrap()))
//!     .collect();
//! let snapshot = Snapshot::of(ServiceName::new("echo").unwrap(), set);
//! let balancer = RoundRobin::new();
//! let first = balancer.pick(&snapshot, &PickContext::new()).unwrap();
//! let second = balancer.pick(&snapshot, &PickContext::new()).unwrap();
//! assert_ne!(first.addr(), second.addr());
//! ```
//!
//! With a [`Discovery`](leasehold::Discovery), pick from its snapshot:
//! `balancer.pick(&discovery.snapshot(), &PickContext::new())`.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use leasehold::{Change, Instance, Instances, Snapshot};

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

/// What a balancer knows about one request: an optional key for consistent hashing, the
/// caller's zone, and a filter of the instances it may not use (ejected ones, ones this
/// request already failed on), with, when the caller knows it, the short list of the
/// instances the filter refuses.
#[derive(Clone, Copy, Default)]
pub struct PickContext<'a> {
    key: Option<u64>,
    zone: Option<&'a str>,
    filter: Option<&'a dyn Fn(&Instance) -> bool>,
    refused: Option<&'a [Arc<Instance>]>,
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

    /// Tells the balancer which instances the filter refuses (it must refuse no other),
    /// so it can count the allowed ones of a group without scanning the group.
    pub fn with_refused(mut self, refused: &'a [Arc<Instance>]) -> Self {
        self.refused = Some(refused);
        self
    }

    /// The instances the filter refuses, if the caller listed them.
    pub fn refused(&self) -> Option<&'a [Arc<Instance>]> {
        self.refused
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
/// Implementations must be cheap and lock-free on [`pick`](Balancer::pick) in steady
/// state: it runs once per request attempt on every caller's thread. Load-aware balancers
/// learn from [`start`](Balancer::start) and [`finish`](Balancer::finish), which the
/// [`Balanced`](crate::Balanced) service calls around every attempt; a caller that picks
/// by hand may call them too (or not: the others ignore them).
///
/// A balancer's state is for one stream of snapshots (one channel): give each channel
/// its own, as [`BalanceOptions`](crate::BalanceOptions) does with a [`MakeBalancer`].
pub trait Balancer: Send + Sync + fmt::Debug {
    /// Picks one of the snapshot's instances that `ctx` allows; `None` if none is.
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>>;

    /// A request is being sent to `instance`.
    fn start(&self, _instance: &Instance) {}

    /// A request sent to `instance` (announced by [`start`](Balancer::start)) ended.
    fn finish(&self, _instance: &Instance, _outcome: Outcome) {}
}

impl<B: Balancer + ?Sized> Balancer for Arc<B> {
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

impl<B: Balancer + ?Sized> Balancer for Box<B> {
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

/// Makes a new balancer, one per channel, so channels built from one options value never
/// share counters or tables: a [`BalancerKind`], or a closure such as `RoundRobin::new`
/// or `|| ZoneAware::new(Some("eu-1".into()), PeakEwma::new)`.
pub trait MakeBalancer: Send + Sync {
    /// A balancer with fresh state.
    fn make_balancer(&self) -> Box<dyn Balancer>;
}

impl<F, B> MakeBalancer for F
where
    F: Fn() -> B + Send + Sync,
    B: Balancer + 'static,
{
    fn make_balancer(&self) -> Box<dyn Balancer> {
        Box::new(self())
    }
}

impl MakeBalancer for BalancerKind {
    fn make_balancer(&self) -> Box<dyn Balancer> {
        self.build()
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
    pub fn build(self) -> Box<dyn Balancer> {
        match self {
            BalancerKind::RoundRobin => Box::new(RoundRobin::new()),
            BalancerKind::Random => Box::new(Random::new()),
            BalancerKind::Weighted => Box::new(SmoothWeighted::new()),
            BalancerKind::P2c => Box::new(PeakEwma::new()),
            BalancerKind::Hash => Box::new(ConsistentHash::new()),
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

/// A table derived from a balancer's snapshots (weight classes, zones, loads), kept for
/// the last snapshot seen and brought forward with its edits.
///
/// Steady-state readers only load it. The first reader of a new snapshot of the same
/// cache applies the changes since (O(changes · log n)) under a lock that only such
/// updaters take; one that finds no edits (another cache, a full listing, too far
/// behind) builds the table from the snapshot. A reader holding a snapshot older than
/// the table's builds a throwaway table for it.
pub(crate) struct Tables<T> {
    current: ArcSwapOption<Table<T>>,
    advancing: Mutex<()>,
}

pub(crate) struct Table<T> {
    origin: u64,
    version: u64,
    pub(crate) value: T,
}

impl<T> Default for Tables<T> {
    fn default() -> Self {
        Tables {
            current: ArcSwapOption::empty(),
            advancing: Mutex::new(()),
        }
    }
}

impl<T> fmt::Debug for Tables<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.current.load();
        f.debug_struct("Tables")
            .field("version", &table.as_deref().map(|t| t.version))
            .finish()
    }
}

impl<T> Tables<T> {
    /// Runs `f` on the table for `snapshot`: the current one if it is for this snapshot,
    /// else the current one advanced by `apply` over the changes since, else a new one
    /// from `build`.
    pub(crate) fn with<R>(
        &self,
        snapshot: &Snapshot,
        build: impl FnOnce(&Snapshot) -> T,
        apply: impl FnOnce(&T, &[Change], &Snapshot) -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        let fits = |t: &Table<T>| t.origin == snapshot.origin() && t.version == snapshot.version();
        if let Some(table) = self.current.load().as_deref() {
            if fits(table) {
                return f(&table.value);
            }
        }
        let _advancing = self.advancing.lock().unwrap_or_else(|e| e.into_inner());
        let table = self.current.load_full();
        let next = match table.as_deref() {
            Some(t) if fits(t) => return f(&t.value),
            Some(t) if t.origin == snapshot.origin() && t.version > snapshot.version() => {
                return f(&build(snapshot));
            }
            Some(t) if t.origin == snapshot.origin() => match snapshot.changes_since(t.version) {
                Some(changes) => apply(&t.value, &changes, snapshot),
                None => build(snapshot),
            },
            _ => build(snapshot),
        };
        let next = Arc::new(Table {
            origin: snapshot.origin(),
            version: snapshot.version(),
            value: next,
        });
        self.current.store(Some(next.clone()));
        f(&next.value)
    }

    /// The last table, whatever its snapshot.
    pub(crate) fn last(&self) -> Option<Arc<Table<T>>> {
        self.current.load_full()
    }
}

/// Values kept in the slots of a snapshot's [`members`](Snapshot::members), moved as the
/// cache moves its slots (a removal takes the last slot into its place), so that slot
/// `i` of the table is always the value of member `i`.
#[derive(Clone)]
pub(crate) struct Aligned<V: Clone> {
    values: imbl::Vector<(Arc<str>, V)>,
    slots: imbl::HashMap<Arc<str>, u32>,
}

impl<V: Clone> Aligned<V> {
    pub(crate) fn build(members: &Instances, mut value: impl FnMut(&Arc<Instance>) -> V) -> Self {
        let mut aligned = Aligned {
            values: imbl::Vector::new(),
            slots: imbl::HashMap::new(),
        };
        for instance in members.iter() {
            aligned.push(instance, value(instance));
        }
        aligned
    }

    fn push(&mut self, instance: &Arc<Instance>, value: V) {
        let key = instance.shared_key().clone();
        self.slots.insert(key.clone(), self.values.len() as u32);
        self.values.push_back((key, value));
    }

    /// Applies one change: an added instance gets `value(instance)`, an updated one
    /// keeps its value.
    pub(crate) fn apply(&mut self, change: &Change, value: impl FnOnce(&Arc<Instance>) -> V) {
        match change {
            Change::Added(instance) if !self.slots.contains_key(instance.key()) => {
                let v = value(instance);
                self.push(instance, v);
            }
            Change::Removed(instance) => {
                let Some(slot) = self.slots.remove(instance.key()) else {
                    return;
                };
                let last = self.values.pop_back().expect("a slot implies a value");
                if (slot as usize) < self.values.len() {
                    self.slots.insert(last.0.clone(), slot);
                    self.values.set(slot as usize, last);
                }
            }
            _ => {}
        }
    }

    /// The value of member `slot`.
    pub(crate) fn at(&self, slot: usize) -> Option<&V> {
        self.values.get(slot).map(|(_, v)| v)
    }

    /// The value of the instance at `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        let slot = *self.slots.get(key)?;
        self.at(slot as usize)
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

/// The first instance at or after `start` (wrapping) that `ctx` allows.
pub(crate) fn first_allowed(instances: &Instances, start: usize, ctx: &PickContext<'_>) -> Option<usize> {
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
    use leasehold::ServiceName;

    /// `n` instances `i000`… at distinct addresses, zones `z0`, `z1`, … cycling through
    /// `zones`, and weights from `weight`, as a snapshot.
    pub fn set(n: usize, zones: usize, weight: impl Fn(usize) -> u32) -> Snapshot {
        of((0..n)
            .map(|i| {
                let mut b = Instance::builder("svc", format!("10.0.{}.{}:80", i / 250, i % 250 + 1))
                    .id(format!("i{i:05}"))
                    .weight(weight(i));
                if zones > 0 {
                    b = b.zone(format!("z{}", i % zones));
                }
                Arc::new(b.build().unwrap())
            })
            .collect())
    }

    /// A snapshot of `instances`.
    pub fn of(instances: Vec<Arc<Instance>>) -> Snapshot {
        Snapshot::of(ServiceName::new("svc").unwrap(), instances.into_iter().collect())
    }

    /// How many times each instance id was picked over `picks` picks.
    pub fn counts<'c>(
        balancer: &dyn Balancer,
        set: &Snapshot,
        picks: usize,
        ctx: impl Fn(usize) -> PickContext<'c>,
    ) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..picks {
            let picked = balancer.pick(set, &ctx(i)).expect("a pick");
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
        let empty = test_support::of(Vec::new());
        let set = test_support::set(3, 0, |_| 1);
        let none = |_: &Instance| false;
        for kind in BalancerKind::ALL {
            let balancer = kind.build();
            assert!(balancer.pick(&empty, &PickContext::new()).is_none(), "{kind}");
            let ctx = PickContext::new().with_key("k").with_filter(&none);
            assert!(balancer.pick(&set, &ctx).is_none(), "{kind}");
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
                    balancer.pick(&set, &ctx).unwrap().id().as_str(),
                    "i00003",
                    "{kind}"
                );
            }
        }
    }
}
