//! `leasehold ls`: the services, or the instances of one.

use std::sync::Arc;

use comfy_table::{presets, Table};
use leasehold::{Registry, ServiceName};
use serde_json::Value;

use crate::error::{CliError, Context};
use crate::show;

/// Prints the instances of `service`, or every service with its instance count.
pub async fn run(
    registry: Arc<dyn Registry>,
    service: Option<ServiceName>,
    json: bool,
) -> Result<(), CliError> {
    match service {
        Some(service) => {
            let instances = registry
                .list(&service)
                .await
                .context(format_args!("listing the instances of {service}"))?;
            if json {
                println!("{}", Value::Array(instances.iter().map(show::json).collect()));
            } else if instances.is_empty() {
                println!("no instances of {service}");
            } else {
                println!("{}", show::table(&instances));
            }
        }
        None => {
            let services = registry.list_services().await.context("listing the services")?;
            if json {
                let names = services.iter().map(|s| Value::from(s.as_str())).collect();
                println!("{}", Value::Array(names));
            } else if services.is_empty() {
                println!("no services");
            } else {
                let mut table = Table::new();
                table.load_preset(presets::NOTHING);
                table.set_header(["SERVICE", "INSTANCES"]);
                for service in services {
                    let count = registry
                        .list(&service)
                        .await
                        .context(format_args!("listing the instances of {service}"))?
                        .len();
                    table.add_row([service.to_string(), count.to_string()]);
                }
                println!("{table}");
            }
        }
    }
    registry.shutdown().await;
    Ok(())
}
