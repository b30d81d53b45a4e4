//! A tower `Discover` stream, for callers who want tower's own balancers.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{self, BoxStream, Stream, StreamExt};
use leasehold::{Change as Discovered, Discovery, Instance, InstanceId};
use tower::discover::Change;

use crate::endpoint::MakeEndpoint;
use crate::BoxError;

/// The discovered instances as a stream of tower [`Change`]s keyed by instance id, which
/// makes it a tower `Discover` (for `tower::balance::p2c::Balance` and the like).
///
/// Starts with an `Insert` for every instance present, then follows
/// [`Discovery::changes`]: an added instance is inserted, a removed one removed, one whose
/// address changed inserted again (tower replaces the service under the same key), and a
/// [`Resync`](leasehold::Change::Resync) after falling behind is diffed against the
/// instances already announced. Ends when the discovery's watch ends. A client that the
/// factory cannot make is skipped and logged, as the instance cannot be called anyway.
pub struct DiscoverStream<S> {
    inner: BoxStream<'static, Result<Change<InstanceId, S>, BoxError>>,
}

impl<S> fmt::Debug for DiscoverStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoverStream").finish_non_exhaustive()
    }
}

impl<S> Stream for DiscoverStream<S> {
    type Item = Result<Change<InstanceId, S>, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State<M> {
    make: M,
    known: HashMap<InstanceId, Arc<Instance>>,
}

impl<M: MakeEndpoint> State<M> {
    fn insert(&mut self, instance: Arc<Instance>, out: &mut Vec<Change<InstanceId, M::Endpoint>>) {
        if self
            .known
            .get(instance.id())
            .is_some_and(|known| known.addr() == instance.addr())
        {
            self.known.insert(instance.id().clone(), instance);
            return;
        }
        match self.make.make_endpoint(&instance) {
            Ok(endpoint) => {
                out.push(Change::Insert(instance.id().clone(), endpoint));
                self.known.insert(instance.id().clone(), instance);
            }
            Err(error) => {
                tracing::warn!(service = %instance.service(), id = %instance.id(), addr = %instance.addr(), %error, "cannot make a client; leaving the instance out");
                self.remove(instance.id(), out);
            }
        }
    }

    fn remove(&mut self, id: &InstanceId, out: &mut Vec<Change<InstanceId, M::Endpoint>>) {
        if self.known.remove(id).is_some() {
            out.push(Change::Remove(id.clone()));
        }
    }

    fn resync(&mut self, instances: &[Arc<Instance>], out: &mut Vec<Change<InstanceId, M::Endpoint>>) {
        let gone: Vec<InstanceId> = self
            .known
            .keys()
            .filter(|id| instances.binary_search_by(|i| i.id().cmp(id)).is_err())
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id, out);
        }
        for instance in instances {
            self.insert(instance.clone(), out);
        }
    }
}

/// The instances of `discovery` as a tower `Discover`, with clients made by `make`.
pub fn discover<M: MakeEndpoint>(discovery: &Discovery, make: M) -> DiscoverStream<M::Endpoint> {
    let changes = discovery.changes();
    let mut state = State {
        make,
        known: HashMap::new(),
    };
    let mut first = Vec::new();
    state.resync(discovery.snapshot().instances(), &mut first);
    let updates = stream::unfold((state, changes), |(mut state, mut changes)| async move {
        loop {
            let mut out = Vec::new();
            match changes.next().await? {
                Discovered::Added(instance) => state.insert(instance, &mut out),
                Discovered::Updated { new, .. } => state.insert(new, &mut out),
                Discovered::Removed(instance) => state.remove(instance.id(), &mut out),
                Discovered::Resync(snapshot) => state.resync(snapshot.instances(), &mut out),
                _ => {}
            }
            if !out.is_empty() {
                return Some((stream::iter(out), (state, changes)));
            }
        }
    })
    .flatten();
    DiscoverStream {
        inner: stream::iter(first).chain(updates).map(Ok).boxed(),
    }
}
