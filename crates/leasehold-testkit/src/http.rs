//! A minimal HTTP/1.0 client for etcd's `/health` and v3 JSON gateway.
//!
//! HTTP/1.0 with `Connection: close` keeps it tiny: the server sends no chunked encoding
//! and closes the connection after the body, so the answer is everything read to EOF.
//! This is deliberately the only place the testkit speaks HTTP.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// How long one request may take, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A status code and body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// `GET path` on `addr` (`host:port`).
pub(crate) async fn get(addr: &str, path: &str) -> Result<Response> {
    request(addr, "GET", path, None).await
}

/// `POST path` with a JSON body, expecting `200 OK` and a JSON answer.
pub(crate) async fn post_json(addr: &str, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
    let what = || format!("POST {path}");
    let response = request(addr, "POST", path, Some(&body.to_string())).await?;
    if response.status != 200 {
        return Err(Error::request(
            what(),
            addr,
            format!("HTTP {}: {}", response.status, response.body.trim()),
        ));
    }
    serde_json::from_str(&response.body)
        .map_err(|e| Error::request(what(), addr, format!("{e} in {:?}", response.body)))
}

async fn request(addr: &str, method: &str, path: &str, body: Option<&str>) -> Result<Response> {
    let what = format!("{method} {path}");
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(addr, method, path, body))
        .await
        .map_err(|_| Error::request(&what, addr, format!("no answer within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| Error::request(&what, addr, e))
}

async fn exchange(addr: &str, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Response> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("answer without a blank line after the headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("answer without a status code"))?;
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{\"health\":\"true\"}").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "{\"health\":\"true\"}");
    }

    #[test]
    fn rejects_truncated_answers() {
        assert!(parse(b"HTTP/1.0 200 OK\r\n").is_err());
    }
}
