//! ioregion scenarios: vCPUs dispatching to ioregions while device tasks answer and VMM threads
//! change things, under each design.

use super::{Expected, Failure, Scenario, verdict_after};
use ioregionfd_model::bus::BusKind;
use ioregionfd_model::design::Design;
use ioregionfd_model::fd::File;
use ioregionfd_model::fd::channel::{ChannelKind, Transfer, Wait};
use ioregionfd_model::invariants::WIRE;
use ioregionfd_model::kvm::Kvm;
use ioregionfd_model::sync::{Arc, spawn_named};
use ioregionfd_model::trace::Recorder;
use ioregionfd_model::uapi::{KvmIoregionSeed, KvmIoregionV3};
use ioregionfd_model::vcpu::Vcpu;
use ioregionfd_model::vm::{AccessCtx, AccessOutcome, GuestAccess, VmConfig};
use ioregionfd_model::wire::{Command, Direction, MESSAGE_SIZE, Response};

/// A device task on model files: answers `count` commands (reads with `0x100 * user_data +
/// offset`), blocking, then stops. Stops early at end of file.
fn device_task(rec: &Recorder, cmd: &File, resp: &File, design: Design, count: usize) {
    let never = || false;
    let wait = Wait::Block { pending: &never };
    for _ in 0..count {
        let mut buf = [0u8; MESSAGE_SIZE];
        let mut got = 0;
        while got < MESSAGE_SIZE {
            match cmd.read(rec, &mut buf[got..], &wait) {
                Transfer::Done(0) | Transfer::Failed(_) | Transfer::WouldBlock { .. } => return,
                Transfer::Done(n) => got += n,
            }
        }
        let tag = cmd.read_channel().and_then(|c| c.pop_tag());
        let c = match Command::decode(design.knobs().wire, &buf) {
            Ok(c) => c,
            Err(e) => {
                rec.violation(&WIRE, format_args!("the device reads a malformed command: {e}"));
                continue;
            }
        };
        rec.event(None, format_args!("device reads {c}"));
        if !c.wants_response() {
            continue;
        }
        let value = if c.direction == Direction::Read { 0x100 * c.user_data + c.offset } else { 0 };
        if let (Some(t), Some(ch)) = (tag, resp.write_channel()) {
            ch.push_tag(t);
        }
        let _ = resp.write(rec, &Response { data: value }.encode(), &wait);
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
fn transport(kvm: &Kvm) -> (i32, i32) {
    if kvm.design() == Design::Seed {
        let fd = kvm.ioregionfd().expect("ioregionfd");
        (fd, fd)
    } else {
        kvm.socketpair(ChannelKind::Seqpacket, 4096, false)
    }
}

fn read_access(paddr: u64) -> GuestAccess {
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
    let dev = kvm.fget(dfd).expect("device fd");
    let mark = kvm.recorder().violation_count();
    let rec = kvm.recorder().clone();
    let device = spawn_named("device", move || device_task(&rec, &dev, &dev, design, 2));
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
    verdict_after(&kvm, mark)?;
    for (i, o) in outcomes.iter().enumerate() {
        let want = format!("ioregion {:#x} read 0x0 4 {:#x}", i + 1, 0x100 * (i + 1));
        super::assertion(&kvm, o.to_string() == want, format!("vm{i} read {o}, not {want}"))?;
    }
    Ok(())
}

pub fn scenarios() -> Vec<Scenario> {
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
