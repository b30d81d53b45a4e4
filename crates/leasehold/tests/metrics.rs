//! The metrics the registrar and the discovery cache record, read back through a
//! Prometheus recorder while the memory registry goes through its faults: registrations
//! by state never drift, recoveries carry their cause, staleness and skipped values show.

use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::metrics::*;
use leasehold::{Instance, RegisterOptions, RegistrationState, Registry, ServiceName, WatchOptions};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const PATIENCE: Duration = Duration::from_secs(20);

/// What was recorded, read as Prometheus renders it: gauges and counters as they are
/// now, histograms as their number of samples (`_count`).
struct Recorded {
    handle: PrometheusHandle,
}

type Labels<'a> = &'a [(&'a str, &'a str)];

impl Recorded {
    /// The value of metric `name` with exactly `labels`, if it was recorded.
    fn value(&self, name: &str, labels: Labels<'_>) -> Option<f64> {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort_unstable();
        let rendered = self.handle.render();
        rendered.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, mut have) = match series.split_once('{') {
                Some((metric, rest)) => {
                    let pairs = rest.strip_suffix('}')?.split(',').filter_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        Some((k.to_owned(), v.trim_matches('"').to_owned()))
                    });
                    (metric, pairs.collect::<Vec<_>>())
                }
                None => (series, Vec::new()),
            };
            have.sort_unstable();
            let matches = metric == name || metric.strip_suffix("_count") == Some(name);
            (matches && have == want).then(|| value.parse().ok()).flatten()
        })
    }

    /// Polls until `name{labels}` satisfies `ready`.
    async fn until(&self, name: &str, labels: Labels<'_>, ready: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let seen = self.value(name, labels);
            if seen.is_some_and(&ready) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}{labels:?} is {seen:?}; recorded:\n{}",
                self.handle.render()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn registered(state: &'static str) -> [(&'static str, &'static str); 2] {
    [("service", "echo"), ("state", state)]
}

// The recorder is local to this thread, so the runtime must be too.
#[tokio::test(flavor = "current_thread")]
async fn registrar_and_discovery_metrics_follow_the_faults() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let recorded = Recorded {
        handle: recorder.handle(),
    };
    let _guard = metrics::set_default_local_recorder(&recorder);
    let registry = MemoryRegistry::new();
    let service = ServiceName::new("echo").unwrap();
    let discovery = registry.watch(&service, WatchOptions::default()).await.unwrap();
    let options = RegisterOptions::ttl(Duration::from_secs(1));
    let a = registry
        .register(
            Instance::builder("echo", "127.0.0.1:7001")
                .id("a")
                .build()
                .unwrap(),
            options,
        )
        .await
        .unwrap();
    let b = registry
        .register(
            Instance::builder("echo", "127.0.0.1:7002")
                .id("b")
                .build()
                .unwrap(),
            options,
        )
        .await
        .unwrap();
    recorded
        .until(REGISTRATIONS, &registered("registered"), |v| v == 2.0)
        .await;
    recorded
        .until(REGISTRATIONS, &registered("recovering"), |v| v == 0.0)
        .await;
    recorded.until(WRITE_BATCH_SIZE, &[], |n| n >= 1.0).await;
    recorded
        .until(DISCOVERY_INSTANCES, &[("service", "echo")], |v| v == 2.0)
        .await;

    // A key deleted by someone else: a recovery for that cause, timed.
    let key = registry
        .store()
        .dump("")
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.ends_with("/a"))
        .unwrap();
    registry.store().delete_raw(&key);
    recorded
        .until(RECOVERIES, &[("cause", "key_lost")], |v| v == 1.0)
        .await;
    recorded.until(RECOVERY_DURATION, &[], |n| n == 1.0).await;
    assert!(a.wait_for(RegistrationState::Registered, PATIENCE).await);

    // A wipe loses the lease: a lease loss, a recovery for that cause.
    registry.store().wipe();
    recorded.until(LEASE_LOSSES, &[], |v| v == 1.0).await;
    recorded
        .until(RECOVERIES, &[("cause", "lease_lost")], |v| v == 1.0)
        .await;
    assert!(a.wait_for(RegistrationState::Registered, PATIENCE).await);
    assert!(b.wait_for(RegistrationState::Registered, PATIENCE).await);
    recorded
        .until(REGISTRATIONS, &registered("registered"), |v| v == 2.0)
        .await;

    // An unreachable registry: the cache is stale, then live, and the period is timed.
    registry.store().set_reachable(false);
    recorded
        .until(DISCOVERY_STALE, &[("service", "echo")], |v| v == 1.0)
        .await;
    recorded
        .until(DISCOVERY_STALE_SINCE, &[("service", "echo")], |v| v > 1.0e9)
        .await;
    registry.store().set_reachable(true);
    recorded
        .until(DISCOVERY_STALE, &[("service", "echo")], |v| v == 0.0)
        .await;
    recorded
        .until(DISCOVERY_STALE_DURATION, &[("service", "echo")], |n| n >= 1.0)
        .await;

    // A value that does not decode is skipped and counted.
    registry.store().put_raw(&key.replace("/a", "/junk"), b"not json");
    recorded
        .until(DISCOVERY_SKIPPED, &[("service", "echo")], |v| v >= 1.0)
        .await;

    // Pause, deregister and drop move the gauge and leave nothing behind.
    assert!(a.wait_for(RegistrationState::Registered, PATIENCE).await);
    a.pause().await.unwrap();
    recorded
        .until(REGISTRATIONS, &registered("paused"), |v| v == 1.0)
        .await;
    recorded
        .until(REGISTRATIONS, &registered("registered"), |v| v == 1.0)
        .await;
    a.deregister().await.unwrap();
    drop(b);
    recorded
        .until(REGISTRATIONS, &registered("paused"), |v| v == 0.0)
        .await;
    recorded
        .until(REGISTRATIONS, &registered("registered"), |v| v == 0.0)
        .await;
    recorded
        .until(REGISTRATIONS, &registered("recovering"), |v| v == 0.0)
        .await;
    recorded
        .until(DISCOVERY_INSTANCES, &[("service", "echo")], |v| v == 0.0)
        .await;
    recorded
        .until(DISCOVERY_CHANGES, &[("service", "echo")], |v| v >= 4.0)
        .await;
    drop(discovery);
}
