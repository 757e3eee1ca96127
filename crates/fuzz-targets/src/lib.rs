//! The fuzz targets of ioregionfd-model, as plain functions.
//!
//! Each target is a module with `run(data: &[u8])`, which panics when the target finds a defect
//! (that panic is what libFuzzer reports as a crash), and `seeds()`, the seed inputs generated
//! from the crate's unit and proptest cases. The cargo-fuzz crate (`fuzz/`, its own workspace)
//! wraps each `run` for libFuzzer (`fuzz/fuzz_targets/*.rs`); this crate does not depend on
//! libFuzzer, so its test `tests/fuzz_replay.rs` replays every committed corpus and regression file
//! through the same code on stable, in a plain `cargo test` of the repository.

pub mod registration;
pub mod scenario;
pub mod script;
pub mod uapi;
pub mod wire;

/// The golden scripts (`tests/golden/*.script`) by name: seeds of every target.
pub const GOLDEN_SCRIPTS: [(&str, &str); 8] = [
    ("coalesced", include_str!("../../../tests/golden/coalesced.script")),
    ("ioeventfd", include_str!("../../../tests/golden/ioeventfd.script")),
    ("parse-error", include_str!("../../../tests/golden/parse_error.script")),
    ("proposed", include_str!("../../../tests/golden/proposed.script")),
    ("quirks", include_str!("../../../tests/golden/quirks.script")),
    ("rfc-v3", include_str!("../../../tests/golden/rfc-v3.script")),
    ("seed", include_str!("../../../tests/golden/seed.script")),
    ("violation", include_str!("../../../tests/golden/violation.script")),
];

/// The committed seed corpus, `TARGET/NAME` under this directory of the repository. It is not
/// cargo-fuzz's default corpus directory (`fuzz/corpus/`, which `cargo fuzz run` and `cargo fuzz
/// cmin` write to), so a fuzzing run reads it without rewriting it.
pub const SEED_CORPUS_DIR: &str = "fuzz/seed-corpus";

/// The crashes kept as regressions, `TARGET/WHAT-IT-FOUND` under this directory of the repository.
pub const REGRESSIONS_DIR: &str = "fuzz/regressions";

/// One fuzz target: its name (the directory under [`SEED_CORPUS_DIR`] and [`REGRESSIONS_DIR`]),
/// its entry point and its seed inputs.
pub struct Target {
    /// The target's name, as `cargo fuzz run NAME` takes it.
    pub name: &'static str,
    /// Runs one input; panics on a defect.
    pub run: fn(&[u8]),
    /// Named seed inputs.
    pub seeds: fn() -> Vec<(String, Vec<u8>)>,
}

/// Every target.
pub const TARGETS: [Target; 5] = [
    Target { name: "registration", run: registration::run, seeds: registration::seeds },
    Target { name: "uapi", run: uapi::run, seeds: uapi::seeds },
    Target { name: "wire", run: wire::run, seeds: wire::seeds },
    Target { name: "script", run: script::run, seeds: script::seeds },
    Target { name: "scenario", run: scenario::run, seeds: scenario::seeds },
];

/// The design an input runs under: `IOREGIONFD_FUZZ_DESIGN` (`seed`, `rfc-v3` or `proposed`)
/// when set, so that a run can be kept to one design; otherwise the one `first_byte % 3` picks
/// (seed, rfc-v3, proposed). A value that names no design stops the process with a message.
pub fn design_of(first_byte: u8) -> ioregionfd_model::design::Design {
    use ioregionfd_model::design::Design;
    static FORCED: std::sync::OnceLock<Option<Design>> = std::sync::OnceLock::new();
    let forced = FORCED.get_or_init(|| {
        let name = std::env::var("IOREGIONFD_FUZZ_DESIGN").ok()?;
        let design = Design::from_name(&name);
        if design.is_none() {
            eprintln!("IOREGIONFD_FUZZ_DESIGN={name}: not a design (seed, rfc-v3 or proposed)");
            std::process::exit(2);
        }
        design
    });
    forced.unwrap_or(Design::ALL[usize::from(first_byte % 3)])
}

/// The repository's root (this crate is `crates/fuzz-targets/` in it): the seeds are made from
/// its files.
pub fn repo_root() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The files of `dir` whose extension is `ext`, as (stem, text), sorted by name; none when the
/// directory cannot be read.
pub fn read_dir_sorted(dir: &std::path::Path, ext: &str) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, String)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_string();
            Some((stem, std::fs::read_to_string(&p).ok()?))
        })
        .collect();
    out.sort();
    out
}

/// An xorshift generator for the targets' pseudo-random tests.
#[cfg(test)]
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// Every target's seeds have unique, file-name-safe names and run clean.
    #[test]
    fn seeds_pass() {
        for target in &TARGETS {
            let seeds = (target.seeds)();
            assert!(!seeds.is_empty(), "{}: no seeds", target.name);
            let mut names: Vec<&str> = seeds.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), seeds.len(), "{}: seed names must be unique", target.name);
            for (name, data) in &seeds {
                assert!(name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{name}");
                (target.run)(data);
            }
        }
    }
}
