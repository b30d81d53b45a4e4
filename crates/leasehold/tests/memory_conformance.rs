//! The in-process registry through the backend conformance suite, one test per case.
//!
//! Built only with the `conformance` feature: `cargo test -p leasehold --all-features`.

use leasehold::conformance::{self, Harness, MemoryHarness};
use leasehold::memory::MemoryRegistry;
use leasehold::{Registry, ServiceName};

leasehold::conformance_tests!(MemoryHarness::new());

/// `run` itself, on one store shared by every case, as a backend's single test would.
#[tokio::test]
async fn run_all_cases_on_one_store() {
    conformance::run(&MemoryHarness::new()).await;
}

/// A harness that breaks the contract in one way, to show the suite notices.
struct Broken {
    inner: MemoryHarness,
    /// Each client gets a store of its own, so clients do not see each other.
    private_stores: bool,
}

#[async_trait::async_trait]
impl Harness for Broken {
    type Client = MemoryRegistry;

    async fn client(&self) -> leasehold::Result<MemoryRegistry> {
        if self.private_stores {
            return Ok(MemoryRegistry::new());
        }
        self.inner.client().await
    }

    /// Deregisters instead of crashing, as a backend whose "crash" still runs shutdown.
    async fn crash(&self, client: &MemoryRegistry) {
        client.shutdown().await;
    }

    async fn put_raw(&self, service: &ServiceName, key: &str, value: &[u8]) -> leasehold::Result<()> {
        self.inner.put_raw(service, key, value).await
    }
}

async fn failure_of<F>(case: F) -> String
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let panic = tokio::spawn(case)
        .await
        .expect_err("the case must fail on a broken backend")
        .into_panic();
    panic
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| "a panic without a message".into())
}

#[tokio::test]
async fn a_crash_that_deregisters_fails_lease_expiry() {
    let broken = Broken {
        inner: MemoryHarness::new(),
        private_stores: false,
    };
    let message = failure_of(async move { conformance::lease_expiry(&broken).await }).await;
    assert!(
        message.starts_with("conformance case `lease_expiry` failed:")
            && message.contains("must still be listed"),
        "{message}"
    );
}

#[tokio::test]
async fn clients_that_do_not_share_a_registry_fail_register() {
    let broken = Broken {
        inner: MemoryHarness::new(),
        private_stores: true,
    };
    let message = failure_of(async move { conformance::register(&broken).await }).await;
    assert!(
        message.starts_with("conformance case `register` failed:") && message.contains("another client"),
        "{message}"
    );
}
