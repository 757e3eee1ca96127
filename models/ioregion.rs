//! ioregion scenarios: vCPUs dispatching to ioregions while device tasks answer and VMM threads
//! change things, under each design.

use super::{Expected, Failure, Scenario, finish, finish_with_teardown};
use ioregionfd_model::bus::BusKind;
use ioregionfd_model::design::{Design, Knobs, SendLock};
use ioregionfd_model::device::receive_model_command;
use ioregionfd_model::fd::File;
use ioregionfd_model::fd::channel::{ChannelKind, Transfer, Wait};
use ioregionfd_model::invariants::WIRE;
use ioregionfd_model::kvm::Kvm;
use ioregionfd_model::sync::{Arc, spawn_named};
use ioregionfd_model::trace::Recorder;
use ioregionfd_model::uapi::{KvmIoregionSeed, KvmIoregionV3};
use ioregionfd_model::vcpu::Vcpu;
use ioregionfd_model::vm::{AccessCtx, AccessOutcome, GuestAccess, VmConfig};
use ioregionfd_model::wire::{Direction, MESSAGE_SIZE, Response};

/// A device task on model files: answers `count` commands (reads with `0x100 * user_data +
/// offset`), blocking, then stops and puts its reference on its file. Stops early at end of file.
pub(super) fn device_task(rec: &Recorder, file: Arc<File>, design: Design, count: usize) {
    serve_commands(rec, &file, &file, design, count);
    file.put(rec);
}

/// Starts the scenario proper: takes the device's reference on `dfd`, marks the violations so far
/// (setup findings are not the scenario's) and watches from there, then starts [`device_task`]
/// answering `count` commands in a thread of its own. Returns the mark and the device thread.
fn watch_and_serve(
    kvm: &Kvm,
    dfd: i32,
    design: Design,
    count: usize,
) -> (usize, ioregionfd_model::sync::thread::JoinHandle<()>) {
    let dev = kvm.fget(dfd).expect("device fd");
    let mark = kvm.recorder().violation_count();
    super::watch(kvm, mark);
    let rec = kvm.recorder().clone();
    (mark, spawn_named("device", move || device_task(&rec, dev, design, count)))
}

pub(super) fn serve_commands(rec: &Recorder, cmd: &File, resp: &File, design: Design, count: usize) {
    serve_until(rec, cmd, resp, design, count, &|| false);
}

