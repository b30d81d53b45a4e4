//! The invariants, checked against every observation of the registry.
//!
//! The checker is told what the soak does (members down and up, registrations made,
//! owners frozen, resumed, killed or deregistered, keys deleted) and what the plain
//! client and the watchers see, and decides from those alone; it never sleeps and never
//! talks to a server, so its rules are unit-tested below.
//!
//! # When a registration must be listed
//!
//! A registration is *expected* at time `t` (the start of an observation) when all hold:
//!
//! 1. its handle lives: `register` returned (its first `Registered`), it was not
//!    deregistered, and its owner process is neither killed nor frozen;
//! 2. quorum holds: a majority of members is available (running, not frozen, and, after a
//!    restart or a wipe, serving again) and has been since `t - quorum_settle`;
//! 3. nothing legitimately removed it within the repair grace: no external delete of its
//!    key and no resume of its frozen owner after `t - repair`, and, if it was already
//!    missing when quorum came back, no quorum regained after `t - recover`.
//!
//! An expected registration that is not listed is a *missing* violation. Every gap (a
//! run of observations without the registration) is recorded with the quorum state at
//! its start, whether or not it violates.
//!
//! # When a key is a ghost
//!
//! A listed key whose registration has no live owner (killed process, deregistered or
//! failed registration, or no registration at all) is a *ghost* once quorum holds and
//! the owner's end and the last member fault are both more than `ghost` ago.
//!
//! # When a watcher is stale
//!
//! A watcher that says it is live and differs from the plain listing about one id for
//! longer than `watch`, while quorum holds, is *stale*.
//!
//! # Updated values
//!
//! Every registration's owner bumps its metadata entry `seq` all the time and tells the
//! checker each value it *called* `update` with. Ids are never reused (a restarted
//! registrant and a re-registration in the test process take fresh ids), so a
//! registration's `seq` only grows over its whole life:
//!
//! - a watcher, or the plain listing, that shows a lower `seq` for an id than it showed
//!   before, while the id's owner is not killed or deregistered, went *backwards*;
//! - once the faults have ended and the owners stopped updating, convergence also needs
//!   the registry and every watcher to show each live registration with the last `seq`
//!   its owner called.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use leasehold::RegistrationState;
use tokio::sync::watch;

use super::config::Graces;

/// Who holds a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Owner {
    /// The test process itself.
    InProcess,
    /// Registrant process number `n`.
    Process(usize),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::InProcess => f.write_str("the test process"),
            Owner::Process(n) => write!(f, "registrant {n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// `register` has not returned yet.
    Pending,
    Live,
    Frozen,
    /// Killed, deregistered, or its `register` failed.
    Dead(Instant),
}

/// The quorum state at some moment, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quorum {
    /// Fewer than a majority of members available.
    Lost,
    /// A majority is back, for less than the settle grace.
    Settling,
    /// A majority available, settled.
    Held,
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Quorum::Lost => "quorum lost",
            Quorum::Settling => "quorum settling",
            Quorum::Held => "quorum held",
        })
    }
}

/// How long a live watcher may disagree with the registry before the timeline notes
/// it: well under the grace, so a run that held still shows how close it came.
const NEAR_MISS: Duration = Duration::from_secs(3);

/// A kind of invariant violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// A live registration not listed while quorum held.
    Missing,
    /// A key with no live owner, listed after its grace.
    Ghost,
    /// A live watcher that differed from the registry for too long.
    StaleWatcher,
    /// The registry or a watcher did not show exactly the live set, each with the last
    /// value its owner called, in time after the faults ended.
    NotConverged,
    /// A watcher or the registry showed a registration's `seq` lower than it had shown
    /// before, while its owner lived.
    SeqBackwards,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            ViolationKind::Missing => "missing",
            ViolationKind::Ghost => "ghost",
            ViolationKind::StaleWatcher => "stale watcher",
            ViolationKind::NotConverged => "not converged",
            ViolationKind::SeqBackwards => "seq backwards",
        })
    }
}

/// One broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Since the start of the run.
    pub at: Duration,
    /// Which invariant.
    pub kind: ViolationKind,
    /// What exactly.
    pub detail: String,
}

/// One run of observations without a registration.
#[derive(Debug, Clone)]
pub struct GapRecord {
    /// The registration's id.
    pub id: String,
    /// Its owner.
    pub owner: String,
    /// First observation without it, since the start of the run.
    pub from: Duration,
    /// Until it was listed again (or the last observation, if it never was).
    pub len: Duration,
    /// The quorum state when it went missing.
    pub quorum: Quorum,
    /// Whether any observation in it broke the "missing" invariant.
    pub violating: bool,
    /// Whether it had ended by the end of the run.
    pub closed: bool,
}

#[derive(Debug)]
struct OpenGap {
    from: Instant,
    last_absent: Instant,
    quorum: Quorum,
    violating: bool,
}

