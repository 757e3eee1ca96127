//! The script interface: one operation per line, exactly one result line per operation.
//!
//! This is what reviewers type and what the differential tests generate. Blank lines and `#`
//! comments print nothing. Numbers are decimal or `0x` hex on input; printed values are lowercase
//! `0x` hex. After every operation the structural invariants are checked; a violation is printed
//! as `violation ID: TEXT` after the result line of the operation that caused it (a structural
//! one once, when it appears; it stands until an operation repairs it).
//!
//! ```text
//! vm [backend=emulated|vmx-ept] [nr_iobus_devs=N|none] [insertion=sorted|append]  -> vm ID (from 0)
//! eventfd                                                               -> eventfd FD
//! close FD                                                              -> ok | err EBADF
//! ioeventfd VM BUS ADDR LEN EVENTFD [datamatch=N] [deassign] [flags=N]  -> ok | err ERRNO
//! coalesced VM BUS ADDR SIZE [pio=N] [unregister]                       -> ok | err ERRNO
//! write VM BUS ADDR LEN VALUE   -> eventfd FD | coalesced | exit mmio|pio ADDR LEN VALUE
//! read VM BUS ADDR LEN          -> eventfd FD | exit mmio|pio ADDR LEN
//! fail-next-alloc VM BUS                                                -> ok
//! design seed|rfc-v3|proposed              -> ok   (only before the first vm; else err EINVAL)
//! socketpair [stream|seqpacket] [nonblock] [buf=N]                      -> fd A B
//! pipe [nonblock] [buf=N]                                               -> fd R W
//! fifo [nonblock] [buf=N]                                               -> fd R W
//! ioregionfd                                      -> fd N   (seed only; else err EINVAL)
//! ioregion VM BUS ADDR SIZE RFD WFD [user_data=N] [posted] [deassign] [flags=N]  -> ok | err ERRNO
//! ioregion VM BUS ADDR SIZE FD [user_data=N] [posted] [flags=N]          -> ok | err ERRNO (seed)
//! serve FD [RESP_FD]                                                    -> ok | err ERRNO
//! ```
//!
//! An access to an ioregion prints `ioregion USER_DATA read|write OFFSET LEN VALUE` when the
//! device completed it (for a read, VALUE is what it returned), or `blocked` when the vCPU waits
//! for something nothing in this sequential model will do (a response nobody sends, a context
//! another blocked access holds). `serve` attaches the built-in memory device (reads return the
//! last value written at that offset, else 0) to the device end: commands are read from FD and
//! responses written to RESP_FD (default FD; for `seed`, the ioregionfd itself). The
//! `ioregion` line with one FD is the seed structure (fd = -1 deletes), with RFD and WFD the
//! rfc-v3 structure used by rfc-v3 and proposed; the other form under a design is an error of
//! the script (exit code 2). `flags=N` ORs raw bits into the flags word.
//!
//! BUS is `mmio` or `pio` (`fail-next-alloc` also takes `ccw` and `fast-mmio`). File descriptor
//! numbers are given out as a fresh process does: the lowest free number, starting at 3.
//! `flags=N` ORs raw bits into the flags word that BUS, `datamatch=` and `deassign` build (so
//! unknown bits can be tried); `pio=N` sets the raw `pio` field (default: 1 for BUS `pio`, else 0).
//! An operation on a VM that does not exist prints `err EBADF`. `insertion=append` is a defect
//! variant of the bus (new entries appended unsorted) that shows the `bus` check firing.
//!
//! ```
//! use ioregionfd_model::script::run_script;
//! let mut out = Vec::new();
//! let mut err = Vec::new();
//! let text = "vm\neventfd\nioeventfd 0 mmio 0x1000 4 3\nwrite 0 mmio 0x1000 4 7\nread 0 mmio 0x1000 4\n";
//! let code = run_script(text.as_bytes(), &mut out, &mut err, Default::default());
//! assert_eq!(code, 0);
//! assert_eq!(String::from_utf8(out).unwrap(), "vm 0\neventfd 3\nok\neventfd 3\nexit mmio 0x1000 4\n");
//! ```

use crate::bus::{BusKind, Insertion};
use crate::design::Design;
use crate::errno::Errno;
use crate::kvm::Kvm;
use crate::uapi::*;
use crate::vm::{Backend, VmConfig};
pub use crate::wire::TransportKind;
use std::fmt;
use std::io::{BufRead, Write};

