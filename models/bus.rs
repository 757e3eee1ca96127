//! Bus scenarios: registration and unregistration (including the allocation-failure path that
//! publishes a NULL bus) racing a vCPU's dispatch on the same bus.
//!
//! The vCPU checks, inside its SRCU read section, that the array it sees is well-formed (never
//! torn) and points only to live devices, then makes its access; the outcome must be one the
//! kernel allows (handled by the ioeventfd and counted once, or an exit and not counted).

use ioregionfd_model::bus::{BusKind, Reclaim, check_bus_array};
use ioregionfd_model::kvm::Kvm;
use ioregionfd_model::scenario::check::{assertion, verdict};
use ioregionfd_model::scenario::{Expected, Failure, Row};
use ioregionfd_model::sync::{Arc, spawn_named};
use ioregionfd_model::uapi::{KVM_IOEVENTFD_FLAG_DEASSIGN, KvmIoeventfd};
use ioregionfd_model::vm::{AccessOutcome, VmConfig};

const A: u64 = 0x1000;
const B: u64 = 0x2000;

/// What the VMM thread does while the vCPU dispatches a write to `A`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vmm {
    /// Register an ioeventfd at `B`.
    Register,
    /// Register at `B` with the allocation failing.
    RegisterEnomem,
    /// Deassign the ioeventfd at `A`.
    Deassign,
    /// Deassign it with the allocation failing (NULL bus, every device destroyed).
    DeassignEnomem,
}

fn race(vmm: Vmm, reclaim: Reclaim) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::new());
    let mut config = VmConfig::default();
    config.bus.reclaim = reclaim;
    let vm_id = kvm.create_vm(config);
    let vm = kvm.vm(vm_id).expect("vm");
    let efd_a = kvm.eventfd();
    let efd_b = kvm.eventfd();
    let at_a = KvmIoeventfd { addr: A, len: 4, fd: efd_a, ..Default::default() };
    kvm.ioeventfd(vm_id, &at_a).expect("setup: ioeventfd at A");
    if matches!(vmm, Vmm::RegisterEnomem | Vmm::DeassignEnomem) {
        vm.fail_next_alloc(BusKind::Mmio);
    }

    let vcpu_vm = vm.clone();
    let vcpu = spawn_named("vcpu0", move || {
        {
            // What the vCPU sees inside its read section must be well-formed and live.
            let reader = vcpu_vm.io.srcu.read_lock();
            if let Some(a) = vcpu_vm.io.bus(BusKind::Mmio).get_srcu(&reader) {
                for (inv, text) in check_bus_array(BusKind::Mmio, &a) {
                    vcpu_vm.io.rec.violation(inv, format_args!("the vCPU sees {text}"));
                }
            }
        }
        vcpu_vm.access(BusKind::Mmio, A, 4, Some(1)).expect("a valid access")
    });
    let vmm_kvm = kvm.clone();
    let vmm_thread = spawn_named("vmm", move || match vmm {
        Vmm::Register | Vmm::RegisterEnomem => {
            vmm_kvm.ioeventfd(vm_id, &KvmIoeventfd { addr: B, len: 4, fd: efd_b, ..Default::default() })
        }
        Vmm::Deassign | Vmm::DeassignEnomem => {
            vmm_kvm.ioeventfd(vm_id, &KvmIoeventfd { flags: KVM_IOEVENTFD_FLAG_DEASSIGN, ..at_a })
        }
    });
    let outcome = vcpu.join().expect("vcpu thread");
    let vmm_result = vmm_thread.join().expect("vmm thread");

    verdict(&kvm)?;
    let count = kvm.eventfd_count(efd_a).expect("eventfd A open");
    match &outcome {
        AccessOutcome::Handled(h) => assertion(
            &kvm,
            h.to_string() == format!("eventfd {efd_a}") && count == 1,
            format!("handled by {h}, eventfd A counted {count}"),
        )?,
        AccessOutcome::Exit(_) => assertion(
            &kvm,
            matches!(vmm, Vmm::Deassign | Vmm::DeassignEnomem) && count == 0,
            format!("the write to A exited ({outcome}) with eventfd A counted {count}"),
        )?,
        other => assertion(&kvm, false, format!("an access to an ioeventfd ended {other}"))?,
    }
    let expected_vmm = match vmm {
        Vmm::Register | Vmm::Deassign | Vmm::DeassignEnomem => Ok(()),
        Vmm::RegisterEnomem => Err(ioregionfd_model::errno::Errno::ENOMEM),
    };
    assertion(&kvm, vmm_result == expected_vmm, format!("the VMM's ioctl returned {vmm_result:?}"))
}

