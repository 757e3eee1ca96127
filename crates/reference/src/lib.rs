//! The reference of the three ioregionfd designs: a second, independent implementation of the
//! model's `Kvm` written from docs/spec.md (§2-4), the knob docs of `src/design.rs`,
//! the seed registration order documented on `KvmIo::set_ioregion_seed`, and the transport
//! semantics documented on `fd::channel` and `fd` (see this crate's
//! `tests/ioregion_state_machine.rs` for what it covers and how it was written).
//!
//! Two checkers drive it: the proptest state machines of this crate's
//! `tests/ioregion_state_machine.rs`, and the `registration` fuzz target
//! (`crates/fuzz-targets/src/registration.rs`).
//! Both step a [`World`] and the model ([`Sut`]) with the same [`Op`] and compare the two
//! [`Expect`]s with [`compare`]. [`World::admits`] says which operations the reference is
//! meant for (a sane userspace for `proposed`; devices on ioregionfds only for `seed`), and
//! [`World::models`] which kinds of operation it implements at all (everything but injected
//! allocation failures).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use ioregionfd_model::bus::{BusKind, HandledBy};
use ioregionfd_model::design::Design;
use ioregionfd_model::errno::Errno;
use ioregionfd_model::invariants::Invariant;
use ioregionfd_model::script::{Op, Runner, TransportKind};
use ioregionfd_model::structure::{StructureWatch, Tally};
use ioregionfd_model::trace::Violation;
use ioregionfd_model::uapi::{KvmCoalescedMmioZone, KvmIoregionSeed, KvmIoregionV3};
use ioregionfd_model::vm::{AccessOutcome, Backend, KvmExit, VmConfig};

// ---------------------------------------------------------------------------------------------
// Constants from the spec and the documented transport semantics
// ---------------------------------------------------------------------------------------------

/// `KVM_IOREGION_PIO`, `KVM_IOREGION_POSTED_WRITES`, `KVM_IOREGION_DEASSIGN`.
pub const IOREGION_PIO: u32 = 1 << 0;
pub const IOREGION_POSTED: u32 = 1 << 1;
pub const IOREGION_DEASSIGN: u32 = 1 << 2;
/// `KVM_IOEVENTFD_FLAG_*`.
pub const IOEVENTFD_DATAMATCH: u32 = 1 << 0;
pub const IOEVENTFD_PIO: u32 = 1 << 1;
pub const IOEVENTFD_DEASSIGN: u32 = 1 << 2;
pub const IOEVENTFD_CCW: u32 = 1 << 3;
pub const IOEVENTFD_VALID: u32 = 0x1f;
/// Default buffers (`fd::channel` docs): a socket's per direction, a pipe's.
pub const SOCKET_BUF: usize = 212_992;
pub const PIPE_BUF_DEFAULT: usize = 65_536;
/// Pipe writes up to `PIPE_BUF` bytes are atomic.
pub const PIPE_BUF: usize = 4096;
/// Both wire formats: 32-byte messages.
pub const MSG: usize = 32;
/// `get_next_ino()` and the tmpfs counter both start here (`fd` docs).
pub const FIRST_INO: u64 = 100;
/// `REFCOUNT_SATURATED`.
pub const SATURATED: i64 = i32::MIN as i64 / 2;

/// Bus indices of the reference.
pub const MMIO: usize = 0;
pub const PIO: usize = 1;
pub const FAST: usize = 2;
/// `KVM_VIRTIO_CCW_NOTIFY_BUS`: an ioeventfd with the CCW flag lands there on x86 too, where
/// nothing reads it (checked on the kernel; `tests/kvm_oracle.rs`).
pub const CCW: usize = 3;

pub const MMIO_BASE: u64 = 0x1000;
pub const PIO_BASE: u64 = 0x60;

// ---------------------------------------------------------------------------------------------
// What a step shows
// ---------------------------------------------------------------------------------------------

/// The result of one operation, as the script prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obs {
    Vm(usize),
    Eventfd(i32),
    Fds(i32, i32),
    Fd(Result<i32, Errno>),
    Ret(Result<(), Errno>),
    Access(Result<Acc, Errno>),
}

/// An access outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acc {
    Ioregion {
        user_data: u64,
        is_write: bool,
        offset: u64,
        len: usize,
        value: u64,
    },
    Eventfd(i32),
    Exit {
        pio: bool,
        addr: u64,
        len: usize,
        value: Option<u64>,
    },
    /// `KVM_EXIT_IOREGIONFD_FAILURE` (proposed).
    Failure {
        addr: u64,
        len: usize,
        value: Option<u64>,
    },
    Blocked,
    /// A write a coalesced zone took into the VM's ring.
    Coalesced,
}

impl fmt::Display for Obs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obs::Vm(n) => write!(f, "vm {n}"),
            Obs::Eventfd(n) => write!(f, "eventfd {n}"),
            Obs::Fds(a, b) => write!(f, "fd {a} {b}"),
            Obs::Fd(Ok(n)) => write!(f, "fd {n}"),
            Obs::Ret(Ok(())) => f.write_str("ok"),
            Obs::Fd(Err(e)) | Obs::Ret(Err(e)) | Obs::Access(Err(e)) => write!(f, "err {e}"),
            Obs::Access(Ok(a)) => match a {
                Acc::Ioregion { user_data, is_write, offset, len, value } => {
                    let dir = if *is_write { "write" } else { "read" };
                    write!(f, "ioregion {user_data:#x} {dir} {offset:#x} {len} {value:#x}")
                }
                Acc::Eventfd(n) => write!(f, "eventfd {n}"),
                Acc::Exit { pio, addr, len, value } => {
                    write!(f, "exit {} {addr:#x} {len}", if *pio { "pio" } else { "mmio" })?;
                    if let Some(v) = value {
                        write!(f, " {v:#x}")?;
                    }
                    Ok(())
                }
                Acc::Failure { addr, len, value } => {
                    write!(f, "exit ioregion-failure {addr:#x} {len}")?;
                    if let Some(v) = value {
                        write!(f, " {v:#x}")?;
                    }
                    Ok(())
                }
                Acc::Blocked => f.write_str("blocked"),
                Acc::Coalesced => f.write_str("coalesced"),
            },
        }
    }
}

/// What the reference predicts for one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub obs: Obs,
    /// Event violation ids recorded during the step, sorted.
    pub events: Vec<&'static str>,
    /// Structural violation ids standing after the step, sorted.
    pub structure: Vec<&'static str>,
}

// ---------------------------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sb {
    Anon,
    Sockfs,
    Pipefs,
    Tmpfs,
}

pub type Ino = (Sb, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChanKind {
    Stream,
    Seqpacket,
    Pipe,
}

/// Ghost identity of an access: (VM, vCPU). Every access is made by a new sequential vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub vm: usize,
    pub vcpu: usize,
}

#[derive(Clone, Debug)]
pub struct Chan {
    pub kind: ChanKind,
    pub cap: usize,
    pub bytes: VecDeque<u8>,
    pub msgs: VecDeque<Vec<u8>>,
    pub queued: usize,
    pub readers: usize,
    pub writers: usize,
    /// Ghost: the access each queued byte belongs to, as runs (tag, length) in queue order.
    pub tags: VecDeque<(Option<Tag>, usize)>,
}

impl Chan {
    pub fn push_tags(&mut self, tag: Option<Tag>, n: usize) {
        match self.tags.back_mut() {
            Some((t, len)) if *t == tag => *len += n,
            _ => self.tags.push_back((tag, n)),
        }
    }

    /// The tags of the next `n` bytes, each once, in order (untagged bytes have none).
    pub fn take_tags(&mut self, mut n: usize) -> Vec<Tag> {
        let mut out = Vec::new();
        while n > 0 {
            let Some((tag, len)) = self.tags.front_mut() else { break };
            let k = n.min(*len);
            if let Some(t) = *tag
                && out.last() != Some(&t)
            {
                out.push(t);
            }
            *len -= k;
            n -= k;
            if *len == 0 {
                self.tags.pop_front();
            }
        }
        out
    }
}

/// Appends `tags` to `into`, a tag once per run.
pub fn merge_tags(into: &mut Vec<Tag>, tags: Vec<Tag>) {
    for t in tags {
        if into.last() != Some(&t) {
            into.push(t);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FKind {
    Eventfd(usize),
    Socket { rx: usize, tx: usize },
    PipeRead(usize),
    PipeWrite(usize),
    Ioregionfd(usize),
}

#[derive(Clone, Debug)]
pub struct RFile {
    pub ino: Ino,
    pub kind: FKind,
    pub nonblock: bool,
    pub refs: i64,
    pub live: bool,
}

#[derive(Clone, Debug)]
pub struct Efd {
    pub label: i32,
    pub count: u64,
    pub refs: i64,
}

/// The seed ioregionfd object.
#[derive(Clone, Debug)]
pub struct Obj {
    pub cmd: usize,
    pub resp: usize,
    /// Regions registered (or modified) with it, for the last-close rule.
    pub hooks: Vec<usize>,
}

/// Where KVM writes commands or reads responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    File(usize),
    Obj(usize),
}

#[derive(Clone, Debug)]
pub struct Ctx {
    pub busy: bool,
    /// proposed: the send side, held around SEND_CMD by writers of this inode.
    pub send_busy: bool,
    pub refs: i64,
    pub live: bool,
    /// rfc-v3 and seed: where responses are read.
    pub resp: Option<End>,
}

#[derive(Clone, Debug)]
pub struct Region {
    pub vm: usize,
    pub bus: usize,
    pub paddr: u64,
    pub size: u64,
    pub user_data: u64,
    pub posted: bool,
    pub cmd: End,
    pub ctx: Option<usize>,
    /// proposed: the context of the write file's inode, whose send side is taken around each
    /// SEND_CMD (every writer of a channel serialized; nothing waits while holding it).
    pub send_ctx: Option<usize>,
    /// proposed: the region's own read file.
    pub rfile: Option<usize>,
    pub live: bool,
}

#[derive(Clone, Debug)]
pub struct Ioev {
    pub vm: usize,
    pub bus: usize,
    pub addr: u64,
    pub len: u32,
    pub efd: usize,
    pub wildcard: bool,
    pub datamatch: u64,
    pub live: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dev {
    Region(usize),
    Ioev(usize),
    Zone(usize),
}

/// A coalesced MMIO zone (`KVM_REGISTER_COALESCED_MMIO`; spec `kvm-io-bus.md`).
#[derive(Clone, Debug)]
pub struct Zone {
    pub vm: usize,
    pub addr: u64,
    pub size: u32,
    pub pio: u32,
    pub live: bool,
}

/// `coalesced_mmio_in_range`: `(addr, len)` lies inside the zone; `len` is an `int`, and the
/// zone's end is computed in 64 bits without an overflow check.
pub fn zone_holds(z: &Zone, addr: u64, len: i32) -> bool {
    let Ok(len) = u64::try_from(len) else { return false };
    addr.checked_add(len).is_some_and(|end| addr >= z.addr && end <= z.addr.wrapping_add(u64::from(z.size)))
}

/// Usable entries of the coalesced ring (`KVM_COALESCED_MMIO_MAX` - 1: one slot stays empty).
pub const RING_USABLE: usize = 169;

#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub addr: u64,
    pub len: i32,
    pub dev: Dev,
}

#[derive(Clone, Debug, Default)]
pub struct RVm {
    pub lists: [Vec<usize>; 4],
    pub arrays: [Vec<Entry>; 4],
    pub vcpus: usize,
    /// VMX/EPT backend: pages with an MMIO SPTE take the fast path (FAST_MMIO, length 0).
    pub vmx: bool,
    pub sptes: std::collections::BTreeSet<u64>,
    /// Entries in the coalesced ring (nothing drains it in a script).
    pub ring: usize,
}

#[derive(Clone, Debug)]
pub struct Device {
    pub cmd: usize,
    pub resp: usize,
    pub mem: BTreeMap<(u64, u64), u64>,
    pub partial: Vec<u8>,
    pub partial_tags: Vec<Tag>,
    pub stopped: bool,
}

/// The result of one read or write call (`fd::channel` docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tr {
    Done(usize),
    Failed(Errno),
    WouldBlock,
}

/// How a dispatch did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fail {
    /// No device took the access (`EOPNOTSUPP`).
    NoDevice,
    Blocked,
    Error,
    /// proposed: the command was sent and no response came (`KVM_EXIT_IOREGIONFD_FAILURE`).
    Failure,
}

