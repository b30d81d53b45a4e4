//! Consistent hashing on a request key.

use std::ops::Range;
use std::sync::Arc;

use leasehold::{Change, Instance, Snapshot};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Balancer, PickContext, Random, Tables};

/// Consistent hashing on a ring with virtual nodes (Karger et al.; ketama): every instance
/// owns [`replicas`](ConsistentHash::replicas) points per unit of its
/// [weight](Instance::weight) on a 64-bit ring, placed by the xxh3 hash of its id, and a
/// request goes to the owner of the first point at or after the hash of its
/// [key](PickContext::with_key) cut to its top 21 bits (the key's *grid slot*). An
/// instance of weight 3 so owns three times the points, and about three times the keys,
/// of one of weight 1 (weights above [`MAX_WEIGHT`](ConsistentHash::MAX_WEIGHT) count as
/// that much: the points, and the memory, grow with the weight).
///
/// The same key reaches the same instance in every process while the set is unchanged;
/// adding or removing one instance moves only the keys of its arcs, about its share of
/// them, and no other key. An instance the filter refuses passes its keys to the owner of
/// the next point, so they come back when it does. Requests without a key go to a
/// [`Random`] instance.
///
/// The grid is fixed (2^21 slots, whatever the set's size), so which instance a key goes
/// to depends only on the set, never on its history or on how the table is stored. A
/// pick reads one entry of a slot table holding, per slot, the owner of the first point
/// at or after the slot's start: one cache miss for the slot and one for the instance.
/// The table stores owners in 16 bits while the set has fewer than 65,534 instances, so
/// it is at most 4 MiB below that (8 MiB above), small enough to stay in a server's
/// last-level cache. Below 131,072 points the table is coarser than the grid, eight to
/// sixteen slots a point; a coarse slot with a point inside is marked split and its
/// picks search the ring, which is then small. An instance that joins or leaves (or
/// whose weight changes) rewrites the ring's buckets of the points it gains or loses and
/// the slots between each of them and the point before it: O(its points) per change,
/// whatever the size of the set.
#[derive(Debug)]
pub struct ConsistentHash {
    replicas: u32,
    rings: Tables<Table>,
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

/// The bits of a key that choose its instance: keys are cut to a grid of 2^21 slots
/// (4 MiB of 16-bit owners).
const GRID_BITS: u32 = 21;

/// The low bits a key loses to the grid.
const GRID_SHIFT: u32 = 64 - GRID_BITS;

impl ConsistentHash {
    /// The weight above which an instance gets no more points.
    pub const MAX_WEIGHT: u32 = 64;

    /// A ring with 40 points per unit of weight, which keeps the share of an instance of
    /// weight 1 within about ±16% of its due (one standard deviation) and costs about
    /// 16 bytes of ring a point; [`replicas`](ConsistentHash::replicas) trades evenness
    /// for memory.
    pub fn new() -> Self {
        ConsistentHash {
            replicas: 40,
            rings: Tables::default(),
        }
    }

