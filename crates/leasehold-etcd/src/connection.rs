//! The one etcd client an [`EtcdRegistry`](crate::EtcdRegistry) shares between its
//! registrar, watchers and admin calls, with bounded requests and typed errors.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions, GetResponse};
use leasehold::{Codec, Error, Instance, KeyContext, Result, ServiceName};

use crate::EtcdOptions;

/// The largest answer accepted (tonic's default is 4 MiB: about 25,000 instances in one
/// listing).
pub(crate) const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Where keys go: the root and the codec, so every key is computed in one place and
/// other formats plug in through the [`Codec`].
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) root: String,
    pub(crate) codec: Arc<dyn Codec>,
}

impl Layout {
    /// `{root}/`, under which every service's keys are; empty (every key) for the
    /// formats that keep services at the top of etcd.
    pub(crate) fn root_prefix(&self) -> String {
        match self.root.as_str() {
            "" => String::new(),
            root => format!("{root}/"),
        }
    }

    /// The prefix under which `service`'s instances live, ending in `/`.
    pub(crate) fn service_prefix(&self, service: &ServiceName) -> String {
        self.codec.service_prefix(&self.root, service)
    }

    /// The full key of `instance` written under lease `lease_id`.
    pub(crate) fn instance_key(&self, instance: &Instance, lease_id: i64) -> String {
        format!(
            "{}{}",
            self.service_prefix(instance.service()),
            self.codec.instance_key(instance, &KeyContext::lease(lease_id))
        )
    }
}

/// Why a request failed, before it becomes a [`leasehold::Error`].
#[derive(Debug)]
pub(crate) enum Failure {
    Etcd(etcd_client::Error),
    TimedOut,
    Crashed,
}

impl Failure {
    /// etcd answered that the lease does not exist (expired, revoked, store wiped).
    pub(crate) fn is_lease_not_found(&self) -> bool {
        matches!(self, Failure::Etcd(etcd_client::Error::GRpcStatus(status))
            if status.message().contains("requested lease not found"))
    }
}

