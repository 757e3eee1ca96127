//! The design presets: `seed` (the Nov 2020 `KVM_CREATE_IOREGIONFD` document), `rfc-v3` (the code
//! posted in Feb 2021, defects included) and `proposed` (ours), each a set of named [`Knobs`].
//!
//! `seed` and `rfc-v3` reproduce their sources exactly, including behaviour that looks wrong;
//! `proposed` departs from them knob by knob, each departure justified in `docs/design.md` by the
//! counterexample that motivates it.
//!
//! ```
//! use ioregionfd_model::design::{ContextRule, Design};
//! assert_eq!(Design::from_name("rfc-v3"), Some(Design::RfcV3));
//! assert_eq!(Design::RfcV3.knobs().context, ContextRule::FirstSameInoOnVmBus);
//! assert_eq!(Design::RfcV3.knobs().context_kref_init, 0);
//! assert_eq!(Design::Proposed.name(), "proposed");
//! ```

use crate::wire::WireFormat;
use std::fmt;

/// A design preset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Design {
    /// The Nov 2020 API document (`KVM_CREATE_IOREGIONFD`).
    Seed,
    /// The RFC v3 code (Feb 2021), reproduced as posted.
    RfcV3,
    /// Ours: every invariant of the catalogue holds.
    #[default]
    Proposed,
}

impl Design {
    /// Every preset.
    pub const ALL: [Design; 3] = [Design::Seed, Design::RfcV3, Design::Proposed];

    /// Name as the CLI writes it.
    pub fn name(self) -> &'static str {
        match self {
            Design::Seed => "seed",
            Design::RfcV3 => "rfc-v3",
            Design::Proposed => "proposed",
        }
    }

    /// The preset with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Design> {
        Design::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The preset's knobs.
    pub fn knobs(self) -> Knobs {
        match self {
            Design::Seed => Knobs {
                design: self,
                transport: Transport::IoregionfdObject,
                wire: WireFormat::Seed,
                context: ContextRule::PerIoregionfd,
                context_kref_init: 1,
                collision: CollisionRule::SplitOnly,
                ioeventfd_checks_ioregions: false,
                size_zero: SizeZero::Refused,
                sizes_fit_bus_len: false,
                short_transfer: ShortTransfer::Error,
                refuses_nonblocking_fds: false,
                on_signal: SignalRule::DeferEntry,
                on_resume: ResumeRule::SameTransaction,
                forced_eintr_reads_run_page: false,
                on_last_close: LastClose::DropRegions,
                waits_outside_srcu: false,
                send_lock: SendLock::OwnSide,
                failure_exit: false,
                errors_beat_signals: false,
                on_vcpu_destroy: VcpuDestroy::KeepsTransaction,
                nr_iobus_devs: Some(crate::bus::NR_IOBUS_DEVS),
                unregister_destroys: true,
            },
            Design::RfcV3 => Knobs {
                design: self,
                transport: Transport::UserFds,
                wire: WireFormat::V3,
                context: ContextRule::FirstSameInoOnVmBus,
                context_kref_init: 0,
                collision: CollisionRule::V3Overlap,
                ioeventfd_checks_ioregions: true,
                size_zero: SizeZero::PostedOnFastMmioToo,
                sizes_fit_bus_len: false,
                short_transfer: ShortTransfer::Error,
                refuses_nonblocking_fds: false,
                on_signal: SignalRule::SaveAddressAndStep,
                on_resume: ResumeRule::RedispatchAddress,
                forced_eintr_reads_run_page: true,
                on_last_close: LastClose::KeepRegions,
                waits_outside_srcu: false,
                send_lock: SendLock::OwnSide,
                failure_exit: false,
                errors_beat_signals: false,
                on_vcpu_destroy: VcpuDestroy::KeepsTransaction,
                nr_iobus_devs: Some(crate::bus::NR_IOBUS_DEVS),
                unregister_destroys: false,
            },
            Design::Proposed => Knobs {
                design: self,
                transport: Transport::UserFds,
                wire: WireFormat::V3,
                context: ContextRule::PerInode,
                context_kref_init: 1,
                collision: CollisionRule::Exact,
                ioeventfd_checks_ioregions: true,
                size_zero: SizeZero::Doorbell,
                sizes_fit_bus_len: true,
                short_transfer: ShortTransfer::Continue,
                refuses_nonblocking_fds: true,
                on_signal: SignalRule::SaveTransaction,
                on_resume: ResumeRule::SameTransaction,
                forced_eintr_reads_run_page: false,
                on_last_close: LastClose::KeepRegions,
                waits_outside_srcu: true,
                send_lock: SendLock::OwnSide,
                failure_exit: true,
                errors_beat_signals: true,
                on_vcpu_destroy: VcpuDestroy::ReleaseAndDrain,
                nr_iobus_devs: Some(crate::bus::NR_IOBUS_DEVS),
                unregister_destroys: true,
            },
        }
    }
}

