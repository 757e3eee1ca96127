//! One access to an ioregion in flight (the state machine of `ioregion_read` / `ioregion_write`
//! in rfc-v3): take the context, SEND_CMD, GET_REPLY, release; and what an interrupted access
//! saves with its vCPU.
//!
//! What differs between designs is read from the region's [`Knobs`]:
//! - rfc-v3: a short or failed transfer is an error (`EIO` for a short count, `EAGAIN` becomes
//!   `EINVAL`) that ends in-kernel handling; a signal during a short transfer saves
//!   `{address, step}` and returns `-EINTR` with the context still locked; a resumed access jumps
//!   to the saved step on whatever region its address dispatches to now, without locking (and
//!   re-sends all 32 bytes in SEND_CMD, dropping bytes already read in GET_REPLY); a read on a
//!   region without a context returns having sent the command, without a response; the context
//!   lock is taken even when the wait for it ends with a signal.
//! - seed and proposed (transactional): a signal interrupts only at a message boundary: while
//!   waiting for the context (nothing sent: the access starts afresh on the next KVM_RUN) or while
//!   waiting for the first byte of the response (the transaction is saved with the region, its
//!   context and references on its files, and continues on the next KVM_RUN, even if the region
//!   was removed meanwhile: the device already has the command). Inside a message only a closed
//!   end stops a transfer. Short transfers continue (proposed) or fail (seed).
//!
//! In the sequential model a transfer or lock that would wait forever marks the vCPU blocked
//! ([`IoregionVcpu::blocked`]) and the access ends there (its context stays locked; the sequential model
//! does not keep its SRCU read section).

use super::vcpu_state::IoregionVcpu;
use super::{Collect, Collected, Context, Ioregion, KernelEnd, LockError, ParkedReply, RegionParams, Side};
use crate::bus::{BusKind, DispatchCtx};
use crate::design::{InterruptedReply, Knobs, ResumeRule, ShortTransfer, SignalRule, VcpuDestroy};
use crate::errno::Errno;
use crate::fd::channel::{Tag, Transfer, Wait};
use crate::invariants::{ISOLATION, LIFETIME, ROUTE, WIRE};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::trace::VcpuId;
use crate::wire::{MESSAGE_SIZE, Response};
use std::any::Any;
use std::fmt;

/// The accessing vCPU of a dispatch, as ioregion dispatch knows it (`None` when the bus was
/// called without one, or with a vCPU of another kind).
fn ioregion_vcpu<'a>(ctx: &DispatchCtx<'a>) -> Option<&'a IoregionVcpu> {
    let v: &'a dyn Any = ctx.vcpu?;
    v.downcast_ref::<IoregionVcpu>()
}

/// The step an interrupted access stopped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing sent yet (transactional designs: interrupted while waiting for the context).
    NotStarted,
    /// Sending the command.
    SendCmd,
    /// Waiting for the response.
    GetReply,
}

/// The saved state of an interrupted access: rfc-v3's `vcpu->ioregion_ctx` (address, step,
/// direction) and, for the transactional designs, the transaction itself.
#[derive(Clone)]
pub struct SavedIoregion {
    /// The bus of the access.
    pub bus: BusKind,
    /// The access address.
    pub addr: u64,
    /// Read (`in`) or write.
    pub is_read: bool,
    /// Access length.
    pub len: usize,
    /// A write's value.
    pub value: u64,
    /// Where it stopped.
    pub step: Step,
    /// The ghost tag of the access.
    pub tag: Tag,
    /// Ghost: the region the access was interrupted on (rfc-v3's saved state does not record it).
    pub region_id: u64,
    /// Transactional designs: the region, the command and the response bytes read so far; the
    /// saved state holds a reference on the context and on the files (put when it completes).
    pub txn: Option<SavedTxn>,
}

/// The part of a saved access only transactional designs keep.
#[derive(Clone)]
pub struct SavedTxn {
    /// The region of the transaction.
    pub region: Arc<Ioregion>,
    /// What it used (its own copy: a later "modify" does not change a transaction in flight).
    pub params: RegionParams,
    /// The command image.
    pub command: [u8; MESSAGE_SIZE],
    /// proposed, interrupted while waiting for its response: where the next owner of the
    /// response side collects it ([`InterruptedReply::NextOwnerCollects`]); the transaction no
    /// longer owns the response side.
    pub parked: Option<Arc<ParkedReply>>,
}

