//! The ioregion table of each design: `KVM_SET_IOREGION`, the serialization contexts, and the
//! ioregion device on the bus.
//!
//! | model | rfc-v3 (`virt/kvm/ioregion.c`) |
//! |---|---|
//! | [`KvmIo::set_ioregion_v3`] | `kvm_ioregionfd` → `kvm_set_ioregion` / `kvm_rm_ioregion` |
//! | `KvmIo::set_ioregion_idx` | `kvm_set_ioregion_idx` |
//! | `KvmIo::rm_ioregion_idx` | `kvm_rm_ioregion_idx` |
//! | `KvmIo::collides` | `ioregion_collision` (`kvm_ioregion_collides` + `kvm_eventfd_collides`) |
//! | [`v3_overlap`] | `overlap` |
//! | `KvmIo::find_context` | `ioregion_get_ctx` |
//! | [`Ioregion::release`] | `ioregion_release` (+ `ctx_free`) |
//! | [`Context::lock`] / [`Context::unlock`] | `ioregion_lock_ctx` / `ioregion_unlock_ctx` |
//!
//! The seed design (a document, not code) is modelled from its text: see
//! [`KvmIo::set_ioregion_seed`] for the order of its checks, which the document leaves open.
//! `proposed` takes the rfc-v3 uAPI and changes what `docs/design.md` lists.
//!
//! Locking: every registration and removal holds `kvm->slots_lock` (the [`SlotsGuard`]); the
//! region lists live under it. A context has two locks, each a `busy` flag with a wait queue: its
//! response side, held by a transaction from before it sends until it has its response, and (in
//! proposed) its send side, held by any sender only around SEND_CMD; the order is response side,
//! then send side, and nothing is waited for while a send side is held.

mod context;
mod txn;
mod vcpu_state;

pub use context::{Collect, Collected, Context, ContextTable, KernelEnd, LockError, ParkedReply, Side};
pub use txn::{SavedIoregion, SavedTxn, Step, abandon, continue_transaction, run_deferred};
pub use vcpu_state::IoregionVcpu;

use crate::bus::{BusKind, DispatchCtx, ExtLists, HandledBy, KvmIo, KvmIoDevice, SlotsGuard, destroy_device};
use crate::design::{CollisionRule, ContextKey, ContextScope, Knobs, ReadFileRef};
use crate::errno::Errno;
use crate::fd::{File, FileKind, Inode, IoregionfdObject};
use crate::invariants::{Invariant, LIFETIME, OVERLAP};
use crate::sync::{Arc, Mutex};
use crate::trace::Lifetime;
use crate::trace::Recorder;
use crate::uapi::*;
use std::fmt;
use std::sync::Weak;

/// What a region's dispatch uses; seed's "modify" replaces it in place.
#[derive(Clone, Debug)]
pub struct RegionParams {
    /// Sent with every command.
    pub user_data: u64,
    /// `KVM_IOREGION_POSTED_WRITES`.
    pub posted: bool,
    /// Where commands go.
    pub cmd: KernelEnd,
    /// The serialization context (none for a region of size 0 in rfc-v3 and proposed).
    pub ctx: Option<Arc<Context>>,
    /// proposed: the region's own reference on its read file (responses are read through it).
    pub rfile: Option<Arc<File>>,
    /// proposed: the context of the command channel's inode (the response channel's own context
    /// when they are one inode); its send side is held while a command is sent, so every writer
    /// of a channel is serialized.
    pub send_ctx: Option<Arc<Context>>,
}

/// One ioregion: a device on one bus of one VM.
pub struct Ioregion {
    me: Weak<Ioregion>,
    id: u64,
    vm: usize,
    bus: BusKind,
    paddr: u64,
    size: u64,
    knobs: Knobs,
    params: Mutex<RegionParams>,
    life: Lifetime,
}

impl fmt::Debug for Ioregion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ioregion#{}({} {:#x} size {:#x})", self.id, self.bus, self.paddr, self.size)
    }
}

impl Ioregion {
    /// The bus.
    pub fn bus(&self) -> BusKind {
        self.bus
    }

    /// The region's identity (never reused).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its guest range: `(paddr, size)`.
    pub fn range(&self) -> (u64, u64) {
        (self.paddr, self.size)
    }

    /// The `Arc` this region lives in (`None` once it is gone).
    pub fn arc(&self) -> Option<Arc<Ioregion>> {
        self.me.upgrade()
    }

    /// Guest physical address (or port).
    pub fn paddr(&self) -> u64 {
        self.paddr
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The VM.
    pub fn vm(&self) -> usize {
        self.vm
    }

    /// The design's knobs.
    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }

    /// What dispatch uses now.
    pub fn params(&self) -> RegionParams {
        self.params.lock().clone()
    }

    /// Whether the region is still live (not released).
    pub fn is_live(&self) -> bool {
        self.life.is_live()
    }

    /// The bytes `[start, end)` it occupies for collision purposes (size 0: its one byte).
    pub fn interval(&self) -> (u64, u64) {
        (self.paddr, self.paddr.saturating_add(self.size.max(1)))
    }

    /// `ioregion_release` (the destructor): drops the region's references, per design.
    ///
    /// rfc-v3 ([`ReadFileRef::CreatorsFile`]): if it has a context, `fput(ctx->rf)` (the file of
    /// the region that *created* the context, whichever region this is) and `kref_put(ctx)`;
    /// then `fput(wf)`. seed: puts its reference on the ioregionfd's context. proposed: puts its
    /// own read file, its contexts and its write file.
    pub fn release(&self, rec: &Recorder) {
        let p = self.params();
        rec.event(Some(self.vm), format_args!("release {self:?}"));
        match self.knobs.read_file_ref {
            ReadFileRef::CreatorsFile => {
                if let Some(KernelEnd::File(rf)) = p.ctx.as_ref().and_then(|c| c.response_end()) {
                    rf.put(rec);
                }
            }
            ReadFileRef::OwnFile => {
                if let Some(rf) = &p.rfile {
                    rf.put(rec);
                }
            }
        }
        for ctx in p.ctx.iter().chain(p.send_ctx.iter()) {
            ctx.put(rec);
        }
        if let KernelEnd::File(wf) = &p.cmd {
            wf.put(rec);
        }
    }

    /// Builds the command of an access; `None` for a length the wire cannot express.
    pub fn command(&self, is_write: bool, addr: u64, data: &[u8], p: &RegionParams) -> Option<crate::wire::Command> {
        let size_exponent = match data.len() {
            0 | 1 => 0,
            2 => 1,
            4 => 2,
            8 => 3,
            _ => return None,
        };
        let mut value = [0u8; 8];
        if is_write {
            value[..data.len()].copy_from_slice(data);
        }
        let resp = match (is_write, self.knobs.wire) {
            (true, _) => !p.posted,
            (false, crate::wire::WireFormat::V3) => true,
            (false, crate::wire::WireFormat::Seed) => false,
        };
        Some(crate::wire::Command {
            direction: if is_write { crate::wire::Direction::Write } else { crate::wire::Direction::Read },
            size_exponent,
            resp,
            user_data: p.user_data,
            offset: addr.wrapping_sub(self.paddr),
            data: u64::from_le_bytes(value),
        })
    }
}

impl KvmIoDevice for Ioregion {
    fn read(&self, ctx: &DispatchCtx<'_>, addr: u64, data: &mut [u8]) -> Result<(), Errno> {
        txn::ioregion_access(ctx, self, false, addr, data)
    }

    fn write(&self, ctx: &DispatchCtx<'_>, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let mut copy = [0u8; 8];
        let n = data.len().min(8);
        copy[..n].copy_from_slice(&data[..n]);
        txn::ioregion_access(ctx, self, true, addr, &mut copy[..n])
    }

    fn destructor(&self, rec: &Recorder) {
        self.release(rec);
    }

    fn lifetime(&self) -> &Lifetime {
        &self.life
    }

    fn handled_by(&self, addr: u64, data: &[u8], is_write: bool) -> HandledBy {
        let mut value = [0u8; 8];
        value[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        HandledBy::Ioregion {
            user_data: self.params().user_data,
            is_write,
            offset: addr.wrapping_sub(self.paddr),
            len: data.len(),
            value: u64::from_le_bytes(value),
        }
    }
}

/// The region lists of a VM (`kvm->ioregions_mmio`, `_pio`, `_fast_mmio`), under `slots_lock`.
#[derive(Debug, Default)]
pub struct RegionLists {
    lists: [Vec<Arc<Ioregion>>; 4],
}

impl RegionLists {
    /// The regions on `bus`, in registration order.
    pub fn on(&self, bus: BusKind) -> &[Arc<Ioregion>] {
        &self.lists[bus.index()]
    }

    /// Every region.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Ioregion>> {
        self.lists.iter().flatten()
    }
}

impl ExtLists for RegionLists {
    fn prune(&mut self) {
        for l in &mut self.lists {
            l.retain(|r| r.is_live());
        }
    }

