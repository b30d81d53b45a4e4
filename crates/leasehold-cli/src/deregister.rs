//! `leasehold deregister`: an operator's removal of one instance.

use std::sync::Arc;

use leasehold::{InstanceId, Registry, ServiceName};

use crate::error::{CliError, Context};

/// Removes `service/id`. Fails (exit 1) when there is no such instance, so a typo does
/// not pass silently.
pub async fn run(registry: Arc<dyn Registry>, service: ServiceName, id: InstanceId) -> Result<(), CliError> {
    let removed = registry
        .deregister(&service, &id)
        .await
        .context(format_args!("deregistering {service}/{id}"))?;
    registry.shutdown().await;
    if removed {
        println!("{service}/{id}: deregistered");
        Ok(())
    } else {
        Err(CliError::failed(
            format_args!("deregistering {service}/{id}"),
            "no such instance",
        ))
    }
}
