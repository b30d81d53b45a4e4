//! Where a stream's resources come from: the name alone for Listeners, Routes and
//! Clusters, and the catalog's feed of the service for endpoints. Shared by the
//! state-of-the-world and the incremental sessions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use leasehold::ServiceName;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{StreamExt, StreamMap};

use crate::catalog::{content_version, Catalog, Feed, Published};
use crate::resources::{static_resource, ResourceType};
use crate::XdsOptions;

/// A resource as it is now, to send or compare with what was sent.
#[derive(Clone, Debug)]
pub enum Current {
    /// Built from the name alone (Listener, RouteConfiguration, Cluster).
    Static(Any),
    /// A service's assignment, shared by every stream that follows the service.
    Endpoints(Arc<Published>),
}

impl Current {
    /// The packed resource.
    pub fn any(&self) -> &Any {
        match self {
            Current::Static(any) => any,
            Current::Endpoints(published) => &published.resource,
        }
    }

    /// How many endpoints it holds (0 but for assignments).
    pub fn endpoints(&self) -> usize {
        match self {
            Current::Static(_) => 0,
            Current::Endpoints(published) => published.endpoints,
        }
    }

    /// Whether it is the same resource as `other`, byte for byte.
    pub fn same_as(&self, other: &Current) -> bool {
        match (self, other) {
            (Current::Endpoints(a), Current::Endpoints(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.any() == other.any(),
        }
    }

    /// A version derived from the content, so equal resources have equal versions for
    /// as long as this server runs (what incremental clients send back on reconnect).
    pub fn content_version(&self) -> String {
        match self {
            Current::Static(any) => content_version(any),
            Current::Endpoints(published) => published.version.clone(),
        }
    }
}

/// The sources one stream reads.
pub struct Sources {
    catalog: Arc<Catalog>,
    options: Arc<XdsOptions>,
    feeds: HashMap<ServiceName, Arc<Feed>>,
    updates: StreamMap<ServiceName, WatchStream<Option<Arc<Published>>>>,
}

impl Sources {
    /// Sources over `catalog`, following no service yet.
    pub fn new(catalog: Arc<Catalog>, options: Arc<XdsOptions>) -> Self {
        Sources {
            catalog,
            options,
            feeds: HashMap::new(),
            updates: StreamMap::new(),
        }
    }

    /// Follows the endpoints of exactly the services named in `names` (names that are
    /// not service names are no resource and are skipped).
    pub fn follow_only<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        let wanted: HashSet<ServiceName> = names
            .into_iter()
            .filter_map(|n| ServiceName::new(n.as_str()).ok())
            .collect();
        self.feeds.retain(|service, _| wanted.contains(service));
        let dropped: Vec<ServiceName> = self
            .updates
            .keys()
            .filter(|service| !wanted.contains(*service))
            .cloned()
            .collect();
        for service in dropped {
            self.updates.remove(&service);
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

    /// Completes when the assignment of a followed service may have changed; never
    /// while none is followed.
    pub async fn changed(&mut self) {
        if self.updates.is_empty() {
            std::future::pending::<()>().await;
        }
        self.updates.next().await;
    }

    /// Whether `name` can name a resource at all (a service name).
    pub fn names_a_resource(name: &str) -> bool {
        ServiceName::new(name).is_ok()
    }

    /// The resource `name` of type `kind` as it is now, if it exists (and, for
    /// endpoints, once the registry has been listed).
    pub fn current(&self, kind: ResourceType, name: &str) -> Option<Current> {
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
}
