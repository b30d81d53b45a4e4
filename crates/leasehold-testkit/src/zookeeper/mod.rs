//! Real ZooKeeper servers: standalone or an ensemble, on free loopback ports, with faults.
//!
//! Each server runs Debian's ZooKeeper 3.8 jars in its own JVM with its own `zoo.cfg`,
//! data dir and log file under one temp dir. The tick is 200 ms, so clients may ask for
//! session timeouts from 400 ms up to 120 s, and four-letter commands are enabled: a
//! server counts as ready when `srvr` reports a `Mode:` (`ruok` answers before the server
//! serves).
//!
//! [`ZkSession`] speaks just enough of the client protocol to hold a session or to end one
//! on demand ([`ZkEnsemble::expire_session`]), with no client library.

mod config;
mod four_letter;
mod session;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

pub use config::{JAR_DIR_VAR, JAVA_BIN_VAR};
pub use session::ZkSession;

use crate::process::{ServerProcess, Slot};
use crate::ready::{wait_ready, PROBE_TIMEOUT, READY_TIMEOUT};
use crate::{ports, Error, MemberState, Result};
use config::{Launcher, Ports};

/// A running ZooKeeper server or ensemble, stopped when dropped.
///
/// Servers are addressed by index, `0..len()` (their `myid` is index + 1). Fault methods
/// take `&self`, so the ensemble can be shared with tasks that run while faults are
/// injected.
///
/// Dropping the ensemble resumes, SIGKILLs and reaps every server and then deletes the
/// temp dir, also when a test panics.
#[derive(Debug)]
pub struct ZkEnsemble {
    // Declared before `dir` so the processes are gone before their data dirs are removed.
    servers: Vec<Server>,
    launcher: Launcher,
    dir: TempDir,
}

#[derive(Debug)]
struct Server {
    myid: usize,
    ports: Ports,
    config: PathBuf,
    data_dir: PathBuf,
    slot: Slot,
}

impl Server {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.ports.client)
    }
}

impl ZkEnsemble {
    /// Starts one standalone server (`ZooKeeperServerMain`) and waits until it serves.
    pub async fn start_standalone() -> Result<Self> {
        Self::start(1).await
    }

