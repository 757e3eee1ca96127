//! The ioregionfd wire formats: the 32-byte command KVM writes to the device and the 32-byte
//! response the device writes back, in the `seed` format (Nov 2020 document) and the `v3` format
//! (RFC v3 code). Both are little endian on x86-64.
//!
//! | | seed command | v3 command |
//! |---|---|---|
//! | bytes 0-3 | `info`: bits 3:0 command, 5:4 size exponent, 6 response wanted, 31:7 zero | byte 0 command; byte 1 bits 0-3 size exponent, bit 4 response, bits 5-7 zero; bytes 2-3 zero |
//! | bytes 4-7 | padding, zero | zero |
//! | bytes 8-15 | user_data | user_data |
//! | bytes 16-23 | offset | offset |
//! | bytes 24-31 | data | data (the `len` bytes of a write, the rest zero) |
//!
//! The response is `data` in bytes 0-7 and zero padding in 8-31 in both formats.
//!
//! Decoding never panics: reserved bits, an unusable size exponent or an unknown command is a
//! typed [`WireError`]. A valid message encodes back to the same 32 bytes.
//!
//! ```
//! use ioregionfd_model::wire::{Command, Direction, WireFormat};
//! let cmd = Command { direction: Direction::Write, size_exponent: 2, resp: true, user_data: 7, offset: 0x10, data: 0xdead };
//! for format in [WireFormat::Seed, WireFormat::V3] {
//!     let bytes = cmd.encode(format);
//!     assert_eq!(Command::decode(format, &bytes), Ok(cmd));
//! }
//! assert_eq!(cmd.encode(WireFormat::V3)[0..2], [1, 0x12]);
//! ```

use crate::uapi::{sized, u32_at, u64_at};
use std::fmt;

/// Size of a command and of a response, in both formats.
pub const MESSAGE_SIZE: usize = 32;

/// Which wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// The Nov 2020 document: a 32-bit `info` word.
    Seed,
    /// RFC v3: a command byte and a size/response byte.
    V3,
}

impl WireFormat {
    /// Name as the CLI writes it: `seed` or `v3`.
    pub fn name(self) -> &'static str {
        match self {
            WireFormat::Seed => "seed",
            WireFormat::V3 => "v3",
        }
    }

    /// The format with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<WireFormat> {
        [WireFormat::Seed, WireFormat::V3].into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Command 0: the device replies with the value.
    Read,
    /// Command 1: the device applies the value; replies only when `resp` is set.
    Write,
}

/// A malformed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not 32 bytes.
    Size(usize),
    /// A command number other than 0 (read) or 1 (write).
    UnknownCommand(u32),
    /// A size exponent above 3 (accesses are 1, 2, 4 or 8 bytes).
    SizeExponent(u32),
    /// A bit that must be zero is set (the byte offset of the first such byte).
    Reserved {
        /// Byte offset in the message.
        byte: usize,
    },
    /// The data field has bytes set that the command does not carry: above a write's access
    /// size, or any at all in a read (whose data is zero).
    DataBeyondSize,
    /// The response bit is wrong for a read (seed: reads leave it clear; v3: reads set it).
    ReadResp,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Size(n) => write!(f, "a message is 32 bytes, not {n}"),
            WireError::UnknownCommand(c) => write!(f, "unknown command {c} (0 read, 1 write)"),
            WireError::SizeExponent(e) => write!(f, "size exponent {e} is above 3"),
            WireError::Reserved { byte } => write!(f, "reserved bits set in byte {byte}"),
            WireError::DataBeyondSize => f.write_str("data has bytes set beyond the access size"),
            WireError::ReadResp => f.write_str("the response bit of a read is wrong for this format"),
        }
    }
}

impl std::error::Error for WireError {}

/// A command KVM sends to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Command {
    /// Read or write.
    pub direction: Direction,
    /// Access size is `1 << size_exponent` (0 also for a FAST_MMIO access of length 0).
    pub size_exponent: u8,
    /// Response wanted. Writes: set unless the region has posted writes. Reads: clear in the seed
    /// format (reads always get a response), set in v3 (the code sends `resp = 1`).
    pub resp: bool,
    /// The region's `user_data`.
    pub user_data: u64,
    /// Access address minus the region's base.
    pub offset: u64,
    /// A write's value (its `1 << size_exponent` low bytes), zero for reads.
    pub data: u64,
}

fn size_mask(exponent: u8) -> u64 {
    match exponent {
        0..=2 => (1u64 << (8 << exponent)) - 1,
        _ => u64::MAX,
    }
}

impl Command {
    /// Access size in bytes.
    pub fn size(&self) -> usize {
        1 << self.size_exponent
    }

    /// Whether the device must reply (reads always; writes when `resp` is set).
    pub fn wants_response(&self) -> bool {
        self.direction == Direction::Read || self.resp
    }

