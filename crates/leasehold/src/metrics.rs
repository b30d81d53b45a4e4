//! The metrics leasehold records, in one table.
//!
//! leasehold records through the [`metrics`](https://docs.rs/metrics) facade: nothing is
//! exported until the application installs a recorder (for Prometheus,
//! `metrics-exporter-prometheus`; the `leasehold` command serves them at `/metrics` with
//! `--metrics-addr`). Each value is recorded once, where its event happens. Names are the
//! constants below; durations are in seconds.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `leasehold_registrations` | gauge | `service`, `state` | registrations this process holds, by state: `registered`, `recovering`, `paused`, `conflict`, `drained` |
//! | `leasehold_recoveries_total` | counter | `cause` | recoveries started: `lease_lost` (lease expired, revoked, not found, session expired) or `key_lost` (a key deleted or overwritten by someone else) |
//! | `leasehold_recovery_duration_seconds` | histogram | | from the loss to every registration written again |
//! | `leasehold_lease_losses_total` | counter | | leases (etcd leases, ZooKeeper sessions, memory leases) lost while registrations needed them |
//! | `leasehold_keepalive_rtt_seconds` | histogram | `backend` | from a keepalive request to its answer (etcd) |
//! | `leasehold_write_batch_size` | histogram | | registrations written per batched write |
//! | `leasehold_watch_reconnects_total` | counter | `backend`, `service` | watches resumed after they broke or ended |
//! | `leasehold_watch_relists_total` | counter | `backend`, `service` | full re-listings of a service after a watch could not resume |
//! | `leasehold_watch_compactions_total` | counter | `service` | compacted revisions survived (etcd): a re-list that emitted the difference |
//! | `leasehold_discovery_changes_total` | counter | `service` | changes applied to a discovery cache: instances added, removed, updated |
//! | `leasehold_discovery_skipped_total` | counter | `service` | values under a watched service skipped because they do not decode |
//! | `leasehold_discovery_stale` | gauge | `service` | 1 while the registry is unreachable and the cache serves the last known set, else 0 |
//! | `leasehold_discovery_stale_since_seconds` | gauge | `service` | when the cache went stale (Unix time), 0 while live; staleness is `time() - value` |
//! | `leasehold_discovery_stale_duration_seconds` | histogram | `service` | how long each stale period lasted |
//! | `leasehold_discovery_instances` | gauge | `service` | instances in the discovery cache |
//! | `leasehold_health_checks_total` | counter | `service`, `outcome` | health checks of registered services: `pass` or `fail` |
//! | `leasehold_tower_picks_total` | counter | `service` | instances picked by a balancer for a request |
//! | `leasehold_tower_ejections_total` | counter | `service` | instances ejected by passive health (outlier detection) |
//! | `leasehold_tower_retries_total` | counter | `service` | requests sent again to another instance |
//! | `leasehold_tower_retry_budget_exhausted_total` | counter | `service` | retries refused because the retry budget was spent |
//! | `leasehold_tower_request_duration_seconds` | histogram | `service`, `instance` | from sending a request to an instance to its response or error |
//!
//! Registrations are counted per process; recoveries and lease losses per lease group
//! (the registrations of one TTL share one lease).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{RegistrationState, ServiceName};

/// Gauge: registrations this process holds, by `service` and `state`.
pub const REGISTRATIONS: &str = "leasehold_registrations";
/// Counter: recoveries started, by `cause` (`lease_lost`, `key_lost`).
pub const RECOVERIES: &str = "leasehold_recoveries_total";
/// Histogram: seconds from a loss to every registration written again.
pub const RECOVERY_DURATION: &str = "leasehold_recovery_duration_seconds";
/// Counter: leases lost while registrations needed them.
pub const LEASE_LOSSES: &str = "leasehold_lease_losses_total";
/// Histogram: seconds from a keepalive request to its answer, by `backend`.
pub const KEEPALIVE_RTT: &str = "leasehold_keepalive_rtt_seconds";
/// Histogram: registrations per batched write.
pub const WRITE_BATCH_SIZE: &str = "leasehold_write_batch_size";
/// Counter: watches resumed after they broke, by `backend` and `service`.
pub const WATCH_RECONNECTS: &str = "leasehold_watch_reconnects_total";
/// Counter: full re-listings of a service, by `backend` and `service`.
pub const WATCH_RELISTS: &str = "leasehold_watch_relists_total";
/// Counter: compacted revisions survived, by `service`.
pub const WATCH_COMPACTIONS: &str = "leasehold_watch_compactions_total";
/// Counter: changes applied to a discovery cache, by `service`.
pub const DISCOVERY_CHANGES: &str = "leasehold_discovery_changes_total";
/// Counter: values skipped as undecodable, by `service`.
pub const DISCOVERY_SKIPPED: &str = "leasehold_discovery_skipped_total";
/// Gauge: 1 while a discovery cache is stale, by `service`.
pub const DISCOVERY_STALE: &str = "leasehold_discovery_stale";
/// Gauge: Unix time a discovery cache went stale, 0 while live, by `service`.
pub const DISCOVERY_STALE_SINCE: &str = "leasehold_discovery_stale_since_seconds";
/// Histogram: seconds each stale period lasted, by `service`.
pub const DISCOVERY_STALE_DURATION: &str = "leasehold_discovery_stale_duration_seconds";
/// Gauge: instances in a discovery cache, by `service`.
pub const DISCOVERY_INSTANCES: &str = "leasehold_discovery_instances";
/// Counter: health checks of registered services, by `service` and `outcome`.
pub const HEALTH_CHECKS: &str = "leasehold_health_checks_total";
/// Counter: instances picked by a balancer, by `service`.
pub const TOWER_PICKS: &str = "leasehold_tower_picks_total";
/// Counter: instances ejected by passive health, by `service`.
pub const TOWER_EJECTIONS: &str = "leasehold_tower_ejections_total";
/// Counter: requests retried on another instance, by `service`.
pub const TOWER_RETRIES: &str = "leasehold_tower_retries_total";
/// Counter: retries refused by the retry budget, by `service`.
pub const TOWER_RETRY_BUDGET_EXHAUSTED: &str = "leasehold_tower_retry_budget_exhausted_total";
/// Histogram: seconds per request to one instance, by `service` and `instance`.
pub const TOWER_REQUEST_DURATION: &str = "leasehold_tower_request_duration_seconds";

