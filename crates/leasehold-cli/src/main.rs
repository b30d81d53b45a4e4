//! `leasehold`: service registration and discovery from the command line.
//!
//! ```text
//! leasehold [--registry URL] register SERVICE ADDR [--id ID] [--meta K=V]... [--weight N]
//!                                    [--zone Z] [--version V] [--ttl 10s]
//! leasehold [--registry URL] ls [SERVICE] [--json]
//! leasehold [--registry URL] watch SERVICE [--json]
//! leasehold [--registry URL] deregister SERVICE ID
//! leasehold [--registry URL] xds [--listen ADDR] [--ring-hash SERVICE[=HEADER]]...
//! leasehold demo
//! ```
//!
//! The registry comes from `--registry` or `LEASEHOLD_REGISTRY` (default `memory://`, an
//! in-process registry that lives as long as the command, so it is for the demo and
//! tests). `register` holds its registration until SIGINT or SIGTERM, then deregisters
//! and exits 0. `watch --json` prints one JSON object per line with an `event` field:
//! `snapshot` first, then `added`, `removed`, `updated`, `stale` and `live`.
//! `demo` runs echo servers and a client on an in-process registry and prints the
//! timeline of the main job: discovery, balancing, a graceful shutdown, a crash that
//! expires after its TTL, and a server joining.
//!
//! Output goes to stdout; logs go to stderr (`RUST_LOG`, default `warn`; `error` for the
//! demo, whose deliberate faults it narrates itself). Exit codes:
//! 0 success, 1 a failure at run time (such as an unreachable registry), 2 bad input (an
//! unknown flag, a malformed URL, an unknown scheme, an invalid name, address, weight,
//! label or TTL), each with a one-line message that names it.

mod cli;
mod connect;
mod demo;
mod deregister;
mod error;
mod ls;
mod register;
mod show;
mod signal;
mod watch;
mod xds;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::error::{CliError, Context};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or_default();
                let message = first.strip_prefix("error: ").unwrap_or(first);
                eprintln!("leasehold: {message} (see 'leasehold --help')");
                return ExitCode::from(2);
            }
        },
    };
    let default_level = match cli.command {
        Command::Demo => "error",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("leasehold: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leasehold: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one command. Input is validated before the registry is contacted, so bad input
/// is exit 2 whether or not the registry is reachable.
async fn run(cli: Cli) -> Result<(), CliError> {
    let connect = || async {
        connect::connect(&cli.registry)
            .await
            .context(format_args!("connecting to {}", cli.registry))
    };
    match cli.command {
        Command::Register(ref args) => {
            let (instance, options) = register::instance(args)?;
            register::run(connect().await?, instance, options).await
        }
        Command::Ls(ref args) => ls::run(connect().await?, args.service.clone(), args.json).await,
        Command::Watch(ref args) => watch::run(connect().await?, args.service.clone(), args.json).await,
        Command::Deregister(ref args) => {
            deregister::run(connect().await?, args.service.clone(), args.id.clone()).await
        }
        Command::Xds(ref args) => xds::run(connect().await?, args).await,
        Command::Demo => demo::run().await,
    }
}
