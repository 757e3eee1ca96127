//! A proptest state machine of the model's I/O bus (ioeventfd, coalesced MMIO, `kvm_io_bus`)
//! against a reference written straight from docs/spec.md (§1).
//!
//! The reference ([`RefSystem`]) is deliberately naive: per VM one `Vec` of entries per bus, kept
//! in the spec's insertion order (first index with `cmp(range[i], new) > 0`), Linux's bsearch plus
//! the walk back for dispatch, the `kvm->ioeventfds` and `kvm->coalesced_zones` lists in
//! registration order, the coalesced ring as a `VecDeque` of at most 169 entries, and the bus
//! becoming NULL for good after a failed shrink. It was written from the spec alone, not from the
//! model's source.
//!
//! After every transition the test compares the ioctl result or access outcomes, every bus's
//! contents (addr, len, handler, `dev_count`, `ioeventfd_count`, NULL-ness), the ring's length
//! (its contents on every drain and at the end of each case), the eventfd counters, and demands
//! that `check_structure()` and the recorder's violations are empty, with one narrow exception:
//! a `bus` "out of order" report is accepted when the reference's own array has that same
//! out-of-order pair: the kernel's own register/unregister rules build such arrays once a zone of
//! 2 GiB or more (a negative `int` len) is involved, and the model rightly reports them (a finding
//! on mainline, pinned by `kernel_rules_build_an_array_not_sorted_per_cmp` and listed in
//! `docs/findings.md`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ioregionfd_model::bus::{BusConfig, BusKind, HandledBy, IoRange};
use ioregionfd_model::errno::Errno;
use ioregionfd_model::kvm::Kvm;
use ioregionfd_model::uapi::{KvmCoalescedMmio, KvmCoalescedMmioZone, KvmIoeventfd};
use ioregionfd_model::vm::{AccessOutcome, Backend, KvmExit, VmConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRng, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

// ---------------------------------------------------------------------------------------------
// Constants straight from the spec
// ---------------------------------------------------------------------------------------------

/// Bus indices (`enum kvm_bus` order).
const MMIO: usize = 0;
const PIO: usize = 1;
const CCW: usize = 2;
const FAST: usize = 3;
const KINDS: [BusKind; 4] = [BusKind::Mmio, BusKind::Pio, BusKind::VirtioCcwNotify, BusKind::FastMmio];

const FLAG_DATAMATCH: u32 = 1 << 0;
const FLAG_PIO: u32 = 1 << 1;
const FLAG_DEASSIGN: u32 = 1 << 2;
const FLAG_CCW: u32 = 1 << 3;
const VALID_FLAGS: u32 = 0x1f;

/// 170 ring slots with 4 KiB pages, one kept free.
const RING_USABLE: usize = 169;
/// The lowest fd the fd table hands out.
const FIRST_FD: i32 = 3;

// ---------------------------------------------------------------------------------------------
// The spec's ordering and search
// ---------------------------------------------------------------------------------------------

/// `len` sign-extended to u64 (the bus entry's `len` is a signed `int`).
fn sext(len: i32) -> u64 {
    len as i64 as u64
}

/// The spec's `cmp(r1, r2)`.
fn spec_cmp(r1: (u64, i32), r2: (u64, i32)) -> i32 {
    if r1.0 < r2.0 {
        return -1;
    }
    let (a1, a2) =
        if r2.1 != 0 { (r1.0.wrapping_add(sext(r1.1)), r2.0.wrapping_add(sext(r2.1))) } else { (r1.0, r2.0) };
    if a1 > a2 { 1 } else { 0 }
}

/// Linux's bsearch, exactly as the spec writes it.
fn spec_bsearch(num: usize, cmp_key_with: impl Fn(usize) -> i32) -> Option<usize> {
    let mut base = 0usize;
    let mut num = num;
    while num > 0 {
        let pivot = base + num / 2;
        let c = cmp_key_with(pivot);
        if c == 0 {
            return Some(pivot);
        }
        if c > 0 {
            base = pivot + 1;
            num -= 1;
        }
        num /= 2;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------------------------

/// One bus entry: `{addr, len: i32, dev}`.
#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: u64,
    len: i32,
    dev: u32,
}

/// A non-NULL bus.
#[derive(Clone, Debug, Default)]
struct Bus {
    entries: Vec<Entry>,
    ioeventfd_count: i32,
}

/// One `struct _ioeventfd`.
#[derive(Clone, Copy, Debug)]
struct Ioev {
    bus: usize,
    /// The eventfd object (index into `RefSystem::counters`).
    ctx: usize,
    /// The fd number it was created with (what the model reports as its handler).
    label: i32,
    addr: u64,
    len: u32,
    wildcard: bool,
    datamatch: u64,
}

#[derive(Clone, Copy, Debug)]
enum Dev {
    Ioev(Ioev),
    Zone(KvmCoalescedMmioZone),
}

impl Dev {
    fn handled_by(&self) -> HandledBy {
        match self {
            Dev::Ioev(p) => HandledBy::Ioeventfd { eventfd: p.label },
            Dev::Zone(_) => HandledBy::Coalesced,
        }
    }
}

#[derive(Clone, Debug)]
struct RefVm {
    backend: Backend,
    limit: Option<i32>,
    /// `None`: the bus is NULL (for good).
    buses: [Option<Bus>; 4],
    /// The injected allocation fault, per bus.
    fail_next: [bool; 4],
    /// Live devices by identity.
    devs: BTreeMap<u32, Dev>,
    next_dev: u32,
    /// `kvm->ioeventfds`, registration order.
    ioeventfds: Vec<u32>,
    /// `kvm->coalesced_zones`, registration order.
    zones: Vec<u32>,
    ring: VecDeque<KvmCoalescedMmio>,
    /// VMX/EPT: pages that were MMIO-accessed before.
    mmio_pages: BTreeSet<u64>,
    /// How often each coverage point was reached (instrumentation only).
    cov: [u32; COV_POINTS],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum File {
    Eventfd(usize),
    Other,
}

/// What one transition showed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Obs {
    Nothing,
    Fd(i32),
    Ret(Result<(), Errno>),
    Accesses(Vec<AccessOutcome>),
    Popped(Vec<KvmCoalescedMmio>),
}

/// Coverage points of the reference, counted so a test can show the generator reaches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cov {
    RegisterOk,
    RegisterEnospc,
    RegisterEnomemInjected,
    RegisterEnomemNullBus,
    UnregisterOk,
    UnregisterShrinkFailed,
    IoeventfdEexist,
    IoeventfdEnoent,
    IoeventfdDeassignOk,
    IoeventfdBadLen,
    IoeventfdWraps,
    IoeventfdUnknownFlags,
    IoeventfdLen0Datamatch,
    FdEbadf,
    FdEinval,
    FastTwinRollback,
    CcwAssigned,
    FastMmioHit,
    Len0HitOnMmioBus,
    IoeventfdHit,
    DatamatchMiss,
    CoalescedHit,
    NegativeLenZoneHit,
    RingFullDeclined,
    LaterDeviceTook,
    WalkBackMoved,
    ZoneUnregisterEinval,
    ZoneUnregisterRemoved,
    AccessOnNullBus,
    ZoneUnregisterNegativeLenSkipped,
    FastMmioHitOnRead,
    FailNextAlreadyPending,
    ClosedEventfdSignalled,
    DeassignOnlyFastTwin,
    DeassignOtherEventfd,
}

const COV_POINTS: usize = Cov::DeassignOtherEventfd as usize + 1;

/// The whole reference system: the fd table, the eventfd counters and the VMs.
#[derive(Clone, Debug)]
struct RefSystem {
    /// false only in the planted-bug variant: dispatch does not walk back.
    walk_back: bool,
    vms: Vec<RefVm>,
    files: BTreeMap<i32, File>,
    counters: Vec<u64>,
    /// The observation of the last transition.
    last: Obs,
}

/// A VM's settings in the generated initial state.
#[derive(Clone, Copy, Debug)]
struct VmSetup {
    backend: Backend,
    limit: Option<i32>,
}

fn ioev_bus_from_flags(flags: u32) -> usize {
    if flags & FLAG_PIO != 0 {
        PIO
    } else if flags & FLAG_CCW != 0 {
        CCW
    } else {
        MMIO
    }
}

/// The ioeventfd write match.
fn ioev_matches(p: &Ioev, addr: u64, len: usize, value: u64) -> bool {
    if addr != p.addr {
        return false;
    }
    if p.len == 0 {
        return true;
    }
    if len as u32 != p.len {
        return false;
    }
    if p.wildcard {
        return true;
    }
    value == p.datamatch
}

/// The coalesced zone match (`len` is an `int`).
fn zone_contains(z: &KvmCoalescedMmioZone, addr: u64, len: i32) -> bool {
    if len < 0 {
        return false;
    }
    let Some(end) = addr.checked_add(len as u64) else {
        return false;
    };
    addr >= z.addr && end <= z.addr.wrapping_add(z.size as u64)
}

/// Ring entries are compared on their first `len` data bytes only (the spec says nothing of the
/// rest).
fn norm_ring_entry(mut e: KvmCoalescedMmio) -> KvmCoalescedMmio {
    let len = (e.len as usize).min(8);
    for b in &mut e.data[len..] {
        *b = 0;
    }
    e
}

impl RefVm {
    fn new(setup: VmSetup) -> Self {
        RefVm {
            backend: setup.backend,
            limit: setup.limit,
            buses: [Some(Bus::default()), Some(Bus::default()), Some(Bus::default()), Some(Bus::default())],
            fail_next: [false; 4],
            devs: BTreeMap::new(),
            next_dev: 0,
            ioeventfds: Vec::new(),
            zones: Vec::new(),
            ring: VecDeque::new(),
            mmio_pages: BTreeSet::new(),
            cov: [0; COV_POINTS],
        }
    }

    fn hit(&mut self, point: Cov) {
        self.cov[point as usize] += 1;
    }

    /// kvm_io_bus_register_dev.
    fn register(&mut self, bus: usize, addr: u64, len: i32, dev: Dev) -> Result<u32, Errno> {
        let Some(b) = self.buses[bus].as_mut() else {
            self.cov[Cov::RegisterEnomemNullBus as usize] += 1;
            return Err(Errno::ENOMEM);
        };
        if let Some(nr) = self.limit
            && b.entries.len() as i32 - b.ioeventfd_count > nr - 1
        {
            self.cov[Cov::RegisterEnospc as usize] += 1;
            return Err(Errno::ENOSPC);
        }
        if std::mem::take(&mut self.fail_next[bus]) {
            self.cov[Cov::RegisterEnomemInjected as usize] += 1;
            return Err(Errno::ENOMEM);
        }
        self.cov[Cov::RegisterOk as usize] += 1;
        let id = self.next_dev;
        self.next_dev += 1;
        let at = b.entries.iter().position(|e| spec_cmp((e.addr, e.len), (addr, len)) > 0).unwrap_or(b.entries.len());
        b.entries.insert(at, Entry { addr, len, dev: id });
        self.devs.insert(id, dev);
        Ok(id)
    }

    /// A device's destructor: it leaves its list.
    fn destroy(&mut self, id: u32) {
        self.devs.remove(&id);
        self.ioeventfds.retain(|&d| d != id);
        self.zones.retain(|&d| d != id);
    }

    /// kvm_io_bus_unregister_dev (v6.5+).
    fn unregister(&mut self, bus: usize, id: u32) -> Result<(), Errno> {
        let Some(b) = self.buses[bus].as_ref() else {
            return Ok(());
        };
        let Some(at) = b.entries.iter().position(|e| e.dev == id) else {
            return Ok(());
        };
        if std::mem::take(&mut self.fail_next[bus]) {
            self.hit(Cov::UnregisterShrinkFailed);
            let old = self.buses[bus].take().expect("bus checked above");
            for e in old.entries {
                self.destroy(e.dev);
            }
            return Err(Errno::ENOMEM);
        }
        self.buses[bus].as_mut().expect("bus checked above").entries.remove(at);
        self.destroy(id);
        self.hit(Cov::UnregisterOk);
        Ok(())
    }

    fn ioev(&self, id: u32) -> Option<Ioev> {
        match self.devs.get(&id) {
            Some(Dev::Ioev(p)) => Some(*p),
            _ => None,
        }
    }
}

impl RefSystem {
    fn new(setups: &[VmSetup], eventfds: usize, walk_back: bool) -> Self {
        let mut s = RefSystem {
            walk_back,
            vms: setups.iter().map(|s| RefVm::new(*s)).collect(),
            files: BTreeMap::new(),
            counters: Vec::new(),
            last: Obs::Nothing,
        };
        for _ in 0..eventfds {
            s.eventfd();
        }
        s
    }

    fn install(&mut self, file: File) -> i32 {
        let fd = (FIRST_FD..).find(|fd| !self.files.contains_key(fd)).expect("a free fd");
        self.files.insert(fd, file);
        fd
    }

    fn eventfd(&mut self) -> i32 {
        self.counters.push(0);
        self.install(File::Eventfd(self.counters.len() - 1))
    }

    fn close(&mut self, fd: i32) -> Result<(), Errno> {
        self.files.remove(&fd).map(|_| ()).ok_or(Errno::EBADF)
    }

    /// eventfd_ctx_fdget (`vm` only for the coverage count).
    fn fdget(&mut self, vm: usize, fd: i32) -> Result<usize, Errno> {
        match self.files.get(&fd) {
            None => {
                self.vms[vm].hit(Cov::FdEbadf);
                Err(Errno::EBADF)
            }
            Some(File::Other) => {
                self.vms[vm].hit(Cov::FdEinval);
                Err(Errno::EINVAL)
            }
            Some(File::Eventfd(ctx)) => Ok(*ctx),
        }
    }

    /// KVM_IOEVENTFD.
    fn ioeventfd(&mut self, vm: usize, a: &KvmIoeventfd) -> Result<(), Errno> {
        let bus = ioev_bus_from_flags(a.flags);
        if a.flags & FLAG_DEASSIGN != 0 {
            let ret = self.deassign_idx(vm, bus, a);
            if a.len == 0 && bus == MMIO && self.deassign_idx(vm, FAST, a).is_ok() && ret.is_err() {
                self.vms[vm].hit(Cov::DeassignOnlyFastTwin);
            }
            return ret;
        }
        let cov = &mut self.vms[vm].cov;
        if !matches!(a.len, 0 | 1 | 2 | 4 | 8) {
            cov[Cov::IoeventfdBadLen as usize] += 1;
            return Err(Errno::EINVAL);
        }
        if a.addr.checked_add(a.len as u64).is_none() {
            cov[Cov::IoeventfdWraps as usize] += 1;
            return Err(Errno::EINVAL);
        }
        if a.flags & !VALID_FLAGS != 0 {
            cov[Cov::IoeventfdUnknownFlags as usize] += 1;
            return Err(Errno::EINVAL);
        }
        if a.len == 0 && a.flags & FLAG_DATAMATCH != 0 {
            cov[Cov::IoeventfdLen0Datamatch as usize] += 1;
            return Err(Errno::EINVAL);
        }
        self.assign_idx(vm, bus, a)?;
        if bus == CCW {
            self.vms[vm].hit(Cov::CcwAssigned);
        }
        if a.len == 0
            && bus == MMIO
            && let Err(e) = self.assign_idx(vm, FAST, a)
        {
            self.vms[vm].hit(Cov::FastTwinRollback);
            let _ = self.deassign_idx(vm, MMIO, a);
            return Err(e);
        }
        Ok(())
    }

    fn assign_idx(&mut self, vm: usize, bus: usize, a: &KvmIoeventfd) -> Result<(), Errno> {
        let ctx = self.fdget(vm, a.fd)?;
        let wildcard = a.flags & FLAG_DATAMATCH == 0;
        let datamatch = if wildcard { 0 } else { a.datamatch };
        let v = &mut self.vms[vm];
        let collision = v.ioeventfds.iter().filter_map(|&id| v.ioev(id)).any(|p| {
            p.bus == bus
                && p.addr == a.addr
                && (p.len == 0
                    || a.len == 0
                    || (p.len == a.len && (p.wildcard || wildcard || p.datamatch == datamatch)))
        });
        if collision {
            v.hit(Cov::IoeventfdEexist);
            return Err(Errno::EEXIST);
        }
        let p = Ioev { bus, ctx, label: a.fd, addr: a.addr, len: a.len, wildcard, datamatch };
        let id = v.register(bus, a.addr, a.len as i32, Dev::Ioev(p))?;
        v.buses[bus].as_mut().expect("just registered").ioeventfd_count += 1;
        v.ioeventfds.push(id);
        Ok(())
    }

    fn deassign_idx(&mut self, vm: usize, bus: usize, a: &KvmIoeventfd) -> Result<(), Errno> {
        let ctx = self.fdget(vm, a.fd)?;
        let wildcard = a.flags & FLAG_DATAMATCH == 0;
        let v = &mut self.vms[vm];
        let found = v.ioeventfds.iter().copied().find(|&id| {
            v.ioev(id).is_some_and(|p| {
                p.bus == bus
                    && p.ctx == ctx
                    && p.addr == a.addr
                    && p.len == a.len
                    && p.wildcard == wildcard
                    && (p.wildcard || p.datamatch == a.datamatch)
            })
        });
        let Some(id) = found else {
            let other =
                v.ioeventfds.iter().filter_map(|&id| v.ioev(id)).any(|p| {
                    p.bus == bus && p.ctx != ctx && p.addr == a.addr && p.len == a.len && p.wildcard == wildcard
                });
            if other {
                v.hit(Cov::DeassignOtherEventfd);
            }
            v.hit(Cov::IoeventfdEnoent);
            return Err(Errno::ENOENT);
        };
        v.hit(Cov::IoeventfdDeassignOk);
        let _ = v.unregister(bus, id);
        if let Some(b) = v.buses[bus].as_mut() {
            b.ioeventfd_count -= 1;
        }
        Ok(())
    }

    fn register_zone(&mut self, vm: usize, z: &KvmCoalescedMmioZone) -> Result<(), Errno> {
        if z.pio > 1 {
            return Err(Errno::EINVAL);
        }
        let bus = if z.pio == 1 { PIO } else { MMIO };
        let v = &mut self.vms[vm];
        let id = v.register(bus, z.addr, z.size as i32, Dev::Zone(*z))?;
        v.zones.push(id);
        Ok(())
    }

    fn unregister_zone(&mut self, vm: usize, z: &KvmCoalescedMmioZone) -> Result<(), Errno> {
        if z.pio > 1 {
            self.vms[vm].hit(Cov::ZoneUnregisterEinval);
            return Err(Errno::EINVAL);
        }
        let bus = if z.pio == 1 { PIO } else { MMIO };
        let v = &mut self.vms[vm];
        for id in v.zones.clone() {
            let Some(Dev::Zone(zone)) = v.devs.get(&id).copied() else {
                continue;
            };
            if zone.pio == z.pio
                && (z.size as i32) < 0
                && z.addr >= zone.addr
                && z.addr.checked_add(z.size.into()).is_some_and(|end| end <= zone.addr.wrapping_add(zone.size.into()))
            {
                v.hit(Cov::ZoneUnregisterNegativeLenSkipped);
            }
            if zone.pio == z.pio && zone_contains(&zone, z.addr, z.size as i32) {
                v.hit(Cov::ZoneUnregisterRemoved);
                if v.unregister(bus, id).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// kvm_io_bus_write: `None` when nobody took it (or the bus is NULL).
    fn bus_write(&mut self, vm: usize, bus: usize, addr: u64, len: usize, data: [u8; 8]) -> Option<HandledBy> {
        let walk_back = self.walk_back;
        let v = &mut self.vms[vm];
        let Some(b) = v.buses[bus].as_ref() else {
            v.cov[Cov::AccessOnNullBus as usize] += 1;
            return None;
        };
        let key = (addr, len as i32);
        let at = |i: usize| (b.entries[i].addr, b.entries[i].len);
        let n = b.entries.len();
        let mut i = spec_bsearch(n, |i| spec_cmp(key, at(i)))?;
        if walk_back {
            let found = i;
            while i > 0 && spec_cmp(key, at(i - 1)) == 0 {
                i -= 1;
            }
            if i != found {
                v.cov[Cov::WalkBackMoved as usize] += 1;
            }
        }
        let first = i;
        let value = u64::from_le_bytes(data);
        let mut took = None;
        while i < n && spec_cmp(key, at(i)) == 0 {
            match v.devs[&b.entries[i].dev] {
                Dev::Ioev(p) => {
                    if ioev_matches(&p, addr, len, value) {
                        self.counters[p.ctx] += 1;
                        if !self.files.values().any(|f| *f == File::Eventfd(p.ctx)) {
                            v.cov[Cov::ClosedEventfdSignalled as usize] += 1;
                        }
                        took = Some((HandledBy::Ioeventfd { eventfd: p.label }, Cov::IoeventfdHit));
                        if bus == FAST {
                            took = Some((HandledBy::Ioeventfd { eventfd: p.label }, Cov::FastMmioHit));
                        } else if p.len == 0 && bus == MMIO {
                            v.cov[Cov::Len0HitOnMmioBus as usize] += 1;
                        }
                        break;
                    } else if p.addr == addr && p.len == len as u32 {
                        v.cov[Cov::DatamatchMiss as usize] += 1;
                    }
                }
                Dev::Zone(z) => {
                    if zone_contains(&z, addr, len as i32) {
                        if v.ring.len() < RING_USABLE {
                            v.ring.push_back(KvmCoalescedMmio { phys_addr: addr, len: len as u32, pio: z.pio, data });
                            let point = if (z.size as i32) < 0 { Cov::NegativeLenZoneHit } else { Cov::CoalescedHit };
                            took = Some((HandledBy::Coalesced, point));
                            break;
                        }
                        v.cov[Cov::RingFullDeclined as usize] += 1;
                    }
                }
            }
            i += 1;
        }
        let (handler, point) = took?;
        v.cov[point as usize] += 1;
        if i != first {
            v.cov[Cov::LaterDeviceTook as usize] += 1;
        }
        Some(handler)
    }

    /// One guest access (reads reach no device: ioeventfds and zones have no read op).
    fn access(&mut self, vm: usize, kind: BusKind, addr: u64, len: usize, value: Option<u64>) -> AccessOutcome {
        let mut data = [0u8; 8];
        if let Some(v) = value {
            data[..len].copy_from_slice(&v.to_le_bytes()[..len]);
        }
        match kind {
            BusKind::Mmio => {
                let v = &mut self.vms[vm];
                if v.backend == Backend::VmxEpt
                    && !v.mmio_pages.insert(addr >> 12)
                    && let Some(h) = self.bus_write(vm, FAST, addr, 0, [0; 8])
                {
                    if value.is_none() {
                        self.vms[vm].hit(Cov::FastMmioHitOnRead);
                    }
                    return AccessOutcome::Handled(h);
                }
                if value.is_some()
                    && let Some(h) = self.bus_write(vm, MMIO, addr, len, data)
                {
                    return AccessOutcome::Handled(h);
                }
                AccessOutcome::Exit(KvmExit::Mmio { addr, len: len as u32, data, is_write: value.is_some() })
            }
            BusKind::Pio => {
                if value.is_some()
                    && let Some(h) = self.bus_write(vm, PIO, addr, len, data)
                {
                    return AccessOutcome::Handled(h);
                }
                AccessOutcome::Exit(KvmExit::Io { port: addr as u16, size: len as u8, data, is_out: value.is_some() })
            }
            other => panic!("no guest access on {other:?}"),
        }
    }

    fn step(&mut self, step: &Step) -> Obs {
        match *step {
            Step::Eventfd => Obs::Fd(self.eventfd()),
            Step::OpenOther => Obs::Fd(self.install(File::Other)),
            Step::Close(fd) => Obs::Ret(self.close(fd)),
            Step::Ioeventfd { vm, args } => Obs::Ret(self.ioeventfd(vm, &args)),
            Step::RegisterZone { vm, zone } => Obs::Ret(self.register_zone(vm, &zone)),
            Step::UnregisterZone { vm, zone } => Obs::Ret(self.unregister_zone(vm, &zone)),
            Step::Access { vm, kind, addr, len, value, repeat } => {
                Obs::Accesses((0..repeat).map(|_| self.access(vm, kind, addr, len, value)).collect())
            }
            Step::FailNextAlloc { vm, bus } => {
                if self.vms[vm].fail_next[bus] {
                    self.vms[vm].hit(Cov::FailNextAlreadyPending);
                }
                self.vms[vm].fail_next[bus] = true;
                Obs::Nothing
            }
            Step::PopRing { vm, max } => {
                let ring = &mut self.vms[vm].ring;
                Obs::Popped((0..max).map_while(|_| ring.pop_front()).map(norm_ring_entry).collect())
            }
        }
    }

    /// Whether a `bus` "out of order" report of the model is one the spec's own rules produce:
    /// the reference's array has the same two adjacent entries with `cmp(range[i], range[i+1]) > 0`.
    /// (Removing an entry can leave such a pair once wrapping or negative lengths are around; see
    /// `kernel_rules_build_an_array_not_sorted_per_cmp`.) Every other report counts.
    fn explains(&self, invariant: &str, text: &str) -> bool {
        if invariant != "bus" || !text.ends_with("are out of order") {
            return false;
        }
        // "vm{N}: {bus} bus entries {i} [...] ... and {i+1} [...] ... are out of order"
        let parse = || -> Option<(usize, usize, usize)> {
            let (vm, rest) = text.strip_prefix("vm")?.split_once(": ")?;
            let (bus, rest) = rest.split_once(" bus entries ")?;
            let (i, _) = rest.split_once(' ')?;
            let bus = KINDS.iter().position(|k| k.name() == bus)?;
            Some((vm.parse().ok()?, bus, i.parse().ok()?))
        };
        let Some((vm, bus, i)) = parse() else {
            return false;
        };
        let Some(b) = self.vms.get(vm).and_then(|v| v.buses[bus].as_ref()) else {
            return false;
        };
        match (b.entries.get(i), b.entries.get(i + 1)) {
            (Some(x), Some(y)) => spec_cmp((x.addr, x.len), (y.addr, y.len)) > 0,
            _ => false,
        }
    }

    /// The index dispatch starts at (for the plain tests).
    fn first_dev(&self, vm: usize, bus: usize, addr: u64, len: i32) -> Option<usize> {
        let b = self.vms[vm].buses[bus].as_ref()?;
        let at = |i: usize| (b.entries[i].addr, b.entries[i].len);
        let mut i = spec_bsearch(b.entries.len(), |i| spec_cmp((addr, len), at(i)))?;
        while i > 0 && spec_cmp((addr, len), at(i - 1)) == 0 {
            i -= 1;
        }
        Some(i)
    }
}

// ---------------------------------------------------------------------------------------------
// Transitions
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Step {
    Eventfd,
    OpenOther,
    Close(i32),
    Ioeventfd {
        vm: usize,
        args: KvmIoeventfd,
    },
    RegisterZone {
        vm: usize,
        zone: KvmCoalescedMmioZone,
    },
    UnregisterZone {
        vm: usize,
        zone: KvmCoalescedMmioZone,
    },
    /// `repeat` identical accesses (bursts fill the ring).
    Access {
        vm: usize,
        kind: BusKind,
        addr: u64,
        len: usize,
        value: Option<u64>,
        repeat: u16,
    },
    /// `bus` is an index into [`KINDS`].
    FailNextAlloc {
        vm: usize,
        bus: usize,
    },
    PopRing {
        vm: usize,
        max: usize,
    },
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Step::Eventfd => write!(f, "eventfd"),
            Step::OpenOther => write!(f, "open_other"),
            Step::Close(fd) => write!(f, "close({fd})"),
            Step::Ioeventfd { vm, args: a } => {
                write!(
                    f,
                    "ioeventfd(vm{vm}, addr {:#x}, len {}, fd {}, flags {:#x}, datamatch {:#x}",
                    a.addr, a.len, a.fd, a.flags, a.datamatch
                )?;
                if a.pad != [0; 36] {
                    write!(f, ", pad {:#x}..", a.pad[0])?;
                }
                write!(f, ")")
            }
            Step::RegisterZone { vm, zone: z } => {
                write!(f, "register_coalesced(vm{vm}, addr {:#x}, size {:#x}, pio {})", z.addr, z.size, z.pio)
            }
            Step::UnregisterZone { vm, zone: z } => {
                write!(f, "unregister_coalesced(vm{vm}, addr {:#x}, size {:#x}, pio {})", z.addr, z.size, z.pio)
            }
            Step::Access { vm, kind, addr, len, value, repeat } => {
                match value {
                    Some(v) => write!(f, "{kind:?} write(vm{vm}, {addr:#x}, len {len}, value {v:#x})")?,
                    None => write!(f, "{kind:?} read(vm{vm}, {addr:#x}, len {len})")?,
                }
                if repeat != 1 {
                    write!(f, " x{repeat}")?;
                }
                Ok(())
            }
            Step::FailNextAlloc { vm, bus } => write!(f, "fail_next_alloc(vm{vm}, {:?})", KINDS[bus]),
            Step::PopRing { vm, max } => write!(f, "pop_ring(vm{vm}, up to {max})"),
        }
    }
}

impl Step {
    fn vm(&self) -> Option<usize> {
        match *self {
            Step::Eventfd | Step::OpenOther | Step::Close(_) => None,
            Step::Ioeventfd { vm, .. }
            | Step::RegisterZone { vm, .. }
            | Step::UnregisterZone { vm, .. }
            | Step::Access { vm, .. }
            | Step::FailNextAlloc { vm, .. }
            | Step::PopRing { vm, .. } => Some(vm),
        }
    }
}

/// Small address windows so that entries collide and nest: low MMIO/ports (often 4-aligned, so
/// accesses meet ioeventfds), a second page, the top of the port space, the 2 GiB boundary
/// (negative-len zones) and the top of the u64 space (wrapping).
fn addr_strategy() -> BoxedStrategy<u64> {
    prop_oneof![
        6 => (0u64..6).prop_map(|x| x * 4),
        5 => 0u64..0x18,
        2 => 0x1000u64..0x1010,
        1 => 0xfff0u64..0x1_0004,
        1 => 0x7fff_fff8u64..0x8000_0008,
        1 => (u64::MAX - 0x17)..=u64::MAX,
    ]
    .boxed()
}

fn value_strategy() -> BoxedStrategy<u64> {
    prop_oneof![
        6 => 0u64..4,
        1 => any::<u64>(),
        1 => Just(0x1_0000_0001u64),
        1 => Just(0x100u64),
    ]
    .boxed()
}

/// Raw fds: mostly plausible numbers, sometimes negative or below the first fd.
fn raw_fd_strategy() -> BoxedStrategy<i32> {
    prop_oneof![10 => 3i32..7, 2 => 7i32..10, 1 => -1i32..3].boxed()
}

fn ioeventfd_strategy(fd: BoxedStrategy<i32>) -> BoxedStrategy<KvmIoeventfd> {
    let len = prop_oneof![
        3 => Just(0u32), 3 => Just(1u32), 3 => Just(2u32), 5 => Just(4u32), 2 => Just(8u32),
        1 => Just(3u32), 1 => Just(16u32), 1 => any::<u32>(),
    ];
    let bus_flags =
        prop_oneof![6 => Just(0u32), 4 => Just(FLAG_PIO), 1 => Just(FLAG_CCW), 1 => Just(FLAG_PIO | FLAG_CCW)];
    let datamatch_flag = prop_oneof![Just(0u32), Just(FLAG_DATAMATCH)];
    let deassign = prop_oneof![4 => Just(0u32), 1 => Just(FLAG_DEASSIGN)];
    let extra = prop_oneof![14 => Just(0u32), 1 => Just(1u32 << 4), 1 => (5u32..32).prop_map(|b| 1u32 << b)];
    let pad = prop_oneof![4 => Just(0u8), 1 => any::<u8>()];
    (addr_strategy(), len, value_strategy(), fd, (bus_flags, datamatch_flag, deassign, extra), pad)
        .prop_map(|(addr, len, datamatch, fd, (b, d, x, e), pad)| KvmIoeventfd {
            datamatch,
            addr,
            len,
            fd,
            flags: b | d | x | e,
            pad: [pad; 36],
        })
        .boxed()
}

fn zone_strategy() -> BoxedStrategy<KvmCoalescedMmioZone> {
    let size = prop_oneof![
        2 => Just(0u32), 2 => Just(1u32), 2 => Just(2u32), 3 => Just(4u32), 3 => Just(8u32),
        3 => Just(0x10u32), 1 => Just(0x18u32), 1 => Just(0x1000u32), 1 => Just(0x7fff_ffffu32),
        1 => Just(0x8000_0000u32), 1 => Just(0x8000_0010u32), 1 => Just(0xffff_fff0u32),
        1 => Just(0xffff_ffffu32), 1 => any::<u32>(),
    ];
    let pio = prop_oneof![6 => Just(0u32), 4 => Just(1u32), 1 => Just(2u32), 1 => any::<u32>()];
    (addr_strategy(), size, pio).prop_map(|(addr, size, pio)| KvmCoalescedMmioZone { addr, size, pio }).boxed()
}

/// A valid guest access of `len` bytes near `addr`: ports wrap into 16 bits, MMIO accesses move
/// back so as not to cross a 4 KiB page.
fn access_step(vm: usize, kind: BusKind, addr: u64, len: usize, value: Option<u64>, repeat: u16) -> Step {
    let addr = match kind {
        BusKind::Pio => addr & 0xffff,
        _ if (addr & 0xfff) + len as u64 > 0x1000 => addr - len as u64,
        _ => addr,
    };
    Step::Access { vm, kind, addr, len, value, repeat }
}

fn access_value_strategy() -> BoxedStrategy<Option<u64>> {
    prop_oneof![3 => value_strategy().prop_map(Some), 1 => Just(None)].boxed()
}

fn repeat_strategy() -> BoxedStrategy<u16> {
    prop_oneof![30 => Just(1u16), 1 => Just(170u16), 1 => 2u16..100].boxed()
}

fn access_len_strategy(kind: BusKind) -> BoxedStrategy<usize> {
    match kind {
        BusKind::Pio => prop::sample::select(vec![1usize, 2, 4]).boxed(),
        _ => prop::sample::select(vec![1usize, 2, 4, 8]).boxed(),
    }
}

fn access_strategy(nvms: usize) -> BoxedStrategy<Step> {
    let mmio =
        (0..nvms, addr_strategy(), access_len_strategy(BusKind::Mmio), access_value_strategy(), repeat_strategy())
            .prop_map(|(vm, addr, len, value, repeat)| access_step(vm, BusKind::Mmio, addr, len, value, repeat));
    let port = prop_oneof![8 => addr_strategy(), 1 => 0xfff0u64..0x1_0000];
    let pio = (0..nvms, port, access_len_strategy(BusKind::Pio), access_value_strategy(), repeat_strategy())
        .prop_map(|(vm, addr, len, value, repeat)| access_step(vm, BusKind::Pio, addr, len, value, repeat));
    prop_oneof![3 => mmio, 2 => pio].boxed()
}

/// The flags an existing ioeventfd was assigned with (bus and datamatch; a FAST_MMIO twin was
/// assigned as a len-0 MMIO one).
fn ioev_flags(p: &Ioev) -> u32 {
    let bus = match p.bus {
        PIO => FLAG_PIO,
        CCW => FLAG_CCW,
        _ => 0,
    };
    bus | if p.wildcard { 0 } else { FLAG_DATAMATCH }
}

/// Steps aimed at an existing ioeventfd: deassign it, assign something colliding (or almost),
/// or write to it.
fn aimed_at_ioeventfd(vm: usize, p: Ioev, fd: BoxedStrategy<i32>) -> BoxedStrategy<Step> {
    let args = KvmIoeventfd {
        datamatch: p.datamatch,
        addr: p.addr,
        len: p.len,
        fd: p.label,
        flags: ioev_flags(&p),
        ..KvmIoeventfd::default()
    };
    let deassign = prop_oneof![3 => Just(p.label), 1 => fd.clone()].prop_map(move |fd| Step::Ioeventfd {
        vm,
        args: KvmIoeventfd { fd, flags: args.flags | FLAG_DEASSIGN, ..args },
    });
    let len = prop_oneof![3 => Just(p.len), 1 => Just(0u32), 1 => prop::sample::select(vec![1u32, 2, 4, 8])];
    let datamatch = prop_oneof![2 => Just(None), 2 => value_strategy().prop_map(Some), 1 => Just(Some(p.datamatch))];
    let again = (fd, len, datamatch).prop_map(move |(fd, len, datamatch)| {
        let flags = (args.flags & !FLAG_DATAMATCH) | if datamatch.is_some() { FLAG_DATAMATCH } else { 0 };
        Step::Ioeventfd { vm, args: KvmIoeventfd { fd, len, datamatch: datamatch.unwrap_or(0), flags, ..args } }
    });
    let kind = if p.bus == PIO { BusKind::Pio } else { BusKind::Mmio };
    let access_len = if matches!((kind, p.len), (BusKind::Pio, 1 | 2 | 4) | (BusKind::Mmio, 1 | 2 | 4 | 8)) {
        Just(p.len as usize).boxed()
    } else {
        access_len_strategy(kind)
    };
    let value = prop_oneof![
        3 => Just(Some(p.datamatch)),
        2 => value_strategy().prop_map(Some),
        1 => Just(None),
    ];
    let write = (access_len, value, repeat_strategy())
        .prop_map(move |(len, value, repeat)| access_step(vm, kind, p.addr, len, value, repeat));
    prop_oneof![2 => deassign, 2 => again, 4 => write].boxed()
}

/// Steps aimed at an existing zone: write inside it, or unregister (part of) it.
fn aimed_at_zone(vm: usize, z: KvmCoalescedMmioZone) -> BoxedStrategy<Step> {
    let kind = if z.pio == 1 { BusKind::Pio } else { BusKind::Mmio };
    let span = u64::from(z.size).clamp(1, 0x20);
    let write = (0..span, access_len_strategy(kind), value_strategy(), repeat_strategy()).prop_map(
        move |(off, len, value, repeat)| access_step(vm, kind, z.addr.wrapping_add(off), len, Some(value), repeat),
    );
    let part = (0..span, prop_oneof![Just(0u32), Just(1u32), Just(4u32), Just(z.size)]).prop_map(move |(off, size)| {
        Step::UnregisterZone { vm, zone: KvmCoalescedMmioZone { addr: z.addr.wrapping_add(off), size, pio: z.pio } }
    });
    prop_oneof![4 => write, 1 => Just(Step::UnregisterZone { vm, zone: z }), 1 => part].boxed()
}

fn step_strategy(sys: &RefSystem) -> BoxedStrategy<Step> {
    let nvms = sys.vms.len();
    let eventfds: Vec<i32> =
        sys.files.iter().filter(|(_, f)| matches!(f, File::Eventfd(_))).map(|(fd, _)| *fd).collect();
    let fd = if eventfds.is_empty() {
        raw_fd_strategy()
    } else {
        prop_oneof![4 => prop::sample::select(eventfds), 1 => raw_fd_strategy()].boxed()
    };
    let mut options: Vec<(u32, BoxedStrategy<Step>)> = vec![
        (3, Just(Step::Eventfd).boxed()),
        (1, Just(Step::OpenOther).boxed()),
        (1, raw_fd_strategy().prop_map(Step::Close).boxed()),
        (8, (0..nvms, ioeventfd_strategy(fd.clone())).prop_map(|(vm, args)| Step::Ioeventfd { vm, args }).boxed()),
        (5, (0..nvms, zone_strategy()).prop_map(|(vm, zone)| Step::RegisterZone { vm, zone }).boxed()),
        (1, (0..nvms, zone_strategy()).prop_map(|(vm, zone)| Step::UnregisterZone { vm, zone }).boxed()),
        (8, access_strategy(nvms)),
        (
            2,
            (0..nvms, prop_oneof![3 => Just(MMIO), 2 => Just(PIO), 1 => Just(CCW), 2 => Just(FAST)])
                .prop_map(|(vm, bus)| Step::FailNextAlloc { vm, bus })
                .boxed(),
        ),
        (
            1,
            (0..nvms, prop_oneof![Just(1usize), Just(1000usize)])
                .prop_map(|(vm, max)| Step::PopRing { vm, max })
                .boxed(),
        ),
    ];
    let ioevs: Vec<(usize, Ioev)> = sys
        .vms
        .iter()
        .enumerate()
        .flat_map(|(i, v)| v.ioeventfds.iter().filter_map(move |&id| v.ioev(id)).map(move |p| (i, p)))
        .collect();
    if !ioevs.is_empty() {
        let aimed = prop::sample::select(ioevs).prop_flat_map(move |(vm, p)| aimed_at_ioeventfd(vm, p, fd.clone()));
        options.push((8, aimed.boxed()));
    }
    let zones: Vec<(usize, KvmCoalescedMmioZone)> = sys
        .vms
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            v.zones.iter().filter_map(move |id| match v.devs.get(id) {
                Some(Dev::Zone(z)) => Some((i, *z)),
                _ => None,
            })
        })
        .collect();
    if !zones.is_empty() {
        options.push((5, prop::sample::select(zones).prop_flat_map(|(vm, z)| aimed_at_zone(vm, z)).boxed()));
    }
    prop::strategy::Union::new_weighted(options).boxed()
}

