//! Consistent hashing on a request key.

use std::sync::Arc;

use leasehold::Instance;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Balancer, InstanceSet, PerSet, PickContext, Random};

/// Consistent hashing on a ring with virtual nodes (Karger et al.; ketama): every instance
/// owns [`replicas`](ConsistentHash::replicas) points on a 64-bit ring, placed by the xxh3
/// hash of its id, and a request goes to the owner of the first point at or after the hash
/// of its [key](PickContext::with_key).
///
/// The same key reaches the same instance in every process while the set is unchanged;
/// adding or removing one of N instances moves only the keys of its arcs, about 1/N of
/// them. An instance the filter refuses passes its keys to the next point's owner, so
/// they come back when it does. Requests without a key go to a [`Random`] instance. The
/// ring is built once per instance set: O(N·replicas·log) then O(log) per pick.
#[derive(Debug)]
pub struct ConsistentHash {
    replicas: u32,
    ring: PerSet<Vec<(u64, u32)>>,
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsistentHash {
    /// A ring with 160 points per instance (ketama's number), which keeps every share
    /// within about ±15% of even.
    pub fn new() -> Self {
        ConsistentHash {
            replicas: 160,
            ring: PerSet::default(),
        }
    }

    /// Sets the points per instance (at least 1): more spreads load more evenly and
    /// costs memory and build time.
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    fn build(&self, set: &InstanceSet) -> Vec<(u64, u32)> {
        let mut ring = Vec::with_capacity(set.len() * self.replicas as usize);
        for (at, instance) in set.iter().enumerate() {
            let id = instance.id().as_str().as_bytes();
            ring.extend((0..self.replicas).map(|r| (xxh3_64_with_seed(id, u64::from(r)), at as u32)));
        }
        ring.sort_unstable();
        ring
    }
}

impl Balancer for ConsistentHash {
    fn pick_from(&self, instances: &InstanceSet, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        if instances.is_empty() {
            return None;
        }
        let Some(key) = ctx.key() else {
            return Random.pick_from(instances, ctx);
        };
        self.ring.with(
            instances,
            |set| self.build(set),
            |ring| {
                let start = ring.partition_point(|(point, _)| *point < key);
                (0..ring.len())
                    .map(|step| ring[(start + step) % ring.len()].1 as usize)
                    .find(|&at| ctx.allows(&instances[at]))
                    .map(|at| instances[at].clone())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{counts, set};
    use super::*;

    fn owners(balancer: &ConsistentHash, set: &InstanceSet, keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let ctx = PickContext::new().with_key(format!("user-{k}"));
                balancer.pick_from(set, &ctx).unwrap().id().to_string()
            })
            .collect()
    }

    #[test]
    fn the_same_key_goes_to_the_same_instance() {
        let set = set(10, 0, |_| 1);
        let a = owners(&ConsistentHash::new(), &set, 1_000);
        let b = owners(&ConsistentHash::new(), &set, 1_000);
        assert_eq!(a, b);
    }

    #[test]
    fn keys_spread_evenly_within_tolerance() {
        let set = set(10, 0, |_| 1);
        let counts = counts(&ConsistentHash::new(), &set, 100_000, |k| {
            PickContext::new().with_key_hash(super::super::hash_key(&(k as u64).to_le_bytes()))
        });
        assert_eq!(counts.len(), 10);
        assert!(
            counts.values().all(|&c| (7_000..=13_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn adding_or_removing_one_of_n_moves_about_one_nth_of_the_keys() {
        let keys = 20_000;
        let all = set(11, 0, |_| 1);
        let ten: InstanceSet = all[..10].to_vec().into();
        let balancer = ConsistentHash::new();
        let before = owners(&balancer, &ten, keys);
        let after = owners(&balancer, &all, keys);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let share = moved as f64 / keys as f64;
        assert!((0.05..0.14).contains(&share), "adding one of 11 moved {share:.3}");
        assert!(
            before.iter().zip(&after).all(|(b, a)| b == a || a == "i00010"),
            "keys only move to the new instance"
        );
        let back = owners(&balancer, &ten, keys);
        assert_eq!(before, back, "removing it moves exactly its keys back");
    }

    #[test]
    fn a_refused_instance_s_keys_go_to_the_next_and_come_back() {
        let set = set(5, 0, |_| 1);
        let balancer = ConsistentHash::new();
        let before = owners(&balancer, &set, 2_000);
        let not_two = |i: &Instance| i.id().as_str() != "i00002";
        let during: Vec<String> = (0..2_000)
            .map(|k| {
                let ctx = PickContext::new()
                    .with_key(format!("user-{k}"))
                    .with_filter(&not_two);
                balancer.pick_from(&set, &ctx).unwrap().id().to_string()
            })
            .collect();
        for (b, d) in before.iter().zip(&during) {
            assert!(b == d || b == "i00002", "only the refused instance's keys move");
        }
        assert_eq!(owners(&balancer, &set, 2_000), before);
    }
}
