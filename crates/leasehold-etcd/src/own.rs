//! Own keys: what this client wrote under its leases, and the watches that tell the
//! registrar when one of them is no longer ours.
//!
//! Only the prefixes of services this client registered are watched (one watch stream
//! per service, from just before its first write, without previous values), so a change
//! anywhere else costs this client nothing and a user whose role covers only its
//! service's prefix can register. The watch asks etcd to leave puts out: every write of
//! this client (and of every other instance of the service) would come back as one, and
//! on a small machine receiving them cost the client a tenth of its registration rate.
//! Deletes and expiries of our keys arrive at once and are reported
//! ([`LeaseEvents::key_deleted`]); the registrar writes them again. What only a put
//! shows (a key taken over under another lease or put without one, a write reported
//! failed that landed late) is found by reading the service's own keys back every
//! [`VERIFY_EVERY`]. Drain markers under the same prefixes have their own watcher on
//! the same stream, puts included, and are reported for the ids this client registered
//! ([`LeaseEvents::drain_changed`]). After any gap in a watch (a broken stream, a
//! compacted revision) the own keys of that service and its markers are read once, in
//! batched transactions of gets, before the watch resumes after that read.
//!
//! It also orders the writes of one key ([`Expect`]): a write expects the exact state
//! this client last left the key in (its mod revision), or no key. A write with a lower
//! [`change`](leasehold::registrar::Write::change) that finds a higher one landed or on
//! its way is dropped, never retried over it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, WatchFilterType,
    WatchOptions,
};
use futures::future::{Fuse, FusedFuture, FutureExt};
use leasehold::registrar::LeaseEvents;
use leasehold::{Backoff, InstanceId, Result, ServiceName};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::connection::{Connection, Failure};

/// How often an own-key watch asks for a progress answer, as proof its member lives.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A watch with no answer for this long is on a frozen or cut-off member.
const SILENCE: Duration = Duration::from_secs(5);

/// How often a watched service's own keys are read back, for what the watch (which
/// leaves puts out) cannot show: a key taken over by a put under another lease or put
/// without one, or a write reported failed that landed late. One transaction of gets
/// per [`GETS_PER_TXN`] own keys, nothing for other instances' keys.
pub(crate) const VERIFY_EVERY: Duration = Duration::from_secs(5);

/// The most gets in one transaction of an after-gap check.
const GETS_PER_TXN: usize = 120;

/// What this client knows about one key it wrote.
#[derive(Clone, Debug)]
enum Held {
    /// Written by this client (the write of `change`) and left as `state`; a later
    /// change by anyone else is reported.
    Ours {
        state: Landed,
        change: u64,
        events: LeaseEvents,
        /// What a read-back last found here and reported (the key gone, or another's
        /// state at that mod revision), so it is reported once, not at every read-back
        /// while the registrar backs off or waits for another client's key to go.
        reported: Option<Found>,
    },
    /// A write under `lease` whose outcome is unknown and whose caller was told it
    /// failed: if it shows up under that lease, it is deleted.
    Disowned { lease: i64 },
}

/// How a read-back found a key of ours that is no longer as we left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Absent,
    /// Changed by someone else; its mod revision.
    At(i64),
}

/// A key as a write of this client left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Landed {
    pub(crate) lease: i64,
    /// Its mod revision: the one state of the key this is.
    pub(crate) revision: i64,
    /// Modifications since it was created.
    pub(crate) version: i64,
    /// Its create revision: which life of the key (deleted and created again, it counts
    /// its versions from 1 again).
    pub(crate) created: i64,
}

/// What a write of a key expects to find there; anything else fails its compare. Both
/// name one state of the key that can never come back: no key, or the exact state this
/// client last saw it in (its mod revision, unique for the life of the cluster). So a
/// copy that lands late (sent to a frozen member, resent elsewhere, applied when the
/// member resumes) changes nothing once the key has moved on.
///
/// There is deliberately no way to expect what a write still in flight will leave: a
/// lease and version do not name one state. A write sent behind an unanswered one and
/// expecting its version was resent after a member froze; the key then moved on along
/// other writes to that same version, and the late copy put an older value back over a
/// newer one (the etcd soak's `seq backwards`). So etcd does not pipeline a key's writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// No such key.
    Absent,
    /// Exactly this state of the key (compared by its mod revision).
    Exactly(Landed),
}

