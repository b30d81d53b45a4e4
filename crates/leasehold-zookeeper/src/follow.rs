//! What a registration session follows of each service it writes to, through one
//! persistent recursive watch per service (not one watch per node): the service's
//! children, so another client's node of the same id is found before creating ours
//! without asking the server; deletes, so the registrar rewrites a node deleted by
//! someone else or retries an id another client held; and drain markers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use leasehold::registrar::{LeaseError, LeaseEvents};
use leasehold::{Codec, InstanceId, ServiceName};
use zookeeper_client as zk;

use crate::session::{is_transport, Connect};

/// The children of one service node, as the session last saw them.
#[derive(Debug, Default)]
pub(crate) struct Children {
    names: Mutex<HashSet<String>>,
}

impl Children {
    /// The names of the children for which `keep` holds.
    pub(crate) fn matching(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        self.names
            .lock()
            .unwrap()
            .iter()
            .filter(|n| keep(n))
            .cloned()
            .collect()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.names.lock().unwrap().contains(name)
    }
}

/// One followed service: where it is and whom to tell.
pub(crate) struct Follower {
    pub(crate) client: zk::Client,
    pub(crate) connect: Arc<Connect>,
    pub(crate) codec: Arc<dyn Codec>,
    pub(crate) service: ServiceName,
    /// The service node.
    pub(crate) path: String,
    pub(crate) events: LeaseEvents,
    pub(crate) children: Arc<Children>,
}

impl Follower {
    /// Adds the watch and reads the children (creating the service node if it is
    /// missing, so creates under it need no second request), and reports the drain
    /// markers found. Returns the watcher to [`run`](Follower::run) on.
    pub(crate) async fn start(
        &self,
        parents: &zk::CreateOptions<'_>,
    ) -> Result<zk::PersistentWatcher, LeaseError> {
        let fail = |e: zk::Error, what: &str| {
            let error = self
                .connect
                .error(e.clone(), format_args!("{what} {}", self.path));
            match e {
                zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::AuthFailed => {
                    LeaseError::Lost(error)
                }
                _ => LeaseError::Failed(error),
            }
        };
        let watcher = self
            .client
            .watch(&self.path, zk::AddWatchMode::PersistentRecursive)
            .await
            .map_err(|e| fail(e, "watching"))?;
        let names = match self.client.list_children(&self.path).await {
            Ok(names) => names,
            Err(zk::Error::NoNode) => {
                self.client
                    .mkdir(&self.path, parents)
                    .await
                    .map_err(|e| fail(e, "creating"))?;
                Vec::new()
            }
            Err(e) => return Err(fail(e, "listing")),
        };
        self.replace(names);
        Ok(watcher)
    }

    /// Takes a fresh listing: what vanished meanwhile was deleted, and the markers are
    /// reported as a whole.
    fn replace(&self, names: Vec<String>) {
        let now: HashSet<String> = names.into_iter().collect();
        let before = std::mem::replace(&mut *self.children.names.lock().unwrap(), now.clone());
        for gone in before.difference(&now) {
            if self.codec.parse_drain_marker(gone).is_none() {
                self.events.key_deleted(format!("{}/{gone}", self.path));
            }
        }
        let drained: Vec<InstanceId> = now
            .iter()
            .filter_map(|n| self.codec.parse_drain_marker(n))
            .collect();
        self.events.drained_set(self.service.clone(), drained);
    }

    fn child<'a>(&self, path: &'a str) -> Option<&'a str> {
        let name = path.strip_prefix(&self.path)?.strip_prefix('/')?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// Follows until the session ends.
    pub(crate) async fn run(self, mut watcher: zk::PersistentWatcher) {
        loop {
            let event = watcher.changed().await;
            match event.event_type {
                zk::EventType::Session => match event.session_state {
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        // Events during the disconnection are not replayed: watch anew
                        // and list again.
                        loop {
                            let relisted = async {
                                let watcher = self
                                    .client
                                    .watch(&self.path, zk::AddWatchMode::PersistentRecursive)
                                    .await?;
                                let names = self.client.list_children(&self.path).await?;
                                Ok::<_, zk::Error>((watcher, names))
                            };
                            match relisted.await {
                                Ok((rewatched, names)) => {
                                    watcher = rewatched;
                                    self.replace(names);
                                    break;
                                }
                                Err(zk::Error::NoNode) => {
                                    self.replace(Vec::new());
                                    break;
                                }
                                Err(e) if is_transport(&e) && !self.client.state().is_terminated() => {
                                    tokio::time::sleep(std::time::Duration::from_millis(200)).await
                                }
                                Err(_) => return,
                            }
                        }
                    }
                    zk::SessionState::Disconnected => {}
                    _ => return,
                },
                zk::EventType::NodeCreated => {
                    if let Some(name) = self.child(&event.path) {
                        self.children.names.lock().unwrap().insert(name.to_owned());
                        if let Some(id) = self.codec.parse_drain_marker(name) {
                            self.events.drain_changed(self.service.clone(), id, true);
                        }
                    }
                }
                zk::EventType::NodeDeleted => {
                    if let Some(name) = self.child(&event.path) {
                        self.children.names.lock().unwrap().remove(name);
                        match self.codec.parse_drain_marker(name) {
                            Some(id) => self.events.drain_changed(self.service.clone(), id, false),
                            None => self.events.key_deleted(event.path.clone()),
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
