//! Every format against values as the frameworks themselves write them: decode theirs,
//! encode ours byte for byte, and refuse what is malformed with an error that names the
//! format, the key and the problem.

use leasehold::codec::{Codec, KeyContext};
use leasehold::formats::{
    codec_for, foreign_id, CuratorCodec, EtcdNamingCodec, GoKitCodec, GoKitZkCodec, GoZeroCodec, GoZeroKey,
    KratosCodec, RegistryKind,
};
use leasehold::{Instance, NodeNaming, ServiceName};

fn service(name: &str) -> ServiceName {
    ServiceName::new(name).unwrap()
}

fn instance(service: &str, addr: &str, id: &str) -> leasehold::InstanceBuilder {
    Instance::builder(service, addr).id(id)
}

/// Decoding `value` fails, and the error names the codec, the key and `reason`.
fn refused(codec: &dyn Codec, service: &ServiceName, key: &str, value: &[u8], reason: &str) {
    let err = codec.decode(service, key, value).expect_err(&format!(
        "{} accepted {:?}",
        codec.name(),
        String::from_utf8_lossy(value)
    ));
    assert_eq!(
        (err.format, err.action, err.key.as_str()),
        (codec.name(), "decode", key)
    );
    let message = err.to_string();
    assert!(message.contains(reason), "{}: {message}", codec.name());
}

#[test]
fn go_kit_etcd_reads_go_kit_registrars_and_writes_raw_addresses() {
    let codec = GoKitCodec;
    let hello = service("hello");
    assert_eq!(codec.service_prefix("/services", &hello), "/services/hello/");

    // go-kit's README example: key = prefix + instance, value = instance.
    let found = codec.decode(&hello, "1.2.3.4:8080", b"1.2.3.4:8080").unwrap();
    assert_eq!(
        found,
        instance("hello", "1.2.3.4:8080", "1.2.3.4:8080").build().unwrap()
    );

    // A URL as both key suffix and value: the `/`s make a key no id can hold.
    let key = "http://10.0.0.5:8080";
    let found = codec.decode(&hello, key, b"http://10.0.0.5:8080").unwrap();
    assert_eq!(found.addr().as_str(), "http://10.0.0.5:8080");
    assert_eq!(found.id(), &foreign_id(key));
    assert!(found.id().as_str().starts_with("http:__10.0.0.5:8080-"));
    assert_eq!(
        (found.weight(), found.zone(), found.metadata().len()),
        (1, None, 0)
    );

    let ours = instance("hello", "http://10.0.0.5:8080", "h1")
        .metadata("dropped", "yes")
        .build()
        .unwrap();
    assert_eq!(codec.instance_key(&ours, &KeyContext::lease(7)), "h1");
    assert_eq!(codec.encode(&ours).unwrap(), b"http://10.0.0.5:8080");

    refused(&codec, &hello, "k", b"", "must not be empty");
    refused(&codec, &hello, "k", b"10.0.0.5", "host:port");
    refused(&codec, &hello, "k", b"\xff\xfe", "not UTF-8");
    refused(&codec, &hello, "k", b"10.0.0.5:8080\n", "white space");
}

#[test]
fn go_kit_zk_reads_protected_sequential_nodes() {
    let codec = GoKitZkCodec;
    let hello = service("hello");
    assert_eq!(codec.node_naming(), NodeNaming::ProtectedSequential);
    let ours = instance("hello", "10.0.0.5:8080", "ours").build().unwrap();
    assert_eq!(codec.instance_key(&ours, &KeyContext::default()), "");
    assert_eq!(codec.encode(&ours).unwrap(), b"10.0.0.5:8080");

    // go-zookeeper's CreateProtectedEphemeralSequential("/services/hello/", ...): the
    // guid as 32 hex digits, then the server's 10-digit sequence.
    let node = "_c_2d6cfbf4a0e0b0ac6e4c1d1f0b6f5a21-0000000012";
    let found = codec.decode(&hello, node, b"10.0.0.5:8080").unwrap();
    assert_eq!(found.id().as_str(), node);
    assert_eq!(found.addr().as_str(), "10.0.0.5:8080");

    refused(&codec, &hello, node, b"", "must not be empty");
    refused(&codec, &hello, node, b"\x00\x01", "control characters");
}