/// [`serve_commands`] that also stops when `stop()` turns true while it waits for a command
/// (a device told to stop; the caller wakes it with [`Kvm::wake_waiters`]). A command already
/// queued is read first.
pub(super) fn serve_until(
    rec: &Recorder,
    cmd: &File,
    resp: &File,
    design: Design,
    count: usize,
    stop: &(dyn Fn() -> bool + Sync),
) {
    let wait = Wait::Block { pending: stop };
    for _ in 0..count {
        let mut buf = [0u8; MESSAGE_SIZE];
        let mut got = 0;
        let mut tags = Vec::new();
        while got < MESSAGE_SIZE {
            match cmd.read_tagged(rec, &mut buf[got..], &wait) {
                (Transfer::Done(0) | Transfer::Failed(_) | Transfer::WouldBlock { .. }, _) => return,
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
        let Some((c, tag)) = receive_model_command(rec, cmd, design.knobs().wire, &buf, &tags) else { continue };
        if !(1..=2).contains(&c.user_data) {
            rec.violation(
                &WIRE,
                format_args!("the device reads a command for user_data {:#x}, which no region has", c.user_data),
            );
        }
        if !c.wants_response() {
            continue;
        }
        let value = if c.direction == Direction::Read { 0x100 * c.user_data + c.offset } else { 0 };
        let _ = resp.write_tagged(rec, &Response { data: value }.encode(), &wait, tag);
        rec.event(None, format_args!("device responds {value:#x}"));
    }
}

/// Registers a region at `paddr` on `vm` for the design: the seed struct on the ioregionfd, the
/// v3 struct with `fd` as both read and write fd otherwise.
fn region(kvm: &Kvm, vm: usize, paddr: u64, fd: i32, user_data: u64) {
    let r = if kvm.design() == Design::Seed {
        let args = KvmIoregionSeed { guest_paddr: paddr, memory_size: 0x10, user_data, fd, flags: 0, pad: [0; 32] };
        kvm.set_ioregion_seed(vm, &args)
    } else {
        let args = KvmIoregionV3 {
            guest_paddr: paddr,
            memory_size: 0x10,
            user_data,
            read_fd: fd,
            write_fd: fd,
            flags: 0,
            pad: [0; 28],
        };
        kvm.set_ioregion_v3(vm, &args)
    };
    r.expect("setup: KVM_SET_IOREGION");
}

/// The kernel's fd and the device's fd of one transport: a socketpair, or the seed ioregionfd
/// (both ends are the ioregionfd).
pub(super) fn transport(kvm: &Kvm) -> (i32, i32) {
    if kvm.design() == Design::Seed {
        let fd = kvm.ioregionfd().expect("ioregionfd");
        (fd, fd)
    } else {
        kvm.socketpair(ChannelKind::Seqpacket, 4096, false)
    }
}

pub(super) fn read_access(paddr: u64) -> GuestAccess {
    GuestAccess { bus: BusKind::Mmio, addr: paddr, len: 4, value: None }
}

/// Two VMs each map a region onto the same fd; one vCPU of each reads its region while the
/// device answers both commands.
fn two_vms_one_fd(design: Design) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let config = VmConfig::for_design(&design.knobs());
    let vms = [kvm.create_vm(config), kvm.create_vm(config)];
    let (kfd, dfd) = transport(&kvm);
    for (i, vm) in vms.iter().enumerate() {
        region(&kvm, *vm, 0x1000, kfd, i as u64 + 1);
    }
    let (mark, device) = watch_and_serve(&kvm, dfd, design, 2);
    let vcpus: Vec<_> = vms
        .iter()
        .map(|&vm| {
            let kvm = kvm.clone();
            spawn_named(&format!("vcpu{vm}"), move || {
                let vm = kvm.vm(vm).expect("vm");
                let vcpu = Vcpu::new(vm.id(), 0, false);
                vm.kvm_run(AccessCtx { vcpu: &vcpu, pump: None }, Some(read_access(0x1000)))
            })
        })
        .collect();
    let outcomes: Vec<AccessOutcome> = vcpus.into_iter().map(|h| h.join().expect("vcpu")).collect();
    device.join().expect("device");
    for (i, o) in outcomes.iter().enumerate() {
        let want = format!("ioregion {:#x} read 0x0 4 {:#x}", i + 1, 0x100 * (i + 1));
        if o.to_string() != want {
            super::verdict_after(&kvm, mark)?;
            super::assertion(&kvm, false, format!("vm{i} read {o}, not {want}"))?;
        }
    }
    finish(&kvm, mark, true)
}

/// Registers a region of `size` at `paddr` on `bus` (v3 struct; seed struct under seed).
pub(super) fn region_on(kvm: &Kvm, vm: usize, bus: BusKind, paddr: u64, fd: i32, user_data: u64) {
    let pio = if bus == BusKind::Pio { ioregionfd_model::uapi::KVM_IOREGION_PIO } else { 0 };
    let r = if kvm.design() == Design::Seed {
        let args = KvmIoregionSeed { guest_paddr: paddr, memory_size: 0x10, user_data, fd, flags: pio, pad: [0; 32] };
        kvm.set_ioregion_seed(vm, &args)
    } else {
        let args = KvmIoregionV3 {
            guest_paddr: paddr,
            memory_size: 0x10,
            user_data,
            read_fd: fd,
            write_fd: fd,
            flags: pio,
            pad: [0; 28],
        };
        kvm.set_ioregion_v3(vm, &args)
    };
    r.expect("setup: KVM_SET_IOREGION");
}

/// KVM_RUN after KVM_RUN on `vcpu` while it returns `-EINTR` (at most `max_runs` times), the first
/// one making `access` (if any); every outcome, in order.
pub(super) fn run_access(
    vm: &ioregionfd_model::vm::Vm,
    vcpu: &Vcpu,
    access: Option<GuestAccess>,
    max_runs: usize,
) -> Vec<AccessOutcome> {
    let mut outcomes = Vec::new();
    let mut next = access;
    for _ in 0..max_runs {
        let o = vm.kvm_run(AccessCtx { vcpu, pump: None }, next.take());
        let again = o == AccessOutcome::Interrupted;
        outcomes.push(o);
        if !again {
            break;
        }
    }
    outcomes
}

/// Runs `access` on a new vCPU of `vm` in its own thread, KVM_RUN after KVM_RUN while it returns
/// `-EINTR` (at most `max_runs` times).
pub(super) fn vcpu_thread(
    kvm: &Arc<Kvm>,
    vm: usize,
    id: usize,
    access: GuestAccess,
    max_runs: usize,
) -> ioregionfd_model::sync::thread::JoinHandle<(Arc<Vcpu>, Vec<AccessOutcome>)> {
    let kvm = kvm.clone();
    let vcpu = Arc::new(Vcpu::new(vm, id, false));
    spawn_named(&format!("vcpu{id}"), move || {
        let vm = kvm.vm(vm).expect("vm");
        let outcomes = run_access(&vm, &vcpu, Some(access), max_runs);
        (vcpu, outcomes)
    })
}

/// One fd serves a PIO region and an MMIO region of one VM; a vCPU reads each.
fn pio_and_mmio_one_fd(design: Design) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let vm = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    region_on(&kvm, vm, BusKind::Pio, 0x60, kfd, 2);
    let (mark, device) = watch_and_serve(&kvm, dfd, design, 2);
    let a = vcpu_thread(&kvm, vm, 0, read_access(0x1000), 1);
    let b = vcpu_thread(&kvm, vm, 1, GuestAccess { bus: BusKind::Pio, addr: 0x60, len: 4, value: None }, 1);
    let (oa, ob) = (a.join().expect("vcpu0").1, b.join().expect("vcpu1").1);
    device.join().expect("device");
    expect_outcome(&kvm, mark, &oa, "ioregion 0x1 read 0x0 4 0x100")?;
    expect_outcome(&kvm, mark, &ob, "ioregion 0x2 read 0x0 4 0x200")?;
    finish(&kvm, mark, true)
}

