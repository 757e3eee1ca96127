//! Scenarios in which userspace changes things while a vCPU dispatches: a VMM thread removes or
//! adds a region, closes its fds, writes the `kvm_run` page; a device dies and the vCPU thread
//! does not ignore `SIGPIPE`; a region goes away under an interrupted access.

use super::ioregion::{
    expect_outcome, read_access, region_on, remove_region, run_access, serve_until, transport, vcpu_thread,
};
use super::{Expected, Failure, Scenario, assertion, finish, verdict_after, watch};
use ioregionfd_model::bus::BusKind;
use ioregionfd_model::design::{Design, Knobs, VcpuDestroy};
use ioregionfd_model::fd::channel::ChannelKind;
use ioregionfd_model::invariants::LIVENESS;
use ioregionfd_model::kvm::Kvm;
use ioregionfd_model::sync::thread::JoinHandle;
use ioregionfd_model::sync::{Arc, Mutex, spawn_named};
use ioregionfd_model::trace::Recorder;
use ioregionfd_model::uapi::KvmIoregionV3;
use ioregionfd_model::vcpu::Vcpu;
use ioregionfd_model::vm::{AccessCtx, AccessOutcome, GuestAccess, VmConfig};

/// KVM_RUN calls a vCPU thread makes for one access while they return `-EINTR` (each scenario
/// sends at most one signal from outside); [`settle`] goes on from there.
const MAX_RUNS: usize = 2;

/// A device task serving up to `count` commands on its own reference to `dfd`, until told to stop.
struct Device {
    stop: Arc<Mutex<bool>>,
    handle: JoinHandle<()>,
}

impl Device {
    /// Takes the device's reference on `dfd`, marks the violations so far (setup findings are not
    /// the scenario's) and starts serving. Returns the mark and the device.
    fn start(kvm: &Kvm, dfd: i32, design: Design, count: usize) -> (usize, Device) {
        let file = kvm.fget(dfd).expect("device fd");
        let mark = kvm.recorder().violation_count();
        watch(kvm, mark);
        let stop = Arc::new(Mutex::new(false));
        let (rec, flag) = (kvm.recorder().clone(), stop.clone());
        let handle = spawn_named("device", move || {
            serve_until(&rec, &file, &file, design, count, &|| *flag.lock());
            file.put(&rec);
        });
        (mark, Device { stop, handle })
    }

    /// Stops the device once it has read every command queued for it (a signal to its thread)
    /// and waits for it.
    fn stop(self, kvm: &Kvm) {
        *self.stop.lock() = true;
        kvm.wake_waiters();
        self.handle.join().expect("device");
    }
}

/// Once every other thread is done or blocked for good: while the access's last KVM_RUN returned
/// `-EINTR`, runs KVM_RUN again. Nothing else changes any more and no signal comes from outside,
/// so two more `-EINTR` in a row are an endless loop: `liveness`.
fn settle(kvm: &Kvm, vm: usize, vcpu: &Vcpu, outcomes: &mut Vec<AccessOutcome>) {
    let vm = kvm.vm(vm).expect("vm");
    for _ in 0..2 {
        if outcomes.last() != Some(&AccessOutcome::Interrupted) {
            return;
        }
        outcomes.push(vm.kvm_run(AccessCtx { vcpu, pump: None }, None));
    }
    if outcomes.last() == Some(&AccessOutcome::Interrupted) {
        kvm.recorder().violation(
            &LIVENESS,
            format_args!(
                "vcpu{}: KVM_RUN returns -EINTR again and again for one access, with nothing else \
                 running and no signal sent: an endless -EINTR loop ({} calls)",
                vcpu.id(),
                outcomes.len()
            ),
        );
    }
}

/// The access ended with the device's answer, or with the complete access exiting to userspace.
fn answered_or_exited(kvm: &Kvm, outcomes: &[AccessOutcome], answer: &str, exit: &str) -> Result<(), Failure> {
    let last = outcomes.last().map(|o| o.to_string()).unwrap_or_default();
    let ok = last == answer || last.starts_with(exit);
    assertion(kvm, ok, format!("the access ended {last}, neither {answer} nor {exit}... ({outcomes:?})"))
}