/// One parsed script operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `vm [backend=B] [nr_iobus_devs=N|none] [insertion=sorted|append]`.
    Vm {
        /// Backend (default: emulated).
        backend: Backend,
        /// NR_IOBUS_DEVS check (default `Some(1000)`; `None` = not enforced).
        nr_iobus_devs: Option<i32>,
        /// Where new bus entries go (default: sorted, as the kernel does).
        insertion: Insertion,
    },
    /// `eventfd`.
    Eventfd,
    /// `close FD`.
    Close {
        /// The fd.
        fd: i32,
    },
    /// `ioeventfd VM BUS ADDR LEN EVENTFD [datamatch=N] [deassign] [flags=N]`.
    Ioeventfd {
        /// VM number.
        vm: usize,
        /// `mmio` or `pio`.
        bus: BusKind,
        /// Address or port.
        addr: u64,
        /// Length (any value, so invalid ones can be tried).
        len: u32,
        /// The eventfd (any number, so bad fds can be tried).
        fd: i32,
        /// `datamatch=N`: sets DATAMATCH and the value.
        datamatch: Option<u64>,
        /// `deassign`: sets DEASSIGN.
        deassign: bool,
        /// `flags=N`: raw bits ORed in.
        extra_flags: u32,
    },
    /// `coalesced VM BUS ADDR SIZE [pio=N] [unregister]`.
    Coalesced {
        /// VM number.
        vm: usize,
        /// `mmio` or `pio`.
        bus: BusKind,
        /// Start.
        addr: u64,
        /// Size.
        size: u32,
        /// Raw `pio` field, if given.
        pio: Option<u32>,
        /// Unregister instead of register.
        unregister: bool,
    },
    /// `write VM BUS ADDR LEN VALUE`.
    Write {
        /// VM number.
        vm: usize,
        /// `mmio` or `pio`.
        bus: BusKind,
        /// Address or port.
        addr: u64,
        /// 1, 2, 4 or 8 (PIO: 1, 2, 4).
        len: usize,
        /// Value (fits in `len` bytes).
        value: u64,
    },
    /// `read VM BUS ADDR LEN`.
    Read {
        /// VM number.
        vm: usize,
        /// `mmio` or `pio`.
        bus: BusKind,
        /// Address or port.
        addr: u64,
        /// 1, 2, 4 or 8 (PIO: 1, 2, 4).
        len: usize,
    },
    /// `fail-next-alloc VM BUS`.
    FailNextAlloc {
        /// VM number.
        vm: usize,
        /// Any bus.
        bus: BusKind,
    },
    /// `design NAME`.
    Design(Design),
    /// `socketpair [stream|seqpacket] [nonblock] [buf=N]`, `pipe ...`, `fifo ...`.
    Transport {
        /// Which.
        kind: TransportKind,
        /// `O_NONBLOCK` on the files.
        nonblock: bool,
        /// Buffer size per direction (default: the kernel's).
        buf: Option<usize>,
    },
    /// `ioregionfd`.
    Ioregionfd,
    /// `ioregion VM BUS ADDR SIZE RFD WFD ...` (rfc-v3 structure).
    IoregionV3 {
        /// VM number.
        vm: usize,
        /// The structure.
        args: KvmIoregionV3,
    },
    /// `ioregion VM BUS ADDR SIZE FD ...` (seed structure).
    IoregionSeed {
        /// VM number.
        vm: usize,
        /// The structure.
        args: KvmIoregionSeed,
    },
    /// `serve FD [RESP_FD]`.
    Serve {
        /// Where the device reads commands.
        fd: i32,
        /// Where it writes responses (default `fd`).
        resp: Option<i32>,
    },
}

fn ioregion_flag_words(bus: BusKind, posted: bool, deassign: bool, extra: u32) -> u32 {
    let mut flags = extra;
    if bus == BusKind::Pio {
        flags |= KVM_IOREGION_PIO;
    }
    if posted {
        flags |= KVM_IOREGION_POSTED_WRITES;
    }
    if deassign {
        flags |= KVM_IOREGION_DEASSIGN;
    }
    flags
}

impl Op {
    /// The `struct kvm_ioeventfd` an `ioeventfd` line passes to the ioctl.
    pub fn ioeventfd_args(
        bus: BusKind,
        addr: u64,
        len: u32,
        fd: i32,
        datamatch: Option<u64>,
        deassign: bool,
        extra: u32,
    ) -> KvmIoeventfd {
        let mut flags = extra;
        if bus == BusKind::Pio {
            flags |= KVM_IOEVENTFD_FLAG_PIO;
        }
        if datamatch.is_some() {
            flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
        }
        if deassign {
            flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
        }
        KvmIoeventfd { datamatch: datamatch.unwrap_or(0), addr, len, fd, flags, pad: [0; 36] }
    }
}

