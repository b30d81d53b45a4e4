//! Discovery: one range of a service's prefix, then a watch from the next revision,
//! resumed after the last applied revision whenever the stream breaks, and re-listed
//! (emitting the exact difference) when the history is compacted or the store replaced.
//!
//! A resumed watch is checked with one count-only range at the last applied revision
//! before its events are applied: a store that was wiped and has since passed that
//! revision again would otherwise feed events of another history, and the cache would
//! keep instances that no longer exist.
//!
//! A resumed watch is live again only once the changes made while it was down are
//! applied. etcd sends those (the watch's backlog) from a loop that runs every 100 ms,
//! while it answers a progress request at once; a cache that said it was live on the
//! first answer served for that long without what changed during the gap. What the gap
//! left is read once ([`Backlog`]), and the feed stays stale until the stream has
//! delivered it (or, should it never, until the service is listed again).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, SortOrder, SortTarget, WatchOptions, WatchResponse};
use leasehold::{Backoff, DiscoveryFeed, Result, Retries};
use tokio::time::Instant;

use crate::connection::{Connection, Failure};

/// Where the cache stands in the store's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// Every event up to and including this revision is applied.
    pub(crate) revision: i64,
    /// The cluster the revision belongs to.
    pub(crate) cluster_id: u64,
    /// How many keys the prefix held at `revision`, decodable or not.
    pub(crate) keys: i64,
}

/// How often a watch asks etcd for a progress answer, as proof that the member is
/// alive. Only that: etcd 3.4 answers a progress request at once with the store's
/// revision, even while events below it are still on their way, so progress answers
/// never advance the applied revision.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A watch with no answer for this long is on a frozen or cut-off member: resumed
/// elsewhere.
const SILENCE: Duration = Duration::from_secs(5);

/// How long a resumed watch may take to deliver its backlog before the service is
/// listed again instead. etcd sends a backlog within one or a few passes of a loop that
/// runs every 100 ms; many thousands of watches resuming at once take longer, and
/// listing them all again would only add to the load.
const BACKLOG_WITHIN: Duration = Duration::from_secs(30);

/// What a resumed watch has to deliver before the cache is current: the changes made
/// while it was down, known by what the prefix held when the watch was created. They
/// are applied once every revision up to `created` is, or the newest put they left and
/// as many keys as the prefix held then.
///
/// The second half is exact: with every surviving put applied and the count right,
/// what may still come of the gap is keys created and deleted again within it, which
/// leave the set as it is.
#[derive(Clone, Copy, Debug)]
struct Backlog {
    /// The store's revision when the watch was created.
    created: i64,
    /// The newest mod revision of a key the gap put (and did not delete), or 0.
    newest_put: i64,
    /// The keys under the prefix at `created`.
    keys: i64,
}

impl Backlog {
    fn is_applied(&self, at: &Position) -> bool {
        at.revision >= self.created || (at.revision >= self.newest_put && at.keys == self.keys)
    }
}

/// Why a watch stream stopped.
#[derive(Debug)]
enum End {
    /// The stream broke or was canceled: resume after the last applied revision.
    Broken(String),
    /// Events we need are compacted away, or the store is another one: list again.
    Relist(String),
    /// Every [`Discovery`](leasehold::Discovery) handle is gone.
    Closed,
}

/// Lists `prefix` once: its keys relative to the prefix with their values, and the
/// position the listing reflects.
pub(crate) async fn list(conn: &Connection, prefix: &str) -> Result<(Vec<(String, Vec<u8>)>, Position)> {
    let mut answer = conn.range(prefix, Some(GetOptions::new().with_prefix())).await?;
    let header = answer.take_header();
    let position = Position {
        revision: header.as_ref().map_or(0, |h| h.revision()),
        cluster_id: header.as_ref().map_or(0, |h| h.cluster_id()),
        keys: answer.kvs().len() as i64,
    };
    let listing = answer
        .take_kvs()
        .into_iter()
        .filter_map(|kv| {
            let (key, value) = kv.into_key_value();
            let key = String::from_utf8(key).ok()?;
            Some((key.strip_prefix(prefix)?.to_owned(), value))
        })
        .collect();
    Ok((listing, position))
}

