//! The in-kernel I/O bus (`struct kvm_io_bus`), mirroring `virt/kvm/kvm_main.c`.
//!
//! | model | kernel |
//! |---|---|
//! | [`kvm_io_bus_cmp`] | `kvm_io_bus_cmp` |
//! | [`linux_bsearch`] | `__inline_bsearch` (`include/linux/bsearch.h`) |
//! | [`BusArray::get_first_dev_probed`] | `kvm_io_bus_get_first_dev` ([`BusArray::get_first_dev`] gives the same answers from tables) |
//! | [`IoBus::register_dev`] | `kvm_io_bus_register_dev` |
//! | [`IoBus::unregister_dev`] | `kvm_io_bus_unregister_dev` (v6.5+) |
//! | [`IoBus::write`] / [`IoBus::read`] | `kvm_io_bus_write` / `kvm_io_bus_read` and their `__` helpers |
//! | [`IoBus::destroy`] | `kvm_io_bus_destroy` plus `kvm->buses[i] = NULL` in `kvm_destroy_vm` |
//!
//! Locking rules, as in the kernel: writers (register, unregister, destroy) hold `kvm->slots_lock`,
//! which the functions demand as a [`SlotsGuard`]; readers (a vCPU dispatching an access) hold
//! `kvm->srcu`, demanded as a [`SrcuReadGuard`]. The array is copy-on-write: a writer builds a new
//! [`BusArray`], publishes it, and the old one is freed only after every reader that could see it
//! has left (`call_srcu` after register, `synchronize_srcu` in unregister).

pub mod coalesced;
pub mod ioeventfd;
mod lookup;
pub mod srcu;

pub use crate::design::{Insertion, NR_IOBUS_DEVS, Reclaim};
use crate::errno::Errno;
use crate::invariants::{BUS, Invariant, LIFETIME};
use crate::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use crate::sync::{Arc, Mutex, MutexGuard};
use crate::trace::Lifetime;
use crate::trace::Recorder;
use crate::trace::VcpuId;
use lookup::{AnswerTable, CmpKey, probe_first_dev};
pub use lookup::{TABLE_MIN_DEVS, TABLED_LENS};
use srcu::{Srcu, SrcuReadGuard};
use std::any::Any;
use std::fmt;

/// `enum kvm_bus`, in the kernel's order (s390's CCW bus exists on every architecture; nothing
/// reads it on x86).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusKind {
    /// `KVM_MMIO_BUS`.
    Mmio,
    /// `KVM_PIO_BUS`.
    Pio,
    /// `KVM_VIRTIO_CCW_NOTIFY_BUS`.
    VirtioCcwNotify,
    /// `KVM_FAST_MMIO_BUS`: only written with len 0, by VMX's EPT-misconfig fast path.
    FastMmio,
}

impl BusKind {
    /// Every bus, in `enum kvm_bus` order.
    pub const ALL: [BusKind; 4] = [BusKind::Mmio, BusKind::Pio, BusKind::VirtioCcwNotify, BusKind::FastMmio];

    /// Index in `kvm->buses[]`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Name as the script and traces write it: `mmio`, `pio`, `ccw`, `fast-mmio`.
    pub fn name(self) -> &'static str {
        match self {
            BusKind::Mmio => "mmio",
            BusKind::Pio => "pio",
            BusKind::VirtioCcwNotify => "ccw",
            BusKind::FastMmio => "fast-mmio",
        }
    }

    /// The bus with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<BusKind> {
        BusKind::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What handled a guest access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandledBy {
    /// An ioeventfd signalled its eventfd (labelled by the fd number it was created with).
    Ioeventfd {
        /// The eventfd's label.
        eventfd: i32,
    },
    /// A coalesced zone appended the write to the ring.
    Coalesced,
    /// An ioregion's device completed the access (for a read, `value` is what it returned).
    Ioregion {
        /// The region's user_data.
        user_data: u64,
        /// Direction.
        is_write: bool,
        /// Offset in the region.
        offset: u64,
        /// Access length.
        len: usize,
        /// The value written or read.
        value: u64,
    },
}

impl fmt::Display for HandledBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandledBy::Ioeventfd { eventfd } => write!(f, "eventfd {eventfd}"),
            HandledBy::Coalesced => f.write_str("coalesced"),
            HandledBy::Ioregion { user_data, is_write, offset, len, value } => {
                let dir = if *is_write { "write" } else { "read" };
                write!(f, "ioregion {user_data:#x} {dir} {offset:#x} {len} {value:#x}")
            }
        }
    }
}

/// One guest access: a write when `value` is `Some`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestAccess {
    /// MMIO or PIO.
    pub bus: BusKind,
    /// Address or port.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
    /// The value of a write; `None` for a read.
    pub value: Option<u64>,
}

impl fmt::Display for GuestAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(v) => write!(f, "write {} {:#x} {} {v:#x}", self.bus, self.addr, self.len),
            None => write!(f, "read {} {:#x} {}", self.bus, self.addr, self.len),
        }
    }
}

/// The vCPU making an access, as the bus hands it to a device's ops (the `struct kvm_vcpu *`
/// that `kvm_io_device_ops` receive). The bus only passes it on; a device that keeps state per
/// vCPU (an ioregion's interrupted transaction) downcasts it to the type it knows.
pub trait AccessingVcpu: Any + Sync {
    /// Which vCPU of which VM.
    fn vcpu_id(&self) -> VcpuId;
}

/// Who is dispatching an access (passed to device ops).
#[derive(Clone, Copy)]
pub struct DispatchCtx<'a> {
    /// The system's recorder.
    pub rec: &'a Recorder,
    /// The VM.
    pub vm: usize,
    /// The vCPU making the access (ioregions keep their interrupted state there).
    pub vcpu: Option<&'a dyn AccessingVcpu>,
    /// Sequential model: lets the served devices run after a command was sent.
    pub pump: Option<&'a dyn Fn()>,
}

impl fmt::Debug for DispatchCtx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DispatchCtx(vm{}, {:?})", self.vm, self.vcpu.map(|v| v.vcpu_id()))
    }
}

