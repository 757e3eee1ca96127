//! A vCPU (`struct kvm_vcpu`) as the model's `KVM_RUN` sees it: the part ioregion dispatch
//! reads and writes ([`IoregionVcpu`]: identity, signals, the saved or claimed access) and the run
//! page (`run->exit_reason`, and the access the next `KVM_RUN` completes first).
//!
//! How an access to an ioregion is carried out, interrupted and resumed is the region layer's
//! ([`crate::region`]'s transaction); `KVM_RUN` itself is the VM's ([`crate::vm::Vm::kvm_run`]).

use crate::bus::GuestAccess;
use crate::sync::Mutex;
use crate::sync::atomic::{AtomicU32, Ordering};
use std::ops::Deref;

pub use crate::region::{IoregionVcpu, SavedIoregion, SavedTxn, Step};
pub use crate::trace::VcpuId;

/// `KVM_EXIT_INTR`, as `run->exit_reason` holds it.
pub const KVM_EXIT_INTR: u32 = 10;
/// `KVM_EXIT_MMIO`.
pub const KVM_EXIT_MMIO: u32 = 6;
/// `KVM_EXIT_IO`.
pub const KVM_EXIT_IO: u32 = 2;

/// A vCPU: what ioregion dispatch sees of it (reached through `Deref`: `vcpu.signal()`,
/// `vcpu.saved()`, ...) plus its run page.
#[derive(Debug)]
pub struct Vcpu {
    io: IoregionVcpu,
    exit_reason: AtomicU32,
    pending: Mutex<Option<GuestAccess>>,
}

impl Vcpu {
    /// vCPU `id` of VM `vm`, run by its own thread: a transfer or lock that cannot go on waits
    /// (under loom or shuttle, a scheduling point).
    pub fn threaded(vm: usize, id: usize) -> Self {
        Self::with_io(IoregionVcpu::new(vm, id, false))
    }

    /// vCPU `id` of VM `vm` in the sequential model: it never waits; what would wait marks it
    /// [blocked](IoregionVcpu::blocked) and the access ends there.
    pub fn sequential(vm: usize, id: usize) -> Self {
        Self::with_io(IoregionVcpu::new(vm, id, true))
    }

    fn with_io(io: IoregionVcpu) -> Self {
        Vcpu { io, exit_reason: AtomicU32::new(0), pending: Mutex::new(None) }
    }

    /// What ioregion dispatch sees of this vCPU (what the bus passes to a device's ops).
    pub fn ioregion(&self) -> &IoregionVcpu {
        &self.io
    }

    /// `run->exit_reason` in the page userspace maps: KVM writes it, and so can userspace.
    pub fn exit_reason(&self) -> u32 {
        self.exit_reason.load(Ordering::Acquire)
    }

    /// Writes `run->exit_reason` (KVM on an exit, or a VMM thread through its mapping).
    pub fn set_exit_reason(&self, reason: u32) {
        self.exit_reason.store(reason, Ordering::Release);
    }

    /// The access the next KVM_RUN completes first (`vcpu->arch.complete_userspace_io`), if any.
    pub fn pending(&self) -> Option<GuestAccess> {
        *self.pending.lock()
    }

    pub(crate) fn set_pending(&self, access: Option<GuestAccess>) {
        *self.pending.lock() = access;
    }
}

impl Deref for Vcpu {
    type Target = IoregionVcpu;

    fn deref(&self) -> &IoregionVcpu {
        &self.io
    }
}
