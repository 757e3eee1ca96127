//! A vCPU and the dispatch of one guest access to an ioregion (the state machine of
//! `ioregion_read` / `ioregion_write` in rfc-v3): take the context, SEND_CMD, GET_REPLY, release.
//!
//! What differs between designs is read from the region's [`Knobs`](crate::design::Knobs):
//! - rfc-v3: a short or failed transfer is an error (`EIO` for a short count, `EAGAIN` becomes
//!   `EINVAL`) that ends in-kernel handling; a signal during a short transfer saves
//!   `{address, step}` and returns `-EINTR` with the context still locked; a resumed access jumps
//!   to the saved step on whatever region its address dispatches to now, without locking; a read
//!   on a region without a context returns having sent the command, without a response; the
//!   context lock is taken even when the wait for it ends with a signal.
//! - proposed: a short transfer continues from the byte reached; a signal saves the whole
//!   transaction (region, command, bytes moved) and gives the context up only when nothing was
//!   sent yet.
//! - seed: transactional like proposed, over the ioregionfd object.
//!
//! In the sequential model a transfer or lock that would wait forever marks the vCPU blocked
//! ([`Vcpu::blocked`]) and the access ends there (its context stays locked; the sequential model
//! does not keep its SRCU read section).

use crate::bus::DispatchCtx;
use crate::design::ResumeRule;
use crate::errno::Errno;
use crate::fd::channel::{Tag, Transfer, Wait};
use crate::invariants::{ISOLATION, ROUTE, WIRE};
use crate::region::{Ioregion, KernelEnd, LockError, RegionParams, Wire, continues_short, lock_taken_on_signal};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex};
use crate::wire::{MESSAGE_SIZE, Response};

/// The step an interrupted access stopped in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Sending the command.
    SendCmd,
    /// Waiting for the response.
    GetReply,
}

/// The saved state of an interrupted access (rfc-v3's `vcpu->ioregion_ctx`; proposed and seed
/// also keep the region, the command and the bytes moved).
#[derive(Clone, Debug)]
pub struct SavedIoregion {
    /// The access address.
    pub addr: u64,
    /// Read (`in`) or write.
    pub is_read: bool,
    /// Where it stopped.
    pub step: Step,
    /// The ghost tag of the access.
    pub tag: Tag,
    /// proposed, seed: the region of the transaction.
    pub region: Option<Arc<Ioregion>>,
    /// proposed, seed: the command image.
    pub command: [u8; MESSAGE_SIZE],
    /// proposed, seed: bytes of the current step already moved.
    pub moved: usize,
}

/// A vCPU (`struct kvm_vcpu`), as far as dispatch sees it.
#[derive(Debug)]
pub struct Vcpu {
    vm: usize,
    id: usize,
    sequential: bool,
    seq: AtomicU64,
    signal: AtomicBool,
    sigpipe_ignored: AtomicBool,
    saved: Mutex<Option<SavedIoregion>>,
    blocked: Mutex<Option<String>>,
}

impl Vcpu {
    /// vCPU `id` of VM `vm`. A `sequential` vCPU never waits: what would wait marks it blocked.
    pub fn new(vm: usize, id: usize, sequential: bool) -> Self {
        Vcpu {
            vm,
            id,
            sequential,
            seq: AtomicU64::new(0),
            signal: AtomicBool::new(false),
            sigpipe_ignored: AtomicBool::new(true),
            saved: Mutex::new(None),
            blocked: Mutex::new(None),
        }
    }

    /// The VM's number.
    pub fn vm(&self) -> usize {
        self.vm
    }

    /// The vCPU's number.
    pub fn id(&self) -> usize {
        self.id
    }

    /// A new ghost tag for the next access.
    pub fn next_tag(&self) -> Tag {
        Tag { vm: self.vm, vcpu: self.id, seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1 }
    }

    /// Whether a signal is pending for the vCPU thread.
    pub fn signal_pending(&self) -> bool {
        self.signal.load(Ordering::Acquire)
    }

    /// Delivers a signal to the vCPU thread.
    pub fn signal(&self) {
        self.signal.store(true, Ordering::Release);
    }

    /// Sets whether `SIGPIPE` is ignored (the default here, as VMMs do).
    pub fn set_sigpipe_ignored(&self, ignored: bool) {
        self.sigpipe_ignored.store(ignored, Ordering::Release);
    }

    /// Whether an interrupted access is saved.
    pub fn is_interrupted(&self) -> bool {
        self.saved.lock().is_some()
    }

    /// The saved interrupted access, if any.
    pub fn saved(&self) -> Option<SavedIoregion> {
        self.saved.lock().clone()
    }

    /// Why the vCPU cannot go on (sequential model), if it cannot.
    pub fn blocked(&self) -> Option<String> {
        self.blocked.lock().clone()
    }

