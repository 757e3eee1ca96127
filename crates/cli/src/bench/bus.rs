// SPDX-License-Identifier: MIT OR Apache-2.0
//! Device lookup on a bus of `n` devices, the same devices and access pattern for each bus:
//!
//! * the crate's bus (`kvm_io_bus`): devices registered as coalesced MMIO zones through
//!   `KvmIo::register_coalesced_mmio`, the published array taken with `IoBus::snapshot`, and
//!   `BusArray::get_first_dev(addr, len)` (Linux's bsearch with `kvm_io_bus_cmp`, then the walk
//!   back to the first match): **the crate's lookup** in the tables;
//! * the crate's full dispatch, `Vm::access` (an MMIO read, which a coalesced zone does not take,
//!   so it ends in an exit): lookup plus the SRCU section, lifetime checks and the walk;
//! * a bare binary search (`slice::partition_point`) over a sorted array of (base, len);
//! * a Firecracker-style bus: a `BTreeMap` keyed by base, searched by iterating it in reverse to
//!   the first base at or below the address (the shape of Firecracker's `Bus::first_before`);
//! * rust-vmm `vm-device`'s `Bus::check_access` (criterion bench only: a dev-dependency).
//!
//! Devices are 256-byte zones 4 KiB apart from 0xd000_0000; the 4,096 accesses are 4-byte reads
//! at pseudo-random devices and offsets, all inside a device.

use ioregionfd_model::bus::{BusArray, BusConfig, BusKind, KvmIo};
use ioregionfd_model::kvm::Kvm;
use ioregionfd_model::trace::Recorder;
use ioregionfd_model::uapi::KvmCoalescedMmioZone;
use ioregionfd_model::vm::{Vm, VmConfig};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bus sizes measured.
pub const SIZES: [usize; 3] = [10, 100, 1000];

pub const BASE: u64 = 0xd000_0000;
pub const STRIDE: u64 = 0x1000;
pub const DEVICE_LEN: u64 = 0x100;
pub const ACCESS_LEN: u32 = 4;

/// The devices (base, len) and the accesses (addr) for `n` devices.
pub struct Layout {
    pub devices: Vec<(u64, u64)>,
    pub accesses: Vec<u64>,
}

/// A deterministic layout; devices are listed in a scrambled order (registration order).
pub fn layout(n: usize) -> Layout {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ n as u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut devices: Vec<(u64, u64)> = (0..n as u64).map(|i| (BASE + i * STRIDE, DEVICE_LEN)).collect();
    for i in (1..devices.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        devices.swap(i, j);
    }
    let accesses = (0..4096)
        .map(|_| {
            let d = next() % n as u64;
            let off = (next() % (DEVICE_LEN / u64::from(ACCESS_LEN))) * u64::from(ACCESS_LEN);
            BASE + d * STRIDE + off
        })
        .collect();
    Layout { devices, accesses }
}

/// The crate's bus with the layout's devices registered as coalesced zones.
pub struct CrateBus {
    _io: KvmIo,
    pub array: Arc<BusArray>,
}

impl CrateBus {
    pub fn new(l: &Layout) -> CrateBus {
        let config = BusConfig { nr_iobus_devs: None, ..BusConfig::default() };
        let io: KvmIo = KvmIo::new(0, Recorder::without_events(), config);
        for &(addr, len) in &l.devices {
            io.register_coalesced_mmio(&KvmCoalescedMmioZone { addr, size: len as u32, pio: 0 })
                .expect("register a coalesced zone");
        }
        let array = io.bus(BusKind::Mmio).snapshot().expect("the MMIO bus exists");
        assert_eq!(array.dev_count() as usize, l.devices.len());
        CrateBus { _io: io, array }
    }

    /// Looks every access up; returns a checksum of the indices found.
    #[inline(never)]
    pub fn lookup_all(&self, accesses: &[u64]) -> usize {
        let mut sum = 0;
        for &a in accesses {
            sum += self.array.get_first_dev(std::hint::black_box(a), ACCESS_LEN as i32).unwrap_or(usize::MAX);
        }
        sum
    }
}

/// The crate's whole dispatch: `Vm::access` of an MMIO read.
pub struct CrateVm {
    _kvm: Kvm,
    vm: Arc<Vm>,
}

impl CrateVm {
    pub fn new(l: &Layout) -> CrateVm {
        let kvm = Kvm::with_recorder(Recorder::without_events());
        let mut config = VmConfig::default();
        config.bus.nr_iobus_devs = None;
        let id = kvm.create_vm(config);
        for &(addr, len) in &l.devices {
            kvm.register_coalesced_mmio(id, &KvmCoalescedMmioZone { addr, size: len as u32, pio: 0 })
                .expect("register a coalesced zone");
        }
        let vm = kvm.vm(id).expect("the VM exists");
        CrateVm { _kvm: kvm, vm }
    }

    #[inline(never)]
    pub fn access_all(&self, accesses: &[u64]) -> usize {
        let mut n = 0;
        for &a in accesses {
            let r = self.vm.access(BusKind::Mmio, std::hint::black_box(a), ACCESS_LEN as usize, None);
            n += usize::from(r.is_ok());
        }
        n
    }
}

/// A sorted array of (base, len), searched with `partition_point`.
pub struct SortedArray(Vec<(u64, u64)>);

impl SortedArray {
    pub fn new(l: &Layout) -> SortedArray {
        let mut v = l.devices.clone();
        v.sort_unstable();
        SortedArray(v)
    }

    #[inline]
    pub fn lookup(&self, addr: u64, len: u64) -> Option<usize> {
        let i = self.0.partition_point(|&(base, _)| base <= addr);
        let (base, size) = *self.0.get(i.checked_sub(1)?)?;
        (addr - base + len <= size).then_some(i - 1)
    }

    #[inline(never)]
    pub fn lookup_all(&self, accesses: &[u64]) -> usize {
        let mut sum = 0;
        for &a in accesses {
            sum += self.lookup(std::hint::black_box(a), u64::from(ACCESS_LEN)).unwrap_or(usize::MAX);
        }
        sum
    }
}

/// A Firecracker-style bus: a map by base, searched by a reverse scan.
pub struct LinearScan(BTreeMap<u64, (u64, usize)>);

impl LinearScan {
    pub fn new(l: &Layout) -> LinearScan {
        LinearScan(l.devices.iter().enumerate().map(|(id, &(base, len))| (base, (len, id))).collect())
    }

    #[inline]
    pub fn lookup(&self, addr: u64, len: u64) -> Option<usize> {
        let (base, &(size, id)) = self.0.iter().rev().find(|(base, _)| **base <= addr)?;
        (addr - base + len <= size).then_some(id)
    }

    #[inline(never)]
    pub fn lookup_all(&self, accesses: &[u64]) -> usize {
        let mut sum = 0;
        for &a in accesses {
            sum += self.lookup(std::hint::black_box(a), u64::from(ACCESS_LEN)).unwrap_or(usize::MAX);
        }
        sum
    }
}
