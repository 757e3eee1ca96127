//! One execution of a scenario under one row's knobs: the setup on the main thread, the threads
//! (spawned through the concurrency facade, so loom and shuttle schedule them), then the
//! end-of-run checks.
//!
//! The end of an execution, in order: `main`'s lines; every vCPU and VMM thread joined; every
//! device told to stop once it has read what is queued for it, and joined; then the violations
//! recorded after setup (and the structural checks), the `expect` lines, the end-of-run checks
//! (`exactly-once`, `liveness`), and with `option no-leak` teardown and `no-leak`.

use super::check::{Failure, fail_with, verdict_after, watch};
use super::{FdRef, Line, Role, Scenario, Step, ThreadSpec};
use crate::bus::BusKind;
use crate::design::{Design, Knobs, RegionFds};
use crate::device::receive_model_command;
use crate::errno::Errno;
use crate::fd::File;
use crate::fd::channel::{Tag, Transfer, Wait};
use crate::invariants::{LIVENESS, WIRE};
use crate::kvm::Kvm;
use crate::script::TransportKind;
use crate::sync::{Arc, Condvar, Ghost, Mutex, spawn_named};
use crate::trace::Recorder;
use crate::uapi::{
    KVM_IOREGION_DEASSIGN, KVM_IOREGION_PIO, KVM_IOREGION_POSTED_WRITES, KvmIoregionSeed, KvmIoregionV3,
};
use crate::vcpu::Vcpu;
use crate::vm::{AccessCtx, AccessOutcome};
use crate::wire::{Direction, MESSAGE_SIZE, Response};
use std::collections::BTreeMap;

/// vCPU ids of the sequential vCPUs that make setup accesses (apart from every thread's vCPU).
const SETUP_VCPU_BASE: usize = 100;

/// The fds of one channel: what KVM is given, and the device's end.
#[derive(Clone, Copy, Debug)]
struct ChannelFds {
    /// KVM reads responses here.
    kernel_read: i32,
    /// KVM writes commands here.
    kernel_write: i32,
    /// The device reads commands here.
    device_read: i32,
    /// The device writes responses here.
    device_write: i32,
}

impl ChannelFds {
    fn kernel(&self) -> Vec<i32> {
        dedup(vec![self.kernel_read, self.kernel_write])
    }

    /// The VMM's own fds of the device end (none when they are the kernel's fds: seed).
    fn device_copies(&self) -> Vec<i32> {
        let kernel = self.kernel();
        dedup(vec![self.device_read, self.device_write]).into_iter().filter(|fd| !kernel.contains(fd)).collect()
    }
}

fn dedup(mut v: Vec<i32>) -> Vec<i32> {
    v.dedup();
    v
}

/// What every thread of one execution shares.
struct Exec {
    kvm: Arc<Kvm>,
    design: Design,
    scenario: Arc<Scenario>,
    channels: BTreeMap<String, ChannelFds>,
    vcpus: BTreeMap<String, Arc<Vcpu>>,
    /// The vCPU threads out of KVM_RUN for good (finished or parked): modelled (the VMM waits
    /// for the last vCPU fd to close before KVM destroys a VM).
    out_of_run: Mutex<Vec<String>>,
    out_of_run_cv: Condvar,
    /// Device threads: told to stop once every other thread is done. Harness state, not the
    /// kernel's: a ghost, so that checking it is no scheduling point. No wake-up is lost: a
    /// device reads it under its channel's lock, and the stopper sets it before it wakes every
    /// waiter under that lock ([`Kvm::wake_waiters`]).
    stop: Ghost<bool>,
    /// Whether any line waits for vCPU threads to leave KVM_RUN (`destroy-vm`, `exit`): only
    /// then do vCPU threads say so (a lock, which is a scheduling point).
    tracks_out_of_run: bool,
    /// Ghost: `expect` lines that did not hold, and whether `exit` tore the system down.
    mismatches: Ghost<Vec<String>>,
    torn_down: Ghost<bool>,
    /// Ghost: every KVM_RUN outcome of each vCPU thread, in order (the execution's end state).
    outcomes: Ghost<Vec<(String, String)>>,
}

