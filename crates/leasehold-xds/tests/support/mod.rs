//! Shared pieces of the xDS tests: Greeter servers, an xDS server on a free port, and
//! raw ADS clients of both protocols.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::{Instance, RegisterOptions, Registration, Registry};
use leasehold_xds::envoy_types::pb::envoy::config::core::v3::Node;
use leasehold_xds::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use leasehold_xds::envoy_types::pb::google::protobuf::Any;
use leasehold_xds::envoy_types::pb::google::rpc::Status as RpcStatus;
use leasehold_xds::{ResourceType, XdsOptions, XdsServer};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::Channel;

/// `greeter.HelloRequest`, encoded by prost.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `greeter.HelloReply`: `server` says who answered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub server: String,
}

/// The Greeter service of `crates/leasehold-tower/proto/greeter.proto`, made by hand so
/// this crate needs no build script: `SayHello` answers with the server's name.
#[derive(Clone)]
pub struct Greeter {
    name: Arc<str>,
}

impl tonic::server::UnaryService<HelloRequest> for Greeter {
    type Response = HelloReply;
    type Future = std::future::Ready<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(HelloReply {
            message: format!("hello {}", request.into_inner().name),
            server: self.name.to_string(),
        })))
    }
}

impl NamedService for Greeter {
    const NAME: &'static str = "greeter.Greeter";
}

impl tonic::codegen::Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let greeter = self.clone();
        Box::pin(async move {
            if request.uri().path() != "/greeter.Greeter/SayHello" {
                return Ok(tonic::Status::unimplemented(request.uri().path().to_owned()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(greeter, request).await)
        })
    }
}

/// A Greeter server on a free loopback port; stops when dropped.
pub struct GreeterServer {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl GreeterServer {
    pub async fn start(name: &str) -> GreeterServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let greeter = Greeter { name: name.into() };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(greeter)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        GreeterServer { addr, _stop: stop }
    }
}

/// Starts an xDS server over `registry` on a free loopback port; it stops when the
/// returned sender drops.
pub async fn start_xds(
    registry: Arc<dyn Registry>,
    options: XdsOptions,
) -> (SocketAddr, XdsServer, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = XdsServer::new(registry, options);
    tokio::spawn(server.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, server, stop)
}

/// How long a test waits to be sure nothing is sent.
pub const QUIET: Duration = Duration::from_millis(500);

/// A raw ADS stream of either protocol (state of the world or incremental), to drive
/// it step by step: requests go out as written, responses are read one by one.
pub struct AdsStream<Request, Response> {
    requests: mpsc::Sender<Request>,
    responses: tonic::Streaming<Response>,
    node: String,
}

/// The state-of-the-world ADS stream.
pub type AdsClient = AdsStream<DiscoveryRequest, DiscoveryResponse>;

/// The incremental (delta) ADS stream.
pub type DeltaClient = AdsStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl<Request, Response: std::fmt::Debug> AdsStream<Request, Response> {
    /// Opens a stream to the server at `xds` with `open` (the RPC of one protocol),
    /// accepting responses of any size.
    async fn open<F, Opened>(xds: SocketAddr, node: &str, open: F) -> Self
    where
        F: FnOnce(AggregatedDiscoveryServiceClient<Channel>, ReceiverStream<Request>) -> Opened,
        Opened: Future<Output = Result<tonic::Response<tonic::Streaming<Response>>, tonic::Status>>,
    {
        let ads = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .unwrap()
            .max_decoding_message_size(usize::MAX);
        let (requests, rx) = mpsc::channel(16);
        let responses = open(ads, ReceiverStream::new(rx)).await.unwrap().into_inner();
        AdsStream {
            requests,
            responses,
            node: node.to_owned(),
        }
    }

    /// Sends `request` as it is.
    pub async fn send(&self, request: Request) {
        self.requests.send(request).await.unwrap();
    }

    /// The next response, failing the test if none comes within ten seconds.
    pub async fn next(&mut self) -> Response {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response within 10s")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// The next response if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Response> {
        tokio::time::timeout(wait, self.responses.message())
            .await
            .ok()
            .map(|r| r.expect("the stream is healthy").expect("the stream is open"))
    }

    /// Fails the test, naming `why` and what came, if anything arrives within [`QUIET`].
    pub async fn expect_quiet(&mut self, why: &str) {
        if let Ok(unexpected) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!("{why}, yet the stream answered: {unexpected:?}");
        }
    }

    fn node(&self) -> Option<Node> {
        Some(Node {
            id: self.node.clone(),
            ..Default::default()
        })
    }
}

impl AdsClient {
    pub async fn connect(xds: SocketAddr, node: &str) -> AdsClient {
        AdsStream::open(xds, node, |mut ads, requests| async move {
            ads.stream_aggregated_resources(requests).await
        })
        .await
    }

    /// Sends a request for `names` of type `kind`, acknowledging `version`/`nonce`, or
    /// rejecting them when `error` is given.
    pub async fn request(
        &self,
        kind: ResourceType,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) {
        self.send(DiscoveryRequest {
            version_info: version.to_owned(),
            node: self.node(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: kind.type_url(),
            response_nonce: nonce.to_owned(),
            error_detail: error.map(rejection),
            ..Default::default()
        })
        .await;
    }

    /// Subscribes to `names` of type `kind` from scratch (no version, no nonce), and
    /// returns the response after acknowledging it.
    pub async fn subscribe(&mut self, kind: ResourceType, names: &[&str]) -> DiscoveryResponse {
        self.request(kind, names, "", "", None).await;
        let response = self.next().await;
        self.ack(&response, names).await;
        response
    }

    /// Acknowledges `response`, still subscribing to `names`.
    pub async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        let kind = ResourceType::from_type_url(&response.type_url).unwrap();
        self.request(kind, names, &response.version_info, &response.nonce, None)
            .await;
    }
}

impl DeltaClient {
    pub async fn connect(xds: SocketAddr, node: &str) -> DeltaClient {
        AdsStream::open(xds, node, |mut ads, requests| async move {
            ads.delta_aggregated_resources(requests).await
        })
        .await
    }

    /// Sends `request` with this client's node filled in.
    pub async fn delta(&self, request: DeltaDiscoveryRequest) {
        self.send(DeltaDiscoveryRequest {
            node: self.node(),
            ..request
        })
        .await;
    }

    /// Adds `names` of type `kind` to the subscription.
    pub async fn subscribe(&self, kind: ResourceType, names: &[&str]) {
        self.delta(DeltaDiscoveryRequest {
            type_url: kind.type_url(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    /// Acknowledges `response`.
    pub async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.delta(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    /// Rejects `response` of type `kind` with `message`.
    pub async fn nack(&self, kind: ResourceType, response: &DeltaDiscoveryResponse, message: &str) {
        self.delta(DeltaDiscoveryRequest {
            type_url: kind.type_url(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(rejection(message)),
            ..Default::default()
        })
        .await;
    }
}

/// The error detail of a NACK (`INVALID_ARGUMENT`, as Envoy sends it).
fn rejection(message: &str) -> RpcStatus {
    RpcStatus {
        code: 3,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

/// Registers `service`/`id` at `addr` in `registry`.
pub async fn register(registry: &MemoryRegistry, service: &str, id: &str, addr: &str) -> Registration {
    let instance = Instance::builder(service, addr).id(id).build().unwrap();
    registry
        .register(instance, RegisterOptions::default())
        .await
        .unwrap()
}

/// The cluster name and endpoint count of the `ClusterLoadAssignment` in `any`.
pub fn assignment_size(any: &Any) -> (String, usize) {
    let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
    let count = cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    (cla.cluster_name, count)
}
