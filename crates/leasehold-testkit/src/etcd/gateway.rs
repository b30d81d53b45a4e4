//! Calls to one etcd member: `/health` and the v3 JSON gateway on the client port.
//!
//! The gateway encodes keys and values as base64 and 64-bit integers as JSON strings
//! (proto3 JSON mapping); [`int`] reads both forms so a future etcd that sends numbers
//! still parses.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{http, Error, Result};

/// `Ok` when `GET /health` says `"health":"true"`: the member has a leader and a quorum
/// read went through. The error is what the probe saw, for a not-ready message.
pub(crate) async fn health(addr: &str) -> Result<(), String> {
    let response = http::get(addr, "/health").await.map_err(|e| e.to_string())?;
    if response.status == 200 && response.body.contains(r#""health":"true""#) {
        Ok(())
    } else {
        Err(format!(
            "/health: HTTP {} {}",
            response.status,
            response.body.trim()
        ))
    }
}

/// `Ok` when `GET /version` answers: the member serves HTTP, with or without a leader.
pub(crate) async fn version(addr: &str) -> Result<(), String> {
    let response = http::get(addr, "/version").await.map_err(|e| e.to_string())?;
    if response.status == 200 {
        Ok(())
    } else {
        Err(format!(
            "/version: HTTP {} {}",
            response.status,
            response.body.trim()
        ))
    }
}

/// The member's `etcd_debugging_mvcc_watcher_total` gauge from `GET /metrics`: how many
/// watchers it serves.
pub(crate) async fn watchers(addr: &str) -> Result<u64> {
    const GAUGE: &str = "etcd_debugging_mvcc_watcher_total ";
    let response = http::get(addr, "/metrics").await?;
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix(GAUGE))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .ok_or_else(|| {
            Error::request(
                "GET /metrics",
                addr,
                format!("no {} gauge (HTTP {})", GAUGE.trim(), response.status),
            )
        })
}

/// Writes `key`, returning the revision of the write.
pub(crate) async fn put(addr: &str, key: &[u8], value: &[u8]) -> Result<i64> {
    let body = json!({ "key": BASE64.encode(key), "value": BASE64.encode(value) });
    let answer = http::post_json(addr, "/v3/kv/put", &body).await?;
    header_revision(addr, "/v3/kv/put", &answer)
}

/// Reads `key`: its value if it exists.
pub(crate) async fn get(addr: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let path = "/v3/kv/range";
    let answer = http::post_json(addr, path, &json!({ "key": BASE64.encode(key) })).await?;
    let Some(kv) = answer.get("kvs").and_then(|kvs| kvs.get(0)) else {
        return Ok(None);
    };
    // An empty value is left out of the JSON entirely.
    let encoded = kv.get("value").and_then(Value::as_str).unwrap_or("");
    BASE64
        .decode(encoded)
        .map(Some)
        .map_err(|e| malformed(addr, path, format!("value {encoded:?}: {e}")))
}

/// The current revision of the store, from the header of a count-only range.
pub(crate) async fn revision(addr: &str) -> Result<i64> {
    let path = "/v3/kv/range";
    let body = json!({ "key": BASE64.encode(b"\0"), "count_only": true });
    let answer = http::post_json(addr, path, &body).await?;
    header_revision(addr, path, &answer)
}

/// Compacts the history up to `revision`, waiting until it is physically applied.
pub(crate) async fn compact(addr: &str, revision: i64) -> Result<()> {
    let body = json!({ "revision": revision.to_string(), "physical": true });
    http::post_json(addr, "/v3/kv/compaction", &body).await?;
    Ok(())
}

/// A member's own id and the id of the leader it follows (0 when it knows none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Status {
    pub(crate) member_id: u64,
    pub(crate) leader: u64,
}

pub(crate) async fn status(addr: &str) -> Result<Status> {
    let path = "/v3/maintenance/status";
    let answer = http::post_json(addr, path, &json!({})).await?;
    let member_id = answer
        .pointer("/header/member_id")
        .and_then(int::<u64>)
        .ok_or_else(|| malformed(addr, path, "no header.member_id"))?;
    let leader = answer.get("leader").and_then(int::<u64>).unwrap_or(0);
    Ok(Status { member_id, leader })
}

