//! One client's ADS stream, state of the world (`StreamAggregatedResources`).
//!
//! Per resource type the session keeps what the client subscribes to, what it was last
//! sent, and the version and nonce of the last response. A request whose nonce is not
//! the last one sent for its type was written before the client saw the latest response
//! and is ignored, as the xDS protocol says. A request with the current nonce is an ACK, or a
//! NACK when it carries an error: the NACK is logged with the client's error and nothing
//! is sent again until the resource changes (the client keeps its previous good
//! version). A subscription change is answered at once; a change in the registry is
//! pushed as soon as the service's feed publishes it, with only the resources that
//! changed (Listener and Cluster responses list every subscribed resource, as the
//! protocol requires for those types).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use crate::catalog::Catalog;
use crate::resources::ResourceType;
use crate::sources::{Current, Sources};
use crate::stream::{Protocol, CONTROL_PLANE};
use crate::XdsOptions;

/// The state of one resource type on one stream.
#[derive(Debug, Default)]
struct TypeState {
    subscribed: BTreeSet<String>,
    sent: HashMap<String, Current>,
    /// The version of the last response, counted per type and stream.
    version: u64,
    /// The nonce of the last response, `None` before the first.
    nonce: Option<String>,
}

/// One client's state-of-the-world stream.
pub struct Session {
    sources: Sources,
    /// The client's node id, for logs; set from the first request that names it.
    client: String,
    types: [TypeState; 4],
    nonces: u64,
}

impl Session {
    /// A session with no subscriptions yet.
    pub fn new(catalog: Arc<Catalog>, options: Arc<XdsOptions>) -> Self {
        Session {
            sources: Sources::new(catalog, options),
            client: String::new(),
            types: Default::default(),
            nonces: 0,
        }
    }

    /// Handles one request: records an ACK or NACK, applies subscription changes, and
    /// answers what the client does not have yet.
    fn handle_request(&mut self, request: DiscoveryRequest) -> Option<DiscoveryResponse> {
        if self.client.is_empty() {
            if let Some(node) = &request.node {
                self.client = node.id.clone();
                tracing::info!(client = %self.client, cluster = %node.cluster, "xDS client connected");
            }
        }
        let Some(kind) = ResourceType::from_type_url(&request.type_url) else {
            tracing::debug!(client = %self.client, type_url = %request.type_url, "ignoring a request for a type leasehold does not serve");
            return None;
        };
        let state = &mut self.types[kind as usize];
        if !request.response_nonce.is_empty() {
            if state.nonce.as_deref() != Some(request.response_nonce.as_str()) {
                tracing::debug!(client = %self.client, r#type = kind.short_name(), nonce = %request.response_nonce, "ignoring a request about an older response");
                return None;
            }
            match &request.error_detail {
                Some(error) => tracing::warn!(
                    client = %self.client,
                    r#type = kind.short_name(),
                    rejected = state.version,
                    keeps = %request.version_info,
                    code = error.code,
                    error = %error.message,
                    "the client rejected an update (NACK); it keeps its previous version",
                ),
                None => {
                    tracing::debug!(client = %self.client, r#type = kind.short_name(), version = %request.version_info, "ACK")
                }
            }
        }
        let names: BTreeSet<String> = request.resource_names.into_iter().collect();
        let first = state.nonce.is_none();
        let changed = names != state.subscribed;
        if changed {
            state.sent.retain(|name, _| names.contains(name));
            if kind == ResourceType::Endpoints {
                self.sources.follow_only(&names);
            }
            self.types[kind as usize].subscribed = names;
        }
        if changed || first {
            self.respond(kind, true)
        } else {
            None
        }
    }

    /// The response of type `kind` that brings the client up to date, if it needs one;
    /// `answer` sends one for a full-state type even if nothing changed (a subscription
    /// change or a first request must be answered).
    fn respond(&mut self, kind: ResourceType, answer: bool) -> Option<DiscoveryResponse> {
        let state = &self.types[kind as usize];
        let mut resources = Vec::new();
        let mut changed = false;
        for name in &state.subscribed {
            let Some(current) = self.sources.current(kind, name) else {
                continue;
            };
            let unchanged = state.sent.get(name).is_some_and(|sent| sent.same_as(&current));
            changed |= !unchanged;
            if kind.needs_full_state() || !unchanged {
                resources.push((name.clone(), current));
            }
        }
        let send = if kind.needs_full_state() {
            changed || answer
        } else {
            !resources.is_empty()
        };
        if !send {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        let state = &mut self.types[kind as usize];
        state.version += 1;
        state.nonce = Some(nonce.clone());
        let version_info = state.version.to_string();
        let mut packed = Vec::with_capacity(resources.len());
        let mut endpoints = 0;
        for (name, current) in resources {
            endpoints += current.endpoints();
            packed.push(current.any().clone());
            state.sent.insert(name, current);
        }
        tracing::debug!(client = %self.client, r#type = kind.short_name(), version = %version_info, resources = packed.len(), endpoints, "sending");
        Some(DiscoveryResponse {
            version_info,
            resources: packed,
            type_url: kind.type_url(),
            nonce,
            control_plane: Some(ControlPlane {
                identifier: CONTROL_PLANE.to_owned(),
            }),
            ..Default::default()
        })
    }
}

impl Protocol for Session {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn on_request(&mut self, request: DiscoveryRequest) -> Option<DiscoveryResponse> {
        self.handle_request(request)
    }

    fn on_endpoints_changed(&mut self) -> Option<DiscoveryResponse> {
        self.respond(ResourceType::Endpoints, false)
    }

    fn sources(&mut self) -> &mut Sources {
        &mut self.sources
    }

    fn client(&self) -> &str {
        &self.client
    }
}
