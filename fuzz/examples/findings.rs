//! What `registration` inputs find: `cargo run --release --manifest-path fuzz/Cargo.toml
//! --example findings -- DIR...` runs every input of the directories (set
//! `IOREGIONFD_FUZZ_DESIGN` to keep them to one design) and prints, per design, how many inputs
//! showed each invariant's violation, then every distinct violation (its text with numbers
//! blanked) with the shortest input that shows it, as a script.

use std::collections::BTreeMap;

use ioregionfd_model_fuzz_targets::registration::{execute, mechanism, script_of};

fn main() {
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for dir in std::env::args().skip(1) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            eprintln!("findings: cannot read {dir}");
            std::process::exit(2);
        };
        inputs.extend(entries.flatten().filter_map(|e| std::fs::read(e.path()).ok()));
    }
    // per design: inputs per invariant id, and the shortest input per mechanism
    let mut by_id: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    let mut shortest: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for data in &inputs {
        let summary = execute(data);
        let Some(design) = summary.design else { continue };
        let design = design.to_string();
        *runs.entry(design.clone()).or_default() += 1;
        let mut ids = summary.violations.clone();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            *by_id.entry(design.clone()).or_default().entry(id).or_default() += 1;
        }
        for text in &summary.texts {
            let key = (design.clone(), mechanism(text));
            if shortest.get(&key).is_none_or(|best| best.len() > data.len()) {
                shortest.insert(key, data.clone());
            }
        }
    }
    for (design, n) in &runs {
        println!("== {design}: {n} inputs; inputs showing each invariant: {:?}", by_id.get(design));
    }
    for ((design, mechanism), data) in &shortest {
        println!("\n--- {design}: {mechanism}\n{}", script_of(data));
    }
}