fn new_system(design: Design) -> (Arc<Kvm>, usize) {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let vm = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    (kvm, vm)
}

/// A VMM thread removes the region (DEASSIGN, seed's fd = -1) while a vCPU reads it.
fn deassign_races_access(design: Design) -> Result<(), Failure> {
    let (kvm, vm) = new_system(design);
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let (mark, device) = Device::start(&kvm, dfd, design, 1);
    let k = kvm.clone();
    let vcpu = spawn_named("vcpu0", move || {
        run_access(&k.vm(vm).expect("vm"), &Vcpu::new(vm, 0, false), Some(read_access(0x1000)), 1)
    });
    let k = kvm.clone();
    let vmm = spawn_named("vmm", move || remove_region(&k, vm, 0x1000));
    let outcomes = vcpu.join().expect("vcpu0");
    vmm.join().expect("vmm");
    device.stop(&kvm);
    verdict_after(&kvm, mark)?;
    answered_or_exited(&kvm, &outcomes, "ioregion 0x1 read 0x0 4 0x100", "exit mmio 0x1000 4")?;
    finish(&kvm, mark, true)
}

/// A VMM thread registers a second region on the same fd and bus while a vCPU dispatches to the
/// first (KVM_SET_IOREGION racing a dispatch: the bus array is copied and republished, and the
/// new region finds and shares the first one's context).
fn set_ioregion_races_dispatch(design: Design) -> Result<(), Failure> {
    let (kvm, vm) = new_system(design);
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let (mark, device) = Device::start(&kvm, dfd, design, 1);
    let k = kvm.clone();
    let vcpu = spawn_named("vcpu0", move || {
        run_access(&k.vm(vm).expect("vm"), &Vcpu::new(vm, 0, false), Some(read_access(0x1000)), 1)
    });
    let k = kvm.clone();
    let vmm = spawn_named("vmm", move || region_on(&k, vm, BusKind::Mmio, 0x2000, kfd, 2));
    let outcomes = vcpu.join().expect("vcpu0");
    vmm.join().expect("vmm");
    device.stop(&kvm);
    expect_outcome(&kvm, mark, &outcomes, "ioregion 0x1 read 0x0 4 0x100")?;
    finish(&kvm, mark, true)
}

/// A VMM thread closes every fd it holds on the transport (the kernel's end and its copy of the
/// device's end) while a vCPU dispatches; the device keeps its own reference.
fn vmm_closes_fds_during_dispatch(design: Design) -> Result<(), Failure> {
    let (kvm, vm) = new_system(design);
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let (mark, device) = Device::start(&kvm, dfd, design, 1);
    let k = kvm.clone();
    let vcpu = spawn_named("vcpu0", move || {
        run_access(&k.vm(vm).expect("vm"), &Vcpu::new(vm, 0, false), Some(read_access(0x1000)), 1)
    });
    let k = kvm.clone();
    let vmm = spawn_named("vmm", move || {
        k.close(kfd).expect("close the kernel's end");
        if dfd != kfd {
            k.close(dfd).expect("close the copy of the device's end");
        }
    });
    let outcomes = vcpu.join().expect("vcpu0");
    vmm.join().expect("vmm");
    device.stop(&kvm);
    expect_outcome(&kvm, mark, &outcomes, "ioregion 0x1 read 0x0 4 0x100")?;
    finish(&kvm, mark, true)
}

/// A signal reaches a vCPU at any point of its access (waiting for the context, sending,
/// waiting for the reply); it runs KVM_RUN again after `-EINTR`.
fn signal_then_resume(design: Design) -> Result<(), Failure> {
    let (kvm, vm) = new_system(design);
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let (mark, device) = Device::start(&kvm, dfd, design, 1);
    let vcpu = Arc::new(Vcpu::new(vm, 0, false));
    let (k, v) = (kvm.clone(), vcpu.clone());
    let runner =
        spawn_named("vcpu0", move || run_access(&k.vm(vm).expect("vm"), &v, Some(read_access(0x1000)), MAX_RUNS));
    kvm.deliver_signal(&vcpu);
    let mut outcomes = runner.join().expect("vcpu0");
    settle(&kvm, vm, &vcpu, &mut outcomes);
    device.stop(&kvm);
    expect_outcome(&kvm, mark, &outcomes, "ioregion 0x1 read 0x0 4 0x100")?;
    finish(&kvm, mark, true)
}

