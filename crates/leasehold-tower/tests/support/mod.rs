//! Real tonic Greeter servers for the tests: each registers itself in a memory registry
//! and answers, fails, or reports its health as told.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::{Discovery, Instance, RegisterOptions, Registration, Registry, ServiceName, WatchOptions};
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;

pub use leasehold_greeter as greeter;

use greeter::greeter_server::{Greeter, GreeterServer};
use greeter::{HelloReply, HelloRequest};

/// What a server does with each call.
#[derive(Default)]
pub struct Behaviour {
    /// Answers `INTERNAL` at once instead of hello.
    pub failing: AtomicBool,
    /// Calls received.
    pub calls: AtomicU64,
}

struct Hello {
    addr: String,
    behaviour: Arc<Behaviour>,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        self.behaviour.calls.fetch_add(1, Ordering::SeqCst);
        if self.behaviour.failing.load(Ordering::SeqCst) {
            return Err(tonic::Status::internal("broken"));
        }
        Ok(tonic::Response::new(HelloReply {
            message: format!("hello, {}", request.into_inner().name),
            server: self.addr.clone(),
        }))
    }
}

/// A running Greeter server with the gRPC health service, registered as `id`.
pub struct Server {
    pub addr: String,
    pub behaviour: Arc<Behaviour>,
    pub health: tonic_health::server::HealthReporter,
    pub registration: Registration,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Server {
    pub async fn start(registry: &MemoryRegistry, service: &str, id: &str) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let behaviour = Arc::new(Behaviour::default());
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<GreeterServer<Hello>>().await;
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(GreeterServer::new(Hello {
                    addr: addr.clone(),
                    behaviour: behaviour.clone(),
                }))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        let instance = Instance::builder(service, addr.as_str()).id(id).build().unwrap();
        let registration = registry
            .register(instance, RegisterOptions::default())
            .await
            .unwrap();
        Server {
            addr,
            behaviour,
            health,
            registration,
            shutdown: Some(shutdown),
        }
    }

    /// Reports the Greeter service as serving or not to health checks.
    pub async fn set_healthy(&self, healthy: bool) {
        use tonic_health::ServingStatus;
        let status = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status("greeter.Greeter", status).await;
    }

    /// Stops serving, leaving the registration in place (a crash, as the registry sees it
    /// until the lease runs out).
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// `n` servers of `service` and a discovery that sees them all.
pub async fn fleet(service: &str, n: usize) -> (MemoryRegistry, Vec<Server>, Discovery) {
    let registry = MemoryRegistry::new();
    let mut servers = Vec::new();
    for i in 0..n {
        servers.push(Server::start(&registry, service, &format!("{service}-{i}")).await);
    }
    let discovery = discovered(&registry, service, n).await;
    (registry, servers, discovery)
}

/// Registers `instances`, all of `service`, and returns their handles and a discovery
/// that sees them all.
pub async fn registered(
    registry: &MemoryRegistry,
    service: &str,
    instances: impl IntoIterator<Item = Instance>,
) -> (Vec<Registration>, Discovery) {
    let mut registrations = Vec::new();
    for instance in instances {
        registrations.push(
            registry
                .register(instance, RegisterOptions::default())
                .await
                .unwrap(),
        );
    }
    let discovery = discovered(registry, service, registrations.len()).await;
    (registrations, discovery)
}

/// A discovery of `service` once it sees `n` instances.
pub async fn discovered(registry: &MemoryRegistry, service: &str, n: usize) -> Discovery {
    let discovery = registry
        .watch(&ServiceName::new(service).unwrap(), WatchOptions::default())
        .await
        .unwrap();
    discovery
        .wait_for(Duration::from_secs(10), |s| s.len() == n)
        .await
        .expect("every instance discovered");
    discovery
}
