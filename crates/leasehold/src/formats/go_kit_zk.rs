//! go-kit `sd/zk` on ZooKeeper.

use super::go_kit::decode_raw_address;
use crate::codec::{Codec, CodecError, KeyContext, NodeNaming};
use crate::{Instance, ServiceName};

const NAME: &str = "go-kit";

/// go-kit's ZooKeeper layout: a protected ephemeral sequential node
/// `{root}/{service}/_c_{32 hex guid}-{10 digit sequence}` holding the raw address.
///
/// go-kit's `zk.Registrar` creates `{Path}/{Name}/` as a protected ephemeral sequential
/// node (go-zookeeper's `CreateProtectedEphemeralSequential`, the same `_c_` prefix as
/// Curator's) with the caller's bytes as data, and its `Instancer` reads the data of
/// every child of `{Path}/{Name}` as one instance string. The URL's root is go-kit's
/// `Path` and the service its `Name`.
///
/// - **Node:** [`NodeNaming::ProtectedSequential`] with an empty instance key, so the
///   node is named exactly as go-kit names its own. On decode the whole node name is the
///   id (`_c_…-0000000007` is a valid id), so the id a leasehold service registered with
///   does not survive: the format has no room for it.
/// - **Value:** the address exactly as registered.
/// - **Dropped:** the id, metadata, weight, zone and version.
///
/// ```
/// use leasehold::codec::{Codec, KeyContext};
/// use leasehold::formats::GoKitZkCodec;
/// use leasehold::{Instance, ServiceName};
/// let codec = GoKitZkCodec;
/// let hello = ServiceName::new("hello")?;
/// let instance = Instance::builder("hello", "10.0.0.5:8080").build()?;
/// assert_eq!(codec.instance_key(&instance, &KeyContext::default()), "");
/// assert_eq!(codec.encode(&instance)?, b"10.0.0.5:8080");
/// let node = "_c_6ba7b8109dad11d180b400c04fd430c8-0000000003";
/// let found = codec.decode(&hello, node, b"10.0.0.5:8080")?;
/// assert_eq!(found.id().as_str(), node);
/// assert_eq!(found.addr(), instance.addr());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct GoKitZkCodec;

impl Codec for GoKitZkCodec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn instance_key(&self, _instance: &Instance, _context: &KeyContext) -> String {
        String::new()
    }

    fn node_naming(&self) -> NodeNaming {
        NodeNaming::ProtectedSequential
    }

    fn encode(&self, instance: &Instance) -> Result<Vec<u8>, CodecError> {
        Ok(instance.addr().as_str().as_bytes().to_vec())
    }

    fn decode(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<Instance, CodecError> {
        decode_raw_address(NAME, service, key, value)
    }
}
