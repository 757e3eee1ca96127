//! `cargo fuzz run scenario`: see `ioregionfd_model_fuzz_targets::scenario` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz_targets::scenario::run(data));
