//! Real etcd servers: one node or a cluster, on free loopback ports, with faults.
//!
//! Each member gets a client and a peer port on 127.0.0.1, its own data dir and log file
//! under one temp dir, and short raft timings (heartbeat 100 ms, election 1 s) so leaders
//! are elected within a second or two. Every other setting that a client can notice is
//! etcd's default, so a backend
//! tested here meets the limits of a real deployment (e.g. at most 128 operations in one
//! transaction).
//!
//! Talking to the cluster (health, put/get, revision, compaction, leader) goes through
//! the v3 JSON gateway that etcd serves on the client port, so no client library and no
//! `etcdctl` is needed.

mod gateway;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use crate::process::{ServerProcess, Slot};
use crate::ready::{wait_ready, READY_TIMEOUT};
use crate::{locate, ports, Error, MemberState, Result};

const INSTALL: &str = "apt-get install -y etcd-server";

/// Environment variable naming an etcd binary to use instead of the one in `PATH`.
pub const ETCD_BIN_VAR: &str = "LEASEHOLD_ETCD_BIN";

/// A running etcd cluster of one or more members, stopped when dropped.
///
/// Members are addressed by index, `0..len()`. Fault methods take `&self`, so the cluster
/// can be shared (e.g. in an `Arc`) with tasks that run while faults are injected.
///
/// Dropping the cluster resumes, SIGKILLs and reaps every member and then deletes the temp
/// dir, also when a test panics.
#[derive(Debug)]
pub struct EtcdCluster {
    // Declared before `dir` so the processes are gone before their data dirs are removed.
    members: Vec<Member>,
    program: PathBuf,
    token: String,
    dir: TempDir,
}

/// Whether a starting member founds a cluster or joins one that runs.
#[derive(Debug, Clone, Copy)]
enum ClusterState {
    New,
    Existing,
}