/// The device dies (closes its only end) while a vCPU writes to its region; the vCPU thread does
/// not ignore `SIGPIPE` (the VMM handles it and runs KVM_RUN again). No signal comes from outside.
fn device_dies_sigpipe_handled(design: Design) -> Result<(), Failure> {
    device_dies_sigpipe_handled_with(design.knobs())
}

fn device_dies_sigpipe_handled_with(knobs: Knobs) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_knobs(knobs, Recorder::new()));
    let vm = kvm.create_vm(VmConfig::for_design(&knobs));
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let dev = kvm.fget(dfd).expect("device fd");
    if dfd != kfd {
        kvm.close(dfd).expect("the VMM passed the device end on and closed its copy");
    }
    let mark = kvm.recorder().violation_count();
    watch(&kvm, mark);
    let rec = kvm.recorder().clone();
    let device = spawn_named("device", move || {
        rec.event(None, "the device dies");
        dev.put(&rec);
    });
    let vcpu = Arc::new(Vcpu::new(vm, 0, false));
    vcpu.set_sigpipe_ignored(false);
    let (k, v) = (kvm.clone(), vcpu.clone());
    let runner = spawn_named("vcpu0", move || {
        let write = GuestAccess { bus: BusKind::Mmio, addr: 0x1000, len: 4, value: Some(7) };
        run_access(&k.vm(vm).expect("vm"), &v, Some(write), MAX_RUNS)
    });
    device.join().expect("device");
    if dfd == kfd {
        // seed: the device end is the ioregionfd; the process's own fd is its last reference.
        let _ = kvm.close(kfd);
    }
    let mut outcomes = runner.join().expect("vcpu0");
    settle(&kvm, vm, &vcpu, &mut outcomes);
    verdict_after(&kvm, mark)?;
    let last = outcomes.last().map(|o| o.to_string()).unwrap_or_default();
    assertion(
        &kvm,
        last.starts_with("exit") || last.starts_with("ioregion 0x1 write"),
        format!("the write ended {last} ({outcomes:?})"),
    )?;
    finish(&kvm, mark, false)
}

/// A vCPU is interrupted while it waits for its reply; before it runs again the VMM removes the
/// region; the vCPU runs KVM_RUN again (and again while it returns `-EINTR`), then reads a second
/// region on the same fd.
fn region_removed_before_resume(design: Design) -> Result<(), Failure> {
    let (kvm, vm_id) = new_system(design);
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm_id, BusKind::Mmio, 0x1000, kfd, 1);
    region_on(&kvm, vm_id, BusKind::Mmio, 0x2000, kfd, 2);
    let (mark, device) = Device::start(&kvm, dfd, design, 2);
    let vcpu = Arc::new(Vcpu::new(vm_id, 0, false));
    let first = interrupted_then_removed(&kvm, vm_id, &vcpu);
    let again = first[0] == AccessOutcome::Interrupted;
    let (k, v) = (kvm.clone(), vcpu.clone());
    let runner = spawn_named("vcpu0", move || {
        let vm = k.vm(vm_id).expect("vm");
        let mut outcomes = if again { run_access(&vm, &v, None, MAX_RUNS) } else { Vec::new() };
        if outcomes.last() != Some(&AccessOutcome::Interrupted) {
            outcomes.extend(run_access(&vm, &v, Some(read_access(0x2000)), MAX_RUNS));
        }
        outcomes
    });
    let mut outcomes = first;
    outcomes.extend(runner.join().expect("vcpu0"));
    settle(&kvm, vm_id, &vcpu, &mut outcomes);
    device.stop(&kvm);
    expect_outcome(&kvm, mark, &outcomes, "ioregion 0x2 read 0x0 4 0x200")?;
    finish(&kvm, mark, true)
}

