//! The structural checks of a whole system, counted, and kept up to date incrementally.
//!
//! [`Kvm::check_structure`] looks at everything: every bus array of every VM (sorted,
//! `dev_count`, `ioeventfd_count`, the array and its devices live), every region's bus entry,
//! every pair of regions and of a region and an ioeventfd. A checker that wants the standing
//! violations after every operation (the `registration` fuzz target) would do all of it again
//! after each one. [`StructureWatch`] gives the same answer, as a [`Tally`] of violations per
//! invariant, by looking again only at what an operation could have changed:
//!
//! - a VM whose `slots_lock` was not taken ([`SlotsLock::generation`]) has the same published
//!   arrays, `ioeventfd_count`s and lists as before: publishing an array, changing a count and
//!   changing a list all demand the lock's guard, so nothing else can change them. Its `bus` and
//!   `overlap` counts stand as they were;
//! - the lifetime part (the array and its devices live) changes only when a lifetime ends, which
//!   [`lifetimes_ended`] counts for the whole process; while that count stays the same no array
//!   is looked at for it;
//! - a VM whose lock was taken has each bus looked at again, but an array with the same
//!   [`BusArray::id`] as before has the same entries: its order is not checked again;
//! - the overlap count of a bus whose region and ioeventfd lists only grew (the earlier entries
//!   are the same ranges, in the same order) is the earlier count plus the pairs with a new
//!   member ([`KvmIo::visit_overlaps`]); any other change counts every pair again.
//!
//! Each part uses the very check function the full check uses, with a [`Found`] that counts
//! instead of formatting, so the two find the same things; the tests below and the
//! `registration` target's own tests compare the two after every operation.
//!
//! ```
//! use ioregionfd_model::design::Design;
//! use ioregionfd_model::kvm::Kvm;
//! use ioregionfd_model::structure::{StructureWatch, Tally};
//! use ioregionfd_model::trace::Recorder;
//! use ioregionfd_model::uapi::KvmCoalescedMmioZone;
//! use ioregionfd_model::vm::VmConfig;
//! let kvm = Kvm::with_design(Design::Proposed, Recorder::new());
//! let vm = kvm.create_vm(VmConfig::for_design(&Design::Proposed.knobs()));
//! let mut watch = StructureWatch::new();
//! kvm.register_coalesced_mmio(vm, &KvmCoalescedMmioZone { addr: 0x1000, size: 8, pio: 0 }).unwrap();
//! assert_eq!(watch.update(&kvm), Tally::default());
//! assert_eq!(watch.update(&kvm), Tally::of(&kvm.check_structure()));
//! ```
//!
//! [`Kvm::check_structure`]: crate::kvm::Kvm::check_structure
//! [`SlotsLock::generation`]: crate::bus::SlotsLock::generation
//! [`lifetimes_ended`]: crate::trace::lifetimes_ended
//! [`BusArray::id`]: crate::bus::BusArray::id
//! [`KvmIo::visit_overlaps`]: crate::bus::KvmIo::visit_overlaps
//! [`Found`]: crate::bus::Found

use crate::bus::{BusArray, BusKind, visit_bus_lifetimes, visit_bus_order};
use crate::invariants::{BUS, Invariant, LIFETIME, OVERLAP};
use crate::kvm::Kvm;
use crate::region::VmIo;
use std::fmt;

/// How many structural violations stand, per invariant: the ids [`Kvm::check_structure`]
/// returns, counted (`bus`, `lifetime` and `overlap` are all it can return).
///
/// [`Kvm::check_structure`]: crate::kvm::Kvm::check_structure
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// `bus` violations.
    pub bus: u32,
    /// `lifetime` violations.
    pub lifetime: u32,
    /// `overlap` violations.
    pub overlap: u32,
}

impl Tally {
    /// Counts one violation of `invariant`.
    ///
    /// # Panics
    ///
    /// On an invariant that is not structural: a structural check never reports one.
    pub fn count(&mut self, invariant: &Invariant) {
        match invariant.id {
            id if id == BUS.id => self.bus += 1,
            id if id == LIFETIME.id => self.lifetime += 1,
            id if id == OVERLAP.id => self.overlap += 1,
            id => panic!("{id} is not a structural invariant"),
        }
    }

