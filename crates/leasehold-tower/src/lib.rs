//! Client-side load balancing over leasehold discovery, and tonic/tower integration.
//!
//! This is what turns a discovered list of addresses into calls that keep working while
//! instances come and go:
//!
//! - [`balance`]: lock-free [`Balancer`](balance::Balancer)s that pick from a discovery
//!   snapshot — round robin, random, smooth weighted round robin, power of two choices
//!   over peak-EWMA load, consistent hashing, and a zone-aware wrapper;
//! - [`endpoint`]: one client per instance, made on first need by a [`MakeEndpoint`]
//!   factory (asynchronously, as tower's `MakeService`) and dropped when the instance
//!   leaves (go-kit's `Endpointer`);
//! - [`outlier`]: passive health — an instance that fails is ejected for a growing
//!   period, never below a minimum share of the set;
//! - [`probe`]: checking an endpoint once over HTTP or the gRPC health protocol (what
//!   passes, timeouts, typed errors), for health-gated registration and for balancers;
//! - [`retry`]: retries on another instance with a deadline, a maximum of attempts and a
//!   retry budget, for requests marked safe, and for any request that was never sent;
//! - [`classify`]: which responses are failures, from HTTP statuses and gRPC statuses in
//!   headers or trailers;
//! - [`health`]: opt-in active health checks of every instance at an interval, running
//!   [`probe`]'s checks through the balancer's own clients;
//! - [`Balanced`]: the tower `Service` that puts these together, [`channel`] that makes
//!   one over tonic channels for tonic-generated clients, and [`http_client`] one over
//!   hyper's client for plain HTTP;
//! - [`discover()`]: a tower `Discover` stream for tower's own balancers.
//!
//! ```no_run
//! # async fn demo(registry: &dyn leasehold::Registry) -> Result<(), Box<dyn std::error::Error>> {
//! use leasehold::{ServiceName, WatchOptions};
//! use leasehold_tower::balance::RoundRobin;
//! use leasehold_tower::{BalanceOptions, RetryPolicy};
//! use tower::ServiceExt;
//!
//! let discovery = registry.watch(&ServiceName::new("greeter")?, WatchOptions::default()).await?;
//! let options = BalanceOptions::default()
//!     .balancer(RoundRobin::new)
//!     .retry(RetryPolicy::default().retry_all());
//! let channel = leasehold_tower::channel(discovery, options);
//! // A tonic-generated client takes it as is: `GreeterClient::new(channel)`.
//! // Or call it as any tower service:
//! let request = http::Request::post("/greeter.Greeter/SayHello")
//!     .header("content-type", "application/grpc")
//!     .body(tonic::body::Body::empty())?;
//! let response = channel.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```
//!
//! The runnable example
//! [`grpc_balance`](https://github.com/leasehold-rs/leasehold/blob/main/crates/leasehold-tower/examples/grpc_balance.rs)
//! balances gRPC calls over three discovered servers while one dies; the servers' side
//! (register once bound, deregister and drain on shutdown) is `leasehold-server`'s.
//!
//! Without tower, a balancer alone serves a plain client:
//!
//! ```no_run
//! # async fn demo(discovery: leasehold::Discovery) -> std::io::Result<()> {
//! use leasehold_tower::balance::{Balancer, PickContext, RoundRobin};
//!
//! let balancer = RoundRobin::new();
//! if let Some(instance) = balancer.pick(&discovery.snapshot(), &PickContext::new()) {
//!     let stream = tokio::net::TcpStream::connect(instance.addr().authority()).await?;
//!     # drop(stream);
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod balance;
mod channel;
pub mod classify;
mod discover;
pub mod endpoint;
mod error;
pub mod health;
mod hyper_client;
pub mod outlier;
pub mod probe;
pub mod retry;
mod router;

pub use channel::{channel, BalancedChannel, TonicEndpoints};
pub use classify::{ClassifiedBody, Classifier};
pub use discover::{discover, DiscoverStream};
pub use endpoint::{EndpointCache, MakeEndpoint};
pub use error::{BoxError, Error};
pub use health::{HealthCheck, HealthTarget};
pub use hyper_client::{http_client, HyperEndpoint, HyperEndpoints};
pub use outlier::{OutlierDetector, OutlierPolicy};
pub use retry::{RetryPolicy, RetrySafe};
pub use router::{BalanceOptions, Balanced, CallerZone, HashKey, RequestBody};
