//! `leasehold xds`: serves what the registry holds over ADS, stops cleanly on SIGTERM,
//! and names a listen address it cannot use.

mod support;

use std::time::Duration;

use leasehold::{Instance, RegisterOptions, Registry, RegistryUrl};
use leasehold_etcd::EtcdRegistry;
use leasehold_xds::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use leasehold_xds::ResourceType;
use nix::sys::signal::Signal;
use prost::Message;
use tokio_stream::StreamExt;

use support::{run, Running};

#[tokio::test(flavor = "multi_thread")]
async fn xds_serves_the_registry_and_stops_on_sigterm() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let url = etcd.url("/leasehold/services");
    let registry = EtcdRegistry::connect(&url.parse::<RegistryUrl>().unwrap())
        .await
        .unwrap();
    let instance = Instance::builder("greeter", "127.0.0.1:50051")
        .id("one")
        .build()
        .unwrap();
    let _registration = registry
        .register(instance, RegisterOptions::default())
        .await
        .unwrap();

    let (xds, line) = tokio::task::spawn_blocking(move || {
        let mut xds = Running::spawn(&["--registry", &url, "xds", "--listen", "127.0.0.1:0"]);
        let line = xds.wait_for_line("serving xDS on ");
        (xds, line)
    })
    .await
    .unwrap();
    let addr = line.trim_start_matches("serving xDS on ").to_owned();

    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let request = DiscoveryRequest {
        resource_names: vec!["greeter".to_owned()],
        type_url: ResourceType::Endpoints.type_url(),
        ..Default::default()
    };
    let requests = tokio_stream::iter([request]).chain(tokio_stream::pending());
    let mut responses = client
        .stream_aggregated_resources(requests)
        .await
        .unwrap()
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(30), responses.message())
        .await
        .expect("a response in time")
        .unwrap()
        .unwrap();
    let cla = ClusterLoadAssignment::decode(response.resources[0].value.as_slice()).unwrap();
    assert_eq!(cla.cluster_name, "greeter");
    assert_eq!(
        cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>(),
        1
    );

    xds.signal(Signal::SIGTERM);
    let (code, _) = tokio::task::spawn_blocking(move || xds.wait()).await.unwrap();
    assert_eq!(code, Some(0));
}

#[test]
fn a_listen_address_in_use_is_named_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run(&["--registry", "memory://", "xds", "--listen", &addr]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
}

#[test]
fn a_bad_ring_hash_service_is_a_usage_error() {
    let output = run(&["xds", "--ring-hash", "not a service"]);
    assert_eq!(output.status.code(), Some(2));
}
