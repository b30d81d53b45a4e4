//! Active checks of a service over HTTP and the gRPC health protocol.
//!
//! Each probe is a [`leasehold::health::Check`]: a server gates its own registration on
//! one with a [`HealthGate`](leasehold::health::HealthGate), and a balancer can run the
//! same probe against the instances it balances over. The TCP check is
//! [`leasehold::health::TcpCheck`]; [`from_url`] picks one of the three from a URL.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leasehold::BoxError> {
//! use leasehold::health::Check;
//! let check = leasehold_tower::probe::from_url("http://127.0.0.1:8080/healthz")?;
//! check.check().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use leasehold::health::{Check, TcpCheck};
use leasehold::BoxError;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

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
/// (a TCP connect).
pub fn from_url(url: &str) -> Result<Box<dyn Check>, InvalidProbe> {
    let (scheme, _) = url
        .split_once("://")
        .ok_or_else(|| InvalidProbe::new(url, "expected http://, grpc:// or tcp://"))?;
    match scheme {
        "http" => Ok(Box::new(HttpCheck::new(url)?)),
        "grpc" => Ok(Box::new(GrpcCheck::new(url)?)),
        "tcp" => {
            let authority = authority(url, "tcp")?;
            Ok(Box::new(TcpCheck::new(authority)))
        }
        other => Err(InvalidProbe::new(
            url,
            format!("unknown scheme {other:?}; expected http://, grpc:// or tcp://"),
        )),
    }
}

/// The `host:port` of `scheme://host:port[/...]`, which must have a port.
fn authority(url: &str, scheme: &str) -> Result<String, InvalidProbe> {
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
    Ok(authority.as_str().to_owned())
}

/// Passes when `GET url` answers with a 2xx status. Plain HTTP/1.1, one connection per
/// check, so a check also proves the server still accepts connections.
#[derive(Clone)]
pub struct HttpCheck {
    uri: http::Uri,
    authority: String,
}

impl fmt::Debug for HttpCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GET {}", self.uri)
    }
}

impl HttpCheck {
    /// A check of `http://host:port/path`.
    pub fn new(url: &str) -> Result<Self, InvalidProbe> {
        let authority = authority(url, "http")?;
        Ok(HttpCheck {
            uri: url.parse().expect("parsed above"),
            authority,
        })
    }
}

#[async_trait]
impl Check for HttpCheck {
    async fn check(&self) -> Result<(), BoxError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::get(path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::USER_AGENT, "leasehold-health-check")
            .body(Empty::<Bytes>::new())?;
        let answer = sender.send_request(request).await;
        connection.abort();
        let status = answer?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("GET {} answered {status}", self.uri).into())
        }
    }
}

/// Passes when the server's `grpc.health.v1.Health/Check` answers `SERVING` for the
/// service. The channel is made once and reconnects by itself.
#[derive(Clone)]
pub struct GrpcCheck {
    url: String,
    service: String,
    channel: Channel,
}

impl fmt::Debug for GrpcCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gRPC health of {}", self.url)
    }
}

impl GrpcCheck {
    /// A check of `grpc://host:port[/service]`; without a service, of the server as a
    /// whole (the empty service name). Must be called within a Tokio runtime.
    pub fn new(url: &str) -> Result<Self, InvalidProbe> {
        let authority = authority(url, "grpc")?;
        let uri: http::Uri = url.parse().expect("parsed above");
        let service = uri.path().trim_start_matches('/').to_owned();
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| InvalidProbe::new(url, e.to_string()))?
            .connect_timeout(Duration::from_secs(1));
        Ok(GrpcCheck {
            url: url.to_owned(),
            service,
            channel: endpoint.connect_lazy(),
        })
    }
}

#[async_trait]
impl Check for GrpcCheck {
    async fn check(&self) -> Result<(), BoxError> {
        let mut client = HealthClient::new(self.channel.clone());
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        let answer = client
            .check(request)
            .await
            .map_err(|status| format!("{}: {}", self.url, status.message()))?;
        let status = answer.into_inner().status;
        if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
            Err(format!("{} answered {name}", self.url).into())
        }
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