impl fmt::Display for Op {
    /// The line that parses back to this operation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Vm { backend, nr_iobus_devs, insertion } => {
                f.write_str("vm")?;
                if backend != Backend::default() {
                    write!(f, " backend={}", backend.name())?;
                }
                match nr_iobus_devs {
                    Some(crate::bus::NR_IOBUS_DEVS) => {}
                    Some(n) => write!(f, " nr_iobus_devs={n}")?,
                    None => f.write_str(" nr_iobus_devs=none")?,
                }
                if insertion == Insertion::AppendUnsorted {
                    f.write_str(" insertion=append")?;
                }
                Ok(())
            }
            Op::Eventfd => f.write_str("eventfd"),
            Op::Close { fd } => write!(f, "close {fd}"),
            Op::Ioeventfd { vm, bus, addr, len, fd, datamatch, deassign, extra_flags } => {
                write!(f, "ioeventfd {vm} {bus} {addr:#x} {len} {fd}")?;
                if let Some(d) = datamatch {
                    write!(f, " datamatch={d:#x}")?;
                }
                if deassign {
                    f.write_str(" deassign")?;
                }
                if extra_flags != 0 {
                    write!(f, " flags={extra_flags:#x}")?;
                }
                Ok(())
            }
            Op::Coalesced { vm, bus, addr, size, pio, unregister } => {
                write!(f, "coalesced {vm} {bus} {addr:#x} {size:#x}")?;
                if let Some(p) = pio {
                    write!(f, " pio={p}")?;
                }
                if unregister {
                    f.write_str(" unregister")?;
                }
                Ok(())
            }
            Op::Write { vm, bus, addr, len, value } => write!(f, "write {vm} {bus} {addr:#x} {len} {value:#x}"),
            Op::Read { vm, bus, addr, len } => write!(f, "read {vm} {bus} {addr:#x} {len}"),
            Op::FailNextAlloc { vm, bus } => write!(f, "fail-next-alloc {vm} {bus}"),
            Op::Design(d) => write!(f, "design {d}"),
            Op::Transport { kind, nonblock, buf } => {
                f.write_str(match kind {
                    TransportKind::Stream => "socketpair stream",
                    TransportKind::Seqpacket => "socketpair seqpacket",
                    TransportKind::Pipe => "pipe",
                    TransportKind::Fifo => "fifo",
                })?;
                if nonblock {
                    f.write_str(" nonblock")?;
                }
                if let Some(b) = buf {
                    write!(f, " buf={b}")?;
                }
                Ok(())
            }
            Op::Ioregionfd => f.write_str("ioregionfd"),
            Op::IoregionV3 { vm, args } => {
                let bus = if args.flags & KVM_IOREGION_PIO != 0 { "pio" } else { "mmio" };
                write!(
                    f,
                    "ioregion {vm} {bus} {:#x} {:#x} {} {}",
                    args.guest_paddr, args.memory_size, args.read_fd, args.write_fd
                )?;
                write!(f, " user_data={:#x}", args.user_data)?;
                let extra = args.flags & !(KVM_IOREGION_PIO | KVM_IOREGION_POSTED_WRITES | KVM_IOREGION_DEASSIGN);
                if args.flags & KVM_IOREGION_POSTED_WRITES != 0 {
                    f.write_str(" posted")?;
                }
                if args.flags & KVM_IOREGION_DEASSIGN != 0 {
                    f.write_str(" deassign")?;
                }
                if extra != 0 {
                    write!(f, " flags={extra:#x}")?;
                }
                Ok(())
            }
            Op::IoregionSeed { vm, args } => {
                let bus = if args.flags & KVM_IOREGION_PIO != 0 { "pio" } else { "mmio" };
                write!(f, "ioregion {vm} {bus} {:#x} {:#x} {}", args.guest_paddr, args.memory_size, args.fd)?;
                write!(f, " user_data={:#x}", args.user_data)?;
                let extra = args.flags & !(KVM_IOREGION_PIO | KVM_IOREGION_POSTED_WRITES);
                if args.flags & KVM_IOREGION_POSTED_WRITES != 0 {
                    f.write_str(" posted")?;
                }
                if extra != 0 {
                    write!(f, " flags={extra:#x}")?;
                }
                Ok(())
            }
            Op::Serve { fd, resp } => match resp {
                Some(r) => write!(f, "serve {fd} {r}"),
                None => write!(f, "serve {fd}"),
            },
        }
    }
}

