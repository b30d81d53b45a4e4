//! The etcd clients an [`EtcdRegistry`](crate::EtcdRegistry) shares between its
//! registrar, watchers and admin calls: one per member, requests sent to one chosen
//! member at a time, bounded, with typed errors.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, GetResponse, LeaseRevokeResponse, Txn, TxnResponse};
use leasehold::{Codec, Error, Instance, KeyContext, Result, ServiceName};
use tokio::sync::OnceCell;

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
        match self {
            Failure::Etcd(etcd_client::Error::GRpcStatus(status)) => {
                status.message().contains("requested lease not found")
            }
            // What etcd-client makes of a keepalive stream's first answer with TTL 0.
            Failure::Etcd(etcd_client::Error::LeaseKeepAliveError(message)) => {
                message.contains("lease not found")
            }
            _ => false,
        }
    }

    /// The request may or may not have been applied: it got no answer, or its
    /// connection failed on the way.
    pub(crate) fn is_unanswered(&self) -> bool {
        match self {
            Failure::TimedOut => true,
            Failure::Etcd(e) => is_transport(e),
            Failure::Crashed => false,
        }
    }

    /// etcd refused the request for the user's role (its credentials were accepted).
    pub(crate) fn is_permission_denied(&self) -> bool {
        matches!(self, Failure::Etcd(etcd_client::Error::GRpcStatus(status))
            if status.message().contains("permission denied"))
    }

    /// etcd refused the request for its size (`--max-request-bytes`, or the gRPC
    /// message limit derived from it).
    pub(crate) fn is_too_large(&self) -> bool {
        matches!(self, Failure::Etcd(etcd_client::Error::GRpcStatus(status))
            if status.message().contains("request is too large")
                || status.code() == tonic::Code::ResourceExhausted)
    }
}

/// One member's client, connected on first use: a member that is down when the
/// registry connects is tried again when it is next chosen.
struct Member {
    endpoint: String,
    client: OnceCell<Client>,
    /// When a request to it last went unanswered (milliseconds since `Connection::born`,
    /// 0 for never): members that failed lately are chosen last.
    failed_at: AtomicU64,
}

/// One etcd client per member and the choice of the member requests go to, with
/// bounded requests and typed errors.
///
/// etcd-client balances one channel over every endpoint and keeps sending to a frozen
/// member until the HTTP/2 ping times out; a lease kept alive through it would expire.
/// Here every request goes to one chosen member, and a member that leaves a request or a
/// keepalive unanswered is left at once for the next one ([`Connection::avoid`]).
pub(crate) struct Connection {
    members: Vec<Member>,
    chosen: AtomicUsize,
    born: std::time::Instant,
    connect_options: ConnectOptions,
    connect_bound: Duration,
    pub(crate) layout: Layout,
    /// The most bytes one request may carry (etcd's `--max-request-bytes`).
    pub(crate) max_request_bytes: usize,
    endpoints: String,
    request_timeout: Duration,
    ranges: AtomicU64,
    crashed: AtomicBool,
    /// Whether the cluster may revoke live leases after a stalled leader resumes
    /// (see [`Connection::stalled_leader_revokes`]); assumed until a member says its
    /// version.
    stalled_leader_revokes: AtomicBool,
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
    /// answers with a quorum (and accepts our credentials), within the connect and
    /// request timeouts. A role that may not read the whole root passes: a user whose
    /// role covers only its own service's prefix can connect.
    pub(crate) async fn open(options: &EtcdOptions) -> Result<Arc<Connection>> {
        let endpoints = options.endpoints_label();
        if options.endpoints.is_empty() {
            return Err(Error::invalid_url(endpoints, "no etcd endpoint given"));
        }
        let connection = Arc::new(Connection {
            members: options
                .endpoints
                .iter()
                .map(|endpoint| Member {
                    endpoint: endpoint.clone(),
                    client: OnceCell::new(),
                    failed_at: AtomicU64::new(0),
                })
                .collect(),
            chosen: AtomicUsize::new(0),
            born: std::time::Instant::now(),
            connect_options: options.connect_options()?,
            connect_bound: options.connect_timeout + options.request_timeout,
            layout: Layout {
                root: options.root.clone(),
                codec: options.codec.clone(),
            },
            max_request_bytes: options.max_request_bytes,
            endpoints,
            request_timeout: options.request_timeout,
            ranges: AtomicU64::new(0),
            crashed: AtomicBool::new(false),
            stalled_leader_revokes: AtomicBool::new(true),
        });
        // A linearizable read, so a member without a quorum does not pass.
        let root = connection.layout.root_prefix();
        let probe = GetOptions::new().with_prefix().with_count_only();
        connection.ranges.fetch_add(1, Ordering::Relaxed);
        let probed = connection
            .attempt(|client| {
                let (mut kv, root, probe) = (client.kv_client(), root.clone(), probe.clone());
                async move { kv.get(root, Some(probe)).await }
            })
            .await;
        match probed {
            Ok(_) => {}
            // Authenticated, and answered by a cluster with a quorum: the user's role
            // covers only part of the root (its own service's prefix), which is enough.
            Err(failure) if failure.is_permission_denied() => {}
            Err(failure) => return Err(connection.error(failure)),
        }
        let revokes = connection.probe_stalled_leader_revokes().await;
        connection
            .stalled_leader_revokes
            .store(revokes, Ordering::Relaxed);
        Ok(connection)
    }

