//! Active health checks over tonic channels (grpc.health.v1): an instance that fails is
//! out of picks within an interval, back when it passes, never below the minimum.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use leasehold::{Discovery, Instance};
use leasehold_tower::{BalanceOptions, HealthCheck, OutlierPolicy};
use support::greeter::greeter_client::GreeterClient;
use support::greeter::HelloRequest;

fn instance_at(discovery: &Discovery, addr: &str) -> Arc<Instance> {
    let snapshot = discovery.snapshot();
    let found = snapshot.members().iter().find(|i| i.addr().as_str() == addr);
    found.expect("discovered").clone()
}

fn checked() -> BalanceOptions {
    BalanceOptions::default()
        .health_check(
            HealthCheck::grpc("greeter.Greeter")
                .interval(Duration::from_millis(200))
                .timeout(Duration::from_secs(2)),
        )
        .outliers(OutlierPolicy::default().min_available(0.5))
}

async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    leasehold_testkit::eventually(what, Duration::from_secs(15), || std::future::ready(ready())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_instance_is_out_until_it_passes_again() {
    let (_registry, servers, discovery) = support::fleet("checked", 3).await;
    let channel = leasehold_tower::channel(discovery.clone(), checked());
    let sick = instance_at(&discovery, &servers[0].addr);
    servers[0].set_healthy(false).await;
    until("the failing instance is out", || {
        channel.balanced().outliers().is_ejected(&sick)
    })
    .await;
    let before = servers[0].behaviour.calls.load(Ordering::SeqCst);
    let mut client = GreeterClient::new(channel.clone());
    for n in 0..30 {
        client
            .say_hello(HelloRequest {
                name: format!("n{n}"),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        servers[0].behaviour.calls.load(Ordering::SeqCst),
        before,
        "no calls while out"
    );
    servers[0].set_healthy(true).await;
    until("it is back once it passes", || {
        !channel.balanced().outliers().is_ejected(&sick)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_never_take_out_more_than_the_minimum_allows() {
    let (_registry, servers, discovery) = support::fleet("all-sick", 3).await;
    let channel = leasehold_tower::channel(discovery.clone(), checked());
    for server in &servers {
        server.set_healthy(false).await;
    }
    until("one is out", || {
        channel.balanced().outliers().ejected().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        channel.balanced().outliers().ejected().len(),
        1,
        "two of three always stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_starts_after_a_crash_never_picks_the_dead_instance() {
    let (_registry, mut servers, discovery) = support::fleet("crashed", 3).await;
    servers[0].stop();
    let dead = instance_at(&discovery, &servers[0].addr);
    let channel = leasehold_tower::channel(discovery.clone(), checked());
    until("the dead instance is out", || {
        channel.balanced().outliers().is_ejected(&dead)
    })
    .await;
    let mut client = GreeterClient::new(channel.clone());
    for n in 0..20 {
        let reply = client
            .say_hello(HelloRequest {
                name: format!("n{n}"),
            })
            .await
            .unwrap();
        assert_ne!(reply.into_inner().server, servers[0].addr);
    }
}
