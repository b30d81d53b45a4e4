//! go-kit `sd/etcdv3` on etcd.

use super::{codec_error, foreign_id, utf8};
use crate::codec::{Codec, CodecError, KeyContext};
use crate::{Address, Instance, ServiceName};

const NAME: &str = "go-kit";

/// go-kit's etcd v3 layout: key `{root}/{service}/{id}`, value the raw address.
///
/// go-kit's `etcdv3.Registrar` writes a caller-chosen key and value, and its `Instancer`
/// reads every value under a caller-chosen prefix as one instance string, typically
/// `10.0.0.5:8080` or `http://10.0.0.5:8080`. leasehold's prefix for a service is
/// `{root}/{service}/` (root `/services`, service `hello`: `/services/hello/`), so a
/// go-kit Instancer given that prefix sees leasehold instances, and the other way round.
///
/// - **Key:** the instance id. go-kit users conventionally use the address; give the
///   instance its address as id to match. On decode the key suffix becomes the id
///   through [`foreign_id`](super::foreign_id), since a go-kit key may hold `/`.
/// - **Value:** the address exactly as registered, URI or `host:port`.
/// - **Dropped:** metadata, weight, zone and version; decoding gives weight 1 and none
///   of the others.
///
/// ```
/// use leasehold::codec::{Codec, KeyContext};
/// use leasehold::formats::GoKitCodec;
/// use leasehold::{Instance, ServiceName};
/// let codec = GoKitCodec;
/// let hello = ServiceName::new("hello")?;
/// assert_eq!(codec.service_prefix("/services", &hello), "/services/hello/");
/// let instance = Instance::builder("hello", "http://10.0.0.5:8080").id("10.0.0.5:8080").build()?;
/// assert_eq!(codec.instance_key(&instance, &KeyContext::default()), "10.0.0.5:8080");
/// assert_eq!(codec.encode(&instance)?, b"http://10.0.0.5:8080");
/// assert_eq!(codec.decode(&hello, "10.0.0.5:8080", b"http://10.0.0.5:8080")?, instance);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct GoKitCodec;

impl Codec for GoKitCodec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn instance_key(&self, instance: &Instance, _context: &KeyContext) -> String {
        instance.id().to_string()
    }

    fn encode(&self, instance: &Instance) -> Result<Vec<u8>, CodecError> {
        Ok(instance.addr().as_str().as_bytes().to_vec())
    }

    fn decode(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<Instance, CodecError> {
        decode_raw_address(NAME, service, key, value)
    }
}

/// An instance whose value is nothing but its address and whose id is its key.
pub(super) fn decode_raw_address(
    format: &'static str,
    service: &ServiceName,
    key: &str,
    value: &[u8],
) -> Result<Instance, CodecError> {
    let addr = Address::new(utf8(format, key, value)?)
        .map_err(|e| codec_error(format, "decode", key, e.to_string()))?;
    Instance::builder(service.as_str(), addr.as_str())
        .id(foreign_id(key).as_str())
        .build()
        .map_err(|e| codec_error(format, "decode", key, e.to_string()))
}
