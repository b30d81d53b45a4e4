//! Consistent hashing on a request key.

use std::sync::Arc;

use leasehold::{Change, Instance, Snapshot};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Balancer, PickContext, Random, Tables};

/// Consistent hashing on a ring with virtual nodes (Karger et al.; ketama): every instance
/// owns [`replicas`](ConsistentHash::replicas) points on a 64-bit ring, placed by the xxh3
/// hash of its id, and a request goes to the owner of the first point at or after the hash
/// of its [key](PickContext::with_key).
///
/// The same key reaches the same instance in every process while the set is unchanged;
/// adding or removing one of N instances moves only the keys of its arcs, about 1/N of
/// them. An instance the filter refuses passes its keys to the next point's owner, so
/// they come back when it does. Requests without a key go to a [`Random`] instance.
///
/// The ring is cut into buckets by the points' top bits (about 32 points a bucket),
/// so a pick reads one small sorted bucket: O(1) whatever the set's size. An instance
/// that joins or leaves rewrites only the buckets of its points, O(replicas) per change.
#[derive(Debug)]
pub struct ConsistentHash {
    replicas: u32,
    rings: Tables<Ring>,
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
            rings: Tables::default(),
        }
    }

    /// Sets the points per instance (at least 1): more spreads load more evenly and
    /// costs memory and build time.
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    fn points<'i>(&self, instance: &'i Instance) -> impl Iterator<Item = u64> + 'i {
        let id = instance.id().as_str().as_bytes();
        (0..self.replicas).map(move |r| xxh3_64_with_seed(id, u64::from(r)))
    }

    fn build(&self, snapshot: &Snapshot) -> Ring {
        let points = snapshot.len() * self.replicas as usize;
        // About 32 points (512 bytes) a bucket: few enough buckets that the directory
        // stays in cache, small enough that a change rewrites little. At least two
        // buckets, at most 2^22.
        let bits = (usize::BITS - (points / 32).max(1).leading_zeros()).clamp(1, 22);
        let shift = 64 - bits;
        let mut all: Vec<(u64, Arc<Instance>)> = Vec::with_capacity(points);
        for instance in snapshot.members().iter() {
            all.extend(self.points(instance).map(|p| (p, instance.clone())));
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key().cmp(b.1.key())));
        let mut buckets: Vec<Vec<(u64, Arc<Instance>)>> = (0..1usize << bits).map(|_| Vec::new()).collect();
        for (point, instance) in all {
            buckets[(point >> shift) as usize].push((point, instance));
        }
        Ring {
            shift,
            buckets: buckets.into_iter().map(Arc::from).collect(),
            points,
        }
    }

    fn apply(&self, ring: &Ring, changes: &[Change], snapshot: &Snapshot) -> Ring {
        let mut next = ring.clone();
        for change in changes {
            match change {
                Change::Added(instance) => next.add(self.points(instance), instance),
                Change::Removed(instance) => next.remove(self.points(instance), instance),
                // Same id, same points: only the owner's fields changed.
                Change::Updated { old, new } if old.id() == new.id() => next.replace(self.points(new), new),
                Change::Updated { old, new } => {
                    next.remove(self.points(old), old);
                    next.add(self.points(new), new);
                }
                _ => {}
            }
        }
        // Buckets of a set that grew or shrank many times over are re-cut.
        let per_bucket = next.points / next.buckets.len();
        if per_bucket > 128 || (per_bucket < 8 && next.buckets.len() > 64) {
            return self.build(snapshot);
        }
        next
    }
}

/// Points of the ring that share their top bits, sorted.
type Bucket = Arc<[(u64, Arc<Instance>)]>;

/// The ring: its points in buckets by their top bits, each bucket sorted.
#[derive(Clone)]
struct Ring {
    shift: u32,
    buckets: imbl::Vector<Bucket>,
    points: usize,
}

impl Ring {
    fn bucket_of(&self, point: u64) -> usize {
        (point >> self.shift) as usize
    }

    fn add(&mut self, points: impl Iterator<Item = u64>, instance: &Arc<Instance>) {
        for point in points {
            let at = self.bucket_of(point);
            let mut bucket = self.buckets[at].to_vec();
            let place = bucket.partition_point(|(p, i)| (*p, i.key()) < (point, instance.key()));
            bucket.insert(place, (point, instance.clone()));
            self.buckets.set(at, bucket.into());
            self.points += 1;
        }
    }

