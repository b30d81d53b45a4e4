//! Polling a server until it answers.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::process::Slot;
use crate::Result;

/// How long a server gets to become ready after a start, restart or wipe. Generous: a
/// loaded CI machine can take many seconds to start a JVM.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one probe (a health request, a `srvr`) may take before it counts as failed.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `probe` until it succeeds. Fails early, with the log tail, if the process dies,
/// and after `timeout` with the last probe's error and the log tail.
pub(crate) async fn wait_ready<F, Fut>(slot: &Slot, timeout: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        slot.check_alive()?;
        let last_probe = match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            slot.check_alive()?;
            return Err(slot.not_ready(timeout, last_probe));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
