//! A service's ClusterLoadAssignment, built from a discovery snapshot.
//!
//! Weights: gRPC's `round_robin` ignores endpoint weights, but every xDS client (gRPC's
//! `weighted_target`, Envoy) honours locality weights. So the instances of one zone with
//! one weight share a locality (zone = the instance's zone, sub-zone = `weight-N`) whose
//! weight is their total; each endpoint's own weight is set too, for ring hash and
//! Envoy. A client then sends each instance a share of calls proportional to its weight
//! whichever policy it runs.
//!
//! Health: a live snapshot's instances are `HEALTHY`; a stale one (the registry is
//! unreachable, the cache serves the last known set) keeps every instance, marked
//! `UNKNOWN`, which clients still call, so an outage of the registry never empties an
//! assignment. An instance an operator drained is out of the snapshot's set but listed
//! apart ([`Snapshot::drained`]): it is here as `DRAINING`, which Envoy and gRPC clients
//! send no new calls (Envoy lets the calls under way finish), and it counts in no
//! locality's weight. A drained id whose instance is not known, and instances absent
//! from the snapshot (deregistered, expired), are absent here.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address as ProtoAddress, HealthStatus, Locality as ProtoLocality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use leasehold::{Instance, InstanceId, Snapshot};

/// A snapshot turned into a ClusterLoadAssignment.
#[derive(Debug)]
pub struct Assignment {
    /// The assignment.
    pub load_assignment: ClusterLoadAssignment,
    /// The instances left out because their address is not `IP:port` (xDS clients
    /// connect to IP addresses; a host name would make them reject the whole
    /// assignment).
    pub skipped: Vec<InstanceId>,
    /// How many endpoints clients may call: those of the set that are not skipped
    /// (drained ones are in the assignment, as `DRAINING`, but not counted).
    pub serving: usize,
}

/// Builds the assignment of `snapshot`'s service. Deterministic: the same set gives the
/// same message, byte for byte, so an unchanged set is never sent again.
pub fn assignment(snapshot: &Snapshot) -> Assignment {
    let health = if snapshot.connection().is_live() {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unknown
    };
    let serving = snapshot.instances();
    let drained = snapshot.drained().filter_map(|(_, instance)| instance);
    let mut localities: BTreeMap<(&str, u32), Locality> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut serving_count = 0;
    for (instance, health) in serving
        .iter()
        .map(|i| (i, health))
        .chain(drained.map(|i| (i, HealthStatus::Draining)))
    {
        let Some(address) = socket_address(instance) else {
            skipped.push(instance.id().clone());
            continue;
        };
        let weight = instance.weight().max(1);
        let locality = localities
            .entry((instance.zone().unwrap_or_default(), weight))
            .or_default();
        if health != HealthStatus::Draining {
            locality.serving += 1;
            serving_count += 1;
        }
        locality.endpoints.push(LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(address),
                ..Default::default()
            })),
            health_status: health as i32,
            load_balancing_weight: Some(UInt32Value { value: weight }),
            ..Default::default()
        });
    }
    let totals: Vec<u64> = localities
        .iter()
        .map(|((_, weight), locality)| u64::from(*weight) * locality.serving)
        .collect();
    // xDS caps the sum of locality weights at u32::MAX: scale down when it is over.
    let divisor = totals.iter().sum::<u64>().div_ceil(u64::from(u32::MAX)).max(1);
    let endpoints = localities
        .into_iter()
        .zip(totals)
        .map(|(((zone, weight), locality), total)| LocalityLbEndpoints {
            locality: Some(ProtoLocality {
                zone: zone.to_owned(),
                sub_zone: format!("weight-{weight}"),
                ..Default::default()
            }),
            lb_endpoints: locality.endpoints,
            // At least 1, as xDS requires: a locality of drained endpoints only has
            // nothing to serve, which clients see from the endpoints' health.
            load_balancing_weight: Some(UInt32Value {
                value: (total / divisor).max(1) as u32,
            }),
            priority: 0,
            ..Default::default()
        })
        .collect();
    Assignment {
        load_assignment: ClusterLoadAssignment {
            cluster_name: snapshot.service().to_string(),
            endpoints,
            ..Default::default()
        },
        skipped,
        serving: serving_count,
    }
}

/// The endpoints of one zone and weight.
#[derive(Default)]
struct Locality {
    endpoints: Vec<LbEndpoint>,
    /// How many of `endpoints` are not draining: what the locality's weight counts.
    serving: u64,
}

