//! The ADS protocol as leasehold-xds speaks it, driven step by step by a raw client:
//! what is sent for a subscription, versions and nonces, ACK and NACK, pushes to many
//! clients, no re-sends, reconnects.

mod support;

use std::sync::Arc;
use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::InstanceUpdate;
use leasehold_xds::envoy_types::pb::envoy::config::cluster::v3::Cluster;
use leasehold_xds::envoy_types::pb::envoy::config::listener::v3::Listener;
use leasehold_xds::envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use leasehold_xds::{ResourceType, XdsOptions};
use prost::Message;

use support::{assignment_size, register, start_xds, AdsClient};

/// (cluster name, endpoint count) of each assignment in the response.
fn endpoints(response: &DiscoveryResponse) -> Vec<(String, usize)> {
    response.resources.iter().map(assignment_size).collect()
}

#[tokio::test]
async fn a_client_gets_the_four_resources_of_what_it_asks_for_and_nothing_else() {
    let registry = Arc::new(MemoryRegistry::new());
    let _one = register(&registry, "greeter", "one", "10.0.0.1:50051").await;
    let _other = register(&registry, "other", "x", "10.0.0.9:50051").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = AdsClient::connect(xds, "client").await;

    let lds = client.subscribe(ResourceType::Listener, &["greeter"]).await;
    assert_eq!(lds.type_url, ResourceType::Listener.type_url());
    let names: Vec<String> = lds
        .resources
        .iter()
        .map(|a| Listener::decode(a.value.as_slice()).unwrap().name)
        .collect();
    assert_eq!(names, ["greeter"]);

    let rds = client.subscribe(ResourceType::Route, &["greeter"]).await;
    let route = RouteConfiguration::decode(rds.resources[0].value.as_slice()).unwrap();
    assert_eq!((rds.resources.len(), route.name.as_str()), (1, "greeter"));

    let cds = client.subscribe(ResourceType::Cluster, &["greeter"]).await;
    let cluster = Cluster::decode(cds.resources[0].value.as_slice()).unwrap();
    assert_eq!((cds.resources.len(), cluster.name.as_str()), (1, "greeter"));

    let eds = client.subscribe(ResourceType::Endpoints, &["greeter"]).await;
    assert_eq!(endpoints(&eds), [("greeter".to_owned(), 1)]);

    // Nonces are unique on the stream; nothing else is sent (not `other`, no repeat).
    let nonces = [&lds.nonce, &rds.nonce, &cds.nonce, &eds.nonce];
    for (i, nonce) in nonces.iter().enumerate() {
        assert!(!nonces[..i].contains(nonce), "nonce {nonce} repeated");
    }
    client.expect_quiet("nothing else is sent").await;

    // A name that is not a service is not a resource; a listener response lists every
    // subscribed listener.
    client
        .request(
            ResourceType::Listener,
            &["greeter", "not a service"],
            &lds.version_info,
            &lds.nonce,
            None,
        )
        .await;
    let lds = client.next().await;
    assert_eq!(lds.resources.len(), 1);
}