/// Runs one execution of `scenario` under `knobs`.
pub(super) fn execute(scenario: &Arc<Scenario>, knobs: Knobs) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_knobs(knobs, Recorder::new()));
    let design = knobs.design;
    let mut channels = BTreeMap::new();
    let mut device_files: BTreeMap<String, Vec<Arc<File>>> = BTreeMap::new();
    let mut last = String::new();
    let mut setup_vcpus = 0;
    for line in scenario.setup.iter().filter(|l| runs_under(l, design)) {
        let result = setup_line(&kvm, line, &mut channels, &mut device_files, &mut setup_vcpus, &last)
            .map_err(|text| setup_failure(&kvm, line, text))?;
        if !matches!(line.step, Step::Expect(_)) {
            last = result;
        }
    }
    // Devices take their references now (unless `give` took them), then the scenario proper.
    let mut devices = Vec::new();
    for t in &scenario.threads {
        if let Role::Device { cmd, resp } = &t.role {
            let files = match (cmd, resp) {
                (FdRef::Device(a), FdRef::Device(b)) if a == b && device_files.contains_key(a) => {
                    device_files.remove(a).expect("given")
                }
                _ => {
                    let c = device_file(&kvm, &channels, cmd, true).map_err(|e| setup_failure(&kvm, &t_line(t), e))?;
                    let r =
                        device_file(&kvm, &channels, resp, false).map_err(|e| setup_failure(&kvm, &t_line(t), e))?;
                    if Arc::ptr_eq(&c, &r) {
                        r.put(kvm.recorder());
                        vec![c]
                    } else {
                        vec![c, r]
                    }
                }
            };
            devices.push((t.name.clone(), files));
        }
    }
    for files in device_files.into_values() {
        // Given to no device thread: the device process holds them until it exits.
        for f in files {
            f.put(kvm.recorder());
        }
    }
    let vcpus: BTreeMap<String, Arc<Vcpu>> = scenario
        .threads
        .iter()
        .filter_map(|t| match t.role {
            Role::Vcpu { vm, id, sigpipe_handled } => {
                let v = Vcpu::threaded(vm, id);
                v.set_sigpipe_ignored(!sigpipe_handled);
                Some((t.name.clone(), Arc::new(v)))
            }
            _ => None,
        })
        .collect();
    let mark = kvm.recorder().end_setup();
    watch(&kvm, mark);
    let exec = Arc::new(Exec {
        kvm: kvm.clone(),
        design,
        scenario: scenario.clone(),
        channels,
        vcpus,
        out_of_run: Mutex::new(Vec::new()),
        out_of_run_cv: Condvar::new(),
        stop: Ghost::new(false),
        tracks_out_of_run: scenario
            .threads
            .iter()
            .flat_map(|t| &t.lines)
            .any(|l| matches!(l.step, Step::DestroyVm(_) | Step::Exit)),
        mismatches: Ghost::new(Vec::new()),
        torn_down: Ghost::new(false),
        outcomes: Ghost::new(Vec::new()),
    });
    let mut handles = Vec::new();
    let mut device_handles = Vec::new();
    for t in scenario.threads.iter().filter(|t| t.role != Role::Main) {
        let (exec, index) = (exec.clone(), scenario.threads.iter().position(|o| o.name == t.name).expect("thread"));
        match t.role {
            Role::Device { .. } => {
                let files = devices.iter().find(|(n, _)| *n == t.name).map(|(_, f)| f.clone()).expect("files");
                device_handles.push((t.name.clone(), spawn_named(&t.name, move || exec.device_thread(index, files))));
            }
            _ => handles.push((t.name.clone(), spawn_named(&t.name, move || exec.thread(index)))),
        }
    }
    let mut joined: Vec<String> = Vec::new();
    if let Some(main) = scenario.threads.iter().position(|t| t.role == Role::Main) {
        for line in scenario.threads[main].lines.iter().filter(|l| runs_under(l, design)) {
            if let Step::Join(name) = &line.step {
                crate::trace::blocked(format_args!("thread {name} to finish (join)"));
                if let Some(i) = handles.iter().position(|(n, _)| n == name) {
                    handles.remove(i).1.join().expect("a scenario thread");
                } else if let Some(i) = device_handles.iter().position(|(n, _)| n == name) {
                    device_handles.remove(i).1.join().expect("a device thread");
                }
                crate::trace::unblocked();
                joined.push(name.clone());
                continue;
            }
            exec.vmm_line(None, line);
        }
    }
    for (name, h) in handles {
        crate::trace::blocked(format_args!("thread {name} to finish (the scenario's end)"));
        h.join().expect("a scenario thread");
    }
    exec.stop.with(|s| *s = true);
    kvm.wake_waiters();
    for (name, h) in device_handles {
        crate::trace::blocked(format_args!("device thread {name} to finish (the scenario's end)"));
        h.join().expect("a device thread");
    }
    crate::trace::unblocked();
    exec.finish(mark)
}