impl Expect {
    /// What a key found like `kv` (or absent) is expected to be.
    pub(crate) fn found(kv: Option<&KeyValue>) -> Expect {
        match kv {
            Some(kv) => Expect::Exactly(Landed {
                lease: kv.lease(),
                revision: kv.mod_revision(),
                version: kv.version(),
                created: kv.create_revision(),
            }),
            None => Expect::Absent,
        }
    }

    /// The key as a put under `lease` that expected this left it, landing at `revision`.
    pub(crate) fn landed(self, lease: i64, revision: i64) -> Landed {
        let (version, created) = match self {
            Expect::Absent => (1, revision),
            Expect::Exactly(before) => (before.version + 1, before.created),
        };
        Landed {
            lease,
            revision,
            version,
            created,
        }
    }
}

/// The writes of one key sent and not yet answered, by change and ticket (the order
/// they were sent in).
type Writing = BTreeSet<(u64, u64)>;

/// The owner of a registration, for routing drain markers.
#[derive(Clone, Debug)]
struct Owner {
    service: ServiceName,
    events: LeaseEvents,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, Held>,
    /// Watched service prefixes and their watch tasks.
    watches: HashMap<String, JoinHandle<()>>,
    /// Drain markers seen, by service prefix and id.
    drained: HashSet<(String, InstanceId)>,
    /// The registrations this client wrote, by service prefix and id.
    owners: HashMap<(String, InstanceId), Owner>,
    /// This client's leases, live or given up, until known to be gone, each with the
    /// order it was granted in: a key under one of them is ours to write over.
    leases: HashMap<i64, u64>,
    /// Leases granted so far.
    grants: u64,
    /// Writes of a key in flight, by key.
    writing: HashMap<String, Writing>,
    /// Tickets handed out so far.
    tickets: u64,
}

/// The own keys of one [`EtcdRegistry`](crate::EtcdRegistry) and their watches.
#[derive(Debug)]
pub(crate) struct OwnKeys {
    conn: Arc<Connection>,
    backoff: Backoff,
    state: Mutex<State>,
    /// Serializes starting watches, so a service is watched once.
    starting: tokio::sync::Mutex<()>,
    /// Watch events received, for tests that check a change elsewhere costs nothing.
    events_seen: AtomicU64,
    /// Signalled after a batch is written: a given-up lease is revoked once its
    /// registrations are written under the next one, so they never vanish in between.
    settled: tokio::sync::Notify,
}

impl Drop for OwnKeys {
    fn drop(&mut self) {
        for (_, task) in self.state.get_mut().unwrap().watches.drain() {
            task.abort();
        }
    }
}