    fn block(&self, why: String) {
        *self.blocked.lock() = Some(why);
    }

    fn save(&self, s: SavedIoregion) {
        *self.saved.lock() = Some(s);
    }

    fn take_saved(&self) -> Option<SavedIoregion> {
        self.saved.lock().take()
    }

    fn sigpipe(&self, ctx: &DispatchCtx<'_>) {
        if self.sigpipe_ignored.load(Ordering::Acquire) {
            ctx.rec.event(Some(self.vm), format_args!("SIGPIPE to vcpu{} (ignored)", self.id));
        } else {
            ctx.rec.event(Some(self.vm), format_args!("SIGPIPE to vcpu{} (pending)", self.id));
            self.signal();
        }
    }
}

/// How one access ends inside the device op.
enum Stop {
    /// Return this to the bus (0 handled, an error, or `-EINTR`).
    Return(Result<(), Errno>),
}

/// Dispatches one access to `region` (the ioregion device's read and write ops).
pub(crate) fn ioregion_access(
    ctx: &DispatchCtx<'_>,
    region: &Ioregion,
    is_write: bool,
    addr: u64,
    data: &mut [u8],
) -> Result<(), Errno> {
    let Some(vcpu) = ctx.vcpu else { return Err(Errno::EOPNOTSUPP) };
    let knobs = *region.knobs();
    let who = (vcpu.vm, vcpu.id);
    let pending = || vcpu.signal_pending();
    let wait = if vcpu.sequential { Wait::Never } else { Wait::Block { pending: &pending } };
    let p = region.params();

    // rfc-v3: an interrupted access jumps straight to its saved step, lock still held.
    let mut resumed = None;
    if knobs.on_resume == ResumeRule::RedispatchAddress
        && let Some(saved) = vcpu.take_saved()
    {
        ctx.rec.event(
            Some(vcpu.vm),
            format_args!("vcpu{} resumes {:#x} at {:?} on {region:?}", vcpu.id, saved.addr, saved.step),
        );
        resumed = Some(saved);
    }
    let tag = resumed.as_ref().map_or_else(|| vcpu.next_tag(), |s| s.tag);
    if resumed.is_none()
        && let Some(c) = &p.ctx
    {
        match c.lock(ctx.rec, who, &wait, lock_taken_on_signal(&knobs)) {
            Ok(()) => {}
            Err(LockError::WouldBlock) => {
                vcpu.block(format!("vcpu{} waits for {c} forever", vcpu.id));
                return Err(Errno::EINTR);
            }
            Err(LockError::Interrupted) => return Err(Errno::EINTR),
        }
    }
    let unlock = || {
        if let Some(c) = &p.ctx {
            c.unlock(ctx.rec, who);
        }
    };
    let Some(cmd) = region.command(is_write, addr, data, &p) else {
        unlock();
        return Err(Errno::EOPNOTSUPP);
    };
    let step = resumed.as_ref().map_or(crate::vcpu::Step::SendCmd, |s| s.step);
    let w = Wire { tag };

    if step == Step::SendCmd {
        let image = cmd.encode(knobs.wire);
        ctx.rec.event(Some(vcpu.vm), format_args!("vcpu{} SEND_CMD {cmd} to {:?}", vcpu.id, p.cmd));
        match send(ctx, vcpu, &knobs, &p, &image, &wait, &w, addr, !is_write) {
            None => {}
            Some(Stop::Return(r)) => {
                if !matches!(r, Err(Errno::EINTR)) {
                    unlock();
                }
                return r;
            }
        }
        if !is_write && p.ctx.is_none() {
            return Ok(());
        }
        if let Some(pump) = ctx.pump {
            pump();
        }
    }
    if !is_write || !p.posted {
        match get_reply(ctx, vcpu, &knobs, &p, &wait, &w, addr, !is_write) {
            Ok(resp) => {
                if !is_write {
                    let bytes = resp.data.to_le_bytes();
                    let n = data.len();
                    data.copy_from_slice(&bytes[..n]);
                }
            }
            Err(Stop::Return(r)) => {
                if !matches!(r, Err(Errno::EINTR)) {
                    unlock();
                }
                return r;
            }
        }
    }
    unlock();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn send(
    ctx: &DispatchCtx<'_>,
    vcpu: &Vcpu,
    knobs: &crate::design::Knobs,
    p: &RegionParams,
    image: &[u8; MESSAGE_SIZE],
    wait: &Wait<'_>,
    w: &Wire,
    addr: u64,
    is_read: bool,
) -> Option<Stop> {
    if let Some(ch) = p.cmd.command_channel() {
        ch.push_tag(w.tag);
    }
    let mut moved = 0;
    loop {
        let t = p.cmd.write(ctx.rec, &image[moved..], wait);
        if t == Transfer::Failed(Errno::EPIPE) {
            vcpu.sigpipe(ctx);
        }
        let now = match t {
            Transfer::Done(n) => n,
            _ => 0,
        };
        moved += now;
        if moved == MESSAGE_SIZE {
            return None;
        }
        if let Transfer::WouldBlock { moved: m } = t {
            ctx.rec.event(Some(vcpu.vm), format_args!("vcpu{} blocks in SEND_CMD after {} bytes", vcpu.id, moved + m));
            vcpu.block(format!("vcpu{} blocks sending its command", vcpu.id));
            return Some(Stop::Return(Err(Errno::EINTR)));
        }
        if vcpu.signal_pending() {
            ctx.rec.event(Some(vcpu.vm), format_args!("vcpu{} interrupted in SEND_CMD after {moved} bytes", vcpu.id));
            vcpu.save(SavedIoregion {
                addr,
                is_read,
                step: Step::SendCmd,
                tag: w.tag,
                region: None,
                command: *image,
                moved: if continues_short(knobs) { moved } else { 0 },
            });
            return Some(Stop::Return(Err(Errno::EINTR)));
        }
        if !continues_short(knobs) || !matches!(t, Transfer::Done(n) if n > 0) {
            let e = Wire::v3_error(t);
            ctx.rec.event(Some(vcpu.vm), format_args!("vcpu{} SEND_CMD fails ({t:?}): {e}", vcpu.id));
            return Some(Stop::Return(Err(e)));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn get_reply(
    ctx: &DispatchCtx<'_>,
    vcpu: &Vcpu,
    knobs: &crate::design::Knobs,
    p: &RegionParams,
    wait: &Wait<'_>,
    w: &Wire,
    addr: u64,
    is_read: bool,
) -> Result<Response, Stop> {
    let end: Option<KernelEnd> = match (&p.rfile, &p.ctx) {
        (Some(rf), _) => Some(KernelEnd::File(rf.clone())),
        (None, Some(c)) => c.response_end().cloned(),
        (None, None) => None,
    };
    let Some(end) = end else {
        ctx.rec.violation(&crate::invariants::LIFETIME, "NULL dereference: GET_REPLY on a region without a context");
        return Err(Stop::Return(Err(Errno::EFAULT)));
    };
    let mut buf = [0u8; MESSAGE_SIZE];
    let mut got = 0;
    loop {
        let t = end.read(ctx.rec, &mut buf[got..], wait);
        let now = match t {
            Transfer::Done(n) => n,
            _ => 0,
        };
        got += now;
        if got == MESSAGE_SIZE {
            break;
        }
        if let Transfer::WouldBlock { .. } = t {
            ctx.rec.event(Some(vcpu.vm), format_args!("vcpu{} blocks in GET_REPLY after {got} bytes", vcpu.id));
            vcpu.block(format!("vcpu{} waits for a response nobody will send", vcpu.id));
            return Err(Stop::Return(Err(Errno::EINTR)));
        }
        if vcpu.signal_pending() {
            ctx.rec.event(Some(vcpu.vm), format_args!("vcpu{} interrupted in GET_REPLY after {got} bytes", vcpu.id));
            vcpu.save(SavedIoregion {
                addr,
                is_read,
                step: Step::GetReply,
                tag: w.tag,
                region: None,
                command: [0; MESSAGE_SIZE],
                moved: if continues_short(knobs) { got } else { 0 },
            });
            return Err(Stop::Return(Err(Errno::EINTR)));
        }
        if !continues_short(knobs) || now == 0 {
            let e = Wire::v3_error(if got > 0 { Transfer::Done(got) } else { t });
            ctx.rec.event(Some(vcpu.vm), format_args!("vcpu{} GET_REPLY fails ({t:?}, {got} bytes): {e}", vcpu.id));
            return Err(Stop::Return(Err(e)));
        }
    }
    let responder = end.response_channel().and_then(|c| c.pop_tag());
    match responder {
        Some(t) if t == w.tag => {}
        Some(t) => {
            let inv = if t.vm != w.tag.vm { &ISOLATION } else { &ROUTE };
            ctx.rec.violation(inv, format_args!("{} completes with the response to {t}", w.tag));
        }
        None => ctx.rec.violation(&ROUTE, format_args!("{} completes with a response to no command", w.tag)),
    }
    match Response::decode(&buf) {
        Ok(r) => {
            ctx.rec.event(Some(vcpu.vm), format_args!("vcpu{} GET_REPLY data {:#x}", vcpu.id, r.data));
            Ok(r)
        }
        Err(e) => {
            ctx.rec.violation(&WIRE, format_args!("{} reads a malformed response: {e}", w.tag));
            Ok(Response { data: u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")) })
        }
    }
}
