//! `Registration::update` latency under load: an open loop of one update every 2 ms,
//! timed from the call until a watcher of the key sees that value (or a later one: the
//! registrar may write updates that arrive together as one), beside raw etcd-client puts
//! of the same values in the same loop, measured in the same run on the same etcd.
//!
//! The baseline is a raw put under a lease, as a registration is written; a raw put
//! without one is shown too (etcd attaches no lease to it, a little less work).
//!
//! `cargo bench -p leasehold-etcd --bench update_latency` prints p50, p99 and max for
//! each side in each round, how many calls found the previous one still unanswered (a
//! registration's next write waits for that answer; raw puts do not wait), and the
//! ratios of the median p99s.

use std::sync::atomic::{AtomicUsize, Ordering};
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
        let mut next = 0;
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

/// Calls `call` for each update on the period, each in a task that holds `unanswered`
/// up until its call returns; how many calls found an earlier one still unanswered.
async fn open_loop<F, Fut>(call: F, sent: &Sent) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let unanswered = Arc::new(AtomicUsize::new(0));
    let mut overlapped = 0;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for seq in 1..UPDATES {
        tick.tick().await;
        sent.lock().unwrap()[seq] = Some(Instant::now());
        if unanswered.fetch_add(1, Ordering::SeqCst) > 0 {
            overlapped += 1;
        }
        let (call, unanswered) = (call(seq), unanswered.clone());
        tokio::spawn(async move {
            call.await;
            unanswered.fetch_sub(1, Ordering::SeqCst);
        });
    }
    overlapped
}

fn summary(mut latencies: Vec<Duration>) -> (Duration, Duration, Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), *latencies.last().unwrap())
}

/// Raw puts of the same values, under a lease of the registration's TTL (`leased`) or
/// under none.
async fn raw_side(etcd: &EtcdCluster, leased: bool) -> (Vec<Duration>, usize) {
    let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let key = format!("{ROOT}/bench/raw");
    let options = match leased {
        true => {
            let lease = client.lease_grant(TTL.as_secs() as i64, None).await.unwrap();
            Some(PutOptions::new().with_lease(lease.id()))
        }
        false => None,
    };
    client
        .put(
            key.clone(),
            NativeCodec.encode(&instance("raw", 0)).unwrap(),
            options.clone(),
        )
        .await
        .unwrap();
    let sent: Sent = Arc::new(Mutex::new(vec![None; UPDATES]));
    let watcher = watch_latencies(&mut client, &key, sent.clone()).await;
    let overlapped = open_loop(
        |seq| {
            let (mut client, key, options) = (client.clone(), key.clone(), options.clone());
            async move {
                let value = NativeCodec.encode(&instance("raw", seq)).unwrap();
                client.put(key, value, options).await.unwrap();
            }
        },
        &sent,
    )
    .await;
    (watcher.await.unwrap(), overlapped)
}

async fn leasehold_side(etcd: &EtcdCluster) -> (Vec<Duration>, usize) {
    let registry = EtcdRegistry::connect(&etcd.url(ROOT).parse().unwrap())
        .await
        .unwrap();
    let registration = registry
        .register(instance("ours", 0), RegisterOptions::ttl(TTL))
        .await
        .unwrap();
    let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let sent: Sent = Arc::new(Mutex::new(vec![None; UPDATES]));
    let watcher = watch_latencies(&mut client, &format!("{ROOT}/bench/ours"), sent.clone()).await;
    let overlapped = open_loop(
        |seq| {
            let registration = registration.clone();
            async move {
                registration
                    .update(InstanceUpdate::new().version(Some(seq.to_string())))
                    .await
                    .unwrap();
            }
        },
        &sent,
    )
    .await;
    let latencies = watcher.await.unwrap();
    registry.shutdown().await;
    (latencies, overlapped)
}

/// Rounds per side, taking turns, so a stall of the shared machine (an fsync held up
/// by other processes) hits both; the figures are the medians over the rounds. The
/// sides do not run at once: running together, each slows the other with its own load,
/// and the ratio says less about either.
const ROUNDS: usize = 7;

#[derive(Clone, Copy)]
enum Side {
    Raw,
    Unleased,
    Leasehold,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw put",
            Side::Unleased => "unleased",
            Side::Leasehold => "leasehold",
        }
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let etcd = EtcdCluster::start_single().await.expect("etcd starts");
    println!("one update every {PERIOD:?}, {UPDATES} updates, latency from the call to the watcher's event");
    println!(
        "{:<14} {:>10} {:>10} {:>10} {:>12}",
        "side", "p50", "p99", "max", "overlapped"
    );
    let mut p99s: [Vec<Duration>; 3] = Default::default();
    for round in 0..ROUNDS {
        // Each round starts with another side, so none always runs on the store the
        // others just grew, or right after the same neighbour.
        let mut sides = [Side::Raw, Side::Unleased, Side::Leasehold];
        sides.rotate_left(round % 3);
        for side in sides {
            let (latencies, overlapped) = match side {
                Side::Raw => raw_side(&etcd, true).await,
                Side::Unleased => raw_side(&etcd, false).await,
                Side::Leasehold => leasehold_side(&etcd).await,
            };
            let (p50, p99, max) = summary(latencies);
            println!(
                "{:<14} {:>10.2?} {:>10.2?} {:>10.2?} {:>12}",
                format!("{} #{round}", side.name()),
                p50,
                p99,
                max,
                overlapped
            );
            p99s[side as usize].push(p99);
        }
    }
    let [raw, unleased, ours] = p99s.map(median);
    println!(
        "median p99 over {ROUNDS} rounds: leasehold {ours:.2?}, raw put under a lease {raw:.2?}: {:.2}x; raw put without one {unleased:.2?}: {:.2}x",
        ours.as_secs_f64() / raw.as_secs_f64(),
        ours.as_secs_f64() / unleased.as_secs_f64()
    );
}
