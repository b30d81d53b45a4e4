//! One registration as its group keeps it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Claim;
use crate::{Backoff, Instance, RegistrationState, Retries};

/// One registration: what to write, whether it is out of the registry, where it was
/// written, and its own backoff, so a registration that keeps failing never delays the
/// others.
pub(super) struct Entry {
    pub(super) instance: Instance,
    /// Paused by its owner.
    pub(super) paused: bool,
    /// An operator's drain marker names it: out of the registry until undrained.
    pub(super) drained: bool,
    /// Needs writing: new, updated, resumed, or lost with its lease or key.
    pub(super) dirty: bool,
    /// Its latest change ([`Write::change`](super::Write::change), new at creation,
    /// update and resume): a write that lands clears `dirty` only if it carried the
    /// latest, since a later one may be in flight behind it.
    pub(super) change: u64,
    /// The key it was last written at, and the lease generation it was written under.
    pub(super) key: Option<(u64, String)>,
    /// The key of another client's registration of the same id that refused our last
    /// write; its delete is the signal to write again.
    pub(super) conflict: Option<String>,
    /// When its next write is due, while it is dirty.
    pub(super) due: Option<Instant>,
    /// Its backoff since it was last written.
    retries: Retries,
    backoff: Backoff,
    pub(super) state: watch::Sender<RegistrationState>,
    pub(super) shown: watch::Sender<Instance>,
    /// Held until the registration is gone from the registry; then the id is free.
    pub(super) _claim: Claim,
}

impl Entry {
    pub(super) fn new(instance: Instance, claim: Claim, backoff: Backoff) -> Self {
        let (state, _) = watch::channel(RegistrationState::Recovering);
        let (shown, _) = watch::channel(instance.clone());
        crate::metrics::registration_moved(instance.service(), None, Some(RegistrationState::Recovering));
        Entry {
            instance,
            paused: false,
            drained: false,
            dirty: true,
            change: super::next_change(),
            key: None,
            conflict: None,
            due: None,
            retries: Retries::default(),
            backoff,
            state,
            shown,
            _claim: claim,
        }
    }

    /// Whether it is kept out of the registry (paused by its owner or drained by an
    /// operator), so neither written nor recovered.
    pub(super) fn is_out(&self) -> bool {
        self.paused || self.drained
    }

    /// Whether it should be written when the group next writes.
    pub(super) fn wants_write(&self) -> bool {
        self.dirty && !self.is_out()
    }

    /// The state of a registration kept out of the registry.
    pub(super) fn out_state(&self) -> RegistrationState {
        if self.drained {
            RegistrationState::Drained
        } else {
            RegistrationState::Paused
        }
    }

    pub(super) fn set_state(&self, state: RegistrationState) {
        let old = *self.state.borrow();
        if self
            .state
            .send_if_modified(|s| std::mem::replace(s, state) != state)
        {
            crate::metrics::registration_moved(self.instance.service(), Some(old), Some(state));
        }
    }

    /// Written with its latest change: its backoff starts over.
    pub(super) fn written(&mut self, generation: u64, key: String) {
        self.key = Some((generation, key));
        self.dirty = false;
        self.conflict = None;
        self.due = None;
        self.retries.reset();
        self.set_state(RegistrationState::Registered);
    }

    /// Written with an earlier change: that is where it is in the registry, and what
    /// it still owes (and its state) is the later change's.
    pub(super) fn landed(&mut self, generation: u64, key: String) {
        self.key = Some((generation, key));
    }

    /// The key to overwrite under lease `generation`, and the key of an earlier lease
    /// that may still show (see [`Write`](super::Write)).
    pub(super) fn keys_under(&self, generation: u64) -> (Option<&str>, Option<&str>) {
        match &self.key {
            Some((g, key)) if *g == generation => (Some(key.as_str()), None),
            Some((_, key)) => (None, Some(key.as_str())),
            None => (None, None),
        }
    }

    /// Its next backoff delay.
    pub(super) fn next_delay(&mut self) -> Duration {
        self.retries.next(self.backoff)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        crate::metrics::registration_moved(self.instance.service(), Some(*self.state.borrow()), None);
    }
}
