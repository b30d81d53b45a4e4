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
//! While it holds them it updates them all the time (`keep_updating`): each
//! registration's metadata entry [`SEQ`] is bumped every 50–150 ms, sometimes several
//! times back to back without awaiting the previous update, so that updates of one
//! registration arrive while its previous write is in flight.
//!
//! Protocol: the child prints `leasehold-soak-registrant: registered {id}` on stdout when
//! `register` for `id` returns, and `leasehold-soak-registrant: updated {id} {seq}` when it
//! has *called* `update` with `seq` (the registrar applies an update to the handle at once
//! and owes the registry that value, whether or not the call has returned). When it reads
//! the line `stop-updating` on stdin it calls no more updates and prints
//! `leasehold-soak-registrant: quiet`. It exits when its stdin closes, so it never outlives
//! the test (also when the test is SIGKILLed).

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use leasehold::{
    Instance, InstanceUpdate, Metadata, RegisterOptions, Registration, RegistrationState, Registry,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, RwLock};

use super::Connect;

/// Environment variable that makes the soak test binary a registrant: the registry URL,
/// TTL and instances it registers (see [`RegistrantSpec::encode`]).
pub const CHILD_VAR: &str = "LEASEHOLD_SOAK_REGISTRANT";

/// Markers of the child's reports on stdout (anything else there is libtest's).
const REGISTERED: &str = "leasehold-soak-registrant: registered ";
const UPDATED: &str = "leasehold-soak-registrant: updated ";
const QUIET: &str = "leasehold-soak-registrant: quiet";

/// The line on a registrant's stdin that makes it stop updating.
const STOP_UPDATING: &str = "stop-updating";

/// The metadata entry every update bumps: a registration's `seq` only grows (it is 0 when
/// registered), so the value the registry shows says which update it carries.
pub const SEQ: &str = "seq";

/// Pause between two rounds of updates of one registration (drawn uniformly).
const UPDATE_EVERY_MS: std::ops::RangeInclusive<u64> = 50..=150;

/// One report of a registrant process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// `register` returned for this id.
    Registered(String),
    /// `update` was called for this id with this `seq`.
    Updated(String, u64),
    /// It calls no more updates.
    Quiet,
}

impl Report {
    /// The report in a line of the child's stdout, if any (libtest may have written
    /// `test soak ... ` before it on the same line).
    fn parse(line: &str) -> Option<Report> {
        if let Some(at) = line.find(REGISTERED) {
            return Some(Report::Registered(
                line[at + REGISTERED.len()..].trim().to_owned(),
            ));
        }
        if let Some(at) = line.find(UPDATED) {
            let (id, seq) = line[at + UPDATED.len()..].trim().split_once(' ')?;
            return Some(Report::Updated(id.to_owned(), seq.parse().ok()?));
        }
        line.contains(QUIET).then_some(Report::Quiet)
    }
}

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
    /// Whether it updates them all the time.
    pub updates: bool,
}

impl RegistrantSpec {
    /// The value of [`CHILD_VAR`]: `ttl_ms|updates (0 or 1)|url|service/id|service/id…`.
    pub fn encode(&self) -> String {
        let mut parts = vec![
            self.ttl.as_millis().to_string(),
            u8::from(self.updates).to_string(),
            self.url.clone(),
        ];
        parts.extend(self.instances.iter().map(|(s, id)| format!("{s}/{id}")));
        parts.join("|")
    }

    /// Parses [`encode`](Self::encode)'s output.
    pub fn decode(value: &str) -> Option<Self> {
        let mut parts = value.split('|');
        let ttl = Duration::from_millis(parts.next()?.parse().ok()?);
        let updates = match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let url = parts.next()?.to_owned();
        let instances = parts
            .map(|p| p.split_once('/').map(|(s, id)| (s.to_owned(), id.to_owned())))
            .collect::<Option<Vec<_>>>()?;
        Some(RegistrantSpec {
            url,
            ttl,
            instances,
            updates,
        })
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
    let updating = Arc::new(RwLock::new(spec.updates));
    let stop = Arc::clone(&updating);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == STOP_UPDATING {
                // Taken for writing: no updater is between its check and its report.
                *stop.write().await = false;
                println!("{QUIET}");
            }
        }
        // EOF (or an error) on stdin: the soak is gone or done with us.
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
    // Held to the end: the last handle of a registration dropped deregisters it, and the
    // updaters end (with their clones) when told to stop.
    let mut held = Vec::new();
    for (service, id) in &spec.instances {
        let registration = register(&*registry, service, id, spec.ttl).await;
        println!("{REGISTERED}{id}");
        let report_id = id.clone();
        held.push(registration.clone());
        tokio::spawn(keep_updating(
            registration,
            jitter_seed(id, std::process::id()),
            Arc::clone(&updating),
            move |seq| println!("{UPDATED}{report_id} {seq}"),
        ));
    }
    std::future::pending::<()>().await;
    drop(held);
}

