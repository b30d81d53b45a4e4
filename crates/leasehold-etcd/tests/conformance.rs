//! The backend conformance suite against a real etcd, one test (and one server) per
//! case.

mod common;

use async_trait::async_trait;
use leasehold::conformance::{self, Harness};
use leasehold::{Error, Result, ServiceName};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::EtcdCluster;

struct EtcdHarness {
    etcd: EtcdCluster,
}

impl EtcdHarness {
    async fn start() -> Self {
        common::init_logging();
        EtcdHarness {
            etcd: EtcdCluster::start_single().await.expect("etcd starts"),
        }
    }
}

#[async_trait]
impl Harness for EtcdHarness {
    type Client = EtcdRegistry;

    async fn client(&self) -> Result<EtcdRegistry> {
        EtcdRegistry::connect(&self.etcd.url(common::ROOT).parse()?).await
    }

    async fn crash(&self, client: &EtcdRegistry) {
        client.crash();
    }

    async fn put_raw(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<()> {
        self.etcd
            .put(format!("{}/{service}/{key}", common::ROOT), value)
            .await
            .map(drop)
            .map_err(|e| Error::backend(self.etcd.endpoint(0), e))
    }
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                conformance::$case(&EtcdHarness::start().await).await;
            }
        )*
    };
}

cases!(
    register,
    list,
    list_services,
    watch_from_empty,
    watch_with_existing,
    update_in_place,
    pause_resume,
    deregister,
    drop_deregisters,
    invalid_input,
    deleted_key_rewritten,
    corrupt_values_skipped,
    changes_exactly_once_in_order,
    many_services,
    many_watchers,
    lease_expiry,
);
