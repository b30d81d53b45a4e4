//! The cost of one pick, per balancer, at 10, 100, 10,000 and 100,000 instances, with
//! none and with 1% of them ejected, beside tower's own power-of-two-choices balancer
//! (pending requests and peak-EWMA) in the same run; and the cost a change to the set
//! (a weight updated; an instance leaving or coming back) adds to the next pick, at
//! 1,000 and 100,000 instances.
//!
//! ```text
//! cargo bench -p leasehold-tower --bench pick -- --warm-up-time 1 --measurement-time 2
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use leasehold::{DiscoveryFeed, Instance, NativeCodec, ServiceName, Snapshot, WatchOptions};
use leasehold_tower::balance::{
    Balancer, ConsistentHash, PeakEwma, PickContext, Random, RoundRobin, SmoothWeighted, ZoneAware,
};
use tower::Service;

const SIZES: [usize; 4] = [10, 100, 10_000, 100_000];

fn instance(i: usize, weight: u32) -> Instance {
    Instance::builder(
        "bench",
        format!("10.{}.{}.{}:80", i / 65_536, (i / 256) % 256, i % 256),
    )
    .id(format!("i{i:06}"))
    .weight(weight)
    .zone(format!("z{}", i % 3))
    .build()
    .unwrap()
}

fn set(n: usize) -> Snapshot {
    Snapshot::of(
        ServiceName::new("bench").unwrap(),
        (0..n).map(|i| Arc::new(instance(i, i as u32 % 5 + 1))).collect(),
    )
}

fn balancers() -> Vec<(&'static str, Box<dyn Balancer>)> {
    vec![
        ("round-robin", Box::new(RoundRobin::new())),
        ("random", Box::new(Random::new())),
        ("weighted", Box::new(SmoothWeighted::new())),
        ("p2c", Box::new(PeakEwma::new())),
        ("hash", Box::new(ConsistentHash::new())),
        (
            "zone(round-robin)",
            Box::new(ZoneAware::new(Some("z1".into()), RoundRobin::new)),
        ),
    ]
}

/// Every balancer as a reader of discovery changes, after `cache-only` (none).
fn readers() -> Vec<(&'static str, Option<Box<dyn Balancer>>)> {
    let mut readers: Vec<(&str, Option<Box<dyn Balancer>>)> = vec![("cache-only", None)];
    readers.extend(balancers().into_iter().map(|(name, b)| (name, Some(b))));
    readers
}

/// A discovery cache holding `values`, and `balancer`'s table built from it by one pick.
fn fed(
    values: &[(String, Vec<u8>)],
    balancer: Option<&dyn Balancer>,
) -> (DiscoveryFeed, leasehold::Discovery) {
    let (mut feed, discovery) = DiscoveryFeed::new(
        ServiceName::new("bench").unwrap(),
        Arc::new(NativeCodec),
        WatchOptions::default(),
    );
    feed.reset(values.iter().map(|(k, v)| (k.as_str(), v.as_slice())), 1);
    if let Some(balancer) = balancer {
        balancer.pick(&discovery.snapshot(), &PickContext::new().with_key_hash(7));
    }
    (feed, discovery)
}

/// One pick per iteration from `snapshot`, through `filter` if any.
fn bench_picks(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    snapshot: &Snapshot,
    ejected: &[Arc<Instance>],
) {
    let keys: HashSet<&str> = ejected.iter().map(|i| i.key()).collect();
    let allowed = |i: &Instance| !keys.contains(i.key());
    for (name, balancer) in balancers() {
        let key = AtomicU64::new(0);
        let ctx = |hash: u64| {
            let ctx = PickContext::new().with_key_hash(hash);
            if ejected.is_empty() {
                ctx
            } else {
                ctx.with_filter(&allowed).with_refused(ejected)
            }
        };
        balancer.pick(snapshot, &ctx(0));
        group.bench_with_input(BenchmarkId::new(name, snapshot.len()), snapshot, |b, snapshot| {
            b.iter(|| {
                let hash = key.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
                black_box(balancer.pick(snapshot, &ctx(hash)))
            })
        });
    }
}

