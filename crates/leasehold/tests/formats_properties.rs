//! Properties of every format: decode(encode(x)) keeps what the format can carry (and
//! each test says what it drops), and no input, however broken, makes a decoder panic.

use leasehold::codec::{Codec, KeyContext, NativeCodec};
use leasehold::formats::{
    CuratorCodec, EtcdNamingCodec, GoKitCodec, GoKitZkCodec, GoZeroCodec, KratosCodec, VERSION_KEY,
    WEIGHT_KEY, ZONE_KEY,
};
use leasehold::{Instance, Metadata, ServiceName};
use proptest::prelude::*;

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,12}(\\.[a-z0-9]{1,6}){0,2}",
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        Just("[::1]".to_owned()),
        Just("[fe80::1:2]".to_owned()),
    ]
}

fn host_port() -> impl Strategy<Value = String> {
    (host(), 1..=u16::MAX).prop_map(|(h, p)| format!("{h}:{p}"))
}

/// `host:port`, or a URI with one of `schemes`, a port and maybe a path.
fn address(schemes: &'static [&'static str]) -> impl Strategy<Value = String> {
    let uri = (
        prop::sample::select(schemes),
        host_port(),
        prop::option::of("/[a-z0-9]{1,8}"),
    )
        .prop_map(|(s, hp, path)| format!("{s}://{hp}{}", path.unwrap_or_default()));
    prop_oneof![host_port(), uri]
}

/// Metadata without the keys the formats reserve for weight, zone and version, or
/// Curator's `@class`.
fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::btree_map("[a-z][a-z0-9_.-]{0,10}", "\\PC{0,16}", 0..4).prop_map(|mut m| {
        for reserved in [WEIGHT_KEY, ZONE_KEY, VERSION_KEY, "payload"] {
            m.remove(reserved);
        }
        m
    })
}

fn instance(schemes: &'static [&'static str]) -> impl Strategy<Value = Instance> {
    (
        "[a-z][a-z0-9_-]{0,15}",
        "[A-Za-z0-9][A-Za-z0-9._:@-]{0,30}",
        address(schemes),
        metadata(),
        1..1000u32,
        prop::option::of("[a-z0-9-]{1,12}"),
        prop::option::of("v[0-9]\\.[0-9]{1,2}"),
    )
        .prop_map(|(service, id, addr, metadata, weight, zone, version)| {
            let mut b = Instance::builder(service, addr)
                .id(id)
                .metadata_map(metadata)
                .weight(weight);
            if let Some(zone) = zone {
                b = b.zone(zone);
            }
            if let Some(version) = version {
                b = b.version(version);
            }
            b.build().expect("the strategy makes valid instances")
        })
}

/// Encodes `instance` and decodes it back from the key the codec gives it.
fn round_trip(codec: &dyn Codec, instance: &Instance, context: &KeyContext) -> Instance {
    let key = codec.instance_key(instance, context);
    let value = codec.encode(instance).expect("encode");
    codec.decode(instance.service(), &key, &value).expect("decode")
}

/// The instance as a format that carries only an address and id gives it back.
fn address_only(instance: &Instance, id: &str, addr: &str) -> Instance {
    Instance::builder(instance.service().as_str(), addr)
        .id(id)
        .build()
        .unwrap()
}

