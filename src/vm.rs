//! A VM: its I/O buses, and guest accesses that either reach a device or exit to userspace.
//!
//! How an access reaches the buses depends on the x86 backend ([`Backend`]): with VMX/EPT an MMIO
//! access to a page that already faulted once is first offered to FAST_MMIO with length 0 (reads
//! too: the fast path does not know the direction), then emulated on the MMIO bus; on the
//! emulating backends (`kvm_pvm`, shadow paging, SVM) every MMIO access is emulated on the MMIO
//! bus. PIO goes to the PIO bus on every backend.
//!
//! Every access runs inside an SRCU read section of the VM (`kvm->srcu`).

pub use crate::bus::GuestAccess;
use crate::bus::KvmIoDevice;
use crate::bus::{BusConfig, BusKind, DispatchCtx, HandledBy};
use crate::design::{Design, Knobs, ResumeRule};
use crate::errno::Errno;
use crate::invariants::Invariant;
use crate::region::VmIo;
use crate::sync::{Arc, Mutex};
use crate::trace::Ended;
use crate::vcpu::Vcpu;
use std::collections::BTreeSet;
use std::fmt;

/// The x86 backend, which decides how MMIO accesses reach the buses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// Every MMIO access is emulated on the MMIO bus (`kvm_pvm`, shadow paging, SVM). What this
    /// machine runs.
    #[default]
    Emulated,
    /// VMX with EPT: after a page's first access (EPT violation, MMIO SPTE installed), accesses
    /// take the EPT-misconfig fast path, offered to FAST_MMIO with length 0 before emulation.
    VmxEpt,
}

impl Backend {
    /// Name as the script writes it: `emulated` or `vmx-ept`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Emulated => "emulated",
            Backend::VmxEpt => "vmx-ept",
        }
    }

    /// The backend with this [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Backend> {
        [Backend::Emulated, Backend::VmxEpt].into_iter().find(|b| b.name() == name)
    }
}

/// Settings of a VM. `VmConfig::default()` is today's mainline bus; [`VmConfig::for_design`]
/// applies what a design changes in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmConfig {
    /// How accesses reach the buses.
    pub backend: Backend,
    /// Bus settings.
    pub bus: BusConfig,
}

impl VmConfig {
    /// The mainline settings with the design's bus knobs applied (`proposed`: coalesced zones
    /// above `INT_MAX` refused; every design: its NR_IOBUS_DEVS setting, reclaim and insertion).
    ///
    /// ```
    /// use ioregionfd_model::design::Design;
    /// use ioregionfd_model::vm::VmConfig;
    /// assert!(VmConfig::for_design(&Design::Proposed.knobs()).bus.zone_size_fits_int);
    /// assert!(!VmConfig::for_design(&Design::RfcV3.knobs()).bus.zone_size_fits_int);
    /// ```
    pub fn for_design(knobs: &Knobs) -> Self {
        let mut c = VmConfig::default();
        c.bus.nr_iobus_devs = knobs.nr_iobus_devs;
        c.bus.zone_size_fits_int = knobs.sizes_fit_bus_len;
        c.bus.reclaim = knobs.reclaim;
        c.bus.insertion = knobs.insertion;
        c
    }
}

/// The exit a guest access makes when no in-kernel device takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmExit {
    /// `KVM_EXIT_MMIO`.
    Mmio {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u32,
        /// The bytes written (little endian), zero for reads.
        data: [u8; 8],
        /// Direction.
        is_write: bool,
    },
    /// `KVM_EXIT_IOREGIONFD_FAILURE` (proposed): the command was sent to an ioregion's device
    /// and no response came (the device closed or died); it may have executed the access.
    IoregionFailure {
        /// Guest physical address or port.
        addr: u64,
        /// Length in bytes.
        len: u32,
        /// The value of a write (zero for reads).
        data: [u8; 8],
        /// Direction.
        is_write: bool,
    },
    /// `KVM_EXIT_IO` (one access, count 1).
    Io {
        /// Port.
        port: u16,
        /// Size in bytes.
        size: u8,
        /// The bytes written (little endian), zero for reads.
        data: [u8; 8],
        /// `KVM_EXIT_IO_OUT` when true, `KVM_EXIT_IO_IN` otherwise.
        is_out: bool,
    },
}

