//! The backend conformance suite against a real etcd, one test (and one server) per
//! case.

mod common;

use async_trait::async_trait;
use leasehold::conformance::Harness;
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

leasehold::conformance_tests!(EtcdHarness::start().await);
