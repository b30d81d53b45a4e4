//! What can go wrong serving xDS.

use std::net::SocketAddr;

/// An error of [`XdsServer`](crate::XdsServer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdsError {
    /// The listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed while serving.
    #[error("the xDS server on {} failed: {source}", addr.map_or_else(|| "its listener".to_owned(), |a| a.to_string()))]
    Serve {
        /// The address it served on, if known.
        addr: Option<SocketAddr>,
        /// Why.
        source: tonic::transport::Error,
    },
}

impl XdsError {
    /// Whether the listen address was the problem (a caller may pick another).
    pub fn is_bind(&self) -> bool {
        matches!(self, XdsError::Bind { .. })
    }
}
