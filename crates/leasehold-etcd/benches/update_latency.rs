//! `Registration::update` latency under load: an open loop of one update every 2 ms,
//! timed from the call until a watcher of the key sees that value (or a later one: the
//! registrar may write updates that arrive together as one), beside raw etcd-client puts
//! of the same values under a lease, as a registration is written.
//!
//! Both loops run at once on the same etcd, each one change every 2 ms, the raw one half
//! a period after ours: a stall of the shared machine (an fsync held up by another
//! process) hits both alike, where rounds taken in turn measured the machine's mood as
//! much as either side.
//!
//! `cargo bench -p leasehold-etcd --bench update_latency` prints p50, p99 and max for
//! each side in each round, and the ratio of the median p99s.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions, WatchOptions};
use leasehold::{Codec, Instance, InstanceUpdate, NativeCodec, RegisterOptions, Registry};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;
use tokio::time::MissedTickBehavior;

const UPDATES: usize = 2_000;
const PERIOD: Duration = Duration::from_millis(2);
const ROOT: &str = "/bench";
/// The registration's TTL, and the raw side's lease.
const TTL: Duration = Duration::from_secs(30);
/// Rounds, each on a fresh registration and lease; the figures are the medians.
const ROUNDS: usize = 5;

/// When each update was called, by sequence number.
type Sent = Arc<Mutex<Vec<Option<Instant>>>>;

fn instance(id: &str, seq: usize) -> Instance {
    Instance::builder("bench", "127.0.0.1:7001")
        .id(id)
        .version(seq.to_string())
        .build()
        .unwrap()
}

/// Watches `key` and returns, once update `UPDATES - 1` is seen, each update's latency:
/// the time from its call until the first value at or past it was seen.
async fn watch_latencies(
    client: &mut Client,
    key: &str,
    sent: Sent,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    let mut stream = client.watch(key, Some(WatchOptions::new())).await.unwrap();
    tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(UPDATES);
        let mut next = 1;
        while next < UPDATES {
            let Some(Ok(response)) = stream.message().await.transpose() else {
                panic!("the watch ended");
            };
            let seen_at = Instant::now();
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(kv.value()) else {
                    continue;
                };
                let Some(seq) = value["version"].as_str().and_then(|v| v.parse::<usize>().ok()) else {
                    continue;
                };
                let sent = sent.lock().unwrap();
                while next <= seq && next < UPDATES {
                    if let Some(at) = sent[next] {
                        latencies.push(seen_at - at);
                    }
                    next += 1;
                }
            }
        }
        latencies
    })
}

fn summary(mut latencies: Vec<Duration>) -> (Duration, Duration, Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), *latencies.last().unwrap())
}

/// One round: both open loops at once, ours on the tick and the raw one half a period
/// later. Returns the latencies of the raw side and of ours.
async fn round(etcd: &EtcdCluster, round: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let raw_key = format!("{ROOT}/bench/raw{round}");
    let lease = client.lease_grant(TTL.as_secs() as i64, None).await.unwrap().id();
    let options = Some(PutOptions::new().with_lease(lease));
    let encode = |id: &str, seq| NativeCodec.encode(&instance(id, seq)).unwrap();
    client
        .put(raw_key.clone(), encode("raw", 0), options.clone())
        .await
        .unwrap();
    let registry = EtcdRegistry::connect(&etcd.url(ROOT).parse().unwrap())
        .await
        .unwrap();
    let ours_id = format!("ours{round}");
    let registration = registry
        .register(instance(&ours_id, 0), RegisterOptions::ttl(TTL))
        .await
        .unwrap();

    let raw_sent: Sent = Arc::new(Mutex::new(vec![None; UPDATES]));
    let ours_sent: Sent = Arc::new(Mutex::new(vec![None; UPDATES]));
    let raw_watch = watch_latencies(&mut client, &raw_key, raw_sent.clone()).await;
    let ours_watch =
        watch_latencies(&mut client, &format!("{ROOT}/bench/{ours_id}"), ours_sent.clone()).await;
    let mut tick = tokio::time::interval(PERIOD / 2);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for n in 2..2 * UPDATES {
        tick.tick().await;
        let seq = n / 2;
        if n % 2 == 0 {
            ours_sent.lock().unwrap()[seq] = Some(Instant::now());
            let registration = registration.clone();
            tokio::spawn(async move {
                registration
                    .update(InstanceUpdate::new().version(Some(seq.to_string())))
                    .await
                    .unwrap();
            });
        } else {
            raw_sent.lock().unwrap()[seq] = Some(Instant::now());
            let (mut client, key, options, value) = (
                client.clone(),
                raw_key.clone(),
                options.clone(),
                encode("raw", seq),
            );
            tokio::spawn(async move {
                client.put(key, value, options).await.unwrap();
            });
        }
    }
    let latencies = (raw_watch.await.unwrap(), ours_watch.await.unwrap());
    registry.shutdown().await;
    client.lease_revoke(lease).await.unwrap();
    latencies
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let etcd = EtcdCluster::start_single().await.expect("etcd starts");
    println!("one update every {PERIOD:?} on each side at once, {UPDATES} updates, latency from the call to the watcher's event");
    println!("{:<14} {:>10} {:>10} {:>10}", "side", "p50", "p99", "max");
    let mut p99s: [Vec<Duration>; 2] = Default::default();
    for n in 0..ROUNDS {
        let (raw, ours) = round(&etcd, n).await;
        for (side, (name, latencies)) in [("raw put", raw), ("leasehold", ours)].into_iter().enumerate() {
            let (p50, p99, max) = summary(latencies);
            println!(
                "{:<14} {:>10.2?} {:>10.2?} {:>10.2?}",
                format!("{name} #{n}"),
                p50,
                p99,
                max
            );
            p99s[side].push(p99);
        }
    }
    let [raw, ours] = p99s.map(median);
    println!(
        "median p99 over {ROUNDS} rounds: leasehold {ours:.2?}, raw put under a lease {raw:.2?}: {:.2}x",
        ours.as_secs_f64() / raw.as_secs_f64()
    );
}
