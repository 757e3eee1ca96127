//! `cargo fuzz run scenario`: see `ioregionfd_model_fuzz::scenario` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz::scenario::run(data));
