//! The modelled system: one VMM process (its fd table) and the VMs it created.
//!
//! ```
//! use ioregionfd_model::kvm::Kvm;
//! use ioregionfd_model::vm::VmConfig;
//! use ioregionfd_model::uapi::KvmIoeventfd;
//! use ioregionfd_model::errno::Errno;
//! let kvm = Kvm::new();
//! let vm = kvm.create_vm(VmConfig::default());
//! let bad = KvmIoeventfd { addr: 0x10, len: 3, fd: kvm.eventfd(), ..Default::default() };
//! assert_eq!(kvm.ioeventfd(vm, &bad), Err(Errno::EINVAL));
//! ```

use crate::bus::BusKind;
use crate::bus::ioeventfd::EventfdCtx;
use crate::design::{Design, Knobs, RegionFds};
use crate::device::{MemoryDevice, ServedDevice};
use crate::errno::Errno;
use crate::fd::channel::{ChannelKind, PIPE_CAPACITY, SOCKET_CAPACITY};
use crate::fd::{FdTable, File, FileKind};
use crate::invariants::Invariant;
use crate::region::{ContextTable, Host};
use crate::sync::{Arc, Mutex};
use crate::trace::{Ended, Recorder};
use crate::uapi::{KvmCoalescedMmioZone, KvmIoeventfd, KvmIoregionSeed, KvmIoregionV3};
use crate::vm::{AccessCtx, AccessError, AccessOutcome, Vm, VmConfig};
use crate::wire::TransportKind;

/// The modelled host: the VMM process's files, its VMs, the contexts shared across VMs, and
/// (sequential model) the devices served on its files.
#[derive(Debug)]
pub struct Kvm {
    rec: Recorder,
    knobs: Knobs,
    files: Mutex<FdTable>,
    vms: Mutex<Vec<Arc<Vm>>>,
    contexts: ContextTable,
    served: Mutex<Vec<ServedDevice>>,
}

impl Default for Kvm {
    fn default() -> Self {
        Self::new()
    }
}

impl Kvm {
    /// A system with no VM and no open file, recording every event.
    pub fn new() -> Self {
        Self::with_recorder(Recorder::new())
    }

    /// A system recording into `rec`, under the `proposed` design.
    pub fn with_recorder(rec: Recorder) -> Self {
        Self::with_design(Design::Proposed, rec)
    }

    /// A system under `design`, recording into `rec`.
    pub fn with_design(design: Design, rec: Recorder) -> Self {
        Self::with_knobs(design.knobs(), rec)
    }

    /// A system under a design's knobs, some changed (the model catalogue's defect variants).
    ///
    /// ```
    /// use ioregionfd_model::design::{Design, Knobs, SendLock};
    /// use ioregionfd_model::kvm::Kvm;
    /// use ioregionfd_model::trace::Recorder;
    /// let knobs = Knobs { send_lock: SendLock::ResponseSide, ..Design::Proposed.knobs() };
    /// let kvm = Kvm::with_knobs(knobs, Recorder::new());
    /// assert_eq!(kvm.design(), Design::Proposed);
    /// assert_eq!(kvm.knobs().send_lock, SendLock::ResponseSide);
    /// ```
    pub fn with_knobs(knobs: Knobs, rec: Recorder) -> Self {
        Kvm {
            rec,
            knobs,
            files: Mutex::new(FdTable::new()),
            vms: Mutex::new(Vec::new()),
            contexts: ContextTable::default(),
            served: Mutex::new(Vec::new()),
        }
    }

    /// The design.
    pub fn design(&self) -> Design {
        self.knobs.design
    }

    /// The knobs in force.
    pub fn knobs(&self) -> Knobs {
        self.knobs
    }

    /// Changes the design; only before the first VM exists (`EINVAL` after).
    pub fn set_design(&mut self, design: Design) -> Result<(), Errno> {
        if !self.vms.lock().is_empty() {
            return Err(Errno::EINVAL);
        }
        self.knobs = design.knobs();
        Ok(())
    }