impl fmt::Display for Design {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How userspace gives KVM the file descriptor(s) of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// seed: a kernel object of its own type from `KVM_CREATE_IOREGIONFD`, usable by several VMs;
    /// the device reads commands from it and writes responses to it.
    IoregionfdObject,
    /// rfc-v3, proposed: ordinary fds (socketpair, pipes, FIFOs): KVM writes commands to
    /// `write_fd` and reads responses from `read_fd`.
    UserFds,
}

/// Where the serialization context of a response channel lives and how a region finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextRule {
    /// seed: the ioregionfd object is the context: one command/response in flight per ioregionfd,
    /// across every VM using it.
    PerIoregionfd,
    /// rfc-v3: walk this VM's regions on this bus; the first whose context's read file has the
    /// same inode *number* (`i_ino` only, no superblock) shares its context; a region without a
    /// context (size 0) on that list is dereferenced all the same; else a new zeroed context.
    FirstSameInoOnVmBus,
    /// proposed: one context per response channel, keyed by the read file's inode (superblock
    /// and number: a FIFO opened twice is one channel), shared by every VM and bus, kept in one
    /// table.
    PerInode,
}

/// Which registrations collide with existing ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CollisionRule {
    /// seed: only a region that would split an existing one (lie strictly inside it) is refused
    /// (`EINVAL`); the same (address, size) modifies; other overlaps are accepted.
    SplitOnly,
    /// rfc-v3: `end = start + size - 1`, overlap = `!(end1 < start2 || start1 >= end2)`, size 0
    /// counted as 8, against this VM's ioregions and ioeventfds on the bus (`EEXIST`).
    V3Overlap,
    /// proposed: real interval overlap (size 0 is the one byte at its address), against
    /// ioregions and ioeventfds (`EEXIST`).
    Exact,
}

/// What a region of size 0 is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SizeZero {
    /// seed: not part of the document (`EINVAL`).
    Refused,
    /// rfc-v3: allowed with posted writes only; an MMIO one is registered on FAST_MMIO too (a
    /// second region with its own file references); a read sends its command and reads no
    /// response.
    PostedOnFastMmioToo,
    /// proposed: as rfc-v3, but a read exits to userspace without sending anything (nobody
    /// answers a doorbell), and the region serializes its writes on the send side of its write
    /// file's inode's context (as every proposed sender does; knob `send_lock`).
    Doorbell,
}

/// What a command or response that moves fewer than 32 bytes does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShortTransfer {
    /// seed, rfc-v3: an error (a short count: `EIO`; `EAGAIN`: `EINVAL`), the access exits.
    Error,
    /// proposed: continue from the byte reached until all 32 have moved.
    Continue,
}

/// What a signal does to a vCPU waiting in a dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalRule {
    /// seed: KVM_RUN returns `-EINTR`; the guest is not re-entered until KVM_RUN is called again
    /// and the response has been written.
    DeferEntry,
    /// rfc-v3: save {address, step (SEND_CMD or GET_REPLY), direction, PIO index} but not the
    /// region or file; keep the context locked; drop bytes already read; `-EINTR`.
    SaveAddressAndStep,
    /// proposed: save the region, its context, the command and the bytes moved so far; keep the
    /// transaction owning the context; `-EINTR`.
    SaveTransaction,
}

/// What the next KVM_RUN does with an interrupted access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResumeRule {
    /// rfc-v3: dispatch the saved address again and jump to the saved step on whatever region is
    /// there now, without taking the lock again; if no device takes it, make up an exit.
    RedispatchAddress,
    /// seed, proposed: continue the same transaction on the same region; if that region is gone,
    /// exit to userspace with the complete access.
    SameTransaction,
}

/// What closing the last userspace fd of a region's file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LastClose {
    /// seed: every region registered with the ioregionfd, in every VM, is dropped.
    DropRegions,
    /// rfc-v3, proposed: nothing: KVM holds its own file references until DEASSIGN or VM
    /// destruction.
    KeepRegions,
}

/// Which lock of a command channel's context a sender takes ([`Knobs::send_lock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SendLock {
    /// The send side, held only around SEND_CMD (proposed; designs without per-inode contexts
    /// never take a command channel's context).
    OwnSide,
    /// The response side, as a transaction does: the defect variant.
    ResponseSide,
}

