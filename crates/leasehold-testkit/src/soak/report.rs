//! The figures of a soak run, and the verdict.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::checker::{Findings, Quorum, ViolationKind};
use super::config::{SECS_VAR, SEED_VAR, TTL_VAR};
use super::plan::FaultKind;

/// What one soak run did and found.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// `etcd` or `ZooKeeper`.
    pub backend: &'static str,
    /// Seed of the fault plan.
    pub seed: u64,
    /// Length of the fault phase.
    pub duration: Duration,
    /// TTL of the registrations.
    pub ttl: Duration,
    /// Faults in the plan.
    pub planned: usize,
    /// Per kind: (injected, skipped because their target was not in the state they need).
    pub faults: BTreeMap<FaultKind, (u32, u32)>,
    /// From the end of the last fault until the registry and every watcher showed
    /// exactly the live set; `None` if that never happened in time.
    pub converged_after: Option<Duration>,
    /// Gaps, violations and the timeline.
    pub findings: Findings,
    /// Failures of the soak's own machinery (a member that would not come back): the run
    /// says nothing about the backend then.
    pub harness_errors: Vec<String>,
    /// `/proc/loadavg` when the run started.
    pub load_before: String,
    /// `/proc/loadavg` when it ended.
    pub load_after: String,
}

/// The machine's load averages, for the figures (CPU starvation explains slow figures).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

impl SoakReport {
    /// Whether every invariant held and the machinery worked.
    pub fn held(&self) -> bool {
        self.findings.violations.is_empty() && self.harness_errors.is_empty()
    }

    /// The environment that runs this exact soak again.
    pub fn reproduce(&self) -> String {
        format!(
            "{SEED_VAR}={} {SECS_VAR}={} {TTL_VAR}={}",
            self.seed,
            self.duration.as_secs(),
            self.ttl.as_secs()
        )
    }

    /// Violations per kind.
    pub fn violations_by_kind(&self) -> BTreeMap<ViolationKind, usize> {
        let mut by_kind = BTreeMap::new();
        for v in &self.findings.violations {
            *by_kind.entry(v.kind).or_default() += 1;
        }
        by_kind
    }

    /// One line of figures, `key=value` separated by spaces, for scripts to collect.
    pub fn summary_line(&self) -> String {
        let injected: u32 = self.faults.values().map(|(i, _)| i).sum();
        let by_kind: Vec<String> = self
            .faults
            .iter()
            .map(|(k, (i, _))| format!("{}:{i}", k.to_string().replace(' ', "-")))
            .collect();
        let gaps = &self.findings.gaps;
        let longest = gaps.iter().max_by_key(|g| g.len);
        let longest_held = gaps
            .iter()
            .filter(|g| g.quorum == Quorum::Held)
            .max_by_key(|g| g.len);
        let longest_violating = gaps.iter().filter(|g| g.violating).max_by_key(|g| g.len);
        let fmt_gap = |g: Option<&super::checker::GapRecord>| {
            g.map_or("-".to_owned(), |g| {
                format!("{:.3}s({})", g.len.as_secs_f64(), g.quorum).replace(' ', "-")
            })
        };
        let violations: Vec<String> = self
            .violations_by_kind()
            .iter()
            .map(|(k, n)| format!("{}:{n}", k.to_string().replace(' ', "-")))
            .collect();
        format!(
            "SOAK backend={} seed={} secs={} ttl={} faults={injected} by_kind={} updates={} gaps={} gaps_violating={} \
             longest_gap={} longest_gap_quorum_held={} longest_violating_gap={} longest_live_watcher_divergence={:.3}s converge={} violations={} harness_errors={} \
             observations={} failed_observations={} load_before=[{}] load_after=[{}]",
            self.backend,
            self.seed,
            self.duration.as_secs(),
            self.ttl.as_secs(),
            by_kind.join(","),
            self.findings.updates_called,
            gaps.len(),
            gaps.iter().filter(|g| g.violating).count(),
            fmt_gap(longest),
            fmt_gap(longest_held),
            fmt_gap(longest_violating),
            self.findings.longest_live_divergence.as_secs_f64(),
            self.converged_after
                .map_or("never".to_owned(), |d| format!("{:.3}s", d.as_secs_f64())),
            if violations.is_empty() {
                "0".to_owned()
            } else {
                violations.join(",")
            },
            self.harness_errors.len(),
            self.findings.observations,
            self.findings.failed_observations,
            self.load_before,
            self.load_after,
        )
    }

    /// Panics with the seed, the violations and the whole timeline unless every
    /// invariant held. Prints the figures and the timeline either way (a passing test's
    /// output is only shown with `--nocapture`).
    pub fn assert_held(&self) {
        eprintln!("{}", self.summary_line());
        eprintln!("{self}\ntimeline:\n{}", self.findings.timeline);
        if self.held() {
            return;
        }
        panic!(
            "the {} soak broke {} invariant(s) and had {} harness error(s); reproduce with `{}` \
             (first: {})",
            self.backend,
            self.findings.violations.len(),
            self.harness_errors.len(),
            self.reproduce(),
            self.findings
                .violations
                .first()
                .map(|v| format!("{} at {:.3}s: {}", v.kind, v.at.as_secs_f64(), v.detail))
                .or_else(|| self.harness_errors.first().cloned())
                .unwrap_or_default()
        );
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} soak, seed {}, {}s of faults, TTL {}s ({}); load {} -> {}",
            self.backend,
            self.seed,
            self.duration.as_secs(),
            self.ttl.as_secs(),
            self.reproduce(),
            self.load_before,
            self.load_after
        )?;
        writeln!(f, "faults ({} planned): injected / skipped", self.planned)?;
        for (kind, (injected, skipped)) in &self.faults {
            writeln!(f, "  {kind:<28} {injected:>4} / {skipped}")?;
        }
        writeln!(f, "updates called: {}", self.findings.updates_called)?;
        let gaps = &self.findings.gaps;
        writeln!(f, "registrations missing: {} gaps", gaps.len())?;
        for quorum in [Quorum::Held, Quorum::Settling, Quorum::Lost] {
            let of: Vec<_> = gaps.iter().filter(|g| g.quorum == quorum).collect();
            if let Some(longest) = of.iter().max_by_key(|g| g.len) {
                writeln!(
                    f,
                    "  began with {quorum}: {} gaps ({} violating), longest {:.3}s ({} of {}, from {:.3}s{})",
                    of.len(),
                    of.iter().filter(|g| g.violating).count(),
                    longest.len.as_secs_f64(),
                    longest.id,
                    longest.owner,
                    longest.from.as_secs_f64(),
                    if longest.closed {
                        ""
                    } else {
                        ", never listed again"
                    }
                )?;
            }
        }
        match self.converged_after {
            Some(after) => writeln!(f, "converged {:.3}s after the last fault", after.as_secs_f64())?,
            None => writeln!(f, "never converged after the last fault")?,
        }
        writeln!(
            f,
            "observations: {} ({} failed: no member could answer)",
            self.findings.observations, self.findings.failed_observations
        )?;
        if !self.findings.violations.is_empty() {
            writeln!(f, "violations:")?;
            for v in &self.findings.violations {
                writeln!(f, "  {:>8.3}s  {}: {}", v.at.as_secs_f64(), v.kind, v.detail)?;
            }
        }
        for e in &self.harness_errors {
            writeln!(f, "harness error: {e}")?;
        }
        Ok(())
    }
}
