//! The randomized soak with overlapping faults (`leasehold_testkit::soak`) on a 3-member
//! etcd cluster: members killed, frozen, wiped, the whole cluster restarted, compactions,
//! external deletes, registrant processes killed and frozen. A fixed seed here; the
//! environment (`LEASEHOLD_SOAK_SEED`, `LEASEHOLD_SOAK_SECS`, `LEASEHOLD_SOAK_TTL`) and
//! `scripts/soak` run others. Figures are printed (`--nocapture`).

use std::sync::Arc;

use leasehold::{Registry, RegistryUrl};
use leasehold_etcd::EtcdRegistry;
use leasehold_testkit::soak::{self, Connect, ConnectFuture, EtcdSoak, SoakConfig};
use leasehold_testkit::EtcdCluster;

fn connect() -> Connect {
    Arc::new(|url: String| -> ConnectFuture {
        Box::pin(async move {
            let url: RegistryUrl = url.parse()?;
            let registry: Arc<dyn Registry> = Arc::new(EtcdRegistry::connect(&url).await?);
            Ok(registry)
        })
    })
}

/// Seed 2 with TTL 3 s freezes a member long enough that a client which stayed on it
/// would lose its lease while the other two members hold quorum (it did before the client
/// learned to leave a frozen member).
///
/// Registrations are updated all the time (`LEASEHOLD_SOAK_UPDATES=0` turns that off).
/// With updates this seed showed, in 1 run of 3, one registration going back about a
/// second of updates just after a member frozen for 3.9 s (longer than the TTL) resumed:
/// a late copy of a write sent behind an unanswered one, which could only expect a lease
/// and version. A registration's writes now go one at a time, each expecting an exact
/// mod revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let connect = connect();
    // In a registrant process (the soak runs this binary again) this never returns.
    soak::registrant::run_if_child(&connect).await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let config = SoakConfig::from_env(2, 45, 3);
    let etcd = EtcdCluster::start(3).await.unwrap();
    soak::run(EtcdSoak::new(etcd), config, "soak", connect)
        .await
        .assert_held();
}
