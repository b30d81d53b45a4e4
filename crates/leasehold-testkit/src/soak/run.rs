//! One soak run: the population, the observer, the fault executor and the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use leasehold::{Discovery, Registration, Registry, ServiceName, WatchOptions};
use tokio::sync::{watch, RwLock};
use tokio::task::{AbortHandle, JoinSet};

use super::checker::{Checker, Owner, Seen, WatcherView};
use super::cluster::SoakCluster;
use super::config::{Graces, SoakConfig};
use super::plan::{plan, FaultKind, PlannedFault};
use super::registrant::{self, RegistrantProcess, RegistrantSpec, Report, SEQ};
use super::report::SoakReport;
use super::Connect;
use crate::MemberState;

/// How often the plain client lists the registry.
const POLL: Duration = Duration::from_millis(100);
/// How many times a member that fails to come back is restarted before the run gives up.
const RESTART_ATTEMPTS: usize = 5;
/// Bound on one deregistration of an in-process registration.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a soak of `cluster` as `config` says and reports what it found.
///
/// `test` is the full name of the calling test in its binary (e.g. `"soak"`): registrant
/// processes run the binary again with that test selected, and the test must call
/// [`registrant::run_if_child`](super::registrant::run_if_child) first. `connect` makes a
/// client of the backend under test for a registry URL.
pub async fn run<C: SoakCluster>(cluster: C, config: SoakConfig, test: &str, connect: Connect) -> SoakReport {
    let soak = Soak::start(Arc::new(cluster), config, test, connect).await;
    soak.run().await
}

/// What may go down now: member faults never overlap a whole-cluster restart or a wipe,
/// and leave at least one member up.
#[derive(Debug, Default)]
struct Coordinator {
    busy: Vec<bool>,
    exclusive: bool,
}

impl Coordinator {
    /// A member to fault, if one may go down. Taking down a second member (losing
    /// quorum on 3) is allowed for half the picks, so both quorum lost and quorum held
    /// under a fault get their share of the run.
    fn take_member(&mut self, pick: u32) -> Option<usize> {
        let busy = self.busy.iter().filter(|&&b| b).count();
        if self.exclusive || busy + 1 >= self.busy.len() {
            return None;
        }
        if busy > 0 && (pick >> 16).is_multiple_of(2) {
            return None;
        }
        let free: Vec<usize> = (0..self.busy.len()).filter(|&i| !self.busy[i]).collect();
        let index = free[pick as usize % free.len()];
        self.busy[index] = true;
        Some(index)
    }

    fn take_all(&mut self) -> bool {
        if self.exclusive || self.busy.iter().any(|&b| b) {
            return false;
        }
        self.exclusive = true;
        self.busy.iter_mut().for_each(|b| *b = true);
        true
    }

    fn release(&mut self, index: usize) {
        self.busy[index] = false;
    }

    fn release_all(&mut self) {
        self.exclusive = false;
        self.busy.iter_mut().for_each(|b| *b = false);
    }
}

/// A registrant process the soak holds, and whether it is frozen now.
#[derive(Debug)]
struct RegistrantSlot {
    process: RegistrantProcess,
    frozen: bool,
}

/// A registration the test process holds, and the task that keeps updating it.
struct InProcess {
    registration: Registration,
    updater: AbortHandle,
}

/// A leasehold watcher, with the name the report gives it.
struct NamedWatcher {
    name: String,
    service: String,
    discovery: Discovery,
}

