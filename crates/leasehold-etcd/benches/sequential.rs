//! One registration at a time: `register` called and awaited N times in a row, against a
//! plain etcd-client loop of puts under one lease as the baseline, each side on its own
//! fresh single-node etcd from the testkit, measured in the same run.
//!
//! A third side sends, from a plain etcd-client loop, the transaction leasehold sends for
//! a new registration (`if version(key) == 0 then put under the lease else get`, see
//! `write.rs`): it tells the cost of making every write conditional, which leasehold
//! pays so that a late copy of a write can never land, apart from its own overhead.
//!
//! Beside each rate it prints the CPU time the client process spent per write: on a
//! small machine the client and etcd share the cores, so the client's own cost shows in
//! the rate.
//!
//! `cargo bench -p leasehold-etcd --bench sequential` prints the rates and the ratios.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures::FutureExt;
use leasehold::{Codec, Instance, NativeCodec, RegisterOptions, Registry};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;

const INSTANCES: usize = 2_000;
const ROOT: &str = "/bench";
const TTL: Duration = Duration::from_secs(60);
/// Rounds per side, the order rotating each round; the medians are compared. Many short
/// rounds: a run's rate swings by a third with the machine's disk from one run to the
/// next.
const ROUNDS: usize = 15;

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

/// What one side measured: registrations per second, and the CPU time this process
/// (every thread; etcd runs in its own) spent per registration while it ran.
struct Measured {
    rate: f64,
    cpu_per_write: Duration,
}

impl Measured {
    fn since(started: Instant, cpu: Duration) -> Measured {
        Measured {
            rate: INSTANCES as f64 / started.elapsed().as_secs_f64(),
            cpu_per_write: (process_cpu() - cpu) / INSTANCES as u32,
        }
    }
}

/// User and system CPU time of this process so far, from `/proc/self/stat`: the client's
/// own cost, which on a small machine competes with etcd for the same cores.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Linux reports them in USER_HZ, 100 per second on every architecture it runs on.
    Duration::from_millis(ticks * 10)
}

async fn leasehold_side() -> Measured {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let registry = EtcdRegistry::connect(&etcd.url(ROOT).parse().unwrap())
        .await
        .unwrap();
    let instances = instances();
    let mut held = Vec::with_capacity(INSTANCES);
    let (started, cpu) = (Instant::now(), process_cpu());
    for instance in instances {
        held.push(
            registry
                .register(instance, RegisterOptions::ttl(TTL))
                .await
                .unwrap(),
        );
    }
    let measured = Measured::since(started, cpu);
    registry.shutdown().await;
    measured
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

async fn plain_side(write: PlainWrite) -> Measured {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let mut client = Client::connect([etcd.endpoint(0)], None).await.unwrap();
    let values = values();
    let (started, cpu) = (Instant::now(), process_cpu());
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
    let measured = Measured::since(started, cpu);
    client.lease_revoke(lease).await.unwrap();
    measured
}

#[derive(Clone, Copy)]
enum Side {
    Leasehold,
    Plain(PlainWrite),
}

impl Side {
    const ALL: [Side; 3] = [
        Side::Leasehold,
        Side::Plain(PlainWrite::Put),
        Side::Plain(PlainWrite::ConditionalTxn),
    ];

    fn name(self) -> &'static str {
        match self {
            Side::Leasehold => "leasehold",
            Side::Plain(PlainWrite::Put) => "etcd-client puts",
            Side::Plain(PlainWrite::ConditionalTxn) => "its txns",
        }
    }
}

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("registering {INSTANCES} instances one at a time, each awaited");
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut cpus: [Vec<Duration>; 3] = Default::default();
    for round in 0..ROUNDS {
        // Each round starts with another side, so none always runs right after the same
        // neighbour (whose etcd may still be writing back as the next one starts).
        let mut sides = [0, 1, 2];
        sides.rotate_left(round % 3);
        for at in sides {
            let measured = runtime.block_on(match Side::ALL[at] {
                Side::Leasehold => leasehold_side().boxed(),
                Side::Plain(write) => plain_side(write).boxed(),
            });
            rates[at].push(measured.rate);
            cpus[at].push(measured.cpu_per_write);
        }
    }
    let runs = |v: &[f64]| v.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    let mut medians = [0.0; 3];
    for (at, side) in Side::ALL.iter().enumerate() {
        medians[at] = median(rates[at].clone());
        println!(
            "{:>17}: {:>6.0}/s (median; runs: {}), client CPU {:>4.0?} per write (median)",
            side.name(),
            medians[at],
            runs(&rates[at]),
            median(cpus[at].clone()),
        );
    }
    let [ours, puts, txns] = medians;
    // Each round's ratio too: its sides ran one after the other, in the same disk weather.
    let paired = median(rates[0].iter().zip(&rates[1]).map(|(o, p)| o / p).collect());
    println!(
        "            ratio: {:.2}x (leasehold / etcd-client puts, medians), {paired:.2}x (median of each round's ratio)",
        ours / puts
    );
    println!(
        "                   {:.2}x (leasehold / its txns), {:.2}x (its txns / etcd-client puts)",
        ours / txns,
        txns / puts
    );
}
