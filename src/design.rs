//! The design presets: `seed` (the Nov 2020 `KVM_CREATE_IOREGIONFD` document), `rfc-v3` (the code
//! posted in Feb 2021, defects included) and `proposed` (ours), each a set of named [`Knobs`].
//!
//! `seed` and `rfc-v3` reproduce their sources exactly, including behaviour that looks wrong;
//! `proposed` departs from them knob by knob, each departure justified in `docs/design.md` by the
//! counterexample that motivates it.
//!
//! ```
//! use ioregionfd_model::design::{ContextScope, Design};
//! assert_eq!(Design::from_name("rfc-v3"), Some(Design::RfcV3));
//! assert_eq!(Design::RfcV3.knobs().context_scope, ContextScope::VmBusList);
//! assert_eq!(Design::RfcV3.knobs().context_kref_init, 0);
//! assert_eq!(Design::Proposed.name(), "proposed");
//! ```

use crate::wire::WireFormat;
use std::fmt;

/// `NR_IOBUS_DEVS`: the most non-ioeventfd entries one bus accepts.
pub const NR_IOBUS_DEVS: i32 = 1000;

/// How the bus reclaims what it replaced; the defect variant exists to show that the `lifetime`
/// check (and loom) catch a destroy that does not wait for readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Reclaim {
    /// The kernel: `call_srcu` after register, `synchronize_srcu` before destroying in unregister.
    #[default]
    AfterReaders,
    /// Defect: unregister destroys the device and frees the old array without waiting for readers.
    Immediately,
}

/// Where `kvm_io_bus_register_dev` puts a new entry; the defect variant exists to show that the
/// `bus` check catches an array that is not sorted per `kvm_io_bus_cmp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Insertion {
    /// The kernel (since "kvm: use insert sort in kvm_io_bus_register_dev function"): before the
    /// first entry that compares greater.
    #[default]
    Sorted,
    /// Defect: append at the end without sorting.
    AppendUnsorted,
}

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
                region_fds: RegionFds::IoregionfdObject,
                wire: WireFormat::Seed,
                context_scope: ContextScope::PerIoregionfd,
                context_key: ContextKey::Inode,
                context_walk_derefs_null: false,
                read_file_ref: ReadFileRef::OwnFile,
                serialize_senders: false,
                context_get_on_create: false,
                context_kref_init: 1,
                collision: CollisionRule::SplitOnly,
                ioeventfd_checks_ioregions: false,
                size_zero: SizeZero::Refused,
                sizes_fit_bus_len: false,
                short_transfer: ShortTransfer::Error,
                refuses_nonblocking_fds: false,
                checks_file_modes: false,
                on_signal: SignalRule::DeferEntry,
                on_resume: ResumeRule::SameTransaction,
                forced_eintr_reads_run_page: false,
                on_last_close: LastClose::DropRegions,
                waits_outside_srcu: false,
                send_lock: SendLock::OwnSide,
                failure_exit: false,
                errors_beat_signals: false,
                on_vcpu_destroy: VcpuDestroy::KeepsTransaction,
                interrupted_reply: InterruptedReply::OwnerKeepsContext,
                context_get_unless_zero: false,
                nr_iobus_devs: Some(NR_IOBUS_DEVS),
                unregister_destroys: true,
                reclaim: Reclaim::AfterReaders,
                insertion: Insertion::Sorted,
            },
            Design::RfcV3 => Knobs {
                design: self,
                region_fds: RegionFds::UserFds,
                wire: WireFormat::V3,
                context_scope: ContextScope::VmBusList,
                context_key: ContextKey::InodeNumber,
                context_walk_derefs_null: true,
                read_file_ref: ReadFileRef::CreatorsFile,
                serialize_senders: false,
                context_get_on_create: true,
                context_kref_init: 0,
                collision: CollisionRule::V3Overlap,
                ioeventfd_checks_ioregions: true,
                size_zero: SizeZero::PostedOnFastMmioToo,
                sizes_fit_bus_len: false,
                short_transfer: ShortTransfer::Error,
                refuses_nonblocking_fds: false,
                checks_file_modes: false,
                on_signal: SignalRule::SaveAddressAndStep,
                on_resume: ResumeRule::RedispatchAddress,
                forced_eintr_reads_run_page: true,
                on_last_close: LastClose::KeepRegions,
                waits_outside_srcu: false,
                send_lock: SendLock::OwnSide,
                failure_exit: false,
                errors_beat_signals: false,
                on_vcpu_destroy: VcpuDestroy::KeepsTransaction,
                interrupted_reply: InterruptedReply::OwnerKeepsContext,
                context_get_unless_zero: false,
                nr_iobus_devs: Some(NR_IOBUS_DEVS),
                unregister_destroys: false,
                reclaim: Reclaim::AfterReaders,
                insertion: Insertion::Sorted,
            },
            Design::Proposed => Knobs {
                design: self,
                region_fds: RegionFds::UserFds,
                wire: WireFormat::V3,
                context_scope: ContextScope::HostTable,
                context_key: ContextKey::Inode,
                context_walk_derefs_null: false,
                read_file_ref: ReadFileRef::OwnFile,
                serialize_senders: true,
                context_get_on_create: false,
                context_kref_init: 1,
                collision: CollisionRule::Exact,
                ioeventfd_checks_ioregions: true,
                size_zero: SizeZero::Doorbell,
                sizes_fit_bus_len: true,
                short_transfer: ShortTransfer::Continue,
                refuses_nonblocking_fds: true,
                checks_file_modes: true,
                on_signal: SignalRule::SaveTransaction,
                on_resume: ResumeRule::SameTransaction,
                forced_eintr_reads_run_page: false,
                on_last_close: LastClose::KeepRegions,
                waits_outside_srcu: true,
                send_lock: SendLock::OwnSide,
                failure_exit: true,
                errors_beat_signals: true,
                on_vcpu_destroy: VcpuDestroy::ReleaseAndDrain,
                interrupted_reply: InterruptedReply::NextOwnerCollects,
                context_get_unless_zero: true,
                nr_iobus_devs: Some(NR_IOBUS_DEVS),
                unregister_destroys: true,
                reclaim: Reclaim::AfterReaders,
                insertion: Insertion::Sorted,
            },
        }
    }
}