    /// Changes the knobs; only before the first VM exists (`EINVAL` after).
    pub fn set_knobs(&mut self, knobs: Knobs) -> Result<(), Errno> {
        if !self.vms.lock().is_empty() {
            return Err(Errno::EINVAL);
        }
        self.knobs = knobs;
        Ok(())
    }

    /// The system's recorder (trace and violations).
    pub fn recorder(&self) -> &Recorder {
        &self.rec
    }

    /// `KVM_CREATE_VM`: returns the VM's number (counting from 0).
    pub fn create_vm(&self, config: VmConfig) -> usize {
        let mut vms = self.vms.lock();
        let id = vms.len();
        vms.push(Arc::new(Vm::with_design(id, self.rec.clone(), config, self.knobs)));
        self.rec.event(Some(id), "created");
        id
    }

    /// The VM numbered `id`.
    pub fn vm(&self, id: usize) -> Option<Arc<Vm>> {
        self.vms.lock().get(id).cloned()
    }

    /// Runs `f` on every VM, in creation order, without copying the list (quiescent use: the
    /// VM list stays locked meanwhile, so `f` must not create a VM).
    pub fn with_vms<R>(&self, f: impl FnOnce(&[Arc<Vm>]) -> R) -> R {
        f(&self.vms.lock())
    }

    /// Every VM, in creation order.
    pub fn vms(&self) -> Vec<Arc<Vm>> {
        self.vms.lock().clone()
    }

    /// `eventfd(0, 0)`: returns the new fd.
    pub fn eventfd(&self) -> i32 {
        let mut files = self.files.lock();
        let fd = files.next_fd();
        let file = files.new_file(FileKind::Eventfd(Arc::new(EventfdCtx::new(fd))));
        files.install(file)
    }

    /// Opens a file that is not an eventfd and cannot be read or written (for `EINVAL` cases).
    pub fn open_other(&self, name: &str) -> i32 {
        let mut files = self.files.lock();
        let file = files.new_file(FileKind::Other { name: name.to_string() });
        files.install(file)
    }

    /// `socketpair(AF_UNIX, SOCK_STREAM or SOCK_SEQPACKET)` with `capacity` bytes per direction.
    pub fn socketpair(&self, kind: ChannelKind, capacity: usize, nonblock: bool) -> (i32, i32) {
        let mut files = self.files.lock();
        let (a, b) = files.socketpair(kind, capacity, nonblock);
        (files.install(a), files.install(b))
    }

    /// `pipe(2)`: (read end, write end).
    pub fn pipe(&self, capacity: usize, nonblock: bool) -> (i32, i32) {
        let mut files = self.files.lock();
        let (r, w) = files.pipe(capacity, nonblock);
        (files.install(r), files.install(w))
    }

    /// A FIFO made on tmpfs and opened twice: (read end, write end).
    pub fn fifo(&self, capacity: usize, nonblock: bool) -> (i32, i32) {
        let mut files = self.files.lock();
        let (r, w) = files.fifo(capacity, nonblock);
        (files.install(r), files.install(w))
    }

    /// Creates a transport of `kind` with buffer `buf` (default: Linux's default for the kind) and
    /// returns its two fds, as the script's `socketpair`, `pipe` and `fifo` do.
    ///
    /// ```
    /// use ioregionfd_model::kvm::Kvm;
    /// use ioregionfd_model::trace::Recorder;
    /// use ioregionfd_model::wire::TransportKind;
    /// let kvm = Kvm::with_recorder(Recorder::new());
    /// assert_eq!(kvm.open_transport(TransportKind::Pipe, None, false), (3, 4));
    /// ```
    pub fn open_transport(&self, kind: TransportKind, buf: Option<usize>, nonblock: bool) -> (i32, i32) {
        let socket = |k| self.socketpair(k, buf.unwrap_or(SOCKET_CAPACITY), nonblock);
        match kind {
            TransportKind::Stream => socket(ChannelKind::Stream),
            TransportKind::Seqpacket => socket(ChannelKind::Seqpacket),
            TransportKind::Pipe => self.pipe(buf.unwrap_or(PIPE_CAPACITY), nonblock),
            TransportKind::Fifo => self.fifo(buf.unwrap_or(PIPE_CAPACITY), nonblock),
        }
    }

