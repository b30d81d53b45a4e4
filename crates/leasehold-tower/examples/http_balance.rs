//! Balances plain HTTP requests over axum servers that register themselves, while the
//! servers stop and restart.
//!
//! Starts three axum servers on loopback, each registering itself in the registry, and
//! sends `--requests` GET requests (not marked safe to retry) through one balanced hyper
//! client with HTTP health checks. A third of the way through, the first server dies
//! without deregistering (discovery still lists it: its requests are refused, so never
//! sent, and go to another server; its health check takes it out). Two thirds of the
//! way, it comes back under the same id at a new address, and the second server shuts
//! down cleanly (deregistering first). The last line of output is one JSON object:
//! `{"served": {"<server id>": <requests answered>, ...}, "failed": <failed requests>}`.
//!
//! ```text
//! cargo run -p leasehold-tower --example http_balance -- --requests 1000
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use http_body_util::BodyExt;
use leasehold::memory::MemoryRegistry;
use leasehold::{Instance, RegisterOptions, Registration, Registry, RegistryUrl, ServiceName, WatchOptions};
use leasehold_tower::{BalanceOptions, BoxError, HealthCheck, RequestBody, RetryPolicy};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// The example's flags.
#[derive(Parser, Debug, Clone)]
#[command(about = "Balance HTTP requests over discovered axum servers while they stop and restart")]
pub struct Args {
    /// The registry: memory://[name], etcd://host:port/root or zk://host:port/root.
    #[arg(long, default_value = "memory://")]
    pub registry: String,
    /// How many requests to send.
    #[arg(long, default_value_t = 300)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// The service name the servers register under.
    #[arg(long, default_value = "web")]
    pub service: String,
}

/// What the run saw.
#[derive(Debug, Clone)]
pub struct Report {
    /// Requests answered, by the id of the server that answered.
    pub served: BTreeMap<String, u64>,
    /// Requests that failed.
    pub failed: u64,
}

impl Report {
    /// The report's JSON line.
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

/// One running axum server and its registration.
struct Server {
    id: String,
    registration: Option<Registration>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `GET /hello` (answering its id) and `GET /healthz` on a new port, then
    /// registers itself as `id`.
    async fn start(registry: &dyn Registry, service: &str, id: &str) -> Result<Server, BoxError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let name = id.to_owned();
        let app = axum::Router::new()
            .route(
                "/hello",
                axum::routing::get(move || std::future::ready(name.clone())),
            )
            .route("/healthz", axum::routing::get(|| std::future::ready("ok")));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let instance = Instance::builder(service, addr.as_str()).id(id).build()?;
        let registration = registry.register(instance, RegisterOptions::default()).await?;
        Ok(Server {
            id: id.to_owned(),
            registration: Some(registration),
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Stops serving without deregistering: a crash, as the registry sees it until the
    /// lease runs out.
    async fn crash(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Deregisters, then stops serving: a clean shutdown.
    async fn stop(&mut self) {
        if let Some(registration) = self.registration.take() {
            let _ = registration.deregister().await;
        }
        self.crash().await;
    }
}

/// Runs the example: three servers, `args.requests` requests, one server crashing and
/// restarting and another stopping cleanly on the way.
pub async fn run(args: Args) -> Result<Report, BoxError> {
    let registry = connect_registry(&args.registry).await?;
    let mut servers = Vec::new();
    for n in 0..3 {
        servers.push(Server::start(&*registry, &args.service, &format!("{}-{n}", args.service)).await?);
    }
    let discovery = registry
        .watch(&ServiceName::new(args.service.as_str())?, WatchOptions::default())
        .await?;
    discovery
        .wait_for(Duration::from_secs(10), |s| s.len() >= 3)
        .await
        .ok_or("the three servers did not show up in discovery")?;
    // GET is idempotent (RFC 9110), so a request cut off mid-way may go again; any
    // request that never left is retried whatever its method.
    let retry = RetryPolicy::default().safe_if(|parts| parts.method.is_idempotent());
    let options = BalanceOptions::default().retry(retry).health_check(
        HealthCheck::http("/healthz")
            .interval(Duration::from_millis(250))
            .timeout(Duration::from_secs(1)),
    );
    let client = leasehold_tower::http_client(discovery, options);

    let mut served: BTreeMap<String, u64> = servers.iter().map(|s| (s.id.clone(), 0)).collect();
    let mut failed = 0u64;
    let mut requests = futures::stream::iter(0..args.requests)
        .map(|_| {
            let client = client.clone();
            async move {
                let request = http::Request::get("/hello").body(RequestBody::empty())?;
                let response = client.oneshot(request).await?;
                if !response.status().is_success() {
                    return Err::<String, BoxError>(format!("status {}", response.status()).into());
                }
                let body = response.into_body().collect().await?.to_bytes();
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut done = 0;
    while let Some(result) = requests.next().await {
        done += 1;
        match result {
            Ok(server) => *served.entry(server).or_default() += 1,
            Err(error) => {
                failed += 1;
                eprintln!("request failed: {error}");
            }
        }
        if done == args.requests / 3 {
            eprintln!("{} crashes, still registered", servers[0].id);
            servers[0].crash().await;
        }
        if done == 2 * args.requests / 3 {
            eprintln!(
                "{} restarts at a new address; {} stops cleanly",
                servers[0].id, servers[1].id
            );
            if let Some(stale) = servers[0].registration.take() {
                let _ = stale.deregister().await;
            }
            servers[0] = Server::start(&*registry, &args.service, &servers[0].id.clone()).await?;
            servers[1].stop().await;
        }
    }
    drop(requests);
    for server in &mut servers {
        server.stop().await;
    }
    Ok(Report { served, failed })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let report = run(args).await?;
    println!("{}", report.to_json());
    Ok(())
}
