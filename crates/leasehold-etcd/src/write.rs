//! Writes under a lease: batched into transactions bounded in operations and bytes,
//! each write conditional on the state it expects its key in, each with its own outcome.
//!
//! Every put is a transaction `if key is as expected then put else get` (nested in one
//! transaction per batch when there are several). What a write expects ([`Expect`]) is
//! no key, or the exact state (mod revision) this client last left the key in: a state
//! that never comes back. So a copy of a write that lands late (sent to a frozen member,
//! resent elsewhere, applied when the member resumes) changes nothing: it cannot bind a
//! key to a lease that was given up, nor put an older value back over a newer one.
//! Writes of one key are ordered by their registration's change: one that finds a later
//! change landed or on its way is done, never retried nor cleaned up over it. A key
//! another live client holds is never overwritten: its owner's lease is reported back
//! as [`Error::Conflict`]. A key found as we did not expect but under one of our own
//! leases, or under none (this lease, another TTL's, one given up and not yet gone, a
//! write that got no answer and landed) is written again, expecting what was found.
//!
//! A transaction etcd refuses as a whole (too large for the cluster's limit, a key the
//! user may not write) changes nothing; it is split in two until the write at fault is
//! alone, so it fails alone. A transaction that got no answer may still land: its
//! writes fail, and their keys are disowned ([`OwnKeys::disown`]) so a late landing is
//! deleted rather than left as a key no handle owns.

use std::collections::{HashMap, HashSet, VecDeque};

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use leasehold::registrar::{LeaseError, LeaseEvents, Write, WriteOutcome};
use leasehold::{Error, Instance, InvalidInput};

use crate::connection::{Connection, Failure};
use crate::own::{Expect, Landed, OwnKeys};

/// Writes per transaction. etcd allows 128 operations per transaction level, and a
/// nested transaction may use only what its parent left: 120 leaves each write room for
/// its compare, put and the deletes of its old keys.
const WRITES_PER_TXN: usize = 120;

/// What a transaction costs beyond its keys and values (headers, compares, framing).
const TXN_OVERHEAD: usize = 512;

/// What one write costs beyond its key and value inside a transaction.
const WRITE_OVERHEAD: usize = 48;

/// How many transactions of one batch are in flight at once.
const TXN_CONCURRENCY: usize = 4;

/// How often a write is tried again with what it found under its key (our own key
/// under another of our leases, a key deleted meanwhile, an earlier write of the key
/// landing after it) before it fails.
const ROUNDS: usize = 4;

/// One write as it goes to etcd.
struct Item<'a> {
    /// Its place in the batch.
    at: usize,
    instance: &'a Instance,
    key: String,
    value: Vec<u8>,
    /// Old keys of this registration to delete with it (keys named after a lease).
    stale: Vec<String>,
    /// Its registration's change ([`Write::change`]): orders the writes of its key.
    change: u64,
    /// Its place among the writes of its key ([`OwnKeys::begin_write`]).
    ticket: u64,
    /// What the key must be for the put to go.
    expect: Expect,
}

impl Item<'_> {
    /// Bytes it adds to a transaction: the key in the compare, the put and the get.
    fn size(&self) -> usize {
        3 * self.key.len()
            + self.value.len()
            + self.stale.iter().map(String::len).sum::<usize>()
            + WRITE_OVERHEAD
    }

    /// `if key is as expected then put (and delete stale keys) else get`.
    fn txn(&self, lease: i64) -> Txn {
        let mut ops: Vec<TxnOp> = self
            .stale
            .iter()
            .map(|k| TxnOp::delete(k.as_str(), None))
            .collect();
        ops.push(TxnOp::put(
            self.key.as_str(),
            self.value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        ));
        let key = self.key.as_str();
        let compare = match self.expect {
            Expect::Absent => Compare::version(key, CompareOp::Equal, 0),
            Expect::Exactly(landed) => Compare::mod_revision(key, CompareOp::Equal, landed.revision),
        };
        Txn::new()
            .when([compare])
            .and_then(ops)
            .or_else([TxnOp::get(self.key.as_str(), None)])
    }
}

/// What became of one write in one transaction.
enum Verdict {
    /// Written at this revision.
    Written(i64),
    /// The compare failed; the key was found like this (or absent) at revision `at`.
    Found { kv: Option<KeyValue>, at: i64 },
    /// Failed alone; `unknown` when it may still land.
    Failed { error: Error, unknown: bool },
}

