//! One server process and the faults that can be done to it.
//!
//! Invariant: a [`ServerProcess`] that is dropped is gone — resumed if paused, sent
//! SIGKILL and reaped — so a test that panics leaves no server and no zombie behind.
//! [`Slot`] is the place a member's process lives in between kills and restarts; it only
//! holds a lock for the instant it takes to swap or signal the process, never across an
//! `.await`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{Error, Result};

/// What a cluster member is doing, as far as the testkit made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// The process runs (it may still be starting).
    Running,
    /// The process is stopped with SIGSTOP: it holds its ports but answers nothing.
    Paused,
    /// There is no process: it was killed (or wiped and not started again).
    Stopped,
}

/// A spawned server whose stdout and stderr go to a log file.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    paused: bool,
}

impl ServerProcess {
    /// Spawns `command` with its output appended to `log`, after a marker line so the
    /// tail of the log always belongs to the latest run.
    pub(crate) fn spawn(server: &str, mut command: Command, log: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
        writeln!(file, "==== leasehold-testkit: starting {server}")
            .map_err(|e| Error::io(format!("writing log {}", log.display()), e))?;
        let stderr = file
            .try_clone()
            .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(stderr));
        let child = command.spawn().map_err(|source| Error::Spawn {
            server: server.to_owned(),
            source,
        })?;
        tracing::debug!(server, pid = child.id(), "spawned");
        Ok(ServerProcess { child, paused: false })
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The exit status if the process has ended on its own.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal(&mut self, server: &str, signal: Signal, name: &'static str) -> Result<()> {
        kill(self.pid(), signal).map_err(|source| Error::Signal {
            server: server.to_owned(),
            signal: name,
            source,
        })
    }

    /// SIGSTOP: the process keeps its sockets but stops answering, like a frozen host.
    pub(crate) fn pause(&mut self, server: &str) -> Result<()> {
        self.signal(server, Signal::SIGSTOP, "SIGSTOP")?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub(crate) fn resume(&mut self, server: &str) -> Result<()> {
        self.signal(server, Signal::SIGCONT, "SIGCONT")?;
        self.paused = false;
        Ok(())
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// SIGKILL, then waits for the exit without blocking the runtime.
    pub(crate) async fn kill(mut self) {
        self.start_kill();
        while self.exited().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Reaped: nothing left for Drop to do but a harmless try_wait.
    }

    fn start_kill(&mut self) {
        if self.paused {
            let _ = kill(self.pid(), Signal::SIGCONT);
            self.paused = false;
        }
        let _ = self.child.kill();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        self.start_kill();
        // A SIGKILLed process exits within milliseconds; blocking here is what makes
        // "no orphan after a panic" hold even outside a runtime.
        let _ = self.child.wait();
    }
}

/// The process of one member, present while it is running or paused.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Human name for errors and traces, e.g. `etcd member 1 (127.0.0.1:23791)`.
    pub(crate) name: String,
    /// The log file every run of this member appends to.
    pub(crate) log: PathBuf,
    process: Mutex<Option<ServerProcess>>,
}

impl Slot {
    pub(crate) fn new(name: String, log: PathBuf) -> Self {
        Slot {
            name,
            log,
            process: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<ServerProcess>> {
        // A panic while holding this lock cannot leave the Option half-written.
        self.process.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn state(&self) -> MemberState {
        match &*self.lock() {
            None => MemberState::Stopped,
            Some(p) if p.is_paused() => MemberState::Paused,
            Some(_) => MemberState::Running,
        }
    }

    /// Puts a freshly spawned process in the slot. The slot must be empty.
    pub(crate) fn install(&self, process: ServerProcess) {
        let previous = self.lock().replace(process);
        debug_assert!(previous.is_none(), "{}: started twice", self.name);
    }

    /// Kills the process if there is one; a stopped member stays stopped.
    pub(crate) async fn kill(&self) {
        let process = self.lock().take();
        if let Some(process) = process {
            tracing::debug!(server = %self.name, "kill");
            process.kill().await;
        }
    }

    pub(crate) fn pause(&self) -> Result<()> {
        match &mut *self.lock() {
            Some(p) if !p.is_paused() => {
                tracing::debug!(server = %self.name, "pause");
                p.pause(&self.name)
            }
            Some(_) => Ok(()),
            None => Err(self.wrong_state(MemberState::Stopped, "pause", "running")),
        }
    }

    pub(crate) fn resume(&self) -> Result<()> {
        match &mut *self.lock() {
            Some(p) if p.is_paused() => {
                tracing::debug!(server = %self.name, "resume");
                p.resume(&self.name)
            }
            Some(_) => Ok(()),
            None => Err(self.wrong_state(MemberState::Stopped, "resume", "paused")),
        }
    }

    /// `Err(ExitedEarly)` if the process has died on its own since it was started.
    pub(crate) fn check_alive(&self) -> Result<()> {
        let mut guard = self.lock();
        let Some(process) = guard.as_mut() else {
            return Err(self.wrong_state(MemberState::Stopped, "a probe", "running"));
        };
        match process.exited() {
            None => Ok(()),
            Some(status) => {
                guard.take();
                Err(Error::ExitedEarly {
                    server: self.name.clone(),
                    status,
                    log: self.log.clone(),
                    tail: log_tail(&self.log),
                })
            }
        }
    }

    pub(crate) fn wrong_state(
        &self,
        state: MemberState,
        operation: &'static str,
        needs: &'static str,
    ) -> Error {
        Error::WrongState {
            server: self.name.clone(),
            state,
            operation,
            needs,
        }
    }

    pub(crate) fn not_ready(&self, timeout: Duration, last_probe: String) -> Error {
        Error::NotReady {
            server: self.name.clone(),
            timeout,
            last_probe,
            log: self.log.clone(),
            tail: log_tail(&self.log),
        }
    }
}

/// The last lines of a log file (at most the last 8 KiB), for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    const MAX_BYTES: u64 = 8 * 1024;
    const MAX_LINES: usize = 30;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(MAX_LINES)..].join("\n")
        }
        Err(e) => format!("(log unreadable: {e})"),
    }
}