    /// The 32-byte image in `format`.
    pub fn encode(&self, format: WireFormat) -> [u8; MESSAGE_SIZE] {
        let mut b = [0u8; MESSAGE_SIZE];
        let cmd = match self.direction {
            Direction::Read => 0u32,
            Direction::Write => 1,
        };
        match format {
            WireFormat::Seed => {
                let info = cmd | (u32::from(self.size_exponent) << 4) | (u32::from(self.resp) << 6);
                b[0..4].copy_from_slice(&info.to_le_bytes());
            }
            WireFormat::V3 => {
                b[0] = cmd as u8;
                b[1] = self.size_exponent | (u8::from(self.resp) << 4);
            }
        }
        b[8..16].copy_from_slice(&self.user_data.to_le_bytes());
        b[16..24].copy_from_slice(&self.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.data.to_le_bytes());
        b
    }

    /// Decodes a 32-byte image in `format`, rejecting anything the format does not allow.
    pub fn decode(format: WireFormat, image: &[u8]) -> Result<Command, WireError> {
        let b: [u8; MESSAGE_SIZE] = sized("ioregionfd_cmd", image).map_err(|e| WireError::Size(e.got))?;
        let (cmd, exponent, resp) = match format {
            WireFormat::Seed => {
                let info = u32_at(&b, 0);
                let reserved = info & !0x7f;
                if reserved != 0 {
                    return Err(WireError::Reserved { byte: reserved.trailing_zeros() as usize / 8 });
                }
                if let Some(byte) = (4..8).find(|&i| b[i] != 0) {
                    return Err(WireError::Reserved { byte });
                }
                (info & 0xf, (info >> 4) & 0x3, info & (1 << 6) != 0)
            }
            WireFormat::V3 => {
                if b[1] & 0xe0 != 0 {
                    return Err(WireError::Reserved { byte: 1 });
                }
                if let Some(byte) = (2..8).find(|&i| b[i] != 0) {
                    return Err(WireError::Reserved { byte });
                }
                (u32::from(b[0]), u32::from(b[1] & 0xf), b[1] & 0x10 != 0)
            }
        };
        let direction = match cmd {
            0 => Direction::Read,
            1 => Direction::Write,
            other => return Err(WireError::UnknownCommand(other)),
        };
        if exponent > 3 {
            return Err(WireError::SizeExponent(exponent));
        }
        let read_resp_ok = match format {
            WireFormat::Seed => !resp,
            WireFormat::V3 => resp,
        };
        if direction == Direction::Read && !read_resp_ok {
            return Err(WireError::ReadResp);
        }
        let data = u64_at(&b, 24);
        let allowed = if direction == Direction::Read { 0 } else { size_mask(exponent as u8) };
        if data & !allowed != 0 {
            return Err(WireError::DataBeyondSize);
        }
        Ok(Command {
            direction,
            size_exponent: exponent as u8,
            resp,
            user_data: u64_at(&b, 8),
            offset: u64_at(&b, 16),
            data,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.direction {
            Direction::Read => "read",
            Direction::Write => "write",
        };
        write!(f, "{dir} user_data {:#x} offset {:#x} size {}", self.user_data, self.offset, self.size())?;
        if self.direction == Direction::Write {
            write!(f, " data {:#x}{}", self.data, if self.resp { "" } else { " posted" })?;
        }
        Ok(())
    }
}

/// The device's response: 8 bytes of data, 24 bytes of zero padding (both formats).
///
/// ```
/// use ioregionfd_model::wire::Response;
/// let r = Response { data: 0x1234 };
/// assert_eq!(Response::decode(&r.encode()), Ok(r));
/// let mut bad = r.encode();
/// bad[31] = 1;
/// assert!(Response::decode(&bad).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Response {
    /// The value (a read copies its low `len` bytes into the guest's register).
    pub data: u64,
}

impl Response {
    /// The 32-byte image.
    pub fn encode(&self) -> [u8; MESSAGE_SIZE] {
        let mut b = [0u8; MESSAGE_SIZE];
        b[0..8].copy_from_slice(&self.data.to_le_bytes());
        b
    }

    /// Decodes a 32-byte image; the padding must be zero.
    pub fn decode(image: &[u8]) -> Result<Response, WireError> {
        let b: [u8; MESSAGE_SIZE] = sized("ioregionfd_resp", image).map_err(|e| WireError::Size(e.got))?;
        if let Some(byte) = (8..MESSAGE_SIZE).find(|&i| b[i] != 0) {
            return Err(WireError::Reserved { byte });
        }
        Ok(Response { data: u64_at(&b, 0) })
    }
}

/// The kinds of fd pair that connect KVM (the kernel side) and a device: one vocabulary for the
/// model's in-memory fds (the script's `socketpair`, `pipe`, `fifo`; the scenarios' `channel`) and
/// the device library's real ones.
///
/// ```
/// use ioregionfd_model::wire::TransportKind;
/// assert_eq!(TransportKind::from_name("seqpacket"), Some(TransportKind::Seqpacket));
/// assert_eq!(TransportKind::ALL.len(), 4);
/// assert_eq!(TransportKind::Pipe.to_string(), "pipe");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// `socketpair(AF_UNIX, SOCK_STREAM)`: one fd each, both directions; bytes, no message
    /// boundaries.
    Stream,
    /// `socketpair(AF_UNIX, SOCK_SEQPACKET)`: one fd each; every write is one message.
    Seqpacket,
    /// Two pipes: commands one way, responses the other.
    Pipe,
    /// Two FIFOs (named pipes), made in a private temporary directory, opened, unlinked.
    Fifo,
}

