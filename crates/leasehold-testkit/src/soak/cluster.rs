//! The cluster under soak: its member faults, and a plain client of its own that lists
//! and deletes keys the way another process would.
//!
//! The plain client never goes through leasehold, so a bug in a backend cannot hide
//! itself: etcd is read through its JSON gateway with linearizable reads, ZooKeeper
//! through the testkit's raw session after a `sync`. A member that is frozen or has no
//! quorum gives no answer (a timeout) or an error, never a stale one, and an observation
//! that fails is no observation.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};

use crate::{http, Error, EtcdCluster, MemberState, Result, ZkEnsemble, ZkSession};

/// How long one member may take to answer the plain client before the next is tried.
const MEMBER_TIMEOUT: Duration = Duration::from_millis(1500);

/// One key the plain client found, with its raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// The key (etcd) or node path (ZooKeeper).
    pub key: String,
    /// Its value.
    pub value: Vec<u8>,
}

/// A cluster the soak can fault and observe.
#[async_trait]
pub trait SoakCluster: Send + Sync + 'static {
    /// `etcd` or `ZooKeeper`, for the report.
    fn backend(&self) -> &'static str;
    /// The registry URL of the cluster with `root`.
    fn url(&self, root: &str) -> String;
    /// How many members it has.
    fn members(&self) -> usize;
    /// What member `index` is doing.
    fn state(&self, index: usize) -> MemberState;
    /// SIGKILLs member `index`.
    async fn kill(&self, index: usize) -> Result<()>;
    /// Starts member `index` again with its data and waits until it serves.
    async fn restart(&self, index: usize) -> Result<()>;
    /// SIGSTOPs member `index`.
    fn pause(&self, index: usize) -> Result<()>;
    /// SIGCONTs member `index`.
    fn resume(&self, index: usize) -> Result<()>;
    /// Replaces member `index` by an empty one that resyncs from the others.
    async fn wipe(&self, index: usize) -> Result<()>;
    /// Whether [`compact`](Self::compact) does anything.
    fn compacts(&self) -> bool;
    /// Compacts the history up to the current revision.
    async fn compact(&self) -> Result<()>;
    /// Every key under `{root}/{service}/` for each of `services`, read so that it
    /// reflects every write committed before the call.
    async fn list(&self, root: &str, services: &[String]) -> Result<Vec<ListedKey>>;
    /// Deletes `key` as an operator would; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
}

/// A 3-member (or any size) etcd cluster under soak.
#[derive(Debug)]
pub struct EtcdSoak {
    cluster: EtcdCluster,
}

impl EtcdSoak {
    /// Soaks `cluster`.
    pub fn new(cluster: EtcdCluster) -> Self {
        EtcdSoak { cluster }
    }

    /// The cluster.
    pub fn cluster(&self) -> &EtcdCluster {
        &self.cluster
    }

    fn running(&self) -> Vec<String> {
        (0..self.cluster.len())
            .filter(|&i| self.state(i) == MemberState::Running)
            .map(|i| self.cluster.endpoint(i))
            .collect()
    }

    /// `call` on each running member in turn, each bounded by [`MEMBER_TIMEOUT`], until
    /// one answers.
    async fn on_a_member(&self, what: &str, body: &Value) -> Result<Value> {
        let mut last = Error::NoLiveMember(what.to_owned());
        for addr in self.running() {
            match tokio::time::timeout(MEMBER_TIMEOUT, http::post_json(&addr, what, body)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::request(what, &addr, format!("no answer within {MEMBER_TIMEOUT:?}")),
            }
        }
        Err(last)
    }
}

/// The end of the range of every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn decode(addr_what: &str, field: Option<&Value>) -> Result<Vec<u8>> {
    let encoded = field.and_then(Value::as_str).unwrap_or("");
    BASE64
        .decode(encoded)
        .map_err(|e| Error::request(addr_what, "etcd", format!("bad base64 {encoded:?}: {e}")))
}

#[async_trait]
impl SoakCluster for EtcdSoak {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    fn url(&self, root: &str) -> String {
        self.cluster.url(root)
    }

    fn members(&self) -> usize {
        self.cluster.len()
    }

    fn state(&self, index: usize) -> MemberState {
        self.cluster.state(index).unwrap_or(MemberState::Stopped)
    }

    async fn kill(&self, index: usize) -> Result<()> {
        self.cluster.kill(index).await
    }

    async fn restart(&self, index: usize) -> Result<()> {
        self.cluster.restart(index).await
    }

    fn pause(&self, index: usize) -> Result<()> {
        self.cluster.pause(index)
    }

    fn resume(&self, index: usize) -> Result<()> {
        self.cluster.resume(index)
    }

    async fn wipe(&self, index: usize) -> Result<()> {
        self.cluster.wipe(index).await
    }

    fn compacts(&self) -> bool {
        true
    }

    async fn compact(&self) -> Result<()> {
        let revision = self.cluster.current_revision().await?;
        self.cluster.compact(revision).await
    }

