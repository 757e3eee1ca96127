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

use crate::bus::{BusKind, DispatchCtx, ExtLists, HandledBy, KvmIo, KvmIoDevice, SlotsGuard, destroy_device};
use crate::design::{CollisionRule, ContextKey, ContextScope, Knobs, ReadFileRef};
use crate::errno::Errno;
use crate::fd::channel::{Tag, Transfer, Wait};
use crate::fd::{File, FileKind, Inode, IoregionfdObject};
use crate::invariants::{Invariant, Kref, LIFETIME, Lifetime, OVERLAP};
use crate::sync::{Arc, Condvar, Mutex};
use crate::trace::Recorder;
use crate::uapi::*;
use crate::wire::MESSAGE_SIZE;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Weak;

/// Where KVM writes a region's commands or reads a context's responses.
#[derive(Clone)]
pub enum KernelEnd {
    /// An ordinary file (rfc-v3, proposed): `kernel_write(wf)` / `kernel_read(rf)`.
    File(Arc<File>),
    /// The seed ioregionfd's kernel side.
    Object(Arc<IoregionfdObject>),
}

impl fmt::Debug for KernelEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelEnd::File(file) => write!(f, "{file}"),
            KernelEnd::Object(_) => f.write_str("ioregionfd"),
        }
    }
}

impl KernelEnd {
    /// KVM writes (part of) a command whose bytes carry the ghost `tag` of its access.
    pub fn write(&self, rec: &Recorder, buf: &[u8], wait: &Wait<'_>, tag: Tag) -> Transfer {
        match self {
            KernelEnd::File(f) => f.write_tagged(rec, buf, wait, Some(tag)),
            KernelEnd::Object(o) => o.cmd.write_tagged(buf, false, wait, Some(tag)),
        }
    }

    /// KVM reads (part of) a response, with the ghost tags of the bytes it took.
    pub fn read(&self, rec: &Recorder, buf: &mut [u8], wait: &Wait<'_>) -> (Transfer, Vec<Tag>) {
        match self {
            KernelEnd::File(f) => f.read_tagged(rec, buf, wait),
            KernelEnd::Object(o) => o.resp.read_tagged(buf, false, wait),
        }
    }
}

#[derive(Debug, Default)]
struct LockState {
    busy: bool,
    /// Ghost: the vCPUs that believe they own the lock (two is an `exclusive` break).
    owners: Vec<(usize, usize)>,
    /// Response side (proposed): the responses still to come on the channel for transactions
    /// that gave the side up (interrupted or abandoned), in command order; the next owner reads
    /// each before it sends, into its [`ParkedReply`] or (abandoned) nowhere.
    owed: VecDeque<OwedReply>,
}

/// A response the channel still owes to a transaction that no longer owns the response side.
#[derive(Debug)]
struct OwedReply {
    /// Bytes of it still to read.
    remaining: usize,
    /// Where they go (`None`: the transaction was abandoned; the bytes are discarded).
    slot: Option<Arc<ParkedReply>>,
}

/// proposed: where the response of a transaction interrupted while it waited for it is
/// collected by whoever owns the response side next ([`InterruptedReply::NextOwnerCollects`]).
/// The interrupted transaction completes from it on its next KVM_RUN.
///
/// [`InterruptedReply::NextOwnerCollects`]: crate::design::InterruptedReply::NextOwnerCollects
#[derive(Debug, Default)]
pub struct ParkedReply {
    state: Mutex<ParkedState>,
}

#[derive(Debug, Default)]
struct ParkedState {
    buf: [u8; MESSAGE_SIZE],
    got: usize,
    /// Ghost: the tags of the bytes collected.
    tags: Vec<Tag>,
    /// The response will never come (end of file or an error while collecting it).
    lost: bool,
}

/// What a parked transaction finds in its [`ParkedReply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collected {
    /// Not (all) there yet.
    Pending,
    /// The whole response, with the ghost tags of its bytes.
    Reply([u8; MESSAGE_SIZE], Vec<Tag>),
    /// It will never come.
    Lost,
}

