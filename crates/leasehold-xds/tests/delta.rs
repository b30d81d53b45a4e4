//! Incremental (delta) ADS: only what the client does not have is sent, subscriptions
//! change by deltas, and a reconnecting client that names its versions gets only what
//! changed.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use leasehold::memory::MemoryRegistry;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use leasehold_xds::{ResourceType, XdsOptions};

use support::{assignment_size, register, start_xds, DeltaClient};

/// (name, endpoint count) of each assignment in the response.
fn assignments(response: &DeltaDiscoveryResponse) -> Vec<(String, usize)> {
    response
        .resources
        .iter()
        .map(|r| (r.name.clone(), assignment_size(r.resource.as_ref().unwrap()).1))
        .collect()
}

#[tokio::test]
async fn only_what_the_client_lacks_is_sent() {
    let registry = Arc::new(MemoryRegistry::new());
    let _a = register(&registry, "alpha", "a1", "10.0.0.1:80").await;
    let _b = register(&registry, "beta", "b1", "10.0.0.2:80").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = DeltaClient::connect(xds, "delta-client").await;

    client.subscribe(ResourceType::Endpoints, &["alpha"]).await;
    let first = client.next().await;
    assert_eq!(assignments(&first), [("alpha".to_owned(), 1)]);
    assert!(!first.resources[0].version.is_empty());
    client.ack(&first).await;

    // Adding a name sends that resource alone.
    client.subscribe(ResourceType::Endpoints, &["beta"]).await;
    let second = client.next().await;
    assert_eq!(assignments(&second), [("beta".to_owned(), 1)]);
    client.ack(&second).await;

    // A change to beta sends beta alone.
    let _b2 = register(&registry, "beta", "b2", "10.0.0.3:80").await;
    let pushed = client.next().await;
    assert_eq!(assignments(&pushed), [("beta".to_owned(), 2)]);
    assert_ne!(pushed.resources[0].version, second.resources[0].version);

    // A NACK is not answered.
    client.nack(ResourceType::Endpoints, &pushed, "no thanks").await;
    client.expect_quiet("a NACK is not answered").await;

    // After unsubscribing, changes to beta are not sent. (Subscribing to gamma in the
    // same request makes the server answer, so the test knows it was processed.)
    client
        .delta(DeltaDiscoveryRequest {
            type_url: ResourceType::Endpoints.type_url(),
            resource_names_subscribe: vec!["gamma".to_owned()],
            resource_names_unsubscribe: vec!["beta".to_owned()],
            ..Default::default()
        })
        .await;
    assert_eq!(assignments(&client.next().await), [("gamma".to_owned(), 0)]);
    let _b3 = register(&registry, "beta", "b3", "10.0.0.4:80").await;
    client.expect_quiet("an unsubscribed resource is not sent").await;
}

#[tokio::test]
async fn a_reconnecting_client_gets_only_what_changed() {
    let registry = Arc::new(MemoryRegistry::new());
    let _a = register(&registry, "alpha", "a1", "10.0.0.1:80").await;
    let _b = register(&registry, "beta", "b1", "10.0.0.2:80").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = DeltaClient::connect(xds, "delta-client").await;
    client
        .subscribe(ResourceType::Endpoints, &["alpha", "beta"])
        .await;
    let first = client.next().await;
    assert_eq!(first.resources.len(), 2);
    let versions: HashMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(client);

    let _a2 = register(&registry, "alpha", "a2", "10.0.0.5:80").await;
    let mut client = DeltaClient::connect(xds, "delta-client").await;
    client
        .delta(DeltaDiscoveryRequest {
            type_url: ResourceType::Endpoints.type_url(),
            resource_names_subscribe: vec!["alpha".to_owned(), "beta".to_owned()],
            initial_resource_versions: versions,
            ..Default::default()
        })
        .await;
    assert_eq!(assignments(&client.next().await), [("alpha".to_owned(), 2)]);
    client.expect_quiet("beta did not change and is not sent").await;
}

#[tokio::test]
async fn a_wildcard_is_answered_empty() {
    let registry = Arc::new(MemoryRegistry::new());
    let _a = register(&registry, "alpha", "a1", "10.0.0.1:80").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = DeltaClient::connect(xds, "delta-client").await;
    client.subscribe(ResourceType::Cluster, &[]).await;
    let response = client.next().await;
    assert!(response.resources.is_empty());
    client.ack(&response).await;
    client.subscribe(ResourceType::Cluster, &["alpha"]).await;
    let response = client.next().await;
    assert_eq!(response.resources.len(), 1);
    assert_eq!(response.resources[0].name, "alpha");
}