/// Two VMM threads change the MMIO bus (one registers an ioeventfd at `B`, one deassigns `A`,
/// the second with the allocation failing when `enomem`) while two vCPUs write `A` and `B`.
fn churn(reclaim: Reclaim, enomem: bool) -> Result<(), Failure> {
    let kvm = Arc::new(Kvm::new());
    let mut config = VmConfig::default();
    config.bus.reclaim = reclaim;
    let vm_id = kvm.create_vm(config);
    let vm = kvm.vm(vm_id).expect("vm");
    let (efd_a, efd_b) = (kvm.eventfd(), kvm.eventfd());
    let at_a = KvmIoeventfd { addr: A, len: 4, fd: efd_a, ..Default::default() };
    kvm.ioeventfd(vm_id, &at_a).expect("setup: ioeventfd at A");
    if enomem {
        vm.fail_next_alloc(BusKind::Mmio);
    }
    let vcpus: Vec<_> = [(0, A), (1, B)]
        .into_iter()
        .map(|(n, addr)| {
            let vm = vm.clone();
            spawn_named(&format!("vcpu{n}"), move || {
                vm.access(BusKind::Mmio, addr, 4, Some(1)).expect("a valid access")
            })
        })
        .collect();
    let k = kvm.clone();
    let register = spawn_named("vmm0", move || {
        k.ioeventfd(vm_id, &KvmIoeventfd { addr: B, len: 4, fd: efd_b, ..Default::default() })
    });
    let k = kvm.clone();
    let deassign =
        spawn_named("vmm1", move || k.ioeventfd(vm_id, &KvmIoeventfd { flags: KVM_IOEVENTFD_FLAG_DEASSIGN, ..at_a }));
    let outcomes: Vec<AccessOutcome> = vcpus.into_iter().map(|h| h.join().expect("vcpu")).collect();
    let (r, d) = (register.join().expect("vmm0"), deassign.join().expect("vmm1"));
    verdict(&kvm)?;
    // exactly once: each write either counted once on its own eventfd or exited
    for (outcome, efd) in outcomes.iter().zip([efd_a, efd_b]) {
        let count = kvm.eventfd_count(efd).expect("open");
        let ok = match outcome {
            AccessOutcome::Handled(h) => h.to_string() == format!("eventfd {efd}") && count == 1,
            AccessOutcome::Exit(_) => count == 0,
            AccessOutcome::Blocked(_) | AccessOutcome::Interrupted | AccessOutcome::RunError(_) => false,
        };
        assertion(&kvm, ok, format!("outcome {outcome} with eventfd {efd} counted {count}"))?;
    }
    // whichever of the two writers allocated first may have taken the injected fault
    let enomem_seen = [&r, &d].iter().filter(|x| x.is_err()).count();
    assertion(&kvm, d.is_ok() && (enomem || r.is_ok()) && enomem_seen <= 1, format!("register {r:?}, deassign {d:?}"))
}

/// The bus rows (mainline and its defect variants).
pub fn rows() -> Vec<Row> {
    vec![
        Row::rust(
            "bus-churn-vs-two-vcpus",
            "one VMM thread registers at B, another deassigns A, while two vCPUs write A and B",
            "mainline",
            Expected::Holds,
            || churn(Reclaim::AfterReaders, false),
        ),
        Row::rust(
            "bus-churn-enomem-vs-two-vcpus",
            "as above, with the first array allocation failing (a failed register, or a NULL bus)",
            "mainline",
            Expected::Holds,
            || churn(Reclaim::AfterReaders, true),
        ),
        Row::rust(
            "bus-churn-vs-two-vcpus",
            "as above, but unregister destroys without waiting for SRCU readers",
            "defect:no-srcu-wait",
            Expected::Violates(vec!["lifetime".into()]),
            || churn(Reclaim::Immediately, false),
        ),
        Row::rust(
            "bus-register-vs-dispatch",
            "KVM_IOEVENTFD adds an entry at B while a vCPU writes A",
            "mainline",
            Expected::Holds,
            || race(Vmm::Register, Reclaim::AfterReaders),
        ),
        Row::rust(
            "bus-register-enomem-vs-dispatch",
            "the array allocation of a register fails while a vCPU writes A",
            "mainline",
            Expected::Holds,
            || race(Vmm::RegisterEnomem, Reclaim::AfterReaders),
        ),
        Row::rust(
            "bus-unregister-vs-dispatch",
            "KVM_IOEVENTFD deassigns A while a vCPU writes A",
            "mainline",
            Expected::Holds,
            || race(Vmm::Deassign, Reclaim::AfterReaders),
        ),
        Row::rust(
            "bus-unregister-enomem-vs-dispatch",
            "deassign of A fails to allocate: NULL bus, every device destroyed, while a vCPU writes A",
            "mainline",
            Expected::Holds,
            || race(Vmm::DeassignEnomem, Reclaim::AfterReaders),
        ),
        Row::rust(
            "bus-unregister-vs-dispatch",
            "as above, but unregister destroys without waiting for SRCU readers",
            "defect:no-srcu-wait",
            Expected::Violates(vec!["lifetime".into()]),
            || race(Vmm::Deassign, Reclaim::Immediately),
        ),
        Row::rust(
            "bus-unregister-enomem-vs-dispatch",
            "as above, but the NULL-bus path destroys without waiting for SRCU readers",
            "defect:no-srcu-wait",
            Expected::Violates(vec!["lifetime".into()]),
            || race(Vmm::DeassignEnomem, Reclaim::Immediately),
        ),
    ]
}
