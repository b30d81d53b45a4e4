//! `leasehold watch`: the current set of a service, then every change.

use std::collections::BTreeMap;
use std::sync::Arc;

use leasehold::{Change, Instance, InstanceId, Registry, ServiceName, Snapshot, WatchOptions};
use serde_json::json;

use crate::error::{CliError, Context};
use crate::show;
use crate::signal::Shutdown;

/// Prints the set of `service`, then each change, until SIGINT or SIGTERM.
pub async fn run(registry: Arc<dyn Registry>, service: ServiceName, json: bool) -> Result<(), CliError> {
    let mut shutdown = Shutdown::install().context("installing signal handlers")?;
    let discovery = registry
        .watch(&service, WatchOptions::default())
        .await
        .context(format_args!("watching {service}"))?;
    let mut changes = discovery.changes();
    let mut view = View::new(&discovery.snapshot());
    print_snapshot(&view, &service, json);
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(change) => {
                    for event in view.apply(change) {
                        print_event(&event, json);
                    }
                }
                None => {
                    return Err(CliError::failed(format_args!("watching {service}"), "the watch ended"));
                }
            },
            _ = shutdown.recv() => break,
        }
    }
    drop(discovery);
    registry.shutdown().await;
    Ok(())
}

/// What the printed output has told its reader so far, so each event printed is a true
/// change: a change already reflected in the first snapshot is not repeated, and a
/// [`Change::Resync`] becomes the difference from what was printed.
#[derive(Debug)]
struct View {
    instances: BTreeMap<InstanceId, Arc<Instance>>,
    live: bool,
}

/// A change as printed.
#[derive(Debug, PartialEq)]
enum Event {
    Added(Arc<Instance>),
    Removed(Arc<Instance>),
    Updated { old: Arc<Instance>, new: Arc<Instance> },
    Stale,
    Live,
}

impl View {
    fn new(snapshot: &Snapshot) -> Self {
        View {
            instances: snapshot
                .instances()
                .iter()
                .map(|i| (i.id().clone(), i.clone()))
                .collect(),
            live: snapshot.connection().is_live(),
        }
    }

    fn apply(&mut self, change: Change) -> Vec<Event> {
        let mut events = Vec::new();
        match change {
            Change::Added(instance) | Change::Updated { new: instance, .. } => {
                events.extend(self.upsert(instance));
            }
            Change::Removed(instance) => events.extend(self.remove(instance.id())),
            Change::Stale { .. } => events.extend(self.set_live(false)),
            Change::Live => events.extend(self.set_live(true)),
            Change::Resync(snapshot) => {
                let current = snapshot.instances();
                let gone: Vec<InstanceId> = self
                    .instances
                    .keys()
                    .filter(|id| snapshot.get(id).is_none())
                    .cloned()
                    .collect();
                for id in gone {
                    events.extend(self.remove(&id));
                }
                for instance in current.iter() {
                    events.extend(self.upsert(instance.clone()));
                }
                events.extend(self.set_live(snapshot.connection().is_live()));
            }
        }
        events
    }

    fn upsert(&mut self, instance: Arc<Instance>) -> Option<Event> {
        match self.instances.insert(instance.id().clone(), instance.clone()) {
            None => Some(Event::Added(instance)),
            Some(old) if old != instance => Some(Event::Updated { old, new: instance }),
            Some(_) => None,
        }
    }

    fn remove(&mut self, id: &InstanceId) -> Option<Event> {
        self.instances.remove(id).map(Event::Removed)
    }

    fn set_live(&mut self, live: bool) -> Option<Event> {
        if self.live == live {
            return None;
        }
        self.live = live;
        Some(if live { Event::Live } else { Event::Stale })
    }
}

/// Now, as every printed line shows it: RFC 3339 in UTC, to the millisecond.
fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn print_snapshot(view: &View, service: &ServiceName, json: bool) {
    let at = now();
    if json {
        let instances: Vec<_> = view.instances.values().map(|i| show::json(i)).collect();
        let line = json!({"event": "snapshot", "at": at, "service": service.as_str(), "live": view.live, "instances": instances});
        println!("{line}");
        return;
    }
    let count = view.instances.len();
    let plural = if count == 1 { "" } else { "s" };
    let connection = if view.live {
        "live"
    } else {
        "stale: registry unreachable"
    };
    println!("{at} {service}: {count} instance{plural} ({connection})");
    for instance in view.instances.values() {
        println!("{at}   {}", show::describe(instance));
    }
}

fn print_event(event: &Event, json: bool) {
    let at = now();
    if json {
        let mut line = match event {
            Event::Added(i) => json!({"event": "added", "instance": show::json(i)}),
            Event::Removed(i) => json!({"event": "removed", "instance": show::json(i)}),
            Event::Updated { old, new } => {
                json!({"event": "updated", "instance": show::json(new), "old": show::json(old)})
            }
            Event::Stale => json!({"event": "stale"}),
            Event::Live => json!({"event": "live"}),
        };
        line["at"] = at.into();
        println!("{line}");
        return;
    }
    match event {
        Event::Added(i) => println!("{at} + {}", show::describe(i)),
        Event::Removed(i) => println!("{at} - {}", show::describe(i)),
        Event::Updated { old, new } => {
            println!("{at} ~ {}  (was {})", show::describe(new), show::describe(old))
        }
        Event::Stale => println!("{at} ! stale: registry unreachable, keeping the last known set"),
        Event::Live => println!("{at} ! live: registry reachable again"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use leasehold::memory::MemoryRegistry;
    use leasehold::{InstanceUpdate, RegisterOptions};

    use super::*;

    fn instance(id: &str, weight: u32) -> Arc<Instance> {
        Arc::new(
            Instance::builder("echo", "127.0.0.1:7001")
                .id(id)
                .weight(weight)
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn changes_already_shown_are_not_repeated() {
        let mut view = View {
            instances: BTreeMap::new(),
            live: true,
        };
        let a = instance("a", 1);
        assert_eq!(view.apply(Change::Added(a.clone())), [Event::Added(a.clone())]);
        assert_eq!(view.apply(Change::Added(a.clone())), []);
        assert_eq!(
            view.apply(Change::Removed(a.clone())),
            [Event::Removed(a.clone())]
        );
        assert_eq!(view.apply(Change::Removed(a)), []);
        assert_eq!(view.apply(Change::Live), []);
    }

    #[tokio::test]
    async fn a_resync_prints_the_difference() {
        let registry = MemoryRegistry::new();
        let service = ServiceName::new("echo").unwrap();
        let discovery = registry.watch(&service, WatchOptions::default()).await.unwrap();
        let (a, b, c) = (instance("a", 1), instance("b", 1), instance("c", 1));
        let mut view = View {
            instances: [(a.id().clone(), a.clone()), (b.id().clone(), b.clone())].into(),
            live: false,
        };
        let keep = registry
            .register((*b).clone(), RegisterOptions::default())
            .await
            .unwrap();
        let _add = registry
            .register((*c).clone(), RegisterOptions::default())
            .await
            .unwrap();
        keep.update(InstanceUpdate::new().weight(5)).await.unwrap();
        let snapshot = discovery
            .wait_for(Duration::from_secs(10), |s| {
                s.len() == 2 && s.instances()[0].weight() == 5
            })
            .await
            .expect("the watch sees both registrations");
        let events = view.apply(Change::Resync(snapshot));
        assert_eq!(
            events,
            [
                Event::Removed(a),
                Event::Updated {
                    old: b.clone(),
                    new: instance("b", 5)
                },
                Event::Added(c),
                Event::Live,
            ]
        );
    }
}
