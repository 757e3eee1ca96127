//! The checks of the conformance suite: a table of named checks, each a small function that
//! plays KVM's side of a few accesses and says what it expected, and the close checks.

use super::{Device, Launch, Options, Session, start};
use crate::device::{KernelSide, ResponseError, TransportKind};
use crate::wire::{Command, Direction, MESSAGE_SIZE, WireFormat};
use std::collections::HashMap;
use std::time::Duration;

/// A check's view: the kernel side, the device (to say how it ended), the options.
pub(super) struct Ctx<'a> {
    pub(super) kernel: &'a KernelSide,
    pub(super) device: &'a mut Device,
    pub(super) options: &'a Options,
    pub(super) round_trips: usize,
}

fn mask(size: usize) -> u64 {
    if size >= 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 }
}

fn exponent(size: usize) -> u8 {
    size.trailing_zeros() as u8
}

impl Ctx<'_> {
    fn read_cmd(&self, user_data: u64, offset: u64, size: usize) -> Command {
        Command {
            direction: Direction::Read,
            size_exponent: exponent(size),
            // Seed reads leave the bit clear, v3 reads set it (what each kernel sends).
            resp: self.options.format == WireFormat::V3,
            user_data,
            offset,
            data: 0,
        }
    }

    fn write_cmd(&self, user_data: u64, offset: u64, size: usize, value: u64, posted: bool) -> Command {
        Command {
            direction: Direction::Write,
            size_exponent: exponent(size),
            resp: !posted,
            user_data,
            offset,
            data: value & mask(size),
        }
    }

    /// Adds what happened to the device to a failure message.
    fn explain(&mut self, what: String) -> String {
        std::thread::sleep(Duration::from_millis(2));
        match self.device.poll() {
            Some(ended) => format!("{what} (the device {ended})"),
            None => what,
        }
    }

    fn send(&mut self, cmd: &Command) -> Result<(), String> {
        self.kernel.send(cmd).map_err(|e| {
            let what = format!("cannot send `{cmd}`: {e}");
            self.explain(what)
        })
    }

    fn response(&mut self, cmd: &Command) -> Result<u64, String> {
        match self.kernel.recv_response(self.options.timeout) {
            Ok(r) => {
                self.round_trips += 1;
                Ok(r.data)
            }
            Err(e) => {
                let hint = match e {
                    ResponseError::Size { .. } | ResponseError::Timeout { got: 1.., .. } => {
                        " (KVM reads a response with one 32-byte read: anything shorter fails the access)"
                    }
                    ResponseError::Malformed(_) => {
                        " (a response is 8 bytes of data and 24 zero bytes: a short or extra response puts the stream out of step)"
                    }
                    _ => "",
                };
                let what = format!("`{cmd}`: {e}{hint}");
                Err(self.explain(what))
            }
        }
    }

    /// Nothing must arrive within the quiet window (after a posted write, or after the
    /// last expected response).
    fn silence(&mut self, after: &str) -> Result<(), String> {
        match self.kernel.pending(self.options.quiet) {
            Ok(None) => Ok(()),
            Ok(Some(0)) => {
                let what = format!("the device closed its end after {after}");
                Err(self.explain(what))
            }
            Ok(Some(n)) => Err(format!(
                "{n} unexpected bytes arrived within {} ms after {after}{}",
                self.options.quiet.as_millis(),
                if after.contains("posted") {
                    ": the device answered a posted write (a write without the response bit gets no reply)"
                } else {
                    ": more than one response per command"
                }
            )),
            Err(e) => Err(format!("cannot poll the response fd: {e}")),
        }
    }

    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> Result<u64, String> {
        let cmd = self.read_cmd(user_data, offset, size);
        self.send(&cmd)?;
        self.response(&cmd)
    }

    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) -> Result<(), String> {
        let cmd = self.write_cmd(user_data, offset, size, value, false);
        self.send(&cmd)?;
        self.response(&cmd).map(|_| ())
    }

    fn posted(&mut self, user_data: u64, offset: u64, size: usize, value: u64) -> Result<(), String> {
        let cmd = self.write_cmd(user_data, offset, size, value, true);
        self.send(&cmd)
    }

    /// With memory checks on: `got` must be `want`.
    fn expect(&self, what: &str, got: u64, want: u64, hint: &str) -> Result<(), String> {
        if !self.options.memory || got == want {
            return Ok(());
        }
        // Bytes already waiting after a wrong value usually mean the responses are out of
        // step: an extra reply (to a posted write) came first.
        let extra = match self.kernel.pending(Duration::ZERO) {
            Ok(Some(n)) if n > 0 => {
                format!(" ({n} more bytes were already waiting: does the device answer posted writes?)")
            }
            _ => String::new(),
        };
        Err(format!("{what} returned {got:#x}, expected {want:#x}{hint}{extra}"))
    }
}

