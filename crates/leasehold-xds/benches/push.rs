//! How fast a registry change reaches xDS clients, and what pushing a big service costs.
//!
//! `cargo bench -p leasehold-xds` prints:
//!
//! 1. push latency: the time from a registration (or deregistration) until the xDS push
//!    reaches a subscribed ADS client, beside the baseline of the same change reaching a
//!    plain `Discovery` cache watching the same registry, on the in-process registry and
//!    on a real etcd (from the testkit);
//! 2. a service of 10,000 instances with 100 subscribed clients: the size of the EDS
//!    push, the time until all 100 clients hold the first push, and the time from one
//!    more registration until the first and the last of the 100 clients have the
//!    update, beside the baseline of building and encoding the assignment once.
//!
//! Clients are raw ADS streams in this process (each its own HTTP/2 connection) that
//! ACK every response, as gRPC clients do.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold::memory::MemoryRegistry;
use leasehold::{Instance, RegisterOptions, Registration, Registry, RegistryUrl, ServiceName, WatchOptions};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;
use leasehold_xds::{ResourceType, XdsOptions};
use prost::Message;
use tokio::sync::mpsc;

use support::{start_xds, AdsClient};

const LATENCY_ROUNDS: usize = 100;
const BIG: usize = 10_000;
const CLIENTS: usize = 100;
const BIG_ROUNDS: usize = 20;

fn instance(service: &str, n: usize) -> Instance {
    Instance::builder(
        service,
        format!("10.{}.{}.{}:8080", n / 65536, (n / 256) % 256, n % 256),
    )
    .id(format!("i{n:06}"))
    .build()
    .unwrap()
}

fn millis(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Summary {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn summary(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        p50: at(0.5),
        p99: at(0.99),
        max: *samples.last().unwrap(),
    }
}

fn print_summary(label: &str, samples: Vec<Duration>) {
    let s = summary(samples);
    println!(
        "  {label:<44} p50 {:>10}  p99 {:>10}  max {:>10}",
        millis(s.p50),
        millis(s.p99),
        millis(s.max)
    );
}

/// Push latency on `registry`: alternately registers and deregisters an instance and
/// times the xDS push and the plain cache.
async fn latency(name: &str, registry: Arc<dyn Registry>) {
    let service = "latency";
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = AdsClient::connect(xds, "bench").await;
    client.subscribe(ResourceType::Endpoints, &[service]).await;
    let discovery = registry
        .watch(&ServiceName::new(service).unwrap(), WatchOptions::default())
        .await
        .unwrap();

    let mut pushes = Vec::new();
    let mut cache = Vec::new();
    let mut held: Option<Registration> = None;
    for round in 0..LATENCY_ROUNDS {
        let expected = if held.is_some() { 0 } else { 1 };
        let started = Instant::now();
        let cache_seen = {
            let discovery = discovery.clone();
            tokio::spawn(async move {
                discovery
                    .wait_for(Duration::from_secs(30), |s| s.len() == expected)
                    .await
                    .expect("the cache follows");
                Instant::now()
            })
        };
        match held.take() {
            Some(registration) => registration.deregister().await.unwrap(),
            None => {
                held = Some(
                    registry
                        .register(instance(service, round), RegisterOptions::default())
                        .await
                        .unwrap(),
                )
            }
        }
        let push = client.next().await;
        let pushed = Instant::now();
        client.ack(&push, &[service]).await;
        pushes.push(pushed - started);
        cache.push(cache_seen.await.unwrap() - started);
    }
    println!("push latency on {name} ({LATENCY_ROUNDS} changes, one subscribed client):");
    print_summary("baseline: change seen by a Discovery cache", cache);
    print_summary("change pushed to the xDS client", pushes);
}

/// What one client saw: which client, when, how many bytes.
type Arrival = (usize, Instant, usize);

async fn big_service() {
    let service = "big";
    let registry = Arc::new(MemoryRegistry::new());
    let mut held = Vec::with_capacity(BIG + BIG_ROUNDS);
    for n in 0..BIG {
        held.push(
            registry
                .register(instance(service, n), RegisterOptions::default())
                .await
                .unwrap(),
        );
    }
    let discovery = registry
        .watch(&ServiceName::new(service).unwrap(), WatchOptions::default())
        .await
        .unwrap();
    let snapshot = discovery
        .wait_for(Duration::from_secs(60), |s| s.len() == BIG)
        .await
        .unwrap();

    // Baseline: building and encoding the assignment once.
    let mut builds = Vec::new();
    let mut size = 0;
    for _ in 0..BIG_ROUNDS {
        let started = Instant::now();
        let built = leasehold_xds::endpoints::assignment(&snapshot);
        size = built.load_assignment.encode_to_vec().len();
        builds.push(started.elapsed());
    }

    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<Arrival>();
    let started = Instant::now();
    for id in 0..CLIENTS {
        let arrivals = arrivals.clone();
        let mut client = AdsClient::connect(xds, &format!("client-{id}")).await;
        client
            .request(ResourceType::Endpoints, &[service], "", "", None)
            .await;
        tokio::spawn(async move {
            while let Some(response) = client.next_within(Duration::from_secs(300)).await {
                let at = Instant::now();
                client.ack(&response, &[service]).await;
                if arrivals.send((id, at, response.encoded_len())).is_err() {
                    return;
                }
            }
        });
    }
    let mut push_size = 0;
    let mut last = started;
    for _ in 0..CLIENTS {
        let (_, at, bytes) = arrived.recv().await.unwrap();
        push_size = bytes;
        last = last.max(at);
    }
    let initial = last - started;

    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for round in 0..BIG_ROUNDS {
        let started = Instant::now();
        held.push(
            registry
                .register(instance(service, BIG + round), RegisterOptions::default())
                .await
                .unwrap(),
        );
        let mut first = None;
        let mut last = started;
        for _ in 0..CLIENTS {
            let (_, at, _) = arrived.recv().await.unwrap();
            first.get_or_insert(at);
            last = last.max(at);
        }
        firsts.push(first.unwrap() - started);
        lasts.push(last - started);
    }

    println!("a service of {BIG} instances, {CLIENTS} subscribed clients:");
    println!(
        "  EDS push: {push_size} bytes per client ({} KiB; assignment alone {size} bytes), {:.1} MiB for all clients",
        push_size / 1024,
        (push_size * CLIENTS) as f64 / (1024.0 * 1024.0)
    );
    print_summary("baseline: build and encode the assignment", builds);
    println!(
        "  {:<44} {:>14}",
        "first push, all clients connecting",
        millis(initial)
    );
    print_summary("one registration: first client has it", firsts);
    print_summary("one registration: all 100 clients have it", lasts);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        latency("the in-process registry", Arc::new(MemoryRegistry::new())).await;
        let etcd = EtcdCluster::start_single().await.expect("etcd starts");
        let url: RegistryUrl = etcd.url("/bench").parse().unwrap();
        let registry = EtcdRegistry::connect(&url).await.unwrap();
        latency("etcd (single node, loopback)", Arc::new(registry)).await;
        drop(etcd);
        big_service().await;
    });
}