fn setup_strategy() -> BoxedStrategy<(Vec<VmSetup>, usize)> {
    let backend = prop_oneof![Just(Backend::Emulated), Just(Backend::VmxEpt)];
    let limit = prop_oneof![2 => Just(Some(1000)), 2 => Just(Some(3)), 1 => Just(Some(1)), 1 => Just(None)];
    let vm = (backend, limit).prop_map(|(backend, limit)| VmSetup { backend, limit });
    (prop::collection::vec(vm, 1..=2), prop_oneof![1 => Just(0usize), 4 => 1usize..=3]).boxed()
}

/// The reference state machine; `PLANTED` selects the deliberately wrong variant (no walk back).
struct Reference<const PLANTED: bool>;

/// The generated initial state: the reference plus how to build the model the same way.
#[derive(Clone)]
struct State {
    setups: Vec<VmSetup>,
    eventfds: usize,
    sys: RefSystem,
}

/// Only what the case started from (the reference's contents follow from the steps).
impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vms {:?}, {} eventfds up front", self.setups, self.eventfds)
    }
}

impl<const PLANTED: bool> ReferenceStateMachine for Reference<PLANTED> {
    type State = State;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<State> {
        setup_strategy()
            .prop_map(|(setups, eventfds)| {
                let sys = RefSystem::new(&setups, eventfds, !PLANTED);
                State { setups, eventfds, sys }
            })
            .boxed()
    }

