//! tonic channels over discovered instances.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use leasehold::{Discovery, Instance};
use tonic::transport::{Channel, Endpoint};

use crate::endpoint::MakeEndpoint;
use crate::router::{BalanceOptions, Balanced};
use crate::BoxError;

/// Makes a lazily connecting tonic [`Channel`] to each instance, at
/// `http://{authority}` (or `https://` for an instance registered with an `https` URI,
/// which needs one of tonic's TLS features).
///
/// Connects time out after 5 s by default, so a black-holed instance fails (and is
/// ejected) instead of stalling its requests; [`configure`](TonicEndpoints::configure)
/// changes that and anything else about the endpoint.
#[derive(Clone, Default)]
pub struct TonicEndpoints {
    configure: Option<Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>>,
}

impl fmt::Debug for TonicEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TonicEndpoints")
            .field("configured", &self.configure.is_some())
            .finish()
    }
}

impl TonicEndpoints {
    /// Channels with tonic's defaults and a 5 s connect timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adjusts every endpoint before its channel is made (timeouts, keep-alive, TLS…).
    pub fn configure(mut self, configure: impl Fn(Endpoint) -> Endpoint + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(configure));
        self
    }
}

impl MakeEndpoint for TonicEndpoints {
    type Endpoint = Channel;

    fn make_endpoint(&self, instance: &Instance) -> Result<Channel, BoxError> {
        let scheme = match instance.addr().scheme() {
            Some("https") => "https",
            _ => "http",
        };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{}", instance.addr().authority()))?
            .connect_timeout(Duration::from_secs(5));
        let endpoint = match &self.configure {
            Some(configure) => configure(endpoint),
            None => endpoint,
        };
        Ok(endpoint.connect_lazy())
    }
}

/// A [`Balanced`] service over tonic channels: what a tonic-generated client takes.
pub type BalancedChannel = Balanced<TonicEndpoints>;

/// A channel for tonic-generated clients that balances calls over `discovery`'s
/// instances: `GreeterClient::new(leasehold_tower::channel(discovery, options))`.
///
/// Must be called inside a Tokio runtime (channels spawn their connection tasks).
pub fn channel(discovery: Discovery, options: BalanceOptions) -> BalancedChannel {
    Balanced::new(discovery, TonicEndpoints::new(), options)
}