    /// Sets the points per unit of weight (at least 1): more spreads load more evenly
    /// (the spread shrinks as one over the square root) and costs memory and build time.
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// The points of `instance`: `replicas` per unit of weight. The first ones do not
    /// depend on the weight, so a weight change adds or removes points at the end.
    fn points<'i>(&self, instance: &'i Instance) -> impl Iterator<Item = u64> + 'i {
        self.points_in(instance, 0..self.point_count(instance))
    }

    fn point_count(&self, instance: &Instance) -> u32 {
        self.replicas
            .saturating_mul(instance.weight().min(Self::MAX_WEIGHT))
    }

    /// Points `range` of `instance`'s (which has them if its weight is high enough).
    fn points_in<'i>(&self, instance: &'i Instance, range: Range<u32>) -> impl Iterator<Item = u64> + 'i {
        let id = instance.id().as_str().as_bytes();
        range.map(move |r| xxh3_64_with_seed(id, u64::from(r)))
    }

    /// Slot bits of the table for a ring of `points`: eight to sixteen slots a point, at
    /// least 2^8, at most the grid.
    fn slot_bits(points: usize) -> u32 {
        (usize::BITS - points.max(1).leading_zeros() + 3).clamp(8, GRID_BITS)
    }

    fn build(&self, snapshot: &Snapshot) -> Table {
        let mut owners = Owners::default();
        let mut all: Vec<(u64, u32)> = Vec::with_capacity(snapshot.len() * self.replicas as usize);
        for instance in snapshot.members().iter() {
            let at = owners.insert(instance);
            all.extend(self.points(instance).map(|p| (p, at)));
        }
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| owners.key(a.1).cmp(owners.key(b.1))));
        let points = all.len();
        // About 32 points (512 bytes) a bucket: few enough buckets that the directory
        // stays small, small enough that a change rewrites little. At least two
        // buckets, at most 2^22.
        let bits = (usize::BITS - (points / 32).max(1).leading_zeros()).clamp(1, 22);
        let shift = 64 - bits;
        let slot_bits = Self::slot_bits(points);
        let slot_shift = 64 - slot_bits;
        let mut slots = Vec::with_capacity(1 << slot_bits);
        let mut next = 0;
        for slot in 0..1u64 << slot_bits {
            let start = slot << slot_shift;
            while next < points && all[next].0 < start {
                next += 1;
            }
            slots.push(match all.get(next) {
                Some(&(point, owner)) => slot_entry(point, owner, start, slot_shift),
                None => all.first().map_or(NO_OWNER, |p| p.1),
            });
        }
        let mut buckets: Vec<Vec<(u64, u32)>> = (0..1usize << bits).map(|_| Vec::new()).collect();
        for point in all {
            buckets[(point.0 >> shift) as usize].push(point);
        }
        Table {
            ring: Ring {
                shift,
                buckets: buckets.into_iter().map(Arc::from).collect(),
                points,
            },
            slot_shift,
            slots: Slots::from_vec(slots, owners.len()),
            owners,
        }
    }

    fn apply(&self, table: &Table, changes: &[Change], snapshot: &Snapshot) -> Table {
        let mut next = table.clone();
        let mut moved: Vec<u64> = Vec::new();
        for change in changes {
            match change {
                Change::Added(instance) => next.add(self.points(instance), instance, &mut moved),
                Change::Removed(instance) => next.remove(self.points(instance), instance, &mut moved),
                // Same id: the same first points. A new weight adds or removes points at
                // the end; otherwise only the owner's fields changed.
                Change::Updated { old, new } if old.id() == new.id() && old.key() == new.key() => {
                    let (was, is) = (self.point_count(old), self.point_count(new));
                    next.owners.replace(new);
                    if is > was {
                        next.add(self.points_in(new, was..is), new, &mut moved);
                    } else {
                        next.drop_points(self.points_in(old, is..was), new, &mut moved);
                    }
                }
                Change::Updated { old, new } => {
                    next.remove(self.points(old), old, &mut moved);
                    next.add(self.points(new), new, &mut moved);
                }
                _ => {}
            }
        }
        let ring = &next.ring;
        // Buckets and slots of a set that grew or shrank many times over are re-cut.
        let per_bucket = ring.points / ring.buckets.len();
        let slot_bits = 64 - next.slot_shift;
        if ring.points == 0
            || per_bucket > 128
            || (per_bucket < 8 && ring.buckets.len() > 64)
            || Self::slot_bits(ring.points).abs_diff(slot_bits) > 1
        {
            return self.build(snapshot);
        }
        for point in moved {
            next.reassign(point);
        }
        next
    }
}

/// The slot of a table whose ring is empty.
const NO_OWNER: u32 = u32::MAX;

/// Marks a slot whose grid slots have different owners: its picks search the ring.
const SPLIT: u32 = u32::MAX - 1;

/// The entry of the slot starting at `start` (`slot_shift` bits wide) whose first point
/// at or after its start is `point` (at or after `start`): its owner if that point is
/// also the first at or after its last grid slot's start, else [`SPLIT`].
fn slot_entry(point: u64, owner: u32, start: u64, slot_shift: u32) -> u32 {
    let last_grid_start = start | ((1u64 << slot_shift) - 1) >> GRID_SHIFT << GRID_SHIFT;
    if point >= last_grid_start {
        owner
    } else {
        SPLIT
    }
}

