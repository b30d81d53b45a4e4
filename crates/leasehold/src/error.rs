//! The error every registry operation returns.

use std::time::Duration;

use crate::InvalidInput;

/// A boxed error from a backend's client library, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a registry operation.
///
/// Messages name what failed and where (the registry address, the field, the key), so
/// they can be shown to an operator as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An instance, name or option broke a rule of the model.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),
    /// The registry URL could not be understood.
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (with any password masked).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry could not be reached.
    #[error("cannot reach registry at {endpoints}: {source}")]
    Unreachable {
        /// The address or addresses tried.
        endpoints: String,
        /// Why the connection failed.
        source: BoxError,
    },
    /// The registry did not answer in time.
    #[error("registry at {endpoints} did not answer within {timeout:?}")]
    Timeout {
        /// The address or addresses tried.
        endpoints: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The registry refused our credentials or permissions.
    #[error("registry at {endpoints} refused access: {reason}")]
    PermissionDenied {
        /// The address or addresses tried.
        endpoints: String,
        /// The registry's reason.
        reason: String,
    },
    /// The registration was deregistered; the handle can no longer be used.
    #[error("registration {service}/{id} is deregistered")]
    Deregistered {
        /// The service of the registration.
        service: String,
        /// The instance id of the registration.
        id: String,
    },
    /// A value could not be encoded for, or decoded from, the registry.
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    /// The registry answered with an error not covered above.
    #[error("registry at {endpoints}: {source}")]
    Backend {
        /// The address or addresses of the registry.
        endpoints: String,
        /// The backend's error.
        source: BoxError,
    },
    /// Another live client holds this service and instance id: registering it here
    /// would silently take the registration from its owner.
    #[error("instance {service}/{id} is already registered by another client (at {key}); choose another id or deregister that one first")]
    Conflict {
        /// The service of the registration.
        service: String,
        /// The instance id both claim.
        id: String,
        /// The registry key the other client holds.
        key: String,
    },
    /// The backend or the chosen format cannot do what was asked (for example an
    /// operator drain in a format that has no place for its marker).
    #[error("{what} is not supported {by}")]
    Unsupported {
        /// What was asked.
        what: String,
        /// Which backend or format refused it, as `by the go-kit format`.
        by: String,
    },
    /// The registry client has shut down.
    #[error("registry client is shut down")]
    Closed,
}

impl Error {
    /// A backend error for a registry at `endpoints`.
    pub fn backend(endpoints: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            endpoints: endpoints.into(),
            source: source.into(),
        }
    }

    /// The same error again, for answering several callers that one failure affects.
    /// Sources become their messages.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::InvalidInput(e) => Error::InvalidInput(e.clone()),
            Error::InvalidUrl { url, reason } => Error::invalid_url(url.clone(), reason.clone()),
            Error::Unreachable { endpoints, source } => Error::Unreachable {
                endpoints: endpoints.clone(),
                source: source.to_string().into(),
            },
            Error::Timeout { endpoints, timeout } => Error::Timeout {
                endpoints: endpoints.clone(),
                timeout: *timeout,
            },
            Error::PermissionDenied { endpoints, reason } => Error::PermissionDenied {
                endpoints: endpoints.clone(),
                reason: reason.clone(),
            },
            Error::Deregistered { service, id } => Error::Deregistered {
                service: service.clone(),
                id: id.clone(),
            },
            Error::Codec(e) => Error::Codec(e.clone()),
            Error::Backend { endpoints, source } => Error::backend(endpoints.clone(), source.to_string()),
            Error::Conflict { service, id, key } => Error::Conflict {
                service: service.clone(),
                id: id.clone(),
                key: key.clone(),
            },
            Error::Unsupported { what, by } => Error::Unsupported {
                what: what.clone(),
                by: by.clone(),
            },
            Error::Closed => Error::Closed,
        }
    }

    /// The registry could not be reached or did not answer in time: retrying later (or
    /// against another member) may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }

    /// Another live client holds the same service and instance id.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// The input (an instance, a name, an option, a URL) broke a rule; retrying the same
    /// input cannot succeed.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::InvalidInput(_) | Error::InvalidUrl { .. } | Error::Codec(_)
        )
    }

    /// The registry refused our credentials or permissions.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::PermissionDenied { .. })
    }

    /// The backend or format cannot do what was asked.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }

    /// The client or registration is gone: shut down or deregistered.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed | Error::Deregistered { .. })
    }

    /// An invalid registry URL.
    pub fn invalid_url(url: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidUrl {
            url: url.into(),
            reason: reason.into(),
        }
    }
}

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