    fn transitions(state: &State) -> BoxedStrategy<Step> {
        step_strategy(&state.sys)
    }

    fn apply(mut state: State, step: &Step) -> State {
        state.sys.last = state.sys.step(step);
        state
    }

    fn preconditions(state: &State, step: &Step) -> bool {
        step.vm().is_none_or(|vm| vm < state.setups.len())
    }
}

// ---------------------------------------------------------------------------------------------
// The system under test and the comparison
// ---------------------------------------------------------------------------------------------

struct Sut {
    kvm: Kvm,
    vms: Vec<usize>,
}

impl Sut {
    fn new(setups: &[VmSetup], eventfds: usize) -> Self {
        let kvm = Kvm::new();
        let vms = setups
            .iter()
            .map(|s| {
                kvm.create_vm(VmConfig {
                    backend: s.backend,
                    bus: BusConfig { nr_iobus_devs: s.limit, ..BusConfig::default() },
                })
            })
            .collect();
        for _ in 0..eventfds {
            kvm.eventfd();
        }
        Sut { kvm, vms }
    }

    fn step(&self, step: &Step) -> Obs {
        let vm = |i: usize| self.kvm.vm(self.vms[i]).expect("vm exists");
        match *step {
            Step::Eventfd => Obs::Fd(self.kvm.eventfd()),
            Step::OpenOther => Obs::Fd(self.kvm.open_other("not-an-eventfd")),
            Step::Close(fd) => Obs::Ret(self.kvm.close(fd)),
            Step::Ioeventfd { vm, args } => Obs::Ret(self.kvm.ioeventfd(self.vms[vm], &args)),
            Step::RegisterZone { vm, zone } => Obs::Ret(self.kvm.register_coalesced_mmio(self.vms[vm], &zone)),
            Step::UnregisterZone { vm, zone } => Obs::Ret(self.kvm.unregister_coalesced_mmio(self.vms[vm], &zone)),
            Step::Access { vm: i, kind, addr, len, value, repeat } => {
                let m = vm(i);
                Obs::Accesses(
                    (0..repeat).map(|_| m.access(kind, addr, len, value).expect("a valid guest access")).collect(),
                )
            }
            Step::FailNextAlloc { vm: i, bus } => {
                vm(i).fail_next_alloc(KINDS[bus]);
                Obs::Nothing
            }
            Step::PopRing { vm: i, max } => {
                let m = vm(i);
                Obs::Popped((0..max).map_while(|_| m.io.ring.pop()).map(norm_ring_entry).collect())
            }
        }
    }