/// `struct kvm_io_device` and its ops. A handler returns `Ok(())` when it handled the access;
/// any error passes the access to the next matching device.
pub trait KvmIoDevice: Send + Sync + fmt::Debug {
    /// `ops->read`; the default is a device without a read op (`-EOPNOTSUPP`).
    fn read(&self, _ctx: &DispatchCtx<'_>, _addr: u64, _data: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }

    /// `ops->write`; `data.len()` is the access length (0 on FAST_MMIO, where the kernel passes
    /// a NULL value).
    fn write(&self, _ctx: &DispatchCtx<'_>, _addr: u64, _data: &[u8]) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }

    /// `ops->destructor`: the device's own teardown (put its references). The bus ends the
    /// device's [`Lifetime`] around it.
    fn destructor(&self, rec: &Recorder);

    /// The device's lifetime (ended when it is destroyed).
    fn lifetime(&self) -> &Lifetime;

    /// What the outcome of an access it handled reports (`data`: the bytes written, or read).
    fn handled_by(&self, addr: u64, data: &[u8], is_write: bool) -> HandledBy;

    /// Whether the entry counts in `ioeventfd_count` (ghost knowledge for the `bus` check).
    fn is_ioeventfd(&self) -> bool {
        false
    }
}

/// Runs a device's destructor (`kvm_iodevice_destructor`), ending its lifetime.
pub fn destroy_device(dev: &Arc<dyn KvmIoDevice>, rec: &Recorder) {
    dev.lifetime().end(rec, format_args!("{dev:?}"));
    dev.destructor(rec);
}

/// Device identity, as the kernel compares `struct kvm_io_device *` pointers.
pub fn same_device(a: &Arc<dyn KvmIoDevice>, b: &Arc<dyn KvmIoDevice>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// `struct kvm_io_range`: one entry of a bus.
#[derive(Clone)]
pub struct IoRange {
    /// Start address or port.
    pub addr: u64,
    /// Length: a signed `int`, as in the kernel (a coalesced zone of 2 GiB or more is negative).
    pub len: i32,
    /// The device.
    pub dev: Arc<dyn KvmIoDevice>,
}

impl fmt::Debug for IoRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x} len {}] {:?}", self.addr, self.len, self.dev)
    }
}

/// `kvm_io_bus_cmp(r1, r2)`: -1, 0 or 1 (0 means "r1 matches r2" when r1 is an access key).
///
/// `len` is sign-extended and the additions wrap, as `gpa_t += int` does.
///
/// ```
/// use ioregionfd_model::bus::kvm_io_bus_cmp;
/// assert_eq!(kvm_io_bus_cmp((0x104, 4), (0x100, 16)), 0); // inside
/// assert_eq!(kvm_io_bus_cmp((0x10e, 4), (0x100, 16)), 1); // sticks out: not a match
/// assert_eq!(kvm_io_bus_cmp((0x100, 8), (0x100, 0)), 0); // len-0 device: same start matches
/// ```
pub fn kvm_io_bus_cmp(r1: (u64, i32), r2: (u64, i32)) -> i32 {
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

/// Linux's `bsearch`: the index of *some* element that `cmp(key, element)` calls equal.
///
/// ```
/// use ioregionfd_model::bus::linux_bsearch;
/// let v = [1, 3, 5, 7];
/// assert_eq!(linux_bsearch(v.len(), |i| 5.cmp(&v[i]) as i32), Some(2));
/// assert_eq!(linux_bsearch(v.len(), |i| 4.cmp(&v[i]) as i32), None);
/// ```
pub fn linux_bsearch(num: usize, mut cmp_key_with: impl FnMut(usize) -> i32) -> Option<usize> {
    let (mut base, mut num) = (0usize, num);
    while num > 0 {
        let pivot = base + (num >> 1);
        let result = cmp_key_with(pivot);
        if result == 0 {
            return Some(pivot);
        }
        if result > 0 {
            base = pivot + 1;
            num -= 1;
        }
        num >>= 1;
    }
    None
}

/// One published array of a bus (`struct kvm_io_bus`): never changed after publication except
/// `ioeventfd_count`, which `eventfd.c` adjusts under `slots_lock`.
pub struct BusArray {
    /// `dev_count`, as the header stores it.
    dev_count: i32,
    /// The entries' comparison keys, contiguous for the lookup (same order as `ranges`).
    keys: Vec<CmpKey>,
    /// The answers of [`get_first_dev_probed`](Self::get_first_dev_probed) for the access
    /// lengths in [`TABLED_LENS`], as interval tables, on an array of [`TABLE_MIN_DEVS`] entries
    /// or more; each built at the first lookup of its length (an array replaced before any
    /// access of a length builds nothing for it). Plain `std` cells on every backend: a table is
    /// a cache of a function of the immutable entries, not modelled kernel state.
    answers: Option<Box<[std::sync::OnceLock<AnswerTable>; TABLED_LENS.len()]>>,
    /// `ioeventfd_count`.
    ioeventfd_count: AtomicI32,
    /// `range[]`, sorted per [`kvm_io_bus_cmp`].
    ranges: Vec<IoRange>,
    /// Freed once no reader can see it.
    life: Lifetime,
    /// Ghost: this array's identity (see [`BusArray::id`]).
    id: u64,
}

/// Ghost: the identity of the next array made (from 1; 0 is no array).
static NEXT_ARRAY_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl fmt::Debug for BusArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusArray")
            .field("dev_count", &self.dev_count)
            .field("ioeventfd_count", &self.ioeventfd_count())
            .field("ranges", &self.ranges)
            .finish()
    }
}

