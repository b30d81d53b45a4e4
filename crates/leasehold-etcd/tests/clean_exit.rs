//! A program that registers and returns from `main` (its handle dropped at the end of
//! `#[tokio::main]`) leaves no key behind: the key is gone as soon as the process has
//! exited, long before its lease (TTL 60 s) could expire. The program is this test
//! binary, run again as a child process with the registry's URL in the environment.

mod common;

use std::time::Duration;

use common::{exists, instance, key, ROOT};
use leasehold::{RegisterOptions, Registry};
use leasehold_testkit::EtcdCluster;
use tokio::time::Instant;

const CHILD_URL: &str = "LEASEHOLD_CLEAN_EXIT_URL";

/// The child program's `main`: registers, says so, and returns with the handle in scope.
#[tokio::main]
async fn program(url: String) {
    let registry = common::connect_url(&url).await;
    let _registration = registry
        .register(instance("exiting"), RegisterOptions::ttl(Duration::from_secs(60)))
        .await
        .unwrap();
    println!("registered");
}

/// The child's entry point: does nothing unless run as the child.
#[test]
fn child_program() {
    if let Ok(url) = std::env::var(CHILD_URL) {
        program(url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_from_main_leaves_no_key() {
    let etcd = EtcdCluster::start_single().await.expect("etcd starts");
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_program", "--nocapture", "--test-threads=1"])
        .env(CHILD_URL, etcd.url(ROOT))
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
    let left = exists(&etcd, &key("exiting")).await;
    println!(
        "key present {:?} after the child exited: {left}",
        exited.elapsed()
    );
    assert!(
        !left,
        "a program that returned from main must leave no key (its lease has a TTL of 60 s)"
    );
}
