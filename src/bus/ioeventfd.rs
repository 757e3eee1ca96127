//! ioeventfd (`virt/kvm/eventfd.c`): `KVM_IOEVENTFD` assign and deassign, and the device that
//! signals an eventfd when the guest writes a matching value.
//!
//! | model | kernel |
//! |---|---|
//! | [`KvmIo::ioeventfd`] | `kvm_ioeventfd` |
//! | `assign` / `assign_idx` | `kvm_assign_ioeventfd` / `kvm_assign_ioeventfd_idx` |
//! | `deassign` / `deassign_idx` | `kvm_deassign_ioeventfd` / `kvm_deassign_ioeventfd_idx` |
//! | [`bus_from_flags`] | `ioeventfd_bus_from_flags` |
//! | [`Ioeventfd::collides`] | `ioeventfd_check_collision` |
//! | [`Ioeventfd::in_range`] | `ioeventfd_in_range` |
//! | [`EventfdCtx`] | `struct eventfd_ctx` (`fs/eventfd.c`) |

use super::{BusKind, DispatchCtx, HandledBy, KvmIo, KvmIoDevice};
use crate::errno::Errno;
pub use crate::fd::EventfdCtx;
use crate::sync::Arc;
use crate::trace::Lifetime;
use crate::trace::Recorder;
use crate::uapi::*;
use std::fmt;

/// `ioeventfd_bus_from_flags`: PIO wins over VIRTIO_CCW_NOTIFY; else MMIO.
pub fn bus_from_flags(flags: u32) -> BusKind {
    if flags & KVM_IOEVENTFD_FLAG_PIO != 0 {
        BusKind::Pio
    } else if flags & KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY != 0 {
        BusKind::VirtioCcwNotify
    } else {
        BusKind::Mmio
    }
}

/// `struct _ioeventfd`: one registration, a device on one bus.
pub struct Ioeventfd {
    addr: u64,
    length: i32,
    eventfd: Arc<EventfdCtx>,
    datamatch: u64,
    bus: BusKind,
    wildcard: bool,
    life: Lifetime,
}

impl fmt::Debug for Ioeventfd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ioeventfd({} {:#x} len {} -> {}", self.bus, self.addr, self.length, self.eventfd)?;
        if !self.wildcard {
            write!(f, " datamatch {:#x}", self.datamatch)?;
        }
        f.write_str(")")
    }
}

impl Ioeventfd {
    /// `ioeventfd_check_collision` for one existing entry: same bus, same address, and either
    /// length 0, or equal lengths with a wildcard on either side or equal datamatch.
    pub fn collides(&self, other: &Ioeventfd) -> bool {
        self.bus == other.bus
            && self.addr == other.addr
            && (self.length == 0
                || other.length == 0
                || (self.length == other.length
                    && (self.wildcard || other.wildcard || self.datamatch == other.datamatch)))
    }

    /// `ioeventfd_in_range`: exact address; length 0 matches any access; else equal length and
    /// (wildcard, or the value read as an unsigned integer of that width equals datamatch).
    pub fn in_range(&self, addr: u64, data: &[u8]) -> bool {
        if addr != self.addr {
            return false;
        }
        if self.length == 0 {
            return true;
        }
        if data.len() as i32 != self.length {
            return false;
        }
        if self.wildcard {
            return true;
        }
        let value = match data.len() {
            1 | 2 | 4 | 8 => {
                let mut b = [0u8; 8];
                b[..data.len()].copy_from_slice(data);
                u64::from_le_bytes(b)
            }
            _ => return false,
        };
        value == self.datamatch
    }

    /// The bus.
    pub fn bus(&self) -> BusKind {
        self.bus
    }

    /// The address or port.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The length (0: any access at the address).
    pub fn len(&self) -> u64 {
        self.length as u64
    }

    /// Whether the length is 0.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// The eventfd this entry signals.
    pub fn eventfd(&self) -> &Arc<EventfdCtx> {
        &self.eventfd
    }

    /// Whether this entry is the one a deassign with these arguments names.
    fn named_by(&self, bus: BusKind, ctx: &Arc<EventfdCtx>, args: &KvmIoeventfd, wildcard: bool) -> bool {
        self.bus == bus
            && Arc::ptr_eq(&self.eventfd, ctx)
            && self.addr == args.addr
            && self.length as u32 == args.len
            && self.wildcard == wildcard
            && (self.wildcard || self.datamatch == args.datamatch)
    }
}

impl KvmIoDevice for Ioeventfd {
    fn write(&self, ctx: &DispatchCtx<'_>, addr: u64, data: &[u8]) -> Result<(), Errno> {
        if !self.in_range(addr, data) {
            return Err(Errno::EOPNOTSUPP);
        }
        ctx.rec.event(Some(ctx.vm), format_args!("{self:?} signals"));
        self.eventfd.signal(ctx.rec);
        Ok(())
    }

    /// `ioeventfd_release`: puts the eventfd (the VM's list drops the entry once it is dead).
    fn destructor(&self, rec: &Recorder) {
        self.eventfd.put(rec);
    }

    fn lifetime(&self) -> &Lifetime {
        &self.life
    }

    fn handled_by(&self, _addr: u64, _data: &[u8], _is_write: bool) -> HandledBy {
        HandledBy::Ioeventfd { eventfd: self.eventfd.label() }
    }

    fn is_ioeventfd(&self) -> bool {
        true
    }
}