impl BusArray {
    fn new(ranges: Vec<IoRange>, ioeventfd_count: i32) -> Self {
        let keys: Vec<CmpKey> = ranges.iter().map(|r| CmpKey::new(r.addr, r.len)).collect();
        let answers = (keys.len() >= TABLE_MIN_DEVS).then(|| Box::new(TABLED_LENS.map(|_| std::sync::OnceLock::new())));
        BusArray {
            dev_count: ranges.len() as i32,
            keys,
            answers,
            ioeventfd_count: AtomicI32::new(ioeventfd_count),
            ranges,
            life: Lifetime::new(),
            id: NEXT_ARRAY_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Ghost: the array's identity, never given to another array of this process (unlike its
    /// address, which a later array may reuse). An array never changes after publication but for
    /// `ioeventfd_count` and its lifetime, so two looks that see the same id see the same entries.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The entries, in bus order.
    pub fn ranges(&self) -> &[IoRange] {
        &self.ranges
    }

    /// `dev_count`.
    pub fn dev_count(&self) -> i32 {
        self.dev_count
    }

    /// `ioeventfd_count`.
    pub fn ioeventfd_count(&self) -> i32 {
        self.ioeventfd_count.load(Ordering::Relaxed)
    }

    /// Adds `delta` to `ioeventfd_count` (eventfd.c's `bus->ioeventfd_count++` / `--`).
    pub fn add_ioeventfd_count<T>(&self, _slots: &SlotsGuard<'_, T>, delta: i32) {
        self.ioeventfd_count.fetch_add(delta, Ordering::Relaxed);
    }

    fn key_cmp(&self, key: (u64, i32), i: usize) -> i32 {
        kvm_io_bus_cmp(key, (self.ranges[i].addr, self.ranges[i].len))
    }

    /// `kvm_io_bus_get_first_dev`: bsearch, then walk back while the previous entry also matches.
    ///
    /// For the lengths guests use ([`TABLED_LENS`]), on an array of [`TABLE_MIN_DEVS`] entries or
    /// more, the answer comes from a table of what
    /// [`get_first_dev_probed`](Self::get_first_dev_probed) answers, built once per length, at the
    /// first lookup of that length (arrays never change after publication): the same answer for
    /// every address, found through a bucket index and a short search. Other lengths and smaller
    /// arrays run the probes.
    ///
    /// ```
    /// use ioregionfd_model::bus::{BusConfig, BusKind, KvmIo};
    /// use ioregionfd_model::trace::Recorder;
    /// let io = KvmIo::<()>::new(0, Recorder::new(), BusConfig::default());
    /// for i in 0..100u64 {
    ///     let zone = ioregionfd_model::uapi::KvmCoalescedMmioZone { addr: 0x1000 * i, size: 0x100, pio: 0 };
    ///     io.register_coalesced_mmio(&zone).unwrap();
    /// }
    /// let array = io.bus(BusKind::Mmio).snapshot().unwrap();
    /// for addr in [0x0, 0xfc, 0xfd, 0x100, 0x5010, 0x63000] {
    ///     assert_eq!(array.get_first_dev(addr, 4), array.get_first_dev_probed(addr, 4));
    /// }
    /// ```
    pub fn get_first_dev(&self, addr: u64, len: i32) -> Option<usize> {
        match (&self.answers, TABLED_LENS.iter().position(|&l| l == len)) {
            (Some(tables), Some(i)) => tables[i].get_or_init(|| AnswerTable::build(&self.keys, len)).answer(addr),
            _ => self.get_first_dev_probed(addr, len),
        }
    }

    /// `kvm_io_bus_get_first_dev` as the kernel runs it: the probes of Linux's bsearch over
    /// `kvm_io_bus_cmp` (the nested-range quirk depends on where it lands), then the walk back
    /// while the previous entry also matches. Each probe compares against the entry's
    /// precomputed `CmpKey`, which gives the same answer as `kvm_io_bus_cmp` without branches.
    pub fn get_first_dev_probed(&self, addr: u64, len: i32) -> Option<usize> {
        probe_first_dev(&self.keys[..self.dev_count as usize], addr, len)
    }

    /// The insertion index of `kvm_io_bus_register_dev`: the first entry that compares greater
    /// than the new one, else the end.
    fn insertion_index(&self, addr: u64, len: i32) -> usize {
        (0..self.ranges.len())
            .find(|&i| kvm_io_bus_cmp((self.ranges[i].addr, self.ranges[i].len), (addr, len)) > 0)
            .unwrap_or(self.ranges.len())
    }
}

/// `kvm->slots_lock` with what it protects (the VM's device lists).
///
/// Everything that changes a VM's structure goes through it: publishing a bus array
/// ([`IoBus::register_dev`], [`IoBus::unregister_dev`], [`IoBus::destroy`]), `ioeventfd_count`
/// ([`BusArray::add_ioeventfd_count`]) and the lists all demand a [`SlotsGuard`]. So while its
/// [`generation`](Self::generation) stays the same, none of them has changed.
#[derive(Debug)]
pub struct SlotsLock<T> {
    lock: Mutex<T>,
    /// Ghost: how many times it was taken (a plain `std` atomic, never a scheduling point).
    generation: std::sync::atomic::AtomicU64,
}

/// Proof that `kvm->slots_lock` is held (`lockdep_assert_held`), and access to what it protects.
#[derive(Debug)]
pub struct SlotsGuard<'a, T>(MutexGuard<'a, T>);

impl<T> SlotsLock<T> {
    /// A new unlocked `slots_lock` protecting `value`.
    pub fn new(value: T) -> Self {
        SlotsLock { lock: Mutex::new(value), generation: std::sync::atomic::AtomicU64::new(0) }
    }

    /// `mutex_lock(&kvm->slots_lock)`.
    #[track_caller]
    pub fn lock(&self) -> SlotsGuard<'_, T> {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        SlotsGuard(self.lock.lock())
    }

    /// Ghost: how many times the lock has been taken. Unchanged between two looks means nothing
    /// it protects changed in between, nor any bus array of the VM (see the type's docs).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<T> std::ops::Deref for SlotsGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for SlotsGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// One bus slot of a VM (`kvm->buses[idx]`): the published array pointer, NULL once the bus is
/// gone, plus the injectable allocation fault.
pub struct IoBus {
    kind: BusKind,
    vm: usize,
    current: Mutex<Option<Arc<BusArray>>>,
    fail_next_alloc: AtomicBool,
    reclaim: Reclaim,
    insertion: Insertion,
    limit: Option<i32>,
}

impl fmt::Debug for IoBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoBus({} of vm{})", self.kind, self.vm)
    }
}

impl IoBus {
    /// An empty bus (`kvm_create_vm` allocates a zeroed one per slot).
    pub fn new(kind: BusKind, vm: usize, config: BusConfig) -> Self {
        IoBus {
            kind,
            vm,
            current: Mutex::new(Some(Arc::new(BusArray::new(Vec::new(), 0)))),
            fail_next_alloc: AtomicBool::new(false),
            reclaim: config.reclaim,
            insertion: config.insertion,
            limit: config.nr_iobus_devs,
        }
    }

    /// Which bus this is.
    pub fn kind(&self) -> BusKind {
        self.kind
    }

    /// Makes the next array allocation on this bus fail (the injectable `kmalloc` fault).
    pub fn fail_next_alloc(&self) {
        self.fail_next_alloc.store(true, Ordering::Relaxed);
    }

