//! Smooth weighted round robin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use leasehold::Instance;

use super::{Balancer, InstanceSet, PerSet, PickContext};

/// Smooth weighted round robin, nginx's algorithm: every instance has a current weight;
/// each pick adds every allowed instance's weight to its current weight, takes the
/// instance with the largest (the first in id order on a tie), and subtracts the total of
/// the allowed weights from it.
///
/// Each instance gets a share proportional to its [`weight`](Instance::weight), spread
/// evenly (weights 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`). A new set starts
/// from zero, as nginx does on reload. Picks take no lock:
///
/// - Unfiltered picks run in O(number of distinct weights). Instances of equal weight are
///   always picked in turn (the one picked fewer times has the larger current weight), so
///   after `t` picks an instance's current weight is `t·w − W·c`, `c` being its picks
///   and `W` the total weight; it is enough to count the picks of each weight class and
///   compare the classes' next-in-turn instances. Sequentially this is exactly nginx's
///   sequence.
/// - Filtered picks (while instances are ejected or a retry avoids some) run nginx's loop
///   over per-instance atomic current weights: O(n).
///
/// Under concurrent picks every pick still counts once and subtracts once, so the shares
/// hold over time, though two simultaneous picks may see the same state.
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    tables: PerSet<Weights>,
}

#[derive(Debug)]
struct Weights {
    /// Per-instance current weights, for filtered picks.
    current: Vec<AtomicI64>,
    /// Instances grouped by weight, ordered by their first member's index.
    classes: Vec<Class>,
    /// The total weight `W`.
    total: i128,
    /// Unfiltered picks made.
    picks: AtomicU64,
}

#[derive(Debug)]
struct Class {
    weight: i128,
    /// Indices into the set, ascending: the order of turns.
    members: Vec<usize>,
    /// Picks of this class made.
    picked: AtomicU64,
}

impl Weights {
    fn new(set: &InstanceSet) -> Self {
        let mut classes: Vec<Class> = Vec::new();
        let mut by_weight: HashMap<u32, usize> = HashMap::new();
        for (at, instance) in set.iter().enumerate() {
            let class = *by_weight.entry(instance.weight()).or_insert_with(|| {
                classes.push(Class {
                    weight: i128::from(instance.weight()),
                    members: Vec::new(),
                    picked: AtomicU64::new(0),
                });
                classes.len() - 1
            });
            classes[class].members.push(at);
        }
        Weights {
            current: set.iter().map(|_| AtomicI64::new(0)).collect(),
            total: set.iter().map(|i| i128::from(i.weight())).sum(),
            classes,
            picks: AtomicU64::new(0),
        }
    }

    /// The `t`-th unfiltered pick: the class whose next-in-turn instance has the largest
    /// current weight `t·w − W·c` (lowest index on a tie).
    fn pick_unfiltered(&self) -> usize {
        let t = i128::from(self.picks.fetch_add(1, Ordering::Relaxed)) + 1;
        let mut best: Option<(i128, usize, &Class)> = None;
        for class in &self.classes {
            let k = class.picked.load(Ordering::Relaxed) as usize;
            let m = class.members.len();
            let value = t * class.weight - self.total * (k / m) as i128;
            let leader = class.members[k % m];
            if best.is_none_or(|(top, at, _)| value > top || (value == top && leader < at)) {
                best = Some((value, leader, class));
            }
        }
        let (_, _, class) = best.expect("a non-empty set has a class");
        let k = class.picked.fetch_add(1, Ordering::Relaxed) as usize;
        class.members[k % class.members.len()]
    }

    fn pick_filtered(&self, instances: &InstanceSet, ctx: &PickContext<'_>) -> Option<usize> {
        let mut best: Option<(usize, i64)> = None;
        let mut total = 0i64;
        for (at, instance) in instances.iter().enumerate() {
            if !ctx.allows(instance) {
                continue;
            }
            let weight = i64::from(instance.weight());
            total += weight;
            let now = self.current[at].fetch_add(weight, Ordering::Relaxed) + weight;
            if best.is_none_or(|(_, top)| now > top) {
                best = Some((at, now));
            }
        }
        let (at, _) = best?;
        self.current[at].fetch_sub(total, Ordering::Relaxed);
        Some(at)
    }
}