/// A decoded command.
#[derive(Clone, Copy, Debug)]
pub struct Cmd {
    pub write: bool,
    pub exp: u32,
    pub resp: bool,
    pub user_data: u64,
    pub offset: u64,
    pub data: u64,
}

/// Counters of what happened, for the coverage report.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub handled_read: usize,
    pub handled_write: usize,
    pub blocked: usize,
    pub exits_after_send: usize,
    pub shared_ctx: usize,
    pub short_transfer: usize,
    pub fast_path: usize,
    /// proposed: doorbell reads (nothing sent), doorbell writes that complete, registrations
    /// refused for one pipe in both directions, removals of a region whose context a blocked
    /// access holds. (A send waiting for a command channel's send side needs a vCPU blocked in
    /// the middle of a message; the loom scenarios cover it.)
    pub doorbell_reads: usize,
    pub doorbell_writes: usize,
    pub looped_refused: usize,
    pub removed_under_claim: usize,
}

/// The whole modelled host, as the reference sees it.
#[derive(Clone, Debug)]
pub struct World {
    pub design: Design,
    /// proposed: a sanely wired userspace, and no violation at all (see [`World::admits`]).
    pub strict: bool,
    pub fds: BTreeMap<i32, usize>,
    pub files: Vec<RFile>,
    pub chans: Vec<Chan>,
    pub efds: Vec<Efd>,
    pub objs: Vec<Obj>,
    pub ctxs: Vec<Ctx>,
    pub regions: Vec<Region>,
    pub ioevs: Vec<Ioev>,
    /// Coalesced zones, in registration order (`kvm->coalesced_zones`).
    pub zones: Vec<Zone>,
    pub vms: Vec<RVm>,
    pub devices: Vec<Device>,
    pub next_ino: u64,
    pub next_tmpfs_ino: u64,
    /// proposed: contexts by read-file inode; seed: by object.
    pub ctx_by_ino: BTreeMap<Ino, usize>,
    pub ctx_by_obj: BTreeMap<usize, usize>,
    /// Ghost: the commands devices read (by tag).
    pub delivered: Vec<Tag>,
    /// Event violations of the current step.
    pub viol: Vec<&'static str>,
    pub last: Option<Expect>,
    pub seen: Seen,
    /// The VMs whose arrays, region lists or ioeventfds changed since [`World::structure_tally`]
    /// last counted them: bit `vm` (bit 63 for every VM from 63 on).
    pub touched: u64,
    /// Each VM's structural violations as [`World::structure_tally`] last counted them.
    pub tallies: Vec<Tally>,
}

pub fn kget(refs: &mut i64) -> bool {
    let before = *refs;
    *refs += 1;
    if before == 0 {
        *refs = SATURATED;
        return true;
    }
    if before < 0 {
        *refs = SATURATED;
    }
    false
}

/// (violation, last reference gone)
pub fn kput(refs: &mut i64) -> (bool, bool) {
    let before = *refs;
    *refs -= 1;
    if before <= 0 {
        *refs = SATURATED;
    }
    (before == 0, before == 1)
}

/// `kvm_io_bus_cmp`.
pub fn bus_cmp(r1: (u64, i32), r2: (u64, i32)) -> i32 {
    let (mut a1, mut a2) = (r1.0, r2.0);
    if a1 < a2 {
        return -1;
    }
    if r2.1 != 0 {
        a1 = a1.wrapping_add(r1.1 as i64 as u64);
        a2 = a2.wrapping_add(r2.1 as i64 as u64);
    }
    if a1 > a2 { 1 } else { 0 }
}

/// rfc-v3's `overlap()`.
pub fn v3_overlap(start1: u64, size1: u64, start2: u64, size2: u64) -> bool {
    let end1 = start1.wrapping_add(size1).wrapping_sub(1);
    let end2 = start2.wrapping_add(size2).wrapping_sub(1);
    !(end1 < start2 || start1 >= end2)
}

pub fn v3_size(size: u64) -> u64 {
    if size == 0 { 8 } else { size }
}

/// Interval overlap, size 0 as its one byte.
pub fn exact_overlap(start1: u64, size1: u64, start2: u64, size2: u64) -> bool {
    let end1 = start1.saturating_add(size1.max(1));
    let end2 = start2.saturating_add(size2.max(1));
    start1 < end2 && start2 < end1
}

pub fn mask(len: usize) -> u64 {
    if len >= 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 }
}

pub fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The command image (spec: "Wire format", seed and v3).
pub fn encode_cmd(seed: bool, write: bool, exp: u32, resp: bool, user_data: u64, offset: u64, data: u64) -> [u8; MSG] {
    let mut b = [0u8; MSG];
    if seed {
        let info = u32::from(write) | (exp << 4) | (u32::from(resp) << 6);
        b[0..4].copy_from_slice(&info.to_le_bytes());
    } else {
        b[0] = u8::from(write);
        b[1] = exp as u8 | (u8::from(resp) << 4);
    }
    b[8..16].copy_from_slice(&user_data.to_le_bytes());
    b[16..24].copy_from_slice(&offset.to_le_bytes());
    b[24..32].copy_from_slice(&data.to_le_bytes());
    b
}

/// What a device accepts (reserved bits zero, command 0/1, exponent <= 3, a read's resp bit as
/// the format has it, no data beyond the size).
pub fn decode_cmd(seed: bool, b: &[u8]) -> Option<Cmd> {
    let (cmd, exp, resp) = if seed {
        let info = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        if info & !0x7f != 0 || b[4..8].iter().any(|&x| x != 0) {
            return None;
        }
        (info & 0xf, (info >> 4) & 3, info & 0x40 != 0)
    } else {
        if b[1] & 0xe0 != 0 || b[2..8].iter().any(|&x| x != 0) {
            return None;
        }
        (u32::from(b[0]), u32::from(b[1] & 0xf), b[1] & 0x10 != 0)
    };
    if cmd > 1 || exp > 3 {
        return None;
    }
    let write = cmd == 1;
    if !write && resp == seed {
        return None;
    }
    let data = u64_at(b, 24);
    let allowed = if write { mask(1 << exp) } else { 0 };
    if data & !allowed != 0 {
        return None;
    }
    Some(Cmd { write, exp, resp, user_data: u64_at(b, 8), offset: u64_at(b, 16), data })
}

pub fn bus_index(bus: BusKind) -> usize {
    match bus {
        BusKind::Mmio => MMIO,
        BusKind::Pio => PIO,
        BusKind::FastMmio => FAST,
        BusKind::VirtioCcwNotify => CCW,
    }
}

impl World {
    pub fn new(design: Design) -> Self {
        World {
            design,
            strict: design == Design::Proposed,
            fds: BTreeMap::new(),
            files: Vec::new(),
            chans: Vec::new(),
            efds: Vec::new(),
            objs: Vec::new(),
            ctxs: Vec::new(),
            regions: Vec::new(),
            ioevs: Vec::new(),
            zones: Vec::new(),
            vms: Vec::new(),
            devices: Vec::new(),
            next_ino: FIRST_INO,
            next_tmpfs_ino: FIRST_INO,
            ctx_by_ino: BTreeMap::new(),
            ctx_by_obj: BTreeMap::new(),
            delivered: Vec::new(),
            viol: Vec::new(),
            last: None,
            seen: Seen::default(),
            touched: 0,
            tallies: Vec::new(),
        }
    }

    /// Notes that VM `vm`'s structure (arrays, region lists, ioeventfds) changed.
    pub fn touch(&mut self, vm: usize) {
        self.touched |= 1 << vm.min(63);
    }

    pub fn seed(&self) -> bool {
        self.design == Design::Seed
    }

    pub fn rfc(&self) -> bool {
        self.design == Design::RfcV3
    }

    pub fn proposed(&self) -> bool {
        self.design == Design::Proposed
    }

    pub fn lifetime(&mut self) {
        self.viol.push("lifetime");
    }

    // ---- files and the fd table ----

    pub fn next_fd(&self) -> i32 {
        // the first gap in the numbers in use from 3 (the map's keys are in order)
        let mut next = 3;
        for &fd in self.fds.range(3..).map(|(fd, _)| fd) {
            if fd != next {
                break;
            }
            next += 1;
        }
        next
    }

    pub fn install(&mut self, f: usize) -> i32 {
        let fd = self.next_fd();
        self.fds.insert(fd, f);
        fd
    }

    pub fn ino(&mut self, sb: Sb) -> Ino {
        let counter = match sb {
            Sb::Anon => return (sb, 1),
            Sb::Tmpfs => &mut self.next_tmpfs_ino,
            Sb::Sockfs | Sb::Pipefs => &mut self.next_ino,
        };
        let n = *counter;
        *counter += 1;
        (sb, n)
    }

    pub fn new_file(&mut self, ino: Ino, kind: FKind, nonblock: bool) -> usize {
        self.files.push(RFile { ino, kind, nonblock, refs: 1, live: true });
        self.files.len() - 1
    }