    /// Whether an allocation failure [`fail_next_alloc`](Self::fail_next_alloc) asked for has
    /// not happened yet.
    pub fn alloc_failure_pending(&self) -> bool {
        self.fail_next_alloc.load(Ordering::Relaxed)
    }

    /// `kmalloc` of a new array: fails once after [`fail_next_alloc`](Self::fail_next_alloc).
    fn alloc(&self) -> bool {
        !self.fail_next_alloc.swap(false, Ordering::Relaxed)
    }

    /// `kvm_get_bus`: the current array, update side (`slots_lock` held).
    #[track_caller]
    pub fn get<T>(&self, _slots: &SlotsGuard<'_, T>) -> Option<Arc<BusArray>> {
        self.current.lock().clone()
    }

    /// `kvm_get_bus_srcu` / `srcu_dereference`: the current array, read side.
    #[track_caller]
    pub fn get_srcu(&self, _reader: &SrcuReadGuard<'_>) -> Option<Arc<BusArray>> {
        self.current.lock().clone()
    }

    /// The current array for reports and structural checks (no lock rule: quiescent use only).
    pub fn snapshot(&self) -> Option<Arc<BusArray>> {
        self.current.lock().clone()
    }

    /// [`snapshot`](Self::snapshot) lent to `f` instead of cloned (the checks of every fuzzed
    /// operation look at four buses: no reference taken and put for each).
    pub fn with_snapshot<R>(&self, f: impl FnOnce(Option<&BusArray>) -> R) -> R {
        f(self.current.lock().as_deref())
    }

    /// `rcu_assign_pointer(kvm->buses[idx], new)`.
    #[track_caller]
    fn publish(&self, rec: &Recorder, new: Option<Arc<BusArray>>) {
        match &new {
            Some(a) => rec.event(Some(self.vm), format_args!("publish {} bus ({} entries)", self.kind, a.dev_count)),
            None => rec.event(Some(self.vm), format_args!("publish NULL {} bus", self.kind)),
        }
        *self.current.lock() = new;
    }

    /// Frees an array no reader can see any more.
    fn free_array(rec: &Recorder, vm: usize, kind: BusKind, old: &BusArray) {
        rec.event(Some(vm), format_args!("free old {kind} bus array ({} entries)", old.dev_count));
        old.life.end(rec, format_args!("{kind} bus array of vm{vm}"));
    }

    /// `kvm_io_bus_register_dev`: ENOMEM (NULL bus), ENOSPC (NR_IOBUS_DEVS), ENOMEM (allocation),
    /// else inserts at the first entry comparing greater, publishes, and frees the old array after
    /// the readers (`call_srcu`, as v6.18 does). No overlap or duplicate check at this level.
    #[track_caller]
    pub fn register_dev<T>(
        &self,
        slots: &SlotsGuard<'_, T>,
        srcu: &Srcu,
        rec: &Recorder,
        addr: u64,
        len: i32,
        dev: Arc<dyn KvmIoDevice>,
    ) -> Result<(), Errno> {
        let Some(bus) = self.get(slots) else { return Err(Errno::ENOMEM) };
        if let Some(limit) = self.limit
            && bus.dev_count - bus.ioeventfd_count() > limit - 1
        {
            return Err(Errno::ENOSPC);
        }
        if !self.alloc() {
            return Err(Errno::ENOMEM);
        }
        let i = match self.insertion {
            Insertion::Sorted => bus.insertion_index(addr, len),
            Insertion::AppendUnsorted => bus.ranges.len(),
        };
        let mut ranges = Vec::with_capacity(bus.ranges.len() + 1);
        ranges.extend_from_slice(&bus.ranges[..i]);
        ranges.push(IoRange { addr, len, dev });
        ranges.extend_from_slice(&bus.ranges[i..]);
        self.publish(rec, Some(Arc::new(BusArray::new(ranges, bus.ioeventfd_count()))));
        let (rec2, vm, kind) = (rec.clone(), self.vm, self.kind);
        srcu.call_srcu(Box::new(move || Self::free_array(&rec2, vm, kind, &bus)));
        Ok(())
    }

    /// `kvm_io_bus_unregister_dev` (v6.5+): removes the first entry whose device is `dev`.
    ///
    /// NULL bus or device not found: `Ok` (a no-op). Allocation failure: publishes a NULL bus,
    /// waits for readers, destroys **every** device of the bus (the target too) and returns
    /// ENOMEM; callers must then stop walking their lists. Success: publishes, waits for readers,
    /// destroys the target, frees the old array.
    #[track_caller]
    pub fn unregister_dev<T>(
        &self,
        slots: &SlotsGuard<'_, T>,
        srcu: &Srcu,
        rec: &Recorder,
        dev: &Arc<dyn KvmIoDevice>,
    ) -> Result<(), Errno> {
        self.unregister(slots, srcu, rec, dev, true)
    }

    /// `kvm_io_bus_unregister_dev` with the v5.11 contract for the target, which code written
    /// against v5.11 (rfc-v3) relies on: the target is never destroyed here (the caller releases
    /// it), in either path. Everything else is as in v6.5+ (the v5.11 failure path destroyed the
    /// other devices before publishing the NULL bus, CVE-2021-47061, a mainline bug fixed since
    /// and not reproduced).
    #[track_caller]
    pub fn unregister_dev_keep_target<T>(
        &self,
        slots: &SlotsGuard<'_, T>,
        srcu: &Srcu,
        rec: &Recorder,
        dev: &Arc<dyn KvmIoDevice>,
    ) -> Result<(), Errno> {
        self.unregister(slots, srcu, rec, dev, false)
    }

    fn unregister<T>(
        &self,
        slots: &SlotsGuard<'_, T>,
        srcu: &Srcu,
        rec: &Recorder,
        dev: &Arc<dyn KvmIoDevice>,
        destroy_target: bool,
    ) -> Result<(), Errno> {
        let Some(bus) = self.get(slots) else { return Ok(()) };
        let Some(i) = bus.ranges.iter().position(|r| same_device(&r.dev, dev)) else { return Ok(()) };
        if !self.alloc() {
            self.publish(rec, None);
            rec.event(Some(self.vm), format_args!("kvm: failed to shrink {} bus, removing it completely", self.kind));
            self.wait_for_readers(srcu);
            for (j, r) in bus.ranges.iter().enumerate() {
                if destroy_target || j != i {
                    destroy_device(&r.dev, rec);
                }
            }
            Self::free_array(rec, self.vm, self.kind, &bus);
            return Err(Errno::ENOMEM);
        }
        let mut ranges = bus.ranges.clone();
        ranges.remove(i);
        self.publish(rec, Some(Arc::new(BusArray::new(ranges, bus.ioeventfd_count()))));
        self.wait_for_readers(srcu);
        if destroy_target {
            destroy_device(dev, rec);
        }
        Self::free_array(rec, self.vm, self.kind, &bus);
        Ok(())
    }

