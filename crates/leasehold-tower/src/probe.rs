//! Checking an endpoint once, over HTTP or the gRPC health protocol: the one place that
//! says what passes, how long a check may take, and how it fails.
//!
//! Two callers ask these questions, and both get the same answer for the same endpoint:
//!
//! - a server gating its own registration: [`HttpCheck`] and [`GrpcCheck`] are
//!   [`leasehold::health::Check`]s for a [`HealthGate`](leasehold::health::HealthGate)
//!   (the TCP check is [`leasehold::health::TcpCheck`]; [`from_url`] picks one of the
//!   three from a URL);
//! - a balancer's active health check ([`HealthCheck`](crate::HealthCheck)), which runs
//!   the same check through the client it already holds for each instance (the tonic
//!   channel of [`TonicEndpoints`](crate::TonicEndpoints), the hyper client of
//!   [`HyperEndpoints`]).
//!
//! What passes: an HTTP `GET` answered with a 2xx status; a `grpc.health.v1.Health/Check`
//! answered `SERVING`. Anything else is a [`ProbeError`] that says whether the endpoint
//! answered unhealthy, could not be reached, or did not answer within the timeout
//! ([`DEFAULT_TIMEOUT`] unless set).
//!
//! ```no_run
//! # async fn demo() -> Result<(), leasehold::BoxError> {
//! use leasehold::health::Check;
//! let check = leasehold_tower::probe::from_url("http://127.0.0.1:8080/healthz")?;
//! check.check().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Limited};
use leasehold::health::{Check, TcpCheck};
use leasehold::BoxError;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::Service;

use crate::hyper_client::{HyperEndpoint, HyperEndpoints};
use crate::router::RequestBody;

/// How long one check may take unless told otherwise, connecting included: the default
/// of [`HttpCheck`], [`GrpcCheck`] and [`HealthCheck`](crate::HealthCheck).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a check did not pass.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The endpoint answered, and not as healthy: a non-2xx status, a serving status
    /// other than `SERVING`, or a gRPC error status such as `NOT_FOUND` for a service the
    /// server does not know.
    #[error("{target} answered {answer}")]
    Unhealthy {
        /// What was checked.
        target: String,
        /// The answer, such as `503 Service Unavailable` or `NOT_SERVING`.
        answer: String,
    },
    /// No answer could be had: the connection was refused or broke, or the request
    /// could not be made.
    #[error("{target}: {source}")]
    Unreachable {
        /// What was checked.
        target: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// No answer within the timeout.
    #[error("{target}: no answer within {timeout:?}")]
    TimedOut {
        /// What was checked.
        target: String,
        /// The timeout.
        timeout: Duration,
    },
}

impl ProbeError {
    /// The endpoint answered, unhealthy: it is up and says it cannot serve.
    pub fn is_unhealthy(&self) -> bool {
        matches!(self, ProbeError::Unhealthy { .. })
    }

    /// The endpoint could not be reached.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ProbeError::Unreachable { .. })
    }

    /// The endpoint did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProbeError::TimedOut { .. })
    }

    /// What was checked: a URL, or an instance's address.
    pub fn target(&self) -> &str {
        match self {
            ProbeError::Unhealthy { target, .. }
            | ProbeError::Unreachable { target, .. }
            | ProbeError::TimedOut { target, .. } => target,
        }
    }

    fn unreachable(target: &str, source: impl Into<BoxError>) -> Self {
        ProbeError::Unreachable {
            target: target.to_owned(),
            source: source.into(),
        }
    }
}

/// Runs `check` of `target`, cut off at `timeout`: the one deadline every check has.
pub(crate) async fn within(
    timeout: Duration,
    target: &str,
    check: impl Future<Output = Result<(), ProbeError>>,
) -> Result<(), ProbeError> {
    tokio::time::timeout(timeout, check).await.unwrap_or_else(|_| {
        Err(ProbeError::TimedOut {
            target: target.to_owned(),
            timeout,
        })
    })
}

/// Asks `grpc.health.v1.Health/Check` about `service` over `channel`, once; passes on
/// `SERVING`. Not bounded in time: callers wrap it in [`within`].
pub(crate) async fn grpc(channel: Channel, service: String, target: &str) -> Result<(), ProbeError> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await;
    let status = match answer {
        Ok(answer) => answer.into_inner().status,
        // Transport failures come back as UNAVAILABLE: nothing answered.
        Err(status) if status.code() == tonic::Code::Unavailable => {
            return Err(ProbeError::unreachable(target, status.message().to_owned()))
        }
        Err(status) => {
            return Err(ProbeError::Unhealthy {
                target: target.to_owned(),
                answer: format!("{:?}: {}", status.code(), status.message()),
            })
        }
    };
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
        Err(ProbeError::Unhealthy {
            target: target.to_owned(),
            answer: name.to_owned(),
        })
    }
}

/// Sends `GET path` through `endpoint`, once; passes on a 2xx status. Not bounded in
/// time: callers wrap it in [`within`].
pub(crate) async fn http(mut endpoint: HyperEndpoint, path: &str, target: &str) -> Result<(), ProbeError> {
    let request = http::Request::get(path)
        .header(http::header::USER_AGENT, "leasehold-health-check")
        .body(RequestBody::empty())
        .map_err(|e| ProbeError::unreachable(target, e))?;
    let response = endpoint
        .call(request)
        .await
        .map_err(|e| ProbeError::unreachable(target, e))?;
    let status = response.status();
    // Read (a bounded part of) the body, so the connection can serve the next check.
    let _ = Limited::new(response.into_body(), 64 * 1024).collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy {
            target: target.to_owned(),
            answer: status.to_string(),
        })
    }
}