#[derive(Debug)]
struct Reg {
    service: String,
    owner: Owner,
    life: Life,
    /// When `register` first returned: gaps count from then.
    registered_at: Option<Instant>,
    /// Not expected before this (first Registered, a resume, an external delete).
    expected_from: Option<Instant>,
    gap: Option<OpenGap>,
    ghost_reported: bool,
    /// The handle's states, for in-process registrations.
    states: Option<watch::Receiver<RegistrationState>>,
    /// The last `seq` its owner called `update` with (0: registered, not updated).
    called: u64,
}

/// What a watcher showed at one observation.
#[derive(Debug, Clone)]
pub(crate) struct WatcherView {
    pub(crate) name: String,
    pub(crate) service: String,
    pub(crate) live: bool,
    /// Each id it shows, with the `seq` of its value (`None` if it has none).
    pub(crate) ids: BTreeMap<String, Option<u64>>,
}

/// A key the plain client listed, decoded as far as it could be.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) key: String,
    /// `(service, id)` from the value; `None` when it is not a native instance.
    pub(crate) instance: Option<(String, String)>,
    /// The `seq` metadata entry of the value, if it has one.
    pub(crate) seq: Option<u64>,
}

/// What the run did and saw, in order, for a failure to be read and reproduced.
#[derive(Debug, Default, Clone)]
pub struct Timeline {
    /// `(since start, what)`.
    pub entries: Vec<(Duration, String)>,
}

impl fmt::Display for Timeline {
    /// In time order (an observation is noted at its start, after later events).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<&(Duration, String)> = self.entries.iter().collect();
        entries.sort_by_key(|(at, _)| *at);
        for (at, what) in entries {
            writeln!(f, "  {:>8.3}s  {what}", at.as_secs_f64())?;
        }
        Ok(())
    }
}

/// The invariant checker. See the module docs for the rules.
#[derive(Debug)]
pub(crate) struct Checker {
    graces: Graces,
    start: Instant,
    available: Vec<bool>,
    quorum_since: Option<Instant>,
    last_member_event: Instant,
    regs: BTreeMap<String, Reg>,
    /// Keys listed that belong to no registration, with when they were first reported.
    foreign_reported: BTreeSet<String>,
    /// `(watcher, id)` → since when the watcher and the registry disagree about `id`.
    watcher_diverged: HashMap<(String, String), (Instant, bool)>,
    /// `(watcher, id)` → since when the watcher has said it is live, with quorum held,
    /// while it and the registry disagree about `id`.
    watcher_live_diverged: HashMap<(String, String), (Instant, bool)>,
    /// The longest such stretch so far: how close a run came to a stale watcher.
    longest_live_divergence: Duration,
    gaps: Vec<GapRecord>,
    violations: Vec<Violation>,
    timeline: Timeline,
    observations: u64,
    failed_observations: u64,
    last_seen: Vec<Seen>,
    /// `(watcher or "the registry", id)` → the highest `seq` it showed.
    highest_seq: HashMap<(String, String), u64>,
    /// `(watcher or "the registry", id)` already reported as going backwards.
    backwards_reported: BTreeSet<(String, String)>,
    updates_called: u64,
    /// Whether the owners were told to stop updating.
    quiescing: bool,
    /// Registrant processes that said they stopped updating.
    quiet: BTreeSet<Owner>,
}

impl Checker {
    pub(crate) fn new(graces: Graces, members: usize, start: Instant) -> Self {
        Checker {
            graces,
            start,
            available: vec![true; members],
            // The cluster starts healthy: settled already.
            quorum_since: Some(start.checked_sub(graces.quorum_settle).unwrap_or(start)),
            last_member_event: start,
            regs: BTreeMap::new(),
            foreign_reported: BTreeSet::new(),
            watcher_diverged: HashMap::new(),
            watcher_live_diverged: HashMap::new(),
            longest_live_divergence: Duration::ZERO,
            gaps: Vec::new(),
            violations: Vec::new(),
            timeline: Timeline::default(),
            observations: 0,
            failed_observations: 0,
            last_seen: Vec::new(),
            highest_seq: HashMap::new(),
            backwards_reported: BTreeSet::new(),
            updates_called: 0,
            quiescing: false,
            quiet: BTreeSet::new(),
        }
    }

