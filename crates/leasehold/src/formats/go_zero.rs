//! go-zero `core/discov` on etcd.

use super::go_kit::decode_raw_address;
use super::{host_port, prefix_allowing_empty_root};
use crate::codec::{Codec, CodecError, KeyContext};
use crate::{Instance, ServiceName};

const NAME: &str = "go-zero";

/// What the last segment of a go-zero key is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum GoZeroKey {
    /// The id of the etcd lease the key is written under, in decimal, as go-zero's
    /// `Publisher` does. Every registration of one registry client shares its lease, so
    /// two instances of the *same* service registered through one client would share one
    /// key; use [`GoZeroKey::InstanceId`] for that.
    #[default]
    LeaseId,
    /// The instance id, as go-zero's `Publisher` with `WithId` does (go-zero takes a
    /// number there; any leasehold id works, and a numeric one matches go-zero exactly).
    InstanceId,
}

/// go-zero's layout: key `{key}/{lease id in decimal}`, value the raw `host:port`.
///
/// go-zero's `discov.Publisher` puts `{key}/{id}` under its lease, where `id` is the
/// lease id unless one was configured, and its subscribers watch the prefix `{key}/`,
/// reading each value as a gRPC target address. go-zero's `key` (such as `user.rpc`)
/// sits at the top of etcd without a leading `/`: with an empty root the service prefix
/// is `user.rpc/`, and [`Format::default_root`](super::Format::default_root) gives that
/// empty root when the registry URL has no path (`etcd://h:2379?format=go-zero`). With a
/// root `/a` the prefix is `/a/user.rpc/`, for a go-zero key `/a/user.rpc`.
///
/// - **Key:** see [`GoZeroKey`]. Without a lease (`KeyContext::lease_id` is `None`, as
///   on a registry without leases) the instance id is used.
/// - **Value:** the address's `host:port`; a URI address is written as its authority,
///   since go-zero dials the value as it is. An address without a port cannot be written.
/// - **Dropped:** metadata, weight, zone, version, and any URI scheme or path; on decode
///   the id is the key's last segment (the lease id), weight 1.
///
/// ```
/// use leasehold::codec::{Codec, KeyContext};
/// use leasehold::formats::GoZeroCodec;
/// use leasehold::{Instance, ServiceName};
/// let codec = GoZeroCodec::new();
/// let user = ServiceName::new("user.rpc")?;
/// assert_eq!(codec.service_prefix("", &user), "user.rpc/");
/// let instance = Instance::builder("user.rpc", "10.0.0.5:8080").build()?;
/// let key = codec.instance_key(&instance, &KeyContext::lease(7587869950362034437));
/// assert_eq!(key, "7587869950362034437");
/// assert_eq!(codec.encode(&instance)?, b"10.0.0.5:8080");
/// let found = codec.decode(&user, &key, b"10.0.0.5:8080")?;
/// assert_eq!((found.id().as_str(), found.addr()), (key.as_str(), instance.addr()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct GoZeroCodec {
    key: GoZeroKey,
}

impl GoZeroCodec {
    /// Keys named after the lease id, as go-zero's publisher names them by default.
    pub fn new() -> Self {
        GoZeroCodec::default()
    }

    /// Chooses what the key's last segment is.
    #[must_use]
    pub fn key(mut self, key: GoZeroKey) -> Self {
        self.key = key;
        self
    }
}

impl Codec for GoZeroCodec {
    fn name(&self) -> &'static str {
        NAME
    }

    fn service_prefix(&self, root: &str, service: &ServiceName) -> String {
        prefix_allowing_empty_root(root, service)
    }

    fn instance_key(&self, instance: &Instance, context: &KeyContext) -> String {
        match (self.key, context.lease_id) {
            (GoZeroKey::LeaseId, Some(lease)) => lease.to_string(),
            _ => instance.id().to_string(),
        }
    }

    fn encode(&self, instance: &Instance) -> Result<Vec<u8>, CodecError> {
        Ok(host_port(NAME, instance)?.as_str().as_bytes().to_vec())
    }

    fn decode(&self, service: &ServiceName, key: &str, value: &[u8]) -> Result<Instance, CodecError> {
        decode_raw_address(NAME, service, key, value)
    }
}
