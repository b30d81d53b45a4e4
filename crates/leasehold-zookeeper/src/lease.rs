//! Registrations as ephemeral nodes: the [`LeaseBackend`] whose lease is a ZooKeeper
//! session.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use leasehold::codec::NodeNaming;
use leasehold::registrar::{LeaseBackend, LeaseError, LeaseEvents, Write, WriteOutcome};
use leasehold::{Error, Instance, Result, ServiceName};
use tokio::task::JoinSet;
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::follow::{Children, Follower};
use crate::layout::Layout;
use crate::session::{is_transport, Connect};

/// How long to wait between looks for our own node after a create whose reply was lost.
const LOOKUP_PAUSE: Duration = Duration::from_millis(200);

/// The ACLs this client creates nodes with.
#[derive(Debug)]
pub(crate) struct Acls {
    /// Instance nodes.
    node: Vec<zk::Acl>,
    /// The root and service nodes created on the way.
    parent: Vec<zk::Acl>,
}

impl Acls {
    /// The ACLs of the persistent nodes this client creates: parents and drain markers.
    pub(crate) fn parent(&self) -> &[zk::Acl] {
        &self.parent
    }

    /// With an identity: ours to change and delete, everyone's to read; parents also let
    /// everyone create (so other identities can register) but not delete (ZooKeeper checks
    /// a delete against the parent's ACL). Without one: open, as ZooKeeper's default.
    pub(crate) fn new(authenticated: bool) -> Self {
        use zk::{Acl, AuthId, Permission};
        if authenticated {
            Acls {
                node: vec![
                    Acl::new(Permission::ALL, AuthId::authed()),
                    Acl::new(Permission::READ, AuthId::anyone()),
                ],
                parent: vec![
                    Acl::new(Permission::ALL, AuthId::authed()),
                    Acl::new(Permission::READ | Permission::CREATE, AuthId::anyone()),
                ],
            }
        } else {
            let all = vec![Acl::new(Permission::ALL, AuthId::anyone())];
            Acls {
                node: all.clone(),
                parent: all,
            }
        }
    }
}

/// The lease backend of [`ZkRegistry`](crate::ZkRegistry).
#[derive(Debug)]
pub(crate) struct ZkLeases {
    pub(crate) connect: Arc<Connect>,
    pub(crate) layout: Arc<Layout>,
    pub(crate) acls: Acls,
    /// Set by [`ZkRegistry::crash`](crate::ZkRegistry::crash): every request fails, and no
    /// session is closed.
    pub(crate) crashed: AtomicBool,
    /// The sessions granted and not yet dropped, for crash and session-expiry tests.
    pub(crate) live: Mutex<Vec<Weak<LeaseSession>>>,
    /// Every session this client ever opened for registrations: a node one of them owns
    /// is ours (a leftover of a session we gave up), never another client's conflict.
    pub(crate) own_sessions: Arc<Mutex<HashSet<i64>>>,
}

/// A granted session and the tasks that watch it and its nodes.
#[derive(Debug)]
pub(crate) struct LeaseSession {
    pub(crate) client: Mutex<Option<zk::Client>>,
    tasks: Mutex<JoinSet<()>>,
    /// The services this session follows, with their children as last seen.
    followed: Mutex<HashMap<ServiceName, Arc<Children>>>,
}

impl LeaseSession {
    fn client(&self) -> Result<zk::Client> {
        self.client.lock().unwrap().clone().ok_or(Error::Closed)
    }

    /// Stops the session's tasks and drops its client without closing the session.
    pub(crate) fn abandon(&self) -> Option<zk::Client> {
        self.tasks.lock().unwrap().abort_all();
        self.client.lock().unwrap().take()
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}

/// A ZooKeeper session held as a lease; dropping it stops watching and leaves the session
/// to expire.
pub(crate) struct ZkLease {
    session: Arc<LeaseSession>,
    events: LeaseEvents,
}

impl Drop for ZkLease {
    fn drop(&mut self) {
        self.session.abandon();
    }
}

impl ZkLeases {
    fn check_alive(&self) -> Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// A failed request under a lease: lost with the session, or worth retrying.
    fn lease_error(&self, e: zk::Error, what: impl std::fmt::Display) -> LeaseError {
        match e {
            zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::AuthFailed => {
                LeaseError::Lost(self.connect.error(e, what))
            }
            e => LeaseError::Failed(self.connect.error(e, what)),
        }
    }