impl OwnKeys {
    pub(crate) fn new(conn: Arc<Connection>, backoff: Backoff) -> Arc<OwnKeys> {
        Arc::new(OwnKeys {
            conn,
            backoff,
            state: Mutex::default(),
            starting: tokio::sync::Mutex::new(()),
            events_seen: AtomicU64::new(0),
            settled: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn events_seen(&self) -> u64 {
        self.events_seen.load(Ordering::Relaxed)
    }

    /// The drain-marker prefix under a service prefix, if the format has markers.
    fn marker_prefix(&self) -> Option<String> {
        let sample = InstanceId::new("x").ok()?;
        let marker = self.conn.layout.codec.drain_marker(&sample)?;
        marker.strip_suffix('x').map(str::to_owned)
    }

    /// Starts watching `service`'s prefix unless it is watched already: reads its drain
    /// markers (or, for formats without, only the revision) and watches from the
    /// revision after that read, so nothing written after it is missed. Callers check
    /// [`watched`](Self::watched) first, so its future is built only to start a watch.
    pub(crate) async fn watch_service(self: &Arc<Self>, service: &ServiceName) -> Result<String> {
        let prefix = self.conn.layout.service_prefix(service);
        let _starting = self.starting.lock().await;
        if self.state.lock().unwrap().watches.contains_key(&prefix) {
            return Ok(prefix);
        }
        let (markers, revision) = self.read_markers(&prefix).await?;
        let task = tokio::spawn(follow(
            Arc::downgrade(self),
            self.conn.clone(),
            prefix.clone(),
            revision + 1,
            self.backoff,
        ));
        let mut state = self.state.lock().unwrap();
        for id in markers {
            state.drained.insert((prefix.clone(), id));
        }
        state.watches.insert(prefix.clone(), task);
        Ok(prefix)
    }

    /// `service`'s prefix if it is watched already: a write checks this first, so the
    /// future of starting a watch is built only when one is started.
    pub(crate) fn watched(&self, service: &ServiceName) -> Option<String> {
        let prefix = self.conn.layout.service_prefix(service);
        self.state
            .lock()
            .unwrap()
            .watches
            .contains_key(&prefix)
            .then_some(prefix)
    }

    /// The drain markers of a service prefix and the revision they were read at.
    async fn read_markers(&self, prefix: &str) -> Result<(Vec<InstanceId>, i64)> {
        let Some(marker_prefix) = self.marker_prefix() else {
            let answer = self
                .conn
                .range(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
                .await?;
            return Ok((Vec::new(), answer.header().map_or(0, |h| h.revision())));
        };
        let answer = self
            .conn
            .range(
                format!("{prefix}{marker_prefix}"),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await?;
        let codec = &self.conn.layout.codec;
        let ids = answer
            .kvs()
            .iter()
            .filter_map(|kv| {
                codec.parse_drain_marker(std::str::from_utf8(kv.key()).ok()?.strip_prefix(prefix)?)
            })
            .collect();
        Ok((ids, answer.header().map_or(0, |h| h.revision())))
    }

    /// Whether an operator's marker drains `id` of the service at `prefix`.
    pub(crate) fn is_drained(&self, prefix: &str, id: &InstanceId) -> bool {
        let drained = &self.state.lock().unwrap().drained;
        // Most services have no marker: no key to build for them.
        !drained.is_empty() && drained.contains(&(prefix.to_owned(), id.clone()))
    }

    /// The registration `id` of `service` is written (or kept out, drained) by the
    /// group behind `events`.
    pub(crate) fn own(&self, prefix: &str, service: &ServiceName, id: &InstanceId, events: &LeaseEvents) {
        self.state.lock().unwrap().owners.insert(
            (prefix.to_owned(), id.clone()),
            Owner {
                service: service.clone(),
                events: events.clone(),
            },
        );
    }

    /// A write of `key` carrying `change` is about to be sent: its ticket, and what it
    /// expects to find, which is what this client last left there, or else no key. A
    /// write of the key still in flight does not change that (see [`Expect`]): if it
    /// lands first, this one finds it and is written again over it or, when it carried
    /// a later change, is done.
    pub(crate) fn begin_write(&self, key: &str, change: u64) -> (u64, Expect) {
        let mut state = self.state.lock().unwrap();
        state.tickets += 1;
        let ticket = state.tickets;
        let expect = Self::last_written(&state, key);
        state
            .writing
            .entry(key.to_owned())
            .or_default()
            .insert((change, ticket));
        (ticket, expect)
    }

    /// The write of `key` with `change` and `ticket` was answered (or given up).
    pub(crate) fn end_write(&self, key: &str, change: u64, ticket: u64) {
        let mut state = self.state.lock().unwrap();
        if let Some(writing) = state.writing.get_mut(key) {
            writing.remove(&(change, ticket));
            if writing.is_empty() {
                state.writing.remove(key);
            }
        }
    }

    /// Whether a write of `key` with a higher change than `change` has landed or is on
    /// its way: it carries everything this one does, and this one must not land over it.
    pub(crate) fn superseded(&self, key: &str, change: u64) -> bool {
        let state = self.state.lock().unwrap();
        let landed = matches!(state.keys.get(key), Some(Held::Ours { change: c, .. }) if *c > change);
        let sent = state
            .writing
            .get(key)
            .and_then(|writing| writing.last())
            .is_some_and(|(c, _)| *c > change);
        landed || sent
    }

    /// What a write of `key` should expect after finding it like `found` (or absent) at
    /// revision `at`: that, unless this client wrote it since (an earlier write of the
    /// key that landed after the read).
    pub(crate) fn expect_after(&self, key: &str, found: Option<&KeyValue>, at: i64) -> Expect {
        match self.state.lock().unwrap().keys.get(key) {
            Some(Held::Ours { state, .. }) if state.revision > at => Expect::Exactly(*state),
            _ => Expect::found(found),
        }
    }

    /// What this client last left at `key`, as far as it knows.
    fn last_written(state: &State, key: &str) -> Expect {
        match state.keys.get(key) {
            Some(Held::Ours { state, .. }) => Expect::Exactly(*state),
            _ => Expect::Absent,
        }
    }

    /// The write of `change` left `key` as `landed`. Writes of a key may be answered out
    /// of order: the latest revision is kept.
    pub(crate) fn written(&self, key: &str, landed: Landed, change: u64, events: &LeaseEvents) {
        let mut state = self.state.lock().unwrap();
        if let Some(Held::Ours { state: known, .. }) = state.keys.get(key) {
            if known.revision > landed.revision {
                return;
            }
        }
        state.keys.insert(
            key.to_owned(),
            Held::Ours {
                state: landed,
                change,
                events: events.clone(),
                reported: None,
            },
        );
    }

    /// A write of `key` under `lease` may have landed, but its caller was told it failed.
    pub(crate) fn disown(&self, key: &str, lease: i64) {
        self.state
            .lock()
            .unwrap()
            .keys
            .insert(key.to_owned(), Held::Disowned { lease });
    }

    /// `key` is being deleted by this client: its delete is not reported.
    pub(crate) fn forget(&self, key: &str) {
        self.state.lock().unwrap().keys.remove(key);
    }

    /// A batch was written.
    pub(crate) fn settled(&self) {
        self.settled.notify_waiters();
    }

    /// Returns once no key of a registration is held under `lease` any more (written
    /// again under the next lease, or deleted), once nobody will write them again (the
    /// registrar behind `events` is gone), or at `deadline`.
    pub(crate) async fn wait_moved(&self, lease: i64, events: &LeaseEvents, deadline: Instant) {
        // A batch written wakes this at once; deletes are caught by the poll.
        const POLL: Duration = Duration::from_millis(100);
        loop {
            let settled = self.settled.notified();
            if !self.holds_keys_under(lease) || events.is_closed() || Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout_at(deadline.min(Instant::now() + POLL), settled).await;
        }
    }

    fn holds_keys_under(&self, lease: i64) -> bool {
        self.state
            .lock()
            .unwrap()
            .keys
            .values()
            .any(|held| matches!(held, Held::Ours { state, .. } if state.lease == lease))
    }

    /// `lease` was granted to this client: keys under it are this client's until it is
    /// gone, also after it is given up.
    pub(crate) fn granted(&self, lease: i64) {
        let mut state = self.state.lock().unwrap();
        state.grants += 1;
        let order = state.grants;
        state.leases.insert(lease, order);
    }

    /// Whether `lease` is one of this client's that may still hold keys.
    pub(crate) fn is_ours(&self, lease: i64) -> bool {
        self.state.lock().unwrap().leases.contains_key(&lease)
    }

    /// `lease` is gone (revoked, expired): its keys went with it.
    pub(crate) fn gone(&self, lease: i64) {
        let mut state = self.state.lock().unwrap();
        state.leases.remove(&lease);
        state.keys.retain(|_, held| match held {
            Held::Ours { state, .. } => state.lease != lease,
            Held::Disowned { lease: l } => *l != lease,
        });
    }

    /// One event of a watched prefix: a delete (puts are left out, but for markers).
    fn on_event(&self, prefix: &str, event_type: EventType, kv: &KeyValue) {
        self.events_seen.fetch_add(1, Ordering::Relaxed);
        let Ok(key) = std::str::from_utf8(kv.key()) else {
            return;
        };
        let Some(relative) = key.strip_prefix(prefix) else {
            return;
        };
        if let Some(id) = self.conn.layout.codec.parse_drain_marker(relative) {
            self.marker(prefix, id, event_type == EventType::Put);
            return;
        }
        if event_type != EventType::Delete {
            return;
        }
        let held = self.state.lock().unwrap().keys.get(key).cloned();
        match held {
            Some(Held::Ours { state, events, .. }) if kv.mod_revision() > state.revision => {
                tracing::info!(%key, "etcd: own key deleted or expired");
                events.key_deleted(key);
            }
            Some(Held::Disowned { .. }) => self.forget(key),
            _ => {}
        }
    }

    /// Whether `found` (or no key) at `key` means it is no longer ours, given that this
    /// client knew it as `known` when it asked, and that was not reported yet: gone, or
    /// changed by someone else since (taken over under another lease, put without one).
    /// A key this client wrote again meanwhile (a later revision, or under a newer lease
    /// of its own) is not reported.
    fn newly_lost(&self, key: &str, known: &Landed, found: Option<&KeyValue>) -> bool {
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;
        let Some(Held::Ours {
            state: now, reported, ..
        }) = state.keys.get_mut(key)
        else {
            return false;
        };
        let lost = match found {
            None => (now.revision == known.revision).then_some(Found::Absent),
            Some(kv) => {
                let newer_lease_of_ours = match (state.leases.get(&kv.lease()), state.leases.get(&now.lease))
                {
                    (Some(found), Some(held)) => found > held,
                    _ => false,
                };
                (kv.mod_revision() > now.revision && kv.lease() != now.lease && !newer_lease_of_ours)
                    .then(|| Found::At(kv.mod_revision()))
            }
        };
        match lost {
            Some(lost) if *reported != Some(lost) => {
                *reported = Some(lost);
                true
            }
            _ => false,
        }
    }

    /// A drain marker of `id` appeared or went; its owner, if any, is told.
    fn marker(&self, prefix: &str, id: InstanceId, drained: bool) {
        let mut state = self.state.lock().unwrap();
        let entry = (prefix.to_owned(), id);
        let changed = if drained {
            state.drained.insert(entry.clone())
        } else {
            state.drained.remove(&entry)
        };
        if changed {
            if let Some(owner) = state.owners.get(&entry) {
                owner
                    .events
                    .drain_changed(owner.service.clone(), entry.1, drained);
            }
        }
    }

    /// Deletes a disowned key if it is still the version that showed up.
    fn delete_disowned(&self, key: &str, revision: i64) {
        let conn = self.conn.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let txn = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)])
                .and_then([TxnOp::delete(key.as_str(), None)]);
            let deleted = conn.txn(&txn).await;
            if let Err(failure) = deleted {
                tracing::warn!(%key, error = %conn.error(failure), "etcd: a write reported failed landed late and could not be deleted");
            }
        });
    }

