//! Smooth weighted round robin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use leasehold::{Change, Instance, Snapshot};
use rand::Rng;

use super::{first_allowed, Balancer, PickContext, Tables};

/// Smooth weighted round robin, nginx's algorithm: every instance has a current weight;
/// each pick adds every instance's weight to its current weight, takes the instance with
/// the largest, and subtracts the total weight from it.
///
/// Each instance gets a share proportional to its [`weight`](Instance::weight), spread
/// evenly (weights 5, 1, 1 give `a a b a c a a`, not `a a a a a b c`). A changed set
/// starts from zero, as nginx does on reload. Picks take no lock and cost O(number of
/// distinct weights): instances of equal weight are always picked in turn (the one
/// picked fewer times has the larger current weight), so after `t` picks an instance's
/// current weight is `t·w − W·c`, `c` being its picks and `W` the total weight; it is
/// enough to count the picks of each weight class and compare the classes'
/// next-in-turn instances. The classes are kept per snapshot and updated per change in
/// O(log n).
///
/// An instance the context refuses (ejected, or already tried by this request) loses
/// its turn to the next in the sequence, so the others keep their relative shares; only
/// when most of the set is refused does a pick fall back to the first allowed instance
/// after a random one.
///
/// Under concurrent picks every pick still counts once, so the shares hold over time,
/// though two simultaneous picks may see the same state.
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    tables: Tables<Weights>,
}

/// Turns a refused instance may be skipped before a pick falls back.
const SKIPS: usize = 16;

#[derive(Debug)]
struct Weights {
    /// Instances grouped by weight, heaviest first.
    classes: Vec<Class>,
    /// Each instance's class weight and place in its class.
    places: imbl::HashMap<Arc<str>, (u32, u32)>,
    /// The total weight `W`.
    total: i128,
    /// Picks made since this set was new.
    picks: AtomicU64,
}

#[derive(Debug)]
struct Class {
    weight: u32,
    /// The order of turns.
    members: imbl::Vector<Arc<Instance>>,
    /// Picks of this class made.
    picked: AtomicU64,
}

impl Class {
    fn new(weight: u32) -> Self {
        Class {
            weight,
            members: imbl::Vector::new(),
            picked: AtomicU64::new(0),
        }
    }
}

impl Weights {
    fn build(snapshot: &Snapshot) -> Self {
        let mut weights = Weights {
            classes: Vec::new(),
            places: imbl::HashMap::new(),
            total: 0,
            picks: AtomicU64::new(0),
        };
        for instance in snapshot.members().iter() {
            weights.add(instance);
        }
        weights
    }

    /// The same classes with the changes applied and the turns started over.
    fn apply(&self, changes: &[Change]) -> Self {
        let mut next = Weights {
            classes: self
                .classes
                .iter()
                .map(|c| Class {
                    members: c.members.clone(),
                    ..Class::new(c.weight)
                })
                .collect(),
            places: self.places.clone(),
            total: self.total,
            picks: AtomicU64::new(0),
        };
        for change in changes {
            match change {
                Change::Added(instance) => next.add(instance),
                Change::Removed(instance) => next.remove(instance),
                Change::Updated { old, new } => {
                    next.remove(old);
                    next.add(new);
                }
                _ => {}
            }
        }
        next
    }

    fn add(&mut self, instance: &Arc<Instance>) {
        if self.places.contains_key(instance.key()) {
            self.remove(instance);
        }
        let weight = instance.weight();
        let at = match self.classes.iter().position(|c| c.weight <= weight) {
            Some(at) if self.classes[at].weight == weight => at,
            Some(at) => {
                self.classes.insert(at, Class::new(weight));
                at
            }
            None => {
                self.classes.push(Class::new(weight));
                self.classes.len() - 1
            }
        };
        let class = &mut self.classes[at];
        self.places.insert(
            instance.shared_key().clone(),
            (weight, class.members.len() as u32),
        );
        class.members.push_back(instance.clone());
        self.total += i128::from(weight);
    }

    fn remove(&mut self, instance: &Instance) {
        let Some((weight, place)) = self.places.remove(instance.key()) else {
            return;
        };
        let Some(at) = self.classes.iter().position(|c| c.weight == weight) else {
            return;
        };
        let class = &mut self.classes[at];
        let last = class.members.pop_back().expect("a place implies a member");
        if (place as usize) < class.members.len() {
            self.places.insert(last.shared_key().clone(), (weight, place));
            class.members.set(place as usize, last);
        }
        if class.members.is_empty() {
            self.classes.remove(at);
        }
        self.total -= i128::from(weight);
    }