fn le_value(data: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*data)
}

impl fmt::Display for KvmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KvmExit::Mmio { addr, len, data, is_write: true } => {
                write!(f, "exit mmio {addr:#x} {len} {:#x}", le_value(&data))
            }
            KvmExit::Mmio { addr, len, is_write: false, .. } => write!(f, "exit mmio {addr:#x} {len}"),
            KvmExit::Io { port, size, data, is_out: true } => {
                write!(f, "exit pio {port:#x} {size} {:#x}", le_value(&data))
            }
            KvmExit::Io { port, size, is_out: false, .. } => write!(f, "exit pio {port:#x} {size}"),
            KvmExit::IoregionFailure { addr, len, data, is_write: true } => {
                write!(f, "exit ioregion-failure {addr:#x} {len} {:#x}", le_value(&data))
            }
            KvmExit::IoregionFailure { addr, len, is_write: false, .. } => {
                write!(f, "exit ioregion-failure {addr:#x} {len}")
            }
        }
    }
}

/// The outcome of one guest access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessOutcome {
    /// An in-kernel device handled it.
    Handled(HandledBy),
    /// It exited to userspace.
    Exit(KvmExit),
    /// Sequential model: the vCPU waits for something nothing will ever do (why).
    Blocked(String),
    /// KVM_RUN returned `-EINTR` (`KVM_EXIT_INTR`) with the access saved for the next KVM_RUN.
    Interrupted,
    /// KVM_RUN itself failed with this errno (rfc-v3: completing an interrupted access failed).
    RunError(Errno),
}

impl fmt::Display for AccessOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessOutcome::Handled(h) => h.fmt(f),
            AccessOutcome::Exit(e) => e.fmt(f),
            AccessOutcome::Blocked(_) => f.write_str("blocked"),
            AccessOutcome::Interrupted => f.write_str("intr"),
            AccessOutcome::RunError(e) => write!(f, "err {e}"),
        }
    }
}

/// Who makes an access: the vCPU, and (sequential model) what lets the devices run.
#[derive(Clone, Copy)]
pub struct AccessCtx<'a> {
    /// The vCPU.
    pub vcpu: &'a Vcpu,
    /// Runs the served devices after a command was sent (sequential model).
    pub pump: Option<&'a dyn Fn()>,
}

/// A guest access the model cannot perform, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// The length is not one a single x86 access has on that bus (MMIO 1, 2, 4, 8; PIO 1, 2, 4).
    BadLength {
        /// The bus.
        bus: BusKind,
        /// The length asked for.
        len: usize,
    },
    /// The access crosses a 4 KiB page: the kernel splits it into fragments, which the model
    /// does not reproduce.
    CrossesPage {
        /// Start address.
        addr: u64,
        /// Length.
        len: usize,
    },
    /// A port number above 0xffff.
    BadPort(u64),
    /// Guest accesses go to the MMIO or PIO bus only.
    NotAGuestBus(BusKind),
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::BadLength { bus: BusKind::Pio, len } => {
                write!(f, "PIO access length {len}: must be 1, 2 or 4")
            }
            AccessError::BadLength { len, .. } => write!(f, "MMIO access length {len}: must be 1, 2, 4 or 8"),
            AccessError::CrossesPage { addr, len } => write!(
                f,
                "access of {len} bytes at {addr:#x} crosses a 4 KiB page; the kernel splits it into fragments, which the model does not reproduce"
            ),
            AccessError::BadPort(p) => write!(f, "port {p:#x} is above 0xffff"),
            AccessError::NotAGuestBus(b) => write!(f, "guest accesses go to mmio or pio, not {b}"),
        }
    }
}

