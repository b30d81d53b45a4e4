//! The demo's printed timeline.

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;

/// Prints events as `elapsed  who  what`, one per line, elapsed from the demo's start.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    start: Instant,
}

impl Timeline {
    /// A timeline starting now.
    pub fn start() -> Self {
        Timeline {
            start: Instant::now(),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints what `who` did or saw.
    pub fn log(&self, who: &str, what: impl Display) {
        println!("{:>7.3}s  {who:<7} {what}", self.elapsed().as_secs_f64());
    }
}
