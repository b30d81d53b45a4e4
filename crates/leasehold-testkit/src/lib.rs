//! Real etcd and ZooKeeper servers for leasehold's tests, with fault injection.
//!
//! Backends are tested against the servers users run, never against mocks. This crate
//! starts them from the Debian packages (`etcd-server`, `zookeeper`) on free loopback
//! ports, each member with its own temp data dir and a log file (not the test's output),
//! waits until they serve, and lets a test break them:
//!
//! | fault | etcd ([`EtcdCluster`]) | ZooKeeper ([`ZkEnsemble`]) |
//! |---|---|---|
//! | crash | `kill(i)` (SIGKILL) | `kill(i)` |
//! | come back with the same data and ports | `restart(i)` | `restart(i)` |
//! | freeze and thaw | `pause(i)` (SIGSTOP) / `resume(i)` (SIGCONT) | `pause(i)` / `resume(i)` |
//! | lose all data | `wipe(i)` | `wipe(i)` |
//! | history gone | `compact(revision)` | — |
//! | session gone | — | `expire_session(id, password)` |
//!
//! Everything a test starts is stopped when its handle drops, also when the test panics:
//! paused processes are resumed, every process is SIGKILLed and reaped, and the temp dir
//! is deleted.
//!
//! Run `scripts/install-test-deps` once on a fresh machine to install the servers. A
//! missing server is an error that says which package to install.
//!
//! # Example
//!
//! ```no_run
//! use leasehold_testkit::EtcdCluster;
//!
//! # async fn example() -> leasehold_testkit::Result<()> {
//! let etcd = EtcdCluster::start_single().await?;
//! let url = etcd.url("/services"); // "etcd://127.0.0.1:PORT/services"
//! // ... register an instance through a backend connected to `url` ...
//!
//! etcd.kill(0).await?; // the registry crashes
//! etcd.restart(0).await?; // and comes back with its data
//! etcd.wipe(0).await?; // or comes back empty
//! # let _ = url;
//! # Ok(())
//! # }
//! ```
//!
//! [`soak`] runs a seeded, randomized soak with overlapping faults against any backend.
//!
//! Server logs go to files in the cluster's temp dir ([`EtcdCluster::log_path`]); set
//! `RUST_LOG=leasehold_testkit=debug` with a tracing subscriber to follow what the
//! testkit does.

pub mod curator;
mod error;
pub mod etcd;
mod http;
mod locate;
mod poll;
mod ports;
mod process;
mod ready;
pub mod soak;
pub mod zookeeper;

pub use curator::{CuratorInstance, CuratorPeer};
pub use error::{Error, Result};
pub use etcd::EtcdCluster;
pub use poll::{eventually, reaches};
pub use process::MemberState;
pub use zookeeper::{ZkEnsemble, ZkSession};

/// `scheme://h1:p1,h2:p2/root`, the registry URL form leasehold's backends accept.
fn registry_url(scheme: &str, endpoints: &[String], root: &str) -> String {
    let hosts = endpoints.join(",");
    let root = root.trim_start_matches('/');
    if root.is_empty() {
        format!("{scheme}://{hosts}")
    } else {
        format!("{scheme}://{hosts}/{root}")
    }
}

#[cfg(test)]
mod tests {
    use super::registry_url;

    #[test]
    fn registry_url_joins_hosts_and_normalises_the_root() {
        let hosts = ["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        assert_eq!(
            registry_url("etcd", &hosts, "/svc"),
            "etcd://127.0.0.1:1,127.0.0.1:2/svc"
        );
        assert_eq!(registry_url("zk", &hosts[..1], "svc/a"), "zk://127.0.0.1:1/svc/a");
        assert_eq!(registry_url("zk", &hosts[..1], ""), "zk://127.0.0.1:1");
    }
}
