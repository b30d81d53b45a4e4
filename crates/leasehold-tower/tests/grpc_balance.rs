//! Runs the `grpc_balance` example's logic: real tonic servers registered in the memory
//! registry, one stopped halfway without deregistering.

#[allow(dead_code)]
#[path = "../examples/grpc_balance.rs"]
mod example;

use example::{Args, Report};
use leasehold_tower::balance::BalancerKind;

async fn run(balancer: BalancerKind, requests: usize, no_retries: bool) -> Report {
    run_on(
        format!("memory://grpc-balance-{balancer}-{no_retries}"),
        balancer,
        requests,
        no_retries,
    )
    .await
}

async fn run_on(registry: String, balancer: BalancerKind, requests: usize, no_retries: bool) -> Report {
    let report = example::run(Args {
        registry,
        requests,
        balancer,
        concurrency: 4,
        no_retries,
        service: "greeter".into(),
    })
    .await
    .expect("the example runs");
    eprintln!("{balancer}: {}", report.to_json());
    report
}

fn answered(report: &Report) -> u64 {
    report.served.values().sum()
}

fn survivors(report: &Report) -> Vec<u64> {
    report
        .served
        .iter()
        .filter(|(addr, _)| **addr != report.stopped)
        .map(|(_, n)| *n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_loses_no_call_when_a_server_stops_mid_stream() {
    let report = run(BalancerKind::RoundRobin, 600, false).await;
    assert_eq!(report.failed, 0, "{}", report.to_json());
    assert_eq!(answered(&report), 600);
    assert_eq!(report.served.len(), 3);
    // About 100 calls each before the stop, then the two survivors share the rest.
    let stopped = report.served[&report.stopped];
    assert!((70..=130).contains(&stopped), "{}", report.to_json());
    assert!(
        survivors(&report).iter().all(|&n| n >= 200),
        "{}",
        report.to_json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_the_registered_weights() {
    let report = run(BalancerKind::Weighted, 600, false).await;
    assert_eq!(report.failed, 0, "{}", report.to_json());
    assert_eq!(answered(&report), 600);
    // Weights 1 (stopped after ~300 calls: ~50), 2 and 3.
    let by_weight = |w: u32| {
        let addr = report.weights.iter().find(|(_, weight)| **weight == w).unwrap().0;
        report.served[addr]
    };
    assert!((30..=75).contains(&by_weight(1)), "{}", report.to_json());
    assert!(
        by_weight(3) > by_weight(2) && by_weight(2) > by_weight(1),
        "{}",
        report.to_json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_p2c_and_hash_lose_no_call() {
    for balancer in [BalancerKind::Random, BalancerKind::P2c, BalancerKind::Hash] {
        let report = run(balancer, 400, false).await;
        assert_eq!(report.failed, 0, "{balancer}: {}", report.to_json());
        assert_eq!(answered(&report), 400, "{balancer}");
        assert!(
            survivors(&report).iter().all(|&n| n > 0),
            "{balancer}: {}",
            report.to_json()
        );
        assert!(
            report.served[&report.stopped] < 200,
            "{balancer}: {}",
            report.to_json()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_stopped_server_costs_calls() {
    let report = run(BalancerKind::RoundRobin, 300, true).await;
    assert!(report.failed >= 1, "{}", report.to_json());
    assert_eq!(answered(&report) + report.failed, 300);
}

/// The example on real registries: the same zero failed calls, whichever backend
/// discovery runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_on_etcd_or_zookeeper() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let zk = leasehold_testkit::ZkEnsemble::start_standalone()
        .await
        .expect("ZooKeeper starts");
    for url in [etcd.url("/leasehold/services"), zk.url("/leasehold")] {
        let report = run_on(url.clone(), BalancerKind::RoundRobin, 300, false).await;
        assert_eq!(report.failed, 0, "{url}: {}", report.to_json());
        assert_eq!(answered(&report), 300, "{url}");
        assert_eq!(report.served.len(), 3, "{url}: {}", report.to_json());
    }
}