/// Writes a batch under `lease`; see the module doc.
pub(crate) async fn put(
    conn: &Connection,
    own: &std::sync::Arc<OwnKeys>,
    lease: i64,
    events: &LeaseEvents,
    writes: &[Write<'_>],
) -> Result<Vec<WriteOutcome>, LeaseError> {
    let layout = &conn.layout;
    let budget = conn.max_request_bytes.saturating_sub(TXN_OVERHEAD);
    let keys: Vec<String> = writes
        .iter()
        .map(|write| layout.instance_key(write.instance, lease))
        .collect();
    // etcd refuses a transaction that names a key twice. Keys named after the lease
    // (go-zero) can be shared by two registrations: the last one written wins, as it
    // would one write at a time.
    let last: HashMap<&str, usize> = keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let mut deleting = HashSet::new();
    let mut outcomes: Vec<Option<WriteOutcome>> = writes.iter().map(|_| None).collect();
    let mut prefixes = HashMap::new();
    let mut items = Vec::with_capacity(writes.len());
    let mut in_flight = InFlight(Vec::new(), own);
    for (at, (write, key)) in writes.iter().zip(&keys).enumerate() {
        let instance = write.instance;
        if !prefixes.contains_key(instance.service()) {
            // A service whose prefix we may not read (a role scoped to another service)
            // fails its own registrations only.
            let watched = match own.watched(instance.service()) {
                Some(prefix) => Ok(prefix),
                None => match own.watch_service(instance.service()).await {
                    Err(e) if e.is_unavailable() || e.is_closed() => return Err(LeaseError::Failed(e)),
                    watched => watched,
                },
            };
            prefixes.insert(instance.service().clone(), watched);
        }
        let prefix = match &prefixes[instance.service()] {
            Ok(prefix) => prefix,
            Err(e) => {
                outcomes[at] = Some(Err(named(conn, instance, &keys[at], copy(conn, e))));
                continue;
            }
        };
        own.own(prefix, instance.service(), instance.id(), events);
        if last[key.as_str()] != at {
            continue;
        }
        if own.is_drained(prefix, instance.id()) {
            // An operator's marker names it: nothing is written, and the registrar
            // keeps it out until the marker goes.
            outcomes[at] = Some(Ok(key.clone()));
            events.drain_changed(instance.service().clone(), instance.id().clone(), true);
            continue;
        }
        let value = match layout.codec.encode(instance) {
            Ok(value) => value,
            Err(e) => {
                outcomes[at] = Some(Err(e.into()));
                continue;
            }
        };
        let stale = [write.current, write.previous]
            .into_iter()
            .flatten()
            .filter(|stale| !last.contains_key(stale) && deleting.insert(*stale))
            .map(str::to_owned)
            .collect();
        let mut item = Item {
            at,
            instance,
            change: write.change,
            ticket: 0,
            expect: Expect::Absent,
            key: key.clone(),
            value,
            stale,
        };
        if item.size() > budget {
            outcomes[at] = Some(Err(InvalidInput {
                field: "instance",
                value: key.clone(),
                rule: format!(
                    "encodes to {} bytes, more than etcd's request limit of {} bytes (max_request_bytes)",
                    item.value.len(),
                    conn.max_request_bytes
                ),
            }
            .into()));
            continue;
        }
        (item.ticket, item.expect) = own.begin_write(&item.key, item.change);
        in_flight.0.push((item.key.clone(), item.change, item.ticket));
        items.push(item);
    }
    for stale in items.iter().flat_map(|item| &item.stale) {
        own.forget(stale);
    }
    let mut unanswered = Vec::new();
    for round in 1..=ROUNDS {
        if items.is_empty() {
            break;
        }
        let mut again = Vec::new();
        for (mut item, verdict) in transact(conn, lease, items, budget).await? {
            let outcome = match verdict {
                Verdict::Written(revision) => {
                    own.written(
                        &item.key,
                        item.expect.landed(lease, revision),
                        item.change,
                        events,
                    );
                    Ok(item.key.clone())
                }
                Verdict::Failed { error, unknown } => {
                    let new_key = matches!(
                        item.expect,
                        Expect::Absent | Expect::Exactly(Landed { lease: 0, .. })
                    );
                    // A later write of the key lands only where this one did, and then
                    // holds the key: it must not be deleted as this one's leftover.
                    if unknown && new_key && !own.superseded(&item.key, item.change) {
                        own.disown(&item.key, lease);
                        unanswered.push(item.key.clone());
                    }
                    Err(error)
                }
                Verdict::Found { kv, at } => {
                    let holder = kv.as_ref().map_or(0, KeyValue::lease);
                    if holder == 0 || holder == lease || own.is_ours(holder) {
                        if own.superseded(&item.key, item.change) {
                            // A later write carries what this one did: it stays, and this
                            // one is done. Were it written again, it would land over it.
                            outcomes[item.at] = Some(Ok(item.key.clone()));
                            continue;
                        }
                        if round < ROUNDS {
                            item.expect = own.expect_after(&item.key, kv.as_ref(), at);
                            again.push(item);
                            continue;
                        }
                        Err(Error::backend(
                            conn.endpoints(),
                            format!("{}: the key kept changing while it was written", item.key),
                        ))
                    } else {
                        Err(Error::Conflict {
                            service: item.instance.service().to_string(),
                            id: item.instance.id().to_string(),
                            key: item.key.clone(),
                        })
                    }
                }
            };
            outcomes[item.at] = Some(outcome);
        }
        items = again;
    }
    drop(in_flight);
    if !unanswered.is_empty() {
        // Their callers are told they failed: remove what may have landed. A copy that
        // lands later still is deleted when the own keys are next read back.
        if let Err(e) = remove(conn, lease, &unanswered).await {
            tracing::debug!(error = %e, keys = unanswered.len(), "etcd: could not yet remove writes that got no answer");
        }
    }
    if outcomes.iter().any(|o| matches!(o, Some(Ok(_)))) {
        own.settled();
    }
    Ok(keys
        .iter()
        .enumerate()
        .map(|(at, key)| {
            let decided = &outcomes[last[key.as_str()]];
            match (at == last[key.as_str()], decided) {
                (true, _) => outcomes[at].take(),
                (false, Some(Ok(key))) => Some(Ok(key.clone())),
                (false, Some(Err(e))) => Some(Err(copy(conn, e))),
                (false, None) => None,
            }
            .unwrap_or_else(|| Err(Error::backend(conn.endpoints(), format!("{key}: not written"))))
        })
        .collect())
}

/// The tickets of a batch's writes, given back when the batch is answered or dropped,
/// so later writes of the same keys never wait on them for nothing.
struct InFlight<'a>(Vec<(String, u64, u64)>, &'a OwnKeys);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        for (key, change, ticket) in self.0.drain(..) {
            self.1.end_write(&key, change, ticket);
        }
    }
}

