//! What a balanced call can fail with.

use std::time::Duration;

use leasehold::{Address, InstanceId, ServiceName};

/// A boxed error from an endpoint or a user-supplied factory.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a call through [`Balanced`](crate::Balanced) failed. Every message names the
/// service, and the instance where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Discovery lists no instance of the service: the call fails at once rather than
    /// wait for one.
    #[error("no instance of service {service} is registered")]
    NoInstances {
        /// The service.
        service: ServiceName,
    },
    /// The last attempt's instance failed and no retry was allowed (the request was not
    /// marked safe to retry, or attempts or the retry budget ran out).
    #[error("service {service}: instance {id} at {addr} failed (attempt {attempts}): {source}")]
    Endpoint {
        /// The service.
        service: ServiceName,
        /// The instance that failed last.
        id: InstanceId,
        /// Its address.
        addr: Address,
        /// How many attempts were made.
        attempts: u32,
        /// The endpoint's error.
        source: BoxError,
    },
    /// The endpoint factory could not make a client for an instance.
    #[error("service {service}: cannot make a client for instance {id} at {addr}: {source}")]
    MakeEndpoint {
        /// The service.
        service: ServiceName,
        /// The instance.
        id: InstanceId,
        /// Its address.
        addr: Address,
        /// The factory's error.
        source: BoxError,
    },
    /// The call's deadline passed before an answer.
    #[error("service {service}: no answer within the deadline of {deadline:?}")]
    DeadlineExceeded {
        /// The service.
        service: ServiceName,
        /// The deadline.
        deadline: Duration,
    },
    /// A request marked safe to retry has a body that could not be read to buffer it.
    #[error("service {service}: reading the request body to buffer it for retries: {source}")]
    RequestBody {
        /// The service.
        service: ServiceName,
        /// The body's error.
        source: BoxError,
    },
}

impl Error {
    /// The service the call was for.
    pub fn service(&self) -> &ServiceName {
        match self {
            Error::NoInstances { service }
            | Error::Endpoint { service, .. }
            | Error::MakeEndpoint { service, .. }
            | Error::DeadlineExceeded { service, .. }
            | Error::RequestBody { service, .. } => service,
        }
    }

    /// Whether the service could not be reached: no instance registered, none that
    /// could be connected to, or the transport broke. Another try later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::NoInstances { .. } | Error::Endpoint { .. } | Error::MakeEndpoint { .. }
        )
    }

    /// The gRPC code a caller sees for this error: `UNAVAILABLE` when the service could
    /// not be reached, `DEADLINE_EXCEEDED`, or `INTERNAL` for an unreadable request body.
    pub fn code(&self) -> tonic::Code {
        match self {
            _ if self.is_unavailable() => tonic::Code::Unavailable,
            Error::DeadlineExceeded { .. } => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::Internal,
        }
    }
}

/// The status a tonic client returns for a failed balanced call: the [code](Error::code)
/// and the message naming the service (and instance), with the error as its source.
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let mut status = tonic::Status::new(error.code(), error.to_string());
        status.set_source(std::sync::Arc::new(error));
        status
    }
}