pub(super) fn expect_outcome(kvm: &Kvm, mark: usize, got: &[AccessOutcome], want: &str) -> Result<(), Failure> {
    let last = got.last().map(|o| o.to_string()).unwrap_or_default();
    if last != want {
        super::verdict_after(kvm, mark)?;
        super::assertion(kvm, false, format!("an access ended {last}, not {want} (outcomes {got:?})"))?;
    }
    Ok(())
}

/// vCPU 0 waits for its reply; vCPU 1 (same VM, same fd) waits for the context; the VMM signals
/// vCPU 1, which runs KVM_RUN again after `-EINTR`; the device answers both.
fn signal_waiting_for_context(design: Design) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let vm = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let (mark, device) = watch_and_serve(&kvm, dfd, design, 2);
    let a = vcpu_thread(&kvm, vm, 0, read_access(0x1000), 3);
    let kvm2 = kvm.clone();
    let vcpu1 = Arc::new(Vcpu::new(vm, 1, false));
    let v1 = vcpu1.clone();
    let b = spawn_named("vcpu1", move || {
        let vm = kvm2.vm(vm).expect("vm");
        run_access(&vm, &v1, Some(read_access(0x1004)), 3)
    });
    kvm.deliver_signal(&vcpu1);
    let oa = a.join().expect("vcpu0").1;
    let ob = b.join().expect("vcpu1");
    device.join().expect("device");
    expect_outcome(&kvm, mark, &oa, "ioregion 0x1 read 0x0 4 0x100")?;
    expect_outcome(&kvm, mark, &ob, "ioregion 0x1 read 0x4 4 0x104")?;
    finish(&kvm, mark, true)
}