    fn remove(&mut self, points: impl Iterator<Item = u64>, instance: &Instance) {
        for point in points {
            let at = self.bucket_of(point);
            let bucket = &self.buckets[at];
            if let Some(place) = bucket
                .iter()
                .position(|(p, i)| *p == point && i.key() == instance.key())
            {
                let mut bucket = bucket.to_vec();
                bucket.remove(place);
                self.buckets.set(at, bucket.into());
                self.points -= 1;
            }
        }
    }

    /// Puts `instance` in place of the owner with its key at each of `points`.
    fn replace(&mut self, points: impl Iterator<Item = u64>, instance: &Arc<Instance>) {
        for point in points {
            let at = self.bucket_of(point);
            let bucket = &self.buckets[at];
            if let Some(place) = bucket
                .iter()
                .position(|(p, i)| *p == point && i.key() == instance.key())
            {
                let mut bucket = bucket.to_vec();
                bucket[place].1 = instance.clone();
                self.buckets.set(at, bucket.into());
            }
        }
    }

    /// The owners of the points at or after `key`, around the ring once.
    fn owners(&self, key: u64) -> impl Iterator<Item = &Arc<Instance>> + '_ {
        let first = self.bucket_of(key);
        let n = self.buckets.len();
        let start = self.buckets[first].partition_point(|(p, _)| *p < key);
        let head = self.buckets[first][start..].iter();
        let rest = (1..=n).flat_map(move |step| {
            let bucket = &self.buckets[(first + step) % n];
            let end = if step == n { start } else { bucket.len() };
            bucket[..end].iter()
        });
        head.chain(rest).map(|(_, instance)| instance)
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        if snapshot.is_empty() {
            return None;
        }
        let Some(key) = ctx.key() else {
            return Random.pick(snapshot, ctx);
        };
        self.rings.with(
            snapshot,
            |snapshot| self.build(snapshot),
            |ring, changes, snapshot| self.apply(ring, changes, snapshot),
            |ring| ring.owners(key).find(|instance| ctx.allows(instance)).cloned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{counts, of, set};
    use super::*;

    fn owners(balancer: &ConsistentHash, set: &Snapshot, keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let ctx = PickContext::new().with_key(format!("user-{k}"));
                balancer.pick(set, &ctx).unwrap().id().to_string()
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
        let ten = of(all.members().iter().take(10).cloned().collect());
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
    fn the_ring_follows_changes_as_a_rebuild_would() {
        use leasehold::{ConnectionState, ServiceName, SnapshotWriter};
        let mut writer = SnapshotWriter::new(ServiceName::new("svc").unwrap());
        let base = set(40, 0, |_| 1);
        for instance in base.members().iter() {
            writer.insert(instance.clone());
        }
        let (first, _) = writer.publish(1, ConnectionState::Live);
        let incremental = ConsistentHash::new();
        owners(&incremental, &first, 1);
        for instance in base.members().iter().step_by(3) {
            writer.remove(instance.key());
        }
        let moved = Instance::builder("svc", "10.9.9.9:80")
            .id("i00001")
            .build()
            .unwrap();
        writer.insert(Arc::new(moved));
        writer.insert(Arc::new(
            Instance::builder("svc", "10.9.9.8:80").id("new").build().unwrap(),
        ));
        let (second, _) = writer.publish(2, ConnectionState::Live);
        assert!(second.changes_since(first.version()).is_some());
        let fresh = of(second.members().iter().cloned().collect());
        assert_eq!(
            owners(&incremental, &second, 3_000),
            owners(&ConsistentHash::new(), &fresh, 3_000)
        );
        let addr = |s: &Snapshot| {
            let ctx = PickContext::new().with_key("user-1");
            (0..200)
                .map(|k| {
                    let ctx = ctx.with_key(format!("user-{k}"));
                    incremental.pick(s, &ctx).unwrap().addr().to_string()
                })
                .any(|a| a == "10.9.9.9:80")
        };
        assert!(
            addr(&second),
            "an updated owner's new address is what picks return"
        );
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
                balancer.pick(&set, &ctx).unwrap().id().to_string()
            })
            .collect();
        for (b, d) in before.iter().zip(&during) {
            assert!(b == d || b == "i00002", "only the refused instance's keys move");
        }
        assert_eq!(owners(&balancer, &set, 2_000), before);
    }
}
