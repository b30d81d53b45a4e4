//! Apache Curator's x-discovery on ZooKeeper.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::etcd_naming::string_map;
use super::{codec_error, foreign_id, labels_from_metadata, labels_to_metadata};
use crate::codec::{same_service, Codec, CodecError, KeyContext, NodeNaming};
use crate::{Address, Instance, Metadata, ServiceName};

const NAME: &str = "curator";

/// The Java class named in a map payload's `@class`, as Jackson writes a `LinkedHashMap`.
pub const CURATOR_PAYLOAD_CLASS: &str = "java.util.LinkedHashMap";

/// The metadata key that holds a payload that is a plain JSON string.
pub const CURATOR_PAYLOAD_KEY: &str = "payload";

/// Curator's layout: an ephemeral node `{basePath}/{name}/{id}` holding the Jackson JSON
/// of Curator's `ServiceInstance`, as `JsonInstanceSerializer` writes it.
///
/// The URL's root is Curator's `basePath`, the service its `name`, and the node is named
/// exactly the instance id ([`NodeNaming::Exact`]); Curator's own ids are UUIDs.
///
/// The value has Curator's fields in Curator's order:
/// `{"name","id","address","port","sslPort","payload","registrationTimeUTC","serviceType","uriSpec","enabled"}`:
///
/// - `address` is the host (an IPv6 host without brackets), `port` the port. An
///   `https://` address puts its port in `sslPort` instead (Curator's `{scheme}` is
///   `https` exactly when `sslPort` is set).
/// - `payload` is `null`, or when the instance has metadata, a weight other than 1, a
///   zone or a version, a map as Jackson writes a `java.util.LinkedHashMap` typed by
///   `ServiceInstance`'s `@JsonTypeInfo(use = CLASS)`:
///   `{"@class":"java.util.LinkedHashMap","k":"v",…}`, with the weight, zone and version
///   under [`WEIGHT_KEY`](super::WEIGHT_KEY), [`ZONE_KEY`](super::ZONE_KEY) and
///   [`VERSION_KEY`](super::VERSION_KEY). A Java peer reads it with
///   `JsonInstanceSerializer<>(Map.class)`.
/// - `registrationTimeUTC` is the time of encoding in milliseconds since the epoch
///   (fixed with [`CuratorCodec::registration_time_utc`]), `serviceType` is `DYNAMIC`.
/// - `uriSpec` is `null` for a `host:port` address; for a URI address it is the URI as
///   one literal part, `{"parts":[{"value":"http://h:80/x","variable":false}]}`, so
///   Curator's `buildUriSpec()` gives the address back exactly.
/// - `enabled` is `true`; it is left out in Curator's compatible serialization mode
///   ([`CuratorCodec::compatible_serialization`]), for readers older than CURATOR-275.
///
/// On decode, unknown fields are ignored. The address is the `uriSpec` built as Curator
/// builds it (`{scheme}`, `{address}`, `{port}`, `{ssl-port}`, `{name}`, `{id}`, …;
/// unknown variables are empty) when that gives a valid address, else `address:port`,
/// else `https://address:sslPort`; with neither port the instance is refused, as is one
/// with `"enabled":false`, or a `name` other than the service. A map payload gives the
/// metadata (its `@class` dropped, non-string values as JSON text), a string payload
/// the metadata entry [`CURATOR_PAYLOAD_KEY`]; other payloads are dropped, as are
/// `registrationTimeUTC` and `serviceType`.
///
/// ```
/// use leasehold::codec::{Codec, KeyContext};
/// use leasehold::formats::CuratorCodec;
/// use leasehold::{Instance, NodeNaming, ServiceName};
/// let codec = CuratorCodec::new().registration_time_utc(1325129459728);
/// let test = ServiceName::new("test")?;
/// assert_eq!(codec.node_naming(), NodeNaming::Exact);
/// let instance = Instance::builder("test", "10.20.30.40:1234")
///     .id("ca2fff8e-d756-480c-b59e-8297ff88624b").zone("eu-1").build()?;
/// let value = concat!(
///     r#"{"name":"test","id":"ca2fff8e-d756-480c-b59e-8297ff88624b","address":"10.20.30.40","#,
///     r#""port":1234,"sslPort":null,"payload":{"@class":"java.util.LinkedHashMap","zone":"eu-1"},"#,
///     r#""registrationTimeUTC":1325129459728,"serviceType":"DYNAMIC","uriSpec":null,"enabled":true}"#,
/// );
/// assert_eq!(String::from_utf8(codec.encode(&instance)?)?, value);
/// assert_eq!(codec.decode(&test, instance.id().as_str(), value.as_bytes())?, instance);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CuratorCodec {
    registration_time_utc: Option<i64>,
    compatible: bool,
}

impl CuratorCodec {
    /// A codec that writes as Curator 4 and 5 do by default.
    pub fn new() -> Self {
        CuratorCodec::default()
    }

    /// Writes this `registrationTimeUTC` (milliseconds since the epoch, a Java `long`) instead of the
    /// time of encoding, for reproducible values.
    #[must_use]
    pub fn registration_time_utc(mut self, millis: i64) -> Self {
        self.registration_time_utc = Some(millis);
        self
    }

