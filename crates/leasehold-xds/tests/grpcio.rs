//! A real xDS client nobody here wrote, Python's grpcio, resolves `xds:///greeter`
//! through leasehold-xds and balances its calls over Greeter servers registered in etcd;
//! a server an operator drains gets no calls until it is undrained.
//!
//! The client runs from a virtualenv under the target dir with the grpcio version in
//! `tests/grpcio/requirements.txt`, created on first use (needs `python3` with `venv`;
//! `scripts/install-test-deps` installs them and the virtualenv).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::{Instance, InstanceId, RegisterOptions, Registration, Registry, RegistryUrl, ServiceName};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;
use leasehold_xds::envoy_types::pb::envoy::config::core::v3::{address, socket_address, HealthStatus};
use leasehold_xds::envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use leasehold_xds::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use leasehold_xds::{ResourceType, XdsOptions};
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use support::{start_xds, AdsClient, GreeterServer};

/// The virtualenv's python, with grpcio installed; created on first use.
fn grpcio_python() -> PathBuf {
    static CREATING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xds-venv");
    let python = venv.join("bin/python");
    let has_grpcio = || {
        std::process::Command::new(&python)
            .args(["-c", "import grpc"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_grpcio() {
        return python;
    }
    let venv_made = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        venv_made,
        "cannot create a Python virtualenv at {}: install python3 and python3-venv (scripts/install-test-deps)",
        venv.display()
    );
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpcio/requirements.txt");
    let installed = std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed && has_grpcio(),
        "pip could not install grpcio into {}",
        venv.display()
    );
    python
}

/// What a batch of calls did.
#[derive(Debug)]
struct Calls {
    served: HashMap<String, u64>,
    failed: u64,
    error: String,
}

impl Calls {
    fn to(&self, server: &str) -> u64 {
        self.served.get(server).copied().unwrap_or(0)
    }
}

/// The grpcio client (`tests/grpcio/client.py`), driven over its stdin.
struct PythonClient {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: PathBuf,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl PythonClient {
    async fn start(xds: SocketAddr) -> PythonClient {
        let python = tokio::task::spawn_blocking(grpcio_python).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = dir.path().join("bootstrap.json");
        let config = serde_json::json!({
            "xds_servers": [{
                "server_uri": xds.to_string(),
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": "grpcio-test", "locality": {}},
        });
        std::fs::write(&bootstrap, config.to_string()).unwrap();
        let stderr = dir.path().join("client.log");
        let mut child = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpcio/client.py"))
            .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("the grpcio client starts");
        PythonClient {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            stderr,
            _child: child,
            _dir: dir,
        }
    }

    /// Makes `count` calls to `target`, one after another.
    async fn call(&mut self, target: &str, count: usize) -> Calls {
        self.command(format!("call {target} {count}")).await
    }

    /// Makes `count` calls to `target` with the request header `header` (`key=value`).
    async fn call_with(&mut self, target: &str, count: usize, header: &str) -> Calls {
        self.command(format!("call {target} {count} {header}")).await
    }

    async fn command(&mut self, command: String) -> Calls {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        let line = tokio::time::timeout(Duration::from_secs(120), self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("the client answers in time; its log: {}", self.log()))
            .unwrap()
            .unwrap_or_else(|| panic!("the client exited; its log: {}", self.log()));
        let answer: serde_json::Value = serde_json::from_str(&line).unwrap();
        let served = answer["served"]
            .as_object()
            .unwrap_or_else(|| panic!("{line}"))
            .iter()
            .map(|(server, n)| (server.clone(), n.as_u64().unwrap()))
            .collect();
        Calls {
            served,
            failed: answer["failed"].as_u64().unwrap(),
            error: answer["error"].as_str().unwrap_or_default().to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// A Greeter server named `name`, registered under `service` with `weight`.
async fn serve(
    registry: &EtcdRegistry,
    service: &str,
    name: &str,
    weight: u32,
) -> (GreeterServer, Registration) {
    let server = GreeterServer::start(name).await;
    let instance = Instance::builder(service, server.addr.to_string())
        .id(name)
        .weight(weight)
        .build()
        .unwrap();
    let registration = registry
        .register(instance, RegisterOptions::default())
        .await
        .unwrap();
    (server, registration)
}

/// The ports of the assignment's `DRAINING` endpoints.
fn draining_ports(cla: &ClusterLoadAssignment) -> Vec<u32> {
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter(|e| e.health_status == HealthStatus::Draining as i32)
        .filter_map(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(endpoint)) => match endpoint.address.as_ref()?.address.as_ref()? {
                address::Address::SocketAddress(socket) => match socket.port_specifier {
                    Some(socket_address::PortSpecifier::PortValue(port)) => Some(port),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_balances_over_the_registry_through_xds() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let url: RegistryUrl = etcd.url("/leasehold/services").parse().unwrap();
    // The servers and the xDS server are separate registry clients, as in production.
    let registry = EtcdRegistry::connect(&url).await.unwrap();
    let xds_registry: Arc<dyn Registry> = Arc::new(EtcdRegistry::connect(&url).await.unwrap());
    let sticky = ServiceName::new("sticky").unwrap();
    let options = XdsOptions::default().ring_hash(sticky, Some("x-user".to_owned()));
    let (xds, _server, _stop) = start_xds(xds_registry, options).await;

    let (_a, a) = serve(&registry, "greeter", "a", 1).await;
    let (b_server, _b_registration) = serve(&registry, "greeter", "b", 1).await;
    let (_c, _c_registration) = serve(&registry, "greeter", "c", 1).await;
    let mut client = PythonClient::start(xds).await;

    // Calls spread over all three.
    let calls = client.call("xds:///greeter", 300).await;
    assert_eq!(calls.failed, 0, "{calls:?}; client log: {}", client.log());
    for server in ["a", "b", "c"] {
        assert!(calls.to(server) >= 60, "{server}: {calls:?}");
    }

    // One that deregisters stops getting calls.
    a.deregister().await.unwrap();
    let deregistered = Instant::now();
    let stopped_after = loop {
        assert!(
            deregistered.elapsed() < Duration::from_secs(10),
            "calls still reach the deregistered server 10s after"
        );
        if client.call("xds:///greeter", 20).await.to("a") == 0 {
            break deregistered.elapsed();
        }
    };
    eprintln!("calls stopped reaching the deregistered server {stopped_after:?} after its deregistration");
    let calls = client.call("xds:///greeter", 200).await;
    assert_eq!((calls.to("a"), calls.failed), (0, 0), "{calls:?}");
    assert!(calls.to("b") >= 50 && calls.to("c") >= 50, "{calls:?}");

    // A new one starts getting calls.
    let (_d, _d_registration) = serve(&registry, "greeter", "d", 1).await;
    let joined = Instant::now();
    while client.call("xds:///greeter", 20).await.to("d") == 0 {
        assert!(
            joined.elapsed() < Duration::from_secs(10),
            "a new server gets no calls 10s after joining"
        );
    }

    // Weights are honoured in proportion: 1 : 3.
    let (_light, _light_registration) = serve(&registry, "weighted", "light", 1).await;
    let (_heavy, _heavy_registration) = serve(&registry, "weighted", "heavy", 3).await;
    let calls = client.call("xds:///weighted", 800).await;
    eprintln!("weights 1 and 3: {calls:?}");
    assert_eq!(calls.failed, 0, "{calls:?}");
    assert_eq!(calls.to("light") + calls.to("heavy"), 800, "{calls:?}");
    // Expected 200 and 600; the client picks at random in proportion.
    assert!((130..=270).contains(&calls.to("light")), "{calls:?}");

    // Ring hash on a header: one user's calls all go to one server; users spread.
    let mut sticky_servers = Vec::new();
    for name in ["s1", "s2", "s3"] {
        sticky_servers.push(serve(&registry, "sticky", name, 1).await);
    }
    let mut chosen = std::collections::HashSet::new();
    for user in 0..12 {
        let calls = client
            .call_with("xds:///sticky", 10, &format!("x-user=user-{user}"))
            .await;
        assert_eq!(calls.failed, 0, "{calls:?}");
        assert_eq!(
            calls.served.len(),
            1,
            "user-{user}'s calls went to one server: {calls:?}"
        );
        chosen.extend(calls.served.into_keys());
    }
    assert!(chosen.len() >= 2, "12 users all hashed to {chosen:?}");

    // An operator drains b through the registry: it is DRAINING in the assignment, and
    // the client sends it nothing until it is undrained. (Before the registry goes away
    // below, which ends what can be written to it.)
    let greeter = ServiceName::new("greeter").unwrap();
    let b = InstanceId::new("b").unwrap();
    let mut drain_watcher = AdsClient::connect(xds, "drain-watcher").await;
    drain_watcher
        .subscribe(ResourceType::Endpoints, &["greeter"])
        .await;
    assert!(registry.drain(&greeter, &b).await.unwrap(), "b is registered");
    let drained = Instant::now();
    let draining = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let response = drain_watcher
                .next_within(Duration::from_secs(60))
                .await
                .expect("a push");
            drain_watcher.ack(&response, &["greeter"]).await;
            let cla = ClusterLoadAssignment::decode(response.resources[0].value.as_slice()).unwrap();
            let draining = draining_ports(&cla);
            if !draining.is_empty() {
                return draining;
            }
        }
    })
    .await
    .expect("the drain is pushed within a minute");
    assert_eq!(draining, [u32::from(b_server.addr.port())], "b alone is DRAINING");
    let drained_after = loop {
        assert!(
            drained.elapsed() < Duration::from_secs(60),
            "calls still reach the drained server a minute after its drain; client log: {}",
            client.log()
        );
        if client.call("xds:///greeter", 20).await.to("b") == 0 {
            break drained.elapsed();
        }
    };
    eprintln!("calls stopped reaching the drained server {drained_after:?} after its drain");
    let calls = client.call("xds:///greeter", 200).await;
    assert_eq!((calls.to("b"), calls.failed), (0, 0), "{calls:?}");
    assert!(calls.to("c") >= 50 && calls.to("d") >= 50, "{calls:?}");
    assert!(registry.undrain(&greeter, &b).await.unwrap(), "b was drained");
    let undrained = Instant::now();
    while client.call("xds:///greeter", 20).await.to("b") == 0 {
        assert!(
            undrained.elapsed() < Duration::from_secs(60),
            "the undrained server gets no calls a minute after its undrain"
        );
    }
    eprintln!(
        "calls reached the undrained server again {:?} after its undrain",
        undrained.elapsed()
    );

    // The registry goes away: the last known set is kept and served, marked UNKNOWN.
    let mut watcher = AdsClient::connect(xds, "stale-watcher").await;
    watcher.subscribe(ResourceType::Endpoints, &["greeter"]).await;
    etcd.kill(0).await.unwrap();
    let stale = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let response = watcher
                .next_within(Duration::from_secs(60))
                .await
                .expect("a push");
            watcher.ack(&response, &["greeter"]).await;
            let cla = ClusterLoadAssignment::decode(response.resources[0].value.as_slice()).unwrap();
            let health: Vec<i32> = cla
                .endpoints
                .iter()
                .flat_map(|l| l.lb_endpoints.iter().map(|e| e.health_status))
                .collect();
            if health.iter().all(|h| *h == HealthStatus::Unknown as i32) {
                return health.len();
            }
        }
    })
    .await
    .expect("the stale set is pushed within a minute");
    assert_eq!(stale, 3, "b, c and d stay in the assignment");
    eprintln!("etcd killed: the assignment keeps {stale} endpoints, marked UNKNOWN");
    let calls = client.call("xds:///greeter", 150).await;
    assert_eq!(calls.failed, 0, "{calls:?}: {}", calls.error);
    for server in ["b", "c", "d"] {
        assert!(calls.to(server) > 0, "{server}: {calls:?}");
    }
}