    fn since(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.start)
    }

    /// Adds a line to the timeline.
    pub(crate) fn note(&mut self, t: Instant, what: impl Into<String>) {
        let at = self.since(t);
        self.timeline.entries.push((at, what.into()));
    }

    fn violate(&mut self, t: Instant, kind: ViolationKind, detail: String) {
        self.note(t, format!("VIOLATION {kind}: {detail}"));
        self.violations.push(Violation {
            at: self.since(t),
            kind,
            detail,
        });
    }

    fn has_quorum(&self) -> bool {
        self.available.iter().filter(|&&a| a).count() * 2 > self.available.len()
    }

    /// The quorum state at `t`, as far as the soak made it.
    pub(crate) fn quorum(&self, t: Instant) -> Quorum {
        match self.quorum_since {
            None => Quorum::Lost,
            Some(since) if t >= since + self.graces.quorum_settle => Quorum::Held,
            Some(_) => Quorum::Settling,
        }
    }

    /// Member `index` stops being available (killed, frozen, being wiped or restarted).
    pub(crate) fn member_down(&mut self, index: usize, t: Instant) {
        self.available[index] = false;
        self.last_member_event = t;
        if !self.has_quorum() && self.quorum_since.is_some() {
            self.quorum_since = None;
            self.note(t, "quorum lost");
        }
    }

    /// Member `index` is available again (resumed, or restarted and serving).
    pub(crate) fn member_up(&mut self, index: usize, t: Instant) {
        self.available[index] = true;
        self.last_member_event = t;
        if self.has_quorum() && self.quorum_since.is_none() {
            self.quorum_since = Some(t);
            self.note(t, "quorum back");
            // What is missing now went missing while nothing could be written: its owner
            // has been retrying with backoff and gets the recovery grace.
            let until = t + self.graces.recover;
            for reg in self.regs.values_mut().filter(|r| r.gap.is_some()) {
                reg.expected_from = Some(reg.expected_from.map_or(until, |e| e.max(until)));
            }
        }
    }

    /// A registration is about to be made.
    pub(crate) fn pending(&mut self, id: &str, service: &str, owner: Owner) {
        self.regs.insert(
            id.to_owned(),
            Reg {
                service: service.to_owned(),
                owner,
                life: Life::Pending,
                registered_at: None,
                expected_from: None,
                gap: None,
                ghost_reported: false,
                states: None,
                called: 0,
            },
        );
    }

    /// The owner of `id` called `update` with `seq`.
    pub(crate) fn updated(&mut self, id: &str, seq: u64) {
        self.updates_called += 1;
        if let Some(reg) = self.regs.get_mut(id) {
            reg.called = reg.called.max(seq);
        }
    }

    /// Every owner is being told to stop updating (the test process has stopped already).
    pub(crate) fn quiescing(&mut self, t: Instant) {
        self.quiescing = true;
        self.note(t, "owners told to stop updating");
    }

    /// `owner` calls no more updates.
    pub(crate) fn owner_quiet(&mut self, owner: Owner) {
        self.quiet.insert(owner);
    }

    /// `register` returned for `id` (its first `Registered`).
    pub(crate) fn registered(
        &mut self,
        id: &str,
        t: Instant,
        states: Option<watch::Receiver<RegistrationState>>,
    ) {
        if let Some(reg) = self.regs.get_mut(id) {
            if reg.life == Life::Pending {
                reg.life = Life::Live;
            }
            reg.registered_at.get_or_insert(t);
            reg.expected_from = Some(reg.expected_from.map_or(t, |e| e.max(t)));
            reg.states = states;
        }
    }

    /// `id` has no live owner any more (deregistered, killed, or `register` failed).
    pub(crate) fn ended(&mut self, id: &str, t: Instant) {
        let mut closed = None;
        if let Some(reg) = self.regs.get_mut(id) {
            if !matches!(reg.life, Life::Dead(_)) {
                reg.life = Life::Dead(t);
                closed = reg.gap.take().map(|gap| (reg.owner, gap));
            }
        }
        if let Some((owner, gap)) = closed {
            self.record_gap(id, owner, gap, None);
        }
    }

    fn ids_of(&self, owner: Owner) -> Vec<String> {
        self.regs
            .iter()
            .filter(|(_, r)| r.owner == owner)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Every registration of `owner` ended (its process was killed).
    pub(crate) fn owner_killed(&mut self, owner: Owner, t: Instant) {
        for id in self.ids_of(owner) {
            self.ended(&id, t);
        }
    }

    /// `owner`'s process was frozen: none of its registrations is expected until it is
    /// resumed.
    pub(crate) fn owner_frozen(&mut self, owner: Owner) {
        for reg in self.regs.values_mut().filter(|r| r.owner == owner) {
            if reg.life == Life::Live {
                reg.life = Life::Frozen;
            }
        }
    }

    /// `owner`'s process runs again: its registrations have the repair grace to come
    /// back.
    pub(crate) fn owner_resumed(&mut self, owner: Owner, t: Instant) {
        let until = t + self.graces.repair;
        for reg in self.regs.values_mut().filter(|r| r.owner == owner) {
            if reg.life == Life::Frozen {
                reg.life = Life::Live;
                reg.expected_from = Some(reg.expected_from.map_or(until, |e| e.max(until)));
            }
        }
    }

    /// Someone else deleted the key of `id` (or is about to): its owner has the repair
    /// grace to write it again.
    pub(crate) fn deleted_externally(&mut self, id: &str, t: Instant) {
        let until = t + self.graces.repair;
        if let Some(reg) = self.regs.get_mut(id) {
            reg.expected_from = Some(reg.expected_from.map_or(until, |e| e.max(until)));
        }
    }

    /// The keys of the last successful observation.
    pub(crate) fn last_seen(&self) -> &[Seen] {
        &self.last_seen
    }

    /// The service of a known registration.
    pub(crate) fn service_of(&self, id: &str) -> Option<&str> {
        self.regs.get(id).map(|r| r.service.as_str())
    }

    /// An observation that failed (no member answered).
    pub(crate) fn observation_failed(&mut self) {
        self.failed_observations += 1;
    }

    /// Checks one observation started at `t`: the plain client's listing and, read
    /// just after it, the watchers' views.
    pub(crate) fn observe(&mut self, t: Instant, seen: Vec<Seen>, watchers: &[WatcherView]) {
        self.observations += 1;
        let quorum = self.quorum(t);
        let mut listed: HashMap<&str, usize> = HashMap::new();
        for s in &seen {
            if let Some((_, id)) = &s.instance {
                *listed.entry(id.as_str()).or_default() += 1;
            }
        }
        let ghost_floor = self.last_member_event + self.graces.ghost;
        let mut violations = Vec::new();
        let mut closed_gaps = Vec::new();
        let mut opened = Vec::new();
        for (id, reg) in &mut self.regs {
            let present = listed.contains_key(id.as_str());
            match reg.life {
                Life::Pending => {}
                // An observation that began before `register` returned proves nothing.
                Life::Live | Life::Frozen if reg.registered_at.is_none_or(|r| t < r) => {}
                Life::Live | Life::Frozen => {
                    if present {
                        if let Some(gap) = reg.gap.take() {
                            closed_gaps.push((id.clone(), reg.owner, gap, t));
                        }
                        continue;
                    }
                    if reg.gap.is_none() {
                        opened.push(format!("{id} ({}) not listed ({quorum})", reg.owner));
                    }
                    let gap = reg.gap.get_or_insert(OpenGap {
                        from: t,
                        last_absent: t,
                        quorum,
                        violating: false,
                    });
                    gap.last_absent = t;
                    let expected = reg.life == Life::Live
                        && quorum == Quorum::Held
                        && reg.expected_from.is_some_and(|from| t >= from);
                    if expected && !gap.violating {
                        gap.violating = true;
                        let state = reg
                            .states
                            .as_ref()
                            .map(|s| format!(", its handle says {:?}", *s.borrow()))
                            .unwrap_or_default();
                        violations.push((
                            ViolationKind::Missing,
                            format!(
                                "{id} ({}, {}) not listed while {quorum}; missing since {:.3}s{state}",
                                reg.service,
                                reg.owner,
                                gap.from.saturating_duration_since(self.start).as_secs_f64()
                            ),
                        ));
                    }
                }
                Life::Dead(ended) => {
                    let deadline = (ended + self.graces.ghost).max(ghost_floor);
                    if present && !reg.ghost_reported && quorum == Quorum::Held && t >= deadline {
                        reg.ghost_reported = true;
                        violations.push((
                            ViolationKind::Ghost,
                            format!(
                                "{id} ({}, {}) still listed {:.3}s after its owner ended",
                                reg.service,
                                reg.owner,
                                t.saturating_duration_since(ended).as_secs_f64()
                            ),
                        ));
                    }
                }
            }
        }
        for s in &seen {
            let known = s
                .instance
                .as_ref()
                .is_some_and(|(_, id)| self.regs.contains_key(id));
            let deadline = ghost_floor.max(self.start + self.graces.ghost);
            if !known
                && quorum == Quorum::Held
                && t >= deadline
                && self.foreign_reported.insert(s.key.clone())
            {
                violations.push((
                    ViolationKind::Ghost,
                    format!("{} listed but registered by no one in this run", s.key),
                ));
            }
        }
        for what in opened {
            self.note(t, what);
        }
        for (id, owner, gap, until) in closed_gaps {
            self.record_gap(&id, owner, gap, Some(until));
        }
        for (kind, detail) in violations {
            self.violate(t, kind, detail);
        }
        self.check_watchers(t, quorum, &seen, watchers);
        self.check_seq_order(t, &seen, watchers);
        self.last_seen = seen;
    }

    /// Whether the registry or a watcher showed an id's `seq` lower than before while
    /// its owner lived.
    fn check_seq_order(&mut self, t: Instant, seen: &[Seen], watchers: &[WatcherView]) {
        let registry = seen.iter().filter_map(|s| {
            let (_, id) = s.instance.as_ref()?;
            Some(("the registry", id.as_str(), s.seq?))
        });
        let watched = watchers.iter().flat_map(|view| {
            view.ids
                .iter()
                .filter_map(|(id, seq)| Some((view.name.as_str(), id.as_str(), (*seq)?)))
        });
        let mut violations = Vec::new();
        for (who, id, seq) in registry.chain(watched) {
            let Some(reg) = self.regs.get(id) else { continue };
            if matches!(reg.life, Life::Dead(_)) {
                continue;
            }
            let key = (who.to_owned(), id.to_owned());
            let highest = self.highest_seq.entry(key.clone()).or_insert(seq);
            if seq < *highest {
                if self.backwards_reported.insert(key) {
                    violations.push(format!(
                        "{who} shows {id} ({}, {}) with seq {seq} after it showed seq {highest}; its owner last called seq {}",
                        reg.service, reg.owner, reg.called
                    ));
                }
            } else {
                *highest = seq;
            }
        }
        for detail in violations {
            self.violate(t, ViolationKind::SeqBackwards, detail);
        }
    }

    fn check_watchers(&mut self, t: Instant, quorum: Quorum, seen: &[Seen], watchers: &[WatcherView]) {
        let mut violations = Vec::new();
        let mut near_misses = Vec::new();
        let mut still = std::collections::HashSet::new();
        for view in watchers {
            let listed: BTreeSet<&str> = seen
                .iter()
                .filter_map(|s| s.instance.as_ref())
                .filter(|(service, _)| *service == view.service)
                .map(|(_, id)| id.as_str())
                .collect();
            let watched: BTreeSet<&str> = view.ids.keys().map(String::as_str).collect();
            for id in listed.symmetric_difference(&watched) {
                let key = (view.name.clone(), (*id).to_owned());
                still.insert(key.clone());
                if view.live && quorum == Quorum::Held {
                    let (live_since, noted) = self
                        .watcher_live_diverged
                        .entry(key.clone())
                        .or_insert((t, false));
                    let stretch = t - *live_since;
                    self.longest_live_divergence = self.longest_live_divergence.max(stretch);
                    if stretch >= NEAR_MISS && !*noted {
                        *noted = true;
                        near_misses.push(format!(
                            "{} says it is live but {} {id} for {:.3}s (quorum held)",
                            view.name,
                            if watched.contains(id) {
                                "still shows"
                            } else {
                                "does not show"
                            },
                            stretch.as_secs_f64()
                        ));
                    }
                } else {
                    self.watcher_live_diverged.remove(&key);
                }
                let (since, reported) = self.watcher_diverged.entry(key).or_insert((t, false));
                if view.live && quorum == Quorum::Held && !*reported && t >= *since + self.graces.watch {
                    *reported = true;
                    let what = if watched.contains(id) {
                        "still shows"
                    } else {
                        "does not show"
                    };
                    violations.push(format!(
                        "{} {what} {id} although the registry has disagreed for {:.3}s and it says it is live",
                        view.name,
                        t.saturating_duration_since(*since).as_secs_f64()
                    ));
                }
            }
        }
        self.watcher_diverged.retain(|key, _| still.contains(key));
        self.watcher_live_diverged.retain(|key, _| still.contains(key));
        for what in near_misses {
            self.note(t, what);
        }
        for detail in violations {
            self.violate(t, ViolationKind::StaleWatcher, detail);
        }
    }

    /// Records a gap that ended when `id` was listed again at `listed_again`, or, with
    /// `None`, one that never ended (its owner ended first, or the run did): its length
    /// then runs to its last observation.
    fn record_gap(&mut self, id: &str, owner: Owner, gap: OpenGap, listed_again: Option<Instant>) {
        let closed = listed_again.is_some();
        let end = listed_again.unwrap_or(gap.last_absent);
        let record = GapRecord {
            id: id.to_owned(),
            owner: owner.to_string(),
            from: self.since(gap.from),
            len: end.saturating_duration_since(gap.from),
            quorum: gap.quorum,
            violating: gap.violating,
            closed,
        };
        if let Some(until) = listed_again {
            self.note(
                until,
                format!(
                    "{id} listed again after a gap of {:.3}s (began with {})",
                    record.len.as_secs_f64(),
                    record.quorum
                ),
            );
        }
        self.gaps.push(record);
    }

    /// Why the registry or a watcher does not (yet) show exactly the live registrations,
    /// or `None` when everything has converged.
    pub(crate) fn unconverged(&self, seen: &[Seen], watchers: &[WatcherView]) -> Option<String> {
        let mut problems = Vec::new();
        let mut keys_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut seq_of: BTreeMap<&str, Option<u64>> = BTreeMap::new();
        let mut updating = BTreeSet::new();
        for s in seen {
            match &s.instance {
                Some((_, id)) => {
                    keys_of.entry(id.as_str()).or_default().push(&s.key);
                    seq_of.insert(id.as_str(), s.seq);
                }
                None => problems.push(format!("undecodable key {}", s.key)),
            }
        }
        for (id, reg) in &self.regs {
            let keys = keys_of.get(id.as_str()).map_or(0, Vec::len);
            match reg.life {
                Life::Pending => problems.push(format!("{id} never finished registering")),
                Life::Live | Life::Frozen if keys == 0 => {
                    problems.push(format!("{id} ({}) missing", reg.owner))
                }
                Life::Live | Life::Frozen if keys > 1 => {
                    problems.push(format!("{id} listed {keys} times: {:?}", keys_of[id.as_str()]))
                }
                Life::Dead(_) if keys > 0 => {
                    problems.push(format!("{id} ({}, ended) still listed", reg.owner))
                }
                Life::Live | Life::Frozen if seq_of.get(id.as_str()) != Some(&Some(reg.called)) => problems
                    .push(format!(
                        "{id} ({}) listed with seq {}, its owner last called seq {}",
                        reg.owner,
                        show_seq(seq_of[id.as_str()]),
                        reg.called
                    )),
                _ => {}
            }
            if matches!(reg.owner, Owner::Process(_))
                && self.quiescing
                && reg.life == Life::Live
                && !self.quiet.contains(&reg.owner)
            {
                updating.insert(reg.owner);
            }
            if let Some(states) = &reg.states {
                let state = *states.borrow();
                if matches!(reg.life, Life::Live) && state != RegistrationState::Registered {
                    problems.push(format!("{id}'s handle says {state:?}"));
                }
            }
        }
        for owner in updating {
            problems.push(format!("{owner} has not stopped updating yet"));
        }
        for id in keys_of.keys() {
            if !self.regs.contains_key(*id) {
                problems.push(format!("{id} listed but registered by no one"));
            }
        }
        for view in watchers {
            let live: BTreeSet<&str> = self
                .regs
                .iter()
                .filter(|(_, r)| r.service == view.service && matches!(r.life, Life::Live | Life::Frozen))
                .map(|(id, _)| id.as_str())
                .collect();
            let watched: BTreeSet<&str> = view.ids.keys().map(String::as_str).collect();
            for (id, seq) in &view.ids {
                if let Some(reg) = self
                    .regs
                    .get(id)
                    .filter(|r| matches!(r.life, Life::Live | Life::Frozen))
                {
                    if *seq != Some(reg.called) {
                        problems.push(format!(
                            "{} shows {id} with seq {}, its owner last called seq {}",
                            view.name,
                            show_seq(*seq),
                            reg.called
                        ));
                    }
                }
            }
            if !view.live {
                problems.push(format!("{} is not live", view.name));
            }
            if live != watched {
                let lacks: Vec<_> = live.difference(&watched).collect();
                let extra: Vec<_> = watched.difference(&live).collect();
                problems.push(format!("{} lacks {lacks:?} and has extra {extra:?}", view.name));
            }
        }
        if problems.is_empty() {
            None
        } else {
            Some(problems.join("; "))
        }
    }

    /// The run ended without convergence.
    pub(crate) fn not_converged(&mut self, t: Instant, why: String) {
        self.violate(t, ViolationKind::NotConverged, why);
    }

    /// Closes the checker: open gaps are recorded as unclosed.
    pub(crate) fn finish(mut self) -> Findings {
        let open: Vec<(String, Owner, OpenGap)> = self
            .regs
            .iter_mut()
            .filter_map(|(id, r)| r.gap.take().map(|g| (id.clone(), r.owner, g)))
            .collect();
        for (id, owner, gap) in open {
            self.record_gap(&id, owner, gap, None);
        }
        Findings {
            gaps: self.gaps,
            violations: self.violations,
            timeline: self.timeline,
            observations: self.observations,
            failed_observations: self.failed_observations,
            updates_called: self.updates_called,
            longest_live_divergence: self.longest_live_divergence,
        }
    }
}