    /// Whether the member's etcd version has etcd-io/etcd#15247 and the cluster has a
    /// member besides the leader to take over (one member that stalls keeps its term and
    /// its leadership, and a restarted one starts with a fresh lessor). Unknown counts as
    /// yes: the cost is a rewrite after each leader change.
    async fn probe_stalled_leader_revokes(&self) -> bool {
        let version = match self
            .attempt(|client| {
                let mut maintenance = client.maintenance_client();
                async move { maintenance.status().await }
            })
            .await
        {
            Ok(status) => status.version().to_owned(),
            Err(failure) => {
                tracing::debug!(error = %self.error(failure), "etcd: version unknown");
                return true;
            }
        };
        if !version_revokes_after_stall(&version) {
            tracing::debug!(%version, "etcd: a stalled leader does not revoke live leases");
            return false;
        }
        match self
            .attempt(|client| {
                let mut cluster = client.cluster_client();
                async move { cluster.member_list().await }
            })
            .await
        {
            Ok(list) => {
                let members = list.members().len();
                tracing::debug!(%version, members, "etcd: a stalled leader may revoke live leases");
                members > 1
            }
            Err(failure) => {
                tracing::debug!(%version, error = %self.error(failure), "etcd: member count unknown");
                true
            }
        }
    }

    /// Whether the cluster's etcd may revoke live leases when a leader that stalled for
    /// longer than their TTL resumes (etcd-io/etcd#15247, fixed in 3.4.28 and 3.5.11):
    /// its lessor still thinks it is the primary, sees every lease unrenewed, and its
    /// revokes reach the new leader. A lease kept alive across a leader change is then
    /// moved to a new lease (see the keepalive in [`lease`](crate::lease)).
    pub(crate) fn stalled_leader_revokes(&self) -> bool {
        self.stalled_leader_revokes.load(Ordering::Relaxed)
    }

    /// The endpoints as shown in errors.
    pub(crate) fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// A client of a member that has answered, for callers that want one.
    pub(crate) fn any_client(&self) -> &Client {
        let chosen = self.chosen.load(Ordering::Relaxed);
        self.members[chosen]
            .client
            .get()
            .or_else(|| self.members.iter().find_map(|m| m.client.get()))
            .expect("open connected a member")
    }

    /// The client of member `index` (connected now if it never was).
    ///
    /// Connecting is boxed: its future is several kilobytes, and inlined it made every
    /// request's future as large, copied whole on each move (a quarter of the client's
    /// instructions per registration in the sequential bench).
    async fn client_at(&self, index: usize) -> Result<&Client, Failure> {
        let member = &self.members[index];
        if let Some(client) = member.client.get() {
            return Ok(client);
        }
        let connecting = member.client.get_or_try_init(|| async {
            let connect = Client::connect([member.endpoint.as_str()], Some(self.connect_options.clone()));
            match tokio::time::timeout(self.connect_bound, connect).await {
                Ok(Ok(client)) => Ok(client),
                Ok(Err(e)) => Err(Failure::Etcd(e)),
                Err(_) => Err(Failure::TimedOut),
            }
        });
        Box::pin(connecting).await
    }