    fn wait_for_readers(&self, srcu: &Srcu) {
        match self.reclaim {
            Reclaim::AfterReaders => srcu.synchronize(),
            Reclaim::Immediately => {}
        }
    }

    /// `kvm_io_bus_destroy`: destroys every device of `bus`, then frees it.
    fn destroy_array(&self, rec: &Recorder, bus: &BusArray) {
        for r in &bus.ranges {
            destroy_device(&r.dev, rec);
        }
        Self::free_array(rec, self.vm, self.kind, bus);
    }

    /// VM destruction (`kvm_destroy_vm`): no reader is left; destroys every device and leaves the
    /// bus NULL.
    pub fn destroy<T>(&self, slots: &SlotsGuard<'_, T>, rec: &Recorder) {
        if let Some(bus) = self.get(slots) {
            self.publish(rec, None);
            self.destroy_array(rec, &bus);
        }
    }

    /// `__kvm_io_bus_write` / `__kvm_io_bus_read`: offers the access to each matching entry from
    /// the first one; the first device that returns `Ok` handles it. A device error other than
    /// `EOPNOTSUPP` ends the walk and is returned (rfc-v3's change to these functions, so that an
    /// ioregion's `-EINTR` reaches KVM_RUN; mainline devices only ever return `EOPNOTSUPP`, so for
    /// them this is the mainline walk).
    fn dispatch(
        &self,
        bus: &BusArray,
        ctx: &DispatchCtx<'_>,
        addr: u64,
        len: i32,
        mut op: impl FnMut(&Arc<dyn KvmIoDevice>) -> Result<(), Errno>,
    ) -> Result<Arc<dyn KvmIoDevice>, Errno> {
        let Some(mut idx) = bus.get_first_dev(addr, len) else { return Err(Errno::EOPNOTSUPP) };
        while bus.life.check_use(ctx.rec, format_args!("{} bus array of vm{}", self.kind, self.vm))
            && idx < bus.dev_count as usize
            && bus.key_cmp((addr, len), idx) == 0
        {
            let dev = &bus.ranges[idx].dev;
            if dev.lifetime().check_use(ctx.rec, format_args!("{dev:?}")) {
                match op(dev) {
                    Ok(()) => return Ok(dev.clone()),
                    Err(Errno::EOPNOTSUPP) => {}
                    Err(e) => return Err(e),
                }
            }
            idx += 1;
        }
        Err(Errno::EOPNOTSUPP)
    }

    /// `kvm_io_bus_write`: `Ok` with the handler, `EOPNOTSUPP` when nobody took it, `ENOMEM` when
    /// the bus is NULL. `data.len()` is the access length.
    #[track_caller]
    pub fn write(
        &self,
        reader: &SrcuReadGuard<'_>,
        ctx: &DispatchCtx<'_>,
        addr: u64,
        data: &[u8],
    ) -> Result<HandledBy, Errno> {
        let bus = self.get_srcu(reader).ok_or(Errno::ENOMEM)?;
        let dev = self.dispatch(&bus, ctx, addr, data.len() as i32, |dev| dev.write(ctx, addr, data))?;
        Ok(dev.handled_by(addr, data, true))
    }

    /// `kvm_io_bus_read`: as [`write`](Self::write), filling `data`.
    #[track_caller]
    pub fn read(
        &self,
        reader: &SrcuReadGuard<'_>,
        ctx: &DispatchCtx<'_>,
        addr: u64,
        data: &mut [u8],
    ) -> Result<HandledBy, Errno> {
        let bus = self.get_srcu(reader).ok_or(Errno::ENOMEM)?;
        let len = data.len() as i32;
        let dev = self.dispatch(&bus, ctx, addr, len, |dev| dev.read(ctx, addr, data))?;
        Ok(dev.handled_by(addr, data, false))
    }
}

/// The `bus` check of one published array as any reader may see it: sorted per
/// [`kvm_io_bus_cmp`] (each entry compares `<= 0` with the next) and `dev_count` equal to the
/// number of entries; and (`lifetime`) the array and every device it points to live. Returns each
/// broken invariant with what is wrong.
pub fn check_bus_array(kind: BusKind, bus: &BusArray) -> Vec<(&'static Invariant, String)> {
    let mut wrong = Vec::new();
    {
        let mut found = collect_into(&mut wrong);
        visit_bus_order(kind, bus, &mut found);
        visit_bus_lifetimes(kind, bus, &mut found);
    }
    wrong
}

/// Where a structural check reports what it finds: the invariant, and the text as
/// [`fmt::Arguments`], made into a `String` only by a caller that keeps texts (a caller that
/// only counts, such as [`crate::structure::StructureWatch`], formats nothing).
pub type Found<'f> = dyn FnMut(&'static Invariant, fmt::Arguments<'_>) + 'f;

/// A [`Found`] that keeps each finding with its text, in order.
pub fn collect_into<'a>(
    wrong: &'a mut Vec<(&'static Invariant, String)>,
) -> impl FnMut(&'static Invariant, fmt::Arguments<'_>) + 'a {
    move |inv, text| wrong.push((inv, text.to_string()))
}

/// The order part of [`check_bus_array`] (`bus`): the entries sorted per [`kvm_io_bus_cmp`] and
/// `dev_count` equal to their number. It depends only on the array's entries, which never change
/// after publication.
pub fn visit_bus_order(kind: BusKind, bus: &BusArray, found: &mut Found<'_>) {
    for (i, pair) in bus.ranges.windows(2).enumerate() {
        if kvm_io_bus_cmp((pair[0].addr, pair[0].len), (pair[1].addr, pair[1].len)) > 0 {
            found(
                &BUS,
                format_args!("{kind} bus entries {i} {:?} and {} {:?} are out of order", pair[0], i + 1, pair[1]),
            );
        }
    }
    if bus.dev_count as usize != bus.ranges.len() {
        found(&BUS, format_args!("{kind} bus dev_count {} but {} entries", bus.dev_count, bus.ranges.len()));
    }
}