/// Everything one run shares between its tasks (observer, faults, registrations).
///
/// Locks are std mutexes held for an instant, never across an `.await`; when two are
/// held, `registrants` is taken before `checker`, and `checker` before `in_process` and
/// `last_observation`.
struct Soak<C> {
    cluster: Arc<C>,
    config: SoakConfig,
    graces: Graces,
    test: String,
    url: String,
    start: Instant,
    checker: Mutex<Checker>,
    coordinator: Mutex<Coordinator>,
    /// Registrant processes alive now, by number (ids `r{number}-{k}`).
    registrants: Mutex<BTreeMap<usize, RegistrantSlot>>,
    next_registrant: AtomicUsize,
    /// The test process's own registered handles, by id (`p{k}`).
    in_process: Mutex<BTreeMap<String, InProcess>>,
    /// Whether the test process's registrations are still being updated (see
    /// [`registrant::keep_updating`]).
    updating: Arc<RwLock<bool>>,
    next_in_process: AtomicUsize,
    /// The client the test process registers through (and watches on).
    registry: Arc<dyn Registry>,
    /// A client that only watches.
    watch_registry: Arc<dyn Registry>,
    watchers: Vec<NamedWatcher>,
    /// Set when the fault phase ends: held faults are undone at once.
    stop: watch::Sender<bool>,
    /// Per fault kind: (injected, skipped).
    counts: Mutex<BTreeMap<FaultKind, (u32, u32)>>,
    harness_errors: Mutex<Vec<String>>,
    /// Start of the last observation that succeeded, and whether it had converged.
    last_observation: Mutex<Option<(Instant, Option<String>)>>,
    /// Registrations still being made, aborted at the end.
    background: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// The first line of an error: the testkit's errors end with a server's log tail, which
/// belongs in the log, not in the timeline.
fn first_line(error: &impl std::fmt::Display) -> String {
    error.to_string().lines().next().unwrap_or_default().to_owned()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn connect_retrying(connect: &Connect, url: &str) -> Arc<dyn Registry> {
    loop {
        match connect(url.to_owned()).await {
            Ok(registry) => return registry,
            Err(e) => {
                tracing::warn!(url, error = %e, "soak: connect failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The `seq` an instance's metadata carries, if any.
fn seq_of(metadata: &leasehold::Metadata) -> Option<u64> {
    metadata.get(SEQ)?.parse().ok()
}

/// The plain client's listing, decoded: a native value names its service, id and `seq`.
fn decode(listed: Vec<super::cluster::ListedKey>) -> Vec<Seen> {
    listed
        .into_iter()
        .map(|k| {
            let value: Option<serde_json::Value> = serde_json::from_slice(&k.value).ok();
            let field = |name: &str| {
                value
                    .as_ref()
                    .and_then(|v| v.get(name))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let seq = value
                .as_ref()
                .and_then(|v| v.get("metadata"))
                .and_then(|m| m.get(SEQ))
                .and_then(|s| s.as_str())
                .and_then(|s| s.parse().ok());
            Seen {
                instance: field("service").zip(field("id")),
                key: k.key,
                seq,
            }
        })
        .collect()
}

impl<C: SoakCluster> Soak<C> {
    async fn start(cluster: Arc<C>, config: SoakConfig, test: &str, connect: Connect) -> Arc<Self> {
        let url = cluster.url(&config.root);
        let graces = config.graces();
        let registry = connect_retrying(&connect, &url).await;
        let watch_registry = connect_retrying(&connect, &url).await;
        let mut watchers = Vec::new();
        for service in &config.services {
            let name = ServiceName::new(service.as_str()).expect("valid soak service name");
            for (client, registry) in [
                ("registering client", &registry),
                ("watch-only client", &watch_registry),
            ] {
                let discovery = loop {
                    match registry.watch(&name, WatchOptions::default()).await {
                        Ok(discovery) => break discovery,
                        Err(e) => {
                            tracing::warn!(error = %e, "soak: watch failed, retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                };
                watchers.push(NamedWatcher {
                    name: format!("watcher of {service} on the {client}"),
                    service: service.clone(),
                    discovery,
                });
            }
        }
        let start = Instant::now();
        let members = cluster.members();
        Arc::new(Soak {
            cluster,
            graces,
            test: test.to_owned(),
            url,
            start,
            checker: Mutex::new(Checker::new(graces, members, start)),
            coordinator: Mutex::new(Coordinator {
                busy: vec![false; members],
                exclusive: false,
            }),
            registrants: Mutex::new(BTreeMap::new()),
            next_registrant: AtomicUsize::new(0),
            in_process: Mutex::new(BTreeMap::new()),
            next_in_process: AtomicUsize::new(0),
            updating: Arc::new(RwLock::new(config.updates)),
            registry,
            watch_registry,
            watchers,
            stop: watch::channel(false).0,
            counts: Mutex::new(BTreeMap::new()),
            harness_errors: Mutex::new(Vec::new()),
            last_observation: Mutex::new(None),
            background: Mutex::new(Vec::new()),
            config,
        })
    }

    fn note(&self, what: impl Into<String>) {
        lock(&self.checker).note(Instant::now(), what);
    }

    fn count(&self, kind: FaultKind, injected: bool) {
        let mut counts = lock(&self.counts);
        let entry = counts.entry(kind).or_default();
        if injected {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    fn skip(&self, kind: FaultKind, why: &str) {
        self.count(kind, false);
        self.note(format!("skip {kind}: {why}"));
    }

    fn harness_error(&self, what: String) {
        self.note(format!("HARNESS ERROR: {what}"));
        lock(&self.harness_errors).push(what);
    }

    fn background(&self, handle: tokio::task::AbortHandle) {
        lock(&self.background).push(handle);
    }

    async fn run(self: Arc<Self>) -> SoakReport {
        let load_before = super::report::load_average();
        let planned = plan(
            self.config.seed,
            self.config.duration,
            self.config.ttl,
            self.cluster.compacts(),
        );
        self.note(format!(
            "start: {} with {} members at {}, seed {}, {} faults planned over {:?}, TTL {:?}",
            self.cluster.backend(),
            self.cluster.members(),
            self.url,
            self.config.seed,
            planned.len(),
            self.config.duration,
            self.config.ttl
        ));
        let observer = tokio::spawn(Arc::clone(&self).observe());
        for _ in 0..self.config.registrants {
            self.spawn_registrant();
        }
        for _ in 0..self.config.in_process {
            self.register_in_process();
        }

        let mut faults = JoinSet::new();
        let phase = tokio::time::Instant::now();
        for fault in planned.iter().cloned() {
            tokio::time::sleep_until(phase + fault.at).await;
            faults.spawn(Arc::clone(&self).inject(fault));
        }
        tokio::time::sleep_until(phase + self.config.duration).await;
        self.note("fault phase over: ending every fault");
        let _ = self.stop.send(true);
        while faults.join_next().await.is_some() {}
        let faults_ended = Instant::now();
        self.note("every fault ended");
        self.stop_updating().await;

        let converged_after = self.converge(faults_ended).await;
        observer.abort();
        for handle in lock(&self.background).drain(..) {
            handle.abort();
        }
        self.teardown().await;

        let load_after = super::report::load_average();
        let checker = std::mem::replace(
            &mut *lock(&self.checker),
            Checker::new(self.graces, 0, self.start),
        );
        SoakReport {
            backend: self.cluster.backend(),
            seed: self.config.seed,
            duration: self.config.duration,
            ttl: self.config.ttl,
            planned: planned.len(),
            faults: lock(&self.counts).clone(),
            converged_after,
            findings: checker.finish(),
            harness_errors: lock(&self.harness_errors).clone(),
            load_before,
            load_after,
        }
    }

    /// Lists the registry every [`POLL`] with the plain client and checks each listing.
    async fn observe(self: Arc<Self>) {
        loop {
            let t = Instant::now();
            let listed = self.cluster.list(&self.config.root, &self.config.services).await;
            match listed {
                Ok(listed) => {
                    let seen = decode(listed);
                    let views = self.watcher_views();
                    let mut checker = lock(&self.checker);
                    checker.observe(t, seen, &views);
                    let unconverged = checker.unconverged(checker.last_seen(), &views);
                    *lock(&self.last_observation) = Some((t, unconverged));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "soak: observation failed");
                    lock(&self.checker).observation_failed();
                }
            }
            tokio::time::sleep(POLL.saturating_sub(t.elapsed())).await;
        }
    }

    fn watcher_views(&self) -> Vec<WatcherView> {
        self.watchers
            .iter()
            .map(|w| {
                let snapshot = w.discovery.snapshot();
                WatcherView {
                    name: w.name.clone(),
                    service: w.service.clone(),
                    live: snapshot.connection().is_live(),
                    ids: snapshot
                        .instances()
                        .iter()
                        .map(|i| (i.id().as_str().to_owned(), seq_of(i.metadata())))
                        .collect(),
                }
            })
            .collect()
    }

    /// Waits until an observation started after `faults_ended` shows exactly the live
    /// set everywhere; how long that took, or `None` (and a violation) if it never did
    /// within the grace.
    async fn converge(&self, faults_ended: Instant) -> Option<Duration> {
        let deadline = faults_ended + self.graces.converge;
        let mut last_why = "no observation succeeded after the faults ended".to_owned();
        loop {
            if let Some((t, why)) = lock(&self.last_observation).clone() {
                if t >= faults_ended {
                    match why {
                        None => {
                            let after = t - faults_ended;
                            self.note(format!(
                                "converged: registry and every watcher show exactly the live set, {:.3}s after the last fault",
                                after.as_secs_f64()
                            ));
                            return Some(after);
                        }
                        Some(why) => last_why = why,
                    }
                }
            }
            if Instant::now() >= deadline {
                lock(&self.checker).not_converged(
                    Instant::now(),
                    format!("{:?} after the last fault: {last_why}", self.graces.converge),
                );
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Ends the updates: the test process calls no more at once, and every registrant
    /// process is told to stop (convergence waits for each to say it did).
    async fn stop_updating(&self) {
        *self.updating.write().await = false;
        let registrants = lock(&self.registrants);
        lock(&self.checker).quiescing(Instant::now());
        for slot in registrants.values() {
            slot.process.stop_updating();
        }
    }

    async fn teardown(&self) {
        let handles: Vec<Registration> = std::mem::take(&mut *lock(&self.in_process))
            .into_values()
            .map(|held| {
                held.updater.abort();
                held.registration
            })
            .collect();
        for handle in handles {
            let _ = tokio::time::timeout(DEREGISTER_TIMEOUT, handle.deregister()).await;
        }
        let registrants: Vec<RegistrantSlot> = std::mem::take(&mut *lock(&self.registrants))
            .into_values()
            .collect();
        for slot in registrants {
            slot.process.kill().await;
        }
        self.registry.shutdown().await;
        self.watch_registry.shutdown().await;
    }

    // ---- the population ----

    fn spawn_registrant(self: &Arc<Self>) {
        let number = self.next_registrant.fetch_add(1, Ordering::Relaxed);
        let services = &self.config.services;
        let instances: Vec<(String, String)> = (0..self.config.per_registrant)
            .map(|k| {
                (
                    services[(number + k) % services.len()].clone(),
                    format!("r{number}-{k}"),
                )
            })
            .collect();
        {
            let mut checker = lock(&self.checker);
            for (service, id) in &instances {
                checker.pending(id, service, Owner::Process(number));
            }
        }
        let spec = RegistrantSpec {
            url: self.url.clone(),
            ttl: self.config.ttl,
            instances,
            updates: self.config.updates,
        };
        let soak = Arc::downgrade(self);
        let spawned = RegistrantProcess::spawn(&self.test, &spec, move |report| {
            let Some(soak) = soak.upgrade() else { return };
            let mut checker = lock(&soak.checker);
            match report {
                Report::Registered(id) => {
                    checker.registered(&id, Instant::now(), None);
                    checker.note(Instant::now(), format!("registrant {number} registered {id}"));
                }
                Report::Updated(id, seq) => checker.updated(&id, seq),
                Report::Quiet => {
                    checker.owner_quiet(Owner::Process(number));
                    checker.note(Instant::now(), format!("registrant {number} stopped updating"));
                }
            }
        });
        match spawned {
            Ok(process) => {
                self.note(format!("registrant {number} started (pid {:?})", process.pid()));
                lock(&self.registrants).insert(
                    number,
                    RegistrantSlot {
                        process,
                        frozen: false,
                    },
                );
            }
            Err(e) => self.harness_error(format!("cannot start registrant {number}: {e}")),
        }
    }

    fn register_in_process(self: &Arc<Self>) {
        let k = self.next_in_process.fetch_add(1, Ordering::Relaxed);
        let service = self.config.services[k % self.config.services.len()].clone();
        let id = format!("p{k}");
        lock(&self.checker).pending(&id, &service, Owner::InProcess);
        let soak = Arc::clone(self);
        let task = tokio::spawn(async move {
            let registration = registrant::register(&*soak.registry, &service, &id, soak.config.ttl).await;
            let reporter = Arc::downgrade(&soak);
            let reported_id = id.clone();
            let updater = tokio::spawn(registrant::keep_updating(
                registration.clone(),
                registrant::jitter_seed(&id, soak.config.seed as u32),
                Arc::clone(&soak.updating),
                move |seq| {
                    if let Some(soak) = reporter.upgrade() {
                        lock(&soak.checker).updated(&reported_id, seq);
                    }
                },
            ));
            let mut checker = lock(&soak.checker);
            checker.registered(&id, Instant::now(), Some(registration.states()));
            checker.note(Instant::now(), format!("in-process {id} registered"));
            lock(&soak.in_process).insert(
                id,
                InProcess {
                    registration,
                    updater: updater.abort_handle(),
                },
            );
        });
        self.background(task.abort_handle());
    }

    // ---- faults ----

    /// Sleeps `hold`, or less when the fault phase ends.
    async fn hold(&self, hold: Duration) {
        let mut stop = self.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            _ = stop.wait_for(|&stopped| stopped) => {}
        }
    }

    async fn inject(self: Arc<Self>, fault: PlannedFault) {
        match fault.kind {
            FaultKind::KillMember | FaultKind::FreezeMember => self.member_fault(&fault).await,
            FaultKind::RestartCluster => self.restart_cluster(&fault).await,
            FaultKind::WipeMember => self.wipe_member(&fault).await,
            FaultKind::Compact => self.compact().await,
            FaultKind::DeleteKey => self.delete_key(&fault).await,
            FaultKind::KillRegistrant => self.kill_registrant(&fault).await,
            FaultKind::FreezeRegistrant => self.freeze_registrant(&fault).await,
            FaultKind::Churn => self.churn(&fault).await,
        }
    }

    fn member_down(&self, index: usize) {
        lock(&self.checker).member_down(index, Instant::now());
    }

    fn member_up(&self, index: usize) {
        lock(&self.checker).member_up(index, Instant::now());
    }

    /// Restarts member `index` until it serves, retrying a few times; a member that
    /// cannot come back is a harness error.
    async fn bring_back(&self, index: usize) {
        for attempt in 1..=RESTART_ATTEMPTS {
            match self.cluster.restart(index).await {
                Ok(()) => {
                    self.member_up(index);
                    self.note(format!("member {index} restarted and serving"));
                    return;
                }
                Err(e) => self.note(format!(
                    "restart of member {index} failed (attempt {attempt}): {}",
                    first_line(&e)
                )),
            }
        }
        self.harness_error(format!(
            "member {index} did not come back after {RESTART_ATTEMPTS} restarts"
        ));
    }

    async fn member_fault(&self, fault: &PlannedFault) {
        let Some(index) = lock(&self.coordinator).take_member(fault.pick) else {
            return self.skip(fault.kind, "no member may go down now");
        };
        self.count(fault.kind, true);
        self.member_down(index);
        let hold = fault.hold.as_secs_f64();
        if fault.kind == FaultKind::KillMember {
            self.note(format!("kill member {index} for {hold:.1}s"));
            if let Err(e) = self.cluster.kill(index).await {
                self.harness_error(format!("kill of member {index}: {}", first_line(&e)));
            }
            self.hold(fault.hold).await;
            self.bring_back(index).await;
        } else {
            self.note(format!("freeze member {index} for {hold:.1}s"));
            if let Err(e) = self.cluster.pause(index) {
                self.harness_error(format!("freeze of member {index}: {e}"));
            }
            self.hold(fault.hold).await;
            match self.cluster.resume(index) {
                Ok(()) => {
                    self.member_up(index);
                    self.note(format!("member {index} resumed"));
                }
                Err(e) => self.harness_error(format!("resume of member {index}: {e}")),
            }
        }
        lock(&self.coordinator).release(index);
    }

    async fn restart_cluster(&self, fault: &PlannedFault) {
        if !lock(&self.coordinator).take_all() {
            return self.skip(fault.kind, "another member fault is under way");
        }
        self.count(fault.kind, true);
        let members = self.cluster.members();
        self.note(format!(
            "restart the whole cluster: kill every member, down for {:.1}s",
            fault.hold.as_secs_f64()
        ));
        for index in 0..members {
            self.member_down(index);
            if let Err(e) = self.cluster.kill(index).await {
                self.harness_error(format!("kill of member {index}: {}", first_line(&e)));
            }
        }
        self.hold(fault.hold).await;
        // All at once: a lone etcd member serves nothing until a quorum has formed.
        let mut restarts = JoinSet::new();
        for index in 0..members {
            let cluster = Arc::clone(&self.cluster);
            restarts.spawn(async move { (index, cluster.restart(index).await) });
        }
        while let Some(joined) = restarts.join_next().await {
            match joined {
                Ok((index, Ok(()))) => {
                    self.member_up(index);
                    self.note(format!("member {index} restarted and serving"));
                }
                Ok((index, Err(e))) => {
                    self.note(format!("restart of member {index} failed: {}", first_line(&e)));
                    self.bring_back(index).await;
                }
                Err(e) => self.harness_error(format!("a restart task failed: {e}")),
            }
        }
        lock(&self.coordinator).release_all();
    }

    async fn wipe_member(&self, fault: &PlannedFault) {
        let members = self.cluster.members();
        if !lock(&self.coordinator).take_all() {
            return self.skip(fault.kind, "another member fault is under way");
        }
        if (0..members).any(|i| self.cluster.state(i) != MemberState::Running) {
            lock(&self.coordinator).release_all();
            return self.skip(fault.kind, "not every member runs");
        }
        self.count(fault.kind, true);
        let index = fault.pick as usize % members;
        self.note(format!("wipe member {index}: replace it by an empty member"));
        self.member_down(index);
        let mut back = false;
        for attempt in 1..=RESTART_ATTEMPTS {
            match self.cluster.wipe(index).await {
                Ok(()) => {
                    back = true;
                    break;
                }
                Err(e) => self.note(format!(
                    "wipe of member {index} failed (attempt {attempt}): {}",
                    first_line(&e)
                )),
            }
        }
        if back {
            self.member_up(index);
            self.note(format!("member {index} wiped and serving"));
        } else {
            self.harness_error(format!("member {index} did not come back after a wipe"));
        }
        lock(&self.coordinator).release_all();
    }

    async fn compact(&self) {
        match tokio::time::timeout(Duration::from_secs(10), self.cluster.compact()).await {
            Ok(Ok(())) => {
                self.count(FaultKind::Compact, true);
                self.note("compact up to the current revision");
            }
            Ok(Err(e)) => self.skip(
                FaultKind::Compact,
                &format!("no member could compact: {}", first_line(&e)),
            ),
            Err(_) => self.skip(FaultKind::Compact, "no member could compact within 10s"),
        }
    }

    async fn delete_key(&self, fault: &PlannedFault) {
        let target = {
            let mut checker = lock(&self.checker);
            let mut candidates: Vec<(String, String)> = checker
                .last_seen()
                .iter()
                .filter_map(|s| {
                    let (_, id) = s.instance.as_ref()?;
                    checker.service_of(id)?;
                    Some((s.key.clone(), id.clone()))
                })
                .collect();
            candidates.sort();
            if candidates.is_empty() {
                None
            } else {
                let (key, id) = candidates[fault.pick as usize % candidates.len()].clone();
                // Before the delete: from now on its owner is allowed the repair grace.
                checker.deleted_externally(&id, Instant::now());
                Some((key, id))
            }
        };
        let Some((key, id)) = target else {
            return self.skip(fault.kind, "nothing listed to delete");
        };
        match tokio::time::timeout(Duration::from_secs(10), self.cluster.delete(&key)).await {
            Ok(Ok(true)) => {
                self.count(fault.kind, true);
                self.note(format!("deleted {key} ({id}) with the plain client"));
            }
            Ok(Ok(false)) => self.skip(fault.kind, &format!("{key} was already gone")),
            Ok(Err(e)) => self.skip(fault.kind, &format!("delete of {key} failed: {}", first_line(&e))),
            Err(_) => self.skip(fault.kind, &format!("delete of {key} got no answer within 10s")),
        }
    }

    async fn kill_registrant(self: &Arc<Self>, fault: &PlannedFault) {
        let slot = {
            let mut registrants = lock(&self.registrants);
            let numbers: Vec<usize> = registrants.keys().copied().collect();
            if numbers.is_empty() {
                None
            } else {
                let number = numbers[fault.pick as usize % numbers.len()];
                registrants.remove(&number).map(|slot| (number, slot))
            }
        };
        let Some((number, slot)) = slot else {
            return self.skip(fault.kind, "no registrant runs");
        };
        self.count(fault.kind, true);
        let frozen = if slot.frozen { " (frozen)" } else { "" };
        slot.process.kill().await;
        lock(&self.checker).owner_killed(Owner::Process(number), Instant::now());
        self.note(format!("killed registrant {number}{frozen} with SIGKILL"));
        self.spawn_registrant();
    }

    async fn freeze_registrant(&self, fault: &PlannedFault) {
        let number = {
            let mut registrants = lock(&self.registrants);
            let numbers: Vec<usize> = registrants
                .iter()
                .filter(|(_, slot)| !slot.frozen)
                .map(|(n, _)| *n)
                .collect();
            if numbers.is_empty() {
                None
            } else {
                let number = numbers[fault.pick as usize % numbers.len()];
                let slot = registrants.get_mut(&number).expect("listed above");
                slot.frozen = true;
                // Before the SIGSTOP: from now on its keys may expire.
                lock(&self.checker).owner_frozen(Owner::Process(number));
                slot.process.freeze();
                Some(number)
            }
        };
        let Some(number) = number else {
            return self.skip(fault.kind, "no unfrozen registrant");
        };
        self.count(fault.kind, true);
        self.note(format!(
            "froze registrant {number} with SIGSTOP for {:.1}s",
            fault.hold.as_secs_f64()
        ));
        self.hold(fault.hold).await;
        let mut registrants = lock(&self.registrants);
        match registrants.get_mut(&number) {
            Some(slot) => {
                slot.process.thaw();
                slot.frozen = false;
                let mut checker = lock(&self.checker);
                checker.owner_resumed(Owner::Process(number), Instant::now());
                checker.note(
                    Instant::now(),
                    format!("resumed registrant {number} with SIGCONT"),
                );
            }
            None => self.note(format!("registrant {number} was killed while frozen")),
        }
    }

    async fn churn(self: &Arc<Self>, fault: &PlannedFault) {
        let chosen = {
            let mut in_process = lock(&self.in_process);
            let ids: Vec<String> = in_process.keys().cloned().collect();
            if ids.is_empty() {
                None
            } else {
                let id = ids[fault.pick as usize % ids.len()].clone();
                in_process.remove(&id).map(|held| {
                    held.updater.abort();
                    (id, held.registration)
                })
            }
        };
        let Some((id, handle)) = chosen else {
            return self.skip(fault.kind, "no in-process registration is registered yet");
        };
        self.count(fault.kind, true);
        // Before the call: the key may be gone before `deregister` returns.
        lock(&self.checker).ended(&id, Instant::now());
        let outcome = tokio::time::timeout(DEREGISTER_TIMEOUT, handle.deregister()).await;
        let how = match outcome {
            Ok(Ok(())) => "deregistered".to_owned(),
            Ok(Err(e)) => format!("deregister failed ({e}), handle dropped"),
            Err(_) => "deregister timed out, handle dropped".to_owned(),
        };
        self.note(format!("in-process {id} {how}; registering a new one"));
        self.register_in_process();
    }
}