    /// Everything observable, compared with the reference.
    fn compare(&self, r: &RefSystem) -> Result<(), String> {
        for (i, rv) in r.vms.iter().enumerate() {
            let m = self.kvm.vm(self.vms[i]).ok_or(format!("vm {i} missing"))?;
            for (b, kind) in KINDS.iter().enumerate() {
                let snap = m.io.bus(*kind).snapshot();
                match (&snap, &rv.buses[b]) {
                    (None, None) => {}
                    (Some(arr), Some(rb)) => {
                        let got: Vec<(u64, i32, HandledBy)> =
                            arr.ranges().iter().map(|e| (e.addr, e.len, entry_handler(e))).collect();
                        let want: Vec<(u64, i32, HandledBy)> =
                            rb.entries.iter().map(|e| (e.addr, e.len, rv.devs[&e.dev].handled_by())).collect();
                        if got != want {
                            return Err(format!("vm {i} bus {kind:?}: model {got:x?}\n reference {want:x?}"));
                        }
                        if arr.dev_count() as usize != rb.entries.len() {
                            return Err(format!("vm {i} bus {kind:?}: dev_count {}", arr.dev_count()));
                        }
                        if arr.ioeventfd_count() != rb.ioeventfd_count {
                            return Err(format!(
                                "vm {i} bus {kind:?}: ioeventfd_count model {} reference {}",
                                arr.ioeventfd_count(),
                                rb.ioeventfd_count
                            ));
                        }
                    }
                    (got, _) => {
                        return Err(format!(
                            "vm {i} bus {kind:?}: model NULL={} reference NULL={}",
                            got.is_none(),
                            rv.buses[b].is_none()
                        ));
                    }
                }
            }
            if m.io.ring.len() != rv.ring.len() {
                return Err(format!("vm {i} ring: model {} entries, reference {}", m.io.ring.len(), rv.ring.len()));
            }
        }
        for fd in -1..16 {
            let got = self.kvm.eventfd_count(fd);
            match r.files.get(&fd) {
                Some(File::Eventfd(ctx)) => {
                    if got != Ok(r.counters[*ctx]) {
                        return Err(format!("eventfd {fd}: model {got:?} reference {}", r.counters[*ctx]));
                    }
                }
                _ => {
                    if got.is_ok() {
                        return Err(format!("fd {fd} is no open eventfd but the model counts {got:?}"));
                    }
                }
            }
        }
        let broken: Vec<_> =
            self.kvm.check_structure().into_iter().filter(|(inv, text)| !r.explains(inv.id, text)).collect();
        if !broken.is_empty() {
            return Err(format!("check_structure: {broken:?}"));
        }
        let violations: Vec<_> =
            self.kvm.recorder().violations().into_iter().filter(|v| !r.explains(v.invariant, &v.text)).collect();
        if !violations.is_empty() {
            return Err(format!("violations: {violations:?}"));
        }
        Ok(())
    }
}

