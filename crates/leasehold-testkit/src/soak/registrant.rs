//! Registrant processes: programs, separate from the test, that register instances and
//! hold them, and that the soak kills (SIGKILL) and freezes (SIGSTOP) like real hosts.
//!
//! The process is the soak test's own binary run again with one test selected and
//! [`CHILD_VAR`] set: [`run_if_child`], called first thing in the soak test, then
//! registers what the variable says and never returns. Re-running the test binary is what
//! lets the registrant use whichever backend the test links (etcd, ZooKeeper) without the
//! testkit depending on any backend crate, and needs no second build step: the binary is
//! the one `cargo test` just built.
//!
//! Protocol: the child prints `leasehold-soak-registrant: registered {id}` on stdout when
//! `register` for `id` returns, and exits when its stdin closes, so it never outlives the
//! test (also when the test is SIGKILLed).

use std::process::Stdio;
use std::time::Duration;

use leasehold::{Instance, RegisterOptions, Registry};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use super::Connect;

/// Environment variable that makes the soak test binary a registrant: the registry URL,
/// TTL and instances it registers (see [`RegistrantSpec::encode`]).
pub const CHILD_VAR: &str = "LEASEHOLD_SOAK_REGISTRANT";

/// Marker of the child's reports on stdout (anything else there is libtest's).
const REPORT: &str = "leasehold-soak-registrant: registered ";

/// How long a failed connect or register waits before it is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// What one registrant process registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrantSpec {
    /// The registry URL.
    pub url: String,
    /// TTL of its registrations.
    pub ttl: Duration,
    /// `(service, id)` of each instance.
    pub instances: Vec<(String, String)>,
}

impl RegistrantSpec {
    /// The value of [`CHILD_VAR`]: `ttl_ms|url|service/id|service/id…`.
    pub fn encode(&self) -> String {
        let mut parts = vec![self.ttl.as_millis().to_string(), self.url.clone()];
        parts.extend(self.instances.iter().map(|(s, id)| format!("{s}/{id}")));
        parts.join("|")
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(value: &str) -> Option<Self> {
        let mut parts = value.split('|');
        let ttl = Duration::from_millis(parts.next()?.parse().ok()?);
        let url = parts.next()?.to_owned();
        let instances = parts
            .map(|p| p.split_once('/').map(|(s, id)| (s.to_owned(), id.to_owned())))
            .collect::<Option<Vec<_>>>()?;
        Some(RegistrantSpec { url, ttl, instances })
    }
}

/// If this process was started as a registrant (by the soak), registers and holds its
/// instances and never returns (the process exits when the soak closes its stdin);
/// otherwise returns at once.
///
/// Call it first thing in the soak test, with the same `connect` the soak gets. The
/// registrant logs to the stderr it shares with the test, filtered by `RUST_LOG`.
pub async fn run_if_child(connect: &Connect) {
    let Ok(value) = std::env::var(CHILD_VAR) else {
        return;
    };
    let spec = RegistrantSpec::decode(&value)
        .unwrap_or_else(|| panic!("{CHILD_VAR}={value:?} is not a registrant spec"));
    // Its log (with `RUST_LOG`) goes to the stderr it shares with the test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    tokio::spawn(async {
        // EOF (or an error) on stdin: the soak is gone or done with us.
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        std::process::exit(0);
    });
    let registry = loop {
        match connect(spec.url.clone()).await {
            Ok(registry) => break registry,
            Err(e) => {
                eprintln!("registrant: connect to {} failed, retrying: {e}", spec.url);
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let mut held = Vec::new();
    for (service, id) in &spec.instances {
        held.push(register(&*registry, service, id, spec.ttl).await);
        println!("{REPORT}{id}");
    }
    std::future::pending::<()>().await;
    drop(held);
}

/// Registers one instance, retrying until it is registered, as a service would at
/// startup.
pub(crate) async fn register(
    registry: &dyn Registry,
    service: &str,
    id: &str,
    ttl: Duration,
) -> leasehold::Registration {
    let instance = Instance::builder(service, "127.0.0.1:7000")
        .id(id)
        .build()
        .expect("the soak's service names and ids are valid");
    loop {
        match registry
            .register(instance.clone(), RegisterOptions::ttl(ttl))
            .await
        {
            Ok(registration) => return registration,
            Err(e) => {
                tracing::debug!(id, error = %e, "soak registration failed, retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// A running registrant process, killed when dropped.
#[derive(Debug)]
pub(crate) struct RegistrantProcess {
    child: Child,
    /// Held open: the child exits when it closes.
    _stdin: ChildStdin,
}

impl RegistrantProcess {
    /// Starts the test binary as a registrant for `spec`, re-running test `test` (its
    /// full name in the binary). `on_registered` is called with each id the child reports.
    pub(crate) fn spawn(
        test: &str,
        spec: &RegistrantSpec,
        on_registered: impl Fn(String) + Send + 'static,
    ) -> std::io::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .args([
                test,
                "--exact",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_VAR, spec.encode())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // libtest may have written `test soak ... ` on the same line.
                if let Some(at) = line.find(REPORT) {
                    on_registered(line[at + REPORT.len()..].trim().to_owned());
                }
            }
        });
        Ok(RegistrantProcess { child, _stdin: stdin })
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// SIGSTOP: the process holds its connections but does nothing, like a frozen host.
    pub(crate) fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub(crate) fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// SIGKILL, and waits until it is gone (also when frozen: SIGKILL ends a stopped
    /// process).
    pub(crate) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::RegistrantSpec;
    use std::time::Duration;

    #[test]
    fn spec_round_trips() {
        let spec = RegistrantSpec {
            url: "etcd://127.0.0.1:1,127.0.0.1:2/soak".to_owned(),
            ttl: Duration::from_secs(3),
            instances: vec![("soak-a".into(), "r1-0".into()), ("soak-b".into(), "r1-1".into())],
        };
        assert_eq!(RegistrantSpec::decode(&spec.encode()), Some(spec));
        assert_eq!(RegistrantSpec::decode("x|y"), None);
    }
}