/// A vCPU is interrupted while it waits for its reply; before it runs again the VMM replaces the
/// region at that address by another one on another fd; then the vCPU resumes.
fn region_replaced_before_resume(design: Design) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let vm_id = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    let (kfd, dfd) = transport(&kvm);
    let (kfd2, dfd2) = transport(&kvm);
    region_on(&kvm, vm_id, BusKind::Mmio, 0x1000, kfd, 1);
    let dev = kvm.fget(dfd).expect("device fd");
    let dev2 = kvm.fget(dfd2).expect("device fd");
    let mark = kvm.recorder().violation_count();
    super::watch(&kvm, mark);
    let vm = kvm.vm(vm_id).expect("vm");
    let vcpu = Vcpu::new(vm_id, 0, false);
    // Interrupted before the device answers: the signal is already pending when it waits.
    kvm.deliver_signal(&vcpu);
    let first = vm.kvm_run(AccessCtx { vcpu: &vcpu, pump: None }, Some(read_access(0x1000)));
    // The VMM replaces the region; both devices answer what they get.
    remove_region(&kvm, vm_id, 0x1000);
    region_on(&kvm, vm_id, BusKind::Mmio, 0x1000, kfd2, 2);
    // No access reaches the new region, so nothing serves it.
    dev2.put(kvm.recorder());
    let rec = kvm.recorder().clone();
    let d1 = spawn_named("device", move || device_task(&rec, dev, design, 1));
    let mut outcomes = vec![first];
    outcomes.extend(run_access(&vm, &vcpu, None, 3));
    // Let the device finish: tear the system down (KVM's references go with the VM).
    kvm.teardown();
    d1.join().expect("device");
    super::verdict_after(&kvm, mark)?;
    let last = outcomes.last().map(|o| o.to_string()).unwrap_or_default();
    let ok = last == "ioregion 0x1 read 0x0 4 0x100" || last.starts_with("exit mmio 0x1000 4");
    super::assertion(&kvm, ok, format!("the resumed access ended {last} ({outcomes:?})"))?;
    finish(&kvm, mark, false)
}

pub(super) fn remove_region(kvm: &Kvm, vm: usize, paddr: u64) {
    let r = if kvm.design() == Design::Seed {
        let args =
            KvmIoregionSeed { guest_paddr: paddr, memory_size: 0x10, user_data: 0, fd: -1, flags: 0, pad: [0; 32] };
        kvm.set_ioregion_seed(vm, &args)
    } else {
        let args = KvmIoregionV3 {
            guest_paddr: paddr,
            memory_size: 0x10,
            user_data: 0,
            read_fd: 0,
            write_fd: 0,
            flags: ioregionfd_model::uapi::KVM_IOREGION_DEASSIGN,
            pad: [0; 28],
        };
        kvm.set_ioregion_v3(vm, &args)
    };
    r.expect("remove the region");
}

/// The region the second vCPU of [`two_vcpus_one_fd`] writes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteTarget {
    /// A sized region with posted writes.
    Posted,
    /// A size-0 doorbell (posted).
    Doorbell,
    /// A sized region without posted writes: the write waits for its response.
    NonPosted,
}

/// Two vCPUs of one VM use two regions on one fd: one reads, one writes to `target`.
fn two_vcpus_one_fd(design: Design, target: WriteTarget) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let vm = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let posted = if target == WriteTarget::NonPosted { 0 } else { ioregionfd_model::uapi::KVM_IOREGION_POSTED_WRITES };
    let (paddr, size) = if target == WriteTarget::Doorbell { (0x2000, 0) } else { (0x2000, 0x10) };
    let r = if design == Design::Seed {
        let args = KvmIoregionSeed {
            guest_paddr: paddr,
            memory_size: size,
            user_data: 2,
            fd: kfd,
            flags: posted,
            pad: [0; 32],
        };
        kvm.set_ioregion_seed(vm, &args)
    } else {
        let args = KvmIoregionV3 {
            guest_paddr: paddr,
            memory_size: size,
            user_data: 2,
            read_fd: kfd,
            write_fd: kfd,
            flags: posted,
            pad: [0; 28],
        };
        kvm.set_ioregion_v3(vm, &args)
    };
    r.expect("setup: the region written to");
    let (mark, device) = watch_and_serve(&kvm, dfd, design, 2);
    let a = vcpu_thread(&kvm, vm, 0, read_access(0x1000), 1);
    let b = vcpu_thread(&kvm, vm, 1, GuestAccess { bus: BusKind::Mmio, addr: 0x2000, len: 4, value: Some(7) }, 1);
    let (oa, ob) = (a.join().expect("vcpu0").1, b.join().expect("vcpu1").1);
    device.join().expect("device");
    expect_outcome(&kvm, mark, &oa, "ioregion 0x1 read 0x0 4 0x100")?;
    expect_outcome(&kvm, mark, &ob, "ioregion 0x2 write 0x0 4 0x7")?;
    finish(&kvm, mark, true)
}