    /// rfc-v3 (and proposed): an ioeventfd on MMIO or PIO that overlaps an ioregion collides
    /// (rfc-v3: its length 0 counted as 8, with rfc-v3's `overlap`).
    fn ioeventfd_collides(&self, bus: BusKind, addr: u64, len: u32) -> bool {
        if !matches!(bus, BusKind::Mmio | BusKind::Pio) {
            return false;
        }
        let regions = &self.lists[bus.index()];
        let Some(first) = regions.first() else { return false };
        if !first.knobs.ioeventfd_checks_ioregions {
            return false;
        }
        let len = u64::from(len);
        regions.iter().any(|r| match first.knobs.collision {
            CollisionRule::V3Overlap => v3_overlap(addr, if len == 0 { 8 } else { len }, r.paddr, v3_size(r.size)),
            _ => exact_overlap(addr, len, r.paddr, r.size),
        })
    }
}

/// rfc-v3's `overlap(start1, size1, start2, size2)`: `end = start + size - 1` (wrapping) and
/// `!(end1 < start2 || start1 >= end2)`. Note `start1 >= end2`: a range starting on the last byte
/// of another does not count as overlapping.
///
/// ```
/// use ioregionfd_model::region::v3_overlap;
/// assert!(v3_overlap(0x10, 4, 0x12, 4));
/// assert!(!v3_overlap(0x13, 4, 0x10, 4)); // shares byte 0x13, yet "no overlap"
/// ```
pub fn v3_overlap(start1: u64, size1: u64, start2: u64, size2: u64) -> bool {
    let end1 = start1.wrapping_add(size1).wrapping_sub(1);
    let end2 = start2.wrapping_add(size2).wrapping_sub(1);
    !(end1 < start2 || start1 >= end2)
}

fn v3_size(size: u64) -> u64 {
    if size == 0 { 8 } else { size }
}

/// Real interval overlap, a size of 0 taken as the one byte at its address.
///
/// ```
/// use ioregionfd_model::region::exact_overlap;
/// assert!(exact_overlap(0x13, 4, 0x10, 4));
/// assert!(!exact_overlap(0x14, 4, 0x10, 4));
/// assert!(exact_overlap(0x10, 0, 0x10, 8));
/// ```
pub fn exact_overlap(start1: u64, size1: u64, start2: u64, size2: u64) -> bool {
    let end1 = start1.saturating_add(size1.max(1));
    let end2 = start2.saturating_add(size2.max(1));
    start1 < end2 && start2 < end1
}

/// What a VM's ioregion ioctls need from the host: the calling process's files and the context
/// table.
pub struct Host<'a> {
    /// `fget` on the calling process (a new reference).
    pub fget: &'a dyn Fn(i32) -> Result<Arc<File>, Errno>,
    /// The contexts shared across VMs.
    pub contexts: &'a ContextTable,
}

/// The references `KVM_SET_IOREGION` holds while it registers a region (the files from `fget`,
/// the contexts it looked up): put again on every error path, as the kernel's `goto` chain does
/// (contexts, then the read file, then the write file), and kept by the region once it is
/// registered.
struct SetIoregionRefs<'a> {
    rec: &'a Recorder,
    wfile: Arc<File>,
    rfile: Option<Arc<File>>,
    ctx: Option<Arc<Context>>,
    send_ctx: Option<Arc<Context>>,
    registered: bool,
}

impl<'a> SetIoregionRefs<'a> {
    fn new(rec: &'a Recorder, wfile: Arc<File>) -> Self {
        SetIoregionRefs { rec, wfile, rfile: None, ctx: None, send_ctx: None, registered: false }
    }
}

impl Drop for SetIoregionRefs<'_> {
    fn drop(&mut self) {
        if self.registered {
            return;
        }
        for c in self.ctx.iter().chain(self.send_ctx.iter()) {
            c.put(self.rec);
        }
        if let Some(rf) = &self.rfile {
            rf.put(self.rec);
        }
        self.wfile.put(self.rec);
    }
}

/// The I/O half of a VM, with its region lists.
pub type VmIo = KvmIo<RegionLists>;

impl KvmIo<RegionLists> {
    fn new_region(
        &self,
        knobs: Knobs,
        bus: BusKind,
        paddr: u64,
        size: u64,
        params: RegionParams,
        id: u64,
    ) -> Arc<Ioregion> {
        Arc::new_cyclic(|me| Ioregion {
            me: me.clone(),
            id,
            vm: self.vm,
            bus,
            paddr,
            size,
            knobs,
            params: Mutex::new(params),
            life: Lifetime::new(),
        })
    }

