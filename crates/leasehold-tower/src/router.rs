//! The tower service that routes each request over the discovered instances.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use leasehold::{Change, Changes, Discovery, Instance, ServiceName, Snapshot};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceExt};

use crate::balance::{hash_key, Balancer, MakeBalancer, Outcome, PeakEwma, PickContext};
use crate::classify::{ClassifiedBody, Classifier, OnEnd, Verdict};
use crate::endpoint::{EndpointCache, MakeEndpoint};
use crate::health::HealthCheck;
use crate::outlier::{OutlierDetector, OutlierPolicy};
use crate::retry::RetryPolicy;
use crate::{BoxError, Error};

/// The request body tonic's clients send, and that [`Balanced`] takes: a boxed body,
/// so plain HTTP callers wrap theirs with `RequestBody::new(body)`.
pub type RequestBody = tonic::body::Body;

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

/// The caller's zone for one request, set as a request extension: overrides
/// [`BalanceOptions::zone`] for [`ZoneAware`](crate::balance::ZoneAware) picking.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallerZone(pub Arc<str>);

impl CallerZone {
    /// The zone `zone`.
    pub fn new(zone: impl Into<Arc<str>>) -> Self {
        CallerZone(zone.into())
    }
}

/// How a [`Balanced`] service picks, retries, ejects and checks.
///
/// Cloning it clones settings, never state: every [`Balanced`] made from it (every
/// channel) gets a balancer of its own from [`balancer`](BalanceOptions::balancer).
#[derive(Clone)]
#[non_exhaustive]
pub struct BalanceOptions {
    /// Makes each channel's balancer. Default: [`PeakEwma::new`] (power of two choices).
    pub balancer: Arc<dyn MakeBalancer>,
    /// Retries. Default: [`RetryPolicy::default`], which retries requests marked
    /// [`RetrySafe`](crate::RetrySafe), and any request that was never sent.
    pub retry: RetryPolicy,
    /// Passive health. Default: [`OutlierPolicy::default`].
    pub outliers: OutlierPolicy,
    /// The caller's zone, given to the balancer (see
    /// [`ZoneAware`](crate::balance::ZoneAware)); a [`CallerZone`] extension overrides it
    /// per request.
    pub zone: Option<String>,
    /// Which responses are failures. Default: [`Classifier::default`].
    pub classifier: Classifier,
    /// Active health checking. Default: none.
    pub health_check: Option<HealthCheck>,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        BalanceOptions {
            balancer: Arc::new(PeakEwma::new),
            retry: RetryPolicy::default(),
            outliers: OutlierPolicy::default(),
            zone: None,
            classifier: Classifier::default(),
            health_check: None,
        }
    }
}

impl fmt::Debug for BalanceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceOptions")
            .field("retry", &self.retry)
            .field("outliers", &self.outliers)
            .field("zone", &self.zone)
            .field("classifier", &self.classifier)
            .field("health_check", &self.health_check)
            .finish_non_exhaustive()
    }
}

impl BalanceOptions {
    /// Sets what makes each channel's balancer: a
    /// [`BalancerKind`](crate::balance::BalancerKind), or a closure such as
    /// `RoundRobin::new`.
    pub fn balancer(mut self, make: impl MakeBalancer + 'static) -> Self {
        self.balancer = Arc::new(make);
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
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Turns on active health checking.
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health_check = Some(check);
        self
    }
}

/// A tower [`Service`] that sends each request to one of a service's discovered
/// instances: picked by the channel's own balancer among those not ejected, through the
/// instance's client from an [`EndpointCache`] (made asynchronously, off any shared
/// lock), retried on another instance when it fails and may be retried, within the
/// deadline, attempts and retry budget.
///
/// A request that was never sent (no client could be made, the client was not ready,
/// or its connection failed before it took the request's body) is retried on another
/// instance whatever the request, as nothing reached a server. Each attempt waits for
/// the chosen instance's client to be ready (`poll_ready`), so a saturated client holds
/// its callers back rather than queueing without bound.
///
/// Responses are judged by the [`Classifier`]: by the head, or for gRPC by the
/// `grpc-status` in the trailers, reported when the response body ends. Failures count
/// toward ejection and the balancer's view of the instance.
///
/// Cheap to clone; clones share the balancer, the cache, the ejections and the budget.
/// With no instance discovered, a call fails at once with [`Error::NoInstances`] naming
/// the service. A tonic client takes it as its channel: see [`channel`](crate::channel).
pub struct Balanced<M: MakeEndpoint> {
    shared: Arc<Shared<M>>,
}

