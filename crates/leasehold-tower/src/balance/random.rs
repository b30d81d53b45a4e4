//! Uniform random choice.

use std::sync::Arc;

use leasehold::{Instance, Snapshot};
use rand::Rng;

use super::{first_allowed, Balancer, PickContext};

/// Random: each pick draws an instance uniformly from a thread-local generator.
///
/// Stateless, so it needs nothing shared between callers. A filtered-out draw goes to the
/// next allowed instance after it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Random {
    /// A random balancer.
    pub fn new() -> Self {
        Random
    }
}

impl Balancer for Random {
    fn pick(&self, snapshot: &Snapshot, ctx: &PickContext<'_>) -> Option<Arc<Instance>> {
        let instances = snapshot.members();
        if instances.is_empty() {
            return None;
        }
        let start = rand::rng().random_range(0..instances.len());
        first_allowed(instances, start, ctx).map(|at| instances[at].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{counts, set};
    use super::*;

    #[test]
    fn shares_are_even_within_tolerance() {
        let set = set(5, 0, |_| 1);
        let counts = counts(&Random::new(), &set, 10_000, |_| PickContext::new());
        assert_eq!(counts.len(), 5);
        // Expected 2,000 each; the standard deviation is 40, so ±300 is over 7 sigma.
        assert!(
            counts.values().all(|&c| (1_700..=2_300).contains(&c)),
            "{counts:?}"
        );
    }
}
