//! The model: what a registered service instance is, and the rules its fields obey.
//!
//! Every name and id ends up inside a registry key or a ZooKeeper path, so the rules are
//! the intersection of what etcd keys, ZooKeeper node names and the interoperable formats
//! accept. Values are validated once, when they are built or decoded; everything past
//! that point can rely on them.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest service name or instance id accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// The longest address accepted, in bytes.
pub const MAX_ADDR_LEN: usize = 512;

/// An input that breaks a rule of the model. The message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {rule}")]
pub struct InvalidInput {
    /// The field that was refused, such as `service name` or `address`.
    pub field: &'static str,
    /// The value as given (truncated when very long).
    pub value: String,
    /// The rule it broke.
    pub rule: String,
}

impl InvalidInput {
    pub(crate) fn new(field: &'static str, value: &str, rule: impl Into<String>) -> Self {
        let value = if value.len() > 80 {
            let cut = (0..=80).rev().find(|i| value.is_char_boundary(*i)).unwrap_or(0);
            format!("{}…", &value[..cut])
        } else {
            value.to_owned()
        };
        InvalidInput {
            field,
            value,
            rule: rule.into(),
        }
    }
}

fn check_name(field: &'static str, value: &str, extra: &[char]) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::new(field, value, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(InvalidInput::new(
            field,
            value,
            format!("must be at most {MAX_NAME_LEN} bytes"),
        ));
    }
    if value == "." || value == ".." {
        return Err(InvalidInput::new(field, value, "must not be `.` or `..`"));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || extra.contains(c)))
    {
        let allowed: String = extra.iter().map(|c| format!(", '{c}'")).collect();
        return Err(InvalidInput::new(
            field,
            value,
            format!("{bad:?} is not allowed: use ASCII letters, digits, '.', '_', '-'{allowed}"),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidInput> {
                let value = value.into();
                check_name($field, &value, $extra)?;
                Ok($name(value.into()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidInput;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $name::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidInput;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A service's name, such as `echo` or go-zero's `user.rpc`: 1 to 128 bytes of ASCII
    /// letters, digits, `.`, `_` and `-`, so it is one key segment or one ZooKeeper node.
    ServiceName,
    "service name",
    &[]
);

name_type!(
    /// An instance's id, unique within its service: 1 to 128 bytes of ASCII letters,
    /// digits, `.`, `_`, `-`, `:`, `@`, `[` and `]` (so an address such as
    /// `10.0.0.5:8080` can serve as an id, as go-kit's keys do), and never a `/`.
    InstanceId,
    "instance id",
    &[':', '@', '[', ']']
);

impl InstanceId {
    /// A fresh random id (a UUID v4 in its simple form), as Curator gives its instances.
    pub fn random() -> Self {
        InstanceId(uuid::Uuid::new_v4().simple().to_string().into())
    }

    /// The id's shared string, so a cache can key by it without another allocation.
    pub(crate) fn shared(&self) -> &Arc<str> {
        &self.0
    }
}

/// Where an instance is reached: `host:port` (`10.0.0.5:8080`, `[::1]:50051`,
/// `svc.local:80`) or a URI with a scheme and an authority (`http://10.0.0.5:8080/api`,
/// `grpc://10.0.0.5:9000`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address(Box<str>);

impl Address {
    /// Validates `value` as `host:port` or a URI and wraps it.
    pub fn new(value: impl Into<String>) -> Result<Self, InvalidInput> {
        let value = value.into();
        Self::check(&value)?;
        Ok(Address(value.into()))
    }

    fn check(value: &str) -> Result<(), InvalidInput> {
        let invalid = |rule: &str| Err(InvalidInput::new("address", value, rule));
        if value.is_empty() {
            return invalid("must not be empty");
        }
        if value.len() > MAX_ADDR_LEN {
            return invalid("must be at most 512 bytes");
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("must not contain white space or control characters");
        }
        let authority = match value.split_once("://") {
            Some((scheme, rest)) => {
                let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
                if !scheme_ok {
                    return invalid("has a malformed URI scheme");
                }
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let authority = &rest[..end];
                let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                if authority.is_empty() {
                    return invalid("is a URI without a host");
                }
                return Self::check_host_port(value, authority, false);
            }
            None => value,
        };
        Self::check_host_port(value, authority, true)
    }

    fn check_host_port(value: &str, authority: &str, port_required: bool) -> Result<(), InvalidInput> {
        let invalid = |rule: &str| Err(InvalidInput::new("address", value, rule));
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let Some((ip6, after)) = rest.split_once(']') else {
                return invalid("has an IPv6 host without a closing `]`");
            };
            if ip6.parse::<std::net::Ipv6Addr>().is_err() {
                return invalid("has a malformed IPv6 host");
            }
            match after.strip_prefix(':') {
                Some(port) => (ip6, Some(port)),
                None if after.is_empty() => (ip6, None),
                None => return invalid("must be `host:port` or a URI"),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => {
                    if host.contains(':') {
                        return invalid("has an IPv6 host that must be written in brackets, as `[::1]:80`");
                    }
                    (host, Some(port))
                }
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return invalid("must have a host before the `:port`");
        }
        if !authority.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return invalid("has a host with characters other than letters, digits, '.', '-' and '_'");
        }
        match port {
            Some(port) => match port.parse::<u16>() {
                Ok(0) | Err(_) => invalid("must end in a port from 1 to 65535"),
                Ok(_) => Ok(()),
            },
            None if port_required => invalid("must be `host:port` or a URI such as `http://host:port`"),
            None => Ok(()),
        }
    }

    /// The address as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `host:port` part: the authority of a URI, or the whole `host:port` address.
    /// A URI without a port gives just its host.
    pub fn authority(&self) -> &str {
        match self.0.split_once("://") {
            Some((_, rest)) => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let authority = &rest[..end];
                authority.rsplit_once('@').map_or(authority, |(_, h)| h)
            }
            None => &self.0,
        }
    }

    /// The URI scheme, if the address is a URI.
    pub fn scheme(&self) -> Option<&str> {
        self.0.split_once("://").map(|(scheme, _)| scheme)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Address {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::new(s)
    }
}

impl TryFrom<String> for Address {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Address::new(s)
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.0.into()
    }
}

/// Free-form labels of an instance. Keys are non-empty.
pub type Metadata = BTreeMap<String, String>;

/// One instance of a service, as registered and as discovered.
///
/// Built with [`Instance::builder`], which validates every field; once built, an
/// `Instance` is known to be valid. Serializes to the native JSON format:
/// `{"service","id","addr","metadata","weight","zone","version"}`.
///
/// A discovered instance also knows the registry key it was found under
/// ([`key`](Instance::key)): that, not the id, is what identifies it in a discovery
/// cache, since two keys can hold one id for a moment (a ZooKeeper client that restarts
/// with a stable id). The key is not part of the value: it is neither serialized nor
/// compared.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "InstanceRepr", into = "InstanceRepr")]
pub struct Instance {
    service: ServiceName,
    id: InstanceId,
    addr: Address,
    weight: NonZeroU32,
    /// Metadata, zone and version, boxed and `None` when all are empty: most instances
    /// have none, and a cache holds thousands of instances.
    labels: Option<Box<Labels>>,
}

/// The optional parts of an instance. Never all empty inside an `Instance`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Labels {
    metadata: Metadata,
    zone: Option<Box<str>>,
    version: Option<Box<str>>,
    /// The registry key, relative to the service's prefix, when it is not the id (the
    /// native layout's key is the id, so native instances pay nothing for it).
    key: Option<Arc<str>>,
}

impl Labels {
    fn boxed(self) -> Option<Box<Labels>> {
        (self != Labels::default()).then(|| Box::new(self))
    }
}

impl PartialEq for Instance {
    /// Equal values: every field but the registry key.
    fn eq(&self, other: &Self) -> bool {
        self.service == other.service
            && self.id == other.id
            && self.addr == other.addr
            && self.weight == other.weight
            && self.metadata() == other.metadata()
            && self.zone() == other.zone()
            && self.version() == other.version()
    }
}

impl Eq for Instance {}

/// The metadata of an instance that has none.
static NO_METADATA: Metadata = Metadata::new();

impl Instance {
    /// Starts building an instance of `service` reached at `addr`.
    ///
    /// ```
    /// let instance = leasehold::Instance::builder("echo", "127.0.0.1:7001")
    ///     .id("echo-1")
    ///     .metadata("protocol", "tcp")
    ///     .weight(2)
    ///     .build()?;
    /// assert_eq!(instance.addr().as_str(), "127.0.0.1:7001");
    /// # Ok::<(), leasehold::InvalidInput>(())
    /// ```
    pub fn builder(service: impl Into<String>, addr: impl Into<String>) -> InstanceBuilder {
        InstanceBuilder {
            service: service.into(),
            addr: addr.into(),
            id: None,
            metadata: Metadata::new(),
            weight: 1,
            zone: None,
            version: None,
        }
    }

    /// The service this instance belongs to.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
    /// The instance's id, unique within its service.
    pub fn id(&self) -> &InstanceId {
        &self.id
    }
    /// Where the instance is reached.
    pub fn addr(&self) -> &Address {
        &self.addr
    }
    /// The instance's labels.
    pub fn metadata(&self) -> &Metadata {
        self.labels.as_ref().map_or(&NO_METADATA, |l| &l.metadata)
    }
    /// Relative share of traffic for weighted balancing; at least 1.
    pub fn weight(&self) -> u32 {
        self.weight.get()
    }
    /// The zone (availability zone, rack, region) the instance runs in, if known.
    pub fn zone(&self) -> Option<&str> {
        self.labels.as_ref()?.zone.as_deref()
    }
    /// The version of the software the instance runs, if known.
    pub fn version(&self) -> Option<&str> {
        self.labels.as_ref()?.version.as_deref()
    }

    /// The registry key this instance was discovered under, relative to the service's
    /// prefix (as [`Codec::instance_key`](crate::Codec::instance_key) makes it); the id
    /// for an instance that was not discovered, or whose key is its id.
    pub fn key(&self) -> &str {
        match self.labels.as_ref().and_then(|l| l.key.as_deref()) {
            Some(key) => key,
            None => self.id.as_str(),
        }
    }

    /// The key as a shared string, for maps keyed by it.
    pub fn shared_key(&self) -> &Arc<str> {
        match self.labels.as_ref().and_then(|l| l.key.as_ref()) {
            Some(key) => key,
            None => self.id.shared(),
        }
    }

    /// Records the registry key the instance was found under; nothing is stored when it
    /// is the id.
    pub(crate) fn set_key(&mut self, key: &str) {
        if key == self.id.as_str() {
            if let Some(labels) = self.labels.take() {
                self.labels = Labels { key: None, ..*labels }.boxed();
            }
            return;
        }
        self.labels.get_or_insert_with(Box::default).key = Some(Arc::from(key));
    }

    /// Makes this instance share `service`'s string, when it names the same service,
    /// so a cache of many instances holds the name once.
    pub(crate) fn share_service(&mut self, service: &ServiceName) {
        if self.service == *service {
            self.service = service.clone();
        }
    }

    /// A copy with `update` applied, validated like a new instance. Service, id and
    /// address never change in place: they make a different instance.
    pub fn updated(&self, update: &InstanceUpdate) -> Result<Instance, InvalidInput> {
        let mut next = self.clone();
        let mut labels = next.labels.take().map(|l| *l).unwrap_or_default();
        if let Some(metadata) = &update.metadata {
            check_metadata(metadata)?;
            labels.metadata = metadata.clone();
        }
        if let Some(weight) = update.weight {
            next.weight = check_weight(weight)?;
        }
        if let Some(zone) = &update.zone {
            labels.zone = check_label("zone", zone.clone())?;
        }
        if let Some(version) = &update.version {
            labels.version = check_label("version", version.clone())?;
        }
        next.labels = labels.boxed();
        Ok(next)
    }
}

fn check_weight(weight: u32) -> Result<NonZeroU32, InvalidInput> {
    NonZeroU32::new(weight).ok_or_else(|| InvalidInput::new("weight", "0", "must be at least 1"))
}

fn check_metadata(metadata: &Metadata) -> Result<(), InvalidInput> {
    if metadata.contains_key("") {
        return Err(InvalidInput::new("metadata key", "", "must not be empty"));
    }
    Ok(())
}

fn check_label(field: &'static str, value: Option<String>) -> Result<Option<Box<str>>, InvalidInput> {
    match value {
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() > MAX_NAME_LEN => Err(InvalidInput::new(
            field,
            &v,
            format!("must be at most {MAX_NAME_LEN} bytes"),
        )),
        Some(v) if v.chars().any(char::is_control) => Err(InvalidInput::new(
            field,
            &v,
            "must not contain control characters",
        )),
        other => Ok(other.map(String::into_boxed_str)),
    }
}

/// Builds a validated [`Instance`]; see [`Instance::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct InstanceBuilder {
    service: String,
    addr: String,
    id: Option<String>,
    metadata: Metadata,
    weight: u32,
    zone: Option<String>,
    version: Option<String>,
}

impl InstanceBuilder {
    /// Sets the instance id; without one, [`InstanceId::random`] is used.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// Adds one metadata label.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
    /// Replaces all metadata labels.
    pub fn metadata_map(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
    /// Sets the weight (default 1; 0 is refused by `build`).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
    /// Sets the zone.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }
    /// Sets the version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Validates every field and builds the instance; the error names the first field
    /// that breaks its rule.
    pub fn build(self) -> Result<Instance, InvalidInput> {
        check_metadata(&self.metadata)?;
        Ok(Instance {
            service: ServiceName::new(self.service)?,
            id: match self.id {
                Some(id) => InstanceId::new(id)?,
                None => InstanceId::random(),
            },
            addr: Address::new(self.addr)?,
            weight: check_weight(self.weight)?,
            labels: Labels {
                metadata: self.metadata,
                zone: check_label("zone", self.zone)?,
                version: check_label("version", self.version)?,
                key: None,
            }
            .boxed(),
        })
    }
}

/// A change to an instance's mutable fields, applied in place by
/// [`Registration::update`](crate::Registration::update). `None` leaves a field as it is;
/// `Some(None)` clears a zone or version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct InstanceUpdate {
    /// New metadata, replacing the old labels.
    pub metadata: Option<Metadata>,
    /// New weight.
    pub weight: Option<u32>,
    /// New zone.
    pub zone: Option<Option<String>>,
    /// New version.
    pub version: Option<Option<String>>,
}

impl InstanceUpdate {
    /// An update that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Replaces the metadata.
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }
    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }
    /// Sets or clears the zone.
    pub fn zone(mut self, zone: Option<String>) -> Self {
        self.zone = Some(zone);
        self
    }
    /// Sets or clears the version.
    pub fn version(mut self, version: Option<String>) -> Self {
        self.version = Some(version);
        self
    }
}

