//! Serve a tonic or axum server that registers itself in a leasehold registry and leaves
//! it cleanly.
//!
//! The lifecycle every registered server needs, in the order that loses no call:
//!
//! 1. bind the listener (the caller does, so it chooses the address, port 0 included);
//! 2. start serving, then **register** the instance, whose address comes from the bound
//!    listener: no client is sent to an address that does not accept yet;
//! 3. wait for the shutdown signal ([`shutdown_signal`]: Ctrl-C or SIGTERM, or any future);
//! 4. **deregister**, so watchers drop the instance from their sets;
//! 5. keep serving for a **grace period** while clients move away (a call routed before
//!    the client saw the deregistration still lands on a live server);
//! 6. stop accepting and **drain** the requests in flight, up to a drain timeout;
//! 7. return.
//!
//! [`Serve::tonic`] and [`Serve::axum`] (features `tonic`, on by default, and `axum`) do
//! this for the two common shapes; [`Serve::run`] does it for any server that can stop on
//! a future. The registration keeps its lease alive and is written again after registry
//! faults while the server runs, as every leasehold [`Registration`](leasehold::Registration) is.
//!
//! ```no_run
//! # #[cfg(feature = "tonic")]
//! # async fn example(router: tonic::transport::server::Router) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use leasehold::Instance;
//! use leasehold_server::{shutdown_signal, Serve};
//!
//! let url = "etcd://127.0.0.1:2379/leasehold/services".parse()?;
//! let registry = Arc::new(leasehold_etcd::EtcdRegistry::connect(&url).await?);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:50051").await?;
//! Serve::new(registry)
//!     .grace(Duration::from_secs(5))
//!     .tonic(
//!         router,
//!         listener,
//!         |addr| Instance::builder("greeter", format!("10.0.0.5:{}", addr.port())).build(),
//!         shutdown_signal(),
//!     )
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Runnable examples, each run by this crate's tests against real servers:
//! [`tonic_etcd`](https://github.com/leasehold-rs/leasehold/blob/main/crates/leasehold-server/examples/tonic_etcd.rs),
//! [`tonic_zookeeper`](https://github.com/leasehold-rs/leasehold/blob/main/crates/leasehold-server/examples/tonic_zookeeper.rs)
//! and [`axum_http`](https://github.com/leasehold-rs/leasehold/blob/main/crates/leasehold-server/examples/axum_http.rs)
//! (`cargo run -p leasehold-server --example tonic_etcd`).

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use leasehold::{BoxError, Instance, InvalidInput, RegisterOptions, Registry};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{info, warn};

