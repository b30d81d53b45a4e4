//! Balances gRPC calls over three discovered servers while one of them dies.
//!
//! Starts three Greeter servers on loopback that register themselves in the registry
//! (weights 1, 2 and 3), sends `--requests` calls through one balanced channel, and
//! halfway through stops the first server *without* deregistering it, so discovery still
//! lists it: retries on another instance and ejection keep every call answered. The last
//! line of output is one JSON object:
//! `{"served": {"<server address>": <calls answered>, ...}, "failed": <failed calls>}`.
//!
//! ```text
//! cargo run -p leasehold-tower --example grpc_balance -- --requests 1000 --balancer p2c
//! ```

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use leasehold::memory::MemoryRegistry;
use leasehold::{Instance, RegisterOptions, Registration, Registry, RegistryUrl, ServiceName, WatchOptions};
use leasehold_tower::balance::BalancerKind;
use leasehold_tower::{BalanceOptions, HashKey, RetryPolicy, RetrySafe};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

/// The generated Greeter client and server (compiled in the unpublished
/// `leasehold-greeter` crate, so users of leasehold-tower need no protoc).
pub use leasehold_greeter as greeter;

use greeter::greeter_client::GreeterClient;
use greeter::greeter_server::{Greeter, GreeterServer};
use greeter::{HelloReply, HelloRequest};

type BoxError = Box<dyn Error + Send + Sync>;

/// The example's flags.
#[derive(Parser, Debug, Clone)]
#[command(about = "Balance gRPC calls over discovered servers while one of them dies")]
pub struct Args {
    /// The registry: memory://[name] (etcd:// and zk:// once `connect_registry` knows them).
    #[arg(long, default_value = "memory://")]
    pub registry: String,
    /// How many calls to send.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// round-robin, random, weighted, p2c or hash.
    #[arg(long, default_value = "round-robin")]
    pub balancer: BalancerKind,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Send every call once, with no retry.
    #[arg(long)]
    pub no_retries: bool,
    /// The service name the servers register under.
    #[arg(long, default_value = "greeter")]
    pub service: String,
}

/// What the run saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// Calls answered, by the address of the server that answered (every server listed).
    pub served: BTreeMap<String, u64>,
    /// Calls that failed.
    pub failed: u64,
    /// The address of the server stopped halfway.
    pub stopped: String,
    /// Each server's registered weight, by address.
    pub weights: BTreeMap<String, u32>,
}

impl Report {
    /// The report's JSON line, `served` first.
    pub fn to_json(&self) -> String {
        let served = serde_json::to_string(&self.served).expect("a map of strings to numbers");
        format!("{{\"served\": {served}, \"failed\": {}}}", self.failed)
    }
}

/// The registry client for `url`: `memory://`, `etcd://` or `zk://`.
pub async fn connect_registry(url: &str) -> Result<Arc<dyn Registry>, BoxError> {
    let url = RegistryUrl::parse(url)?;
    match url.scheme.as_str() {
        "memory" => Ok(Arc::new(MemoryRegistry::connect(&url)?)),
        "etcd" => Ok(Arc::new(leasehold_etcd::EtcdRegistry::connect(&url).await?)),
        "zk" => Ok(Arc::new(leasehold_zookeeper::ZkRegistry::connect(&url)?)),
        other => Err(format!("unknown registry scheme {other}://; use memory://, etcd:// or zk://").into()),
    }
}

struct Hello {
    addr: String,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(HelloReply {
            message: format!("hello, {}", request.into_inner().name),
            server: self.addr.clone(),
        }))
    }
}

/// One running Greeter server and its registration.
struct Server {
    addr: String,
    weight: u32,
    registration: Registration,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    async fn start(registry: &dyn Registry, service: &str, weight: u32) -> Result<Server, BoxError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GreeterServer::new(Hello { addr: addr.clone() }))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        let id = format!("{service}-{}", addr.rsplit(':').next().unwrap_or("0"));
        let instance = Instance::builder(service, addr.as_str())
            .id(id)
            .weight(weight)
            .build()?;
        let registration = registry.register(instance, RegisterOptions::default()).await?;
        Ok(Server {
            addr,
            weight,
            registration,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// Closes the listener and the connections, leaving the registration alive.
    fn stop(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        async move {
            let _ = task.await;
        }
    }
}

/// Runs the example: three servers, `args.requests` calls, one server stopped halfway.
pub async fn run(args: Args) -> Result<Report, BoxError> {
    let registry = connect_registry(&args.registry).await?;
    let mut servers = Vec::new();
    for weight in 1..=3 {
        servers.push(Server::start(&*registry, &args.service, weight).await?);
    }
    let discovery = registry
        .watch(&ServiceName::new(args.service.as_str())?, WatchOptions::default())
        .await?;
    discovery
        .wait_for(Duration::from_secs(10), |s| s.len() >= 3)
        .await
        .ok_or("the three servers did not show up in discovery")?;

    let retry = if args.no_retries {
        RetryPolicy::disabled()
    } else {
        RetryPolicy::default()
    };
    let options = BalanceOptions::default().balancer(args.balancer).retry(retry);
    let client = GreeterClient::new(leasehold_tower::channel(discovery, options));

    let mut served: BTreeMap<String, u64> = servers.iter().map(|s| (s.addr.clone(), 0)).collect();
    let mut failed = 0u64;
    let mut stopping = None;
    let halfway = args.requests / 2;
    let mut calls = futures::stream::iter(0..args.requests)
        .map(|n| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(HelloRequest {
                    name: format!("caller-{n}"),
                });
                request.extensions_mut().insert(RetrySafe);
                request
                    .extensions_mut()
                    .insert(HashKey::new(format!("user-{}", n % 64)));
                client.say_hello(request).await
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut done = 0;
    while let Some(result) = calls.next().await {
        done += 1;
        match result {
            Ok(reply) => *served.entry(reply.into_inner().server).or_default() += 1,
            Err(status) => {
                failed += 1;
                eprintln!("call failed: {status}");
            }
        }
        if done == halfway {
            eprintln!("stopping {} without deregistering it", servers[0].addr);
            stopping = Some(tokio::spawn(servers[0].stop()));
        }
    }
    if let Some(stopping) = stopping {
        let _ = stopping.await;
    }
    let stopped = servers[0].addr.clone();
    let weights = servers.iter().map(|s| (s.addr.clone(), s.weight)).collect();
    for mut server in servers {
        let _ = server.registration.deregister().await;
        server.stop().await;
    }
    Ok(Report {
        served,
        failed,
        stopped,
        weights,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let report = run(args).await?;
    println!("{}", report.to_json());
    Ok(())
}