    pub fn new_chan(&mut self, kind: ChanKind, cap: usize) -> usize {
        self.chans.push(Chan {
            kind,
            cap,
            bytes: VecDeque::new(),
            msgs: VecDeque::new(),
            queued: 0,
            readers: 1,
            writers: 1,
            tags: VecDeque::new(),
        });
        self.chans.len() - 1
    }

    pub fn file_get(&mut self, f: usize) {
        if kget(&mut self.files[f].refs) {
            self.lifetime();
        }
    }

    pub fn file_put(&mut self, f: usize) {
        let (v, last) = kput(&mut self.files[f].refs);
        if v {
            self.lifetime();
        }
        if last {
            self.release(f);
        }
    }

    pub fn fget(&mut self, fd: i32) -> Result<usize, Errno> {
        let f = *self.fds.get(&fd).ok_or(Errno::EBADF)?;
        self.file_get(f);
        Ok(f)
    }

    pub fn release(&mut self, f: usize) {
        if !self.files[f].live {
            self.lifetime();
        }
        self.files[f].live = false;
        match self.files[f].kind {
            FKind::Eventfd(e) => {
                if kput(&mut self.efds[e].refs).0 {
                    self.lifetime();
                }
            }
            FKind::Socket { rx, tx } => {
                self.chans[rx].readers = self.chans[rx].readers.saturating_sub(1);
                self.chans[tx].writers = self.chans[tx].writers.saturating_sub(1);
            }
            FKind::PipeRead(c) => self.chans[c].readers = self.chans[c].readers.saturating_sub(1),
            FKind::PipeWrite(c) => self.chans[c].writers = self.chans[c].writers.saturating_sub(1),
            FKind::Ioregionfd(o) => {
                let (cmd, resp) = (self.objs[o].cmd, self.objs[o].resp);
                self.chans[cmd].readers = self.chans[cmd].readers.saturating_sub(1);
                self.chans[resp].writers = self.chans[resp].writers.saturating_sub(1);
                // Spec: "When the last userspace file descriptor of an ioregionfd is closed, all
                // regions registered with it (in every VM) are dropped": those that still use it
                // (a region modified to use another ioregionfd is that one's now).
                let hooks = std::mem::take(&mut self.objs[o].hooks);
                for r in hooks {
                    if self.regions[r].live && self.regions[r].cmd == End::Obj(o) {
                        self.unregister_region(r);
                    }
                }
            }
        }
    }

    pub fn read_chan(&self, f: usize) -> Option<usize> {
        match self.files[f].kind {
            FKind::Socket { rx, .. } => Some(rx),
            FKind::PipeRead(c) => Some(c),
            FKind::Ioregionfd(o) => Some(self.objs[o].cmd),
            _ => None,
        }
    }

    pub fn write_chan(&self, f: usize) -> Option<usize> {
        match self.files[f].kind {
            FKind::Socket { tx, .. } => Some(tx),
            FKind::PipeWrite(c) => Some(c),
            FKind::Ioregionfd(o) => Some(self.objs[o].resp),
            _ => None,
        }
    }

    // ---- channels ----

    pub fn chan_write(&mut self, c: usize, buf: &[u8], nonblock: bool, tag: Option<Tag>) -> Tr {
        let ch = &mut self.chans[c];
        if ch.readers == 0 {
            return Tr::Failed(Errno::EPIPE);
        }
        let room = ch.cap.saturating_sub(ch.queued);
        let n = match ch.kind {
            ChanKind::Stream => room.min(buf.len()),
            ChanKind::Pipe if buf.len() > PIPE_BUF => room.min(buf.len()),
            ChanKind::Seqpacket | ChanKind::Pipe => {
                if room >= buf.len() {
                    buf.len()
                } else {
                    0
                }
            }
        };
        if n > 0 {
            match ch.kind {
                ChanKind::Seqpacket => ch.msgs.push_back(buf.to_vec()),
                _ => ch.bytes.extend(&buf[..n]),
            }
            ch.queued += n;
            ch.push_tags(tag, n);
        }
        if n == buf.len() {
            return Tr::Done(n);
        }
        if n < buf.len() && self.chans[c].kind == ChanKind::Stream && n > 0 {
            self.seen.short_transfer += 1;
        }
        if nonblock { if n > 0 { Tr::Done(n) } else { Tr::Failed(Errno::EAGAIN) } } else { Tr::WouldBlock }
    }

    /// (result, bytes, their tags)
    pub fn chan_read(&mut self, c: usize, want: usize, nonblock: bool) -> (Tr, Vec<u8>, Vec<Tag>) {
        let ch = &mut self.chans[c];
        if ch.queued > 0 {
            let (out, tags): (Vec<u8>, Vec<Tag>) = match ch.kind {
                ChanKind::Seqpacket => {
                    // one message; the rest of a longer one is dropped
                    let m = ch.msgs.pop_front().expect("a message");
                    ch.queued -= m.len();
                    let n = m.len().min(want);
                    let tags = ch.take_tags(n);
                    let _ = ch.take_tags(m.len() - n);
                    (m[..n].to_vec(), tags)
                }
                _ => {
                    let n = ch.queued.min(want);
                    ch.queued -= n;
                    (ch.bytes.drain(..n).collect(), ch.take_tags(n))
                }
            };
            if out.len() < want {
                self.seen.short_transfer += 1;
            }
            return (Tr::Done(out.len()), out, tags);
        }
        if ch.writers == 0 {
            return (Tr::Done(0), Vec::new(), Vec::new());
        }
        let t = if nonblock { Tr::Failed(Errno::EAGAIN) } else { Tr::WouldBlock };
        (t, Vec::new(), Vec::new())
    }

    pub fn file_read(&mut self, f: usize, want: usize) -> (Tr, Vec<u8>, Vec<Tag>) {
        if !self.files[f].live {
            self.lifetime();
            return (Tr::Failed(Errno::EBADF), Vec::new(), Vec::new());
        }
        let nonblock = self.files[f].nonblock;
        match self.files[f].kind {
            FKind::Socket { rx: c, .. } | FKind::PipeRead(c) => self.chan_read(c, want, nonblock),
            FKind::Ioregionfd(o) => self.chan_read(self.objs[o].cmd, want, nonblock),
            FKind::Eventfd(e) if want >= 8 => {
                let n = std::mem::take(&mut self.efds[e].count);
                if n == 0 {
                    (Tr::WouldBlock, Vec::new(), Vec::new())
                } else {
                    (Tr::Done(8), n.to_le_bytes().to_vec(), Vec::new())
                }
            }
            _ => (Tr::Failed(Errno::EINVAL), Vec::new(), Vec::new()),
        }
    }

    pub fn file_write(&mut self, f: usize, buf: &[u8], tag: Option<Tag>) -> Tr {
        if !self.files[f].live {
            self.lifetime();
            return Tr::Failed(Errno::EBADF);
        }
        let nonblock = self.files[f].nonblock;
        match self.files[f].kind {
            FKind::Socket { tx: c, .. } | FKind::PipeWrite(c) => self.chan_write(c, buf, nonblock, tag),
            FKind::Ioregionfd(o) => self.chan_write(self.objs[o].resp, buf, nonblock, tag),
            _ => Tr::Failed(Errno::EINVAL),
        }
    }

    pub fn end_write(&mut self, e: End, buf: &[u8], tag: Tag) -> Tr {
        match e {
            End::File(f) => self.file_write(f, buf, Some(tag)),
            End::Obj(o) => self.chan_write(self.objs[o].cmd, buf, false, Some(tag)),
        }
    }

    pub fn end_read(&mut self, e: End, want: usize) -> (Tr, Vec<u8>, Vec<Tag>) {
        match e {
            End::File(f) => self.file_read(f, want),
            End::Obj(o) => self.chan_read(self.objs[o].resp, want, false),
        }
    }

    // ---- served devices ----

    pub fn pump(&mut self) {
        loop {
            let mut handled = 0;
            for i in 0..self.devices.len() {
                handled += self.run_device(i);
            }
            if handled == 0 {
                break;
            }
        }
    }

    pub fn run_device(&mut self, i: usize) -> usize {
        let mut handled = 0;
        while !self.devices[i].stopped {
            let want = MSG - self.devices[i].partial.len();
            let (t, bytes, tags) = self.file_read(self.devices[i].cmd, want);
            match t {
                Tr::Done(0) => {
                    self.devices[i].stopped = true;
                    let (c, r) = (self.devices[i].cmd, self.devices[i].resp);
                    self.file_put(c);
                    self.file_put(r);
                }
                Tr::Done(_) => {
                    self.devices[i].partial.extend_from_slice(&bytes);
                    merge_tags(&mut self.devices[i].partial_tags, tags);
                    if self.devices[i].partial.len() == MSG {
                        let message = std::mem::take(&mut self.devices[i].partial);
                        let tags = std::mem::take(&mut self.devices[i].partial_tags);
                        self.device_handle(i, &message, &tags);
                        handled += 1;
                    }
                }
                Tr::Failed(_) | Tr::WouldBlock => break,
            }
        }
        handled
    }

    /// Spec, "Device side": read a command; reply to reads with the value; apply writes and reply
    /// only when resp is set.
    /// A message made of bytes of more than one command is a `wire` violation too.
    pub fn device_handle(&mut self, i: usize, message: &[u8], tags: &[Tag]) {
        if tags.len() > 1 {
            self.viol.push("wire");
        }
        let tag = tags.first().copied();
        // the ghost ledger: a command read by a device twice breaks `exactly-once` (each access
        // is made by a new vCPU, so `order` has nothing to compare)
        if let Some(t) = tag {
            if self.delivered.contains(&t) {
                self.viol.push("exactly-once");
            }
            self.delivered.push(t);
        }
        let Some(cmd) = decode_cmd(self.seed(), message) else {
            self.viol.push("wire");
            return;
        };
        let size = 1usize << cmd.exp;
        let dev = &mut self.devices[i];
        let value = if cmd.write {
            dev.mem.insert((cmd.user_data, cmd.offset), cmd.data & mask(size));
            0
        } else {
            dev.mem.get(&(cmd.user_data, cmd.offset)).copied().unwrap_or(0) & mask(size)
        };
        if cmd.write && !cmd.resp {
            return;
        }
        let resp_file = dev.resp;
        let mut image = [0u8; MSG];
        image[..8].copy_from_slice(&value.to_le_bytes());
        let _ = self.file_write(resp_file, &image, tag);
    }

    // ---- contexts ----

    pub fn ctx_get(&mut self, c: usize) {
        if kget(&mut self.ctxs[c].refs) {
            self.lifetime();
        }
    }

