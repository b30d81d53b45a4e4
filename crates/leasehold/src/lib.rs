//! Service registration and discovery.
//!
//! A service registers its [`Instance`] in a [`Registry`] under a lease that a background
//! task keeps alive; clients [`watch`](Registry::watch) a service and get a [`Discovery`]
//! cache, kept current by the registry's watch, to balance their calls over. Backends:
//! the in-process [`memory`] registry here, etcd v3 in `leasehold-etcd`, ZooKeeper in
//! `leasehold-zookeeper`; balancers and tonic channels in `leasehold-tower`.
//!
//! Nothing is lost when the registry restarts or the network breaks: a lost lease or key
//! is written again with backoff for as long as the [`Registration`] handle lives, and a
//! broken watch resumes (re-listing when it must) while the cache keeps serving the last
//! known set, marked stale.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> leasehold::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use leasehold::{Instance, RegisterOptions, Registry, RegistrationState, ServiceName, WatchOptions};
//!
//! let registry: Arc<dyn Registry> = Arc::new(leasehold::memory::MemoryRegistry::new());
//!
//! // A server registers itself; the handle keeps it registered.
//! let instance = Instance::builder("echo", "127.0.0.1:7001").id("echo-1").build()?;
//! let registration = registry.register(instance, RegisterOptions::default()).await?;
//! assert_eq!(registration.state(), RegistrationState::Registered);
//!
//! // A client follows the service.
//! let discovery = registry.watch(&ServiceName::new("echo")?, WatchOptions::default()).await?;
//! assert_eq!(discovery.snapshot().len(), 1);
//!
//! // Deregistering removes it at once.
//! registration.deregister().await?;
//! discovery.wait_for(Duration::from_secs(5), |s| s.is_empty()).await.expect("removed");
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! - the model: [`Instance`], [`ServiceName`], [`InstanceId`], [`Address`];
//! - the contract: [`Registry`], [`RegisterOptions`], [`WatchOptions`];
//! - registration: [`Registration`] and its [`RegistrationState`]; [`registrar`] for backend
//!   authors;
//! - discovery: [`Discovery`], [`Snapshot`], [`Change`], [`ConnectionState`], and
//!   [`DiscoveryFeed`] for backend authors;
//! - formats: [`Codec`] and [`NativeCodec`];
//! - [`RegistryUrl`] for picking a backend at run time;
//! - [`health`]: registrations gated by a check of the service itself;
//! - [`metrics`]: the metrics leasehold records, and their names.

#![warn(missing_docs)]

mod backoff;
pub mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
mod discovery;
mod error;
pub mod formats;
pub mod health;
mod instance;
pub mod memory;
pub mod metrics;
pub mod registrar;
mod registration;
mod registry;
mod url;

pub use backoff::{Backoff, Retries};
pub use codec::{Codec, CodecError, KeyContext, NativeCodec, NodeNaming};
pub use discovery::{
    Change, Changes, ConnectionState, Discovery, DiscoveryFeed, Instances, Snapshot, SnapshotWriter,
    WatchOptions,
};
pub use error::{BoxError, Error, Result};
pub use instance::{
    Address, Instance, InstanceBuilder, InstanceId, InstanceUpdate, InvalidInput, Metadata, ServiceName,
};
pub use registration::{RegisterOptions, Registration, RegistrationState};
pub use registry::Registry;
pub use url::RegistryUrl;
