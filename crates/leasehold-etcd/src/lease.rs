//! The lease side: etcd leases kept alive at TTL/3, keys written under them in batched
//! transactions, and the events the shared [`Registrar`](leasehold::registrar::Registrar)
//! recovers from.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions};
use futures::{StreamExt, TryStreamExt};
use leasehold::registrar::{LeaseBackend, LeaseError, LeaseEvents, Write, WriteOutcome};
use leasehold::{Backoff, Error, Result};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::connection::{Connection, Failure, MAX_MESSAGE};

/// etcd refuses a transaction of more than `--max-txn-ops` operations (128 by default).
const MAX_TXN_OPS: usize = 128;

/// How many transactions of one batch are in flight at once.
const TXN_CONCURRENCY: usize = 4;

/// The [`LeaseBackend`] of [`EtcdRegistry`](crate::EtcdRegistry).
#[derive(Debug)]
pub(crate) struct EtcdBackend {
    pub(crate) conn: Arc<Connection>,
    pub(crate) backoff: Backoff,
}

/// A granted etcd lease. Dropping it stops its keepalive task (its keys then expire
/// after the TTL); revoking removes them at once.
pub(crate) struct EtcdLease {
    id: i64,
    task: JoinHandle<()>,
}

impl Drop for EtcdLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdBackend {
    fn lease_error(&self, failure: Failure) -> LeaseError {
        if failure.is_lease_not_found() {
            LeaseError::Lost(self.conn.error(failure))
        } else {
            LeaseError::Failed(self.conn.error(failure))
        }
    }

    /// Runs `ops` as transactions of at most [`MAX_TXN_OPS`] operations, a few at a time.
    async fn transact(&self, ops: Vec<TxnOp>) -> Result<(), LeaseError> {
        let mut chunks = Vec::with_capacity(ops.len().div_ceil(MAX_TXN_OPS));
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            chunks.push(ops.by_ref().take(MAX_TXN_OPS).collect::<Vec<_>>());
        }
        futures::stream::iter(chunks)
            .map(|chunk| async move {
                let txn = Txn::new().and_then(chunk);
                self.conn
                    .attempt(|mut client| {
                        let txn = txn.clone();
                        async move { client.txn(txn).await }
                    })
                    .await
                    .map(drop)
                    .map_err(|f| self.lease_error(f))
            })
            .buffer_unordered(TXN_CONCURRENCY)
            .try_collect::<()>()
            .await
    }
}

#[async_trait]
impl LeaseBackend for EtcdBackend {
    type Lease = EtcdLease;