/// A stream socket whose buffer holds 40 bytes already holds one unread posted write, so a
/// vCPU's 32-byte command goes in part; the vCPU is signalled while it waits to send the rest,
/// then runs KVM_RUN again; the device then reads everything.
fn signal_while_sending(design: Design) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let vm_id = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    let (kfd, dfd) = if design == Design::Seed {
        let fd = kvm.ioregionfd().expect("ioregionfd");
        (fd, fd)
    } else {
        kvm.socketpair(ChannelKind::Stream, 40, false)
    };
    let posted = ioregionfd_model::uapi::KVM_IOREGION_POSTED_WRITES;
    for (paddr, flags, user_data) in [(0x1000, 0, 1), (0x2000, posted, 2)] {
        let r = if design == Design::Seed {
            let args =
                KvmIoregionSeed { guest_paddr: paddr, memory_size: 0x10, user_data, fd: kfd, flags, pad: [0; 32] };
            kvm.set_ioregion_seed(vm_id, &args)
        } else {
            let args = KvmIoregionV3 {
                guest_paddr: paddr,
                memory_size: 0x10,
                user_data,
                read_fd: kfd,
                write_fd: kfd,
                flags,
                pad: [0; 28],
            };
            kvm.set_ioregion_v3(vm_id, &args)
        };
        r.expect("setup: KVM_SET_IOREGION");
    }
    let dev = kvm.fget(dfd).expect("device fd");
    let vm = kvm.vm(vm_id).expect("vm");
    // An earlier posted write fills 32 of the 40 bytes.
    let early = Vcpu::new(vm_id, 9, false);
    let o = vm.kvm_run(
        AccessCtx { vcpu: &early, pump: None },
        Some(GuestAccess { bus: BusKind::Mmio, addr: 0x2000, len: 4, value: Some(5) }),
    );
    assert_eq!(o.to_string(), "ioregion 0x2 write 0x0 4 0x5", "setup: the posted write");
    let mark = kvm.recorder().violation_count();
    super::watch(&kvm, mark);
    let vcpu = Arc::new(Vcpu::new(vm_id, 0, false));
    let v = vcpu.clone();
    let k = kvm.clone();
    let runner = spawn_named("vcpu0", move || {
        let vm = k.vm(vm_id).expect("vm");
        run_access(&vm, &v, Some(read_access(0x1000)), 3)
    });
    kvm.deliver_signal(&vcpu);
    let rec = kvm.recorder().clone();
    let device = spawn_named("device", move || device_task(&rec, dev, design, 2));
    let outcomes = runner.join().expect("vcpu0");
    kvm.teardown();
    device.join().expect("device");
    expect_outcome(&kvm, mark, &outcomes, "ioregion 0x1 read 0x0 4 0x100")?;
    finish(&kvm, mark, true)
}