pub(crate) struct Shared<M: MakeEndpoint> {
    discovery: Discovery,
    options: BalanceOptions,
    balancer: Box<dyn Balancer>,
    endpoints: EndpointCache<M>,
    outliers: OutlierDetector,
    budget: TpsBudget,
    /// Dropped with the last clone, which stops the background tasks.
    _closed: watch::Sender<()>,
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
            .field("balancer", &self.shared.balancer)
            .finish_non_exhaustive()
    }
}

impl<M: MakeEndpoint> Balanced<M> {
    /// Routes over `discovery`'s instances, making their clients with `make`.
    ///
    /// Inside a Tokio runtime, a task follows the discovery's changes and drops the
    /// client and the health record of an instance as soon as it leaves (O(1) per
    /// change), and another runs the health checks if any; they end with the last clone.
    pub fn new(discovery: Discovery, make: M, options: BalanceOptions) -> Self {
        let budget = options.retry.make_budget();
        let (closed_tx, closed) = watch::channel(());
        let shared = Arc::new(Shared {
            outliers: OutlierDetector::new(options.outliers),
            endpoints: EndpointCache::new(make),
            balancer: options.balancer.make_balancer(),
            discovery,
            options,
            budget,
            _closed: closed_tx,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let changes = shared.discovery.changes();
            runtime.spawn(follow(Arc::downgrade(&shared), changes, closed.clone()));
            if let Some(check) = shared.options.health_check.clone() {
                runtime.spawn(crate::health::run(Arc::downgrade(&shared), check, closed));
            }
        }
        Balanced { shared }
    }

    /// The discovery this service routes over.
    pub fn discovery(&self) -> &Discovery {
        &self.shared.discovery
    }

    /// The passive and active health state: which instances are out.
    pub fn outliers(&self) -> &OutlierDetector {
        &self.shared.outliers
    }

    /// The clients held.
    pub fn endpoints(&self) -> &EndpointCache<M> {
        &self.shared.endpoints
    }

    /// This channel's balancer.
    pub fn balancer(&self) -> &dyn Balancer {
        &*self.shared.balancer
    }
}

impl<M: MakeEndpoint> Shared<M> {
    pub(crate) fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    pub(crate) fn outliers(&self) -> &OutlierDetector {
        &self.outliers
    }

    pub(crate) fn endpoints(&self) -> &EndpointCache<M> {
        &self.endpoints
    }