    /// Leaves `enabled` out, as Curator's `JsonInstanceSerializer` does with
    /// `compatibleSerializationMode`, so readers older than CURATOR-275 (which fail on
    /// unknown fields) can read the value.
    #[must_use]
    pub fn compatible_serialization(mut self, compatible: bool) -> Self {
        self.compatible = compatible;
        self
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceInstanceOut<'a> {
    name: &'a str,
    id: &'a str,
    address: &'a str,
    port: Option<u16>,
    ssl_port: Option<u16>,
    payload: Option<Payload<'a>>,
    #[serde(rename = "registrationTimeUTC")]
    registration_time_utc: i64,
    service_type: &'static str,
    uri_spec: Option<UriSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
}

/// Metadata as Jackson writes a typed `LinkedHashMap`: `@class` first.
struct Payload<'a>(&'a Metadata);

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len() + 1))?;
        map.serialize_entry("@class", CURATOR_PAYLOAD_CLASS)?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Serialize, Deserialize)]
struct UriSpec {
    #[serde(default)]
    parts: Vec<UriPart>,
}

#[derive(Serialize, Deserialize)]
struct UriPart {
    #[serde(default)]
    value: String,
    #[serde(default)]
    variable: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceInstanceIn {
    #[serde(default)]
    name: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    ssl_port: Option<i64>,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default, rename = "registrationTimeUTC")]
    registration_time_utc: Option<serde_json::Number>,
    #[serde(default)]
    service_type: Option<String>,
    #[serde(default)]
    uri_spec: Option<UriSpec>,
    #[serde(default)]
    enabled: Option<bool>,
}

impl ServiceInstanceIn {
    /// The URI spec built as Curator's `UriSpec.build(instance)` builds it.
    fn build_uri_spec(&self, spec: &UriSpec) -> String {
        let number = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_default();
        let mut uri = String::new();
        for part in &spec.parts {
            if !part.variable {
                uri.push_str(&part.value);
                continue;
            }
            let value = match part.value.as_str() {
                "[" => "{".to_owned(),
                "]" => "}".to_owned(),
                "scheme" if self.ssl_port.is_some() => "https".to_owned(),
                "scheme" => "http".to_owned(),
                "name" => self.name.clone(),
                "id" => self.id.clone(),
                "address" => self.address.clone().unwrap_or_default(),
                "port" => number(self.port),
                "ssl-port" => number(self.ssl_port),
                "registration-time-utc" => self
                    .registration_time_utc
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                "service-type" => self.service_type.as_deref().unwrap_or("").to_ascii_lowercase(),
                _ => String::new(),
            };
            uri.push_str(&value);
        }
        uri
    }

    fn address(&self) -> Result<Address, String> {
        if let Some(uri) = self
            .uri_spec
            .as_ref()
            .filter(|s| !s.parts.is_empty())
            .and_then(|spec| Address::new(self.build_uri_spec(spec)).ok())
        {
            return Ok(uri);
        }
        let host = match self.address.as_deref() {
            None | Some("") => return Err("no address".into()),
            Some(host) if host.contains(':') => format!("[{host}]"),
            Some(host) => host.to_owned(),
        };
        let addr = match (self.port, self.ssl_port) {
            (Some(port), _) => format!("{host}:{port}"),
            (None, Some(port)) => format!("https://{host}:{port}"),
            (None, None) => return Err("neither port nor sslPort, and no usable uriSpec".into()),
        };
        Address::new(addr).map_err(|e| e.to_string())
    }
}

/// The host (without IPv6 brackets) and port of a validated address's authority.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()),
        None => (authority, None),
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Codec for CuratorCodec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn instance_key(&self, instance: &Instance, _context: &KeyContext) -> String {
        instance.id().to_string()
    }

    fn node_naming(&self) -> NodeNaming {
        NodeNaming::Exact
    }

    fn encode(&self, instance: &Instance) -> Result<Vec<u8>, CodecError> {
        let addr = instance.addr();
        let (host, port) = split_authority(addr.authority());
        let https = addr.scheme().is_some_and(|s| s.eq_ignore_ascii_case("https"));
        let metadata = labels_to_metadata(instance, true);
        let value = ServiceInstanceOut {
            name: instance.service().as_str(),
            id: instance.id().as_str(),
            address: host,
            port: port.filter(|_| !https),
            ssl_port: port.filter(|_| https),
            payload: (!metadata.is_empty()).then_some(Payload(&metadata)),
            registration_time_utc: self.registration_time_utc.unwrap_or_else(now_millis),
            service_type: "DYNAMIC",
            uri_spec: addr.scheme().map(|_| UriSpec {
                parts: vec![UriPart {
                    value: addr.as_str().to_owned(),
                    variable: false,
                }],
            }),
            enabled: (!self.compatible).then_some(true),
        };
        serde_json::to_vec(&value)
            .map_err(|e| codec_error(NAME, "encode", instance.id().as_str(), e.to_string()))
    }

    fn decode(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<Instance, CodecError> {
        let fail = |reason: String| codec_error(NAME, "decode", key, reason);
        let value: ServiceInstanceIn = serde_json::from_slice(value).map_err(|e| fail(e.to_string()))?;
        same_service(&value.name, service).map_err(fail)?;
        if value.enabled == Some(false) {
            return Err(fail("the instance is disabled (\"enabled\":false)".into()));
        }
        let addr = value.address().map_err(fail)?;
        let mut metadata = match &value.payload {
            serde_json::Value::String(s) => Metadata::from([(CURATOR_PAYLOAD_KEY.to_owned(), s.clone())]),
            other => string_map(other.clone()),
        };
        if value.payload.is_object() {
            metadata.remove("@class");
        }
        let id = if value.id.is_empty() { key } else { &value.id };
        labels_from_metadata(service, foreign_id(id), addr, metadata, true)
            .build()
            .map_err(|e| fail(e.to_string()))
    }
}