/// A line that does not parse, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// Parses a number: decimal or `0x` hex, optionally negative (one leading `-`, before the `0x`).
pub fn parse_number(tok: &str) -> Result<i128, ParseError> {
    let (neg, body) = match tok.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, tok),
    };
    // Digits only: `from_str_radix` would also take a sign after the `0x` (`-0x-8000...` would
    // then be `i128::MIN`, whose negation overflows).
    let digits = |s: &str, hex: bool| {
        !s.is_empty() && s.chars().all(|c| if hex { c.is_ascii_hexdigit() } else { c.is_ascii_digit() })
    };
    let parsed = match body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        Some(hex) if digits(hex, true) => i128::from_str_radix(hex, 16),
        None if digits(body, false) => body.parse::<i128>(),
        _ => return err(format!("`{tok}` is not a number")),
    };
    match parsed {
        Ok(v) if v <= u64::MAX as i128 => Ok(if neg { -v } else { v }),
        _ => err(format!("`{tok}` is not a number that fits in 64 bits")),
    }
}

pub(crate) fn number<T: TryFrom<i128>>(tok: &str, what: &str) -> Result<T, ParseError> {
    let v = parse_number(tok)?;
    T::try_from(v).map_err(|_| ParseError(format!("{what} `{tok}` is out of range")))
}

/// The positional and `key=value`/flag arguments of one line.
struct Args<'a> {
    verb: &'a str,
    positional: Vec<&'a str>,
    options: Vec<(&'a str, Option<&'a str>)>,
}

impl<'a> Args<'a> {
    fn split(line: &'a str) -> Option<Args<'a>> {
        let mut toks = line.split_whitespace();
        let verb = toks.next()?;
        let (mut positional, mut options) = (Vec::new(), Vec::new());
        for t in toks {
            match t.split_once('=') {
                Some((k, v)) => options.push((k, Some(v))),
                None if t.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    && !["mmio", "pio", "ccw", "fast-mmio"].contains(&t) =>
                {
                    options.push((t, None))
                }
                None => positional.push(t),
            }
        }
        Some(Args { verb, positional, options })
    }

    fn expect(&self, names: &[&str]) -> Result<(), ParseError> {
        if self.positional.len() != names.len() {
            return err(format!("`{}` takes {} ({} given)", self.verb, names.join(" "), self.positional.len()));
        }
        Ok(())
    }

    fn allow(&self, known: &[&str]) -> Result<(), ParseError> {
        for (k, _) in &self.options {
            if !known.contains(k) {
                return err(format!("`{}` has no option `{k}` (known: {})", self.verb, known.join(", ")));
            }
        }
        Ok(())
    }

    fn value(&self, key: &str) -> Result<Option<&'a str>, ParseError> {
        match self.options.iter().find(|(k, _)| *k == key) {
            Some((_, Some(v))) => Ok(Some(v)),
            Some((_, None)) => err(format!("option `{key}` needs a value: {key}=N")),
            None => Ok(None),
        }
    }

    fn flag(&self, key: &str) -> Result<bool, ParseError> {
        match self.options.iter().find(|(k, _)| *k == key) {
            Some((_, None)) => Ok(true),
            Some((_, Some(_))) => err(format!("`{key}` takes no value")),
            None => Ok(false),
        }
    }
}

pub(crate) fn guest_bus(tok: &str) -> Result<BusKind, ParseError> {
    match tok {
        "mmio" => Ok(BusKind::Mmio),
        "pio" => Ok(BusKind::Pio),
        _ => err(format!("BUS must be mmio or pio, not `{tok}`")),
    }
}

fn access_len(bus: BusKind, tok: &str) -> Result<usize, ParseError> {
    let len: usize = number(tok, "LEN")?;
    match (bus, len) {
        (BusKind::Mmio, 1 | 2 | 4 | 8) | (BusKind::Pio, 1 | 2 | 4) => Ok(len),
        (BusKind::Pio, _) => err(format!("a PIO access is 1, 2 or 4 bytes, not {len}")),
        _ => err(format!("an MMIO access is 1, 2, 4 or 8 bytes, not {len}")),
    }
}

fn access_addr(bus: BusKind, addr: u64, len: usize) -> Result<u64, ParseError> {
    if bus == BusKind::Pio && addr > 0xffff {
        return err(format!("port {addr:#x} is above 0xffff"));
    }
    if bus == BusKind::Mmio && (addr & 0xfff) + len as u64 > 0x1000 {
        return err(format!(
            "the access of {len} bytes at {addr:#x} crosses a 4 KiB page: the kernel splits it into fragments, which the model does not reproduce"
        ));
    }
    Ok(addr)
}

