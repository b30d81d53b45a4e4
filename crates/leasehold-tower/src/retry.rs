//! When a failed request is sent again, to another instance.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::TpsBudget;

/// Marks a request as safe to send more than once (idempotent), so a failed attempt is
/// retried on another instance. Insert it in the request's extensions: with tonic,
/// `request.extensions_mut().insert(RetrySafe)` on the `tonic::Request`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetrySafe;

/// Which requests are safe to retry.
pub type SafeToRetry = Arc<dyn Fn(&http::request::Parts) -> bool + Send + Sync>;

/// Retries: a deadline, a maximum number of attempts and a retry budget, for requests the
/// caller marks safe.
///
/// A retry goes to an instance the request has not tried yet when there is one. The
/// request's body is buffered to be sent again, so only requests that are safe to retry
/// are buffered; streaming calls should not be marked. A failure is a connection error or
/// a response the [`classifier`](crate::BalanceOptions::classifier) calls one.
///
/// Any request that was never sent (its client could not be made or was not ready, its
/// connection was refused, or the client gave it back unread) goes to another instance,
/// up to `max_attempts`, whether marked safe or not, without drawing on the budget:
/// nothing reached a server. [`disabled`](RetryPolicy::disabled) turns that off too.
#[derive(Clone)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts per request, the first included; 1 turns retries off. Default 3.
    pub max_attempts: u32,
    /// The time for all attempts together; `None` (the default) leaves deadlines to the
    /// caller (such as a gRPC timeout).
    pub deadline: Option<Duration>,
    /// The retry budget: retries may add at most this fraction to the requests that
    /// may be retried (sent over the last `budget_ttl`), plus `budget_min_per_sec`, as
    /// Finagle's and tower's `TpsBudget`. Retries of requests that were never sent do
    /// not draw on it. Default 0.2.
    pub budget_ratio: f32,
    /// Retries always allowed per second, so a quiet client can still retry. Default 10.
    pub budget_min_per_sec: u32,
    /// How long a request counts toward the budget. Default 10 s.
    pub budget_ttl: Duration,
    /// Which requests are safe to retry. Default: those carrying [`RetrySafe`].
    pub safe: SafeToRetry,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .field("budget_ratio", &self.budget_ratio)
            .field("budget_min_per_sec", &self.budget_min_per_sec)
            .field("budget_ttl", &self.budget_ttl)
            .finish_non_exhaustive()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            deadline: None,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_ttl: Duration::from_secs(10),
            safe: Arc::new(|parts| parts.extensions.get::<RetrySafe>().is_some()),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt per request.
    pub fn disabled() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Sets the attempts per request (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the deadline for all attempts together.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the retry budget: a fraction of requests (0 to 1000; not a number counts as
    /// 0), plus a floor per second.
    pub fn budget(mut self, ratio: f32, min_per_sec: u32) -> Self {
        self.budget_ratio = ratio.clamp(0.0, 1000.0);
        self.budget_min_per_sec = min_per_sec;
        self
    }

    /// Sets which requests are safe to retry, such as by gRPC method path.
    pub fn safe_if(mut self, safe: impl Fn(&http::request::Parts) -> bool + Send + Sync + 'static) -> Self {
        self.safe = Arc::new(safe);
        self
    }

    /// Treats every request as safe to retry: for services whose calls are all
    /// idempotent and unary.
    pub fn retry_all(self) -> Self {
        self.safe_if(|_| true)
    }

    /// The budget these settings describe, brought into the ranges `TpsBudget` asserts
    /// (its fields are public, so any value can arrive here): ratio 0 to 1000 (NaN: 0),
    /// fewer than `i32::MAX` retries per second, a ttl of 1 to 60 s.
    pub(crate) fn make_budget(&self) -> TpsBudget {
        let ratio = if self.budget_ratio.is_nan() {
            0.0
        } else {
            self.budget_ratio.clamp(0.0, 1000.0)
        };
        TpsBudget::new(
            self.budget_ttl
                .clamp(Duration::from_secs(1), Duration::from_secs(60)),
            self.budget_min_per_sec.min(i32::MAX as u32 - 1),
            ratio,
        )
    }
}