/// Slots per page of the slot table (4 or 8 KiB): a change copies only the pages it
/// writes.
const SLOT_PAGE_BITS: u32 = 11;

/// The slot table, its owners in 16 bits while every owner index fits (the table is
/// half the size, and more of it stays in cache), else in 32.
#[derive(Clone)]
enum Slots {
    Narrow(Paged<u16>),
    Wide(Paged<u32>),
}

/// [`NO_OWNER`] and [`SPLIT`] in a narrow table; owners below them fit.
const NARROW_NO_OWNER: u16 = u16::MAX;
const NARROW_SPLIT: u16 = u16::MAX - 1;

impl Slots {
    /// A table of `entries` for a set whose owner indexes are below `owners`.
    fn from_vec(entries: Vec<u32>, owners: usize) -> Self {
        if owners < usize::from(NARROW_SPLIT) {
            Slots::Narrow(Paged::from_vec(
                entries.into_iter().map(narrow).collect(),
                SLOT_PAGE_BITS,
            ))
        } else {
            Slots::Wide(Paged::from_vec(entries, SLOT_PAGE_BITS))
        }
    }

    fn len(&self) -> usize {
        match self {
            Slots::Narrow(slots) => slots.len(),
            Slots::Wide(slots) => slots.len(),
        }
    }

    #[inline]
    fn get(&self, at: usize) -> u32 {
        match self {
            Slots::Narrow(slots) => match *slots.get(at) {
                NARROW_NO_OWNER => NO_OWNER,
                NARROW_SPLIT => SPLIT,
                owner => u32::from(owner),
            },
            Slots::Wide(slots) => *slots.get(at),
        }
    }

    fn set(&mut self, at: usize, entry: u32) {
        if let Slots::Narrow(slots) = self {
            if entry >= u32::from(NARROW_SPLIT) && entry < SPLIT {
                let wide = (0..slots.len()).map(|i| widen(*slots.get(i))).collect();
                *self = Slots::Wide(Paged::from_vec(wide, SLOT_PAGE_BITS));
            }
        }
        match self {
            Slots::Narrow(slots) => slots.set(at, narrow(entry)),
            Slots::Wide(slots) => slots.set(at, entry),
        }
    }
}

/// A wide entry whose owner fits, narrowed.
fn narrow(entry: u32) -> u16 {
    match entry {
        NO_OWNER => NARROW_NO_OWNER,
        SPLIT => NARROW_SPLIT,
        owner => owner as u16,
    }
}

fn widen(entry: u16) -> u32 {
    match entry {
        NARROW_NO_OWNER => NO_OWNER,
        NARROW_SPLIT => SPLIT,
        owner => u32::from(owner),
    }
}

/// Owners per page of the owner table.
const OWNER_PAGE_BITS: u32 = 8;

/// What a pick reads: the slot table, the owners it names, and the ring it is cut from.
#[derive(Clone)]
struct Table {
    ring: Ring,
    slot_shift: u32,
    /// Per slot, the owner of the first point at or after its start.
    slots: Slots,
    owners: Owners,
}

impl Table {
    fn add(&mut self, points: impl Iterator<Item = u64>, instance: &Arc<Instance>, moved: &mut Vec<u64>) {
        let at = self.owners.insert(instance);
        for point in points {
            self.ring.add(point, at, &self.owners);
            moved.push(point);
        }
    }

    fn remove(&mut self, points: impl Iterator<Item = u64>, instance: &Instance, moved: &mut Vec<u64>) {
        self.drop_points(points, instance, moved);
        self.owners.remove(instance.key());
    }

    /// Takes `points` of `instance` off the ring, leaving it an owner.
    fn drop_points(&mut self, points: impl Iterator<Item = u64>, instance: &Instance, moved: &mut Vec<u64>) {
        let Some(at) = self.owners.index(instance.key()) else {
            return;
        };
        for point in points {
            self.ring.remove(point, at);
            moved.push(point);
        }
    }

