//! An xDS management server over leasehold discovery.
//!
//! gRPC clients in Go, Java, Python and C++ (and Envoy) resolve `xds:///SERVICE` by
//! asking an xDS server over the Aggregated Discovery Service, then balance calls
//! themselves. [`XdsServer`] is that server for any registry leasehold reads (etcd,
//! ZooKeeper, every supported format): a client that names `greeter` gets
//!
//! - the Listener `greeter`: an API listener (HTTP connection manager, router filter)
//!   whose routes come over RDS;
//! - the RouteConfiguration `greeter`: every call to the cluster `greeter` (with a
//!   header hash policy when the service is balanced by ring hash);
//! - the Cluster `greeter`: endpoints over EDS, round robin or ring hash
//!   ([`XdsOptions::ring_hash`]);
//! - the ClusterLoadAssignment `greeter`: the instances the discovery cache holds, each
//!   instance's weight as its load-balancing weight and its zone as its locality (see
//!   [`endpoints`] for how weights reach round-robin clients). While the registry is
//!   unreachable the last known set is kept and served, its endpoints marked `UNKNOWN`
//!   rather than `HEALTHY`; an assignment is never emptied because of an outage.
//!
//! The protocol is ADS, state of the world (what gRPC clients speak) and incremental
//! (delta, as Envoy can): versions and nonces per type, ACKs and NACKs (logged with the
//! client's error; nothing is re-sent until it changes), any number of clients per
//! server sharing one watch per service, only the resources a client asked for, and a
//! registry change pushed to every client that follows the service as soon as the cache
//! has it, without re-sending what did not change. A client that reconnects gets the
//! current state (an incremental one only what changed since the versions it names).
//! Wildcard subscriptions are answered empty: resources are served by name.
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use leasehold::memory::MemoryRegistry;
//! use leasehold_xds::{XdsOptions, XdsServer};
//!
//! let registry = Arc::new(MemoryRegistry::new());
//! let server = XdsServer::new(registry, XdsOptions::default());
//! server
//!     .bind_and_serve("127.0.0.1:18000".parse()?, async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! A gRPC client then needs only a bootstrap file naming the server
//! (`GRPC_XDS_BOOTSTRAP=bootstrap.json`):
//!
//! ```json
//! {
//!   "xds_servers": [{ "server_uri": "127.0.0.1:18000",
//!                     "channel_creds": [{ "type": "insecure" }],
//!                     "server_features": ["xds_v3"] }],
//!   "node": { "id": "my-client" }
//! }
//! ```

#![warn(missing_docs)]

mod catalog;
mod delta;
pub mod endpoints;
mod error;
mod options;
pub mod resources;
mod server;
mod sotw;
mod sources;
mod stream;

pub use error::XdsError;
pub use options::{Balancing, XdsOptions};
pub use resources::ResourceType;
pub use server::XdsServer;

/// The generated xDS types this crate speaks, re-exported so a caller's version matches.
pub use envoy_types;
