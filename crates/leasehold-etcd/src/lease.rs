//! The lease side: etcd leases kept alive at TTL/3 on a member that answers, keys
//! written under them through [`write`](crate::write), and the events the shared
//! [`Registrar`](leasehold::registrar::Registrar) recovers from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold::registrar::{LeaseBackend, LeaseError, LeaseEvents, Write, WriteOutcome};
use leasehold::{Backoff, Error, Result};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::connection::{Connection, Failure};
use crate::own::OwnKeys;
use crate::write;

/// The [`LeaseBackend`] of [`EtcdRegistry`](crate::EtcdRegistry).
#[derive(Debug)]
pub(crate) struct EtcdBackend {
    pub(crate) conn: Arc<Connection>,
    pub(crate) backoff: Backoff,
    pub(crate) own: Arc<OwnKeys>,
}

/// A granted etcd lease. Dropping it gives it up: it is kept alive until the
/// registrations under it are written under the next lease (or deleted), then revoked as
/// soon as a member can be reached, so a write under it that lands late fails and keys
/// still under it go at once rather than after the TTL.
pub(crate) struct EtcdLease {
    id: i64,
    ttl: Duration,
    events: LeaseEvents,
    task: JoinHandle<()>,
    conn: Arc<Connection>,
    own: Arc<OwnKeys>,
    backoff: Backoff,
    revoked: AtomicBool,
}

impl Drop for EtcdLease {
    fn drop(&mut self) {
        if self.revoked.load(Ordering::SeqCst) || self.conn.is_crashed() {
            self.task.abort();
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.task.abort();
            return;
        };
        let (id, conn, own, backoff) = (self.id, self.conn.clone(), self.own.clone(), self.backoff);
        let (events, keepalive) = (self.events.clone(), self.task.abort_handle());
        // Past twice the TTL (and a leader change's extension) nobody can be keeping
        // it alive: it is gone whether or not the revoke got through.
        let give_up = Instant::now() + self.ttl * 2 + Duration::from_secs(10);
        runtime.spawn(async move {
            // The registrar writes the registrations under a new lease at once; revoking
            // (or letting expire) the old one before they are moved would take them out
            // of the registry meanwhile, for as long as the move takes.
            own.wait_moved(id, &events, give_up).await;
            keepalive.abort();
            let mut delays = backoff.delays();
            loop {
                match conn.revoke(id).await {
                    Ok(_) => break,
                    Err(failure) if failure.is_lease_not_found() => break,
                    Err(Failure::Crashed) => return,
                    Err(failure) if Instant::now() >= give_up => {
                        tracing::debug!(lease = %format!("{id:x}"), error = %conn.error(failure), "etcd: could not revoke a given-up lease; it has expired by now");
                        break;
                    }
                    Err(_) => tokio::time::sleep(delays.next().unwrap_or(backoff.max)).await,
                }
            }
            tracing::debug!(lease = %format!("{id:x}"), "etcd: given-up lease is gone");
            own.gone(id);
        });
    }
}

#[async_trait]
impl LeaseBackend for EtcdBackend {
    type Lease = EtcdLease;

    async fn grant(&self, ttl: Duration, events: LeaseEvents) -> Result<EtcdLease> {
        let seconds = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let granted = self
            .conn
            .call(|client| {
                let mut leases = client.lease_client();
                async move { leases.grant(seconds, None).await }
            })
            .await?;
        if granted.ttl() <= 0 {
            return Err(Error::backend(
                self.conn.endpoints(),
                format!("lease grant answered TTL {}: {}", granted.ttl(), granted.error()),
            ));
        }
        let id = granted.id();
        let term = granted.header().map_or(0, |h| h.raft_term());
        self.own.granted(id);
        tracing::debug!(lease = %format_args!("{id:x}"), ttl = seconds, "etcd lease granted");
        let conn = self.conn.clone();
        let task = tokio::spawn({
            let events = events.clone();
            async move { keep_alive(&conn, id, ttl, term, &events).await }
        });
        Ok(EtcdLease {
            id,
            ttl,
            events,
            task,
            conn: self.conn.clone(),
            own: self.own.clone(),
            backoff: self.backoff,
            revoked: AtomicBool::new(false),
        })
    }

