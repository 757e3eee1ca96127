//! Devices with memory semantics, for the model and for tests and examples on real fds.

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
