//! Opening ZooKeeper sessions, and the one session a registry client watches and lists
//! through.

use std::fmt::Display;
use std::time::Duration;

use leasehold::{Error, Result};
use tokio::sync::Mutex;
use zookeeper_client as zk;

use crate::options::Digest;

/// How long closing a session may take before we leave it to expire.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether `e` says the connection failed rather than what the server did: the request
/// may or may not have been applied. The client fails requests pending on a broken
/// connection with the connection's own error (`ConnectionLoss`, "no response from
/// connection in ...", an I/O error).
pub(crate) fn is_transport(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::ConnectionLoss
            | zk::Error::Timeout
            | zk::Error::NoHosts
            | zk::Error::Custom(_)
            | zk::Error::UnexpectedError(_)
    )
}

/// Opens sessions to one ensemble, with one identity, within a bounded time.
#[derive(Debug)]
pub(crate) struct Connect {
    /// `h1:p1,h2:p2`: the connect string, and how the ensemble is named in errors.
    pub(crate) endpoints: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) digest: Option<Digest>,
}

impl Connect {
    /// Opens a session of `timeout`. A `detached` session is not closed when its last
    /// client is dropped: it expires after its timeout, as a crashed process's would.
    pub(crate) async fn open(&self, timeout: Duration, detached: bool) -> Result<zk::Client> {
        let mut connector = zk::Client::connector()
            .with_session_timeout(timeout)
            .with_fail_eagerly();
        if detached {
            connector = connector.with_detached();
        }
        if let Some(digest) = &self.digest {
            connector = connector.with_auth("digest", &digest.credentials());
        }
        self.bounded(connector).await
    }

    /// Closes the session `session` (a detached one whose clients are gone), so its
    /// ephemeral nodes vanish now. A session already gone is fine.
    pub(crate) async fn close(&self, session: zk::SessionInfo) -> Result<()> {
        let id = session.id();
        let connector = zk::Client::connector().with_session(session).with_fail_eagerly();
        let client = match self.bounded(connector).await {
            Ok(client) => client,
            Err(Error::Backend { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut state = client.state_watcher();
        drop(client);
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while !state.changed().await.is_terminated() {}
        })
        .await;
        if closed.is_err() {
            tracing::warn!(session = %id, "closing a ZooKeeper session timed out; it expires by itself");
        }
        Ok(())
    }

    async fn bounded(&self, connector: zk::Connector) -> Result<zk::Client> {
        match tokio::time::timeout(self.connect_timeout, connector.connect(&self.endpoints)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(self.error(e, "connecting")),
            Err(_) => Err(Error::Timeout {
                endpoints: self.endpoints.clone(),
                timeout: self.connect_timeout,
            }),
        }
    }

    /// A ZooKeeper error of the operation `what` as a registry error naming the ensemble.
    pub(crate) fn error(&self, e: zk::Error, what: impl Display) -> Error {
        let endpoints = self.endpoints.clone();
        match e {
            zk::Error::NoAuth => Error::PermissionDenied {
                endpoints,
                reason: format!("{what}: not allowed by the ACLs of the node or its parent"),
            },
            zk::Error::AuthFailed => Error::PermissionDenied {
                endpoints,
                reason: format!("{what}: authentication failed"),
            },
            e if is_transport(&e) => Error::Unreachable {
                endpoints,
                source: format!("{what}: {e}").into(),
            },
            zk::Error::ClientClosed => Error::Closed,
            e => Error::backend(endpoints, format!("{what}: {e}")),
        }
    }
}

/// The session a registry client lists and watches through, opened on first use and
/// opened again when it has expired.
#[derive(Debug)]
pub(crate) struct SharedSession {
    connect: std::sync::Arc<Connect>,
    timeout: Duration,
    current: Mutex<Option<zk::Client>>,
}

impl SharedSession {
    pub(crate) fn new(connect: std::sync::Arc<Connect>, timeout: Duration) -> Self {
        SharedSession {
            connect,
            timeout,
            current: Mutex::new(None),
        }
    }

    /// A client of the live session, opening a new one if there is none or it ended.
    pub(crate) async fn client(&self) -> Result<zk::Client> {
        let mut current = self.current.lock().await;
        if let Some(client) = current.as_ref().filter(|c| !c.state().is_terminated()) {
            return Ok(client.clone());
        }
        let client = self.connect.open(self.timeout, false).await?;
        tracing::debug!(session = %client.session_id(), "ZooKeeper watch session opened");
        *current = Some(client.clone());
        Ok(client)
    }
}