/// What a model bus entry reports when it handles an access (identifies ioeventfd vs zone and the
/// eventfd label; the access arguments do not matter for these two device kinds).
fn entry_handler(e: &IoRange) -> HandledBy {
    e.dev.handled_by(e.addr, &[], true)
}

/// The state machine test; `PLANTED` runs it against the wrong reference.
struct BusTest<const PLANTED: bool>;

impl<const PLANTED: bool> StateMachineTest for BusTest<PLANTED> {
    type SystemUnderTest = Sut;
    type Reference = Reference<PLANTED>;

    fn init_test(state: &State) -> Sut {
        Sut::new(&state.setups, state.eventfds)
    }

    fn apply(sut: Sut, state: &State, step: Step) -> Sut {
        let got = sut.step(&step);
        assert_eq!(got, state.sys.last, "outcome of {step:x?} (left: model, right: reference)");
        sut
    }

    fn check_invariants(sut: &Sut, state: &State) {
        if let Err(e) = sut.compare(&state.sys) {
            panic!("{e}");
        }
    }

    /// The ring cannot be read without consuming it: drain both at the end and compare.
    fn teardown(sut: Sut, mut state: State) {
        for vm in 0..state.sys.vms.len() {
            let step = Step::PopRing { vm, max: RING_USABLE + 1 };
            let want = state.sys.step(&step);
            assert_eq!(sut.step(&step), want, "ring contents at the end (left: model, right: reference)");
        }
    }
}