    /// The tally of a list of violations (what [`Kvm::check_structure`] returns).
    ///
    /// [`Kvm::check_structure`]: crate::kvm::Kvm::check_structure
    pub fn of(violations: &[(&'static Invariant, String)]) -> Tally {
        let mut t = Tally::default();
        violations.iter().for_each(|(i, _)| t.count(i));
        t
    }

    /// The tally of violation ids (`bus`, `lifetime`, `overlap`; `None` for any other id).
    pub fn of_ids<'a>(ids: impl IntoIterator<Item = &'a str>) -> Option<Tally> {
        let mut t = Tally::default();
        for id in ids {
            let invariant = [&BUS, &LIFETIME, &OVERLAP].into_iter().find(|i| i.id == id)?;
            t.count(invariant);
        }
        Some(t)
    }

    /// No violation.
    pub fn is_clear(&self) -> bool {
        *self == Tally::default()
    }

    /// The ids, each as many times as counted, sorted (the form the checkers compare).
    pub fn ids(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        out.extend(std::iter::repeat_n(BUS.id, self.bus as usize));
        out.extend(std::iter::repeat_n(LIFETIME.id, self.lifetime as usize));
        out.extend(std::iter::repeat_n(OVERLAP.id, self.overlap as usize));
        out.sort_unstable();
        out
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.bus += other.bus;
        self.lifetime += other.lifetime;
        self.overlap += other.overlap;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bus {} lifetime {} overlap {}", self.bus, self.lifetime, self.overlap)
    }
}

/// A [`Found`](crate::bus::Found) that only counts.
fn counter(t: &mut Tally) -> impl FnMut(&'static Invariant, fmt::Arguments<'_>) + '_ {
    move |i, _| t.count(i)
}

/// What was seen of one bus of one VM at the last look.
#[derive(Debug, Default)]
struct BusSeen {
    /// The published array's [`BusArray::id`] (0: NULL).
    array: u64,
    /// Its ioeventfd entries (a property of its entries).
    ioeventfd_entries: usize,
    /// The array's order and `dev_count` (`bus`).
    order: Tally,
    /// `ioeventfd_count` against the entries (`bus`).
    count: Tally,
    /// The array and its devices live (`lifetime`).
    lifetimes: Tally,
    /// The regions' entries (`bus`).
    entries: Tally,
    /// Overlaps on this bus (`overlap`).
    overlaps: Tally,
    /// The ranges of the bus's regions and ioeventfds, in list order, that `overlaps` counts.
    regions: Vec<(u64, u64)>,
    ioeventfds: Vec<(u64, u64)>,
}

impl BusSeen {
    fn total(&self) -> Tally {
        let mut t = self.order;
        t += self.count;
        t += self.lifetimes;
        t += self.entries;
        t += self.overlaps;
        t
    }
}

/// What was seen of one VM.
#[derive(Debug)]
struct VmSeen {
    /// [`SlotsLock::generation`](crate::bus::SlotsLock::generation) after the last look.
    slots: u64,
    buses: [BusSeen; 4],
}

/// The structural checks of a [`Kvm`], kept up to date incrementally (see the module docs).
/// Give it one system only: what it remembers is that system's state.
#[derive(Debug)]
pub struct StructureWatch {
    vms: Vec<VmSeen>,
    /// [`lifetimes_ended`](crate::trace::lifetimes_ended) at the last look (`None`: never looked).
    lifetimes: Option<u64>,
}

impl Default for StructureWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl StructureWatch {
    /// A watch that has seen nothing yet (its first look checks everything).
    pub fn new() -> Self {
        StructureWatch { vms: Vec::new(), lifetimes: None }
    }

    /// Looks at what may have changed since the last look and returns the standing violations,
    /// counted: the tally of [`Kvm::check_structure`] at this quiescent point.
    ///
    /// [`Kvm::check_structure`]: crate::kvm::Kvm::check_structure
    pub fn update(&mut self, kvm: &Kvm) -> Tally {
        let ended = crate::trace::lifetimes_ended();
        let lifetimes_changed = self.lifetimes != Some(ended);
        let mut total = Tally::default();
        kvm.with_vms(|vms| {
            for (id, vm) in vms.iter().enumerate() {
                if id == self.vms.len() {
                    self.vms.push(VmSeen { slots: u64::MAX, buses: Default::default() });
                }
                let seen = &mut self.vms[id];
                // (an array published without the lock would be a defect of the model's bus:
                // then everything is looked at again)
                if vm.io.slots.generation() != seen.slots
                    || (lifetimes_changed && !Self::look_at_lifetimes(&vm.io, seen))
                {
                    Self::look(&vm.io, seen, lifetimes_changed);
                }
                seen.buses.iter().for_each(|b| total += b.total());
            }
        });
        // what happened during the look (nothing ends a lifetime in a check) is seen
        self.lifetimes = Some(ended);
        total
    }