/// What destroying a vCPU does with an access it left interrupted (it never runs KVM_RUN again;
/// KVM destroys vCPUs with their VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VcpuDestroy {
    /// seed, rfc-v3: nothing is said or done: a saved transaction keeps its context (and, for
    /// seed, its references) for ever.
    KeepsTransaction,
    /// The defect variant: the context is released, but the response the device still owes for
    /// the abandoned command stays on the channel for the next transaction to read.
    ReleaseContext,
    /// proposed: the context is released with the abandoned response recorded as owed; the next
    /// transaction on the channel first reads and discards it (or stops owing it at end of file).
    ReleaseAndDrain,
}

/// The named knobs of a design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Knobs {
    /// The preset these knobs belong to.
    pub design: Design,
    /// How userspace gives KVM its fds.
    pub transport: Transport,
    /// The wire format.
    pub wire: WireFormat,
    /// Where the serialization context lives and how it is found.
    pub context: ContextRule,
    /// The reference count a new context starts with before the region's `kref_get` (rfc-v3 has
    /// no `kref_init`: 0, so the first get is a get from zero).
    pub context_kref_init: i64,
    /// The collision rule of `KVM_SET_IOREGION`.
    pub collision: CollisionRule,
    /// Whether `KVM_IOEVENTFD` also refuses an ioeventfd that overlaps an ioregion (`EEXIST`).
    pub ioeventfd_checks_ioregions: bool,
    /// What a size-0 region is.
    pub size_zero: SizeZero,
    /// Whether `KVM_SET_IOREGION` and `KVM_REGISTER_COALESCED_MMIO` refuse a size above
    /// `INT_MAX` (`EINVAL`): the bus keeps an `int` len, so a larger size is truncated (an ioregion
    /// answers another range than it registered) or negative (the array loses its order).
    pub sizes_fit_bus_len: bool,
    /// What a short command or response does.
    pub short_transfer: ShortTransfer,
    /// Whether `KVM_SET_IOREGION` refuses a read or write file opened `O_NONBLOCK` (`EINVAL`), as
    /// RFC v2 did: KVM's transfers would get `EAGAIN` in the middle of a message; and a read file
    /// and write file that are the two ends of one pipe or FIFO (KVM would read its own commands).
    pub refuses_nonblocking_fds: bool,
    /// What a signal does while a vCPU waits.
    pub on_signal: SignalRule,
    /// What the next KVM_RUN does with an interrupted access.
    pub on_resume: ResumeRule,
    /// Whether KVM_RUN forces `-EINTR` by reading `run->exit_reason` from the page userspace maps
    /// (and can write).
    pub forced_eintr_reads_run_page: bool,
    /// What closing the last userspace fd does.
    pub on_last_close: LastClose,
    /// Whether a vCPU waits for the context, the send and the response outside its SRCU read
    /// section: inside it the ioregion only claims the access (references on the region, its
    /// context and files), so `synchronize_srcu` in a concurrent unregister never waits for a
    /// device (which may be the very thread unregistering).
    pub waits_outside_srcu: bool,
    /// Which lock of a command channel's context (proposed, per-inode contexts) a sender takes:
    /// the context's own send side, or its response side (a defect: a transaction holding its
    /// response channel then waits for another channel's response side, so two regions wired
    /// crosswise deadlock; `cross-wired-regions`).
    pub send_lock: SendLock,
    /// Whether an access whose command was sent but whose response never came (the device closed
    /// or died) exits with `KVM_EXIT_IOREGIONFD_FAILURE` ("the device may have executed it")
    /// instead of a plain `KVM_EXIT_MMIO`/`KVM_EXIT_IO` that invites userspace to emulate it again.
    pub failure_exit: bool,
    /// Whether a transfer that fails (`EPIPE`, a closed end) ends the access even when a signal
    /// is pending. Otherwise the pending signal turns the failure into `-EINTR` and a retry on
    /// the next KVM_RUN (rfc-v3 checks `signal_pending()` first for any short count); with the
    /// `SIGPIPE` that the failed write itself raised, the retry fails the same way, forever
    /// (`device-dies-sigpipe-handled`).
    pub errors_beat_signals: bool,
    /// What destroying a vCPU does with the access it left interrupted
    /// (`vcpu-never-resumes`).
    pub on_vcpu_destroy: VcpuDestroy,
    /// The NR_IOBUS_DEVS check (`None`: not enforced; rfc-v3 enforces it only without kmemcg,
    /// which is a setting of the host).
    pub nr_iobus_devs: Option<i32>,
    /// Whether `kvm_io_bus_unregister_dev` destroys the device (v6.5+, which seed and proposed
    /// assume) or leaves that to the caller (v5.11, which rfc-v3 was written against: it releases
    /// the region itself after unregistering).
    pub unregister_destroys: bool,
}