    /// Picks for one attempt: an instance neither tried nor out, else one not tried,
    /// else one not out, else any. `None` only for an empty set.
    #[tracing::instrument(name = "pick", level = "debug", skip_all, fields(tried = tried.len()))]
    fn pick(
        &self,
        snapshot: &Snapshot,
        key: Option<u64>,
        zone: Option<&str>,
        tried: &[Arc<Instance>],
    ) -> Option<Arc<Instance>> {
        let mut ctx = PickContext::new();
        if let Some(key) = key {
            ctx = ctx.with_key_hash(key);
        }
        if let Some(zone) = zone.or(self.options.zone.as_deref()) {
            ctx = ctx.with_zone(zone);
        }
        let out = if self.outliers.any_ejected() {
            self.outliers.out_at(Instant::now())
        } else {
            Vec::new()
        };
        if tried.is_empty() && out.is_empty() {
            return self.balancer.pick(snapshot, &ctx);
        }
        let listed = |list: &[Arc<Instance>], i: &Instance| list.iter().any(|l| l.key() == i.key());
        let mut both: Vec<Arc<Instance>> = out.clone();
        both.extend(tried.iter().filter(|t| !listed(&out, t)).cloned());
        // Many out at once (a zone down): look them up by key instead of in a list.
        let out_keys: Option<HashSet<&str>> = (out.len() > 16).then(|| out.iter().map(|i| i.key()).collect());
        let is_out = |i: &Instance| match &out_keys {
            Some(keys) => keys.contains(i.key()),
            None => listed(&out, i),
        };
        let fresh_and_healthy = |i: &Instance| !listed(tried, i) && !is_out(i);
        let fresh = |i: &Instance| !listed(tried, i);
        let healthy = |i: &Instance| !is_out(i);
        type Filter<'f> = (&'f dyn Fn(&Instance) -> bool, &'f [Arc<Instance>]);
        let filters: [Filter<'_>; 3] = [(&fresh_and_healthy, &both), (&fresh, tried), (&healthy, &out)];
        let picked = filters.into_iter().find_map(|(filter, refused)| {
            self.balancer
                .pick(snapshot, &ctx.with_filter(filter).with_refused(refused))
        });
        picked.or_else(|| self.balancer.pick(snapshot, &ctx))
    }
}

/// Drops the clients and health records of instances as they leave the set: O(1) per
/// change, O(n) only on a resync (this subscriber fell behind).
async fn follow<M: MakeEndpoint>(
    shared: Weak<Shared<M>>,
    mut changes: Changes,
    mut closed: watch::Receiver<()>,
) {
    loop {
        let change = tokio::select! {
            change = changes.next() => match change { Some(change) => change, None => return },
            _ = closed.changed() => return,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match change {
            Change::Removed(instance) => {
                shared.endpoints.forget(instance.key());
                shared.outliers.forget(instance.key());
            }
            Change::Updated { old, new } if old.addr() != new.addr() => {
                shared.endpoints.forget(old.key());
                shared.outliers.forget(old.key());
            }
            Change::Resync(snapshot) => {
                shared.endpoints.retain(&snapshot);
                shared.outliers.retain(&snapshot);
            }
            _ => {}
        }
        // A client made for an instance just as it left is caught here, amortized.
        let snapshot = shared.discovery.snapshot();
        if shared.endpoints.len() > 2 * snapshot.len() + 16 {
            shared.endpoints.retain(&snapshot);
        }
    }
}

/// One attempt on one instance, reported to the balancer and the outlier detector when
/// its outcome is known; as cancelled if it is dropped first.
struct Attempt<M: MakeEndpoint> {
    shared: Arc<Shared<M>>,
    instance: Arc<Instance>,
    started: StdInstant,
    /// Until the response head came.
    latency: Option<Duration>,
    done: bool,
}

impl<M: MakeEndpoint> Attempt<M> {
    fn start(shared: &Arc<Shared<M>>, instance: &Arc<Instance>) -> Self {
        shared.balancer.start(instance);
        Attempt {
            shared: shared.clone(),
            instance: instance.clone(),
            started: StdInstant::now(),
            latency: None,
            done: false,
        }
    }

    fn head(&mut self) {
        self.latency = Some(self.started.elapsed());
    }

    fn finish(mut self, failed: bool) {
        self.report(Some(failed));
    }

    fn report(&mut self, failed: Option<bool>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let latency = self.latency.unwrap_or_else(|| self.started.elapsed());
        metrics::histogram!(leasehold::metrics::TOWER_REQUEST_DURATION, "service" => self.instance.service().to_string(), "instance" => self.instance.id().to_string()).record(latency);
        let outcome = match failed {
            Some(false) => Outcome::Success(latency),
            Some(true) => Outcome::Failure(latency),
            None => Outcome::Cancelled,
        };
        self.shared.balancer.finish(&self.instance, outcome);
        match failed {
            Some(false) => self.shared.outliers.record_success(&self.instance),
            Some(true) => {
                let n = self.shared.discovery.snapshot().len();
                self.shared.outliers.record_failure_in(&self.instance, n);
            }
            None => {}
        }
    }
}

impl<M: MakeEndpoint> OnEnd for Attempt<M> {
    fn ended(mut self: Box<Self>, failed: Option<bool>) {
        self.report(failed);
    }
}

impl<M: MakeEndpoint> Drop for Attempt<M> {
    fn drop(&mut self) {
        self.report(None);
    }
}

/// The request body for the next attempt.
enum PendingBody {
    /// Buffered (the request may be retried): sent as often as needed.
    Buffered(Bytes),
    /// Empty: nothing to lose, so it can always go again.
    Empty,
    /// Sent once, unless it comes back unsent.
    Once(Option<RequestBody>),
}

impl PendingBody {
    fn next(&mut self) -> (RequestBody, Option<Unsent>) {
        match self {
            PendingBody::Buffered(bytes) => (RequestBody::new(Full::new(bytes.clone())), None),
            PendingBody::Empty => (RequestBody::empty(), None),
            PendingBody::Once(body) => match body.take() {
                Some(body) if body.is_end_stream() => {
                    *self = PendingBody::Empty;
                    (body, None)
                }
                Some(body) => {
                    let (body, unsent) = lend(body);
                    (body, Some(unsent))
                }
                None => (RequestBody::empty(), None),
            },
        }
    }

    /// Takes the body back if the endpoint never read it; whether that happened.
    fn reclaim(&mut self, unsent: Option<Unsent>) -> bool {
        match self {
            PendingBody::Once(body) => {
                *body = unsent.and_then(Unsent::take);
                body.is_some()
            }
            _ => false,
        }
    }

    /// Whether the body can go out again.
    fn available(&self) -> bool {
        !matches!(self, PendingBody::Once(None))
    }
}

/// Whether `error` says the connection failed before the request could be written:
/// refused, unreachable, or a connect that failed or timed out.
fn connect_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(error);
    while let Some(error) = at {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | AddrNotAvailable | NetworkUnreachable | HostUnreachable
            ) {
                return true;
            }
        }
        if error
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect())
        {
            return true;
        }
        at = error.source();
    }
    false
}