impl SmoothWeighted {
    /// A smooth weighted round robin.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for SmoothWeighted {
    fn pick_from(&self, instances: &InstanceSet, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        if instances.is_empty() {
            return None;
        }
        let at = self.tables.with(instances, Weights::new, |weights| {
            if ctx.is_filtered() {
                weights.pick_filtered(instances, ctx)
            } else {
                Some(weights.pick_unfiltered())
            }
        })?;
        Some(instances[at].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{counts, set};
    use super::*;

    #[test]
    fn the_sequence_is_nginx_s() {
        let set = set(3, 0, |i| if i == 0 { 5 } else { 1 });
        let balancer = SmoothWeighted::new();
        let seq: String = (0..7)
            .map(|_| {
                let id = balancer
                    .pick_from(&set, &PickContext::new())
                    .unwrap()
                    .id()
                    .to_string();
                ["a", "b", "c"][id[1..].parse::<usize>().unwrap()]
            })
            .collect();
        assert_eq!(seq, "aabacaa");
    }

    #[test]
    fn the_class_shortcut_gives_exactly_nginx_s_sequence() {
        let set = set(40, 0, |i| {
            [3, 1, 4, 1, 5, 9, 2, 6][i % 8] * if i % 5 == 0 { 2 } else { 1 }
        });
        shortcut_matches_full_algorithm(&set, 5_000);
    }

    /// Unfiltered picks (the shortcut) and picks through an allow-all filter (nginx's
    /// full loop) give the same sequence.
    fn shortcut_matches_full_algorithm(set: &InstanceSet, picks: usize) {
        let fast = SmoothWeighted::new();
        let full = SmoothWeighted::new();
        let anything = |_: &Instance| true;
        for _ in 0..picks {
            let a = fast.pick_from(set, &PickContext::new()).unwrap();
            let b = full
                .pick_from(set, &PickContext::new().with_filter(&anything))
                .unwrap();
            assert_eq!(a.id(), b.id());
        }
    }

    #[test]
    fn equal_weights_give_round_robin_order_as_the_full_algorithm_does() {
        let set = set(5, 0, |_| 3);
        shortcut_matches_full_algorithm(&set, 23);
    }

    #[test]
    fn shares_follow_weights_exactly_over_whole_cycles() {
        let set = set(4, 0, |i| i as u32 + 1); // weights 1..=4, total 10
        let counts = counts(&SmoothWeighted::new(), &set, 10_000, |_| PickContext::new());
        let shares: Vec<usize> = counts.values().copied().collect();
        assert_eq!(shares, [1_000, 2_000, 3_000, 4_000]);
    }

    #[test]
    fn concurrent_picks_keep_the_shares() {
        let set = set(3, 0, |i| [1, 2, 7][i]);
        let balancer = SmoothWeighted::new();
        let total = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let counts = counts(&balancer, &set, 10_000, |_| PickContext::new());
                    let mut total = total.lock().unwrap();
                    for (id, c) in counts {
                        *total.entry(id).or_default() += c;
                    }
                });
            }
        });
        let shares: Vec<usize> = total.into_inner().unwrap().into_values().collect();
        for (share, weight) in shares.iter().zip([1usize, 2, 7]) {
            let expected = 40_000 * weight / 10;
            assert!(share.abs_diff(expected) <= expected / 20 + 50, "{shares:?}");
        }
    }

    #[test]
    fn filtered_instances_are_left_out_of_the_round() {
        let set = set(3, 0, |i| [1, 1, 2][i]);
        let not_last = |i: &Instance| i.id().as_str() != "i00002";
        let counts = counts(&SmoothWeighted::new(), &set, 1_000, |_| {
            PickContext::new().with_filter(&not_last)
        });
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [500, 500]);
    }
}
