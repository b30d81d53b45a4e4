//! The library example of the README, kept identical to it by `tests/readme.rs`.

use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::{Change, Instance, RegisterOptions, Registry, ServiceName, WatchOptions};

#[tokio::main]
async fn main() -> leasehold::Result<()> {
    // In production: leasehold_etcd::EtcdRegistry or leasehold_zookeeper::ZkRegistry.
    let registry = MemoryRegistry::new();

    // A server registers itself. The handle keeps the lease alive and writes the instance
    // again after any fault; dropping it deregisters at once.
    let instance = Instance::builder("echo", "10.0.0.5:7001")
        .id("echo-1")
        .metadata("color", "blue")
        .build()?;
    let registration = registry
        .register(instance, RegisterOptions::ttl(Duration::from_secs(10)))
        .await?;

    // A client follows the service: a cache that the registry's watch keeps current.
    let discovery = registry
        .watch(&ServiceName::new("echo")?, WatchOptions::default())
        .await?;
    for instance in discovery.snapshot().instances().iter() {
        println!("{} at {}", instance.id(), instance.addr());
    }

    // Typed changes for anyone who subscribes.
    let mut changes = discovery.changes();
    registration.deregister().await?;
    while let Some(change) = changes.next().await {
        match change {
            Change::Added(instance) => println!("+ {}", instance.addr()),
            Change::Removed(instance) => {
                println!("- {}", instance.addr());
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
