//! Free loopback ports.
//!
//! A port is found by binding `127.0.0.1:0` and releasing it, so another process can take
//! it before the server binds it. Callers treat "address already in use" at startup as a
//! lost race and start again on fresh ports (see [`is_port_race`]).

use std::net::TcpListener;

use crate::{Error, Result};

/// `count` distinct free ports. All listeners are held until every port is picked, so the
/// same port is never handed out twice in one call.
pub(crate) fn reserve(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(Error::Ports)?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(Error::Ports)
}

/// Whether a startup failure was a port taken between [`reserve`] and the server's bind.
pub(crate) fn is_port_race(error: &Error) -> bool {
    match error {
        Error::ExitedEarly { tail, .. } | Error::NotReady { tail, .. } => {
            let tail = tail.to_ascii_lowercase();
            tail.contains("address already in use") || tail.contains("bindexception")
        }
        _ => false,
    }
}

/// How many times a cluster start is tried on fresh ports after a lost port race.
pub(crate) const START_ATTEMPTS: usize = 4;