/// Runs a read of 0x1000 on `vcpu` with a signal already pending (so it is interrupted while it
/// waits for its reply, or before it sends), then removes the region. Returns the outcome.
fn interrupted_then_removed(kvm: &Kvm, vm_id: usize, vcpu: &Vcpu) -> Vec<AccessOutcome> {
    let vm = kvm.vm(vm_id).expect("vm");
    kvm.deliver_signal(vcpu);
    let first = vm.kvm_run(AccessCtx { vcpu, pump: None }, Some(read_access(0x1000)));
    remove_region(kvm, vm_id, 0x1000);
    vec![first]
}

/// After an interrupted access whose region was then removed has completed, a VMM thread writes
/// `run->exit_reason = KVM_EXIT_INTR` (the page userspace maps; the value KVM itself leaves there
/// after a signal) while the vCPU makes a plain access that exits to userspace.
fn run_page_written_by_vmm(design: Design) -> Result<(), Failure> {
    let (kvm, vm_id) = new_system(design);
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm_id, BusKind::Mmio, 0x1000, kfd, 1);
    let (mark, device) = Device::start(&kvm, dfd, design, 1);
    let vcpu = Arc::new(Vcpu::new(vm_id, 0, false));
    let mut outcomes = interrupted_then_removed(&kvm, vm_id, &vcpu);
    let vm = kvm.vm(vm_id).expect("vm");
    if outcomes[0] == AccessOutcome::Interrupted {
        outcomes.extend(run_access(&vm, &vcpu, None, MAX_RUNS));
    }
    let v = vcpu.clone();
    let vmm = spawn_named("vmm", move || v.set_exit_reason(ioregionfd_model::vcpu::KVM_EXIT_INTR));
    let (k, v) = (kvm.clone(), vcpu.clone());
    let plain = GuestAccess { bus: BusKind::Mmio, addr: 0x3000, len: 4, value: Some(9) };
    let runner = spawn_named("vcpu0", move || run_access(&k.vm(vm_id).expect("vm"), &v, Some(plain), MAX_RUNS));
    let mut later = runner.join().expect("vcpu0");
    vmm.join().expect("vmm");
    settle(&kvm, vm_id, &vcpu, &mut later);
    device.stop(&kvm);
    verdict_after(&kvm, mark)?;
    let last = later.last().map(|o| o.to_string()).unwrap_or_default();
    assertion(
        &kvm,
        last == "exit mmio 0x3000 4 0x9",
        format!("the plain write ended {last} ({outcomes:?} then {later:?})"),
    )?;
    finish(&kvm, mark, true)
}

/// VMX/EPT: two vCPUs use two regions on one stream socket, a sized one (read) and a size-0 one
/// with posted writes whose page was accessed once already, so the write takes the FAST_MMIO
/// path with length 0.
fn fast_mmio_and_sized_one_fd(design: Design) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let mut config = VmConfig::for_design(&design.knobs());
    config.backend = ioregionfd_model::vm::Backend::VmxEpt;
    let vm_id = kvm.create_vm(config);
    let (kfd, dfd) = kvm.socketpair(ChannelKind::Stream, 4096, false);
    let posted = ioregionfd_model::uapi::KVM_IOREGION_POSTED_WRITES;
    for (paddr, size, flags, user_data) in [(0x1000, 0x10, 0, 1), (0x2000, 0, posted, 2)] {
        let args = KvmIoregionV3 {
            guest_paddr: paddr,
            memory_size: size,
            user_data,
            read_fd: kfd,
            write_fd: kfd,
            flags,
            pad: [0; 28],
        };
        kvm.set_ioregion_v3(vm_id, &args).expect("setup: KVM_SET_IOREGION");
    }
    let vm = kvm.vm(vm_id).expect("vm");
    let write = GuestAccess { bus: BusKind::Mmio, addr: 0x2000, len: 4, value: Some(7) };
    let warm = Vcpu::new(vm_id, 9, false);
    let o = vm.kvm_run(AccessCtx { vcpu: &warm, pump: None }, Some(write));
    assert!(o.to_string().starts_with("ioregion 0x2 write"), "setup: the first access of the page: {o}");
    let (mark, device) = Device::start(&kvm, dfd, design, 3);
    let k = kvm.clone();
    let reader = spawn_named("vcpu0", move || {
        run_access(&k.vm(vm_id).expect("vm"), &Vcpu::new(vm_id, 0, false), Some(read_access(0x1000)), 1)
    });
    let k = kvm.clone();
    let writer = spawn_named("vcpu1", move || {
        run_access(&k.vm(vm_id).expect("vm"), &Vcpu::new(vm_id, 1, false), Some(write), 1)
    });
    let (read, written) = (reader.join().expect("vcpu0"), writer.join().expect("vcpu1"));
    device.stop(&kvm);
    expect_outcome(&kvm, mark, &read, "ioregion 0x1 read 0x0 4 0x100")?;
    verdict_after(&kvm, mark)?;
    let last = written.last().map(|o| o.to_string()).unwrap_or_default();
    assertion(&kvm, last.starts_with("ioregion 0x2 write"), format!("the doorbell write ended {last}"))?;
    finish(&kvm, mark, true)
}