    /// `ioregion_collision` (rfc-v3) or the exact check (proposed): this VM's ioregions and
    /// ioeventfds on `bus`.
    fn collides(
        &self,
        slots: &SlotsGuard<'_, crate::bus::Locked<RegionLists>>,
        knobs: &Knobs,
        bus: BusKind,
        paddr: u64,
        size: u64,
    ) -> bool {
        let ioregions = slots.ext.on(bus).iter();
        let ioeventfds = slots.ioeventfds.iter().filter(|p| p.bus() == bus);
        match knobs.collision {
            CollisionRule::V3Overlap => {
                let size = v3_size(size);
                ioregions.clone().any(|r| v3_overlap(paddr, size, r.paddr, v3_size(r.size)))
                    || ioeventfds.clone().any(|p| v3_overlap(paddr, size, p.addr(), v3_size(p.len())))
            }
            CollisionRule::Exact => {
                ioregions.clone().any(|r| exact_overlap(paddr, size, r.paddr, r.size))
                    || ioeventfds.clone().any(|p| exact_overlap(paddr, size, p.addr(), p.len()))
            }
            CollisionRule::SplitOnly => false,
        }
    }

    /// `ioregion_get_ctx` (rfc-v3) or the context-table lookup (proposed): the context of a new
    /// region whose read file is `rfile`. rfc-v3 dereferences the context of every region on
    /// the list up to a match, including the NULL context of a size-0 region: a NULL dereference,
    /// recorded as a `lifetime` violation, after which the ioctl fails with `EFAULT` (the kernel
    /// would have oopsed).
    fn find_context(
        &self,
        slots: &SlotsGuard<'_, crate::bus::Locked<RegionLists>>,
        host: &Host<'_>,
        knobs: &Knobs,
        bus: BusKind,
        rfile: &Arc<File>,
    ) -> Result<(Arc<Context>, bool), Errno> {
        let same_channel = |inode: Inode| match knobs.context_key {
            ContextKey::InodeNumber => inode.ino == rfile.inode().ino,
            ContextKey::Inode => inode == rfile.inode(),
        };
        match knobs.context_scope {
            ContextScope::VmBusList => {
                for r in slots.ext.on(bus) {
                    let p = r.params();
                    let Some(ctx) = &p.ctx else {
                        if !knobs.context_walk_derefs_null {
                            continue;
                        }
                        self.rec.violation(
                            &LIFETIME,
                            format_args!(
                                "NULL dereference: ioregion_get_ctx reads the context of {r:?}, which has none"
                            ),
                        );
                        return Err(Errno::EFAULT);
                    };
                    if ctx.channel().is_some_and(same_channel) && self.context_get(knobs, ctx) {
                        return Ok((ctx.clone(), true));
                    }
                }
                // rfc-v3 keeps the creating region's read file in the context (`ctx->rf`);
                // otherwise the context only knows the channel's inode.
                let (resp, key) = match knobs.read_file_ref {
                    ReadFileRef::CreatorsFile => (Some(KernelEnd::File(rfile.clone())), None),
                    ReadFileRef::OwnFile => (None, Some(rfile.inode())),
                };
                let ctx = host.contexts.add(Context::new(host.contexts.next_id(), resp, key, knobs.context_kref_init));
                self.created(knobs, &ctx, rfile);
                Ok((ctx, false))
            }
            ContextScope::HostTable => {
                let mut table = host.contexts.by_inode.lock();
                let key = match knobs.context_key {
                    ContextKey::Inode => rfile.inode(),
                    // The number alone: every filesystem's inode N is one key.
                    ContextKey::InodeNumber => Inode { sb: crate::fd::Superblock::Anon, ino: rfile.inode().ino },
                };
                if let Some(ctx) = table.get(&key).and_then(Weak::upgrade).filter(|c| c.is_live()) {
                    if self.context_get(knobs, &ctx) {
                        return Ok((ctx, true));
                    }
                    self.rec.event(Some(self.vm), format_args!("{ctx} is in its last put: passed over"));
                }
                let resp = match knobs.read_file_ref {
                    ReadFileRef::CreatorsFile => Some(KernelEnd::File(rfile.clone())),
                    ReadFileRef::OwnFile => None,
                };
                let ctx = host.contexts.add(Context::new(
                    host.contexts.next_id(),
                    resp,
                    Some(rfile.inode()),
                    knobs.context_kref_init,
                ));
                table.insert(key, Arc::downgrade(&ctx));
                self.created(knobs, &ctx, rfile);
                Ok((ctx, false))
            }
            ContextScope::PerIoregionfd => Err(Errno::EINVAL),
        }
    }

