//! The invariant catalogue: each invariant has a stable id, a one-line statement and a check.
//!
//! Checks come in two kinds. *Event checks* fire where the modelled kernel does the forbidden
//! thing (a use after free is seen at the use, by [`Lifetime::check_use`]). *Structural checks*
//! look at a quiescent state (after every script operation, at the end of a scenario):
//! [`check_bus_array`].
//!
//! ```
//! use ioregionfd_model::invariants::{CATALOGUE, by_id};
//! assert!(CATALOGUE.iter().any(|i| i.id == "bus"));
//! assert_eq!(by_id("lifetime").unwrap().id, "lifetime");
//! ```

use crate::sync::atomic::{AtomicU8, Ordering};
use crate::trace::Recorder;
use std::fmt;

/// One invariant of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invariant {
    /// Stable id, used in reports, expected-verdict tables and `violation ID:` lines.
    pub id: &'static str,
    /// One-line statement.
    pub statement: &'static str,
}

/// `bus`: every published bus array is sorted per `kvm_io_bus_cmp` (each entry compares `<= 0`
/// with the next), its `dev_count` is its number of entries and its `ioeventfd_count` is its
/// number of ioeventfd entries; a bus that once became NULL stays NULL.
pub const BUS: Invariant = Invariant {
    id: "bus",
    statement: "every bus array is sorted per kvm_io_bus_cmp and its dev_count and ioeventfd_count match its entries",
};

/// `lifetime`: nothing is used after it was destroyed or freed (devices, bus arrays, and later
/// regions, files and contexts); nothing is destroyed twice; no reference count rises from 0 or
/// falls below 0; no NULL dereference.
pub const LIFETIME: Invariant = Invariant {
    id: "lifetime",
    statement: "no use of a device, bus array, region, file or context after release; refcounts never rise from 0 or fall below 0; no NULL dereference",
};

/// `overlap`: no two ioregions of one VM on one bus share an address, and no ioregion shares an
/// address with an ioeventfd of that VM and bus (a size-0 ioregion or ioeventfd occupies the one
/// byte at its address).
pub const OVERLAP: Invariant = Invariant {
    id: "overlap",
    statement: "no two ioregions of one VM and bus overlap, nor an ioregion and an ioeventfd",
};

/// `route`: an access completes only with the response to its own command (across vCPUs, VMs
/// and buses). Checked with ghost tags: every command carries the tag of its access, a device
/// answers with the tag of the command it read, and the access that reads a response compares.
pub const ROUTE: Invariant =
    Invariant { id: "route", statement: "an access completes only with the response to its own command" };

/// `isolation`: no VM ever receives data produced for another VM's access.
pub const ISOLATION: Invariant =
    Invariant { id: "isolation", statement: "no VM receives data produced for another VM's access" };

/// `wire`: every message on the wire is 32 well-formed bytes of the design's format (reserved
/// bits zero, size and response bits right, offset within the region, the region's user_data).
pub const WIRE: Invariant = Invariant {
    id: "wire",
    statement: "every message on the wire is 32 well-formed bytes: reserved bits zero, size and resp bits right, offset within the region, user_data of the region",
};

/// `exclusive`: on one response channel (one context) at most one response-awaiting transaction
/// at a time, since the protocol has no tags. Checked where a vCPU takes a context another vCPU
/// still owns.
pub const EXCLUSIVE: Invariant = Invariant {
    id: "exclusive",
    statement: "on one response channel at most one response-awaiting transaction at a time",
};

/// `exactly-once`: every access is either handled by a device or exits to userspace, exactly
/// once: no lost command, no duplicate (a resend after a partial write counts), no access both.
/// Checked on a ghost ledger of the commands devices read and the outcome of each access.
pub const EXACTLY_ONCE: Invariant = Invariant {
    id: "exactly-once",
    statement: "every access is handled by a device or exits to userspace, exactly once: no lost command, no duplicate, no access both",
};

/// `order`: one vCPU's commands on one fd arrive in program order; posted writes are not
/// reordered. Checked by the device on the ghost tags of the commands it reads.
pub const ORDER: Invariant = Invariant {
    id: "order",
    statement: "one vCPU's commands on one fd arrive in program order; posted writes are not reordered",
};

/// `resume`: a resumed access continues the same transaction on the same region, or exits to
/// userspace with the complete access if that region is gone.
pub const RESUME: Invariant = Invariant {
    id: "resume",
    statement: "a resumed access continues the same transaction on the same region, or exits with the complete access if the region is gone",
};

/// `liveness`: no deadlock; a vCPU blocked on a device that has died or closed returns from
/// KVM_RUN; no vCPU's access ever waits for another vCPU to call KVM_RUN again (so a lock is
/// never held by a vCPU that left KVM_RUN and may not come back: its thread paused, or never
/// scheduled again, while its VM lives); no endless -EINTR loop. Deadlocks are what loom reports
/// as such; a vCPU that stops calling KVM_RUN is checked when it stops
/// ([`Kvm::check_parked`](crate::kvm::Kvm::check_parked)); the rest at the end of a scenario.
pub const LIVENESS: Invariant = Invariant {
    id: "liveness",
    statement: "no deadlock; a vCPU blocked on a dead or closed device returns from KVM_RUN; no vCPU's access waits for another vCPU to call KVM_RUN again (no lock held by a vCPU out of KVM_RUN); no endless -EINTR loop",
};

/// `no-leak`: after teardown every reference, context and region is gone.
pub const NO_LEAK: Invariant =
    Invariant { id: "no-leak", statement: "after teardown every reference, context and region is gone" };