impl fmt::Debug for SavedIoregion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "saved({} {:#x} {:?} {})", self.bus, self.addr, self.step, self.tag)
    }
}

/// One access to an ioregion in flight.
struct Txn<'a> {
    ctx: &'a DispatchCtx<'a>,
    vcpu: &'a IoregionVcpu,
    knobs: Knobs,
    region: &'a Ioregion,
    p: RegionParams,
    bus: BusKind,
    addr: u64,
    is_write: bool,
    len: usize,
    value: u64,
    tag: Tag,
    command: [u8; MESSAGE_SIZE],
    parked: Option<Arc<ParkedReply>>,
}

impl<'a> Txn<'a> {
    /// The transaction a saved state (with its transaction part) describes; `None` without one.
    fn from_saved(ctx: &'a DispatchCtx<'a>, saved: &'a SavedIoregion) -> Option<Self> {
        let (vcpu, t) = (ioregion_vcpu(ctx)?, saved.txn.as_ref()?);
        Some(Txn {
            ctx,
            vcpu,
            knobs: *t.region.knobs(),
            region: &t.region,
            p: t.params.clone(),
            bus: saved.bus,
            addr: saved.addr,
            is_write: !saved.is_read,
            len: saved.len,
            value: saved.value,
            tag: saved.tag,
            command: t.command,
            parked: t.parked.clone(),
        })
    }

    fn who(&self) -> VcpuId {
        self.vcpu.vcpu_id()
    }

    /// Whether transfer `t` failed for good (an error other than `EINTR`, or end of file) and the
    /// design lets that end the access even with a signal pending ([`Knobs::errors_beat_signals`]).
    fn error_wins(&self, t: Transfer) -> bool {
        self.knobs.errors_beat_signals
            && matches!(t, Transfer::Done(0) | Transfer::Failed(_))
            && t != Transfer::Failed(Errno::EINTR)
    }

    fn transactional(&self) -> bool {
        self.knobs.on_signal != SignalRule::SaveAddressAndStep
    }

    fn unlock(&self) {
        if let Some(c) = &self.p.ctx {
            c.unlock(self.ctx.rec, self.who());
        }
    }

    /// Takes the region's context (if it has one), waiting while another vCPU owns it. A
    /// signal while waiting saves the access as not started and returns `-EINTR`; in the
    /// sequential model a wait that could never end blocks the vCPU. `takes_on_signal` is
    /// rfc-v3's defect (see [`crate::region::Context::lock`]): the interrupted waiter marks the
    /// context busy anyway.
    fn take_context(&self, takes_on_signal: bool) -> Result<(), Errno> {
        let Some(c) = &self.p.ctx else { return Ok(()) };
        let vcpu = self.vcpu;
        let pending = || vcpu.signal_pending();
        let wait = if vcpu.sequential { Wait::Never } else { Wait::Block { pending: &pending } };
        match c.lock(self.ctx.rec, self.who(), &wait, takes_on_signal) {
            Ok(()) => self.drain_owed(c),
            Err(LockError::WouldBlock) => {
                vcpu.block(format!("vcpu{} waits for {c} forever", vcpu.id));
                Err(Errno::EINTR)
            }
            Err(LockError::Interrupted) => {
                vcpu.save(self.saved(Step::NotStarted, None));
                Err(Errno::EINTR)
            }
        }
    }

    /// Where this transaction's responses are read.
    fn response_end(&self) -> Option<KernelEnd> {
        match (&self.p.rfile, &self.p.ctx) {
            (Some(rf), _) => Some(KernelEnd::File(rf.clone())),
            (None, Some(c)) => c.response_end().cloned(),
            (None, None) => None,
        }
    }

    /// proposed, holding the response side: first reads what the channel owes to transactions
    /// that gave the side up (into a parked transaction's slot, or discarded for an abandoned
    /// one; nothing more is owed at end of file or on an error). A signal while waiting for an
    /// owed response's first byte: the context is released and the access has not started
    /// (`-EINTR`).
    fn drain_owed(&self, c: &Context) -> Result<(), Errno> {
        let (vcpu, rec) = (self.vcpu, self.ctx.rec);
        if c.owed() == 0 {
            return Ok(());
        }
        let Some(end) = self.response_end() else { return Ok(()) };
        let pending = || vcpu.signal_pending();
        loop {
            match c.collect_owed(rec, self.who(), &end, &pending, vcpu.sequential) {
                Collect::Nothing => return Ok(()),
                Collect::Progress => {}
                Collect::WouldBlock => {
                    vcpu.block(format!("vcpu{} waits for a response owed on {c}", vcpu.id));
                    return Err(Errno::EINTR);
                }
                Collect::Interrupted => {
                    rec.event(
                        Some(vcpu.vm),
                        format_args!("{} interrupted collecting what {c} is owed", vcpu.vcpu_id()),
                    );
                    self.unlock();
                    vcpu.save(self.saved(Step::NotStarted, None));
                    return Err(Errno::EINTR);
                }
            }
        }
    }

