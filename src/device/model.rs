//! The model's device: a device served on the model's in-memory files.
//!
//! [`ServedDevice`] runs a device on the model's files for the sequential model: it reads whole
//! 32-byte commands (reassembling short reads), answers those that want a response, and never
//! answers a posted write. [`receive_model_command`] is what every model device (this one, the
//! scenario runner's, the shuttle tests') does with a whole message: ghost checks, then decode.

use super::IoregionDevice;
use crate::fd::File;
use crate::fd::channel::{Transfer, Wait};
use crate::invariants::WIRE;
use crate::sync::Arc;
use crate::trace::Recorder;
use crate::wire::{Command, Direction, MESSAGE_SIZE, Response, WireFormat};
use std::fmt;

/// What a model device does with one whole 32-byte `message` it read from `from`, whose bytes
/// carried the ghost `tags`: a message made of bytes of more than one command is a `wire`
/// violation (a resend after a partial write does that); the delivery is entered in the ledger
/// (`exactly-once`, and `order` among the commands that came over the same channel); a message
/// that does not decode in `format` is a `wire` violation and `None`.
pub fn receive_model_command(
    rec: &Recorder,
    from: &File,
    format: WireFormat,
    message: &[u8],
    tags: &[crate::fd::channel::Tag],
) -> Option<(Command, Option<crate::fd::channel::Tag>)> {
    if tags.len() > 1 {
        let list: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        rec.violation(&WIRE, format_args!("a 32-byte message on the wire is made of bytes of {}", list.join(" and ")));
    }
    let tag = tags.first().copied();
    if let Some(t) = tag {
        let channel = from.read_channel().map_or(0, |c| Arc::as_ptr(c) as usize as u64);
        rec.delivered(t, channel);
    }
    match Command::decode(format, message) {
        Ok(c) => {
            rec.event(None, format_args!("device reads {c}"));
            Some((c, tag))
        }
        Err(e) => {
            rec.violation(&WIRE, format_args!("the device reads a malformed command: {e} ({message:02x?})"));
            None
        }
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
    partial_tags: Vec<crate::fd::channel::Tag>,
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
        ServedDevice { cmd, resp, format, device, partial: Vec::new(), partial_tags: Vec::new(), stopped: false }
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
            match self.cmd.read_tagged(rec, &mut buf[..want], &Wait::Never) {
                (Transfer::Done(0), _) => self.stop(rec),
                (Transfer::Done(n), tags) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    for t in tags {
                        if self.partial_tags.last() != Some(&t) {
                            self.partial_tags.push(t);
                        }
                    }
                    if self.partial.len() == MESSAGE_SIZE {
                        let message = std::mem::take(&mut self.partial);
                        let tags = std::mem::take(&mut self.partial_tags);
                        self.handle(rec, &message, &tags);
                        handled += 1;
                    }
                }
                (Transfer::Failed(_) | Transfer::WouldBlock { .. }, _) => break,
            }
        }
        handled
    }

    fn handle(&mut self, rec: &Recorder, message: &[u8], tags: &[crate::fd::channel::Tag]) {
        let Some((cmd, tag)) = receive_model_command(rec, &self.cmd, self.format, message, tags) else { return };
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
        let t = self.resp.write_tagged(rec, &Response { data: value }.encode(), &Wait::Never, tag);
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
