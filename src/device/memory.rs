//! Devices with memory semantics: [`MemoryDevice`] (the model's built-in one, keyed by offset)
//! and [`ScratchMemory`] (byte-addressed, what a device process serving memory would be).

use super::IoregionDevice;
use std::collections::HashMap;

/// The built-in device: remembers the last value written at each offset of each region.
#[derive(Debug, Default, Clone)]
pub struct MemoryDevice {
    cells: HashMap<(u64, u64), u64>,
}

fn low_bytes(value: u64, size: usize) -> u64 {
    if size >= 8 { value } else { value & ((1u64 << (8 * size)) - 1) }
}

impl IoregionDevice for MemoryDevice {
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64 {
        low_bytes(self.cells.get(&(user_data, offset)).copied().unwrap_or(0), size)
    }

    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) {
        self.cells.insert((user_data, offset), low_bytes(value, size));
    }
}

/// Sparse, byte-addressed memory per region (`user_data`): 4 KiB pages allocated on first
/// write; unwritten bytes read as 0. Accesses are little endian, as on x86, and offsets wrap at
/// the end of the 64-bit space. Unlike [`MemoryDevice`], overlapping accesses see each other's
/// bytes, as guest memory would.
///
/// ```
/// use ioregionfd_model::device::{IoregionDevice, ScratchMemory};
/// let mut m = ScratchMemory::default();
/// m.write(1, 0x10, 4, 0x4433_2211);
/// assert_eq!(m.read(1, 0x11, 2), 0x3322); // the middle two bytes
/// assert_eq!(m.read(1, 0x10, 8), 0x4433_2211); // the bytes after it were never written
/// assert_eq!(m.read(2, 0x10, 4), 0); // another region
/// m.write(3, u64::MAX, 2, 0xbbaa); // wraps to offset 0
/// assert_eq!(m.read(3, 0, 1), 0xbb);
/// ```
#[derive(Debug, Default, Clone)]
pub struct ScratchMemory {
    /// (user_data, page number) -> page.
    pages: HashMap<(u64, u64), Box<[u8; PAGE]>>,
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
            *b = self.byte(user_data, offset.wrapping_add(i as u64));
        }
        u64::from_le_bytes(bytes)
    }

    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate().take(size.min(8)) {
            self.set_byte(user_data, offset.wrapping_add(i as u64), b);
        }
    }
}