/// The lifetime part of [`check_bus_array`] (`lifetime`): the array and every device it points
/// to live. It changes only when some [`Lifetime`] ends ([`crate::trace::lifetimes_ended`]).
pub fn visit_bus_lifetimes(kind: BusKind, bus: &BusArray, found: &mut Found<'_>) {
    if !bus.life.is_live() {
        found(&LIFETIME, format_args!("{kind} bus array is published but freed"));
    }
    for r in bus.ranges.iter().filter(|r| !r.dev.lifetime().is_live()) {
        found(&LIFETIME, format_args!("{kind} bus entry {r:?} points to a destroyed device"));
    }
}

/// How many entries of `bus` are ioeventfds (what `ioeventfd_count` must be).
pub fn ioeventfd_entries(bus: &BusArray) -> usize {
    bus.ranges.iter().filter(|r| r.dev.is_ioeventfd()).count()
}

/// The `bus` check of `ioeventfd_count`, meaningful only where no writer is in the middle of an
/// update under `slots_lock` (eventfd.c adjusts the count after publishing): the count equals the
/// number of ioeventfd entries.
pub fn check_ioeventfd_count(kind: BusKind, bus: &BusArray) -> Option<(&'static Invariant, String)> {
    let ioeventfds = ioeventfd_entries(bus);
    (bus.ioeventfd_count() as usize != ioeventfds).then(|| {
        (&BUS, format!("{kind} bus ioeventfd_count {} but {ioeventfds} ioeventfd entries", bus.ioeventfd_count()))
    })
}

/// What `kvm->slots_lock` protects for the bus layer: the VM's ioeventfd and coalesced-zone lists
/// (`kvm->ioeventfds`, `kvm->coalesced_zones`), plus the next layer's lists in `ext`.
#[derive(Debug, Default)]
pub struct Locked<X> {
    /// `kvm->ioeventfds`, in registration order.
    pub ioeventfds: Vec<Arc<ioeventfd::Ioeventfd>>,
    /// `kvm->coalesced_zones`, in registration order.
    pub coalesced_zones: Vec<Arc<coalesced::CoalescedMmioDev>>,
    /// What the next layer (the ioregion table) keeps under the same lock.
    pub ext: X,
}

/// What the next layer keeps under `slots_lock` beside the bus layer's lists.
pub trait ExtLists {
    /// Drops entries whose device was destroyed (the destructors' `list_del`).
    fn prune(&mut self) {}

    /// Whether a new ioeventfd at `addr`/`len` on `bus` collides with one of these entries
    /// (rfc-v3's addition to `ioeventfd_check_collision`).
    fn ioeventfd_collides(&self, _bus: BusKind, _addr: u64, _len: u32) -> bool {
        false
    }
}

impl ExtLists for () {}

impl<X: ExtLists> Locked<X> {
    /// The `list_del` that the destructors do: drops entries whose device was destroyed.
    pub fn prune_destroyed(&mut self) {
        self.ioeventfds.retain(|p| p.lifetime().is_live());
        self.coalesced_zones.retain(|z| z.lifetime().is_live());
        self.ext.prune();
    }
}

/// Settings of a VM's I/O buses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusConfig {
    /// The NR_IOBUS_DEVS check: `Some(1000)` in mainline, `None` when not enforced.
    pub nr_iobus_devs: Option<i32>,
    /// How replaced arrays and unregistered devices are reclaimed.
    pub reclaim: Reclaim,
    /// Where a new entry goes.
    pub insertion: Insertion,
    /// `KVM_REGISTER_COALESCED_MMIO` refuses a zone above `INT_MAX` bytes (`EINVAL`), so that no
    /// entry gets a negative len (proposed; mainline accepts it).
    pub zone_size_fits_int: bool,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            nr_iobus_devs: Some(NR_IOBUS_DEVS),
            reclaim: Reclaim::AfterReaders,
            insertion: Insertion::Sorted,
            zone_size_fits_int: false,
        }
    }
}

/// The I/O half of `struct kvm`: the buses, `kvm->srcu`, `kvm->slots_lock` with the device lists,
/// and the coalesced ring.
pub struct KvmIo<X = ()> {
    /// The VM's number (for traces).
    pub vm: usize,
    /// The system's recorder.
    pub rec: Recorder,
    /// `kvm->srcu`.
    pub srcu: Srcu,
    /// `kvm->slots_lock` and the lists it protects.
    pub slots: SlotsLock<Locked<X>>,
    /// `kvm->coalesced_mmio.ring`.
    pub ring: Arc<coalesced::CoalescedRing>,
    /// The bus settings the VM was made with.
    pub config: BusConfig,
    buses: [IoBus; 4],
}

impl<X> fmt::Debug for KvmIo<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KvmIo(vm{})", self.vm)
    }
}

impl<X: Default> KvmIo<X> {
    /// The buses of a new VM: each an empty array.
    ///
    /// ```
    /// use ioregionfd_model::bus::{BusConfig, BusKind, KvmIo};
    /// use ioregionfd_model::trace::Recorder;
    /// let io: KvmIo = KvmIo::new(0, Recorder::new(), BusConfig::default());
    /// assert_eq!(io.bus(BusKind::Mmio).snapshot().unwrap().dev_count(), 0);
    /// ```
    pub fn new(vm: usize, rec: Recorder, config: BusConfig) -> Self {
        let bus = |kind| IoBus::new(kind, vm, config);
        KvmIo {
            vm,
            rec,
            srcu: Srcu::new(),
            slots: SlotsLock::new(Locked::default()),
            ring: Arc::new(coalesced::CoalescedRing::new()),
            config,
            buses: BusKind::ALL.map(bus),
        }
    }
}

impl<X: ExtLists> KvmIo<X> {
    /// `kvm->buses[kind]`.
    pub fn bus(&self, kind: BusKind) -> &IoBus {
        &self.buses[kind.index()]
    }

    /// VM destruction: every bus destroyed (devices destructed, slots NULL), lists emptied, then
    /// `srcu_barrier` so every deferred free has run.
    pub fn destroy(&self) {
        let mut slots = self.slots.lock();
        for bus in &self.buses {
            bus.destroy(&slots, &self.rec);
        }
        slots.prune_destroyed();
        drop(slots);
        self.srcu.barrier();
    }