impl<X: crate::bus::ExtLists> KvmIo<X> {
    /// `kvm_ioeventfd` (the `KVM_IOEVENTFD` VM ioctl). `fdget` is `eventfd_ctx_fdget` on the
    /// calling process: `EBADF` for a closed fd, `EINVAL` for a file that is not an eventfd, else
    /// the context with a new reference.
    pub fn ioeventfd(
        &self,
        args: &KvmIoeventfd,
        fdget: &dyn Fn(i32) -> Result<Arc<EventfdCtx>, Errno>,
    ) -> Result<(), Errno> {
        if args.flags & KVM_IOEVENTFD_FLAG_DEASSIGN != 0 {
            return self.deassign_ioeventfd(args, fdget);
        }
        self.assign_ioeventfd(args, fdget)
    }

    /// `kvm_assign_ioeventfd`: the checks in the kernel's order, then the registration, then the
    /// FAST_MMIO twin of a len-0 MMIO entry (undone if the twin fails).
    fn assign_ioeventfd(
        &self,
        args: &KvmIoeventfd,
        fdget: &dyn Fn(i32) -> Result<Arc<EventfdCtx>, Errno>,
    ) -> Result<(), Errno> {
        let bus = bus_from_flags(args.flags);
        if !matches!(args.len, 0 | 1 | 2 | 4 | 8) {
            return Err(Errno::EINVAL);
        }
        if args.addr.checked_add(args.len as u64).is_none() {
            return Err(Errno::EINVAL);
        }
        if args.flags & !KVM_IOEVENTFD_VALID_FLAG_MASK != 0 {
            return Err(Errno::EINVAL);
        }
        if args.len == 0 && args.flags & KVM_IOEVENTFD_FLAG_DATAMATCH != 0 {
            return Err(Errno::EINVAL);
        }
        self.assign_ioeventfd_idx(bus, args, fdget)?;
        if args.len == 0
            && bus == BusKind::Mmio
            && let Err(e) = self.assign_ioeventfd_idx(BusKind::FastMmio, args, fdget)
        {
            let _ = self.deassign_ioeventfd_idx(bus, args, fdget);
            return Err(e);
        }
        Ok(())
    }

    /// `kvm_assign_ioeventfd_idx`: one entry on one bus.
    fn assign_ioeventfd_idx(
        &self,
        bus: BusKind,
        args: &KvmIoeventfd,
        fdget: &dyn Fn(i32) -> Result<Arc<EventfdCtx>, Errno>,
    ) -> Result<(), Errno> {
        let eventfd = fdget(args.fd)?;
        let wildcard = args.flags & KVM_IOEVENTFD_FLAG_DATAMATCH == 0;
        let p = Arc::new(Ioeventfd {
            addr: args.addr,
            length: args.len as i32,
            eventfd: eventfd.clone(),
            datamatch: if wildcard { 0 } else { args.datamatch },
            bus,
            wildcard,
            life: Lifetime::new(),
        });
        let mut slots = self.slots.lock();
        let result = if slots.ioeventfds.iter().any(|q| q.collides(&p))
            || slots.ext.ioeventfd_collides(bus, args.addr, args.len)
        {
            Err(Errno::EEXIST)
        } else {
            self.bus(bus).register_dev(&slots, &self.srcu, &self.rec, p.addr, p.length, p.clone())
        };
        match result {
            Ok(()) => {
                if let Some(array) = self.bus(bus).get(&slots) {
                    array.add_ioeventfd_count(&slots, 1);
                }
                self.rec.event(Some(self.vm), format_args!("assign {p:?}"));
                slots.ioeventfds.push(p);
                Ok(())
            }
            Err(e) => {
                drop(slots);
                eventfd.put(&self.rec);
                Err(e)
            }
        }
    }

    /// `kvm_deassign_ioeventfd`: no validation; for a len-0 MMIO entry the FAST_MMIO twin is
    /// removed too and its result ignored.
    fn deassign_ioeventfd(
        &self,
        args: &KvmIoeventfd,
        fdget: &dyn Fn(i32) -> Result<Arc<EventfdCtx>, Errno>,
    ) -> Result<(), Errno> {
        let bus = bus_from_flags(args.flags);
        let result = self.deassign_ioeventfd_idx(bus, args, fdget);
        if args.len == 0 && bus == BusKind::Mmio {
            let _ = self.deassign_ioeventfd_idx(BusKind::FastMmio, args, fdget);
        }
        result
    }

    /// `kvm_deassign_ioeventfd_idx`: unregisters the first matching entry (its result ignored),
    /// decrements `ioeventfd_count` if the bus still exists; none: `ENOENT`.
    fn deassign_ioeventfd_idx(
        &self,
        bus: BusKind,
        args: &KvmIoeventfd,
        fdget: &dyn Fn(i32) -> Result<Arc<EventfdCtx>, Errno>,
    ) -> Result<(), Errno> {
        let eventfd = fdget(args.fd)?;
        let wildcard = args.flags & KVM_IOEVENTFD_FLAG_DATAMATCH == 0;
        let mut slots = self.slots.lock();
        let found = slots.ioeventfds.iter().find(|p| p.named_by(bus, &eventfd, args, wildcard)).cloned();
        let result = match found {
            Some(p) => {
                self.rec.event(Some(self.vm), format_args!("deassign {p:?}"));
                let dev: Arc<dyn KvmIoDevice> = p;
                let _ = self.bus(bus).unregister_dev(&slots, &self.srcu, &self.rec, &dev);
                if let Some(array) = self.bus(bus).get(&slots) {
                    array.add_ioeventfd_count(&slots, -1);
                }
                slots.prune_destroyed();
                Ok(())
            }
            None => Err(Errno::ENOENT),
        };
        drop(slots);
        eventfd.put(&self.rec);
        result
    }
}