fn t_line(t: &ThreadSpec) -> Line {
    Line { number: t.line, text: format!("thread {}", t.name), only: None, step: Step::Park }
}

fn runs_under(line: &Line, design: Design) -> bool {
    line.only.as_ref().is_none_or(|o| o.contains(&design))
}

fn setup_failure(kvm: &Kvm, line: &Line, text: String) -> Failure {
    Failure::traced("setup", format!("line {}: `{}`: {text}", line.number, line.text), kvm.recorder())
}

/// The file behind a device's `cmd` or `resp` end, with the device's own reference.
fn device_file(kvm: &Kvm, channels: &BTreeMap<String, ChannelFds>, fd: &FdRef, cmd: bool) -> Result<Arc<File>, String> {
    let n = match fd {
        FdRef::Num(n) => *n,
        FdRef::Device(name) => {
            let c = channels.get(name).ok_or_else(|| format!("no channel `{name}`"))?;
            if cmd { c.device_read } else { c.device_write }
        }
        FdRef::Kernel(name) => {
            let c = channels.get(name).ok_or_else(|| format!("no channel `{name}`"))?;
            if cmd { c.kernel_write } else { c.kernel_read }
        }
    };
    kvm.fget(n).map_err(|e| format!("the device's fd {n}: {e}"))
}

/// The fds an [`FdRef`] names.
fn fds_of(channels: &BTreeMap<String, ChannelFds>, fd: &FdRef) -> Vec<i32> {
    match fd {
        FdRef::Num(n) => vec![*n],
        FdRef::Kernel(name) => channels.get(name).map(ChannelFds::kernel).unwrap_or_default(),
        FdRef::Device(name) => channels.get(name).map(ChannelFds::device_copies).unwrap_or_default(),
    }
}

fn ok_or_errno(r: Result<(), Errno>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("err {e}"),
    }
}

/// The design's transport for `channel NAME`: seed's ioregionfd, else the kind asked for (a pipe
/// or FIFO pair for commands and responses).
fn open_channel(kvm: &Kvm, kind: TransportKind, buf: Option<usize>) -> Result<ChannelFds, String> {
    if kvm.knobs().region_fds == RegionFds::IoregionfdObject {
        let fd = kvm.ioregionfd().map_err(|e| format!("KVM_CREATE_IOREGIONFD: {e}"))?;
        return Ok(ChannelFds { kernel_read: fd, kernel_write: fd, device_read: fd, device_write: fd });
    }
    Ok(match kind {
        TransportKind::Stream | TransportKind::Seqpacket => {
            let (a, b) = kvm.open_transport(kind, buf, false);
            ChannelFds { kernel_read: a, kernel_write: a, device_read: b, device_write: b }
        }
        TransportKind::Pipe | TransportKind::Fifo => {
            let (cmd_r, cmd_w) = kvm.open_transport(kind, buf, false);
            let (resp_r, resp_w) = kvm.open_transport(kind, buf, false);
            ChannelFds { kernel_read: resp_r, kernel_write: cmd_w, device_read: cmd_r, device_write: resp_w }
        }
    })
}

/// KVM_SET_IOREGION in the design's form (seed: one fd; else read and write fds) for a
/// `region` line.
fn register(kvm: &Kvm, channels: &BTreeMap<String, ChannelFds>, region: &Step) -> String {
    let Step::Region { vm, bus, addr, size, channel, user_data, posted } = region else {
        return "err EINVAL".into();
    };
    let Some(c) = channels.get(channel) else { return "err EBADF".into() };
    let mut flags = if *bus == BusKind::Pio { KVM_IOREGION_PIO } else { 0 };
    if *posted {
        flags |= KVM_IOREGION_POSTED_WRITES;
    }
    let (guest_paddr, memory_size, user_data) = (*addr, *size, *user_data);
    ok_or_errno(if kvm.knobs().region_fds == RegionFds::IoregionfdObject {
        let args = KvmIoregionSeed { guest_paddr, memory_size, user_data, fd: c.kernel_write, flags, pad: [0; 32] };
        kvm.set_ioregion_seed(*vm, &args)
    } else {
        let (read_fd, write_fd) = (c.kernel_read, c.kernel_write);
        let args = KvmIoregionV3 { guest_paddr, memory_size, user_data, read_fd, write_fd, flags, pad: [0; 28] };
        kvm.set_ioregion_v3(*vm, &args)
    })
}