/// The VMM passed the device end to the device and closed its own copy; the device reads
/// `reads` commands without answering, then closes its end, while a vCPU waits for its reply.
fn device_closes(design: Design, reads: usize) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let vm = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let dev = kvm.fget(dfd).expect("device fd");
    if kfd != dfd {
        kvm.close(dfd).expect("the VMM closes its copy of the device end");
    }
    let mark = kvm.recorder().violation_count();
    super::watch(&kvm, mark);
    let rec = kvm.recorder().clone();
    let device = spawn_named("device", move || {
        let never = || false;
        let wait = Wait::Block { pending: &never };
        for _ in 0..reads {
            let mut buf = [0u8; MESSAGE_SIZE];
            let (t, tags) = dev.read_tagged(&rec, &mut buf, &wait);
            if t == Transfer::Done(MESSAGE_SIZE) {
                let _ = receive_model_command(&rec, &dev, design.knobs().wire, &buf, &tags);
            }
        }
        rec.event(None, "the device closes its end");
        dev.put(&rec);
    });
    // Seed: the device end is the ioregionfd itself; closing the VMM's fd too is the last close.
    let a = vcpu_thread(&kvm, vm, 0, read_access(0x1000), 2);
    if kfd == dfd {
        device.join().expect("device");
        let _ = kvm.close(kfd);
    } else {
        device.join().expect("device");
    }
    let outcome = a.join().expect("vcpu0").1;
    super::verdict_after(&kvm, mark)?;
    let last = outcome.last().map(|o| o.to_string()).unwrap_or_default();
    super::assertion(&kvm, last.starts_with("exit"), format!("the vCPU's access ended {last}, not with an exit"))?;
    finish(&kvm, mark, true)
}

/// The device thread reads a vCPU's command, then removes the region (KVM_SET_IOREGION
/// DEASSIGN, or seed's fd = -1) before it answers: a device hot-unplugged by the very access.
fn deassign_by_device_thread(design: Design) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let vm = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    let (kfd, dfd) = transport(&kvm);
    region_on(&kvm, vm, BusKind::Mmio, 0x1000, kfd, 1);
    let dev = kvm.fget(dfd).expect("device fd");
    let mark = kvm.recorder().violation_count();
    super::watch(&kvm, mark);
    let k = kvm.clone();
    let device = spawn_named("device", move || {
        let rec = k.recorder().clone();
        let never = || false;
        let wait = Wait::Block { pending: &never };
        let mut buf = [0u8; MESSAGE_SIZE];
        let (t, tags) = dev.read_tagged(&rec, &mut buf, &wait);
        if t == Transfer::Done(MESSAGE_SIZE)
            && let Some((c, tag)) = receive_model_command(&rec, &dev, design.knobs().wire, &buf, &tags)
        {
            rec.event(None, "the device thread removes the region before it answers");
            remove_region(&k, vm, 0x1000);
            let value = 0x100 * c.user_data + c.offset;
            let _ = dev.write_tagged(&rec, &Response { data: value }.encode(), &wait, tag);
        }
        dev.put(&rec);
    });
    let a = vcpu_thread(&kvm, vm, 0, read_access(0x1000), 1);
    let outcome = a.join().expect("vcpu0").1;
    device.join().expect("device");
    expect_outcome(&kvm, mark, &outcome, "ioregion 0x1 read 0x0 4 0x100")?;
    finish(&kvm, mark, true)
}

/// Two VMs share one fd; while a vCPU of VM 1 reads its region and the device answers, the VMM
/// destroys VM 0 (its regions go); then the process exits (teardown), and nothing may be left.
fn vm_destroyed_while_other_vm_uses_fd(design: Design) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::with_design(design, Recorder::new()));
    let config = VmConfig::for_design(&design.knobs());
    let vms = [kvm.create_vm(config), kvm.create_vm(config)];
    let (kfd, dfd) = transport(&kvm);
    for (i, vm) in vms.iter().enumerate() {
        region(&kvm, *vm, 0x1000, kfd, i as u64 + 1);
    }
    let (mark, device) = watch_and_serve(&kvm, dfd, design, 1);
    let reader = vcpu_thread(&kvm, vms[1], 0, read_access(0x1000), 1);
    let k = kvm.clone();
    let vmm = spawn_named("vmm", move || k.vm(vms[0]).expect("vm").io.destroy());
    let outcome = reader.join().expect("vcpu").1;
    vmm.join().expect("vmm");
    device.join().expect("device");
    expect_outcome(&kvm, mark, &outcome, "ioregion 0x2 read 0x0 4 0x200")?;
    finish_with_teardown(&kvm, mark, true)
}