    /// After a gap in the watch of `prefix`: reads its own keys and drain markers and
    /// reports what changed. Returns the revision the watch resumes after.
    async fn check(&self, prefix: &str) -> Result<i64> {
        let (markers, revision) = self.read_markers(prefix).await?;
        let seen: HashSet<InstanceId> = markers.into_iter().collect();
        let known: Vec<InstanceId> = self
            .state
            .lock()
            .unwrap()
            .drained
            .iter()
            .filter(|(p, id)| p == prefix && !seen.contains(id))
            .map(|(_, id)| id.clone())
            .collect();
        for id in known {
            self.marker(prefix, id, false);
        }
        for id in seen {
            self.marker(prefix, id, true);
        }
        Ok(revision.min(self.verify(prefix).await?))
    }

    /// Reads back the own keys under `prefix` and reports those that are no longer
    /// ours; deletes writes reported failed that landed after all. Returns the lowest
    /// revision it read at (`i64::MAX` when there was nothing to read).
    async fn verify(&self, prefix: &str) -> Result<i64> {
        let keys: Vec<(String, Held)> = self
            .state
            .lock()
            .unwrap()
            .keys
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .map(|(key, held)| (key.clone(), held.clone()))
            .collect();
        let mut revision = i64::MAX;
        for chunk in keys.chunks(GETS_PER_TXN) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, _)| TxnOp::get(key.as_str(), Some(GetOptions::new().with_keys_only())))
                .collect();
            let txn = Txn::new().and_then(ops);
            let answer = self.conn.txn(&txn).await.map_err(|f| self.conn.error(f))?;
            revision = revision.min(answer.header().map_or(revision, |h| h.revision()));
            for ((key, held), response) in chunk.iter().zip(answer.op_responses()) {
                let TxnOpResponse::Get(found) = response else {
                    continue;
                };
                let found = found.kvs().first();
                match held {
                    Held::Ours {
                        state: known, events, ..
                    } => {
                        if self.newly_lost(key, known, found) {
                            tracing::info!(%key, "etcd: own key missing or not ours when read back");
                            events.key_deleted(key.as_str());
                        }
                    }
                    Held::Disowned { lease } => match found {
                        Some(kv) if kv.lease() == *lease => self.delete_disowned(key, kv.mod_revision()),
                        Some(_) => {}
                        None => self.forget(key),
                    },
                }
            }
        }
        Ok(revision)
    }
}