impl std::error::Error for AccessError {}

/// A VM (`struct kvm`): its buses and devices, and how accesses reach them.
#[derive(Debug)]
pub struct Vm {
    /// The I/O half of the VM (buses, SRCU, slots_lock, lists, regions, ring).
    pub io: Arc<VmIo>,
    backend: Backend,
    knobs: Knobs,
    /// Pages with an MMIO SPTE (VMX/EPT only): accesses there take the fast path.
    mmio_sptes: Mutex<BTreeSet<u64>>,
    next_vcpu: Mutex<usize>,
}

impl Vm {
    /// A new VM numbered `id` under the `proposed` design, recording into `rec`.
    pub fn new(id: usize, rec: crate::trace::Recorder, config: VmConfig) -> Self {
        Self::with_design(id, rec, config, Design::Proposed.knobs())
    }

    /// A new VM numbered `id` under the design whose `knobs` are given.
    pub fn with_design(id: usize, rec: crate::trace::Recorder, config: VmConfig, knobs: Knobs) -> Self {
        Vm {
            io: Arc::new(VmIo::new(id, rec, config.bus)),
            backend: config.backend,
            knobs,
            mmio_sptes: Mutex::new(BTreeSet::new()),
            next_vcpu: Mutex::new(0),
        }
    }

    /// The VM's number.
    pub fn id(&self) -> usize {
        self.io.vm
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The design's knobs.
    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }

    /// A new sequential vCPU of this VM (what would wait marks it blocked).
    pub fn sequential_vcpu(&self) -> Vcpu {
        let mut n = self.next_vcpu.lock();
        let id = *n;
        *n += 1;
        Vcpu::sequential(self.io.vm, id)
    }

    /// A guest access on `bus` (MMIO or PIO) of `len` bytes, made by a new sequential vCPU: a
    /// write when `value` is `Some`.
    ///
    /// ```
    /// use ioregionfd_model::bus::BusKind;
    /// use ioregionfd_model::trace::Recorder;
    /// use ioregionfd_model::vm::{Vm, VmConfig};
    /// let vm = Vm::new(0, Recorder::new(), VmConfig::default());
    /// let out = vm.access(BusKind::Mmio, 0x1000, 4, Some(0x12345678)).unwrap();
    /// assert_eq!(out.to_string(), "exit mmio 0x1000 4 0x12345678");
    /// assert!(vm.access(BusKind::Mmio, 0xffe, 4, None).is_err()); // crosses a page
    /// ```
    pub fn access(
        &self,
        bus: BusKind,
        addr: u64,
        len: usize,
        value: Option<u64>,
    ) -> Result<AccessOutcome, AccessError> {
        let vcpu = self.sequential_vcpu();
        self.access_on(AccessCtx { vcpu: &vcpu, pump: None }, bus, addr, len, value)
    }

    /// [`access`](Self::access) made by a given vCPU (and, sequentially, with a device pump).
    pub fn access_on(
        &self,
        a: AccessCtx<'_>,
        bus: BusKind,
        addr: u64,
        len: usize,
        value: Option<u64>,
    ) -> Result<AccessOutcome, AccessError> {
        let data = value.unwrap_or(0).to_le_bytes();
        match bus {
            BusKind::Mmio => {
                if !matches!(len, 1 | 2 | 4 | 8) {
                    return Err(AccessError::BadLength { bus, len });
                }
                if (addr & 0xfff) + len as u64 > 0x1000 {
                    return Err(AccessError::CrossesPage { addr, len });
                }
                Ok(match value {
                    Some(_) => self.mmio_write(a, addr, &data[..len]),
                    None => self.mmio_read(a, addr, len),
                })
            }
            BusKind::Pio => {
                if !matches!(len, 1 | 2 | 4) {
                    return Err(AccessError::BadLength { bus, len });
                }
                let port = u16::try_from(addr).map_err(|_| AccessError::BadPort(addr))?;
                Ok(match value {
                    Some(_) => self.pio_write(a, port, &data[..len]),
                    None => self.pio_read(a, port, len),
                })
            }
            other => Err(AccessError::NotAGuestBus(other)),
        }
    }

