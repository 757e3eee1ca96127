//! `struct eventfd_ctx` (`fs/eventfd.c`): the counter behind an eventfd, which ioeventfds signal.

use crate::invariants::LIFETIME;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::trace::{Kref, Recorder};
use std::fmt;

/// `struct eventfd_ctx`: a counter, with a reference count (the file holds one, each ioeventfd
/// one). Labelled with the fd number it was created as.
#[derive(Debug)]
pub struct EventfdCtx {
    label: i32,
    count: AtomicU64,
    refs: Kref,
}

impl EventfdCtx {
    /// A new context with one reference (the file's).
    pub fn new(label: i32) -> Self {
        EventfdCtx { label, count: AtomicU64::new(0), refs: Kref::new(1) }
    }

    /// The fd number it was created as.
    pub fn label(&self) -> i32 {
        self.label
    }

    /// The counter (what a `read(2)` of the eventfd would return, without resetting it).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// `read(2)`: returns the counter and resets it.
    pub fn take(&self) -> u64 {
        self.count.swap(0, Ordering::AcqRel)
    }

    /// `eventfd_signal`: adds 1. Signalling a released context is a `lifetime` violation.
    pub fn signal(&self, rec: &Recorder) {
        if self.refs.get_count() <= 0 {
            rec.violation(&LIFETIME, format_args!("eventfd {} signalled after release", self.label));
        }
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    /// `eventfd_ctx_fdget`'s reference.
    pub fn get(&self, rec: &Recorder) {
        self.refs.get(rec, self);
    }

    /// `eventfd_ctx_put`.
    pub fn put(&self, rec: &Recorder) {
        self.refs.put(rec, self);
    }

    /// References held now.
    pub fn refs(&self) -> i64 {
        self.refs.get_count()
    }
}

impl fmt::Display for EventfdCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "eventfd {}", self.label)
    }
}