/// Removes a region in the design's form (seed: fd -1; else DEASSIGN).
fn deassign(kvm: &Kvm, vm: usize, bus: BusKind, addr: u64, size: u64) -> String {
    let pio = if bus == BusKind::Pio { KVM_IOREGION_PIO } else { 0 };
    ok_or_errno(if kvm.knobs().region_fds == RegionFds::IoregionfdObject {
        let args =
            KvmIoregionSeed { guest_paddr: addr, memory_size: size, user_data: 0, fd: -1, flags: pio, pad: [0; 32] };
        kvm.set_ioregion_seed(vm, &args)
    } else {
        let args = KvmIoregionV3 {
            guest_paddr: addr,
            memory_size: size,
            user_data: 0,
            read_fd: 0,
            write_fd: 0,
            flags: pio | KVM_IOREGION_DEASSIGN,
            pad: [0; 28],
        };
        kvm.set_ioregion_v3(vm, &args)
    })
}

/// Whether `got` is what an `expect` line allows (an alternative ending in `...` is a prefix).
fn allowed(alternatives: &[String], got: &str) -> bool {
    alternatives.iter().any(|a| match a.strip_suffix("...") {
        Some(prefix) => got.starts_with(prefix),
        None => got == a,
    })
}

fn setup_line(
    kvm: &Kvm,
    line: &Line,
    channels: &mut BTreeMap<String, ChannelFds>,
    device_files: &mut BTreeMap<String, Vec<Arc<File>>>,
    setup_vcpus: &mut usize,
    last: &str,
) -> Result<String, String> {
    Ok(match &line.step {
        Step::Channel { name, kind, buf } => {
            let c = open_channel(kvm, *kind, *buf)?;
            channels.insert(name.clone(), c);
            format!("channel {name}")
        }
        Step::Region { .. } => {
            let r = register(kvm, channels, &line.step);
            if r != "ok" {
                return Err(format!("KVM_SET_IOREGION: {r}"));
            }
            r
        }
        Step::Deassign { vm, bus, addr, size } => deassign(kvm, *vm, *bus, *addr, *size),
        Step::Give(name) => {
            let c = channels[name];
            let mut files = Vec::new();
            for fd in dedup(vec![c.device_read, c.device_write]) {
                files.push(kvm.fget(fd).map_err(|e| format!("the device end {fd}: {e}"))?);
            }
            for fd in c.device_copies() {
                kvm.close(fd).map_err(|e| format!("close {fd}: {e}"))?;
            }
            device_files.insert(name.clone(), files);
            "ok".into()
        }
        Step::Close(fd) => {
            let results: Vec<String> = fds_of(channels, fd).into_iter().map(|n| ok_or_errno(kvm.close(n))).collect();
            results.join(" ")
        }
        Step::Access { vm: Some(vm), access, .. } => {
            let vm = kvm.vm(*vm).ok_or("no such VM")?;
            let vcpu = Vcpu::sequential(vm.id(), SETUP_VCPU_BASE + *setup_vcpus);
            *setup_vcpus += 1;
            let pump = || kvm.pump();
            let out = vm.access_on(
                AccessCtx { vcpu: &vcpu, pump: Some(&pump) },
                access.bus,
                access.addr,
                access.len,
                access.value,
            );
            match out {
                Ok(o) => o.to_string(),
                Err(e) => format!("err EINVAL ({e})"),
            }
        }
        Step::Expect(alternatives) => {
            if !allowed(alternatives, last) {
                return Err(format!("the line before ended `{last}`"));
            }
            last.to_string()
        }
        Step::Script(op) => crate::script::apply(kvm, op),
        other => return Err(format!("{other:?} cannot run in setup")),
    })
}

/// A vCPU thread's state: its vCPU and its last KVM_RUN outcome.
struct VcpuState<'a> {
    name: &'a str,
    vcpu: Arc<Vcpu>,
    vm: usize,
    last: Option<AccessOutcome>,
    /// The outcomes of the last line that ran KVM_RUN (what `expect` checks).
    line_outcomes: Vec<AccessOutcome>,
}