    async fn list(&self, root: &str, services: &[String]) -> Result<Vec<ListedKey>> {
        let mut listed = Vec::new();
        for service in services {
            let prefix = format!("{}/{service}/", root.trim_end_matches('/'));
            // A range is linearizable unless asked otherwise: it goes through the leader.
            let body = json!({
                "key": BASE64.encode(prefix.as_bytes()),
                "range_end": BASE64.encode(prefix_end(prefix.as_bytes())),
            });
            let answer = self.on_a_member("/v3/kv/range", &body).await?;
            for kv in answer.get("kvs").and_then(Value::as_array).into_iter().flatten() {
                let key = decode("/v3/kv/range", kv.get("key"))?;
                listed.push(ListedKey {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    value: decode("/v3/kv/range", kv.get("value"))?,
                });
            }
        }
        Ok(listed)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let body = json!({ "key": BASE64.encode(key.as_bytes()) });
        let answer = self.on_a_member("/v3/kv/deleterange", &body).await?;
        let deleted = answer.get("deleted").and_then(Value::as_str).unwrap_or("0");
        Ok(deleted != "0")
    }
}

/// A ZooKeeper ensemble under soak.
#[derive(Debug)]
pub struct ZkSoak {
    ensemble: ZkEnsemble,
    /// The plain client's session and the server it is on, reused between polls and
    /// opened again on another server after any failure.
    session: Mutex<Option<(usize, ZkSession)>>,
    next_server: AtomicUsize,
}

/// Session timeout of the plain client's own session (it holds no ephemeral nodes).
const PLAIN_SESSION_TIMEOUT: Duration = Duration::from_secs(4);

impl ZkSoak {
    /// Soaks `ensemble`.
    pub fn new(ensemble: ZkEnsemble) -> Self {
        ZkSoak {
            ensemble,
            session: Mutex::new(None),
            next_server: Default::default(),
        }
    }

    /// The ensemble.
    pub fn ensemble(&self) -> &ZkEnsemble {
        &self.ensemble
    }

    /// The plain session, opened on the next running server if there is none (or its
    /// server is no longer running).
    async fn session(&self) -> Result<MutexGuard<'_, Option<(usize, ZkSession)>>> {
        let mut guard = self.session.lock().await;
        if let Some((index, _)) = guard.as_ref() {
            if self.state(*index) != MemberState::Running {
                *guard = None;
            }
        }
        if guard.is_some() {
            return Ok(guard);
        }
        let servers = self.ensemble.len();
        let mut last = Error::NoLiveMember("a plain ZooKeeper session".to_owned());
        for _ in 0..servers {
            let index = self.next_server.fetch_add(1, Ordering::Relaxed) % servers;
            if self.state(index) != MemberState::Running {
                continue;
            }
            let endpoint = self.ensemble.endpoint(index);
            match tokio::time::timeout(MEMBER_TIMEOUT, ZkSession::open(&endpoint, PLAIN_SESSION_TIMEOUT))
                .await
            {
                Ok(Ok(session)) => {
                    *guard = Some((index, session));
                    return Ok(guard);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = Error::request("ZooKeeper connect", &endpoint, "timed out"),
            }
        }
        Err(last)
    }

    /// Runs `work` on the plain session, bounded in time; any failure drops the session
    /// so the next call starts afresh on another server.
    async fn on_session<T, F>(&self, work: F) -> Result<T>
    where
        F: for<'s> FnOnce(&'s mut ZkSession) -> Pin<Box<dyn Future<Output = Result<T>> + Send + 's>>,
    {
        let mut guard = self.session().await?;
        let (index, session) = guard.as_mut().expect("session() opened one");
        let endpoint = self.ensemble.endpoint(*index);
        let outcome = match tokio::time::timeout(MEMBER_TIMEOUT * 2, work(session)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::request("ZooKeeper plain read", &endpoint, "timed out")),
        };
        if outcome.is_err() {
            *guard = None;
        }
        outcome
    }
}

async fn zk_list(session: &mut ZkSession, root: String, services: Vec<String>) -> Result<Vec<ListedKey>> {
    let root = root.trim_end_matches('/').to_owned();
    session.sync(if root.is_empty() { "/" } else { &root }).await?;
    let mut listed = Vec::new();
    for service in &services {
        let parent = format!("{root}/{service}");
        let Some(children) = session.children(&parent).await? else {
            continue;
        };
        for child in children {
            let path = format!("{parent}/{child}");
            // A node deleted between the two reads is simply not listed.
            if let Some(value) = session.data(&path).await? {
                listed.push(ListedKey { key: path, value });
            }
        }
    }
    Ok(listed)
}

#[async_trait]
impl SoakCluster for ZkSoak {
    fn backend(&self) -> &'static str {
        "ZooKeeper"
    }

    fn url(&self, root: &str) -> String {
        self.ensemble.url(root)
    }

    fn members(&self) -> usize {
        self.ensemble.len()
    }

    fn state(&self, index: usize) -> MemberState {
        self.ensemble.state(index).unwrap_or(MemberState::Stopped)
    }

    async fn kill(&self, index: usize) -> Result<()> {
        self.ensemble.kill(index).await
    }

    async fn restart(&self, index: usize) -> Result<()> {
        self.ensemble.restart(index).await
    }

    fn pause(&self, index: usize) -> Result<()> {
        self.ensemble.pause(index)
    }

    fn resume(&self, index: usize) -> Result<()> {
        self.ensemble.resume(index)
    }

    async fn wipe(&self, index: usize) -> Result<()> {
        self.ensemble.wipe(index).await
    }

    fn compacts(&self) -> bool {
        false
    }

    async fn compact(&self) -> Result<()> {
        Ok(())
    }

    async fn list(&self, root: &str, services: &[String]) -> Result<Vec<ListedKey>> {
        let (root, services) = (root.to_owned(), services.to_vec());
        self.on_session(move |session| Box::pin(zk_list(session, root, services)))
            .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.on_session(move |session| Box::pin(async move { session.delete(&key).await }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/soak/a/"), b"/soak/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
