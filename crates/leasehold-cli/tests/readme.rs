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
