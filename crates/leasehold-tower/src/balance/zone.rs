//! Zone-aware routing.

use std::collections::HashMap;
use std::sync::Arc;

use leasehold::Instance;

use super::{Balancer, InstanceSet, Outcome, PerSet, PickContext};

/// Prefers the caller's zone while enough of it is healthy, else uses every zone.
///
/// The caller's zone is the [context's](PickContext::with_zone) or, without one, the zone
/// given to [`new`](ZoneAware::new). Local instances are those whose
/// [`zone`](Instance::zone) equals it. When at least [`min_healthy`](ZoneAware::min_healthy)
/// of them (and at least one) pass the context's filter — the rest being ejected or
/// already tried — the inner balancer picks among the local ones; otherwise among all
/// instances, so a failing zone spills over instead of overloading its survivors. Two
/// inner balancers are kept, one for the local set and one for the whole set, and both
/// see every [`start`](Balancer::start)/[`finish`](Balancer::finish). A client's zone
/// rarely changes; picking for several zones in turn rebuilds the local inner balancer's
/// table each time.
#[derive(Debug)]
pub struct ZoneAware<B> {
    zone: Option<String>,
    min_healthy: f64,
    local: B,
    global: B,
    /// The instances of each zone, per instance set; the same set keeps giving the same
    /// local set, so the local balancer's tables are kept too.
    zones: PerSet<HashMap<String, InstanceSet>>,
}

impl<B: Balancer> ZoneAware<B> {
    /// Prefers `zone` (`None`: only the context's), balancing with inner balancers that
    /// `make` builds. At least half the local instances must be healthy by default.
    pub fn new(zone: Option<String>, make: impl Fn() -> B) -> Self {
        ZoneAware {
            zone,
            min_healthy: 0.5,
            local: make(),
            global: make(),
            zones: PerSet::default(),
        }
    }

    /// Sets the fraction (0 to 1) of the local instances that must be healthy for the
    /// local zone to be used alone.
    pub fn min_healthy(mut self, fraction: f64) -> Self {
        self.min_healthy = fraction.clamp(0.0, 1.0);
        self
    }
}

fn by_zone(set: &InstanceSet) -> HashMap<String, InstanceSet> {
    let mut zones: HashMap<String, Vec<Arc<Instance>>> = HashMap::new();
    for instance in set.iter() {
        if let Some(zone) = instance.zone() {
            zones.entry(zone.to_owned()).or_default().push(instance.clone());
        }
    }
    zones
        .into_iter()
        .map(|(zone, members)| (zone, members.into()))
        .collect()
}

impl<B: Balancer> Balancer for ZoneAware<B> {
    fn pick_from(&self, instances: &InstanceSet, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        let Some(zone) = ctx.zone().or(self.zone.as_deref()) else {
            return self.global.pick_from(instances, ctx);
        };
        let local = self
            .zones
            .with(instances, by_zone, |zones| zones.get(zone).cloned());
        if let Some(local) = local {
            let healthy = if ctx.is_filtered() {
                local.iter().filter(|i| ctx.allows(i)).count()
            } else {
                local.len()
            };
            if healthy > 0 && healthy as f64 >= self.min_healthy * local.len() as f64 {
                return self.local.pick_from(&local, ctx);
            }
        }
        self.global.pick_from(instances, ctx)
    }

    fn start(&self, instance: &Instance) {
        self.local.start(instance);
        self.global.start(instance);
    }

    fn finish(&self, instance: &Instance, outcome: Outcome) {
        self.local.finish(instance, outcome);
        self.global.finish(instance, outcome);
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
