//! Prints what a `registration` input runs, as a script (`ioregionfd-model script` replays it):
//! `cargo run --manifest-path fuzz/Cargo.toml --example show-input -- FILE...`.

fn main() {
    let mut status = 0;
    for path in std::env::args().skip(1) {
        match std::fs::read(&path) {
            Ok(data) => print!("# {path}\n{}", ioregionfd_model_fuzz_targets::registration::script_of(&data)),
            Err(e) => {
                eprintln!("show-input: {path}: {e}");
                status = 1;
            }
        }
    }
    std::process::exit(status);
}
