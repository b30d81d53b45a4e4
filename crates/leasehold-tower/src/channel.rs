//! tonic channels over discovered instances.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use leasehold::{Discovery, Instance};
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use crate::classify::ClassifiedBody;
use crate::endpoint::MakeEndpoint;
use crate::health::{HealthCheck, HealthTarget};
use crate::probe;
use crate::router::{BalanceOptions, Balanced, RequestBody};
use crate::BoxError;

/// Makes a tonic [`Channel`] to each instance, at `http://{authority}` (or `https://` for
/// an instance registered with an `https` URI, which needs one of tonic's TLS features),
/// connected before the first request goes out: an instance that refuses the connection
/// fails before anything is sent, and the request goes to another instance.
///
/// Connects time out after 5 s by default, so a black-holed instance fails (and is
/// ejected) instead of stalling its requests; [`configure`](TonicEndpoints::configure)
/// changes that and anything else about the endpoint. Health checks use gRPC's health
/// protocol ([`HealthCheck::grpc`]), the same check as
/// [`probe::GrpcCheck`](crate::probe::GrpcCheck).
#[derive(Clone, Default)]
pub struct TonicEndpoints {
    configure: Option<Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>>,
}

impl fmt::Debug for TonicEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TonicEndpoints")
            .field("configured", &self.configure.is_some())
            .finish()
    }
}

impl TonicEndpoints {
    /// Channels with tonic's defaults and a 5 s connect timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adjusts every endpoint before its channel is made (timeouts, keep-alive, TLS…).
    pub fn configure(mut self, configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(configure));
        self
    }
}

impl MakeEndpoint for TonicEndpoints {
    type Endpoint = Channel;

    fn make_endpoint(&self, instance: &Instance) -> BoxFuture<'static, Result<Channel, BoxError>> {
        let scheme = match instance.addr().scheme() {
            Some("https") => "https",
            _ => "http",
        };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{}", instance.addr().authority()))
            .map(|e| e.connect_timeout(Duration::from_secs(5)));
        let configure = self.configure.clone();
        Box::pin(async move {
            let endpoint = endpoint?;
            let endpoint = match &configure {
                Some(configure) => configure(endpoint),
                None => endpoint,
            };
            Ok(endpoint.connect().await?)
        })
    }

    fn probe(
        &self,
        channel: Channel,
        instance: &Instance,
        check: &HealthCheck,
    ) -> Option<BoxFuture<'static, Result<(), BoxError>>> {
        let HealthTarget::Grpc { service } = &check.target else {
            return None;
        };
        let service = service.clone();
        let target = format!("grpc://{}/{service}", instance.addr().authority());
        Some(Box::pin(async move {
            Ok(probe::grpc(channel, service, &target).await?)
        }))
    }
}

/// A balanced tonic channel: what a tonic-generated client takes. A [`Balanced`] service
/// over [`TonicEndpoints`] whose errors are gRPC statuses: `UNAVAILABLE` naming the
/// service when no instance is registered or none could be reached (see
/// [`Error::code`](crate::Error::code)), the [`Error`](crate::Error) as the status's
/// source.
#[derive(Clone, Debug)]
pub struct BalancedChannel {
    inner: Balanced<TonicEndpoints>,
}

impl BalancedChannel {
    /// The balanced service inside: its discovery, ejections and clients.
    pub fn balanced(&self) -> &Balanced<TonicEndpoints> {
        &self.inner
    }
}

impl Service<http::Request<RequestBody>> for BalancedChannel {
    type Response = http::Response<ClassifiedBody<RequestBody>>;
    type Error = tonic::Status;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, tonic::Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        Box::pin(self.inner.call(request).map(|r| r.map_err(tonic::Status::from)))
    }
}

/// A channel for tonic-generated clients that balances calls over `discovery`'s
/// instances: `GreeterClient::new(leasehold_tower::channel(discovery, options))`.
///
/// Must be called inside a Tokio runtime (channels spawn their connection tasks).
pub fn channel(discovery: Discovery, options: BalanceOptions) -> BalancedChannel {
    BalancedChannel {
        inner: Balanced::new(discovery, TonicEndpoints::new(), options),
    }
}
