//! Incremental (delta) ADS: only what the client does not have is sent, subscriptions
//! change by deltas, and a reconnecting client that names its versions gets only what
//! changed.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::{Instance, RegisterOptions, Registration, Registry};
use leasehold_xds::envoy_types::pb::envoy::config::core::v3::Node;
use leasehold_xds::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use leasehold_xds::envoy_types::pb::google::rpc::Status as RpcStatus;
use leasehold_xds::{ResourceType, XdsOptions};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use support::start_xds;

const QUIET: Duration = Duration::from_millis(500);

/// A raw incremental ADS stream.
struct DeltaClient {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaClient {
    async fn connect(xds: SocketAddr) -> DeltaClient {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .unwrap();
        let (requests, rx) = mpsc::channel(16);
        let responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        DeltaClient { requests, responses }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        let request = DeltaDiscoveryRequest {
            node: Some(Node {
                id: "delta-client".to_owned(),
                ..Default::default()
            }),
            ..request
        };
        self.requests.send(request).await.unwrap();
    }

    async fn subscribe(&self, kind: ResourceType, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: kind.type_url(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response within 10s")
            .unwrap()
            .unwrap()
    }

    async fn quiet(&mut self) -> bool {
        match tokio::time::timeout(QUIET, self.responses.message()).await {
            Err(_) => true,
            Ok(unexpected) => {
                eprintln!("unexpected: {unexpected:?}");
                false
            }
        }
    }
}

async fn register(registry: &MemoryRegistry, service: &str, id: &str, addr: &str) -> Registration {
    let instance = Instance::builder(service, addr).id(id).build().unwrap();
    registry
        .register(instance, RegisterOptions::default())
        .await
        .unwrap()
}

/// (name, endpoint count) of each assignment in the response.
fn assignments(response: &DeltaDiscoveryResponse) -> Vec<(String, usize)> {
    response
        .resources
        .iter()
        .map(|r| {
            let cla = ClusterLoadAssignment::decode(r.resource.as_ref().unwrap().value.as_slice()).unwrap();
            (
                r.name.clone(),
                cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum(),
            )
        })
        .collect()
}

#[tokio::test]
async fn only_what_the_client_lacks_is_sent() {
    let registry = Arc::new(MemoryRegistry::new());
    let _a = register(&registry, "alpha", "a1", "10.0.0.1:80").await;
    let _b = register(&registry, "beta", "b1", "10.0.0.2:80").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = DeltaClient::connect(xds).await;

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
    client
        .send(DeltaDiscoveryRequest {
            type_url: ResourceType::Endpoints.type_url(),
            response_nonce: pushed.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "no thanks".to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
        .await;
    assert!(client.quiet().await);

    // After unsubscribing, changes to beta are not sent. (Subscribing to gamma in the
    // same request makes the server answer, so the test knows it was processed.)
    client
        .send(DeltaDiscoveryRequest {
            type_url: ResourceType::Endpoints.type_url(),
            resource_names_subscribe: vec!["gamma".to_owned()],
            resource_names_unsubscribe: vec!["beta".to_owned()],
            ..Default::default()
        })
        .await;
    assert_eq!(assignments(&client.next().await), [("gamma".to_owned(), 0)]);
    let _b3 = register(&registry, "beta", "b3", "10.0.0.4:80").await;
    assert!(client.quiet().await);
}

#[tokio::test]
async fn a_reconnecting_client_gets_only_what_changed() {
    let registry = Arc::new(MemoryRegistry::new());
    let _a = register(&registry, "alpha", "a1", "10.0.0.1:80").await;
    let _b = register(&registry, "beta", "b1", "10.0.0.2:80").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = DeltaClient::connect(xds).await;
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
    let mut client = DeltaClient::connect(xds).await;
    client
        .send(DeltaDiscoveryRequest {
            type_url: ResourceType::Endpoints.type_url(),
            resource_names_subscribe: vec!["alpha".to_owned(), "beta".to_owned()],
            initial_resource_versions: versions,
            ..Default::default()
        })
        .await;
    assert_eq!(assignments(&client.next().await), [("alpha".to_owned(), 2)]);
    assert!(client.quiet().await, "beta did not change and is not sent");
}

#[tokio::test]
async fn a_wildcard_is_answered_empty() {
    let registry = Arc::new(MemoryRegistry::new());
    let _a = register(&registry, "alpha", "a1", "10.0.0.1:80").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = DeltaClient::connect(xds).await;
    client.subscribe(ResourceType::Cluster, &[]).await;
    let response = client.next().await;
    assert!(response.resources.is_empty());
    client.ack(&response).await;
    client.subscribe(ResourceType::Cluster, &["alpha"]).await;
    let response = client.next().await;
    assert_eq!(response.resources.len(), 1);
    assert_eq!(response.resources[0].name, "alpha");
}
