//! A Kratos registry seen through `?format=kratos&scheme=…`: each scheme lists the
//! instances that have an endpoint of it; the others are skipped and counted, never
//! silently dropped.

use leasehold::memory::MemoryRegistry;
use leasehold::{Registry, RegistryUrl, ServiceName, WatchOptions};

/// What a Kratos app with a gRPC and an HTTP server writes (`grpcs`/`https` with TLS).
fn kratos(id: &str, endpoints: &[&str]) -> Vec<u8> {
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    format!(
        r#"{{"id":"{id}","name":"helloworld","version":"v1","metadata":null,"endpoints":[{}]}}"#,
        endpoints.join(",")
    )
    .into_bytes()
}

#[tokio::test]
async fn each_scheme_lists_its_instances_and_counts_the_rest() {
    let hello = ServiceName::new("helloworld").unwrap();
    let writer =
        MemoryRegistry::connect(&RegistryUrl::parse("memory://kratos-schemes?format=kratos").unwrap())
            .unwrap();
    let store = writer.store();
    store.put_raw(
        "/microservices/helloworld/plain",
        &kratos("plain", &["grpc://10.0.0.1:9000", "http://10.0.0.1:8000"]),
    );
    store.put_raw(
        "/microservices/helloworld/tls",
        &kratos("tls", &["grpcs://10.0.0.2:9443", "https://10.0.0.2:8443"]),
    );
    store.put_raw(
        "/microservices/helloworld/http",
        &kratos("http", &["http://10.0.0.3:8000"]),
    );

    let cases = [
        ("grpc", vec!["10.0.0.1:9000"], 2),
        ("grpcs", vec!["10.0.0.2:9443"], 2),
        ("http", vec!["10.0.0.1:8000", "10.0.0.3:8000"], 1),
        ("https", vec!["10.0.0.2:8443"], 2),
    ];
    for (scheme, expected, skipped) in cases {
        let url = format!("memory://kratos-schemes?format=kratos&scheme={scheme}");
        let registry = MemoryRegistry::connect(&RegistryUrl::parse(&url).unwrap()).unwrap();
        let mut listed: Vec<String> = registry
            .list(&hello)
            .await
            .unwrap()
            .iter()
            .map(|i| i.addr().to_string())
            .collect();
        listed.sort();
        assert_eq!(listed, expected, "{scheme}");

        let discovery = registry.watch(&hello, WatchOptions::default()).await.unwrap();
        assert_eq!(discovery.snapshot().len(), expected.len(), "{scheme}");
        assert_eq!(discovery.skipped(), skipped, "{scheme}: skipped and counted");
    }
}
