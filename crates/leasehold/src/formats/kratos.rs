//! Kratos' `contrib/registry/etcd`.

use serde::{Deserialize, Serialize};

use super::etcd_naming::string_map;
use super::{codec_error, foreign_id, labels_from_metadata, labels_to_metadata};
use crate::codec::{same_service, Codec, CodecError, KeyContext};
use crate::{Address, Instance, Metadata, ServiceName};

const NAME: &str = "kratos";

/// Kratos' default namespace, the root of its keys.
pub(super) const DEFAULT_ROOT: &str = "/microservices";

/// Kratos' layout: key `/microservices/{name}/{id}`, value the JSON of Kratos'
/// `registry.ServiceInstance`: `{"id","name","version","metadata","endpoints"}`.
///
/// Kratos' etcd `Registry` puts `{namespace}/{name}/{id}` (namespace `/microservices`
/// by default; see [`Format::default_root`](super::Format::default_root)) under a lease,
/// and its discovery reads every value under `{namespace}/{name}`. Endpoints are URIs,
/// one per protocol: `grpc://10.0.0.5:9000`, `http://10.0.0.5:8000?isSecure=false`.
///
/// - **Key:** the instance id.
/// - **Value:** `id`, `name`, `version` (`""` when unset, as Go writes an empty
///   string), `metadata` (`null` when empty, as Go writes a nil map; the weight, unless
///   1, under [`WEIGHT_KEY`](super::WEIGHT_KEY), which Kratos' own weighted balancers
///   read, and the zone under [`ZONE_KEY`](super::ZONE_KEY)), and `endpoints`: the
///   address itself when it is a URI, else `{scheme}://{address}` with the codec's
///   scheme (`grpc` unless [`KratosCodec::scheme`] says otherwise).
/// - **On decode:** the first endpoint with the codec's scheme is the address, as its
///   `host:port` (the scheme and any `?isSecure=…` are dropped, so `grpc://h:9000`
///   decodes as `h:9000`); an instance with no such endpoint is refused. The id is the
///   JSON `id` through [`foreign_id`](super::foreign_id) (the key's last segment when
///   `id` is empty). A `name` other than the service is refused.
///
/// ```
/// use leasehold::codec::{Codec, KeyContext};
/// use leasehold::formats::KratosCodec;
/// use leasehold::{Instance, ServiceName};
/// let codec = KratosCodec::new();
/// let hello = ServiceName::new("helloworld")?;
/// assert_eq!(codec.service_prefix("/microservices", &hello), "/microservices/helloworld/");
/// let instance = Instance::builder("helloworld", "10.0.0.5:9000")
///     .id("e1").version("v1.0.0").metadata("region", "eu").build()?;
/// assert_eq!(codec.instance_key(&instance, &KeyContext::default()), "e1");
/// let value = br#"{"id":"e1","name":"helloworld","version":"v1.0.0","metadata":{"region":"eu"},"endpoints":["grpc://10.0.0.5:9000"]}"#;
/// assert_eq!(codec.encode(&instance)?, value);
/// assert_eq!(codec.decode(&hello, "e1", value)?, instance);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct KratosCodec {
    scheme: String,
}

impl Default for KratosCodec {
    fn default() -> Self {
        KratosCodec {
            scheme: "grpc".into(),
        }
    }
}

impl KratosCodec {
    /// A codec that chooses `grpc://` endpoints.
    pub fn new() -> Self {
        KratosCodec::default()
    }

    /// Chooses endpoints with this scheme on decode (`grpc`, `http`), and gives plain
    /// `host:port` addresses this scheme on encode.
    #[must_use]
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = scheme.into();
        self
    }
}

#[derive(Serialize)]
struct ServiceInstanceOut<'a> {
    id: &'a str,
    name: &'a str,
    version: &'a str,
    metadata: Option<&'a Metadata>,
    endpoints: [&'a str; 1],
}

#[derive(Deserialize)]
struct ServiceInstanceIn {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    metadata: serde_json::Value,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

impl Codec for KratosCodec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn instance_key(&self, instance: &Instance, _context: &KeyContext) -> String {
        instance.id().to_string()
    }

    fn encode(&self, instance: &Instance) -> Result<Vec<u8>, CodecError> {
        let metadata = labels_to_metadata(instance, false);
        let endpoint = match instance.addr().scheme() {
            Some(_) => instance.addr().as_str().to_owned(),
            None => format!("{}://{}", self.scheme, instance.addr()),
        };
        let value = ServiceInstanceOut {
            id: instance.id().as_str(),
            name: instance.service().as_str(),
            version: instance.version().unwrap_or(""),
            metadata: (!metadata.is_empty()).then_some(&metadata),
            endpoints: [&endpoint],
        };
        serde_json::to_vec(&value)
            .map_err(|e| codec_error(NAME, "encode", instance.id().as_str(), e.to_string()))
    }

    fn decode(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<Instance, CodecError> {
        let fail = |reason: String| codec_error(NAME, "decode", key, reason);
        let value: ServiceInstanceIn = serde_json::from_slice(value).map_err(|e| fail(e.to_string()))?;
        same_service(&value.name, service).map_err(fail)?;
        let endpoints = value.endpoints.unwrap_or_default();
        let addr = endpoints
            .iter()
            .filter_map(|e| Address::new(e.as_str()).ok())
            .find(|a| a.scheme().is_some_and(|s| s.eq_ignore_ascii_case(&self.scheme)))
            .ok_or_else(|| fail(format!("no {}:// endpoint among {endpoints:?}", self.scheme)))?;
        let addr = Address::new(addr.authority()).map_err(|e| fail(e.to_string()))?;
        let id = if value.id.is_empty() { key } else { &value.id };
        let mut builder =
            labels_from_metadata(service, foreign_id(id), addr, string_map(value.metadata), false);
        if let Some(version) = value.version.filter(|v| !v.is_empty()) {
            builder = builder.version(version);
        }
        builder.build().map_err(|e| fail(e.to_string()))
    }
}
