//! Every etcd format in both directions against one real etcd: what another framework
//! writes (its exact key and bytes, under a lease, through a plain etcd client) is
//! discovered, and what leasehold registers with `?format=` is stored at exactly the key
//! and bytes that framework's discovery reads. Malformed values under a watched prefix
//! are skipped and counted while the watch goes on.
//!
//! Each format uses its own root or service, so all share one server.

mod common;

use std::time::Duration;

use common::{connect_url, eventually, raw, WAIT};
use etcd_client::{GetOptions, PutOptions};
use leasehold::{Instance, RegisterOptions, RegistrationState, Registry, ServiceName, WatchOptions};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;

const TTL: Duration = Duration::from_secs(10);

/// A real etcd and a plain client holding one lease, as a Go service of another
/// framework would.
struct Foreign {
    etcd: EtcdCluster,
    client: etcd_client::Client,
    lease: i64,
}

impl Foreign {
    async fn start() -> Foreign {
        let etcd = EtcdCluster::start_single().await.expect("etcd starts");
        let mut client = raw(&etcd).await;
        // Long enough to outlive the test without keepalives.
        let lease = client.lease_grant(600, None).await.unwrap().id();
        Foreign { etcd, client, lease }
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("etcd://{}{path_and_query}", self.etcd.endpoint(0))
    }

    /// `Put(key, value)` under the foreign lease, as the frameworks' registrars do.
    async fn put(&self, key: &str, value: &[u8]) {
        let options = PutOptions::new().with_lease(self.lease);
        self.client.clone().put(key, value, Some(options)).await.unwrap();
    }

    async fn delete(&self, key: &str) {
        self.client.clone().delete(key, None).await.unwrap();
    }

    /// Every key under `prefix` with its value and lease id.
    async fn range(&self, prefix: &str) -> Vec<(String, Vec<u8>, i64)> {
        let answer = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        answer
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_owned(), kv.value().to_vec(), kv.lease()))
            .collect()
    }
}

/// One format's case: where its framework keeps `service`, what it writes there, and
/// what leasehold must make of it; and an instance leasehold registers, with the key
/// suffix and bytes the framework must find.
struct Case {
    /// The registry URL's path and query.
    url: &'static str,
    service: &'static str,
    /// The framework's key prefix for `service`.
    prefix: String,
    /// A key (suffix after `prefix`) and value as the framework writes them.
    foreign_key: String,
    foreign_value: &'static str,
    /// What leasehold decodes from them.
    decoded: Instance,
    /// An instance leasehold registers with this format.
    ours: Instance,
    /// The key suffix it must be stored at (`None`: the registry's lease id in decimal).
    our_key: Option<&'static str>,
    /// The bytes it must be stored as.
    our_value: &'static str,
    /// What the format gives back for `ours` (weight and zone dropped where it cannot
    /// carry them).
    ours_decoded: Instance,
}

