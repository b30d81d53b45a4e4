//! Helpers shared by the etcd backend's tests: instances, clients, and a TCP proxy that
//! can cut a client off from a real etcd (a network partition) and let it back.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::{
    Discovery, Instance, RegisterOptions, Registration, RegistrationState, Registry, RegistryUrl,
    ServiceName, WatchOptions,
};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

/// Generous: tests poll for the expected state and never assert on speed.
pub const WAIT: Duration = Duration::from_secs(30);

/// Short, so that lease expiry happens within a test.
pub const TTL: Duration = Duration::from_secs(3);

pub const ROOT: &str = "/t";

pub fn echo() -> ServiceName {
    ServiceName::new("echo").unwrap()
}

pub fn instance(id: &str) -> Instance {
    Instance::builder("echo", "127.0.0.1:7001")
        .id(id)
        .build()
        .unwrap()
}

pub fn key(id: &str) -> String {
    format!("{ROOT}/echo/{id}")
}

/// Registers the echo instance `id` (see [`instance`]) on `registry` with the short [`TTL`].
pub async fn register(registry: &EtcdRegistry, id: &str) -> Registration {
    registry
        .register(instance(id), RegisterOptions::ttl(TTL))
        .await
        .unwrap()
}

/// Watches the echo service on `registry`.
pub async fn watch_echo(registry: &EtcdRegistry) -> Discovery {
    registry.watch(&echo(), WatchOptions::default()).await.unwrap()
}

/// Waits up to [`WAIT`] for `registration` to be in `state`; fails naming `what`.
pub async fn reaches(registration: &Registration, state: RegistrationState, what: &str) {
    leasehold_testkit::reaches(registration, state, WAIT, what).await
}

/// Waits up to [`WAIT`] for `registration` to be `Registered` (again).
pub async fn registered(registration: &Registration) {
    reaches(
        registration,
        RegistrationState::Registered,
        "registration back to Registered",
    )
    .await;
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn connect_url(url: &str) -> EtcdRegistry {
    init_logging();
    let url: RegistryUrl = url.parse().unwrap();
    EtcdRegistry::connect(&url).await.unwrap()
}

pub async fn connect(etcd: &EtcdCluster) -> EtcdRegistry {
    connect_url(&etcd.url(ROOT)).await
}

/// A plain etcd-client, as another process would use.
pub async fn raw(etcd: &EtcdCluster) -> etcd_client::Client {
    etcd_client::Client::connect(etcd.endpoints(), None)
        .await
        .unwrap()
}

/// The lease `key` is bound to (0 for none), or `None` when the key does not exist;
/// asked through a fresh client.
pub async fn lease_of(etcd: &EtcdCluster, key: &str) -> Option<i64> {
    let answer = raw(etcd).await.get(key, None).await.unwrap();
    answer.kvs().first().map(|kv| kv.lease())
}

/// Polls `check` until it holds, up to [`WAIT`]; panics with `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    leasehold_testkit::eventually(what, WAIT, check).await
}

/// Whether `key` exists in etcd (asked through a fresh client, so a broken registry
/// client cannot answer for itself).
pub async fn exists(etcd: &EtcdCluster, key: &str) -> bool {
    match etcd.get(key).await {
        Ok(value) => value.is_some(),
        Err(_) => false,
    }
}

/// Forwards TCP connections to a target; [`cut`](Proxy::cut) drops every connection and
/// refuses new ones until [`restore`](Proxy::restore), as a network partition would.
pub struct Proxy {
    pub endpoint: String,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    acceptor: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let acceptor = tokio::spawn({
            let open = open.clone();
            let links = links.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    let target = target.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link.abort_handle());
                }
            }
        });
        Proxy {
            endpoint,
            open,
            links,
            acceptor,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}
