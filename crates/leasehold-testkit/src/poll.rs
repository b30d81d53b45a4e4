//! Waiting for a condition in a test: polling with a generous bound, never a sleep that
//! hopes the condition holds by then.

use std::future::Future;
use std::time::Duration;

use leasehold::{Registration, RegistrationState};
use tokio::time::Instant;

/// How often [`eventually`] checks.
const POLL: Duration = Duration::from_millis(50);

/// Polls `check` until it holds; panics naming `what` once `within` has passed.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits up to `within` for `registration` to be in `state`; panics naming `what` and
/// the state it is in otherwise.
pub async fn reaches(registration: &Registration, state: RegistrationState, within: Duration, what: &str) {
    assert!(
        registration.wait_for(state, within).await,
        "{what}: not {state:?} after {within:?}, is {:?}",
        registration.state()
    );
}