    /// The file behind `fd` (no new reference).
    pub fn file(&self, fd: i32) -> Result<Arc<File>, Errno> {
        self.files.lock().get(fd)
    }

    /// `fget`: the file behind `fd` with a new reference.
    pub fn fget(&self, fd: i32) -> Result<Arc<File>, Errno> {
        self.files.lock().fget(fd, &self.rec)
    }

    /// `close(2)`.
    pub fn close(&self, fd: i32) -> Result<(), Errno> {
        let file = self.files.lock().close(fd)?;
        self.rec.event(None, format_args!("close fd {fd} ({file})"));
        file.put(&self.rec);
        Ok(())
    }

    /// `eventfd_ctx_fdget`: the eventfd behind `fd` with a new reference.
    fn eventfd_ctx_fdget(&self, fd: i32) -> Result<Arc<EventfdCtx>, Errno> {
        match self.files.lock().get(fd)?.kind() {
            FileKind::Eventfd(ctx) => {
                ctx.get(&self.rec);
                Ok(ctx.clone())
            }
            _ => Err(Errno::EINVAL),
        }
    }

    /// The counter of the eventfd `fd` (without resetting it).
    pub fn eventfd_count(&self, fd: i32) -> Result<u64, Errno> {
        match self.files.lock().get(fd)?.kind() {
            FileKind::Eventfd(ctx) => Ok(ctx.count()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn vm_or_ebadf(&self, vm: usize) -> Result<Arc<Vm>, Errno> {
        self.vm(vm).ok_or(Errno::EBADF)
    }

    /// `KVM_IOEVENTFD` on VM `vm` (`EBADF` for an unknown VM).
    pub fn ioeventfd(&self, vm: usize, args: &KvmIoeventfd) -> Result<(), Errno> {
        let vm = self.vm_or_ebadf(vm)?;
        vm.io.ioeventfd(args, &|fd| self.eventfd_ctx_fdget(fd))
    }

    /// `KVM_REGISTER_COALESCED_MMIO` on VM `vm`.
    pub fn register_coalesced_mmio(&self, vm: usize, zone: &KvmCoalescedMmioZone) -> Result<(), Errno> {
        self.vm_or_ebadf(vm)?.register_coalesced_mmio(zone)
    }

    /// `KVM_UNREGISTER_COALESCED_MMIO` on VM `vm`.
    pub fn unregister_coalesced_mmio(&self, vm: usize, zone: &KvmCoalescedMmioZone) -> Result<(), Errno> {
        self.vm_or_ebadf(vm)?.unregister_coalesced_mmio(zone)
    }

    /// `KVM_CREATE_IOREGIONFD` (seed design only; other designs have no such ioctl: `EINVAL`).
    pub fn ioregionfd(&self) -> Result<i32, Errno> {
        if self.knobs.region_fds != RegionFds::IoregionfdObject {
            return Err(Errno::EINVAL);
        }
        let mut files = self.files.lock();
        let file = files.new_file(FileKind::Ioregionfd(Arc::new(crate::fd::IoregionfdObject::new())));
        Ok(files.install(file))
    }

    fn host<'a>(&'a self, fget: &'a dyn Fn(i32) -> Result<Arc<File>, Errno>) -> Host<'a> {
        Host { fget, contexts: &self.contexts }
    }

    /// `KVM_SET_IOREGION` with the rfc-v3 structure (designs rfc-v3 and proposed; `EINVAL` under
    /// seed, whose structure differs).
    pub fn set_ioregion_v3(&self, vm: usize, args: &KvmIoregionV3) -> Result<(), Errno> {
        let vm = self.vm_or_ebadf(vm)?;
        let knobs = self.knobs;
        if knobs.region_fds != RegionFds::UserFds {
            return Err(Errno::EINVAL);
        }
        let fget = |fd| self.fget(fd);
        vm.io.set_ioregion_v3(&self.host(&fget), &knobs, args)
    }

    /// `KVM_SET_IOREGION` with the seed structure (seed only; `EINVAL` under other designs).
    pub fn set_ioregion_seed(&self, vm: usize, args: &KvmIoregionSeed) -> Result<(), Errno> {
        let vm = self.vm_or_ebadf(vm)?;
        let knobs = self.knobs;
        if knobs.region_fds != RegionFds::IoregionfdObject {
            return Err(Errno::EINVAL);
        }
        let fget = |fd| self.fget(fd);
        vm.io.set_ioregion_seed(&self.host(&fget), &knobs, args)
    }

    /// Attaches the built-in memory device to the device end `fd` (commands read from `fd`,
    /// responses written to `resp_fd`, by default `fd` too). The device holds its own references,
    /// so closing the VMM's fds does not stop it.
    pub fn serve(&self, fd: i32, resp_fd: Option<i32>) -> Result<(), Errno> {
        let cmd = self.fget(fd)?;
        let resp = match self.fget(resp_fd.unwrap_or(fd)) {
            Ok(f) => f,
            Err(e) => {
                cmd.put(&self.rec);
                return Err(e);
            }
        };
        let format = self.knobs.wire;
        self.served.lock().push(ServedDevice::new(cmd, resp, format, Box::new(MemoryDevice::default())));
        self.pump();
        Ok(())
    }

    /// Sequential model: lets every served device handle what waits for it, until none can.
    pub fn pump(&self) {
        let mut served = self.served.lock();
        while served.iter_mut().map(|d| d.run(&self.rec)).sum::<usize>() > 0 {}
    }

    /// A guest access made by a new sequential vCPU of VM `vm`, with the served devices running
    /// whenever a command is sent. `Err` for an unknown VM (`EBADF`) or an access the model cannot
    /// make.
    pub fn access(
        &self,
        vm: usize,
        bus: BusKind,
        addr: u64,
        len: usize,
        value: Option<u64>,
    ) -> Result<Result<AccessOutcome, AccessError>, Errno> {
        let vm = self.vm_or_ebadf(vm)?;
        let vcpu = vm.sequential_vcpu();
        let pump = || self.pump();
        let outcome = vm.access_on(AccessCtx { vcpu: &vcpu, pump: Some(&pump) }, bus, addr, len, value);
        self.pump();
        Ok(outcome)
    }

    /// Delivers a signal to the thread of `vcpu`: makes it pending and wakes whatever the thread
    /// may be waiting on (every channel and context; waiters re-check their condition).
    pub fn deliver_signal(&self, vcpu: &crate::vcpu::Vcpu) {
        self.rec.event(Some(vcpu.vm()), format_args!("signal to vcpu{}", vcpu.id()));
        vcpu.signal();
        self.wake_waiters();
    }

    /// Wakes every thread waiting on a channel or a context, so that each re-checks its
    /// condition: what delivering a signal does to the waits of the thread it targets (a device
    /// task told to stop uses it too).
    pub fn wake_waiters(&self) {
        let channels = self.files.lock().channels();
        for c in channels {
            c.wake_all();
        }
        for c in self.contexts.contexts() {
            c.wake_all();
        }
    }

    /// The end-of-run checks of a scenario whose vCPUs have all left KVM_RUN for good:
    /// `exactly-once` on the ghost ledger (an access handled by a device was read by it once; an
    /// access that exited was never read by a device; `devices_drained` says the devices read
    /// everything sent to them, so a posted write nobody read is lost) and `liveness` (no context
    /// is still held).
    pub fn check_end(&self, devices_drained: bool) -> Vec<(&'static Invariant, String)> {
        use crate::invariants::{EXACTLY_ONCE, LIVENESS};
        let ledger = self.rec.ledger();
        let mut wrong = Vec::new();
        for (tag, how) in &ledger.ended {
            let n = ledger.delivered.iter().filter(|t| *t == tag).count();
            match how {
                Ended::Device if n == 0 && devices_drained => {
                    wrong.push((&EXACTLY_ONCE, format!("{tag} was handled, yet no device read its command (lost)")))
                }
                Ended::Userspace if n > 0 => wrong.push((
                    &EXACTLY_ONCE,
                    format!("{tag} exited to userspace as a plain exit, yet a device read its command too"),
                )),
                _ => {}
            }
        }
        for c in self.contexts.contexts().iter().filter(|c| c.is_live() && c.owners() > 0) {
            wrong.push((&LIVENESS, format!("{c} is still held after every vCPU left KVM_RUN for good")));
        }
        wrong
    }

    /// `liveness` for a vCPU whose thread stops calling KVM_RUN for good while its VM lives (the
    /// VMM paused it, or it is never scheduled again): it must own no context, or every later
    /// access on that channel waits for it.
    pub fn check_parked(&self, vcpu: &crate::vcpu::Vcpu) -> Vec<(&'static Invariant, String)> {
        let who = vcpu.vcpu_id();
        self.contexts
            .contexts()
            .iter()
            .filter(|c| c.is_live() && c.owned_by(who))
            .map(|c| {
                let text = format!(
                    "{who} stops calling KVM_RUN while it owns {c}: every later access on that channel waits for it"
                );
                (&crate::invariants::LIVENESS, text)
            })
            .collect()
    }

    /// Tears the system down as process exit does: every VM destroyed (its buses, devices,
    /// regions), every fd of the process closed. The caller has dropped its own references.
    pub fn teardown(&self) {
        for vm in self.vms() {
            vm.io.destroy();
        }
        let fds = self.files.lock().open_fds();
        for fd in fds {
            let _ = self.close(fd);
        }
        self.rec.event(None, "teardown done");
    }

    /// Closes every fd of the process (what its exit does to files), leaving the VMs.
    pub fn teardown_fds(&self) {
        let fds = self.files.lock().open_fds();
        for fd in fds {
            let _ = self.close(fd);
        }
    }

    /// `no-leak` after [`teardown`](Self::teardown): every file released, every context freed,
    /// every eventfd context without references.
    pub fn check_no_leak(&self) -> Vec<(&'static Invariant, String)> {
        use crate::invariants::NO_LEAK;
        let mut wrong = Vec::new();
        for f in self.files.lock().made() {
            if f.is_live() {
                wrong.push((&NO_LEAK, format!("{f} still has {} reference(s) after teardown", f.refs())));
            }
        }
        for c in self.contexts.contexts().iter().filter(|c| c.is_live()) {
            wrong.push((&NO_LEAK, format!("{c} is not freed after teardown (count {})", c.refs())));
        }
        wrong
    }

    /// The structural invariants of every VM.
    pub fn check_structure(&self) -> Vec<(&'static Invariant, String)> {
        self.vms().iter().flat_map(|vm| vm.check_structure()).collect()
    }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;
    use crate::uapi::KvmIoregionV3;

    fn one_region(design: Design) -> Kvm {
        let kvm = Kvm::with_design(design, Recorder::new());
        let vm = kvm.create_vm(VmConfig::for_design(&design.knobs()));
        let (a, _b) = kvm.socketpair(ChannelKind::Seqpacket, 4096, false);
        let args = KvmIoregionV3 {
            guest_paddr: 0x1000,
            memory_size: 8,
            user_data: 1,
            read_fd: a,
            write_fd: a,
            flags: 0,
            pad: [0; 28],
        };
        kvm.set_ioregion_v3(vm, &args).unwrap();
        kvm
    }

    #[test]
    fn teardown_leak_is_caught() {
        // rfc-v3: the context's kref starts at 0, so the get saturates it and it is never freed.
        let v3 = one_region(Design::RfcV3);
        v3.teardown();
        let leaks = v3.check_no_leak();
        assert!(leaks.iter().any(|(i, t)| i.id == "no-leak" && t.contains("context")), "{leaks:?}");
        // proposed: everything goes.
        let p = one_region(Design::Proposed);
        p.teardown();
        assert_eq!(p.check_no_leak(), vec![]);
        assert!(p.recorder().violations().is_empty());
    }
}
