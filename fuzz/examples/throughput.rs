//! Measures how fast a target runs its inputs without libFuzzer and its instrumentation:
//! `cargo run --release --manifest-path fuzz/Cargo.toml --example throughput -- TARGET DIR...`
//! runs every file of the directories once (twice over when there are few) and prints inputs per
//! second, for comparison with the exec/s `cargo fuzz run` reports (docs/fuzzing.md).

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(name) = args.next() else {
        eprintln!("usage: throughput TARGET DIR...");
        std::process::exit(2);
    };
    let Some(target) = ioregionfd_model_fuzz_targets::TARGETS.iter().find(|t| t.name == name) else {
        eprintln!("throughput: no target {name}");
        std::process::exit(2);
    };
    let mut inputs = Vec::new();
    for dir in args {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("throughput: cannot read {dir}");
            std::process::exit(2);
        };
        for e in entries.flatten() {
            if let Ok(data) = std::fs::read(e.path()) {
                inputs.push(data);
            }
        }
    }
    if inputs.is_empty() {
        eprintln!("throughput: no inputs");
        std::process::exit(2);
    }
    let rounds = (20_000 / inputs.len()).max(1);
    let bytes: usize = inputs.iter().map(Vec::len).sum();
    let start = Instant::now();
    for _ in 0..rounds {
        for data in &inputs {
            (target.run)(data);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let runs = rounds * inputs.len();
    println!(
        "{name}: {runs} runs of {} inputs (mean {} bytes) in {secs:.2} s: {:.0} inputs/s",
        inputs.len(),
        bytes / inputs.len(),
        runs as f64 / secs
    );
}
