//! [`EtcdRegistry`]: the [`Registry`] contract on etcd v3.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};
use leasehold::codec::decode_listing;
use leasehold::registrar::Registrar;
use leasehold::{
    Discovery, DiscoveryFeed, Instance, InstanceId, RegisterOptions, Registration, Registry, RegistryUrl,
    Result, ServiceName, WatchOptions,
};

use crate::connection::Connection;
use crate::lease::EtcdBackend;
use crate::own::OwnKeys;
use crate::{watch, EtcdOptions};

/// A client of an etcd v3 cluster, implementing [`Registry`].
///
/// One etcd client per member, shared by everything it does, with requests going to
/// one member at a time; one lease per TTL shared by all its registrations, kept alive
/// at TTL/3 and replaced (every registration written again) when lost; one watch per
/// service it registered, for its own keys and drain markers; one range per
/// [`watch`](Registry::watch) and one more per re-list (compaction, wiped store), with
/// events applied incrementally in between.
///
/// [`drain`](Registry::drain) and [`undrain`](Registry::undrain) write and delete the
/// native format's marker `{root}/{service}/~drained-{id}` (no lease: it outlives the
/// instance; its value is the instance as registered when drained, or empty); other
/// formats refuse with [`Error::Unsupported`](leasehold::Error::Unsupported).
pub struct EtcdRegistry {
    conn: Arc<Connection>,
    own: Arc<OwnKeys>,
    registrar: Registrar<EtcdBackend>,
    options: EtcdOptions,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistry {
    /// Connects to the cluster of an `etcd://` URL (see [`EtcdOptions::from_url`] for
    /// its parameters). Fails, naming the endpoints, when no member answers within the
    /// connect and request timeouts or the credentials are refused.
    pub async fn connect(url: &RegistryUrl) -> Result<EtcdRegistry> {
        Self::with_options(EtcdOptions::from_url(url)?).await
    }

    /// Connects with `options`; fails as [`connect`](Self::connect) does.
    pub async fn with_options(options: EtcdOptions) -> Result<EtcdRegistry> {
        let conn = Connection::open(&options).await?;
        let own = OwnKeys::new(conn.clone(), options.backoff);
        let backend = Arc::new(EtcdBackend {
            conn: conn.clone(),
            backoff: options.backoff,
            own: own.clone(),
        });
        Ok(EtcdRegistry {
            registrar: Registrar::new(backend, options.backoff),
            conn,
            own,
            options,
        })
    }

    /// The options this client was made with.
    pub fn options(&self) -> &EtcdOptions {
        &self.options
    }

    /// An etcd client of a member that answered, for requests leasehold does not make.
    pub fn client(&self) -> &etcd_client::Client {
        self.conn.any_client()
    }

    /// How many range (`Get`) requests this client has sent, including the connect
    /// probe: one per `watch`, one per re-list, one per `list`, `list_services` and
    /// `deregister`. For measuring that watchers never re-read a prefix per event.
    ///
    /// A test hook (feature `test-hooks`, not for applications).
    #[cfg(feature = "test-hooks")]
    pub fn range_requests(&self) -> u64 {
        self.conn.range_count()
    }

    /// How many events the watches of this client's own keys have received. For
    /// measuring that a change outside the services it registered costs it nothing.
    #[doc(hidden)]
    pub fn own_key_events(&self) -> u64 {
        self.own.events_seen()
    }

    /// Simulates this client's process dying: keepalives stop, nothing is deregistered
    /// or revoked, so its instances vanish only when their lease's TTL runs out. Every
    /// later request of this client fails with [`Error::Closed`](leasehold::Error::Closed).
    ///
    /// A test hook (feature `test-hooks`, not for applications).
    #[cfg(feature = "test-hooks")]
    pub fn crash(&self) {
        self.conn.crash();
    }

    /// The full keys of `id`'s drain marker and of its instance (native keys are named
    /// after the id). Formats without markers refuse.
    fn marker(&self, service: &ServiceName, id: &InstanceId) -> Result<(String, String)> {
        let layout = &self.conn.layout;
        let marker = layout
            .codec
            .drain_marker(id)
            .ok_or_else(|| leasehold::Error::Unsupported {
                what: "operator drain".into(),
                by: format!("by the {} format", layout.codec.name()),
            })?;
        let prefix = layout.service_prefix(service);
        Ok((format!("{prefix}{marker}"), format!("{prefix}{id}")))
    }

    async fn instances_with_keys(&self, service: &ServiceName) -> Result<Vec<(String, Instance)>> {
        let prefix = self.conn.layout.service_prefix(service);
        let (listing, _) = watch::list(&self.conn, &prefix).await?;
        Ok(decode_listing(&*self.conn.layout.codec, service, listing)
            .into_iter()
            .map(|(key, instance)| (format!("{prefix}{key}"), instance))
            .collect())
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, instance: Instance, options: RegisterOptions) -> Result<Registration> {
        if self.conn.is_crashed() {
            return Err(leasehold::Error::Closed);
        }
        self.registrar.register(instance, options).await
    }

    async fn watch(&self, service: &ServiceName, options: WatchOptions) -> Result<Discovery> {
        let prefix = self.conn.layout.service_prefix(service);
        let (listing, position) = watch::list(&self.conn, &prefix).await?;
        let (mut feed, discovery) =
            DiscoveryFeed::new(service.clone(), self.conn.layout.codec.clone(), options);
        feed.reset(listing, position.revision as u64);
        let conn = self.conn.clone();
        let backoff = self.options.backoff;
        feed.spawn(move |feed| watch::follow(feed, conn, prefix, position, backoff));
        Ok(discovery)
    }

    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>> {
        let listed = self.instances_with_keys(service).await?;
        Ok(listed.into_iter().map(|(_, instance)| instance).collect())
    }

    async fn list_services(&self) -> Result<Vec<ServiceName>> {
        let root = self.conn.layout.root_prefix();
        let answer = self
            .conn
            .range(
                root.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let services: BTreeSet<ServiceName> = answer
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                let (name, _) = key.strip_prefix(&root)?.split_once('/')?;
                ServiceName::new(name).ok()
            })
            .collect();
        Ok(services.into_iter().collect())
    }

    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        let keys: Vec<TxnOp> = self
            .instances_with_keys(service)
            .await?
            .into_iter()
            .filter(|(_, instance)| instance.id() == id)
            .map(|(key, _)| TxnOp::delete(key, None))
            .collect();
        if keys.is_empty() {
            return Ok(false);
        }
        let txn = Txn::new().and_then(keys);
        self.conn.txn(&txn).await.map_err(|f| self.conn.error(f))?;
        Ok(true)
    }

    async fn drain(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        let (marker, key) = self.marker(service, id)?;
        let txn = Txn::new().and_then([TxnOp::get(key.as_str(), None)]);
        let found = self.conn.txn(&txn).await.map_err(|f| self.conn.error(f))?;
        // The marker holds the instance as it is registered now, for an operator to read.
        let value = found.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(got) => got.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        let registered = value.is_some();
        let value = value.unwrap_or_default();
        self.conn
            .call(|client| {
                let (mut kv, marker, value) = (client.kv_client(), marker.clone(), value.clone());
                async move { kv.put(marker, value, None).await }
            })
            .await?;
        Ok(registered)
    }

    async fn undrain(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        let (marker, _) = self.marker(service, id)?;
        let deleted = self
            .conn
            .call(|client| {
                let (mut kv, marker) = (client.kv_client(), marker.clone());
                async move { kv.delete(marker, None).await }
            })
            .await?;
        Ok(deleted.deleted() > 0)
    }

    async fn shutdown(&self) {
        self.registrar.shutdown().await;
    }
}
