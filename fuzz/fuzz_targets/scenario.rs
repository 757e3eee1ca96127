//! `cargo fuzz run scenario`: see `ioregionfd_model_fuzz_targets::scenario` (and README.md, "Fuzzing").
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ioregionfd_model_fuzz_targets::scenario::run(data));

// `fuzz/fast` builds with feature `mimalloc` (docs/fuzzing.md, "The throughput configuration").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
