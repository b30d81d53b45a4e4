//! 10,000 instances registered from one client while a watcher started before them
//! follows, through leasehold and through a plain etcd-client loop as the baseline.
//!
//! `cargo bench -p leasehold-etcd` prints, for each side: registrations per second, the
//! time from the last registration until the watcher has seen all of them, the range
//! requests the watcher sent, and the watcher's resident memory; then the ratios.
//!
//! Each side gets a fresh single-node etcd from the testkit. The watcher runs in a child
//! process (this binary, re-run with `watcher ...`), so its resident memory is its own:
//! it reports `VmRSS` from `/proc/self/status` once connected and watching (before any
//! registration) and again once it holds all instances. The parent notes the time the
//! child's "seen" line arrives.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions as EtcdWatchOptions};
use leasehold::{Codec, Instance, NativeCodec, RegisterOptions, Registry, ServiceName, WatchOptions};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;

const INSTANCES: usize = 10_000;
const ROOT: &str = "/bench";
const SERVICE: &str = "bench";
const TTL: Duration = Duration::from_secs(60);

fn instances() -> Vec<Instance> {
    (0..INSTANCES)
        .map(|n| {
            Instance::builder(SERVICE, format!("10.0.{}.{}:8080", n / 250, n % 250))
                .id(format!("i{n:05}"))
                .build()
                .unwrap()
        })
        .collect()
}

