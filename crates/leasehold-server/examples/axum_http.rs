//! An axum HTTP server that registers itself in etcd in Kratos' format, as a Kratos HTTP
//! server does (`http://host:port` endpoints), and leaves it cleanly.
//!
//! Binds a port on loopback, serves `GET /hello`, and registers as `hello` once it
//! serves. On Ctrl-C or SIGTERM it deregisters, keeps answering for a grace period while
//! clients move away, then drains the requests in flight and exits.
//!
//! ```text
//! cargo run -p leasehold-server --features axum --example axum_http -- 'etcd://127.0.0.1:2379?format=kratos&scheme=http'
//! curl http://127.0.0.1:PORT/hello
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use leasehold::{BoxError, Instance, RegistryUrl};
use leasehold_etcd::EtcdRegistry;
use leasehold_server::{shutdown_signal, Serve};

/// How long the server keeps answering after it deregistered.
pub const GRACE: Duration = Duration::from_secs(3);

/// Serves `GET /hello` registered in the etcd at `registry` until `shutdown` resolves.
pub async fn run(registry: &str, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
    let registry = Arc::new(EtcdRegistry::connect(&RegistryUrl::parse(registry)?).await?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = listener.local_addr()?.to_string();
    let app = axum::Router::new().route(
        "/hello",
        get(move || {
            let server = server.clone();
            async move { format!("hello from {server}\n") }
        }),
    );
    Serve::new(registry)
        .grace(GRACE)
        .axum(
            app,
            listener,
            |addr| Instance::builder("hello", addr.to_string()).build(),
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
        .unwrap_or_else(|| "etcd://127.0.0.1:2379?format=kratos&scheme=http".into());
    run(&registry, shutdown_signal()).await
}
