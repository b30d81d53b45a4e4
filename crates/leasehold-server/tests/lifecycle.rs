//! The order of `Serve`'s steps and its failures, on the in-process registry with
//! servers that misbehave on purpose.

use std::sync::Arc;
use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::{BoxError, Instance, Registry, ServiceName};
use leasehold_server::{Drain, Serve};
use leasehold_testkit::eventually;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

fn echo(addr: std::net::SocketAddr) -> Result<Instance, leasehold::InvalidInput> {
    Instance::builder("echo", addr.to_string()).id("echo-1").build()
}

async fn listed(registry: &MemoryRegistry) -> usize {
    registry
        .list(&ServiceName::new("echo").unwrap())
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_server_that_outlasts_the_drain_timeout_is_stopped_and_reported() {
    let registry = Arc::new(MemoryRegistry::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = Serve::new(registry.clone())
        .grace(Duration::ZERO)
        .drain_timeout(Duration::from_millis(200))
        .run(
            listener,
            echo,
            async move {
                let _ = stopped.await;
            },
            |_listener, drain: Drain| async move {
                drain.await;
                // A request that never finishes.
                std::future::pending::<()>().await;
                Ok::<(), BoxError>(())
            },
        );
    let serving = tokio::spawn(serve);
    eventually("registered", Duration::from_secs(10), || async {
        listed(&registry).await == 1
    })
    .await;
    stop.send(()).unwrap();
    let err = serving.await.unwrap().unwrap_err();
    assert!(err.is_drain_timeout(), "{err}");
    assert_eq!(listed(&registry).await, 0, "deregistered before draining");
}

#[tokio::test]
async fn a_server_that_fails_is_deregistered_and_its_error_returned() {
    let registry = Arc::new(MemoryRegistry::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (fail, failed) = oneshot::channel::<()>();
    let serve = Serve::new(registry.clone()).run(
        listener,
        echo,
        std::future::pending::<()>(),
        |_listener, _drain| async move {
            let _ = failed.await;
            Err::<(), BoxError>("disk on fire".into())
        },
    );
    let serving = tokio::spawn(serve);
    eventually("registered", Duration::from_secs(10), || async {
        listed(&registry).await == 1
    })
    .await;
    fail.send(()).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("returns without waiting for a grace period")
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert_eq!(listed(&registry).await, 0);
}

#[tokio::test]
async fn an_invalid_instance_is_refused_before_anything_is_served() {
    let registry = Arc::new(MemoryRegistry::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Serve::new(registry)
        .run(
            listener,
            |addr| Instance::builder("no spaces allowed", addr.to_string()).build(),
            std::future::pending::<()>(),
            |_listener, _drain| async { Ok::<(), BoxError>(()) },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, leasehold_server::ServeError::Instance(_)), "{err}");
}