/// Two VMs map a region each onto one fd. VM 0's vCPU is interrupted while it waits for its reply
/// and never runs KVM_RUN again: a VMM thread destroys it and VM 0. Meanwhile VM 1's vCPU reads
/// its region; the device answers both commands in order.
fn vcpu_never_resumes(design: Design) -> Result<(), Failure> {
    vcpu_never_resumes_with(design.knobs())
}

fn vcpu_never_resumes_with(knobs: Knobs) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_knobs(knobs, Recorder::new()));
    let config = VmConfig::for_design(&knobs);
    let vms = [kvm.create_vm(config), kvm.create_vm(config)];
    let (kfd, dfd) = transport(&kvm);
    for (i, vm) in vms.iter().enumerate() {
        region_on(&kvm, *vm, BusKind::Mmio, 0x1000, kfd, i as u64 + 1);
    }
    let (mark, device) = Device::start(&kvm, dfd, knobs.design, 2);
    let vcpu0 = Arc::new(Vcpu::new(vms[0], 0, false));
    kvm.deliver_signal(&vcpu0);
    let first = kvm.vm(vms[0]).expect("vm").kvm_run(AccessCtx { vcpu: &vcpu0, pump: None }, Some(read_access(0x1000)));
    let k = kvm.clone();
    let vmm = spawn_named("vmm", move || {
        let vm = k.vm(vms[0]).expect("vm");
        vm.destroy_vcpu(&vcpu0);
        vm.io.destroy();
    });
    let reader = vcpu_thread(&kvm, vms[1], 0, read_access(0x1000), 1);
    // (The VMM thread ends in every interleaving: joined first, so that a deadlock of the reader
    // never leaves the handle of a finished thread to loom's cleanup.)
    vmm.join().expect("vmm");
    let outcomes = reader.join().expect("vcpu1").1;
    device.stop(&kvm);
    verdict_after(&kvm, mark)?;
    assertion(
        &kvm,
        first == AccessOutcome::Interrupted || first.to_string() == "ioregion 0x1 read 0x0 4 0x100",
        format!("setup: vm0's read ended {first}"),
    )?;
    expect_outcome(&kvm, mark, &outcomes, "ioregion 0x2 read 0x0 4 0x200")?;
    finish(&kvm, mark, true)
}

fn per_design(
    name: &'static str,
    summary: &'static str,
    run: [fn() -> Result<(), Failure>; 3],
    expected: [Expected; 3],
) -> Vec<Scenario> {
    ["seed", "rfc-v3", "proposed"]
        .into_iter()
        .zip(run)
        .zip(expected)
        .map(|((design, run), expected)| Scenario { name, summary, design, expected, run })
        .collect()
}

macro_rules! designs {
    ($run:expr) => {
        [|| $run(Design::Seed), || $run(Design::RfcV3), || $run(Design::Proposed)]
    };
}