/// Parses one line: `Ok(None)` for a blank line or a comment.
///
/// ```
/// use ioregionfd_model::script::{parse_line, Op};
/// assert_eq!(parse_line("  # nothing").unwrap(), None);
/// let op = parse_line("write 0 mmio 0x10 2 0xbeef").unwrap().unwrap();
/// assert_eq!(op.to_string(), "write 0 mmio 0x10 2 0xbeef");
/// assert!(parse_line("write 0 mmio 0x10 2 0x1beef").is_err()); // does not fit in 2 bytes
/// ```
pub fn parse_line(line: &str) -> Result<Option<Op>, ParseError> {
    let code = line.split('#').next().unwrap_or("");
    let Some(a) = Args::split(code) else { return Ok(None) };
    let p = &a.positional;
    let op = match a.verb {
        "vm" => {
            a.expect(&[])?;
            a.allow(&["backend", "nr_iobus_devs", "insertion"])?;
            let backend = match a.value("backend")? {
                Some(b) => Backend::from_name(b)
                    .ok_or_else(|| ParseError(format!("backend must be emulated or vmx-ept, not `{b}`")))?,
                None => Backend::default(),
            };
            let nr_iobus_devs = match a.value("nr_iobus_devs")? {
                Some("none") => None,
                Some(n) => Some(number(n, "nr_iobus_devs")?),
                None => Some(crate::bus::NR_IOBUS_DEVS),
            };
            let insertion = match a.value("insertion")? {
                None | Some("sorted") => Insertion::Sorted,
                Some("append") => Insertion::AppendUnsorted,
                Some(other) => return err(format!("insertion must be sorted or append, not `{other}`")),
            };
            Op::Vm { backend, nr_iobus_devs, insertion }
        }
        "eventfd" => {
            a.expect(&[])?;
            a.allow(&[])?;
            Op::Eventfd
        }
        "close" => {
            a.expect(&["FD"])?;
            a.allow(&[])?;
            Op::Close { fd: number(p[0], "FD")? }
        }
        "ioeventfd" => {
            a.expect(&["VM", "BUS", "ADDR", "LEN", "EVENTFD"])?;
            a.allow(&["datamatch", "deassign", "flags"])?;
            Op::Ioeventfd {
                vm: number(p[0], "VM")?,
                bus: guest_bus(p[1])?,
                addr: number(p[2], "ADDR")?,
                len: number(p[3], "LEN")?,
                fd: number(p[4], "EVENTFD")?,
                datamatch: a.value("datamatch")?.map(|v| number(v, "datamatch")).transpose()?,
                deassign: a.flag("deassign")?,
                extra_flags: a.value("flags")?.map(|v| number(v, "flags")).transpose()?.unwrap_or(0),
            }
        }
        "coalesced" => {
            a.expect(&["VM", "BUS", "ADDR", "SIZE"])?;
            a.allow(&["pio", "unregister"])?;
            Op::Coalesced {
                vm: number(p[0], "VM")?,
                bus: guest_bus(p[1])?,
                addr: number(p[2], "ADDR")?,
                size: number(p[3], "SIZE")?,
                pio: a.value("pio")?.map(|v| number(v, "pio")).transpose()?,
                unregister: a.flag("unregister")?,
            }
        }
        "write" => {
            a.expect(&["VM", "BUS", "ADDR", "LEN", "VALUE"])?;
            a.allow(&[])?;
            let bus = guest_bus(p[1])?;
            let len = access_len(bus, p[3])?;
            let addr = access_addr(bus, number(p[2], "ADDR")?, len)?;
            let value: u64 = number(p[4], "VALUE")?;
            if len < 8 && value >> (8 * len) != 0 {
                return err(format!("VALUE {value:#x} does not fit in {len} bytes"));
            }
            Op::Write { vm: number(p[0], "VM")?, bus, addr, len, value }
        }
        "read" => {
            a.expect(&["VM", "BUS", "ADDR", "LEN"])?;
            a.allow(&[])?;
            let bus = guest_bus(p[1])?;
            let len = access_len(bus, p[3])?;
            let addr = access_addr(bus, number(p[2], "ADDR")?, len)?;
            Op::Read { vm: number(p[0], "VM")?, bus, addr, len }
        }
        "fail-next-alloc" => {
            a.expect(&["VM", "BUS"])?;
            a.allow(&[])?;
            let bus = BusKind::from_name(p[1])
                .ok_or_else(|| ParseError(format!("BUS must be mmio, pio, ccw or fast-mmio, not `{}`", p[1])))?;
            Op::FailNextAlloc { vm: number(p[0], "VM")?, bus }
        }
        "design" => {
            a.allow(&["seed", "rfc-v3", "proposed"])?;
            match a.options.as_slice() {
                [(name, None)] => Op::Design(Design::from_name(name).expect("allowed names")),
                _ => return err("`design` takes one of seed, rfc-v3, proposed"),
            }
        }
        "socketpair" | "pipe" | "fifo" => {
            a.expect(&[])?;
            let kinds: &[&str] =
                if a.verb == "socketpair" { &["stream", "seqpacket", "nonblock", "buf"] } else { &["nonblock", "buf"] };
            a.allow(kinds)?;
            let kind = match a.verb {
                "pipe" => TransportKind::Pipe,
                "fifo" => TransportKind::Fifo,
                _ if a.flag("seqpacket")? => TransportKind::Seqpacket,
                _ => TransportKind::Stream,
            };
            let buf = a.value("buf")?.map(|v| number::<usize>(v, "buf")).transpose()?;
            if buf == Some(0) {
                return err("buf must be at least 1");
            }
            Op::Transport { kind, nonblock: a.flag("nonblock")?, buf }
        }
        "ioregionfd" => {
            a.expect(&[])?;
            a.allow(&[])?;
            Op::Ioregionfd
        }
        "ioregion" => {
            let seed_form = p.len() == 5;
            if seed_form {
                a.expect(&["VM", "BUS", "ADDR", "SIZE", "FD"])?;
                a.allow(&["user_data", "posted", "flags"])?;
            } else {
                a.expect(&["VM", "BUS", "ADDR", "SIZE", "RFD", "WFD"])?;
                a.allow(&["user_data", "posted", "deassign", "flags"])?;
            }
            let vm = number(p[0], "VM")?;
            let bus = guest_bus(p[1])?;
            let guest_paddr = number(p[2], "ADDR")?;
            let memory_size = number(p[3], "SIZE")?;
            let user_data = a.value("user_data")?.map(|v| number(v, "user_data")).transpose()?.unwrap_or(0);
            let extra = a.value("flags")?.map(|v| number(v, "flags")).transpose()?.unwrap_or(0);
            let posted = a.flag("posted")?;
            if seed_form {
                let flags = ioregion_flag_words(bus, posted, false, extra);
                let fd = number(p[4], "FD")?;
                let args = KvmIoregionSeed { guest_paddr, memory_size, user_data, fd, flags, pad: [0; 32] };
                Op::IoregionSeed { vm, args }
            } else {
                let flags = ioregion_flag_words(bus, posted, a.flag("deassign")?, extra);
                let (read_fd, write_fd) = (number(p[4], "RFD")?, number(p[5], "WFD")?);
                let args =
                    KvmIoregionV3 { guest_paddr, memory_size, user_data, read_fd, write_fd, flags, pad: [0; 28] };
                Op::IoregionV3 { vm, args }
            }
        }
        "serve" => {
            a.allow(&[])?;
            match p.len() {
                1 => Op::Serve { fd: number(p[0], "FD")?, resp: None },
                2 => Op::Serve { fd: number(p[0], "FD")?, resp: Some(number(p[1], "RESP_FD")?) },
                n => return err(format!("`serve` takes FD [RESP_FD] ({n} given)")),
            }
        }
        other => return err(format!("unknown operation `{other}`")),
    };
    Ok(Some(op))
}

