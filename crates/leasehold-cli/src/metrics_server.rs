//! Serving leasehold's metrics in Prometheus text format at `/metrics`.
//!
//! The library records through the `metrics` facade (the names are in
//! `leasehold::metrics`); this installs the Prometheus recorder for the process and
//! serves what it renders.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::{CliError, Context};

/// Buckets for the `_seconds` histograms: a keepalive answer in a millisecond up to a
/// recovery of minutes.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets for batch sizes.
const SIZES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0];

/// The process's Prometheus recorder, installed on first use.
pub fn handle() -> Result<PrometheusHandle, CliError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let failed =
        |e: metrics_exporter_prometheus::BuildError| CliError::failed("installing the metrics recorder", e);
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .map_err(failed)?
        .set_buckets_for_metric(Matcher::Full(leasehold::metrics::WRITE_BATCH_SIZE.into()), SIZES)
        .map_err(failed)?
        .install_recorder()
        .map_err(failed)?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// A router serving `GET /metrics`.
pub fn routes(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()) }
        }),
    )
}

/// Serves `/metrics` on `addr` in the background when one is given, and says where on
/// stderr.
pub async fn serve(addr: Option<SocketAddr>) -> Result<(), CliError> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let routes = routes(handle()?);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .context(format_args!("listening on {addr} for --metrics-addr"))?;
    let bound = listener.local_addr().context("reading the metrics address")?;
    eprintln!("leasehold: metrics at http://{bound}/metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, routes).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}
