//! The demo's client: follows the service and spreads requests over what it discovers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use leasehold::memory::{MemoryRegistry, MemoryStore};
use leasehold::{Change, Discovery, Instance, Registry, ServiceName, Snapshot, WatchOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{interval, timeout, MissedTickBehavior};

use super::timeline::Timeline;
use super::SERVICE;
use crate::error::{CliError, Context};

/// How often the client sends a request.
pub const REQUEST_INTERVAL: Duration = Duration::from_millis(150);

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest the demo waits for the registry to show what it expects.
const WAIT: Duration = Duration::from_secs(30);

/// A client with its own registry client, a watch of [`SERVICE`] whose changes it
/// prints, and a round-robin turn.
pub struct Client {
    _registry: MemoryRegistry,
    discovery: Discovery,
    printing: JoinHandle<()>,
    turn: usize,
    sent: u64,
    timeline: Timeline,
}

/// What became of the requests of one phase.
#[derive(Debug, Default)]
pub struct Tally {
    first: u64,
    last: u64,
    /// Requests answered, by server.
    pub served: BTreeMap<String, u32>,
    /// Attempts that failed and were retried on the next instance, by instance.
    pub failed: BTreeMap<String, u32>,
    /// Requests that no instance answered.
    pub unserved: u32,
}

impl Client {
    /// Starts watching [`SERVICE`] in `store`, printing every change the watch brings.
    pub async fn start(store: &MemoryStore, timeline: Timeline) -> Result<Self, CliError> {
        let registry = MemoryRegistry::with_store(store.clone());
        let service = ServiceName::new(SERVICE)?;
        let discovery = registry
            .watch(&service, WatchOptions::default())
            .await
            .context(format_args!("client: watching {service}"))?;
        let count = discovery.snapshot().len();
        timeline.log("client", format_args!("watching {service}: {}", instances(count)));
        let printing = tokio::spawn(print_changes(discovery.clone(), count, timeline));
        Ok(Client {
            _registry: registry,
            discovery,
            printing,
            turn: 0,
            sent: 0,
            timeline,
        })
    }

    /// Waits until the discovered set satisfies `ready`; `what` names it in the error.
    pub async fn wait_for(&self, what: &str, ready: impl FnMut(&Snapshot) -> bool) -> Result<(), CliError> {
        match self.discovery.wait_for(WAIT, ready).await {
            Some(_) => Ok(()),
            None => Err(CliError::failed(
                format_args!("demo: waiting for {what}"),
                format!("not seen within {}", humantime::format_duration(WAIT)),
            )),
        }
    }

    /// Sends a request every [`REQUEST_INTERVAL`] until `done` says so (given the
    /// current set and the number sent in this phase), or the demo's patience runs out.
    pub async fn send_until(
        &mut self,
        mut done: impl FnMut(&Snapshot, u64) -> bool,
    ) -> Result<Tally, CliError> {
        let mut tally = Tally {
            first: self.sent + 1,
            ..Tally::default()
        };
        let mut ticks = interval(REQUEST_INTERVAL);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let patience = WAIT.as_millis() as u64 / REQUEST_INTERVAL.as_millis() as u64;
        for sent in 0.. {
            ticks.tick().await;
            if done(&self.discovery.snapshot(), sent) {
                break;
            }
            if sent >= patience {
                return Err(CliError::failed(
                    "demo: sending requests",
                    "the expected change never came",
                ));
            }
            self.send(&mut tally).await;
        }
        tally.last = self.sent;
        Ok(tally)
    }

    /// Sends one request, trying each discovered instance at most once.
    async fn send(&mut self, tally: &mut Tally) {
        self.sent += 1;
        let number = self.sent;
        let snapshot = self.discovery.snapshot();
        let turn = self.turn;
        self.turn = self.turn.wrapping_add(1);
        for attempt in 0..snapshot.len() {
            let Some(instance) = pick(&snapshot, turn.wrapping_add(attempt)) else {
                break;
            };
            match request(&instance, number).await {
                Ok(server) => {
                    *tally.served.entry(server).or_default() += 1;
                    return;
                }
                Err(e) => {
                    let id = instance.id().to_string();
                    self.timeline.log(
                        "client",
                        format_args!("request #{number} to {id} failed ({e}); retrying on the next instance"),
                    );
                    *tally.failed.entry(id).or_default() += 1;
                }
            }
        }
        self.timeline.log(
            "client",
            format_args!("request #{number} failed: no instance answered"),
        );
        tally.unserved += 1;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.printing.abort();
    }
}

/// The instance for the `turn`th request (and `turn + 1`, `turn + 2`... for its retries):
/// round robin over the snapshot, sorted by id.
///
/// The one place the client chooses; a balancer from `leasehold-tower` can take its place.
fn pick(snapshot: &Snapshot, turn: usize) -> Option<Arc<Instance>> {
    let all = snapshot.instances();
    (!all.is_empty()).then(|| all[turn % all.len()].clone())
}

/// One echo round trip on a fresh connection; returns the name of the server that
/// answered.
async fn request(instance: &Instance, number: u64) -> std::io::Result<String> {
    let text = format!("request #{number}");
    let round_trip = async {
        let mut stream = TcpStream::connect(instance.addr().authority()).await?;
        stream.write_all(format!("{text}\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).await?;
        match reply.trim_end().split_once(' ') {
            Some((server, echoed)) if echoed == text => Ok(server.to_owned()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected reply {reply:?}"),
            )),
        }
    };
    timeout(REQUEST_TIMEOUT, round_trip)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn print_changes(discovery: Discovery, mut count: usize, timeline: Timeline) {
    let mut changes = discovery.changes();
    drop(discovery);
    while let Some(change) = changes.next().await {
        let what = match change {
            Change::Added(i) => {
                count += 1;
                format!("discovered +{} at {}: {}", i.id(), i.addr(), instances(count))
            }
            Change::Removed(i) => {
                count = count.saturating_sub(1);
                format!("discovered -{}: {}", i.id(), instances(count))
            }
            Change::Updated { new, .. } => format!("discovered ~{} (updated)", new.id()),
            Change::Stale { .. } => "registry unreachable: keeping the last known set".to_owned(),
            Change::Live => "registry reachable again".to_owned(),
            Change::Resync(snapshot) => {
                count = snapshot.len();
                format!("resynced: {}", instances(count))
            }
        };
        timeline.log("client", what);
    }
}

fn instances(count: usize) -> String {
    format!("{count} instance{}", if count == 1 { "" } else { "s" })
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "requests #{}-#{} served by", self.first, self.last)?;
        for (n, (server, count)) in self.served.iter().enumerate() {
            write!(f, "{} {server} ×{count}", if n == 0 { "" } else { "," })?;
        }
        let failed: u32 = self.failed.values().sum();
        if failed > 0 {
            let on: Vec<&str> = self.failed.keys().map(String::as_str).collect();
            write!(
                f,
                "; {failed} failed attempt(s) on {} retried on the next instance",
                on.join(", ")
            )?;
        }
        if self.unserved > 0 {
            write!(f, "; {} unserved", self.unserved)?;
        }
        Ok(())
    }
}