const ANY_SCHEME: &[&str] = &["http", "https", "grpc", "tcp"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn native_keeps_everything(x in instance(ANY_SCHEME)) {
        prop_assert_eq!(round_trip(&NativeCodec, &x, &KeyContext::default()), x);
    }

    /// go-kit keeps the id (the key) and the address exactly; drops the rest.
    #[test]
    fn go_kit_keeps_id_and_address(x in instance(ANY_SCHEME)) {
        let back = round_trip(&GoKitCodec, &x, &KeyContext::lease(1));
        prop_assert_eq!(back, address_only(&x, x.id().as_str(), x.addr().as_str()));
    }

    /// go-kit on ZooKeeper keeps the address; the id is the node name ZooKeeper gives.
    #[test]
    fn go_kit_zk_keeps_the_address(x in instance(ANY_SCHEME), seq in 0..10_000_000u32) {
        let codec = GoKitZkCodec;
        let node = format!("_c_0123456789abcdef0123456789abcdef-{}{seq:010}", codec.instance_key(&x, &KeyContext::default()));
        let back = codec.decode(x.service(), &node, &codec.encode(&x).unwrap()).unwrap();
        prop_assert_eq!(back, address_only(&x, &node, x.addr().as_str()));
    }

    /// go-zero keeps the address's host:port; the id is the lease id; drops the rest.
    #[test]
    fn go_zero_keeps_host_port(x in instance(ANY_SCHEME), lease in 1..i64::MAX) {
        let back = round_trip(&GoZeroCodec::new(), &x, &KeyContext::lease(lease));
        prop_assert_eq!(back, address_only(&x, &lease.to_string(), x.addr().authority()));
    }

    /// etcd naming keeps everything but a URI's scheme and path.
    #[test]
    fn etcd_naming_keeps_all_but_the_uri(x in instance(ANY_SCHEME)) {
        let back = round_trip(&EtcdNamingCodec, &x, &KeyContext::default());
        let expected = Instance::builder(x.service().as_str(), x.addr().authority())
            .id(x.id().as_str())
            .metadata_map(x.metadata().clone())
            .weight(x.weight());
        let expected = match (x.zone(), x.version()) {
            (Some(z), Some(v)) => expected.zone(z).version(v),
            (Some(z), None) => expected.zone(z),
            (None, Some(v)) => expected.version(v),
            (None, None) => expected,
        };
        prop_assert_eq!(back, expected.build().unwrap());
    }

    /// Curator keeps everything: a URI address rides in the uriSpec.
    #[test]
    fn curator_keeps_everything(x in instance(ANY_SCHEME), time in 0..i64::MAX, compatible in any::<bool>()) {
        let codec = CuratorCodec::new().registration_time_utc(time).compatible_serialization(compatible);
        prop_assert_eq!(round_trip(&codec, &x, &KeyContext::default()), x);
    }

    /// Kratos keeps everything but the address's scheme: an address decodes as the
    /// host:port of its endpoint with the codec's scheme.
    #[test]
    fn kratos_keeps_all_but_the_scheme(x in instance(&["grpc"])) {
        let back = round_trip(&KratosCodec::new(), &x, &KeyContext::default());
        prop_assert_eq!(back.addr().as_str(), x.addr().authority());
        prop_assert_eq!((back.id(), back.metadata(), back.weight()), (x.id(), x.metadata(), x.weight()));
        prop_assert_eq!((back.zone(), back.version()), (x.zone(), x.version()));
    }

    /// No bytes make a decoder panic, and whatever decodes is a valid instance of the
    /// service asked for.
    #[test]
    fn arbitrary_bytes_never_panic(key in "\\PC{0,40}|[^/]{0,200}", value in prop::collection::vec(any::<u8>(), 0..256)) {
        check_all_decoders(&key, &value)?;
    }

    /// Nor does a valid value with bytes flipped, cut short or spliced, which reaches
    /// deeper into the JSON decoders than random bytes do.
    #[test]
    fn damaged_values_never_panic(
        x in instance(ANY_SCHEME),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        for codec in codecs() {
            let Ok(mut value) = codec.encode(&x) else { continue };
            for (at, byte) in &edits {
                let i = at.index(value.len());
                value[i] = *byte;
            }
            check_all_decoders(x.id().as_str(), &value)?;
            value.truncate(cut.index(value.len() + 1));
            check_all_decoders(x.id().as_str(), &value)?;
        }
    }
}

fn codecs() -> Vec<Box<dyn Codec>> {
    vec![
        Box::new(NativeCodec),
        Box::new(GoKitCodec),
        Box::new(GoKitZkCodec),
        Box::new(GoZeroCodec::new()),
        Box::new(EtcdNamingCodec),
        Box::new(CuratorCodec::new()),
        Box::new(KratosCodec::new()),
    ]
}

fn check_all_decoders(key: &str, value: &[u8]) -> Result<(), TestCaseError> {
    let service = ServiceName::new("svc").unwrap();
    for codec in codecs() {
        match codec.decode(&service, key, value) {
            Ok(found) => prop_assert_eq!(found.service(), &service),
            Err(e) => {
                prop_assert_eq!(
                    (e.format, e.action, e.key.as_str()),
                    (codec.name(), "decode", key)
                );
                prop_assert!(!e.reason.is_empty());
            }
        }
    }
    Ok(())
}