fn show_seq(seq: Option<u64>) -> String {
    seq.map_or_else(|| "(none)".to_owned(), |s| s.to_string())
}

/// What the checker found over a whole run.
#[derive(Debug, Clone)]
pub struct Findings {
    /// Every gap of every registration.
    pub gaps: Vec<GapRecord>,
    /// Every violation, in order.
    pub violations: Vec<Violation>,
    /// What happened, in order.
    pub timeline: Timeline,
    /// Observations the plain client made.
    pub observations: u64,
    /// Observations that got no answer (no member could serve a linearizable read).
    pub failed_observations: u64,
    /// Updates the registrations' owners called.
    pub updates_called: u64,
    /// The longest a watcher said it was live, with quorum held, while it disagreed with
    /// the registry about an id: a stale watcher under the grace still shows here.
    pub longest_live_divergence: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graces() -> Graces {
        Graces::for_ttl(Duration::from_secs(3))
    }

    fn seen(ids: &[&str]) -> Vec<Seen> {
        ids.iter()
            .map(|id| Seen {
                key: format!("/soak/a/{id}"),
                instance: Some(("a".to_owned(), (*id).to_owned())),
                seq: Some(0),
            })
            .collect()
    }

    fn seen_seq(id: &str, seq: u64) -> Vec<Seen> {
        let mut seen = seen(&[id]);
        seen[0].seq = Some(seq);
        seen
    }