impl ParkedReply {
    /// What has been collected so far.
    pub fn collected(&self) -> Collected {
        let s = self.state.lock();
        if s.lost {
            Collected::Lost
        } else if s.got == MESSAGE_SIZE {
            Collected::Reply(s.buf, s.tags.clone())
        } else {
            Collected::Pending
        }
    }

    fn put(&self, bytes: &[u8], tags: &[Tag]) {
        let mut s = self.state.lock();
        let at = s.got;
        s.buf[at..at + bytes.len()].copy_from_slice(bytes);
        s.got += bytes.len();
        for t in tags {
            if s.tags.last() != Some(t) {
                s.tags.push(*t);
            }
        }
    }
}

/// One step of collecting what a channel owes ([`Context::collect_owed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collect {
    /// Nothing is owed.
    Nothing,
    /// Bytes were read (and stored or discarded); call again.
    Progress,
    /// Sequential model: the owed bytes are not there and nothing else can run.
    WouldBlock,
    /// A signal while waiting for the first byte of an owed response.
    Interrupted,
}

/// The serialization context of a response channel (`struct ioregionfd` in rfc-v3): a wait queue
/// and `busy` flag that let one transaction at a time use the channel, a reference count, and
/// where responses are read.
///
/// proposed also serializes the writers of a command channel on the context of its inode, with
/// a second lock of the same kind ([`Side::Send`]), taken only around SEND_CMD. Lock order: a
/// transaction takes its response side first; nothing waits for anything while it holds a send
/// side, so two regions wired crosswise cannot wait on each other.
pub struct Context {
    id: u64,
    resp: Option<KernelEnd>,
    key: Option<Inode>,
    state: Mutex<LockState>,
    wq: Condvar,
    send_state: Mutex<LockState>,
    send_wq: Condvar,
    kref: Kref,
    life: Lifetime,
}

/// Which of a context's two locks: the transaction's (a response channel) or, in proposed, the
/// one held around a send (a command channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Held for a whole transaction: one reader of the response channel at a time.
    Response,
    /// Held around SEND_CMD only: one writer of the command channel at a time.
    Send,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "context#{}", self.id)
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "context#{}", self.id)?;
        if let Some(k) = self.key {
            write!(f, " (inode {k})")?;
        }
        Ok(())
    }
}

/// Why [`Context::lock`] did not return the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockError {
    /// Sequential model: another transaction owns it and nothing else can run.
    WouldBlock,
    /// A signal arrived while waiting (designs that give up: proposed, seed).
    Interrupted,
}

impl Context {
    fn new(id: u64, resp: Option<KernelEnd>, key: Option<Inode>, kref_init: i64) -> Self {
        Context {
            id,
            resp,
            key,
            state: Mutex::new(LockState::default()),
            wq: Condvar::new(),
            send_state: Mutex::new(LockState::default()),
            send_wq: Condvar::new(),
            kref: Kref::new(kref_init),
            life: Lifetime::new(),
        }
    }

    /// Where responses are read (rfc-v3: the read file of the region that created the context).
    pub fn response_end(&self) -> Option<&KernelEnd> {
        self.resp.as_ref()
    }

    /// The inode of the channel the context serializes (its read file's, or its key).
    pub fn channel(&self) -> Option<Inode> {
        match &self.resp {
            Some(KernelEnd::File(f)) => Some(f.inode()),
            _ => self.key,
        }
    }

    /// References held now.
    pub fn refs(&self) -> i64 {
        self.kref.get_count()
    }

    /// Whether the context was freed.
    pub fn is_live(&self) -> bool {
        self.life.is_live()
    }

    /// `ioregion_lock_ctx`: waits, interruptibly and exclusively, until the context is free, then
    /// takes it. `takes_on_signal` is rfc-v3's behaviour: `busy = true` is set whether the wait
    /// ended because the context became free or because a signal arrived.
    pub fn lock(
        &self,
        rec: &Recorder,
        who: (usize, usize),
        wait: &Wait<'_>,
        takes_on_signal: bool,
    ) -> Result<(), LockError> {
        self.lock_side(Side::Response, rec, who, wait, takes_on_signal)
    }