/// The result of one operation: its result line, then any violation lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The one result line.
    pub result: String,
    /// `violation ID: TEXT` lines.
    pub violations: Vec<String>,
}

/// Runs operations against one modelled system.
#[derive(Debug)]
pub struct Runner {
    kvm: Kvm,
    seen: usize,
    standing: std::collections::BTreeSet<String>,
    /// Knob overrides, applied again after a `design` line.
    overrides: Vec<(String, String)>,
}

fn ok_or_errno(r: Result<(), Errno>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("err {e}"),
    }
}

impl Runner {
    /// A fresh system under `design`.
    pub fn new(design: Design) -> Self {
        Runner {
            kvm: Kvm::with_design(design, crate::trace::Recorder::new()),
            seen: 0,
            standing: Default::default(),
            overrides: Vec::new(),
        }
    }

    /// A fresh system that records violations but no trace events (long runs, fuzzing).
    pub fn without_trace(design: Design) -> Self {
        Runner {
            kvm: Kvm::with_design(design, crate::trace::Recorder::without_events()),
            seen: 0,
            standing: Default::default(),
            overrides: Vec::new(),
        }
    }

    /// A fresh system under `design` with knob `overrides` (`NAME=VALUE`, kept across a
    /// `design` line).
    pub fn with_overrides(design: Design, overrides: &[(String, String)]) -> Result<Self, String> {
        let knobs = design.knobs().with_overrides(overrides)?;
        Ok(Runner {
            kvm: Kvm::with_knobs(knobs, crate::trace::Recorder::new()),
            seen: 0,
            standing: Default::default(),
            overrides: overrides.to_vec(),
        })
    }