    /// Looks again at one VM whose `slots_lock` was taken since the last look: at each bus whose
    /// array is new, at every list.
    fn look(io: &VmIo, seen: &mut VmSeen, lifetimes_changed: bool) {
        let slots = io.slots.lock();
        for bus in BusKind::ALL {
            let b = &mut seen.buses[bus.index()];
            io.bus(bus).with_snapshot(|array| {
                let id = array.map_or(0, BusArray::id);
                let new_array = id != b.array;
                if new_array {
                    b.array = id;
                    b.order = Tally::default();
                    b.ioeventfd_entries = 0;
                    if let Some(a) = array {
                        visit_bus_order(bus, a, &mut counter(&mut b.order));
                        b.ioeventfd_entries = crate::bus::ioeventfd_entries(a);
                    }
                }
                // `ioeventfd_count` changes under the lock, in place
                b.count = Tally::default();
                if array.is_some_and(|a| a.ioeventfd_count() as usize != b.ioeventfd_entries) {
                    b.count.count(&BUS);
                }
                if new_array || lifetimes_changed {
                    b.lifetimes = Tally::default();
                    if let Some(a) = array {
                        visit_bus_lifetimes(bus, a, &mut counter(&mut b.lifetimes));
                    }
                }
                b.entries = Tally::default();
                VmIo::visit_region_entries(io.vm, &slots, bus, array, &mut counter(&mut b.entries));
            });
            if matches!(bus, BusKind::Mmio | BusKind::Pio) {
                Self::look_at_overlaps(io.vm, &slots, bus, b);
            }
        }
        drop(slots);
        seen.slots = io.slots.generation();
    }

    /// Looks again at the lifetimes of one VM's arrays and devices (a lifetime ended somewhere,
    /// and this VM's `slots_lock` was not taken: its arrays are the ones seen last time).
    /// Returns false, having changed nothing, if an array is not the one seen last time.
    fn look_at_lifetimes(io: &VmIo, seen: &mut VmSeen) -> bool {
        let mut found = [Tally::default(); 4];
        for bus in BusKind::ALL {
            let b = &seen.buses[bus.index()];
            let same = b.array == 0
                || io.bus(bus).with_snapshot(|array| {
                    let same = array.map_or(0, BusArray::id) == b.array;
                    if let Some(a) = array.filter(|_| same) {
                        visit_bus_lifetimes(bus, a, &mut counter(&mut found[bus.index()]));
                    }
                    same
                });
            if !same {
                return false;
            }
        }
        for (b, t) in seen.buses.iter_mut().zip(found) {
            b.lifetimes = t;
        }
        true
    }

    /// The overlap count of one bus: the pairs with a new member when the lists only grew,
    /// every pair otherwise.
    fn look_at_overlaps(
        vm: usize,
        slots: &crate::bus::Locked<crate::region::RegionLists>,
        bus: BusKind,
        b: &mut BusSeen,
    ) {
        let regions = slots.ext.on(bus);
        let ioeventfds = || slots.ioeventfds.iter().filter(|p| p.bus() == bus);
        let grew = |before: &[(u64, u64)], now: &mut dyn Iterator<Item = (u64, u64)>| {
            before.iter().all(|r| now.next() == Some(*r))
        };
        let regions_grew = grew(&b.regions, &mut regions.iter().map(|r| r.range()));
        let ioeventfds_grew = grew(&b.ioeventfds, &mut ioeventfds().map(|p| (p.addr(), p.len())));
        let new = if regions_grew && ioeventfds_grew {
            (b.regions.len(), b.ioeventfds.len())
        } else {
            b.overlaps = Tally::default();
            (0, 0)
        };
        if new != (regions.len(), ioeventfds().count()) {
            VmIo::visit_overlaps(vm, slots, bus, new, &mut counter(&mut b.overlaps));
        }
        b.regions.clear();
        b.regions.extend(regions.iter().map(|r| r.range()));
        b.ioeventfds.clear();
        b.ioeventfds.extend(ioeventfds().map(|p| (p.addr(), p.len())));
    }
}