    pub fn ctx_put(&mut self, c: usize) {
        let (v, last) = kput(&mut self.ctxs[c].refs);
        if v {
            self.lifetime();
        }
        if last {
            if !self.ctxs[c].live {
                self.lifetime();
            }
            self.ctxs[c].live = false;
        }
    }

    pub fn new_ctx(&mut self, refs: i64, resp: Option<End>) -> usize {
        self.ctxs.push(Ctx { busy: false, send_busy: false, refs, live: true, resp });
        self.ctxs.len() - 1
    }

    // ---- buses ----

    pub fn insert_entry(&mut self, vm: usize, bus: usize, addr: u64, len: i32, dev: Dev) {
        self.touch(vm);
        let arr = &mut self.vms[vm].arrays[bus];
        let i = arr.iter().position(|e| bus_cmp((e.addr, e.len), (addr, len)) > 0).unwrap_or(arr.len());
        arr.insert(i, Entry { addr, len, dev });
    }

    pub fn remove_entry(&mut self, vm: usize, bus: usize, dev: Dev) {
        self.touch(vm);
        let arr = &mut self.vms[vm].arrays[bus];
        if let Some(i) = arr.iter().position(|e| e.dev == dev) {
            arr.remove(i);
        }
    }

    /// Linux's bsearch with `kvm_io_bus_cmp`, then the walk back to the first equal entry.
    pub fn first_dev(arr: &[Entry], key: (u64, i32)) -> Option<usize> {
        let (mut base, mut num) = (0usize, arr.len());
        let mut found = None;
        while num > 0 {
            let pivot = base + (num >> 1);
            let c = bus_cmp(key, (arr[pivot].addr, arr[pivot].len));
            if c == 0 {
                found = Some(pivot);
                break;
            }
            if c > 0 {
                base = pivot + 1;
                num -= 1;
            }
            num >>= 1;
        }
        let mut off = found?;
        while off > 0 && bus_cmp(key, (arr[off - 1].addr, arr[off - 1].len)) == 0 {
            off -= 1;
        }
        Some(off)
    }

    /// Unregisters a region from its bus and releases it (the design's `ioregion_release`).
    pub fn unregister_region(&mut self, r: usize) {
        let (vm, bus) = (self.regions[r].vm, self.regions[r].bus);
        self.remove_entry(vm, bus, Dev::Region(r));
        self.touch(vm);
        self.vms[vm].lists[bus].retain(|&x| x != r);
        self.regions[r].live = false;
        let reg = self.regions[r].clone();
        if self.rfc() {
            // rfc-v3: put the context's read file (the creator's), whichever region this is.
            if let Some(c) = reg.ctx {
                if let Some(End::File(rf)) = self.ctxs[c].resp {
                    self.file_put(rf);
                }
                self.ctx_put(c);
            }
        } else {
            if let Some(rf) = reg.rfile {
                self.file_put(rf);
            }
            for c in reg.ctx.into_iter().chain(reg.send_ctx) {
                self.ctx_put(c);
            }
        }
        if let End::File(wf) = reg.cmd {
            self.file_put(wf);
        }
    }

    /// Removal: the first region on `bus` with exactly this address and size.
    pub fn rm_region(&mut self, vm: usize, bus: usize, paddr: u64, size: u64) -> Result<(), Errno> {
        let found = self.vms[vm].lists[bus]
            .iter()
            .copied()
            .find(|&r| self.regions[r].paddr == paddr && self.regions[r].size == size);
        let r = found.ok_or(Errno::ENOENT)?;
        self.seen.removed_under_claim += usize::from(self.regions[r].ctx.is_some_and(|c| self.ctxs[c].busy));
        self.unregister_region(r);
        Ok(())
    }

    // ---- KVM_SET_IOREGION, rfc-v3 structure ----

    pub fn set_ioregion_v3(&mut self, vm: usize, a: &KvmIoregionV3) -> Result<(), Errno> {
        if vm >= self.vms.len() {
            return Err(Errno::EBADF);
        }
        if self.seed() {
            return Err(Errno::EINVAL);
        }
        if a.flags & !0x7 != 0 {
            return Err(Errno::EINVAL);
        }
        let bus = if a.flags & IOREGION_PIO != 0 { PIO } else { MMIO };
        if a.flags & IOREGION_DEASSIGN != 0 {
            let r = self.rm_region(vm, bus, a.guest_paddr, a.memory_size);
            if a.memory_size == 0 && bus == MMIO {
                let _ = self.rm_region(vm, FAST, a.guest_paddr, a.memory_size);
            }
            return r;
        }
        if a.guest_paddr.checked_add(a.memory_size).is_none() {
            return Err(Errno::EINVAL);
        }
        if a.memory_size == 0 && a.flags & IOREGION_POSTED == 0 {
            return Err(Errno::EINVAL);
        }
        // proposed (`sizes_fit_bus_len`): the bus keeps an `int` len
        if self.proposed() && a.memory_size > i32::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        self.set_ioregion_idx(vm, bus, a)?;
        if a.memory_size == 0
            && bus == MMIO
            && let Err(e) = self.set_ioregion_idx(vm, FAST, a)
        {
            let _ = self.rm_region(vm, bus, a.guest_paddr, a.memory_size);
            return Err(e);
        }
        Ok(())
    }

    pub fn v3_collides(&self, vm: usize, bus: usize, paddr: u64, size: u64) -> bool {
        let regions = self.vms[vm].lists[bus].iter().map(|&r| (self.regions[r].paddr, self.regions[r].size));
        let ioevs = self.ioevs.iter().filter(|p| p.live && p.vm == vm && p.bus == bus);
        let others: Vec<(u64, u64)> = regions.chain(ioevs.map(|p| (p.addr, u64::from(p.len)))).collect();
        if self.rfc() {
            others.iter().any(|&(s, z)| v3_overlap(paddr, v3_size(size), s, v3_size(z)))
        } else {
            others.iter().any(|&(s, z)| exact_overlap(paddr, size, s, z))
        }
    }

    pub fn set_ioregion_idx(&mut self, vm: usize, bus: usize, a: &KvmIoregionV3) -> Result<(), Errno> {
        let wf = self.fget(a.write_fd)?;
        let rf = if a.memory_size != 0 {
            match self.fget(a.read_fd) {
                Ok(f) => Some(f),
                Err(e) => {
                    self.file_put(wf);
                    return Err(e);
                }
            }
        } else {
            None
        };
        // proposed (`checks_file_modes`): a write file that is a pipe's read end, or a read file
        // that is a pipe's write end, is refused
        if self.proposed()
            && (matches!(self.files[wf].kind, FKind::PipeRead(_))
                || rf.is_some_and(|f| matches!(self.files[f].kind, FKind::PipeWrite(_))))
        {
            if let Some(rf) = rf {
                self.file_put(rf);
            }
            self.file_put(wf);
            return Err(Errno::EBADF);
        }
        // proposed (`refuses_nonblocking_fds`): an O_NONBLOCK read or write file is refused, and
        // so are a read file and a write file that are the two ends of one pipe or FIFO
        if self.proposed()
            && (self.files[wf].nonblock || rf.is_some_and(|f| self.files[f].nonblock || self.looped(f, wf)))
        {
            self.seen.looped_refused += usize::from(rf.is_some_and(|f| self.looped(f, wf)));
            if let Some(rf) = rf {
                self.file_put(rf);
            }
            self.file_put(wf);
            return Err(Errno::EINVAL);
        }
        let result = (|| {
            if self.v3_collides(vm, bus, a.guest_paddr, a.memory_size) {
                return Err(Errno::EEXIST);
            }
            // proposed: every writer of a command channel (a doorbell too) takes the send side
            // of its inode's context around each send
            let send_ctx = if self.proposed() { Some(self.find_context(vm, bus, wf)?) } else { None };
            let ctx = match rf {
                Some(rf) => Some(self.find_context(vm, bus, rf)?),
                None => None,
            };
            Ok((ctx, send_ctx))
        })();
        let (ctx, send_ctx) = match result {
            Ok(c) => c,
            Err(e) => {
                if let Some(rf) = rf {
                    self.file_put(rf);
                }
                self.file_put(wf);
                return Err(e);
            }
        };
        self.regions.push(Region {
            vm,
            bus,
            paddr: a.guest_paddr,
            size: a.memory_size,
            user_data: a.user_data,
            posted: a.flags & IOREGION_POSTED != 0,
            cmd: End::File(wf),
            ctx,
            send_ctx,
            rfile: if self.proposed() { rf } else { None },
            live: true,
        });
        let r = self.regions.len() - 1;
        self.insert_entry(vm, bus, a.guest_paddr, a.memory_size as i32, Dev::Region(r));
        self.touch(vm);
        self.vms[vm].lists[bus].push(r);
        Ok(())
    }

    /// Whether read file `rf` and write file `wf` are the read end and the write end of one pipe
    /// or FIFO (one inode).
    pub fn looped(&self, rf: usize, wf: usize) -> bool {
        self.files[rf].ino == self.files[wf].ino
            && matches!(self.files[rf].kind, FKind::PipeRead(_))
            && matches!(self.files[wf].kind, FKind::PipeWrite(_))
    }

    /// rfc-v3 `ioregion_get_ctx`; proposed: one context per inode (a region's read file, any
    /// write file), host-wide.
    pub fn find_context(&mut self, vm: usize, bus: usize, rf: usize) -> Result<usize, Errno> {
        if self.rfc() {
            for r in self.vms[vm].lists[bus].clone() {
                let Some(c) = self.regions[r].ctx else {
                    // the NULL context of a size-0 region is dereferenced
                    self.lifetime();
                    return Err(Errno::EFAULT);
                };
                let Some(End::File(cf)) = self.ctxs[c].resp else { unreachable!("rfc-v3 contexts have a file") };
                if self.files[cf].ino.1 == self.files[rf].ino.1 {
                    self.ctx_get(c);
                    self.seen.shared_ctx += 1;
                    return Ok(c);
                }
            }
            // a zeroed context: kref 0, then kref_get
            let c = self.new_ctx(0, Some(End::File(rf)));
            self.ctx_get(c);
            Ok(c)
        } else {
            let key = self.files[rf].ino;
            if let Some(&c) = self.ctx_by_ino.get(&key)
                && self.ctxs[c].live
            {
                self.ctx_get(c);
                self.seen.shared_ctx += 1;
                return Ok(c);
            }
            let c = self.new_ctx(1, None);
            self.ctx_by_ino.insert(key, c);
            Ok(c)
        }
    }

    // ---- KVM_SET_IOREGION, seed structure ----