fn instance(service: &str, addr: &str, id: &str) -> leasehold::InstanceBuilder {
    Instance::builder(service, addr).id(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_reads_and_writes_what_its_framework_does() {
    common::init_logging();
    let foreign = Foreign::start().await;
    let lease = foreign.lease.to_string();
    let cases = [
        Case {
            url: "/t",
            service: "echo",
            prefix: "/t/echo/".into(),
            foreign_key: "a".into(),
            foreign_value: r#"{"service":"echo","id":"a","addr":"10.0.0.5:7001","metadata":{"k":"v"},"weight":2,"zone":"z1"}"#,
            decoded: instance("echo", "10.0.0.5:7001", "a")
                .metadata("k", "v")
                .weight(2)
                .zone("z1")
                .build()
                .unwrap(),
            ours: instance("echo", "10.0.0.6:7001", "b").build().unwrap(),
            our_key: Some("b"),
            our_value: r#"{"service":"echo","id":"b","addr":"10.0.0.6:7001","metadata":{},"weight":1}"#,
            ours_decoded: instance("echo", "10.0.0.6:7001", "b").build().unwrap(),
        },
        // go-kit sd/etcdv3: Registrar.Register puts Service.Key => Service.Value under
        // its lease; the Instancer reads every value under its prefix.
        Case {
            url: "/services?format=go-kit",
            service: "hello",
            prefix: "/services/hello/".into(),
            foreign_key: "10.0.0.5:8080".into(),
            foreign_value: "http://10.0.0.5:8080",
            decoded: instance("hello", "http://10.0.0.5:8080", "10.0.0.5:8080")
                .build()
                .unwrap(),
            ours: instance("hello", "http://10.0.0.6:8080", "10.0.0.6:8080")
                .weight(5)
                .zone("z1")
                .metadata("k", "v")
                .build()
                .unwrap(),
            our_key: Some("10.0.0.6:8080"),
            our_value: "http://10.0.0.6:8080",
            ours_decoded: instance("hello", "http://10.0.0.6:8080", "10.0.0.6:8080")
                .build()
                .unwrap(),
        },
        // go-zero discov.Publisher: `{key}/{lease id}` => `host:port` under its lease.
        Case {
            url: "?format=go-zero",
            service: "user.rpc",
            prefix: "user.rpc/".into(),
            foreign_key: lease.clone(),
            foreign_value: "10.0.0.5:8080",
            decoded: instance("user.rpc", "10.0.0.5:8080", &lease).build().unwrap(),
            ours: Instance::builder("user.rpc", "10.0.0.6:8080")
                .weight(5)
                .zone("z1")
                .build()
                .unwrap(),
            our_key: None,
            our_value: "10.0.0.6:8080",
            // The id is the lease's; compared separately.
            ours_decoded: Instance::builder("user.rpc", "10.0.0.6:8080").build().unwrap(),
        },
        // etcd naming/endpoints: Manager.AddEndpoint(key, Endpoint{Addr, Metadata})
        // stores the JSON of its internal Update; grpc-go's etcd:/// resolver reads it.
        Case {
            url: "?format=etcd-naming",
            service: "my-service",
            prefix: "my-service/".into(),
            foreign_key: "10.0.0.5:50051".into(),
            foreign_value: r#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":{"region":"eu","weight":"3","zone":"eu-1"}}"#,
            decoded: instance("my-service", "10.0.0.5:50051", "10.0.0.5:50051")
                .metadata("region", "eu")
                .weight(3)
                .zone("eu-1")
                .build()
                .unwrap(),
            ours: instance("my-service", "10.0.0.6:50051", "10.0.0.6:50051")
                .weight(3)
                .zone("eu-1")
                .build()
                .unwrap(),
            our_key: Some("10.0.0.6:50051"),
            our_value: r#"{"Op":0,"Addr":"10.0.0.6:50051","Metadata":{"weight":"3","zone":"eu-1"}}"#,
            ours_decoded: instance("my-service", "10.0.0.6:50051", "10.0.0.6:50051")
                .weight(3)
                .zone("eu-1")
                .build()
                .unwrap(),
        },
        // Kratos' etcd Registry: `{namespace}/{name}/{id}` => json.Marshal(ServiceInstance).
        Case {
            url: "?format=kratos",
            service: "helloworld",
            prefix: "/microservices/helloworld/".into(),
            foreign_key: "e1".into(),
            foreign_value: r#"{"id":"e1","name":"helloworld","version":"v1.0.0","metadata":{"region":"eu"},"endpoints":["http://10.0.0.5:8000?isSecure=false","grpc://10.0.0.5:9000"]}"#,
            decoded: instance("helloworld", "10.0.0.5:9000", "e1")
                .version("v1.0.0")
                .metadata("region", "eu")
                .build()
                .unwrap(),
            ours: instance("helloworld", "10.0.0.6:9000", "e2")
                .version("v2")
                .weight(4)
                .build()
                .unwrap(),
            our_key: Some("e2"),
            our_value: r#"{"id":"e2","name":"helloworld","version":"v2","metadata":{"weight":"4"},"endpoints":["grpc://10.0.0.6:9000"]}"#,
            ours_decoded: instance("helloworld", "10.0.0.6:9000", "e2")
                .version("v2")
                .weight(4)
                .build()
                .unwrap(),
        },
    ];
    for case in cases {
        let registry = connect_url(&foreign.url(case.url)).await;
        foreign_is_discovered(&foreign, &registry, &case).await;
        ours_is_stored_as_the_framework_writes(&foreign, &registry, &case).await;
        registry.shutdown().await;
    }
}

/// The framework's value is discovered by a watcher and `list`; garbage next to it is
/// skipped and counted, and the watcher still follows the framework's delete.
async fn foreign_is_discovered(foreign: &Foreign, registry: &EtcdRegistry, case: &Case) {
    let what = case.url;
    let service = ServiceName::new(case.service).unwrap();
    let discovery = registry.watch(&service, WatchOptions::default()).await.unwrap();
    let key = format!("{}{}", case.prefix, case.foreign_key);
    foreign.put(&key, case.foreign_value.as_bytes()).await;
    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 1)
        .await
        .unwrap_or_else(|| panic!("{what}: the framework's instance is discovered"));
    assert_eq!(*snapshot.instances()[0], case.decoded, "{what}");
    assert_eq!(
        registry.list(&service).await.unwrap(),
        std::slice::from_ref(&case.decoded),
        "{what}"
    );

    let skipped = discovery.skipped();
    foreign
        .put(&format!("{}garbage", case.prefix), b"\xff{not a value")
        .await;
    eventually(&format!("{what}: the malformed value is counted"), || async {
        discovery.skipped() > skipped
    })
    .await;
    assert_eq!(discovery.snapshot().len(), 1, "{what}");
    assert_eq!(registry.list(&service).await.unwrap().len(), 1, "{what}");

    foreign.delete(&key).await;
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .unwrap_or_else(|| panic!("{what}: the watcher follows the delete after the garbage"));
    foreign.delete(&format!("{}garbage", case.prefix)).await;
}

/// leasehold's registration is at exactly the key and bytes the framework reads, under
/// the registry's lease, and gone after deregistration.
async fn ours_is_stored_as_the_framework_writes(foreign: &Foreign, registry: &EtcdRegistry, case: &Case) {
    let what = case.url;
    let service = ServiceName::new(case.service).unwrap();
    let discovery = registry.watch(&service, WatchOptions::default()).await.unwrap();
    let registration = registry
        .register(case.ours.clone(), RegisterOptions::ttl(TTL))
        .await
        .unwrap();
    assert!(registration.wait_for(RegistrationState::Registered, WAIT).await);
    let stored = foreign.range(&case.prefix).await;
    assert_eq!(stored.len(), 1, "{what}: {stored:?}");
    let (key, value, lease) = &stored[0];
    assert_ne!(*lease, 0, "{what}: written under a lease");
    assert_ne!(*lease, foreign.lease, "{what}: under the registry's own lease");
    let suffix = &key[case.prefix.len()..];
    match case.our_key {
        Some(expected) => assert_eq!(suffix, expected, "{what}"),
        // go-zero: the lease the key is written under, in decimal.
        None => assert_eq!(suffix, lease.to_string(), "{what}"),
    }
    assert_eq!(
        String::from_utf8_lossy(value),
        case.our_value,
        "{what}: the bytes the framework reads"
    );

    let snapshot = discovery
        .wait_for(WAIT, |s| s.len() == 1)
        .await
        .unwrap_or_else(|| panic!("{what}: our instance is discovered"));
    let found = &snapshot.instances()[0];
    if case.our_key.is_some() {
        assert_eq!(**found, case.ours_decoded, "{what}");
    } else {
        assert_eq!(
            found.id().as_str(),
            suffix,
            "{what}: go-zero's id is the lease id"
        );
        assert_eq!(
            (found.addr(), found.weight(), found.zone()),
            (case.ours_decoded.addr(), 1, None),
            "{what}: weight and zone defaulted"
        );
    }

    registration.deregister().await.unwrap();
    assert!(
        foreign.range(&case.prefix).await.is_empty(),
        "{what}: deregistered"
    );
    discovery
        .wait_for(WAIT, |s| s.is_empty())
        .await
        .unwrap_or_else(|| panic!("{what}: the deregistration is seen"));
}
