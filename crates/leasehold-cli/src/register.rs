//! `leasehold register`: hold one registration until asked to stop.

use std::sync::Arc;
use std::time::Duration;

use leasehold::codec::KeyContext;
use leasehold::formats::{Format, RegistryKind};
use leasehold::health::{Check, HealthGate};
use leasehold::{Instance, RegisterOptions, RegistrationState, Registry, RegistryUrl};

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

/// A check of the service the registration is gated on.
pub struct HealthCheck {
    check: Box<dyn Check>,
    interval: Duration,
}

/// The health check `--check` names, if any.
pub fn check(args: &RegisterArgs) -> Result<Option<HealthCheck>, CliError> {
    let Some(url) = &args.check else {
        return Ok(None);
    };
    let check =
        leasehold_tower::probe::from_url(url).map_err(|e| CliError::Usage(format!("--check: {e}")))?;
    Ok(Some(HealthCheck {
        check,
        interval: args.check_interval,
    }))
}

/// What the registry's format would drop of the fields given on the command line, as
/// warnings: the instance is written and read back through the format's codec, and
/// every given field that does not come back is named.
pub fn dropped_fields(url: &RegistryUrl, args: &RegisterArgs, instance: &Instance) -> Vec<String> {
    let kind = RegistryKind::from_scheme(&url.scheme).unwrap_or(RegistryKind::Memory);
    let format = url.param("format").unwrap_or("native");
    let Ok(codec) = Format::from_name(format).and_then(|f| f.codec_for(kind)) else {
        return Vec::new(); // connecting reports the bad format
    };
    let key = codec.instance_key(instance, &KeyContext::lease(0x1eaf));
    let back = codec
        .encode(instance)
        .ok()
        .and_then(|value| codec.decode(instance.service(), &key, &value).ok());
    let mut lost = Vec::new();
    let differs = |f: &dyn Fn(&Instance) -> bool| back.as_ref().is_none_or(|b| !f(b));
    if args.id.is_some() && differs(&|b| b.id() == instance.id()) {
        lost.push("--id");
    }
    if !args.metadata.is_empty() && differs(&|b| b.metadata() == instance.metadata()) {
        lost.push("--meta");
    }
    if args.weight != 1 && differs(&|b| b.weight() == instance.weight()) {
        lost.push("--weight");
    }
    if args.zone.is_some() && differs(&|b| b.zone() == instance.zone()) {
        lost.push("--zone");
    }
    if args.version.is_some() && differs(&|b| b.version() == instance.version()) {
        lost.push("--version");
    }
    if lost.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "the {format} format cannot carry {}: other clients will not see {}",
        lost.join(", "),
        if lost.len() == 1 { "it" } else { "them" }
    )]
}

/// Registers `instance`, gates it on `check` if there is one, prints every state
/// change, and deregisters on SIGINT or SIGTERM.
pub async fn run(
    registry: Arc<dyn Registry>,
    instance: Instance,
    options: RegisterOptions,
    check: Option<HealthCheck>,
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
    let _gate = check.map(|HealthCheck { check, interval }| {
        println!(
            "{name}: checking {check:?} every {}",
            humantime::format_duration(interval)
        );
        HealthGate::new(check)
            .interval(interval)
            .spawn(registration.clone())
    });
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
        RegistrationState::Paused => "paused (out of the registry)",
        RegistrationState::Conflict => "conflict (another client holds this id)",
        RegistrationState::Drained => "drained by an operator",
        RegistrationState::Deregistered => "deregistered",
    }
}
