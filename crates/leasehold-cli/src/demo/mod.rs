//! `leasehold demo`: the main job end to end on the in-process registry.
//!
//! Three echo servers register themselves, each through its own registry client of one
//! shared [`MemoryStore`] as separate processes would; a client watches the service and
//! sends a request every 150 ms, round robin over what it discovers. Then one server
//! shuts down gracefully and vanishes at once; one crashes (stops renewing its lease,
//! listener closed) and vanishes after its TTL, its failed requests retried on the next
//! instance meanwhile; a fourth joins and takes requests. Each step is printed on a
//! timeline, and the demo checks its own outcome: it exits 1 if a server served after it
//! was gone, the new one never served, or a request went unanswered.
//!
//! Unless `RUST_LOG` says otherwise, only errors are logged while the demo runs: the
//! warnings its deliberate crash causes are what the timeline narrates.

mod client;
mod echo;
mod timeline;

use std::time::Duration;

use leasehold::memory::MemoryStore;

use self::client::{Client, Seen, Tally};
use self::echo::EchoServer;
use self::timeline::Timeline;
use crate::error::CliError;

/// The service the demo's servers register.
pub const SERVICE: &str = "echo";

/// The servers' lease TTL: short, so the crash is seen expiring within seconds.
const TTL: Duration = Duration::from_secs(3);

/// Requests per steady phase.
const PHASE_REQUESTS: u64 = 10;

/// Runs the demo and prints its timeline.
pub async fn run() -> Result<(), CliError> {
    println!(
        "leasehold demo: echo servers register in an in-process registry with a {} TTL; a client \
         discovers them and sends a request every {}ms, round robin.\n",
        humantime::format_duration(TTL),
        client::REQUEST_INTERVAL.as_millis()
    );
    let timeline = Timeline::start();
    let store = MemoryStore::new();
    let mut client = Client::start(&store, timeline).await?;

    let echo1 = start("echo-1", &store, &client, timeline).await?;
    let echo2 = start("echo-2", &store, &client, timeline).await?;
    let echo3 = start("echo-3", &store, &client, timeline).await?;
    let three = phase(&mut client, timeline).await?;

    timeline.log(
        "echo-2",
        "shutting down gracefully: deregistering, then closing its listener",
    );
    let deregistered_at = timeline.elapsed();
    echo2.shut_down().await?;
    client
        .wait_for("echo-2 to vanish", |s| !s.contains("echo-2"))
        .await?;
    let after = (timeline.elapsed() - deregistered_at).as_millis();
    timeline.log(
        "client",
        format_args!("echo-2 gone from the set {after}ms after it deregistered"),
    );
    let two = phase(&mut client, timeline).await?;

    let crashed_at = timeline.elapsed();
    echo3.crash().await;
    let crash = client.send_until(|s, _| !s.contains("echo-3")).await?;
    timeline.log("client", &crash);
    let after = (timeline.elapsed() - crashed_at).as_secs_f64();
    let ttl = humantime::format_duration(TTL);
    timeline.log(
        "client",
        format_args!("echo-3 expired from the registry within {after:.1}s of its crash (TTL {ttl})"),
    );

    let echo4 = start("echo-4", &store, &client, timeline).await?;
    let joined = phase(&mut client, timeline).await?;

    check(&three, &two, &crash, &joined)?;
    timeline.log("demo", "shutting down echo-1 and echo-4");
    echo1.shut_down().await?;
    echo4.shut_down().await?;
    client.wait_for("the servers to vanish", Seen::is_empty).await?;
    let phases = [&three, &two, &crash, &joined];
    let requests: u64 = phases
        .iter()
        .map(|t| t.served.values().map(|&n| u64::from(n)).sum::<u64>())
        .sum();
    let failed: u32 = phases.iter().map(|t| t.failed.values().sum::<u32>()).sum();
    timeline.log(
        "demo",
        format_args!(
            "done: {requests} requests, all served; {failed} failed attempt(s) retried on the next instance"
        ),
    );
    Ok(())
}

/// Starts the server `name` and waits until the client has discovered it.
async fn start(
    name: &str,
    store: &MemoryStore,
    client: &Client,
    timeline: Timeline,
) -> Result<EchoServer, CliError> {
    let server = EchoServer::start(name, store, TTL, timeline).await?;
    client
        .wait_for(&format!("{name} to be discovered"), |s| s.contains(name))
        .await?;
    Ok(server)
}

/// One steady phase of [`PHASE_REQUESTS`] requests, then its summary.
async fn phase(client: &mut Client, timeline: Timeline) -> Result<Tally, CliError> {
    let tally = client.send_until(|_, sent| sent >= PHASE_REQUESTS).await?;
    timeline.log("client", &tally);
    Ok(tally)
}

/// The demo's promises: every request served; no server served once it was gone; the
/// newcomer took requests.
fn check(three: &Tally, two: &Tally, crash: &Tally, joined: &Tally) -> Result<(), CliError> {
    let broken = |what: &str| Err(CliError::failed("demo", what.to_owned()));
    if [three, two, crash, joined].iter().any(|t| t.unserved > 0) {
        return broken("a request was not served by any instance");
    }
    if three.served.len() != 3 {
        return broken("the first requests were not spread over all three servers");
    }
    if [two, crash, joined]
        .iter()
        .any(|t| t.served.contains_key("echo-2"))
    {
        return broken("echo-2 served after it shut down");
    }
    if joined.served.contains_key("echo-3") || crash.served.contains_key("echo-3") {
        return broken("echo-3 served after it crashed");
    }
    if !joined.served.contains_key("echo-4") {
        return broken("echo-4 never served after joining");
    }
    Ok(())
}