/// The watcher task of one [`Discovery`](leasehold::Discovery): runs until its last
/// handle is dropped, never giving up on the registry.
pub(crate) async fn follow(
    mut feed: DiscoveryFeed,
    conn: Arc<Connection>,
    prefix: String,
    mut at: Position,
    backoff: Backoff,
) {
    let mut retries = Retries::default();
    let mut relist = false;
    let mut resumed = false;
    loop {
        if relist {
            let span = tracing::info_span!("relist", service = %feed.service(), from = at.revision);
            match tracing::Instrument::instrument(list(&conn, &prefix), span).await {
                Ok((listing, position)) => {
                    feed.reset(listing, position.revision as u64);
                    at = position;
                    relist = false;
                    resumed = false;
                }
                Err(e) => {
                    tracing::warn!(service = %feed.service(), error = %e, "etcd: re-listing failed; retrying");
                    feed.mark_stale();
                    tokio::time::sleep(retries.next(backoff)).await;
                    continue;
                }
            }
        }
        let end = watch(&mut feed, &conn, &prefix, &mut at, &mut retries, resumed).await;
        resumed = true;
        match end {
            End::Closed => return,
            End::Relist(reason) => {
                tracing::info!(service = %feed.service(), %reason, "etcd: listing the service again");
                metrics::counter!(leasehold::metrics::WATCH_RELISTS, "backend" => "etcd", "service" => feed.service().to_string()).increment(1);
                relist = true;
            }
            End::Broken(reason) => {
                if conn.is_crashed() {
                    return;
                }
                tracing::warn!(service = %feed.service(), %reason, revision = at.revision, "etcd: watch broken; resuming after the last revision");
                metrics::counter!(leasehold::metrics::WATCH_RECONNECTS, "backend" => "etcd", "service" => feed.service().to_string()).increment(1);
                feed.mark_stale();
                tokio::time::sleep(retries.next(backoff)).await;
            }
        }
    }
}

/// One watch stream from `at.revision + 1`, applied until it ends.
#[tracing::instrument(name = "watch", level = "info", skip_all, fields(service = %feed.service(), from = at.revision + 1, resumed))]
async fn watch(
    feed: &mut DiscoveryFeed,
    conn: &Connection,
    prefix: &str,
    at: &mut Position,
    retries: &mut Retries,
    mut resumed: bool,
) -> End {
    let options = WatchOptions::new()
        .with_prefix()
        .with_progress_notify()
        .with_start_revision(at.revision + 1);
    let opened = conn.watch(prefix, options).await;
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(Failure::Crashed) => return End::Closed,
        Err(failure) => return End::Broken(conn.error(failure).to_string()),
    };
    let member = conn.chosen();
    let mut heartbeat = tokio::time::interval(PROGRESS_EVERY);
    let mut heard = Instant::now();
    let mut created_at = None;
    // Until it is applied, with when it was read.
    let mut backlog: Option<(Backlog, Instant)> = None;
    loop {
        if feed.is_closed() {
            return End::Closed;
        }
        let message = tokio::select! {
            message = stream.message() => message,
            _ = heartbeat.tick() => {
                if heard.elapsed() > SILENCE {
                    // Resumed elsewhere: the member stays chosen until a request fails
                    // on it, and the next watch would wait out another timeout there.
                    conn.avoid(member);
                    return End::Broken(format!("no answer on the watch for {:?}", heard.elapsed()));
                }
                if let Some((pending, since)) = backlog.filter(|(_, since)| since.elapsed() > BACKLOG_WITHIN) {
                    return End::Relist(format!(
                        "the changes made while the watch was down did not all arrive within {:?} (expected up to revision {}, applied {})",
                        since.elapsed(), pending.created, at.revision
                    ));
                }
                if let Err(e) = stream.request_progress().await {
                    return End::Broken(format!("watch stream closed: {e}"));
                }
                continue;
            }
        };
        let answer = match message {
            Ok(Some(answer)) => answer,
            Ok(None) => return End::Broken("watch stream ended".into()),
            Err(e) => return End::Broken(conn.error(Failure::Etcd(e)).to_string()),
        };
        heard = Instant::now();
        tracing::trace!(
            member = answer.header().map_or(0, |h| h.member_id()),
            revision = answer.header().map_or(0, |h| h.revision()),
            created = answer.created(),
            events = answer.events().len(),
            first = answer
                .events()
                .first()
                .and_then(|e| e.kv())
                .map_or(0, |kv| kv.mod_revision()),
            last = answer
                .events()
                .last()
                .and_then(|e| e.kv())
                .map_or(0, |kv| kv.mod_revision()),
            applied = at.revision,
            "etcd: watch answer"
        );
        if answer.compact_revision() > 0 {
            metrics::counter!(leasehold::metrics::WATCH_COMPACTIONS, "service" => feed.service().to_string())
                .increment(1);
            return End::Relist(format!(
                "revision {} is compacted (oldest kept: {})",
                at.revision + 1,
                answer.compact_revision()
            ));
        }
        if answer.canceled() {
            return End::Broken(format!("watch canceled: {}", answer.cancel_reason()));
        }
        let header = answer.header().map(|h| (h.cluster_id(), h.revision()));
        if answer.created() {
            created_at = header.map(|(_, revision)| revision);
            if let Some((cluster_id, revision)) = header {
                if cluster_id != at.cluster_id {
                    return End::Relist(format!(
                        "cluster id changed from {:x} to {cluster_id:x}",
                        at.cluster_id
                    ));
                }
                if revision < at.revision {
                    return End::Relist(format!(
                        "store revision went back from {} to {revision}",
                        at.revision
                    ));
                }
            }
            // On etcd 3.4 a compacted start revision is reported after `created`: the
            // set is current only once something else (a progress answer) arrives.
            if let Err(e) = stream.request_progress().await {
                return End::Broken(format!("watch stream closed: {e}"));
            }
            continue;
        }
        if resumed {
            match same_history(conn, prefix, at).await {
                Ok(true) => resumed = false,
                Ok(false) => {
                    return End::Relist(format!(
                        "the store does not hold {} keys at revision {}: its history was replaced",
                        at.keys, at.revision
                    ))
                }
                Err(e) => return End::Broken(e.to_string()),
            }
            if let Some(created) = created_at.filter(|&created| created > at.revision) {
                match backlog_at(conn, prefix, at, created).await {
                    Ok(pending) => backlog = Some((pending, Instant::now())),
                    Err(e) => return End::Broken(e.to_string()),
                }
            }
        }
        retries.reset();
        apply(feed, prefix, at, &answer);
        if backlog.is_some_and(|(pending, _)| !pending.is_applied(at)) {
            continue;
        }
        backlog = None;
        feed.mark_live();
    }
}

