//! Running the built `leasehold` binary in tests.

#![allow(dead_code)]

use std::io::Read;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Long enough for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// `leasehold ARGS...` with a clean environment for its registry and logs.
pub fn leasehold(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    command
        .args(args)
        .env_remove("LEASEHOLD_REGISTRY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

/// Runs `leasehold ARGS...` to completion.
pub fn run(args: &[&str]) -> Output {
    leasehold(args).output().expect("the leasehold binary runs")
}

/// Runs `leasehold ARGS...` to completion, failing the test (with its output) unless it
/// succeeds; returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let output = run(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "leasehold {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A `leasehold` process that runs until signalled, its stdout read line by line.
/// Killed on drop, so no process outlives a failed test.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    pub fn spawn(args: &[&str]) -> Running {
        let mut child = leasehold(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the leasehold binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut chunk) {
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    /// What the process wrote to stderr so far (and, through the returned handle,
    /// after it exits).
    pub fn stderr(&self) -> Arc<Mutex<String>> {
        self.stderr.clone()
    }

    /// The process id, for signals sent by the test itself.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of stdout; panics with what was seen if none comes in time.
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!("no line from leasehold ({e}); seen so far: {:#?}", self.seen),
        }
    }

    /// Reads lines until one contains `needle`.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            let line = self.next_line();
            if line.contains(needle) {
                return line;
            }
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("the process can be signalled");
    }

    /// Waits for the process to exit; returns its exit code and the rest of its stdout.
    pub fn wait(mut self) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the process can be waited for") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "leasehold did not exit; output: {:#?}",
                self.seen
            );
            thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status.code(), std::mem::take(&mut self.seen))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
