//! `cargo fuzz run wire`: see `ioregionfd_model_fuzz::wire` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz::wire::run(data));
