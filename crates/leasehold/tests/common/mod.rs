//! Helpers shared by the in-process registry's tests: the echo service, its instances,
//! and what a registry lists of it.

#![allow(dead_code)]

use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::{Instance, RegisterOptions, Registration, Registry, ServiceName};

/// Generous: tests wait for the expected state and never assert on speed.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn echo() -> ServiceName {
    ServiceName::new("echo").unwrap()
}

/// The echo instance `id`, at a fixed loopback address.
pub fn instance(id: &str) -> Instance {
    Instance::builder("echo", "127.0.0.1:7001")
        .id(id)
        .build()
        .unwrap()
}

/// Registers the echo instance `id` on `registry` with the default options.
pub async fn register(registry: &MemoryRegistry, id: &str) -> Registration {
    registry
        .register(instance(id), RegisterOptions::default())
        .await
        .unwrap()
}

/// The ids of the echo instances `registry` lists, in its order.
pub async fn listed_ids(registry: &MemoryRegistry) -> Vec<String> {
    registry
        .list(&echo())
        .await
        .unwrap()
        .iter()
        .map(|i| i.id().to_string())
        .collect()
}