/// The shared client and what every request needs.
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) layout: Layout,
    endpoints: String,
    request_timeout: Duration,
    ranges: AtomicU64,
    crashed: AtomicBool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoints", &self.endpoints)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects, and checks with one count-only range of the root that the cluster
    /// answers (and accepts our credentials), within the connect and request timeouts.
    pub(crate) async fn open(options: &EtcdOptions) -> Result<Arc<Connection>> {
        let endpoints = options.endpoints_label();
        let connect_options = options.connect_options()?;
        let bound = options.connect_timeout + options.request_timeout;
        let connecting = Client::connect(options.endpoints.clone(), Some(connect_options));
        let client = match tokio::time::timeout(bound, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(map_error(&endpoints, bound, Failure::Etcd(e))),
            Err(_) => {
                return Err(Error::Timeout {
                    endpoints,
                    timeout: bound,
                })
            }
        };
        let connection = Arc::new(Connection {
            client,
            layout: Layout {
                root: options.root.clone(),
                codec: options.codec.clone(),
            },
            endpoints,
            request_timeout: options.request_timeout,
            ranges: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
        });
        let probe = GetOptions::new().with_prefix().with_count_only();
        connection
            .range(connection.layout.root_prefix(), Some(probe))
            .await?;
        Ok(connection)
    }

    /// The endpoints as shown in errors.
    pub(crate) fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs one request on the shared client, bounded by the request timeout (which
    /// also bounds waiting for a reachable member: etcd-client's balancer waits forever
    /// for one).
    ///
    /// A request that failed in transport (a connection to a dead member the balancer
    /// still picked), or that got no answer within half the timeout (a frozen member,
    /// whose connection looks healthy until the HTTP/2 ping times out), is sent again so
    /// the balancer can pick another member. Every request leasehold makes is idempotent
    /// or harmless to repeat (a repeated lease grant leaves a lease that expires).
    pub(crate) async fn attempt<T, F, Fut>(&self, request: F) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let per_try = (self.request_timeout / 2).max(Duration::from_millis(500));
        self.attempt_within(per_try, request).await
    }

    /// [`attempt`](Self::attempt) with each try cut off after `per_try`, for requests
    /// that must land sooner than the request timeout (a lease's keepalive must reach a
    /// live member within its period).
    pub(crate) async fn attempt_within<T, F, Fut>(
        &self,
        per_try: Duration,
        mut request: F,
    ) -> Result<T, Failure>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        const RETRIES: usize = 2;
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        for tried in 0.. {
            if self.is_crashed() {
                return Err(Failure::Crashed);
            }
            let try_deadline = deadline.min(tokio::time::Instant::now() + per_try);
            match tokio::time::timeout_at(try_deadline, request(self.client.clone())).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) if tried < RETRIES && is_transport(&e) => {
                    tracing::debug!(error = %e, "etcd: request failed in transport; sending it again");
                }
                Ok(Err(e)) => return Err(Failure::Etcd(e)),
                Err(_) if tried < RETRIES && try_deadline < deadline => {
                    tracing::debug!(after = ?per_try, "etcd: no answer; sending the request again");
                }
                Err(_) => return Err(Failure::TimedOut),
            }
        }
        unreachable!("the loop returns")
    }

    /// [`attempt`](Self::attempt), with the failure as a [`leasehold::Error`].
    pub(crate) async fn call<T, F, Fut>(&self, request: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.attempt(request).await.map_err(|f| self.error(f))
    }

    /// One range request, counted (see [`EtcdRegistry::range_requests`](crate::EtcdRegistry::range_requests)).
    pub(crate) async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse> {
        self.ranges.fetch_add(1, Ordering::Relaxed);
        let key = key.into();
        self.call(|client| {
            let (key, options) = (key.clone(), options.clone());
            async move {
                client
                    .kv_client()
                    .max_decoding_message_size(MAX_MESSAGE)
                    .get(key, options)
                    .await
            }
        })
        .await
    }

    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn range_count(&self) -> u64 {
        self.ranges.load(Ordering::Relaxed)
    }

    pub(crate) fn error(&self, failure: Failure) -> Error {
        map_error(&self.endpoints, self.request_timeout, failure)
    }

    pub(crate) fn is_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub(crate) fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }
}

/// Whether the request never reached etcd's logic: the connection failed.
fn is_transport(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable
                || (status.code() == tonic::Code::Unknown && status.message().contains("transport error"))
        }
        _ => false,
    }
}

/// Maps an etcd-client failure to the error an operator reads: unreachable, timed out,
/// refused credentials, or anything else, always with the endpoints.
pub(crate) fn map_error(endpoints: &str, timeout: Duration, failure: Failure) -> Error {
    let endpoints = endpoints.to_owned();
    let e = match failure {
        Failure::Crashed => return Error::Closed,
        Failure::TimedOut => return Error::Timeout { endpoints, timeout },
        Failure::Etcd(e) => e,
    };
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            use tonic::Code;
            let message = status.message();
            let auth = message.contains("authentication failed")
                || message.contains("permission denied")
                || message.contains("invalid auth token")
                || message.contains("user name is empty");
            let text = describe(&status);
            let transport = matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
                || (matches!(status.code(), Code::Unknown | Code::Cancelled)
                    && text.contains("transport error"));
            match status.code() {
                Code::Unauthenticated | Code::PermissionDenied => Error::PermissionDenied {
                    endpoints,
                    reason: message.to_owned(),
                },
                _ if auth => Error::PermissionDenied {
                    endpoints,
                    reason: message.to_owned(),
                },
                _ if transport => Error::Unreachable {
                    endpoints,
                    source: text.into(),
                },
                _ => Error::backend(endpoints, text),
            }
        }
        etcd_client::Error::TransportError(e) => Error::Unreachable {
            endpoints,
            source: Box::new(e),
        },
        etcd_client::Error::IoError(e) => Error::Unreachable {
            endpoints,
            source: Box::new(e),
        },
        other => Error::backend(endpoints, other),
    }
}

/// A status as `code: message`, with the transport's cause when there is one.
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
