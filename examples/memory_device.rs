//! An ioregionfd device process a VMM author can copy: byte-addressed scratch memory, one per
//! region.
//!
//! KVM (or `ioregionfd-model conform`, which plays KVM's side) writes 32-byte commands on a file
//! descriptor; this process reads them, applies them to its memory and answers reads and
//! non-posted writes. Which fds to use comes from the environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `IOREGIONFD_CMD_FD` | fd to read commands from |
//! | `IOREGIONFD_RESP_FD` | fd to write responses to (the same number for a socketpair) |
//! | `IOREGIONFD_FORMAT` | `seed` or `v3` (default `v3`) |
//!
//! Run it under the conformance harness:
//!
//! ```text
//! cargo build --example memory_device
//! cargo run -- conform --transport all -- target/debug/examples/memory_device
//! ```
//!
//! The device is the library's [`ScratchMemory`]; the loop, the launch convention and the exit
//! status are the library's [`serve_from_env`] (the conformance tests run that same pair). What
//! this file adds is the shape of a device of your own: an [`IoregionDevice`] (here one that logs
//! each access and hands it on) served by one call.
//!
//! In a VMM you would create the fds yourself (a `socketpair(AF_UNIX, SOCK_SEQPACKET)` is the
//! simplest: one fd per side, one message per command), register the region with
//! `KVM_SET_IOREGION` giving KVM its end and a `user_data` that names the region, and hand the
//! other end to `Transport::new` on the device thread (or, for a device task in an event loop,
//! to `NonBlockingServer::new`: see `examples/event_loop_device.rs`).
//!
//! Pass `-v` to log every command on standard error.

use ioregionfd_model::device::{IoregionDevice, ScratchMemory, serve_from_env};
use std::process::ExitCode;

/// A device that logs every access on standard error (when `verbose`) and hands it to `inner`.
struct Logged<D> {
    inner: D,
    verbose: bool,
}

impl<D: IoregionDevice> IoregionDevice for Logged<D> {
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64 {
        let value = self.inner.read(user_data, offset, size);
        if self.verbose {
            eprintln!("memory_device: read  user_data {user_data:#x} offset {offset:#x} size {size} -> {value:#x}");
        }
        value
    }

    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) {
        if self.verbose {
            eprintln!("memory_device: write user_data {user_data:#x} offset {offset:#x} size {size} <- {value:#x}");
        }
        self.inner.write(user_data, offset, size, value);
    }
}

fn main() -> ExitCode {
    let verbose = std::env::args().skip(1).any(|a| a == "-v" || a == "--verbose");
    // Exit status 0 at end of file between commands (the kernel side closed: a clean stop), 1 on
    // any other end, 2 without the fds.
    serve_from_env("memory_device", &mut Logged { inner: ScratchMemory::default(), verbose })
}
