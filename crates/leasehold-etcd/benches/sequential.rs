//! One registration at a time: `register` called and awaited N times in a row, against a
//! plain etcd-client loop of puts under one lease as the baseline, each side on its own
//! fresh single-node etcd from the testkit, measured in the same run.
//!
//! A third side sends, from a plain etcd-client loop, the transaction leasehold sends for
//! a new registration (`if version(key) == 0 then put under the lease else get`, see
//! `write.rs`): it tells the cost of making every write conditional, which leasehold
//! pays so that a late copy of a write can never land, apart from its own overhead.
//!
//! `cargo bench -p leasehold-etcd --bench sequential` prints the rates and the ratios.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use leasehold::{Codec, Instance, NativeCodec, RegisterOptions, Registry};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;

const INSTANCES: usize = 2_000;
const ROOT: &str = "/bench";
const TTL: Duration = Duration::from_secs(60);
/// Rounds per side, alternated; the medians are compared.
const ROUNDS: usize = 7;

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

/// The keys and values a registration of each instance writes.
fn values() -> Vec<(String, Vec<u8>)> {
    instances()
        .iter()
        .map(|i| (format!("{ROOT}/bench/{}", i.id()), NativeCodec.encode(i).unwrap()))
        .collect()
}

/// What a plain etcd-client loop sends for each instance.
#[derive(Clone, Copy)]
enum PlainWrite {
    /// A put under the lease: the baseline.
    Put,
    /// The transaction leasehold sends for a new registration.
    ConditionalTxn,
}

async fn plain_side(write: PlainWrite) -> f64 {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let mut client = Client::connect([etcd.endpoint(0)], None).await.unwrap();
    let values = values();
    let started = Instant::now();
    let lease = client.lease_grant(TTL.as_secs() as i64, None).await.unwrap().id();
    for (key, value) in values {
        let put = PutOptions::new().with_lease(lease);
        match write {
            PlainWrite::Put => {
                client.put(key, value, Some(put)).await.unwrap();
            }
            PlainWrite::ConditionalTxn => {
                let txn = Txn::new()
                    .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.as_str(), value, Some(put))])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                assert!(client.txn(txn).await.unwrap().succeeded());
            }
        }
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
    // Alternate sides so a change in the machine's load hits all; compare medians.
    let mut ours = Vec::new();
    let mut plain = Vec::new();
    let mut txns = Vec::new();
    for _ in 0..ROUNDS {
        ours.push(runtime.block_on(leasehold_side()));
        plain.push(runtime.block_on(plain_side(PlainWrite::Put)));
        txns.push(runtime.block_on(plain_side(PlainWrite::ConditionalTxn)));
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
        "   its txns: {:>7.0} conditional puts/s (median; runs: {})",
        median(&mut txns),
        runs(&txns)
    );
    println!(
        "      ratio: {:.2}x (leasehold / baseline, medians)",
        median(&mut ours) / median(&mut plain)
    );
    println!(
        "             {:.2}x (leasehold / its txns), {:.2}x (its txns / baseline)",
        median(&mut ours) / median(&mut txns),
        median(&mut txns) / median(&mut plain)
    );
}