    /// Leaves member `index` for the next one that has not failed lately, unless
    /// requests already went elsewhere: it left a request or a keepalive unanswered.
    pub(crate) fn avoid(&self, index: usize) {
        let now = self.born.elapsed().as_millis() as u64 + 1;
        self.members[index].failed_at.store(now, Ordering::Relaxed);
        let count = self.members.len();
        if count == 1 {
            return;
        }
        let next = (1..count)
            .map(|step| (index + step) % count)
            .min_by_key(|&i| self.members[i].failed_at.load(Ordering::Relaxed))
            .expect("more than one member");
        if self
            .chosen
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(left = %self.members[index].endpoint, chosen = %self.members[next].endpoint, "etcd: member unresponsive; using another");
        }
    }

    /// The index of the member requests go to now.
    pub(crate) fn chosen(&self) -> usize {
        self.chosen.load(Ordering::Relaxed)
    }

    /// Runs one request on the chosen member, bounded by the request timeout.
    ///
    /// A request that failed in transport, or that got no answer within a quarter of
    /// the timeout (a frozen member, whose connection looks healthy until the HTTP/2 ping
    /// times out, or one waiting on a frozen leader), is sent again to another member: a
    /// quarter, so that after a member that waits on a frozen leader and then the frozen
    /// leader itself, a third member still gets its turn well within a short TTL (the
    /// soak found a registrant whose grant went that way and missed the TTL with
    /// halves). That is safe because every write
    /// leasehold makes is conditional on what it expects to find (a write under a lease
    /// compares the state it expects the key in: see [`write`](crate::write)), so a copy that lands late, after the first one or
    /// after the lease was given up, changes nothing or fails; the rest are reads,
    /// grants (a spare lease expires) and revokes.
    pub(crate) async fn attempt<T, F, Fut>(&self, request: F) -> Result<T, Failure>
    where
        F: FnMut(&Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let per_try = (self.request_timeout / 4).max(Duration::from_millis(500));
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
        F: FnMut(&Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let retries = (2 * self.members.len()).max(2);
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        for tried in 0.. {
            if self.is_crashed() {
                return Err(Failure::Crashed);
            }
            let try_deadline = deadline.min(tokio::time::Instant::now() + per_try);
            let last = tried >= retries || try_deadline >= deadline;
            let index = self.chosen();
            let answer = tokio::time::timeout_at(try_deadline, async {
                match self.client_at(index).await {
                    Ok(client) => request(client).await.map_err(Failure::Etcd),
                    Err(failure) => Err(failure),
                }
            })
            .await;
            match answer {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(failure)) if failure.is_unanswered() => {
                    self.avoid(index);
                    if last {
                        return Err(failure);
                    }
                    tracing::debug!(error = ?failure, "etcd: request failed in transport; sending it to another member");
                }
                Ok(Err(failure)) => return Err(failure),
                Err(_) => {
                    self.avoid(index);
                    if last {
                        return Err(Failure::TimedOut);
                    }
                    tracing::debug!(after = ?per_try, "etcd: no answer; sending the request to another member");
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// [`attempt`](Self::attempt), with the failure as a [`leasehold::Error`].
    pub(crate) async fn call<T, F, Fut>(&self, request: F) -> Result<T>
    where
        F: FnMut(&Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.attempt(request).await.map_err(|f| self.error(f))
    }

    /// One transaction, sent as [`attempt`](Self::attempt) sends any request.
    pub(crate) async fn txn(&self, txn: &Txn) -> Result<TxnResponse, Failure> {
        self.attempt(|client| {
            let (mut kv, txn) = (client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    /// Revokes lease `id`, sent as [`attempt`](Self::attempt) sends any request.
    pub(crate) async fn revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Failure> {
        self.attempt(|client| {
            let mut leases = client.lease_client();
            async move { leases.revoke(id).await }
        })
        .await
    }

    /// Opens a watch of everything under `prefix` with `options`, on the chosen member.
    /// Answers may be as large as [`MAX_MESSAGE`]: one revision's events come in one.
    pub(crate) async fn watch(
        &self,
        prefix: &str,
        options: etcd_client::WatchOptions,
    ) -> Result<etcd_client::WatchStream, Failure> {
        self.attempt(|client| {
            let (watches, options) = (client.watch_client(), options.clone());
            async move {
                watches
                    .max_decoding_message_size(MAX_MESSAGE)
                    .watch(prefix, Some(options))
                    .await
            }
        })
        .await
    }

    /// One range request, counted (see [`EtcdRegistry::range_requests`](crate::EtcdRegistry::range_requests)).
    pub(crate) async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse> {
        self.ranges.fetch_add(1, Ordering::Relaxed);
        let key = key.into();
        // A listing may be large: each try gets half the timeout.
        let per_try = (self.request_timeout / 2).max(Duration::from_millis(500));
        self.attempt_within(per_try, |client| {
            let (kv, key, options) = (client.kv_client(), key.clone(), options.clone());
            async move { kv.max_decoding_message_size(MAX_MESSAGE).get(key, options).await }
        })
        .await
        .map_err(|f| self.error(f))
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

/// Whether etcd `version` (as its Status call gives it) has etcd-io/etcd#15247: an
/// unparsable version is assumed to.
fn version_revokes_after_stall(version: &str) -> bool {
    let mut parts = version.split(['.', '-', '+']).map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) =
        (parts.next(), parts.next(), parts.next())
    else {
        return true;
    };
    match (major, minor) {
        (3, 4) => patch < 28,
        (3, 5) => patch < 11,
        (major, minor) => (major, minor) < (3, 4),
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

#[cfg(test)]
mod tests {
    use super::version_revokes_after_stall;

    #[test]
    fn versions_with_the_stalled_leader_revoke() {
        for version in [
            "3.4.23", "3.4.27", "3.5.0", "3.5.10", "3.3.25", "2.3.8", "", "3.x", "main",
        ] {
            assert!(version_revokes_after_stall(version), "{version}");
        }
        for version in [
            "3.4.28",
            "3.4.35",
            "3.5.11",
            "3.5.17",
            "3.6.0",
            "3.6.0-rc.1",
            "4.0.0",
        ] {
            assert!(!version_revokes_after_stall(version), "{version}");
        }
    }
}
