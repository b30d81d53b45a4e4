//! [`ZkRegistry`]: the [`Registry`] contract on ZooKeeper.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use leasehold::codec::decode_listing;
use leasehold::registrar::Registrar;
use leasehold::{
    Discovery, DiscoveryFeed, Error, Instance, InstanceId, RegisterOptions, Registration, Registry,
    RegistryUrl, Result, ServiceName, WatchOptions,
};
use zookeeper_client as zk;

use crate::layout::Layout;
use crate::lease::{Acls, ZkLeases};
use crate::options::ZkOptions;
use crate::session::{Connect, SharedSession};
use crate::watch::{list, read_many, Follow};

/// A client of a ZooKeeper ensemble, implementing [`Registry`].
///
/// Each registration is an ephemeral node holding the codec's value, named as the codec
/// says ([`NodeNaming`](leasehold::NodeNaming)): natively a protected ephemeral sequential
/// node `{root}/{service}/_c_{guid}-{id}{sequence}` (go-kit's has no `{id}`), for
/// Curator exactly `{root}/{service}/{id}`. It is written under
/// one ZooKeeper session per TTL (the session timeout is the TTL). When that session
/// expires, a new one is opened and every registration written again, our node of the
/// old session removed if it still shows; a disconnection that keeps the session changes
/// nothing. Discovery lists once and follows a persistent recursive watch through a
/// separate session, re-listing after every reconnect.
///
/// Sessions are opened on first use: [`connect`](ZkRegistry::connect) only checks the
/// URL, and the first request to an unreachable ensemble fails with its address after
/// the connect timeout.
pub struct ZkRegistry {
    options: ZkOptions,
    connect: Arc<Connect>,
    layout: Arc<Layout>,
    session: Arc<SharedSession>,
    leases: Arc<ZkLeases>,
    registrar: Registrar<ZkLeases>,
}

impl std::fmt::Debug for ZkRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkRegistry")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ZkRegistry {
    /// A client for `zk://[user:password@]h1:p1[,h2:p2...][/root][?session_timeout=6s&connect_timeout=5s&format=native]`;
    /// see [`ZkOptions::from_url`].
    pub fn connect(url: &RegistryUrl) -> Result<Self> {
        Ok(Self::with_options(ZkOptions::from_url(url)?))
    }

    /// A client with `options`.
    pub fn with_options(options: ZkOptions) -> Self {
        let connect = Arc::new(Connect {
            endpoints: options.endpoints_display(),
            connect_timeout: options.connect_timeout,
            digest: options.digest.clone(),
        });
        let layout = Arc::new(Layout::new(options.root.clone(), options.codec.clone()));
        let leases = Arc::new(ZkLeases {
            connect: connect.clone(),
            layout: layout.clone(),
            acls: Acls::new(options.digest.is_some()),
            crashed: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
            own_sessions: Arc::default(),
        });
        ZkRegistry {
            session: Arc::new(SharedSession::new(connect.clone(), options.session_timeout)),
            registrar: Registrar::new(leases.clone(), options.backoff),
            options,
            connect,
            layout,
            leases,
        }
    }

    /// The options this client was made with.
    pub fn options(&self) -> &ZkOptions {
        &self.options
    }

    /// Simulates this client's process dying: its registration sessions stop pinging but
    /// are not closed, so their nodes vanish only when the session timeout runs out.
    /// Every later request of this client fails.
    ///
    /// A test hook (feature `test-hooks`, not for applications).
    #[cfg(feature = "test-hooks")]
    pub fn crash(&self) {
        self.leases.crashed.store(true, Ordering::SeqCst);
        for session in self.leases.live.lock().unwrap().drain(..) {
            if let Some(session) = session.upgrade() {
                session.abandon();
            }
        }
    }

    /// The ids of the live ZooKeeper sessions of this client's registrations (one per
    /// TTL in use), for logs and tests.
    pub fn session_ids(&self) -> Vec<i64> {
        self.lease_clients().iter().map(|c| c.session_id().0).collect()
    }

    fn lease_clients(&self) -> Vec<zk::Client> {
        self.leases
            .live
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| s.upgrade())
            .filter_map(|s| s.client.lock().unwrap().clone())
            .collect()
    }

    fn check_alive(&self) -> Result<()> {
        if self.leases.crashed.load(Ordering::SeqCst) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// The path of the drain marker of `id`: a persistent node beside the instances.
    /// Formats other than native have no place for one.
    fn marker_path(&self, service: &ServiceName, id: &InstanceId) -> Result<String> {
        let codec = self.layout.codec();
        let marker = codec.drain_marker(id).ok_or_else(|| Error::Unsupported {
            what: "operator drain".into(),
            by: format!("by the {} format", codec.name()),
        })?;
        Ok(self.layout.child_path(service, &marker))
    }

    /// The decodable instances of `service` with the paths of their nodes.
    async fn instances(&self, service: &ServiceName) -> Result<Vec<(String, Instance)>> {
        let client = self.session.client().await?;
        let path = self.layout.service_path(service);
        let listing = list(&client, &self.connect, &path).await?;
        Ok(decode_listing(&**self.layout.codec(), service, listing.nodes)
            .into_iter()
            .map(|(name, instance)| (self.layout.child_path(service, &name), instance))
            .collect())
    }
}

