//! Codecs: how an [`Instance`] is laid out as a registry key and value.
//!
//! A backend stores each instance at `{service prefix}{instance key}` with the encoded
//! value, and hands every key and value it sees under a watched prefix back to the
//! codec. The native format is JSON under `{root}/{service}/{id}`.

use std::fmt::Debug;

use crate::{Instance, InstanceId, ServiceName};

/// A value or key that a codec could not encode or decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} codec cannot {action} {key:?}: {reason}")]
pub struct CodecError {
    /// The codec's format name.
    pub format: &'static str,
    /// `encode` or `decode`.
    pub action: &'static str,
    /// The key involved.
    pub key: String,
    /// What was wrong.
    pub reason: String,
}

/// Maps instances to registry keys and values and back.
///
/// Implementations are pure functions of their input, so that a value written by one
/// process decodes the same in every other. Decoding never panics: a foreign or corrupt
/// value is an `Err`, which discovery skips and counts.
pub trait Codec: Send + Sync + Debug + 'static {
    /// The format's name, as in a registry URL's `?format=`.
    fn name(&self) -> &'static str;

    /// The key prefix under which a service's instances live, ending in `/`.
    /// `root` has no trailing `/`.
    fn service_prefix(&self, root: &str, service: &ServiceName) -> String {
        format!("{root}/{service}/")
    }

    /// The key of `instance`, relative to its service prefix, when written under the
    /// lease described by `context` (go-zero names keys after the lease id).
    fn instance_key(&self, instance: &Instance, context: &KeyContext) -> String;

    /// How a registry that keeps one node per instance (ZooKeeper) names the node.
    fn node_naming(&self) -> NodeNaming {
        NodeNaming::ProtectedSequential
    }

    /// The value stored for `instance`.
    fn encode(&self, instance: &Instance) -> Result<Vec<u8>, CodecError>;

    /// The instance stored at `key` (relative to the service prefix) with `value`.
    fn decode(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<Instance, CodecError>;

    /// The key (relative to the service prefix) of the operator's drain marker for
    /// instance `id`, or `None` when the format has no place for one (the other
    /// frameworks' watchers would read a marker as a broken instance).
    ///
    /// A marker is a plain key an operator writes and deletes; while it exists the
    /// instance is out of every watcher's set and its owner does not write it back.
    fn drain_marker(&self, id: &InstanceId) -> Option<String> {
        let _ = id;
        None
    }

    /// The instance id named by a drain-marker key (relative to the service prefix), or
    /// `None` when `key` is not a drain marker of this format.
    fn parse_drain_marker(&self, key: &str) -> Option<InstanceId> {
        let _ = key;
        None
    }
}

/// The prefix of the native format's drain markers, `{root}/{service}/~drained-{id}`.
/// `~` is never part of an instance id, so a marker never collides with an instance key.
pub const NATIVE_DRAIN_PREFIX: &str = "~drained-";

/// Decodes a listing of a service's keys (relative to its prefix) and values, as a
/// backend's `list` and `deregister` need it: the instances with their keys, sorted by
/// id. Values that do not decode are skipped and logged, as discovery skips them; drain
/// markers are not instances and are left out.
pub fn decode_listing<K: AsRef<str>, V: AsRef<[u8]>>(
    codec: &dyn Codec,
    service: &ServiceName,
    listing: impl IntoIterator<Item = (K, V)>,
) -> Vec<(K, Instance)> {
    let mut decoded: Vec<(K, Instance)> = listing
        .into_iter()
        .filter(|(key, _)| codec.parse_drain_marker(key.as_ref()).is_none())
        .filter_map(|(key, value)| match codec.decode(service, key.as_ref(), value.as_ref()) {
            Ok(instance) => Some((key, instance)),
            Err(e) => {
                tracing::debug!(%service, key = key.as_ref(), error = %e, "skipping a value that does not decode");
                None
            }
        })
        .collect();
    decoded.sort_by(|(_, a), (_, b)| a.id().cmp(b.id()));
    decoded
}

