//! Registration throughput on ZooKeeper: leasehold beside Apache Curator's own
//! `ServiceDiscovery.registerService` (Debian's libcurator-discovery-java, run by the
//! testkit's `CuratorPeer`), measured in the same run against the same server.
//!
//! `cargo bench -p leasehold-zookeeper --bench register` prints registrations per second
//! one at a time and 64 in flight, for Curator, for leasehold writing Curator's layout
//! (`?format=curator`: the same plain ephemeral node per instance) and for leasehold's
//! native layout (protected ephemeral sequential nodes), and each leasehold figure as a
//! ratio of Curator's. Each side warms up on another service first (the JVM compiles its
//! path; our session and its service watch are set up). The sides take turns, round after
//! round, and each figure is the median of its rounds, so a load spike on a shared
//! machine hits both.

use std::time::{Duration, Instant};

use futures::StreamExt;
use leasehold::{Instance, RegisterOptions, Registration, Registry};
use leasehold_testkit::zookeeper::ZkEnsemble;
use leasehold_testkit::CuratorPeer;
use leasehold_zookeeper::ZkRegistry;

const SEQUENTIAL: usize = 500;
const CONCURRENT: usize = 2_000;
const ROUNDS: usize = 5;
const FORMATS: [&str; 2] = ["curator", "native"];
const IN_FLIGHT: usize = 64;
const WARMUP: usize = 200;

fn instances(service: &str, count: usize) -> Vec<Instance> {
    (0..count)
        .map(|n| {
            Instance::builder(service, format!("127.0.0.1:{}", 7000 + n % 1000))
                .id(format!("i{n}"))
                .build()
                .unwrap()
        })
        .collect()
}

/// Registers `count` instances of `service`, `in_flight` at a time; the time taken and
/// the handles (kept, so nothing is deregistered while timing).
async fn leasehold_run(
    registry: &ZkRegistry,
    service: &str,
    count: usize,
    in_flight: usize,
) -> (Duration, Vec<Registration>) {
    let options = RegisterOptions::ttl(Duration::from_secs(30));
    let started = Instant::now();
    let held: Vec<Registration> = if in_flight <= 1 {
        let mut held = Vec::with_capacity(count);
        for instance in instances(service, count) {
            held.push(registry.register(instance, options).await.unwrap());
        }
        held
    } else {
        futures::stream::iter(instances(service, count))
            .map(|instance| registry.register(instance, options))
            .buffer_unordered(in_flight)
            .map(Result::unwrap)
            .collect()
            .await
    };
    (started.elapsed(), held)
}

async fn leasehold_side(
    zk: &ZkEnsemble,
    format: &str,
    round: &str,
    count: usize,
    in_flight: usize,
) -> Duration {
    let url = format!("{}?format={format}", zk.url(&format!("/bench-{format}")));
    let registry = ZkRegistry::connect(&url.parse().unwrap()).unwrap();
    let tag = format!("{format}-{in_flight}-{round}");
    let (_, warm) = leasehold_run(&registry, &format!("warmup-{tag}"), WARMUP, in_flight).await;
    let (took, held) = leasehold_run(&registry, &format!("svc-{tag}"), count, in_flight).await;
    drop(warm);
    registry.shutdown().await;
    drop(held);
    took
}

fn per_second(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

#[tokio::main]
async fn main() {
    let zk = ZkEnsemble::start_standalone().await.expect("ZooKeeper starts");
    let peer = CuratorPeer::get().await.expect("the Curator peer builds");
    println!(
        "registrations per second on one ZooKeeper server, median of {ROUNDS} interleaved rounds (same run, same server)"
    );
    println!(
        "{:<26} {:>12} {:>12} {:>10}",
        "mode", "Curator", "leasehold", "ratio"
    );
    for (count, in_flight) in [(SEQUENTIAL, 1), (CONCURRENT, IN_FLIGHT)] {
        let mut curator = Vec::new();
        let mut ours: [Vec<f64>; 2] = Default::default();
        for round in 0..ROUNDS {
            let took = peer
                .bench_register(
                    &zk.connect_string(),
                    "/bench-curator-peer",
                    &format!("svc-{in_flight}-{round}"),
                    count,
                    in_flight,
                    WARMUP,
                )
                .await
                .expect("Curator's bench runs");
            curator.push(per_second(count, took));
            for (at, format) in FORMATS.iter().enumerate() {
                let took = leasehold_side(&zk, format, &round.to_string(), count, in_flight).await;
                ours[at].push(per_second(count, took));
            }
        }
        let curator = median(curator);
        for (format, rates) in FORMATS.iter().zip(ours) {
            let ours = median(rates);
            println!(
                "{:<26} {:>12.0} {:>12.0} {:>9.2}x",
                format!("{in_flight} in flight, {format} layout"),
                curator,
                ours,
                ours / curator
            );
        }
    }
}