#[test]
fn go_zero_keys_are_lease_ids_at_the_etcd_root() {
    let codec = GoZeroCodec::new();
    let user = service("user.rpc");
    assert_eq!(codec.service_prefix("", &user), "user.rpc/");
    assert_eq!(codec.service_prefix("/prod", &user), "/prod/user.rpc/");

    // go-zero's Publisher: Put("user.rpc/<lease>", "<listenOn>") under the lease.
    let found = codec
        .decode(&user, "7587869950362034437", b"10.0.0.5:8080")
        .unwrap();
    assert_eq!(
        found,
        instance("user.rpc", "10.0.0.5:8080", "7587869950362034437")
            .build()
            .unwrap()
    );

    let ours = instance("user.rpc", "grpc://10.0.0.5:8080/ignored", "u1")
        .zone("dropped")
        .build()
        .unwrap();
    assert_eq!(
        codec.instance_key(&ours, &KeyContext::lease(7587869950362034437)),
        "7587869950362034437"
    );
    assert_eq!(codec.instance_key(&ours, &KeyContext::default()), "u1");
    assert_eq!(codec.encode(&ours).unwrap(), b"10.0.0.5:8080");
    let by_id = GoZeroCodec::new().key(GoZeroKey::InstanceId);
    assert_eq!(by_id.instance_key(&ours, &KeyContext::lease(7)), "u1");

    let portless = instance("user.rpc", "http://svc.local", "u2").build().unwrap();
    let err = codec.encode(&portless).unwrap_err();
    assert_eq!((err.format, err.action), ("go-zero", "encode"));
    assert!(err.reason.contains("no host:port"), "{err}");

    refused(&codec, &user, "1", b"user.rpc", "host:port");
    refused(&codec, &user, "1", b"10.0.0.5:0", "port from 1 to 65535");
}

