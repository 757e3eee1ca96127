//! The part of a vCPU that ioregion dispatch reads and writes: its identity, its thread's
//! pending signal and `SIGPIPE` disposition, the access it saved when interrupted or claimed
//! inside the SRCU read section, and (ghost) the tags of its accesses.
//!
//! The bus passes it to the ioregion device as the accessing vCPU ([`AccessingVcpu`]); the
//! vCPU layer's [`Vcpu`](crate::vcpu::Vcpu) wraps it with the run page.

use super::txn::SavedIoregion;
use crate::bus::{AccessingVcpu, DispatchCtx};
use crate::fd::channel::Tag;
use crate::sync::Mutex;
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::trace::VcpuId;

/// A vCPU as ioregion dispatch sees it (`struct kvm_vcpu` and its thread, less the run page).
#[derive(Debug)]
pub struct IoregionVcpu {
    pub(super) vm: usize,
    pub(super) id: usize,
    pub(super) sequential: bool,
    seq: AtomicU64,
    signal: AtomicBool,
    sigpipe_ignored: AtomicBool,
    saved: Mutex<Option<SavedIoregion>>,
    pub(super) deferred: Mutex<Option<SavedIoregion>>,
    current: Mutex<Option<Tag>>,
    pub(super) sent_unanswered: AtomicBool,
    blocked: Mutex<Option<String>>,
}

impl IoregionVcpu {
    /// vCPU `id` of VM `vm`. A `sequential` vCPU never waits: what would wait marks it blocked.
    pub(crate) fn new(vm: usize, id: usize, sequential: bool) -> Self {
        IoregionVcpu {
            vm,
            id,
            sequential,
            seq: AtomicU64::new(0),
            signal: AtomicBool::new(false),
            sigpipe_ignored: AtomicBool::new(true),
            saved: Mutex::new(None),
            deferred: Mutex::new(None),
            current: Mutex::new(None),
            sent_unanswered: AtomicBool::new(false),
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

    /// Which vCPU of which VM.
    pub fn vcpu_id(&self) -> VcpuId {
        VcpuId { vm: self.vm, vcpu: self.id }
    }

    /// Whether the vCPU never waits (the sequential model): what would wait marks it blocked.
    pub fn is_sequential(&self) -> bool {
        self.sequential
    }

    /// A new ghost tag for the next access.
    pub fn next_tag(&self) -> Tag {
        Tag { vm: self.vm, vcpu: self.id, seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1 }
    }

    /// Starts a new guest access: a new ghost tag, which the access keeps across resumes.
    pub fn begin_access(&self) -> Tag {
        let tag = self.next_tag();
        *self.current.lock() = Some(tag);
        tag
    }

    /// The ghost tag of the access under way (a new one if none was begun).
    pub fn current_tag(&self) -> Tag {
        let mut c = self.current.lock();
        *c.get_or_insert_with(|| Tag { vm: self.vm, vcpu: self.id, seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1 })
    }

    /// The access an ioregion claimed inside the SRCU read section, to be carried out after it
    /// (designs that wait outside SRCU); taken by the caller.
    pub(crate) fn take_deferred(&self) -> Option<SavedIoregion> {
        self.deferred.lock().take()
    }

    /// Whether the last dispatch failed after its whole command was sent (and resets it).
    pub fn take_sent_unanswered(&self) -> bool {
        self.sent_unanswered.swap(false, Ordering::AcqRel)
    }

    /// Whether a signal is pending for the vCPU thread.
    pub fn signal_pending(&self) -> bool {
        self.signal.load(Ordering::Acquire)
    }

    /// Makes a signal pending for the vCPU thread (the caller wakes what it may wait on).
    pub fn signal(&self) {
        self.signal.store(true, Ordering::Release);
    }

    /// The vCPU thread handled its pending signal (what returning to userspace does).
    pub fn clear_signal(&self) {
        self.signal.store(false, Ordering::Release);
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

    pub(super) fn block(&self, why: String) {
        *self.blocked.lock() = Some(why);
    }

    pub(super) fn save(&self, s: SavedIoregion) {
        *self.saved.lock() = Some(s);
    }

    /// Takes the saved access (the resume consumes it).
    pub(crate) fn take_saved(&self) -> Option<SavedIoregion> {
        self.saved.lock().take()
    }

    pub(super) fn sigpipe(&self, ctx: &DispatchCtx<'_>) {
        if self.sigpipe_ignored.load(Ordering::Acquire) {
            ctx.rec.event(Some(self.vm), format_args!("SIGPIPE to vcpu{} (ignored)", self.id));
        } else {
            ctx.rec.event(Some(self.vm), format_args!("SIGPIPE to vcpu{} (pending)", self.id));
            self.signal();
        }
    }
}

impl AccessingVcpu for IoregionVcpu {
    fn vcpu_id(&self) -> VcpuId {
        IoregionVcpu::vcpu_id(self)
    }
}
