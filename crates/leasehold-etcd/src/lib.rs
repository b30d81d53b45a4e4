//! The etcd v3 backend of [leasehold]: service registration and discovery
//! that survive etcd restarts, wipes, member failures and compaction.
//!
//! [`EtcdRegistry`] implements [`leasehold::Registry`]:
//!
//! - **registration**: one etcd lease per TTL per client, shared by all its
//!   registrations, kept alive at TTL/3 with every answer drained. A lost lease (an
//!   answer with TTL ≤ 0, a lease not found, a keepalive stream that ends) is noticed
//!   within one keepalive period; the shared [`Registrar`](leasehold::registrar::Registrar)
//!   grants a new one and writes every registration again, in transactions of up to 128
//!   puts, retrying with backoff for as long as the handle lives. A key deleted by
//!   someone else is written again.
//! - **discovery**: one range of the service's prefix, then a watch from the next
//!   revision (with `prev_kv`, progress notifications and `require_leader`), applied
//!   incrementally; a broken stream resumes after the last applied revision, a compacted
//!   one (or a wiped store) is listed again and the exact difference emitted. Events are
//!   never applied twice.
//! - **connections**: one client per registry, balanced over every endpoint, with HTTP/2
//!   keep-alive pings so a frozen member is left within seconds, and every request
//!   bounded by a timeout so an unreachable cluster is an error naming its endpoints.
//!
//! Options come from an `etcd://` URL or from [`EtcdOptions`]: user and password (never
//! shown in `Debug`, `Display`, logs or errors), TLS files, timeouts, root and format.
//! `?format=` ([`leasehold::formats`]) writes and reads go-kit `sd/etcdv3`, go-zero
//! `discov` (keys named after the shared lease's id), etcd `naming/endpoints` (grpc-go's
//! `etcd:///` resolver) or Kratos keys and values, so their services and leasehold's
//! find each other.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> leasehold::Result<()> {
//! use std::time::Duration;
//! use leasehold::{Instance, RegisterOptions, Registry, RegistryUrl, ServiceName, WatchOptions};
//! use leasehold_etcd::EtcdRegistry;
//!
//! let url: RegistryUrl = "etcd://127.0.0.1:2379/leasehold/services?connect_timeout=2s".parse()?;
//! let registry = EtcdRegistry::connect(&url).await?;
//!
//! let instance = Instance::builder("echo", "10.0.0.5:7001").id("echo-1").build()?;
//! let registration = registry.register(instance, RegisterOptions::ttl(Duration::from_secs(10))).await?;
//!
//! let discovery = registry.watch(&ServiceName::new("echo")?, WatchOptions::default()).await?;
//! discovery.wait_for(Duration::from_secs(5), |s| s.len() == 1).await;
//! for instance in discovery.snapshot().instances().iter() {
//!     println!("{} at {}", instance.id(), instance.addr());
//! }
//!
//! registration.deregister().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod connection;
mod lease;
mod options;
mod registry;
mod watch;

pub use options::{EtcdOptions, DEFAULT_ROOT};
pub use registry::EtcdRegistry;
