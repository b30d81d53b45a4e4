//! The `Balanced` service over the memory registry: fail-fast, retries, the retry budget,
//! ejection and reinstatement, the endpoint cache, and the tower `Discover` stream.
//!
//! Endpoints here are in-process tower services that answer or fail on command, so every
//! attempt can be counted; the example's test covers real tonic servers.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use leasehold::memory::MemoryRegistry;
use leasehold::{Discovery, Instance, RegisterOptions, Registration, Registry};
use leasehold_tower::balance::RoundRobin;
use leasehold_tower::{
    BalanceOptions, Balanced, BoxError, ClassifiedBody, Error, MakeEndpoint, OutlierPolicy, RequestBody,
    RetryPolicy, RetrySafe,
};
use tower::util::BoxCloneService;
use tower::ServiceExt;

use leasehold_greeter as greeter;

type Endpoint = BoxCloneService<http::Request<RequestBody>, http::Response<RequestBody>, BoxError>;

/// Endpoints that record every attempt and fail while their instance is marked broken
/// (after reading the request: it was sent) or refusing (without reading it: it was
/// never sent, as when a connection is refused).
#[derive(Clone, Default)]
struct Fleet {
    calls: Arc<Mutex<Vec<(String, String)>>>,
    broken: Arc<Mutex<HashMap<String, bool>>>,
    refusing: Arc<Mutex<HashMap<String, bool>>>,
    slow: Arc<AtomicBool>,
}

impl Fleet {
    fn set_broken(&self, id: &str, broken: bool) {
        self.broken.lock().unwrap().insert(id.to_owned(), broken);
    }

    fn set_refusing(&self, id: &str, refusing: bool) {
        self.refusing.lock().unwrap().insert(id.to_owned(), refusing);
    }

    fn calls_to(&self, id: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|(i, _)| i == id).count()
    }

    fn total(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn maker(&self) -> impl Fn(&Instance) -> Result<Endpoint, BoxError> + Send + Sync + 'static {
        let fleet = self.clone();
        move |instance: &Instance| -> Result<Endpoint, BoxError> {
            let fleet = fleet.clone();
            let id = instance.id().to_string();
            Ok(BoxCloneService::new(tower::service_fn(
                move |request: http::Request<RequestBody>| {
                    let fleet = fleet.clone();
                    let id = id.clone();
                    async move {
                        let tag = request
                            .headers()
                            .get("x-request")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        if fleet.refusing.lock().unwrap().get(&id).copied().unwrap_or(false) {
                            return Err::<http::Response<RequestBody>, BoxError>(
                                format!("{id}: connection refused").into(),
                            );
                        }
                        fleet.calls.lock().unwrap().push((id.clone(), tag));
                        let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                        if fleet.slow.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        if fleet.broken.lock().unwrap().get(&id).copied().unwrap_or(false) {
                            return Err::<http::Response<RequestBody>, BoxError>(
                                format!("{id}: connection reset").into(),
                            );
                        }
                        Ok(http::Response::new(RequestBody::empty()))
                    }
                },
            )))
        }
    }
}

struct Setup {
    registry: MemoryRegistry,
    discovery: Discovery,
    registrations: Vec<Registration>,
}

async fn setup(service: &str, ids: &[&str]) -> Setup {
    let registry = MemoryRegistry::new();
    let instances = ids.iter().enumerate().map(|(n, id)| {
        Instance::builder(service, format!("127.0.0.1:{}", 7000 + n))
            .id(*id)
            .build()
            .unwrap()
    });
    let (registrations, discovery) = support::registered(&registry, service, instances).await;
    Setup {
        registry,
        discovery,
        registrations,
    }
}

fn request(tag: usize, safe: bool) -> http::Request<RequestBody> {
    let mut builder = http::Request::post("/svc/Call").header("x-request", tag.to_string());
    if safe {
        builder = builder.extension(RetrySafe);
    }
    builder
        .body(RequestBody::new(http_body_util::Full::new(
            bytes::Bytes::from_static(b"payload"),
        )))
        .unwrap()
}

async fn send<M>(
    service: &Balanced<M>,
    tag: usize,
    safe: bool,
) -> Result<http::Response<ClassifiedBody<RequestBody>>, Error>
where
    M: MakeEndpoint<Endpoint = Endpoint>,
{
    tokio::time::timeout(
        Duration::from_secs(10),
        service.clone().oneshot(request(tag, safe)),
    )
    .await
    .expect("a call never hangs")
}

