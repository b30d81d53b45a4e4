//! What one soak run does (seed, length, TTL, population) and the graces its invariants
//! allow.

use std::time::Duration;

/// Environment variable: the seed of the fault plan (decimal).
pub const SEED_VAR: &str = "LEASEHOLD_SOAK_SEED";
/// Environment variable: how long faults are injected, in seconds.
pub const SECS_VAR: &str = "LEASEHOLD_SOAK_SECS";
/// Environment variable: the registrations' TTL, in seconds.
pub const TTL_VAR: &str = "LEASEHOLD_SOAK_TTL";
/// Environment variable: `1` to update every registration all the time, `0` not to.
pub const UPDATES_VAR: &str = "LEASEHOLD_SOAK_UPDATES";

/// One soak run.
///
/// The seed fixes the fault plan (which fault, when, on what, for how long); the run
/// itself depends on timing, so a fault whose target is not in the state it needs at its
/// time is skipped (and the timeline says so).
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Seed of the fault plan.
    pub seed: u64,
    /// How long faults are injected; then every fault ends and the run waits for the
    /// registry and the watchers to converge.
    pub duration: Duration,
    /// TTL of every registration.
    pub ttl: Duration,
    /// Registrant processes alive at any time (a killed one is replaced at once).
    pub registrants: usize,
    /// Instances each registrant process registers.
    pub per_registrant: usize,
    /// Registrations held by the test process itself (deregistered and replaced now and
    /// then).
    pub in_process: usize,
    /// The services registrations are spread over (each watched by every watcher).
    pub services: Vec<String>,
    /// The registry root everything is written under.
    pub root: String,
    /// Whether every registration is updated all the time (see
    /// `registrant::keep_updating`), and the values
    /// held to order and convergence.
    pub updates: bool,
}

impl SoakConfig {
    /// A run with these defaults, each overridden by its environment variable when set
    /// ([`SEED_VAR`], [`SECS_VAR`], [`TTL_VAR`]; updates on unless [`UPDATES_VAR`] is
    /// `0`).
    ///
    /// # Panics
    ///
    /// If a variable is set but is not a whole number (a typo must not silently run the
    /// default).
    pub fn from_env(seed: u64, secs: u64, ttl_secs: u64) -> Self {
        let seed = env_number(SEED_VAR).unwrap_or(seed);
        let secs = env_number(SECS_VAR).unwrap_or(secs);
        let ttl_secs = env_number(TTL_VAR).unwrap_or(ttl_secs).max(1);
        SoakConfig {
            seed,
            duration: Duration::from_secs(secs),
            ttl: Duration::from_secs(ttl_secs),
            registrants: 3,
            per_registrant: 4,
            in_process: 6,
            services: vec!["soak-a".to_owned(), "soak-b".to_owned()],
            root: "/soak".to_owned(),
            updates: env_number(UPDATES_VAR).is_none_or(|on| on != 0),
        }
    }

    /// This run without updates unless [`UPDATES_VAR`] asks for them.
    pub fn without_updates_by_default(mut self) -> Self {
        self.updates = env_number(UPDATES_VAR).is_some_and(|on| on != 0);
        self
    }

    /// The graces the invariants allow for this TTL.
    pub fn graces(&self) -> Graces {
        Graces::for_ttl(self.ttl)
    }
}

fn env_number(var: &str) -> Option<u64> {
    let value = std::env::var(var).ok()?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{var}={value:?} is not a whole number")),
    )
}

/// How long the invariants wait before something counts as a violation.
///
/// "No live registration is missing while quorum holds" allows no grace for the fault
/// itself, only for the write that repairs what a fault legitimately removed:
///
/// - `write`: a write's own latency on a loaded machine. A registration must be listed
///   once `register` returned; while quorum holds a lease never expires, so a key
///   present stays present.
/// - `quorum_settle`: after a majority of members is back (restarted and serving, or
///   resumed), the election that follows; etcd keeps every lease and key across a
///   quorum loss, ZooKeeper every session that reconnects within its timeout.
/// - `repair`: a key someone else deleted, or a frozen registrant's key that expired
///   while it could not keep it alive, is back within one TTL (the time the design
///   gives a client to notice a frozen member or a lost lease) plus a write.
/// - `recover`: a registration already missing when quorum comes back (it went missing
///   while the cluster could not take writes, or while its owner was frozen) is back
///   within the settle grace plus the longest retry delay of leasehold's default
///   backoff (its cap, doubled by jitter) plus a write.
/// - `ghost`: a key with no live owner (its process killed, its handle deregistered)
///   is gone within the TTL plus this slack, counted from the owner's end or from the
///   last member fault, whichever is later (a leader change renews every lease and
///   session, and nothing expires without a quorum).
/// - `watch`: how long a watcher that says it is live may differ from the registry.
#[derive(Debug, Clone, Copy)]
pub struct Graces {
    /// TTL of every registration.
    pub ttl: Duration,
    /// See the type's docs.
    pub write: Duration,
    /// See the type's docs.
    pub quorum_settle: Duration,
    /// See the type's docs.
    pub repair: Duration,
    /// See the type's docs.
    pub recover: Duration,
    /// See the type's docs.
    pub ghost: Duration,
    /// See the type's docs.
    pub watch: Duration,
    /// How long the registry and every watcher have, after the last fault ended, to
    /// show exactly the live registrations.
    pub converge: Duration,
}

impl Graces {
    /// The graces for registrations of `ttl`.
    pub fn for_ttl(ttl: Duration) -> Self {
        let write = Duration::from_secs(2);
        let quorum_settle = Duration::from_secs(3);
        Graces {
            ttl,
            write,
            quorum_settle,
            repair: ttl + write,
            recover: quorum_settle + leasehold::Backoff::default().max * 2 + write,
            ghost: ttl + Duration::from_secs(3),
            watch: Duration::from_secs(10),
            converge: (ttl * 4).max(Duration::from_secs(60)),
        }
    }
}
