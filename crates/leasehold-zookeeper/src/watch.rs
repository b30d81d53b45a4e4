//! Discovery: one listing, then a persistent recursive watch applied incrementally.
//!
//! The watch is added before the listing, so nothing created between the two is missed
//! (an event for something the listing already holds is applied again, harmlessly). A
//! persistent watch survives reconnection, but events during the disconnection are not
//! replayed (ZOOKEEPER-4698), so every reconnect re-lists and applies the exact
//! difference; an expired session is replaced and the watch added again.

use std::sync::Arc;
use std::time::Duration;

use leasehold::{Backoff, DiscoveryFeed, Result, ServiceName};
use zookeeper_client as zk;

use crate::layout::Layout;
use crate::session::{Connect, SharedSession};

/// How long to wait before re-listing again after a failed attempt.
const RELIST_PAUSE: Duration = Duration::from_millis(200);

/// The children of a service node and their values, and the zxid the listing reaches.
pub(crate) struct Listing {
    pub(crate) nodes: Vec<(String, Vec<u8>)>,
    pub(crate) revision: u64,
}

/// Lists the children of `path` and reads their values in one round trip of pipelined
/// multi-reads. A missing
/// node is an empty listing.
pub(crate) async fn list(client: &zk::Client, connect: &Connect, path: &str) -> Result<Listing> {
    let (names, stat) = match client.get_children(path).await {
        Ok(found) => found,
        Err(zk::Error::NoNode) => {
            return Ok(Listing {
                nodes: Vec::new(),
                revision: 0,
            })
        }
        Err(e) => return Err(connect.error(e, format_args!("listing {path}"))),
    };
    let mut revision = stat.pzxid.max(0) as u64;
    if names.is_empty() {
        return Ok(Listing {
            nodes: Vec::new(),
            revision,
        });
    }
    let paths: Vec<String> = names.iter().map(|name| format!("{path}/{name}")).collect();
    let results = read_many(client, &paths, zk::MultiReader::add_get_data)
        .await
        .map_err(|e| connect.error(e, format_args!("reading the children of {path}")))?;
    let mut nodes = Vec::with_capacity(names.len());
    for (name, result) in names.into_iter().zip(results) {
        if let zk::MultiReadResult::Data { data, stat } = result {
            revision = revision.max(stat.mzxid.max(0) as u64);
            nodes.push((name, data));
        }
    }
    Ok(Listing { nodes, revision })
}

/// The most bytes of paths one multi-read asks for: well under the server's
/// `jute.maxbuffer` (1 MB by default), past which it drops the connection instead of
/// answering.
const MAX_READ_PATH_BYTES: usize = 256 * 1024;

/// Reads every path in `paths` with `add` (a [`zk::MultiReader`] operation), in as few
/// multi-reads as fit the server's request size, sent together; the results are in the
/// order of `paths`.
pub(crate) async fn read_many<'c>(
    client: &'c zk::Client,
    paths: &[String],
    add: fn(&mut zk::MultiReader<'c>, &str) -> Result<(), zk::Error>,
) -> Result<Vec<zk::MultiReadResult>, zk::Error> {
    let mut batches = Vec::new();
    let (mut reader, mut bytes) = (client.new_multi_reader(), 0);
    for path in paths {
        if bytes > 0 && bytes + path.len() > MAX_READ_PATH_BYTES {
            batches.push(reader.commit());
            (reader, bytes) = (client.new_multi_reader(), 0);
        }
        add(&mut reader, path)?;
        bytes += path.len();
    }
    if bytes > 0 {
        batches.push(reader.commit());
    }
    let results = futures::future::try_join_all(batches).await?;
    Ok(results.into_iter().flatten().collect())
}

/// The service a watcher follows and how it reaches it.
pub(crate) struct Follow {
    pub(crate) session: Arc<SharedSession>,
    pub(crate) connect: Arc<Connect>,
    pub(crate) path: String,
    /// How attempts to watch again after the session ended are spaced.
    pub(crate) backoff: Backoff,
}

impl Follow {
    pub(crate) fn new(
        session: Arc<SharedSession>,
        connect: Arc<Connect>,
        layout: &Layout,
        service: &ServiceName,
        backoff: Backoff,
    ) -> Self {
        Follow {
            session,
            connect,
            path: layout.service_path(service),
            backoff,
        }
    }

