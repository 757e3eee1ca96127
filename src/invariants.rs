//! The invariant catalogue: each invariant has a stable id, a one-line statement and a check.
//!
//! Checks come in two kinds. *Event checks* fire where the modelled kernel does the forbidden
//! thing (a use after free is seen at the use, by [`Lifetime::check_use`]). *Structural checks*
//! look at a quiescent state (after every script operation, at the end of a scenario):
//! [`check_bus_array`](crate::bus::check_bus_array).
//!
//! ```
//! use ioregionfd_model::invariants::{CATALOGUE, by_id};
//! assert!(CATALOGUE.iter().any(|i| i.id == "bus"));
//! assert_eq!(by_id("lifetime").unwrap().id, "lifetime");
//! ```

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