    /// proposed, interrupted before the first byte of its response: the transaction is saved
    /// with its references and a slot, and gives the response side up; the next owner collects
    /// its response into the slot ([`InterruptedReply::NextOwnerCollects`]).
    fn park(&self, c: &Context) {
        let slot = Arc::new(ParkedReply::default());
        let mut saved = self.with_references(Step::GetReply);
        if let Some(t) = saved.txn.as_mut() {
            t.parked = Some(slot.clone());
        }
        self.vcpu.save(saved);
        c.park(self.ctx.rec, self.who(), slot);
    }

    /// A parked transaction resumed: its response from its slot, collected by another owner of
    /// the response side or, if nobody did yet, by taking the side and collecting it itself
    /// (reading first what is owed before it). A signal while it waits leaves it parked.
    fn collect_parked(&self, slot: &Arc<ParkedReply>) -> Result<([u8; MESSAGE_SIZE], Vec<Tag>), Result<(), Errno>> {
        let (vcpu, rec) = (self.vcpu, self.ctx.rec);
        for attempt in 0..2 {
            match slot.collected() {
                Collected::Reply(buf, tags) => {
                    rec.event(Some(vcpu.vm), format_args!("{} finds its response collected", vcpu.vcpu_id()));
                    return Ok((buf, tags));
                }
                Collected::Lost => break,
                Collected::Pending if attempt == 1 => break,
                Collected::Pending => {}
            }
            let (Some(c), Some(end)) = (self.p.ctx.as_ref(), self.response_end()) else { break };
            let pending = || vcpu.signal_pending();
            let wait = if vcpu.sequential { Wait::Never } else { Wait::Block { pending: &pending } };
            match c.lock(rec, self.who(), &wait, false) {
                Ok(()) => {}
                Err(LockError::WouldBlock) => {
                    vcpu.block(format!("vcpu{} waits for {c} forever", vcpu.id));
                    return Err(Err(Errno::EINTR));
                }
                Err(LockError::Interrupted) => {
                    self.vcpu.save(self.with_references(Step::GetReply));
                    return Err(Err(Errno::EINTR));
                }
            }
            while c.owes(slot) {
                match c.collect_owed(rec, self.who(), &end, &pending, vcpu.sequential) {
                    Collect::Nothing => break,
                    Collect::Progress => {}
                    Collect::WouldBlock => {
                        vcpu.block(format!("vcpu{} waits for its parked response on {c}", vcpu.id));
                        return Err(Err(Errno::EINTR));
                    }
                    Collect::Interrupted => {
                        c.unlock(rec, self.who());
                        self.vcpu.save(self.with_references(Step::GetReply));
                        return Err(Err(Errno::EINTR));
                    }
                }
            }
            c.unlock(rec, self.who());
        }
        vcpu.sent_unanswered.store(true, Ordering::Release);
        rec.event(Some(vcpu.vm), format_args!("{}: its parked response will not come", vcpu.vcpu_id()));
        Err(Err(Errno::EIO))
    }

    fn saved(&self, step: Step, txn: Option<SavedTxn>) -> SavedIoregion {
        SavedIoregion {
            bus: self.bus,
            addr: self.addr,
            is_read: !self.is_write,
            len: self.len,
            value: self.value,
            step,
            tag: self.tag,
            region_id: self.region.id(),
            txn,
        }
    }

    /// Claims the access inside the SRCU read section: references on what it uses, the
    /// transaction left for after the read section.
    fn claim(&self) {
        let saved = self.with_references(Step::NotStarted);
        *self.vcpu.deferred.lock() = Some(saved);
    }