    async fn grant(&self, ttl: Duration, events: LeaseEvents) -> Result<EtcdLease> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let granted = self
            .conn
            .call(|mut client| async move { client.lease_grant(seconds, None).await })
            .await?;
        if granted.ttl() <= 0 {
            return Err(Error::backend(
                self.conn.endpoints(),
                format!("lease grant answered TTL {}: {}", granted.ttl(), granted.error()),
            ));
        }
        let id = granted.id();
        let revision = granted.header().map_or(0, |h| h.revision());
        tracing::debug!(lease = %format_args!("{id:x}"), ttl = seconds, "etcd lease granted");
        let conn = self.conn.clone();
        let backoff = self.backoff;
        let task = tokio::spawn(async move {
            tokio::select! {
                () = keep_alive(&conn, id, ttl, &events) => {}
                () = watch_deletes(&conn, id, revision, &events, backoff) => {}
            }
        });
        Ok(EtcdLease { id, task })
    }

    async fn put(&self, lease: &EtcdLease, writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError> {
        let layout = &self.conn.layout;
        let keys: Vec<String> = writes
            .iter()
            .map(|write| layout.instance_key(write.instance, lease.id))
            .collect();
        // etcd refuses a transaction that names a key twice. Keys named after the lease
        // (go-zero) can be shared by two registrations: the last one written wins, as it
        // would one write at a time.
        let mut values = HashMap::with_capacity(writes.len());
        for (write, key) in writes.iter().zip(&keys) {
            values.insert(
                key.as_str(),
                layout.codec.encode(write.instance).map_err(Error::from)?,
            );
        }
        let putting: HashSet<&str> = values.keys().copied().collect();
        let options = PutOptions::new().with_lease(lease.id);
        let mut deleting = HashSet::new();
        let mut ops = Vec::with_capacity(writes.len());
        for (write, key) in writes.iter().zip(&keys) {
            // Formats whose keys name the lease (go-zero) leave the old key behind; its
            // delete goes next to the put, in the same transaction.
            for stale in [write.current, write.previous].into_iter().flatten() {
                if !putting.contains(stale) && deleting.insert(stale) {
                    ops.push(TxnOp::delete(stale, None));
                }
            }
            if let Some(value) = values.remove(key.as_str()) {
                ops.push(TxnOp::put(key.as_str(), value, Some(options.clone())));
            }
        }
        self.transact(ops).await?;
        Ok(keys.into_iter().map(Ok).collect())
    }

    async fn delete(&self, _lease: &EtcdLease, keys: &[String]) -> Result<(), LeaseError> {
        let ops = keys.iter().map(|key| TxnOp::delete(key.as_str(), None)).collect();
        self.transact(ops).await
    }

    async fn revoke(&self, lease: EtcdLease) -> Result<()> {
        lease.task.abort();
        let id = lease.id;
        match self
            .conn
            .attempt(|mut client| async move { client.lease_revoke(id).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(failure) if failure.is_lease_not_found() => Ok(()),
            Err(failure) => Err(self.conn.error(failure)),
        }
    }
}

/// Keeps lease `id` alive: a request every TTL/3, every answer drained.
///
/// Only etcd decides that a lease is gone: an answer with TTL ≤ 0 (what etcd sends for a
/// lease it no longer has, after an expiry, a revoke or a wipe) reports it lost at once.
/// A stream that ends, fails, or goes silent for two periods (a member that died or
/// froze) is opened again, each try cut off after one period so the balancer moves on
/// to a live member, and the lease carries on with no rewrite. Only when no answer has
/// come for a whole TTL, so the lease has expired whatever etcd says later, is it
/// reported lost without one. Then returns, since the registrar grants a new lease.
async fn keep_alive(conn: &Connection, id: i64, ttl: Duration, events: &LeaseEvents) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut answered = Instant::now();
    loop {
        if conn.is_crashed() || events.is_closed() {
            return;
        }
        if answered.elapsed() >= ttl {
            events.lost(format!(
                "lease {id:x}: no keepalive answer for {:?}",
                answered.elapsed()
            ));
            return;
        }
        let opened = conn
            .attempt_within(
                period,
                |mut client| async move { client.lease_keep_alive(id).await },
            )
            .await;
        let (mut keeper, mut answers) = match opened {
            Ok(stream) => stream,
            Err(Failure::Crashed) => return,
            Err(failure) if failure.is_lease_not_found() => {
                events.lost(format!("lease {id:x} not found"));
                return;
            }
            Err(failure) => {
                tracing::debug!(lease = %format!("{id:x}"), error = %conn.error(failure), "keepalive could not start; trying again");
                tokio::time::sleep(period / 4).await;
                continue;
            }
        };
        // The first request goes out at once, so a reopened stream confirms the lease
        // (or learns it is gone) within one round trip.
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sent = Instant::now();
        let reason = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if conn.is_crashed() || events.is_closed() {
                        return;
                    }
                    if answered.elapsed() >= ttl {
                        events.lost(format!("lease {id:x}: no keepalive answer for {:?}", answered.elapsed()));
                        return;
                    }
                    if answered < sent && sent.elapsed() > period * 2 {
                        break format!("no answer for {:?}", sent.elapsed());
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        break format!("stream closed: {e}");
                    }
                    if answered >= sent {
                        sent = Instant::now();
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        answered = Instant::now();
                        metrics::histogram!(leasehold::metrics::KEEPALIVE_RTT, "backend" => "etcd").record(answered.duration_since(sent));
                    }
                    Ok(Some(_)) => {
                        events.lost(format!("lease {id:x} expired (keepalive answered TTL 0)"));
                        return;
                    }
                    Ok(None) => break "stream ended".to_owned(),
                    Err(e) => break format!("stream failed: {}", conn.error(Failure::Etcd(e))),
                }
            }
        };
        tracing::debug!(lease = %format!("{id:x}"), %reason, "keepalive stream lost; opening another");
    }
}

/// Watches every key under the root for deletes of keys held by lease `id`, from just
/// after the grant, and reports them; the registrar writes them again unless it deleted
/// them itself. Resumes after the last seen revision when the stream breaks.
async fn watch_deletes(conn: &Connection, id: i64, granted_at: i64, events: &LeaseEvents, backoff: Backoff) {
    let prefix = conn.layout.root_prefix();
    let mut next = granted_at + 1;
    let mut delays = backoff.delays();
    loop {
        if conn.is_crashed() || events.is_closed() {
            return;
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(next)
            .with_filters([WatchFilterType::NoPut]);
        let watching = conn
            .attempt(|client| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move {
                    // One revision's deletes anywhere under the root come in one answer.
                    client
                        .watch_client()
                        .max_decoding_message_size(MAX_MESSAGE)
                        .watch(prefix, Some(options))
                        .await
                }
            })
            .await;
        match watching {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(answer)) => {
                        if answer.compact_revision() > 0 {
                            next = answer.compact_revision();
                            break;
                        }
                        if answer.canceled() {
                            break;
                        }
                        delays = backoff.delays();
                        for event in answer.events() {
                            let Some(kv) = event.kv() else { continue };
                            next = next.max(kv.mod_revision() + 1);
                            let ours = event.prev_kv().is_some_and(|prev| prev.lease() == id);
                            if event.event_type() == EventType::Delete && ours {
                                events.key_deleted(String::from_utf8_lossy(kv.key()));
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "etcd: watch of own keys broke; resuming");
                        break;
                    }
                }
            },
            Err(failure) => tracing::debug!(error = %conn.error(failure), "etcd: cannot watch own keys yet"),
        }
        tokio::time::sleep(delays.next().unwrap_or(backoff.max)).await;
    }
}