impl fmt::Display for Design {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How userspace gives KVM the file descriptor(s) of a region (the fds themselves are of a
/// [`TransportKind`](crate::wire::TransportKind)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegionFds {
    /// seed: a kernel object of its own type from `KVM_CREATE_IOREGIONFD`, usable by several VMs;
    /// the device reads commands from it and writes responses to it.
    IoregionfdObject,
    /// rfc-v3, proposed: ordinary fds (socketpair, pipes, FIFOs): KVM writes commands to
    /// `write_fd` and reads responses from `read_fd`.
    UserFds,
}

/// Where the serialization context of a response channel lives and how a region finds it
/// ([`Knobs::context_scope`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextScope {
    /// seed: the ioregionfd object is the context: one command/response in flight per ioregionfd,
    /// across every VM using it.
    PerIoregionfd,
    /// rfc-v3 (`ioregion_get_ctx`): walk this VM's regions on this bus; the first whose context
    /// matches the read file ([`Knobs::context_key`]) shares it; else a new context. Two VMs, or
    /// two buses, on one fd get two contexts.
    VmBusList,
    /// proposed: one host-wide table of contexts keyed by the read file, shared by every VM and
    /// bus.
    HostTable,
}

/// What identifies a response channel when contexts are looked up ([`Knobs::context_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContextKey {
    /// rfc-v3: the inode number (`i_ino`) only, without the superblock: two filesystems can
    /// reuse a number, so two channels can share a context.
    InodeNumber,
    /// The inode (superblock and number): a FIFO opened twice is one channel.
    Inode,
}

/// Which read file a region holds a reference on, and puts at release ([`Knobs::read_file_ref`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadFileRef {
    /// rfc-v3: the context keeps the read file of the region that created it (`ctx->rf`), and
    /// every region's release puts that file; a region that shares an existing context stores
    /// its own reference nowhere (never put).
    CreatorsFile,
    /// seed, proposed: each region keeps and puts its own read file (seed has none).
    OwnFile,
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

/// What an access interrupted while it waits for its response (nothing of the response read yet)
/// does with the response side of its context ([`Knobs::interrupted_reply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptedReply {
    /// seed, rfc-v3, and the defect variant of proposed: the saved transaction keeps owning the
    /// response side until its vCPU runs KVM_RUN again. A vCPU that never does (its thread paused
    /// for good while the VM lives) blocks every later access on that channel (`parked-vcpu`).
    OwnerKeepsContext,
    /// proposed: the interrupted transaction gives the response side up and leaves a slot in the
    /// context's queue of owed responses; whoever owns the response side next first reads each
    /// owed response (in command order) into its slot, and the interrupted transaction completes
    /// from its slot on its next KVM_RUN (or, if nobody collected it yet, takes the response side
    /// again and collects it itself). No access waits for another vCPU to run KVM_RUN again.
    NextOwnerCollects,
}

