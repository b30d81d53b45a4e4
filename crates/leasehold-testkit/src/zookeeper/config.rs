//! How a ZooKeeper server is launched: the JVM, its classpath and `zoo.cfg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{locate, Result};

pub(crate) const INSTALL: &str = "apt-get install -y zookeeper";

/// Environment variable naming a `java` to use instead of the one in `PATH`.
pub const JAVA_BIN_VAR: &str = "LEASEHOLD_JAVA_BIN";

/// Environment variable naming the directory with ZooKeeper's jars instead of
/// `/usr/share/java`.
pub const JAR_DIR_VAR: &str = "LEASEHOLD_ZOOKEEPER_JAR_DIR";

const DEFAULT_JAR_DIR: &str = "/usr/share/java";

/// Jars without which the server cannot start. `slf4j-simple` sends the server's log to
/// stderr, which the testkit sends to the member's log file.
const REQUIRED_JARS: [&str; 4] = [
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "slf4j-simple.jar",
];

/// What ZooKeeper 3.8 loads at run time. Debian's `zookeeper.jar` already names these in
/// its manifest `Class-Path`; listing the ones present keeps a jar dir without that
/// manifest working.
const RUNTIME_JARS: [&str; 13] = [
    "netty-buffer.jar",
    "netty-codec.jar",
    "netty-common.jar",
    "netty-handler.jar",
    "netty-resolver.jar",
    "netty-transport.jar",
    "netty-transport-native-epoll.jar",
    "netty-transport-native-unix-common.jar",
    "commons-cli.jar",
    "commons-io.jar",
    "jackson-databind.jar",
    "metrics-core.jar",
    "snappy-java.jar",
];

/// The JVM and classpath that run a ZooKeeper server.
#[derive(Debug, Clone)]
pub(crate) struct Launcher {
    java: PathBuf,
    classpath: String,
}

impl Launcher {
    /// Finds `java` and the jars, or says which package to install.
    pub(crate) fn locate() -> Result<Self> {
        let java = locate::program("java", JAVA_BIN_VAR, INSTALL)?;
        let jar_dir = PathBuf::from(std::env::var_os(JAR_DIR_VAR).unwrap_or_else(|| DEFAULT_JAR_DIR.into()));
        let mut jars = REQUIRED_JARS
            .iter()
            .map(|jar| locate::file(&jar_dir.join(jar), INSTALL))
            .collect::<Result<Vec<_>>>()?;
        jars.extend(
            RUNTIME_JARS
                .iter()
                .map(|jar| jar_dir.join(jar))
                .filter(|path| path.is_file()),
        );
        let classpath = std::env::join_paths(&jars)
            .expect("jar paths contain no ':'")
            .to_string_lossy()
            .into_owned();
        Ok(Launcher { java, classpath })
    }

    /// `java … <main class> <zoo.cfg>`: `ZooKeeperServerMain` for a standalone server,
    /// `QuorumPeerMain` for an ensemble member.
    pub(crate) fn command(&self, standalone: bool, config: &Path) -> Command {
        let main = if standalone {
            "org.apache.zookeeper.server.ZooKeeperServerMain"
        } else {
            "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        };
        let mut command = Command::new(&self.java);
        command
            // A small heap and the serial collector: three servers share a small machine.
            .args(["-Xmx512m", "-XX:+UseSerialGC", "-XX:-UsePerfData"])
            .arg("-Djava.net.preferIPv4Stack=true")
            .arg("-cp")
            .arg(&self.classpath)
            .arg(main)
            .arg(config)
            // Would add options we do not control, e.g. a JMX port that collides.
            .env_remove("JVMFLAGS")
            .env_remove("SERVER_JVMFLAGS");
        command
    }
}

/// One server's place in the ensemble.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) client: u16,
    pub(crate) peer: u16,
    pub(crate) election: u16,
}

/// Tick length in milliseconds. Short, so sessions may be as short as 2 ticks, and
/// followers are noticed gone within `syncLimit` ticks.
pub(crate) const TICK_MS: u32 = 200;

/// `zoo.cfg` for server `myid` (1-based) of an ensemble with `ensemble` ports, or of a
/// standalone server when `ensemble` has one entry.
pub(crate) fn zoo_cfg(data_dir: &Path, myid: usize, ensemble: &[Ports]) -> String {
    let own = ensemble[myid - 1];
    let mut cfg = format!(
        "tickTime={TICK_MS}\n\
         initLimit=50\n\
         syncLimit=10\n\
         dataDir={}\n\
         clientPort={}\n\
         clientPortAddress=127.0.0.1\n\
         maxClientCnxns=0\n\
         minSessionTimeout={}\n\
         maxSessionTimeout=120000\n\
         4lw.commands.whitelist=*\n\
         admin.enableServer=false\n",
        data_dir.display(),
        own.client,
        2 * TICK_MS,
    );
    if ensemble.len() > 1 {
        for (i, ports) in ensemble.iter().enumerate() {
            let _ = writeln!(
                cfg,
                "server.{}=127.0.0.1:{}:{}",
                i + 1,
                ports.peer,
                ports.election
            );
        }
    }
    cfg
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{zoo_cfg, Ports};

    const ENSEMBLE: [Ports; 2] = [
        Ports {
            client: 1,
            peer: 2,
            election: 3,
        },
        Ports {
            client: 4,
            peer: 5,
            election: 6,
        },
    ];

    #[test]
    fn ensemble_config_lists_every_server_and_the_own_client_port() {
        let cfg = zoo_cfg(Path::new("/d"), 2, &ENSEMBLE);
        assert!(cfg.contains("clientPort=4\n"));
        assert!(cfg.contains("dataDir=/d\n"));
        assert!(cfg.contains("server.1=127.0.0.1:2:3\nserver.2=127.0.0.1:5:6\n"));
        assert!(cfg.contains("4lw.commands.whitelist=*\n"));
    }

    #[test]
    fn standalone_config_has_no_server_lines() {
        let cfg = zoo_cfg(Path::new("/d"), 1, &ENSEMBLE[..1]);
        assert!(!cfg.contains("server."));
    }
}