    /// Rewrites the slots that hold a grid slot whose first point at or after its start
    /// may have become, or stopped being, `point`: those starting after the ring's last
    /// point before it and at or before it.
    fn reassign(&mut self, point: u64) {
        let Some(before) = self.ring.before(point) else {
            return;
        };
        let grid_slot = |p: u64| (p >> GRID_SHIFT) as usize;
        let coarse = (64 - self.slot_shift) as usize;
        let last = grid_slot(point) >> (GRID_BITS as usize - coarse);
        let first = (grid_slot(before) + 1) >> (GRID_BITS as usize - coarse);
        let n = self.slots.len();
        let slots: Box<dyn Iterator<Item = usize>> = if before < point {
            Box::new(first..=last)
        } else {
            Box::new((first..n).chain(0..=last))
        };
        // The first point at or after a slot's start is, for the next slot up, still the
        // first if it is at or after that slot's start: one search for a run of slots.
        let mut last: Option<(u64, u64, u32)> = None;
        for slot in slots {
            let start = (slot as u64) << self.slot_shift;
            let first = match last {
                Some((previous, p, owner)) if previous < start && p >= start => Some((p, owner)),
                _ => self.ring.at_or_after(start).copied(),
            };
            let entry = match first {
                Some((p, owner)) if p >= start => {
                    last = Some((start, p, owner));
                    slot_entry(p, owner, start, self.slot_shift)
                }
                Some((_, owner)) => {
                    last = None;
                    owner
                }
                None => NO_OWNER,
            };
            self.slots.set(slot, entry);
        }
    }

    /// The owner of `key`'s grid slot, or of the next points' when the filter refuses it.
    fn pick(&self, key: u64, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        let grid_start = key >> GRID_SHIFT << GRID_SHIFT;
        let owner = match self.slots.get((key >> self.slot_shift) as usize) {
            SPLIT => self.ring.at_or_after(grid_start)?.1,
            owner => owner,
        };
        let instance = self.owners.get(owner)?;
        if ctx.allows(instance) {
            return Some(instance.clone());
        }
        self.ring
            .owners(grid_start)
            .filter(|&o| o != owner)
            .filter_map(|o| self.owners.get(o))
            .find(|instance| ctx.allows(instance))
            .cloned()
    }
}

/// A flat array in fixed pages shared between tables: a change copies the pages it
/// writes and the list of pages, not the array, and a table that writes none (an
/// owner's fields changed) shares the list too.
#[derive(Clone)]
struct Paged<T> {
    pages: Arc<Vec<Arc<[T]>>>,
    bits: u32,
    len: usize,
}

impl<T: Clone> Paged<T> {
    fn from_vec(values: Vec<T>, bits: u32) -> Self {
        let len = values.len();
        Paged {
            pages: Arc::new(values.chunks(1 << bits).map(Arc::from).collect()),
            bits,
            len,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, at: usize) -> &T {
        &self.pages[at >> self.bits][at & ((1 << self.bits) - 1)]
    }

    fn set(&mut self, at: usize, value: T) {
        let page = &mut Arc::make_mut(&mut self.pages)[at >> self.bits];
        if Arc::get_mut(page).is_none() {
            *page = Arc::from(&page[..]);
        }
        let page = Arc::get_mut(page).expect("a page just copied has one owner");
        page[at & ((1 << self.bits) - 1)] = value;
    }

    fn push(&mut self, value: T) {
        if self.len & ((1 << self.bits) - 1) == 0 {
            Arc::make_mut(&mut self.pages).push(Arc::from(vec![value.clone(); 1 << self.bits]));
        }
        self.len += 1;
        self.set(self.len - 1, value);
    }
}

/// The instances that own points, by a small index the ring and the slots hold, so an
/// instance whose fields change is replaced in one place.
#[derive(Clone)]
struct Owners {
    instances: Paged<Option<Arc<Instance>>>,
    index: imbl::HashMap<Arc<str>, u32>,
    free: Vec<u32>,
}

impl Default for Owners {
    fn default() -> Self {
        Owners {
            instances: Paged::from_vec(Vec::new(), OWNER_PAGE_BITS),
            index: imbl::HashMap::new(),
            free: Vec::new(),
        }
    }
}

impl Owners {
    fn insert(&mut self, instance: &Arc<Instance>) -> u32 {
        if let Some(at) = self.index(instance.key()) {
            self.instances.set(at as usize, Some(instance.clone()));
            return at;
        }
        let at = match self.free.pop() {
            Some(at) => {
                self.instances.set(at as usize, Some(instance.clone()));
                at
            }
            None => {
                self.instances.push(Some(instance.clone()));
                (self.instances.len() - 1) as u32
            }
        };
        self.index.insert(instance.shared_key().clone(), at);
        at
    }