type Faithful = BusTest<false>;

prop_state_machine! {
    #![proptest_config(Config {
        cases: 1024,
        max_shrink_iters: 20_000,
        ..Config::default()
    })]

    #[test]
    fn model_bus_matches_reference(sequential 1..60 => Faithful);
}

// ---------------------------------------------------------------------------------------------
// Replaying fixed sequences (plain tests)
// ---------------------------------------------------------------------------------------------

fn emulated(limit: Option<i32>) -> VmSetup {
    VmSetup { backend: Backend::Emulated, limit }
}

/// Runs `steps` on both the model and the reference, comparing after each; returns the
/// observations.
fn replay(setups: &[VmSetup], eventfds: usize, steps: &[Step]) -> (Sut, RefSystem, Vec<Obs>) {
    let sut = Sut::new(setups, eventfds);
    let mut r = RefSystem::new(setups, eventfds, true);
    sut.compare(&r).unwrap();
    let mut seen = Vec::new();
    for step in steps {
        let want = r.step(step);
        let got = sut.step(step);
        assert_eq!(got, want, "outcome of {step:x?} (left: model, right: reference)");
        if let Err(e) = sut.compare(&r) {
            panic!("after {step:x?}: {e}");
        }
        seen.push(got);
    }
    (sut, r, seen)
}