/// Why one own-key watch stream stopped.
enum End {
    /// The stream broke, went silent or was compacted: check, then watch again.
    Gap(String),
    /// The registry client is gone.
    Closed,
}

/// The watch task of one service prefix: runs until the registry client goes.
async fn follow(own: Weak<OwnKeys>, conn: Arc<Connection>, prefix: String, mut next: i64, backoff: Backoff) {
    let mut delays = backoff.delays();
    loop {
        match watch(&own, &conn, &prefix, &mut next).await {
            End::Closed => return,
            End::Gap(reason) => {
                tracing::debug!(%prefix, %reason, "etcd: own-key watch interrupted; checking own keys");
            }
        }
        loop {
            tokio::time::sleep(delays.next().unwrap_or(backoff.max)).await;
            if conn.is_crashed() {
                return;
            }
            let Some(keys) = own.upgrade() else { return };
            match keys.check(&prefix).await {
                Ok(revision) => {
                    next = revision + 1;
                    delays = backoff.delays();
                    break;
                }
                Err(e) => tracing::debug!(%prefix, error = %e, "etcd: cannot check own keys yet"),
            }
        }
    }
}

/// One watch stream of `prefix` from `next`, applied until it ends: deletes under the
/// prefix, every change of its drain markers, and the own keys read back every
/// [`VERIFY_EVERY`].
async fn watch(own: &Weak<OwnKeys>, conn: &Connection, prefix: &str, next: &mut i64) -> End {
    let Some(markers) = own.upgrade().map(|keys| keys.marker_prefix()) else {
        return End::Closed;
    };
    let from = || {
        WatchOptions::new()
            .with_prefix()
            .with_progress_notify()
            .with_start_revision(*next)
    };
    let opened = conn
        .watch(prefix, from().with_filters([WatchFilterType::NoPut]))
        .await;
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(Failure::Crashed) => return End::Closed,
        Err(failure) => return End::Gap(conn.error(failure).to_string()),
    };
    if let Some(markers) = markers {
        if let Err(e) = stream.watch(format!("{prefix}{markers}"), Some(from())).await {
            return End::Gap(format!("cannot watch drain markers: {e}"));
        }
    }
    let member = conn.chosen();
    let mut heartbeat = tokio::time::interval(PROGRESS_EVERY);
    let mut verify = tokio::time::interval_at(Instant::now() + VERIFY_EVERY, VERIFY_EVERY);
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A read-back runs beside the stream, so a delete is never held up behind it.
    let mut verifying = std::pin::pin!(Fuse::terminated());
    let mut heard = Instant::now();
    loop {
        let message = tokio::select! {
            message = stream.message() => message,
            _ = heartbeat.tick() => {
                if own.strong_count() == 0 || conn.is_crashed() {
                    return End::Closed;
                }
                if heard.elapsed() > SILENCE {
                    conn.avoid(member);
                    return End::Gap(format!("no answer for {:?}", heard.elapsed()));
                }
                if let Err(e) = stream.request_progress().await {
                    return End::Gap(format!("stream closed: {e}"));
                }
                continue;
            }
            _ = verify.tick(), if verifying.is_terminated() => {
                let Some(keys) = own.upgrade() else {
                    return End::Closed;
                };
                verifying.set(async move { keys.verify(prefix).await }.fuse());
                continue;
            }
            verified = verifying.as_mut() => {
                if let Err(e) = verified {
                    tracing::debug!(%prefix, error = %e, "etcd: cannot read own keys back yet");
                }
                continue;
            }
        };
        let answer = match message {
            Ok(Some(answer)) => answer,
            Ok(None) => return End::Gap("stream ended".into()),
            Err(e) => return End::Gap(e.to_string()),
        };
        heard = Instant::now();
        if answer.compact_revision() > 0 {
            return End::Gap(format!("revision {next} is compacted"));
        }
        if answer.canceled() {
            return End::Gap(format!("canceled: {}", answer.cancel_reason()));
        }
        let Some(keys) = own.upgrade() else {
            return End::Closed;
        };
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            *next = (*next).max(kv.mod_revision() + 1);
            keys.on_event(prefix, event.event_type(), kv);
        }
    }
}
