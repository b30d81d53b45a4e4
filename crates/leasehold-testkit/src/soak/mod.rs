//! A seeded, randomized soak with overlapping faults, for any backend.
//!
//! The soak holds a population of registrations on a real cluster (a 3-member etcd
//! cluster or a 3-server ZooKeeper ensemble) while it breaks things at random times drawn
//! from a seed: members killed, frozen, wiped, the whole cluster restarted, the history
//! compacted (etcd), registered keys deleted by an operator, and registrant processes
//! killed (SIGKILL) and frozen (SIGSTOP). Faults overlap. The registrations are held by
//! separate registrant processes ([`registrant`]) and by the test process itself, which
//! all update them all the time (a metadata `seq` bumped every 50–150 ms, sometimes
//! several times without awaiting, so writes of one registration overlap); two
//! leasehold watchers per service (one on the registering client, one on a watch-only
//! client) follow them.
//!
//! Every 100 ms a plain client, which never goes through leasehold, lists the registry
//! ([`SoakCluster::list`]) and the invariant checker decides whether:
//!
//! - no live registration is missing while quorum holds (see [`Graces`] for exactly what
//!   "live" and "quorum holds" mean and the graces allowed);
//! - no key is left without a live owner beyond its TTL (ghosts);
//! - no watcher that says it is live lags the registry for long;
//! - no watcher, nor the registry, shows a registration's `seq` lower than it showed
//!   before while its owner lives;
//! - after the last fault, once the owners stopped updating, the registry and every
//!   watcher converge to exactly the live set (every killed registrant's keys gone after
//!   its TTL), each registration with the last `seq` its owner called.
//!
//! A failing run prints the seed, the violations and a timeline of every fault and
//! finding ([`SoakReport::assert_held`]); the same seed gives the same fault plan.
//!
//! ```no_run
//! # async fn example(connect: leasehold_testkit::soak::Connect) {
//! use leasehold_testkit::soak::{self, EtcdSoak, SoakConfig};
//! use leasehold_testkit::EtcdCluster;
//!
//! // In a test named `soak`:
//! soak::registrant::run_if_child(&connect).await; // never returns in a registrant
//! let config = SoakConfig::from_env(1, 60, 10);
//! let etcd = EtcdCluster::start(3).await.unwrap();
//! soak::run(EtcdSoak::new(etcd), config, "soak", connect).await.assert_held();
//! # }
//! ```

mod checker;
mod cluster;
mod config;
mod plan;
pub mod registrant;
mod report;
mod run;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use leasehold::Registry;

pub use checker::{Findings, GapRecord, Quorum, Timeline, Violation, ViolationKind};
pub use cluster::{EtcdSoak, ListedKey, SoakCluster, ZkSoak};
pub use config::{Graces, SoakConfig, SECS_VAR, SEED_VAR, TTL_VAR, UPDATES_VAR};
pub use plan::{plan, FaultKind, PlannedFault};
pub use report::SoakReport;
pub use run::run;

/// What [`Connect`] returns: a client of the backend under test.
pub type ConnectFuture = Pin<Box<dyn Future<Output = leasehold::Result<Arc<dyn Registry>>> + Send>>;

/// Makes a client of the backend under test for a registry URL (the soak is generic; the
/// test links the backend).
pub type Connect = Arc<dyn Fn(String) -> ConnectFuture + Send + Sync>;