    /// A saved state holding references on the region's context and files.
    fn with_references(&self, step: Step) -> SavedIoregion {
        let rec = self.ctx.rec;
        for c in self.p.ctx.iter().chain(self.p.send_ctx.iter()) {
            super::context::context_get(c, rec);
        }
        for f in self.files() {
            f.get(rec);
        }
        let region = self.region.arc().expect("a region being dispatched is live");
        let txn = SavedTxn { region, params: self.p.clone(), command: self.command, parked: self.parked.clone() };
        self.saved(step, Some(txn))
    }

    /// Transactional designs: the transaction is saved with references on what it uses.
    fn save_transaction(&self, step: Step) {
        self.vcpu.save(self.with_references(step));
    }

    fn files(&self) -> Vec<Arc<crate::fd::File>> {
        let mut v = Vec::new();
        if let KernelEnd::File(f) = &self.p.cmd {
            v.push(f.clone());
        }
        if let Some(f) = &self.p.rfile {
            v.push(f.clone());
        }
        if let Some(KernelEnd::File(f)) = self.p.ctx.as_ref().and_then(|c| c.response_end()) {
            v.push(f.clone());
        }
        v
    }

    /// Drops what [`save_transaction`](Self::save_transaction) took.
    fn release_saved(&self) {
        let rec = self.ctx.rec;
        for f in self.files() {
            f.put(rec);
        }
        for c in self.p.ctx.iter().chain(self.p.send_ctx.iter()) {
            super::context::context_put(c, rec);
        }
    }

    /// SEND_CMD from byte `moved`. `None`: sent; `Some(r)`: the dispatch ends with `r`.
    fn send(&self, moved: usize) -> Option<Result<(), Errno>> {
        let (vcpu, rec) = (self.vcpu, self.ctx.rec);
        let Some(sc) = &self.p.send_ctx else { return self.send_locked(moved) };
        let pending = || vcpu.signal_pending();
        let wait = if vcpu.sequential { Wait::Never } else { Wait::Block { pending: &pending } };
        let side = match self.knobs.send_lock {
            crate::design::SendLock::OwnSide => Side::Send,
            crate::design::SendLock::ResponseSide => Side::Response,
        };
        match sc.lock_side(side, rec, self.who(), &wait, false) {
            Ok(()) => {}
            Err(LockError::WouldBlock) => {
                vcpu.block(format!("vcpu{} waits for {sc} forever", vcpu.id));
                return Some(Err(Errno::EINTR));
            }
            Err(LockError::Interrupted) => {
                // Nothing sent: the access starts afresh on the next KVM_RUN.
                self.unlock();
                vcpu.save(self.saved(Step::NotStarted, None));
                return Some(Err(Errno::EINTR));
            }
        }
        let r = self.send_locked(moved);
        // A vCPU blocked in the middle of a message keeps the channel (nobody may write into it).
        if vcpu.blocked().is_none() {
            sc.unlock_side(side, rec, self.who());
        }
        r
    }

    /// SEND_CMD with the command channel to ourselves.
    fn send_locked(&self, mut moved: usize) -> Option<Result<(), Errno>> {
        let (vcpu, rec) = (self.vcpu, self.ctx.rec);
        let cmd = crate::wire::Command::decode(self.knobs.wire, &self.command).ok();
        let cmd = cmd.map_or_else(|| "?".to_string(), |c| c.to_string());
        rec.event(Some(vcpu.vm), format_args!("{} SEND_CMD {cmd} to {:?}", vcpu.vcpu_id(), self.p.cmd));
        let interruptible = || vcpu.signal_pending();
        let uninterrupted = || false;
        loop {
            // Transactional designs finish a message once begun: only a closed end stops it.
            let pending: &(dyn Fn() -> bool + Sync) =
                if self.transactional() && moved > 0 { &uninterrupted } else { &interruptible };
            let wait = if vcpu.sequential { Wait::Never } else { Wait::Block { pending } };
            let t = self.p.cmd.write(rec, &self.command[moved..], &wait, self.tag);
            if t == Transfer::Failed(Errno::EPIPE) && matches!(self.p.cmd, KernelEnd::File(_)) {
                // pipe_write / sock_sendmsg without MSG_NOSIGNAL; seed's own file type sends none.
                vcpu.sigpipe(self.ctx);
            }
            if let Transfer::Done(n) = t {
                moved += n;
            }
            if moved == MESSAGE_SIZE {
                return None;
            }
            if let Transfer::WouldBlock { moved: m } = t {
                rec.event(
                    Some(vcpu.vm),
                    format_args!("{} blocks in SEND_CMD after {} bytes", vcpu.vcpu_id(), moved + m),
                );
                vcpu.block(format!("vcpu{} blocks sending its command", vcpu.id));
                return Some(Err(Errno::EINTR));
            }
            if vcpu.signal_pending() && (!self.transactional() || moved == 0) && !self.error_wins(t) {
                rec.event(
                    Some(vcpu.vm),
                    format_args!("{} interrupted in SEND_CMD after {moved} bytes", vcpu.vcpu_id()),
                );
                if self.transactional() {
                    // Nothing sent: the access starts afresh on the next KVM_RUN.
                    self.unlock();
                    vcpu.save(self.saved(Step::NotStarted, None));
                } else {
                    vcpu.save(self.saved(Step::SendCmd, None));
                }
                return Some(Err(Errno::EINTR));
            }
            let short_ok =
                self.knobs.short_transfer == ShortTransfer::Continue && matches!(t, Transfer::Done(n) if n > 0);
            if !short_ok {
                let e = v3_error(t);
                rec.event(Some(vcpu.vm), format_args!("{} SEND_CMD fails ({t:?}): {e}", vcpu.vcpu_id()));
                self.unlock();
                return Some(Err(e));
            }
        }
    }

