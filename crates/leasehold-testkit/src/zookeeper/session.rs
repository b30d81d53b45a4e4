//! Just enough of ZooKeeper's client protocol to own a session: open one, attach to an
//! existing one by id and password, ping it, and close it.
//!
//! This is what expiring a session on demand needs: attaching a second connection to a
//! session and closing it makes the ensemble end that session for every connection, so
//! the real client sees `Expired` exactly as after a long partition. It also lets tests
//! hold a session without a client library.
//!
//! Wire format (jute): every frame is a big-endian `i32` length followed by the payload;
//! integers are big-endian, byte buffers are an `i32` length and the bytes.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Error, Result};

/// How long connecting, or one request and its reply, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest frame accepted from the server; a session-level reply is tiny.
const MAX_FRAME: usize = 1 << 20;

const PING_XID: i32 = -2;
const OP_PING: i32 = 11;
const OP_CLOSE_SESSION: i32 = -11;
const OP_DELETE: i32 = 2;
const OP_GET_DATA: i32 = 4;
const OP_GET_CHILDREN: i32 = 8;
const OP_SYNC: i32 = 9;
/// The error code of a request about a node that does not exist.
const NO_NODE: i32 = -101;

/// A ZooKeeper session held over one raw connection.
///
/// The session lives while this connection pings it at least once per
/// [`timeout`](Self::timeout) (or until it is closed or expired); dropping the value
/// drops the connection but not the session, which then expires after its timeout.
#[derive(Debug)]
pub struct ZkSession {
    stream: TcpStream,
    addr: String,
    session_id: i64,
    password: Vec<u8>,
    timeout: Duration,
    next_xid: i32,
}

impl ZkSession {
    /// Opens a new session on `addr` (`host:port`), asking for `timeout`; the server
    /// clamps it to its own minimum and maximum.
    pub async fn open(addr: &str, timeout: Duration) -> Result<Self> {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        Self::connect(addr, 0, &[0; 16], timeout_ms).await
    }

    /// Attaches to the live session `session_id` with its `password`, as a client does
    /// when it reconnects. Fails with [`Error::SessionNotLive`] if the server says the
    /// session expired, was closed, or the password is wrong.
    pub async fn attach(addr: &str, session_id: i64, password: &[u8]) -> Result<Self> {
        Self::connect(addr, session_id, password, 30_000).await
    }