/// A seed for [`keep_updating`]'s jitter: the child has no seed of the run, and needs
/// none (the soak's fault plan is what a seed reproduces).
pub(crate) fn jitter_seed(id: &str, salt: u32) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (id, salt).hash(&mut hasher);
    hasher.finish()
}

/// Bumps `registration`'s [`SEQ`] every 50–150 ms, a quarter of the rounds 2–4 times back
/// to back without awaiting the previous update, until `updating` is false or the
/// registration is deregistered. Each update's result is ignored (one may fail during a
/// fault; the registrar retries on its own). `on_called(seq)` runs right after `update`
/// was called with `seq`, under the read lock of `updating`: once a writer has set it to
/// false, no update is called and none reported.
pub(crate) async fn keep_updating(
    registration: Registration,
    jitter: u64,
    updating: Arc<RwLock<bool>>,
    on_called: impl Fn(u64) + Send + 'static,
) {
    let mut rng = StdRng::seed_from_u64(jitter);
    let mut seq = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(UPDATE_EVERY_MS))).await;
        let burst = if rng.random_ratio(1, 4) {
            rng.random_range(2..=4)
        } else {
            1
        };
        let updating = updating.read().await;
        if !*updating || registration.state() == RegistrationState::Deregistered {
            return;
        }
        for _ in 0..burst {
            seq += 1;
            call_update(&registration, seq).await;
            on_called(seq);
        }
    }
}

/// Calls `update` with `seq` and returns once the call has reached the registrar (its
/// first poll sends the command), leaving the reply to a task of its own: the next update
/// is called before this one has returned.
async fn call_update(registration: &Registration, seq: u64) {
    let handle = registration.clone();
    let update = InstanceUpdate::new().metadata(Metadata::from([(SEQ.to_owned(), seq.to_string())]));
    let mut call: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        let _ = handle.update(update).await;
    });
    let done = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx).is_ready())).await;
    if !done {
        tokio::spawn(call);
    }
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
        .metadata(SEQ, "0")
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
    /// Lines for the child's stdin; the task that writes them holds stdin open until
    /// this is dropped (the child exits when it closes).
    stdin: mpsc::UnboundedSender<&'static str>,
}

impl RegistrantProcess {
    /// Starts the test binary as a registrant for `spec`, re-running test `test` (its
    /// full name in the binary). `on_report` is called with each report of the child, in
    /// order.
    pub(crate) fn spawn(
        test: &str,
        spec: &RegistrantSpec,
        on_report: impl Fn(Report) + Send + 'static,
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
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(report) = Report::parse(&line) {
                    on_report(report);
                }
            }
        });
        let (sender, mut to_write) = mpsc::unbounded_channel::<&'static str>();
        tokio::spawn(async move {
            while let Some(line) = to_write.recv().await {
                if stdin.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    break;
                }
                let _ = stdin.flush().await;
            }
        });
        Ok(RegistrantProcess { child, stdin: sender })
    }

    /// Tells the child to call no more updates; it reports [`Report::Quiet`] when done.
    pub(crate) fn stop_updating(&self) {
        let _ = self.stdin.send(STOP_UPDATING);
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
    use super::{RegistrantSpec, Report};
    use std::time::Duration;

    #[test]
    fn reports_parse_also_after_libtest_output() {
        assert_eq!(
            Report::parse("test soak ... leasehold-soak-registrant: registered r1-0"),
            Some(Report::Registered("r1-0".into()))
        );
        assert_eq!(
            Report::parse("leasehold-soak-registrant: updated r1-0 42"),
            Some(Report::Updated("r1-0".into(), 42))
        );
        assert_eq!(
            Report::parse("leasehold-soak-registrant: quiet"),
            Some(Report::Quiet)
        );
        assert_eq!(Report::parse("leasehold-soak-registrant: updated r1-0 x"), None);
        assert_eq!(Report::parse("running 1 test"), None);
    }

    #[test]
    fn spec_round_trips() {
        let spec = RegistrantSpec {
            url: "etcd://127.0.0.1:1,127.0.0.1:2/soak".to_owned(),
            ttl: Duration::from_secs(3),
            instances: vec![("soak-a".into(), "r1-0".into()), ("soak-b".into(), "r1-1".into())],
            updates: true,
        };
        assert_eq!(RegistrantSpec::decode(&spec.encode()), Some(spec));
        assert_eq!(RegistrantSpec::decode("x|y"), None);
    }
}
