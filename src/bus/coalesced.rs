//! Coalesced MMIO and PIO (`virt/kvm/coalesced_mmio.c`): zones whose writes are appended to a
//! ring that userspace drains later, instead of exiting.
//!
//! | model | kernel |
//! |---|---|
//! | [`KvmIo::register_coalesced_mmio`] | `kvm_vm_ioctl_register_coalesced_mmio` |
//! | [`KvmIo::unregister_coalesced_mmio`] | `kvm_vm_ioctl_unregister_coalesced_mmio` |
//! | [`CoalescedMmioDev::in_range`] | `coalesced_mmio_in_range` |
//! | `CoalescedMmioDev::write` | `coalesced_mmio_write` |
//! | [`CoalescedRing`] | `struct kvm_coalesced_mmio_ring` with `kvm->ring_lock` |

use super::{BusKind, DispatchCtx, HandledBy, KvmIo, KvmIoDevice};
use crate::errno::Errno;
use crate::sync::{Arc, Mutex};
use crate::trace::Lifetime;
use crate::trace::Recorder;
use crate::uapi::{KVM_COALESCED_MMIO_MAX, KvmCoalescedMmio, KvmCoalescedMmioZone};
use std::fmt;

#[derive(Debug)]
struct RingState {
    first: u32,
    last: u32,
    entries: Vec<KvmCoalescedMmio>,
}

/// The coalesced MMIO ring of a VM (one page: 170 slots, one always free) and `kvm->ring_lock`.
/// The kernel appends at `last`; userspace consumes at `first`.
///
/// ```
/// use ioregionfd_model::bus::coalesced::CoalescedRing;
/// let ring = CoalescedRing::new();
/// assert_eq!(ring.capacity(), 169);
/// assert_eq!(ring.pop(), None);
/// ```
#[derive(Debug)]
pub struct CoalescedRing(Mutex<RingState>);

impl Default for CoalescedRing {
    fn default() -> Self {
        Self::new()
    }
}

impl CoalescedRing {
    /// An empty ring.
    pub fn new() -> Self {
        CoalescedRing(Mutex::new(RingState {
            first: 0,
            last: 0,
            entries: vec![KvmCoalescedMmio::default(); KVM_COALESCED_MMIO_MAX as usize],
        }))
    }

    /// Usable slots (169).
    pub fn capacity(&self) -> usize {
        KVM_COALESCED_MMIO_MAX as usize - 1
    }

    /// Entries waiting for userspace.
    pub fn len(&self) -> usize {
        let r = self.0.lock();
        ((r.last + KVM_COALESCED_MMIO_MAX - r.first) % KVM_COALESCED_MMIO_MAX) as usize
    }

    /// Whether no entry waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Userspace consumes the oldest entry (advances `first`).
    pub fn pop(&self) -> Option<KvmCoalescedMmio> {
        let mut r = self.0.lock();
        if r.first == r.last {
            return None;
        }
        let e = r.entries[r.first as usize];
        r.first = (r.first + 1) % KVM_COALESCED_MMIO_MAX;
        Some(e)
    }

    /// The kernel side of `coalesced_mmio_write` under `ring_lock`: declines when full.
    fn append(&self, entry: KvmCoalescedMmio) -> bool {
        let mut r = self.0.lock();
        let insert = r.last;
        if insert >= KVM_COALESCED_MMIO_MAX || (insert + 1) % KVM_COALESCED_MMIO_MAX == r.first {
            return false;
        }
        r.entries[insert as usize] = entry;
        r.last = (insert + 1) % KVM_COALESCED_MMIO_MAX;
        true
    }
}

/// `struct kvm_coalesced_mmio_dev`: one zone, one bus entry.
pub struct CoalescedMmioDev {
    zone: KvmCoalescedMmioZone,
    ring: Arc<CoalescedRing>,
    life: Lifetime,
}

impl fmt::Debug for CoalescedMmioDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.zone.pio == 1 { "pio" } else { "mmio" };
        write!(f, "coalesced({kind} {:#x} size {:#x})", self.zone.addr, self.zone.size)
    }
}