#[tokio::test]
async fn with_no_instance_a_call_fails_at_once_naming_the_service() {
    let setup = setup("nobody-home", &[]).await;
    let fleet = Fleet::default();
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), BalanceOptions::default());
    let err = send(&service, 0, true).await.unwrap_err();
    assert!(matches!(err, Error::NoInstances { .. }), "{err}");
    assert!(err.to_string().contains("nobody-home"), "{err}");

    // Through a tonic-generated client too: the status names the service.
    let channel = leasehold_tower::channel(setup.discovery.clone(), BalanceOptions::default());
    let mut client = greeter::greeter_client::GreeterClient::new(channel);
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        client.say_hello(greeter::HelloRequest { name: "x".into() }),
    )
    .await
    .expect("never hangs")
    .unwrap_err();
    assert!(status.message().contains("nobody-home"), "{status}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
}

#[tokio::test]
async fn a_request_that_was_never_sent_goes_to_another_instance_even_if_not_safe() {
    let setup = setup("refused", &["a", "b", "c"]).await;
    let fleet = Fleet::default();
    fleet.set_refusing("a", true);
    fleet.set_refusing("b", true);
    let options = BalanceOptions::default()
        .balancer(RoundRobin::new)
        .outliers(OutlierPolicy::disabled());
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
    for tag in 0..12 {
        send(&service, tag, false)
            .await
            .expect("c takes what a and b refused");
    }
    assert_eq!(fleet.calls_to("c"), 12);
    assert_eq!(fleet.total(), 12, "every request reached a server once");
}

#[tokio::test]
async fn channels_made_from_one_options_value_keep_their_own_turns() {
    let one = setup("turns-one", &["a", "b", "c", "d"]).await;
    let two = setup("turns-two", &["e", "f", "g", "h"]).await;
    let fleet = Fleet::default();
    let options = BalanceOptions::default().balancer(leasehold_tower::balance::BalancerKind::Weighted);
    let first = Balanced::new(one.discovery.clone(), fleet.maker(), options.clone());
    let second = Balanced::new(two.discovery.clone(), fleet.maker(), options);
    for tag in 0..400 {
        send(&first, tag, false).await.unwrap();
        send(&second, tag, false).await.unwrap();
    }
    for id in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        assert_eq!(
            fleet.calls_to(id),
            100,
            "{id}: each channel spreads its 400 calls evenly"
        );
    }
}

#[tokio::test]
async fn a_zone_per_request_picks_within_that_zone() {
    let registry = MemoryRegistry::new();
    let instances = ["east", "west", "east", "west"]
        .iter()
        .enumerate()
        .map(|(n, zone)| {
            Instance::builder("zoned", format!("127.0.0.1:{}", 7300 + n))
                .id(format!("{zone}-{n}"))
                .zone(*zone)
                .build()
                .unwrap()
        });
    let (_registrations, discovery) = support::registered(&registry, "zoned", instances).await;
    let fleet = Fleet::default();
    let options = BalanceOptions::default()
        .balancer(|| leasehold_tower::balance::ZoneAware::new(None, RoundRobin::new));
    let service = Balanced::new(discovery, fleet.maker(), options);
    for tag in 0..40usize {
        let zone = if tag.is_multiple_of(2) { "east" } else { "west" };
        let mut request = request(tag, false);
        request
            .extensions_mut()
            .insert(leasehold_tower::CallerZone::new(zone));
        service.clone().oneshot(request).await.unwrap();
    }
    let calls = fleet.calls.lock().unwrap().clone();
    for (id, tag) in &calls {
        let tag: usize = tag.parse().unwrap();
        let zone = if tag.is_multiple_of(2) { "east" } else { "west" };
        assert!(id.starts_with(zone), "request {tag} from {zone} went to {id}");
    }
    for id in ["east-0", "west-1", "east-2", "west-3"] {
        assert_eq!(fleet.calls_to(id), 10, "{id}: each zone's turns are its own");
    }
}

#[tokio::test]
async fn a_failed_safe_request_is_retried_on_another_instance() {
    let setup = setup("retries", &["a", "b", "c", "d"]).await;
    let fleet = Fleet::default();
    for id in ["a", "b", "c"] {
        fleet.set_broken(id, true);
    }
    let options = BalanceOptions::default()
        .balancer(RoundRobin::new)
        .outliers(OutlierPolicy::disabled())
        .retry(RetryPolicy::default().max_attempts(4).budget(1000.0, 1000));
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
    for tag in 0..20 {
        send(&service, tag, true)
            .await
            .expect("d answers every request in the end");
    }
    let calls = fleet.calls.lock().unwrap().clone();
    for tag in 0..20 {
        let tried: Vec<&str> = calls
            .iter()
            .filter(|(_, t)| *t == tag.to_string())
            .map(|(i, _)| i.as_str())
            .collect();
        let mut distinct = tried.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            tried.len(),
            "request {tag} tried an instance twice: {tried:?}"
        );
        assert_eq!(tried.last(), Some(&"d"));
    }
}

