//! `leasehold xds`: serves the registry over xDS, so gRPC clients in any language (and
//! Envoy) balance over it by resolving `xds:///SERVICE`.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use leasehold::{Registry, ServiceName};
use leasehold_xds::{XdsOptions, XdsServer};
use tokio::net::TcpListener;

use crate::error::{CliError, Context};
use crate::signal::Shutdown;

/// Arguments of `leasehold xds`.
#[derive(Debug, Args)]
pub struct XdsArgs {
    /// The address to serve the Aggregated Discovery Service on; port 0 picks a free one
    /// (printed on start).
    #[arg(long, default_value = "127.0.0.1:18000", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Balance SERVICE by ring hash (consistent hashing), on the value of the request
    /// header HEADER if given, instead of round robin; repeat for more services.
    #[arg(long = "ring-hash", value_name = "SERVICE[=HEADER]", value_parser = parse_ring_hash)]
    pub ring_hash: Vec<(ServiceName, Option<String>)>,
}

/// Serves until SIGINT or SIGTERM; prints `serving xDS on ADDR` once it listens.
pub async fn run(registry: Arc<dyn Registry>, args: &XdsArgs) -> Result<(), CliError> {
    let mut shutdown = Shutdown::install().context("installing signal handlers")?;
    let options = args
        .ring_hash
        .iter()
        .fold(XdsOptions::default(), |options, (service, header)| {
            options.ring_hash(service.clone(), header.clone())
        });
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::failed(format_args!("listening on {}", args.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::failed(format_args!("listening on {}", args.listen), e))?;
    println!("serving xDS on {addr}");
    let served = XdsServer::new(registry.clone(), options)
        .serve(listener, async move {
            let signal = shutdown.recv().await;
            tracing::info!(signal, "stopping the xDS server");
        })
        .await;
    registry.shutdown().await;
    served.map_err(|e| CliError::failed("serving xDS", e))
}

/// Parses a `--ring-hash SERVICE[=HEADER]`.
fn parse_ring_hash(s: &str) -> Result<(ServiceName, Option<String>), String> {
    let (service, header) = match s.split_once('=') {
        Some((_, "")) => return Err("expected SERVICE or SERVICE=HEADER with a non-empty HEADER".to_owned()),
        Some((service, header)) => (service, Some(header.to_ascii_lowercase())),
        None => (s, None),
    };
    let service = ServiceName::new(service).map_err(|e| e.to_string())?;
    Ok((service, header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_hash_takes_a_service_and_an_optional_header() {
        let greeter = ServiceName::new("greeter").unwrap();
        assert_eq!(parse_ring_hash("greeter").unwrap(), (greeter.clone(), None));
        assert_eq!(
            parse_ring_hash("greeter=X-User").unwrap(),
            (greeter, Some("x-user".to_owned()))
        );
        assert!(parse_ring_hash("greeter=").is_err());
        assert!(parse_ring_hash("not a service").is_err());
    }
}
