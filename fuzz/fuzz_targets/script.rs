//! `cargo fuzz run script`: see `ioregionfd_model_fuzz_targets::script` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz_targets::script::run(data));
