//! The command line: commands, arguments and their help texts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leasehold::{Address, InstanceId, RegistryUrl, ServiceName};

/// Service registration and discovery from the command line.
///
/// Registers instances under a lease kept alive for as long as the command runs, lists
/// and watches the instances of a service, drains and removes them, and serves a live
/// dashboard. `leasehold demo` shows the whole job end to end on an in-process registry.
#[derive(Debug, Parser)]
#[command(name = "leasehold", version)]
pub struct Cli {
    /// The registry, required by every command but `demo`:
    /// `etcd://HOST:PORT[,HOST:PORT...][/ROOT]` (etcd v3, e.g. etcd://127.0.0.1:2379),
    /// `zk://HOST:PORT[,...][/ROOT]` (ZooKeeper), or `memory://[NAME]` (in-process: it
    /// lives and dies with this one command). Add `?format=go-kit` (go-zero,
    /// etcd-naming, curator, kratos) to read and write another framework's keys.
    #[arg(long, global = true, env = "LEASEHOLD_REGISTRY", value_name = "URL")]
    pub registry: Option<RegistryUrl>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register an instance and hold it until SIGINT or SIGTERM, printing each state
    /// change; then deregister it and exit 0.
    Register(RegisterArgs),
    /// List the services, or the instances of SERVICE.
    Ls(LsArgs),
    /// Print the instances of SERVICE, then every change as it happens, until SIGINT or
    /// SIGTERM.
    Watch(WatchArgs),
    /// Remove the instance ID of SERVICE, whoever registered it. A live owner writes it
    /// back at once: use `drain` to take a live instance out of rotation.
    Deregister(DeregisterArgs),
    /// Serve the registry over xDS (the Aggregated Discovery Service) until SIGINT or
    /// SIGTERM, so gRPC clients in any language balance over it via `xds:///SERVICE`.
    Xds(crate::xds::XdsArgs),
    /// Take the instance ID of SERVICE out of every client's set and keep it out (its
    /// owner does not write it back) until `undrain`. Native format only.
    Drain(DrainArgs),
    /// Put a drained instance back: its owner writes it again.
    Undrain(DrainArgs),
    /// Serve a live web dashboard of the registry, with `/metrics`.
    Ui(UiArgs),
    /// Run echo servers and a client on an in-process registry and print the timeline:
    /// discovery, a graceful shutdown, a crash that expires after its TTL, a new server
    /// joining. Takes about ten seconds.
    Demo,
}

/// Arguments of `leasehold register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The service name: ASCII letters, digits, '.', '_', '-'.
    pub service: ServiceName,
    /// The address clients use: `host:port` or a URI such as `http://host:port`.
    pub addr: Address,
    /// The instance id, unique within the service [default: random].
    #[arg(long)]
    pub id: Option<InstanceId>,
    /// A metadata label; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub metadata: Vec<(String, String)>,
    /// The relative share of traffic this instance takes; at least 1.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub weight: u32,
    /// The zone (or rack, or region) the instance runs in.
    #[arg(long)]
    pub zone: Option<String>,
    /// The version of the service this instance runs.
    #[arg(long)]
    pub version: Option<String>,
    /// How long the registry keeps the instance after the last keepalive if this process
    /// dies without deregistering; at least 1s.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// A check of the service itself: `http://HOST:PORT/PATH` (a GET answered 2xx),
    /// `grpc://HOST:PORT[/SERVICE]` (the gRPC health protocol answering SERVING) or
    /// `tcp://HOST:PORT` (a connect). While it fails the instance is paused: out of the
    /// registry until it passes again.
    #[arg(long, value_name = "URL")]
    pub check: Option<String>,
    /// How often the check runs.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = humantime::parse_duration, requires = "check")]
    pub check_interval: Duration,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Where a long-running command serves its metrics.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Serve metrics in Prometheus text format at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Arguments of `leasehold ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The service whose instances to list; without it, the services are listed.
    pub service: Option<ServiceName>,
    /// Print one JSON array instead of a table: of instances, or of services as
    /// `{"service": NAME, "instances": COUNT}`.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `leasehold watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The service to follow.
    pub service: ServiceName,
    /// Print one JSON object per line, each with an `event` field: `snapshot`, then
    /// `added`, `removed`, `updated`, `stale` or `live`, and an `at` timestamp.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Arguments of `leasehold deregister`.
#[derive(Debug, Args)]
pub struct DeregisterArgs {
    /// The service of the instance.
    pub service: ServiceName,
    /// The id of the instance.
    pub id: InstanceId,
}

/// Arguments of `leasehold drain` and `leasehold undrain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The service of the instance.
    pub service: ServiceName,
    /// The id of the instance.
    pub id: InstanceId,
}

/// Arguments of `leasehold ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// The address to serve the dashboard on; loopback unless you mean to expose it.
    #[arg(long, default_value = "127.0.0.1:8470", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Enable the drain and undrain buttons (off by default: the page is read-only).
    #[arg(long)]
    pub allow_writes: bool,
}

/// Parses a `--meta KEY=VALUE` label.
fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE with a non-empty KEY".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn metadata_needs_a_key_and_an_equals_sign() {
        assert_eq!(parse_meta("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_meta("a=").unwrap(), ("a".into(), "".into()));
        assert!(parse_meta("=b").is_err());
        assert!(parse_meta("ab").is_err());
    }
}