impl Exec {
    /// The lines of thread `index` (a vCPU or VMM thread).
    fn thread(&self, index: usize) {
        let t = &self.scenario.threads[index];
        let mut state = match t.role {
            Role::Vcpu { vm, .. } => Some(VcpuState {
                name: &t.name,
                vcpu: self.vcpus[&t.name].clone(),
                vm,
                last: None,
                line_outcomes: Vec::new(),
            }),
            _ => None,
        };
        for line in t.lines.iter().filter(|l| runs_under(l, self.design)) {
            let Some(s) = state.as_mut() else {
                self.vmm_line(None, line);
                continue;
            };
            match &line.step {
                Step::Access { access, runs, .. } => {
                    let mut outs = self.resume(s, *runs);
                    if s.last != Some(AccessOutcome::Interrupted) {
                        outs.extend(self.kvm_run(s, Some(*access), 1));
                        if outs.len() < *runs {
                            outs.extend(self.resume(s, *runs - outs.len()));
                        }
                    }
                    self.note_outcomes(s.name, &outs);
                    s.line_outcomes = outs;
                }
                Step::Resume(runs) => {
                    let outs = self.resume(s, *runs);
                    self.note_outcomes(s.name, &outs);
                    s.line_outcomes = outs;
                }
                Step::Settle => self.settle(s),
                Step::Park => {
                    self.kvm.recorder().event(
                        Some(s.vm),
                        format_args!("{}: the thread stops calling KVM_RUN for good", s.vcpu.vcpu_id()),
                    );
                    for (inv, text) in self.kvm.check_parked(&s.vcpu) {
                        self.kvm.recorder().violation(inv, text);
                    }
                    break;
                }
                Step::Expect(alternatives) => {
                    let got = s.line_outcomes.last().or(s.last.as_ref()).map(|o| o.to_string()).unwrap_or_default();
                    if !allowed(alternatives, &got) {
                        let all: Vec<String> = s.line_outcomes.iter().map(|o| o.to_string()).collect();
                        self.mismatches.with(|m| {
                            m.push(format!(
                                "{} (line {}): the access ended `{got}`, not `{}` (this line's KVM_RUN calls: {})",
                                s.name,
                                line.number,
                                alternatives.join(" | "),
                                all.join(", ")
                            ))
                        });
                    }
                }
                _ => self.vmm_line(Some(s.name), line),
            }
        }
        if state.is_some() && self.tracks_out_of_run {
            let mut out = self.out_of_run.lock();
            out.push(t.name.clone());
            self.out_of_run_cv.notify_all();
        }
    }

    /// One KVM_RUN of `s` (making `access`, if any), `times` times at most while it returns -EINTR.
    fn kvm_run(
        &self,
        s: &mut VcpuState<'_>,
        access: Option<crate::vm::GuestAccess>,
        times: usize,
    ) -> Vec<AccessOutcome> {
        let vm = self.kvm.vm(s.vm).expect("the VM of a vCPU thread");
        let mut outs = Vec::new();
        let mut next = access;
        for _ in 0..times {
            let o = vm.kvm_run(AccessCtx { vcpu: &s.vcpu, pump: None }, next.take());
            s.last = Some(o.clone());
            let again = o == AccessOutcome::Interrupted;
            outs.push(o);
            if !again {
                break;
            }
        }
        outs
    }

    /// KVM_RUN again while the last one returned -EINTR, `runs` times at most.
    fn resume(&self, s: &mut VcpuState<'_>, runs: usize) -> Vec<AccessOutcome> {
        if s.last != Some(AccessOutcome::Interrupted) {
            return Vec::new();
        }
        self.kvm_run(s, None, runs)
    }

    /// KVM_RUN again while -EINTR, twice at most: a third -EINTR in a row, with nothing else
    /// changing, is an endless loop.
    fn settle(&self, s: &mut VcpuState<'_>) {
        let outs = self.resume(s, 2);
        if !outs.is_empty() {
            self.note_outcomes(s.name, &outs);
            s.line_outcomes = outs;
        }
        if s.last == Some(AccessOutcome::Interrupted) && !s.line_outcomes.is_empty() {
            self.kvm.recorder().violation(
                &LIVENESS,
                format_args!(
                    "{}: KVM_RUN returns -EINTR again and again for one access, with no signal sent: an endless -EINTR loop",
                    s.vcpu.vcpu_id()
                ),
            );
        }
    }

