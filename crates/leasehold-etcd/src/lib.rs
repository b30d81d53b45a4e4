//! The etcd v3 backend of [leasehold]: service registration and discovery
//! that survive etcd restarts, wipes, member failures and compaction.
//!
//! [`EtcdRegistry`] implements [`leasehold::Registry`]:
//!
//! - **registration**: one etcd lease per TTL per client, shared by all its
//!   registrations, kept alive at TTL/3 with every answer drained. A lost lease (an
//!   answer with TTL ≤ 0, a lease not found, a keepalive stream that ends) is noticed
//!   within one keepalive period; the shared [`Registrar`](leasehold::registrar::Registrar)
//!   grants a new one and writes every registration again, in transactions bounded in
//!   operations and bytes, retrying with backoff for as long as the handle lives. Every
//!   write is conditional on the exact state (mod revision) its key was left in, so a
//!   late copy cannot bind a key to a lease given up nor put an older value back over a
//!   newer one, and a key another live client holds is refused
//!   ([`Error::Conflict`](leasehold::Error::Conflict)). A registration's writes go one
//!   at a time (updates made meanwhile go together in the next): a write sent behind an
//!   unanswered one could only expect a lease and version, and a late copy of it can
//!   find them again. Own keys are watched per service prefix for deletes (etcd leaves
//!   the puts out, so a client never receives its own writes nor the other instances')
//!   and read back every few seconds: one deleted or expired is written again at once,
//!   one taken over under another lease or put without one within seconds; an
//!   operator's drain marker keeps it out
//!   ([`Registry::drain`](leasehold::Registry::drain)).
//! - **discovery**: one range of the service's prefix, then a watch from the next
//!   revision (with progress notifications and `require_leader`), applied
//!   incrementally; a broken stream resumes after the last applied revision and says it
//!   is live again only once what changed meanwhile is applied; a compacted one (or a
//!   wiped store) is listed again and the exact difference emitted. Events are never
//!   applied twice.
//! - **connections**: one client per member; requests and keepalives go to one chosen
//!   member, and one that leaves a keepalive unanswered for half a period (or a request
//!   for a quarter of the request timeout) is left for another, so a frozen member never costs
//!   a lease; every request is bounded by a timeout so an unreachable cluster is an
//!   error naming its endpoints.
//! - **given-up leases** (one lost to a silent member, or replaced) are kept until their
//!   registrations are written under the next lease, then revoked, so nothing leaves the
//!   registry in between. On etcd before 3.4.28 and 3.5.11 a leader that stalls longer
//!   than a TTL revokes every lease it saw unrenewed when it resumes
//!   (etcd-io/etcd#15247; Debian 12 ships 3.4.23): there, a lease kept alive across a
//!   raft term change is replaced by one that former leader never knew.
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
mod own;
mod registry;
mod watch;
mod write;

pub use options::{EtcdOptions, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_ROOT};
pub use registry::EtcdRegistry;
