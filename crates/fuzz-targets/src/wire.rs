//! `wire`: any 32 bytes as an ioregionfd command (in each [`WireFormat`]) and as a response.
//!
//! The input's first 32 bytes, zero-padded when it is shorter, are decoded with
//! [`Command::decode`] in the `seed` and the `v3` format and with [`Response::decode`]; the input
//! itself, at its real length, is decoded the same way. The properties checked:
//!
//! - decoding never panics, and a slice that is not 32 bytes is [`WireError::Size`] with its length;
//! - decoding agrees with an independent reading of the layout table in `src/wire.rs`: it is `Ok`
//!   exactly when no rule of the format is broken, and an `Err` names a rule the image does break
//!   (`Reserved` with the first byte holding a reserved bit, `UnknownCommand` with the command
//!   field, `SizeExponent` with the exponent field, `ReadResp` for a read whose response bit is
//!   wrong for the format, `DataBeyondSize` for data outside the access size, for a read any data).
//!   When several rules are broken, any of them may be reported (the order is not specified);
//! - an `Ok` message has the fields the table puts at each offset, and encodes back to exactly the
//!   same 32 bytes: decoding is strict, so there is no canonicalisation;
//! - `Display` of messages and errors does not panic.

use ioregionfd_model::wire::{Command, Direction, MESSAGE_SIZE, Response, WireError, WireFormat};

/// Both wire formats.
const FORMATS: [WireFormat; 2] = [WireFormat::Seed, WireFormat::V3];

/// Runs one input; panics when a decode disagrees with the properties in the module doc.
pub fn run(data: &[u8]) {
    let mut image = [0u8; MESSAGE_SIZE];
    let n = data.len().min(MESSAGE_SIZE);
    image[..n].copy_from_slice(&data[..n]);
    check_image(&image);
    check_slice(data, &image);
}

/// The input at its real length: the same result as the image when it is 32 bytes, else `Size`.
fn check_slice(data: &[u8], image: &[u8; MESSAGE_SIZE]) {
    for format in FORMATS {
        let got = Command::decode(format, data);
        if data.len() == MESSAGE_SIZE {
            assert_eq!(got, Command::decode(format, image), "{format}: the slice and the image decode differently");
        } else {
            assert_eq!(got, Err(WireError::Size(data.len())), "{format}: command of {} bytes", data.len());
        }
    }
    let got = Response::decode(data);
    if data.len() == MESSAGE_SIZE {
        assert_eq!(got, Response::decode(image), "the slice and the image decode differently as a response");
    } else {
        assert_eq!(got, Err(WireError::Size(data.len())), "response of {} bytes", data.len());
    }
}