    /// A VMM operation made by any thread (`me`: the vCPU thread making it, if one is).
    fn vmm_line(&self, me: Option<&str>, line: &Line) {
        let kvm = &self.kvm;
        match &line.step {
            Step::Signal(name) => kvm.deliver_signal(&self.vcpus[name]),
            Step::RunPage(name, reason) => {
                kvm.recorder().event(None, format_args!("the VMM writes run->exit_reason = {reason} of {name}"));
                self.vcpus[name].set_exit_reason(*reason);
            }
            Step::Region { .. } => {
                let _ = register(kvm, &self.channels, &line.step);
            }
            Step::Deassign { vm, bus, addr, size } => {
                let _ = deassign(kvm, *vm, *bus, *addr, *size);
            }
            Step::Close(fd) => {
                for n in fds_of(&self.channels, fd) {
                    let _ = kvm.close(n);
                }
            }
            Step::DestroyVm(vm) => {
                self.wait_out_of_run(me, Some(*vm));
                self.destroy_vm(*vm);
            }
            Step::Exit => {
                self.wait_out_of_run(me, None);
                self.teardown();
            }
            Step::Script(op) => {
                let _ = crate::script::apply(kvm, op);
            }
            Step::Expect(_) | Step::Join(_) => {}
            other => {
                kvm.recorder().event(None, format_args!("(line {}: {other:?} is not for this thread)", line.number))
            }
        }
    }

    /// Waits until every vCPU thread (of VM `vm`, or of any VM), other than `me`, is out of
    /// KVM_RUN for good: KVM destroys a VM only when its last vCPU fd is closed.
    fn wait_out_of_run(&self, me: Option<&str>, vm: Option<usize>) {
        let waits_for: Vec<&String> = self
            .scenario
            .threads
            .iter()
            .filter(|t| matches!(t.role, Role::Vcpu { vm: v, .. } if vm.is_none_or(|w| w == v)))
            .map(|t| &t.name)
            .filter(|n| Some(n.as_str()) != me)
            .collect();
        let mut out = self.out_of_run.lock();
        let mut waited = false;
        while !waits_for.iter().all(|n| out.contains(n)) {
            let missing: Vec<&str> = waits_for.iter().filter(|n| !out.contains(**n)).map(|n| n.as_str()).collect();
            crate::trace::blocked(format_args!("{} to leave KVM_RUN for good", missing.join(", ")));
            waited = true;
            self.out_of_run_cv.wait(&mut out);
        }
        if waited {
            crate::trace::unblocked();
        }
    }

    /// VM destruction: its buses (devices, regions) go, then its vCPUs (an access one left
    /// interrupted is dealt with as the design says), as `kvm_destroy_vm` orders them.
    fn destroy_vm(&self, vm: usize) {
        let Some(v) = self.kvm.vm(vm) else { return };
        self.kvm.recorder().event(Some(vm), "destroy the VM (its last fd closed)");
        v.destroy(self.vcpus.values().map(|c| &**c));
    }

    /// Process exit: every VM destroyed (buses, then vCPUs), every fd closed.
    fn teardown(&self) {
        if self.torn_down.with(|t| std::mem::replace(t, true)) {
            return;
        }
        for vm in self.kvm.vms() {
            vm.destroy(self.vcpus.values().map(|c| &**c));
        }
        self.kvm.teardown_fds();
        self.kvm.recorder().event(None, "process exit: teardown done");
    }

    /// A device thread: `files` are its references (command end first).
    fn device_thread(&self, index: usize, files: Vec<Arc<File>>) {
        let t = &self.scenario.threads[index];
        let rec = self.kvm.recorder();
        let (cmd, resp) = (files[0].clone(), files.last().expect("a file").clone());
        let mut held = true;
        let mut received: Option<(crate::wire::Command, Option<Tag>)> = None;
        let stop = || self.stop.with(|s| *s);
        for line in t.lines.iter().filter(|l| runs_under(l, self.design)) {
            match &line.step {
                Step::Serve(n) if held => {
                    for _ in 0..*n {
                        let Some(c) = self.receive(&cmd, &stop) else { break };
                        self.answer(&resp, &c, &stop);
                    }
                }
                Step::Receive if held => received = self.receive(&cmd, &stop),
                Step::Answer if held => {
                    if let Some(c) = received.take() {
                        self.answer(&resp, &c, &stop);
                    }
                }
                Step::DeviceClose { dies } if held => {
                    rec.event(None, if *dies { "the device dies" } else { "the device closes its end" });
                    for f in &files {
                        f.put(rec);
                    }
                    held = false;
                }
                Step::Serve(_) | Step::Receive | Step::Answer | Step::DeviceClose { .. } => {}
                _ => self.vmm_line(None, line),
            }
        }
        if held {
            for f in &files {
                f.put(rec);
            }
        }
    }

