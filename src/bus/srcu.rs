//! A model of SRCU (`kvm->srcu`): read-side sections, `synchronize_srcu`, `call_srcu`,
//! `srcu_barrier`.
//!
//! Readers enter with [`Srcu::read_lock`] and leave when the returned [`SrcuReadGuard`] drops.
//! Each reader belongs to the grace-period *epoch* current when it entered.
//! [`Srcu::synchronize`] closes the current epoch and blocks until every reader of that epoch or an
//! earlier one has left; readers that enter afterwards do not hold it up (they can only see what
//! was published before they entered). [`Srcu::call_srcu`] queues a callback to run once those
//! readers have left, run by whichever thread sees the last of them leave.
//!
//! The state lives in one facade [`Mutex`], so under loom every enter, leave and wait is a
//! scheduling point, and a vCPU that blocks inside a read section really holds up `synchronize`.
//!
//! ```
//! use ioregionfd_model::bus::srcu::Srcu;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! let srcu = Srcu::new();
//! let freed = Arc::new(AtomicBool::new(false));
//! let reader = srcu.read_lock();
//! let f = freed.clone();
//! srcu.call_srcu(Box::new(move || f.store(true, Ordering::SeqCst)));
//! assert!(!freed.load(Ordering::SeqCst)); // a reader that could see the old object is inside
//! drop(reader);
//! assert!(freed.load(Ordering::SeqCst));
//! srcu.synchronize(); // no reader left: returns at once
//! ```

use crate::sync::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::fmt;

/// A deferred reclamation (the `call_srcu` callback).
pub type SrcuCallback = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct SrcuState {
    /// The current epoch: readers entering now belong to it.
    epoch: u64,
    /// Readers inside a read section, counted by the epoch they entered in.
    readers: BTreeMap<u64, usize>,
    /// Callbacks waiting for every reader of an epoch up to the given one to leave.
    callbacks: Vec<(u64, SrcuCallback)>,
}

impl SrcuState {
    /// Whether a reader that entered in `epoch` or earlier is still inside.
    fn readers_up_to(&self, epoch: u64) -> bool {
        self.readers.range(..=epoch).next().is_some()
    }

    /// Closes the current epoch and returns it.
    fn close_epoch(&mut self) -> u64 {
        let closed = self.epoch;
        self.epoch += 1;
        closed
    }

    fn take_ready_callbacks(&mut self) -> Vec<SrcuCallback> {
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.callbacks).into_iter().partition(|(e, _)| !self.readers_up_to(*e));
        self.callbacks = waiting;
        ready.into_iter().map(|(_, cb)| cb).collect()
    }
}

/// The SRCU domain of one VM (`kvm->srcu`).
pub struct Srcu {
    state: Mutex<SrcuState>,
    changed: Condvar,
}

impl fmt::Debug for Srcu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Srcu")
    }
}

impl Default for Srcu {
    fn default() -> Self {
        Self::new()
    }
}

/// Proof of being inside an SRCU read-side section; leaving the section is dropping it.
#[must_use = "the read section ends when the guard is dropped"]
pub struct SrcuReadGuard<'a> {
    srcu: &'a Srcu,
    epoch: u64,
}

impl fmt::Debug for SrcuReadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SrcuReadGuard(epoch {})", self.epoch)
    }
}

impl Srcu {
    /// A new SRCU domain with no reader inside.
    pub fn new() -> Self {
        Srcu { state: Mutex::new(SrcuState::default()), changed: Condvar::new() }
    }

    /// `srcu_read_lock`: enters a read-side section.
    #[track_caller]
    pub fn read_lock(&self) -> SrcuReadGuard<'_> {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        *s.readers.entry(epoch).or_default() += 1;
        SrcuReadGuard { srcu: self, epoch }
    }

    /// Leaves a read section. Callbacks that were waiting only for this reader run here, under
    /// the state lock, so that [`Srcu::barrier`] cannot return before they have run (a callback
    /// must not use this `Srcu`).
    #[track_caller]
    fn read_unlock(&self, epoch: u64) {
        let mut s = self.state.lock();
        if let Some(n) = s.readers.get_mut(&epoch) {
            *n -= 1;
            if *n == 0 {
                s.readers.remove(&epoch);
            }
        }
        s.take_ready_callbacks().into_iter().for_each(|cb| cb());
        self.changed.notify_all();
    }

    /// `synchronize_srcu`: waits until every reader that entered before this call has left.
    #[track_caller]
    pub fn synchronize(&self) {
        let mut s = self.state.lock();
        let closed = s.close_epoch();
        let mut waited = false;
        while s.readers_up_to(closed) {
            crate::trace::blocked("synchronize_srcu: SRCU readers that entered before it");
            waited = true;
            self.changed.wait(&mut s);
        }
        if waited {
            crate::trace::unblocked();
        }
    }

    /// `call_srcu`: runs `callback` once every reader that entered before this call has left
    /// (at once if there is none).
    #[track_caller]
    pub fn call_srcu(&self, callback: SrcuCallback) {
        let run_now = {
            let mut s = self.state.lock();
            let closed = s.close_epoch();
            if s.readers_up_to(closed) {
                s.callbacks.push((closed, callback));
                None
            } else {
                Some(callback)
            }
        };
        if let Some(cb) = run_now {
            cb();
        }
    }

    /// `srcu_barrier`: waits until every queued callback has run.
    #[track_caller]
    pub fn barrier(&self) {
        let mut s = self.state.lock();
        let mut waited = false;
        while !s.callbacks.is_empty() {
            crate::trace::blocked("srcu_barrier: queued SRCU callbacks");
            waited = true;
            self.changed.wait(&mut s);
        }
        if waited {
            crate::trace::unblocked();
        }
    }

    /// Readers inside a read section now (for reports and tests).
    pub fn readers(&self) -> usize {
        self.state.lock().readers.values().sum()
    }
}

impl Drop for SrcuReadGuard<'_> {
    fn drop(&mut self) {
        // A thread unwinding (loom tearing down a deadlocked execution) must not take the lock:
        // the execution is over, and loom cannot run a lock operation during its cleanup.
        if std::thread::panicking() {
            return;
        }
        self.srcu.read_unlock(self.epoch);
    }
}
