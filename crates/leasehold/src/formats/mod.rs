//! The formats of other frameworks, so leasehold services and theirs find each other.
//!
//! Each codec here reads and writes keys and values exactly as one framework does:
//!
//! | `?format=` | codec | registry | key under `{root}` | value |
//! |---|---|---|---|---|
//! | `native` | [`NativeCodec`] | any | `/{service}/{id}` | leasehold JSON |
//! | `go-kit` | [`GoKitCodec`] | etcd | `/{service}/{id}` | raw address |
//! | `go-kit` | [`GoKitZkCodec`] | ZooKeeper | `/{service}/_c_{guid}-{seq}` | raw address |
//! | `go-zero` | [`GoZeroCodec`] | etcd | `{service}/{lease id}` | `host:port` |
//! | `etcd-naming` | [`EtcdNamingCodec`] | etcd | `{service}/{id}` | `{"Op":0,"Addr":..,"Metadata":..}` |
//! | `curator` | [`CuratorCodec`] | ZooKeeper | `/{service}/{id}` | Curator's `ServiceInstance` JSON |
//! | `kratos` | [`KratosCodec`] | etcd | `/{service}/{id}` | Kratos' `ServiceInstance` JSON |
//!
//! A backend turns a URL's `?format=` into a codec in one line with [`codec_for`]; the
//! same name may mean a different layout per registry (`go-kit` on etcd and on
//! ZooKeeper), which is why the registry kind is part of the question.
//!
//! # Roots
//!
//! A codec is given the root the backend was configured with. When the URL has no path,
//! [`Format::default_root`] says what root the framework itself uses: go-zero and etcd
//! naming keep keys at the top of etcd with no leading `/` (`user.rpc/7587…`), which the
//! empty root `""` gives; Kratos uses `/microservices`. For the others the root is the
//! caller's choice (go-kit's prefix, Curator's base path) and the backend's own default
//! applies.
//!
//! # What a format cannot carry
//!
//! A leasehold [`Instance`] has a service, id, address, metadata, weight, zone and
//! version. Formats with a metadata map (etcd naming, Curator's payload, Kratos) carry
//! weight, zone and version in it under the keys [`WEIGHT_KEY`], [`ZONE_KEY`] and
//! [`VERSION_KEY`] (Kratos has a field of its own for the version); those keys are taken
//! back out on decode, so the labels round-trip and a peer that sets them is understood.
//! A weight of 1 is not written. Formats without metadata (go-kit, go-zero) carry only
//! the address; decoding gives the defaults: weight 1, no zone, no version, no metadata.
//!
//! # Foreign ids
//!
//! Other frameworks' ids are free-form (go-kit keys are often the address, Kratos ids
//! are anything), while an [`InstanceId`] is restricted so it fits in any key.
//! [`foreign_id`] maps any string to a valid id deterministically, so every process
//! decodes a foreign instance to the same id.

mod curator;
mod etcd_naming;
mod go_kit;
mod go_kit_zk;
mod go_zero;
mod kratos;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use curator::{CuratorCodec, CURATOR_PAYLOAD_CLASS, CURATOR_PAYLOAD_KEY};
pub use etcd_naming::EtcdNamingCodec;
pub use go_kit::GoKitCodec;
pub use go_kit_zk::GoKitZkCodec;
pub use go_zero::{GoZeroCodec, GoZeroKey};
pub use kratos::{KratosCodec, KRATOS_SCHEMES};

use crate::codec::{Codec, CodecError, NativeCodec};
use crate::instance::MAX_NAME_LEN;
use crate::{Address, Instance, InstanceBuilder, InstanceId, Metadata, ServiceName};

/// The metadata key that carries an instance's weight in formats with metadata.
pub const WEIGHT_KEY: &str = "weight";
/// The metadata key that carries an instance's zone in formats with metadata.
pub const ZONE_KEY: &str = "zone";
/// The metadata key that carries an instance's version in formats with metadata but no
/// version field.
pub const VERSION_KEY: &str = "version";

/// A wire format, as named by a registry URL's `?format=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// leasehold's own JSON ([`NativeCodec`]).
    Native,
    /// go-kit `sd/etcdv3` on etcd ([`GoKitCodec`]), `sd/zk` on ZooKeeper ([`GoKitZkCodec`]).
    GoKit,
    /// go-zero `core/discov` ([`GoZeroCodec`]).
    GoZero,
    /// etcd's `naming/endpoints`, read by grpc-go's `etcd:///` resolver ([`EtcdNamingCodec`]).
    EtcdNaming,
    /// Apache Curator's x-discovery ([`CuratorCodec`]).
    Curator,
    /// Kratos' `contrib/registry/etcd` ([`KratosCodec`]).
    Kratos,
}