    /// Reads one whole command (stops at end of file, on an error, or when told to stop while
    /// nothing is queued); checks it and its user_data.
    fn receive(&self, cmd: &File, stop: &(dyn Fn() -> bool + Sync)) -> Option<(crate::wire::Command, Option<Tag>)> {
        let rec = self.kvm.recorder();
        let wait = Wait::Block { pending: stop };
        loop {
            let mut buf = [0u8; MESSAGE_SIZE];
            let mut got = 0;
            let mut tags = Vec::new();
            while got < MESSAGE_SIZE {
                match cmd.read_tagged(rec, &mut buf[got..], &wait) {
                    (Transfer::Done(0) | Transfer::Failed(_) | Transfer::WouldBlock { .. }, _) => return None,
                    (Transfer::Done(n), t) => {
                        got += n;
                        for t in t {
                            if tags.last() != Some(&t) {
                                tags.push(t);
                            }
                        }
                    }
                }
            }
            let Some((c, tag)) = receive_model_command(rec, cmd, self.kvm.knobs().wire, &buf, &tags) else { continue };
            if !self.scenario.user_data.contains(&c.user_data) {
                rec.violation(
                    &WIRE,
                    format_args!("the device reads a command for user_data {:#x}, which no region has", c.user_data),
                );
            }
            return Some((c, tag));
        }
    }

    /// Answers a command that wants a response: reads return `0x100 * user_data + offset`.
    fn answer(&self, resp: &File, (c, tag): &(crate::wire::Command, Option<Tag>), stop: &(dyn Fn() -> bool + Sync)) {
        if !c.wants_response() {
            return;
        }
        let rec = self.kvm.recorder();
        let value = if c.direction == Direction::Read { 0x100 * c.user_data + c.offset } else { 0 };
        let _ = resp.write_tagged(rec, &Response { data: value }.encode(), &Wait::Block { pending: stop }, *tag);
        rec.event(None, format_args!("device responds {value:#x}"));
    }

    /// The end-of-run checks.
    /// Ghost: the outcomes of a line's KVM_RUN calls, for the execution's end state.
    fn note_outcomes(&self, thread: &str, outs: &[AccessOutcome]) {
        self.outcomes.with(|o| o.extend(outs.iter().map(|out| (thread.to_string(), out.to_string()))));
    }

    /// The end state of the execution: what every vCPU thread's KVM_RUN calls returned, in
    /// order, thread by thread (`vcpu0: ioregion 0x1 read 0x0 4 0x100; vcpu1: intr, ...`).
    fn end_state(&self) -> String {
        let outcomes = self.outcomes.with(|o| o.clone());
        let threads = self.scenario.threads.iter().filter(|t| matches!(t.role, Role::Vcpu { .. }));
        let per_thread: Vec<String> = threads
            .map(|t| {
                let outs: Vec<&str> = outcomes.iter().filter(|(n, _)| *n == t.name).map(|(_, o)| o.as_str()).collect();
                let outs = if outs.is_empty() { "no KVM_RUN".to_string() } else { outs.join(", ") };
                format!("{}: {outs}", t.name)
            })
            .collect();
        per_thread.join("; ")
    }

    fn finish(&self, mark: usize) -> Result<(), Failure> {
        super::check::note_end_state(self.end_state());
        let kvm = &self.kvm;
        verdict_after(kvm, mark)?;
        if let Some(m) = self.mismatches.with(|m| m.first().cloned()) {
            return Err(Failure::traced("assertion", m, kvm.recorder()));
        }
        fail_with(kvm, mark, kvm.check_end(!self.scenario.undrained))?;
        if self.scenario.no_leak {
            self.teardown();
            verdict_after(kvm, mark)?;
            fail_with(kvm, mark, kvm.check_no_leak())?;
        }
        Ok(())
    }
}