    /// [`lock`](Self::lock) on either side of the context.
    pub fn lock_side(
        &self,
        side: Side,
        rec: &Recorder,
        who: (usize, usize),
        wait: &Wait<'_>,
        takes_on_signal: bool,
    ) -> Result<(), LockError> {
        if !self.life.check_use(rec, self) {
            return Ok(());
        }
        let (state, wq) = self.side(side);
        let mut s = state.lock();
        loop {
            if !s.busy {
                break;
            }
            match wait {
                Wait::Never => return Err(LockError::WouldBlock),
                Wait::Block { pending } if pending() => {
                    if takes_on_signal {
                        break;
                    }
                    return Err(LockError::Interrupted);
                }
                Wait::Block { .. } => wq.wait(&mut s),
            }
        }
        s.busy = true;
        let what = if side == Side::Send { " for sending" } else { "" };
        if !s.owners.is_empty() {
            rec.violation(
                &crate::invariants::EXCLUSIVE,
                format_args!("vcpu{} of vm{} takes {self}{what} while {:?} still owns it", who.1, who.0, s.owners),
            );
        }
        s.owners.push(who);
        rec.event(Some(who.0), format_args!("vcpu{} takes {self}{what} (owners now {:?})", who.1, s.owners));
        Ok(())
    }

    fn side(&self, side: Side) -> (&Mutex<LockState>, &Condvar) {
        match side {
            Side::Response => (&self.state, &self.wq),
            Side::Send => (&self.send_state, &self.send_wq),
        }
    }

    /// `ioregion_unlock_ctx`: `busy = false`, wake one waiter.
    pub fn unlock(&self, rec: &Recorder, who: (usize, usize)) {
        self.unlock_side(Side::Response, rec, who);
    }

    /// [`unlock`](Self::unlock) on either side of the context.
    pub fn unlock_side(&self, side: Side, rec: &Recorder, who: (usize, usize)) {
        if !self.life.check_use(rec, self) {
            return;
        }
        let (state, wq) = self.side(side);
        let mut s = state.lock();
        s.busy = false;
        s.owners.retain(|o| *o != who);
        let what = if side == Side::Send { " for sending" } else { "" };
        rec.event(Some(who.0), format_args!("vcpu{} releases {self}{what}", who.1));
        wq.notify_one();
    }

    /// A destroyed vCPU's transaction gives the response side up: `owed` more response bytes
    /// are still to come on the channel (0 when its command was not sent), then the lock is
    /// released as [`unlock`](Self::unlock) does.
    pub fn abandon(&self, rec: &Recorder, who: (usize, usize), owed: usize) {
        if !self.life.check_use(rec, self) {
            return;
        }
        if owed > 0 {
            self.state.lock().owed.push_back(OwedReply { remaining: owed, slot: None });
        }
        rec.event(
            Some(who.0),
            format_args!("vcpu{} abandons its transaction on {self}: {owed} response bytes owed", who.1),
        );
        self.unlock(rec, who);
    }

    /// proposed: a transaction interrupted while it waits for its response (nothing read yet)
    /// gives the response side up; its response is owed to `slot`, collected by the next owner.
    pub fn park(&self, rec: &Recorder, who: (usize, usize), slot: Arc<ParkedReply>) {
        if !self.life.check_use(rec, self) {
            return;
        }
        self.state.lock().owed.push_back(OwedReply { remaining: MESSAGE_SIZE, slot: Some(slot) });
        rec.event(
            Some(who.0),
            format_args!("vcpu{} parks its transaction on {self}: its response is collected by the next owner", who.1),
        );
        self.unlock(rec, who);
    }

    /// Responses owed to transactions that gave the response side up (the owner collects them).
    pub fn owed(&self) -> usize {
        self.state.lock().owed.len()
    }