/// The instance's address as an xDS socket address, if it is `IP:port` (or a URI whose
/// authority is).
fn socket_address(instance: &Instance) -> Option<ProtoAddress> {
    let addr: SocketAddr = instance.addr().authority().parse().ok()?;
    Some(ProtoAddress {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use leasehold::memory::MemoryRegistry;
    use leasehold::{RegisterOptions, Registry, ServiceName, WatchOptions};

    async fn snapshot_of(instances: Vec<Instance>) -> (Arc<Snapshot>, Vec<leasehold::Registration>) {
        let registry = MemoryRegistry::new();
        let service = ServiceName::new("greeter").unwrap();
        let mut held = Vec::new();
        let count = instances.len();
        for instance in instances {
            held.push(
                registry
                    .register(instance, RegisterOptions::default())
                    .await
                    .unwrap(),
            );
        }
        let discovery = registry.watch(&service, WatchOptions::default()).await.unwrap();
        let snapshot = discovery
            .wait_for(Duration::from_secs(5), |s| s.len() == count)
            .await
            .unwrap();
        (snapshot, held)
    }

    fn instance(id: &str, addr: &str, weight: u32, zone: Option<&str>) -> Instance {
        let builder = Instance::builder("greeter", addr).id(id).weight(weight);
        match zone {
            Some(zone) => builder.zone(zone),
            None => builder,
        }
        .build()
        .unwrap()
    }

    fn endpoint_addr(endpoint: &LbEndpoint) -> String {
        let Some(lb_endpoint::HostIdentifier::Endpoint(endpoint)) = &endpoint.host_identifier else {
            panic!("not an endpoint")
        };
        let Some(address::Address::SocketAddress(socket)) =
            endpoint.address.as_ref().unwrap().address.as_ref()
        else {
            panic!("not a socket address")
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = socket.port_specifier else {
            panic!("no port")
        };
        format!("{}:{port}", socket.address)
    }

    #[tokio::test]
    async fn zone_and_weight_make_the_locality_and_its_weight() {
        let (snapshot, _held) = snapshot_of(vec![
            instance("a", "10.0.0.1:80", 1, Some("eu-1")),
            instance("b", "http://10.0.0.2:80", 1, Some("eu-1")),
            instance("c", "10.0.0.3:80", 3, Some("eu-1")),
            instance("d", "[::1]:80", 2, None),
            instance("e", "localhost:80", 1, None),
        ])
        .await;
        let built = assignment(&snapshot);
        assert_eq!(built.skipped, vec![InstanceId::new("e").unwrap()]);
        let cla = built.load_assignment;
        assert_eq!(cla.cluster_name, "greeter");
        let summary: Vec<(String, String, u32, Vec<String>)> = cla
            .endpoints
            .iter()
            .map(|l| {
                let locality = l.locality.clone().unwrap();
                (
                    locality.zone,
                    locality.sub_zone,
                    l.load_balancing_weight.unwrap().value,
                    l.lb_endpoints.iter().map(endpoint_addr).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("".into(), "weight-2".into(), 2, vec!["::1:80".into()]),
                (
                    "eu-1".into(),
                    "weight-1".into(),
                    2,
                    vec!["10.0.0.1:80".into(), "10.0.0.2:80".into()]
                ),
                ("eu-1".into(), "weight-3".into(), 3, vec!["10.0.0.3:80".into()]),
            ]
        );
        let weights: Vec<u32> = cla
            .endpoints
            .iter()
            .flat_map(|l| {
                l.lb_endpoints
                    .iter()
                    .map(|e| e.load_balancing_weight.unwrap().value)
            })
            .collect();
        assert_eq!(weights, [2, 1, 1, 3]);
        assert!(cla
            .endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .all(|e| e.health_status == HealthStatus::Healthy as i32));
    }

    /// A locality's sub-zone and weight, and each endpoint's address and health.
    type LocalitySummary = (String, u32, Vec<(String, i32)>);

    #[tokio::test]
    async fn drained_instances_are_draining_and_weigh_nothing() {
        let registry = MemoryRegistry::new();
        let service = ServiceName::new("greeter").unwrap();
        let mut held = Vec::new();
        for (id, addr, weight) in [
            ("a", "10.0.0.1:80", 1),
            ("b", "10.0.0.2:80", 1),
            ("c", "10.0.0.3:80", 3),
        ] {
            let registration = registry
                .register(instance(id, addr, weight, None), RegisterOptions::default())
                .await
                .unwrap();
            held.push(registration);
        }
        for id in ["b", "c"] {
            assert!(registry
                .drain(&service, &InstanceId::new(id).unwrap())
                .await
                .unwrap());
        }
        let discovery = registry.watch(&service, WatchOptions::default()).await.unwrap();
        let snapshot = discovery
            .wait_for(Duration::from_secs(5), |s| {
                s.len() == 1 && s.drained().count() == 2
            })
            .await
            .unwrap();
        let built = assignment(&snapshot);
        assert_eq!(built.serving, 1);
        let summary: Vec<LocalitySummary> = built
            .load_assignment
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.clone().unwrap().sub_zone,
                    l.load_balancing_weight.unwrap().value,
                    l.lb_endpoints
                        .iter()
                        .map(|e| (endpoint_addr(e), e.health_status))
                        .collect(),
                )
            })
            .collect();
        let (healthy, draining) = (HealthStatus::Healthy as i32, HealthStatus::Draining as i32);
        assert_eq!(
            summary,
            vec![
                (
                    "weight-1".into(),
                    1,
                    vec![("10.0.0.1:80".into(), healthy), ("10.0.0.2:80".into(), draining)]
                ),
                ("weight-3".into(), 1, vec![("10.0.0.3:80".into(), draining)]),
            ]
        );
    }

    #[tokio::test]
    async fn the_same_set_gives_the_same_bytes() {
        use prost::Message;
        let (first, _a) = snapshot_of(vec![
            instance("a", "10.0.0.1:80", 1, None),
            instance("b", "10.0.0.2:80", 5, Some("z")),
        ])
        .await;
        let (second, _b) = snapshot_of(vec![
            instance("b", "10.0.0.2:80", 5, Some("z")),
            instance("a", "10.0.0.1:80", 1, None),
        ])
        .await;
        assert_eq!(
            assignment(&first).load_assignment.encode_to_vec(),
            assignment(&second).load_assignment.encode_to_vec()
        );
    }

    #[tokio::test]
    async fn huge_weights_are_scaled_to_fit_a_u32_total() {
        let (snapshot, _held) = snapshot_of(vec![
            instance("a", "10.0.0.1:80", u32::MAX, None),
            instance("b", "10.0.0.2:80", u32::MAX, Some("z")),
        ])
        .await;
        let cla = assignment(&snapshot).load_assignment;
        let total: u64 = cla
            .endpoints
            .iter()
            .map(|l| u64::from(l.load_balancing_weight.unwrap().value))
            .sum();
        assert!(total <= u64::from(u32::MAX), "{total}");
    }
}
