//! Kratos' `contrib/registry/etcd`.

use serde::{Deserialize, Serialize};

use super::etcd_naming::string_map;
use super::{codec_error, foreign_id, labels_from_metadata, labels_to_metadata, FormatError};
use crate::codec::{same_service, Codec, CodecError, KeyContext};
use crate::{Address, Instance, Metadata, ServiceName};

const NAME: &str = "kratos";

/// Kratos' default namespace, the root of its keys.
pub(super) const DEFAULT_ROOT: &str = "/microservices";

/// The endpoint schemes Kratos' servers write: its gRPC server writes `grpc://` (`grpcs://`
/// with TLS), its HTTP server `http://` (`https://` with TLS).
pub const KRATOS_SCHEMES: [&str; 4] = ["grpc", "grpcs", "http", "https"];

/// Kratos' layout: key `/microservices/{name}/{id}`, value the JSON of Kratos'
/// `registry.ServiceInstance`: `{"id","name","version","metadata","endpoints"}`.
///
/// Kratos' etcd `Registry` puts `{namespace}/{name}/{id}` (namespace `/microservices`
/// by default; see [`Format::default_root`](super::Format::default_root)) under a lease,
/// and its discovery reads every value under `{namespace}/{name}`. Endpoints are URIs,
/// one per server of the instance: `grpc://10.0.0.5:9000`, `http://10.0.0.5:8000`
/// (`grpcs`/`https` with TLS; Kratos before 2.2 marked TLS as `?isSecure=true`).
///
/// A codec follows one scheme, as a Kratos client does (its gRPC discovery picks the
/// `grpc` or `grpcs` endpoint): `grpc` by default, any of [`KRATOS_SCHEMES`] with
/// [`KratosCodec::with_scheme`] or `?format=kratos&scheme=http` in a registry URL.
///
/// - **Key:** the instance id.
/// - **Value:** `id`, `name`, `version` (`""` when unset, as Go writes an empty
///   string), `metadata` (`null` when empty, as Go writes a nil map; the weight, unless
///   1, under [`WEIGHT_KEY`](super::WEIGHT_KEY), which Kratos' own weighted balancers
///   read, and the zone under [`ZONE_KEY`](super::ZONE_KEY)), and `endpoints`:
///   `{scheme}://{address}` for a `host:port` address, the address itself when it is a
///   URI of the codec's scheme. A URI of another scheme is refused (it could not be read
///   back): register it through a codec of its scheme.
/// - **On decode:** the first endpoint of the codec's scheme is the address, as its
///   `host:port` (`grpc://h:9000` and `grpc://h:9000?isSecure=false` decode as `h:9000`;
///   a legacy `grpc://h:9000?isSecure=true` counts as `grpcs`, and likewise for `http`).
///   An instance with no endpoint of the scheme is refused with the schemes it has, so
///   discovery skips and counts it (see [`Discovery::skipped`](crate::Discovery::skipped))
///   instead of listing an address clients could not use. The id is the JSON `id`
///   through [`foreign_id`](super::foreign_id) (the key's last segment when `id` is
///   empty). A `name` other than the service is refused.
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
///
/// let https = KratosCodec::with_scheme("https")?;
/// let value = br#"{"id":"e1","name":"helloworld","version":"","metadata":null,"endpoints":["grpc://10.0.0.5:9000","https://10.0.0.5:8443"]}"#;
/// assert_eq!(https.decode(&hello, "e1", value)?.addr().as_str(), "10.0.0.5:8443");
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
    /// A codec that follows `grpc://` endpoints.
    pub fn new() -> Self {
        KratosCodec::default()
    }

    /// A codec that follows endpoints of `scheme`, one of [`KRATOS_SCHEMES`] (in any
    /// case); any other scheme is refused with the list.
    pub fn with_scheme(scheme: &str) -> Result<Self, FormatError> {
        let known = KRATOS_SCHEMES
            .iter()
            .find(|known| known.eq_ignore_ascii_case(scheme))
            .ok_or_else(|| FormatError::UnknownOption {
                format: NAME,
                option: "scheme",
                value: scheme.to_owned(),
                known: KRATOS_SCHEMES.join(", "),
            })?;
        Ok(KratosCodec {
            scheme: (*known).to_owned(),
        })
    }

    /// The scheme of the endpoints this codec reads and writes.
    pub fn endpoint_scheme(&self) -> &str {
        &self.scheme
    }

    /// The scheme `endpoint` counts as: its own, or for a legacy Kratos endpoint marked
    /// `?isSecure=true`, the secure variant (`grpc` → `grpcs`, `http` → `https`).
    fn effective_scheme(endpoint: &Address) -> Option<String> {
        let scheme = endpoint.scheme()?.to_ascii_lowercase();
        let query = endpoint.as_str().split_once('?').map_or("", |(_, q)| q);
        let secure = query
            .split('&')
            .any(|pair| pair.eq_ignore_ascii_case("isSecure=true"));
        Some(match (secure, scheme.as_str()) {
            (true, "grpc" | "http") => format!("{scheme}s"),
            _ => scheme,
        })
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
        let endpoint = match Self::effective_scheme(instance.addr()) {
            Some(scheme) if scheme == self.scheme => instance.addr().as_str().to_owned(),
            Some(scheme) => {
                return Err(codec_error(
                    NAME,
                    "encode",
                    instance.id().as_str(),
                    format!(
                        "address {} is a {scheme}:// endpoint, but this registry reads and writes {}:// \
                         endpoints; choose its scheme with ?scheme={scheme}",
                        instance.addr(),
                        self.scheme
                    ),
                ))
            }
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
            .find(|a| Self::effective_scheme(a).as_deref() == Some(self.scheme.as_str()))
            .ok_or_else(|| {
                fail(format!(
                    "no {}:// endpoint among {endpoints:?}; choose another scheme with ?scheme= (one of {})",
                    self.scheme,
                    KRATOS_SCHEMES.join(", ")
                ))
            })?;
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
