//! One client's ADS stream, state of the world.
//!
//! Per resource type the session keeps what the client subscribes to, what it was last
//! sent, and the version and nonce of the last response. A request whose nonce is not
//! the last one sent for its type answers a response the client had not seen yet and is
//! ignored, as the xDS protocol says. A request with the current nonce is an ACK, or a
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
use envoy_types::pb::google::protobuf::Any;
use leasehold::ServiceName;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{StreamExt, StreamMap};
use tonic::Status;

use crate::catalog::{Catalog, Feed, Published};
use crate::resources::{static_resource, ResourceType};
use crate::XdsOptions;

/// The identifier sent as the responses' control plane, for clients' debug pages.
const CONTROL_PLANE: &str = "leasehold-xds";

/// A resource as it is now, to send or compare with what was sent.
#[derive(Clone, Debug)]
enum Current {
    /// Built from the name alone (Listener, RouteConfiguration, Cluster).
    Static(Any),
    /// A service's assignment, shared by every stream that follows the service.
    Endpoints(Arc<Published>),
}

impl Current {
    fn any(&self) -> &Any {
        match self {
            Current::Static(any) => any,
            Current::Endpoints(published) => &published.resource,
        }
    }

    fn same_as(&self, other: &Current) -> bool {
        match (self, other) {
            (Current::Endpoints(a), Current::Endpoints(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.any() == other.any(),
        }
    }
}

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

/// What the session does after a request or an update: send this, or nothing.
pub type Outcome = Option<DiscoveryResponse>;

/// One client's stream.
pub struct Session {
    catalog: Arc<Catalog>,
    options: Arc<XdsOptions>,
    /// The client's node id, for logs; set from the first request that names it.
    client: String,
    types: [TypeState; 4],
    nonces: u64,
    feeds: HashMap<ServiceName, Arc<Feed>>,
    updates: StreamMap<ServiceName, WatchStream<Option<Arc<Published>>>>,
}

impl Session {
    /// A session with no subscriptions yet.
    pub fn new(catalog: Arc<Catalog>, options: Arc<XdsOptions>) -> Self {
        Session {
            catalog,
            options,
            client: String::new(),
            types: Default::default(),
            nonces: 0,
            feeds: HashMap::new(),
            updates: StreamMap::new(),
        }
    }

    /// Serves the stream: answers `requests` and pushes updates into `responses` until
    /// either side closes, or until `closing` turns true (the server is shutting down).
    pub async fn run(
        mut self,
        mut requests: impl tokio_stream::Stream<Item = Result<DiscoveryRequest, Status>> + Unpin,
        responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        mut closing: watch::Receiver<bool>,
    ) {
        loop {
            let response = tokio::select! {
                _ = until_closing(&mut closing) => {
                    tracing::debug!(client = %self.client, "server shutting down: ending the stream");
                    let _ = responses.send(Err(Status::unavailable("the xDS server is shutting down"))).await;
                    return;
                }
                request = requests.next() => match request {
                    Some(Ok(request)) => self.on_request(request),
                    Some(Err(status)) => {
                        tracing::debug!(client = %self.client, %status, "stream broken");
                        return;
                    }
                    None => {
                        tracing::debug!(client = %self.client, "client closed the stream");
                        return;
                    }
                },
                Some(_) = self.updates.next(), if !self.updates.is_empty() => {
                    self.respond(ResourceType::Endpoints, false)
                }
            };
            if let Some(response) = response {
                if responses.send(Ok(response)).await.is_err() {
                    tracing::debug!(client = %self.client, "client went away");
                    return;
                }
            }
        }
    }

    /// Handles one request: records an ACK or NACK, applies subscription changes, and
    /// answers what the client does not have yet.
    pub fn on_request(&mut self, request: DiscoveryRequest) -> Outcome {
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
                self.follow_only(&names);
            }
            self.types[kind as usize].subscribed = names;
        }
        if changed || first {
            self.respond(kind, true)
        } else {
            None
        }
    }

    /// Follows exactly the services named in `names` for endpoints.
    fn follow_only(&mut self, names: &BTreeSet<String>) {
        let wanted: Vec<ServiceName> = names
            .iter()
            .filter_map(|n| ServiceName::new(n.as_str()).ok())
            .collect();
        self.feeds.retain(|service, _| wanted.contains(service));
        let current: Vec<ServiceName> = self.updates.keys().cloned().collect();
        for service in current {
            if !self.feeds.contains_key(&service) {
                self.updates.remove(&service);
            }
        }
        for service in wanted {
            if !self.feeds.contains_key(&service) {
                let feed = self.catalog.follow(&service);
                self.updates
                    .insert(service.clone(), WatchStream::new(feed.assignments()));
                self.feeds.insert(service, feed);
            }
        }
    }

    /// The resource `name` of type `kind` as it is now, if it exists (and, for
    /// endpoints, once the registry has been listed).
    fn current(&self, kind: ResourceType, name: &str) -> Option<Current> {
        let service = ServiceName::new(name).ok()?;
        match kind {
            ResourceType::Endpoints => self
                .feeds
                .get(&service)?
                .assignments()
                .borrow()
                .clone()
                .map(Current::Endpoints),
            other => static_resource(other, &service, &self.options).map(Current::Static),
        }
    }

    /// The response of type `kind` that brings the client up to date, if it needs one;
    /// `answer` sends one for a full-state type even if nothing changed (a subscription
    /// change or a first request must be answered).
    fn respond(&mut self, kind: ResourceType, answer: bool) -> Outcome {
        let state = &self.types[kind as usize];
        let mut resources = Vec::new();
        let mut changed = false;
        for name in &state.subscribed {
            let Some(current) = self.current(kind, name) else {
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
            if let Current::Endpoints(published) = &current {
                endpoints += published.endpoints;
            }
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

/// Completes once `closing` is true (or its sender is gone).
async fn until_closing(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}
