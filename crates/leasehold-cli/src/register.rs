//! `leasehold register`: hold one registration until asked to stop.

use std::sync::Arc;

use leasehold::{Instance, RegisterOptions, RegistrationState, Registry};

use crate::cli::RegisterArgs;
use crate::error::{CliError, Context};
use crate::signal::Shutdown;

/// The instance and options `args` describe, validated before any registry is contacted.
pub fn instance(args: &RegisterArgs) -> Result<(Instance, RegisterOptions), CliError> {
    let mut builder = Instance::builder(args.service.as_str(), args.addr.as_str())
        .weight(args.weight)
        .metadata_map(args.metadata.iter().cloned().collect());
    if let Some(id) = &args.id {
        builder = builder.id(id.as_str());
    }
    if let Some(zone) = &args.zone {
        builder = builder.zone(zone);
    }
    if let Some(version) = &args.version {
        builder = builder.version(version);
    }
    let options = RegisterOptions::ttl(args.ttl);
    options.validate()?;
    Ok((builder.build()?, options))
}

/// Registers `instance`, prints every state change, and deregisters on SIGINT or
/// SIGTERM.
pub async fn run(
    registry: Arc<dyn Registry>,
    instance: Instance,
    options: RegisterOptions,
) -> Result<(), CliError> {
    let mut shutdown = Shutdown::install().context("installing signal handlers")?;
    let name = format!("{}/{}", instance.service(), instance.id());
    println!(
        "{name}: registering {} with ttl {}",
        instance.addr(),
        humantime::format_duration(options.ttl)
    );
    let registration = registry
        .register(instance, options)
        .await
        .context(format_args!("registering {name}"))?;
    let mut states = registration.states();
    let mut shown = *states.borrow_and_update();
    println!("{name}: {}", state_name(shown));
    loop {
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = *states.borrow_and_update();
                if state != shown {
                    shown = state;
                    println!("{name}: {}", state_name(state));
                }
                if state == RegistrationState::Deregistered {
                    break;
                }
            }
            signal = shutdown.recv() => {
                println!("{name}: {signal}: deregistering");
                registration
                    .deregister()
                    .await
                    .context(format_args!("deregistering {name}"))?;
                break;
            }
        }
    }
    if shown != RegistrationState::Deregistered {
        println!("{name}: {}", state_name(registration.state()));
    }
    registry.shutdown().await;
    Ok(())
}

fn state_name(state: RegistrationState) -> &'static str {
    match state {
        RegistrationState::Registered => "registered",
        RegistrationState::Recovering => "recovering",
        RegistrationState::Paused => "paused",
        RegistrationState::Conflict => "conflict (another client holds this id)",
        RegistrationState::Drained => "drained by an operator",
        RegistrationState::Deregistered => "deregistered",
    }
}