    /// The design.
    pub fn design(&self) -> Design {
        self.kvm.design()
    }

    /// The system.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Runs one operation, then the structural checks. `Err` for an operation the design does
    /// not have (an `ioregion` line of the other design's form): an error of the script.
    pub fn execute(&mut self, op: &Op) -> Result<Output, ParseError> {
        let seed = self.kvm.design() == Design::Seed;
        match op {
            Op::IoregionSeed { .. } if !seed => {
                return err(format!(
                    "the one-FD form of `ioregion` is the seed structure; this design ({}) takes RFD WFD",
                    self.kvm.design()
                ));
            }
            Op::IoregionV3 { .. } if seed => {
                return err("the RFD WFD form of `ioregion` is the rfc-v3 structure; the seed design takes one FD");
            }
            _ => {}
        }
        let result = self.result(op);
        let rec = self.kvm.recorder();
        let mut violations: Vec<String> = rec.violations_since(self.seen).iter().map(|v| v.to_string()).collect();
        self.seen = rec.violation_count();
        let now: std::collections::BTreeSet<String> =
            self.kvm.check_structure().into_iter().map(|(inv, text)| format!("violation {}: {text}", inv.id)).collect();
        violations.extend(now.difference(&self.standing).cloned());
        self.standing = now;
        Ok(Output { result, violations })
    }

    fn result(&mut self, op: &Op) -> String {
        if let Op::Design(d) = op {
            let knobs = d.knobs().with_overrides(&self.overrides).expect("overrides checked when given");
            return ok_or_errno(self.kvm.set_knobs(knobs));
        }
        apply(&self.kvm, op)
    }
}

/// Runs one operation on `kvm` and returns its result line (`design`, which needs the system to
/// itself, prints `err EINVAL` here: [`Runner`] handles it).
pub fn apply(kvm: &Kvm, op: &Op) -> String {
    {
        let vm = |id: usize| kvm.vm(id).ok_or(Errno::EBADF);
        match *op {
            Op::Vm { backend, nr_iobus_devs, insertion } => {
                // The knobs in force (overrides included) decide the bus; what the line says
                // explicitly (a value other than the line's default) wins.
                let mut config = VmConfig { backend, ..VmConfig::for_design(&kvm.knobs()) };
                if nr_iobus_devs != Some(crate::bus::NR_IOBUS_DEVS) {
                    config.bus.nr_iobus_devs = nr_iobus_devs;
                }
                if insertion != Insertion::Sorted {
                    config.bus.insertion = insertion;
                }
                format!("vm {}", kvm.create_vm(config))
            }
            Op::Eventfd => format!("eventfd {}", kvm.eventfd()),
            Op::Close { fd } => ok_or_errno(kvm.close(fd)),
            Op::Ioeventfd { vm, bus, addr, len, fd, datamatch, deassign, extra_flags } => {
                let args = Op::ioeventfd_args(bus, addr, len, fd, datamatch, deassign, extra_flags);
                ok_or_errno(kvm.ioeventfd(vm, &args))
            }
            Op::Coalesced { vm, bus, addr, size, pio, unregister } => {
                let zone = KvmCoalescedMmioZone { addr, size, pio: pio.unwrap_or((bus == BusKind::Pio) as u32) };
                ok_or_errno(if unregister {
                    kvm.unregister_coalesced_mmio(vm, &zone)
                } else {
                    kvm.register_coalesced_mmio(vm, &zone)
                })
            }
            Op::Write { vm, bus, addr, len, value } => access(kvm.access(vm, bus, addr, len, Some(value))),
            Op::Read { vm, bus, addr, len } => access(kvm.access(vm, bus, addr, len, None)),
            Op::FailNextAlloc { vm: id, bus } => match vm(id) {
                Ok(vm) => {
                    vm.fail_next_alloc(bus);
                    "ok".to_string()
                }
                Err(e) => format!("err {e}"),
            },
            Op::Design(_) => "err EINVAL".to_string(),
            Op::Transport { kind, nonblock, buf } => {
                let (a, b) = kvm.open_transport(kind, buf, nonblock);
                format!("fd {a} {b}")
            }
            Op::Ioregionfd => match kvm.ioregionfd() {
                Ok(fd) => format!("fd {fd}"),
                Err(e) => format!("err {e}"),
            },
            Op::IoregionV3 { vm, args } => ok_or_errno(kvm.set_ioregion_v3(vm, &args)),
            Op::IoregionSeed { vm, args } => ok_or_errno(kvm.set_ioregion_seed(vm, &args)),
            Op::Serve { fd, resp } => ok_or_errno(kvm.serve(fd, resp)),
        }
    }
}

