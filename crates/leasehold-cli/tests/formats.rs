//! Every command in every format against real registries: `register` (held by a
//! process), `ls NAME --json`, `watch NAME --json` and `deregister` with
//! `--registry '...?format=X'`, checking what each format carries and, on etcd, the
//! bytes the other framework reads.

mod support;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{run_ok, Running};
use tokio::runtime::Handle;

/// One format on one registry.
struct Case {
    /// `?format=` name.
    format: &'static str,
    /// The registry URL.
    url: String,
    /// The key prefix of the service, on etcd (`None` on ZooKeeper).
    prefix: Option<String>,
    /// Whether the format carries the id, weight and metadata given at registration
    /// (go-kit and go-zero keep only the address).
    carries_labels: bool,
    /// The value the framework reads, on etcd.
    value: Option<&'static str>,
}

impl Case {
    /// The service name for this case, so cases sharing a root never meet.
    fn service(&self) -> String {
        format!("{}-svc", self.format)
    }
}

/// `register`, `ls --json`, `watch --json` and `deregister` in `case`'s format;
/// `stored` reads a key's value from the registry.
fn every_command_in(case: &Case, stored: &dyn Fn(&str) -> Option<Vec<u8>>) {
    let url = case.url.as_str();
    let service = case.service();
    let service = service.as_str();
    let what = case.format;
    let register = [
        "--registry",
        url,
        "register",
        service,
        "127.0.0.1:7001",
        "--id",
        "e1",
        "--meta",
        "color=blue",
        "--weight",
        "2",
    ];
    let mut holder = Running::spawn(&register);
    holder.wait_for_line(&format!("{service}/e1: registered"));

    let listed: Value = serde_json::from_str(&run_ok(&["--registry", url, "ls", service, "--json"]))
        .unwrap_or_else(|e| panic!("{what}: ls --json is JSON: {e}"));
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 1, "{what}: {listed:?}");
    let instance = &listed[0];
    assert_eq!(instance["addr"], "127.0.0.1:7001", "{what}: {instance}");
    let id = instance["id"].as_str().expect("an id").to_owned();
    if case.carries_labels {
        assert_eq!(id, "e1", "{what}");
        assert_eq!(instance["weight"], 2, "{what}: {instance}");
        assert_eq!(instance["metadata"]["color"], "blue", "{what}: {instance}");
    } else {
        assert_eq!(instance["weight"], 1, "{what}: defaulted: {instance}");
        assert_eq!(instance["metadata"], serde_json::json!({}), "{what}: {instance}");
    }
    if let (Some(prefix), Some(value)) = (&case.prefix, case.value) {
        let key = format!("{prefix}{service}/{id}");
        let bytes = stored(&key).unwrap_or_else(|| panic!("{what}: nothing at {key}"));
        assert_eq!(String::from_utf8_lossy(&bytes), value, "{what}: {key}");
    }

    let mut watch = Running::spawn(&["--registry", url, "watch", service, "--json"]);
    let snapshot: Value = serde_json::from_str(&watch.next_line()).expect("JSON");
    assert_eq!(snapshot["event"], "snapshot", "{what}: {snapshot}");
    assert_eq!(snapshot["instances"][0]["id"], id.as_str(), "{what}: {snapshot}");
    assert_eq!(
        snapshot["instances"][0]["addr"], "127.0.0.1:7001",
        "{what}: {snapshot}"
    );

    // The holder dies without deregistering; an operator removes what it left.
    holder.signal(Signal::SIGKILL);
    holder.wait();
    let removed = run_ok(&["--registry", url, "deregister", service, &id]);
    assert!(
        removed.contains(&format!("{service}/{id}: deregistered")),
        "{what}: {removed}"
    );
    let line: Value = serde_json::from_str(&watch.wait_for_line("\"removed\"")).expect("JSON");
    assert_eq!(line["instance"]["id"], id.as_str(), "{what}: {line}");
    watch.signal(Signal::SIGTERM);
    watch.wait();
    let empty: Value = serde_json::from_str(&run_ok(&["--registry", url, "ls", service, "--json"])).unwrap();
    assert_eq!(empty, serde_json::json!([]), "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_in_every_etcd_format() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let endpoint = etcd.endpoint(0);
    let case = |format: &'static str, path: &str, prefix: &str, carries_labels, value| Case {
        format,
        url: format!("etcd://{endpoint}{path}"),
        prefix: Some(prefix.to_owned()),
        carries_labels,
        value: Some(value),
    };
    let cases = [
        case(
            "native",
            "/leasehold/services",
            "/leasehold/services/",
            true,
            r#"{"service":"native-svc","id":"e1","addr":"127.0.0.1:7001","metadata":{"color":"blue"},"weight":2}"#,
        ),
        case(
            "go-kit",
            "/services?format=go-kit",
            "/services/",
            false,
            "127.0.0.1:7001",
        ),
        case("go-zero", "?format=go-zero", "", false, "127.0.0.1:7001"),
        case(
            "etcd-naming",
            "?format=etcd-naming",
            "",
            true,
            r#"{"Op":0,"Addr":"127.0.0.1:7001","Metadata":{"color":"blue","weight":"2"}}"#,
        ),
        case(
            "kratos",
            "?format=kratos",
            "/microservices/",
            true,
            r#"{"id":"e1","name":"kratos-svc","version":"","metadata":{"color":"blue","weight":"2"},"endpoints":["grpc://127.0.0.1:7001"]}"#,
        ),
    ];
    let handle = Handle::current();
    tokio::task::spawn_blocking(move || {
        let stored = |key: &str| handle.block_on(etcd.get(key)).expect("etcd answers");
        for case in &cases {
            every_command_in(case, &stored);
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_in_every_zookeeper_format() {
    let zk = leasehold_testkit::ZkEnsemble::start_standalone()
        .await
        .expect("ZooKeeper starts");
    let connect = zk.connect_string();
    let case = |format: &'static str, path: &str, carries_labels| Case {
        format,
        url: format!("zk://{connect}{path}"),
        prefix: None,
        carries_labels,
        value: None,
    };
    // go-kit's node is named `_c_{guid}-{sequence}`, which is the id ls shows.
    let cases = [
        case("go-kit", "/services?format=go-kit", false),
        case("curator", "/services?format=curator", true),
    ];
    tokio::task::spawn_blocking(move || {
        for case in &cases {
            every_command_in(case, &|_| None);
        }
    })
    .await
    .unwrap();
}