/// Sends `items` as transactions that fit `budget` bytes and [`WRITES_PER_TXN`]
/// writes, a few at a time, splitting any that etcd refuses as a whole until the write
/// at fault is alone. Fails as a whole only when the lease is gone.
async fn transact<'a>(
    conn: &Connection,
    lease: i64,
    items: Vec<Item<'a>>,
    budget: usize,
) -> Result<Vec<(Item<'a>, Verdict)>, LeaseError> {
    let mut queue: VecDeque<Vec<Item<'a>>> = VecDeque::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for item in items {
        if !chunk.is_empty() && (chunk.len() == WRITES_PER_TXN || bytes + item.size() > budget) {
            queue.push_back(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += item.size();
        chunk.push(item);
    }
    if !chunk.is_empty() {
        queue.push_back(chunk);
    }
    // Boxed: a request's future is large, and the stream would copy it whole into
    // its task on every push.
    let mut running: FuturesUnordered<BoxFuture<'_, Sent<'a>>> = FuturesUnordered::new();
    let mut done = Vec::new();
    loop {
        let next = if running.is_empty() && queue.len() == 1 {
            // The usual case, one transaction: sent from here.
            let chunk = queue.pop_front().expect("one transaction");
            Some(send(conn, lease, chunk).await)
        } else {
            while running.len() < TXN_CONCURRENCY {
                let Some(chunk) = queue.pop_front() else { break };
                running.push(Box::pin(send(conn, lease, chunk)));
            }
            running.next().await
        };
        let Some((mut chunk, sent)) = next else {
            break;
        };
        match sent {
            Ok(answer) => done.extend(verdicts(chunk, &answer)),
            Err(failure) if failure.is_lease_not_found() => {
                return Err(LeaseError::Lost(conn.error(failure)))
            }
            Err(failure) if failure.is_unanswered() || matches!(failure, Failure::Crashed) => {
                let error = conn.error(failure);
                done.extend(chunk.into_iter().map(|item| {
                    let error = copy(conn, &error);
                    (item, Verdict::Failed { error, unknown: true })
                }));
            }
            Err(failure) if chunk.len() > 1 => {
                tracing::debug!(writes = chunk.len(), error = %conn.error(failure), "etcd: a batched write was refused; splitting it");
                let half = chunk.split_off(chunk.len() / 2);
                queue.push_front(half);
                queue.push_front(chunk);
            }
            Err(failure) => {
                let item = chunk.pop().expect("one write");
                let error = refused(conn, &item, failure);
                done.push((
                    item,
                    Verdict::Failed {
                        error,
                        unknown: false,
                    },
                ));
            }
        }
    }
    Ok(done)
}

/// A transaction's writes and what etcd answered.
type Sent<'a> = (Vec<Item<'a>>, Result<TxnResponse, Failure>);

