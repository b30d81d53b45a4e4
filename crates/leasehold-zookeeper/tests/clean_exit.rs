//! A program that registers and returns from `main` (its handle dropped at the end of
//! `#[tokio::main]`) leaves no node behind: the node is gone as soon as the process has
//! exited, long before its session could time out. The program is this test binary,
//! run again as a child process with the registry's URL in the environment.

mod common;

use std::time::Duration;

use common::{instance, nodes, service};
use leasehold::{RegisterOptions, Registry, ServiceName};
use leasehold_testkit::zookeeper::ZkEnsemble;
use leasehold_zookeeper::ZkRegistry;
use tokio::time::Instant;

const CHILD_URL: &str = "LEASEHOLD_CLEAN_EXIT_URL";
const CHILD_SERVICE: &str = "LEASEHOLD_CLEAN_EXIT_SERVICE";

/// The child program's `main`: registers, says so, and returns with the handle in scope.
#[tokio::main]
async fn program(url: String, service: ServiceName) {
    let registry = ZkRegistry::connect(&url.parse().unwrap()).unwrap();
    let _registration = registry
        .register(
            instance(&service, "exiting"),
            RegisterOptions::ttl(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    println!("registered");
}

/// The child's entry point: does nothing unless run as the child.
#[test]
fn child_program() {
    if let (Ok(url), Ok(service)) = (std::env::var(CHILD_URL), std::env::var(CHILD_SERVICE)) {
        program(url, ServiceName::new(service).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_from_main_leaves_no_node() {
    let zk = ZkEnsemble::start_standalone().await.expect("ZooKeeper starts");
    let svc = service("exit");
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_program", "--nocapture", "--test-threads=1"])
        .env(CHILD_URL, common::url(&zk, "").to_string())
        .env(CHILD_SERVICE, svc.as_str())
        .output()
        .await
        .expect("the child runs");
    let exited = Instant::now();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("registered"),
        "the child registers and exits cleanly: {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let left = nodes(&zk, &svc).await;
    println!("nodes {:?} after the child exited: {left:?}", exited.elapsed());
    assert!(
        left.is_empty(),
        "a program that returned from main must leave no node (its session outlives it), found {left:?}"
    );
}
