//! How long to wait between attempts to recover a lost session or watch.

use std::time::Duration;

use backon::BackoffBuilder;

/// Jittered exponential backoff, capped, and never giving up.
///
/// Recovery retries for as long as a registration handle or a discovery lives: a
/// registry that comes back after an hour still gets its registrations back (go-zero and
/// Kratos stop after a fixed number of tries; we do not). The jitter spreads a fleet's
/// reconnects after a registry restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The cap on any delay.
    pub max: Duration,
    /// How much each delay grows over the last one.
    pub factor: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            factor: 2,
        }
    }
}

impl Backoff {
    /// An endless sequence of delays following this policy.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + 'static {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(self.factor as f32)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// The delays of one thing being retried under a [`Backoff`], made on its first failure
/// (most never fail, and a write or a watch answer should not pay for building a
/// jittered sequence) and started over by [`reset`](Self::reset).
///
/// ```
/// use leasehold::{Backoff, Retries};
///
/// let backoff = Backoff::default();
/// let mut retries = Retries::default();
/// assert!(retries.next(backoff) <= backoff.max);
/// retries.reset();
/// ```
#[derive(Default)]
pub struct Retries(Option<Box<dyn Iterator<Item = Duration> + Send>>);

impl std::fmt::Debug for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retries")
            .field("failing", &self.0.is_some())
            .finish()
    }
}

impl Retries {
    /// The delay before the next try.
    pub fn next(&mut self, backoff: Backoff) -> Duration {
        self.0
            .get_or_insert_with(|| Box::new(backoff.delays()))
            .next()
            .unwrap_or(backoff.max)
    }

    /// It succeeded: the next failure starts from the first delay again.
    pub fn reset(&mut self) {
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped_forever() {
        let policy = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(80),
            factor: 2,
        };
        let delays: Vec<_> = policy.delays().take(1000).collect();
        assert_eq!(delays.len(), 1000);
        // Jitter adds up to one more of the base delay.
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(160)));
        assert!(delays[999] >= Duration::from_millis(80));
    }
}
