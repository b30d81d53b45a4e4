//! The tower service that routes each request over the discovered instances.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant as StdInstant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use leasehold::{Discovery, Instance, InstanceId, Snapshot};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceExt};

use crate::balance::{hash_key, Balancer, Outcome, PeakEwma, PickContext};
use crate::endpoint::{EndpointCache, MakeEndpoint};
use crate::outlier::{OutlierDetector, OutlierPolicy};
use crate::retry::RetryPolicy;
use crate::{BoxError, Error};

/// The request body tonic's clients send.
pub type RequestBody = tonic::body::Body;

/// Decides from a response's status and headers whether it is a failure of the instance:
/// one that counts toward its ejection and is retried when the request is safe to retry.
pub type Classify = Arc<dyn Fn(http::StatusCode, &http::HeaderMap) -> bool + Send + Sync>;

/// The default [`Classify`]: HTTP 502, 503 and 504 (from a proxy in front of the
/// instance) and a gRPC `UNAVAILABLE` status sent as a header (a trailers-only response:
/// the server refused the call before handling it). Statuses that arrive in trailers are
/// the application's answer and are passed through.
pub fn default_classify(status: http::StatusCode, headers: &http::HeaderMap) -> bool {
    matches!(status.as_u16(), 502..=504) || headers.get("grpc-status").is_some_and(|code| code == "14")
}

/// The request key [`ConsistentHash`](crate::balance::ConsistentHash) maps to an
/// instance, set as a request extension (with tonic, on the `tonic::Request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashKey(pub u64);

impl HashKey {
    /// The key for `key`'s bytes, such as a user id.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        HashKey(hash_key(key.as_ref()))
    }
}

/// How a [`Balanced`] service picks, retries and ejects.
#[derive(Clone)]
#[non_exhaustive]
pub struct BalanceOptions {
    /// The balancer. Default: [`PeakEwma`] (power of two choices).
    pub balancer: Arc<dyn Balancer>,
    /// Retries. Default: [`RetryPolicy::default`], which retries requests marked
    /// [`RetrySafe`](crate::RetrySafe).
    pub retry: RetryPolicy,
    /// Passive health. Default: [`OutlierPolicy::default`].
    pub outliers: OutlierPolicy,
    /// The caller's zone, given to the balancer (see
    /// [`ZoneAware`](crate::balance::ZoneAware)).
    pub zone: Option<String>,
    /// Which responses are failures. Default: [`default_classify`].
    pub classify: Classify,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        BalanceOptions {
            balancer: Arc::new(PeakEwma::new()),
            retry: RetryPolicy::default(),
            outliers: OutlierPolicy::default(),
            zone: None,
            classify: Arc::new(default_classify),
        }
    }
}

impl fmt::Debug for BalanceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceOptions")
            .field("balancer", &self.balancer)
            .field("retry", &self.retry)
            .field("outliers", &self.outliers)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

impl BalanceOptions {
    /// Sets the balancer.
    pub fn balancer(mut self, balancer: impl Balancer + 'static) -> Self {
        self.balancer = Arc::new(balancer);
        self
    }