    async fn put(&self, lease: &EtcdLease, writes: &[Write<'_>]) -> Result<Vec<WriteOutcome>, LeaseError> {
        write::put(&self.conn, &self.own, lease.id, &lease.events, writes).await
    }

    async fn delete(&self, lease: &EtcdLease, keys: &[String]) -> Result<(), LeaseError> {
        write::delete(&self.conn, &self.own, lease.id, keys).await
    }

    /// Dropped: kept alive until its registrations are moved, then revoked.
    async fn give_up(&self, lease: EtcdLease) {
        drop(lease);
    }

    async fn revoke(&self, lease: EtcdLease) -> Result<()> {
        lease.task.abort();
        lease.revoked.store(true, Ordering::SeqCst);
        let id = lease.id;
        let revoked = match self.conn.revoke(id).await {
            Ok(_) => Ok(()),
            Err(failure) if failure.is_lease_not_found() => Ok(()),
            Err(failure) => {
                // Given up instead: revoked in the background when a member answers.
                lease.revoked.store(false, Ordering::SeqCst);
                return Err(self.conn.error(failure));
            }
        };
        self.own.gone(id);
        revoked
    }
}

/// Keeps lease `id` alive: a request every TTL/3, every answer drained.
///
/// Only etcd decides that a lease is gone: an answer with TTL ≤ 0 (what etcd sends for a
/// lease it no longer has, after an expiry, a revoke or a wipe) reports it lost at once.
/// A stream that ends, fails, or leaves one request unanswered for a whole period (a
/// member that died, froze or lost its leader) is opened again on another member
/// ([`Connection::avoid`]), well before the TTL runs out, and the lease carries on with
/// no rewrite. Only when no answer has come for a whole TTL, so the lease has expired
/// whatever etcd says later, is it reported lost without one. Then returns, since the
/// registrar grants a new lease.
///
/// On an etcd that revokes live leases when a stalled leader resumes
/// ([`Connection::stalled_leader_revokes`]), an answer from a later raft term than
/// `term` (the lease's grant) asks the registrar to move the registrations to a new
/// lease ([`LeaseEvents::replace`]): the former leader never knew the new one, so it
/// cannot revoke it. The lease is kept alive meanwhile.
async fn keep_alive(conn: &Connection, id: i64, ttl: Duration, mut term: u64, events: &LeaseEvents) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut answered = Instant::now();
    let mut opened_before = false;
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
            .attempt_within(period, |client| {
                let mut leases = client.lease_client();
                async move { leases.keep_alive(id).await }
            })
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
        // Opening the stream was one keepalive, answered.
        answered = Instant::now();
        let member = conn.chosen();
        tracing::debug!(lease = %format!("{id:x}"), member, "keepalive stream open");
        let mut tick = tokio::time::interval_at(Instant::now() + period / 4, period / 4);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The answer that opened the stream is not shown: on another member (after a
        // leader change, likely) the next keepalive goes at the first tick, to learn
        // its term soon.
        let now = Instant::now();
        let mut last_sent = if opened_before {
            now.checked_sub(period).unwrap_or(now)
        } else {
            now
        };
        opened_before = true;
        let mut unanswered: Option<Instant> = None;
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
                    match unanswered {
                        Some(at) if at.elapsed() >= period / 2 => {
                            conn.avoid(member);
                            break format!("no answer for {:?}", at.elapsed());
                        }
                        Some(_) => {}
                        None if last_sent.elapsed() + period / 8 >= period => {
                            if let Err(e) = keeper.keep_alive().await {
                                break format!("stream closed: {e}");
                            }
                            last_sent = Instant::now();
                            unanswered = Some(last_sent);
                        }
                        None => {}
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        answered = Instant::now();
                        let now_term = answer.header().map_or(0, |h| h.raft_term());
                        if now_term > term {
                            if term > 0 && conn.stalled_leader_revokes() {
                                events.replace(format!(
                                    "lease {id:x}: raft term {term} -> {now_term}; a stalled former leader may revoke it when it resumes (etcd-io/etcd#15247)"
                                ));
                            }
                            term = now_term;
                        }
                        if let Some(sent) = unanswered.take() {
                            metrics::histogram!(leasehold::metrics::KEEPALIVE_RTT, "backend" => "etcd").record(answered.duration_since(sent));
                        }
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
