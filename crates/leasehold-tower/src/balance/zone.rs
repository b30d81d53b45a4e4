//! Zone-aware routing.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use leasehold::{Change, ConnectionState, Instance, Snapshot, SnapshotWriter};

use super::{Balancer, Outcome, PickContext, Tables};

/// Prefers the caller's zone while enough of it is healthy, else uses every zone.
///
/// The caller's zone is the [context's](PickContext::with_zone) or, without one, the zone
/// given to [`new`](ZoneAware::new). Local instances are those whose
/// [`zone`](Instance::zone) equals it. When at least [`min_healthy`](ZoneAware::min_healthy)
/// of them (and at least one) pass the context's filter — the rest being ejected or
/// already tried — an inner balancer picks among the local ones; otherwise one picks
/// among all instances, so a failing zone spills over instead of overloading its
/// survivors.
///
/// Every zone has its own inner balancer and its own set, a snapshot kept up to date per
/// change like the discovery cache's, so callers in different zones (a zone per
/// request) never disturb each other's turns, and a change costs O(log n). The healthy
/// count comes from the context's [refused](PickContext::with_refused) list when it has
/// one, so a pick with a few instances ejected does not scan the zone.
pub struct ZoneAware<B> {
    zone: Option<String>,
    min_healthy: f64,
    make: Box<dyn Fn() -> B + Send + Sync>,
    global: B,
    zones: Tables<Zones<B>>,
}

impl<B: fmt::Debug> fmt::Debug for ZoneAware<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZoneAware")
            .field("zone", &self.zone)
            .field("min_healthy", &self.min_healthy)
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

/// One zone: its instances and the balancer that picks among them.
struct Local<B> {
    snapshot: Arc<Snapshot>,
    balancer: Arc<B>,
}

impl<B> Clone for Local<B> {
    fn clone(&self) -> Self {
        Local {
            snapshot: self.snapshot.clone(),
            balancer: self.balancer.clone(),
        }
    }
}

struct Zones<B> {
    by_zone: imbl::HashMap<Arc<str>, Local<B>>,
    /// Where each zone's snapshots come from; advanced by one updater at a time.
    writers: Arc<Mutex<HashMap<Arc<str>, SnapshotWriter>>>,
}

impl<B: Balancer> ZoneAware<B> {
    /// Prefers `zone` (`None`: only the context's), balancing with inner balancers that
    /// `make` builds (one for all instances, one per zone). At least half the local
    /// instances must be healthy by default.
    pub fn new(zone: Option<String>, make: impl Fn() -> B + Send + Sync + 'static) -> Self {
        ZoneAware {
            zone,
            min_healthy: 0.5,
            global: make(),
            make: Box::new(make),
            zones: Tables::default(),
        }
    }

    /// Sets the fraction (0 to 1) of the local instances that must be healthy for the
    /// local zone to be used alone.
    pub fn min_healthy(mut self, fraction: f64) -> Self {
        self.min_healthy = fraction.clamp(0.0, 1.0);
        self
    }

    fn build(&self, snapshot: &Snapshot) -> Zones<B> {
        let previous = self.zones.last();
        let mut writers: HashMap<Arc<str>, SnapshotWriter> = HashMap::new();
        for instance in snapshot.members().iter() {
            if let Some(zone) = instance.zone() {
                writers
                    .entry(Arc::from(zone))
                    .or_insert_with(|| SnapshotWriter::new(snapshot.service().clone()))
                    .insert(instance.clone());
            }
        }
        let by_zone = writers
            .iter_mut()
            .map(|(zone, writer)| {
                // A zone's balancer outlives rebuilds, so its loads and turns do.
                let balancer = previous
                    .as_ref()
                    .and_then(|p| p.value.by_zone.get(zone).map(|l| l.balancer.clone()))
                    .unwrap_or_else(|| Arc::new((self.make)()));
                let snapshot = Arc::new(writer.publish(0, ConnectionState::Live).0);
                (zone.clone(), Local { snapshot, balancer })
            })
            .collect();
        Zones {
            by_zone,
            writers: Arc::new(Mutex::new(writers)),
        }
    }