impl TransportKind {
    /// Every kind, in the order the tools list them.
    ///
    /// ```
    /// use ioregionfd_model::wire::TransportKind;
    /// let names: Vec<_> = TransportKind::ALL.iter().map(|k| k.name()).collect();
    /// assert_eq!(names, ["stream", "seqpacket", "pipe", "fifo"]);
    /// ```
    pub const ALL: [TransportKind; 4] =
        [TransportKind::Stream, TransportKind::Seqpacket, TransportKind::Pipe, TransportKind::Fifo];

    /// Name as the command line writes it.
    ///
    /// ```
    /// assert_eq!(ioregionfd_model::wire::TransportKind::Stream.name(), "stream");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Stream => "stream",
            TransportKind::Seqpacket => "seqpacket",
            TransportKind::Pipe => "pipe",
            TransportKind::Fifo => "fifo",
        }
    }

    /// The kind with this [`name`](Self::name).
    ///
    /// ```
    /// use ioregionfd_model::wire::TransportKind;
    /// assert_eq!(TransportKind::from_name("fifo"), Some(TransportKind::Fifo));
    /// assert_eq!(TransportKind::from_name("tcp"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<TransportKind> {
        TransportKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What it is made of, for reports.
    ///
    /// ```
    /// use ioregionfd_model::wire::TransportKind;
    /// assert!(TransportKind::Seqpacket.describe().contains("SOCK_SEQPACKET"));
    /// ```
    pub fn describe(self) -> &'static str {
        match self {
            TransportKind::Stream => "socketpair(AF_UNIX, SOCK_STREAM)",
            TransportKind::Seqpacket => "socketpair(AF_UNIX, SOCK_SEQPACKET)",
            TransportKind::Pipe => "a pipe pair",
            TransportKind::Fifo => "a FIFO pair",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn seed_layout_is_byte_exact() {
        let c = Command {
            direction: Direction::Write,
            size_exponent: 3,
            resp: true,
            user_data: 0x1122,
            offset: 8,
            data: u64::MAX,
        };
        let b = c.encode(WireFormat::Seed);
        assert_eq!(u32::from_le_bytes(b[0..4].try_into().unwrap()), 1 | (3 << 4) | (1 << 6));
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 0x1122);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 8);
        assert_eq!(&b[24..32], &[0xff; 8]);
    }

    #[test]
    fn v3_layout_is_byte_exact() {
        let c = Command { direction: Direction::Read, size_exponent: 1, resp: true, user_data: 1, offset: 2, data: 0 };
        let b = c.encode(WireFormat::V3);
        assert_eq!(b[0], 0);
        assert_eq!(b[1], 0x11);
        assert_eq!(&b[2..8], &[0; 6]);
        assert_eq!(b[8], 1);
        assert_eq!(b[16], 2);
    }

    #[test]
    fn malformed_commands_are_typed_errors() {
        let good =
            Command { direction: Direction::Write, size_exponent: 0, resp: false, user_data: 0, offset: 0, data: 0x7f };
        let mut v3 = good.encode(WireFormat::V3);
        v3[1] = 0x04;
        assert_eq!(Command::decode(WireFormat::V3, &v3), Err(WireError::SizeExponent(4)));
        v3[1] = 0x20;
        assert_eq!(Command::decode(WireFormat::V3, &v3), Err(WireError::Reserved { byte: 1 }));
        v3[1] = 0;
        v3[0] = 2;
        assert_eq!(Command::decode(WireFormat::V3, &v3), Err(WireError::UnknownCommand(2)));
        let mut seed = good.encode(WireFormat::Seed);
        seed[0] |= 1 << 7;
        assert_eq!(Command::decode(WireFormat::Seed, &seed), Err(WireError::Reserved { byte: 0 }));
        let mut seed = good.encode(WireFormat::Seed);
        seed[3] = 0x80;
        assert_eq!(Command::decode(WireFormat::Seed, &seed), Err(WireError::Reserved { byte: 3 }));
        let mut seed = good.encode(WireFormat::Seed);
        seed[25] = 1; // data byte 1 of a 1-byte write
        assert_eq!(Command::decode(WireFormat::Seed, &seed), Err(WireError::DataBeyondSize));
        assert_eq!(Command::decode(WireFormat::Seed, &[0; 31]), Err(WireError::Size(31)));
        let read =
            Command { direction: Direction::Read, size_exponent: 2, resp: false, user_data: 0, offset: 0, data: 0 };
        assert_eq!(Command::decode(WireFormat::V3, &read.encode(WireFormat::V3)), Err(WireError::ReadResp));
        assert!(Command::decode(WireFormat::Seed, &read.encode(WireFormat::Seed)).is_ok());
    }
}