/// The kind of registry a codec is asked for, since one format name can mean a different
/// layout on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegistryKind {
    /// etcd v3: keys and values under a prefix.
    Etcd,
    /// ZooKeeper: one ephemeral node per instance.
    ZooKeeper,
    /// The in-process registry, which stores keys as etcd does.
    Memory,
}

impl RegistryKind {
    /// The kind for a registry URL scheme (`etcd`, `zk`/`zookeeper`, `memory`).
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "etcd" => Some(RegistryKind::Etcd),
            "zk" | "zookeeper" => Some(RegistryKind::ZooKeeper),
            "memory" => Some(RegistryKind::Memory),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RegistryKind::Etcd => "etcd",
            RegistryKind::ZooKeeper => "ZooKeeper",
            RegistryKind::Memory => "memory",
        }
    }
}

/// A format name that is unknown, or a format that the registry cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// No format has this name.
    #[error("unknown format {name:?}; known formats: {}", Format::NAMES.join(", "))]
    Unknown {
        /// The name as given.
        name: String,
    },
    /// The format exists, but not for this kind of registry.
    #[error("format {format} is not available on {registry}; it is {only}")]
    Unsupported {
        /// The format's name.
        format: &'static str,
        /// The registry kind asked for.
        registry: &'static str,
        /// Where the format can be used.
        only: &'static str,
    },
    /// A format's option (a registry URL parameter such as Kratos' `scheme`) has a value
    /// the format does not know, or is given to a format that has no such option.
    #[error("format {format} has no {option} {value:?}; {known}")]
    UnknownOption {
        /// The format's name.
        format: &'static str,
        /// The option's name.
        option: &'static str,
        /// The value as given.
        value: String,
        /// What the format takes instead.
        known: String,
    },
}

impl Format {
    /// Every format, in the order of [`Format::NAMES`].
    pub const ALL: [Format; 6] = [
        Format::Native,
        Format::GoKit,
        Format::GoZero,
        Format::EtcdNaming,
        Format::Curator,
        Format::Kratos,
    ];

    /// The names `?format=` accepts.
    pub const NAMES: [&'static str; 6] = ["native", "go-kit", "go-zero", "etcd-naming", "curator", "kratos"];

    /// The format called `name`; the error lists the known names.
    ///
    /// ```
    /// use leasehold::formats::Format;
    /// assert_eq!(Format::from_name("go-zero")?, Format::GoZero);
    /// let err = Format::from_name("gokit").unwrap_err().to_string();
    /// assert!(err.contains("unknown format \"gokit\"") && err.contains("go-kit"));
    /// # Ok::<(), leasehold::formats::FormatError>(())
    /// ```
    pub fn from_name(name: &str) -> Result<Format, FormatError> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| FormatError::Unknown {
                name: name.to_owned(),
            })
    }

    /// The format's `?format=` name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::GoKit => "go-kit",
            Format::GoZero => "go-zero",
            Format::EtcdNaming => "etcd-naming",
            Format::Curator => "curator",
            Format::Kratos => "kratos",
        }
    }

    /// The codec, with default options, for this format on a registry of kind
    /// `registry`.
    ///
    /// `go-kit` gives [`GoKitCodec`] on etcd and memory and [`GoKitZkCodec`] on
    /// ZooKeeper. The etcd-only formats (go-zero, etcd naming, Kratos) are refused on
    /// ZooKeeper, and Curator is refused on etcd; the in-process registry takes every
    /// format, so tests and demos can use any.
    pub fn codec_for(self, registry: RegistryKind) -> Result<Arc<dyn Codec>, FormatError> {
        let unsupported = |only| FormatError::Unsupported {
            format: self.name(),
            registry: registry.name(),
            only,
        };
        Ok(match (self, registry) {
            (Format::Native, _) => Arc::new(NativeCodec),
            (Format::GoKit, RegistryKind::ZooKeeper) => Arc::new(GoKitZkCodec),
            (Format::GoKit, _) => Arc::new(GoKitCodec),
            (Format::GoZero | Format::EtcdNaming | Format::Kratos, RegistryKind::ZooKeeper) => {
                return Err(unsupported("an etcd format"))
            }
            (Format::GoZero, _) => Arc::new(GoZeroCodec::new()),
            (Format::EtcdNaming, _) => Arc::new(EtcdNamingCodec),
            (Format::Kratos, _) => Arc::new(KratosCodec::new()),
            (Format::Curator, RegistryKind::Etcd) => return Err(unsupported("a ZooKeeper format")),
            (Format::Curator, _) => Arc::new(CuratorCodec::new()),
        })
    }

    /// The root the framework itself uses, for a URL without a path; `None` when the
    /// root is the caller's choice and the backend's default applies.
    ///
    /// go-zero and etcd naming keep keys at the top of etcd without a leading `/`
    /// (`Some("")`, so `user.rpc` is at `user.rpc/…`); Kratos under `/microservices`.
    pub fn default_root(self) -> Option<&'static str> {
        match self {
            Format::GoZero | Format::EtcdNaming => Some(""),
            Format::Kratos => Some(kratos::DEFAULT_ROOT),
            Format::Native | Format::GoKit | Format::Curator => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::from_name(s)
    }
}