    /// GET_REPLY from byte `got` of `buf`.
    fn get_reply(&self, buf: &mut [u8; MESSAGE_SIZE], mut got: usize) -> Result<Response, Result<(), Errno>> {
        let (vcpu, rec) = (self.vcpu, self.ctx.rec);
        if let Some(slot) = &self.parked {
            let (reply, from) = self.collect_parked(slot)?;
            *buf = reply;
            return Ok(self.check_reply(buf, &from));
        }
        let Some(end) = self.response_end() else {
            rec.violation(&LIFETIME, "NULL dereference: GET_REPLY on a region without a context");
            return Err(Err(Errno::EFAULT));
        };
        let interruptible = || vcpu.signal_pending();
        let uninterrupted = || false;
        let mut from: Vec<Tag> = Vec::new();
        loop {
            let pending: &(dyn Fn() -> bool + Sync) =
                if self.transactional() && got > 0 { &uninterrupted } else { &interruptible };
            let wait = if vcpu.sequential { Wait::Never } else { Wait::Block { pending } };
            let (t, tags) = end.read(rec, &mut buf[got..], &wait);
            for tag in tags {
                if from.last() != Some(&tag) {
                    from.push(tag);
                }
            }
            let now = if let Transfer::Done(n) = t { n } else { 0 };
            got += now;
            if got == MESSAGE_SIZE {
                break;
            }
            if let Transfer::WouldBlock { .. } = t {
                rec.event(Some(vcpu.vm), format_args!("{} blocks in GET_REPLY after {got} bytes", vcpu.vcpu_id()));
                vcpu.block(format!("vcpu{} waits for a response nobody will send", vcpu.id));
                return Err(Err(Errno::EINTR));
            }
            if vcpu.signal_pending() && (!self.transactional() || got == 0) && !self.error_wins(t) {
                self.interrupted_in_get_reply(got);
                return Err(Err(Errno::EINTR));
            }
            if self.knobs.short_transfer != ShortTransfer::Continue || now == 0 {
                return Err(Err(self.get_reply_failed(t, got)));
            }
        }
        Ok(self.check_reply(buf, &from))
    }

    /// A signal in GET_REPLY (before the first byte in the transactional designs): proposed parks
    /// the transaction, seed saves it with its references, rfc-v3 saves `{address, step}` and
    /// drops the bytes already read.
    fn interrupted_in_get_reply(&self, got: usize) {
        let vcpu = self.vcpu;
        self.ctx
            .rec
            .event(Some(vcpu.vm), format_args!("{} interrupted in GET_REPLY after {got} bytes", vcpu.vcpu_id()));
        match &self.p.ctx {
            Some(c) if self.transactional() && self.knobs.interrupted_reply == InterruptedReply::NextOwnerCollects => {
                self.park(c)
            }
            _ if self.transactional() => self.save_transaction(Step::GetReply),
            _ => vcpu.save(self.saved(Step::GetReply, None)),
        }
    }

