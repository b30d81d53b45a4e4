//! `leasehold`: service registration and discovery from the command line.
//!
//! ```text
//! leasehold --registry URL register SERVICE ADDR [--id ID] [--meta K=V]... [--weight N]
//!                   [--zone Z] [--version V] [--ttl 10s] [--check URL] [--check-interval 2s]
//!                   [--metrics-addr ADDR]
//! leasehold --registry URL ls [SERVICE] [--json]
//! leasehold --registry URL watch SERVICE [--json] [--metrics-addr ADDR]
//! leasehold --registry URL deregister SERVICE ID
//! leasehold --registry URL drain SERVICE ID
//! leasehold --registry URL undrain SERVICE ID
//! leasehold --registry URL ui [--listen 127.0.0.1:8470] [--allow-writes]
//! leasehold --registry URL xds [--listen ADDR] [--ring-hash SERVICE[=HEADER]]...
//! leasehold demo
//! ```
//!
//! The registry comes from `--registry` or `LEASEHOLD_REGISTRY`; without either, every
//! command but `demo` stops with a usage error that shows the URL forms. There is no
//! silent default: a default etcd address would register and deregister on whatever
//! cluster happens to listen there, and an in-process default would print "registered"
//! into a registry no other process can see. `register` holds its registration until
//! SIGINT or SIGTERM, then deregisters and exits 0. `watch --json` prints one JSON
//! object per line with an `event` field (`snapshot` first, then `added`, `removed`,
//! `updated`, `stale` and `live`) and an `at` timestamp (RFC 3339, UTC); its text lines
//! start with the same timestamp.
//! `demo` runs echo servers and a client on an in-process registry and prints the
//! timeline of the main job: discovery, balancing, a graceful shutdown, a crash that
//! expires after its TTL, and a server joining.
//!
//! Status goes to stdout; logs and warnings go to stderr (`RUST_LOG`, default `warn`; `error` for the
//! demo, whose deliberate faults it narrates itself). Exit codes:
//! 0 success, 1 a failure at run time (such as an unreachable registry), 2 bad input (an
//! unknown flag, a malformed URL, an unknown scheme, an invalid name, address, weight,
//! label or TTL), each with a one-line message that names it.

mod cli;
mod connect;
mod demo;
mod deregister;
mod drain;
mod error;
mod ls;
mod metrics_server;
mod register;
mod show;
mod signal;
mod ui;
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
                eprintln!("leasehold: {}", usage_line(&e.render().to_string()));
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

/// clap's error on one line: the error with what it lists (the missing arguments),
/// then its tips ("a similar argument exists: '--json'"), which name the fix for a
/// typo, then where the help is.
fn usage_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    for listed in lines.by_ref().map(str::trim).take_while(|l| !l.is_empty()) {
        line.push_str(&format!(" {listed}"));
    }
    for tip in lines.map(str::trim).filter(|l| l.starts_with("tip:")) {
        line.push_str(&format!("; {tip}"));
    }
    line.push_str(" (see 'leasehold --help')");
    line
}

/// Runs one command. Input is validated before the registry is contacted, so bad input
/// is exit 2 whether or not the registry is reachable.
async fn run(cli: Cli) -> Result<(), CliError> {
    let url = || {
        cli.registry
            .as_ref()
            .ok_or_else(|| CliError::Usage(connect::MISSING_REGISTRY.to_owned()))
    };
    let connect = || async {
        let url = url()?;
        connect::connect(url)
            .await
            .context(format_args!("connecting to {url}"))
    };
    match cli.command {
        Command::Register(ref args) => {
            let (instance, options) = register::instance(args)?;
            let check = register::check(args)?;
            for warning in register::dropped_fields(url()?, args, &instance) {
                eprintln!("leasehold: warning: {warning}");
            }
            metrics_server::serve(args.metrics.metrics_addr).await?;
            register::run(connect().await?, instance, options, check).await
        }
        Command::Ls(ref args) => ls::run(connect().await?, args.service.clone(), args.json).await,
        Command::Watch(ref args) => {
            url()?;
            metrics_server::serve(args.metrics.metrics_addr).await?;
            watch::run(connect().await?, args.service.clone(), args.json).await
        }
        Command::Deregister(ref args) => {
            deregister::run(connect().await?, args.service.clone(), args.id.clone()).await
        }
        Command::Xds(ref args) => xds::run(connect().await?, args).await,
        Command::Drain(ref args) => drain::run(connect().await?, url()?, args, true).await,
        Command::Undrain(ref args) => drain::run(connect().await?, url()?, args, false).await,
        Command::Ui(ref args) => ui::run(connect().await?, args).await,
        Command::Demo => demo::run().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_keep_clap_tips_on_the_one_line() {
        for (args, tip) in [
            (&["leasehold", "lss"][..], "'ls'"),
            (&["leasehold", "ls", "--jsno"], "'--json'"),
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            let line = usage_line(&e.render().to_string());
            assert!(line.contains("tip:") && line.contains(tip), "{args:?}: {line}");
            assert_eq!(line.lines().count(), 1, "{line}");
        }
    }
}