    fn apply(&self, zones: &Zones<B>, changes: &[Change], snapshot: &Snapshot) -> Zones<B> {
        let mut writers = zones.writers.lock().unwrap_or_else(|e| e.into_inner());
        let mut touched: Vec<Arc<str>> = Vec::new();
        let mut touch = |zone: &str, touched: &mut Vec<Arc<str>>| -> Arc<str> {
            let key = match writers.get_key_value(zone) {
                Some((key, _)) => key.clone(),
                None => {
                    let key: Arc<str> = Arc::from(zone);
                    writers.insert(key.clone(), SnapshotWriter::new(snapshot.service().clone()));
                    key
                }
            };
            if !touched.contains(&key) {
                touched.push(key.clone());
            }
            key
        };
        // (zone, the instance to put there or none to remove, its key)
        type Edit<'c> = (Arc<str>, Option<Arc<Instance>>, &'c str);
        let mut edits: Vec<Edit<'_>> = Vec::new();
        for change in changes {
            match change {
                Change::Added(instance) => {
                    if let Some(zone) = instance.zone() {
                        edits.push((touch(zone, &mut touched), Some(instance.clone()), instance.key()));
                    }
                }
                Change::Removed(instance) => {
                    if let Some(zone) = instance.zone() {
                        edits.push((touch(zone, &mut touched), None, instance.key()));
                    }
                }
                Change::Updated { old, new } => {
                    if let Some(zone) = old.zone().filter(|z| Some(*z) != new.zone()) {
                        edits.push((touch(zone, &mut touched), None, old.key()));
                    }
                    if let Some(zone) = new.zone() {
                        edits.push((touch(zone, &mut touched), Some(new.clone()), new.key()));
                    }
                }
                _ => {}
            }
        }
        for (zone, instance, key) in edits {
            let writer = writers.get_mut(&zone).expect("touched zones have writers");
            match instance {
                Some(instance) => writer.insert(instance),
                None => {
                    writer.remove(key);
                }
            }
        }
        let mut by_zone = zones.by_zone.clone();
        for zone in touched {
            let writer = writers.get_mut(&zone).expect("touched zones have writers");
            let snapshot = Arc::new(writer.publish(0, ConnectionState::Live).0);
            let balancer = match by_zone.get(&zone) {
                Some(local) => local.balancer.clone(),
                None => Arc::new((self.make)()),
            };
            by_zone.insert(zone, Local { snapshot, balancer });
        }
        Zones {
            by_zone,
            writers: zones.writers.clone(),
        }
    }

    fn local(&self, zone: &str) -> Option<Arc<B>> {
        let table = self.zones.last()?;
        table.value.by_zone.get(zone).map(|l| l.balancer.clone())
    }
}