fn access(r: Result<Result<crate::vm::AccessOutcome, crate::vm::AccessError>, Errno>) -> String {
    match r {
        Ok(Ok(outcome)) => outcome.to_string(),
        Ok(Err(e)) => format!("err EINVAL ({e})"),
        Err(e) => format!("err {e}"),
    }
}

/// Runs a whole script: results on `out`, parse errors on `err`. Returns the exit code: 2 for a
/// line that does not parse (nothing after it runs), 1 if any violation was printed, else 0.
pub fn run_script(input: impl BufRead, out: &mut impl Write, err: &mut impl Write, design: Design) -> i32 {
    run_script_with(input, out, err, Runner::new(design))
}

/// [`run_script`] on a given runner (a design with knob overrides: [`Runner::with_overrides`]).
pub fn run_script_with(input: impl BufRead, out: &mut impl Write, err: &mut impl Write, runner: Runner) -> i32 {
    run_script_with_options(input, out, err, runner, ScriptOptions::default())
}

/// What [`run_script_with_options`] prints besides each result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScriptOptions {
    /// Each operation as `> LINE` before its result (comments and blank lines are skipped).
    pub echo: bool,
    /// The trace events each operation recorded, as `  | EVENT` lines before its result.
    pub trace: bool,
}

/// [`run_script_with`], with the operations echoed and/or their events shown: every operation's
/// lines (echo, events, result, the violations it caused) stay together.
///
/// ```
/// use ioregionfd_model::design::Design;
/// use ioregionfd_model::script::{Runner, ScriptOptions, run_script_with_options};
/// let mut out = Vec::new();
/// let opts = ScriptOptions { echo: true, trace: true };
/// let code = run_script_with_options("vm\neventfd\n".as_bytes(), &mut out, &mut Vec::new(), Runner::new(Design::Proposed), opts);
/// let out = String::from_utf8(out).unwrap();
/// assert_eq!(code, 0);
/// assert!(out.starts_with("> vm\n  | 1 main vm0: created\nvm 0\n> eventfd\n"), "{out}");
/// ```
pub fn run_script_with_options(
    input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
    mut runner: Runner,
    opts: ScriptOptions,
) -> i32 {
    let mut violated = false;
    for (n, line) in input.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(err, "line {}: cannot read: {e}", n + 1);
                return 2;
            }
        };
        let op = match parse_line(&line) {
            Ok(Some(op)) => op,
            Ok(None) => continue,
            Err(e) => {
                let _ = out.flush();
                let _ = writeln!(err, "line {}: {e}: {}", n + 1, line.trim());
                return 2;
            }
        };
        if opts.echo {
            let _ = writeln!(out, "> {}", line.trim());
        }
        let events_before = runner.kvm().recorder().event_count();
        let output = match runner.execute(&op) {
            Ok(o) => o,
            Err(e) => {
                let _ = out.flush();
                let _ = writeln!(err, "line {}: {e}: {}", n + 1, line.trim());
                return 2;
            }
        };
        if opts.trace {
            for e in runner.kvm().recorder().events_since(events_before) {
                let _ = writeln!(out, "  | {e}");
            }
        }
        let _ = writeln!(out, "{}", output.result);
        for v in &output.violations {
            let _ = writeln!(out, "{v}");
        }
        violated |= !output.violations.is_empty();
    }
    let _ = out.flush();
    i32::from(violated)
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

    /// Found while writing the `script` fuzz target: `from_str_radix` accepted a sign after `0x`, so
    /// `-0x-80000000000000000000000000000000` was `i128::MIN` and negating it panicked (overflow),
    /// and `0x-1` parsed as -1.
    #[test]
    fn hex_numbers_take_no_sign_after_0x() {
        for tok in ["-0x-80000000000000000000000000000000", "0x-1", "0x+1", "-0x+1", "0x", "-", "-0x", ""] {
            assert_eq!(parse_number(tok), Err(ParseError(format!("`{tok}` is not a number"))), "{tok}");
        }
        assert!(parse_line("close -0x-80000000000000000000000000000000").is_err());
        assert_eq!(parse_number("-0x10"), Ok(-16));
        assert_eq!(parse_number("0XfF"), Ok(255));
        assert_eq!(parse_number("-0xffffffffffffffff"), Ok(-(u64::MAX as i128)));
        assert!(parse_number("0x10000000000000000").is_err());
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX as i128));
    }
}