    /// The structural checks (`bus`, `lifetime`) over every bus at a quiescent point (no writer
    /// inside `slots_lock`); a NULL bus has nothing to check.
    pub fn check_structure(&self) -> Vec<(&'static Invariant, String)> {
        let mut wrong = Vec::new();
        for bus in &self.buses {
            if let Some(array) = bus.snapshot() {
                let found =
                    check_bus_array(bus.kind, &array).into_iter().chain(check_ioeventfd_count(bus.kind, &array));
                wrong.extend(found.map(|(i, t)| (i, format!("vm{}: {t}", self.vm))));
            }
        }
        wrong
    }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;
    use crate::uapi::{KVM_IOEVENTFD_FLAG_DEASSIGN, KvmCoalescedMmioZone, KvmIoeventfd};

    fn io(config: BusConfig) -> KvmIo {
        KvmIo::new(0, Recorder::new(), config)
    }

    fn zone(io: &KvmIo, addr: u64, size: u32) {
        io.register_coalesced_mmio(&KvmCoalescedMmioZone { addr, size, pio: 0 }).unwrap();
    }

    fn entries(io: &KvmIo, kind: BusKind) -> Vec<(u64, i32)> {
        io.bus(kind).snapshot().unwrap().ranges().iter().map(|r| (r.addr, r.len)).collect()
    }

    #[test]
    fn cmp_follows_the_kernel() {
        assert_eq!(kvm_io_bus_cmp((0x10, 4), (0x20, 4)), -1);
        assert_eq!(kvm_io_bus_cmp((0x20, 4), (0x20, 4)), 0);
        assert_eq!(kvm_io_bus_cmp((0x22, 2), (0x20, 4)), 0); // inside
        assert_eq!(kvm_io_bus_cmp((0x22, 4), (0x20, 4)), 1); // overlaps, not inside
        assert_eq!(kvm_io_bus_cmp((0x20, 8), (0x20, 0)), 0); // len-0 device: start only
        assert_eq!(kvm_io_bus_cmp((0x21, 1), (0x20, 0)), 1);
        assert_eq!(kvm_io_bus_cmp((0x24, 0), (0x20, 4)), 0); // len-0 key: end included
        // a negative len (a zone of 2 GiB or more) sign-extends: the end wraps to just below
        // 2^64, so the entry compares equal to every access from its start upwards
        assert_eq!(kvm_io_bus_cmp((0x1000, 4), (0x1000, i32::MIN)), 0);
        assert_eq!(kvm_io_bus_cmp((0xffff_0000_0000, 8), (0x1000, i32::MIN)), 0);
        assert_eq!(kvm_io_bus_cmp((0xfff, 1), (0x1000, i32::MIN)), -1);
    }

