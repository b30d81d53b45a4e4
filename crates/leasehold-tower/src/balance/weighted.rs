//! Smooth weighted round robin.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use leasehold::Instance;

use super::{Balancer, InstanceSet, PerSet, PickContext};

/// Smooth weighted round robin, nginx's algorithm: every instance has a current weight;
/// each pick adds every allowed instance's weight to its current weight, takes the
/// instance with the largest, and subtracts the total of the allowed weights from it.
///
/// Each instance gets a share proportional to its [`weight`](Instance::weight), spread
/// evenly (weights 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`). The current
/// weights are atomics in a table built per instance set, so a pick is O(n) atomic
/// additions and takes no lock. One pick alone is exactly nginx's; under concurrent
/// picks each still adds the weights once and subtracts the total once, so the current
/// weights keep summing to zero and the shares hold over time, though two simultaneous
/// picks may land on the same instance. A new set starts from zero, as nginx does on
/// reload.
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    tables: PerSet<Vec<AtomicI64>>,
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
        self.tables.with(
            instances,
            |set| set.iter().map(|_| AtomicI64::new(0)).collect(),
            |current| {
                let mut best: Option<(usize, i64)> = None;
                let mut total = 0i64;
                for (at, instance) in instances.iter().enumerate() {
                    if !ctx.allows(instance) {
                        continue;
                    }
                    let weight = i64::from(instance.weight());
                    total += weight;
                    let now = current[at].fetch_add(weight, Ordering::Relaxed) + weight;
                    if best.is_none_or(|(_, top)| now > top) {
                        best = Some((at, now));
                    }
                }
                let (at, _) = best?;
                current[at].fetch_sub(total, Ordering::Relaxed);
                Some(instances[at].clone())
            },
        )
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
