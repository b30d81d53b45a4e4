//! What the binary reports when a command fails, and the exit code that goes with it.

use std::fmt::Display;

use leasehold::{BoxError, InvalidInput};

/// A failed command.
///
/// Every message is one line that names what went wrong, so it can be shown as it is.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line was wrong: a malformed URL, an unknown scheme, invalid instance
    /// fields. Exit code 2, like clap's own usage errors.
    #[error("{0}")]
    Usage(String),
    /// The command was right but failed while running (registry unreachable, I/O).
    /// Exit code 1.
    #[error("{context}: {source}")]
    Failed {
        /// What the command was doing.
        context: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed { .. } => 1,
        }
    }

    /// A run-time failure while doing `context`.
    pub fn failed(context: impl Display, source: impl Into<BoxError>) -> Self {
        CliError::Failed {
            context: context.to_string(),
            source: source.into(),
        }
    }
}

impl From<InvalidInput> for CliError {
    fn from(e: InvalidInput) -> Self {
        CliError::Usage(e.to_string())
    }
}

/// Adds what the command was doing to an error, keeping bad input a usage error.
pub trait Context<T> {
    /// Wraps the error with `context`, unless it is a usage error that names its
    /// problem already.
    fn context(self, context: impl Display) -> Result<T, CliError>;
}

impl<T> Context<T> for leasehold::Result<T> {
    fn context(self, context: impl Display) -> Result<T, CliError> {
        self.map_err(|e| match e {
            leasehold::Error::InvalidInput(_) | leasehold::Error::InvalidUrl { .. } => {
                CliError::Usage(e.to_string())
            }
            other => CliError::failed(context, other),
        })
    }
}

impl<T> Context<T> for std::io::Result<T> {
    fn context(self, context: impl Display) -> Result<T, CliError> {
        self.map_err(|e| CliError::failed(context, e))
    }
}
