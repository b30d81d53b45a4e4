//! The `leasehold` binary: bad input, the required registry, `ls`, `register`,
//! `watch`, `deregister`, on the in-process registry.

mod support;

use nix::sys::signal::Signal;
use serde_json::Value;

use support::{leasehold, run, Running};

/// Bad input exits 2 with one line on stderr that names the problem, before any
/// registry is contacted.
#[test]
fn bad_input_is_one_line_naming_it_and_exit_2() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["ls", "--bogus"], &["--bogus"]),
        (
            &["--registry", "etcd//127.0.0.1:2379", "ls"],
            &["--registry", "etcd//127.0.0.1:2379"],
        ),
        (
            &["--registry", "etcd://a:1,,b:2", "ls"],
            &["--registry", "empty host"],
        ),
        (
            &["--registry", "consul://127.0.0.1:8500", "ls"],
            &["unknown scheme \"consul\"", "memory://"],
        ),
        (
            &["--registry", "memory://?color=red", "ls"],
            &["unknown parameter", "color"],
        ),
        (
            &["register", "bad/name", "127.0.0.1:7001"],
            &["service name", "bad/name", "'/'"],
        ),
        (&["register", "echo", "localhost"], &["address", "localhost"]),
        (&["register", "echo", "127.0.0.1:0"], &["address", "port"]),
        (
            &["register", "echo", "127.0.0.1:7001", "--id", "a b"],
            &["instance id"],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--weight", "0"],
            &["weight", "at least 1"],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--weight", "-3"],
            &["--weight"],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--meta", "novalue"],
            &["--meta", "KEY=VALUE"],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--meta", "=v"],
            &["--meta", "KEY=VALUE"],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--ttl", "10 parsecs"],
            &["--ttl", "10 parsecs"],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--ttl", "500ms"],
            &["ttl", "at least 1s"],
        ),
        (&["watch", "bad name"], &["service name"]),
        (&["deregister", "echo", "bad/id"], &["instance id"]),
        (&["frobnicate"], &["frobnicate"]),
        // Typos keep clap's suggestion of the right spelling.
        (&["lss"], &["'lss'", "tip:", "'ls'"]),
        (
            &["--registry", "memory://", "ls", "--jsno"],
            &["'--jsno'", "tip:", "'--json'"],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--metadata", "a=b"],
            &["'--metadata'", "tip:", "'--meta'"],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--check", "ftp://h:1"],
            &["--check", "unknown scheme \"ftp\""],
        ),
        (
            &["register", "echo", "127.0.0.1:7001", "--check-interval", "1s"],
            &["--check"],
        ),
        // No registry: a usage error that shows the URL forms, for every command but the demo.
        (
            &["ls"],
            &[
                "no registry given",
                "--registry",
                "LEASEHOLD_REGISTRY",
                "etcd://127.0.0.1:2379",
            ],
        ),
        (&["register", "echo", "127.0.0.1:7001"], &["no registry given"]),
        (&["watch", "echo"], &["no registry given"]),
        (&["deregister", "echo", "e1"], &["no registry given"]),
        (&["drain", "echo", "e1"], &["no registry given"]),
        (&["ui"], &["no registry given"]),
        // A format with no drain markers names itself.
        (
            &["--registry", "memory://?format=go-kit", "drain", "echo", "e1"],
            &["not supported", "format go-kit", "native"],
        ),
    ];
    for (args, needles) in cases {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: wrote to stdout");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {stderr:?} does not name {needle:?}"
            );
        }
    }
}

#[test]
fn the_registry_url_also_comes_from_the_environment() {
    let output = leasehold(&["ls"])
        .env("LEASEHOLD_REGISTRY", "zoo://h:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown scheme \"zoo\""), "{stderr}");
}

