//! Waiting for the signals that ask a command to stop.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, installed up front so a signal that arrives early is not lost
/// (nor kills the process before it deregisters).
pub struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
}

impl Shutdown {
    /// Installs the handlers.
    pub fn install() -> std::io::Result<Self> {
        Ok(Shutdown {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