/// The backlog of a watch resumed after `at` and created at revision `created`, read in
/// two ranges at that revision: the prefix's key count, and its newest put since `at`.
async fn backlog_at(conn: &Connection, prefix: &str, at: &Position, created: i64) -> Result<Backlog> {
    let count = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_revision(created);
    let newest = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_revision(created)
        .with_min_mod_revision(at.revision + 1)
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(1);
    let (count, newest) =
        tokio::try_join!(conn.range(prefix, Some(count)), conn.range(prefix, Some(newest)))?;
    Ok(Backlog {
        created,
        newest_put: newest.kvs().first().map_or(0, |kv| kv.mod_revision()),
        keys: count.count(),
    })
}

/// Whether the store still has the history we applied: as many keys under the prefix
/// at the last applied revision as we counted. A compacted or future revision is a no.
async fn same_history(conn: &Connection, prefix: &str, at: &Position) -> Result<bool> {
    let options = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_revision(at.revision);
    match conn.range(prefix, Some(options)).await {
        Ok(answer) => Ok(answer.count() == at.keys),
        Err(e) => {
            let reason = e.to_string();
            if reason.contains("compacted") || reason.contains("future revision") {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Applies one response's events as one snapshot. Events at or below the applied
/// revision (replayed after a resume) are skipped, so each change is seen exactly once.
/// A response without events (progress) changes nothing.
fn apply(feed: &mut DiscoveryFeed, prefix: &str, at: &mut Position, answer: &WatchResponse) {
    let mut reached = at.revision;
    for event in answer.events() {
        let Some(kv) = event.kv() else { continue };
        if kv.mod_revision() <= at.revision {
            continue;
        }
        reached = reached.max(kv.mod_revision());
        match event.event_type() {
            EventType::Put if kv.version() == 1 => at.keys += 1,
            EventType::Put => {}
            EventType::Delete => at.keys -= 1,
        }
        let Some(key) = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(prefix))
        else {
            continue;
        };
        match event.event_type() {
            EventType::Put => feed.put(key, kv.value()),
            EventType::Delete => feed.delete(key),
        }
    }
    if reached > at.revision {
        at.revision = reached;
        feed.set_revision(reached as u64);
    }
    feed.publish();
}