    /// GET_REPLY ends without a whole response (a short transfer the design does not continue,
    /// end of file, an error): the command was sent and will not be answered.
    fn get_reply_failed(&self, t: Transfer, got: usize) -> Errno {
        let vcpu = self.vcpu;
        vcpu.sent_unanswered.store(true, Ordering::Release);
        let e = v3_error(if got > 0 { Transfer::Done(got) } else { t });
        self.ctx.rec.event(Some(vcpu.vm), format_args!("{} GET_REPLY fails ({t:?}, {got} bytes): {e}", vcpu.vcpu_id()));
        self.unlock();
        e
    }

    /// Checks a whole response against the access (`route`, `isolation` on its ghost tags;
    /// `wire`) and decodes it.
    fn check_reply(&self, buf: &[u8; MESSAGE_SIZE], from: &[Tag]) -> Response {
        let (vcpu, rec) = (self.vcpu, self.ctx.rec);
        match from {
            [t] if *t == self.tag => {}
            [] => rec.violation(&ROUTE, format_args!("{} completes with a response to no command", self.tag)),
            others => {
                let inv = if others.iter().any(|t| t.vm != self.tag.vm) { &ISOLATION } else { &ROUTE };
                let list: Vec<String> = others.iter().map(|t| t.to_string()).collect();
                rec.violation(inv, format_args!("{} completes with the response to {}", self.tag, list.join(" and ")));
            }
        }
        match Response::decode(buf) {
            Ok(r) => {
                rec.event(Some(vcpu.vm), format_args!("{} GET_REPLY data {:#x}", vcpu.vcpu_id(), r.data));
                r
            }
            Err(e) => {
                rec.violation(&WIRE, format_args!("{} reads a malformed response: {e}", self.tag));
                Response { data: u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) }
            }
        }
    }

    /// Runs the transaction from `step`; fills `data` for a read.
    fn run(&self, step: Step, data: &mut [u8]) -> Result<(), Errno> {
        if step == Step::SendCmd {
            if let Some(r) = self.send(0) {
                return r;
            }
            if !self.is_write && self.p.ctx.is_none() {
                return Ok(());
            }
            if let Some(pump) = self.ctx.pump {
                pump();
            }
        }
        if !self.is_write || !self.p.posted {
            let mut buf = [0u8; MESSAGE_SIZE];
            match self.get_reply(&mut buf, 0) {
                Ok(resp) => {
                    if !self.is_write {
                        let n = data.len();
                        data.copy_from_slice(&resp.data.to_le_bytes()[..n]);
                    }
                }
                Err(r) => return r,
            }
        }
        // A parked transaction gave the response side up when it was interrupted.
        if self.parked.is_none() {
            self.unlock();
        }
        Ok(())
    }
}

/// rfc-v3's error mapping of a failed or short transfer: a negative errno as is, a short count
/// `EIO`, `EAGAIN` `EINVAL`.
fn v3_error(t: Transfer) -> Errno {
    match t {
        Transfer::Failed(Errno::EAGAIN) => Errno::EINVAL,
        Transfer::Failed(e) => e,
        _ => Errno::EIO,
    }
}

/// rfc-v3: an interrupted access jumps straight to its saved step, the context's lock still
/// held, on whatever region its address dispatches to now (`resume` if that is another region).
fn rfc_v3_resume(
    ctx: &DispatchCtx<'_>,
    vcpu: &IoregionVcpu,
    region: &Ioregion,
    knobs: &Knobs,
) -> Option<SavedIoregion> {
    let s = match knobs.on_resume {
        ResumeRule::RedispatchAddress => vcpu.take_saved()?,
        ResumeRule::SameTransaction => return None,
    };
    ctx.rec
        .event(Some(vcpu.vm), format_args!("{} resumes {:#x} at {:?} on {region:?}", vcpu.vcpu_id(), s.addr, s.step));
    if s.region_id != region.id() {
        let text =
            format!("{} was interrupted on ioregion#{} and resumes at {:?} on {region:?}", s.tag, s.region_id, s.step);
        ctx.rec.violation(&crate::invariants::RESUME, text);
    }
    Some(s)
}

