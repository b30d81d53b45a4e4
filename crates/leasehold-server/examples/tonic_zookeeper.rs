//! A tonic Greeter server that registers itself in ZooKeeper and leaves it cleanly.
//!
//! Binds a port on loopback, serves, and registers as `greeter` once it serves. On Ctrl-C
//! or SIGTERM it deregisters, keeps answering for a grace period while clients move to
//! other instances, then drains the calls in flight and exits.
//!
//! ```text
//! cargo run -p leasehold-server --example tonic_zookeeper -- zk://127.0.0.1:2181/leasehold
//! leasehold --registry zk://127.0.0.1:2181/leasehold ls greeter   # in another shell
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use leasehold::{BoxError, Instance, RegistryUrl};
use leasehold_greeter::Hello;
use leasehold_server::{shutdown_signal, Serve};
use leasehold_zookeeper::ZkRegistry;

/// How long the server keeps answering after it deregistered.
pub const GRACE: Duration = Duration::from_secs(3);

/// Serves the Greeter registered in the ZooKeeper at `registry` until `shutdown` resolves.
pub async fn run(registry: &str, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
    let registry = Arc::new(ZkRegistry::connect(&RegistryUrl::parse(registry)?)?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let greeter = Hello::new(listener.local_addr()?.to_string()).into_service();
    let router = tonic::transport::Server::builder().add_service(greeter);
    Serve::new(registry)
        .grace(GRACE)
        .tonic(
            router,
            listener,
            |addr| Instance::builder("greeter", addr.to_string()).build(),
            shutdown,
        )
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let registry = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "zk://127.0.0.1:2181/leasehold".into());
    run(&registry, shutdown_signal()).await
}