/// Tower's `p2c::Balance` over `n` always-ready services, `load` wrapping each: one
/// `poll_ready` (where it picks) and one `call` per iteration.
fn bench_tower<L, S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    n: usize,
    load: impl Fn(Ready) -> S,
) where
    S: Service<(), Response = ()> + tower::load::Load<Metric = L> + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send,
    L: PartialOrd + std::fmt::Debug + Send + 'static,
{
    let services: Vec<S> = (0..n).map(|_| load(Ready)).collect();
    let mut balance = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(balance.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let _ = pin!(balance.call(())).poll(&mut cx);
    group.bench_function(BenchmarkId::new(name, n), |b| {
        b.iter(|| {
            assert!(matches!(balance.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let call = balance.call(());
            black_box(pin!(call).poll(&mut cx).is_ready())
        })
    });
}

/// A service that is always ready and answers at once.
#[derive(Clone, Copy)]
struct Ready;

impl Service<()> for Ready {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<(), Self::Error>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

fn tower_baselines(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, n: usize) {
    use tower::load::{CompleteOnResponse, PeakEwma as TowerPeakEwma, PendingRequests};
    bench_tower(group, "tower-p2c(pending-requests)", n, |s| {
        PendingRequests::new(s, CompleteOnResponse::default())
    });
    bench_tower(group, "tower-p2c(peak-ewma)", n, |s| {
        TowerPeakEwma::new(
            s,
            std::time::Duration::from_millis(30),
            10e9,
            CompleteOnResponse::default(),
        )
    });
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in SIZES {
        let snapshot = set(n);
        bench_picks(&mut group, &snapshot, &[]);
        tower_baselines(&mut group, n);
    }
    group.finish();
}

/// Picks while 1% of the instances (at least one) are ejected: the filtered path.
fn pick_1pct_ejected(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_1pct_ejected");
    for n in SIZES {
        let snapshot = set(n);
        let out = (n / 100).max(1);
        let ejected: Vec<Arc<Instance>> = snapshot
            .members()
            .iter()
            .step_by(n / out)
            .take(out)
            .cloned()
            .collect();
        bench_picks(&mut group, &snapshot, &ejected);
    }
    group.finish();
}

/// The cost of one change to the discovered set for a reader: a weight updated through
/// the discovery cache, then one pick from the new snapshot (which brings the
/// balancer's tables up to date). `cache-only` is the change without a reader.
fn change(c: &mut Criterion) {
    let mut group = c.benchmark_group("change_then_pick");
    for n in [1_000, 100_000] {
        let values: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let instance = instance(i, i as u32 % 5 + 1);
                (instance.id().to_string(), serde_json::to_vec(&instance).unwrap())
            })
            .collect();
        let changed: Vec<Vec<Vec<u8>>> = (0..n.min(1_000))
            .map(|i| {
                (1..=2)
                    .map(|w| serde_json::to_vec(&instance(i, 10 + w)).unwrap())
                    .collect()
            })
            .collect();
        for (name, balancer) in readers() {
            let (mut feed, discovery) = fed(&values, balancer.as_deref());
            let mut step = 0usize;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    step += 1;
                    let at = step % changed.len();
                    feed.put(&values[at].0, &changed[at][(step / changed.len()) % 2]);
                    feed.publish();
                    if let Some(balancer) = &balancer {
                        let snapshot = discovery.snapshot();
                        black_box(balancer.pick(&snapshot, &PickContext::new().with_key_hash(step as u64)));
                    }
                })
            });
        }
    }
    group.finish();
}

/// The cost of an instance leaving or coming back for a reader: one of the first 1,000
/// instances deleted from the discovery cache, or put back, then one pick from the new
/// snapshot. `cache-only` is the change without a reader.
fn leave_or_return(c: &mut Criterion) {
    let mut group = c.benchmark_group("leave_or_return_then_pick");
    for n in [1_000, 100_000] {
        let values: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let instance = instance(i, i as u32 % 5 + 1);
                (instance.id().to_string(), serde_json::to_vec(&instance).unwrap())
            })
            .collect();
        let moving = n.min(1_000);
        for (name, balancer) in readers() {
            let (mut feed, discovery) = fed(&values, balancer.as_deref());
            let mut step = 0usize;
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    let (key, value) = &values[step % moving];
                    if (step / moving).is_multiple_of(2) {
                        feed.delete(key);
                    } else {
                        feed.put(key, value);
                    }
                    step += 1;
                    feed.publish();
                    if let Some(balancer) = &balancer {
                        let snapshot = discovery.snapshot();
                        black_box(balancer.pick(&snapshot, &PickContext::new().with_key_hash(step as u64)));
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick, pick_1pct_ejected, change, leave_or_return);
criterion_main!(benches);
