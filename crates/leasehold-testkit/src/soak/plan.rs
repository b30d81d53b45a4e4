//! The fault plan: which fault starts when, on what, for how long, drawn from the seed
//! alone, so the same seed gives the same plan on every machine.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A kind of fault (or of registrant activity) the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a member, restart it after the hold.
    KillMember,
    /// SIGSTOP a member, SIGCONT it after the hold.
    FreezeMember,
    /// SIGKILL every member, restart them all after the hold.
    RestartCluster,
    /// Replace a member by an empty one that resyncs from the others.
    WipeMember,
    /// Compact the history up to the current revision (etcd).
    Compact,
    /// Delete a registered key with the plain client, as an operator would.
    DeleteKey,
    /// SIGKILL a registrant process (a new one replaces it).
    KillRegistrant,
    /// SIGSTOP a registrant process, SIGCONT it after the hold.
    FreezeRegistrant,
    /// Deregister one of the test process's own registrations and register a new one.
    Churn,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillMember,
        FaultKind::FreezeMember,
        FaultKind::RestartCluster,
        FaultKind::WipeMember,
        FaultKind::Compact,
        FaultKind::DeleteKey,
        FaultKind::KillRegistrant,
        FaultKind::FreezeRegistrant,
        FaultKind::Churn,
    ];

    /// How often this kind is drawn, relative to the others.
    fn weight(self) -> u32 {
        match self {
            FaultKind::KillMember => 3,
            FaultKind::FreezeMember => 4,
            FaultKind::RestartCluster => 1,
            FaultKind::WipeMember => 1,
            FaultKind::Compact => 2,
            FaultKind::DeleteKey => 3,
            FaultKind::KillRegistrant => 2,
            FaultKind::FreezeRegistrant => 2,
            FaultKind::Churn => 2,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            FaultKind::KillMember => "kill member",
            FaultKind::FreezeMember => "freeze member",
            FaultKind::RestartCluster => "restart whole cluster",
            FaultKind::WipeMember => "wipe member",
            FaultKind::Compact => "compaction",
            FaultKind::DeleteKey => "external delete",
            FaultKind::KillRegistrant => "kill registrant",
            FaultKind::FreezeRegistrant => "freeze registrant",
            FaultKind::Churn => "in-process re-registration",
        })
    }
}

/// One fault of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFault {
    /// When it starts, from the start of the fault phase.
    pub at: Duration,
    /// What it is.
    pub kind: FaultKind,
    /// Picks the target among those eligible when it starts (`pick % eligible`).
    pub pick: u32,
    /// How long it lasts before it is undone (0 for instant faults).
    pub hold: Duration,
}

/// The plan for `duration` of faults with registrations of `ttl`, from `seed`.
/// `compacts` says whether the backend has compaction (else none is planned).
pub fn plan(seed: u64, duration: Duration, ttl: Duration, compacts: bool) -> Vec<PlannedFault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let kinds: Vec<FaultKind> = FaultKind::ALL
        .into_iter()
        .filter(|k| compacts || *k != FaultKind::Compact)
        .collect();
    let total: u32 = kinds.iter().map(|k| k.weight()).sum();
    let member_hold_max = (ttl * 3 / 2).clamp(Duration::from_secs(2), Duration::from_secs(12));
    // Every kind once, in a seeded order, then weighted draws: a short run still has
    // each kind of fault.
    let mut first: Vec<FaultKind> = kinds.clone();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.random_range(0..=i));
    }
    let mut first = first.into_iter();
    let mut faults = Vec::new();
    let mut at = Duration::from_millis(rng.random_range(500..1500));
    while at < duration {
        let kind = first.next().unwrap_or_else(|| {
            let mut draw = rng.random_range(0..total);
            *kinds
                .iter()
                .find(|k| {
                    if draw < k.weight() {
                        true
                    } else {
                        draw -= k.weight();
                        false
                    }
                })
                .expect("draw below the total weight")
        });
        let hold = match kind {
            FaultKind::KillMember | FaultKind::FreezeMember => {
                uniform(&mut rng, Duration::from_millis(500), member_hold_max)
            }
            FaultKind::RestartCluster => {
                uniform(&mut rng, Duration::from_millis(500), Duration::from_secs(3))
            }
            FaultKind::FreezeRegistrant => uniform(&mut rng, ttl * 3 / 10, ttl * 2),
            _ => Duration::ZERO,
        };
        faults.push(PlannedFault {
            at,
            kind,
            pick: rng.random(),
            hold,
        });
        at += Duration::from_millis(rng.random_range(300..3000));
    }
    faults
}

fn uniform(rng: &mut StdRng, low: Duration, high: Duration) -> Duration {
    let (low, high) = (
        low.as_millis() as u64,
        high.as_millis().max(low.as_millis() + 1) as u64,
    );
    Duration::from_millis(rng.random_range(low..high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_fixes_the_plan() {
        let a = plan(7, Duration::from_secs(60), Duration::from_secs(3), true);
        assert_eq!(a, plan(7, Duration::from_secs(60), Duration::from_secs(3), true));
        assert_ne!(a, plan(8, Duration::from_secs(60), Duration::from_secs(3), true));
        assert!(a.len() > 20, "a fault every 0.3 to 3 s");
        assert!(a.windows(2).all(|w| w[0].at < w[1].at));
        assert!(a.iter().all(|f| f.at < Duration::from_secs(60)));
        assert!(
            FaultKind::ALL.iter().all(|k| a.iter().any(|f| f.kind == *k)),
            "every kind at least once"
        );
    }

    #[test]
    fn no_compaction_without_it() {
        let faults = plan(1, Duration::from_secs(300), Duration::from_secs(3), false);
        assert!(faults.iter().all(|f| f.kind != FaultKind::Compact));
    }
}