    fn ctx<'a>(&'a self, a: &AccessCtx<'a>) -> DispatchCtx<'a> {
        DispatchCtx { rec: &self.io.rec, vm: self.io.vm, vcpu: Some(a.vcpu.ioregion()), pump: a.pump }
    }

    /// The VMX fast path: `Some` when the page already has an MMIO SPTE and a FAST_MMIO device
    /// answered the (length 0) write; the first access to a page installs the SPTE.
    fn fast_mmio(&self, a: &AccessCtx<'_>, addr: u64) -> Option<Result<HandledBy, Errno>> {
        if self.backend != Backend::VmxEpt {
            return None;
        }
        if self.mmio_sptes.lock().insert(addr >> 12) {
            return None;
        }
        let reader = self.io.srcu.read_lock();
        match self.io.bus(BusKind::FastMmio).write(&reader, &self.ctx(a), addr, &[]) {
            Err(Errno::EOPNOTSUPP | Errno::ENOMEM) => None,
            other => Some(other),
        }
    }

    /// The outcome: handled, or (not handled) blocked, interrupted, or an exit to userspace. An
    /// access an ioregion claimed inside the SRCU read section is carried out first, outside it.
    fn finish(&self, result: Result<HandledBy, Errno>, a: &AccessCtx<'_>, exit: KvmExit) -> AccessOutcome {
        let result = match a.vcpu.take_deferred() {
            Some(d) => {
                let mut data = d.value.to_le_bytes();
                let region = d.txn.as_ref().map(|t| t.region.clone()).expect("a claimed access has its region");
                let r = crate::region::run_deferred(&self.ctx(a), &d, &mut data[..d.len]);
                r.map(|()| region.handled_by(d.addr, &data[..d.len], !d.is_read))
            }
            None => result,
        };
        let sent = a.vcpu.take_sent_unanswered();
        let outcome = match result {
            Ok(h) => AccessOutcome::Handled(h),
            // Interrupted: this dispatch stopped with -EINTR and saved its state (a saved state
            // left over from an earlier access does not make this one interrupted).
            Err(e) => match (a.vcpu.blocked(), e == Errno::EINTR && a.vcpu.is_interrupted()) {
                (Some(why), _) => AccessOutcome::Blocked(why),
                (None, true) => AccessOutcome::Interrupted,
                (None, false) if sent && self.knobs.failure_exit => AccessOutcome::Exit(match exit {
                    KvmExit::Mmio { addr, len, data, is_write } => {
                        KvmExit::IoregionFailure { addr, len, data, is_write }
                    }
                    KvmExit::Io { port, size, data, is_out } => {
                        KvmExit::IoregionFailure { addr: port as u64, len: size as u32, data, is_write: is_out }
                    }
                    other => other,
                }),
                (None, false) => AccessOutcome::Exit(exit),
            },
        };
        self.io.rec.event(Some(self.id()), format_args!("-> {outcome}"));
        outcome
    }

    /// A guest MMIO write (`vcpu_mmio_write`, one chunk of at most 8 bytes), inside an SRCU read
    /// section.
    pub fn mmio_write(&self, a: AccessCtx<'_>, addr: u64, data: &[u8]) -> AccessOutcome {
        self.io
            .rec
            .event(Some(self.id()), format_args!("{} write mmio {addr:#x} len {}", a.vcpu.vcpu_id(), data.len()));
        let exit = KvmExit::Mmio { addr, len: data.len() as u32, data: pad8(data), is_write: true };
        let result = self.fast_mmio(&a, addr).unwrap_or_else(|| {
            let reader = self.io.srcu.read_lock();
            self.io.bus(BusKind::Mmio).write(&reader, &self.ctx(&a), addr, data)
        });
        self.finish(result, &a, exit)
    }

