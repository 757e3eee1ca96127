//! Replays every fuzz target over its committed seed corpus (`fuzz/seed-corpus/TARGET/`) and regressions
//! (`fuzz/regressions/TARGET/`) on stable, through the same code the fuzzers run: the target
//! functions of this crate, which the cargo-fuzz crate (`fuzz/`) wraps for libFuzzer. A crash a
//! fuzzer found and that was committed as a regression fails here until it is fixed.
//!
//! Also checks that the committed seed corpus is what the seed generator writes now
//! (`cargo run --manifest-path fuzz/Cargo.toml --example seed-corpus` regenerates it).

use ioregionfd_model_fuzz_targets as fuzz;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

/// Runs `target` over every file of `dir`; returns how many ran. Every failing file is named.
fn replay(target: &fuzz::Target, dir: &Path) -> usize {
    let mut failed = Vec::new();
    let list = files(dir);
    for path in &list {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| (target.run)(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{}: {} of {} inputs crash: {failed:#?}", target.name, failed.len(), list.len());
    list.len()
}

#[test]
fn committed_corpus_and_regressions_replay_clean() {
    let root = fuzz::repo_root();
    for target in &fuzz::TARGETS {
        let corpus = replay(target, &root.join(fuzz::SEED_CORPUS_DIR).join(target.name));
        let regressions = replay(target, &root.join(fuzz::REGRESSIONS_DIR).join(target.name));
        println!("fuzz replay: {}: {corpus} corpus files, {regressions} regressions", target.name);
        assert!(corpus > 0, "{}: no committed corpus (run the seed-corpus generator)", target.name);
    }
}

#[test]
fn committed_seed_corpus_is_what_the_generator_writes() {
    let root = fuzz::repo_root();
    for target in &fuzz::TARGETS {
        let seeds = (target.seeds)();
        assert!(!seeds.is_empty(), "{}: no seeds", target.name);
        for (name, data) in seeds {
            let path = root.join(fuzz::SEED_CORPUS_DIR).join(target.name).join(&name);
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(committed == data, "{} is stale or missing: regenerate the seed corpus", path.display());
        }
    }
}

#[test]
fn every_golden_script_is_a_seed() {
    let dir = fuzz::repo_root().join("tests/golden");
    let mut on_disk: Vec<String> = files(&dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "script"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.replace('_', "-")))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = fuzz::GOLDEN_SCRIPTS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "crates/fuzz-targets/src/lib.rs GOLDEN_SCRIPTS must list every tests/golden/*.script");
}