/// The named knobs of a design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Knobs {
    /// The preset these knobs belong to.
    pub design: Design,
    /// How userspace gives KVM its fds.
    pub region_fds: RegionFds,
    /// The wire format.
    pub wire: WireFormat,
    /// Where the serialization context lives and how it is found.
    pub context_scope: ContextScope,
    /// What identifies a response channel in a context lookup.
    pub context_key: ContextKey,
    /// rfc-v3: the walk of this VM's regions reads the context of every region up to a match,
    /// including the NULL context of a size-0 region (a NULL dereference: `lifetime`, and the
    /// ioctl fails with `EFAULT` where the kernel would oops). Otherwise such regions are passed
    /// over.
    pub context_walk_derefs_null: bool,
    /// Which read file a region holds and puts at release.
    pub read_file_ref: ReadFileRef,
    /// proposed: every writer of a command channel is serialized on the context of the write
    /// file's inode (its send side, or the side [`Knobs::send_lock`] says). Otherwise writers
    /// of one channel are not serialized with each other at all.
    pub serialize_senders: bool,
    /// rfc-v3: a new context gets a `kref_get` after it is made (with `context_kref_init` 0, a
    /// get from 0). Otherwise the count it starts with is the creating region's reference.
    pub context_get_on_create: bool,
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
    /// Whether `KVM_SET_IOREGION` refuses a read file not open for reading or a write file not
    /// open for writing (`EBADF`). Without it the access fails at its first transfer, and in
    /// Linux `kernel_read`/`kernel_write` on such a file is a `WARN` (found by the differential
    /// against the kernel series).
    pub checks_file_modes: bool,
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
    /// What an access interrupted while it waits for its response does with the response side of
    /// its context (`parked-vcpu`): keep it until the vCPU runs KVM_RUN again, or hand it on.
    pub interrupted_reply: InterruptedReply,
    /// Whether a lookup in the host-wide context table (proposed's per-inode contexts) takes its
    /// reference with `kref_get_unless_zero`, so that a context in its last put is passed over
    /// and a new one made. A plain `kref_get` can meet a context whose last reference a vCPU's
    /// claim is dropping at that moment: a get from 0 (`lifetime`; found by the generated
    /// scenarios, `reregister-races-last-put`).
    pub context_get_unless_zero: bool,
    /// The NR_IOBUS_DEVS check (`None`: not enforced; rfc-v3 enforces it only without kmemcg,
    /// which is a setting of the host).
    pub nr_iobus_devs: Option<i32>,
    /// Whether `kvm_io_bus_unregister_dev` destroys the device (v6.5+, which seed and proposed
    /// assume) or leaves that to the caller (v5.11, which rfc-v3 was written against: it releases
    /// the region itself after unregistering).
    pub unregister_destroys: bool,
    /// How the bus reclaims replaced arrays and unregistered devices (every preset: after SRCU
    /// readers, as the kernel does; `immediately` is the defect variant of the bus scenarios).
    pub reclaim: Reclaim,
    /// Where `kvm_io_bus_register_dev` puts a new entry (every preset: sorted; `append` is the
    /// defect variant that shows the `bus` check firing).
    pub insertion: Insertion,
}

/// A knob value as `--knob NAME=VALUE` and scenario rows write it.
trait KnobValue: Copy + PartialEq + Sized + 'static {
    /// Every value with its name.
    const VALUES: &'static [(&'static str, Self)];
}

macro_rules! knob_values {
    ($t:ty: $($name:literal => $v:expr),+ $(,)?) => {
        impl KnobValue for $t {
            const VALUES: &'static [(&'static str, Self)] = &[$(($name, $v)),+];
        }
    };
}

knob_values!(bool: "true" => true, "false" => false);
knob_values!(RegionFds: "ioregionfd-object" => RegionFds::IoregionfdObject, "user-fds" => RegionFds::UserFds);
knob_values!(WireFormat: "seed" => WireFormat::Seed, "v3" => WireFormat::V3);
knob_values!(ContextScope:
    "per-ioregionfd" => ContextScope::PerIoregionfd,
    "vm-bus-list" => ContextScope::VmBusList,
    "host-table" => ContextScope::HostTable);
knob_values!(ContextKey: "inode-number" => ContextKey::InodeNumber, "inode" => ContextKey::Inode);
knob_values!(ReadFileRef: "creators-file" => ReadFileRef::CreatorsFile, "own-file" => ReadFileRef::OwnFile);
knob_values!(CollisionRule:
    "split-only" => CollisionRule::SplitOnly, "v3-overlap" => CollisionRule::V3Overlap, "exact" => CollisionRule::Exact);