    /// A guest MMIO read (`vcpu_mmio_read`).
    pub fn mmio_read(&self, a: AccessCtx<'_>, addr: u64, len: usize) -> AccessOutcome {
        self.io.rec.event(Some(self.id()), format_args!("{} read mmio {addr:#x} len {len}", a.vcpu.vcpu_id()));
        let exit = KvmExit::Mmio { addr, len: len as u32, data: [0; 8], is_write: false };
        let result = self.fast_mmio(&a, addr).unwrap_or_else(|| {
            let reader = self.io.srcu.read_lock();
            let mut data = [0u8; 8];
            self.io.bus(BusKind::Mmio).read(&reader, &self.ctx(&a), addr, &mut data[..len])
        });
        self.finish(result, &a, exit)
    }

    /// A guest `out` (`kernel_pio`, count 1).
    pub fn pio_write(&self, a: AccessCtx<'_>, port: u16, data: &[u8]) -> AccessOutcome {
        self.io.rec.event(Some(self.id()), format_args!("{} out {port:#x} len {}", a.vcpu.vcpu_id(), data.len()));
        let exit = KvmExit::Io { port, size: data.len() as u8, data: pad8(data), is_out: true };
        let result = {
            let reader = self.io.srcu.read_lock();
            self.io.bus(BusKind::Pio).write(&reader, &self.ctx(&a), port as u64, data)
        };
        self.finish(result, &a, exit)
    }

    /// A guest `in` (`kernel_pio`, count 1).
    pub fn pio_read(&self, a: AccessCtx<'_>, port: u16, len: usize) -> AccessOutcome {
        self.io.rec.event(Some(self.id()), format_args!("{} in {port:#x} len {len}", a.vcpu.vcpu_id()));
        let exit = KvmExit::Io { port, size: len as u8, data: [0; 8], is_out: false };
        let result = {
            let reader = self.io.srcu.read_lock();
            let mut data = [0u8; 8];
            self.io.bus(BusKind::Pio).read(&reader, &self.ctx(&a), port as u64, &mut data[..len])
        };
        self.finish(result, &a, exit)
    }

    /// `KVM_RUN` on vCPU `a.vcpu`: first completes the access an earlier KVM_RUN left pending
    /// (after `-EINTR`), else makes `next`. Then, for designs that trust the run page (rfc-v3),
    /// forces `-EINTR` while an interrupted ioregion state is saved and `run->exit_reason` reads
    /// `KVM_EXIT_INTR`. Every return to userspace hands the pending signals to their handlers (they are handled).
    ///
    /// ```
    /// use ioregionfd_model::bus::BusKind;
    /// use ioregionfd_model::trace::Recorder;
    /// use ioregionfd_model::vcpu::Vcpu;
    /// use ioregionfd_model::vm::{AccessCtx, GuestAccess, Vm, VmConfig};
    /// let vm = Vm::new(0, Recorder::new(), VmConfig::default());
    /// let vcpu = Vcpu::threaded(0, 0);
    /// let access = GuestAccess { bus: BusKind::Pio, addr: 0x60, len: 1, value: Some(1) };
    /// let out = vm.kvm_run(AccessCtx { vcpu: &vcpu, pump: None }, Some(access));
    /// assert_eq!(out.to_string(), "exit pio 0x60 1 0x1");
    /// ```
    pub fn kvm_run(&self, a: AccessCtx<'_>, next: Option<GuestAccess>) -> AccessOutcome {
        let vcpu = a.vcpu;
        let outcome = match (vcpu.pending(), next) {
            (Some(p), _) => self.complete_pending(a, p),
            (None, Some(acc)) => {
                vcpu.begin_access();
                let o = self.guest(a, acc);
                if o == AccessOutcome::Interrupted {
                    vcpu.set_pending(Some(acc));
                }
                o
            }
            (None, None) => AccessOutcome::Interrupted,
        };
        let outcome = self.forced_eintr(vcpu, outcome);
        self.return_to_userspace(vcpu, &outcome);
        outcome
    }

