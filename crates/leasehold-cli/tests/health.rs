//! `register --check`: the instance is paused while its service's health check fails
//! and registered again when it passes.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use nix::sys::signal::Signal;
use support::Running;

/// A one-route HTTP server on a thread: `GET /healthz` answers 200 while `healthy`,
/// else 503. Returns its address.
fn health_server(healthy: Arc<AtomicBool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let status = match healthy.load(Ordering::SeqCst) {
                true => "200 OK",
                false => "503 Service Unavailable",
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    addr
}

#[test]
fn a_failing_http_check_pauses_the_registration_until_it_passes() {
    let healthy = Arc::new(AtomicBool::new(true));
    let addr = health_server(healthy.clone());
    let check = format!("http://{addr}/healthz");
    let mut register = Running::spawn(&[
        "--registry",
        "memory://",
        "register",
        "echo",
        "127.0.0.1:7001",
        "--id",
        "e1",
        "--check",
        &check,
        "--check-interval",
        "100ms",
    ]);
    register.wait_for_line(&format!("echo/e1: checking GET {check} every 100ms"));
    register.wait_for_line("echo/e1: registered");
    healthy.store(false, Ordering::SeqCst);
    register.wait_for_line("echo/e1: paused");
    healthy.store(true, Ordering::SeqCst);
    register.wait_for_line("echo/e1: registered");
    register.signal(Signal::SIGTERM);
    let (code, seen) = register.wait();
    assert_eq!(code, Some(0), "{seen:#?}");
}

#[test]
fn tcp_checks_gate_on_the_port_accepting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let check = format!("tcp://{addr}");
    let mut register = Running::spawn(&[
        "--registry",
        "memory://",
        "register",
        "echo",
        "127.0.0.1:7001",
        "--id",
        "e1",
        "--check",
        &check,
        "--check-interval",
        "100ms",
    ]);
    register.wait_for_line("echo/e1: paused");
    let _listener = TcpListener::bind(&addr).expect("the port is still free");
    register.wait_for_line("echo/e1: registered");
    register.signal(Signal::SIGTERM);
    let (code, seen) = register.wait();
    assert_eq!(code, Some(0), "{seen:#?}");
}