    async fn connect(addr: &str, session_id: i64, password: &[u8], timeout_ms: i32) -> Result<Self> {
        let what = format!("ZooKeeper connect (session {session_id:#x})");
        let fail = |e: std::io::Error| Error::request(&what, addr, e);
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await?;
            let mut request = Vec::with_capacity(64);
            put_i32(&mut request, 0); // protocol version
            put_i64(&mut request, 0); // last zxid seen: 0 is never "newer than the server"
            put_i32(&mut request, timeout_ms);
            put_i64(&mut request, session_id);
            put_buffer(&mut request, password);
            request.push(0); // not read-only
            write_frame(&mut stream, &request).await?;
            let reply = read_frame(&mut stream).await?;
            Ok::<_, std::io::Error>((stream, reply))
        };
        let (stream, reply) = tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| fail(timed_out()))?
            .map_err(fail)?;

        let mut reply = Reader(&reply);
        let _protocol_version = reply.i32().map_err(fail)?;
        let negotiated_ms = reply.i32().map_err(fail)?;
        let granted_id = reply.i64().map_err(fail)?;
        let granted_password = reply.buffer().map_err(fail)?;
        if negotiated_ms <= 0 {
            return Err(Error::SessionNotLive {
                session_id,
                addr: addr.to_owned(),
            });
        }
        tracing::debug!(
            addr,
            session_id = format_args!("{granted_id:#x}"),
            "ZooKeeper session attached"
        );
        Ok(ZkSession {
            stream,
            addr: addr.to_owned(),
            session_id: granted_id,
            password: granted_password,
            timeout: Duration::from_millis(negotiated_ms as u64),
            next_xid: 1,
        })
    }

    /// The session id the server assigned.
    pub fn id(&self) -> i64 {
        self.session_id
    }

    /// The session password the server assigned.
    pub fn password(&self) -> &[u8] {
        &self.password
    }

    /// The session timeout the server granted.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Pings the session, keeping it alive; fails once the server has closed the
    /// connection (e.g. because the session expired or was closed elsewhere).
    pub async fn ping(&mut self) -> Result<()> {
        self.call(PING_XID, OP_PING, "ZooKeeper ping").await
    }

    /// Closes the session: the server deletes its ephemeral nodes and every connection of
    /// the session then sees it expired.
    pub async fn close(mut self) -> Result<()> {
        let xid = self.next_xid;
        self.next_xid += 1;
        self.call(xid, OP_CLOSE_SESSION, "ZooKeeper closeSession").await
    }

    /// Sends a body-less request and waits for the reply with the same xid.
    async fn call(&mut self, xid: i32, op: i32, what: &str) -> Result<()> {
        let (err, _) = self.exchange(xid, op, &[], what).await?;
        if err == 0 {
            Ok(())
        } else {
            Err(Error::request(
                format!("{what} (session {:#x})", self.session_id),
                &self.addr,
                format!("ZooKeeper error code {err}"),
            ))
        }
    }

    /// Sends request `op` with `body` and waits for the reply with the same xid: its
    /// error code and, when that is 0, its body.
    async fn exchange(&mut self, xid: i32, op: i32, body: &[u8], what: &str) -> Result<(i32, Vec<u8>)> {
        let what = format!("{what} (session {:#x})", self.session_id);
        let addr = self.addr.clone();
        let fail = |e: std::io::Error| Error::request(&what, &addr, e);
        let stream = &mut self.stream;
        let exchange = async {
            let mut request = Vec::with_capacity(8 + body.len());
            put_i32(&mut request, xid);
            put_i32(&mut request, op);
            request.extend_from_slice(body);
            write_frame(stream, &request).await?;
            loop {
                let reply = read_frame(stream).await?;
                let mut reader = Reader(&reply);
                let reply_xid = reader.i32()?;
                let _zxid = reader.i64()?;
                let err = reader.i32()?;
                // Other xids are watch events (-1); none are set, but skip them anyway.
                if reply_xid == xid {
                    return Ok((err, reader.0.to_vec()));
                }
            }
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| fail(timed_out()))?
            .map_err(fail)
    }

    /// Sends a request about `path` (its body is the path, then `tail`), returning the
    /// reply's body, or `None` when the node does not exist.
    async fn path_request(
        &mut self,
        op: i32,
        path: &str,
        tail: &[u8],
        what: &str,
    ) -> Result<Option<Vec<u8>>> {
        let xid = self.next_xid;
        self.next_xid += 1;
        let mut body = Vec::with_capacity(4 + path.len() + tail.len());
        put_buffer(&mut body, path.as_bytes());
        body.extend_from_slice(tail);
        let what = format!("{what} {path}");
        match self.exchange(xid, op, &body, &what).await? {
            (0, reply) => Ok(Some(reply)),
            (NO_NODE, _) => Ok(None),
            (err, _) => Err(Error::request(
                format!("{what} (session {:#x})", self.session_id),
                &self.addr,
                format!("ZooKeeper error code {err}"),
            )),
        }
    }

    /// Makes this server catch up with the leader, so that the reads that follow see
    /// every write committed before the sync (ZooKeeper reads are otherwise served from
    /// the connected server's possibly lagging copy).
    pub async fn sync(&mut self, path: &str) -> Result<()> {
        self.path_request(OP_SYNC, path, &[], "ZooKeeper sync").await?;
        Ok(())
    }

    /// The names of the children of `path`, or `None` if `path` does not exist.
    pub async fn children(&mut self, path: &str) -> Result<Option<Vec<String>>> {
        let what = "ZooKeeper getChildren";
        let Some(reply) = self.path_request(OP_GET_CHILDREN, path, &[0], what).await? else {
            return Ok(None);
        };
        let fail = |e: std::io::Error| Error::request(what, &self.addr, e);
        let mut reader = Reader(&reply);
        let count = usize::try_from(reader.i32().map_err(fail)?).unwrap_or(0);
        let mut names = Vec::with_capacity(count.min(MAX_FRAME));
        for _ in 0..count {
            let name = reader.buffer().map_err(fail)?;
            names.push(String::from_utf8_lossy(&name).into_owned());
        }
        Ok(Some(names))
    }

    /// The data of node `path`, or `None` if it does not exist.
    pub async fn data(&mut self, path: &str) -> Result<Option<Vec<u8>>> {
        let what = "ZooKeeper getData";
        let Some(reply) = self.path_request(OP_GET_DATA, path, &[0], what).await? else {
            return Ok(None);
        };
        // The data, then the node's stat, which is not needed.
        let data = Reader(&reply)
            .buffer()
            .map_err(|e| Error::request(what, &self.addr, e))?;
        Ok(Some(data))
    }

    /// Deletes node `path` whatever its version, as an operator would. Returns whether
    /// it existed.
    pub async fn delete(&mut self, path: &str) -> Result<bool> {
        let any_version = (-1i32).to_be_bytes();
        let deleted = self
            .path_request(OP_DELETE, path, &any_version, "ZooKeeper delete")
            .await?;
        Ok(deleted.is_some())
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {IO_TIMEOUT:?}"),
    )
}

fn put_i32(out: &mut Vec<u8>, value: i32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_i64(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_buffer(out: &mut Vec<u8>, bytes: &[u8]) {
    put_i32(out, i32::try_from(bytes.len()).expect("buffer under 2 GiB"));
    out.extend_from_slice(bytes);
}

async fn write_frame(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    put_buffer(&mut frame, payload);
    stream.write_all(&frame).await
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_i32().await?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= MAX_FRAME)
        .ok_or_else(|| invalid(format!("frame length {len}")))?;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await?;
    Ok(payload)
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Reads jute fields from a received payload.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| invalid(format!("reply cut short, wanted {N} more bytes")))?;
        self.0 = rest;
        Ok(*head)
    }

    fn i32(&mut self) -> std::io::Result<i32> {
        self.take().map(i32::from_be_bytes)
    }

    fn i64(&mut self) -> std::io::Result<i64> {
        self.take().map(i64::from_be_bytes)
    }

    fn buffer(&mut self) -> std::io::Result<Vec<u8>> {
        let len = self.i32()?;
        // -1 encodes a null buffer.
        let len = usize::try_from(len).unwrap_or(0);
        if len > self.0.len() {
            return Err(invalid(format!("buffer of {len} bytes in a shorter reply")));
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::{put_buffer, put_i32, put_i64, Reader};

    #[test]
    fn jute_fields_round_trip() {
        let mut bytes = Vec::new();
        put_i32(&mut bytes, -11);
        put_i64(&mut bytes, 0x0102_0304_0506_0708);
        put_buffer(&mut bytes, b"pw");
        assert_eq!(&bytes[..4], &[0xff, 0xff, 0xff, 0xf5]);
        let mut reader = Reader(&bytes);
        assert_eq!(reader.i32().unwrap(), -11);
        assert_eq!(reader.i64().unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(reader.buffer().unwrap(), b"pw");
        assert!(reader.i32().is_err());
    }
}
