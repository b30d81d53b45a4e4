//! One registration at a time: `register` called and awaited N times in a row, against a
//! plain etcd-client loop of puts under one lease as the baseline, each side on its own
//! fresh single-node etcd from the testkit, measured in the same run.
//!
//! `cargo bench -p leasehold-etcd --bench sequential` prints both rates and their ratio.

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use leasehold::{Codec, Instance, NativeCodec, RegisterOptions, Registry};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;

const INSTANCES: usize = 2_000;
const ROOT: &str = "/bench";
const TTL: Duration = Duration::from_secs(60);
/// Rounds per side, alternated; the medians are compared.
const ROUNDS: usize = 5;

fn instances() -> Vec<Instance> {
    (0..INSTANCES)
        .map(|n| {
            Instance::builder("bench", format!("10.0.{}.{}:8080", n / 250, n % 250))
                .id(format!("i{n:05}"))
                .build()
                .unwrap()
        })
        .collect()
}

async fn leasehold_side() -> f64 {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = EtcdRegistry::connect(&etcd.url(ROOT).parse().unwrap())
        .await
        .unwrap();
    let mut held = Vec::with_capacity(INSTANCES);
    let started = Instant::now();
    for instance in instances() {
        held.push(
            registry
                .register(instance, RegisterOptions::ttl(TTL))
                .await
                .unwrap(),
        );
    }
    let rate = INSTANCES as f64 / started.elapsed().as_secs_f64();
    registry.shutdown().await;
    rate
}

async fn plain_side() -> f64 {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let mut client = Client::connect([etcd.endpoint(0)], None).await.unwrap();
    let values: Vec<(String, Vec<u8>)> = instances()
        .iter()
        .map(|i| (format!("{ROOT}/bench/{}", i.id()), NativeCodec.encode(i).unwrap()))
        .collect();
    let started = Instant::now();
    let lease = client.lease_grant(TTL.as_secs() as i64, None).await.unwrap().id();
    for (key, value) in values {
        client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    let rate = INSTANCES as f64 / started.elapsed().as_secs_f64();
    client.lease_revoke(lease).await.unwrap();
    rate
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("registering {INSTANCES} instances one at a time, each awaited");
    // Alternate sides so a change in the machine's load hits both; compare medians.
    let mut ours = Vec::new();
    let mut plain = Vec::new();
    for _ in 0..ROUNDS {
        ours.push(runtime.block_on(leasehold_side()));
        plain.push(runtime.block_on(plain_side()));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let runs = |v: &[f64]| v.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "  leasehold: {:>7.0} registrations/s (median; runs: {})",
        median(&mut ours),
        runs(&ours)
    );
    println!(
        "etcd-client: {:>7.0} puts/s (median; runs: {})",
        median(&mut plain),
        runs(&plain)
    );
    println!(
        "      ratio: {:.2}x (leasehold / baseline, medians)",
        median(&mut ours) / median(&mut plain)
    );
}
