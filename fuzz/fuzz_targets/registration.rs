//! `cargo fuzz run registration`: see `ioregionfd_model_fuzz_targets::registration` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz_targets::registration::run(data));