    /// rfc-v3 ([`Knobs::forced_eintr_reads_run_page`]): with an interrupted access saved, a
    /// `run->exit_reason` that reads `KVM_EXIT_INTR` makes `KVM_RUN` return `-EINTR` whatever the
    /// access did.
    fn forced_eintr(&self, vcpu: &Vcpu, outcome: AccessOutcome) -> AccessOutcome {
        if self.knobs.forced_eintr_reads_run_page
            && vcpu.is_interrupted()
            && vcpu.exit_reason() == crate::vcpu::KVM_EXIT_INTR
            && !matches!(outcome, AccessOutcome::Interrupted | AccessOutcome::Blocked(_))
        {
            self.io.rec.event(
                Some(self.id()),
                format_args!("{} KVM_RUN forces -EINTR (run->exit_reason reads KVM_EXIT_INTR)", vcpu.vcpu_id()),
            );
            return AccessOutcome::Interrupted;
        }
        outcome
    }

    /// `KVM_RUN` returns: the thread runs its pending signals' handlers (`SIGPIPE` too), the run
    /// page gets the exit reason, and (ghost) the access is recorded as ended where it ended.
    fn return_to_userspace(&self, vcpu: &Vcpu, outcome: &AccessOutcome) {
        if !matches!(outcome, AccessOutcome::Blocked(_)) {
            vcpu.clear_signal();
        }
        match outcome {
            AccessOutcome::Interrupted => vcpu.set_exit_reason(crate::vcpu::KVM_EXIT_INTR),
            AccessOutcome::Exit(e @ (KvmExit::Mmio { .. } | KvmExit::Io { .. })) => {
                vcpu.set_exit_reason(exit_reason_of(e))
            }
            _ => {}
        }
        let ended = match outcome {
            AccessOutcome::Handled(HandledBy::Ioregion { .. }) => Some(Ended::Device),
            AccessOutcome::Exit(KvmExit::IoregionFailure { .. }) => Some(Ended::Unknown),
            AccessOutcome::Handled(_) | AccessOutcome::Exit(_) => Some(Ended::Userspace),
            _ => None,
        };
        if let Some(how) = ended {
            self.io.rec.ended(vcpu.current_tag(), how);
        }
        self.io.rec.event(Some(self.id()), format_args!("{} KVM_RUN returns {outcome}", vcpu.vcpu_id()));
    }

    fn guest(&self, a: AccessCtx<'_>, acc: GuestAccess) -> AccessOutcome {
        self.access_on(a, acc.bus, acc.addr, acc.len, acc.value)
            .unwrap_or_else(|e| AccessOutcome::Exit(exit_of(acc, &e.to_string())))
    }

    /// Completes the access an interrupted KVM_RUN left pending, as the design does.
    fn complete_pending(&self, a: AccessCtx<'_>, p: GuestAccess) -> AccessOutcome {
        self.io.rec.event(Some(self.id()), format_args!("{} KVM_RUN completes the pending {p}", a.vcpu.vcpu_id()));
        match self.knobs.on_resume {
            ResumeRule::RedispatchAddress => self.complete_redispatch(a, p),
            ResumeRule::SameTransaction => self.complete_transaction(a, p),
        }
    }

