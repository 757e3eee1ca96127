//! The device side of ioregionfd: what a VMM's device task does with the commands KVM sends.
//!
//! [`IoregionDevice`] is what a device implements (read or write at an offset of a region that
//! `user_data` names); [`MemoryDevice`] is the built-in one (reads return the last value written
//! at that offset, else 0). [`ServedDevice`] runs a device on the model's in-memory files for the
//! sequential model: it reads whole 32-byte commands (reassembling short reads), answers those
//! that want a response, and never answers a posted write.
//!
//! ```
//! use ioregionfd_model::device::{IoregionDevice, MemoryDevice};
//! let mut d = MemoryDevice::default();
//! d.write(7, 0x10, 4, 0xabcd);
//! assert_eq!(d.read(7, 0x10, 4), 0xabcd);
//! assert_eq!(d.read(8, 0x10, 4), 0); // another region
//! ```

use crate::fd::File;
use crate::fd::channel::{Transfer, Wait};
use crate::invariants::WIRE;
use crate::sync::Arc;
use crate::trace::Recorder;
use crate::wire::{Command, Direction, MESSAGE_SIZE, Response, WireFormat};
use std::collections::HashMap;
use std::fmt;

/// A device that serves ioregion accesses.
pub trait IoregionDevice: Send {
    /// A read of `size` bytes at `offset` of the region `user_data` names.
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64;
    /// A write of the low `size` bytes of `value`.
    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64);
}

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

/// A device served on model files: commands come from `cmd`, responses go to `resp` (the same
/// file for a socket; the ioregionfd itself for the seed design).
pub struct ServedDevice {
    cmd: Arc<File>,
    resp: Arc<File>,
    format: WireFormat,
    device: Box<dyn IoregionDevice>,
    partial: Vec<u8>,
    stopped: bool,
}

impl fmt::Debug for ServedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServedDevice(cmd {}, resp {})", self.cmd, self.resp)
    }
}

impl ServedDevice {
    /// Serves `device` on `cmd`/`resp`, speaking `format`; the caller has taken a reference on
    /// each file for it (dropped when it stops).
    pub fn new(cmd: Arc<File>, resp: Arc<File>, format: WireFormat, device: Box<dyn IoregionDevice>) -> Self {
        ServedDevice { cmd, resp, format, device, partial: Vec::new(), stopped: false }
    }

    /// Whether it stopped (end of file on its command file).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Handles every whole command waiting, without blocking; returns how many it handled.
    pub fn run(&mut self, rec: &Recorder) -> usize {
        let mut handled = 0;
        while !self.stopped {
            let mut buf = [0u8; MESSAGE_SIZE];
            let want = MESSAGE_SIZE - self.partial.len();
            match self.cmd.read(rec, &mut buf[..want], &Wait::Never) {
                Transfer::Done(0) => self.stop(rec),
                Transfer::Done(n) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    if self.partial.len() == MESSAGE_SIZE {
                        let message = std::mem::take(&mut self.partial);
                        self.handle(rec, &message);
                        handled += 1;
                    }
                }
                Transfer::Failed(_) | Transfer::WouldBlock { .. } => break,
            }
        }
        handled
    }

    fn handle(&mut self, rec: &Recorder, message: &[u8]) {
        let tag = self.cmd.read_channel().and_then(|c| c.pop_tag());
        let cmd = match Command::decode(self.format, message) {
            Ok(c) => c,
            Err(e) => {
                rec.violation(&WIRE, format_args!("the device reads a malformed command: {e} ({message:02x?})"));
                return;
            }
        };
        rec.event(None, format_args!("device reads {cmd}"));
        let value = match cmd.direction {
            Direction::Read => self.device.read(cmd.user_data, cmd.offset, cmd.size()),
            Direction::Write => {
                self.device.write(cmd.user_data, cmd.offset, cmd.size(), cmd.data);
                0
            }
        };
        if !cmd.wants_response() {
            return;
        }
        if let (Some(t), Some(c)) = (tag, self.resp.write_channel()) {
            c.push_tag(t);
        }
        let t = self.resp.write(rec, &Response { data: value }.encode(), &Wait::Never);
        rec.event(None, format_args!("device responds {value:#x}: {t:?}"));
    }

    fn stop(&mut self, rec: &Recorder) {
        if !self.stopped {
            self.stopped = true;
            rec.event(None, format_args!("device on {} sees end of file and stops", self.cmd));
            self.cmd.put(rec);
            self.resp.put(rec);
        }
    }
}