#[async_trait]
impl Registry for ZkRegistry {
    async fn register(&self, instance: Instance, options: RegisterOptions) -> Result<Registration> {
        self.check_alive()?;
        self.registrar.register(instance, options).await
    }

    async fn watch(&self, service: &ServiceName, options: WatchOptions) -> Result<Discovery> {
        self.check_alive()?;
        let follow = Follow::new(
            self.session.clone(),
            self.connect.clone(),
            &self.layout,
            service,
            self.options.backoff,
        );
        let (client, watcher, listing) = follow.start().await?;
        let (mut feed, discovery) = DiscoveryFeed::new(service.clone(), self.layout.codec().clone(), options);
        feed.reset(listing.nodes, listing.revision);
        feed.spawn(move |feed| follow.run(feed, client, watcher));
        Ok(discovery)
    }

    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>> {
        self.check_alive()?;
        Ok(self
            .instances(service)
            .await?
            .into_iter()
            .map(|(_, i)| i)
            .collect())
    }

    async fn list_services(&self) -> Result<Vec<ServiceName>> {
        self.check_alive()?;
        let client = self.session.client().await?;
        let root = self.layout.root_node();
        let names = match client.list_children(root).await {
            Ok(names) => names,
            Err(zk::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(self.connect.error(e, format_args!("listing {root}"))),
        };
        let services: Vec<ServiceName> = names
            .into_iter()
            .filter_map(|n| ServiceName::new(n).ok())
            .collect();
        let paths: Vec<String> = services.iter().map(|s| self.layout.service_path(s)).collect();
        let results = read_many(&client, &paths, zk::MultiReader::add_get_children)
            .await
            .map_err(|e| {
                self.connect
                    .error(e, format_args!("listing the services under {root}"))
            })?;
        let mut services: Vec<ServiceName> = services
            .into_iter()
            .zip(results)
            .filter(|(_, r)| matches!(r, zk::MultiReadResult::Children { children } if !children.is_empty()))
            .map(|(s, _)| s)
            .collect();
        services.sort();
        Ok(services)
    }

    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        self.check_alive()?;
        let client = self.session.client().await?;
        let mut found = false;
        for (path, _) in self
            .instances(service)
            .await?
            .into_iter()
            .filter(|(_, i)| i.id() == id)
        {
            match client.delete(&path, None).await {
                Ok(()) => found = true,
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(self.connect.error(e, format_args!("deleting {path}"))),
            }
        }
        Ok(found)
    }

    async fn drain(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        self.check_alive()?;
        let path = self.marker_path(service, id)?;
        let current = self
            .instances(service)
            .await?
            .into_iter()
            .find(|(_, i)| i.id() == id);
        let value = match &current {
            Some((_, instance)) => self.layout.codec().encode(instance)?,
            None => Vec::new(),
        };
        let client = self.session.client().await?;
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::new(self.leases.acls.parent()));
        let fail = |e: zk::Error| {
            self.connect
                .error(e, format_args!("writing the drain marker {path}"))
        };
        let mut made_parent = false;
        loop {
            match client.create(&path, &value, &persistent).await {
                Ok(_) => break,
                Err(zk::Error::NodeExists) => {
                    client.set_data(&path, &value, None).await.map_err(fail)?;
                    break;
                }
                Err(zk::Error::NoNode) if !made_parent => {
                    made_parent = true;
                    client
                        .mkdir(&self.layout.service_path(service), &persistent)
                        .await
                        .map_err(fail)?;
                }
                Err(e) => return Err(fail(e)),
            }
        }
        Ok(current.is_some())
    }

    async fn undrain(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        self.check_alive()?;
        let path = self.marker_path(service, id)?;
        let client = self.session.client().await?;
        match client.delete(&path, None).await {
            Ok(()) => Ok(true),
            Err(zk::Error::NoNode) => Ok(false),
            Err(e) => Err(self
                .connect
                .error(e, format_args!("deleting the drain marker {path}"))),
        }
    }

    async fn shutdown(&self) {
        self.registrar.shutdown().await;
    }
}
