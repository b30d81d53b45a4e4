//! The ZooKeeper backend of [leasehold]: service registration and discovery
//! on an Apache ZooKeeper ensemble (3.6 or later, for persistent recursive watches).
//!
//! [`ZkRegistry`] implements [`leasehold::Registry`]. Each registration is a protected
//! ephemeral sequential node, Curator-style, under `{root}/{service}`:
//! `_c_{32-hex guid}-{id}{sequence}`, with the instance as the codec's value. A create
//! whose reply was lost is found again by its guid instead of being made twice; parents
//! are created as needed and never deleted by deregistration.
//!
//! Nothing is lost when ZooKeeper misbehaves: a short disconnection keeps the session
//! and changes nothing; an expired session is replaced and every registration written
//! again (our node of the old session removed if it still shows), state `Recovering` →
//! `Registered`; a node deleted by someone else is written again. Discovery reads the
//! children once, follows a persistent recursive watch, re-lists after every reconnect
//! while serving the last known set marked stale, and opens a new session when its own
//! expires.
//!
//! A registration session follows each service it writes to with one persistent
//! recursive watch (not one per node), so a registration is a single create: another
//! client's live node with the same id is found among the children it already knows and
//! refused with [`Error::Conflict`](leasehold::Error::Conflict) (a node of one of our own
//! earlier sessions is removed instead), and an operator's drain marker
//! (`~drained-{id}`, a persistent node beside the instances; native format only) keeps
//! the registration out until it is removed ([`Registry::drain`](leasehold::Registry::drain)).
//!
//! Other frameworks' layouts are chosen with `?format=` ([`leasehold::formats`]):
//! `go-kit` writes go-kit `sd/zk`'s nodes (`_c_{guid}-{sequence}` holding the raw
//! address) and `curator` Curator x-discovery's (`{basePath}/{name}/{id}` holding
//! Curator's JSON), so services of those frameworks and leasehold's find each other.
//!
//! With a digest identity (`zk://user:password@...`), nodes are created with ACLs that
//! let only that identity change or delete them.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> leasehold::Result<()> {
//! use std::time::Duration;
//! use leasehold::{Instance, RegisterOptions, Registry, ServiceName, WatchOptions};
//! use leasehold_zookeeper::ZkRegistry;
//!
//! let registry = ZkRegistry::connect(&"zk://127.0.0.1:2181/leasehold?session_timeout=6s".parse()?)?;
//! let instance = Instance::builder("echo", "10.0.0.5:7001").id("echo-1").build()?;
//! let registration = registry.register(instance, RegisterOptions::ttl(Duration::from_secs(10))).await?;
//!
//! let discovery = registry.watch(&ServiceName::new("echo")?, WatchOptions::default()).await?;
//! discovery.wait_for(Duration::from_secs(5), |s| s.len() == 1).await.expect("seen");
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod follow;
mod layout;
mod lease;
mod options;
mod registry;
mod session;
mod watch;

pub use options::{Digest, ZkOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_ROOT, DEFAULT_SESSION_TIMEOUT};
pub use registry::ZkRegistry;
