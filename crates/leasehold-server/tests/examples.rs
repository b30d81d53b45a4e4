//! Runs the examples against real etcd and ZooKeeper: each server registers once it
//! serves, and on shutdown deregisters, keeps answering through its grace period, then
//! drains and returns.

#[allow(dead_code)]
#[path = "../examples/tonic_etcd.rs"]
mod tonic_etcd;

#[allow(dead_code)]
#[path = "../examples/tonic_zookeeper.rs"]
mod tonic_zookeeper;

#[allow(dead_code)]
#[path = "../examples/axum_http.rs"]
mod axum_http;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use leasehold::{BoxError, Discovery, Instance, Registry, RegistryUrl, ServiceName, WatchOptions};
use leasehold_etcd::EtcdRegistry;
use leasehold_greeter::{GreeterClient, HelloRequest};
use leasehold_testkit::{eventually, EtcdCluster, ZkEnsemble};
use leasehold_zookeeper::ZkRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const WITHIN: Duration = Duration::from_secs(30);

/// Checks made on the discovered instance while it is registered.
type Registered = Box<dyn FnOnce(Instance) -> Pin<Box<dyn Future<Output = ()> + Send>>>;

/// Starts an example's `run` with a shutdown it controls, checks that the instance
/// appears (then `registered` on it), answers `call` before and after deregistering, and
/// that `run` returns Ok. Returns the instance it found.
async fn lifecycle<R, RF, C, CF>(
    watcher: Arc<dyn Registry>,
    service: &str,
    run: R,
    call: C,
    registered: Registered,
) -> Instance
where
    R: FnOnce(oneshot::Receiver<()>) -> RF,
    RF: Future<Output = Result<(), BoxError>> + Send + 'static,
    C: Fn(String) -> CF,
    CF: Future<Output = Result<String, BoxError>>,
{
    let discovery = watcher
        .watch(&ServiceName::new(service).unwrap(), WatchOptions::default())
        .await
        .expect("watch");
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(run(stopped));

    eventually("the example registers", WITHIN, || async {
        !discovery.snapshot().is_empty()
    })
    .await;
    let instance = first(&discovery);
    let addr = instance.addr().to_string();
    let reply = call(addr.clone()).await.expect("served while registered");
    assert!(reply.contains(&addr), "{reply:?} names the server {addr}");
    registered(instance.clone()).await;

    stop.send(()).unwrap();
    eventually("the example deregisters", WITHIN, || async {
        discovery.snapshot().is_empty()
    })
    .await;
    // Within the grace period: a client that has not yet seen the deregistration is
    // still answered.
    let reply = call(addr.clone()).await.expect("served during the grace period");
    assert!(reply.contains(&addr), "{reply:?}");

    tokio::time::timeout(WITHIN, server)
        .await
        .expect("the example exits after its grace period")
        .expect("the example does not panic")
        .expect("the example exits cleanly");
    assert!(
        call(addr.clone()).await.is_err(),
        "nothing answers on {addr} once the example has exited"
    );
    instance
}

fn first(discovery: &Discovery) -> Instance {
    Instance::clone(&discovery.snapshot().instances()[0])
}

async fn say_hello(addr: String) -> Result<String, BoxError> {
    let mut client = GreeterClient::connect(format!("http://{addr}")).await?;
    let reply = client.say_hello(HelloRequest { name: "test".into() }).await?;
    Ok(reply.into_inner().server)
}

async fn get_hello(addr: String) -> Result<String, BoxError> {
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: leasehold\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected response {response:?}").into());
    }
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_on_etcd_registers_deregisters_and_drains() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let url = etcd.url("/examples");
    let watcher = EtcdRegistry::connect(&RegistryUrl::parse(&url).unwrap())
        .await
        .unwrap();
    let run = |stopped: oneshot::Receiver<()>| async move {
        tonic_etcd::run(&url, async move {
            let _ = stopped.await;
        })
        .await
    };
    lifecycle(
        Arc::new(watcher),
        "greeter",
        run,
        say_hello,
        Box::new(|_| Box::pin(async {})),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_on_zookeeper_registers_deregisters_and_drains() {
    let zk = ZkEnsemble::start_standalone().await.unwrap();
    let url = zk.url("/examples");
    let watcher = ZkRegistry::connect(&RegistryUrl::parse(&url).unwrap()).unwrap();
    let run = |stopped: oneshot::Receiver<()>| async move {
        tonic_zookeeper::run(&url, async move {
            let _ = stopped.await;
        })
        .await
    };
    lifecycle(
        Arc::new(watcher),
        "greeter",
        run,
        say_hello,
        Box::new(|_| Box::pin(async {})),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_on_etcd_in_kratos_http_format_registers_deregisters_and_drains() {
    let etcd = EtcdCluster::start_single().await.unwrap();
    let url = format!("{}?format=kratos&scheme=http", etcd.url(""));
    let watcher = EtcdRegistry::connect(&RegistryUrl::parse(&url).unwrap())
        .await
        .unwrap();
    let run = |stopped: oneshot::Receiver<()>| async move {
        axum_http::run(&url, async move {
            let _ = stopped.await;
        })
        .await
    };
    let etcd = Arc::new(etcd);
    let kratos = etcd.clone();
    // While registered, the value is what a Kratos HTTP server writes.
    let registered: Registered = Box::new(move |instance| {
        Box::pin(async move {
            let key = format!("/microservices/hello/{}", instance.id());
            let value = kratos.get(&key).await.unwrap().expect("the Kratos key");
            let expected = format!(
                r#"{{"id":"{}","name":"hello","version":"","metadata":null,"endpoints":["http://{}"]}}"#,
                instance.id(),
                instance.addr()
            );
            assert_eq!(String::from_utf8(value).unwrap(), expected);
        })
    });
    let instance = lifecycle(Arc::new(watcher), "hello", run, get_hello, registered).await;
    let key = format!("/microservices/hello/{}", instance.id());
    assert!(
        etcd.get(&key).await.unwrap().is_none(),
        "the Kratos key is gone after shutdown"
    );
}