    fn ids(ids: &[&str]) -> BTreeMap<String, Option<u64>> {
        ids.iter().map(|s| ((*s).to_owned(), Some(0))).collect()
    }

    fn kinds(checker: &Checker) -> Vec<ViolationKind> {
        checker.violations.iter().map(|v| v.kind).collect()
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_registration_missing_while_quorum_holds_is_a_violation() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("x", "a", Owner::InProcess);
        c.registered("x", t0 + secs(4.0), None);
        c.observe(t0 + secs(4.1), seen(&["x"]), &[]);
        c.observe(t0 + secs(4.2), seen(&[]), &[]);
        c.observe(t0 + secs(4.3), seen(&[]), &[]);
        c.observe(t0 + secs(4.4), seen(&["x"]), &[]);
        assert_eq!(kinds(&c), [ViolationKind::Missing], "one violation per gap");
        let findings = c.finish();
        assert_eq!(findings.gaps.len(), 1);
        assert!(findings.gaps[0].violating && findings.gaps[0].closed);
        assert_eq!(findings.gaps[0].len, secs(0.2));
    }

    #[test]
    fn no_violation_before_registered_while_frozen_or_without_quorum() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("x", "a", Owner::Process(1));
        c.observe(t0 + secs(4.0), seen(&[]), &[]);
        c.registered("x", t0 + secs(5.0), None);
        c.owner_frozen(Owner::Process(1));
        c.observe(t0 + secs(6.0), seen(&[]), &[]);
        // Resumed: one repair grace to come back.
        c.owner_resumed(Owner::Process(1), t0 + secs(7.0));
        c.observe(t0 + secs(7.0) + graces().repair - secs(0.1), seen(&[]), &[]);
        assert!(kinds(&c).is_empty());
        c.observe(t0 + secs(7.0) + graces().repair, seen(&[]), &[]);
        assert_eq!(kinds(&c), [ViolationKind::Missing]);