/// Makes the member on `peer_url` a new, empty member: removes the member that holds that
/// peer URL and adds a new one in its place, which must then start with
/// `--initial-cluster-state existing`. Idempotent, so a caller can retry it: a member on
/// `peer_url` that was added but never started (it has no name yet) is the replacement.
pub(crate) async fn replace_member(addr: &str, peer_url: &str) -> Result<()> {
    let list = http::post_json(addr, "/v3/cluster/member/list", &json!({})).await?;
    let holder = list
        .get("members")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|m| {
            m.get("peerURLs")
                .and_then(Value::as_array)
                .is_some_and(|urls| urls.iter().any(|u| u.as_str() == Some(peer_url)))
        });
    if let Some(holder) = holder {
        let started = holder
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !started {
            return Ok(());
        }
        let id = holder.get("ID").and_then(int::<u64>).ok_or_else(|| {
            malformed(
                addr,
                "/v3/cluster/member/list",
                format!("member without ID: {holder}"),
            )
        })?;
        http::post_json(
            addr,
            "/v3/cluster/member/remove",
            &json!({ "ID": id.to_string() }),
        )
        .await?;
    }
    http::post_json(addr, "/v3/cluster/member/add", &json!({ "peerURLs": [peer_url] })).await?;
    Ok(())
}

/// Adds `user` with `password` and a role of the same name that may read and write
/// the keys from `key` up to `range_end` (exclusive).
pub(crate) async fn add_user(
    addr: &str,
    user: &str,
    password: &str,
    key: &[u8],
    range_end: &[u8],
) -> Result<()> {
    http::post_json(addr, "/v3/auth/role/add", &json!({ "name": user })).await?;
    let perm = json!({
        "permType": "READWRITE",
        "key": BASE64.encode(key),
        "range_end": BASE64.encode(range_end),
    });
    http::post_json(
        addr,
        "/v3/auth/role/grant",
        &json!({ "name": user, "perm": perm }),
    )
    .await?;
    http::post_json(
        addr,
        "/v3/auth/user/add",
        &json!({ "name": user, "password": password }),
    )
    .await?;
    http::post_json(
        addr,
        "/v3/auth/user/grant",
        &json!({ "user": user, "role": user }),
    )
    .await?;
    Ok(())
}

/// Turns authentication on, with a `root` user of `password` holding the root role.
pub(crate) async fn enable_auth(addr: &str, password: &str) -> Result<()> {
    http::post_json(
        addr,
        "/v3/auth/user/add",
        &json!({ "name": "root", "password": password }),
    )
    .await?;
    http::post_json(addr, "/v3/auth/role/add", &json!({ "name": "root" })).await?;
    http::post_json(
        addr,
        "/v3/auth/user/grant",
        &json!({ "user": "root", "role": "root" }),
    )
    .await?;
    http::post_json(addr, "/v3/auth/enable", &json!({})).await?;
    Ok(())
}

fn header_revision(addr: &str, path: &str, answer: &Value) -> Result<i64> {
    answer
        .pointer("/header/revision")
        .and_then(int::<i64>)
        .ok_or_else(|| malformed(addr, path, format!("no header.revision in {answer}")))
}

/// A proto3-JSON integer: a string of digits, or a number.
fn int<T: std::str::FromStr + TryFrom<u64>>(value: &Value) -> Option<T> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| T::try_from(n).ok()),
        _ => None,
    }
}

fn malformed(addr: &str, path: &str, detail: impl std::fmt::Display) -> Error {
    Error::request(
        format!("POST {path}"),
        addr,
        format!("unexpected answer: {detail}"),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::int;

    #[test]
    fn reads_integers_as_strings_or_numbers() {
        assert_eq!(int::<i64>(&json!("42")), Some(42));
        assert_eq!(int::<i64>(&json!(42)), Some(42));
        assert_eq!(int::<u64>(&json!("18446744073709551615")), Some(u64::MAX));
        assert_eq!(int::<i64>(&json!(null)), None);
    }
}