    /// Starts `servers` servers: standalone for 1, else an ensemble of `QuorumPeerMain`s
    /// (3 for a real quorum). Waits until every server serves, i.e. a leader is elected
    /// and the followers have synced.
    ///
    /// A start that loses a race for a port is retried on fresh ports.
    ///
    /// # Panics
    ///
    /// If `servers` is 0.
    pub async fn start(servers: usize) -> Result<Self> {
        assert!(servers > 0, "a ZooKeeper ensemble needs at least one server");
        let launcher = Launcher::locate()?;
        let mut attempt = 1;
        loop {
            let ensemble = Self::lay_out(launcher.clone(), servers)?;
            match ensemble.boot().await {
                Ok(()) => {
                    tracing::info!(connect = %ensemble.connect_string(), "ZooKeeper ready");
                    return Ok(ensemble);
                }
                Err(e) if ports::is_port_race(&e) && attempt < ports::START_ATTEMPTS => {
                    tracing::warn!(attempt, "ZooKeeper lost a port race, starting on fresh ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reserves ports and writes every server's `zoo.cfg` and `myid`; starts nothing.
    fn lay_out(launcher: Launcher, servers: usize) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("leasehold-zookeeper-")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir for ZooKeeper", e))?;
        let ports: Vec<Ports> = ports::reserve(3 * servers)?
            .chunks(3)
            .map(|p| Ports {
                client: p[0],
                peer: p[1],
                election: p[2],
            })
            .collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(index, own)| {
                let myid = index + 1;
                let data_dir = dir.path().join(format!("server{myid}"));
                let config = dir.path().join(format!("zoo{myid}.cfg"));
                let cfg = config::zoo_cfg(&data_dir, myid, &ports);
                std::fs::write(&config, cfg)
                    .map_err(|e| Error::io(format!("writing {}", config.display()), e))?;
                let slot = Slot::new(
                    format!("ZooKeeper server {index} (client 127.0.0.1:{})", own.client),
                    dir.path().join(format!("server{myid}.log")),
                );
                let server = Server {
                    myid,
                    ports: *own,
                    config,
                    data_dir,
                    slot,
                };
                server.create_data_dir()?;
                Ok(server)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ZkEnsemble {
            servers,
            launcher,
            dir,
        })
    }

    async fn boot(&self) -> Result<()> {
        for index in 0..self.servers.len() {
            self.spawn(index)?;
        }
        for server in &self.servers {
            wait_ready(&server.slot, READY_TIMEOUT, || serving(server.endpoint())).await?;
        }
        Ok(())
    }

    fn spawn(&self, index: usize) -> Result<()> {
        let server = &self.servers[index];
        let standalone = self.servers.len() == 1;
        let command = self.launcher.command(standalone, &server.config);
        let process = ServerProcess::spawn(&server.slot.name, command, &server.slot.log)?;
        server.slot.install(process);
        Ok(())
    }

    fn server(&self, index: usize) -> Result<&Server> {
        self.servers.get(index).ok_or(Error::NoSuchMember {
            index,
            len: self.servers.len(),
        })
    }

    /// How many servers there are (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: an ensemble has at least one server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The client endpoints of all servers, `127.0.0.1:PORT`, in server order.
    pub fn endpoints(&self) -> Vec<String> {
        self.servers.iter().map(Server::endpoint).collect()
    }

    /// The client endpoint of server `index`, `127.0.0.1:PORT`.
    ///
    /// # Panics
    ///
    /// If there is no such server.
    pub fn endpoint(&self, index: usize) -> String {
        self.servers[index].endpoint()
    }

    /// The connect string clients take: `127.0.0.1:p1,127.0.0.1:p2,…`.
    pub fn connect_string(&self) -> String {
        self.endpoints().join(",")
    }

    /// A leasehold registry URL for this ensemble: `zk://h1:p1,h2:p2/root`.
    ///
    /// `root` may start with `/` or not; an empty root gives no path.
    pub fn url(&self, root: &str) -> String {
        crate::registry_url("zk", &self.endpoints(), root)
    }

    /// What server `index` is doing.
    pub fn state(&self, index: usize) -> Result<MemberState> {
        Ok(self.server(index)?.slot.state())
    }

    /// The log file of server `index` (all its runs, appended).
    pub fn log_path(&self, index: usize) -> Result<&Path> {
        Ok(&self.server(index)?.slot.log)
    }

    /// The temp dir holding every server's config, data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs server `index` and waits for it to exit. Its data stays; a stopped server
    /// stays stopped.
    pub async fn kill(&self, index: usize) -> Result<()> {
        self.server(index)?.slot.kill().await;
        Ok(())
    }

    /// Starts server `index` again on the same ports with the same data (killing it first
    /// if it runs) and waits until it serves.
    ///
    /// "Serves" means `srvr` reports a mode when enough servers run to form a quorum, else
    /// merely that it answers `srvr`, so servers of a fully stopped ensemble can be
    /// restarted one by one.
    pub async fn restart(&self, index: usize) -> Result<()> {
        let server = self.server(index)?;
        server.slot.kill().await;
        tracing::info!(server = %server.slot.name, "restart");
        self.spawn(index)?;
        self.wait_serving(index).await
    }

    async fn wait_serving(&self, index: usize) -> Result<()> {
        let server = &self.servers[index];
        let running = self
            .servers
            .iter()
            .filter(|s| s.slot.state() == MemberState::Running)
            .count();
        if running > self.servers.len() / 2 {
            wait_ready(&server.slot, READY_TIMEOUT, || serving(server.endpoint())).await
        } else {
            wait_ready(&server.slot, READY_TIMEOUT, || answering(server.endpoint())).await
        }
    }

    /// Freezes server `index` with SIGSTOP: it keeps its ports open but answers nothing,
    /// so its clients' sessions time out. Pausing a paused server does nothing.
    pub fn pause(&self, index: usize) -> Result<()> {
        self.server(index)?.slot.pause()
    }

    /// Lets a paused server `index` run again (SIGCONT). Resuming a running server does
    /// nothing.
    pub fn resume(&self, index: usize) -> Result<()> {
        self.server(index)?.slot.resume()
    }

    /// Kills server `index`, deletes its data and starts it empty on the same ports.
    ///
    /// Standalone, that is a brand-new ZooKeeper: no nodes, no sessions, zxid back to 0
    /// (clients that saw a later zxid are refused until they make a new session). In an
    /// ensemble the wiped server resyncs from the leader, as a replaced host would.
    pub async fn wipe(&self, index: usize) -> Result<()> {
        let server = self.server(index)?;
        server.slot.kill().await;
        tracing::info!(server = %server.slot.name, "wipe");
        match std::fs::remove_dir_all(&server.data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("deleting {}", server.data_dir.display()), e))
            }
            _ => {}
        }
        server.create_data_dir()?;
        self.spawn(index)?;
        self.wait_serving(index).await
    }

    /// The answer of server `index` to the `srvr` four-letter command.
    pub async fn srvr(&self, index: usize) -> Result<String> {
        let endpoint = self.server(index)?.endpoint();
        tokio::time::timeout(PROBE_TIMEOUT, four_letter::send(&endpoint, "srvr"))
            .await
            .map_err(|_| Error::request("srvr", &endpoint, format!("no answer within {PROBE_TIMEOUT:?}")))?
            .map_err(|e| Error::request("srvr", &endpoint, e))
    }

    /// The mode of server `index` from `srvr`: `standalone`, `leader` or `follower`, or
    /// `None` while it does not serve (e.g. no quorum).
    pub async fn mode(&self, index: usize) -> Result<Option<String>> {
        Ok(four_letter::mode(&self.srvr(index).await?).map(str::to_owned))
    }

    /// The index of the server whose mode is `leader` (or the standalone server), waiting
    /// up to 30 s for one among the running, unpaused servers.
    pub async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for (index, server) in self.servers.iter().enumerate() {
                if server.slot.state() != MemberState::Running {
                    continue;
                }
                if let Ok(Some(mode)) = self.mode(index).await {
                    if mode == "leader" || mode == "standalone" {
                        return Ok(index);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader(READY_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the session `session_id` now, as if it had expired: attaches to it with its
    /// `password` through a running server and closes it. The session's ephemeral nodes
    /// are deleted and its client is told the session expired when it next talks to the
    /// ensemble.
    ///
    /// Fails with [`Error::SessionNotLive`] if the session is already gone (or the password
    /// is wrong).
    pub async fn expire_session(&self, session_id: i64, password: &[u8]) -> Result<()> {
        let mut last_error = Error::NoLiveMember("a ZooKeeper session close".to_owned());
        for server in self
            .servers
            .iter()
            .filter(|s| s.slot.state() == MemberState::Running)
        {
            let attached = ZkSession::attach(&server.endpoint(), session_id, password).await;
            match attached {
                Ok(session) => {
                    tracing::info!(
                        session = format_args!("{session_id:#x}"),
                        "expiring ZooKeeper session"
                    );
                    return session.close().await;
                }
                Err(e @ Error::SessionNotLive { .. }) => return Err(e),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

impl Server {
    /// The data dir with the `myid` file an ensemble member reads at startup.
    fn create_data_dir(&self) -> Result<()> {
        let io = |what: String| move |e| Error::io(what, e);
        std::fs::create_dir_all(&self.data_dir)
            .map_err(io(format!("creating {}", self.data_dir.display())))?;
        let myid = self.data_dir.join("myid");
        std::fs::write(&myid, format!("{}\n", self.myid)).map_err(io(format!("writing {}", myid.display())))
    }
}

/// Ready probe: `srvr` reports a mode, so the server serves clients.
async fn serving(endpoint: String) -> Result<(), String> {
    let answer = four_letter::send(&endpoint, "srvr")
        .await
        .map_err(|e| format!("srvr: {e}"))?;
    match four_letter::mode(&answer) {
        Some(_) => Ok(()),
        None => Err(format!("srvr: {}", answer.trim())),
    }
}

/// Weaker probe for a server without a quorum: it answers `srvr` at all.
async fn answering(endpoint: String) -> Result<(), String> {
    let answer = four_letter::send(&endpoint, "srvr")
        .await
        .map_err(|e| format!("srvr: {e}"))?;
    if answer.is_empty() {
        Err("srvr: empty answer".to_owned())
    } else {
        Ok(())
    }
}
