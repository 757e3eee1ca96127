//! `cargo fuzz run script`: see `ioregionfd_model_fuzz_targets::script` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz_targets::script::run(data));

// `fuzz/fast` builds with feature `mimalloc` (docs/fuzzing.md, "The throughput configuration").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
