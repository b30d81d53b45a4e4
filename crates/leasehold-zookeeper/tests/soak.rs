//! The randomized soak with overlapping faults (`leasehold_testkit::soak`) on a 3-server
//! ZooKeeper ensemble: servers killed, frozen, wiped, the whole ensemble restarted,
//! external deletes, registrant processes killed and frozen. A fixed seed here; the
//! environment (`LEASEHOLD_SOAK_SEED`, `LEASEHOLD_SOAK_SECS`, `LEASEHOLD_SOAK_TTL`) and
//! `scripts/soak` run others. Figures are printed (`--nocapture`).

use std::sync::Arc;

use leasehold::{Registry, RegistryUrl};
use leasehold_testkit::soak::{self, Connect, ConnectFuture, SoakConfig, ZkSoak};
use leasehold_testkit::ZkEnsemble;
use leasehold_zookeeper::ZkRegistry;

fn connect() -> Connect {
    Arc::new(|url: String| -> ConnectFuture {
        Box::pin(async move {
            let url: RegistryUrl = url.parse()?;
            let registry: Arc<dyn Registry> = Arc::new(ZkRegistry::connect(&url)?);
            Ok(registry)
        })
    })
}

/// The default TTL (10 s): with 3 s, a registration whose session is on a frozen server
/// sometimes drops for a moment on a loaded machine (the client leaves the server only
/// just before the session times out); `scripts/soak` runs both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let connect = connect();
    // In a registrant process (the soak runs this binary again) this never returns.
    soak::registrant::run_if_child(&connect).await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = SoakConfig::from_env(2, 45, 10);
    let zk = ZkEnsemble::start(3).await.unwrap();
    soak::run(ZkSoak::new(zk), config, "soak", connect)
        .await
        .assert_held();
}