knob_values!(SizeZero:
    "refused" => SizeZero::Refused,
    "posted-on-fast-mmio-too" => SizeZero::PostedOnFastMmioToo,
    "doorbell" => SizeZero::Doorbell);
knob_values!(ShortTransfer: "error" => ShortTransfer::Error, "continue" => ShortTransfer::Continue);
knob_values!(SignalRule:
    "defer-entry" => SignalRule::DeferEntry,
    "save-address-and-step" => SignalRule::SaveAddressAndStep,
    "save-transaction" => SignalRule::SaveTransaction);
knob_values!(ResumeRule:
    "redispatch-address" => ResumeRule::RedispatchAddress, "same-transaction" => ResumeRule::SameTransaction);
knob_values!(LastClose: "drop-regions" => LastClose::DropRegions, "keep-regions" => LastClose::KeepRegions);
knob_values!(SendLock: "own-side" => SendLock::OwnSide, "response-side" => SendLock::ResponseSide);
knob_values!(VcpuDestroy:
    "keeps-transaction" => VcpuDestroy::KeepsTransaction,
    "release-context" => VcpuDestroy::ReleaseContext,
    "release-and-drain" => VcpuDestroy::ReleaseAndDrain);
knob_values!(InterruptedReply:
    "owner-keeps-context" => InterruptedReply::OwnerKeepsContext,
    "next-owner-collects" => InterruptedReply::NextOwnerCollects);
knob_values!(Reclaim: "after-readers" => Reclaim::AfterReaders, "immediately" => Reclaim::Immediately);
knob_values!(Insertion: "sorted" => Insertion::Sorted, "append" => Insertion::AppendUnsorted);

fn value_name<T: KnobValue>(v: T) -> String {
    T::VALUES.iter().find(|(_, x)| *x == v).map_or("?", |(n, _)| n).to_string()
}

fn value_names<T: KnobValue>() -> Vec<String> {
    T::VALUES.iter().map(|(n, _)| n.to_string()).collect()
}

fn parse_value<T: KnobValue>(text: &str) -> Result<T, String> {
    T::VALUES.iter().find(|(n, _)| *n == text).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<&str> = T::VALUES.iter().map(|(n, _)| *n).collect();
        format!("`{text}` is not one of {}", names.join(", "))
    })
}

/// One knob a reviewer can turn: its name, what it decides, its values, and how to read and set
/// it on a [`Knobs`].
pub struct KnobDef {
    /// The name (`--knob NAME=VALUE`, scenario rows).
    pub name: &'static str,
    /// What it decides, in one line.
    pub doc: &'static str,
    /// Its values (a number knob says what numbers it takes).
    pub values: fn() -> Vec<String>,
    /// Its value in `k`.
    pub get: fn(&Knobs) -> String,
    /// Sets it in `k` from its written value.
    pub set: fn(&mut Knobs, &str) -> Result<(), String>,
}

macro_rules! enum_knob {
    ($field:ident, $t:ty, $doc:literal) => {
        KnobDef {
            name: stringify!($field),
            doc: $doc,
            values: value_names::<$t>,
            get: |k| value_name(k.$field),
            set: |k, v| {
                k.$field = parse_value::<$t>(v)?;
                Ok(())
            },
        }
    };
}