/// Every name above, for exporters that describe them and tests that look for them.
pub const ALL: &[&str] = &[
    REGISTRATIONS,
    RECOVERIES,
    RECOVERY_DURATION,
    LEASE_LOSSES,
    KEEPALIVE_RTT,
    WRITE_BATCH_SIZE,
    WATCH_RECONNECTS,
    WATCH_RELISTS,
    WATCH_COMPACTIONS,
    DISCOVERY_CHANGES,
    DISCOVERY_SKIPPED,
    DISCOVERY_STALE,
    DISCOVERY_STALE_SINCE,
    DISCOVERY_STALE_DURATION,
    DISCOVERY_INSTANCES,
    HEALTH_CHECKS,
    TOWER_PICKS,
    TOWER_EJECTIONS,
    TOWER_RETRIES,
    TOWER_RETRY_BUDGET_EXHAUSTED,
    TOWER_REQUEST_DURATION,
];

/// The `state` label of a registration state; `None` for `Deregistered`, which is not
/// held and so not counted.
pub fn state_label(state: RegistrationState) -> Option<&'static str> {
    match state {
        RegistrationState::Registered => Some("registered"),
        RegistrationState::Recovering => Some("recovering"),
        RegistrationState::Paused => Some("paused"),
        RegistrationState::Conflict => Some("conflict"),
        RegistrationState::Drained => Some("drained"),
        RegistrationState::Deregistered => None,
    }
}

/// Moves one registration of `service` from state `from` to `to` in
/// [`REGISTRATIONS`]; `None` is "not held" (before it was created, after it is gone).
pub(crate) fn registration_moved(
    service: &ServiceName,
    from: Option<RegistrationState>,
    to: Option<RegistrationState>,
) {
    if let Some(label) = from.and_then(state_label) {
        metrics::gauge!(REGISTRATIONS, "service" => service.to_string(), "state" => label).decrement(1.0);
    }
    if let Some(label) = to.and_then(state_label) {
        metrics::gauge!(REGISTRATIONS, "service" => service.to_string(), "state" => label).increment(1.0);
    }
}

/// Starts timing a recovery for `cause`, unless one is under way already.
pub(crate) fn recovery_started(since: &mut Option<tokio::time::Instant>, cause: &'static str) {
    if since.is_none() {
        *since = Some(tokio::time::Instant::now());
        metrics::counter!(RECOVERIES, "cause" => cause).increment(1);
    }
}

/// Ends the recovery under way, if any, when `done`: records how long it took.
pub(crate) fn recovery_finished(since: &mut Option<tokio::time::Instant>, done: bool) {
    if done {
        if let Some(since) = since.take() {
            metrics::histogram!(RECOVERY_DURATION).record(since.elapsed());
        }
    }
}

/// Records a discovery cache of `service` turning stale (`Some(since)`, Unix time) or
/// live again after `stale_for`.
pub(crate) fn discovery_staleness(
    service: &ServiceName,
    stale_since: Option<SystemTime>,
    stale_for: Option<Duration>,
) {
    let labels = [("service", service.to_string())];
    let since = stale_since.map_or(0.0, |t| {
        t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
    });
    metrics::gauge!(DISCOVERY_STALE, &labels).set(if stale_since.is_some() { 1.0 } else { 0.0 });
    metrics::gauge!(DISCOVERY_STALE_SINCE, &labels).set(since);
    if let Some(stale_for) = stale_for {
        metrics::histogram!(DISCOVERY_STALE_DURATION, &labels).record(stale_for);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_documents_every_name_once() {
        let doc = include_str!("metrics.rs");
        for name in ALL {
            let rows = doc.matches(&format!("//! | `{name}` |")).count();
            assert_eq!(rows, 1, "{name} has {rows} rows in the table");
        }
        let rows = doc.lines().filter(|l| l.starts_with("//! | `leasehold_")).count();
        assert_eq!(rows, ALL.len(), "a row of the table is not in ALL");
    }
}