/// Region ids (user_data) for the checks: each check its own, distinct in the low 32 bits.
fn region(n: u64) -> u64 {
    0x5eed_0000 + n
}

const PATTERN: u64 = 0x8877_6655_4433_2211;

/// One check of the suite: its name and a small function that sends commands and says what it
/// expected (`Err` with the message of the `FAIL` line, `Ok` with the detail of the `ok` line).
/// The function's argument is the access size for the checks run once per size (0 otherwise).
pub(super) struct Check {
    /// The name the lines print (`NAME/size-N` for a check run once per size).
    pub(super) name: &'static str,
    /// What it sends and what it expects.
    pub(super) run: fn(&mut Ctx<'_>, usize) -> Result<String, String>,
}

/// The access sizes the per-size checks run with, in order.
const SIZES: [usize; 4] = [1, 2, 4, 8];

/// Run once per size in [`SIZES`], each on a region of its own (`region(log2 size)`): for each
/// size the three in this order, then the next size.
const PER_SIZE: [Check; 3] = [
    Check { name: "read", run: read_unwritten },
    Check { name: "write", run: write_then_read },
    Check { name: "posted-write", run: posted_then_read },
];

/// Run once each, in this order, after the per-size checks.
const ONCE: [Check; 7] = [
    Check { name: "narrow-reads", run: narrow_reads },
    Check { name: "user-data", run: user_data },
    Check { name: "offsets", run: offsets },
    Check { name: "in-order/posted-burst", run: posted_burst },
    Check { name: "in-order/pipelined-reads", run: pipelined_reads },
    Check { name: "response-size", run: response_size },
    Check { name: "random-sequence", run: random_sequence },
];

/// The checks that share a device session, in the order they run: each with its printed name
/// and its size argument.
pub(super) fn session_checks() -> impl Iterator<Item = (String, &'static Check, usize)> {
    let per_size =
        SIZES.into_iter().flat_map(|size| PER_SIZE.iter().map(move |c| (format!("{}/size-{size}", c.name), c, size)));
    per_size.chain(ONCE.iter().map(|c| (c.name.to_string(), c, 0)))
}

/// Sends a read of a never-written offset; expects one 32-byte response, 0, and nothing more.
fn read_unwritten(c: &mut Ctx<'_>, size: usize) -> Result<String, String> {
    let r = region(u64::from(exponent(size)));
    let got = c.read(r, 0x40, size)?;
    c.expect(&format!("a {size}-byte read of a never-written offset"), got, 0, "")?;
    c.silence("a read's response")?;
    Ok(format!("one 32-byte response, value {got:#x}"))
}

/// Sends a non-posted write, then a read of it; expects one response to the write and the value
/// back.
fn write_then_read(c: &mut Ctx<'_>, size: usize) -> Result<String, String> {
    let r = region(u64::from(exponent(size)));
    let value = PATTERN & mask(size);
    c.write(r, 0x80, size, value)?;
    c.silence("a non-posted write's response")?;
    let got = c.read(r, 0x80, size)?;
    c.expect(&format!("reading back a {size}-byte write of {value:#x}"), got, value, "")?;
    Ok(format!("answered; reads back {got:#x}"))
}

/// Sends a posted write, then a read of it; expects no reply to the write and the value back.
fn posted_then_read(c: &mut Ctx<'_>, size: usize) -> Result<String, String> {
    let r = region(u64::from(exponent(size)));
    let value = !PATTERN & mask(size);
    c.posted(r, 0xc0, size, value)?;
    c.silence(&format!("a posted {size}-byte write (user_data {r:#x}, offset 0xc0)"))?;
    let got = c.read(r, 0xc0, size)?;
    c.expect(&format!("reading back a posted {size}-byte write of {value:#x}"), got, value, "")?;
    Ok(format!("no reply within {} ms; reads back {got:#x}", c.options.quiet.as_millis()))
}

/// Sends an 8-byte write, then 1-, 2- and 4-byte reads of it; expects its low bytes.
fn narrow_reads(c: &mut Ctx<'_>, _: usize) -> Result<String, String> {
    let r = region(10);
    c.write(r, 0x100, 8, PATTERN)?;
    for size in [1usize, 2, 4] {
        let got = c.read(r, 0x100, size)?;
        c.expect(&format!("a {size}-byte read of an 8-byte value"), got, PATTERN & mask(size), "")?;
    }
    Ok("1-, 2- and 4-byte reads of an 8-byte value give its low bytes".into())
}

/// Sends writes to regions whose user_data agree in the low 32 bits, or in the high ones, then
/// reads them; expects each region's own value.
fn user_data(c: &mut Ctx<'_>, _: usize) -> Result<String, String> {
    let regions = [7u64, 0x1_0000_0007, 0xdead_beef_0000_0007, u64::MAX, 0xffff_ffff, 0x8000_0000_0000_0000, 0];
    for (i, &r) in regions.iter().enumerate() {
        c.write(r, 0x18, 8, 0x1111_0000 + i as u64)?;
    }
    for (i, &r) in regions.iter().enumerate() {
        let got = c.read(r, 0x18, 8)?;
        let want = 0x1111_0000 + i as u64;
        let hint = match got.checked_sub(0x1111_0000).map(|j| j as usize) {
            Some(j) if j < regions.len() && j != i => format!(
                ": that is the value written to user_data {:#x}, so the device mixes up these regions (does it keep only part of user_data?)",
                regions[j]
            ),
            _ => String::new(),
        };
        c.expect(&format!("a read of user_data {r:#x} offset 0x18"), got, want, &hint)?;
    }
    Ok(format!("{} regions kept apart, including user_data that differ only in the high or low 32 bits", regions.len()))
}

/// Sends writes at offsets up to the end of the 64-bit space, then reads them; expects each
/// offset's own value.
fn offsets(c: &mut Ctx<'_>, _: usize) -> Result<String, String> {
    let r = region(11);
    let offsets = [0u64, 8, 0xff8, 0x1000, 0xffff_fff8, 0x1_0000_0000, 0x7fff_ffff_ffff_fff0, u64::MAX - 7];
    for (i, &o) in offsets.iter().enumerate() {
        c.write(r, o, 8, 0x2222_0000 + i as u64)?;
    }
    for (i, &o) in offsets.iter().enumerate() {
        let got = c.read(r, o, 8)?;
        c.expect(&format!("a read at offset {o:#x}"), got, 0x2222_0000 + i as u64, "")?;
    }
    Ok(format!("{} offsets up to {:#x} kept apart", offsets.len(), u64::MAX - 7))
}

/// Sends 128 posted writes back to back (64 to one offset, 64 to others), then reads; expects
/// no reply to any of them and every one applied, in order.
fn posted_burst(c: &mut Ctx<'_>, _: usize) -> Result<String, String> {
    let r = region(12);
    for i in 1..=64u64 {
        c.posted(r, 0, 4, i)?;
    }
    for i in 0..64u64 {
        c.posted(r, 8 * (i + 1), 8, 0x3333_0000 + i)?;
    }
    c.silence("128 posted writes")?;
    let got = c.read(r, 0, 4)?;
    c.expect(
        "a read after 64 posted writes of 1..=64 to one offset",
        got,
        64,
        ": writes were applied out of order or lost",
    )?;
    for i in 0..64u64 {
        let got = c.read(r, 8 * (i + 1), 8)?;
        c.expect(
            &format!("a read of offset {:#x} after a burst of posted writes", 8 * (i + 1)),
            got,
            0x3333_0000 + i,
            "",
        )?;
    }
    Ok("128 posted writes sent back to back, all applied in order, none answered".into())
}

/// Sends 16 reads before reading any response; expects 16 responses in command order.
fn pipelined_reads(c: &mut Ctx<'_>, _: usize) -> Result<String, String> {
    let r = region(13);
    for i in 0..16u64 {
        c.posted(r, 8 * i, 8, 0x4444_0000 + i)?;
    }
    c.silence("16 posted writes")?;
    let cmds: Vec<Command> = (0..16u64).map(|i| c.read_cmd(r, 8 * i, 8)).collect();
    for cmd in &cmds {
        c.send(cmd)?;
    }
    for (i, cmd) in cmds.iter().enumerate() {
        let got = c.response(cmd)?;
        c.expect(
            &format!("response {i} of 16 pipelined reads"),
            got,
            0x4444_0000 + i as u64,
            ": responses out of command order",
        )?;
    }
    c.silence("16 responses to 16 reads")?;
    Ok("16 reads sent before any response was read; answered in order".into())
}

/// Sends a read and a non-posted write of each size; expects exactly one 32-byte, zero-padded
/// response to each (one message each on a seqpacket socket) and no extra bytes.
fn response_size(c: &mut Ctx<'_>, _: usize) -> Result<String, String> {
    let r = region(14);
    for size in [1usize, 2, 4, 8] {
        c.read(r, 0x200, size)?;
        c.write(r, 0x208, size, 1)?;
    }
    c.silence("8 responses")?;
    Ok(format!(
        "8 responses of exactly {MESSAGE_SIZE} bytes with zero padding ({})",
        if c.kernel.kind() == TransportKind::Seqpacket { "one message each" } else { "no extra bytes" }
    ))
}

/// Sends 600 pseudo-random reads, writes and posted writes over three regions; expects every
/// read to agree with a reference memory.
fn random_sequence(c: &mut Ctx<'_>, _: usize) -> Result<String, String> {
    // Slots 8 bytes apart, each with a fixed size, so that byte-addressed memory and an
    // offset-keyed device agree.
    let mut model: HashMap<(u64, u64), u64> = HashMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 600;
    for step in 0..n {
        let (a, b, value) = (next(), next(), next());
        let r = region(20 + a % 3);
        let slot = b % 24;
        let (offset, size) = (8 * slot, 1usize << (slot % 4));
        match a % 5 {
            0 | 1 => {
                let got = c.read(r, offset, size)?;
                let want = model.get(&(r, offset)).copied().unwrap_or(0);
                c.expect(
                    &format!("step {step}: a {size}-byte read of user_data {r:#x} offset {offset:#x}"),
                    got,
                    want,
                    "",
                )?;
            }
            2 => {
                c.write(r, offset, size, value)?;
                model.insert((r, offset), value & mask(size));
            }
            _ => {
                c.posted(r, offset, size, value)?;
                model.insert((r, offset), value & mask(size));
            }
        }
    }
    c.silence("the random sequence")?;
    Ok(format!("{n} mixed accesses agree with the reference ({} round trips)", c.round_trips))
}

/// What must happen when the kernel side closes: a clean stop at a message boundary, a stop
/// of any kind (not a hang, not a signal) in the middle of a command.
pub(super) enum CloseCase {
    Idle,
    AfterPosted,
    MidCommand,
}

/// The close checks, each on a device session of its own, in the order they run after the
/// others.
pub(super) const CLOSE: [(&str, CloseCase); 3] = [
    ("close/idle", CloseCase::Idle),
    ("close/after-posted-writes", CloseCase::AfterPosted),
    ("close/mid-command", CloseCase::MidCommand),
];

pub(super) fn run_close(options: &Options, launch: &Launch, case: &CloseCase) -> Result<String, String> {
    let mut s = start(options, launch).map_err(|e| format!("cannot start the device: {e}"))?;
    let mut c = Ctx { kernel: &s.kernel, device: &mut s.device, options, round_trips: 0 };
    c.read(region(30), 0, 4)?;
    match case {
        CloseCase::Idle => {}
        CloseCase::AfterPosted => {
            for i in 0..8 {
                c.posted(region(30), 8 * i, 8, i)?;
            }
        }
        CloseCase::MidCommand => {
            let cmd = c.read_cmd(region(30), 0, 4).encode(options.format);
            c.kernel.send_bytes(&cmd[..13]).map_err(|e| format!("cannot send 13 bytes: {e}"))?;
        }
    }
    let Session { kernel, device } = s;
    drop(kernel);
    let ended = device.finish(options.timeout);
    let ms = options.timeout.as_millis();
    match case {
        CloseCase::MidCommand if ended.stopped() => {
            Ok(format!("the device {ended} after a partial command (13 of 32 bytes) and end of file"))
        }
        CloseCase::MidCommand => Err(format!(
            "after 13 bytes of a command and end of file the device {ended} within {ms} ms; it must stop by itself"
        )),
        _ if ended.clean() => Ok(format!("end of file: the device {ended}")),
        _ => Err(format!(
            "the kernel side closed at a message boundary and the device {ended} within {ms} ms; end of file there is a clean stop (exit status 0)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{CLOSE, session_checks};

    #[test]
    fn the_table_runs_the_checks_in_the_order_the_suite_prints_them() {
        let names: Vec<String> =
            session_checks().map(|(name, _, _)| name).chain(CLOSE.iter().map(|(n, _)| n.to_string())).collect();
        let mut want = Vec::new();
        for size in [1, 2, 4, 8] {
            for check in ["read", "write", "posted-write"] {
                want.push(format!("{check}/size-{size}"));
            }
        }
        for check in [
            "narrow-reads",
            "user-data",
            "offsets",
            "in-order/posted-burst",
            "in-order/pipelined-reads",
            "response-size",
            "random-sequence",
            "close/idle",
            "close/after-posted-writes",
            "close/mid-command",
        ] {
            want.push(check.to_string());
        }
        assert_eq!(names, want);
    }
}