fn zone(addr: u64, size: u32, pio: u32) -> KvmCoalescedMmioZone {
    KvmCoalescedMmioZone { addr, size, pio }
}

fn reg_zone(addr: u64, size: u32) -> Step {
    Step::RegisterZone { vm: 0, zone: zone(addr, size, 0) }
}

fn ioev(addr: u64, len: u32, fd: i32, datamatch: Option<u64>) -> Step {
    let flags = if datamatch.is_some() { FLAG_DATAMATCH } else { 0 };
    Step::Ioeventfd {
        vm: 0,
        args: KvmIoeventfd { datamatch: datamatch.unwrap_or(0), addr, len, fd, flags, ..KvmIoeventfd::default() },
    }
}

fn mmio_write(addr: u64, len: usize, value: u64) -> Step {
    Step::Access { vm: 0, kind: BusKind::Mmio, addr, len, value: Some(value), repeat: 1 }
}

fn bus_ranges(sut: &Sut, kind: BusKind) -> Vec<(u64, i32)> {
    let m = sut.kvm.vm(sut.vms[0]).unwrap();
    m.io.bus(kind).snapshot().unwrap().ranges().iter().map(|e| (e.addr, e.len)).collect()
}

fn exit_write(addr: u64, len: u32, value: u64) -> AccessOutcome {
    let mut data = [0u8; 8];
    data[..len as usize].copy_from_slice(&value.to_le_bytes()[..len as usize]);
    AccessOutcome::Exit(KvmExit::Mmio { addr, len, data, is_write: true })
}

const OK: Obs = Obs::Ret(Ok(()));

fn accesses(o: &[AccessOutcome]) -> Obs {
    Obs::Accesses(o.to_vec())
}

#[test]
fn nested_ranges_skip_the_outer_device() {
    // The spec's example: [0,100), [10,12), [50,60) as coalesced zones.
    let (sut, r, seen) = replay(
        &[emulated(Some(1000))],
        0,
        &[reg_zone(0, 100), reg_zone(10, 2), reg_zone(50, 10), mmio_write(55, 4, 7)],
    );
    assert_eq!(bus_ranges(&sut, BusKind::Mmio), vec![(0, 100), (10, 2), (50, 10)]);
    assert_eq!(seen[..3], [OK, OK, OK]);
    // Dispatch starts at [50,60): bsearch lands there, the walk back stops at [10,12) and never
    // reaches [0,100).
    assert_eq!(r.first_dev(0, MMIO, 55, 4), Some(2));
    assert_eq!(seen[3], accesses(&[AccessOutcome::Handled(HandledBy::Coalesced)]));

    // Observable form: [50,60) replaced by a declining device at 55 (an ioeventfd whose datamatch
    // the write does not carry). The 4-byte write at 55 is offered to it only and exits,
    // although the zone [0,100) contains it.
    let (_, r, seen) = replay(
        &[emulated(Some(1000))],
        1,
        &[reg_zone(0, 100), reg_zone(10, 2), ioev(55, 4, 3, Some(1)), mmio_write(55, 4, 7)],
    );
    assert_eq!(r.first_dev(0, MMIO, 55, 4), Some(2));
    assert_eq!(seen[3], accesses(&[exit_write(55, 4, 7)]));

    // Without [10,12) the walk back reaches [0,100), which takes the write.
    let (_, _, seen) =
        replay(&[emulated(Some(1000))], 1, &[reg_zone(0, 100), ioev(55, 4, 3, Some(1)), mmio_write(55, 4, 7)]);
    assert_eq!(seen[2], accesses(&[AccessOutcome::Handled(HandledBy::Coalesced)]));
}

#[test]
fn len0_and_len_positive_insertion_order() {
    let one = [emulated(Some(1000))];
    // Same address: entries keep registration order whether the len-0 one came first or second.
    let (sut, _, seen) = replay(&one, 1, &[ioev(0x10, 0, 3, None), reg_zone(0x10, 4), mmio_write(0x10, 4, 1)]);
    assert_eq!(bus_ranges(&sut, BusKind::Mmio), vec![(0x10, 0), (0x10, 4)]);
    assert_eq!(seen[2], accesses(&[AccessOutcome::Handled(HandledBy::Ioeventfd { eventfd: 3 })]));
    assert_eq!(bus_ranges(&sut, BusKind::FastMmio), vec![(0x10, 0)]);

    let (sut, _, seen) = replay(&one, 1, &[reg_zone(0x10, 4), ioev(0x10, 0, 3, None), mmio_write(0x10, 4, 1)]);
    assert_eq!(bus_ranges(&sut, BusKind::Mmio), vec![(0x10, 4), (0x10, 0)]);
    assert_eq!(seen[2], accesses(&[AccessOutcome::Handled(HandledBy::Coalesced)]));

    // len 0 compares by address only: it goes after every entry starting at or below it...
    let (sut, _, _) = replay(&one, 0, &[reg_zone(0x10, 0), reg_zone(0x0c, 8), reg_zone(0x14, 4), reg_zone(0x10, 0)]);
    // (0x0c,8) vs (0x10,0): 0x10 >= 0x0c and 0x10 <= 0x14, so (0x0c,8) lands after (0x10,0);
    // (0x14,4) goes before nothing; the second (0x10,0) goes before (0x14,4) only.
    assert_eq!(bus_ranges(&sut, BusKind::Mmio), vec![(0x10, 0), (0x0c, 8), (0x10, 0), (0x14, 4)]);

    // ... while a longer entry at the same address is passed by a shorter newcomer.
    let (sut, _, _) = replay(&one, 0, &[reg_zone(0x10, 8), reg_zone(0x10, 4), reg_zone(0x10, 0)]);
    assert_eq!(bus_ranges(&sut, BusKind::Mmio), vec![(0x10, 4), (0x10, 8), (0x10, 0)]);

    // An ioeventfd of len 0 beside len 4 at the same address collides (EEXIST).
    let (_, _, seen) = replay(&one, 1, &[ioev(0x10, 4, 3, None), ioev(0x10, 0, 3, None)]);
    assert_eq!(seen[1], Obs::Ret(Err(Errno::EEXIST)));
}

#[test]
fn negative_len_zone_wraps() {
    let one = [emulated(Some(1000))];
    // A zone of 2 GiB at 0: its bus len is i32::MIN, so its end wraps to the top of the u64
    // space and every access at or above 0 compares equal; the zone itself takes [0, 2 GiB).
    let (sut, _, seen) = replay(
        &one,
        0,
        &[
            reg_zone(0, 0x8000_0000),
            mmio_write(0x10, 4, 0xabcd),
            mmio_write(0x7fff_fffc, 4, 1),
            mmio_write(0x8000_0000, 4, 2),
            Step::PopRing { vm: 0, max: 10 },
        ],
    );
    assert_eq!(bus_ranges(&sut, BusKind::Mmio), vec![(0, i32::MIN)]);
    assert_eq!(seen[1], accesses(&[AccessOutcome::Handled(HandledBy::Coalesced)]));
    assert_eq!(seen[2], accesses(&[AccessOutcome::Handled(HandledBy::Coalesced)]));
    assert_eq!(seen[3], accesses(&[exit_write(0x8000_0000, 4, 2)]));
    let Obs::Popped(ring) = &seen[4] else { panic!() };
    assert_eq!(
        ring.iter().map(|e| (e.phys_addr, e.len, e.pio)).collect::<Vec<_>>(),
        [(0x10, 4, 0), (0x7fff_fffc, 4, 0)]
    );

    // The same zone at 4 GiB: its end (4 GiB - 2 GiB) lies below its start, so no access ever
    // compares equal with it although the zone would contain it.
    let (_, _, seen) = replay(&one, 0, &[reg_zone(0x1_0000_0000, 0x8000_0000), mmio_write(0x1_0000_0010, 4, 1)]);
    assert_eq!(seen[1], accesses(&[exit_write(0x1_0000_0010, 4, 1)]));
}

#[test]
fn planted_bug_is_caught() {
    // The same strategies and comparison against a reference whose dispatch does not walk back.
    let config = Config { cases: 4096, max_shrink_iters: 2_000, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config.clone(), TestRng::deterministic_rng(config.rng_algorithm));
    let result = runner.run(&Reference::<true>::sequential_strategy(1..60), |(init, steps, seen)| {
        BusTest::<true>::test_sequential(config.clone(), init, steps, seen);
        Ok(())
    });
    match result {
        Err(TestError::Fail(why, (_, steps, _))) => {
            assert!(!steps.is_empty());
            eprintln!("planted bug found ({} steps after shrinking): {why}\n{steps:#x?}", steps.len());
        }
        other => panic!("the planted bug went unnoticed: {other:?}"),
    }
}

