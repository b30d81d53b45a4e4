//! Shared pieces of the xDS tests: Greeter servers, an xDS server on a free port, and a
//! raw ADS client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use leasehold::Registry;
use leasehold_xds::envoy_types::pb::envoy::config::core::v3::Node;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use leasehold_xds::envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use leasehold_xds::envoy_types::pb::google::rpc::Status as RpcStatus;
use leasehold_xds::{ResourceType, XdsOptions, XdsServer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

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

/// A raw ADS stream, to drive the protocol step by step.
pub struct AdsClient {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
    node: String,
}

impl AdsClient {
    pub async fn connect(xds: SocketAddr, node: &str) -> AdsClient {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
            .await
            .unwrap()
            .max_decoding_message_size(usize::MAX);
        let (requests, rx) = mpsc::channel(16);
        let responses = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        AdsClient {
            requests,
            responses,
            node: node.to_owned(),
        }
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
        let request = DiscoveryRequest {
            version_info: version.to_owned(),
            node: Some(Node {
                id: self.node.clone(),
                ..Default::default()
            }),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: kind.type_url(),
            response_nonce: nonce.to_owned(),
            error_detail: error.map(|message| RpcStatus {
                code: 3,
                message: message.to_owned(),
                details: Vec::new(),
            }),
            ..Default::default()
        };
        self.requests.send(request).await.unwrap();
    }

    /// Acknowledges `response`, still subscribing to `names`.
    pub async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        let kind = ResourceType::from_type_url(&response.type_url).unwrap();
        self.request(kind, names, &response.version_info, &response.nonce, None)
            .await;
    }

    /// The next response, failing the test if none comes within ten seconds.
    pub async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response within 10s")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// The next response if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<DiscoveryResponse> {
        tokio::time::timeout(wait, self.responses.message())
            .await
            .ok()
            .map(|r| r.expect("the stream is healthy").expect("the stream is open"))
    }
}
