//! The cost of one pick, per balancer, at 10, 100 and 10,000 instances, in steady state
//! (per-set tables already built).
//!
//! ```text
//! cargo bench -p leasehold-tower --bench pick -- --warm-up-time 1 --measurement-time 2
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use leasehold::Instance;
use leasehold_tower::balance::{
    Balancer, ConsistentHash, InstanceSet, PeakEwma, PickContext, Random, RoundRobin, SmoothWeighted,
    ZoneAware,
};

fn set(n: usize) -> InstanceSet {
    (0..n)
        .map(|i| {
            Arc::new(
                Instance::builder(
                    "bench",
                    format!("10.{}.{}.{}:80", i / 65_536, (i / 256) % 256, i % 256),
                )
                .id(format!("i{i:05}"))
                .weight(i as u32 % 5 + 1)
                .zone(format!("z{}", i % 3))
                .build()
                .unwrap(),
            )
        })
        .collect()
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

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [10, 100, 10_000] {
        let instances = set(n);
        for (name, balancer) in balancers() {
            let key = AtomicU64::new(0);
            balancer.pick_from(&instances, &PickContext::new().with_key_hash(0));
            group.bench_with_input(BenchmarkId::new(name, n), &instances, |b, instances| {
                b.iter(|| {
                    let ctx = PickContext::new()
                        .with_key_hash(key.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed));
                    black_box(balancer.pick_from(instances, &ctx))
                })
            });
        }
    }
    group.finish();
}

/// Picks while one instance is ejected (or avoided by a retry): the filtered path.
fn pick_filtered(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_filtered");
    for n in [10, 100, 10_000] {
        let instances = set(n);
        let ejected = instances[n / 2].id().clone();
        let allowed = move |i: &Instance| *i.id() != ejected;
        for (name, balancer) in balancers() {
            let key = AtomicU64::new(0);
            balancer.pick_from(&instances, &PickContext::new().with_key_hash(0));
            group.bench_with_input(BenchmarkId::new(name, n), &instances, |b, instances| {
                b.iter(|| {
                    let ctx = PickContext::new()
                        .with_key_hash(key.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
                        .with_filter(&allowed);
                    black_box(balancer.pick_from(instances, &ctx))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick, pick_filtered);
criterion_main!(benches);
