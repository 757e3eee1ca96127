//! The `registration` target checks the structure incrementally after each operation (the
//! model's `StructureWatch`, the reference's `World::structure_tally`) instead of running both
//! sides' full checks. These tests show that it loses nothing: on every committed input, under
//! every design, the incremental counts equal the full checks' after every operation; and for
//! each kind of structural defect, planted in a model system, the incremental check reports
//! after the operation that made it what the full check reports, even where the defect is made
//! without the lock through which the model changes its structure.

use ioregionfd_model::bus::{BusKind, Insertion, destroy_device};
use ioregionfd_model::design::Design;
use ioregionfd_model::fd::channel::ChannelKind;
use ioregionfd_model::kvm::Kvm;
use ioregionfd_model::structure::{StructureWatch, Tally};
use ioregionfd_model::trace::Recorder;
use ioregionfd_model::uapi::{KVM_IOREGION_DEASSIGN, KvmCoalescedMmioZone, KvmIoregionV3};
use ioregionfd_model::vm::VmConfig;
use ioregionfd_model_fuzz_targets as fuzz;

fn inputs() -> Vec<Vec<u8>> {
    let root = fuzz::repo_root();
    let mut out = Vec::new();
    for dir in [fuzz::SEED_CORPUS_DIR, fuzz::REGRESSIONS_DIR] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("registration")) else { continue };
        for e in entries.flatten() {
            out.push(std::fs::read(e.path()).unwrap());
        }
    }
    assert!(out.len() > 50, "the committed registration inputs");
    out
}

#[test]
fn incremental_checks_equal_the_full_ones_after_every_operation_of_every_committed_input() {
    // each input under each design (the first byte picks it: 0 seed, 1 rfc-v3, 2 proposed)
    for (design, byte) in [(Design::Seed, 0u8), (Design::RfcV3, 1), (Design::Proposed, 2)] {
        let mut total = fuzz::registration::Checked::default();
        // more inputs: REGISTRATION_VERIFY_DIR=DIR (a corpus a fuzzer run left, say)
        let extra: Vec<Vec<u8>> = std::env::var_os("REGISTRATION_VERIFY_DIR")
            .and_then(|d| std::fs::read_dir(d).ok())
            .map(|entries| entries.flatten().filter_map(|e| std::fs::read(e.path()).ok()).collect())
            .unwrap_or_default();
        for mut data in inputs().into_iter().chain(extra).filter(|d| !d.is_empty()) {
            data[0] = byte;
            let c = fuzz::registration::run_verified(&data);
            total.steps += c.steps;
            total.standing += c.standing;
        }
        println!("{design}: {} steps compared, {} with standing structural violations", total.steps, total.standing);
        assert!(total.steps > 1000, "{design}: {total:?}");
        // seed and rfc-v3 have structural defects (S-1, S-2, V3-3, V3-4): the inputs show them,
        // and the reference predicted every one (else run_verified panics); proposed has none
        match design {
            Design::Proposed => assert_eq!(total.standing, 0),
            _ => assert!(total.standing > 0, "{design}: the committed inputs show no structural violation"),
        }
    }
}

/// A system of one design, its watch, and a step that asserts the watch agrees with the full
/// check and returns the tally.
struct System {
    kvm: Kvm,
    watch: StructureWatch,
}

impl System {
    fn new(design: Design) -> System {
        System { kvm: Kvm::with_design(design, Recorder::new()), watch: StructureWatch::new() }
    }

    fn check(&mut self) -> Tally {
        let full = Tally::of(&self.kvm.check_structure());
        let counted = self.watch.update(&self.kvm);
        assert_eq!(counted, full, "incremental {counted} vs full {full}: {:#?}", self.kvm.check_structure());
        counted
    }

    fn zone(&self, vm: usize, addr: u64, size: u32) {
        self.kvm.register_coalesced_mmio(vm, &KvmCoalescedMmioZone { addr, size, pio: 0 }).unwrap();
    }
}

fn region(fd: i32, paddr: u64, size: u64, flags: u32) -> KvmIoregionV3 {
    KvmIoregionV3 {
        guest_paddr: paddr,
        memory_size: size,
        user_data: 1,
        read_fd: fd,
        write_fd: fd,
        flags,
        pad: [0; 28],
    }
}