fn prefix() -> String {
    format!("{ROOT}/{SERVICE}/")
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What one side measured.
struct Figures {
    per_second: f64,
    catch_up: Duration,
    all_seen: Duration,
    ranges: u64,
    rss_watching_kib: u64,
    rss_full_kib: u64,
}

impl Figures {
    fn print(&self, name: &str) {
        println!(
            "{name:>10}: {:>8.0} registrations/s | watcher saw all {:>6.1} ms after the last ({:>8.1} ms after the first) | {} range request(s) | watcher RSS {} KiB watching, {} KiB holding all (+{} KiB)",
            self.per_second,
            self.catch_up.as_secs_f64() * 1000.0,
            self.all_seen.as_secs_f64() * 1000.0,
            self.ranges,
            self.rss_watching_kib,
            self.rss_full_kib,
            self.rss_full_kib.saturating_sub(self.rss_watching_kib),
        );
    }
}

/// The watcher child: `watcher leasehold|plain ENDPOINT`.
struct Watcher {
    child: Child,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Watcher {
    fn start(kind: &str, endpoint: &str) -> Watcher {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["watcher", kind, endpoint])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().unwrap().unwrap();
        assert_eq!(ready, "ready", "the watcher child starts");
        Watcher { child, lines }
    }

    /// Blocks until the child has seen every instance: (when, ranges, rss before, rss after).
    fn seen(mut self) -> (Instant, u64, u64, u64) {
        let line = self.lines.next().unwrap().unwrap();
        let at = Instant::now();
        let fields: Vec<u64> = line
            .strip_prefix("seen ")
            .unwrap()
            .split(' ')
            .map(|f| f.parse().unwrap())
            .collect();
        self.child.wait().unwrap();
        (at, fields[0], fields[1], fields[2])
    }
}

async fn leasehold_side() -> Figures {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let url = etcd.url(ROOT);
    let watcher = tokio::task::spawn_blocking({
        let url = url.clone();
        move || Watcher::start("leasehold", &url)
    })
    .await
    .unwrap();
    let registry = EtcdRegistry::connect(&url.parse().unwrap()).await.unwrap();
    let all = instances();
    let started = Instant::now();
    let registrations = futures::future::join_all(
        all.into_iter()
            .map(|instance| registry.register(instance, RegisterOptions::ttl(TTL))),
    )
    .await;
    let done = Instant::now();
    let registrations: Vec<_> = registrations.into_iter().map(Result::unwrap).collect();
    let (seen, ranges, before, after) = tokio::task::spawn_blocking(move || watcher.seen()).await.unwrap();
    registry.shutdown().await;
    drop(registrations);
    Figures {
        per_second: INSTANCES as f64 / (done - started).as_secs_f64(),
        catch_up: seen.saturating_duration_since(done),
        all_seen: seen.saturating_duration_since(started),
        ranges,
        rss_watching_kib: before,
        rss_full_kib: after,
    }
}

async fn plain_side() -> Figures {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let endpoint = etcd.endpoint(0);
    let watcher = tokio::task::spawn_blocking({
        let endpoint = endpoint.clone();
        move || Watcher::start("plain", &endpoint)
    })
    .await
    .unwrap();
    let mut client = Client::connect([endpoint], None).await.unwrap();
    let values: Vec<(String, Vec<u8>)> = instances()
        .iter()
        .map(|i| (format!("{}{}", prefix(), i.id()), NativeCodec.encode(i).unwrap()))
        .collect();
    let started = Instant::now();
    let lease = client.lease_grant(TTL.as_secs() as i64, None).await.unwrap().id();
    for (key, value) in values {
        client
            .put(key, value, Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    let done = Instant::now();
    let (seen, ranges, before, after) = tokio::task::spawn_blocking(move || watcher.seen()).await.unwrap();
    client.lease_revoke(lease).await.unwrap();
    Figures {
        per_second: INSTANCES as f64 / (done - started).as_secs_f64(),
        catch_up: seen.saturating_duration_since(done),
        all_seen: seen.saturating_duration_since(started),
        ranges,
        rss_watching_kib: before,
        rss_full_kib: after,
    }
}

/// The child: follows the service, says `ready` once watching, and
/// `seen RANGES RSS_BEFORE RSS_AFTER` once it holds every instance.
async fn watcher_child(kind: &str, target: &str) {
    match kind {
        "leasehold" => {
            let registry = EtcdRegistry::connect(&target.parse().unwrap()).await.unwrap();
            let discovery = registry
                .watch(&ServiceName::new(SERVICE).unwrap(), WatchOptions::default())
                .await
                .unwrap();
            let before = rss_kib();
            println!("ready");
            discovery
                .wait_for(Duration::from_secs(600), |s| s.len() == INSTANCES)
                .await
                .expect("all seen");
            // The connect probe is a range too; the watcher's own are the rest.
            println!("seen {} {before} {}", registry.range_requests() - 1, rss_kib());
        }
        "plain" => {
            let mut client = Client::connect([target], None).await.unwrap();
            let listing = client
                .get(prefix(), Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            let revision = listing.header().unwrap().revision();
            let mut held: std::collections::HashMap<Vec<u8>, Arc<[u8]>> = listing
                .kvs()
                .iter()
                .map(|kv| (kv.key().to_vec(), Arc::from(kv.value())))
                .collect();
            let mut stream = client
                .watch(
                    prefix(),
                    Some(
                        EtcdWatchOptions::new()
                            .with_prefix()
                            .with_prev_key()
                            .with_start_revision(revision + 1),
                    ),
                )
                .await
                .unwrap();
            let before = rss_kib();
            println!("ready");
            while held.len() < INSTANCES {
                let answer = stream.message().await.unwrap().expect("watch open");
                for event in answer.events() {
                    let kv = event.kv().unwrap();
                    match event.event_type() {
                        EventType::Put => held.insert(kv.key().to_vec(), Arc::from(kv.value())),
                        EventType::Delete => held.remove(kv.key()),
                    };
                }
            }
            println!("seen 1 {before} {}", rss_kib());
        }
        other => panic!("unknown watcher kind {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.get(1).map(String::as_str) == Some("watcher") {
        runtime.block_on(watcher_child(&args[2], &args[3]));
        return;
    }
    println!("registering {INSTANCES} instances from one client; a watcher started before them follows");
    let leasehold = runtime.block_on(leasehold_side());
    let plain = runtime.block_on(plain_side());
    leasehold.print("leasehold");
    plain.print("etcd-client");
    println!(
        "     ratio: {:.2}x registrations/s, {:.2}x time after the last, {:.3}x time after the first, {:.2}x watcher memory growth (leasehold / baseline)",
        leasehold.per_second / plain.per_second,
        leasehold.catch_up.as_secs_f64() / plain.catch_up.as_secs_f64().max(1e-9),
        leasehold.all_seen.as_secs_f64() / plain.all_seen.as_secs_f64(),
        leasehold.rss_full_kib.saturating_sub(leasehold.rss_watching_kib) as f64
            / plain.rss_full_kib.saturating_sub(plain.rss_watching_kib).max(1) as f64,
    );
}