    #[test]
    fn cmp_key_agrees_with_kvm_io_bus_cmp() {
        let values = [0u64, 1, 7, 8, 9, 0x10, 0xffff_fff0, u64::MAX - 8, u64::MAX];
        let lens = [0i32, 1, 2, 4, 8, 16, -1, -16, i32::MIN, i32::MAX];
        for &a in &values {
            for &la in &lens {
                for &b in &values {
                    for &lb in &lens {
                        let key = CmpKey::new(b, lb);
                        assert_eq!(
                            key.cmp_access(a, la as i64 as u64),
                            kvm_io_bus_cmp((a, la), (b, lb)),
                            "access ({a:#x}, {la}) entry ({b:#x}, {lb})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn answer_tables_give_the_probed_answer() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        // zones of every shape the bus can hold: nested, overlapping, len 0, negative lens
        // (2 GiB or more), near the top of the address space
        let addr = prop_oneof![0u64..0x80, (0u64..0x80).prop_map(|a| u64::MAX - a), any::<u64>()];
        let size = prop_oneof![
            prop::sample::select(vec![0u32, 1, 2, 3, 4, 8, 0x10, 0x40]),
            prop::sample::select(vec![0x8000_0000u32, 0xffff_fff0, u32::MAX])
        ];
        let zones = prop::collection::vec((addr, size), 0..40);
        let probes = prop::collection::vec(any::<u64>(), 16);
        let mut runner = TestRunner::new(Config { cases: 2000, ..Config::default() });
        runner
            .run(&(zones, probes), |(zones, probes)| {
                let io = io(BusConfig::default());
                for &(a, sz) in &zones {
                    zone(&io, a, sz);
                }
                let Some(array) = io.bus(BusKind::Mmio).snapshot() else { return Ok(()) };
                for len in TABLED_LENS {
                    let table = AnswerTable::build(&array.keys, len);
                    let mut addrs = probes.clone();
                    for &s in &table.starts {
                        addrs.extend([s, s.wrapping_sub(1), s.wrapping_add(1)]);
                    }
                    for k in &array.keys {
                        for p in [k.addr, k.bound] {
                            addrs.extend([
                                p.wrapping_sub(8),
                                p.wrapping_sub(1),
                                p,
                                p.wrapping_add(1),
                                p.wrapping_add(8),
                            ]);
                        }
                    }
                    for a in addrs {
                        let want = array.get_first_dev_probed(a, len);
                        prop_assert_eq!(table.answer(a), want, "len {} addr {:#x} zones {:x?}", len, a, zones);
                        prop_assert_eq!(array.get_first_dev(a, len), want);
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn bsearch_is_linux_bsearch() {
        // Against a linear scan on every sorted array of small integers: found iff present, and
        // the index found holds the key.
        for n in 0..8usize {
            let v: Vec<i32> = (0..n as i32).map(|i| i * 2).collect();
            for key in -1..(2 * n as i32 + 1) {
                let got = linux_bsearch(v.len(), |i| key.cmp(&v[i]) as i32);
                assert_eq!(got.map(|i| v[i]), v.contains(&key).then_some(key), "n {n} key {key}");
            }
        }
    }

    #[test]
    fn insertion_order_len0_goes_after_same_start_len_gt0_before_longer() {
        let io = io(BusConfig::default());
        zone(&io, 0x10, 5);
        zone(&io, 0x10, 0);
        zone(&io, 0x10, 2);
        assert_eq!(entries(&io, BusKind::Mmio), vec![(0x10, 2), (0x10, 5), (0x10, 0)]);
    }

    #[test]
    fn nested_ranges_skip_the_outer_device() {
        let io = io(BusConfig::default());
        zone(&io, 0, 100);
        zone(&io, 10, 2);
        zone(&io, 50, 10);
        let array = io.bus(BusKind::Mmio).snapshot().unwrap();
        let first = array.get_first_dev(55, 4).unwrap();
        assert_eq!((array.ranges()[first].addr, array.ranges()[first].len), (50, 10));
        // the walk back stopped at [10,12), so [0,100) at index 0 is never reached
        assert_eq!(first, 2);
        assert_eq!(kvm_io_bus_cmp((55, 4), (10, 2)), 1);
    }

    #[test]
    fn nr_iobus_devs_leaves_ioeventfds_out() {
        let io = io(BusConfig { nr_iobus_devs: Some(2), ..BusConfig::default() });
        let ctx = Arc::new(ioeventfd::EventfdCtx::new(3));
        let fdget = |_fd: i32| -> Result<Arc<ioeventfd::EventfdCtx>, Errno> {
            ctx.get(&io.rec);
            Ok(ctx.clone())
        };
        for addr in 0..5 {
            io.ioeventfd(&KvmIoeventfd { addr: 0x100 + addr * 8, len: 4, fd: 3, ..Default::default() }, &fdget)
                .unwrap();
        }
        zone(&io, 0x10, 4);
        zone(&io, 0x20, 4);
        let third = io.register_coalesced_mmio(&KvmCoalescedMmioZone { addr: 0x30, size: 4, pio: 0 });
        assert_eq!(third, Err(Errno::ENOSPC));
        let sixth = io.ioeventfd(&KvmIoeventfd { addr: 0x200, len: 4, fd: 3, ..Default::default() }, &fdget);
        assert_eq!(sixth, Err(Errno::ENOSPC));
        assert!(io.check_structure().is_empty());
    }

    #[test]
    fn failed_unregister_publishes_null_and_destroys_every_device() {
        let io = io(BusConfig::default());
        zone(&io, 0x10, 4);
        zone(&io, 0x20, 4);
        let ring_zone = KvmCoalescedMmioZone { addr: 0x10, size: 4, pio: 0 };
        io.bus(BusKind::Mmio).fail_next_alloc();
        assert_eq!(io.unregister_coalesced_mmio(&ring_zone), Ok(()), "always 0");
        assert!(io.bus(BusKind::Mmio).snapshot().is_none(), "bus is NULL");
        assert!(io.slots.lock().coalesced_zones.is_empty(), "both zones destroyed");
        assert_eq!(io.register_coalesced_mmio(&ring_zone), Err(Errno::ENOMEM));
        assert_eq!(io.unregister_coalesced_mmio(&ring_zone), Ok(()));
        let reader = io.srcu.read_lock();
        let ctx = DispatchCtx { rec: &io.rec, vm: 0, vcpu: None, pump: None };
        assert_eq!(io.bus(BusKind::Mmio).write(&reader, &ctx, 0x20, &[1]), Err(Errno::ENOMEM));
        drop(reader);
        assert!(io.rec.violations().is_empty());
    }

    #[test]
    fn deassign_after_null_bus_leaves_fast_twin_and_is_enoent() {
        let io = io(BusConfig::default());
        let ctx = Arc::new(ioeventfd::EventfdCtx::new(3));
        let fdget = |_fd: i32| -> Result<Arc<ioeventfd::EventfdCtx>, Errno> {
            ctx.get(&io.rec);
            Ok(ctx.clone())
        };
        let any_len = KvmIoeventfd { addr: 0x40, len: 0, fd: 3, ..Default::default() };
        io.ioeventfd(&any_len, &fdget).unwrap();
        zone(&io, 0x80, 4);
        io.bus(BusKind::Mmio).fail_next_alloc();
        io.unregister_coalesced_mmio(&KvmCoalescedMmioZone { addr: 0x80, size: 4, pio: 0 }).unwrap();
        assert_eq!(entries(&io, BusKind::FastMmio), vec![(0x40, 0)], "the FAST_MMIO twin survives");
        let deassign = KvmIoeventfd { flags: KVM_IOEVENTFD_FLAG_DEASSIGN, ..any_len };
        assert_eq!(io.ioeventfd(&deassign, &fdget), Err(Errno::ENOENT));
        assert_eq!(entries(&io, BusKind::FastMmio), vec![], "... but is removed all the same");
        assert!(io.rec.violations().is_empty());
        assert_eq!(ctx.refs(), 1, "only the file's reference is left");
    }

    #[test]
    fn bus_check_catches_an_unsorted_array() {
        let io = io(BusConfig { insertion: Insertion::AppendUnsorted, ..BusConfig::default() });
        zone(&io, 0x20, 4);
        zone(&io, 0x10, 4);
        let wrong = io.check_structure();
        assert_eq!(wrong.len(), 1, "{wrong:?}");
        assert_eq!(wrong[0].0.id, "bus");
        assert!(wrong[0].1.contains("out of order"), "{}", wrong[0].1);
        // and the mainline insertion of the same sequence is sorted
        let good = self::io(BusConfig::default());
        zone(&good, 0x20, 4);
        zone(&good, 0x10, 4);
        assert!(good.check_structure().is_empty());
    }

    #[test]
    fn lifetime_check_catches_a_destroy_before_readers_leave() {
        let io = io(BusConfig { reclaim: Reclaim::Immediately, ..BusConfig::default() });
        zone(&io, 0x10, 4);
        let reader = io.srcu.read_lock();
        let seen = io.bus(BusKind::Mmio).get_srcu(&reader).unwrap();
        io.unregister_coalesced_mmio(&KvmCoalescedMmioZone { addr: 0x10, size: 4, pio: 0 }).unwrap();
        let wrong = check_bus_array(BusKind::Mmio, &seen);
        assert!(wrong.iter().any(|(i, t)| i.id == "lifetime" && t.contains("destroyed device")), "{wrong:?}");
        assert!(wrong.iter().any(|(i, t)| i.id == "lifetime" && t.contains("freed")), "{wrong:?}");
        drop(reader);
    }

    #[test]
    fn register_frees_the_old_array_only_after_readers() {
        let io = io(BusConfig::default());
        let reader = io.srcu.read_lock();
        let seen = io.bus(BusKind::Mmio).get_srcu(&reader).unwrap();
        zone(&io, 0x10, 4);
        assert!(seen.life.is_live(), "a reader still sees the old array");
        drop(reader);
        assert!(!seen.life.is_live(), "freed once the reader left");
    }
}
