//! The services clients follow: one discovery watch and one encoded assignment per
//! service, however many clients ask for it.
//!
//! A service is followed while at least one stream holds its [`Feed`]; the last one to
//! let go stops the watch. Each feed builds and encodes the service's
//! ClusterLoadAssignment once per change and publishes it; streams forward the same
//! encoded bytes to every client. A rebuild that encodes to the same bytes as the last
//! (an instance's metadata changed, say) is not published, so clients are not sent a
//! resource that did not change.

use std::collections::HashMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use leasehold::{Backoff, Discovery, Registry, ServiceName, WatchOptions};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::endpoints;

/// A service's encoded ClusterLoadAssignment as last published.
#[derive(Debug)]
pub struct Published {
    /// The assignment, packed for a DiscoveryResponse.
    pub resource: Any,
    /// How many of its endpoints clients may call (drained ones, there as `DRAINING`,
    /// are not counted).
    pub endpoints: usize,
    /// A version derived from the encoded bytes, computed once for every stream.
    pub version: String,
}

/// One followed service. Dropping the last handle stops its watch.
pub struct Feed {
    service: ServiceName,
    assignments: watch::Receiver<Option<Arc<Published>>>,
    task: AbortHandle,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// The assignments as they are published: `None` until the first listing arrived.
    pub fn assignments(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.assignments.clone()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        tracing::debug!(service = %self.service, "no client follows the service any more");
        self.task.abort();
    }
}

/// The followed services of one server.
pub struct Catalog {
    registry: Arc<dyn Registry>,
    feeds: Mutex<HashMap<ServiceName, Weak<Feed>>>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// A catalog of services read from `registry`.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Catalog {
            registry,
            feeds: Mutex::new(HashMap::new()),
        }
    }

    /// The feed of `service`, following it now if no one did.
    pub fn follow(&self, service: &ServiceName) -> Arc<Feed> {
        let mut feeds = self.feeds.lock().unwrap();
        if let Some(feed) = feeds.get(service).and_then(Weak::upgrade) {
            return feed;
        }
        feeds.retain(|_, feed| feed.strong_count() > 0);
        let (publish, assignments) = watch::channel(None);
        let task = tokio::spawn(follow(self.registry.clone(), service.clone(), publish)).abort_handle();
        let feed = Arc::new(Feed {
            service: service.clone(),
            assignments,
            task,
        });
        feeds.insert(service.clone(), Arc::downgrade(&feed));
        feed
    }

    /// How many services are followed now.
    pub fn followed(&self) -> usize {
        self.feeds
            .lock()
            .unwrap()
            .values()
            .filter(|f| f.strong_count() > 0)
            .count()
    }
}

/// Watches `service` (retrying with backoff until the registry answers) and publishes
/// its assignment after every change, until aborted.
async fn follow(
    registry: Arc<dyn Registry>,
    service: ServiceName,
    publish: watch::Sender<Option<Arc<Published>>>,
) {
    let discovery = watch_with_retries(&*registry, &service).await;
    let mut versions = discovery.versions();
    let mut skipped_before = Vec::new();
    loop {
        versions.borrow_and_update();
        let snapshot = discovery.snapshot();
        let built = endpoints::assignment(&snapshot);
        if built.skipped != skipped_before {
            if !built.skipped.is_empty() {
                tracing::warn!(
                    %service,
                    skipped = ?built.skipped,
                    "instances whose address is not IP:port are left out of the xDS assignment"
                );
            }
            skipped_before = built.skipped;
        }
        let endpoints = built.serving;
        let resource = pack_any(built.load_assignment);
        publish.send_if_modified(|current| {
            if current.as_ref().is_some_and(|c| c.resource == resource) {
                return false;
            }
            tracing::debug!(%service, endpoints, version = snapshot.version(), "assignment changed");
            let version = content_version(&resource);
            *current = Some(Arc::new(Published {
                resource,
                endpoints,
                version,
            }));
            true
        });
        if versions.changed().await.is_err() {
            return;
        }
    }
}

/// A version of `resource` derived from its bytes: equal resources have equal versions
/// for as long as this server runs.
pub fn content_version(resource: &Any) -> String {
    let mut hasher = DefaultHasher::new();
    resource.value.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

async fn watch_with_retries(registry: &dyn Registry, service: &ServiceName) -> Discovery {
    let mut delays = Backoff::default().delays();
    loop {
        match registry.watch(service, WatchOptions::default()).await {
            Ok(discovery) => return discovery,
            Err(error) => {
                let delay = delays.next().unwrap_or(Backoff::default().max);
                tracing::warn!(%service, %error, retry_in = ?delay, "cannot watch the service; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use leasehold::memory::MemoryRegistry;
    use leasehold::{Instance, RegisterOptions};

    async fn next_published(rx: &mut watch::Receiver<Option<Arc<Published>>>) -> Arc<Published> {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some))
            .await
            .expect("published in time")
            .unwrap()
            .clone()
            .unwrap()
    }

    #[tokio::test]
    async fn one_feed_per_service_while_someone_holds_it() {
        let catalog = Catalog::new(Arc::new(MemoryRegistry::new()));
        let greeter = ServiceName::new("greeter").unwrap();
        let first = catalog.follow(&greeter);
        let second = catalog.follow(&greeter);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(catalog.followed(), 1);
        drop((first, second));
        assert_eq!(catalog.followed(), 0);
    }

    #[tokio::test]
    async fn changes_are_published_and_unchanged_sets_are_not() {
        let registry = Arc::new(MemoryRegistry::new());
        let catalog = Catalog::new(registry.clone());
        let greeter = ServiceName::new("greeter").unwrap();
        let feed = catalog.follow(&greeter);
        let mut rx = feed.assignments();
        assert_eq!(next_published(&mut rx).await.endpoints, 0);
        rx.mark_unchanged();

        let one = Instance::builder("greeter", "10.0.0.1:80")
            .id("one")
            .build()
            .unwrap();
        let registration = registry.register(one, RegisterOptions::default()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow_and_update().as_ref().unwrap().endpoints, 1);

        // Metadata is not part of the assignment: no new publication.
        registration
            .update(leasehold::InstanceUpdate::new().version(Some("2".into())))
            .await
            .unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), rx.changed())
            .await
            .is_err());
    }
}