    /// Sets a shared balancer, such as one from
    /// [`BalancerKind::build`](crate::balance::BalancerKind::build).
    pub fn shared_balancer(mut self, balancer: Arc<dyn Balancer>) -> Self {
        self.balancer = balancer;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the passive health policy.
    pub fn outliers(mut self, outliers: OutlierPolicy) -> Self {
        self.outliers = outliers;
        self
    }

    /// Sets the caller's zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets which responses are failures.
    pub fn classify(
        mut self,
        classify: impl Fn(http::StatusCode, &http::HeaderMap) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.classify = Arc::new(classify);
        self
    }
}

/// A tower [`Service`] that sends each request to one of a service's discovered
/// instances: picked by the balancer among those not ejected, through the instance's
/// client from an [`EndpointCache`], retried on another instance when it fails and the
/// request is safe to retry, within the deadline, attempts and retry budget.
///
/// Cheap to clone; clones share the cache, the ejections and the budget. Always ready:
/// readiness is awaited per instance inside the call. With no instance discovered, a call
/// fails at once with [`Error::NoInstances`] naming the service. A tonic client takes it
/// as its channel: see [`channel`](crate::channel).
pub struct Balanced<M: MakeEndpoint> {
    shared: Arc<Shared<M>>,
}

struct Shared<M: MakeEndpoint> {
    discovery: Discovery,
    options: BalanceOptions,
    endpoints: EndpointCache<M>,
    outliers: OutlierDetector,
    budget: TpsBudget,
    /// Dropped with the last clone, which stops the pruning task.
    _closed: oneshot::Sender<()>,
}

impl<M: MakeEndpoint> Clone for Balanced<M> {
    fn clone(&self) -> Self {
        Balanced {
            shared: self.shared.clone(),
        }
    }
}

impl<M: MakeEndpoint> fmt::Debug for Balanced<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balanced")
            .field("service", self.shared.discovery.service())
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl<M: MakeEndpoint> Balanced<M> {
    /// Routes over `discovery`'s instances, making their clients with `make`.
    ///
    /// Inside a Tokio runtime, a task follows the discovery and drops the client (and
    /// the health record) of an instance as soon as it leaves; it ends with the last
    /// clone. Outside one, that happens on the next call instead.
    pub fn new(discovery: Discovery, make: M, options: BalanceOptions) -> Self {
        let budget = options.retry.make_budget();
        let (closed_tx, closed) = oneshot::channel();
        let shared = Arc::new(Shared {
            outliers: OutlierDetector::new(options.outliers),
            endpoints: EndpointCache::new(make),
            discovery,
            options,
            budget,
            _closed: closed_tx,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let versions = shared.discovery.versions();
            runtime.spawn(prune(Arc::downgrade(&shared), versions, closed));
        }
        Balanced { shared }
    }

    /// The discovery this service routes over.
    pub fn discovery(&self) -> &Discovery {
        &self.shared.discovery
    }

    /// The passive health state: which instances are ejected.
    pub fn outliers(&self) -> &OutlierDetector {
        &self.shared.outliers
    }

    /// The clients held.
    pub fn endpoints(&self) -> &EndpointCache<M> {
        &self.shared.endpoints
    }
}

impl<M: MakeEndpoint> Shared<M> {
    /// Picks for one attempt: an instance neither tried nor ejected, else one not tried,
    /// else one not ejected, else any. `None` only for an empty set.
    #[tracing::instrument(name = "pick", level = "debug", skip_all, fields(tried = tried.len()))]
    fn pick(&self, snapshot: &Snapshot, key: Option<u64>, tried: &[InstanceId]) -> Option<Arc<Instance>> {
        let now = Instant::now();
        let fresh_and_healthy =
            |i: &Instance| !tried.contains(i.id()) && !self.outliers.is_ejected_at(i.id(), now);
        let fresh = |i: &Instance| !tried.contains(i.id());
        let healthy = |i: &Instance| !self.outliers.is_ejected_at(i.id(), now);
        let balancer = &self.options.balancer;
        let mut ctx = PickContext::new();
        if let Some(key) = key {
            ctx = ctx.with_key_hash(key);
        }
        if let Some(zone) = self.options.zone.as_deref() {
            ctx = ctx.with_zone(zone);
        }
        if tried.is_empty() && !self.outliers.any_ejected() {
            return balancer.pick(snapshot, &ctx);
        }
        let filters: [&dyn Fn(&Instance) -> bool; 3] = [&fresh_and_healthy, &fresh, &healthy];
        let picked = filters
            .into_iter()
            .find_map(|filter| balancer.pick(snapshot, &ctx.with_filter(filter)));
        picked.or_else(|| balancer.pick(snapshot, &ctx))
    }
}

/// Drops the clients and health records of instances as they leave the set.
async fn prune<M: MakeEndpoint>(
    shared: Weak<Shared<M>>,
    mut versions: watch::Receiver<u64>,
    mut closed: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = &mut closed => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let snapshot = shared.discovery.snapshot();
        if shared.endpoints.sync(&snapshot) {
            shared.outliers.retain(&snapshot);
        }
    }
}

/// Reports the end of an attempt to the balancer, as cancelled if it is dropped first.
struct Attempt<'a> {
    balancer: &'a dyn Balancer,
    instance: &'a Instance,
    started: StdInstant,
    done: bool,
}

impl<'a> Attempt<'a> {
    fn start(balancer: &'a dyn Balancer, instance: &'a Instance) -> Self {
        balancer.start(instance);
        Attempt {
            balancer,
            instance,
            started: StdInstant::now(),
            done: false,
        }
    }

    fn finish(mut self, success: bool) {
        let latency = self.started.elapsed();
        metrics::histogram!(leasehold::metrics::TOWER_REQUEST_DURATION, "service" => self.instance.service().to_string(), "instance" => self.instance.id().to_string()).record(latency);
        self.done = true;
        let outcome = if success {
            Outcome::Success(latency)
        } else {
            Outcome::Failure(latency)
        };
        self.balancer.finish(self.instance, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.balancer.finish(self.instance, Outcome::Cancelled);
        }
    }
}

enum PendingBody {
    Buffered(Bytes),
    Once(Option<RequestBody>),
}

