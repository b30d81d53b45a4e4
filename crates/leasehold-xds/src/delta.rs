//! One client's incremental ADS stream (`DeltaAggregatedResources`).
//!
//! The client adds and removes names; the server sends only the resources whose version
//! the client does not have, each with a version derived from its content. So a client
//! that reconnects naming the versions it holds (`initial_resource_versions`) is sent
//! only what changed meanwhile. Subscription changes apply whatever nonce a request
//! carries (they are deltas: dropping one would lose it); the nonce only says which
//! response an ACK or NACK is about. A NACK is logged with the client's error and the
//! rejected resource is not sent again until it changes.
//!
//! leasehold serves named resources only: a wildcard subscription (a first Listener or
//! Cluster request with no names, or the name `*`) is answered with an empty response
//! so the client does not wait, and no resource is sent for it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use crate::catalog::Catalog;
use crate::resources::ResourceType;
use crate::sources::Sources;
use crate::stream::{Protocol, CONTROL_PLANE};
use crate::XdsOptions;

/// The name that subscribes to every resource of a type.
const WILDCARD: &str = "*";

/// The state of one resource type on one incremental stream.
#[derive(Debug, Default)]
struct TypeState {
    subscribed: BTreeSet<String>,
    /// The version of each resource the client has: sent to it, or named by it on
    /// reconnect.
    has: HashMap<String, String>,
    /// The nonce of the last response, `None` before the first.
    nonce: Option<String>,
    /// Whether a request of this type came on this stream.
    started: bool,
}

/// One client's incremental stream.
pub struct DeltaSession {
    sources: Sources,
    client: String,
    types: [TypeState; 4],
    nonces: u64,
}

impl DeltaSession {
    /// A session with no subscriptions yet.
    pub fn new(catalog: Arc<Catalog>, options: Arc<XdsOptions>) -> Self {
        DeltaSession {
            sources: Sources::new(catalog, options),
            client: String::new(),
            types: Default::default(),
            nonces: 0,
        }
    }

    fn handle_request(&mut self, request: DeltaDiscoveryRequest) -> Option<DeltaDiscoveryResponse> {
        if self.client.is_empty() {
            if let Some(node) = &request.node {
                self.client = node.id.clone();
                tracing::info!(client = %self.client, cluster = %node.cluster, "incremental xDS client connected");
            }
        }
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            tracing::debug!(client = %self.client, type_url = %request.type_url, "ignoring a request for a type leasehold does not serve");
            return None;
        };
        let state = &mut self.types[kind as usize];
        let first = !state.started;
        state.started = true;
        if !request.response_nonce.is_empty() {
            if state.nonce.as_deref() == Some(request.response_nonce.as_str()) {
                match &request.error_detail {
                    Some(error) => tracing::warn!(
                        client = %self.client,
                        r#type = kind.short_name(),
                        nonce = %request.response_nonce,
                        code = error.code,
                        error = %error.message,
                        "the client rejected an update (NACK); it keeps its previous version",
                    ),
                    None => {
                        tracing::debug!(client = %self.client, r#type = kind.short_name(), nonce = %request.response_nonce, "ACK")
                    }
                }
            } else {
                tracing::debug!(client = %self.client, r#type = kind.short_name(), nonce = %request.response_nonce, "a request about an older response");
            }
        }
        let wildcard = (first && kind.needs_full_state() && request.resource_names_subscribe.is_empty())
            || request.resource_names_subscribe.iter().any(|n| n == WILDCARD);
        for name in request.resource_names_subscribe {
            if name != WILDCARD {
                state.subscribed.insert(name);
            }
        }
        for name in &request.resource_names_unsubscribe {
            state.subscribed.remove(name);
            state.has.remove(name);
        }
        if first {
            for (name, version) in request.initial_resource_versions {
                if state.subscribed.contains(&name) {
                    state.has.insert(name, version);
                }
            }
        }
        if kind == ResourceType::Endpoints {
            self.sources.follow_only(&self.types[kind as usize].subscribed);
        }
        self.respond(kind, wildcard)
    }

    /// The resources of type `kind` the client does not have; `answer` sends a response
    /// even when there are none.
    fn respond(&mut self, kind: ResourceType, answer: bool) -> Option<DeltaDiscoveryResponse> {
        let state = &self.types[kind as usize];
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        for name in &state.subscribed {
            match self.sources.current(kind, name) {
                Some(current) => {
                    let version = current.content_version();
                    if state.has.get(name) != Some(&version) {
                        resources.push(Resource {
                            name: name.clone(),
                            version,
                            resource: Some(current.any().clone()),
                            ..Default::default()
                        });
                    }
                }
                // The client named a version on reconnect of something that is no
                // resource: tell it. (Endpoints not listed yet are not "removed".)
                None if state.has.contains_key(name) && !Sources::names_a_resource(name) => {
                    removed.push(name.clone())
                }
                None => {}
            }
        }
        if resources.is_empty() && removed.is_empty() && !answer {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let state = &mut self.types[kind as usize];
        state.nonce = Some(nonce.clone());
        for resource in &resources {
            state.has.insert(resource.name.clone(), resource.version.clone());
        }
        for name in &removed {
            state.has.remove(name);
        }
        tracing::debug!(client = %self.client, r#type = kind.short_name(), resources = resources.len(), removed = removed.len(), "sending");
        Some(DeltaDiscoveryResponse {
            resources,
            type_url: kind.type_url(),
            removed_resources: removed,
            nonce,
            control_plane: Some(ControlPlane {
                identifier: CONTROL_PLANE.to_owned(),
            }),
            ..Default::default()
        })
    }
}

impl Protocol for DeltaSession {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Option<DeltaDiscoveryResponse> {
        self.handle_request(request)
    }

    fn on_endpoints_changed(&mut self) -> Option<DeltaDiscoveryResponse> {
        self.respond(ResourceType::Endpoints, false)
    }

    fn sources(&mut self) -> &mut Sources {
        &mut self.sources
    }

    fn client(&self) -> &str {
        &self.client
    }
}