/// Two socketpairs wired crosswise: region A reads its responses on `a1` and sends its commands
/// to `a2`, region B the other way round; a device task per pair end answers. A vCPU reads
/// each region at once.
fn cross_wired_regions(knobs: Knobs) -> Result<(), Failure> {
    let design = knobs.design;
    let kvm = Arc::new(Kvm::with_knobs(knobs, Recorder::new()));
    let vm = kvm.create_vm(VmConfig::for_design(&design.knobs()));
    let (a1, b1) = kvm.socketpair(ChannelKind::Seqpacket, 4096, false);
    let (a2, b2) = kvm.socketpair(ChannelKind::Seqpacket, 4096, false);
    for (paddr, user_data, read_fd, write_fd) in [(0x1000, 1, a1, a2), (0x2000, 2, a2, a1)] {
        let args = KvmIoregionV3 {
            guest_paddr: paddr,
            memory_size: 0x10,
            user_data,
            read_fd,
            write_fd,
            flags: 0,
            pad: [0; 28],
        };
        kvm.set_ioregion_v3(vm, &args).expect("setup: KVM_SET_IOREGION");
    }
    let (d1, d2) = (kvm.fget(b1).expect("device fd"), kvm.fget(b2).expect("device fd"));
    let mark = kvm.recorder().violation_count();
    super::watch(&kvm, mark);
    // A's commands arrive on b2 and its responses go out on b1; B's the other way round.
    let devices = [(d2.clone(), d1.clone()), (d1, d2)].map(|(cmd, resp)| {
        let rec = kvm.recorder().clone();
        spawn_named("device", move || {
            serve_commands(&rec, &cmd, &resp, design, 1);
            cmd.put(&rec);
        })
    });
    let a = vcpu_thread(&kvm, vm, 0, read_access(0x1000), 1);
    let b = vcpu_thread(&kvm, vm, 1, read_access(0x2000), 1);
    let (oa, ob) = (a.join().expect("vcpu0").1, b.join().expect("vcpu1").1);
    for d in devices {
        d.join().expect("device");
    }
    expect_outcome(&kvm, mark, &oa, "ioregion 0x1 read 0x0 4 0x100")?;
    expect_outcome(&kvm, mark, &ob, "ioregion 0x2 read 0x0 4 0x200")?;
    finish(&kvm, mark, true)
}