    /// The next pick of the sequence: the class whose next-in-turn instance has the
    /// largest current weight `t·w − W·c` (the heavier class on a tie).
    fn next(&self) -> Option<&Arc<Instance>> {
        let t = i128::from(self.picks.fetch_add(1, Ordering::Relaxed)) + 1;
        let mut best: Option<(i128, &Class)> = None;
        for class in &self.classes {
            let k = class.picked.load(Ordering::Relaxed) as usize;
            let m = class.members.len();
            let value = t * i128::from(class.weight) - self.total * (k / m) as i128;
            if best.is_none_or(|(top, _)| value > top) {
                best = Some((value, class));
            }
        }
        let (_, class) = best?;
        let k = class.picked.fetch_add(1, Ordering::Relaxed) as usize;
        class.members.get(k % class.members.len())
    }
}

impl SmoothWeighted {
    /// A smooth weighted round robin.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for SmoothWeighted {
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        if snapshot.is_empty() {
            return None;
        }
        let picked = self.tables.with(
            snapshot,
            Weights::build,
            |weights, changes, _| weights.apply(changes),
            |weights| {
                (0..SKIPS)
                    .filter_map(|_| weights.next())
                    .find(|instance| ctx.allows(instance))
                    .cloned()
            },
        );
        picked.or_else(|| {
            let instances = snapshot.members();
            let start = rand::rng().random_range(0..instances.len());
            first_allowed(instances, start, ctx).map(|at| instances[at].clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{counts, of, set};
    use super::*;
    use leasehold::{ConnectionState, ServiceName, SnapshotWriter};

    fn sequence(balancer: &SmoothWeighted, set: &Snapshot, picks: usize) -> Vec<String> {
        (0..picks)
            .map(|_| balancer.pick(set, &PickContext::new()).unwrap().id().to_string())
            .collect()
    }

    #[test]
    fn the_sequence_is_nginx_s() {
        let set = set(3, 0, |i| if i == 0 { 5 } else { 1 });
        let seq: String = sequence(&SmoothWeighted::new(), &set, 7)
            .iter()
            .map(|id| ["a", "b", "c"][id[1..].parse::<usize>().unwrap()])
            .collect();
        assert_eq!(seq, "aabacaa");
    }

    /// nginx's loop over every instance, for comparison.
    fn nginx(weights: &[i64], picks: usize) -> Vec<usize> {
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        (0..picks)
            .map(|_| {
                for (c, w) in current.iter_mut().zip(weights) {
                    *c += w;
                }
                let best = (0..weights.len()).rev().max_by_key(|&i| current[i]).unwrap();
                current[best] -= total;
                best
            })
            .collect()
    }

    #[test]
    fn shares_and_spread_match_nginx_s_over_any_window() {
        let weights: Vec<u32> = (0..40)
            .map(|i| [3, 1, 4, 1, 5, 9, 2, 6][i % 8] * if i % 5 == 0 { 2 } else { 1 })
            .collect();
        let set = set(40, 0, |i| weights[i]);
        let total: usize = weights.iter().map(|&w| w as usize).sum();
        let ours = sequence(&SmoothWeighted::new(), &set, total * 3);
        let theirs = nginx(
            &weights.iter().map(|&w| i64::from(w)).collect::<Vec<_>>(),
            total * 3,
        );
        for window in [total / 2, total, total * 3] {
            for i in 0..40 {
                let id = format!("i{i:05}");
                let a = ours[..window].iter().filter(|p| **p == id).count();
                let b = theirs[..window].iter().filter(|&&p| p == i).count();
                assert!(a.abs_diff(b) <= 2, "instance {i} over {window}: {a} vs nginx {b}");
            }
        }
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

    #[test]
    fn with_most_refused_a_pick_still_finds_the_allowed_one() {
        let set = set(100, 0, |i| if i == 0 { 1 } else { 50 });
        let only_light = |i: &Instance| i.id().as_str() == "i00000";
        let counts = counts(&SmoothWeighted::new(), &set, 100, |_| {
            PickContext::new().with_filter(&only_light)
        });
        assert_eq!(counts["i00000"], 100);
    }

    #[test]
    fn classes_follow_changes_as_a_rebuild_would() {
        let mut writer = SnapshotWriter::new(ServiceName::new("svc").unwrap());
        let base = set(30, 0, |i| i as u32 % 4 + 1);
        for instance in base.members().iter() {
            writer.insert(instance.clone());
        }
        let (first, _) = writer.publish(1, ConnectionState::Live);
        let incremental = SmoothWeighted::new();
        incremental.pick(&first, &PickContext::new());
        for instance in base.members().iter().step_by(4) {
            writer.remove(instance.key());
        }
        let heavier = Instance::builder("svc", "10.9.9.9:80")
            .id("heavy")
            .weight(9)
            .build()
            .unwrap();
        writer.insert(Arc::new(heavier));
        let (second, _) = writer.publish(2, ConnectionState::Live);
        assert!(second.changes_since(first.version()).is_some());
        let total: usize = second.members().iter().map(|i| i.weight() as usize).sum();
        let a = counts(&incremental, &second, total * 4, |_| PickContext::new());
        let fresh = of(second.members().iter().cloned().collect());
        let b = counts(&SmoothWeighted::new(), &fresh, total * 4, |_| PickContext::new());
        assert_eq!(a, b);
    }
}
