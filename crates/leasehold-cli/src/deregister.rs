//! `leasehold deregister`: an operator's removal of one instance.

use std::sync::Arc;
use std::time::Duration;

use leasehold::{InstanceId, Registry, ServiceName, WatchOptions};

use crate::error::{CliError, Context};

/// How long to watch for a live owner writing the instance back.
const WRITE_BACK: Duration = Duration::from_secs(1);

/// Removes `service/id`. Fails (exit 1) when there is no such instance, so a typo does
/// not pass silently. An instance whose owner is alive comes back at once: that is
/// reported on stderr, pointing to `drain`.
pub async fn run(registry: Arc<dyn Registry>, service: ServiceName, id: InstanceId) -> Result<(), CliError> {
    let discovery = registry
        .watch(&service, WatchOptions::default())
        .await
        .context(format_args!("watching {service}"))?;
    let removed = registry
        .deregister(&service, &id)
        .await
        .context(format_args!("deregistering {service}/{id}"))?;
    if !removed {
        registry.shutdown().await;
        return Err(CliError::failed(
            format_args!("deregistering {service}/{id}"),
            "no such instance",
        ));
    }
    println!("{service}/{id}: deregistered");
    let gone = discovery
        .wait_for(WRITE_BACK * 5, |s| s.get(&id).is_none())
        .await
        .is_some();
    let back = gone
        && discovery
            .wait_for(WRITE_BACK, |s| s.get(&id).is_some())
            .await
            .is_some();
    if back || !gone {
        eprintln!(
            "leasehold: warning: {service}/{id} is live: its owner wrote it back; \
             to take it out of rotation use 'leasehold drain {service} {id}'"
        );
    }
    drop(discovery);
    registry.shutdown().await;
    Ok(())
}