#[tokio::test]
async fn changes_are_pushed_to_every_subscribed_client_once() {
    let registry = Arc::new(MemoryRegistry::new());
    let one = register(&registry, "greeter", "one", "10.0.0.1:50051").await;
    let (xds, server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut clients = Vec::new();
    let mut versions = Vec::new();
    for i in 0..3 {
        let mut client = AdsClient::connect(xds, &format!("client-{i}")).await;
        client.subscribe(ResourceType::Listener, &["greeter"]).await;
        let eds = client.subscribe(ResourceType::Endpoints, &["greeter"]).await;
        assert_eq!(endpoints(&eds), [("greeter".to_owned(), 1)]);
        versions.push(eds.version_info);
        clients.push(client);
    }
    assert_eq!(server.followed_services(), 1, "one watch for all clients");

    let _two = register(&registry, "greeter", "two", "10.0.0.2:50051").await;
    for (client, version) in clients.iter_mut().zip(&versions) {
        let eds = client.next().await;
        assert_eq!(
            eds.type_url,
            ResourceType::Endpoints.type_url(),
            "only the endpoints changed"
        );
        assert_eq!(endpoints(&eds), [("greeter".to_owned(), 2)]);
        assert_ne!(&eds.version_info, version);
        client.ack(&eds, &["greeter"]).await;
    }

    // A change that does not touch the assignment sends nothing.
    one.update(InstanceUpdate::new().version(Some("2.0".into())))
        .await
        .unwrap();
    for client in &mut clients {
        client.expect_quiet("the assignment is unchanged").await;
    }

    one.deregister().await.unwrap();
    for client in &mut clients {
        assert_eq!(endpoints(&client.next().await), [("greeter".to_owned(), 1)]);
    }

    // When no client asks for the service any more, its watch stops.
    drop(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.followed_services() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watch outlives its clients"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_nack_is_not_answered_and_the_next_change_is_sent() {
    let registry = Arc::new(MemoryRegistry::new());
    let _one = register(&registry, "greeter", "one", "10.0.0.1:50051").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = AdsClient::connect(xds, "picky").await;
    let first = client.subscribe(ResourceType::Endpoints, &["greeter"]).await;

    let _two = register(&registry, "greeter", "two", "10.0.0.2:50051").await;
    let rejected = client.next().await;
    client
        .request(
            ResourceType::Endpoints,
            &["greeter"],
            &first.version_info,
            &rejected.nonce,
            Some("endpoint 10.0.0.2 is not acceptable"),
        )
        .await;
    client
        .expect_quiet("a NACK is not answered with the same resources")
        .await;

    let _three = register(&registry, "greeter", "three", "10.0.0.3:50051").await;
    let next = client.next().await;
    assert_eq!(endpoints(&next), [("greeter".to_owned(), 3)]);
    assert_ne!(next.nonce, rejected.nonce);
}

#[tokio::test]
async fn a_request_about_an_older_response_is_ignored() {
    let registry = Arc::new(MemoryRegistry::new());
    let _one = register(&registry, "greeter", "one", "10.0.0.1:50051").await;
    let _other = register(&registry, "other", "x", "10.0.0.9:50051").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = AdsClient::connect(xds, "late").await;
    let first = client.subscribe(ResourceType::Endpoints, &["greeter"]).await;
    let _two = register(&registry, "greeter", "two", "10.0.0.2:50051").await;
    let second = client.next().await;

    // The client answers the first response after the second was sent: stale.
    client
        .request(
            ResourceType::Endpoints,
            &["greeter", "other"],
            &first.version_info,
            &first.nonce,
            None,
        )
        .await;
    client
        .expect_quiet("a request about an older response is ignored")
        .await;

    // With the current nonce the new subscription is served: only the new resource.
    client
        .request(
            ResourceType::Endpoints,
            &["greeter", "other"],
            &second.version_info,
            &second.nonce,
            None,
        )
        .await;
    assert_eq!(endpoints(&client.next().await), [("other".to_owned(), 1)]);
}

#[tokio::test]
async fn a_reconnecting_client_gets_the_current_state() {
    let registry = Arc::new(MemoryRegistry::new());
    let _one = register(&registry, "greeter", "one", "10.0.0.1:50051").await;
    let (xds, _server, _stop) = start_xds(registry.clone(), XdsOptions::default()).await;
    let mut client = AdsClient::connect(xds, "phoenix").await;
    let before = client.subscribe(ResourceType::Endpoints, &["greeter"]).await;
    drop(client);

    let _two = register(&registry, "greeter", "two", "10.0.0.2:50051").await;
    let mut client = AdsClient::connect(xds, "phoenix").await;
    // A reconnecting client names the version it has and no nonce.
    client
        .request(
            ResourceType::Endpoints,
            &["greeter"],
            &before.version_info,
            "",
            None,
        )
        .await;
    assert_eq!(endpoints(&client.next().await), [("greeter".to_owned(), 2)]);
}
