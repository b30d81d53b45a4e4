//! The README's library example is `examples/library.rs`, which `cargo test` and
//! `cargo clippy --all-targets` compile; this keeps the two identical.

#[test]
fn the_readme_example_is_the_compiled_example() {
    let readme = include_str!("../../../README.md");
    let example = include_str!("../examples/library.rs");
    let block = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a rust code block");
    assert!(
        example.ends_with(block),
        "README.md's rust block and examples/library.rs differ"
    );
}

/// The README's metrics table is the one in `leasehold::metrics`, row for row.
#[test]
fn the_readme_metrics_table_is_the_documented_one() {
    let readme = include_str!("../../../README.md");
    let module = include_str!("../../leasehold/src/metrics.rs");
    let rows = |text: &str, prefix: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter(|l| l.starts_with("| `leasehold_"))
            .map(str::to_owned)
            .collect()
    };
    let documented = rows(module, "//! ");
    assert_eq!(documented.len(), leasehold::metrics::ALL.len());
    assert_eq!(
        rows(readme, ""),
        documented,
        "README.md's metrics table differs from leasehold::metrics"
    );
}