#[test]
fn etcd_naming_reads_and_writes_endpoint_updates() {
    let codec = EtcdNamingCodec;
    let target = service("my-service");
    assert_eq!(codec.service_prefix("", &target), "my-service/");
    assert_eq!(codec.service_prefix("foo/bar", &target), "foo/bar/my-service/");

    // endpoints.Manager.AddEndpoint(ctx, "my-service/10.0.0.5:50051", Endpoint{Addr: ...}).
    let plain = br#"{"Op":0,"Addr":"10.0.0.5:50051","Metadata":null}"#;
    let found = codec.decode(&target, "10.0.0.5:50051", plain).unwrap();
    let expected = instance("my-service", "10.0.0.5:50051", "10.0.0.5:50051")
        .build()
        .unwrap();
    assert_eq!(found, expected);
    assert_eq!(codec.encode(&expected).unwrap(), plain);

    // Metadata is `any` in Go: a map[string]string, or anything else.
    let labelled = br#"{"Op":0,"Addr":"10.0.0.6:50051","Metadata":{"weight":"5","zone":"eu-1","version":"1.2","tags":["a","b"],"n":3,"gone":null}}"#;
    let found = codec.decode(&target, "e2", labelled).unwrap();
    assert_eq!(
        (found.weight(), found.zone(), found.version()),
        (5, Some("eu-1"), Some("1.2"))
    );
    assert_eq!(
        found.metadata().get("tags").map(String::as_str),
        Some(r#"["a","b"]"#)
    );
    assert_eq!(found.metadata().get("n").map(String::as_str), Some("3"));
    assert!(!found.metadata().contains_key("gone") && !found.metadata().contains_key("weight"));
    let scalar = br#"{"Op":0,"Addr":"10.0.0.6:50051","Metadata":"opaque"}"#;
    assert!(codec.decode(&target, "e3", scalar).unwrap().metadata().is_empty());

    // Go's decoder matches field names in any case and defaults a missing Op to Add.
    let lower = br#"{"addr":"10.0.0.7:50051","unknown":true}"#;
    assert_eq!(
        codec.decode(&target, "e4", lower).unwrap().addr().as_str(),
        "10.0.0.7:50051"
    );
    // A weight that is not a number stays a label and the weight is the default.
    let odd = br#"{"Op":0,"Addr":"10.0.0.8:50051","Metadata":{"weight":"heavy"}}"#;
    let found = codec.decode(&target, "e5", odd).unwrap();
    assert_eq!(
        (found.weight(), found.metadata()["weight"].as_str()),
        (1, "heavy")
    );

    let ours = instance("my-service", "grpc://10.0.0.9:50051", "e9")
        .metadata("a", "b")
        .weight(2)
        .build()
        .unwrap();
    assert_eq!(
        String::from_utf8(codec.encode(&ours).unwrap()).unwrap(),
        r#"{"Op":0,"Addr":"10.0.0.9:50051","Metadata":{"a":"b","weight":"2"}}"#
    );

    refused(
        &codec,
        &target,
        "k",
        br#"{"Op":1,"Addr":"10.0.0.5:50051"}"#,
        "deleted endpoint",
    );
    refused(
        &codec,
        &target,
        "k",
        br#"{"Op":7,"Addr":"10.0.0.5:50051"}"#,
        "Op is 7",
    );
    refused(
        &codec,
        &target,
        "k",
        br#"{"Op":0,"Addr":""}"#,
        "must not be empty",
    );
    refused(
        &codec,
        &target,
        "k",
        br#"{"Op":-1,"Addr":"h:1"}"#,
        "invalid value",
    );
    refused(&codec, &target, "k", b"10.0.0.5:50051", "invalid type");
    refused(&codec, &target, "k", b"garbage", "expected value");
    refused(&codec, &target, "k", br#"[1,2]"#, "invalid type");
}

#[test]
fn curator_reads_what_json_instance_serializer_writes() {
    let codec = CuratorCodec::new().registration_time_utc(1325129459728);
    let test = service("test");
    assert_eq!(codec.node_naming(), NodeNaming::Exact);
    assert_eq!(codec.service_prefix("/discovery", &test), "/discovery/test/");

    // Curator 5, a custom payload class and the uriSpec "{scheme}://{address}:{port}".
    let curator5 = concat!(
        r#"{"name":"test","id":"ca2fff8e-d756-480c-b59e-8297ff88624b","address":"10.20.30.40","#,
        r#""port":1234,"sslPort":null,"payload":{"@class":"com.example.InstanceDetails","#,
        r#""description":"From Test","weight":"4"},"registrationTimeUTC":1325129459728,"#,
        r#""serviceType":"DYNAMIC","uriSpec":{"parts":[{"value":"scheme","variable":true},"#,
        r#"{"value":"://","variable":false},{"value":"address","variable":true},"#,
        r#"{"value":":","variable":false},{"value":"port","variable":true}]},"enabled":true}"#
    );
    let found = codec
        .decode(&test, "ca2fff8e-d756-480c-b59e-8297ff88624b", curator5.as_bytes())
        .unwrap();
    let expected = instance(
        "test",
        "http://10.20.30.40:1234",
        "ca2fff8e-d756-480c-b59e-8297ff88624b",
    )
    .metadata("description", "From Test")
    .weight(4)
    .build()
    .unwrap();
    assert_eq!(found, expected);

    // Curator 2 (no `enabled`), a String payload, no uriSpec, an unknown field, SSL only.
    let curator2 = concat!(
        r#"{"name":"test","id":"bd4fff8e","address":"10.20.30.41","port":null,"sslPort":8443,"#,
        r#""payload":"From Test","registrationTimeUTC":1325129459728,"serviceType":"STATIC","#,
        r#""uriSpec":null,"futureField":{"x":[1]}}"#
    );
    let found = codec.decode(&test, "bd4fff8e", curator2.as_bytes()).unwrap();
    assert_eq!(found.addr().as_str(), "https://10.20.30.41:8443");
    assert_eq!(found.metadata()["payload"], "From Test");

    // The uriSpec wins when it builds a valid address; `{ssl-port}` and `{scheme}` follow sslPort.
    let spec = concat!(
        r#"{"name":"test","id":"c","address":"10.0.0.1","port":80,"sslPort":443,"#,
        r#""uriSpec":{"parts":[{"value":"scheme","variable":true},{"value":"://api.local:","variable":false},"#,
        r#"{"value":"ssl-port","variable":true},{"value":"/v1","variable":false}]}}"#
    );
    assert_eq!(
        codec.decode(&test, "c", spec.as_bytes()).unwrap().addr().as_str(),
        "https://api.local:443/v1"
    );
    // ...and address:port is used when it does not.
    let bad_spec = r#"{"name":"test","id":"d","address":"::1","port":80,"uriSpec":{"parts":[{"value":"nope","variable":true}]}}"#;
    assert_eq!(
        codec
            .decode(&test, "d", bad_spec.as_bytes())
            .unwrap()
            .addr()
            .as_str(),
        "[::1]:80"
    );

    // What we write: Curator's field order, a typed map payload, a literal uriSpec for URIs.
    let ours = instance("test", "https://[::1]:8443/api", "e1")
        .metadata("k", "v")
        .version("2.0")
        .build()
        .unwrap();
    let written = concat!(
        r#"{"name":"test","id":"e1","address":"::1","port":null,"sslPort":8443,"#,
        r#""payload":{"@class":"java.util.LinkedHashMap","k":"v","version":"2.0"},"#,
        r#""registrationTimeUTC":1325129459728,"serviceType":"DYNAMIC","#,
        r#""uriSpec":{"parts":[{"value":"https://[::1]:8443/api","variable":false}]},"enabled":true}"#
    );
    assert_eq!(String::from_utf8(codec.encode(&ours).unwrap()).unwrap(), written);
    assert_eq!(codec.decode(&test, "e1", written.as_bytes()).unwrap(), ours);
    let plain = instance("test", "10.0.0.5:8080", "e2").build().unwrap();
    let compatible = codec.compatible_serialization(true).encode(&plain).unwrap();
    assert_eq!(
        String::from_utf8(compatible).unwrap(),
        concat!(
            r#"{"name":"test","id":"e2","address":"10.0.0.5","port":8080,"sslPort":null,"payload":null,"#,
            r#""registrationTimeUTC":1325129459728,"serviceType":"DYNAMIC","uriSpec":null}"#
        )
    );

    refused(
        &codec,
        &test,
        "x",
        br#"{"name":"other","id":"x","address":"h","port":1}"#,
        "\"other\"",
    );
    refused(
        &codec,
        &test,
        "x",
        br#"{"name":"test","id":"x","address":"h","port":1,"enabled":false}"#,
        "disabled",
    );
    refused(
        &codec,
        &test,
        "x",
        br#"{"name":"test","id":"x","address":"h"}"#,
        "neither port nor sslPort",
    );
    refused(
        &codec,
        &test,
        "x",
        br#"{"name":"test","id":"x","port":1}"#,
        "no address",
    );
    refused(
        &codec,
        &test,
        "x",
        br#"{"name":"test","id":"x","address":"h","port":70000}"#,
        "port from 1 to 65535",
    );
    refused(
        &codec,
        &test,
        "x",
        br#"{"name":"test","id":"x","address":"h","port":"80"}"#,
        "invalid type",
    );
    refused(&codec, &test, "x", b"{", "EOF");
}

#[test]
fn kratos_picks_the_endpoint_by_scheme() {
    let codec = KratosCodec::new();
    let hello = service("helloworld");
    assert_eq!(
        codec.service_prefix("/microservices", &hello),
        "/microservices/helloworld/"
    );

    // Kratos' etcd registry: Put("/microservices/helloworld/<id>", json.Marshal(ServiceInstance)).
    let kratos = concat!(
        r#"{"id":"5c7ef0b0-6a3b-11ee-8c99-0242ac120002","name":"helloworld","version":"v1.0.0","#,
        r#""metadata":{"weight":"10","zone":"sh","app":"demo"},"#,
        r#""endpoints":["http://10.0.0.5:8000?isSecure=false","grpc://10.0.0.5:9000?isSecure=false"]}"#
    );
    let found = codec
        .decode(&hello, "5c7ef0b0-6a3b-11ee-8c99-0242ac120002", kratos.as_bytes())
        .unwrap();
    let expected = instance(
        "helloworld",
        "10.0.0.5:9000",
        "5c7ef0b0-6a3b-11ee-8c99-0242ac120002",
    )
    .version("v1.0.0")
    .weight(10)
    .zone("sh")
    .metadata("app", "demo")
    .build()
    .unwrap();
    assert_eq!(found, expected);
    let http = KratosCodec::with_scheme("http").unwrap();
    assert_eq!(
        http.decode(&hello, "k", kratos.as_bytes())
            .unwrap()
            .addr()
            .as_str(),
        "10.0.0.5:8000"
    );

    // A nil map and an empty version, as Go writes them; an id with characters ids refuse.
    let bare = r#"{"id":"host/1","name":"helloworld","version":"","metadata":null,"endpoints":["grpc://[::1]:9000"]}"#;
    let found = codec.decode(&hello, "host/1", bare.as_bytes()).unwrap();
    assert_eq!((found.addr().as_str(), found.version()), ("[::1]:9000", None));
    assert_eq!(found.id(), &foreign_id("host/1"));

    let ours = instance("helloworld", "10.0.0.5:9000", "e1").build().unwrap();
    assert_eq!(
        String::from_utf8(codec.encode(&ours).unwrap()).unwrap(),
        r#"{"id":"e1","name":"helloworld","version":"","metadata":null,"endpoints":["grpc://10.0.0.5:9000"]}"#
    );
    let uri = instance("helloworld", "http://10.0.0.5:8000", "e2")
        .weight(3)
        .build()
        .unwrap();
    assert_eq!(
        String::from_utf8(http.encode(&uri).unwrap()).unwrap(),
        r#"{"id":"e2","name":"helloworld","version":"","metadata":{"weight":"3"},"endpoints":["http://10.0.0.5:8000"]}"#
    );

    refused(
        &codec,
        &hello,
        "k",
        kratos.replace("grpc://", "tcp://").as_bytes(),
        "no grpc:// endpoint",
    );
    refused(
        &codec,
        &hello,
        "k",
        br#"{"id":"k","name":"helloworld","endpoints":null}"#,
        "no grpc:// endpoint",
    );
    refused(
        &codec,
        &hello,
        "k",
        br#"{"id":"k","name":"other","endpoints":["grpc://h:1"]}"#,
        "\"other\"",
    );
    refused(
        &codec,
        &hello,
        "k",
        br#"{"id":"k","name":"helloworld","endpoints":"grpc://h:1"}"#,
        "invalid type",
    );
    refused(
        &codec,
        &hello,
        "k",
        br#"{"id":"k","name":"helloworld","metadata":{"version":1},"endpoints":[]}"#,
        "no grpc://",
    );
}

#[test]
fn kratos_reads_and_writes_every_scheme_its_servers_register() {
    let hello = service("helloworld");
    // A Kratos app with a TLS gRPC server and a TLS HTTP server (`grpcs`, `https`), one
    // with plain servers, and one from before Kratos 2.2 that marked TLS with `isSecure`.
    let secure = concat!(
        r#"{"id":"k1","name":"helloworld","version":"v1.0.0","metadata":null,"#,
        r#""endpoints":["grpcs://10.0.0.5:9443","https://10.0.0.5:8443"]}"#
    );
    let plain = concat!(
        r#"{"id":"k2","name":"helloworld","version":"v1.0.0","metadata":null,"#,
        r#""endpoints":["grpc://10.0.0.6:9000","http://10.0.0.6:8000"]}"#
    );
    let legacy = concat!(
        r#"{"id":"k3","name":"helloworld","version":"","metadata":null,"#,
        r#""endpoints":["grpc://10.0.0.7:9000?isSecure=true","http://10.0.0.7:8000?isSecure=false"]}"#
    );
    let cases = [
        ("grpc", [None, Some("10.0.0.6:9000"), None]),
        ("grpcs", [Some("10.0.0.5:9443"), None, Some("10.0.0.7:9000")]),
        ("http", [None, Some("10.0.0.6:8000"), Some("10.0.0.7:8000")]),
        ("https", [Some("10.0.0.5:8443"), None, None]),
    ];
    for (scheme, expected) in cases {
        let codec = KratosCodec::with_scheme(scheme).unwrap();
        for (value, expected) in [secure, plain, legacy].into_iter().zip(expected) {
            match expected {
                Some(addr) => {
                    let found = codec.decode(&hello, "k", value.as_bytes()).unwrap();
                    assert_eq!(found.addr().as_str(), addr, "{scheme} in {value}");
                }
                // Skipped by discovery and counted, with the reason and the way out.
                None => refused(
                    &codec,
                    &hello,
                    "k",
                    value.as_bytes(),
                    &format!("no {scheme}:// endpoint among [\""),
                ),
            }
        }
        // Written as Kratos writes it, and read back.
        let ours = instance("helloworld", "10.0.0.8:7000", "e1").build().unwrap();
        let value = codec.encode(&ours).unwrap();
        assert_eq!(
            String::from_utf8(value.clone()).unwrap(),
            format!(
                r#"{{"id":"e1","name":"helloworld","version":"","metadata":null,"endpoints":["{scheme}://10.0.0.8:7000"]}}"#
            )
        );
        assert_eq!(codec.decode(&hello, "e1", &value).unwrap(), ours);
        let uri = instance("helloworld", &format!("{scheme}://10.0.0.8:7000"), "e2")
            .build()
            .unwrap();
        let back = codec.decode(&hello, "e2", &codec.encode(&uri).unwrap()).unwrap();
        assert_eq!(back.addr().as_str(), "10.0.0.8:7000");
    }

    // An address of another scheme is refused on write (it could not be read back).
    let http = instance("helloworld", "http://10.0.0.8:8000", "e3")
        .build()
        .unwrap();
    let err = KratosCodec::new().encode(&http).unwrap_err().to_string();
    assert!(err.contains("choose its scheme with ?scheme=http"), "{err}");
    assert!(refused_scheme("tcp").contains("grpc, grpcs, http, https"));
    assert_eq!(
        KratosCodec::with_scheme("HTTPS").unwrap().endpoint_scheme(),
        "https"
    );
}

fn refused_scheme(scheme: &str) -> String {
    KratosCodec::with_scheme(scheme).unwrap_err().to_string()
}

#[test]
fn kratos_scheme_comes_from_the_registry_url() {
    let layout = |url: &str| {
        leasehold::formats::layout_from_url(&url.parse().unwrap(), RegistryKind::Etcd, "/leasehold/services")
    };
    let ours = instance("helloworld", "10.0.0.8:8000", "e1").build().unwrap();
    let (codec, root) = layout("etcd://127.0.0.1:2379?format=kratos&scheme=http").unwrap();
    assert_eq!(root, "/microservices");
    assert!(String::from_utf8(codec.encode(&ours).unwrap())
        .unwrap()
        .contains(r#""endpoints":["http://10.0.0.8:8000"]"#));
    let (codec, _) = layout("etcd://127.0.0.1:2379?format=kratos").unwrap();
    assert!(String::from_utf8(codec.encode(&ours).unwrap())
        .unwrap()
        .contains(r#""endpoints":["grpc://10.0.0.8:8000"]"#));
    let err = layout("etcd://127.0.0.1:2379?format=kratos&scheme=tcp")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("format kratos has no scheme \"tcp\"; grpc, grpcs, http, https"),
        "{err}"
    );
    let err = layout("etcd://127.0.0.1:2379?format=go-kit&scheme=http")
        .unwrap_err()
        .to_string();
    assert!(err.contains("only format kratos takes a scheme"), "{err}");
}

#[test]
fn codecs_from_names_match_their_types() {
    let pairs = [
        ("native", RegistryKind::Etcd, "native"),
        ("go-kit", RegistryKind::Etcd, "go-kit"),
        ("go-kit", RegistryKind::ZooKeeper, "go-kit"),
        ("go-zero", RegistryKind::Etcd, "go-zero"),
        ("etcd-naming", RegistryKind::Etcd, "etcd-naming"),
        ("curator", RegistryKind::ZooKeeper, "curator"),
        ("kratos", RegistryKind::Etcd, "kratos"),
    ];
    for (name, kind, codec_name) in pairs {
        assert_eq!(codec_for(name, kind).unwrap().name(), codec_name);
    }
    let err = codec_for("consul", RegistryKind::Etcd).unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown format \"consul\"; known formats: native, go-kit, go-zero, etcd-naming, curator, kratos"
    );
}