/// The other end of a request body lent to an endpoint: holds the body until the
/// endpoint first reads it, so a request the endpoint dropped unread can be sent
/// elsewhere.
struct Unsent(Arc<Mutex<Option<RequestBody>>>);

impl Unsent {
    fn take(self) -> Option<RequestBody> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Lends a non-empty `body` to one attempt. (An empty one is never lent: a client may
/// send a request with an empty body without reading it.)
fn lend(body: RequestBody) -> (RequestBody, Unsent) {
    let lent = Lent {
        slot: Arc::new(Mutex::new(Some(body))),
        body: None,
    };
    let unsent = Unsent(lent.slot.clone());
    (RequestBody::new(lent), unsent)
}

/// A body that takes its content from the shared slot when first read.
struct Lent {
    slot: Arc<Mutex<Option<RequestBody>>>,
    body: Option<RequestBody>,
}

impl Lent {
    fn body(&mut self) -> &mut RequestBody {
        let slot = &self.slot;
        self.body.get_or_insert_with(|| {
            slot.lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default()
        })
    }
}

impl http_body::Body for Lent {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(self.body()).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => false,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => {
                let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
                slot.as_ref().map(|b| b.size_hint()).unwrap_or_default()
            }
        }
    }
}

#[tracing::instrument(name = "route", level = "debug", skip_all, fields(service = %shared.discovery.service()))]
async fn route<M, ResBody>(
    shared: Arc<Shared<M>>,
    request: http::Request<RequestBody>,
) -> Result<http::Response<ClassifiedBody<ResBody>>, Error>
where
    M: MakeEndpoint,
    M::Endpoint: Service<http::Request<RequestBody>, Response = http::Response<ResBody>>,
    <M::Endpoint as Service<http::Request<RequestBody>>>::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    let service = shared.discovery.service().clone();
    if shared.discovery.snapshot().is_empty() {
        return Err(Error::NoInstances { service });
    }
    let policy = &shared.options.retry;
    let (parts, body) = request.into_parts();
    let safe = policy.max_attempts > 1 && (policy.safe)(&parts);
    let key = parts.extensions.get::<HashKey>().map(|k| k.0);
    let zone = parts.extensions.get::<CallerZone>().map(|z| z.0.clone());
    let mut body = if safe {
        let collected = body.collect().await.map_err(|source| Error::RequestBody {
            service: service.clone(),
            source: source.into(),
        })?;
        PendingBody::Buffered(collected.to_bytes())
    } else {
        PendingBody::Once(Some(body))
    };
    // The budget counts the requests that may be retried; others never draw on it,
    // and so never take its lock.
    if safe {
        shared.budget.deposit();
    }
    let mut tried: Vec<Arc<Instance>> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let more = attempt < policy.max_attempts;
        let snapshot = shared.discovery.snapshot();
        let Some(instance) = shared.pick(&snapshot, key, zone.as_deref(), &tried) else {
            return Err(Error::NoInstances { service });
        };
        metrics::counter!(leasehold::metrics::TOWER_PICKS, "service" => service.to_string()).increment(1);
        tried.push(instance.clone());
        let failed = |source: BoxError, attempts: u32| Error::Endpoint {
            service: service.clone(),
            id: instance.id().clone(),
            addr: instance.addr().clone(),
            attempts,
            source,
        };
        // Nothing is sent until the client is made and ready: a failure before that
        // is retried on another instance for any request.
        let mut endpoint = match shared.endpoints.get(&instance).await {
            Ok(endpoint) => endpoint,
            Err(source) => {
                tracing::warn!(%service, id = %instance.id(), addr = %instance.addr(), error = %source, "cannot make a client");
                Attempt::start(&shared, &instance).finish(true);
                if more {
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
        if let Err(e) = endpoint.ready().await {
            let source: BoxError = e.into();
            tracing::debug!(%service, id = %instance.id(), error = %source, "client not ready; trying another instance");
            Attempt::start(&shared, &instance).finish(true);
            if more {
                continue;
            }
            return Err(failed(source, attempt));
        }
        let (attempt_body, unsent) = body.next();
        let request = http::Request::from_parts(parts.clone(), attempt_body);
        let mut tracker = Attempt::start(&shared, &instance);
        let result = endpoint.call(request).await.map_err(Into::<BoxError>::into);
        match result {
            Err(source) => {
                tracker.finish(true);
                let unread = body.reclaim(unsent);
                let never_sent = unread || (connect_failed(&*source) && body.available());
                if more && should_retry(&shared, &service, never_sent, safe) {
                    tracing::debug!(%service, id = %instance.id(), attempt, error = %source, never_sent, "retrying on another instance");
                    continue;
                }
                return Err(failed(source, attempt));
            }
            Ok(response) => {
                tracker.head();
                match shared
                    .options
                    .classifier
                    .head(response.status(), response.headers())
                {
                    Verdict::Success => {
                        tracker.finish(false);
                        return Ok(response.map(ClassifiedBody::plain));
                    }
                    Verdict::Trailers => {
                        let classifier = shared.options.classifier.clone();
                        return Ok(
                            response.map(|b| ClassifiedBody::watched(b, classifier, Box::new(tracker)))
                        );
                    }
                    Verdict::Failure => {
                        tracker.finish(true);
                        if more && should_retry(&shared, &service, false, safe) {
                            tracing::debug!(%service, id = %instance.id(), attempt, status = %response.status(), "retrying on another instance");
                            continue;
                        }
                        return Ok(response.map(ClassifiedBody::plain));
                    }
                }
            }
        }
    }
}

/// Whether a failed attempt is tried again on another instance: always when nothing was
/// sent, else when the request is safe to repeat and the retry budget allows. Counts the
/// retry, or the budget's refusal.
fn should_retry<M: MakeEndpoint>(
    shared: &Shared<M>,
    service: &ServiceName,
    never_sent: bool,
    safe: bool,
) -> bool {
    let retry = never_sent || (safe && shared.budget.withdraw());
    let counted = if retry {
        leasehold::metrics::TOWER_RETRIES
    } else if safe {
        leasehold::metrics::TOWER_RETRY_BUDGET_EXHAUSTED
    } else {
        return false;
    };
    metrics::counter!(counted, "service" => service.to_string()).increment(1);
    retry
}

impl<M, ResBody> Service<http::Request<RequestBody>> for Balanced<M>
where
    M: MakeEndpoint,
    M::Endpoint: Service<http::Request<RequestBody>, Response = http::Response<ResBody>> + Send,
    <M::Endpoint as Service<http::Request<RequestBody>>>::Error: Into<BoxError>,
    <M::Endpoint as Service<http::Request<RequestBody>>>::Future: Send,
    ResBody: Send + 'static,
{
    type Response = http::Response<ClassifiedBody<ResBody>>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    /// Always ready: readiness is that of the instance each attempt picks, awaited in
    /// the call.
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