#[tokio::test]
async fn only_requests_marked_safe_are_retried() {
    let setup = setup("unsafe", &["a", "b"]).await;
    let fleet = Fleet::default();
    fleet.set_broken("a", true);
    fleet.set_broken("b", true);
    let options = BalanceOptions::default().outliers(OutlierPolicy::disabled());
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
    let err = send(&service, 0, false).await.unwrap_err();
    assert!(matches!(err, Error::Endpoint { attempts: 1, .. }), "{err}");
    assert!(
        err.to_string().contains("unsafe") && err.to_string().contains("connection reset"),
        "{err}"
    );
    assert_eq!(fleet.total(), 1);
    let err = send(&service, 1, true).await.unwrap_err();
    assert!(matches!(err, Error::Endpoint { attempts: 3, .. }), "{err}");
    assert_eq!(fleet.total(), 4, "the default allows three attempts");
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let setup = setup("budget", &["a", "b", "c", "d", "e"]).await;
    let fleet = Fleet::default();
    for id in ["a", "b", "c", "d", "e"] {
        fleet.set_broken(id, true);
    }
    let options = BalanceOptions::default()
        .outliers(OutlierPolicy::disabled())
        .retry(RetryPolicy::default().max_attempts(5).budget(0.1, 0));
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
    for tag in 0..200 {
        assert!(send(&service, tag, true).await.is_err());
    }
    let retries = fleet.total() - 200;
    // 10% of 200 requests; without the budget it would be 4 per request, 800.
    assert!((10..=21).contains(&retries), "{retries} retries");
}

#[tokio::test]
async fn the_deadline_bounds_all_attempts() {
    let setup = setup("slowpoke", &["a"]).await;
    let fleet = Fleet::default();
    fleet.slow.store(true, Ordering::SeqCst);
    let options =
        BalanceOptions::default().retry(RetryPolicy::default().deadline(Duration::from_millis(200)));
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
    let err = send(&service, 0, true).await.unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { .. }), "{err}");
    assert!(err.to_string().contains("slowpoke"), "{err}");
}

fn instance_of(discovery: &Discovery, id: &str) -> Arc<Instance> {
    let snapshot = discovery.snapshot();
    let found = snapshot.members().iter().find(|i| i.id().as_str() == id);
    found.expect("the instance is discovered").clone()
}

async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    leasehold_testkit::eventually(what, Duration::from_secs(10), || std::future::ready(ready())).await
}

#[tokio::test]
async fn a_failing_instance_is_ejected_then_reinstated() {
    let setup = setup("ejection", &["a", "b", "c", "d"]).await;
    let fleet = Fleet::default();
    fleet.set_broken("c", true);
    let options = BalanceOptions::default()
        .balancer(RoundRobin::new)
        // Long enough that the 40 calls below all fall inside the first ejection, however
        // slow the machine.
        .outliers(OutlierPolicy::default().base_ejection(Duration::from_secs(2)))
        .retry(RetryPolicy::default());
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
    let c = instance_of(&setup.discovery, "c");
    for tag in 0..8 {
        send(&service, tag, true).await.expect("retried past c");
        if service.outliers().is_ejected(&c) {
            break;
        }
    }
    assert!(service.outliers().is_ejected(&c), "c is ejected after failing");
    let before = fleet.calls_to("c");
    for tag in 100..140 {
        send(&service, tag, true).await.unwrap();
    }
    assert!(
        service.outliers().is_ejected(&c),
        "still inside the first ejection"
    );
    assert_eq!(fleet.calls_to("c"), before, "an ejected instance gets no calls");

    fleet.set_broken("c", false);
    until("c is reinstated", || !service.outliers().is_ejected(&c)).await;
    let before = fleet.calls_to("c");
    for tag in 200..240 {
        send(&service, tag, true).await.unwrap();
    }
    assert!(
        fleet.calls_to("c") >= before + 5,
        "c is called again once reinstated"
    );
    assert!(!service.outliers().is_ejected(&c));
}

#[tokio::test]
async fn ejection_never_goes_below_the_minimum() {
    let setup = setup("floor", &["a", "b", "c", "d"]).await;
    let fleet = Fleet::default();
    for id in ["a", "b", "c", "d"] {
        fleet.set_broken(id, true);
    }
    let options = BalanceOptions::default().outliers(
        OutlierPolicy::default()
            .base_ejection(Duration::from_secs(60))
            .min_available(0.5),
    );
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
    for tag in 0..40 {
        let _ = send(&service, tag, true).await;
    }
    assert_eq!(service.outliers().ejected().len(), 2, "2 of 4 always stay");
    let total = fleet.total();
    let _ = send(&service, 99, false).await;
    assert_eq!(fleet.total(), total + 1, "calls still go out");
}