    /// Adds the watch, then lists: the start of following, and every restart after the
    /// session expired.
    #[tracing::instrument(name = "relist", level = "info", skip_all, fields(path = %self.path))]
    pub(crate) async fn start(&self) -> Result<(zk::Client, zk::PersistentWatcher, Listing)> {
        let client = self.session.client().await?;
        let (watcher, listing) = self.rewatch(&client).await?;
        Ok((client, watcher, listing))
    }

    /// Adds the watch again and lists, after a reconnect. The client restores its watches
    /// on reconnection, but a server that lost its leader in between has been seen not
    /// to deliver events of a restored persistent watch; a watch added anew always does.
    #[tracing::instrument(name = "relist", level = "info", skip_all, fields(path = %self.path))]
    async fn rewatch(&self, client: &zk::Client) -> Result<(zk::PersistentWatcher, Listing)> {
        let watcher = client
            .watch(&self.path, zk::AddWatchMode::PersistentRecursive)
            .await
            .map_err(|e| self.connect.error(e, format_args!("watching {}", self.path)))?;
        let listing = list(client, &self.connect, &self.path).await?;
        Ok((watcher, listing))
    }

    /// The name of a direct child of the service node, if `path` is one.
    fn child<'a>(&self, path: &'a str) -> Option<&'a str> {
        let name = path.strip_prefix(&self.path)?.strip_prefix('/')?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// The watcher task: follows until every `Discovery` handle is gone.
    pub(crate) async fn run(
        self,
        mut feed: DiscoveryFeed,
        mut client: zk::Client,
        mut watcher: zk::PersistentWatcher,
    ) {
        loop {
            self.follow(&mut feed, &client, &mut watcher).await;
            feed.mark_stale();
            let mut delays = self.backoff.delays();
            (client, watcher) = loop {
                tokio::time::sleep(delays.next().unwrap_or(self.backoff.max)).await;
                match self.start().await {
                    Ok((client, watcher, listing)) => {
                        metrics::counter!(leasehold::metrics::WATCH_RECONNECTS, "backend" => "zookeeper", "service" => feed.service().to_string()).increment(1);
                        feed.reset(listing.nodes, listing.revision);
                        feed.mark_live();
                        break (client, watcher);
                    }
                    Err(e) => tracing::debug!(path = %self.path, error = %e, "cannot watch yet; retrying"),
                }
            };
        }
    }

    /// Applies events until the session ends.
    async fn follow(
        &self,
        feed: &mut DiscoveryFeed,
        client: &zk::Client,
        watcher: &mut zk::PersistentWatcher,
    ) {
        loop {
            let event = watcher.changed().await;
            match event.event_type {
                zk::EventType::Session => match event.session_state {
                    zk::SessionState::Disconnected => feed.mark_stale(),
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        // Until it works or the session ends: events missed while
                        // disconnected are only recovered by a listing.
                        loop {
                            match self.rewatch(client).await {
                                Ok((rewatched, listing)) => {
                                    metrics::counter!(leasehold::metrics::WATCH_RECONNECTS, "backend" => "zookeeper", "service" => feed.service().to_string()).increment(1);
                                    *watcher = rewatched;
                                    feed.reset(listing.nodes, listing.revision);
                                    feed.mark_live();
                                    break;
                                }
                                Err(e) if client.state().is_terminated() => {
                                    tracing::debug!(path = %self.path, error = %e, "watch session ended while re-listing");
                                    return;
                                }
                                Err(e) => {
                                    tracing::debug!(path = %self.path, error = %e, "re-listing after a reconnect failed; retrying");
                                    tokio::time::sleep(RELIST_PAUSE).await;
                                }
                            }
                        }
                    }
                    state => {
                        tracing::warn!(path = %self.path, %state, "ZooKeeper watch session ended; watching again");
                        return;
                    }
                },
                zk::EventType::NodeCreated | zk::EventType::NodeDataChanged => {
                    let Some(name) = self.child(&event.path) else {
                        continue;
                    };
                    match client.get_data(&event.path).await {
                        Ok((value, stat)) => {
                            feed.put(name, &value);
                            feed.set_revision(feed.revision().max(stat.mzxid.max(0) as u64));
                            feed.publish();
                        }
                        // Gone again: its delete event follows.
                        Err(zk::Error::NoNode) => {}
                        // The reconnect re-lists.
                        Err(e) => {
                            tracing::debug!(path = %event.path, error = %e, "reading a changed node failed")
                        }
                    }
                }
                zk::EventType::NodeDeleted => {
                    if let Some(name) = self.child(&event.path) {
                        feed.delete(name);
                        feed.publish();
                    }
                }
                zk::EventType::NodeChildrenChanged => {}
            }
        }
    }
}