/// Sends `chunk` as one transaction: one write alone, several nested in one.
async fn send<'a>(conn: &Connection, lease: i64, chunk: Vec<Item<'a>>) -> Sent<'a> {
    let txn = match chunk.as_slice() {
        [item] => item.txn(lease),
        _ => Txn::new().and_then(
            chunk
                .iter()
                .map(|item| TxnOp::txn(item.txn(lease)))
                .collect::<Vec<_>>(),
        ),
    };
    let sent = conn.txn(&txn).await;
    (chunk, sent)
}

/// Each write's verdict from a transaction's answer.
fn verdicts<'a>(mut chunk: Vec<Item<'a>>, answer: &TxnResponse) -> Vec<(Item<'a>, Verdict)> {
    let revision = answer.header().map_or(0, |h| h.revision());
    let verdict = |txn: &TxnResponse| {
        if txn.succeeded() {
            return Verdict::Written(revision);
        }
        Verdict::Found {
            kv: txn.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(got) => got.kvs().first().cloned(),
                _ => None,
            }),
            at: revision,
        }
    };
    if chunk.len() == 1 {
        let item = chunk.pop().expect("one write");
        return vec![(item, verdict(answer))];
    }
    chunk
        .into_iter()
        .zip(answer.op_responses())
        .map(|(item, response)| match response {
            TxnOpResponse::Txn(nested) => (item, verdict(&nested)),
            _ => (
                item,
                Verdict::Found {
                    kv: None,
                    at: revision,
                },
            ),
        })
        .collect()
}

/// The same error for another write of a failed batch.
fn copy(conn: &Connection, error: &Error) -> Error {
    match error {
        Error::Timeout { endpoints, timeout } => Error::Timeout {
            endpoints: endpoints.clone(),
            timeout: *timeout,
        },
        Error::Unreachable { endpoints, source } => Error::Unreachable {
            endpoints: endpoints.clone(),
            source: source.to_string().into(),
        },
        Error::PermissionDenied { endpoints, reason } => Error::PermissionDenied {
            endpoints: endpoints.clone(),
            reason: reason.clone(),
        },
        Error::Conflict { service, id, key } => Error::Conflict {
            service: service.clone(),
            id: id.clone(),
            key: key.clone(),
        },
        Error::InvalidInput(e) => Error::InvalidInput(e.clone()),
        Error::Closed => Error::Closed,
        other => Error::backend(conn.endpoints(), other.to_string()),
    }
}

/// The error of one write etcd refused alone, naming it.
fn refused(conn: &Connection, item: &Item<'_>, failure: Failure) -> Error {
    if failure.is_too_large() {
        return InvalidInput {
            field: "instance",
            value: item.key.clone(),
            rule: format!("etcd refused it as too large: {}", conn.error(failure)),
        }
        .into();
    }
    named(conn, item.instance, &item.key, conn.error(failure))
}

/// `error`, saying which registration it is about.
fn named(conn: &Connection, instance: &Instance, key: &str, error: Error) -> Error {
    let what = format!("registration {}/{} at {key}", instance.service(), instance.id());
    match error {
        Error::PermissionDenied { endpoints, reason } => Error::PermissionDenied {
            endpoints,
            reason: format!("{what}: {reason}"),
        },
        other => Error::backend(conn.endpoints(), format!("{what}: {other}")),
    }
}

/// Deletes `keys` where they are still under `lease`, in transactions of
/// [`WRITES_PER_TXN`]: a key another client took over is left to it.
pub(crate) async fn delete(
    conn: &Connection,
    own: &OwnKeys,
    lease: i64,
    keys: &[String],
) -> Result<(), LeaseError> {
    for key in keys {
        own.forget(key);
    }
    remove(conn, lease, keys).await.map_err(LeaseError::Failed)
}

/// Deletes `keys` where they are still under `lease`.
async fn remove(conn: &Connection, lease: i64, keys: &[String]) -> Result<(), Error> {
    for chunk in keys.chunks(WRITES_PER_TXN) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|key| {
                TxnOp::txn(
                    Txn::new()
                        .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
                        .and_then([TxnOp::delete(key.as_str(), None)]),
                )
            })
            .collect();
        let txn = Txn::new().and_then(ops);
        conn.txn(&txn).await.map_err(|f| conn.error(f))?;
    }
    Ok(())
}