#[tokio::test]
async fn endpoints_are_made_on_first_need_and_dropped_when_their_instance_leaves() {
    let mut setup = setup("cache", &["a", "b", "c"]).await;
    let fleet = Fleet::default();
    let options = BalanceOptions::default().balancer(RoundRobin::new);
    let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
    assert!(service.endpoints().is_empty(), "nothing is made before a call");
    send(&service, 0, true).await.unwrap();
    assert_eq!(service.endpoints().len(), 1);
    for tag in 1..6 {
        send(&service, tag, true).await.unwrap();
    }
    assert_eq!(service.endpoints().len(), 3);
    let gone = setup.registrations.remove(0);
    gone.deregister().await.unwrap();
    setup
        .discovery
        .wait_for(Duration::from_secs(10), |s| s.len() == 2)
        .await
        .expect("a is gone");
    until("a's client is dropped without waiting for a call", || {
        service.endpoints().len() == 2
    })
    .await;
    send(&service, 9, true).await.unwrap();
    assert_eq!(service.endpoints().len(), 2);
    drop(setup.registry);
}

async fn next(stream: &mut leasehold_tower::DiscoverStream<Endpoint>) -> String {
    use tower::discover::Change;
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(Ok(Change::Insert(id, _)))) => format!("+{id}"),
        Ok(Some(Ok(Change::Remove(id)))) => format!("-{id}"),
        other => panic!("unexpected {:?}", other.map(|o| o.map(|r| r.is_ok()))),
    }
}

#[tokio::test]
async fn the_discover_stream_yields_inserts_and_removes() {
    fn is_discover<D: tower::discover::Discover<Key = Arc<str>>>(d: D) -> D {
        d
    }

    let mut setup = setup("discover", &["a", "b"]).await;
    let fleet = Fleet::default();
    let mut stream = is_discover(leasehold_tower::discover(&setup.discovery, fleet.maker()));
    let mut first = vec![next(&mut stream).await, next(&mut stream).await];
    first.sort();
    assert_eq!(first, ["+a", "+b"]);
    let instance = Instance::builder("discover", "127.0.0.1:7100")
        .id("c")
        .build()
        .unwrap();
    let c = setup
        .registry
        .register(instance, RegisterOptions::default())
        .await
        .unwrap();
    assert_eq!(next(&mut stream).await, "+c");
    setup.registrations.remove(0).deregister().await.unwrap();
    assert_eq!(next(&mut stream).await, "-a");
    c.deregister().await.unwrap();
    assert_eq!(next(&mut stream).await, "-c");
}

#[tokio::test]
async fn an_instance_whose_client_cannot_be_made_is_passed_over_even_for_unsafe_requests() {
    let mixed = setup("unmakeable", &["a", "bad"]).await;
    let fleet = Fleet::default();
    let inner = fleet.maker();
    let maker = move |instance: &Instance| -> Result<Endpoint, BoxError> {
        if instance.id().as_str() == "bad" {
            return Err("no client for you".into());
        }
        inner(instance)
    };
    let options = BalanceOptions::default()
        .balancer(RoundRobin::new)
        .outliers(OutlierPolicy::disabled());
    let service = Balanced::new(mixed.discovery.clone(), maker, options);
    for tag in 0..10 {
        send(&service, tag, false).await.expect("a answers");
    }
    assert_eq!(fleet.calls_to("a"), 10);

    let only_bad = setup("unmakeable-only", &["bad"]).await;
    let maker = |_: &Instance| -> Result<Endpoint, BoxError> { Err("no client for you".into()) };
    let service = Balanced::new(only_bad.discovery.clone(), maker, BalanceOptions::default());
    let err = send(&service, 0, false).await.unwrap_err();
    assert!(matches!(err, Error::MakeEndpoint { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("unmakeable-only")
            && message.contains("bad")
            && message.contains("no client for you"),
        "{message}"
    );
}

#[tokio::test]
async fn out_of_range_retry_and_ejection_settings_never_panic() {
    let setup = setup("odd-settings", &["a", "b", "c", "d"]).await;
    let fleet = Fleet::default();
    fleet.set_broken("a", true);
    let mut retry = RetryPolicy::default().budget(f32::NAN, u32::MAX);
    retry.budget_ratio = f32::NAN;
    let mut wild = RetryPolicy::default();
    wild.budget_ratio = 1e9;
    let outliers = OutlierPolicy::default()
        .base_ejection(Duration::MAX)
        .max_ejection(Duration::MAX);
    for retry in [retry, wild] {
        let options = BalanceOptions::default()
            .balancer(RoundRobin::new)
            .retry(retry)
            .outliers(outliers);
        let service = Balanced::new(setup.discovery.clone(), fleet.maker(), options);
        for tag in 0..8 {
            send(&service, tag, true).await.expect("retried past a");
        }
        let a = instance_of(&setup.discovery, "a");
        assert!(service.outliers().is_ejected(&a), "a stays out");
    }
}
