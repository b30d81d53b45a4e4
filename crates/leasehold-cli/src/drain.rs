//! `leasehold drain` and `leasehold undrain`: an operator's maintenance switch.

use std::sync::Arc;

use leasehold::{Registry, RegistryUrl};

use crate::cli::DrainArgs;
use crate::error::{CliError, Context};

/// Drains (`drain`) or undrains `args.service/args.id` through the registry.
///
/// A format with no place for a drain marker is a usage error naming the format.
pub async fn run(
    registry: Arc<dyn Registry>,
    url: &RegistryUrl,
    args: &DrainArgs,
    drain: bool,
) -> Result<(), CliError> {
    let (service, id) = (&args.service, &args.id);
    let verb = if drain { "draining" } else { "undraining" };
    let result = if drain {
        registry.drain(service, id).await
    } else {
        registry.undrain(service, id).await
    };
    registry.shutdown().await;
    let found = match result {
        Ok(found) => found,
        Err(e) if e.is_unsupported() => {
            let format = url.param("format").unwrap_or("native");
            return Err(CliError::Usage(format!(
                "{verb} {service}/{id}: {e} (registry {url}, format {format}); \
                 drain markers exist only in the native format (other frameworks' clients would read one as a broken instance), on backends that implement them"
            )));
        }
        Err(e) => return Err(e).context(format_args!("{verb} {service}/{id}")),
    };
    match (drain, found) {
        (true, true) => println!("{service}/{id}: drained: out of every client's set until 'leasehold undrain {service} {id}'"),
        (true, false) => println!(
            "{service}/{id}: drained: no such instance is registered now; it stays out if it registers, until 'leasehold undrain {service} {id}'"
        ),
        (false, true) => println!("{service}/{id}: undrained: its owner writes it back"),
        (false, false) => {
            return Err(CliError::failed(format_args!("{verb} {service}/{id}"), "it is not drained"));
        }
    }
    Ok(())
}