/// Every invariant, in report order.
pub const CATALOGUE: &[Invariant] =
    &[ROUTE, ISOLATION, EXCLUSIVE, EXACTLY_ONCE, ORDER, WIRE, LIFETIME, NO_LEAK, RESUME, LIVENESS, OVERLAP, BUS];

/// The invariant with this id.
pub fn by_id(id: &str) -> Option<&'static Invariant> {
    CATALOGUE.iter().find(|i| i.id == id)
}

const LIVE: u8 = 0;
const DEAD: u8 = 1;

/// The lifetime of one modelled kernel object (a device, a bus array, ...): live until it is
/// destroyed or freed, dead afterwards.
///
/// The state is a facade atomic, so under loom checking it is a scheduling point: the checker
/// explores a writer freeing the object between a reader's dereference and its use.
///
/// ```
/// use ioregionfd_model::invariants::Lifetime;
/// use ioregionfd_model::trace::Recorder;
/// let rec = Recorder::new();
/// let life = Lifetime::new();
/// assert!(life.check_use(&rec, "bus array"));
/// life.end(&rec, "bus array");
/// assert!(!life.check_use(&rec, "bus array"));
/// assert_eq!(rec.violations()[0].invariant, "lifetime");
/// ```
#[derive(Debug)]
pub struct Lifetime(AtomicU8);

impl Default for Lifetime {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifetime {
    /// A live object.
    pub fn new() -> Self {
        Lifetime(AtomicU8::new(LIVE))
    }

    /// Whether the object is still live.
    #[track_caller]
    pub fn is_live(&self) -> bool {
        self.0.load(Ordering::Acquire) == LIVE
    }

    /// Ends the lifetime (destroy, free). Ending it twice is a `lifetime` violation.
    #[track_caller]
    pub fn end(&self, rec: &Recorder, what: impl fmt::Display) {
        if self.0.swap(DEAD, Ordering::AcqRel) == DEAD {
            rec.violation(&LIFETIME, format_args!("{what} destroyed or freed twice"));
        }
    }

    /// Checks a use of the object; a use after the end is a `lifetime` violation and returns false.
    #[track_caller]
    pub fn check_use(&self, rec: &Recorder, what: impl fmt::Display) -> bool {
        let live = self.is_live();
        if !live {
            rec.violation(&LIFETIME, format_args!("use of {what} after it was destroyed or freed"));
        }
        live
    }
}

pub use crate::bus::check_bus_array;

/// A kernel reference count (`struct kref`, a file's `f_count`) whose misuse is a `lifetime`
/// violation: a get when the count is 0, or a put below 0. As `refcount_t` does, a misused count
/// saturates: it never reaches 0 again, so the object is never released (a leak, not a free).
///
/// ```
/// use ioregionfd_model::invariants::Kref;
/// use ioregionfd_model::trace::Recorder;
/// let rec = Recorder::new();
/// let r = Kref::new(1);
/// r.get(&rec, "ctx");
/// assert!(!r.put(&rec, "ctx"));
/// assert!(r.put(&rec, "ctx")); // dropped to zero: release
/// assert!(rec.violations().is_empty());
/// r.get(&rec, "ctx"); // from 0: a violation, and the count saturates
/// assert_eq!(rec.violations()[0].invariant, "lifetime");
/// assert!(r.saturated());
/// assert!(!r.put(&rec, "ctx")); // never released again
/// ```
#[derive(Debug)]
pub struct Kref(crate::sync::atomic::AtomicI64);

impl Kref {
    /// A count starting at `initial` (`kref_init` is 1; rfc-v3's contexts start at 0).
    pub fn new(initial: i64) -> Self {
        Kref(crate::sync::atomic::AtomicI64::new(initial))
    }

    /// Current value.
    pub fn get_count(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// The value of a saturated count (`REFCOUNT_SATURATED`).
    pub const SATURATED: i64 = i32::MIN as i64 / 2;

    /// Whether the count saturated after a misuse.
    pub fn saturated(&self) -> bool {
        self.get_count() < 0
    }

    /// Takes a reference; from 0 it is a `lifetime` violation (`refcount_t: addition on 0;
    /// use-after-free`) and the count saturates.
    #[track_caller]
    pub fn get(&self, rec: &Recorder, what: impl fmt::Display) {
        let before = self.0.fetch_add(1, Ordering::AcqRel);
        if before == 0 {
            rec.violation(&LIFETIME, format_args!("reference taken on {what} whose count is 0"));
            self.0.store(Self::SATURATED, Ordering::Release);
        } else if before < 0 {
            self.0.store(Self::SATURATED, Ordering::Release);
        }
    }

    /// `kref_get_unless_zero`: takes a reference unless the count is 0 (the object is being
    /// released); returns whether it did. What a lookup table whose entries may be in their last
    /// put uses.
    #[track_caller]
    pub fn get_unless_zero(&self) -> bool {
        let mut now = self.0.load(Ordering::Acquire);
        loop {
            if now == 0 {
                return false;
            }
            match self.0.compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => now = seen,
            }
        }
    }

    /// Drops a reference; returns true when the count reached 0 (the caller releases the object).
    /// Below 0 is a `lifetime` violation (`refcount_t: underflow; use-after-free`) and the count
    /// saturates; a saturated count stays saturated.
    #[track_caller]
    pub fn put(&self, rec: &Recorder, what: impl fmt::Display) -> bool {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        if before == 0 {
            rec.violation(&LIFETIME, format_args!("reference put on {what} whose count is already 0"));
        }
        if before <= 0 {
            self.0.store(Self::SATURATED, Ordering::Release);
        }
        before == 1
    }
}