    /// One more than the highest owner index in use or freed.
    fn len(&self) -> usize {
        self.instances.len()
    }

    fn replace(&mut self, instance: &Arc<Instance>) {
        if let Some(at) = self.index(instance.key()) {
            self.instances.set(at as usize, Some(instance.clone()));
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(at) = self.index.remove(key) {
            self.instances.set(at as usize, None);
            self.free.push(at);
        }
    }

    fn index(&self, key: &str) -> Option<u32> {
        self.index.get(key).copied()
    }

    fn get(&self, at: u32) -> Option<&Arc<Instance>> {
        if at == NO_OWNER {
            return None;
        }
        self.instances.get(at as usize).as_ref()
    }

    /// The registry key of owner `at`, which breaks ties between equal points.
    fn key(&self, at: u32) -> &str {
        self.get(at).map_or("", |i| i.key())
    }
}

/// Points of the ring that share their top bits, sorted, with their owners' indexes.
type Bucket = Arc<[(u64, u32)]>;

/// The ring: its points in buckets by their top bits, each bucket sorted by point and
/// then by the owner's key.
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

    fn add(&mut self, point: u64, owner: u32, owners: &Owners) {
        let at = self.bucket_of(point);
        let mut bucket = self.buckets[at].to_vec();
        let key = owners.key(owner);
        let place = bucket.partition_point(|&(p, o)| p < point || (p == point && owners.key(o) < key));
        bucket.insert(place, (point, owner));
        self.buckets.set(at, bucket.into());
        self.points += 1;
    }

    fn remove(&mut self, point: u64, owner: u32) {
        let at = self.bucket_of(point);
        let bucket = &self.buckets[at];
        if let Some(place) = bucket.iter().position(|&p| p == (point, owner)) {
            let mut bucket = bucket.to_vec();
            bucket.remove(place);
            self.buckets.set(at, bucket.into());
            self.points -= 1;
        }
    }

    /// The first point at or after `key`, around the ring.
    fn at_or_after(&self, key: u64) -> Option<&(u64, u32)> {
        let first = self.bucket_of(key);
        let n = self.buckets.len();
        let bucket = &self.buckets[first];
        let start = bucket.partition_point(|(p, _)| *p < key);
        bucket[start..]
            .first()
            .or_else(|| (1..=n).find_map(|step| self.buckets[(first + step) % n].first()))
    }

    /// The owners of the points at or after `key`, around the ring once.
    fn owners(&self, key: u64) -> impl Iterator<Item = u32> + '_ {
        let first = self.bucket_of(key);
        let n = self.buckets.len();
        let start = self.buckets[first].partition_point(|(p, _)| *p < key);
        let head = self.buckets[first][start..].iter();
        let rest = (1..=n).flat_map(move |step| {
            let bucket = &self.buckets[(first + step) % n];
            let end = if step == n { start } else { bucket.len() };
            bucket[..end].iter()
        });
        head.chain(rest).map(|&(_, owner)| owner)
    }