    /// rfc-v3's `complete_ioregion_mmio` / `complete_ioregion_pio`: dispatch the saved address
    /// again; if no ioregion takes it now, a made-up exit.
    fn complete_redispatch(&self, a: AccessCtx<'_>, p: GuestAccess) -> AccessOutcome {
        let vcpu = a.vcpu;
        let exit = exit_of(p, "");
        let mut data = p.value.unwrap_or(0).to_le_bytes();
        let bus = self.io.bus(p.bus);
        let result = {
            let reader = self.io.srcu.read_lock();
            match p.value {
                Some(_) => bus.write(&reader, &self.ctx(&a), p.addr, &data[..p.len]),
                None => bus.read(&reader, &self.ctx(&a), p.addr, &mut data[..p.len]),
            }
        };
        match result {
            Ok(h) => {
                vcpu.set_pending(None);
                self.finish(Ok(h), &a, exit)
            }
            Err(Errno::EOPNOTSUPP | Errno::ENOMEM) => {
                // The made-up exit fills in the run page (`exit_reason` included) and returns to
                // userspace. Nothing consumed the saved state: it stays "interrupted" for the
                // vCPU's next ioregion access.
                vcpu.set_pending(None);
                self.io.rec.event(
                    Some(self.id()),
                    format_args!("{}: no ioregion takes {p} now: made-up exit", vcpu.vcpu_id()),
                );
                vcpu.set_exit_reason(exit_reason_of(&exit));
                let outcome = AccessOutcome::Exit(exit);
                self.io.rec.event(Some(self.id()), format_args!("-> {outcome}"));
                outcome
            }
            Err(e) if vcpu.blocked().is_none() && !vcpu.is_interrupted() => AccessOutcome::RunError(e),
            Err(e) => self.finish(Err(e), &a, exit),
        }
    }

    /// seed and proposed: a transaction saved while it waited for its response continues on its
    /// own region; anything else (nothing sent yet) starts afresh.
    fn complete_transaction(&self, a: AccessCtx<'_>, p: GuestAccess) -> AccessOutcome {
        let vcpu = a.vcpu;
        let saved = vcpu.take_saved();
        vcpu.set_pending(None);
        let o = match saved {
            Some(s) if s.step == crate::vcpu::Step::GetReply && s.txn.is_some() => {
                let mut data = s.value.to_le_bytes();
                let txn = s.txn.clone().expect("transaction");
                let r = crate::region::continue_transaction(&self.ctx(&a), &s, &mut data[..s.len]);
                let exit = exit_of(p, "");
                self.finish(r.map(|()| txn.region.handled_by(s.addr, &data[..s.len], !s.is_read)), &a, exit)
            }
            _ => self.guest(a, p),
        };
        if o == AccessOutcome::Interrupted {
            vcpu.set_pending(Some(p));
        }
        o
    }

    /// Destroys `vcpu` (`kvm_vcpu_destroy`), as VM destruction does for each vCPU after the VM's
    /// buses: it never runs KVM_RUN again, and an access it left interrupted is dealt with as
    /// [`Knobs::on_vcpu_destroy`] says. KVM has no way to destroy one vCPU of a live VM: call it
    /// only while destroying the whole VM (the scenario runner's `destroy-vm` and `exit` do), or
    /// a design looks correct for an operation userspace cannot make.
    ///
    /// ```
    /// use ioregionfd_model::trace::Recorder;
    /// use ioregionfd_model::vcpu::Vcpu;
    /// use ioregionfd_model::vm::{Vm, VmConfig};
    /// let vm = Vm::new(0, Recorder::new(), VmConfig::default());
    /// let vcpu = Vcpu::threaded(0, 0);
    /// vm.destroy_vcpu(&vcpu);
    /// assert!(!vcpu.is_interrupted());
    /// ```
    pub fn destroy_vcpu(&self, vcpu: &Vcpu) {
        self.io.rec.event(Some(self.id()), format_args!("{} destroyed", vcpu.vcpu_id()));
        vcpu.set_pending(None);
        if let Some(saved) = vcpu.take_saved() {
            crate::region::abandon(&self.ctx(&AccessCtx { vcpu, pump: None }), &saved);
        }
    }