/// The native JSON shape of an instance.
#[derive(Serialize, Deserialize)]
struct InstanceRepr {
    service: String,
    id: String,
    addr: String,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

fn default_weight() -> u32 {
    1
}

impl TryFrom<InstanceRepr> for Instance {
    type Error = InvalidInput;
    fn try_from(r: InstanceRepr) -> Result<Self, Self::Error> {
        let mut builder = Instance::builder(r.service, r.addr)
            .id(r.id)
            .metadata_map(r.metadata)
            .weight(r.weight);
        builder.zone = r.zone;
        builder.version = r.version;
        builder.build()
    }
}

impl From<Instance> for InstanceRepr {
    fn from(i: Instance) -> Self {
        let labels = i.labels.map(|l| *l).unwrap_or_default();
        InstanceRepr {
            service: i.service.into(),
            id: i.id.into(),
            addr: i.addr.into(),
            metadata: labels.metadata,
            weight: i.weight.get(),
            zone: labels.zone.map(String::from),
            version: labels.version.map(String::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_the_key_rules() {
        for good in ["echo", "user.rpc", "a_b-c", "X1"] {
            ServiceName::new(good).unwrap();
        }
        let cases = [
            ("", "must not be empty"),
            ("a/b", "'/' is not allowed"),
            ("a b", "' ' is not allowed"),
            ("..", "must not be `.` or `..`"),
            ("é", "'é' is not allowed"),
        ];
        for (bad, rule) in cases {
            let err = ServiceName::new(bad).unwrap_err();
            assert_eq!(err.field, "service name");
            assert!(err.to_string().contains(rule), "{err}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(ServiceName::new(long).unwrap_err().rule.contains("at most 128"));
    }

    #[test]
    fn instance_ids_allow_addresses_but_not_slashes() {
        InstanceId::new("10.0.0.5:8080").unwrap();
        InstanceId::new("[::1]:80").unwrap();
        let err = InstanceId::new("a/b").unwrap_err();
        assert_eq!(err.field, "instance id");
    }

    #[test]
    fn addresses_are_host_port_or_uri() {
        for good in [
            "10.0.0.5:8080",
            "[::1]:50051",
            "svc.local:80",
            "http://10.0.0.5:8080",
            "grpc://10.0.0.5:9000/path",
            "https://example.com",
        ] {
            Address::new(good).unwrap();
        }
        let cases = [
            ("", "must not be empty"),
            ("10.0.0.5", "must be `host:port`"),
            ("10.0.0.5:0", "port from 1 to 65535"),
            ("10.0.0.5:99999", "port from 1 to 65535"),
            (":80", "must have a host"),
            ("::1:80", "brackets"),
            ("a b:80", "white space"),
            ("http://", "without a host"),
            ("1http://x:80", "scheme"),
        ];
        for (bad, rule) in cases {
            let err = Address::new(bad).unwrap_err();
            assert_eq!(err.field, "address");
            assert!(err.to_string().contains(rule), "{bad}: {err}");
        }
        assert_eq!(Address::new("http://u@h:1/x").unwrap().authority(), "h:1");
        assert_eq!(Address::new("h:1").unwrap().authority(), "h:1");
    }

    #[test]
    fn weight_zero_is_refused() {
        let err = Instance::builder("s", "h:1").weight(0).build().unwrap_err();
        assert_eq!(err.field, "weight");
        assert!(err.to_string().contains("at least 1"));
    }

    #[test]
    fn native_json_round_trips_and_validates() {
        let instance = Instance::builder("echo", "127.0.0.1:7001")
            .id("e1")
            .metadata("k", "v")
            .weight(3)
            .zone("z1")
            .build()
            .unwrap();
        let json = serde_json::to_string(&instance).unwrap();
        assert_eq!(
            json,
            r#"{"service":"echo","id":"e1","addr":"127.0.0.1:7001","metadata":{"k":"v"},"weight":3,"zone":"z1"}"#
        );
        assert_eq!(serde_json::from_str::<Instance>(&json).unwrap(), instance);
        let bad = r#"{"service":"echo","id":"e1","addr":"nope"}"#;
        assert!(serde_json::from_str::<Instance>(bad).is_err());
    }

    #[test]
    fn clearing_every_label_compares_equal_to_never_having_one() {
        let plain = Instance::builder("s", "h:1").id("i").build().unwrap();
        let labelled = plain
            .updated(
                &InstanceUpdate::new()
                    .zone(Some("z".into()))
                    .version(Some("1".into())),
            )
            .unwrap();
        assert_ne!(plain, labelled);
        let cleared = labelled
            .updated(&InstanceUpdate::new().zone(None).version(None))
            .unwrap();
        assert_eq!(plain, cleared);
        assert!(cleared.metadata().is_empty());
    }

    #[test]
    fn update_keeps_identity_and_validates() {
        let instance = Instance::builder("s", "h:1").id("i").build().unwrap();
        let next = instance
            .updated(&InstanceUpdate::new().weight(5).zone(Some("z".into())))
            .unwrap();
        assert_eq!(next.weight(), 5);
        assert_eq!(next.zone(), Some("z"));
        assert_eq!(next.id(), instance.id());
        assert!(instance.updated(&InstanceUpdate::new().weight(0)).is_err());
    }
}