/// Dispatches one access to `region` (the ioregion device's read and write ops).
pub(super) fn ioregion_access(
    ctx: &DispatchCtx<'_>,
    region: &Ioregion,
    is_write: bool,
    addr: u64,
    data: &mut [u8],
) -> Result<(), Errno> {
    let Some(vcpu) = ioregion_vcpu(ctx) else { return Err(Errno::EOPNOTSUPP) };
    let knobs = *region.knobs();
    let p = region.params();
    let mut value = [0u8; 8];
    if is_write {
        value[..data.len()].copy_from_slice(data);
    }

    let resumed = rfc_v3_resume(ctx, vcpu, region, &knobs);
    let Some(cmd) = region.command(is_write, addr, data, &p) else {
        if resumed.is_none() {
            return Err(Errno::EOPNOTSUPP);
        }
        if let Some(c) = &p.ctx {
            c.unlock(ctx.rec, vcpu.vcpu_id());
        }
        return Err(Errno::EOPNOTSUPP);
    };
    let txn = Txn {
        ctx,
        vcpu,
        knobs,
        region,
        p: p.clone(),
        bus: region.bus(),
        addr,
        is_write,
        len: data.len(),
        value: u64::from_le_bytes(value),
        tag: resumed.as_ref().map_or_else(|| vcpu.current_tag(), |s| s.tag),
        command: cmd.encode(knobs.wire),
        parked: None,
    };
    if !is_write && region.size() == 0 && knobs.size_zero == crate::design::SizeZero::Doorbell {
        // proposed: nobody answers a doorbell; a read of one exits to userspace, nothing sent.
        return Err(Errno::EOPNOTSUPP);
    }
    if resumed.is_none() && knobs.waits_outside_srcu {
        ctx.rec.event(Some(vcpu.vm), format_args!("{} claims {} on {region:?}", vcpu.vcpu_id(), txn.tag));
        txn.claim();
        return Ok(());
    }
    if resumed.is_none() {
        txn.take_context(knobs.on_signal == SignalRule::SaveAddressAndStep)?;
    }
    let step = resumed.map_or(Step::SendCmd, |s| s.step);
    txn.run(step, data)
}

/// Carries out a claimed access after the SRCU read section (designs that wait outside SRCU):
/// takes the context (a signal here leaves the access not started), sends, waits for the
/// response; then drops the claim's references.
pub fn run_deferred(ctx: &DispatchCtx<'_>, saved: &SavedIoregion, data: &mut [u8]) -> Result<(), Errno> {
    let Some(txn) = Txn::from_saved(ctx, saved) else { return Err(Errno::EOPNOTSUPP) };
    let vcpu = txn.vcpu;
    let r = (|| {
        txn.take_context(false)?;
        txn.run(Step::SendCmd, data)
    })();
    // A vCPU that blocks (sequential model) keeps what it claimed: it is still in the transaction.
    if vcpu.blocked().is_none() {
        txn.release_saved();
    }
    r
}

/// `kvm_vcpu_destroy` for an access the vCPU left interrupted, as
/// [`Knobs::on_vcpu_destroy`] says: nothing (rfc-v3, whose saved state holds no references, and
/// seed), or the transaction's context released (with its owed response recorded, for proposed)
/// and its references put.
pub fn abandon(ctx: &DispatchCtx<'_>, saved: &SavedIoregion) {
    let Some(txn) = Txn::from_saved(ctx, saved) else { return };
    let drain = match txn.knobs.on_vcpu_destroy {
        VcpuDestroy::KeepsTransaction => return,
        VcpuDestroy::ReleaseContext => false,
        VcpuDestroy::ReleaseAndDrain => true,
    };
    // A parked transaction holds no side of its context: its response is collected into a slot
    // nobody reads any more.
    if saved.step == Step::GetReply
        && txn.parked.is_none()
        && let Some(c) = &txn.p.ctx
    {
        c.abandon(ctx.rec, txn.who(), if drain { MESSAGE_SIZE } else { 0 });
    }
    txn.release_saved();
}

/// Continues a saved transaction (seed, proposed) on its own region, from where it stopped.
/// Returns what the bus would have returned, and fills `data` for a read.
pub fn continue_transaction(ctx: &DispatchCtx<'_>, saved: &SavedIoregion, data: &mut [u8]) -> Result<(), Errno> {
    let Some(txn) = Txn::from_saved(ctx, saved) else { return Err(Errno::EOPNOTSUPP) };
    ctx.rec.event(Some(txn.vcpu.vm), format_args!("{} continues {saved:?} on {:?}", txn.vcpu.vcpu_id(), txn.region));
    let r = txn.run(saved.step, data);
    // Done, failed, or interrupted again (a new saved state took its own references): the
    // references of the state being continued go.
    txn.release_saved();
    r
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
