//! TLS with a CA and a client certificate, against a real etcd that requires them.
//!
//! The testkit starts plain-HTTP servers only, so this test starts its own etcd with
//! certificates made by the `openssl` command, and kills it when done.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use leasehold::RegistryUrl;
use leasehold_etcd::EtcdRegistry;

/// An etcd process, killed and reaped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
fn certificates(dir: &Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        "[server]\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n\
         [client]\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=leasehold test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, section) in [("server", "server"), ("client", "client")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-extensions",
                section,
                "-out",
                &pem,
            ],
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_etcd(dir: &Path) -> (Server, String) {
    let (client, peer) = (free_port(), free_port());
    let program = std::env::var("LEASEHOLD_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let child = Command::new(program)
        .current_dir(dir)
        .args(["--name", "tls", "--data-dir", "data"])
        .args(["--listen-client-urls", &format!("https://127.0.0.1:{client}")])
        .args(["--advertise-client-urls", &format!("https://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer}")])
        .args(["--cert-file", "server.pem", "--key-file", "server.key"])
        .args(["--client-cert-auth", "--trusted-ca-file", "ca.pem"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("etcd runs (install etcd-server)");
    (Server(child), format!("127.0.0.1:{client}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_ca_and_client_certificate() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_server, endpoint) = start_etcd(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let url: RegistryUrl = format!(
        "etcd://{endpoint}{ROOT}?ca={}&cert={}&key={}&connect_timeout=1s&request_timeout=2s",
        file("ca.pem"),
        file("client.pem"),
        file("client.key")
    )
    .parse()
    .unwrap();

    let deadline = tokio::time::Instant::now() + WAIT;
    let registry = loop {
        match EtcdRegistry::connect(&url).await {
            Ok(registry) => break registry,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "etcd with TLS not up yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot connect with TLS: {e}"),
        }
    };
    let _a = register(&registry, "a").await;
    let discovery = watch_echo(&registry).await;
    assert_eq!(discovery.snapshot().len(), 1);

    // Without the client certificate the server refuses the connection: a clear error,
    // in bounded time.
    let without: RegistryUrl = format!(
        "etcd://{endpoint}{ROOT}?ca={}&connect_timeout=1s&request_timeout=2s",
        file("ca.pem")
    )
    .parse()
    .unwrap();
    let err = tokio::time::timeout(WAIT, EtcdRegistry::connect(&without))
        .await
        .expect("bounded")
        .unwrap_err();
    eprintln!("TLS without a client certificate: {err}");
    assert!(err.to_string().contains(&endpoint), "{err}");

    // A missing file is named.
    let missing: RegistryUrl = format!("etcd://{endpoint}{ROOT}?ca=/nonexistent/ca.pem")
        .parse()
        .unwrap();
    let err = EtcdRegistry::connect(&missing).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
