//! What the dashboard shows: every service of the registry followed by a discovery
//! cache, rendered as one JSON state that is published again whenever it changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leasehold::{Discovery, Instance, InstanceId, Registry, ServiceName, WatchOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

/// How often the published state is compared with the caches. Reading a snapshot is a
/// lock-free load, so this costs nothing measurable and bounds an update's delay.
const REFRESH: Duration = Duration::from_millis(200);
/// How often the registry is asked for its services, to follow new ones.
const LIST_SERVICES: Duration = Duration::from_millis(600);

type Key = (ServiceName, InstanceId);

/// The dashboard's view of the registry.
pub struct Board {
    registry: Arc<dyn Registry>,
    allow_writes: bool,
    watches: Mutex<BTreeMap<ServiceName, Discovery>>,
    /// When each instance was first seen by this dashboard (Unix ms): its age.
    first_seen: Mutex<HashMap<Key, u64>>,
    /// Why the registry could not be listed, while it cannot.
    error: Mutex<Option<String>>,
    state: watch::Sender<Arc<String>>,
}

impl Board {
    /// A board following `registry`, refreshed by a background task for as long as the
    /// board lives.
    pub fn start(registry: Arc<dyn Registry>, allow_writes: bool) -> Arc<Board> {
        let board = Arc::new(Board {
            registry,
            allow_writes,
            watches: Mutex::new(BTreeMap::new()),
            first_seen: Mutex::new(HashMap::new()),
            error: Mutex::new(None),
            state: watch::Sender::new(Arc::new(String::new())),
        });
        board.publish();
        tokio::spawn(follow(Arc::downgrade(&board)));
        board
    }

    /// Whether drain and undrain are allowed.
    pub fn allow_writes(&self) -> bool {
        self.allow_writes
    }

    /// The current state as JSON.
    pub fn state(&self) -> Arc<String> {
        self.state.borrow().clone()
    }

    /// A receiver of every new state.
    pub fn states(&self) -> watch::Receiver<Arc<String>> {
        self.state.subscribe()
    }

    /// Drains or undrains `service/id` in the registry; returns what the registry said
    /// (whether the instance, or the marker, was there). The page follows from the
    /// service's discovery cache, which lists every drained instance, whoever drained it.
    pub async fn set_drained(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        drain: bool,
    ) -> leasehold::Result<bool> {
        if drain {
            self.registry.drain(service, id).await
        } else {
            self.registry.undrain(service, id).await
        }
    }

    /// Follows services that are new in the registry.
    async fn list_services(&self) {
        let services = match self.registry.list_services().await {
            Ok(services) => {
                *self.error.lock().unwrap() = None;
                services
            }
            Err(e) => {
                *self.error.lock().unwrap() = Some(e.to_string());
                return;
            }
        };
        // A service gone from the registry leaves the page once its last instance has.
        self.watches.lock().unwrap().retain(|service, discovery| {
            let snapshot = discovery.snapshot();
            services.contains(service) || !snapshot.is_empty() || snapshot.drained().next().is_some()
        });
        for service in services {
            if self.watches.lock().unwrap().contains_key(&service) {
                continue;
            }
            match self.registry.watch(&service, WatchOptions::default()).await {
                Ok(discovery) => {
                    self.watches.lock().unwrap().insert(service, discovery);
                }
                Err(e) => tracing::warn!(%service, error = %e, "dashboard: cannot watch the service"),
            }
        }
    }

    /// Renders the state and publishes it if it changed.
    fn publish(&self) {
        let rendered = Arc::new(self.render().to_string());
        self.state.send_if_modified(|state| {
            let changed = **state != *rendered;
            if changed {
                *state = rendered;
            }
            changed
        });
    }

    fn render(&self) -> Value {
        let now = unix_ms(SystemTime::now());
        let watches = self.watches.lock().unwrap();
        let mut first_seen = self.first_seen.lock().unwrap();
        let mut services = Vec::new();
        let mut present = HashMap::new();
        for (service, discovery) in watches.iter() {
            let snapshot = discovery.snapshot();
            let connection = snapshot.connection();
            let stale_since = connection
                .stale_for()
                .map(|d| now.saturating_sub(d.as_millis() as u64));
            let mut rows = Vec::new();
            for instance in snapshot.instances().iter() {
                let key = (service.clone(), instance.id().clone());
                let seen = *first_seen.entry(key.clone()).or_insert(now);
                present.insert(key, seen);
                let state = if connection.is_live() { "live" } else { "stale" };
                rows.push(row(instance, seen, state));
            }
            // Drained instances are out of the set; the snapshot lists them apart, with
            // the instance their marker recorded or the one still registered.
            for (id, instance) in snapshot.drained() {
                let key = (service.clone(), id.clone());
                let seen = *first_seen.entry(key.clone()).or_insert(now);
                present.insert(key, seen);
                rows.push(match instance {
                    Some(instance) => row(instance, seen, "drained"),
                    None => unknown_row(id, seen, "drained"),
                });
            }
            rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            services.push(json!({
                "name": service.as_str(),
                "count": snapshot.len(),
                "live": connection.is_live(),
                "stale_since_ms": stale_since,
                "instances": rows,
            }));
        }
        // Forget the ages of instances that left, so one that comes back is new again.
        first_seen.retain(|key, _| present.contains_key(key));
        json!({
            "allow_writes": self.allow_writes,
            "error": *self.error.lock().unwrap(),
            "services": services,
        })
    }
}

fn row(instance: &Instance, first_seen_ms: u64, state: &str) -> Value {
    json!({
        "id": instance.id().as_str(),
        "addr": instance.addr().as_str(),
        "zone": instance.zone(),
        "weight": instance.weight(),
        "version": instance.version(),
        "metadata": instance.metadata(),
        "first_seen_ms": first_seen_ms,
        "state": state,
    })
}

/// A row for an id whose instance is not known (a drain marker recorded none and
/// nothing is registered under it).
fn unknown_row(id: &InstanceId, first_seen_ms: u64, state: &str) -> Value {
    json!({
        "id": id.as_str(),
        "addr": null,
        "zone": null,
        "weight": null,
        "version": null,
        "metadata": {},
        "first_seen_ms": first_seen_ms,
        "state": state,
    })
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Keeps the board current until it is dropped.
async fn follow(board: std::sync::Weak<Board>) {
    let mut refresh = tokio::time::interval(REFRESH);
    let mut listed = tokio::time::Instant::now() - LIST_SERVICES;
    loop {
        refresh.tick().await;
        let Some(board) = board.upgrade() else {
            return;
        };
        if listed.elapsed() >= LIST_SERVICES {
            listed = tokio::time::Instant::now();
            board.list_services().await;
        }
        board.publish();
    }
}
