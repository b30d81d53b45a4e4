//! What a registration session follows of each service it writes to, through one
//! persistent recursive watch per service (not one watch per node): the service's
//! children, so another client's node of the same id is found before creating ours
//! without asking the server; deletes, so the registrar rewrites a node deleted by
//! someone else or retries an id another client held; and drain markers.
//!
//! After a gap in the watch (the session reconnected), the children are listed again
//! and our own nodes are read: one whose value is not what this session last wrote to
//! it is reported too, so the registrar writes it again. A ZooKeeper that lost
//! committed transactions in an election (ZOOKEEPER-4643, ZOOKEEPER-4646: seen with
//! 3.8.0 after a server frozen while it synced won the next election) shows values
//! from seconds ago, with no event; a registration not updated since would keep its
//! rolled-back value until its next write.
//!
//! Two clients that register one id at the same instant both find no other node and
//! both create one. The rule that settles it, applied by both: the older node (the lower
//! sequence number) keeps the id; the owner of the newer one deletes it and its handle
//! shows `Conflict` until the older one goes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use leasehold::registrar::{LeaseError, LeaseEvents};
use leasehold::{Codec, InstanceId, ServiceName};
use zookeeper_client as zk;

use crate::layout::Layout;
use crate::session::{is_transport, Connect};

/// The children of one service node as the session last saw them, and which of them
/// are this session's own protected nodes.
#[derive(Debug, Default)]
pub(crate) struct Children {
    /// One lock for both, so a node created by another client and our node of the same
    /// id are never both missed: whichever is recorded second sees the first.
    state: Mutex<ChildrenState>,
}

#[derive(Debug, Default)]
struct ChildrenState {
    names: HashSet<String>,
    /// Our own protected nodes by the instance key in their names.
    own: HashMap<String, String>,
    /// What this session last wrote to each of its nodes, by name.
    written: HashMap<String, Vec<u8>>,
}

/// The sequence number ZooKeeper appended to a protected node's name.
fn sequence(name: &str) -> Option<u64> {
    name.get(name.len().checked_sub(10)?..)?.parse().ok()
}

impl Children {
    /// The names of the children for which `keep` holds.
    pub(crate) fn matching(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .names
            .iter()
            .filter(|n| keep(n))
            .cloned()
            .collect()
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.state.lock().unwrap().names.contains(name)
    }

    /// Records our node `name`; returns the older nodes with the same instance key
    /// (candidates to keep the id instead of it).
    pub(crate) fn own_created(&self, name: &str) -> Vec<String> {
        let Some(key) = Layout::protected_key(name).filter(|k| !k.is_empty()) else {
            return Vec::new();
        };
        let mut state = self.state.lock().unwrap();
        state.names.insert(name.to_owned());
        state.own.insert(key.to_owned(), name.to_owned());
        let ours = sequence(name);
        state
            .names
            .iter()
            .filter(|n| *n != name && Layout::protected_key(n) == Some(key) && sequence(n) < ours)
            .cloned()
            .collect()
    }

    /// Our node `name` holds `value`, as this session just wrote it.
    pub(crate) fn wrote(&self, name: &str, value: &[u8]) {
        let mut state = self.state.lock().unwrap();
        state.names.insert(name.to_owned());
        state.written.insert(name.to_owned(), value.to_vec());
    }

    /// Our nodes among the children, each with what this session last wrote to it.
    fn written(&self) -> Vec<(String, Vec<u8>)> {
        let state = self.state.lock().unwrap();
        state
            .written
            .iter()
            .filter(|(name, _)| state.names.contains(*name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// Forgets our node `name` (deleted by us).
    pub(crate) fn own_deleted(&self, name: &str) {
        let mut state = self.state.lock().unwrap();
        state.written.remove(name);
        if let Some(key) = Layout::protected_key(name) {
            if state.own.get(key).is_some_and(|n| n == name) {
                state.own.remove(key);
            }
        }
    }

    /// Records a child someone created; returns our node of the same instance key if
    /// the new one is older than it (it should keep the id).
    fn created(&self, name: &str) -> Option<String> {
        let mut state = self.state.lock().unwrap();
        state.names.insert(name.to_owned());
        let key = Layout::protected_key(name).filter(|k| !k.is_empty())?;
        let ours = state.own.get(key)?;
        (ours != name && sequence(name) < sequence(ours)).then(|| ours.clone())
    }

    fn deleted(&self, name: &str) {
        let mut state = self.state.lock().unwrap();
        state.names.remove(name);
        state.written.remove(name);
        if let Some(key) = Layout::protected_key(name) {
            if state.own.get(key).is_some_and(|n| n == name) {
                state.own.remove(key);
            }
        }
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
    /// Every registration session of this client: a node one of them owns is ours.
    pub(crate) own_sessions: Arc<Mutex<HashSet<i64>>>,
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
        let before = std::mem::replace(&mut self.children.state.lock().unwrap().names, now.clone());
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
                                    self.check_values().await;
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
                        if let Some(id) = self.codec.parse_drain_marker(name) {
                            self.children.created(name);
                            self.events.drain_changed(self.service.clone(), id, true);
                        } else if let Some(ours) = self.children.created(name) {
                            self.yield_to(name, &ours).await;
                        }
                    }
                }
                zk::EventType::NodeDeleted => {
                    if let Some(name) = self.child(&event.path) {
                        self.children.deleted(name);
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

    /// Reads our own nodes and reports each whose value is not what this session last
    /// wrote to it (see the module doc). One that cannot be read now is left to the
    /// next gap; one that is gone was reported by the listing.
    async fn check_values(&self) {
        let written = self.children.written();
        let read = futures::future::join_all(
            written
                .iter()
                .map(|(name, _)| self.client.get_data(&format!("{}/{name}", self.path))),
        )
        .await;
        for ((name, value), read) in written.into_iter().zip(read) {
            if matches!(read, Ok((found, _)) if found != value) {
                let path = format!("{}/{name}", self.path);
                tracing::warn!(%path, "own node found with a value this session did not leave it with (a registry that lost writes?); writing it again");
                self.events.key_deleted(path);
            }
        }
    }

    /// Another client's node `older` has our node `ours`'s id and is older: it keeps the
    /// id. Ours is deleted; its delete tells the registrar, whose next write finds the
    /// older one and shows `Conflict`.
    async fn yield_to(&self, older: &str, ours: &str) {
        let older_path = format!("{}/{older}", self.path);
        let owner = match self.client.check_stat(&older_path).await {
            Ok(Some(stat)) => stat.ephemeral_owner,
            _ => return,
        };
        if self.own_sessions.lock().unwrap().contains(&owner) {
            return;
        }
        let ours_path = format!("{}/{ours}", self.path);
        tracing::warn!(older = %older_path, ours = %ours_path, "another client registered this id first; giving way");
        match self.client.delete(&ours_path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => tracing::warn!(path = %ours_path, error = %e, "cannot delete our duplicate node"),
        }
    }
}
