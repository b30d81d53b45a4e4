//! What an operator does from the command line against a real etcd: counts per
//! service, values that do not decode, removing a live instance, drain and undrain.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use support::{run, Running, PATIENCE};

const ROOT: &str = "/leasehold/services";

/// `leasehold --registry URL ARGS...`: stdout, stderr, and whether it succeeded.
fn leasehold_on(url: &str, args: &[&str]) -> (String, String, bool) {
    let mut all = vec!["--registry", url];
    all.extend_from_slice(args);
    let output = run(&all);
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.success(),
    )
}

fn register(url: &str, id: &str) -> Running {
    let mut running = Running::spawn(&[
        "--registry",
        url,
        "register",
        "echo",
        "127.0.0.1:7001",
        "--id",
        id,
        "--ttl",
        "3s",
    ]);
    running.wait_for_line(&format!("echo/{id}: registered"));
    running
}

/// Polls `ls echo --json` until `ready` holds for the listed ids.
fn wait_for_ids(url: &str, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (stdout, stderr, ok) = leasehold_on(url, &["ls", "echo", "--json"]);
        assert!(ok, "{stderr}");
        let listed: Value = serde_json::from_str(&stdout).expect("JSON");
        let ids: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        if ready(&ids) {
            return ids;
        }
        assert!(Instant::now() < deadline, "never ready; last listed {ids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_counts_and_skipped_values_and_a_live_deregister() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    etcd.put(format!("{ROOT}/echo/not-ours"), "not json")
        .await
        .unwrap();
    let url = etcd.url(ROOT);
    tokio::task::spawn_blocking(move || {
        let _e1 = register(&url, "e1");
        let _e2 = register(&url, "e2");

        let (stdout, stderr, ok) = leasehold_on(&url, &["ls", "--json"]);
        assert!(ok, "{stderr}");
        let services: Value = serde_json::from_str(&stdout).expect("JSON");
        assert_eq!(services, json!([{"service": "echo", "instances": 2}]));

        let (stdout, stderr, ok) = leasehold_on(&url, &["ls", "echo"]);
        assert!(
            ok && stdout.contains("e1") && stdout.contains("e2"),
            "{stdout}{stderr}"
        );
        assert!(!stdout.contains("skipped"), "status only on stdout: {stdout}");
        assert!(
            stderr.contains("echo: skipped 1 value that does not decode"),
            "{stderr}"
        );
        assert!(stderr.contains("not-ours"), "the warning names the key: {stderr}");

        // e1's owner is alive: it writes e1 back, and the operator is told to drain.
        let (stdout, stderr, ok) = leasehold_on(&url, &["deregister", "echo", "e1"]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("echo/e1: deregistered"), "{stdout}");
        assert!(
            stderr.contains("echo/e1 is live") && stderr.contains("leasehold drain echo e1"),
            "{stderr}"
        );
        wait_for_ids(&url, |ids| ids.iter().any(|id| id == "e1"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_a_live_instance_out_until_undrain() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let url = etcd.url(ROOT);
    tokio::task::spawn_blocking(move || {
        let mut e1 = register(&url, "e1");
        let (stdout, stderr, ok) = leasehold_on(&url, &["drain", "echo", "e1"]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("echo/e1: drained"), "{stdout}");
        e1.wait_for_line("echo/e1: drained by an operator");
        wait_for_ids(&url, |ids| ids.is_empty());
        // It stays out: its owner does not write it back.
        std::thread::sleep(Duration::from_secs(1));
        wait_for_ids(&url, |ids| ids.is_empty());

        let (stdout, stderr, ok) = leasehold_on(&url, &["undrain", "echo", "e1"]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("echo/e1: undrained"), "{stdout}");
        e1.wait_for_line("echo/e1: registered");
        wait_for_ids(&url, |ids| ids == ["e1"]);
        let (_, stderr, ok) = leasehold_on(&url, &["undrain", "echo", "e1"]);
        assert!(!ok && stderr.contains("not drained"), "{stderr}");
        e1.signal(Signal::SIGTERM);
        let (code, seen) = e1.wait();
        assert_eq!(code, Some(0), "{seen:#?}");
    })
    .await
    .unwrap();
}