/// Checks that a value's own service name is the one whose key it sits under, so a
/// value copied under the wrong service is refused rather than listed there; the error
/// is the reason, for the codec to wrap.
pub(crate) fn same_service(named: &str, service: &ServiceName) -> Result<(), String> {
    if named == service.as_str() {
        Ok(())
    } else {
        Err(format!(
            "value names service {named:?}, the key is under {:?}",
            service.as_str()
        ))
    }
}

/// What a backend knows about where a key is written, for formats whose keys depend on
/// it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyContext {
    /// The etcd lease id the key is written under, if the backend has one.
    pub lease_id: Option<i64>,
}

impl KeyContext {
    /// A context with this etcd lease id.
    pub fn lease(lease_id: i64) -> Self {
        KeyContext {
            lease_id: Some(lease_id),
        }
    }
}

/// How a node-per-instance registry (ZooKeeper) names an instance's ephemeral node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeNaming {
    /// Curator's protected ephemeral sequential node: `_c_{32 hex guid}-{instance key}`
    /// followed by the server's 10-digit sequence, so a create retried after a lost reply
    /// finds its own node by the guid. The key given to the decoder is the whole node
    /// name.
    ProtectedSequential,
    /// A plain ephemeral node named exactly the instance key (Curator's x-discovery).
    Exact,
}

/// The native format: key `{root}/{service}/{id}`, value the instance as JSON:
/// `{"service","id","addr","metadata":{},"weight","zone","version"}` (zone and version
/// omitted when unset).
///
/// ```
/// use leasehold::codec::{Codec, KeyContext, NativeCodec};
/// use leasehold::Instance;
/// let instance = Instance::builder("echo", "10.0.0.5:8080").id("a").build()?;
/// let codec = NativeCodec;
/// assert_eq!(codec.instance_key(&instance, &KeyContext::default()), "a");
/// assert_eq!(
///     codec.encode(&instance)?,
///     br#"{"service":"echo","id":"a","addr":"10.0.0.5:8080","metadata":{},"weight":1}"#
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeCodec;

impl Codec for NativeCodec {
    fn name(&self) -> &'static str {
        "native"
    }

    fn instance_key(&self, instance: &Instance, _context: &KeyContext) -> String {
        instance.id().to_string()
    }

    fn encode(&self, instance: &Instance) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(instance).map_err(|e| CodecError {
            format: "native",
            action: "encode",
            key: instance.id().to_string(),
            reason: e.to_string(),
        })
    }

    fn decode(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<Instance, CodecError> {
        let fail = |reason: String| CodecError {
            format: "native",
            action: "decode",
            key: key.to_owned(),
            reason,
        };
        let instance: Instance = serde_json::from_slice(value).map_err(|e| fail(e.to_string()))?;
        same_service(instance.service().as_str(), service).map_err(fail)?;
        Ok(instance)
    }

    fn drain_marker(&self, id: &InstanceId) -> Option<String> {
        Some(format!("{NATIVE_DRAIN_PREFIX}{id}"))
    }

    fn parse_drain_marker(&self, key: &str) -> Option<InstanceId> {
        InstanceId::new(key.strip_prefix(NATIVE_DRAIN_PREFIX)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_decode_refuses_garbage_and_foreign_services() {
        let codec = NativeCodec;
        let echo = ServiceName::new("echo").unwrap();
        let err = codec.decode(&echo, "k", b"\xff\x00garbage").unwrap_err();
        assert_eq!(err.action, "decode");
        assert_eq!(err.key, "k");
        let other = br#"{"service":"other","id":"a","addr":"h:1"}"#;
        assert!(codec
            .decode(&echo, "a", other)
            .unwrap_err()
            .reason
            .contains("other"));
        let ok = br#"{"service":"echo","id":"a","addr":"h:1"}"#;
        assert_eq!(codec.decode(&echo, "a", ok).unwrap().weight(), 1);
    }
}
