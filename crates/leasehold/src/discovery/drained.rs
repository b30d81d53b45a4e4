//! Operators' drain markers in the discovery cache: a drained instance is out of the
//! snapshot's set (balancers never pick it) and listed apart, for dashboards and the
//! xDS server to show.

use std::collections::HashMap;
use std::sync::Arc;

use super::DiscoveryFeed;
use crate::{Instance, InstanceId};

/// The drained ids of a service and the instances kept out of the set because of them.
#[derive(Default)]
pub(super) struct DrainMarkers {
    /// Each drained id, with the instance its marker holds (the value it had when it
    /// was drained; `None` for an empty marker).
    pub(super) markers: imbl::OrdMap<InstanceId, Option<Arc<Instance>>>,
    /// Instances whose id is drained, by registry key, to return when undrained.
    held_out: HashMap<Arc<str>, Arc<Instance>>,
}

impl DrainMarkers {
    pub(super) fn is_drained(&self, id: &InstanceId) -> bool {
        self.markers.contains_key(id)
    }

    /// Keeps `instance` (at `key`) out of the set.
    pub(super) fn hold_out(&mut self, key: Arc<str>, instance: Arc<Instance>) {
        self.held_out.insert(key, instance);
    }

    /// Forgets the held-out instance at `key`; whether there was one.
    pub(super) fn release(&mut self, key: &str) -> bool {
        self.held_out.remove(key).is_some()
    }

    /// Sorts a full listing's instances into the set and the held out, given the
    /// listing's markers.
    pub(super) fn reset(
        &mut self,
        markers: imbl::OrdMap<InstanceId, Option<Arc<Instance>>>,
        listed: HashMap<Arc<str>, Arc<Instance>>,
    ) -> HashMap<Arc<str>, Arc<Instance>> {
        self.markers = markers;
        self.held_out.clear();
        let mut set = listed;
        let drained: Vec<Arc<str>> = set
            .iter()
            .filter(|(_, i)| self.markers.contains_key(i.id()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in drained {
            let instance = set.remove(&key).expect("listed above");
            self.held_out.insert(key, instance);
        }
        set
    }
}

impl DiscoveryFeed {
    /// The instance a marker's value holds, if it decodes (an empty marker holds none).
    pub(super) fn marker_value(&self, key: &str, value: &[u8]) -> Option<Arc<Instance>> {
        if value.is_empty() {
            return None;
        }
        self.codec.decode(&self.service, key, value).ok().map(Arc::new)
    }

    /// A drain marker for `id` was written: its instances leave the set.
    pub(super) fn put_marker(&mut self, id: InstanceId, key: &str, value: &[u8]) {
        let shown = self.marker_value(key, value);
        let fresh = self.drain.markers.insert(id.clone(), shown).is_none();
        if fresh {
            let leaving: Vec<Arc<Instance>> =
                self.set.instances().filter(|i| i.id() == &id).cloned().collect();
            for instance in leaving {
                self.set.remove(instance.key());
                self.drain.hold_out(instance.shared_key().clone(), instance);
            }
        }
        self.markers_changed = true;
    }

    /// The drain marker for `id` was deleted: its held-out instances come back.
    pub(super) fn delete_marker(&mut self, id: &InstanceId) {
        if self.drain.markers.remove(id).is_none() {
            return;
        }
        let back: Vec<Arc<str>> = self
            .drain
            .held_out
            .iter()
            .filter(|(_, i)| i.id() == id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in back {
            let instance = self.drain.held_out.remove(&key).expect("listed above");
            self.set.insert(instance);
        }
        self.markers_changed = true;
    }

    /// The drained instances to show: each drained id with its marker's instance, or
    /// the instance still registered under it.
    pub(super) fn drained_view(&self) -> imbl::OrdMap<InstanceId, Option<Arc<Instance>>> {
        let mut view = self.drain.markers.clone();
        for instance in self.drain.held_out.values() {
            if let Some(shown @ None) = view.get_mut(instance.id()) {
                *shown = Some(instance.clone());
            }
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, Codec, NativeCodec, ServiceName, WatchOptions};

    fn value(id: &str) -> Vec<u8> {
        let instance = Instance::builder("echo", "127.0.0.1:1").id(id).build().unwrap();
        NativeCodec.encode(&instance).unwrap()
    }

    fn id(value: &str) -> InstanceId {
        InstanceId::new(value).unwrap()
    }

    #[tokio::test]
    async fn markers_keep_instances_out_of_the_set_until_removed() {
        let (mut feed, discovery) = DiscoveryFeed::new(
            ServiceName::new("echo").unwrap(),
            Arc::new(NativeCodec),
            WatchOptions::default(),
        );
        feed.reset(
            [("a", value("a")), ("b", value("b")), ("~drained-a", Vec::new())],
            1,
        );
        let snapshot = discovery.snapshot();
        let ids: Vec<&str> = snapshot.instances().iter().map(|i| i.id().as_str()).collect();
        assert_eq!(ids, ["b"], "a drained instance is out of a listing's set");
        let drained: Vec<(String, Option<String>)> = snapshot
            .drained()
            .map(|(id, i)| (id.to_string(), i.map(|i| i.id().to_string())))
            .collect();
        assert_eq!(
            drained,
            [("a".to_owned(), Some("a".to_owned()))],
            "shown with the held-out instance"
        );

        let mut changes = discovery.changes();
        feed.put("~drained-b", &value("b"));
        feed.publish();
        assert!(matches!(changes.next().await, Some(Change::Removed(i)) if i.id().as_str() == "b"));
        assert!(discovery.snapshot().is_empty());
        feed.put("b", &value("b"));
        feed.publish();
        assert!(
            discovery.snapshot().is_empty(),
            "a drained instance written again stays out"
        );

        feed.delete("~drained-a");
        feed.publish();
        assert!(matches!(changes.next().await, Some(Change::Added(i)) if i.id().as_str() == "a"));
        let snapshot = discovery.snapshot();
        assert!(!snapshot.is_drained(&id("a")) && snapshot.is_drained(&id("b")));
        feed.delete("b");
        feed.delete("~drained-b");
        feed.publish();
        let snapshot = discovery.snapshot();
        let ids: Vec<&str> = snapshot.instances().iter().map(|i| i.id().as_str()).collect();
        assert_eq!(ids, ["a"], "an instance deleted while drained does not come back");
    }
}