#[test]
fn generator_reaches_every_coverage_point() {
    // Replays as many generated sequences as the main test runs, on the reference only, and
    // demands that each coverage point was reached: the strategies do reach ENOSPC, the injected
    // faults, a NULL bus, the FAST_MMIO path, a full ring, the walk back, and so on.
    use proptest::strategy::ValueTree;
    let mut runner =
        TestRunner::new_with_rng(Config::default(), TestRng::deterministic_rng(Config::default().rng_algorithm));
    let strategy = Reference::<false>::sequential_strategy(1..60);
    let mut total = [0u64; COV_POINTS];
    for _ in 0..1024 {
        let (state, steps, _) = strategy.new_tree(&mut runner).expect("a case").current();
        let mut sys = state.sys;
        for step in &steps {
            sys.step(step);
        }
        for v in &sys.vms {
            for (t, c) in total.iter_mut().zip(v.cov) {
                *t += u64::from(c);
            }
        }
    }
    let all = [
        Cov::RegisterOk,
        Cov::RegisterEnospc,
        Cov::RegisterEnomemInjected,
        Cov::RegisterEnomemNullBus,
        Cov::UnregisterOk,
        Cov::UnregisterShrinkFailed,
        Cov::IoeventfdEexist,
        Cov::IoeventfdEnoent,
        Cov::IoeventfdDeassignOk,
        Cov::IoeventfdBadLen,
        Cov::IoeventfdWraps,
        Cov::IoeventfdUnknownFlags,
        Cov::IoeventfdLen0Datamatch,
        Cov::FdEbadf,
        Cov::FdEinval,
        Cov::FastTwinRollback,
        Cov::CcwAssigned,
        Cov::FastMmioHit,
        Cov::Len0HitOnMmioBus,
        Cov::IoeventfdHit,
        Cov::DatamatchMiss,
        Cov::CoalescedHit,
        Cov::NegativeLenZoneHit,
        Cov::RingFullDeclined,
        Cov::LaterDeviceTook,
        Cov::WalkBackMoved,
        Cov::ZoneUnregisterEinval,
        Cov::ZoneUnregisterRemoved,
        Cov::AccessOnNullBus,
        Cov::ZoneUnregisterNegativeLenSkipped,
        Cov::FastMmioHitOnRead,
        Cov::FailNextAlreadyPending,
        Cov::ClosedEventfdSignalled,
        Cov::DeassignOnlyFastTwin,
        Cov::DeassignOtherEventfd,
    ];
    assert_eq!(all.len(), COV_POINTS);
    let report: Vec<String> = all.iter().map(|p| format!("{p:?}: {}", total[*p as usize])).collect();
    eprintln!("coverage over 1024 generated cases:\n  {}", report.join("\n  "));
    // Too rare for random sequences (a len-0 MMIO ioeventfd alive when another device's failed
    // shrink takes the MMIO bus down, then deassigned): `fast_mmio_twin_outlives_a_null_mmio_bus`
    // covers it deterministically.
    let optional = [Cov::DeassignOnlyFastTwin];
    let missing: Vec<&Cov> = all.iter().filter(|p| total[**p as usize] == 0 && !optional.contains(p)).collect();
    assert!(missing.is_empty(), "never reached: {missing:?}");
}

#[test]
fn kernel_rules_build_an_array_not_sorted_per_cmp() {
    // A finding on mainline, not a model bug. Spec, "Register": insert at the first index i with
    // cmp(range[i], new) > 0; "Unregister" removes the entry. Z = (0x14, len -16) (a coalesced
    // zone of size 0xfffffff0, whose int len is negative) ends at 4 (wrapping), so:
    //   register Z                 -> [Z]
    //   register (0, 4)            -> cmp(Z, new) = 0 (4 > 4 is false)  -> [Z, (0,4)]
    //   register (8, 0)            -> cmp(Z, new) = 1 (0x14 > 8)        -> [(8,0), Z, (0,4)]
    //   unregister Z (contains [0x1000, 0x1000)) -> [(8,0), (0,4)]
    // and cmp((8,0), (0,4)) = 1: the array is no longer sorted per kvm_io_bus_cmp, which the
    // bsearch of every lookup assumes. The model builds exactly that array and its `bus` check
    // reports it.
    let kvm = Kvm::new();
    let vm = kvm.create_vm(VmConfig::default());
    for (addr, size) in [(0x14, 0xffff_fff0), (0, 4), (8, 0)] {
        kvm.register_coalesced_mmio(vm, &zone(addr, size, 0)).unwrap();
    }
    assert_eq!(kvm.check_structure(), vec![], "sorted while Z is there");
    kvm.unregister_coalesced_mmio(vm, &zone(0x1000, 0, 0)).unwrap();
    let m = kvm.vm(vm).unwrap();
    let ranges: Vec<(u64, i32)> =
        m.io.bus(BusKind::Mmio).snapshot().unwrap().ranges().iter().map(|e| (e.addr, e.len)).collect();
    assert_eq!(ranges, [(8, 0), (0, 4)], "the contents the spec's rules give");
    let wrong = kvm.check_structure();
    assert_eq!(wrong.len(), 1, "{wrong:?}");
    assert_eq!(wrong[0].0.id, "bus");
    assert!(wrong[0].1.ends_with("are out of order"), "{}", wrong[0].1);
    assert_eq!(kvm.recorder().violations(), vec![]);
}

#[test]
fn fast_mmio_twin_outlives_a_null_mmio_bus() {
    // A len-0 MMIO ioeventfd has an independent FAST_MMIO twin. When the MMIO bus becomes NULL
    // (failed shrink while removing a zone), the MMIO entry is destroyed with it but the twin
    // stays: on VMX/EPT a second access to the page is still signalled through FAST_MMIO, on the
    // emulated backend it exits. Deassigning then returns ENOENT (the MMIO half is gone) but
    // still removes the twin.
    let setups = [VmSetup { backend: Backend::VmxEpt, limit: Some(1000) }, emulated(Some(1000))];
    let deassign = Step::Ioeventfd {
        vm: 0,
        args: KvmIoeventfd { addr: 0x20, len: 0, fd: 3, flags: FLAG_DEASSIGN, ..KvmIoeventfd::default() },
    };
    let on = |vm: usize, step: Step| match step {
        Step::Ioeventfd { args, .. } => Step::Ioeventfd { vm, args },
        Step::RegisterZone { zone, .. } => Step::RegisterZone { vm, zone },
        Step::Access { kind, addr, len, value, repeat, .. } => Step::Access { vm, kind, addr, len, value, repeat },
        other => other,
    };
    let mut steps = Vec::new();
    for vm in 0..2 {
        steps.extend([
            on(vm, ioev(0x20, 0, 3, None)),
            on(vm, reg_zone(0x40, 8)),
            Step::FailNextAlloc { vm, bus: MMIO },
            Step::UnregisterZone { vm, zone: zone(0x40, 8, 0) },
            on(vm, mmio_write(0x20, 4, 1)),
            on(vm, mmio_write(0x20, 4, 1)),
        ]);
    }
    steps.extend([deassign, on(1, deassign), on(0, mmio_write(0x20, 4, 1))]);
    let (sut, r, seen) = replay(&setups, 1, &steps);
    let handled = accesses(&[AccessOutcome::Handled(HandledBy::Ioeventfd { eventfd: 3 })]);
    // VM 0 (VMX/EPT): the first access to the page exits, the second takes the fast path.
    assert_eq!(seen[3], OK, "coalesced unregister always returns 0");
    assert_eq!(seen[4], accesses(&[exit_write(0x20, 4, 1)]));
    assert_eq!(seen[5], handled);
    // VM 1 (emulated): both exit.
    assert_eq!(seen[10], accesses(&[exit_write(0x20, 4, 1)]));
    assert_eq!(seen[11], accesses(&[exit_write(0x20, 4, 1)]));
    assert_eq!(seen[12], Obs::Ret(Err(Errno::ENOENT)));
    assert_eq!(seen[13], Obs::Ret(Err(Errno::ENOENT)));
    assert_eq!(seen[14], accesses(&[exit_write(0x20, 4, 1)]), "the twin was removed");
    assert_eq!(r.counters[0], 1);
    for vm in &sut.vms {
        let m = sut.kvm.vm(*vm).unwrap();
        assert!(m.io.bus(BusKind::Mmio).snapshot().is_none());
        assert_eq!(m.io.bus(BusKind::FastMmio).snapshot().unwrap().ranges().len(), 0);
    }
}
