//! The demo's client: follows the service and spreads requests over what it discovers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use leasehold::memory::{MemoryRegistry, MemoryStore};
use leasehold::{
    Change, Changes, Discovery, Instance, InstanceId, Registry, ServiceName, Snapshot, WatchOptions,
};
use leasehold_tower::balance::{Balancer, PickContext, RoundRobin};
use leasehold_tower::{OutlierDetector, OutlierPolicy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
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

/// The ids of the instances the client has printed as discovered.
pub type Seen = BTreeSet<String>;

/// A client with its own registry client, a watch of [`SERVICE`] whose changes it
/// prints, and leasehold-tower's round-robin balancer with passive ejection: an instance
/// that refuses a connection is set aside for a while, so the requests after it do not
/// try it first.
///
/// The demo's steps wait on what the client has *printed* ([`Seen`]), not on the cache
/// itself, so the timeline reads in the same order on every run.
pub struct Client {
    _registry: MemoryRegistry,
    discovery: Discovery,
    seen: watch::Receiver<Seen>,
    printing: JoinHandle<()>,
    balancer: RoundRobin,
    outliers: OutlierDetector,
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
        let snapshot = discovery.snapshot();
        timeline.log(
            "client",
            format_args!("watching {service}: {}", instances(snapshot.len())),
        );
        let (seen_tx, seen) = watch::channel(ids(&snapshot));
        let printing = tokio::spawn(print_changes(discovery.changes(), seen_tx, timeline));
        Ok(Client {
            _registry: registry,
            discovery,
            seen,
            printing,
            balancer: RoundRobin::new(),
            outliers: OutlierDetector::new(OutlierPolicy::default().consecutive_failures(1)),
            sent: 0,
            timeline,
        })
    }

    /// Waits until the printed set satisfies `ready`; `what` names it in the error.
    pub async fn wait_for(&self, what: &str, ready: impl FnMut(&Seen) -> bool) -> Result<(), CliError> {
        let mut seen = self.seen.clone();
        let reached = timeout(WAIT, seen.wait_for(ready)).await.is_ok_and(|r| r.is_ok());
        match reached {
            true => Ok(()),
            false => Err(CliError::failed(
                format_args!("demo: waiting for {what}"),
                format!("not seen within {}", humantime::format_duration(WAIT)),
            )),
        }
    }

    /// Sends a request every [`REQUEST_INTERVAL`] until `done` says so (given the
    /// printed set and the number sent in this phase), or the demo's patience runs out.
    pub async fn send_until(&mut self, mut done: impl FnMut(&Seen, u64) -> bool) -> Result<Tally, CliError> {
        let mut tally = Tally {
            first: self.sent + 1,
            ..Tally::default()
        };
        let mut ticks = interval(REQUEST_INTERVAL);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let patience = WAIT.as_millis() as u64 / REQUEST_INTERVAL.as_millis() as u64;
        for sent in 0.. {
            ticks.tick().await;
            if done(&self.seen.borrow(), sent) {
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

    /// Sends one request, trying each discovered instance at most once, skipping the
    /// ejected ones.
    async fn send(&mut self, tally: &mut Tally) {
        self.sent += 1;
        let number = self.sent;
        let snapshot = self.discovery.snapshot();
        self.outliers.retain(&snapshot);
        let mut tried: Vec<InstanceId> = Vec::new();
        loop {
            let allowed = |i: &Instance| !tried.contains(i.id()) && !self.outliers.is_ejected(i);
            let Some(instance) = self
                .balancer
                .pick(&snapshot, &PickContext::new().with_filter(&allowed))
            else {
                break;
            };
            match request(&instance, number).await {
                Ok(server) => {
                    self.outliers.record_success(&instance);
                    *tally.served.entry(server).or_default() += 1;
                    return;
                }
                Err(e) => {
                    let id = instance.id().to_string();
                    let ejected = self.outliers.record_failure(&instance, &snapshot);
                    let aside = if ejected { "; ejected for a while" } else { "" };
                    self.timeline.log(
                        "client",
                        format_args!(
                            "request #{number} to {id} failed ({e}){aside}; retrying on the next instance"
                        ),
                    );
                    *tally.failed.entry(id).or_default() += 1;
                    tried.push(instance.id().clone());
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

/// Prints each change, then publishes the set printed so far.
async fn print_changes(mut changes: Changes, seen: watch::Sender<Seen>, timeline: Timeline) {
    let mut current = seen.borrow().clone();
    while let Some(change) = changes.next().await {
        let what = match change {
            Change::Added(i) => {
                current.insert(i.id().to_string());
                format!(
                    "discovered +{} at {}: {}",
                    i.id(),
                    i.addr(),
                    instances(current.len())
                )
            }
            Change::Removed(i) => {
                current.remove(i.id().as_str());
                format!("discovered -{}: {}", i.id(), instances(current.len()))
            }
            Change::Updated { new, .. } => format!("discovered ~{} (updated)", new.id()),
            Change::Stale { .. } => "registry unreachable: keeping the last known set".to_owned(),
            Change::Live => "registry reachable again".to_owned(),
            Change::Resync(snapshot) => {
                current = ids(&snapshot);
                format!("resynced: {}", instances(current.len()))
            }
        };
        timeline.log("client", what);
        seen.send_replace(current.clone());
    }
}

fn ids(snapshot: &Snapshot) -> Seen {
    snapshot.instances().iter().map(|i| i.id().to_string()).collect()
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