    /// VM destruction (`kvm_destroy_vm`), in its order: every bus destroyed (devices, regions),
    /// then each of `vcpus` that belongs to this VM destroyed ([`destroy_vcpu`](Self::destroy_vcpu)).
    /// The caller has made sure none of them is in KVM_RUN.
    pub fn destroy<'a>(&self, vcpus: impl IntoIterator<Item = &'a Vcpu>) {
        self.io.destroy();
        for vcpu in vcpus.into_iter().filter(|v| v.vm() == self.id()) {
            self.destroy_vcpu(vcpu);
        }
    }

    /// Makes the next array allocation on `bus` fail.
    pub fn fail_next_alloc(&self, bus: BusKind) {
        self.io.bus(bus).fail_next_alloc();
    }

    /// Whether the allocation failure [`fail_next_alloc`](Self::fail_next_alloc) asked for on
    /// `bus` is still to happen (the fuzzers use it to see when it happened).
    ///
    /// ```
    /// use ioregionfd_model::bus::BusKind;
    /// use ioregionfd_model::kvm::Kvm;
    /// use ioregionfd_model::trace::Recorder;
    /// use ioregionfd_model::uapi::KvmCoalescedMmioZone;
    /// use ioregionfd_model::vm::VmConfig;
    /// let kvm = Kvm::with_recorder(Recorder::new());
    /// let vm = kvm.create_vm(VmConfig::default());
    /// kvm.vm(vm).unwrap().fail_next_alloc(BusKind::Mmio);
    /// assert!(kvm.vm(vm).unwrap().alloc_failure_pending(BusKind::Mmio));
    /// let zone = KvmCoalescedMmioZone { addr: 0x1000, size: 8, pio: 0 };
    /// assert!(kvm.register_coalesced_mmio(vm, &zone).is_err());
    /// assert!(!kvm.vm(vm).unwrap().alloc_failure_pending(BusKind::Mmio));
    /// ```
    pub fn alloc_failure_pending(&self, bus: BusKind) -> bool {
        self.io.bus(bus).alloc_failure_pending()
    }

    /// The structural invariants of this VM (`bus`, `lifetime`, `overlap`).
    pub fn check_structure(&self) -> Vec<(&'static Invariant, String)> {
        let mut wrong = self.io.check_structure();
        wrong.extend(self.io.check_regions());
        wrong
    }

    /// `KVM_REGISTER_COALESCED_MMIO`.
    pub fn register_coalesced_mmio(&self, zone: &crate::uapi::KvmCoalescedMmioZone) -> Result<(), Errno> {
        self.io.register_coalesced_mmio(zone)
    }

    /// `KVM_UNREGISTER_COALESCED_MMIO`.
    pub fn unregister_coalesced_mmio(&self, zone: &crate::uapi::KvmCoalescedMmioZone) -> Result<(), Errno> {
        self.io.unregister_coalesced_mmio(zone)
    }
}

/// The exit an access makes when no device takes it.
fn exit_of(acc: GuestAccess, _why: &str) -> KvmExit {
    let data = pad8(&acc.value.unwrap_or(0).to_le_bytes()[..acc.len.min(8)]);
    match acc.bus {
        BusKind::Pio => KvmExit::Io { port: acc.addr as u16, size: acc.len as u8, data, is_out: acc.value.is_some() },
        _ => KvmExit::Mmio { addr: acc.addr, len: acc.len as u32, data, is_write: acc.value.is_some() },
    }
}

fn pad8(data: &[u8]) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..data.len()].copy_from_slice(data);
    b
}

/// The `run->exit_reason` of an exit (`KVM_EXIT_MMIO` or `KVM_EXIT_IO`; the ioregion failure exit
/// is proposed's, whose KVM_RUN never reads the page).
fn exit_reason_of(exit: &KvmExit) -> u32 {
    match exit {
        KvmExit::Io { .. } => crate::vcpu::KVM_EXIT_IO,
        _ => crate::vcpu::KVM_EXIT_MMIO,
    }
}
