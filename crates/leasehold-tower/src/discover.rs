//! A tower `Discover` stream, for callers who want tower's own balancers.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{self, BoxStream, Stream, StreamExt};
use leasehold::{Change as Discovered, Discovery, Instance};
use tower::discover::Change;

use crate::endpoint::MakeEndpoint;
use crate::BoxError;

/// The discovered instances as a stream of tower [`Change`]s keyed by the instance's
/// registry [key](Instance::key), which makes it a tower `Discover` (for
/// `tower::balance::p2c::Balance` and the like).
///
/// Keyed by registry key, not id: when a ZooKeeper client restarts with a stable id its
/// new node appears before its old one goes, and removing the old key leaves the new
/// one in tower's set.
///
/// Starts with an `Insert` for every instance present, then follows
/// [`Discovery::changes`]: an added instance is inserted, a removed one removed, one whose
/// address changed inserted again (tower replaces the service under the same key), and a
/// [`Resync`](leasehold::Change::Resync) after falling behind is diffed against the
/// instances already announced. Ends when the discovery's watch ends. A client that the
/// factory cannot make is skipped and logged, as the instance cannot be called anyway.
pub struct DiscoverStream<S> {
    inner: BoxStream<'static, Result<Change<Arc<str>, S>, BoxError>>,
}

impl<S> fmt::Debug for DiscoverStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoverStream").finish_non_exhaustive()
    }
}

impl<S> Stream for DiscoverStream<S> {
    type Item = Result<Change<Arc<str>, S>, BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State<M> {
    make: M,
    known: HashMap<Arc<str>, Arc<Instance>>,
}

impl<M: MakeEndpoint> State<M> {
    async fn insert(&mut self, instance: Arc<Instance>, out: &mut Vec<Change<Arc<str>, M::Endpoint>>) {
        let key = instance.shared_key().clone();
        if self
            .known
            .get(&key)
            .is_some_and(|known| known.addr() == instance.addr())
        {
            self.known.insert(key, instance);
            return;
        }
        match self.make.make_endpoint(&instance).await {
            Ok(endpoint) => {
                out.push(Change::Insert(key.clone(), endpoint));
                self.known.insert(key, instance);
            }
            Err(error) => {
                tracing::warn!(service = %instance.service(), id = %instance.id(), key = instance.key(), addr = %instance.addr(), %error, "cannot make a client; leaving the instance out");
                self.remove(instance.key(), out);
            }
        }
    }

    fn remove(&mut self, key: &str, out: &mut Vec<Change<Arc<str>, M::Endpoint>>) {
        if let Some((key, _)) = self.known.remove_entry(key) {
            out.push(Change::Remove(key));
        }
    }

    async fn resync(
        &mut self,
        instances: &leasehold::Instances,
        out: &mut Vec<Change<Arc<str>, M::Endpoint>>,
    ) {
        let now: HashMap<&str, &Arc<Instance>> = instances.iter().map(|i| (i.key(), i)).collect();
        let gone: Vec<Arc<str>> = self
            .known
            .keys()
            .filter(|key| !now.contains_key(&***key))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key, out);
        }
        for instance in instances.iter() {
            self.insert(instance.clone(), out).await;
        }
    }
}

/// The instances of `discovery` as a tower `Discover`, with clients made by `make`.
pub fn discover<M: MakeEndpoint>(discovery: &Discovery, make: M) -> DiscoverStream<M::Endpoint> {
    let changes = discovery.changes();
    let snapshot = discovery.snapshot();
    let state = State {
        make,
        known: HashMap::new(),
    };
    let updates = stream::unfold(
        (state, changes, Some(snapshot)),
        |(mut state, mut changes, first)| async move {
            let mut out = Vec::new();
            if let Some(first) = first {
                state.resync(first.members(), &mut out).await;
                return Some((stream::iter(out), (state, changes, None)));
            }
            loop {
                match changes.next().await? {
                    Discovered::Added(instance) => state.insert(instance, &mut out).await,
                    Discovered::Updated { new, .. } => state.insert(new, &mut out).await,
                    Discovered::Removed(instance) => state.remove(instance.key(), &mut out),
                    Discovered::Resync(snapshot) => state.resync(snapshot.members(), &mut out).await,
                    _ => {}
                }
                if !out.is_empty() {
                    return Some((stream::iter(out), (state, changes, None)));
                }
            }
        },
    )
    .flatten();
    DiscoverStream {
        inner: updates.map(Ok).boxed(),
    }
}