/// The codec and root a registry URL asks for, the one way every backend reads them:
/// `?format=` (native when absent; with `kratos`, `&scheme=` chooses the endpoints
/// followed, see [`KratosCodec`]) and the URL's path, else the format's own
/// [default root](Format::default_root), else `backend_root`.
///
/// ```
/// use leasehold::formats::{layout_from_url, RegistryKind};
/// let url = "etcd://127.0.0.1:2379?format=go-zero".parse()?;
/// let (codec, root) = layout_from_url(&url, RegistryKind::Etcd, "/leasehold/services")?;
/// assert_eq!((codec.name(), root.as_str()), ("go-zero", ""));
/// # Ok::<(), leasehold::Error>(())
/// ```
pub fn layout_from_url(
    url: &crate::RegistryUrl,
    registry: RegistryKind,
    backend_root: &str,
) -> crate::Result<(Arc<dyn Codec>, String)> {
    let format = Format::from_name(url.param("format").unwrap_or("native"))
        .map_err(|e| crate::Error::invalid_url(url.to_string(), e.to_string()))?;
    let invalid = |e: FormatError| crate::Error::invalid_url(url.to_string(), e.to_string());
    let mut codec = format.codec_for(registry).map_err(invalid)?;
    // Kratos follows the endpoints of one scheme (`?scheme=http`); no other format has
    // the option, so it is refused there rather than ignored.
    if let Some(scheme) = url.param("scheme") {
        if format != Format::Kratos {
            return Err(invalid(FormatError::UnknownOption {
                format: format.name(),
                option: "scheme",
                value: scheme.to_owned(),
                known: "only format kratos takes a scheme".to_owned(),
            }));
        }
        codec = Arc::new(KratosCodec::with_scheme(scheme).map_err(invalid)?);
    }
    let root = url
        .root
        .as_deref()
        .or(format.default_root())
        .unwrap_or(backend_root)
        .trim_end_matches('/')
        .to_owned();
    Ok((codec, root))
}

/// The codec for `?format=name` on a registry of kind `registry`: what a backend calls
/// when it reads its URL.
///
/// ```
/// use leasehold::formats::{codec_for, RegistryKind};
/// use leasehold::NodeNaming;
/// let codec = codec_for("go-kit", RegistryKind::ZooKeeper)?;
/// assert_eq!(codec.node_naming(), NodeNaming::ProtectedSequential);
/// let err = codec_for("curator", RegistryKind::Etcd).unwrap_err();
/// assert_eq!(err.to_string(), "format curator is not available on etcd; it is a ZooKeeper format");
/// # Ok::<(), leasehold::formats::FormatError>(())
/// ```
pub fn codec_for(name: &str, registry: RegistryKind) -> Result<Arc<dyn Codec>, FormatError> {
    Format::from_name(name)?.codec_for(registry)
}

/// A valid [`InstanceId`] for a foreign id or key, the same in every process.
///
/// A string that is already a valid id is kept as it is (`10.0.0.5:8080`, a UUID, a
/// lease id). Anything else (`http://10.0.0.5:8080`, an empty string, a name longer than
/// 128 bytes) becomes its first 100 bytes with every character an id refuses replaced
/// by `_`, then `-` and the 16 hex digits of the string's XXH3-64 hash, so two different
/// foreign ids never share a readable form by accident.
///
/// ```
/// use leasehold::formats::foreign_id;
/// assert_eq!(foreign_id("10.0.0.5:8080").as_str(), "10.0.0.5:8080");
/// let id = foreign_id("http://10.0.0.5:8080");
/// assert!(id.as_str().starts_with("http:__10.0.0.5:8080-"));
/// assert_eq!(id, foreign_id("http://10.0.0.5:8080"));
/// ```
pub fn foreign_id(raw: &str) -> InstanceId {
    if let Ok(id) = InstanceId::new(raw) {
        return id;
    }
    let mut readable: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@' | '[' | ']') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cut = (0..=readable.len().min(100))
        .rev()
        .find(|i| readable.is_char_boundary(*i))
        .unwrap_or(0);
    readable.truncate(cut);
    let hash = xxhash_rust::xxh3::xxh3_64(raw.as_bytes());
    let id = format!("{readable}-{hash:016x}");
    debug_assert!(id.len() <= MAX_NAME_LEN);
    InstanceId::new(id).unwrap_or_else(|_| InstanceId::random())
}

