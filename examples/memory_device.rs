//! An ioregionfd device a VMM author can copy: byte-addressed scratch memory, one per region.
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
//! In a VMM you would create the fds yourself (a `socketpair(AF_UNIX, SOCK_SEQPACKET)` is the
//! simplest: one fd per side, one message per command), register the region with
//! `KVM_SET_IOREGION` giving KVM its end and a `user_data` that names the region, and hand the
//! other end to [`Transport::new`] on the device thread.
//!
//! Pass `-v` to log every command on standard error.

use ioregionfd_model::device::{IoregionDevice, Transport, serve};
use std::collections::HashMap;
use std::process::ExitCode;

/// Sparse, byte-addressed memory per region (`user_data`): 4 KiB pages allocated on first
/// write; unwritten bytes read as 0. Accesses are little endian, as on x86.
#[derive(Default)]
struct ScratchMemory {
    /// (user_data, page number) -> page.
    pages: HashMap<(u64, u64), Box<[u8; PAGE]>>,
    verbose: bool,
}

const PAGE: usize = 4096;

impl ScratchMemory {
    /// The byte at `offset` of region `user_data`.
    fn byte(&self, user_data: u64, offset: u64) -> u8 {
        let page = self.pages.get(&(user_data, offset / PAGE as u64));
        page.map_or(0, |p| p[(offset % PAGE as u64) as usize])
    }

    fn set_byte(&mut self, user_data: u64, offset: u64, value: u8) {
        let page = self.pages.entry((user_data, offset / PAGE as u64)).or_insert_with(|| Box::new([0; PAGE]));
        page[(offset % PAGE as u64) as usize] = value;
    }
}

impl IoregionDevice for ScratchMemory {
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64 {
        let mut bytes = [0u8; 8];
        for (i, b) in bytes.iter_mut().enumerate().take(size.min(8)) {
            // Offsets wrap at the end of the 64-bit space instead of overflowing.
            *b = self.byte(user_data, offset.wrapping_add(i as u64));
        }
        let value = u64::from_le_bytes(bytes);
        if self.verbose {
            eprintln!("memory_device: read  user_data {user_data:#x} offset {offset:#x} size {size} -> {value:#x}");
        }
        value
    }

    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) {
        if self.verbose {
            eprintln!("memory_device: write user_data {user_data:#x} offset {offset:#x} size {size} <- {value:#x}");
        }
        for (i, b) in value.to_le_bytes().into_iter().enumerate().take(size.min(8)) {
            self.set_byte(user_data, offset.wrapping_add(i as u64), b);
        }
    }
}

// `pub(crate)` only so that the crate's conformance tests can run this very file as their device.
pub(crate) fn main() -> ExitCode {
    let verbose = std::env::args().skip(1).any(|a| a == "-v" || a == "--verbose");
    let transport = match Transport::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("memory_device: {e}");
            return ExitCode::from(2);
        }
    };
    let mut device = ScratchMemory { verbose, ..ScratchMemory::default() };
    match serve(&transport, &mut device) {
        // End of file at a message boundary: the kernel side closed. A clean stop.
        Ok(summary) => {
            if verbose {
                eprintln!("memory_device: end of file after {summary}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("memory_device: {e}");
            ExitCode::FAILURE
        }
    }
}