    pub fn set_ioregion_seed(&mut self, vm: usize, a: &KvmIoregionSeed) -> Result<(), Errno> {
        if vm >= self.vms.len() {
            return Err(Errno::EBADF);
        }
        if !self.seed() {
            return Err(Errno::EINVAL);
        }
        if a.flags & !(IOREGION_PIO | IOREGION_POSTED) != 0 {
            return Err(Errno::EINVAL);
        }
        let bus = if a.flags & IOREGION_PIO != 0 { PIO } else { MMIO };
        if a.fd == -1 {
            return self.rm_region(vm, bus, a.guest_paddr, a.memory_size);
        }
        if a.memory_size == 0 || a.guest_paddr.checked_add(a.memory_size).is_none() {
            return Err(Errno::EINVAL);
        }
        let f = self.fget(a.fd)?;
        let kind = self.files[f].kind;
        self.file_put(f);
        let FKind::Ioregionfd(o) = kind else { return Err(Errno::EINVAL) };
        // the object's context: shared by every region using it, in every VM
        let ctx = match self.ctx_by_obj.get(&o) {
            Some(&c) if self.ctxs[c].live => {
                self.ctx_get(c);
                self.seen.shared_ctx += 1;
                c
            }
            _ => {
                let c = self.new_ctx(1, Some(End::Obj(o)));
                self.ctx_by_obj.insert(o, c);
                c
            }
        };
        let posted = a.flags & IOREGION_POSTED != 0;
        let same = self.vms[vm].lists[bus]
            .iter()
            .copied()
            .find(|&r| self.regions[r].paddr == a.guest_paddr && self.regions[r].size == a.memory_size);
        if let Some(r) = same {
            let old = self.regions[r].ctx;
            let reg = &mut self.regions[r];
            reg.user_data = a.user_data;
            reg.posted = posted;
            reg.cmd = End::Obj(o);
            reg.ctx = Some(ctx);
            if let Some(c) = old {
                self.ctx_put(c);
            }
            self.objs[o].hooks.push(r);
            return Ok(());
        }
        let (start, end) = (a.guest_paddr, a.guest_paddr + a.memory_size);
        let splits = self.vms[vm].lists[bus].iter().any(|&r| {
            let reg = &self.regions[r];
            reg.paddr < start && end < reg.paddr + reg.size
        });
        if splits {
            self.ctx_put(ctx);
            return Err(Errno::EINVAL);
        }
        self.regions.push(Region {
            vm,
            bus,
            paddr: a.guest_paddr,
            size: a.memory_size,
            user_data: a.user_data,
            posted,
            cmd: End::Obj(o),
            ctx: Some(ctx),
            send_ctx: None,
            rfile: None,
            live: true,
        });
        let r = self.regions.len() - 1;
        self.insert_entry(vm, bus, a.guest_paddr, a.memory_size as i32, Dev::Region(r));
        self.objs[o].hooks.push(r);
        self.touch(vm);
        self.vms[vm].lists[bus].push(r);
        Ok(())
    }

    // ---- KVM_IOEVENTFD ----

    pub fn efd_get(&mut self, fd: i32) -> Result<usize, Errno> {
        let f = *self.fds.get(&fd).ok_or(Errno::EBADF)?;
        let FKind::Eventfd(e) = self.files[f].kind else { return Err(Errno::EINVAL) };
        if kget(&mut self.efds[e].refs) {
            self.lifetime();
        }
        Ok(e)
    }

    pub fn efd_put(&mut self, e: usize) {
        if kput(&mut self.efds[e].refs).0 {
            self.lifetime();
        }
    }

