//! Every command against real registries started by leasehold-testkit: what one
//! `leasehold` process registers, others list, watch and deregister.

mod support;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{run, run_ok, Running};

/// `register` in one process; `ls`, `ls --json`, `watch --json` and `deregister` in
/// others, all on `url`.
fn every_command_works_on(url: &str) {
    let with = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--registry", url];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect()
    };
    let run_on = |args: &[&str]| run_ok(&with(args).iter().map(String::as_str).collect::<Vec<_>>());

    let register_args = with(&[
        "register",
        "echo",
        "127.0.0.1:7001",
        "--id",
        "e1",
        "--meta",
        "color=blue",
        "--weight",
        "2",
    ]);
    let mut register = Running::spawn(&register_args.iter().map(String::as_str).collect::<Vec<_>>());
    register.wait_for_line("echo/e1: registered");

    let services = run_on(&["ls"]);
    assert!(services.contains("echo"), "{services}");
    let table = run_on(&["ls", "echo"]);
    assert!(
        table.contains("e1") && table.contains("127.0.0.1:7001") && table.contains("color=blue"),
        "{table}"
    );
    let listed: Value = serde_json::from_str(&run_on(&["ls", "echo", "--json"])).expect("JSON");
    assert_eq!(listed[0]["id"], "e1");
    assert_eq!(listed[0]["addr"], "127.0.0.1:7001");
    assert_eq!(listed[0]["weight"], 2);
    assert_eq!(listed[0]["metadata"]["color"], "blue");

    let watch_args = with(&["watch", "echo", "--json"]);
    let mut watch = Running::spawn(&watch_args.iter().map(String::as_str).collect::<Vec<_>>());
    let snapshot: Value = serde_json::from_str(&watch.next_line()).expect("JSON");
    assert_eq!(snapshot["event"], "snapshot");
    assert_eq!(snapshot["instances"][0]["id"], "e1");

    register.signal(Signal::SIGTERM);
    let (code, seen) = register.wait();
    assert_eq!(code, Some(0), "{seen:#?}");
    let removed: Value = serde_json::from_str(&watch.wait_for_line("\"removed\"")).expect("JSON");
    assert_eq!(removed["instance"]["id"], "e1", "{removed}");
    watch.signal(Signal::SIGTERM);
    watch.wait();

    // An operator's removal of an instance nobody holds any more.
    let mut again = Running::spawn(&register_args.iter().map(String::as_str).collect::<Vec<_>>());
    again.wait_for_line("echo/e1: registered");
    again.signal(Signal::SIGKILL);
    again.wait();
    run_on(&["deregister", "echo", "e1"]);
    let empty: Value = serde_json::from_str(&run_on(&["ls", "echo", "--json"])).expect("JSON");
    assert_eq!(empty, Value::Array(vec![]));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_works_on_zookeeper() {
    let zk = leasehold_testkit::ZkEnsemble::start_standalone()
        .await
        .expect("ZooKeeper starts");
    let url = zk.url("/leasehold");
    tokio::task::spawn_blocking(move || every_command_works_on(&url))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_works_on_etcd() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let url = etcd.url("/leasehold/services");
    tokio::task::spawn_blocking(move || every_command_works_on(&url))
        .await
        .unwrap();
}

/// A registry nobody answers at is a run-time error (exit 1) that names the address.
#[test]
fn unreachable_registries_are_named_and_exit_1() {
    for url in ["etcd://127.0.0.1:1/x", "zk://127.0.0.1:1/x"] {
        let output = run(&["--registry", url, "ls"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{url}: {stderr}");
        assert!(
            stderr.contains("cannot reach registry at 127.0.0.1:1"),
            "{url}: {stderr}"
        );
    }
}