    /// A region's reference on a context a lookup found: `kref_get`, or (proposed)
    /// `kref_get_unless_zero`, false when the context is in its last put (the last put takes
    /// neither the table's lock nor `slots_lock`, so a context found may be in it).
    fn context_get(&self, knobs: &Knobs, ctx: &Context) -> bool {
        if knobs.context_get_unless_zero {
            return ctx.kref.get_unless_zero();
        }
        ctx.get(&self.rec);
        true
    }

    /// A context was made for `rfile`: rfc-v3 takes a reference on it after making it.
    fn created(&self, knobs: &Knobs, ctx: &Context, rfile: &File) {
        if knobs.context_get_on_create {
            ctx.get(&self.rec);
        }
        self.rec.event(Some(self.vm), format_args!("new {ctx} for {rfile}"));
    }

    /// `KVM_SET_IOREGION` with the rfc-v3 structure (designs rfc-v3 and proposed).
    ///
    /// Order (rfc-v3): flags outside 0x7: `EINVAL`; DEASSIGN: removal; `guest_paddr +
    /// memory_size` wraps: `EINVAL`; size 0 without POSTED_WRITES: `EINVAL`; then the region on the
    /// bus from the PIO flag, and for size 0 on MMIO a twin on FAST_MMIO (the first is removed if
    /// the twin fails).
    pub fn set_ioregion_v3(&self, host: &Host<'_>, knobs: &Knobs, args: &KvmIoregionV3) -> Result<(), Errno> {
        if args.flags & !KVM_IOREGION_V3_VALID_FLAG_MASK != 0 {
            return Err(Errno::EINVAL);
        }
        let bus = if args.flags & KVM_IOREGION_PIO != 0 { BusKind::Pio } else { BusKind::Mmio };
        if args.flags & KVM_IOREGION_DEASSIGN != 0 {
            let r = self.rm_ioregion_idx(knobs, bus, args.guest_paddr, args.memory_size);
            if args.memory_size == 0 && bus == BusKind::Mmio {
                let _ = self.rm_ioregion_idx(knobs, BusKind::FastMmio, args.guest_paddr, args.memory_size);
            }
            return r;
        }
        if args.guest_paddr.checked_add(args.memory_size).is_none() {
            return Err(Errno::EINVAL);
        }
        if args.memory_size == 0 && args.flags & KVM_IOREGION_POSTED_WRITES == 0 {
            return Err(Errno::EINVAL);
        }
        if knobs.sizes_fit_bus_len && args.memory_size > i32::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        self.set_ioregion_idx(host, knobs, args, bus)?;
        if args.memory_size == 0
            && bus == BusKind::Mmio
            && let Err(e) = self.set_ioregion_idx(host, knobs, args, BusKind::FastMmio)
        {
            let _ = self.rm_ioregion_idx(knobs, bus, args.guest_paddr, args.memory_size);
            return Err(e);
        }
        Ok(())
    }

    /// `kvm_set_ioregion_idx`: references on the files (write file; read file unless size 0),
    /// their modes (`checks_file_modes`: `EBADF`) and flags (`refuses_nonblocking_fds`:
    /// `EINVAL`), then under `slots_lock`: collision (`EEXIST`), context, bus registration, list.
    fn set_ioregion_idx(
        &self,
        host: &Host<'_>,
        knobs: &Knobs,
        args: &KvmIoregionV3,
        bus: BusKind,
    ) -> Result<(), Errno> {
        let mut refs = self.ioregion_files(host, knobs, args)?;
        let mut slots = self.slots.lock();
        match self.register_ioregion(&mut slots, host, knobs, args, bus, &mut refs) {
            Ok(()) => {
                refs.registered = true;
                Ok(())
            }
            Err(e) => {
                drop(slots);
                self.rec
                    .event(Some(self.vm), format_args!("KVM_SET_IOREGION {bus} {:#x} fails: {e}", args.guest_paddr));
                Err(e) // `refs` puts what was taken
            }
        }
    }

