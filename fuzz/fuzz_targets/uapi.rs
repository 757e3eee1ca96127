//! `cargo fuzz run uapi`: see `ioregionfd_model_fuzz::uapi` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz::uapi::run(data));
