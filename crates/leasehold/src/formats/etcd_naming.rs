//! etcd's `naming/endpoints`, as read by grpc-go's `etcd:///` resolver.

use serde::{Deserialize, Serialize};

use super::prefix_allowing_empty_root;
use super::{codec_error, foreign_id, host_port, labels_from_metadata, labels_to_metadata};
use crate::codec::{Codec, CodecError, KeyContext};
use crate::{Address, Instance, Metadata, ServiceName};

const NAME: &str = "etcd-naming";

/// etcd naming's layout: key `{target}/{id}`, value
/// `{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}`.
///
/// etcd's `endpoints.Manager` stores each endpoint of `target` at a key under
/// `{target}/` as the JSON of its internal `Update` (the fields of grpc-go's old
/// `naming.Update`: `Op`, 0 for add; `Addr`; `Metadata`, any JSON), and grpc-go's
/// `etcd:///{target}` resolver watches that prefix. The target is the service, below
/// the root; targets usually sit at the top of etcd without a leading `/`, which the
/// empty root gives (`my-service/…`), while a target `foo/bar/my-service` is root
/// `foo/bar` and service `my-service`.
///
/// - **Key:** the instance id. etcd's examples use the address; give the instance its
///   address as id to match. On decode the key's last segment is the id, through
///   [`foreign_id`](super::foreign_id).
/// - **Value:** `Addr` is the address's `host:port` (a URI address is written as its
///   authority, since grpc-go dials `Addr` as it is); `Metadata` is `null` or a JSON
///   object of strings holding the metadata and, under [`WEIGHT_KEY`](super::WEIGHT_KEY),
///   [`ZONE_KEY`](super::ZONE_KEY) and [`VERSION_KEY`](super::VERSION_KEY), the weight
///   (unless 1), zone and version.
/// - **On decode:** field names match in any case, as Go's decoder does; a missing `Op`
///   is an add; `Op` 1 (a delete marker) and any other value are refused. `Metadata`
///   object values that are not strings become their JSON text; a `Metadata` that is
///   not an object is dropped.
/// - **Dropped:** a URI address's scheme and path.
///
/// ```
/// use leasehold::codec::{Codec, KeyContext};
/// use leasehold::formats::EtcdNamingCodec;
/// use leasehold::{Instance, ServiceName};
/// let codec = EtcdNamingCodec;
/// let service = ServiceName::new("my-service")?;
/// assert_eq!(codec.service_prefix("", &service), "my-service/");
/// let instance = Instance::builder("my-service", "10.0.0.5:50051").id("10.0.0.5:50051").build()?;
/// assert_eq!(codec.instance_key(&instance, &KeyContext::default()), "10.0.0.5:50051");
/// let value = br#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}"#;
/// assert_eq!(codec.encode(&instance)?, value);
/// assert_eq!(codec.decode(&service, "10.0.0.5:50051", value)?, instance);
///
/// let zoned = Instance::builder("my-service", "10.0.0.6:50051").id("b").zone("eu-1").weight(3).build()?;
/// let value = br#"{"Op":0,"Addr":"10.0.0.6:50051","Metadata":{"weight":"3","zone":"eu-1"}}"#;
/// assert_eq!(codec.encode(&zoned)?, value);
/// assert_eq!(codec.decode(&service, "b", value)?, zoned);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdNamingCodec;

#[derive(Serialize)]
struct UpdateOut<'a> {
    #[serde(rename = "Op")]
    op: u8,
    #[serde(rename = "Addr")]
    addr: &'a str,
    #[serde(rename = "Metadata")]
    metadata: Option<&'a Metadata>,
}

#[derive(Deserialize)]
struct UpdateIn {
    #[serde(rename = "Op", alias = "op", alias = "OP", default)]
    op: u64,
    #[serde(rename = "Addr", alias = "addr", alias = "ADDR", default)]
    addr: String,
    #[serde(rename = "Metadata", alias = "metadata", alias = "METADATA", default)]
    metadata: serde_json::Value,
}

impl Codec for EtcdNamingCodec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn service_prefix(&self, root: &str, service: &ServiceName) -> String {
        prefix_allowing_empty_root(root, service)
    }

    fn instance_key(&self, instance: &Instance, _context: &KeyContext) -> String {
        instance.id().to_string()
    }

    fn encode(&self, instance: &Instance) -> Result<Vec<u8>, CodecError> {
        let addr = host_port(NAME, instance)?;
        let metadata = labels_to_metadata(instance, true);
        let update = UpdateOut {
            op: 0,
            addr: addr.as_str(),
            metadata: (!metadata.is_empty()).then_some(&metadata),
        };
        serde_json::to_vec(&update)
            .map_err(|e| codec_error(NAME, "encode", instance.id().as_str(), e.to_string()))
    }

    fn decode(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<Instance, CodecError> {
        let fail = |reason: String| codec_error(NAME, "decode", key, reason);
        let update: UpdateIn = serde_json::from_slice(value).map_err(|e| fail(e.to_string()))?;
        match update.op {
            0 => {}
            1 => return Err(fail("Op is 1, which marks a deleted endpoint".into())),
            op => return Err(fail(format!("Op is {op}; only 0 (add) names an endpoint"))),
        }
        let addr = Address::new(update.addr).map_err(|e| fail(e.to_string()))?;
        let metadata = string_map(update.metadata);
        labels_from_metadata(service, foreign_id(key), addr, metadata, true)
            .build()
            .map_err(|e| fail(e.to_string()))
    }
}

/// A JSON object's entries as strings (non-strings as their JSON text); anything else is
/// no metadata. Null values are left out.
pub(super) fn string_map(value: serde_json::Value) -> Metadata {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some((k, s)),
                other => Some((k, other.to_string())),
            })
            .collect(),
        _ => Metadata::new(),
    }
}