/// A [`CodecError`] for `format`.
fn codec_error(
    format: &'static str,
    action: &'static str,
    key: &str,
    reason: impl Into<String>,
) -> CodecError {
    CodecError {
        format,
        action,
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// `value` as UTF-8, or why it is not.
fn utf8<'a>(format: &'static str, key: &str, value: &'a [u8]) -> Result<&'a str, CodecError> {
    std::str::from_utf8(value)
        .map_err(|e| codec_error(format, "decode", key, format!("value is not UTF-8: {e}")))
}

/// The `host:port` of `instance`'s address, for formats that carry nothing else.
fn host_port(format: &'static str, instance: &Instance) -> Result<Address, CodecError> {
    let authority = instance.addr().authority();
    Address::new(authority).map_err(|_| {
        codec_error(
            format,
            "encode",
            instance.id().as_str(),
            format!(
                "address {:?} has no host:port ({authority:?}), which {format} needs",
                instance.addr().as_str()
            ),
        )
    })
}

/// The instance's metadata with its weight (unless 1), zone and, when `with_version`,
/// version added under the reserved keys.
fn labels_to_metadata(instance: &Instance, with_version: bool) -> Metadata {
    let mut metadata = instance.metadata().clone();
    if instance.weight() != 1 {
        metadata.insert(WEIGHT_KEY.to_owned(), instance.weight().to_string());
    }
    if let Some(zone) = instance.zone() {
        metadata.insert(ZONE_KEY.to_owned(), zone.to_owned());
    }
    if let Some(version) = instance.version().filter(|_| with_version) {
        metadata.insert(VERSION_KEY.to_owned(), version.to_owned());
    }
    metadata
}

/// A builder for a decoded instance with the weight, zone and (when `with_version`)
/// version taken out of `metadata`. A weight that is not a whole number of at least 1
/// stays in the metadata and the weight is the default 1, as Kratos' own selector does.
fn labels_from_metadata(
    service: &ServiceName,
    id: InstanceId,
    addr: Address,
    mut metadata: Metadata,
    with_version: bool,
) -> InstanceBuilder {
    let weight = match metadata.get(WEIGHT_KEY).map(|w| w.parse::<u32>()) {
        Some(Ok(w)) if w >= 1 => {
            metadata.remove(WEIGHT_KEY);
            w
        }
        _ => 1,
    };
    let zone = metadata.remove(ZONE_KEY);
    let version = if with_version {
        metadata.remove(VERSION_KEY)
    } else {
        None
    };
    metadata.remove("");
    let mut builder = Instance::builder(service.as_str(), addr.as_str())
        .id(id.as_str())
        .metadata_map(metadata)
        .weight(weight);
    if let Some(zone) = zone {
        builder = builder.zone(zone);
    }
    if let Some(version) = version {
        builder = builder.version(version);
    }
    builder
}

/// `{root}/{service}/`, or `{service}/` when the root is empty, for formats that keep
/// keys at the top of etcd.
fn prefix_allowing_empty_root(root: &str, service: &ServiceName) -> String {
    if root.is_empty() {
        format!("{service}/")
    } else {
        format!("{root}/{service}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeNaming;

    #[test]
    fn every_name_parses_back_to_its_format() {
        for (format, name) in Format::ALL.into_iter().zip(Format::NAMES) {
            assert_eq!(format.name(), name);
            assert_eq!(name.parse::<Format>().unwrap(), format);
        }
    }

    #[test]
    fn go_kit_means_the_registry_s_layout() {
        let etcd = codec_for("go-kit", RegistryKind::Etcd).unwrap();
        let zk = codec_for("go-kit", RegistryKind::ZooKeeper).unwrap();
        assert_eq!(format!("{etcd:?}"), "GoKitCodec");
        assert_eq!(format!("{zk:?}"), "GoKitZkCodec");
        assert_eq!(zk.node_naming(), NodeNaming::ProtectedSequential);
        assert!(codec_for("kratos", RegistryKind::ZooKeeper)
            .unwrap_err()
            .to_string()
            .contains("an etcd format"));
        for name in Format::NAMES {
            codec_for(name, RegistryKind::Memory).unwrap();
        }
    }

    #[test]
    fn foreign_ids_are_valid_distinct_and_stable() {
        let long = "x".repeat(300);
        let cases = ["", "a/b", "a_b", "http://h:1/x", "é", long.as_str(), "/", "."];
        let ids: Vec<InstanceId> = cases.iter().map(|c| foreign_id(c)).collect();
        for (case, id) in cases.iter().zip(&ids) {
            assert_eq!(&foreign_id(case), id);
            assert!(id.as_str().len() <= MAX_NAME_LEN);
        }
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    }
}
