//! Runs the `http_balance` example's logic: axum servers that register themselves, one
//! crashing and coming back at a new address, another stopping cleanly, while a balanced
//! hyper client sends requests.

#[allow(dead_code)]
#[path = "../examples/http_balance.rs"]
mod example;

use example::{Args, Report};

async fn run(registry: String, requests: usize) -> Report {
    let report = example::run(Args {
        registry,
        requests,
        concurrency: 4,
        service: "web".into(),
    })
    .await
    .expect("the example runs");
    eprintln!("{}", report.to_json());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_servers_crash_restart_and_stop() {
    let report = run("memory://http-balance".into(), 600).await;
    assert_eq!(report.failed, 0, "{}", report.to_json());
    assert_eq!(report.served.values().sum::<u64>(), 600);
    assert!(report.served.values().all(|&n| n > 0), "{}", report.to_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_on_etcd_or_zookeeper() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let zk = leasehold_testkit::ZkEnsemble::start_standalone()
        .await
        .expect("ZooKeeper starts");
    for url in [etcd.url("/leasehold/services"), zk.url("/leasehold")] {
        let report = run(url.clone(), 300).await;
        assert_eq!(report.failed, 0, "{url}: {}", report.to_json());
        assert_eq!(report.served.values().sum::<u64>(), 300, "{url}");
    }
}