impl CoalescedMmioDev {
    /// The zone.
    pub fn zone(&self) -> KvmCoalescedMmioZone {
        self.zone
    }

    /// `coalesced_mmio_in_range(dev, addr, len)`: `len` is an `int`; the range must not wrap and
    /// must lie inside the zone (`zone.addr + zone.size` computed in u64, wrapping).
    pub fn in_range(&self, addr: u64, len: i32) -> bool {
        if len < 0 {
            return false;
        }
        let Some(end) = addr.checked_add(len as u64) else { return false };
        addr >= self.zone.addr && end <= self.zone.addr.wrapping_add(self.zone.size as u64)
    }
}

impl KvmIoDevice for CoalescedMmioDev {
    fn write(&self, ctx: &DispatchCtx<'_>, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if !self.in_range(addr, data.len() as i32) {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut entry = KvmCoalescedMmio { phys_addr: addr, len: data.len() as u32, pio: self.zone.pio, data: [0; 8] };
        entry.data[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        if !self.ring.append(entry) {
            ctx.rec.event(Some(ctx.vm), format_args!("{self:?}: ring full, declines"));
            return Err(Errno::EOPNOTSUPP);
        }
        ctx.rec.event(Some(ctx.vm), format_args!("{self:?} appends {addr:#x} len {}", data.len()));
        Ok(())
    }

    fn destructor(&self, _rec: &Recorder) {}

    fn lifetime(&self) -> &Lifetime {
        &self.life
    }

    fn handled_by(&self, _addr: u64, _data: &[u8], _is_write: bool) -> HandledBy {
        HandledBy::Coalesced
    }
}

fn zone_bus(zone: &KvmCoalescedMmioZone) -> BusKind {
    if zone.pio != 0 { BusKind::Pio } else { BusKind::Mmio }
}

impl<X: crate::bus::ExtLists> KvmIo<X> {
    /// `KVM_REGISTER_COALESCED_MMIO`: `pio` must be 0 or 1 (`EINVAL`); one bus entry of length
    /// `size` (as an `int`); no overlap or size check (unless `zone_size_fits_int`: a size above
    /// `INT_MAX` is `EINVAL`); bus errors (`ENOSPC`, `ENOMEM`) returned.
    pub fn register_coalesced_mmio(&self, zone: &KvmCoalescedMmioZone) -> Result<(), Errno> {
        if zone.pio > 1 || (self.config.zone_size_fits_int && zone.size > i32::MAX as u32) {
            return Err(Errno::EINVAL);
        }
        let dev = Arc::new(CoalescedMmioDev { zone: *zone, ring: self.ring.clone(), life: Lifetime::new() });
        let mut slots = self.slots.lock();
        self.bus(zone_bus(zone)).register_dev(
            &slots,
            &self.srcu,
            &self.rec,
            zone.addr,
            zone.size as i32,
            dev.clone(),
        )?;
        self.rec.event(Some(self.vm), format_args!("register {dev:?}"));
        slots.coalesced_zones.push(dev);
        Ok(())
    }

    /// `KVM_UNREGISTER_COALESCED_MMIO`: `pio` must be 0 or 1 (`EINVAL`); removes every zone of
    /// the same kind that contains the requested range, stops at the first bus error, and always
    /// returns `Ok`.
    pub fn unregister_coalesced_mmio(&self, zone: &KvmCoalescedMmioZone) -> Result<(), Errno> {
        if zone.pio > 1 {
            return Err(Errno::EINVAL);
        }
        let mut slots = self.slots.lock();
        let candidates: Vec<_> = slots.coalesced_zones.clone();
        for dev in candidates {
            if dev.zone.pio == zone.pio && dev.in_range(zone.addr, zone.size as i32) {
                self.rec.event(Some(self.vm), format_args!("unregister {dev:?}"));
                let d: Arc<dyn KvmIoDevice> = dev;
                let r = self.bus(zone_bus(zone)).unregister_dev(&slots, &self.srcu, &self.rec, &d);
                slots.prune_destroyed();
                if r.is_err() {
                    break;
                }
            }
        }
        Ok(())
    }
}