impl<B: Balancer> Balancer for ZoneAware<B> {
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        let Some(zone) = ctx.zone().or(self.zone.as_deref()) else {
            return self.global.pick(snapshot, ctx);
        };
        let local = self.zones.with(
            snapshot,
            |snapshot| self.build(snapshot),
            |zones, changes, snapshot| self.apply(zones, changes, snapshot),
            |zones| zones.by_zone.get(zone).cloned(),
        );
        if let Some(local) = local {
            let all = local.snapshot.len();
            let healthy = if !ctx.is_filtered() {
                all
            } else if let Some(refused) = ctx.refused() {
                // Were every refused instance local, would enough be left? Then there is
                // no need to count which are.
                let at_least = all.saturating_sub(refused.len());
                if at_least > 0 && at_least as f64 >= self.min_healthy * all as f64 {
                    at_least
                } else {
                    all.saturating_sub(refused.iter().filter(|i| i.zone() == Some(zone)).count())
                }
            } else {
                local.snapshot.members().iter().filter(|i| ctx.allows(i)).count()
            };
            if healthy > 0 && healthy as f64 >= self.min_healthy * all as f64 {
                if let Some(picked) = local.balancer.pick(&local.snapshot, ctx) {
                    return Some(picked);
                }
            }
        }
        self.global.pick(snapshot, ctx)
    }

    fn start(&self, instance: &Instance) {
        self.global.start(instance);
        if let Some(local) = instance.zone().and_then(|zone| self.local(zone)) {
            local.start(instance);
        }
    }

    fn finish(&self, instance: &Instance, outcome: Outcome) {
        self.global.finish(instance, outcome);
        if let Some(local) = instance.zone().and_then(|zone| self.local(zone)) {
            local.finish(instance, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{counts, set};
    use super::super::RoundRobin;
    use super::*;

    #[test]
    fn the_local_zone_takes_everything_while_healthy() {
        let set = set(9, 3, |_| 1);
        let balancer = ZoneAware::new(Some("z1".into()), RoundRobin::new);
        let seen = counts(&balancer, &set, 3_000, |_| PickContext::new());
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["i00001", "i00004", "i00007"]);
        assert!(seen.values().all(|&c| c == 1_000), "{seen:?}");
    }

    #[test]
    fn the_context_zone_overrides_the_default() {
        let set = set(6, 2, |_| 1);
        let balancer = ZoneAware::new(Some("z1".into()), RoundRobin::new);
        let seen = counts(&balancer, &set, 100, |_| PickContext::new().with_zone("z0"));
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["i00000", "i00002", "i00004"]);
    }

    #[test]
    fn an_unhealthy_zone_falls_back_to_all() {
        let set = set(8, 2, |_| 1); // z0: 0 2 4 6, z1: 1 3 5 7
        let balancer = ZoneAware::new(Some("z0".into()), RoundRobin::new).min_healthy(0.5);
        let half = |i: &Instance| !matches!(i.id().as_str(), "i00000" | "i00002");
        let seen = counts(&balancer, &set, 1_000, |_| PickContext::new().with_filter(&half));
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["i00004", "i00006"],
            "half is enough"
        );

        let most = |i: &Instance| !matches!(i.id().as_str(), "i00000" | "i00002" | "i00004");
        let seen = counts(&balancer, &set, 1_000, |_| PickContext::new().with_filter(&most));
        assert_eq!(
            seen.len(),
            5,
            "a quarter is not: all healthy instances serve: {seen:?}"
        );
        assert!(seen.contains_key("i00001") && seen.contains_key("i00006"));
    }

    #[test]
    fn zones_that_vary_per_request_keep_their_own_turns() {
        let set = set(6, 2, |_| 1); // z0: 0 2 4, z1: 1 3 5
        let balancer = ZoneAware::new(None, RoundRobin::new);
        let seen = counts(&balancer, &set, 600, |n| {
            PickContext::new().with_zone(if n % 2 == 0 { "z0" } else { "z1" })
        });
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert!(seen.values().all(|&c| c == 100), "{seen:?}");
    }

    #[test]
    fn the_refused_list_counts_the_healthy_without_a_scan() {
        let set = set(8, 2, |_| 1);
        let balancer = ZoneAware::new(Some("z0".into()), RoundRobin::new);
        let refused: Vec<Arc<Instance>> = set
            .members()
            .iter()
            .filter(|i| matches!(i.id().as_str(), "i00000" | "i00002" | "i00004"))
            .cloned()
            .collect();
        let allowed = |i: &Instance| !refused.iter().any(|r| r.key() == i.key());
        let seen = counts(&balancer, &set, 100, |_| {
            PickContext::new().with_filter(&allowed).with_refused(&refused)
        });
        assert_eq!(seen.len(), 5, "a quarter of z0 is too few: all serve: {seen:?}");
    }

    #[test]
    fn zones_follow_changes_as_a_rebuild_would() {
        use leasehold::{ServiceName, SnapshotWriter};
        let mut writer = SnapshotWriter::new(ServiceName::new("svc").unwrap());
        let base = set(12, 3, |_| 1);
        for instance in base.members().iter() {
            writer.insert(instance.clone());
        }
        let (first, _) = writer.publish(1, ConnectionState::Live);
        let balancer = ZoneAware::new(None, RoundRobin::new);
        counts(&balancer, &first, 3, |_| PickContext::new().with_zone("z1"));
        writer.remove(base.members()[1].key());
        let moved = Instance::builder("svc", "10.9.9.9:80")
            .id("i00004")
            .zone("z2")
            .build()
            .unwrap();
        writer.insert(Arc::new(moved));
        let joined = Instance::builder("svc", "10.9.9.8:80")
            .id("new")
            .zone("z1")
            .build()
            .unwrap();
        writer.insert(Arc::new(joined));
        let (second, _) = writer.publish(2, ConnectionState::Live);
        assert!(second.changes_since(first.version()).is_some());
        let seen = counts(&balancer, &second, 300, |_| PickContext::new().with_zone("z1"));
        assert_eq!(
            seen.keys().collect::<Vec<_>>(),
            ["i00007", "i00010", "new"],
            "i00001 left, i00004 moved to z2, new joined z1"
        );
        assert!(seen.values().all(|&c| c == 100), "{seen:?}");
    }

    #[test]
    fn an_unknown_or_missing_zone_uses_all() {
        let set = set(4, 2, |_| 1);
        let balancer = ZoneAware::new(None, RoundRobin::new);
        assert_eq!(counts(&balancer, &set, 400, |_| PickContext::new()).len(), 4);
        assert_eq!(
            counts(&balancer, &set, 400, |_| PickContext::new().with_zone("mars")).len(),
            4
        );
    }
}