#[test]
fn an_unsorted_bus_array_is_caught_by_the_incremental_check() {
    // planted defect: a VM whose bus appends new entries instead of inserting them in order
    let mut s = System::new(Design::Proposed);
    let mut broken = VmConfig::for_design(&Design::Proposed.knobs());
    broken.bus.insertion = Insertion::AppendUnsorted;
    let good = s.kvm.create_vm(VmConfig::for_design(&Design::Proposed.knobs()));
    let bad = s.kvm.create_vm(broken);
    assert!(s.check().is_clear());
    s.zone(good, 0x2000, 8);
    s.zone(good, 0x1000, 8);
    assert!(s.check().is_clear());
    s.zone(bad, 0x2000, 8);
    assert!(s.check().is_clear());
    s.zone(bad, 0x1000, 8); // appended after 0x2000: out of order
    assert_eq!(s.check(), Tally { bus: 1, ..Tally::default() });
    // it stands while other VMs change, and is counted once
    s.zone(good, 0x3000, 8);
    assert_eq!(s.check(), Tally { bus: 1, ..Tally::default() });
}

#[test]
fn a_device_destroyed_on_the_bus_without_slots_lock_is_caught_by_the_incremental_check() {
    // planted defect: a device's destructor runs while it is still on the bus, and nothing takes
    // slots_lock (what the watch uses to skip a VM): the lifetime count still sends it back
    let mut s = System::new(Design::Proposed);
    let vm = s.kvm.create_vm(VmConfig::for_design(&Design::Proposed.knobs()));
    let other = s.kvm.create_vm(VmConfig::for_design(&Design::Proposed.knobs()));
    s.zone(vm, 0x1000, 8);
    s.zone(other, 0x1000, 8);
    assert!(s.check().is_clear());
    let io = s.kvm.vm(vm).unwrap().io.clone();
    let generation = io.slots.generation();
    let array = io.bus(BusKind::Mmio).snapshot().unwrap();
    destroy_device(&array.ranges()[0].dev, &Recorder::new());
    assert_eq!(io.slots.generation(), generation, "the defect took no lock");
    assert_eq!(s.check(), Tally { lifetime: 1, ..Tally::default() });
}

#[test]
fn a_wrong_ioeventfd_count_is_caught_by_the_incremental_check() {
    // planted defect: `ioeventfd_count` changed in place (no new array) without an ioeventfd
    let mut s = System::new(Design::Proposed);
    let vm = s.kvm.create_vm(VmConfig::for_design(&Design::Proposed.knobs()));
    s.zone(vm, 0x1000, 8);
    assert!(s.check().is_clear());
    let io = s.kvm.vm(vm).unwrap().io.clone();
    {
        let slots = io.slots.lock();
        io.bus(BusKind::Mmio).snapshot().unwrap().add_ioeventfd_count(&slots, 1);
    }
    assert_eq!(s.check(), Tally { bus: 1, ..Tally::default() });
}

#[test]
fn rfc_v3_overlaps_and_truncated_lens_are_counted_as_the_full_check_counts_them() {
    // rfc-v3's own structural defects (findings.md V3-3, V3-4): regions that overlap, a region
    // whose size the bus's int len cannot hold; counted as regions come (only the new region
    // against the others) and go (a list that shrank is counted again)
    let mut s = System::new(Design::RfcV3);
    let vm = s.kvm.create_vm(VmConfig::for_design(&Design::RfcV3.knobs()));
    let (a, _) = s.kvm.socketpair(ChannelKind::Seqpacket, 4096, false);
    let (b, _) = s.kvm.socketpair(ChannelKind::Seqpacket, 4096, false);
    s.kvm.set_ioregion_v3(vm, &region(a, 0x1000, 0x10, 0)).unwrap();
    assert!(s.check().is_clear());
    // rfc-v3's collision check misses a region that starts on another's last byte
    s.kvm.set_ioregion_v3(vm, &region(b, 0x100f, 4, 0)).expect("rfc-v3 lets the overlap in");
    assert_eq!(s.check(), Tally { overlap: 1, ..Tally::default() });
    s.kvm.set_ioregion_v3(vm, &region(b, 0x4000_0000, 0x8000_0000, 0)).unwrap();
    let t = s.check();
    assert_eq!(t.bus, 1, "the 2 GiB region's entry has a negative len: {t}");
    // remove the first region: the overlap count falls with it
    s.kvm.set_ioregion_v3(vm, &region(a, 0x1000, 0x10, KVM_IOREGION_DEASSIGN)).unwrap();
    assert_eq!(s.check().overlap, 0);
}

#[test]
fn every_structural_violation_is_judged_after_an_allocation_failure() {
    // the fuzzer's path judges proposed after an injected allocation failure on any structural
    // count, which is what the full path did only because all three ids are wiring-independent
    for id in ["bus", "lifetime", "overlap"] {
        assert!(fuzz::registration::WIRING_INDEPENDENT.contains(&id), "{id}");
    }
}