#[test]
fn ls_json_on_an_empty_registry_is_an_empty_array() {
    for args in [
        &["--registry", "memory://", "ls", "--json"][..],
        &["--registry", "memory://", "ls", "echo", "--json"],
        &["--registry", "memory://x", "ls", "--json"],
    ] {
        let output = run(args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
        assert_eq!(parsed, Value::Array(vec![]), "{args:?}");
    }
    let table = run(&["--registry", "memory://", "ls"]);
    assert!(table.status.success());
    assert_eq!(String::from_utf8_lossy(&table.stdout).trim(), "no services");
}

#[test]
fn deregistering_a_missing_instance_is_a_runtime_error() {
    let output = run(&["--registry", "memory://", "deregister", "echo", "e1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("echo/e1") && stderr.contains("no such instance"),
        "{stderr}"
    );
}

/// `register` holds the registration, prints its states, and on SIGTERM or SIGINT
/// deregisters and exits 0.
#[test]
fn register_prints_states_and_deregisters_on_a_signal() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut register = Running::spawn(&[
            "--registry",
            "memory://",
            "register",
            "echo",
            "127.0.0.1:7001",
            "--id",
            "e1",
            "--meta",
            "color=blue",
            "--weight",
            "3",
            "--zone",
            "z1",
            "--version",
            "1.2",
            "--ttl",
            "2s",
        ]);
        let first = register.next_line();
        assert!(
            first.contains("echo/e1: registering 127.0.0.1:7001 with ttl 2s"),
            "{first}"
        );
        assert_eq!(register.next_line(), "echo/e1: registered");
        register.signal(signal);
        let (code, seen) = register.wait();
        assert_eq!(code, Some(0), "{signal}: {seen:#?}");
        let tail: Vec<&str> = seen[seen.len() - 2..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                format!("echo/e1: {signal}: deregistering").as_str(),
                "echo/e1: deregistered"
            ]
        );
    }
}

#[test]
fn watch_json_starts_with_a_snapshot_event() {
    let mut watch = Running::spawn(&["--registry", "memory://", "watch", "echo", "--json"]);
    let first: Value = serde_json::from_str(&watch.next_line()).expect("a JSON line");
    assert_eq!(first["event"], "snapshot");
    let at = first["at"].as_str().expect("an `at` timestamp");
    humantime::parse_rfc3339(at).expect("RFC 3339");
    assert_eq!(first["service"], "echo");
    assert_eq!(first["live"], true);
    assert_eq!(first["instances"], Value::Array(vec![]));
    watch.signal(Signal::SIGTERM);
    let (code, seen) = watch.wait();
    assert_eq!(code, Some(0), "{seen:#?}");
}

#[test]
fn help_says_what_each_command_does() {
    let output = run(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for command in [
        "register",
        "ls",
        "watch",
        "deregister",
        "drain",
        "undrain",
        "ui",
        "demo",
        "etcd://",
        "LEASEHOLD_REGISTRY",
    ] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
}

/// Text lines of `watch` start with the time, as `--json` lines carry `at`.
#[test]
fn watch_lines_start_with_a_timestamp() {
    let mut watch = Running::spawn(&["--registry", "memory://", "watch", "echo"]);
    let first = watch.next_line();
    let (at, rest) = first.split_once(' ').expect("a timestamp, then the line");
    humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{first}: {e}"));
    assert_eq!(rest, "echo: 0 instances (live)");
    watch.signal(Signal::SIGTERM);
    let (code, seen) = watch.wait();
    assert_eq!(code, Some(0), "{seen:#?}");
}

/// A format that cannot carry a field given to `register` says so on stderr, and the
/// instance is registered all the same.
#[test]
fn register_warns_of_fields_the_format_drops() {
    let registered = |url: &str| {
        let mut register = Running::spawn(&[
            "--registry",
            url,
            "register",
            "echo",
            "127.0.0.1:7001",
            "--id",
            "e1",
            "--meta",
            "color=blue",
            "--weight",
            "3",
        ]);
        let stderr = register.stderr();
        register.wait_for_line("echo/e1: registered");
        register.signal(Signal::SIGTERM);
        let (code, seen) = register.wait();
        assert_eq!(code, Some(0), "{seen:#?}");
        let stderr = stderr.lock().unwrap().clone();
        stderr
    };
    let stderr = registered("memory://?format=go-kit");
    assert!(
        stderr.contains("the go-kit format cannot carry --meta, --weight"),
        "{stderr}"
    );
    assert!(!stderr.contains("--id"), "the go-kit key keeps the id: {stderr}");
    let stderr = registered("memory://");
    assert!(
        !stderr.contains("warning"),
        "the native format carries everything: {stderr}"
    );
}