    /// The files of a new region (`fget` of `write_fd`, and of `read_fd` unless the region is a
    /// doorbell) and the checks on them, before `slots_lock`: a file opened without the mode KVM
    /// needs is `EBADF` (proposed); a non-blocking file, or a pipe or FIFO whose read end is its
    /// own write end's, is `EINVAL` (proposed).
    fn ioregion_files<'a>(
        &'a self,
        host: &Host<'_>,
        knobs: &Knobs,
        args: &KvmIoregionV3,
    ) -> Result<SetIoregionRefs<'a>, Errno> {
        let wfile = (host.fget)(args.write_fd)?;
        let mut refs = SetIoregionRefs::new(&self.rec, wfile);
        if args.memory_size != 0 {
            refs.rfile = Some((host.fget)(args.read_fd)?);
        }
        let (wfile, rfile) = (&refs.wfile, refs.rfile.as_ref());
        let looped = rfile.is_some_and(|r| {
            r.inode() == wfile.inode()
                && matches!(r.kind(), FileKind::PipeRead(_))
                && matches!(wfile.kind(), FileKind::PipeWrite(_))
        });
        if knobs.checks_file_modes && (!wfile.writable() || rfile.is_some_and(|f| !f.readable())) {
            return Err(Errno::EBADF);
        }
        if knobs.refuses_nonblocking_fds && (looped || wfile.nonblock() || rfile.is_some_and(|f| f.nonblock())) {
            return Err(Errno::EINVAL);
        }
        Ok(refs)
    }

    /// Under `slots_lock`: the collision check, the contexts (send side, then response side),
    /// the region, and its bus registration.
    fn register_ioregion(
        &self,
        slots: &mut SlotsGuard<'_, crate::bus::Locked<RegionLists>>,
        host: &Host<'_>,
        knobs: &Knobs,
        args: &KvmIoregionV3,
        bus: BusKind,
        refs: &mut SetIoregionRefs<'_>,
    ) -> Result<(), Errno> {
        if self.collides(slots, knobs, bus, args.guest_paddr, args.memory_size) {
            return Err(Errno::EEXIST);
        }
        if knobs.serialize_senders {
            // proposed: every writer of a command channel (a doorbell too) takes the send side of
            // its inode's context around each send.
            refs.send_ctx = Some(self.find_context(slots, host, knobs, bus, &refs.wfile)?.0);
        }
        let mut keep_rfile = None;
        if let Some(rf) = &refs.rfile {
            refs.ctx = Some(self.find_context(slots, host, knobs, bus, rf)?.0);
            keep_rfile = match knobs.read_file_ref {
                // rfc-v3: a new context keeps the region's reference; a shared one does not store
                // it anywhere (a reference that is never put).
                ReadFileRef::CreatorsFile => None,
                ReadFileRef::OwnFile => Some(rf.clone()),
            };
        }
        let params = RegionParams {
            user_data: args.user_data,
            posted: args.flags & KVM_IOREGION_POSTED_WRITES != 0,
            cmd: KernelEnd::File(refs.wfile.clone()),
            ctx: refs.ctx.clone(),
            rfile: keep_rfile,
            send_ctx: refs.send_ctx.clone(),
        };
        let id = host.contexts.next_region_id();
        let region = self.new_region(*knobs, bus, args.guest_paddr, args.memory_size, params, id);
        let len = args.memory_size as i32;
        self.bus(bus).register_dev(slots, &self.srcu, &self.rec, args.guest_paddr, len, region.clone())?;
        self.rec.event(Some(self.vm), format_args!("register {region:?} user_data {:#x}", args.user_data));
        slots.ext.lists[bus.index()].push(region);
        Ok(())
    }

    /// `kvm_rm_ioregion_idx`: the first region on `bus` with exactly this address and size
    /// (fds ignored) is unregistered and released; none: `ENOENT`.
    fn rm_ioregion_idx(&self, knobs: &Knobs, bus: BusKind, paddr: u64, size: u64) -> Result<(), Errno> {
        let mut slots = self.slots.lock();
        let Some(region) = slots.ext.on(bus).iter().find(|r| r.paddr == paddr && r.size == size).cloned() else {
            return Err(Errno::ENOENT);
        };
        self.rec.event(Some(self.vm), format_args!("deassign {region:?}"));
        let dev: Arc<dyn KvmIoDevice> = region;
        if knobs.unregister_destroys {
            let _ = self.bus(bus).unregister_dev(&slots, &self.srcu, &self.rec, &dev);
        } else {
            let _ = self.bus(bus).unregister_dev_keep_target(&slots, &self.srcu, &self.rec, &dev);
            destroy_device(&dev, &self.rec);
        }
        slots.prune_destroyed();
        Ok(())
    }

    /// `KVM_SET_IOREGION` of the seed document. The document fixes what fails (`EINVAL` for a
    /// region that would split an existing one, `ENOENT` for deleting a region that does not
    /// exist) but not the order of the checks; the model checks, in this order: flags outside
    /// PIO | POSTED_WRITES (`EINVAL`); fd = -1: delete the region with exactly this address and
    /// size (`ENOENT`); size 0 (`EINVAL`: not in the document); address + size wraps (`EINVAL`);
    /// the fd (`EBADF`; not an ioregionfd: `EINVAL`); then under `slots_lock`: the same address
    /// and size modifies that region (its user_data, flags and ioregionfd); a region that would
    /// split an existing one (lie strictly inside it, leaving pieces on both sides): `EINVAL`;
    /// then the bus registration.
    pub fn set_ioregion_seed(
        self: &Arc<Self>,
        host: &Host<'_>,
        knobs: &Knobs,
        args: &KvmIoregionSeed,
    ) -> Result<(), Errno> {
        if args.flags & !(KVM_IOREGION_PIO | KVM_IOREGION_POSTED_WRITES) != 0 {
            return Err(Errno::EINVAL);
        }
        let bus = if args.flags & KVM_IOREGION_PIO != 0 { BusKind::Pio } else { BusKind::Mmio };
        if args.fd == -1 {
            return self.rm_ioregion_idx(knobs, bus, args.guest_paddr, args.memory_size);
        }
        if args.memory_size == 0 || args.guest_paddr.checked_add(args.memory_size).is_none() {
            return Err(Errno::EINVAL);
        }
        let obj = self.seed_object(host, args.fd)?;
        let ctx = host.contexts.for_object(&obj, &self.rec);
        let params = RegionParams {
            user_data: args.user_data,
            posted: args.flags & KVM_IOREGION_POSTED_WRITES != 0,
            cmd: KernelEnd::Object(obj.clone()),
            ctx: Some(ctx.clone()),
            rfile: None,
            send_ctx: None,
        };
        let mut slots = self.slots.lock();
        if let Some(existing) =
            slots.ext.on(bus).iter().find(|r| r.paddr == args.guest_paddr && r.size == args.memory_size)
        {
            self.modify_seed_region(existing, params, &obj);
            return Ok(());
        }
        let result = self.register_seed_region(&mut slots, host, knobs, args, bus, params, &obj);
        if result.is_err() {
            drop(slots);
            ctx.put(&self.rec);
        }
        result
    }

    /// seed: the ioregionfd object behind `fd` (`EINVAL` for any other kind of file); the file's
    /// reference is dropped again, the object lives on in the region.
    fn seed_object(&self, host: &Host<'_>, fd: i32) -> Result<Arc<IoregionfdObject>, Errno> {
        let file = (host.fget)(fd)?;
        let obj = match file.kind() {
            FileKind::Ioregionfd(obj) => Ok(obj.clone()),
            _ => Err(Errno::EINVAL),
        };
        file.put(&self.rec);
        obj
    }

    /// seed's "modify": a region with this exact address and size gets the new parameters in
    /// place (its old context reference is put).
    fn modify_seed_region(
        self: &Arc<Self>,
        existing: &Arc<Ioregion>,
        params: RegionParams,
        obj: &Arc<IoregionfdObject>,
    ) {
        let user_data = params.user_data;
        let old = std::mem::replace(&mut *existing.params.lock(), params);
        self.rec.event(Some(self.vm), format_args!("modify {existing:?} user_data {user_data:#x}"));
        if let Some(c) = old.ctx {
            c.put(&self.rec);
        }
        Self::drop_on_last_close(self, obj, existing);
    }

    /// seed: a new region, refused (`EINVAL`) inside a bigger one; registered on the bus and
    /// listed.
    #[allow(clippy::too_many_arguments)]
    fn register_seed_region(
        self: &Arc<Self>,
        slots: &mut SlotsGuard<'_, crate::bus::Locked<RegionLists>>,
        host: &Host<'_>,
        knobs: &Knobs,
        args: &KvmIoregionSeed,
        bus: BusKind,
        params: RegionParams,
        obj: &Arc<IoregionfdObject>,
    ) -> Result<(), Errno> {
        let (start, end) = (args.guest_paddr, args.guest_paddr + args.memory_size);
        if slots.ext.on(bus).iter().any(|r| r.paddr < start && end < r.paddr + r.size) {
            return Err(Errno::EINVAL);
        }
        let region =
            self.new_region(*knobs, bus, args.guest_paddr, args.memory_size, params, host.contexts.next_region_id());
        let len = args.memory_size as i32;
        self.bus(bus).register_dev(slots, &self.srcu, &self.rec, args.guest_paddr, len, region.clone())?;
        self.rec.event(Some(self.vm), format_args!("register {region:?} user_data {:#x}", args.user_data));
        Self::drop_on_last_close(self, obj, &region);
        slots.ext.lists[bus.index()].push(region);
        Ok(())
    }

    /// seed: when the ioregionfd's last userspace fd closes, `region` is dropped from this VM.
    fn drop_on_last_close(self: &Arc<Self>, obj: &Arc<IoregionfdObject>, region: &Arc<Ioregion>) {
        let io = Arc::downgrade(self);
        let target = Arc::downgrade(region);
        let this = Arc::downgrade(obj);
        obj.on_release(Box::new(move |rec: &Recorder| {
            let (Some(io), Some(region)) = (io.upgrade(), target.upgrade()) else { return };
            let still_ours =
                matches!(&region.params().cmd, KernelEnd::Object(o) if std::ptr::eq(Arc::as_ptr(o), this.as_ptr()));
            if !region.is_live() || !still_ours {
                return;
            }
            rec.event(Some(io.vm), format_args!("last close of the ioregionfd drops {region:?}"));
            let mut slots = io.slots.lock();
            let dev: Arc<dyn KvmIoDevice> = region.clone();
            let _ = io.bus(region.bus).unregister_dev(&slots, &io.srcu, &io.rec, &dev);
            slots.prune_destroyed();
        }));
    }

    /// The structural checks of the region table: `overlap` (no two ioregions of this VM on MMIO
    /// or PIO overlap, nor an ioregion and an ioeventfd: exact intervals, size 0 as one byte) and
    /// `bus` (every live ioregion has its bus entry, with its own address and its size as the
    /// entry's len: a size the `int` len cannot hold is truncated or negative).
    pub fn check_regions(&self) -> Vec<(&'static Invariant, String)> {
        let slots = self.slots.lock();
        let mut wrong = Vec::new();
        let mut found = crate::bus::collect_into(&mut wrong);
        for bus in BusKind::ALL {
            let array = self.bus(bus).snapshot();
            Self::visit_region_entries(self.vm, &slots, bus, array.as_deref(), &mut found);
        }
        for bus in [BusKind::Mmio, BusKind::Pio] {
            Self::visit_overlaps(self.vm, &slots, bus, (0, 0), &mut found);
        }
        drop(found);
        wrong
    }

    /// The `bus` part of [`check_regions`](Self::check_regions) for the regions on `bus`: each
    /// has its entry in `array` (the bus's published array; none when the bus is NULL, which
    /// leaves nothing to check), with its own address and its size as the entry's len.
    pub fn visit_region_entries(
        vm: usize,
        slots: &crate::bus::Locked<RegionLists>,
        bus: BusKind,
        array: Option<&crate::bus::BusArray>,
        found: &mut crate::bus::Found<'_>,
    ) {
        let Some(array) = array else { return };
        for r in slots.ext.on(bus) {
            let entry = array.ranges().iter().find(|e| same_region(&e.dev, r));
            match entry {
                Some(e) if e.addr == r.paddr && e.len as i64 as u64 == r.size => {}
                Some(e) => found(
                    &crate::invariants::BUS,
                    format_args!("vm{vm}: {r:?} is on the {} bus as [{:#x} len {}]", r.bus, e.addr, e.len),
                ),
                None => found(&crate::invariants::BUS, format_args!("vm{vm}: {r:?} is not on the {} bus", r.bus)),
            }
        }
    }

    /// The `overlap` part of [`check_regions`](Self::check_regions) on `bus` (MMIO or PIO): every
    /// pair of its regions, and every region with every ioeventfd of the bus, that overlap.
    ///
    /// `new` = `(regions, ioeventfds)` says from which position on (in list order; the
    /// ioeventfds counted among those of this bus) the entries are new: only pairs with at least
    /// one new member are looked at. `(0, 0)` looks at every pair. An overlap depends only on the
    /// two ranges, so when the lists before those positions are the same ranges as at an earlier
    /// look, the earlier count plus what this finds is the count of every pair.
    pub fn visit_overlaps(
        vm: usize,
        slots: &crate::bus::Locked<RegionLists>,
        bus: BusKind,
        new: (usize, usize),
        found: &mut crate::bus::Found<'_>,
    ) {
        let (new_regions, new_ioeventfds) = new;
        let regions = slots.ext.on(bus);
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[(i + 1).max(new_regions)..] {
                if exact_overlap(a.paddr, a.size, b.paddr, b.size) {
                    found(&OVERLAP, format_args!("vm{vm}: {a:?} and {b:?} overlap"));
                }
            }
            let skip = if i >= new_regions { 0 } else { new_ioeventfds };
            for p in slots.ioeventfds.iter().filter(|p| p.bus() == bus).skip(skip) {
                if exact_overlap(a.paddr, a.size, p.addr(), p.len()) {
                    found(&OVERLAP, format_args!("vm{vm}: {a:?} and {p:?} overlap"));
                }
            }
        }
    }
}

/// Whether a bus entry's device is this region.
fn same_region(dev: &Arc<dyn KvmIoDevice>, r: &Arc<Ioregion>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(dev), Arc::as_ptr(r))
}
