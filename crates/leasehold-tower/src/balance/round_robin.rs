//! Round robin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use leasehold::{Instance, Snapshot};

use super::{first_allowed, Balancer, PickContext};

/// Round robin: one shared atomic counter, each pick takes the next instance in the
/// snapshot's slot order.
///
/// Every instance gets the same share whatever its weight. A filtered-out instance's turn
/// goes to the next allowed one after it.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first instance.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        let instances = snapshot.members();
        if instances.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % instances.len();
        first_allowed(instances, start, ctx).map(|at| instances[at].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{counts, set};
    use super::*;

    #[test]
    fn shares_are_exactly_even() {
        let set = set(7, 0, |i| i as u32 + 1);
        let counts = counts(&RoundRobin::new(), &set, 7_000, |_| PickContext::new());
        assert_eq!(counts.len(), 7);
        assert!(counts.values().all(|&c| c == 1_000), "{counts:?}");
    }

    #[test]
    fn a_filtered_instance_is_skipped() {
        let set = set(4, 0, |_| 1);
        let not_two = |i: &Instance| i.id().as_str() != "i00002";
        let counts = counts(&RoundRobin::new(), &set, 4_000, |_| {
            PickContext::new().with_filter(&not_two)
        });
        assert_eq!(counts.get("i00002"), None);
        assert_eq!(
            counts["i00003"], 2_000,
            "the skipped turn goes to the next one: {counts:?}"
        );
        assert_eq!(counts["i00000"] + counts["i00001"], 2_000);
    }
}