fn u64_le(b: &[u8; MESSAGE_SIZE], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The fields of a command image as the layout table places them, before any validation.
struct Fields {
    /// The first byte in 0..8 holding a bit that must be zero.
    reserved: Option<usize>,
    command: u32,
    exponent: u32,
    resp: bool,
}

fn fields(format: WireFormat, b: &[u8; MESSAGE_SIZE]) -> Fields {
    match format {
        // bytes 0-3: info, bits 3:0 command, 5:4 size exponent, 6 response, 31:7 zero; 4-7 zero.
        WireFormat::Seed => {
            let info = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let reserved = (0..8).find(|&i| if i == 0 { b[0] & 0x80 != 0 } else { b[i] != 0 });
            Fields { reserved, command: info & 0xf, exponent: (info >> 4) & 0x3, resp: info & 0x40 != 0 }
        }
        // byte 0: command; byte 1: bits 0-3 size exponent, 4 response, 5-7 zero; bytes 2-7 zero.
        WireFormat::V3 => {
            let reserved = (1..8).find(|&i| if i == 1 { b[1] & 0xe0 != 0 } else { b[i] != 0 });
            Fields { reserved, command: u32::from(b[0]), exponent: u32::from(b[1] & 0xf), resp: b[1] & 0x10 != 0 }
        }
    }
}

/// Every error the image justifies in `format` (empty: the image is a valid command).
fn command_faults(format: WireFormat, b: &[u8; MESSAGE_SIZE]) -> Vec<WireError> {
    let f = fields(format, b);
    let data = u64_le(b, 24);
    let mut faults = Vec::new();
    if let Some(byte) = f.reserved {
        faults.push(WireError::Reserved { byte });
    }
    if f.command > 1 {
        faults.push(WireError::UnknownCommand(f.command));
    }
    if f.exponent > 3 {
        faults.push(WireError::SizeExponent(f.exponent));
    }
    if f.command == 0 {
        // Reads: seed leaves the response bit clear, v3 sets it; a read carries no data.
        let resp_ok = match format {
            WireFormat::Seed => !f.resp,
            WireFormat::V3 => f.resp,
        };
        if !resp_ok {
            faults.push(WireError::ReadResp);
        }
        if data != 0 {
            faults.push(WireError::DataBeyondSize);
        }
    }
    if f.command == 1 && f.exponent < 3 && data >> (8u32 << f.exponent) != 0 {
        faults.push(WireError::DataBeyondSize);
    }
    faults
}

/// The decodes of one 32-byte image against the independent reading of the layout.
fn check_image(b: &[u8; MESSAGE_SIZE]) {
    for format in FORMATS {
        let faults = command_faults(format, b);
        match Command::decode(format, b) {
            Ok(cmd) => {
                assert!(faults.is_empty(), "{format}: decode accepted {b:02x?} as {cmd:?}, which breaks {faults:?}");
                let f = fields(format, b);
                let direction = if f.command == 0 { Direction::Read } else { Direction::Write };
                assert_eq!(cmd.direction, direction, "{format}: direction of {b:02x?}");
                assert_eq!(u32::from(cmd.size_exponent), f.exponent, "{format}: size exponent of {b:02x?}");
                assert_eq!(cmd.resp, f.resp, "{format}: response bit of {b:02x?}");
                assert_eq!(cmd.user_data, u64_le(b, 8), "{format}: user_data of {b:02x?}");
                assert_eq!(cmd.offset, u64_le(b, 16), "{format}: offset of {b:02x?}");
                assert_eq!(cmd.data, u64_le(b, 24), "{format}: data of {b:02x?}");
                assert_eq!(cmd.size(), 1usize << f.exponent);
                assert_eq!(&cmd.encode(format), b, "{format}: {cmd:?} does not encode back to its image");
                let _ = cmd.to_string();
            }
            Err(e) => {
                assert!(
                    faults.contains(&e),
                    "{format}: decode of {b:02x?} failed with {e:?}, which the image does not justify (it breaks {faults:?})"
                );
                assert!(!e.to_string().is_empty());
            }
        }
    }
    let first_nonzero_pad = (8..MESSAGE_SIZE).find(|&i| b[i] != 0);
    match (Response::decode(b), first_nonzero_pad) {
        (Ok(r), None) => {
            assert_eq!(r.data, u64_le(b, 0), "response data of {b:02x?}");
            assert_eq!(&r.encode(), b, "{r:?} does not encode back to its image");
        }
        (Err(WireError::Reserved { byte }), Some(first)) => {
            assert_eq!(byte, first, "response {b:02x?}: the reserved byte reported is not the first nonzero one");
        }
        (got, first) => {
            panic!("response {b:02x?}: decode gave {got:?}, but the first nonzero padding byte is {first:?}")
        }
    }
}

fn command(direction: Direction, size_exponent: u8, resp: bool, user_data: u64, offset: u64, data: u64) -> Command {
    Command { direction, size_exponent, resp, user_data, offset, data }
}

/// Named seed inputs: the messages of `src/wire.rs`'s unit tests and doc examples, the commands
/// the golden scripts `rfc-v3`, `proposed` and `seed` make KVM send and the responses the built-in
/// device sends back, broken variants of them, and all-zero and all-0xff images.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use Direction::{Read, Write};
    // A read's response bit differs by format; each command is encoded in both with it set right.
    let commands = [
        ("doc-write", command(Write, 2, true, 7, 0x10, 0xdead)),
        ("unit-write64", command(Write, 3, true, 0x1122, 8, u64::MAX)),
        ("unit-read16", command(Read, 1, true, 1, 2, 0)),
        ("unit-posted8", command(Write, 0, false, 0, 0, 0x7f)),
        ("golden-write", command(Write, 2, true, 0x77, 8, 0xdead)),
        ("golden-read", command(Read, 2, true, 0x77, 8, 0)),
        ("golden-read16", command(Read, 1, true, 0x77, 0x10, 0)),
        ("golden-posted", command(Write, 2, false, 0, 0, 5)),
        ("golden-seed-write", command(Write, 2, true, 1, 8, 0xdead)),
        ("fast-mmio", command(Write, 0, false, 0, 0, 0)),
    ];
    let mut seeds = Vec::new();
    for (name, cmd) in commands {
        for format in FORMATS {
            let resp = match (cmd.direction, format) {
                (Read, WireFormat::Seed) => false,
                (Read, WireFormat::V3) => true,
                (Write, _) => cmd.resp,
            };
            let image = Command { resp, ..cmd }.encode(format);
            seeds.push((format!("{format}-{name}"), image.to_vec()));
        }
    }
    // The malformed images of `malformed_commands_are_typed_errors`.
    let good = command(Write, 0, false, 0, 0, 0x7f);
    let mut broken = Vec::new();
    for (name, byte, value) in [("v3-exp4", 1, 0x04), ("v3-reserved1", 1, 0x20), ("v3-cmd2", 0, 2)] {
        let mut b = good.encode(WireFormat::V3);
        b[byte] = value;
        broken.push((name, b));
    }
    for (name, byte, value) in [("seed-reserved0", 0, 0x81), ("seed-reserved3", 3, 0x80), ("seed-data-beyond", 25, 1)] {
        let mut b = good.encode(WireFormat::Seed);
        b[byte] = value;
        broken.push((name, b));
    }
    broken.push(("v3-read-noresp", command(Read, 2, false, 0, 0, 0).encode(WireFormat::V3)));
    for (name, b) in broken {
        seeds.push((name.to_string(), b.to_vec()));
    }
    for (name, data) in [("resp-dead", 0xdead), ("resp-max", u64::MAX)] {
        seeds.push((name.to_string(), Response { data }.encode().to_vec()));
    }
    let mut bad_resp = Response { data: 1 }.encode();
    bad_resp[31] = 1;
    seeds.push(("resp-pad31".to_string(), bad_resp.to_vec()));
    seeds.push(("zero".to_string(), vec![0; MESSAGE_SIZE]));
    seeds.push(("ff".to_string(), vec![0xff; MESSAGE_SIZE]));
    seeds.push(("short".to_string(), vec![1; MESSAGE_SIZE - 1]));
    seeds.push(("long".to_string(), vec![0; MESSAGE_SIZE + 1]));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_reach_every_error() {
        let mut seen = Vec::new();
        for (_, data) in seeds() {
            let Ok(image) = <[u8; MESSAGE_SIZE]>::try_from(data.as_slice()) else { continue };
            for format in FORMATS {
                if let Err(e) = Command::decode(format, &image) {
                    seen.push(std::mem::discriminant(&e));
                }
            }
        }
        for e in [
            WireError::Reserved { byte: 0 },
            WireError::UnknownCommand(2),
            WireError::SizeExponent(4),
            WireError::ReadResp,
            WireError::DataBeyondSize,
        ] {
            assert!(seen.contains(&std::mem::discriminant(&e)), "no seed gives {e:?}");
        }
    }

    #[test]
    fn pseudo_random_inputs_pass() {
        let mut next = super::super::xorshift(0x9e37_79b9_7f4a_7c15u64);
        for i in 0..20_000 {
            let len = if i % 2 == 0 { MESSAGE_SIZE } else { (next() % 40) as usize };
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Two inputs in three get a header that is mostly valid and data that mostly fits, so
            // that the `Ok` paths are exercised too.
            if i % 3 != 2 && data.len() >= MESSAGE_SIZE {
                let format = FORMATS[i % 3];
                let cmd = command(
                    if next().is_multiple_of(2) { Direction::Read } else { Direction::Write },
                    (next() % 4) as u8,
                    next().is_multiple_of(2),
                    next(),
                    next(),
                    next() >> (next() % 64),
                );
                data[..MESSAGE_SIZE].copy_from_slice(&cmd.encode(format));
                if next().is_multiple_of(4) {
                    let at = (next() % MESSAGE_SIZE as u64) as usize;
                    data[at] ^= 1 << (next() % 8);
                }
            }
            run(&data);
        }
    }
}