impl PendingBody {
    fn next(&mut self) -> RequestBody {
        match self {
            PendingBody::Buffered(bytes) => RequestBody::new(Full::new(bytes.clone())),
            PendingBody::Once(body) => body.take().unwrap_or_else(RequestBody::empty),
        }
    }
}

#[tracing::instrument(name = "route", level = "debug", skip_all, fields(service = %shared.discovery.service()))]
async fn route<M, ResBody>(
    shared: Arc<Shared<M>>,
    request: http::Request<RequestBody>,
) -> Result<http::Response<ResBody>, Error>
where
    M: MakeEndpoint,
    M::Endpoint: Service<http::Request<RequestBody>, Response = http::Response<ResBody>>,
    <M::Endpoint as Service<http::Request<RequestBody>>>::Error: Into<BoxError>,
{
    let service = shared.discovery.service().clone();
    if shared.discovery.snapshot().is_empty() {
        return Err(Error::NoInstances { service });
    }
    let policy = &shared.options.retry;
    let (parts, body) = request.into_parts();
    let retryable = policy.max_attempts > 1 && (policy.safe)(&parts);
    let key = parts.extensions.get::<HashKey>().map(|k| k.0);
    let mut body = if retryable {
        let collected = body.collect().await.map_err(|source| Error::RequestBody {
            service: service.clone(),
            source: source.into(),
        })?;
        PendingBody::Buffered(collected.to_bytes())
    } else {
        PendingBody::Once(Some(body))
    };
    shared.budget.deposit();
    let mut tried: Vec<InstanceId> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let snapshot = shared.discovery.snapshot();
        if shared.endpoints.sync(&snapshot) {
            shared.outliers.retain(&snapshot);
        }
        let Some(instance) = shared.pick(&snapshot, key, &tried) else {
            return Err(Error::NoInstances { service });
        };
        metrics::counter!(leasehold::metrics::TOWER_PICKS, "service" => service.to_string()).increment(1);
        let endpoint = match shared.endpoints.get(&instance) {
            Ok(endpoint) => endpoint,
            Err(source) => {
                // Nothing was sent, so trying another instance is safe for any request.
                tracing::warn!(%service, id = %instance.id(), addr = %instance.addr(), error = %source, "cannot make a client");
                shared.outliers.record_failure(&instance, &snapshot);
                tried.push(instance.id().clone());
                if attempt < policy.max_attempts {
                    continue;
                }
                return Err(Error::MakeEndpoint {
                    service,
                    id: instance.id().clone(),
                    addr: instance.addr().clone(),
                    source,
                });
            }
        };
        let request = http::Request::from_parts(parts.clone(), body.next());
        let tracker = Attempt::start(&*shared.options.balancer, &instance);
        let result: Result<_, BoxError> = endpoint.oneshot(request).await.map_err(Into::into);
        let failed = match &result {
            Ok(response) => (shared.options.classify)(response.status(), response.headers()),
            Err(_) => true,
        };
        tracker.finish(!failed);
        if failed {
            shared.outliers.record_failure(&instance, &snapshot);
            tried.push(instance.id().clone());
        } else {
            shared.outliers.record_success(&instance);
        }
        let wanted = failed && retryable && attempt < policy.max_attempts;
        let retry = wanted && shared.budget.withdraw();
        if wanted {
            let name = if retry {
                leasehold::metrics::TOWER_RETRIES
            } else {
                leasehold::metrics::TOWER_RETRY_BUDGET_EXHAUSTED
            };
            metrics::counter!(name, "service" => service.to_string()).increment(1);
        }
        match result {
            Ok(response) if !retry => return Ok(response),
            Err(source) if !retry => {
                return Err(Error::Endpoint {
                    service,
                    id: instance.id().clone(),
                    addr: instance.addr().clone(),
                    attempts: attempt,
                    source,
                })
            }
            Ok(response) => {
                tracing::debug!(%service, id = %instance.id(), attempt, status = %response.status(), "retrying on another instance")
            }
            Err(error) => {
                tracing::debug!(%service, id = %instance.id(), attempt, %error, "retrying on another instance")
            }
        }
    }
}

impl<M, ResBody> Service<http::Request<RequestBody>> for Balanced<M>
where
    M: MakeEndpoint,
    M::Endpoint: Service<http::Request<RequestBody>, Response = http::Response<ResBody>> + Send,
    <M::Endpoint as Service<http::Request<RequestBody>>>::Error: Into<BoxError>,
    <M::Endpoint as Service<http::Request<RequestBody>>>::Future: Send,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            match shared.options.retry.deadline {
                Some(deadline) => {
                    let service = shared.discovery.service().clone();
                    tokio::time::timeout(deadline, route(shared, request))
                        .await
                        .unwrap_or(Err(Error::DeadlineExceeded { service, deadline }))
                }
                None => route(shared, request).await,
            }
        })
    }
}