/// A probe URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid check {url:?}: {reason}")]
pub struct InvalidProbe {
    /// The URL given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidProbe {
    fn new(url: &str, reason: impl Into<String>) -> Self {
        InvalidProbe {
            url: url.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The check a URL names: `http://host:port/path` (an HTTP GET answered with a 2xx
/// status), `grpc://host:port[/service]` (the gRPC health protocol answering
/// `SERVING` for `service`, or for the whole server without one), or `tcp://host:port`
/// (a TCP connect). HTTP and gRPC checks time out after [`DEFAULT_TIMEOUT`].
pub fn from_url(url: &str) -> Result<Box<dyn Check>, InvalidProbe> {
    let (scheme, _) = url
        .split_once("://")
        .ok_or_else(|| InvalidProbe::new(url, "expected http://, grpc:// or tcp://"))?;
    match scheme {
        "http" => Ok(Box::new(HttpCheck::new(url)?)),
        "grpc" => Ok(Box::new(GrpcCheck::new(url)?)),
        "tcp" => {
            let authority = authority(url, "tcp")?;
            Ok(Box::new(TcpCheck::new(authority.as_str())))
        }
        other => Err(InvalidProbe::new(
            url,
            format!("unknown scheme {other:?}; expected http://, grpc:// or tcp://"),
        )),
    }
}

/// The `host:port` of `scheme://host:port[/...]`, which must have a port.
fn authority(url: &str, scheme: &str) -> Result<http::uri::Authority, InvalidProbe> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| InvalidProbe::new(url, format!("not a URL: {e}")))?;
    if uri.scheme_str() != Some(scheme) {
        return Err(InvalidProbe::new(url, format!("expected {scheme}://")));
    }
    let authority = uri.authority().ok_or_else(|| InvalidProbe::new(url, "no host"))?;
    if authority.port_u16().is_none() {
        return Err(InvalidProbe::new(url, "no port"));
    }
    Ok(authority.clone())
}

/// Passes when `GET url` answers with a 2xx status within the timeout. Sent through the
/// client a balancer's [`HealthCheck::http`](crate::HealthCheck::http) uses (hyper's,
/// HTTP/1.1, keeping its connection between checks), so both judge a server alike.
#[derive(Clone)]
pub struct HttpCheck {
    url: String,
    path: String,
    endpoint: HyperEndpoint,
    timeout: Duration,
}

impl fmt::Debug for HttpCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GET {}", self.url)
    }
}

impl HttpCheck {
    /// A check of `http://host:port/path`, timing out after [`DEFAULT_TIMEOUT`].
    pub fn new(url: &str) -> Result<Self, InvalidProbe> {
        let authority = authority(url, "http")?;
        let uri: http::Uri = url.parse().expect("parsed above");
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(HttpCheck {
            url: url.to_owned(),
            path,
            endpoint: HyperEndpoints::new().endpoint(authority),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets how long one check may take, connecting included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl Check for HttpCheck {
    async fn check(&self) -> Result<(), BoxError> {
        let once = http(self.endpoint.clone(), &self.path, &self.url);
        Ok(within(self.timeout, &self.url, once).await?)
    }
}

/// Passes when the server's `grpc.health.v1.Health/Check` answers `SERVING` for the
/// service within the timeout: the same check as a balancer's
/// [`HealthCheck::grpc`](crate::HealthCheck::grpc). The channel is made once and
/// reconnects by itself.
#[derive(Clone)]
pub struct GrpcCheck {
    url: String,
    service: String,
    channel: Channel,
    timeout: Duration,
}

impl fmt::Debug for GrpcCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gRPC health of {}", self.url)
    }
}

impl GrpcCheck {
    /// A check of `grpc://host:port[/service]`; without a service, of the server as a
    /// whole (the empty service name). Times out after [`DEFAULT_TIMEOUT`]. Must be
    /// called within a Tokio runtime.
    pub fn new(url: &str) -> Result<Self, InvalidProbe> {
        let authority = authority(url, "grpc")?;
        let uri: http::Uri = url.parse().expect("parsed above");
        let service = uri.path().trim_start_matches('/').to_owned();
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| InvalidProbe::new(url, e.to_string()))?;
        Ok(GrpcCheck {
            url: url.to_owned(),
            service,
            channel: endpoint.connect_lazy(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets how long one check may take, connecting included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

#[async_trait]
impl Check for GrpcCheck {
    async fn check(&self) -> Result<(), BoxError> {
        let once = grpc(self.channel.clone(), self.service.clone(), &self.url);
        Ok(within(self.timeout, &self.url, once).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_pick_a_check_or_name_the_problem() {
        for good in [
            "http://127.0.0.1:8080/healthz",
            "grpc://127.0.0.1:50051/echo",
            "tcp://127.0.0.1:7001",
        ] {
            from_url(good).unwrap();
        }
        for (bad, needle) in [
            ("127.0.0.1:8080", "expected http://"),
            ("https://127.0.0.1:8443/", "unknown scheme \"https\""),
            ("http://127.0.0.1/healthz", "no port"),
            ("tcp://", "tcp://"),
        ] {
            let err = from_url(bad).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains(bad), "{bad}: {err}");
        }
    }
}
