//! The Aggregated Discovery Service: one [`Session`] per client stream over a shared
//! [`Catalog`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use leasehold::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::Catalog;
use crate::delta::DeltaSession;
use crate::sotw::Session;
use crate::stream;
use crate::{XdsError, XdsOptions};

/// How many responses may wait for a slow client before its session waits too.
const RESPONSE_BUFFER: usize = 16;

type ResponseStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// An xDS management server over a leasehold registry.
///
/// Serves the Aggregated Discovery Service (state of the world and incremental) on one
/// gRPC port: for
/// each service a client names (`xds:///greeter` names `greeter`), its Listener,
/// RouteConfiguration, Cluster and ClusterLoadAssignment, the last kept current by a
/// [`Discovery`](leasehold::Discovery) watch of the service that all clients share.
/// Cheap to clone; clones serve the same catalog.
///
/// ```no_run
/// # async fn demo(registry: std::sync::Arc<dyn leasehold::Registry>) -> Result<(), leasehold_xds::XdsError> {
/// use leasehold_xds::{XdsOptions, XdsServer};
/// let server = XdsServer::new(registry, XdsOptions::default());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:18000").await.unwrap();
/// server.serve(listener, std::future::pending()).await
/// # }
/// ```
#[derive(Clone)]
pub struct XdsServer {
    catalog: Arc<Catalog>,
    options: Arc<XdsOptions>,
    /// Set when [`serve`](XdsServer::serve)'s shutdown completes: every session then
    /// ends its stream, which would otherwise keep the graceful shutdown waiting forever.
    closing: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsServer")
            .field("catalog", &self.catalog)
            .field("options", &self.options)
            .finish()
    }
}

impl XdsServer {
    /// A server of what `registry` holds, described as `options` say.
    pub fn new(registry: Arc<dyn Registry>, options: XdsOptions) -> Self {
        XdsServer {
            catalog: Arc::new(Catalog::new(registry)),
            options: Arc::new(options),
            closing: Arc::new(watch::Sender::new(false)),
        }
    }

    /// The tonic service, to add to a server of your own beside other services. Its
    /// streams end when their clients close them or the connection goes; only
    /// [`serve`](XdsServer::serve) also ends them when it shuts down.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<XdsServer> {
        AggregatedDiscoveryServiceServer::new(self).max_encoding_message_size(usize::MAX)
    }

    /// How many services some client follows now.
    pub fn followed_services(&self) -> usize {
        self.catalog.followed()
    }

    /// Serves on `listener` until `shutdown` completes, then ends every client's stream
    /// (with `UNAVAILABLE`, so clients reconnect, to another server if they have one)
    /// and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        let addr = listener.local_addr().ok();
        let closing = self.closing.clone();
        let shutdown = async move {
            shutdown.await;
            closing.send_replace(true);
        };
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
            .map_err(|source| XdsError::Serve { addr, source })
    }

    /// Binds `addr` and serves there until `shutdown` completes.
    pub async fn bind_and_serve(
        self,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| XdsError::Bind { addr, source })?;
        self.serve(listener, shutdown).await
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        tracing::debug!(?peer, "ADS stream opened");
        let (responses, rx) = mpsc::channel(RESPONSE_BUFFER);
        let session = Session::new(self.catalog.clone(), self.options.clone());
        tokio::spawn(stream::run(
            session,
            request.into_inner(),
            responses,
            self.closing.subscribe(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        tracing::debug!(?peer, "incremental ADS stream opened");
        let (responses, rx) = mpsc::channel(RESPONSE_BUFFER);
        let session = DeltaSession::new(self.catalog.clone(), self.options.clone());
        tokio::spawn(stream::run(
            session,
            request.into_inner(),
            responses,
            self.closing.subscribe(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
