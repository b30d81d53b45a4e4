//! The HTTP and gRPC probes against real servers whose health flips, and a registration
//! gated on each: out of the registry while its service is unhealthy, back after; and
//! failures that say whether the endpoint answered, was unreachable or hung.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use leasehold::health::{Check, HealthGate};
use leasehold::memory::MemoryRegistry;
use leasehold::{Instance, RegisterOptions, RegistrationState, Registry, ServiceName, WatchOptions};
use leasehold_tower::probe::{from_url, GrpcCheck, HttpCheck, ProbeError};
use tonic_health::ServingStatus;

const PATIENCE: Duration = Duration::from_secs(30);

/// An HTTP server whose `/healthz` answers 200 while `healthy`, else 503.
async fn http_server(healthy: Arc<AtomicBool>) -> String {
    let app = axum::Router::new().route(
        "/healthz",
        get(move || {
            let healthy = healthy.clone();
            async move {
                match healthy.load(Ordering::SeqCst) {
                    true => StatusCode::OK,
                    false => StatusCode::SERVICE_UNAVAILABLE,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

/// Registers `echo` in a fresh memory registry, gates it on `check`, and returns the
/// registration with a watch of the service.
async fn gated(
    check: impl Check,
) -> (
    leasehold::Registration,
    leasehold::Discovery,
    leasehold::health::HealthGuard,
) {
    let registry = MemoryRegistry::new();
    let discovery = registry
        .watch(&ServiceName::new("echo").unwrap(), WatchOptions::default())
        .await
        .unwrap();
    let instance = Instance::builder("echo", "127.0.0.1:7001")
        .id("e1")
        .build()
        .unwrap();
    let registration = registry
        .register(instance, RegisterOptions::default())
        .await
        .unwrap();
    let guard = HealthGate::new(check)
        .interval(Duration::from_millis(50))
        .timeout(Duration::from_secs(2))
        .spawn(registration.clone());
    (registration, discovery, guard)
}

#[tokio::test]
async fn http_checks_follow_the_status_and_gate_the_registration() {
    let healthy = Arc::new(AtomicBool::new(true));
    let addr = http_server(healthy.clone()).await;
    let url = format!("http://{addr}/healthz");
    let check = HttpCheck::new(&url).unwrap();
    check.check().await.expect("healthy");
    healthy.store(false, Ordering::SeqCst);
    let err = check.check().await.unwrap_err().to_string();
    assert!(err.contains("503"), "{err}");
    let missing = HttpCheck::new(&format!("http://{addr}/nowhere")).unwrap();
    assert!(missing.check().await.unwrap_err().to_string().contains("404"));

    let (registration, discovery, _guard) = gated(from_url(&url).unwrap()).await;
    assert!(registration.wait_for(RegistrationState::Paused, PATIENCE).await);
    assert!(discovery.wait_for(PATIENCE, |s| s.is_empty()).await.is_some());
    healthy.store(true, Ordering::SeqCst);
    assert!(
        registration
            .wait_for(RegistrationState::Registered, PATIENCE)
            .await
    );
    assert!(discovery.wait_for(PATIENCE, |s| s.len() == 1).await.is_some());
}

#[tokio::test]
async fn grpc_checks_follow_the_serving_status_and_gate_the_registration() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("echo", ServingStatus::Serving).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let url = format!("grpc://{addr}/echo");
    let check = GrpcCheck::new(&url).unwrap();
    leasehold_testkit::eventually("the gRPC server to answer", PATIENCE, || async {
        check.check().await.is_ok()
    })
    .await;
    reporter
        .set_service_status("echo", ServingStatus::NotServing)
        .await;
    let err = check.check().await.unwrap_err().to_string();
    assert!(err.contains("NOT_SERVING"), "{err}");
    let unknown = GrpcCheck::new(&format!("grpc://{addr}/other")).unwrap();
    assert!(
        unknown.check().await.is_err(),
        "a service the server does not know"
    );

    let (registration, discovery, _guard) = gated(check).await;
    assert!(registration.wait_for(RegistrationState::Paused, PATIENCE).await);
    assert!(discovery.wait_for(PATIENCE, |s| s.is_empty()).await.is_some());
    reporter.set_service_status("echo", ServingStatus::Serving).await;
    assert!(
        registration
            .wait_for(RegistrationState::Registered, PATIENCE)
            .await
    );
    assert!(discovery.wait_for(PATIENCE, |s| s.len() == 1).await.is_some());
}

fn probe_error(error: leasehold::BoxError) -> ProbeError {
    *error.downcast::<ProbeError>().expect("a ProbeError")
}

/// A port nothing listens on (bound, then closed).
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn failures_say_whether_the_endpoint_answered_was_unreachable_or_hung() {
    let healthy = Arc::new(AtomicBool::new(false));
    let addr = http_server(healthy).await;
    let sick = HttpCheck::new(&format!("http://{addr}/healthz")).unwrap();
    let error = probe_error(sick.check().await.unwrap_err());
    assert!(error.is_unhealthy(), "{error}");
    assert_eq!(error.target(), format!("http://{addr}/healthz"));

    let closed = closed_port().await;
    for check in [
        from_url(&format!("http://{closed}/healthz")).unwrap(),
        from_url(&format!("grpc://{closed}/echo")).unwrap(),
    ] {
        let error = probe_error(check.check().await.unwrap_err());
        assert!(error.is_unreachable(), "{check:?}: {error}");
    }

    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let timeout = Duration::from_millis(200);
    let http = HttpCheck::new(&format!("http://{hung}/healthz"))
        .unwrap()
        .timeout(timeout);
    let grpc = GrpcCheck::new(&format!("grpc://{hung}/echo"))
        .unwrap()
        .timeout(timeout);
    for error in [http.check().await, grpc.check().await] {
        let error = probe_error(error.unwrap_err());
        assert!(error.is_timeout(), "{error}");
    }
}
