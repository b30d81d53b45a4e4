//! The one error type of the testkit.
//!
//! Every variant names what failed (which binary, which member, which address) and, when
//! a server misbehaved, ends with the tail of its log, so a failing test says why without
//! anyone having to find the temp dir.

use std::path::PathBuf;
use std::time::Duration;

/// Result alias used throughout the testkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while starting, probing or faulting a test server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A program or jar the testkit needs is not installed.
    #[error("{what} not found: install it with `{install}`")]
    NotInstalled {
        /// The missing program or file.
        what: String,
        /// The command that installs it.
        install: &'static str,
    },

    /// No free loopback port could be reserved.
    #[error("could not reserve a free port on 127.0.0.1: {0}")]
    Ports(#[source] std::io::Error),

    /// Preparing the temp dir, a config file or a log file failed.
    #[error("{what}: {source}")]
    Io {
        /// What the testkit was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The server process could not be spawned at all.
    #[error("could not spawn {server}: {source}")]
    Spawn {
        /// Which server, e.g. `etcd member 0 (client 127.0.0.1:23791)`.
        server: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The server process exited before it became ready.
    #[error("{server} exited during startup ({status}); last lines of {}:\n{tail}", log.display())]
    ExitedEarly {
        /// Which server.
        server: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// The server kept running but did not become ready in time.
    #[error("{server} was not ready after {timeout:?} (last probe: {last_probe}); last lines of {}:\n{tail}", log.display())]
    NotReady {
        /// Which server.
        server: String,
        /// How long the testkit waited.
        timeout: Duration,
        /// What the last readiness probe saw.
        last_probe: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A member index past the end of the cluster.
    #[error("no member {index}: the cluster has {len}")]
    NoSuchMember {
        /// The index asked for.
        index: usize,
        /// How many members there are.
        len: usize,
    },

    /// The operation needs the member in another state (e.g. pausing a killed member).
    #[error("{server} is {state:?}; {operation} needs it {needs}")]
    WrongState {
        /// Which server.
        server: String,
        /// Its current state.
        state: crate::MemberState,
        /// What was asked.
        operation: &'static str,
        /// The state the operation needs.
        needs: &'static str,
    },

    /// Sending a signal to a server failed.
    #[error("could not send {signal} to {server}: {source}")]
    Signal {
        /// Which server.
        server: String,
        /// Which signal.
        signal: &'static str,
        /// The underlying error.
        #[source]
        source: nix::Error,
    },

    /// A request to a server failed or timed out.
    #[error("{request} to {addr} failed: {detail}")]
    Request {
        /// What was sent, e.g. `POST /v3/kv/compaction`.
        request: String,
        /// Where to.
        addr: String,
        /// Why it failed.
        detail: String,
    },

    /// No live member could be reached for a cluster-wide request.
    #[error("no running, unpaused member to send {0} to")]
    NoLiveMember(String),

    /// The live members did not agree on a live leader in time.
    #[error("no leader among the live members after {0:?}")]
    NoLeader(Duration),

    /// The ZooKeeper server refused to resume the session: it expired, was closed, or
    /// the password is wrong.
    #[error("ZooKeeper session {session_id:#x} is not live on {addr} (expired, closed or wrong password)")]
    SessionNotLive {
        /// The session asked for.
        session_id: i64,
        /// The server that answered.
        addr: String,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn request(
        request: impl Into<String>,
        addr: impl Into<String>,
        detail: impl std::fmt::Display,
    ) -> Self {
        Error::Request {
            request: request.into(),
            addr: addr.into(),
            detail: detail.to_string(),
        }
    }
}