    pub fn ioeventfd(&mut self, vm: usize, op: &Op) -> Result<(), Errno> {
        let Op::Ioeventfd { bus, addr, len, fd, datamatch, deassign, extra_flags, .. } = *op else { unreachable!() };
        if vm >= self.vms.len() {
            return Err(Errno::EBADF);
        }
        let mut flags = extra_flags;
        if bus == BusKind::Pio {
            flags |= IOEVENTFD_PIO;
        }
        if datamatch.is_some() {
            flags |= IOEVENTFD_DATAMATCH;
        }
        if deassign {
            flags |= IOEVENTFD_DEASSIGN;
        }
        // the kernel reads every flag from the word, raw bits included (`flags=N` can set
        // DEASSIGN): found by the registration fuzz target
        let deassign = flags & IOEVENTFD_DEASSIGN != 0;
        // `ioeventfd_bus_from_flags`: PIO, else the CCW notify bus, else MMIO (found by the
        // registration fuzz target: the generator never set the CCW flag)
        let b = if flags & IOEVENTFD_PIO != 0 {
            PIO
        } else if flags & IOEVENTFD_CCW != 0 {
            CCW
        } else {
            MMIO
        };
        let wildcard = flags & IOEVENTFD_DATAMATCH == 0;
        let dm = if wildcard { 0 } else { datamatch.unwrap_or(0) };
        if deassign {
            let r = self.ioeventfd_deassign(vm, b, addr, len, fd, wildcard, dm);
            if len == 0 && b == MMIO {
                let _ = self.ioeventfd_deassign(vm, FAST, addr, len, fd, wildcard, dm);
            }
            return r;
        }
        if !matches!(len, 0 | 1 | 2 | 4 | 8) || addr.checked_add(u64::from(len)).is_none() {
            return Err(Errno::EINVAL);
        }
        if flags & !IOEVENTFD_VALID != 0 || (len == 0 && !wildcard) {
            return Err(Errno::EINVAL);
        }
        self.ioeventfd_assign(vm, b, addr, len, fd, wildcard, dm)?;
        if len == 0
            && b == MMIO
            && let Err(e) = self.ioeventfd_assign(vm, FAST, addr, len, fd, wildcard, dm)
        {
            let _ = self.ioeventfd_deassign(vm, b, addr, len, fd, wildcard, dm);
            return Err(e);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn ioeventfd_assign(
        &mut self,
        vm: usize,
        bus: usize,
        addr: u64,
        len: u32,
        fd: i32,
        wildcard: bool,
        dm: u64,
    ) -> Result<(), Errno> {
        let e = self.efd_get(fd)?;
        let clash = self.vm_ioevs(vm).any(|i| {
            let q = &self.ioevs[i];
            q.bus == bus
                && q.addr == addr
                && (q.len == 0 || len == 0 || (q.len == len && (q.wildcard || wildcard || q.datamatch == dm)))
        });
        // rfc-v3 and proposed: an ioeventfd overlapping an ioregion (MMIO/PIO) collides too
        let with_regions = !self.seed()
            && bus != FAST
            && self.vms[vm].lists[bus].iter().any(|&r| {
                let reg = &self.regions[r];
                if self.rfc() {
                    let l = if len == 0 { 8 } else { u64::from(len) };
                    v3_overlap(addr, l, reg.paddr, v3_size(reg.size))
                } else {
                    exact_overlap(addr, u64::from(len), reg.paddr, reg.size)
                }
            });
        if clash || with_regions {
            self.efd_put(e);
            return Err(Errno::EEXIST);
        }
        self.touch(vm);
        self.ioevs.push(Ioev { vm, bus, addr, len, efd: e, wildcard, datamatch: dm, live: true });
        let i = self.ioevs.len() - 1;
        self.insert_entry(vm, bus, addr, len as i32, Dev::Ioev(i));
        Ok(())
    }

    /// The live ioeventfds of VM `vm`, by index.
    pub fn vm_ioevs(&self, vm: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.ioevs.len()).filter(move |&i| self.ioevs[i].live && self.ioevs[i].vm == vm)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn ioeventfd_deassign(
        &mut self,
        vm: usize,
        bus: usize,
        addr: u64,
        len: u32,
        fd: i32,
        wildcard: bool,
        dm: u64,
    ) -> Result<(), Errno> {
        let e = self.efd_get(fd)?;
        let found = self.vm_ioevs(vm).find(|&i| {
            let p = &self.ioevs[i];
            p.bus == bus
                && p.efd == e
                && p.addr == addr
                && p.len == len
                && p.wildcard == wildcard
                && (p.wildcard || p.datamatch == dm)
        });
        let r = match found {
            Some(i) => {
                self.remove_entry(vm, bus, Dev::Ioev(i));
                self.touch(vm);
                self.ioevs[i].live = false;
                self.efd_put(self.ioevs[i].efd);
                Ok(())
            }
            None => Err(Errno::ENOENT),
        };
        self.efd_put(e);
        r
    }

    // ---- coalesced MMIO zones ----

    /// `KVM_REGISTER_COALESCED_MMIO`: `pio` 0 or 1 picks the bus; no overlap check; the bus
    /// entry's len is the size as an `int`. proposed refuses a size above `INT_MAX`.
    pub fn register_zone(&mut self, vm: usize, addr: u64, size: u32, pio: u32) -> Result<(), Errno> {
        if vm >= self.vms.len() {
            return Err(Errno::EBADF);
        }
        if pio > 1 || (self.proposed() && size > i32::MAX as u32) {
            return Err(Errno::EINVAL);
        }
        self.zones.push(Zone { vm, addr, size, pio, live: true });
        let z = self.zones.len() - 1;
        self.insert_entry(vm, if pio == 1 { PIO } else { MMIO }, addr, size as i32, Dev::Zone(z));
        Ok(())
    }

    /// `KVM_UNREGISTER_COALESCED_MMIO`: removes, in registration order, every zone of the same
    /// kind that holds the requested range (whose size is an `int` too), and always succeeds.
    pub fn unregister_zone(&mut self, vm: usize, addr: u64, size: u32, pio: u32) -> Result<(), Errno> {
        if vm >= self.vms.len() {
            return Err(Errno::EBADF);
        }
        if pio > 1 {
            return Err(Errno::EINVAL);
        }
        for z in 0..self.zones.len() {
            let zone = &self.zones[z];
            if zone.live && zone.vm == vm && zone.pio == pio && zone_holds(zone, addr, size as i32) {
                self.zones[z].live = false;
                self.remove_entry(vm, if pio == 1 { PIO } else { MMIO }, Dev::Zone(z));
            }
        }
        Ok(())
    }

    // ---- guest accesses ----

    pub fn access(&mut self, vm: usize, bus: BusKind, addr: u64, len: usize, value: Option<u64>) -> Result<Acc, Errno> {
        if vm >= self.vms.len() {
            return Err(Errno::EBADF);
        }
        let tag = Tag { vm, vcpu: self.vms[vm].vcpus };
        self.vms[vm].vcpus += 1;
        // VMX/EPT: after a page's first access, an MMIO access (a read too: the fast path does
        // not know the direction) is first offered to FAST_MMIO as a write of length 0
        let mut fast = None;
        if bus == BusKind::Mmio && self.vms[vm].vmx && !self.vms[vm].sptes.insert(addr >> 12) {
            match self.dispatch(vm, FAST, tag, addr, 0, Some(0)) {
                Err(Fail::NoDevice) => {}
                other => {
                    self.seen.fast_path += usize::from(other.is_ok());
                    fast = Some(other);
                }
            }
        }
        let result = match fast {
            Some(r) => r,
            None => self.dispatch(vm, bus_index(bus), tag, addr, len, value),
        };
        let out = match result {
            Ok(a) => a,
            Err(Fail::Blocked) => {
                self.seen.blocked += 1;
                Acc::Blocked
            }
            Err(Fail::Error | Fail::NoDevice) => Acc::Exit { pio: bus == BusKind::Pio, addr, len, value },
            Err(Fail::Failure) => Acc::Failure { addr, len, value },
        };
        self.pump();
        Ok(out)
    }

    /// `__kvm_io_bus_write`/`_read`: Linux's bsearch, the walk back, then every entry that holds
    /// the access in turn until one takes it (ioeventfds decline reads and other values); a
    /// device error other than `EOPNOTSUPP` ends the walk.
    pub fn dispatch(
        &mut self,
        vm: usize,
        b: usize,
        tag: Tag,
        addr: u64,
        len: usize,
        value: Option<u64>,
    ) -> Result<Acc, Fail> {
        let key = (addr, len as i32);
        let arr = self.vms[vm].arrays[b].clone();
        let Some(mut idx) = Self::first_dev(&arr, key) else { return Err(Fail::NoDevice) };
        while idx < arr.len() && bus_cmp(key, (arr[idx].addr, arr[idx].len)) == 0 {
            match arr[idx].dev {
                Dev::Ioev(i) => {
                    let p = &self.ioevs[i];
                    let hit = value.is_some_and(|v| {
                        p.addr == addr && (p.len == 0 || (p.len as usize == len && (p.wildcard || p.datamatch == v)))
                    });
                    if hit {
                        let e = p.efd;
                        if self.efds[e].refs <= 0 {
                            self.lifetime();
                        }
                        self.efds[e].count += 1;
                        return Ok(Acc::Eventfd(self.efds[e].label));
                    }
                }
                // writes only (a zone has no read), and only while the ring has room; otherwise
                // the walk goes on
                Dev::Zone(z) => {
                    if value.is_some()
                        && zone_holds(&self.zones[z], addr, len as i32)
                        && self.vms[vm].ring < RING_USABLE
                    {
                        self.vms[vm].ring += 1;
                        return Ok(Acc::Coalesced);
                    }
                }
                Dev::Region(r) => match self.ioregion_access(r, tag, addr, len, value) {
                    Err(Fail::NoDevice) => {}
                    other => {
                        return other.map(|v| Acc::Ioregion {
                            user_data: self.regions[r].user_data,
                            is_write: value.is_some(),
                            offset: addr.wrapping_sub(self.regions[r].paddr),
                            len,
                            value: v,
                        });
                    }
                },
            }
            idx += 1;
        }
        Err(Fail::NoDevice)
    }

    pub fn unlock_send(&mut self, ctx: Option<usize>) {
        self.release_side(ctx, true);
    }

    pub fn unlock(&mut self, ctx: Option<usize>) {
        self.release_side(ctx, false);
    }

    /// Releases a context's response side (or, `send`, its send side); a freed context is a
    /// `lifetime` violation.
    pub fn release_side(&mut self, ctx: Option<usize>, send: bool) {
        let Some(c) = ctx else { return };
        if !self.ctxs[c].live {
            self.lifetime();
        } else if send {
            self.ctxs[c].send_busy = false;
        } else {
            self.ctxs[c].busy = false;
        }
    }

    /// Spec, "Dispatch of one access" (no signal ever arrives in the sequential model).
    ///
    /// proposed: a read of a size-0 region (a doorbell) is declined (`EOPNOTSUPP`: the walk goes
    /// on, and with nobody else there the access exits) with nothing sent. Any other access first
    /// claims the region (`waits_outside_srcu`): a reference on its context, then on its write
    /// file and its read file; the transaction puts them when it completes or fails. A blocked
    /// access keeps its claim (and the context lock if it holds it) forever: the context outlives
    /// a DEASSIGN of the region, and the files their last close.
    pub fn ioregion_access(
        &mut self,
        r: usize,
        tag: Tag,
        addr: u64,
        len: usize,
        value: Option<u64>,
    ) -> Result<u64, Fail> {
        if !self.proposed() {
            return self.transaction(r, tag, addr, len, value);
        }
        let reg = self.regions[r].clone();
        if value.is_none() && reg.size == 0 {
            self.seen.doorbell_reads += 1;
            return Err(Fail::NoDevice);
        }
        let mut files = Vec::new();
        if let End::File(wf) = reg.cmd {
            files.push(wf);
        }
        files.extend(reg.rfile);
        for c in reg.ctx.into_iter().chain(reg.send_ctx) {
            self.ctx_get(c);
        }
        for &f in &files {
            self.file_get(f);
        }
        let out = self.transaction(r, tag, addr, len, value);
        self.seen.doorbell_writes += usize::from(reg.size == 0 && out.is_ok());
        if out != Err(Fail::Blocked) {
            for &f in &files {
                self.file_put(f);
            }
            for c in reg.ctx.into_iter().chain(reg.send_ctx) {
                self.ctx_put(c);
            }
        }
        out
    }

    /// Takes a context's response side (or, `send`, its send side): `Blocked` when another
    /// access holds it; a freed context is a `lifetime` violation (and nothing to wait for).
    pub fn take(&mut self, ctx: Option<usize>, send: bool) -> Result<(), Fail> {
        let Some(c) = ctx else { return Ok(()) };
        if !self.ctxs[c].live {
            self.lifetime();
            return Ok(());
        }
        let busy = if send { &mut self.ctxs[c].send_busy } else { &mut self.ctxs[c].busy };
        if *busy {
            return Err(Fail::Blocked);
        }
        *busy = true;
        Ok(())
    }

    /// Takes the region's context, SEND_CMD, GET_REPLY, releases the context.
    pub fn transaction(&mut self, r: usize, tag: Tag, addr: u64, len: usize, value: Option<u64>) -> Result<u64, Fail> {
        let reg = self.regions[r].clone();
        let is_write = value.is_some();
        self.take(reg.ctx, false)?;
        let exp = match len {
            0 | 1 => 0, // len 0 (FAST_MMIO) is sent as size_exponent 0
            2 => 1,
            4 => 2,
            _ => 3,
        };
        let resp = if is_write { !reg.posted } else { !self.seed() };
        let data = value.unwrap_or(0);
        let image = encode_cmd(self.seed(), is_write, exp, resp, reg.user_data, addr.wrapping_sub(reg.paddr), data);
        let cont = self.proposed();
        // proposed: the command channel's own context around the send (a vCPU blocked on it, or
        // in the middle of its message, keeps what it holds)
        self.take(reg.send_ctx, true)?;
        // SEND_CMD: the bytes carry the access's ghost tag
        let mut moved = 0;
        loop {
            let t = self.end_write(reg.cmd, &image[moved..], tag);
            if let Tr::Done(n) = t {
                moved += n;
            }
            if moved == MSG {
                break;
            }
            if t == Tr::WouldBlock {
                return Err(Fail::Blocked);
            }
            if !cont || !matches!(t, Tr::Done(n) if n > 0) {
                self.unlock_send(reg.send_ctx);
                self.unlock(reg.ctx);
                return Err(Fail::Error);
            }
        }
        self.unlock_send(reg.send_ctx);
        if !is_write && reg.ctx.is_none() {
            // "A read on a region without a context returns 0 here, having sent the command"
            return Ok(0);
        }
        self.pump();
        if is_write && reg.posted {
            self.unlock(reg.ctx);
            return Ok(data);
        }
        // GET_REPLY
        let end = if self.proposed() { reg.rfile.map(End::File) } else { reg.ctx.and_then(|c| self.ctxs[c].resp) };
        let Some(end) = end else {
            self.lifetime();
            self.unlock(reg.ctx);
            return Err(Fail::Error);
        };
        let mut buf = Vec::with_capacity(MSG);
        let mut from: Vec<Tag> = Vec::new();
        loop {
            let (t, bytes, tags) = self.end_read(end, MSG - buf.len());
            buf.extend_from_slice(&bytes);
            merge_tags(&mut from, tags);
            if buf.len() == MSG {
                break;
            }
            if t == Tr::WouldBlock {
                return Err(Fail::Blocked);
            }
            if !cont || bytes.is_empty() {
                self.unlock(reg.ctx);
                self.seen.exits_after_send += 1;
                // the command went out and no response came
                return Err(if self.proposed() { Fail::Failure } else { Fail::Error });
            }
        }
        // `route`: the response must be made of bytes of this access's own response only
        match from.as_slice() {
            [t] if *t == tag => {}
            [] => self.viol.push("route"),
            others if others.iter().any(|t| t.vm != tag.vm) => self.viol.push("isolation"),
            _ => self.viol.push("route"),
        }
        if buf[8..].iter().any(|&b| b != 0) {
            self.viol.push("wire");
        }
        self.unlock(reg.ctx);
        if is_write {
            self.seen.handled_write += 1;
            Ok(data)
        } else {
            self.seen.handled_read += 1;
            Ok(u64_at(&buf, 0) & mask(len))
        }
    }

    // ---- structure ----

    pub fn structure(&self) -> Vec<&'static str> {
        let mut t = Tally::default();
        (0..self.vms.len()).for_each(|vm| t += self.structure_of(vm));
        t.ids()
    }

    /// The structural violations of VM `vm`, counted: every array sorted per `kvm_io_bus_cmp`,
    /// every region's entry with its size as len (`bus`); no two regions of a bus, nor a region
    /// and a live ioeventfd of the bus, overlapping (`overlap`).
    pub fn structure_of(&self, vm: usize) -> Tally {
        let v = &self.vms[vm];
        let mut t = Tally::default();
        for arr in &v.arrays {
            // every array sorted per `kvm_io_bus_cmp`
            for pair in arr.windows(2) {
                if bus_cmp((pair[0].addr, pair[0].len), (pair[1].addr, pair[1].len)) > 0 {
                    t.bus += 1;
                }
            }
            // every region's entry has its address and its size as len
            for e in arr {
                if let Dev::Region(r) = e.dev
                    && e.len as i64 as u64 != self.regions[r].size
                {
                    t.bus += 1;
                }
            }
        }
        for bus in [MMIO, PIO] {
            let list = &v.lists[bus];
            for (i, &a) in list.iter().enumerate() {
                let ra = &self.regions[a];
                for &b in &list[i + 1..] {
                    let rb = &self.regions[b];
                    t.overlap += u32::from(exact_overlap(ra.paddr, ra.size, rb.paddr, rb.size));
                }
                for p in self.vm_ioevs(vm).map(|i| &self.ioevs[i]).filter(|p| p.bus == bus) {
                    t.overlap += u32::from(exact_overlap(ra.paddr, ra.size, p.addr, u64::from(p.len)));
                }
            }
        }
        t
    }

    /// The structural violations of every VM, counted ([`World::structure`] as a tally), with
    /// only the VMs [`World::touch`]ed since the last call counted again.
    pub fn structure_tally(&mut self) -> Tally {
        for vm in 0..self.vms.len() {
            if vm >= self.tallies.len() {
                self.tallies.push(self.structure_of(vm));
            } else if self.touched & (1 << vm.min(63)) != 0 {
                self.tallies[vm] = self.structure_of(vm);
            }
        }
        self.touched = 0;
        let mut t = Tally::default();
        self.tallies.iter().for_each(|v| t += *v);
        t
    }

    // ---- one operation ----

    pub fn step(&mut self, op: &Op) -> Obs {
        match *op {
            Op::Vm { backend, .. } => {
                self.vms.push(RVm { vmx: backend == Backend::VmxEpt, ..RVm::default() });
                self.touch(self.vms.len() - 1);
                Obs::Vm(self.vms.len() - 1)
            }
            Op::Eventfd => {
                let label = self.next_fd();
                self.efds.push(Efd { label, count: 0, refs: 1 });
                let ino = self.ino(Sb::Anon);
                let f = self.new_file(ino, FKind::Eventfd(self.efds.len() - 1), false);
                Obs::Eventfd(self.install(f))
            }
            Op::Close { fd } => Obs::Ret(match self.fds.remove(&fd) {
                Some(f) => {
                    self.file_put(f);
                    Ok(())
                }
                None => Err(Errno::EBADF),
            }),
            Op::Ioeventfd { vm, .. } => Obs::Ret(self.ioeventfd(vm, op)),
            Op::Coalesced { vm, bus, addr, size, pio, unregister } => {
                let pio = pio.unwrap_or(u32::from(bus == BusKind::Pio));
                Obs::Ret(if unregister {
                    self.unregister_zone(vm, addr, size, pio)
                } else {
                    self.register_zone(vm, addr, size, pio)
                })
            }
            Op::Write { vm, bus, addr, len, value } => Obs::Access(self.access(vm, bus, addr, len, Some(value))),
            Op::Read { vm, bus, addr, len } => Obs::Access(self.access(vm, bus, addr, len, None)),
            Op::Transport { kind, nonblock, buf } => {
                let (a, b) = match kind {
                    TransportKind::Stream | TransportKind::Seqpacket => {
                        let k = if kind == TransportKind::Stream { ChanKind::Stream } else { ChanKind::Seqpacket };
                        let cap = buf.unwrap_or(SOCKET_BUF);
                        let (ab, ba) = (self.new_chan(k, cap), self.new_chan(k, cap));
                        let ia = self.ino(Sb::Sockfs);
                        let fa = self.new_file(ia, FKind::Socket { rx: ba, tx: ab }, nonblock);
                        let ib = self.ino(Sb::Sockfs);
                        let fb = self.new_file(ib, FKind::Socket { rx: ab, tx: ba }, nonblock);
                        (fa, fb)
                    }
                    TransportKind::Pipe | TransportKind::Fifo => {
                        let ino = self.ino(if kind == TransportKind::Pipe { Sb::Pipefs } else { Sb::Tmpfs });
                        let c = self.new_chan(ChanKind::Pipe, buf.unwrap_or(PIPE_BUF_DEFAULT));
                        let r = self.new_file(ino, FKind::PipeRead(c), nonblock);
                        let w = self.new_file(ino, FKind::PipeWrite(c), nonblock);
                        (r, w)
                    }
                };
                let fa = self.install(a);
                Obs::Fds(fa, self.install(b))
            }
            Op::Ioregionfd => {
                if !self.seed() {
                    return Obs::Fd(Err(Errno::EINVAL));
                }
                let cmd = self.new_chan(ChanKind::Seqpacket, SOCKET_BUF);
                let resp = self.new_chan(ChanKind::Seqpacket, SOCKET_BUF);
                self.objs.push(Obj { cmd, resp, hooks: Vec::new() });
                let ino = self.ino(Sb::Anon);
                let f = self.new_file(ino, FKind::Ioregionfd(self.objs.len() - 1), false);
                Obs::Fd(Ok(self.install(f)))
            }
            Op::IoregionV3 { vm, args } => Obs::Ret(self.set_ioregion_v3(vm, &args)),
            Op::IoregionSeed { vm, args } => Obs::Ret(self.set_ioregion_seed(vm, &args)),
            Op::Serve { fd, resp } => {
                let r = (|| {
                    let cmd = self.fget(fd)?;
                    let resp = match self.fget(resp.unwrap_or(fd)) {
                        Ok(f) => f,
                        Err(e) => {
                            self.file_put(cmd);
                            return Err(e);
                        }
                    };
                    self.devices.push(Device {
                        cmd,
                        resp,
                        mem: BTreeMap::new(),
                        partial: Vec::new(),
                        partial_tags: Vec::new(),
                        stopped: false,
                    });
                    self.pump();
                    Ok(())
                })();
                Obs::Ret(r)
            }
            _ => unreachable!("not generated: {op}"),
        }
    }

    // ---- proposed (strict): userspace wires its transports sanely ----

    /// (command channel, response channel) of every region and device, plus
    /// `extra`: the wiring must give every command channel one response channel, and no channel
    /// may carry both commands and responses; a region of size > 0 must be able to read its
    /// responses. (A userspace that loops responses back as commands, or sends one channel's
    /// responses where the region does not read them, makes the model's `wire`/`route` checks
    /// fire on its own mistakes.)
    pub fn sane_wiring(&self, extra: &[(Option<usize>, Option<usize>, bool)]) -> bool {
        // every region and device there ever was: what they left in a channel stays there
        let mut pairs: Vec<(Option<usize>, Option<usize>, bool)> = extra.to_vec();
        for reg in self.regions.iter().filter(|r| r.bus != FAST) {
            let End::File(wf) = reg.cmd else { continue };
            pairs.push((self.write_chan(wf), reg.rfile.and_then(|f| self.read_chan(f)), reg.size != 0));
        }
        for d in &self.devices {
            pairs.push((self.read_chan(d.cmd), self.write_chan(d.resp), false));
        }
        let mut map: BTreeMap<usize, usize> = BTreeMap::new();
        for &(c, r, needs_resp) in &pairs {
            if needs_resp && r.is_none() {
                return false;
            }
            if let (Some(c), Some(r)) = (c, r)
                && *map.entry(c).or_insert(r) != r
            {
                return false;
            }
        }
        let cmds: Vec<usize> = pairs.iter().filter_map(|p| p.0).collect();
        !pairs.iter().filter_map(|p| p.1).any(|r| cmds.contains(&r))
    }

    /// The channels a registration would use (`None` where the fd is not open: it fails).
    pub fn region_wiring(&self, a: &KvmIoregionV3) -> Option<(Option<usize>, Option<usize>, bool)> {
        let wf = *self.fds.get(&a.write_fd)?;
        if a.memory_size == 0 {
            return Some((self.write_chan(wf), None, false));
        }
        let rf = *self.fds.get(&a.read_fd)?;
        Some((self.write_chan(wf), self.read_chan(rf), true))
    }

    /// proposed: whether a registration's read and write files are the two ends of one pipe or
    /// FIFO (refused with `EINVAL`, nothing registered).
    pub fn refused_as_looped(&self, a: &KvmIoregionV3) -> bool {
        match (self.fds.get(&a.read_fd), self.fds.get(&a.write_fd)) {
            (Some(&rf), Some(&wf)) => a.memory_size != 0 && self.looped(rf, wf),
            _ => false,
        }
    }

    /// The socket at the other end of `fd`'s socketpair.
    pub fn peer(&self, fd: i32) -> Option<i32> {
        let FKind::Socket { tx, .. } = self.files[*self.fds.get(&fd)?].kind else { return None };
        self.fds
            .iter()
            .find(|(_, f)| matches!(self.files[**f].kind, FKind::Socket { rx, .. } if rx == tx))
            .map(|(fd, _)| *fd)
    }

    // ---- what the generator picks from ----

    pub fn open_fds(&self, pred: impl Fn(&FKind) -> bool) -> Vec<i32> {
        self.fds.iter().filter(|(_, f)| pred(&self.files[**f].kind)).map(|(fd, _)| *fd).collect()
    }

    pub fn live_regions(&self) -> Vec<(usize, usize, u64, u64)> {
        self.regions.iter().filter(|r| r.live && r.bus != FAST).map(|r| (r.vm, r.bus, r.paddr, r.size)).collect()
    }
}

impl World {
    /// Whether the reference is meant for `op` in this state (what the state machines' generator
    /// keeps to, by preconditions). seed: devices serve ioregionfds only. proposed (strict): a
    /// userspace that wires its transports sanely (the registrations proposed refuses included:
    /// they change nothing).
    pub fn admits(&self, op: &Op) -> bool {
        if self.seed() {
            // two memory devices on the two ends of a socketpair answer each other's responses
            // (an all-zero response is a valid seed read command) and the sequential pump never
            // stops
            if let Op::Serve { fd, .. } = *op {
                return self.fds.get(&fd).is_none_or(|&f| matches!(self.files[f].kind, FKind::Ioregionfd(_)));
            }
        }
        if !self.strict {
            return true;
        }
        match *op {
            Op::IoregionV3 { args, .. } if args.flags & IOREGION_DEASSIGN != 0 => true,
            // sane wiring (see `sane_wiring`; this leaves out
            // `misuse_a_device_on_kvms_end_reads_responses_as_commands`); one pipe or FIFO as both
            // read and write file is let through: proposed refuses it
            // (`model_bug_proposed_accepts_one_pipe_for_both_directions`)
            Op::IoregionV3 { args, .. } => {
                self.region_wiring(&args).is_none_or(|w| self.sane_wiring(&[w])) || self.refused_as_looped(&args)
            }
            Op::Serve { fd, resp } => match (self.fds.get(&fd), self.fds.get(&resp.unwrap_or(fd))) {
                // a device on an eventfd reads its counter as a command (found by the
                // registration fuzz target; the generator never serves an eventfd)
                (Some(&c), Some(&r)) if [c, r].iter().any(|&f| matches!(self.files[f].kind, FKind::Eventfd(_))) => {
                    false
                }
                (Some(&c), Some(&r)) => self.sane_wiring(&[(self.read_chan(c), self.write_chan(r), false)]),
                _ => true,
            },
            _ => true,
        }
    }