impl ClusterState {
    fn flag(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    slot: Slot,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

impl EtcdCluster {
    /// Starts a single-node etcd and waits until it is healthy.
    pub async fn start_single() -> Result<Self> {
        Self::start(1).await
    }

    /// Starts a cluster of `members` nodes (3 for a real quorum) and waits until every
    /// member is healthy, i.e. a leader is elected and quorum reads go through.
    ///
    /// A start that loses a race for a port is retried on fresh ports.
    ///
    /// # Panics
    ///
    /// If `members` is 0.
    pub async fn start(members: usize) -> Result<Self> {
        assert!(members > 0, "an etcd cluster needs at least one member");
        let program = locate::program("etcd", ETCD_BIN_VAR, INSTALL)?;
        let mut attempt = 1;
        loop {
            let cluster = Self::lay_out(program.clone(), members)?;
            match cluster.boot().await {
                Ok(()) => {
                    tracing::info!(endpoints = ?cluster.endpoints(), "etcd cluster ready");
                    return Ok(cluster);
                }
                Err(e) if ports::is_port_race(&e) && attempt < ports::START_ATTEMPTS => {
                    tracing::warn!(attempt, "etcd lost a port race, starting on fresh ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reserves ports and prepares the temp dir; starts nothing.
    fn lay_out(program: PathBuf, members: usize) -> Result<Self> {
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::Builder::new()
            .prefix("leasehold-etcd-")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir for etcd", e))?;
        let ports = ports::reserve(2 * members)?;
        let members = ports
            .chunks(2)
            .enumerate()
            .map(|(i, pair)| {
                let name = format!("m{i}");
                let slot = Slot::new(
                    format!("etcd member {i} (client 127.0.0.1:{})", pair[0]),
                    dir.path().join(format!("{name}.log")),
                );
                Member {
                    data_dir: dir.path().join(&name),
                    name,
                    client_port: pair[0],
                    peer_port: pair[1],
                    slot,
                }
            })
            .collect();
        // Unique per cluster, so a stray member of another cluster on a reused port can
        // never join this one.
        let token = format!(
            "leasehold-testkit-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        Ok(EtcdCluster {
            members,
            program,
            token,
            dir,
        })
    }

    async fn boot(&self) -> Result<()> {
        for index in 0..self.members.len() {
            self.spawn(index, ClusterState::New)?;
        }
        for member in &self.members {
            let endpoint = member.endpoint();
            wait_ready(&member.slot, READY_TIMEOUT, || gateway::health(&endpoint)).await?;
        }
        Ok(())
    }

    fn spawn(&self, index: usize, state: ClusterState) -> Result<()> {
        let member = &self.members[index];
        let client_url = format!("http://{}", member.endpoint());
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new(&self.program);
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            // Ignored by etcd once the data dir holds a WAL, so restarts reuse this line.
            .args(["--initial-cluster-state", state.flag()])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            // Otherwise `wipe` could not re-add a member until every peer connection is
            // 5 s old. Only membership changes read this, and backends make none.
            .arg("--strict-reconfig-check=false")
            .args(["--logger", "zap", "--log-outputs", "stderr"]);
        // An ETCD_* variable in the test's environment would override these flags.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        let process = ServerProcess::spawn(&member.slot.name, command, &member.slot.log)?;
        member.slot.install(process);
        Ok(())
    }

    fn member(&self, index: usize) -> Result<&Member> {
        self.members.get(index).ok_or(Error::NoSuchMember {
            index,
            len: self.members.len(),
        })
    }

    /// How many members the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The client endpoints of all members, `127.0.0.1:PORT`, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The client endpoint of member `index`, `127.0.0.1:PORT`.
    ///
    /// # Panics
    ///
    /// If there is no such member.
    pub fn endpoint(&self, index: usize) -> String {
        self.members[index].endpoint()
    }

    /// The client URLs of all members, `http://127.0.0.1:PORT`.
    pub fn client_urls(&self) -> Vec<String> {
        self.endpoints()
            .into_iter()
            .map(|e| format!("http://{e}"))
            .collect()
    }

    /// The client URL of member 0, `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.members[0].endpoint())
    }

    /// A leasehold registry URL for this cluster: `etcd://h1:p1,h2:p2/root`.
    ///
    /// `root` may start with `/` or not; an empty root gives no path.
    pub fn url(&self, root: &str) -> String {
        crate::registry_url("etcd", &self.endpoints(), root)
    }

    /// What member `index` is doing.
    pub fn state(&self, index: usize) -> Result<MemberState> {
        Ok(self.member(index)?.slot.state())
    }

    /// The log file of member `index` (all its runs, appended).
    pub fn log_path(&self, index: usize) -> Result<&Path> {
        Ok(&self.member(index)?.slot.log)
    }

    /// The temp dir holding every member's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs member `index` and waits for it to exit. Its data stays; a stopped member
    /// stays stopped.
    pub async fn kill(&self, index: usize) -> Result<()> {
        self.member(index)?.slot.kill().await;
        Ok(())
    }

    /// Starts member `index` again on the same ports with the same data (killing it first
    /// if it runs) and waits until it serves.
    ///
    /// "Serves" means healthy (it has a leader) when enough members run to form a quorum,
    /// else merely answering HTTP, so members of a fully stopped cluster can be restarted
    /// one by one.
    pub async fn restart(&self, index: usize) -> Result<()> {
        let member = self.member(index)?;
        member.slot.kill().await;
        tracing::info!(server = %member.slot.name, "restart");
        self.spawn(index, ClusterState::New)?;
        self.wait_serving(index).await
    }

    async fn wait_serving(&self, index: usize) -> Result<()> {
        let member = &self.members[index];
        let endpoint = member.endpoint();
        let running = self
            .members
            .iter()
            .filter(|m| m.slot.state() == MemberState::Running)
            .count();
        if running > self.members.len() / 2 {
            wait_ready(&member.slot, READY_TIMEOUT, || gateway::health(&endpoint)).await
        } else {
            wait_ready(&member.slot, READY_TIMEOUT, || gateway::version(&endpoint)).await
        }
    }

    /// How many watchers member `index` serves: which member a client's watches went to.
    pub async fn watchers(&self, index: usize) -> Result<u64> {
        gateway::watchers(&self.endpoint(index)).await
    }

    /// Freezes member `index` with SIGSTOP: it keeps its ports open but answers nothing,
    /// like a hung host. Pausing a paused member does nothing.
    pub fn pause(&self, index: usize) -> Result<()> {
        self.member(index)?.slot.pause()
    }

    /// Lets a paused member `index` run again (SIGCONT). Resuming a running member does
    /// nothing.
    pub fn resume(&self, index: usize) -> Result<()> {
        self.member(index)?.slot.resume()
    }

    /// Kills member `index`, deletes its data and starts it empty on the same ports.
    ///
    /// For a single node that is a brand-new cluster (new cluster id, revision back to 1,
    /// no keys, no leases), as after an operator wiped and redeployed the registry.
    ///
    /// A member of a larger cluster cannot rejoin under its old identity with an empty
    /// data dir, so it is replaced as an operator replaces a failed disk: removed from the
    /// cluster, added back as a new member on the same peer URL, and started to join the
    /// existing cluster, from which it receives the data. That needs the other members to
    /// keep a quorum.
    pub async fn wipe(&self, index: usize) -> Result<()> {
        let member = self.member(index)?;
        member.slot.kill().await;
        tracing::info!(server = %member.slot.name, "wipe");
        match std::fs::remove_dir_all(&member.data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("deleting {}", member.data_dir.display()), e))
            }
            _ => {}
        }
        let state = if self.members.len() == 1 {
            ClusterState::New
        } else {
            self.replace_member(index).await?;
            ClusterState::Existing
        };
        self.spawn(index, state)?;
        self.wait_serving(index).await
    }

    /// Retries the replacement until it goes through: right after a membership change or
    /// a kill the cluster may refuse the next change for a moment.
    async fn replace_member(&self, index: usize) -> Result<()> {
        let peer_url = self.members[index].peer_url();
        // Without a leader the change would hang until the request times out.
        self.leader().await?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let replaced = self
                .on_any_member("member replacement", |addr| {
                    let peer_url = peer_url.clone();
                    async move { gateway::replace_member(&addr, &peer_url).await }
                })
                .await;
            match replaced {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => tracing::debug!(error = %e, "member replacement refused, retrying"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Compacts the key-value history up to `revision` (physically, so it is done when
    /// this returns). Watches from older revisions then fail with "compacted".
    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.on_any_member("POST /v3/kv/compaction", |addr| async move {
            gateway::compact(&addr, revision).await
        })
        .await
    }

    /// The cluster's current revision.
    pub async fn current_revision(&self) -> Result<i64> {
        self.on_any_member("POST /v3/kv/range", |addr| async move {
            gateway::revision(&addr).await
        })
        .await
    }

    /// Writes `key` = `value` (without a lease) and returns the revision of the write.
    /// For seeding foreign or corrupt data that a backend must cope with.
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<i64> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.on_any_member("POST /v3/kv/put", |addr| async move {
            gateway::put(&addr, key, value).await
        })
        .await
    }

    /// Reads `key`: its value, or `None` if it does not exist.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let key = key.as_ref();
        self.on_any_member("POST /v3/kv/range", |addr| async move {
            gateway::get(&addr, key).await
        })
        .await
    }

    /// Adds an etcd user `user` with `password` whose role (named after it) may read and
    /// write only the keys under `prefix`, as an operator scopes one service's
    /// credentials. Call before [`enable_auth`](Self::enable_auth).
    pub async fn add_user_with_prefix(&self, user: &str, password: &str, prefix: &str) -> Result<()> {
        let mut range_end = prefix.as_bytes().to_vec();
        if let Some(last) = range_end.last_mut() {
            *last += 1;
        }
        let range_end = &range_end;
        self.on_any_member("POST /v3/auth/user/add", |addr| async move {
            gateway::add_user(&addr, user, password, prefix.as_bytes(), range_end).await
        })
        .await
    }

    /// Turns etcd's authentication on, with a `root` user of `root_password`. From then
    /// on every client must authenticate, and this cluster's own calls through the JSON
    /// gateway ([`put`](Self::put), [`get`](Self::get), [`compact`](Self::compact),
    /// [`current_revision`](Self::current_revision)) are refused; faults still work.
    pub async fn enable_auth(&self, root_password: &str) -> Result<()> {
        self.on_any_member("POST /v3/auth/enable", |addr| async move {
            gateway::enable_auth(&addr, root_password).await
        })
        .await
    }

    /// Runs `call` against the running, unpaused members in order until one succeeds.
    async fn on_any_member<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut last_error = Error::NoLiveMember(what.to_owned());
        for member in self.live_members() {
            match call(member.endpoint()).await {
                Ok(value) => return Ok(value),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn live_members(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| m.slot.state() == MemberState::Running)
    }

    /// The index of the current leader, waiting (up to 30 s) until every running, unpaused
    /// member that answers names the same leader and that leader is one of them.
    ///
    /// Right after the leader is killed or paused this waits for the election of a new
    /// one, so `kill(leader().await?)` followed by `leader()` gives the new leader.
    pub async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(index) = self.agreed_leader().await {
                return Ok(index);
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader(READY_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<usize> {
        let mut statuses = Vec::new();
        for (index, member) in self.members.iter().enumerate() {
            if member.slot.state() == MemberState::Running {
                if let Ok(status) = gateway::status(&member.endpoint()).await {
                    statuses.push((index, status));
                }
            }
        }
        let (_, first) = statuses.first()?;
        let leader = first.leader;
        if leader == 0 || statuses.iter().any(|(_, s)| s.leader != leader) {
            return None;
        }
        statuses
            .iter()
            .find(|(_, s)| s.member_id == leader)
            .map(|(index, _)| *index)
    }
}