pub fn scenarios() -> Vec<Scenario> {
    use Expected::{Holds, Violates};
    let mut all = Vec::new();
    all.extend(per_design(
        "deassign-races-access",
        "a VMM thread removes the region while a vCPU reads it",
        designs!(deassign_races_access),
        [Holds, Holds, Holds],
    ));
    all.extend(per_design(
        "set-ioregion-races-dispatch",
        "a VMM thread registers a second region on the fd and bus a vCPU is dispatching on",
        designs!(set_ioregion_races_dispatch),
        [Holds, Holds, Holds],
    ));
    all.extend(per_design(
        "vmm-closes-fds-during-dispatch",
        "a VMM thread closes its fds of the transport while a vCPU dispatches; the device keeps its own",
        designs!(vmm_closes_fds_during_dispatch),
        [Holds, Holds, Holds],
    ));
    all.extend(per_design(
        "signal-then-resume",
        "a signal reaches a vCPU anywhere in its access; it runs KVM_RUN again after -EINTR",
        designs!(signal_then_resume),
        [Holds, Holds, Holds],
    ));
    all.extend(per_design(
        "device-dies-sigpipe-handled",
        "the device dies while a vCPU writes to it; the vCPU thread handles SIGPIPE and runs KVM_RUN again",
        designs!(device_dies_sigpipe_handled),
        [Holds, Violates("liveness"), Holds],
    ));
    all.push(Scenario {
        name: "device-dies-sigpipe-handled",
        summary: "as above, with a pending signal turning the failed write into -EINTR",
        design: "defect:signal-beats-error",
        expected: Violates("liveness"),
        run: || device_dies_sigpipe_handled_with(Knobs { errors_beat_signals: false, ..Design::Proposed.knobs() }),
    });
    all.extend(per_design(
        "region-removed-before-resume",
        "a vCPU interrupted waiting for its reply resumes after its region was removed, then reads another region on the fd",
        designs!(region_removed_before_resume),
        [Holds, Violates("resume"), Holds],
    ));
    all.extend(per_design(
        "run-page-written-by-vmm",
        "after an interrupted access whose region was removed, a VMM thread writes run->exit_reason while the vCPU runs",
        designs!(run_page_written_by_vmm),
        // rfc-v3: loom meets the made-up exit for an executed command first; shuttle's schedules
        // can meet the VMM's KVM_EXIT_INTR landing before the forced-EINTR check first, after which
        // every KVM_RUN returns -EINTR (docs/findings.md)
        [Holds, Violates("exactly-once|liveness"), Holds],
    ));
    all.extend(per_design(
        "vcpu-never-resumes",
        "two VMs share an fd; vm0's vCPU, interrupted waiting for its reply, is destroyed with vm0 while vm1 reads",
        designs!(vcpu_never_resumes),
        [Violates("liveness"), Violates("isolation"), Holds],
    ));
    all.push(Scenario {
        name: "vcpu-never-resumes",
        summary: "as above, the destroyed vCPU's transaction keeping its context",
        design: "defect:vcpu-destroy-keeps-context",
        expected: Violates("liveness"),
        run: || {
            vcpu_never_resumes_with(Knobs {
                on_vcpu_destroy: VcpuDestroy::KeepsTransaction,
                ..Design::Proposed.knobs()
            })
        },
    });
    all.push(Scenario {
        name: "vcpu-never-resumes",
        summary: "as above, the context released without discarding the response still owed",
        design: "defect:vcpu-destroy-without-drain",
        expected: Violates("isolation"),
        run: || {
            vcpu_never_resumes_with(Knobs { on_vcpu_destroy: VcpuDestroy::ReleaseContext, ..Design::Proposed.knobs() })
        },
    });
    all.extend(
        per_design(
            "fast-mmio-and-sized-one-fd",
            "VMX/EPT: one stream socket serves a sized region (read) and a size-0 posted region (FAST_MMIO write)",
            designs!(fast_mmio_and_sized_one_fd),
            [Holds, Holds, Holds],
        )
        .into_iter()
        .filter(|s| s.design != "seed"),
    );
    all
}
