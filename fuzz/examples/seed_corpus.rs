//! Writes the seed corpus of every target: `cargo run --manifest-path fuzz/Cargo.toml --example
//! seed-corpus [DIR]` fills `DIR/TARGET/NAME` (default `fuzz/seed-corpus`, the committed one).
//! `crates/fuzz-targets/tests/fuzz_replay.rs` checks that the committed files are what this
//! program writes.

use std::io::Write;
use std::path::PathBuf;

fn main() {
    let root = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        ioregionfd_model_fuzz_targets::repo_root().join(ioregionfd_model_fuzz_targets::SEED_CORPUS_DIR)
    });
    for target in &ioregionfd_model_fuzz_targets::TARGETS {
        let dir = root.join(target.name);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("seed-corpus: cannot create {}: {e}", dir.display());
            std::process::exit(1);
        }
        let seeds = (target.seeds)();
        for (name, data) in &seeds {
            let path = dir.join(name);
            if let Err(e) = std::fs::write(&path, data) {
                eprintln!("seed-corpus: cannot write {}: {e}", path.display());
                std::process::exit(1);
            }
        }
        // a closed stdout (`| head`) is no reason to stop writing the corpus
        let _ = writeln!(std::io::stdout(), "{}: {} seeds in {}", target.name, seeds.len(), dir.display());
    }
}