    /// Whether the reference implements this kind of operation: everything the script has but
    /// injected allocation failures and `design` lines (the bus reference of
    /// `tests/bus_state_machine.rs` covers allocation failures on mainline).
    pub fn models(op: &Op) -> bool {
        !matches!(op, Op::FailNextAlloc { .. } | Op::Design(_))
    }

    /// Applies `op` and says what it showed, the structural violations counted (and counted
    /// again only for the VMs the step changed: [`World::structure_tally`]); `last` is left
    /// as it was. What [`World::apply`] records, without a full structural check per step.
    pub fn apply_counted(&mut self, op: &Op) -> Counted {
        self.viol.clear();
        let obs = self.step(op);
        let mut events = std::mem::take(&mut self.viol);
        events.sort_unstable();
        Counted { obs, events, structure: self.structure_tally() }
    }

    /// Applies `op` and records what it showed in `last`.
    pub fn apply(&mut self, op: &Op) {
        self.viol.clear();
        let obs = self.step(op);
        let mut events = std::mem::take(&mut self.viol);
        events.sort_unstable();
        self.last = Some(Expect { obs, events, structure: self.structure() });
    }
}

/// What one step showed with its structural violations counted: [`Expect`] with a [`Tally`]
/// for `structure` (the `registration` fuzz target's per-step comparison).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub obs: Obs,
    /// Event violation ids recorded during the step, sorted.
    pub events: Vec<&'static str>,
    /// Structural violations standing after the step.
    pub structure: Tally,
}

