//! The spans a user's tracing subscriber sees: `register` with the batch, `recover` for
//! each recovery attempt, each with its structured fields.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::memory::MemoryRegistry;
use leasehold::{Instance, RegisterOptions, RegistrationState, Registry};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Records each new span as `name field=value ...`.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl<S: Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut fields = Fields(attrs.metadata().name().to_owned());
        attrs.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn register_and_recover_are_spans_with_fields() {
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let registry = MemoryRegistry::new();
    let instance = Instance::builder("echo", "127.0.0.1:7001")
        .id("e1")
        .build()
        .unwrap();
    let registration = registry
        .register(instance, RegisterOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    registry.store().wipe();
    assert!(
        registration
            .wait_for(RegistrationState::Recovering, Duration::from_secs(20))
            .await
    );
    assert!(
        registration
            .wait_for(RegistrationState::Registered, Duration::from_secs(20))
            .await
    );
    let seen = spans.0.lock().unwrap().clone();
    assert!(
        seen.iter().any(|s| s == "register registrations=1 ttl=1s"),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|s| s.starts_with("recover ttl=1s generation=")),
        "{seen:#?}"
    );
}