    /// Whether `slot` is still waiting in this context's queue.
    pub fn owes(&self, slot: &Arc<ParkedReply>) -> bool {
        self.state.lock().owed.iter().any(|o| o.slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, slot)))
    }

    /// The owner of the response side reads (part of) the first owed response from `end` and
    /// stores it in its slot, or discards it. Only the wait for an owed response's first byte is
    /// interruptible; at end of file or on an error every owed response is lost.
    pub fn collect_owed(
        &self,
        rec: &Recorder,
        who: (usize, usize),
        end: &KernelEnd,
        signal_pending: &(dyn Fn() -> bool + Sync),
        sequential: bool,
    ) -> Collect {
        let (remaining, slot) = match self.state.lock().owed.front() {
            None => return Collect::Nothing,
            Some(o) => (o.remaining, o.slot.clone()),
        };
        let uninterrupted = || false;
        let pending: &(dyn Fn() -> bool + Sync) =
            if remaining < MESSAGE_SIZE { &uninterrupted } else { signal_pending };
        let wait = if sequential { Wait::Never } else { Wait::Block { pending } };
        let mut buf = [0u8; MESSAGE_SIZE];
        let (t, tags) = end.read(rec, &mut buf[..remaining], &wait);
        match t {
            Transfer::Done(n) if n > 0 => {
                let mut s = self.state.lock();
                if let Some(slot) = &slot {
                    slot.put(&buf[..n], &tags);
                }
                let front = s.owed.front_mut().expect("the owner alone pops owed responses");
                front.remaining -= n;
                let done = front.remaining == 0;
                if done {
                    s.owed.pop_front();
                }
                drop(s);
                let whom = if slot.is_some() { "for the transaction parked on it" } else { "(abandoned: discarded)" };
                rec.event(Some(who.0), format_args!("vcpu{} collects {n} response bytes owed on {self} {whom}", who.1));
                Collect::Progress
            }
            Transfer::WouldBlock { .. } => Collect::WouldBlock,
            Transfer::Failed(Errno::EINTR) => Collect::Interrupted,
            t => {
                let lost: Vec<OwedReply> = self.state.lock().owed.drain(..).collect();
                for o in &lost {
                    if let Some(slot) = &o.slot {
                        slot.state.lock().lost = true;
                    }
                }
                rec.event(
                    Some(who.0),
                    format_args!("vcpu{}: {self} will not get the {} response(s) owed ({t:?})", who.1, lost.len()),
                );
                Collect::Progress
            }
        }
    }

    /// Wakes every waiter on both sides (a signal was delivered to one of them).
    pub fn wake_all(&self) {
        for side in [Side::Response, Side::Send] {
            let (state, wq) = self.side(side);
            let _s = state.lock();
            wq.notify_all();
        }
    }

    /// Ghost: whether vCPU `who` (VM, vCPU) believes it owns either side of the context.
    pub fn owned_by(&self, who: (usize, usize)) -> bool {
        self.state.lock().owners.contains(&who) || self.send_state.lock().owners.contains(&who)
    }

    /// Ghost: how many vCPUs believe they own the context now (either side).
    pub fn owners(&self) -> usize {
        self.state.lock().owners.len() + self.send_state.lock().owners.len()
    }

    fn get(&self, rec: &Recorder) {
        self.kref.get(rec, self);
    }

    /// `kref_put(&ctx->kref, ctx_free)`: frees the context at 0 (`ctx_free` puts nothing).
    fn put(&self, rec: &Recorder) -> bool {
        let last = self.kref.put(rec, self);
        if last {
            self.life.end(rec, self);
            rec.event(None, format_args!("free {self}"));
        }
        last
    }
}

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
        crate::vcpu::ioregion_access(ctx, self, false, addr, data)
    }

    fn write(&self, ctx: &DispatchCtx<'_>, addr: u64, data: &[u8]) -> Result<(), Errno> {
        let mut copy = [0u8; 8];
        let n = data.len().min(8);
        copy[..n].copy_from_slice(&data[..n]);
        crate::vcpu::ioregion_access(ctx, self, true, addr, &mut copy[..n])
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

/// The host-wide table of contexts (proposed: one per response-channel inode, across VMs).
#[derive(Debug, Default)]
pub struct ContextTable {
    by_inode: Mutex<HashMap<Inode, Weak<Context>>>,
    /// Every context ever made, held (ghost) so that one the kernel would leak stays visible.
    all: Mutex<Vec<Arc<Context>>>,
    next_id: Mutex<u64>,
}

impl ContextTable {
    fn next_id(&self) -> u64 {
        let mut n = self.next_id.lock();
        *n += 1;
        *n
    }

    /// Registers a new context (so that a signal can wake its waiters).
    fn add(&self, ctx: Context) -> Arc<Context> {
        let ctx = Arc::new(ctx);
        self.all.lock().push(ctx.clone());
        ctx
    }

    /// Every context ever made (freed or not).
    pub fn contexts(&self) -> Vec<Arc<Context>> {
        self.all.lock().clone()
    }
}

/// What a VM's ioregion ioctls need from the host: the calling process's files and the context
/// table.
pub struct Host<'a> {
    /// `fget` on the calling process (a new reference).
    pub fget: &'a dyn Fn(i32) -> Result<Arc<File>, Errno>,
    /// The contexts shared across VMs.
    pub contexts: &'a ContextTable,
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
        let wfile = (host.fget)(args.write_fd)?;
        let rfile = if args.memory_size != 0 {
            match (host.fget)(args.read_fd) {
                Ok(f) => Some(f),
                Err(e) => {
                    wfile.put(&self.rec);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let looped = rfile.as_ref().is_some_and(|r| {
            r.inode() == wfile.inode()
                && matches!(r.kind(), FileKind::PipeRead(_))
                && matches!(wfile.kind(), FileKind::PipeWrite(_))
        });
        let refused = if knobs.checks_file_modes && (!wfile.writable() || rfile.as_ref().is_some_and(|f| !f.readable()))
        {
            Some(Errno::EBADF)
        } else if knobs.refuses_nonblocking_fds
            && (looped || wfile.nonblock() || rfile.as_ref().is_some_and(|f| f.nonblock()))
        {
            Some(Errno::EINVAL)
        } else {
            None
        };
        if let Some(e) = refused {
            if let Some(rf) = &rfile {
                rf.put(&self.rec);
            }
            wfile.put(&self.rec);
            return Err(e);
        }
        let posted = args.flags & KVM_IOREGION_POSTED_WRITES != 0;
        let mut slots = self.slots.lock();
        let mut ctx = None;
        let mut send_ctx = None;
        let mut keep_rfile = None;
        let result = (|| {
            if self.collides(&slots, knobs, bus, args.guest_paddr, args.memory_size) {
                return Err(Errno::EEXIST);
            }
            if knobs.serialize_senders {
                // proposed: every writer of a command channel (a doorbell too) takes the send
                // side of its inode's context around each send.
                let (c, _) = self.find_context(&slots, host, knobs, bus, &wfile)?;
                send_ctx = Some(c);
            }
            if let Some(rf) = &rfile {
                let (c, _shared) = self.find_context(&slots, host, knobs, bus, rf)?;
                ctx = Some(c);
                keep_rfile = match knobs.read_file_ref {
                    // rfc-v3: a new context keeps the region's reference; a shared one does not
                    // store it anywhere (a reference that is never put).
                    ReadFileRef::CreatorsFile => None,
                    ReadFileRef::OwnFile => Some(rf.clone()),
                };
            }
            let params = RegionParams {
                user_data: args.user_data,
                posted,
                cmd: KernelEnd::File(wfile.clone()),
                ctx: ctx.clone(),
                rfile: keep_rfile.clone(),
                send_ctx: send_ctx.clone(),
            };
            let id = host.contexts.next_id();
            let region = self.new_region(*knobs, bus, args.guest_paddr, args.memory_size, params, id);
            self.bus(bus).register_dev(
                &slots,
                &self.srcu,
                &self.rec,
                args.guest_paddr,
                args.memory_size as i32,
                region.clone(),
            )?;
            self.rec.event(Some(self.vm), format_args!("register {region:?} user_data {:#x}", args.user_data));
            slots.ext.lists[bus.index()].push(region);
            Ok(())
        })();
        if let Err(e) = result {
            drop(slots);
            self.rec.event(Some(self.vm), format_args!("KVM_SET_IOREGION {bus} {:#x} fails: {e}", args.guest_paddr));
            for c in ctx.iter().chain(send_ctx.iter()) {
                c.put(&self.rec);
            }
            if let Some(rf) = &rfile {
                rf.put(&self.rec);
            }
            wfile.put(&self.rec);
            return Err(e);
        }
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
        let file = (host.fget)(args.fd)?;
        let FileKind::Ioregionfd(obj) = file.kind() else {
            file.put(&self.rec);
            return Err(Errno::EINVAL);
        };
        let obj = obj.clone();
        file.put(&self.rec);
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
            let old = std::mem::replace(&mut *existing.params.lock(), params);
            self.rec.event(Some(self.vm), format_args!("modify {existing:?} user_data {:#x}", args.user_data));
            if let Some(c) = old.ctx {
                c.put(&self.rec);
            }
            Self::drop_on_last_close(self, &obj, existing);
            return Ok(());
        }
        let (start, end) = (args.guest_paddr, args.guest_paddr + args.memory_size);
        if slots.ext.on(bus).iter().any(|r| r.paddr < start && end < r.paddr + r.size) {
            drop(slots);
            ctx.put(&self.rec);
            return Err(Errno::EINVAL);
        }
        let region = self.new_region(*knobs, bus, args.guest_paddr, args.memory_size, params, host.contexts.next_id());
        if let Err(e) = self.bus(bus).register_dev(
            &slots,
            &self.srcu,
            &self.rec,
            args.guest_paddr,
            args.memory_size as i32,
            region.clone(),
        ) {
            drop(slots);
            ctx.put(&self.rec);
            return Err(e);
        }
        self.rec.event(Some(self.vm), format_args!("register {region:?} user_data {:#x}", args.user_data));
        Self::drop_on_last_close(self, &obj, &region);
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
        for r in slots.ext.all() {
            let Some(array) = self.bus(r.bus).snapshot() else { continue };
            let entry = array.ranges().iter().find(|e| same_region(&e.dev, r));
            match entry {
                Some(e) if e.addr == r.paddr && e.len as i64 as u64 == r.size => {}
                Some(e) => wrong.push((
                    &crate::invariants::BUS,
                    format!("vm{}: {r:?} is on the {} bus as [{:#x} len {}]", self.vm, r.bus, e.addr, e.len),
                )),
                None => {
                    wrong.push((&crate::invariants::BUS, format!("vm{}: {r:?} is not on the {} bus", self.vm, r.bus)))
                }
            }
        }
        for bus in [BusKind::Mmio, BusKind::Pio] {
            let regions = slots.ext.on(bus);
            for (i, a) in regions.iter().enumerate() {
                for b in &regions[i + 1..] {
                    if exact_overlap(a.paddr, a.size, b.paddr, b.size) {
                        wrong.push((&OVERLAP, format!("vm{}: {a:?} and {b:?} overlap", self.vm)));
                    }
                }
                for p in slots.ioeventfds.iter().filter(|p| p.bus() == bus) {
                    if exact_overlap(a.paddr, a.size, p.addr(), p.len()) {
                        wrong.push((&OVERLAP, format!("vm{}: {a:?} and {p:?} overlap", self.vm)));
                    }
                }
            }
        }
        wrong
    }
}

/// Whether a bus entry's device is this region.
fn same_region(dev: &Arc<dyn KvmIoDevice>, r: &Arc<Ioregion>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(dev), Arc::as_ptr(r))
}

impl ContextTable {
    /// seed: the context of an ioregionfd object (one per object, shared by every VM).
    fn for_object(&self, obj: &Arc<IoregionfdObject>, rec: &Recorder) -> Arc<Context> {
        let key = Inode { sb: crate::fd::Superblock::Anon, ino: Arc::as_ptr(obj) as u64 };
        let mut table = self.by_inode.lock();
        if let Some(ctx) = table.get(&key).and_then(Weak::upgrade).filter(|c| c.is_live()) {
            ctx.get(rec);
            return ctx;
        }
        let ctx = self.add(Context::new(self.next_id(), Some(KernelEnd::Object(obj.clone())), None, 1));
        table.insert(key, Arc::downgrade(&ctx));
        ctx
    }
}

/// A saved transaction's reference on its context (`kref_get`).
pub(crate) fn context_get(ctx: &Context, rec: &Recorder) {
    ctx.get(rec);
}

/// Drops a saved transaction's reference on its context (`kref_put`).
pub(crate) fn context_put(ctx: &Context, rec: &Recorder) {
    ctx.put(rec);
}
