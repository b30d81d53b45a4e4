//! The backend conformance suite against a real standalone ZooKeeper.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use leasehold::conformance::{self, Harness};
use leasehold::{Result, ServiceName};
use leasehold_testkit::zookeeper::ZkEnsemble;
use leasehold_zookeeper::ZkRegistry;
use zookeeper_client as zk;

struct ZkHarness {
    zk: ZkEnsemble,
}

#[async_trait]
impl Harness for ZkHarness {
    type Client = ZkRegistry;

    async fn client(&self) -> Result<ZkRegistry> {
        Ok(common::client(&self.zk))
    }

    async fn crash(&self, client: &ZkRegistry) {
        client.crash();
    }

    async fn put_raw(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<()> {
        let client = common::raw(&self.zk).await;
        let parent = format!("{}/{service}", common::ROOT);
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let fail = |e: zk::Error| leasehold::Error::backend(self.zk.connect_string(), e.to_string());
        client.mkdir(&parent, &persistent).await.map_err(fail)?;
        client
            .create(&format!("{parent}/{key}"), value, &persistent)
            .await
            .map_err(fail)?;
        Ok(())
    }

    fn expiry_slack(&self) -> Duration {
        // The server checks session expiry once per tick (200 ms); the client-side
        // timeouts are in session-timeout units.
        Duration::from_secs(10)
    }

    fn coalesces_changes(&self) -> bool {
        // Watch events carry no data: the watcher reads each node after the fact.
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let zk = ZkEnsemble::start_standalone().await.expect("ZooKeeper starts");
    conformance::run(&ZkHarness { zk }).await;
}