        let mut c = Checker::new(graces(), 3, t0);
        c.pending("y", "a", Owner::InProcess);
        c.registered("y", t0, None);
        c.member_down(0, t0 + secs(1.0));
        c.observe(t0 + secs(1.5), seen(&["y"]), &[]);
        c.member_down(1, t0 + secs(2.0));
        c.observe(t0 + secs(3.0), seen(&["y"]), &[]);
        c.member_up(1, t0 + secs(4.0));
        // Settling: the election after quorum is back.
        c.observe(
            t0 + secs(4.0) + graces().quorum_settle - secs(0.1),
            seen(&[]),
            &[],
        );
        assert!(kinds(&c).is_empty());
        c.observe(t0 + secs(4.0) + graces().quorum_settle, seen(&[]), &[]);
        assert_eq!(kinds(&c), [ViolationKind::Missing]);
        let findings = c.finish();
        assert_eq!(findings.gaps[0].quorum, Quorum::Settling);
    }

    #[test]
    fn missing_when_quorum_comes_back_gets_the_recovery_grace() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("y", "a", Owner::InProcess);
        c.registered("y", t0, None);
        c.member_down(0, t0 + secs(1.0));
        c.member_down(1, t0 + secs(2.0));
        c.observe(t0 + secs(3.0), seen(&[]), &[]);
        c.member_up(1, t0 + secs(4.0));
        c.observe(t0 + secs(4.0) + graces().recover - secs(0.1), seen(&[]), &[]);
        assert!(kinds(&c).is_empty());
        c.observe(t0 + secs(4.0) + graces().recover, seen(&[]), &[]);
        assert_eq!(kinds(&c), [ViolationKind::Missing]);
        let findings = c.finish();
        assert_eq!(findings.gaps[0].quorum, Quorum::Lost);
    }

    #[test]
    fn one_member_down_keeps_quorum() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.member_down(2, t0);
        assert_eq!(c.quorum(t0 + secs(0.1)), Quorum::Held);
        c.member_down(1, t0 + secs(1.0));
        assert_eq!(c.quorum(t0 + secs(1.1)), Quorum::Lost);
    }

    #[test]
    fn an_external_delete_gets_the_repair_grace() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("x", "a", Owner::InProcess);
        c.registered("x", t0 + secs(4.0), None);
        c.deleted_externally("x", t0 + secs(5.0));
        c.observe(t0 + secs(5.0) + graces().repair - secs(0.1), seen(&[]), &[]);
        c.observe(t0 + secs(5.0) + graces().repair + secs(0.1), seen(&["x"]), &[]);
        assert!(kinds(&c).is_empty());
    }

    #[test]
    fn a_killed_owners_keys_are_ghosts_only_after_their_ttl_and_the_last_member_fault() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("x", "a", Owner::Process(1));
        c.registered("x", t0, None);
        c.owner_killed(Owner::Process(1), t0 + secs(10.0));
        c.observe(t0 + secs(10.0) + graces().ghost - secs(0.1), seen(&["x"]), &[]);
        // A member fault renews every lease: the clock starts again.
        c.member_down(0, t0 + secs(12.0));
        c.member_up(0, t0 + secs(13.0));
        c.observe(t0 + secs(10.0) + graces().ghost + secs(0.1), seen(&["x"]), &[]);
        assert!(kinds(&c).is_empty());
        c.observe(t0 + secs(13.0) + graces().ghost, seen(&["x"]), &[]);
        c.observe(t0 + secs(13.0) + graces().ghost + secs(1.0), seen(&["x"]), &[]);
        assert_eq!(kinds(&c), [ViolationKind::Ghost], "reported once");
    }

    #[test]
    fn unknown_keys_are_ghosts() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.observe(t0 + graces().ghost, seen(&["stray"]), &[]);
        assert_eq!(kinds(&c), [ViolationKind::Ghost]);
    }

    #[test]
    fn a_live_watcher_that_lags_too_long_is_stale() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("x", "a", Owner::InProcess);
        c.registered("x", t0, None);
        let view = |live, ids_: &[&str]| WatcherView {
            name: "w".to_owned(),
            service: "a".to_owned(),
            live,
            ids: ids(ids_),
        };
        c.observe(t0 + secs(1.0), seen(&["x"]), &[view(true, &[])]);
        c.observe(t0 + secs(2.0), seen(&["x"]), &[view(true, &["x"])]);
        c.observe(t0 + secs(3.0), seen(&["x"]), &[view(false, &[])]);
        c.observe(t0 + secs(3.0) + graces().watch, seen(&["x"]), &[view(false, &[])]);
        assert!(kinds(&c).is_empty(), "stale but says so");
        c.observe(t0 + secs(3.1) + graces().watch, seen(&["x"]), &[view(true, &[])]);
        assert_eq!(kinds(&c), [ViolationKind::StaleWatcher]);
    }

    #[test]
    fn convergence_needs_exactly_the_live_set_everywhere() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("x", "a", Owner::InProcess);
        c.registered("x", t0, None);
        c.pending("y", "a", Owner::Process(1));
        c.registered("y", t0, None);
        c.owner_killed(Owner::Process(1), t0);
        let view = |ids_: &[&str]| WatcherView {
            name: "w".to_owned(),
            service: "a".to_owned(),
            live: true,
            ids: ids(ids_),
        };
        assert!(c.unconverged(&seen(&["x"]), &[view(&["x"])]).is_none());
        assert!(c.unconverged(&seen(&["x", "y"]), &[view(&["x"])]).is_some());
        assert!(c.unconverged(&seen(&["x", "x"]), &[view(&["x"])]).is_some());
        assert!(c.unconverged(&seen(&["x"]), &[view(&["x", "y"])]).is_some());
        assert!(c.unconverged(&seen(&[]), &[view(&["x"])]).is_some());
    }

    #[test]
    fn convergence_needs_the_last_called_seq_everywhere() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("x", "a", Owner::Process(1));
        c.registered("x", t0, None);
        c.updated("x", 1);
        c.updated("x", 2);
        let view = |seq| WatcherView {
            name: "w".to_owned(),
            service: "a".to_owned(),
            live: true,
            ids: [("x".to_owned(), Some(seq))].into(),
        };
        assert!(
            c.unconverged(&seen_seq("x", 1), &[view(2)]).is_some(),
            "registry behind"
        );
        assert!(
            c.unconverged(&seen_seq("x", 2), &[view(1)]).is_some(),
            "watcher behind"
        );
        assert!(c.unconverged(&seen_seq("x", 2), &[view(2)]).is_none());
        c.quiescing(t0);
        let why = c.unconverged(&seen_seq("x", 2), &[view(2)]);
        assert!(why.is_some_and(|w| w.contains("not stopped updating")));
        c.owner_quiet(Owner::Process(1));
        assert!(c.unconverged(&seen_seq("x", 2), &[view(2)]).is_none());
        assert_eq!(c.finish().updates_called, 2);
    }

    #[test]
    fn a_seq_that_goes_backwards_while_its_owner_lives_is_a_violation() {
        let t0 = Instant::now();
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("x", "a", Owner::Process(1));
        c.registered("x", t0, None);
        c.observe(t0 + secs(1.0), seen_seq("x", 3), &[]);
        c.observe(t0 + secs(1.1), seen_seq("x", 3), &[]);
        c.observe(t0 + secs(1.2), seen_seq("x", 5), &[]);
        assert!(kinds(&c).is_empty());
        c.observe(t0 + secs(1.3), seen_seq("x", 4), &[]);
        c.observe(t0 + secs(1.4), seen_seq("x", 2), &[]);
        assert_eq!(kinds(&c), [ViolationKind::SeqBackwards], "reported once");
        // A killed owner's key may show anything until it expires.
        let mut c = Checker::new(graces(), 3, t0);
        c.pending("y", "a", Owner::Process(2));
        c.registered("y", t0, None);
        c.observe(t0 + secs(1.5), seen_seq("y", 5), &[]);
        c.owner_killed(Owner::Process(2), t0 + secs(1.6));
        c.observe(t0 + secs(1.7), seen_seq("y", 1), &[]);
        assert!(kinds(&c).is_empty());
    }
}