impl Counted {
    /// Whether the step violated nothing, event or structural.
    pub fn clean(&self) -> bool {
        self.events.is_empty() && self.structure.is_clear()
    }
}

/// The system under test: the model driven through its `Kvm` API.
pub struct Sut {
    /// The model, behind the script's runner (which also runs what the reference does not model).
    pub runner: Runner,
    /// The design, for the script's first line.
    pub design: Design,
    /// The operations so far, each with what the model showed (formatted only for a failure
    /// report: see [`Sut::script`]).
    pub log: Vec<(Op, Logged)>,
    /// How many of the recorder's violations earlier steps have seen.
    pub seen: usize,
    /// The model's structural checks, kept up to date by [`Sut::apply_counted`].
    pub watch: StructureWatch,
}

/// What the model showed for one logged operation.
pub enum Logged {
    /// An operation compared with the reference.
    Compared(Obs),
    /// An operation the model ran alone: its script result line.
    ModelOnly(String),
}

impl Sut {
    /// The operations so far as a script (`ioregionfd-model script` replays it), each with what
    /// the model showed as a comment.
    pub fn script(&self) -> String {
        let mut lines = vec![format!("design {}", self.design)];
        for (op, shown) in &self.log {
            lines.push(match shown {
                Logged::Compared(obs) => format!("{op}    # {obs}"),
                Logged::ModelOnly(result) => format!("{op}    # {result}"),
            });
        }
        lines.join("\n")
    }
}

/// What one step of the model showed, with the texts of its violations for a failure message.
pub struct Shown {
    pub expect: Expect,
    /// The event violations of the step.
    pub new: Vec<Violation>,
    /// The structural violations standing after it.
    pub standing: Vec<(&'static Invariant, String)>,
}

impl Shown {
    /// The event violations as the script prints them.
    pub fn event_texts(&self) -> Vec<String> {
        self.new.iter().map(|v| v.to_string()).collect()
    }

    /// The standing structural violations, `ID: TEXT`.
    pub fn standing_texts(&self) -> Vec<String> {
        self.standing.iter().map(|(i, t)| format!("{}: {t}", i.id)).collect()
    }
}

impl Sut {
    /// A fresh model of `design` that records violations (and no trace events: the comparison
    /// needs only the violations).
    pub fn new(design: Design) -> Sut {
        Sut { runner: Runner::without_trace(design), design, log: Vec::new(), seen: 0, watch: StructureWatch::new() }
    }

    /// Runs an operation the reference models and says what the model showed.
    pub fn run(&mut self, op: &Op) -> Obs {
        let kvm = self.runner.kvm();
        match *op {
            Op::Vm { backend, .. } => {
                Obs::Vm(kvm.create_vm(VmConfig { backend, ..VmConfig::for_design(&kvm.design().knobs()) }))
            }
            Op::Eventfd => Obs::Eventfd(kvm.eventfd()),
            Op::Close { fd } => Obs::Ret(kvm.close(fd)),
            Op::Ioeventfd { vm, bus, addr, len, fd, datamatch, deassign, extra_flags } => {
                Obs::Ret(kvm.ioeventfd(vm, &Op::ioeventfd_args(bus, addr, len, fd, datamatch, deassign, extra_flags)))
            }
            Op::Write { vm, bus, addr, len, value } => {
                Obs::Access(convert(kvm.access(vm, bus, addr, len, Some(value))))
            }
            Op::Read { vm, bus, addr, len } => Obs::Access(convert(kvm.access(vm, bus, addr, len, None))),
            Op::Transport { kind, nonblock, buf } => {
                let (a, b) = kvm.open_transport(kind, buf, nonblock);
                Obs::Fds(a, b)
            }
            Op::Ioregionfd => Obs::Fd(kvm.ioregionfd()),
            Op::IoregionV3 { vm, args } => Obs::Ret(kvm.set_ioregion_v3(vm, &args)),
            Op::IoregionSeed { vm, args } => Obs::Ret(kvm.set_ioregion_seed(vm, &args)),
            Op::Serve { fd, resp } => Obs::Ret(kvm.serve(fd, resp)),
            Op::Coalesced { vm, bus, addr, size, pio, unregister } => {
                let zone = KvmCoalescedMmioZone { addr, size, pio: pio.unwrap_or(u32::from(bus == BusKind::Pio)) };
                Obs::Ret(if unregister {
                    kvm.unregister_coalesced_mmio(vm, &zone)
                } else {
                    kvm.register_coalesced_mmio(vm, &zone)
                })
            }
            _ => unreachable!("not generated: {op}"),
        }
    }

    /// Runs `op` on the model and collects what it showed: the result, the event violations it
    /// recorded in this step, and the structural violations standing after it.
    pub fn apply(&mut self, op: &Op) -> Shown {
        let obs = self.run(op);
        let new = self.runner.kvm().recorder().violations_since(self.seen);
        self.seen += new.len();
        let mut events: Vec<&'static str> = new.iter().map(|v| v.invariant).collect();
        events.sort_unstable();
        let standing = self.runner.kvm().check_structure();
        let mut structure: Vec<&'static str> = standing.iter().map(|(i, _)| i.id).collect();
        structure.sort_unstable();
        self.log.push((op.clone(), Logged::Compared(obs.clone())));
        Shown { expect: Expect { obs, events, structure }, new, standing }
    }
}

impl Sut {
    /// Runs `op` on the model and says what it showed, the standing structural violations
    /// counted by the incremental [`StructureWatch`] (no full check, no text made); also the event
    /// violations of the step, with their texts.
    pub fn apply_counted(&mut self, op: &Op) -> (Counted, Vec<Violation>) {
        let obs = self.run(op);
        let new = self.runner.kvm().recorder().violations_since(self.seen);
        self.seen += new.len();
        let mut events: Vec<&'static str> = new.iter().map(|v| v.invariant).collect();
        events.sort_unstable();
        let structure = self.watch.update(self.runner.kvm());
        self.log.push((op.clone(), Logged::Compared(obs.clone())));
        (Counted { obs, events, structure }, new)
    }

    /// What [`Sut::apply`] would have shown for the last step, from its parts: the structural
    /// violations by the full check (for a failure report).
    pub fn shown(&self, counted: &Counted, new: Vec<Violation>) -> Shown {
        let standing = self.runner.kvm().check_structure();
        let mut structure: Vec<&'static str> = standing.iter().map(|(i, _)| i.id).collect();
        structure.sort_unstable();
        Shown { expect: Expect { obs: counted.obs.clone(), events: counted.events.clone(), structure }, new, standing }
    }
}

/// Compares what the model showed with what the reference expects; for `proposed` (strict) any
/// violation at all is a failure too. The error is the whole failure report, the script so far
/// included.
pub fn compare(shown: &Shown, want: &Expect, strict: bool, sut: &Sut) -> Result<(), String> {
    let got = &shown.expect;
    let strict_broken = strict && !(got.events.is_empty() && got.structure.is_empty());
    if got == want && !strict_broken {
        return Ok(());
    }
    Err(format!(
        "{} diverges from the reference{}\n  model:     {got:?}\n  reference: {want:?}\n  model violations this step: {:#?}\n  standing: {:#?}\nscript:\n{}\n",
        sut.design,
        if strict_broken { " (proposed must violate nothing)" } else { "" },
        shown.event_texts(),
        shown.standing_texts(),
        sut.script()
    ))
}

pub fn convert(r: Result<Result<AccessOutcome, ioregionfd_model::vm::AccessError>, Errno>) -> Result<Acc, Errno> {
    let outcome = r?.unwrap_or_else(|e| panic!("the generator made an access the model refuses: {e}"));
    Ok(match outcome {
        AccessOutcome::Handled(HandledBy::Ioregion { user_data, is_write, offset, len, value }) => {
            Acc::Ioregion { user_data, is_write, offset, len, value }
        }
        AccessOutcome::Handled(HandledBy::Ioeventfd { eventfd }) => Acc::Eventfd(eventfd),
        AccessOutcome::Handled(HandledBy::Coalesced) => Acc::Coalesced,
        AccessOutcome::Exit(KvmExit::Mmio { addr, len, data, is_write }) => {
            Acc::Exit { pio: false, addr, len: len as usize, value: is_write.then(|| u64::from_le_bytes(data)) }
        }
        AccessOutcome::Exit(KvmExit::Io { port, size, data, is_out }) => Acc::Exit {
            pio: true,
            addr: u64::from(port),
            len: usize::from(size),
            value: is_out.then(|| u64::from_le_bytes(data)),
        },
        AccessOutcome::Exit(KvmExit::IoregionFailure { addr, len, data, is_write }) => {
            Acc::Failure { addr, len: len as usize, value: is_write.then(|| u64::from_le_bytes(data)) }
        }
        AccessOutcome::Blocked(_) => Acc::Blocked,
        AccessOutcome::Interrupted | AccessOutcome::RunError(_) => {
            panic!("no signal is ever delivered in the sequential model: {outcome}")
        }
    })
}

/// The mechanism of a violation text: numbers blanked, message dumps dropped (to tell distinct
/// violations apart in the state machines' harvest and the fuzz target's findings).
pub fn mechanism(text: &str) -> String {
    let text = text.split(" ([").next().unwrap_or(text);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
                chars.next();
            }
            out.push('N');
        } else {
            out.push(c);
        }
    }
    out
}