/// What can end [`Serve`] with an error. The instance is deregistered in every case
/// where it had been registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listener's local address could not be read.
    #[error("cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
    /// The instance built from the bound address is invalid (bad name or address).
    #[error("invalid instance: {0}")]
    Instance(#[source] InvalidInput),
    /// The registry refused or could not take the registration.
    #[error("cannot register: {0}")]
    Register(#[source] leasehold::Error),
    /// The server failed (or its task panicked) before or while draining.
    #[error("server failed: {0}")]
    Server(#[source] BoxError),
    /// Requests were still in flight when the drain timeout ran out; the server was
    /// stopped with them.
    #[error("requests still in flight after the drain timeout of {0:?}")]
    DrainTimeout(Duration),
}

impl ServeError {
    /// Whether the registry is at fault (unreachable, refusing): retrying later may work.
    pub fn is_registry(&self) -> bool {
        matches!(self, ServeError::Register(_))
    }

    /// Whether the server stopped only because in-flight requests outlasted the drain
    /// timeout: everything else went as planned.
    pub fn is_drain_timeout(&self) -> bool {
        matches!(self, ServeError::DrainTimeout(_))
    }
}

/// Resolves when the server should stop accepting connections and finish the requests
/// in flight: the future [`Serve::run`] hands its server.
#[derive(Debug)]
pub struct Drain(oneshot::Receiver<()>);

impl Future for Drain {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender means `Serve` itself is gone: drain too.
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM: what a terminal and a process
/// supervisor (systemd, Kubernetes) send to stop a server.
///
/// If a handler cannot be installed, that signal is logged and ignored; the other one
/// still works.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C: shutting down"),
        () = terminate => info!("SIGTERM: shutting down"),
    }
}

/// Serves a server registered in `registry` for as long as it runs, and takes it out of
/// rotation before it stops (see the [crate docs](crate) for the order of steps).
#[derive(Clone)]
pub struct Serve {
    registry: Arc<dyn Registry>,
    register: RegisterOptions,
    grace: Duration,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("register", &self.register)
            .field("grace", &self.grace)
            .field("drain_timeout", &self.drain_timeout)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// The default [`grace`](Serve::grace): long enough for watchers on a healthy
    /// registry to see a deregistration (they get it pushed within milliseconds).
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

    /// The default [`drain_timeout`](Serve::drain_timeout).
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

    /// Registers in `registry` with the default [`RegisterOptions`], a grace period of
    /// [`DEFAULT_GRACE`](Serve::DEFAULT_GRACE) and a drain timeout of
    /// [`DEFAULT_DRAIN_TIMEOUT`](Serve::DEFAULT_DRAIN_TIMEOUT).
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Serve {
            registry,
            register: RegisterOptions::default(),
            grace: Self::DEFAULT_GRACE,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// The options of the registration (TTL, backoff).
    #[must_use]
    pub fn register_options(mut self, options: RegisterOptions) -> Self {
        self.register = options;
        self
    }

    /// How long to keep serving after deregistering, so clients that have not yet seen
    /// the deregistration are still answered while they move to other instances.
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long in-flight requests may take to finish once the server stops accepting;
    /// after that the server is stopped with them and [`ServeError::DrainTimeout`] returned.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Serves `router` on `listener` as the instance `instance` builds from the bound
    /// address, until `shutdown` resolves; then deregisters, waits the grace period and
    /// drains.
    ///
    /// `instance` gets the listener's local address; return the address clients should
    /// dial (for a listener on `0.0.0.0`, the host's routable address with that port).
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub async fn tonic(
        self,
        router: tonic::transport::server::Router,
        listener: TcpListener,
        instance: impl FnOnce(SocketAddr) -> Result<Instance, InvalidInput>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.run(listener, instance, shutdown, |listener, drain| {
            router.serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), drain)
        })
        .await
    }

    /// Serves the axum app `router` on `listener`, as [`tonic`](Serve::tonic) does for
    /// a tonic server.
    #[cfg(feature = "axum")]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub async fn axum(
        self,
        router: axum::Router,
        listener: TcpListener,
        instance: impl FnOnce(SocketAddr) -> Result<Instance, InvalidInput>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.run(listener, instance, shutdown, |listener, drain| async move {
            axum::serve(listener, router).with_graceful_shutdown(drain).await
        })
        .await
    }

    /// The lifecycle for any server: `server` gets the listener and a [`Drain`] future,
    /// serves until the future resolves, then finishes the requests in flight and returns.
    /// It runs on its own task.
    pub async fn run<S, F, E>(
        self,
        listener: TcpListener,
        instance: impl FnOnce(SocketAddr) -> Result<Instance, InvalidInput>,
        shutdown: impl Future<Output = ()>,
        server: S,
    ) -> Result<(), ServeError>
    where
        S: FnOnce(TcpListener, Drain) -> F,
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let local = listener.local_addr().map_err(ServeError::Listener)?;
        let instance = instance(local).map_err(ServeError::Instance)?;
        let (drain, drained) = oneshot::channel();
        let serving = server(listener, Drain(drained));
        let mut task = AbortOnDrop(tokio::spawn(async move { serving.await.map_err(Into::into) }));

        tokio::pin!(shutdown);
        let registration = tokio::select! {
            registered = self.registry.register(instance.clone(), self.register) => {
                registered.map_err(ServeError::Register)?
            }
            ended = &mut task.0 => return Err(ended_early(ended)),
        };
        // A shutdown signalled while the registry was answering is seen below, after
        // the registration exists: a register cancelled half-way could leave the
        // instance listed until its lease expires.
        info!(service = %instance.service(), id = %instance.id(), addr = %instance.addr(), %local, "serving and registered");

        let ended = tokio::select! {
            () = &mut shutdown => None,
            ended = &mut task.0 => Some(ended),
        };
        if let Err(e) = registration.deregister().await {
            // The lease still expires after its TTL; draining goes on regardless.
            warn!(id = %instance.id(), error = %e, "cannot deregister; the registry drops the instance when its lease expires");
        }
        if let Some(ended) = ended {
            return Err(ended_early(ended));
        }
        info!(id = %instance.id(), grace = ?self.grace, "deregistered; serving while clients move away");
        tokio::time::sleep(self.grace).await;

        info!(id = %instance.id(), "draining in-flight requests");
        let _ = drain.send(());
        match tokio::time::timeout(self.drain_timeout, &mut task.0).await {
            Ok(Ok(result)) => result.map_err(ServeError::Server),
            Ok(Err(join)) => Err(ServeError::Server(join.into())),
            Err(_) => Err(ServeError::DrainTimeout(self.drain_timeout)),
        }
    }
}

/// A server that stopped before it was asked to: its error, or that it stopped at all.
fn ended_early(ended: Result<Result<(), BoxError>, tokio::task::JoinError>) -> ServeError {
    match ended {
        Ok(Err(e)) => ServeError::Server(e),
        Ok(Ok(())) => ServeError::Server("the server stopped before the shutdown signal".into()),
        Err(join) => ServeError::Server(join.into()),
    }
}

/// Stops the server's task when `Serve` returns early or is dropped, so no server outlives
/// the call that serves it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
