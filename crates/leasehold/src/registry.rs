//! The backend contract.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::{
    Discovery, Instance, InstanceId, RegisterOptions, Registration, Result, ServiceName, WatchOptions,
};

/// A registry backend: etcd, ZooKeeper, or the in-process [`MemoryRegistry`](crate::memory::MemoryRegistry).
///
/// Object-safe, so a program can pick its backend at run time and hold an
/// `Arc<dyn Registry>`. Every backend passes the same conformance suite
/// (`leasehold::conformance`, feature `conformance`).
#[async_trait]
pub trait Registry: Send + Sync + Debug {
    /// Registers `instance` under a lease of `options.ttl` kept alive in the background,
    /// and returns its handle. Invalid options are refused here; an unreachable registry
    /// is an error naming its address, after a bounded connect timeout.
    ///
    /// One rule for duplicate ids on every backend: a service/id held by a live
    /// registration of another client is refused with
    /// [`Error::Conflict`](crate::Error::Conflict) naming the key it holds, and nothing is
    /// written. If another client takes the id later (it registered while ours was
    /// paused or cut off), our handle shows
    /// [`Conflict`](crate::RegistrationState::Conflict), leaves the other alone, and
    /// writes itself back once the other is gone. This client registering an id it
    /// holds already is refused as invalid input; one whose last handle was just dropped
    /// is registered as soon as its removal is done.
    ///
    /// Cancel-safe: dropped before it returns (a timeout, `select!`), it leaves no key
    /// behind and the id free.
    async fn register(&self, instance: Instance, options: RegisterOptions) -> Result<Registration>;

    /// Starts following `service`: lists it once, then watches for changes. The returned
    /// cache already holds the listing.
    async fn watch(&self, service: &ServiceName, options: WatchOptions) -> Result<Discovery>;

    /// The instances of `service` now, sorted by id; values that do not decode are
    /// skipped.
    async fn list(&self, service: &ServiceName) -> Result<Vec<Instance>>;

    /// The services that have at least one key in the registry, sorted.
    async fn list_services(&self) -> Result<Vec<ServiceName>>;

    /// Removes the instance `id` of `service`, whoever registered it (an operator's
    /// removal). Returns whether there was one. Its owner, if alive, sees its key
    /// deleted by someone else and writes it again, unless it is deregistered too.
    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<bool>;

    /// Drains the instance `id` of `service` for every client, as an operator's
    /// maintenance switch: a marker is written that takes it out of every watcher's set,
    /// and its owner (state [`Drained`](crate::RegistrationState::Drained)) stops
    /// writing it until [`undrain`](Registry::undrain). The marker outlives the
    /// instance's lease. Returns whether an instance `id` is registered now.
    ///
    /// Formats with no place for a marker (every format but native) refuse with
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    async fn drain(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        let _ = (service, id);
        Err(crate::Error::Unsupported {
            what: "operator drain".into(),
            by: "by this backend".into(),
        })
    }

    /// Removes the drain marker of `id`; its owner writes it again. Returns whether
    /// there was a marker.
    async fn undrain(&self, service: &ServiceName, id: &InstanceId) -> Result<bool> {
        let _ = (service, id);
        Err(crate::Error::Unsupported {
            what: "operator drain".into(),
            by: "by this backend".into(),
        })
    }

    /// Deregisters every registration made through this client and releases its
    /// leases. Handles still held afterwards show `Deregistered`.
    async fn shutdown(&self);
}
