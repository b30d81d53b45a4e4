//! Failures are read from gRPC statuses in the head and in the trailers: an instance
//! that fails fast is ejected and gets no more than its share.

mod support;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use leasehold::memory::MemoryRegistry;
use leasehold::Instance;
use leasehold_tower::balance::RoundRobin;
use leasehold_tower::{BalanceOptions, Balanced, BoxError, RequestBody};
use support::greeter::greeter_client::GreeterClient;
use support::greeter::HelloRequest;
use tower::util::BoxCloneService;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_answering_internal_at_once_is_ejected_and_gets_no_more_than_its_share() {
    let (_registry, servers, discovery) = support::fleet("fast-fail", 4).await;
    servers[0].behaviour.failing.store(true, Ordering::SeqCst);
    // The default balancer (p2c over peak-EWMA) used to send it 199 of 200 calls: a
    // fast failure looked like the fastest answer.
    let mut client = GreeterClient::new(leasehold_tower::channel(discovery, BalanceOptions::default()));
    let mut failed = 0;
    for n in 0..200 {
        let request = HelloRequest {
            name: format!("n{n}"),
        };
        if client.say_hello(request).await.is_err() {
            failed += 1;
        }
    }
    let bad = servers[0].behaviour.calls.load(Ordering::SeqCst);
    assert!(bad <= 50, "the failing instance got {bad} of 200 calls");
    assert_eq!(failed, bad, "only its calls failed (they were not marked safe)");
}

/// A gRPC response whose head says nothing and whose trailers carry `status`, after one
/// message.
fn streamed(status: &'static str) -> http::Response<RequestBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(status));
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(RequestBody::new(StreamBody::new(frames)))
        .unwrap()
}

type Endpoint = BoxCloneService<http::Request<RequestBody>, http::Response<RequestBody>, BoxError>;

#[tokio::test]
async fn a_failure_in_the_trailers_of_a_streamed_response_counts_when_the_body_ends() {
    let registry = MemoryRegistry::new();
    let instances = ["ok", "unavailable-in-trailers"]
        .iter()
        .enumerate()
        .map(|(n, id)| {
            Instance::builder("trailers", format!("127.0.0.1:{}", 7400 + n))
                .id(*id)
                .build()
                .unwrap()
        });
    let (_registrations, discovery) = support::registered(&registry, "trailers", instances).await;
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = calls.clone();
    let make = move |instance: &Instance| -> Result<Endpoint, BoxError> {
        let id = instance.id().to_string();
        let seen = seen.clone();
        Ok(BoxCloneService::new(tower::service_fn(
            move |_: http::Request<RequestBody>| {
                seen.lock().unwrap().push(id.clone());
                let status = if id == "ok" { "0" } else { "14" };
                std::future::ready(Ok::<_, BoxError>(streamed(status)))
            },
        )))
    };
    let options = BalanceOptions::default().balancer(RoundRobin::new);
    let service = Balanced::new(discovery.clone(), make, options);
    let bad = discovery
        .snapshot()
        .members()
        .iter()
        .find(|i| i.id().as_str() != "ok")
        .unwrap()
        .clone();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let request = http::Request::post("/svc/Stream")
            .body(RequestBody::empty())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        let bad_ended = statuses.iter().any(|s| s == "14");
        assert!(
            bad_ended || !service.outliers().is_ejected(&bad),
            "nothing is known before the end"
        );
        let body = response.into_body().collect().await.unwrap();
        statuses.push(
            body.trailers().unwrap()["grpc-status"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    statuses.sort();
    assert_eq!(statuses, ["0", "14"], "the caller reads the trailers as sent");
    assert!(
        service.outliers().is_ejected(&bad),
        "UNAVAILABLE in the trailers ejected it"
    );
    for _ in 0..10 {
        let request = http::Request::post("/svc/Stream")
            .body(RequestBody::empty())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    let to_bad = calls.lock().unwrap().iter().filter(|id| *id != "ok").count();
    assert_eq!(to_bad, 1, "an ejected instance gets no calls");
}
