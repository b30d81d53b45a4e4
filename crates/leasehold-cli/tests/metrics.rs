//! `--metrics-addr`: the long-running commands serve leasehold's metrics in Prometheus
//! text format, under the names `leasehold::metrics` documents.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use leasehold::metrics;
use nix::sys::signal::Signal;
use support::{Running, PATIENCE};

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET /metrics` on `addr`, once it answers.
fn scrape(addr: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            write!(stream, "GET /metrics HTTP/1.0\r\nhost: {addr}\r\n\r\n").unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            assert!(
                answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
                "{answer}"
            );
            return answer;
        }
        assert!(Instant::now() < deadline, "nothing serves {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Scrapes until every needle is in the answer.
fn scrape_until(addr: &str, needles: &[String]) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = scrape(addr);
        if needles.iter().all(|n| text.contains(n.as_str())) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "missing some of {needles:#?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_watch_serve_their_metrics() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let registry = &etcd.url("/leasehold/services");
    let register_at = free_addr();
    let mut register = Running::spawn(&[
        "--registry",
        registry,
        "register",
        "echo",
        "127.0.0.1:7001",
        "--id",
        "e1",
        "--metrics-addr",
        &register_at,
    ]);
    register.wait_for_line("echo/e1: registered");
    let text = scrape_until(
        &register_at,
        &[
            format!(
                "{}{{service=\"echo\",state=\"registered\"}} 1",
                metrics::REGISTRATIONS
            ),
            format!("{}_count 1", metrics::WRITE_BATCH_SIZE),
        ],
    );
    assert!(text.contains("# TYPE leasehold_registrations gauge"), "{text}");

    let watch_at = free_addr();
    let mut watch = Running::spawn(&[
        "--registry",
        registry,
        "watch",
        "echo",
        "--metrics-addr",
        &watch_at,
    ]);
    watch.next_line();
    scrape_until(
        &watch_at,
        &[
            format!("{}{{service=\"echo\"}} 1", metrics::DISCOVERY_INSTANCES),
            format!("{}{{service=\"echo\"}}", metrics::DISCOVERY_CHANGES),
        ],
    );
    for running in [register, watch] {
        running.signal(Signal::SIGTERM);
        let (code, seen) = running.wait();
        assert_eq!(code, Some(0), "{seen:#?}");
    }
}