fn for_designs(
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

/// Each scenario under seed, rfc-v3 and proposed, with its expected verdict under each.
macro_rules! per_design {
    ($name:literal, $summary:literal, $run:expr, [$seed:expr, $v3:expr, $proposed:expr]) => {
        for_designs(
            $name,
            $summary,
            [|| $run(Design::Seed), || $run(Design::RfcV3), || $run(Design::Proposed)],
            [$seed, $v3, $proposed],
        )
    };
}

fn two_vcpus_sized(d: Design) -> Result<(), Failure> {
    two_vcpus_one_fd(d, WriteTarget::Posted)
}

fn two_vcpus_doorbell(d: Design) -> Result<(), Failure> {
    two_vcpus_one_fd(d, WriteTarget::Doorbell)
}

fn two_vcpus_non_posted(d: Design) -> Result<(), Failure> {
    two_vcpus_one_fd(d, WriteTarget::NonPosted)
}

fn device_closes_before_reading(d: Design) -> Result<(), Failure> {
    device_closes(d, 0)
}

fn device_closes_after_reading(d: Design) -> Result<(), Failure> {
    device_closes(d, 1)
}

pub fn scenarios() -> Vec<Scenario> {
    let mut all = base_scenarios();
    all.extend(per_design!(
        "two-vcpus-one-fd",
        "two vCPUs of one VM on one fd: a read, and a posted write to another region",
        two_vcpus_sized,
        [Expected::Holds, Expected::Holds, Expected::Holds]
    ));
    all.extend(per_design!(
        "two-vcpus-non-posted-write",
        "two vCPUs of one VM on one fd: a read, and a non-posted write to another region",
        two_vcpus_non_posted,
        [Expected::Holds, Expected::Holds, Expected::Holds]
    ));
    all.extend(
        per_design!(
            "sized-and-size0-one-fd",
            "one fd serves a sized region and a size-0 doorbell (posted) of one VM; a vCPU uses each",
            two_vcpus_doorbell,
            [Expected::Holds, Expected::Holds, Expected::Holds]
        )
        .into_iter()
        .filter(|s| s.design != "seed"),
    );
    all.extend(per_design!(
        "device-closes-before-reading",
        "the device closes its end before it reads the command a vCPU sent",
        device_closes_before_reading,
        [Expected::Holds, Expected::Holds, Expected::Holds]
    ));
    all.extend(per_design!(
        "device-closes-after-reading",
        "the device reads the command a vCPU sent, then closes its end without answering",
        device_closes_after_reading,
        [Expected::Violates("exactly-once"), Expected::Violates("exactly-once"), Expected::Holds]
    ));
    all.extend(per_design!(
        "deassign-by-device-thread",
        "the thread serving the device removes the region after reading a command, before answering",
        deassign_by_device_thread,
        [Expected::Violates("liveness"), Expected::Violates("liveness"), Expected::Holds]
    ));
    all.extend(per_design!(
        "vm-destroyed-while-other-vm-uses-fd",
        "two VMs share one fd; VM 0 is destroyed while VM 1 reads; then the process exits",
        vm_destroyed_while_other_vm_uses_fd,
        [Expected::Holds, Expected::Violates("no-leak"), Expected::Holds]
    ));
    all.extend(per_design!(
        "signal-while-sending",
        "a stream socket nearly full: the command goes in part, a signal arrives, KVM_RUN again",
        signal_while_sending,
        [Expected::Holds, Expected::Violates("wire"), Expected::Holds]
    ));
    all.extend(per_design!(
        "pio-and-mmio-one-fd",
        "one fd serves a PIO and an MMIO region of one VM; a vCPU reads each",
        pio_and_mmio_one_fd,
        [Expected::Holds, Expected::Violates("route"), Expected::Holds]
    ));
    all.extend(per_design!(
        "signal-waiting-for-context",
        "vcpu1 is signalled while it waits for the context vcpu0 holds, then runs KVM_RUN again",
        signal_waiting_for_context,
        [Expected::Holds, Expected::Violates("exclusive"), Expected::Holds]
    ));
    all.extend(per_design!(
        "region-replaced-before-resume",
        "a vCPU interrupted waiting for its reply resumes after the region was replaced",
        region_replaced_before_resume,
        [Expected::Holds, Expected::Violates("resume"), Expected::Holds]
    ));
    all.push(Scenario {
        name: "cross-wired-regions",
        summary: "two regions on two socketpairs wired crosswise (A answers on B's command channel); a vCPU reads each",
        design: "proposed",
        expected: Expected::Holds,
        run: || cross_wired_regions(Design::Proposed.knobs()),
    });
    all.push(Scenario {
        name: "cross-wired-regions",
        summary: "as above, a sender taking the response side of the command channel's context",
        design: "defect:send-on-response-side",
        expected: Expected::Violates("liveness"),
        run: || cross_wired_regions(Knobs { send_lock: SendLock::ResponseSide, ..Design::Proposed.knobs() }),
    });
    all
}

fn base_scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "two-vms-one-fd",
            summary: "two VMs map a region each onto one fd; a vCPU of each reads while the device answers",
            design: "rfc-v3",
            expected: Expected::Violates("isolation"),
            run: || two_vms_one_fd(Design::RfcV3),
        },
        Scenario {
            name: "two-vms-one-fd",
            summary: "as above",
            design: "seed",
            expected: Expected::Holds,
            run: || two_vms_one_fd(Design::Seed),
        },
        Scenario {
            name: "two-vms-one-fd",
            summary: "as above",
            design: "proposed",
            expected: Expected::Holds,
            run: || two_vms_one_fd(Design::Proposed),
        },
    ]
}
