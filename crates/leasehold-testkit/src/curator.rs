//! A real Apache Curator service-discovery client as an interoperability peer.
//!
//! [`CuratorPeer`] runs `peers/CuratorPeer.java` against Debian's Curator jars
//! (`libcurator-discovery-java`): a Java service registered through Curator's own
//! `ServiceDiscovery`, and Curator's own query of what is registered, so the
//! ZooKeeper backend's Curator format is checked against the code Java teams run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use crate::locate;
use crate::{Error, Result};

const INSTALL: &str = "apt-get install -y libcurator-discovery-java default-jdk-headless";
const SOURCE: &str = include_str!("../peers/CuratorPeer.java");
const JARS: [&str; 10] = [
    "curator-x-discovery",
    "curator-framework",
    "curator-client",
    "zookeeper",
    "zookeeper-jute",
    "guava",
    "jackson-core",
    "jackson-databind",
    "jackson-annotations",
    "slf4j-api",
];
/// How long the peer may take to start a JVM, connect and answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// The compiled peer: where its class is and the classpath to run it with.
#[derive(Debug)]
pub struct CuratorPeer {
    java: PathBuf,
    classpath: String,
}

impl CuratorPeer {
    /// Compiles the peer once per process (into a temp dir keyed by the source's hash)
    /// and returns it; fails naming the package to install when Java or Curator is
    /// missing.
    pub async fn get() -> Result<&'static CuratorPeer> {
        static PEER: OnceCell<CuratorPeer> = OnceCell::const_new();
        PEER.get_or_try_init(Self::build).await
    }

    async fn build() -> Result<CuratorPeer> {
        let java = locate::program("java", "LEASEHOLD_JAVA_BIN", INSTALL)?;
        let javac = locate::program("javac", "LEASEHOLD_JAVAC_BIN", INSTALL)?;
        let mut classpath = Vec::new();
        for jar in JARS {
            let path = locate::file(&Path::new("/usr/share/java").join(format!("{jar}.jar")), INSTALL)?;
            classpath.push(path.display().to_string());
        }
        let dir = std::env::temp_dir().join(format!("leasehold-curator-peer-{:016x}", fingerprint(SOURCE)));
        let io = |what: &str| {
            let what = format!("{what} {}", dir.display());
            move |source| Error::Io { what, source }
        };
        if !dir.join("CuratorPeer.class").is_file() {
            std::fs::create_dir_all(&dir).map_err(io("creating"))?;
            std::fs::write(dir.join("CuratorPeer.java"), SOURCE).map_err(io("writing the peer into"))?;
            let output = Command::new(&javac)
                .arg("-cp")
                .arg(classpath.join(":"))
                .arg("-d")
                .arg(&dir)
                .arg(dir.join("CuratorPeer.java"))
                .output()
                .await
                .map_err(|source| Error::Spawn {
                    server: "javac".into(),
                    source,
                })?;
            if !output.status.success() {
                return Err(Error::Request {
                    request: "compiling CuratorPeer.java".into(),
                    addr: dir.display().to_string(),
                    detail: String::from_utf8_lossy(&output.stderr).into_owned(),
                });
            }
        }
        classpath.insert(0, dir.display().to_string());
        Ok(CuratorPeer {
            java,
            classpath: classpath.join(":"),
        })
    }

    fn command(&self, mode: &str, connect: &str, base_path: &str, name: &str) -> Command {
        let mut command = Command::new(&self.java);
        command
            .arg("-cp")
            .arg(&self.classpath)
            .arg("CuratorPeer")
            .args([mode, connect, base_path, name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Registers one instance through Curator's `ServiceDiscovery` at
    /// `{base_path}/{name}/{id}`, and keeps it registered
    /// until the returned handle is dropped or [`unregister`](CuratorRegistration::unregister)ed.
    pub async fn register(
        &self,
        connect: &str,
        base_path: &str,
        name: &str,
        instance: &CuratorInstance<'_>,
    ) -> Result<CuratorRegistration> {
        let id = instance.id;
        let mut command = self.command("register", connect, base_path, name);
        command.args([id, instance.address, &instance.port.to_string()]);
        command.args(instance.payload.iter().map(|(k, v)| format!("{k}={v}")));
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            server: "CuratorPeer register".into(),
            source,
        })?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let registered = tokio::time::timeout(PEER_TIMEOUT, lines.next_line()).await;
        match registered {
            Ok(Ok(Some(line))) if line == "registered" => Ok(CuratorRegistration { child }),
            other => {
                let _ = child.start_kill();
                let stderr = match child.wait_with_output().await {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                Err(Error::Request {
                    request: format!("Curator register of {name}/{id}"),
                    addr: connect.to_owned(),
                    detail: format!("{other:?}; stderr: {stderr}"),
                })
            }
        }
    }

    /// Curator's `queryForInstances(name)`: each instance as Curator's
    /// `JsonInstanceSerializer` writes it, one JSON document per entry.
    pub async fn query(&self, connect: &str, base_path: &str, name: &str) -> Result<Vec<String>> {
        let child = self
            .command("query", connect, base_path, name)
            .spawn()
            .map_err(|source| Error::Spawn {
                server: "CuratorPeer query".into(),
                source,
            })?;
        let output = tokio::time::timeout(PEER_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| Error::Request {
                request: format!("Curator query of {name}"),
                addr: connect.to_owned(),
                detail: format!("no answer within {PEER_TIMEOUT:?}"),
            })?
            .map_err(|source| Error::Io {
                what: "waiting for CuratorPeer query".into(),
                source,
            })?;
        if !output.status.success() {
            return Err(Error::Request {
                request: format!("Curator query of {name}"),
                addr: connect.to_owned(),
                detail: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect())
    }
}

impl CuratorPeer {
    /// Times Curator's `ServiceDiscovery.registerService` for `count` instances of
    /// `name` (ids `i0`, `i1`, ...), one at a time (`in_flight` 1) or `in_flight` at once
    /// from as many threads, after `warmup` registrations of another service so the JVM
    /// has compiled the path. Returns the time the `count` registrations took, as
    /// measured inside the JVM (its start-up excluded).
    pub async fn bench_register(
        &self,
        connect: &str,
        base_path: &str,
        name: &str,
        count: usize,
        in_flight: usize,
        warmup: usize,
    ) -> Result<Duration> {
        let mut command = self.command("bench", connect, base_path, name);
        command.args([
            count.to_string(),
            in_flight.max(1).to_string(),
            warmup.to_string(),
        ]);
        let child = command.spawn().map_err(|source| Error::Spawn {
            server: "CuratorPeer bench".into(),
            source,
        })?;
        let output = tokio::time::timeout(PEER_TIMEOUT * 5, child.wait_with_output())
            .await
            .map_err(|_| Error::Request {
                request: format!("Curator bench of {name}"),
                addr: connect.to_owned(),
                detail: "no answer in time".into(),
            })?
            .map_err(|source| Error::Io {
                what: "waiting for CuratorPeer bench".into(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .find_map(|line| {
                line.strip_prefix("bench ")?
                    .split(' ')
                    .find_map(|f| f.strip_prefix("nanos="))
            })
            .and_then(|nanos| nanos.parse().ok())
            .map(Duration::from_nanos)
            .ok_or_else(|| Error::Request {
                request: format!("Curator bench of {name}"),
                addr: connect.to_owned(),
                detail: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
            })
    }
}

/// What the Curator peer registers: Curator's `ServiceInstance` fields, with a string
/// map as its payload.
#[derive(Clone, Copy, Debug)]
pub struct CuratorInstance<'a> {
    /// The instance id.
    pub id: &'a str,
    /// The host or IP address.
    pub address: &'a str,
    /// The port.
    pub port: u16,
    /// The payload entries.
    pub payload: &'a [(&'a str, &'a str)],
}

/// An instance registered by the Curator peer; unregistered (and the JVM stopped) when
/// dropped.
#[derive(Debug)]
pub struct CuratorRegistration {
    child: Child,
}

impl CuratorRegistration {
    /// Unregisters through Curator (closing the peer's standard input) and waits for
    /// the peer to exit.
    pub async fn unregister(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        match tokio::time::timeout(PEER_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            other => Err(Error::Request {
                request: "Curator unregister".into(),
                addr: String::new(),
                detail: format!("{other:?}"),
            }),
        }
    }

    /// Stops the peer's JVM at once, as a crash: Curator's ephemeral node then lives
    /// until ZooKeeper expires the session.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// FNV-1a, to give each version of the peer's source its own build directory.
fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