    /// The last point before `key`, around the ring (the ring's last point if `key` is
    /// at or before its first).
    fn before(&self, key: u64) -> Option<u64> {
        let last = self.bucket_of(key);
        let n = self.buckets.len();
        let bucket = &self.buckets[last];
        let end = bucket.partition_point(|(p, _)| *p < key);
        bucket[..end]
            .last()
            .or_else(|| (1..=n).find_map(|step| self.buckets[(last + n - step) % n].last()))
            .map(|p| p.0)
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
            |table, changes, snapshot| self.apply(table, changes, snapshot),
            |table| table.pick(key, ctx),
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

    /// The owner of a key by the definition: the first point at or after the start of
    /// the key's grid slot, around the sorted ring.
    fn by_definition(balancer: &ConsistentHash, set: &Snapshot) -> impl Fn(u64) -> String {
        let mut points: Vec<(u64, String, String)> = set
            .members()
            .iter()
            .flat_map(|i| {
                balancer
                    .points(i)
                    .map(|p| (p, i.key().to_owned(), i.id().to_string()))
            })
            .collect();
        points.sort();
        move |key| {
            let start = key >> GRID_SHIFT << GRID_SHIFT;
            let at = points.partition_point(|p| p.0 < start) % points.len();
            points[at].2.clone()
        }
    }

    fn keys(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|k| super::super::hash_key(&k.to_le_bytes()))
    }

    #[test]
    fn picks_follow_the_definition_at_every_table_size() {
        for (n, replicas) in [(1, 1), (3, 2), (10, 160), (300, 160), (2_000, 40)] {
            let set = set(n, 0, |_| 1);
            let balancer = ConsistentHash::new().replicas(replicas);
            let owner = by_definition(&balancer, &set);
            for key in keys(3_000) {
                let picked = balancer
                    .pick(&set, &PickContext::new().with_key_hash(key))
                    .unwrap();
                assert_eq!(
                    picked.id().as_str(),
                    owner(key),
                    "{n} instances, {replicas} points each, key {key:#x}"
                );
            }
        }
    }

