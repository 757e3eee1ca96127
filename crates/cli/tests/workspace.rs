// SPDX-License-Identifier: MIT OR Apache-2.0
//! The main package lists its tests (`autotests = false`, so that `tests/conform_suite.rs`, a test
//! of this crate's binary, is built here only): every file of its `tests/` must be a test target
//! of the main package or of this crate, or `cargo test` would silently skip it.

use std::path::Path;

#[test]
fn every_file_of_the_main_tests_directory_is_a_test_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let main = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let cli = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).expect("cli manifest");
    let declared_in_main = |stem: &str| {
        main.split("[[test]]").skip(1).any(|section| {
            let section = section.split("\n[").next().unwrap_or("");
            section.lines().any(|l| l.trim() == format!("name = \"{stem}\""))
        })
    };
    let declared_here = |stem: &str| cli.contains(&format!("path = \"../../tests/{stem}.rs\""));
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root.join("tests")).expect("tests/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("a file name").to_string();
        if !declared_in_main(&stem) && !declared_here(&stem) {
            missing.push(format!("tests/{stem}.rs"));
        }
    }
    assert!(missing.is_empty(), "not a test target of Cargo.toml or crates/cli/Cargo.toml: {missing:?}");
}
