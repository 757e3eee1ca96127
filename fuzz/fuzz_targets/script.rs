//! `cargo fuzz run script`: see `ioregionfd_model_fuzz::script` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz::script::run(data));