    #[test]
    fn the_table_follows_growth_and_shrinkage_as_a_rebuild_would() {
        use leasehold::{ConnectionState, ServiceName, SnapshotWriter};
        let mut writer = SnapshotWriter::new(ServiceName::new("svc").unwrap());
        let all = set(600, 0, |_| 1);
        let incremental = ConsistentHash::new().replicas(20);
        let mut version = 0;
        let mut check = |writer: &mut SnapshotWriter, incremental: &ConsistentHash| {
            version += 1;
            let (snapshot, _) = writer.publish(version, ConnectionState::Live);
            if snapshot.is_empty() {
                return;
            }
            let fresh = ConsistentHash::new().replicas(20);
            for key in keys(1_000) {
                let ctx = PickContext::new().with_key_hash(key);
                assert_eq!(
                    incremental.pick(&snapshot, &ctx).unwrap().id(),
                    fresh.pick(&snapshot, &ctx).unwrap().id(),
                    "version {version}, {} instances",
                    snapshot.len()
                );
            }
        };
        // Grows from 1 to 600 (the table is re-cut on the way), then shrinks to 1.
        for chunk in all.members().iter().collect::<Vec<_>>().chunks(37) {
            for instance in chunk {
                writer.insert((*instance).clone());
            }
            check(&mut writer, &incremental);
        }
        for chunk in all.members().iter().skip(1).collect::<Vec<_>>().chunks(53) {
            for instance in chunk {
                writer.remove(instance.key());
            }
            check(&mut writer, &incremental);
        }
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

    #[test]
    fn weights_are_honoured_in_proportion() {
        // Every other instance weighs 3: that half should get three quarters of the keys.
        let halves = set(40, 0, |i| if i % 2 == 0 { 1 } else { 3 });
        let picked = counts(&ConsistentHash::new(), &halves, 100_000, |k| {
            PickContext::new().with_key_hash(super::super::hash_key(&(k as u64).to_le_bytes()))
        });
        let heavy: usize = halves
            .members()
            .iter()
            .filter(|i| i.weight() == 3)
            .map(|i| picked.get(i.id().as_str()).copied().unwrap_or(0))
            .sum();
        let share = heavy as f64 / 100_000.0;
        assert!((0.70..0.80).contains(&share), "weight 3 of 1: {share:.3}");

        let four = set(4, 0, |i| i as u32 + 1);
        let counts = counts(&ConsistentHash::new().replicas(160), &four, 100_000, |k| {
            PickContext::new().with_key_hash(super::super::hash_key(&(k as u64).to_le_bytes()))
        });
        for instance in four.members().iter() {
            let due = 100_000.0 * f64::from(instance.weight()) / 10.0;
            let got = counts[instance.id().as_str()] as f64;
            assert!((got / due - 1.0).abs() < 0.25, "{counts:?}");
        }
    }

    #[test]
    fn when_one_instance_leaves_only_its_keys_move() {
        let keys = 20_000;
        let all = set(30, 0, |i| i as u32 % 5 + 1);
        let leaving = all.members()[7].clone();
        let rest = of(all
            .members()
            .iter()
            .filter(|i| i.key() != leaving.key())
            .cloned()
            .collect());
        let balancer = ConsistentHash::new();
        let before = owners(&balancer, &all, keys);
        let after = owners(&balancer, &rest, keys);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                assert_eq!(b, leaving.id().as_str(), "a key of another instance moved");
                moved += 1;
            }
        }
        let had = before.iter().filter(|b| *b == leaving.id().as_str()).count();
        assert_eq!(moved, had, "every key of the leaver moved");
        let due = keys as f64 * f64::from(leaving.weight()) / 90.0;
        assert!(
            (moved as f64 / due - 1.0).abs() < 0.5,
            "moved {moved} of a due {due}"
        );
    }

    #[test]
    fn a_weight_change_moves_keys_only_to_or_from_that_instance() {
        use leasehold::{ConnectionState, InstanceUpdate, ServiceName, SnapshotWriter};
        let mut writer = SnapshotWriter::new(ServiceName::new("svc").unwrap());
        let base = set(20, 0, |_| 1);
        for instance in base.members().iter() {
            writer.insert(instance.clone());
        }
        let (first, _) = writer.publish(1, ConnectionState::Live);
        let incremental = ConsistentHash::new();
        let before = owners(&incremental, &first, 5_000);
        let heavier = base.members()[3]
            .updated(&InstanceUpdate::new().weight(4))
            .unwrap();
        writer.insert(Arc::new(heavier));
        let (second, _) = writer.publish(2, ConnectionState::Live);
        assert!(second.changes_since(first.version()).is_some());
        let after = owners(&incremental, &second, 5_000);
        let fresh = of(second.members().iter().cloned().collect());
        assert_eq!(after, owners(&ConsistentHash::new(), &fresh, 5_000));
        let gained = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        assert!(
            before.iter().zip(&after).all(|(b, a)| b == a || a == "i00003"),
            "keys only move to the heavier instance"
        );
        assert!(gained > 500, "it took about three twentieths more: {gained}");
        writer.insert(base.members()[3].clone());
        let (third, _) = writer.publish(3, ConnectionState::Live);
        assert_eq!(
            owners(&incremental, &third, 5_000),
            before,
            "back to weight 1, back to its keys"
        );
    }

    #[test]
    fn the_table_widens_past_65_533_owners() {
        use leasehold::{ConnectionState, ServiceName, SnapshotWriter};
        let mut writer = SnapshotWriter::new(ServiceName::new("svc").unwrap());
        let n = usize::from(NARROW_SPLIT) - 1;
        let all = set(n + 3, 0, |_| 1);
        for instance in all.members().iter().take(n) {
            writer.insert(instance.clone());
        }
        let (first, _) = writer.publish(1, ConnectionState::Live);
        let incremental = ConsistentHash::new().replicas(1);
        let picks = |balancer: &ConsistentHash, set: &Snapshot| -> Vec<String> {
            keys(2_000)
                .map(|k| {
                    let ctx = PickContext::new().with_key_hash(k);
                    balancer.pick(set, &ctx).unwrap().id().to_string()
                })
                .collect()
        };
        picks(&incremental, &first);
        for instance in all.members().iter().skip(n) {
            writer.insert(instance.clone());
        }
        let (second, _) = writer.publish(2, ConnectionState::Live);
        let table = incremental.rings.last().expect("a table");
        assert!(matches!(table.value.slots, Slots::Narrow(_)));
        picks(&incremental, &second);
        let table = incremental.rings.last().expect("a table");
        assert!(matches!(table.value.slots, Slots::Wide(_)), "past 65,533 owners");
        assert_eq!(
            picks(&incremental, &second),
            picks(&ConsistentHash::new().replicas(1), &second)
        );
    }
}
