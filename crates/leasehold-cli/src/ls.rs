//! `leasehold ls`: the services, or the instances of one.

use std::sync::Arc;

use comfy_table::{presets, Table};
use leasehold::{Instance, Registry, ServiceName, WatchOptions};
use serde_json::{json, Value};

use crate::error::{CliError, Context};
use crate::show;

/// Prints the instances of `service`, or every service with its instance count. Values
/// that do not decode are skipped; how many is said on stderr (each one's reason is
/// logged there as a warning).
pub async fn run(
    registry: Arc<dyn Registry>,
    service: Option<ServiceName>,
    json: bool,
) -> Result<(), CliError> {
    match service {
        Some(service) => {
            let instances = listing(&*registry, &service).await?;
            if json {
                println!(
                    "{}",
                    Value::Array(instances.iter().map(|i| show::json(i)).collect())
                );
            } else if instances.is_empty() {
                println!("no instances of {service}");
            } else {
                println!("{}", show::table(instances.iter().map(|i| &**i)));
            }
        }
        None => {
            let services = registry.list_services().await.context("listing the services")?;
            let mut counts = Vec::with_capacity(services.len());
            for service in services {
                let count = listing(&*registry, &service).await?.len();
                counts.push((service, count));
            }
            if json {
                let rows = counts
                    .iter()
                    .map(|(service, count)| json!({"service": service.as_str(), "instances": count}))
                    .collect();
                println!("{}", Value::Array(rows));
            } else if counts.is_empty() {
                println!("no services");
            } else {
                let mut table = Table::new();
                table.load_preset(presets::NOTHING);
                table.set_header(["SERVICE", "INSTANCES"]);
                for (service, count) in counts {
                    table.add_row([service.to_string(), count.to_string()]);
                }
                println!("{table}");
            }
        }
    }
    registry.shutdown().await;
    Ok(())
}

/// The instances of `service` as a watcher sees them, sorted by id; says on stderr how
/// many values were skipped.
async fn listing(registry: &dyn Registry, service: &ServiceName) -> Result<Vec<Arc<Instance>>, CliError> {
    let discovery = registry
        .watch(service, WatchOptions::default())
        .await
        .context(format_args!("listing the instances of {service}"))?;
    let skipped = discovery.skipped();
    if skipped > 0 {
        let what = if skipped == 1 {
            "value that does"
        } else {
            "values that do"
        };
        eprintln!(
            "leasehold: {service}: skipped {skipped} {what} not decode in this registry's format (the warnings above say why)"
        );
    }
    Ok(discovery.snapshot().instances().to_vec())
}