    /// The children of `service` as this session follows them, following it first if it
    /// does not yet: one watch and one listing per service and session, after which a
    /// registration is one create.
    async fn follow(
        &self,
        lease: &ZkLease,
        client: &zk::Client,
        service: &ServiceName,
    ) -> Result<Arc<Children>, LeaseError> {
        if let Some(children) = lease.session.followed.lock().unwrap().get(service) {
            return Ok(children.clone());
        }
        let follower = Follower {
            client: client.clone(),
            connect: self.connect.clone(),
            codec: self.layout.codec().clone(),
            service: service.clone(),
            path: self.layout.service_path(service),
            events: lease.events.clone(),
            children: Arc::default(),
            own_sessions: self.own_sessions.clone(),
        };
        let parents = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&self.acls.parent));
        let watcher = follower.start(&parents).await?;
        let children = follower.children.clone();
        lease.session.spawn(follower.run(watcher));
        lease
            .session
            .followed
            .lock()
            .unwrap()
            .insert(service.clone(), children.clone());
        Ok(children)
    }

    /// Another client's live node with `instance`'s id under its service, if the
    /// children show one: nodes of our own sessions (a leftover of a session given up)
    /// are removed instead, as twins of the one about to be written.
    async fn conflict(
        &self,
        client: &zk::Client,
        children: &Children,
        instance: &Instance,
        skip: &[Option<&str>],
    ) -> Result<Option<String>, LeaseError> {
        let Some(key) = self.layout.key_in_name(instance) else {
            return Ok(None);
        };
        let same_id = children.matching(|name| Layout::protected_key(name) == Some(key.as_str()));
        for name in same_id {
            let path = self.layout.child_path(instance.service(), &name);
            if skip.contains(&Some(path.as_str())) {
                continue;
            }
            let stat = client
                .check_stat(&path)
                .await
                .map_err(|e| self.lease_error(e, format_args!("reading {path}")))?;
            let Some(stat) = stat else { continue };
            if self.own_sessions.lock().unwrap().contains(&stat.ephemeral_owner) {
                match client.delete(&path, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(self.lease_error(e, format_args!("deleting {path}"))),
                }
                continue;
            }
            return Ok(Some(path));
        }
        Ok(None)
    }

    fn conflict_error(instance: &Instance, key: String) -> LeaseError {
        LeaseError::Failed(Error::Conflict {
            service: instance.service().to_string(),
            id: instance.id().to_string(),
            key,
        })
    }

    /// Writes one registration: in place if it has a node under this session, else a new
    /// protected node (after removing its node of an earlier session, if that still
    /// shows), unless another client's live node holds its id.
    async fn write(
        &self,
        lease: &ZkLease,
        client: &zk::Client,
        children: &Children,
        write: &Write<'_>,
    ) -> Result<String, LeaseError> {
        let instance = write.instance;
        if let Some(marker) = self.layout.codec().drain_marker(instance.id()) {
            if children.contains(&marker) {
                lease
                    .events
                    .drain_changed(instance.service().clone(), instance.id().clone(), true);
            }
        }
        let value = self.layout.codec().encode(instance).map_err(Error::from)?;
        if let Some(current) = write.current {
            match client.set_data(current, &value, None).await {
                Ok(_) => {
                    children.wrote(node_name(current), &value);
                    return Ok(current.to_owned());
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(self.lease_error(e, format_args!("updating {current}"))),
            }
        }
        if let Some(previous) = write.previous {
            match client.delete(previous, None).await {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(self.lease_error(e, format_args!("deleting {previous}"))),
            }
        }
        if let Some(held) = self
            .conflict(client, children, instance, &[write.current, write.previous])
            .await?
        {
            return Err(Self::conflict_error(instance, held));
        }
        let path = self.create(client, instance, &value).await?;
        let name = node_name(&path);
        children.wrote(name, &value);
        // Another client that created the same id at the same instant: the older node
        // keeps it.
        for older in children.own_created(name) {
            if let Some(held) = self
                .conflict(client, children, instance, &[Some(path.as_str())])
                .await?
                .filter(|held| held.ends_with(&format!("/{older}")))
            {
                children.own_deleted(name);
                match client.delete(&path, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(self.lease_error(e, format_args!("deleting {path}"))),
                }
                return Err(Self::conflict_error(instance, held));
            }
        }
        Ok(path)
    }

    /// Creates `instance`'s node, its parents as needed.
    async fn create(
        &self,
        client: &zk::Client,
        instance: &Instance,
        value: &[u8],
    ) -> Result<String, LeaseError> {
        let parent = self.layout.service_path(instance.service());
        let parents = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&self.acls.parent));
        let mut made_parents = false;
        loop {
            let created = match self.layout.naming() {
                NodeNaming::Exact => self.create_exact(client, instance, value).await,
                _ => self.create_protected(client, instance, value).await,
            };
            match created {
                Err(zk::Error::NoNode) if !made_parents => {
                    made_parents = true;
                    client
                        .mkdir(&parent, &parents)
                        .await
                        .map_err(|e| self.lease_error(e, format_args!("creating {parent}")))?;
                }
                Err(zk::Error::NodeExists) => {
                    // Only an exact-named node of another session is refused as existing.
                    return Err(Self::conflict_error(instance, self.layout.exact_path(instance)));
                }
                Err(e) => return Err(self.lease_error(e, format_args!("creating a node under {parent}"))),
                Ok(path) => return Ok(path),
            }
        }
    }

    /// Creates a protected ephemeral sequential node. A create whose reply was lost is
    /// looked for by its guid before trying again, so a retry never makes a twin.
    async fn create_protected(
        &self,
        client: &zk::Client,
        instance: &Instance,
        value: &[u8],
    ) -> Result<String, zk::Error> {
        let guid = Layout::new_guid();
        let prefix = self.layout.protected_prefix(instance, &guid);
        let parent = self.layout.service_path(instance.service());
        let node = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::new(&self.acls.node));
        let deadline = Instant::now() + client.session_timeout() * 2;
        loop {
            match client.create(&prefix, value, &node).await {
                Ok((_, sequence)) => return Ok(format!("{prefix}{sequence}")),
                Err(e) if is_transport(&e) => {
                    if let Some(found) = find_own(client, &parent, &guid, deadline).await? {
                        return Ok(found);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates an ephemeral node named exactly after the instance. One that already
    /// exists is ours if our session owns it (a create whose reply was lost).
    async fn create_exact(
        &self,
        client: &zk::Client,
        instance: &Instance,
        value: &[u8],
    ) -> Result<String, zk::Error> {
        let path = self.layout.exact_path(instance);
        let node = zk::CreateMode::Ephemeral.with_acls(zk::Acls::new(&self.acls.node));
        match client.create(&path, value, &node).await {
            Ok(_) => Ok(path),
            Err(e) if e == zk::Error::NodeExists || is_transport(&e) => match client.check_stat(&path).await?
            {
                Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
                    client.set_data(&path, value, None).await?;
                    Ok(path)
                }
                // A node of a session of ours we gave up: replaced by one of this session,
                // or it would vanish when that session expires.
                Some(stat) if self.own_sessions.lock().unwrap().contains(&stat.ephemeral_owner) => {
                    match client.delete(&path, None).await {
                        Ok(()) | Err(zk::Error::NoNode) => {}
                        Err(e) => return Err(e),
                    }
                    client.create(&path, value, &node).await?;
                    Ok(path)
                }
                Some(_) => Err(zk::Error::NodeExists),
                None => Err(zk::Error::ConnectionLoss),
            },
            Err(e) => Err(e),
        }
    }
}

/// The last part of a node's path.
fn node_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

/// Our node with `guid` under `parent`, once the session is connected again; `None` if
/// the create never reached the server.
async fn find_own(
    client: &zk::Client,
    parent: &str,
    guid: &str,
    deadline: Instant,
) -> Result<Option<String>, zk::Error> {
    loop {
        match client.list_children(parent).await {
            Ok(children) => {
                let found = children.into_iter().find(|name| Layout::has_guid(name, guid));
                if found.is_some() {
                    tracing::info!(parent, guid, "found our node after a lost create reply");
                }
                return Ok(found.map(|name| format!("{parent}/{name}")));
            }
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) if is_transport(&e) && Instant::now() < deadline => tokio::time::sleep(LOOKUP_PAUSE).await,
            Err(e) => return Err(e),
        }
    }
}

#[async_trait]
impl LeaseBackend for ZkLeases {
    type Lease = ZkLease;

    async fn grant(&self, ttl: Duration, events: LeaseEvents) -> Result<ZkLease> {
        self.check_alive()?;
        let client = self.connect.open(ttl, true).await?;
        let id = client.session_id();
        tracing::debug!(session = %id, ?ttl, negotiated = ?client.session_timeout(), "ZooKeeper registration session opened");
        self.own_sessions.lock().unwrap().insert(id.0);
        let session = Arc::new(LeaseSession {
            client: Mutex::new(Some(client.clone())),
            tasks: Mutex::new(JoinSet::new()),
            followed: Mutex::new(HashMap::new()),
        });
        let mut state = client.state_watcher();
        drop(client);
        let lost = events.clone();
        session.spawn(async move {
            loop {
                match state.changed().await {
                    zk::SessionState::Expired => {
                        lost.lost(format!("ZooKeeper session {id} expired"));
                        return;
                    }
                    zk::SessionState::AuthFailed => {
                        lost.lost(format!("ZooKeeper session {id} failed authentication"));
                        return;
                    }
                    zk::SessionState::Closed => return,
                    other => tracing::debug!(session = %id, state = %other, "ZooKeeper session state"),
                }
            }
        });
        let mut live = self.live.lock().unwrap();
        live.retain(|s| s.strong_count() > 0);
        live.push(Arc::downgrade(&session));
        Ok(ZkLease { session, events })
    }

    async fn put(&self, lease: &ZkLease, writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError> {
        self.check_alive()?;
        let client = lease.session.client()?;
        let mut followed = HashMap::new();
        for write in writes {
            let service = write.instance.service();
            if !followed.contains_key(service) {
                followed.insert(service.clone(), self.follow(lease, &client, service).await?);
            }
        }
        // Requests go out in call order on the session's connection, so these pipeline.
        let written = futures::future::join_all(
            writes
                .iter()
                .map(|w| self.write(lease, &client, &followed[w.instance.service()], w)),
        )
        .await;
        let mut created = Vec::new();
        let mut batch_failure = None;
        let mut outcomes = Vec::with_capacity(writes.len());
        for (result, write) in written.into_iter().zip(writes) {
            match result {
                Ok(path) => {
                    if write.current != Some(path.as_str()) {
                        created.push(path.clone());
                    }
                    outcomes.push(Ok(path));
                }
                // The session is gone, or the ensemble did not answer: the batch fails
                // as a whole.
                Err(LeaseError::Lost(e)) => {
                    batch_failure = Some(LeaseError::Lost(e));
                    outcomes.push(Err(Error::Closed));
                }
                Err(LeaseError::Failed(e)) if e.is_unavailable() => {
                    if batch_failure.is_none() {
                        batch_failure = Some(LeaseError::Failed(e));
                    }
                    outcomes.push(Err(Error::Closed));
                }
                Err(LeaseError::Failed(e)) => outcomes.push(Err(e)),
            }
        }
        let Some(failure) = batch_failure else {
            return Ok(outcomes);
        };
        // The registrar keeps none of a failed batch's keys and writes them all again, so
        // the nodes this batch created would be left as twins of the next attempt's.
        let deleted = futures::future::join_all(created.iter().map(|path| client.delete(path, None))).await;
        for (path, deleted) in created.iter().zip(deleted) {
            match deleted {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot remove a node of a failed batch; it stays until its session ends")
                }
            }
        }
        Err(failure)
    }

    async fn follow_markers(&self, lease: &ZkLease, services: &[ServiceName]) -> Result<(), LeaseError> {
        self.check_alive()?;
        let client = lease.session.client()?;
        for service in services {
            self.follow(lease, &client, service).await?;
        }
        Ok(())
    }

    async fn delete(&self, lease: &ZkLease, keys: &[String]) -> Result<(), LeaseError> {
        self.check_alive()?;
        let client = lease.session.client()?;
        let deleted = futures::future::join_all(keys.iter().map(|key| client.delete(key, None))).await;
        for (key, result) in keys.iter().zip(deleted) {
            match result {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(e) => return Err(self.lease_error(e, format_args!("deleting {key}"))),
            }
        }
        Ok(())
    }

    async fn revoke(&self, lease: ZkLease) -> Result<()> {
        self.check_alive()?;
        let mut tasks = std::mem::take(&mut *lease.session.tasks.lock().unwrap());
        tasks.shutdown().await;
        let Some(client) = lease.session.abandon() else {
            return Ok(());
        };
        let session = client.session().clone();
        // Our own connection must be gone before the session is taken over to close it,
        // or it would reconnect and take the session back.
        let mut state = client.state_watcher();
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while !state.changed().await.is_terminated() {}
        })
        .await;
        drop(lease);
        self.connect.close(session).await
    }
}
