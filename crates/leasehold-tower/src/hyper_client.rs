//! Balanced HTTP over hyper's client, for `http::Request`s (and reqwest-like code
//! through tower).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use leasehold::{Discovery, Instance};
use tower::Service;

use crate::endpoint::MakeEndpoint;
use crate::health::{HealthCheck, HealthTarget};
use crate::probe;
use crate::router::{BalanceOptions, Balanced, RequestBody};
use crate::BoxError;

/// Makes the client of each instance from one shared hyper client (its connection pool
/// keeps connections per instance): requests keep their method, path, query, headers and
/// body, and go to the instance's `scheme://authority` (`http` unless the instance was
/// registered with an `https` URI, which this client does not speak). Health checks are
/// an HTTP `GET` ([`HealthCheck::http`]) that passes on 2xx, the same check as
/// [`probe::HttpCheck`](crate::probe::HttpCheck).
#[derive(Clone)]
pub struct HyperEndpoints {
    client: Client<HttpConnector, RequestBody>,
}

impl fmt::Debug for HyperEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperEndpoints").finish_non_exhaustive()
    }
}

impl Default for HyperEndpoints {
    fn default() -> Self {
        Self::new()
    }
}

impl HyperEndpoints {
    /// Over a new hyper client (HTTP/1.1, pooled, with hyper's defaults).
    pub fn new() -> Self {
        Self::with_client(Client::builder(TokioExecutor::new()).build_http())
    }

    /// Over `client`, configured as the caller likes.
    pub fn with_client(client: Client<HttpConnector, RequestBody>) -> Self {
        HyperEndpoints { client }
    }

    /// The client of the server at `base`.
    pub(crate) fn endpoint(&self, base: http::uri::Authority) -> HyperEndpoint {
        HyperEndpoint {
            client: self.client.clone(),
            base,
        }
    }
}

/// The client of one instance: hyper's, aimed at the instance's authority.
#[derive(Clone)]
pub struct HyperEndpoint {
    client: Client<HttpConnector, RequestBody>,
    base: http::uri::Authority,
}

impl fmt::Debug for HyperEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HyperEndpoint")
            .field("authority", &self.base)
            .finish()
    }
}

impl HyperEndpoint {
    fn aim<B>(&self, request: &mut http::Request<B>) -> Result<(), BoxError> {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *request.uri_mut() = http::Uri::builder()
            .scheme("http")
            .authority(self.base.clone())
            .path_and_query(path)
            .build()?;
        Ok(())
    }
}

impl Service<http::Request<RequestBody>> for HyperEndpoint {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let aimed = self.aim(&mut request);
        let sent = aimed.map(|()| self.client.request(request));
        Box::pin(async move { Ok(sent?.await?) })
    }
}

impl MakeEndpoint for HyperEndpoints {
    type Endpoint = HyperEndpoint;

    fn make_endpoint(&self, instance: &Instance) -> BoxFuture<'static, Result<HyperEndpoint, BoxError>> {
        let made = instance
            .addr()
            .authority()
            .parse::<http::uri::Authority>()
            .map(|base| self.endpoint(base))
            .map_err(BoxError::from);
        Box::pin(futures::future::ready(made))
    }

    fn probe(
        &self,
        endpoint: HyperEndpoint,
        _instance: &Instance,
        check: &HealthCheck,
    ) -> Option<BoxFuture<'static, Result<(), BoxError>>> {
        let HealthTarget::Http { path } = &check.target else {
            return None;
        };
        let path = path.clone();
        Some(Box::pin(async move {
            let target = format!("http://{}{path}", endpoint.base);
            Ok(probe::http(endpoint, &path, &target).await?)
        }))
    }
}

/// A balanced HTTP client over `discovery`'s instances, through hyper: a tower service
/// of `http::Request<RequestBody>` (wrap a body with `RequestBody::new`) whose requests
/// need only a path (`/users/7`); the balancer supplies the authority.
pub fn http_client(discovery: Discovery, options: BalanceOptions) -> Balanced<HyperEndpoints> {
    Balanced::new(discovery, HyperEndpoints::new(), options)
}
