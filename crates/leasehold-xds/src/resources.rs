//! The Listener, RouteConfiguration and Cluster of a service: what a proxyless gRPC client
//! (and Envoy) needs before it can ask for the service's endpoints.
//!
//! Every xDS resource of a service is named after the service, so `xds:///greeter` asks
//! for the Listener `greeter`, which routes (over RDS) to the RouteConfiguration
//! `greeter`, whose one route sends every call to the Cluster `greeter`, whose endpoints
//! come over EDS as the ClusterLoadAssignment `greeter`. These three depend only on the
//! name and the [`XdsOptions`], never on the registry, so a client can start before any
//! instance registers.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    config_source, AggregatedConfigSource, ApiVersion, ConfigSource,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration};
use envoy_types::util::pack_any;
use leasehold::ServiceName;
use prost::Name;

use crate::{Balancing, XdsOptions};

/// The four resource types leasehold serves, in the order a client asks for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// LDS: `envoy.config.listener.v3.Listener`.
    Listener,
    /// RDS: `envoy.config.route.v3.RouteConfiguration`.
    Route,
    /// CDS: `envoy.config.cluster.v3.Cluster`.
    Cluster,
    /// EDS: `envoy.config.endpoint.v3.ClusterLoadAssignment`.
    Endpoints,
}

impl ResourceType {
    /// All four.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Cluster,
        ResourceType::Endpoints,
    ];

    /// The type URL clients name it by.
    pub fn type_url(self) -> String {
        match self {
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::Endpoints => ClusterLoadAssignment::type_url(),
        }
    }

    /// The type a type URL names, if leasehold serves it.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Whether a state-of-the-world response of this type must list every resource the
    /// client subscribes to (a missing Listener or Cluster means "deleted"), or only the
    /// ones that changed (RouteConfigurations and ClusterLoadAssignments).
    pub fn needs_full_state(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }

    /// A short name for logs: `lds`, `rds`, `cds`, `eds`.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Cluster => "cds",
            ResourceType::Endpoints => "eds",
        }
    }
}

/// How long Envoy waits for a connection to an endpoint (gRPC clients ignore it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A config source that says "the same ADS stream", the only kind proxyless gRPC accepts.
fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// The API listener of `service`: an HTTP connection manager whose routes come over RDS,
/// with the router as its one (and last) HTTP filter, as gRPC requires.
pub fn listener(service: &ServiceName) -> Any {
    let manager = HttpConnectionManager {
        stat_prefix: service.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: service.to_string(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    pack_any(Listener {
        name: service.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(manager)),
        }),
        ..Default::default()
    })
}

/// The routes of `service`: any host, any path, to the cluster of the same name; with a
/// header hash policy when the service is balanced by ring hash on a header.
pub fn route_configuration(service: &ServiceName, options: &XdsOptions) -> Any {
    let hash_policy = match options.balancing(service) {
        Balancing::RingHash { header: Some(header) } => vec![route_action::HashPolicy {
            policy_specifier: Some(route_action::hash_policy::PolicySpecifier::Header(
                route_action::hash_policy::Header {
                    header_name: header.clone(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(service.to_string())),
            hash_policy,
            ..Default::default()
        })),
        ..Default::default()
    };
    pack_any(RouteConfiguration {
        name: service.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: service.to_string(),
            domains: vec!["*".to_owned()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    })
}

/// The cluster of `service`: endpoints over EDS (ADS), balanced round robin or by ring
/// hash as the options say.
pub fn cluster(service: &ServiceName, options: &XdsOptions) -> Any {
    let lb_policy = match options.balancing(service) {
        Balancing::RoundRobin => cluster::LbPolicy::RoundRobin,
        Balancing::RingHash { .. } => cluster::LbPolicy::RingHash,
    };
    pack_any(Cluster {
        name: service.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: service.to_string(),
        }),
        lb_policy: lb_policy as i32,
        connect_timeout: Some(ProtoDuration {
            seconds: CONNECT_TIMEOUT.as_secs() as i64,
            nanos: 0,
        }),
        ..Default::default()
    })
}

/// The resource of type `kind` for `service` that depends only on its name (everything
/// but the endpoints).
pub fn static_resource(kind: ResourceType, service: &ServiceName, options: &XdsOptions) -> Option<Any> {
    match kind {
        ResourceType::Listener => Some(listener(service)),
        ResourceType::Route => Some(route_configuration(service, options)),
        ResourceType::Cluster => Some(cluster(service, options)),
        ResourceType::Endpoints => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn greeter() -> ServiceName {
        ServiceName::new("greeter").unwrap()
    }

    #[test]
    fn type_urls_round_trip() {
        for kind in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(&kind.type_url()), Some(kind));
        }
        assert_eq!(
            ResourceType::Endpoints.type_url(),
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        );
        assert_eq!(
            ResourceType::from_type_url("type.googleapis.com/envoy.config.core.v3.Secret"),
            None
        );
    }

    #[test]
    fn the_listener_routes_over_rds_through_the_router() {
        let any = listener(&greeter());
        let listener = Listener::decode(any.value.as_slice()).unwrap();
        assert_eq!(listener.name, "greeter");
        let manager = listener.api_listener.unwrap().api_listener.unwrap();
        assert_eq!(manager.type_url, HttpConnectionManager::type_url());
        let manager = HttpConnectionManager::decode(manager.value.as_slice()).unwrap();
        match manager.route_specifier {
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                assert_eq!(rds.route_config_name, "greeter")
            }
            other => panic!("expected RDS, got {other:?}"),
        }
        let last = manager.http_filters.last().unwrap();
        match &last.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => assert_eq!(any.type_url, Router::type_url()),
            other => panic!("expected the router, got {other:?}"),
        }
    }

    #[test]
    fn ring_hash_sets_the_cluster_policy_and_the_route_hash() {
        let options = XdsOptions::default().ring_hash(greeter(), Some("x-user".to_owned()));
        let hashed = Cluster::decode(cluster(&greeter(), &options).value.as_slice()).unwrap();
        assert_eq!(hashed.lb_policy, cluster::LbPolicy::RingHash as i32);
        let routes =
            RouteConfiguration::decode(route_configuration(&greeter(), &options).value.as_slice()).unwrap();
        let action = match &routes.virtual_hosts[0].routes[0].action {
            Some(route::Action::Route(action)) => action.clone(),
            other => panic!("expected a route action, got {other:?}"),
        };
        assert_eq!(action.hash_policy.len(), 1);

        let plain = Cluster::decode(cluster(&greeter(), &XdsOptions::default()).value.as_slice()).unwrap();
        assert_eq!(plain.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        assert_eq!(plain.eds_cluster_config.unwrap().service_name, "greeter");
    }
}