/// Every knob, in the order `ioregionfd-model knobs` lists them.
pub const KNOBS: &[KnobDef] = &[
    enum_knob!(region_fds, RegionFds, "how userspace gives KVM a region's fds"),
    enum_knob!(wire, WireFormat, "the wire format of commands and responses"),
    enum_knob!(
        context_scope,
        ContextScope,
        "where a response channel's serialization context lives and how a region finds it"
    ),
    enum_knob!(context_key, ContextKey, "what identifies a response channel in a context lookup"),
    enum_knob!(
        context_walk_derefs_null,
        bool,
        "whether the walk of the VM's regions dereferences a size-0 region's NULL context"
    ),
    enum_knob!(read_file_ref, ReadFileRef, "which read file a region holds and puts at release"),
    enum_knob!(
        serialize_senders,
        bool,
        "whether the writers of one command channel are serialized (send side of its context)"
    ),
    enum_knob!(context_get_on_create, bool, "whether a new context gets a kref_get after it is made"),
    KnobDef {
        name: "context_kref_init",
        doc: "the reference count a new context starts with (rfc-v3 has no kref_init: 0)",
        values: || vec!["a number".to_string()],
        get: |k| k.context_kref_init.to_string(),
        set: |k, v| {
            k.context_kref_init = v.parse().map_err(|_| format!("`{v}` is not a number"))?;
            Ok(())
        },
    },
    enum_knob!(collision, CollisionRule, "which registrations collide with existing ones"),
    enum_knob!(ioeventfd_checks_ioregions, bool, "whether KVM_IOEVENTFD refuses an ioeventfd overlapping an ioregion"),
    enum_knob!(size_zero, SizeZero, "what a region of size 0 is"),
    enum_knob!(sizes_fit_bus_len, bool, "whether sizes above INT_MAX are refused (ioregions and coalesced zones)"),
    enum_knob!(short_transfer, ShortTransfer, "what a command or response moved in part does"),
    enum_knob!(refuses_nonblocking_fds, bool, "whether O_NONBLOCK files and a looped pipe are refused"),
    enum_knob!(
        checks_file_modes,
        bool,
        "whether a read file not open for reading or a write file not open for writing is refused"
    ),
    enum_knob!(on_signal, SignalRule, "what a signal does to a vCPU waiting in a dispatch"),
    enum_knob!(on_resume, ResumeRule, "what the next KVM_RUN does with an interrupted access"),
    enum_knob!(forced_eintr_reads_run_page, bool, "whether KVM_RUN forces -EINTR from run->exit_reason"),
    enum_knob!(on_last_close, LastClose, "what closing a region file's last userspace fd does"),
    enum_knob!(waits_outside_srcu, bool, "whether a vCPU waits for the device outside its SRCU read section"),
    enum_knob!(send_lock, SendLock, "which side of a command channel's context a sender takes"),
    enum_knob!(failure_exit, bool, "whether a sent command with no response exits with KVM_EXIT_IOREGIONFD_FAILURE"),
    enum_knob!(errors_beat_signals, bool, "whether a failed transfer ends the access even with a signal pending"),
    enum_knob!(on_vcpu_destroy, VcpuDestroy, "what destroying a vCPU does with the access it left interrupted"),
    enum_knob!(
        interrupted_reply,
        InterruptedReply,
        "who reads the response of an access interrupted while it waits for it"
    ),
    enum_knob!(context_get_unless_zero, bool, "whether the context-table lookup uses kref_get_unless_zero"),
    KnobDef {
        name: "nr_iobus_devs",
        doc: "the NR_IOBUS_DEVS limit of a bus (none: not enforced)",
        values: || vec!["a number".to_string(), "none".to_string()],
        get: |k| k.nr_iobus_devs.map_or_else(|| "none".to_string(), |n| n.to_string()),
        set: |k, v| {
            k.nr_iobus_devs = match v {
                "none" => None,
                n => Some(n.parse().map_err(|_| format!("`{n}` is not a number or `none`"))?),
            };
            Ok(())
        },
    },
    enum_knob!(unregister_destroys, bool, "whether kvm_io_bus_unregister_dev destroys the device (v6.5+)"),
    enum_knob!(reclaim, Reclaim, "how the bus reclaims replaced arrays and unregistered devices"),
    enum_knob!(insertion, Insertion, "where a new bus entry goes"),
];

impl Knobs {
    /// Sets knob `name` from its written value.
    ///
    /// ```
    /// use ioregionfd_model::design::{Design, SendLock};
    /// let mut k = Design::Proposed.knobs();
    /// k.set("send_lock", "response-side").unwrap();
    /// assert_eq!(k.send_lock, SendLock::ResponseSide);
    /// assert!(k.set("send_lock", "sideways").unwrap_err().contains("own-side"));
    /// assert!(k.set("no_such_knob", "1").is_err());
    /// ```
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let def = KNOBS
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| format!("unknown knob `{name}` (`ioregionfd-model knobs` lists them)"))?;
        (def.set)(self, value).map_err(|e| format!("knob {name}: {e}"))
    }

    /// Applies `NAME=VALUE` overrides in order.
    pub fn with_overrides(mut self, overrides: &[(String, String)]) -> Result<Knobs, String> {
        for (n, v) in overrides {
            self.set(n, v)?;
        }
        Ok(self)
    }

    /// The value of knob `name`, as written.
    pub fn get(&self, name: &str) -> Option<String> {
        KNOBS.iter().find(|d| d.name == name).map(|d| (d.get)(self))
    }
}

/// Parses `NAME=VALUE` (a `--knob` argument or a scenario row's override), checking that the
/// knob exists and takes that value.
///
/// ```
/// use ioregionfd_model::design::parse_override;
/// assert_eq!(parse_override("failure_exit=false").unwrap(), ("failure_exit".into(), "false".into()));
/// assert!(parse_override("failure_exit").is_err());
/// assert!(parse_override("failure_exit=maybe").is_err());
/// ```
pub fn parse_override(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    Design::Proposed.knobs().set(name, value)?;
    Ok((name.to_string(), value.to_string()))
}
