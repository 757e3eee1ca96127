// SPDX-License-Identifier: MIT OR Apache-2.0
//! Self-test of the real-KVM guest harness in `tests/common/kvm_guest.rs`,
//! and of the kernel facts the differential I/O-bus test relies on:
//! any-length and datamatch MMIO ioeventfds, the coalesced MMIO/PIO ring,
//! and the errno results of the raw `KVM_IOEVENTFD` /
//! `KVM_(UN)REGISTER_COALESCED_MMIO` ioctls.
//!
//! Every test prints `skip: /dev/kvm not available: <reason>` and passes
//! when `/dev/kvm` cannot be opened.

#![cfg(target_os = "linux")]

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::kvm_guest::{CoalescedEntry, Exit, GuestAccess, KvmGuest, guest_or_skip, raw_coalesced, raw_ioeventfd};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vmm_sys_util::eventfd::EventFd;

const FLAG_DATAMATCH: u32 = 1 << 0;
const FLAG_PIO: u32 = 1 << 1;
const FLAG_DEASSIGN: u32 = 1 << 2;

fn mmio_w(addr: u64, len: u8, value: u64) -> GuestAccess {
    GuestAccess::Mmio { write: true, addr, len, value }
}

fn mmio_r(addr: u64, len: u8) -> GuestAccess {
    GuestAccess::Mmio { write: false, addr, len, value: 0 }
}

fn pio_w(port: u16, len: u8, value: u64) -> GuestAccess {
    GuestAccess::Pio { write: true, port, len, value }
}

fn pio_r(port: u16, len: u8) -> GuestAccess {
    GuestAccess::Pio { write: false, port, len, value: 0 }
}

fn le(value: u64, len: u8) -> Vec<u8> {
    value.to_le_bytes()[..usize::from(len)].to_vec()
}

fn eventfd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")
}

/// Reads and resets the eventfd counter (0 when nothing was signalled).
fn count(e: &EventFd) -> u64 {
    match e.read() {
        Ok(n) => n,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(err) => panic!("eventfd read: {err}"),
    }
}

fn acc(g: &mut KvmGuest, a: GuestAccess, read_value: u64) -> Exit {
    g.access(a, read_value).unwrap_or_else(|e| panic!("access {a:x?} failed: {e}"))
}

/// Small deterministic xorshift generator for test values.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn exact_widths_values_and_alignments() {
    let t = Instant::now();
    let Some(mut g) = guest_or_skip() else { return };
    let t_new = t.elapsed();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut n = 0u32;
    let t = Instant::now();
    for page in [0x1000_0000u64, 0x1000_f000, 0xfee0_0000, 0xffff_f000] {
        for off in [0u64, 1, 2, 3, 4, 5, 7, 0x7f9, 0xff0, 0xff7, 0xff8, 0xffc, 0xffe, 0xfff] {
            for len in [1u8, 2, 4, 8] {
                let addr = page + off;
                if (addr & 0xfff) + u64::from(len) > 0x1000 {
                    continue;
                }
                let v = rng.next();
                assert_eq!(acc(&mut g, mmio_w(addr, len, v), 0), Exit::MmioWrite { addr, data: le(v, len) });
                // `access` itself checks that the guest register received `v`.
                assert_eq!(acc(&mut g, mmio_r(addr, len), v), Exit::MmioRead { addr, len: usize::from(len) });
                n += 2;
            }
        }
    }
    for port in [0u16, 0x20, 0x60, 0x80, 0x3f8, 0xcf8, 0xcfc, 0xfffc, 0xffff] {
        for len in [1u8, 2, 4] {
            let v = rng.next();
            assert_eq!(acc(&mut g, pio_w(port, len, v), 0), Exit::IoOut { port, data: le(v, len) });
            assert_eq!(acc(&mut g, pio_r(port, len), v), Exit::IoIn { port, len: usize::from(len) });
            n += 2;
        }
    }
    println!("KvmGuest::new {t_new:?}; {n} accesses, {:?} per access", t.elapsed() / n);
}

#[test]
fn invalid_arguments_are_rejected_without_poisoning() {
    let Some(mut g) = guest_or_skip() else { return };
    for bad in [
        mmio_w(0x1000_0000, 3, 0),
        mmio_w(0x1000_0ffe, 4, 0), // crosses a page
        mmio_w(0x100, 4, 0),       // guest RAM
        mmio_w(0xffff_fffc, 8, 0), // beyond the identity map
        pio_w(0x80, 8, 0),
        pio_r(0x80, 0),
    ] {
        assert!(g.access(bad, 0).is_err(), "{bad:x?} accepted");
    }
    assert_eq!(
        acc(&mut g, mmio_w(0x1000_0000, 4, 1), 0),
        Exit::MmioWrite { addr: 0x1000_0000, data: vec![1, 0, 0, 0] }
    );
}

#[test]
fn thousands_of_fresh_vms() {
    if guest_or_skip().is_none() {
        return;
    }
    let n = 2000u32;
    let (mut t_new, mut t_acc, mut t_drop) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let t = Instant::now();
        let mut g = KvmGuest::new().unwrap_or_else(|e| panic!("VM #{i}: {e}"));
        t_new += t.elapsed();
        let t = Instant::now();
        let addr = 0x1000_0000 + u64::from(i % 0x1000) * 8;
        assert_eq!(acc(&mut g, mmio_w(addr, 8, u64::from(i)), 0), Exit::MmioWrite { addr, data: le(u64::from(i), 8) });
        t_acc += t.elapsed();
        let t = Instant::now();
        drop(g);
        t_drop += t.elapsed();
    }
    println!("{n} VMs: new {:?}, first access {:?}, drop {:?} (averages)", t_new / n, t_acc / n, t_drop / n);
}

/// Item 2: a len-0 (any length, no datamatch) MMIO ioeventfd.
#[test]
fn any_length_mmio_ioeventfd() {
    let Some(mut g) = guest_or_skip() else { return };
    let a = 0x1000_0010u64;
    let e = eventfd();
    g.vm().register_ioevent(&e, &IoEventAddress::Mmio(a), NoDatamatch).expect("register len-0 ioeventfd");
    let mut fast_mmio_seen = false;
    for round in 0..3 {
        for len in [1u8, 2, 4, 8] {
            assert_eq!(acc(&mut g, mmio_w(a, len, 0x55), 0), Exit::InKernel);
            assert_eq!(count(&e), 1, "round {round}: {len}-byte write at A");
        }
        for len in [1u8, 2, 4, 8] {
            let r = acc(&mut g, mmio_r(a, len), 0x1234_5678_9abc_def0);
            if round > 0 && r == Exit::InKernel {
                // VMX/EPT hosts: after the first access the page is an MMIO
                // SPTE and reads take the FAST_MMIO bus, signalling the fd.
                assert_eq!(count(&e), 1);
                fast_mmio_seen = true;
                continue;
            }
            assert_eq!(r, Exit::MmioRead { addr: a, len: usize::from(len) }, "round {round}");
            assert_eq!(count(&e), 0, "round {round}: read must not signal");
        }
        // Only the exact address matches, not addresses covering it.
        assert_eq!(acc(&mut g, mmio_w(a + 1, 1, 0x55), 0), Exit::MmioWrite { addr: a + 1, data: vec![0x55] });
        assert_eq!(acc(&mut g, mmio_w(a - 1, 2, 0x55), 0), Exit::MmioWrite { addr: a - 1, data: vec![0x55, 0] });
        assert_eq!(count(&e), 0);
    }
    println!(
        "len-0 MMIO ioeventfd: every write signals, reads {}",
        if fast_mmio_seen {
            "signal after the first access (FAST_MMIO path)"
        } else {
            "always exit (no FAST_MMIO path)"
        }
    );

    // Same for port I/O with a raw len-0 registration.
    let p = 0x510u16;
    raw_ioeventfd(g.vm(), 0, u64::from(p), 0, e.as_raw_fd(), FLAG_PIO).expect("len-0 PIO");
    for len in [1u8, 2, 4] {
        assert_eq!(acc(&mut g, pio_w(p, len, 7), 0), Exit::InKernel);
        assert_eq!(count(&e), 1);
        assert_eq!(acc(&mut g, pio_r(p, len), 0xabcd), Exit::IoIn { port: p, len: usize::from(len) });
        assert_eq!(count(&e), 0);
    }
}

/// Item 3: datamatch ioeventfds of width 1, 2, 4, 8.
#[test]
fn datamatch_mmio_ioeventfd() {
    let Some(mut g) = guest_or_skip() else { return };
    let base = 0x1000_1000u64;
    let fds: Vec<EventFd> = (0..4).map(|_| eventfd()).collect();
    let vals = [0xabu64, 0xabcd, 0xabcd_ef01, 0x0123_4567_89ab_cdef];
    let vm = g.vm();
    vm.register_ioevent(&fds[0], &IoEventAddress::Mmio(base), 0xabu8).unwrap();
    vm.register_ioevent(&fds[1], &IoEventAddress::Mmio(base + 0x10), 0xabcdu16).unwrap();
    vm.register_ioevent(&fds[2], &IoEventAddress::Mmio(base + 0x20), 0xabcd_ef01u32).unwrap();
    vm.register_ioevent(&fds[3], &IoEventAddress::Mmio(base + 0x30), 0x0123_4567_89ab_cdefu64).unwrap();
    for (i, (&len, &v)) in [1u8, 2, 4, 8].iter().zip(&vals).enumerate() {
        let addr = base + 0x10 * i as u64;
        let e = &fds[i];
        assert_eq!(acc(&mut g, mmio_w(addr, len, v), 0), Exit::InKernel);
        assert_eq!(count(e), 1, "len {len} matching write");
        // Bits above the access width are not written, so they cannot matter.
        if len < 8 {
            assert_eq!(acc(&mut g, mmio_w(addr, len, v | 0xff00_0000_0000_0000), 0), Exit::InKernel);
            assert_eq!(count(e), 1);
        }
        assert_eq!(acc(&mut g, mmio_w(addr, len, v ^ 1), 0), Exit::MmioWrite { addr, data: le(v ^ 1, len) });
        // Right value, wrong width: no match.
        let other = if len == 8 { 4 } else { len * 2 };
        assert_eq!(acc(&mut g, mmio_w(addr, other, v), 0), Exit::MmioWrite { addr, data: le(v, other) });
        assert_eq!(count(e), 0, "len {len}: non-matching writes must not signal");
    }
    // A datamatch wider than the length never matches (compared as u64).
    let e = eventfd();
    raw_ioeventfd(g.vm(), 0x1ab, base + 0x40, 1, e.as_raw_fd(), FLAG_DATAMATCH).unwrap();
    assert_eq!(acc(&mut g, mmio_w(base + 0x40, 1, 0xab), 0), Exit::MmioWrite { addr: base + 0x40, data: vec![0xab] });
    assert_eq!(count(&e), 0);
}

/// Item 4: coalesced MMIO ring capacity and contents, and coalesced PIO.
#[test]
fn coalesced_mmio_and_pio() {
    let Some(mut g) = guest_or_skip() else { return };
    let z = 0x1000_2000u64;
    g.vm().register_coalesced_mmio(IoEventAddress::Mmio(z), 0x100).expect("register coalesced zone");
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // struct kvm_coalesced_mmio_ring header is 8 bytes, entries 24; one slot
    // always stays empty.
    let usable = (page - 8) / 24 - 1;
    let mut expected = Vec::new();
    for i in 0..usable as u64 {
        let addr = z + (i % 32) * 8;
        assert_eq!(acc(&mut g, mmio_w(addr, 8, i), 0), Exit::InKernel, "write #{i}");
        expected.push(CoalescedEntry { addr, pio: false, data: le(i, 8) });
    }
    // Ring full: the next write exits to userspace instead.
    assert_eq!(acc(&mut g, mmio_w(z, 4, 0xfeed), 0), Exit::MmioWrite { addr: z, data: le(0xfeed, 4) });
    assert_eq!(g.drain_coalesced().unwrap(), expected);
    println!("coalesced ring: {usable} writes fit before writes exit");

    // After draining, writes coalesce again; read through the raw VcpuFd API too.
    assert_eq!(acc(&mut g, mmio_w(z + 3, 2, 0xbeef), 0), Exit::InKernel);
    let raw = g.vcpu_mut().coalesced_mmio_read().unwrap().expect("entry");
    assert_eq!((raw.phys_addr, raw.len), (z + 3, 2));
    assert_eq!(&raw.data[..2], &[0xef, 0xbe]);
    assert!(g.vcpu_mut().coalesced_mmio_read().unwrap().is_none());

    // Reads in a zone exit; writes must lie entirely inside the zone.
    assert_eq!(acc(&mut g, mmio_r(z, 4), 0x77), Exit::MmioRead { addr: z, len: 4 });
    assert_eq!(acc(&mut g, mmio_w(z + 0xfc, 8, 1), 0), Exit::MmioWrite { addr: z + 0xfc, data: le(1, 8) });
    assert_eq!(acc(&mut g, mmio_w(z + 0xff, 1, 1), 0), Exit::InKernel);
    assert_eq!(g.drain_coalesced().unwrap().len(), 1);

    // Coalesced PIO (KVM_CAP_COALESCED_PIO): `out` is queued with pio = 1,
    // `in` exits.
    g.vm().register_coalesced_mmio(IoEventAddress::Pio(0x600), 0x10).expect("register coalesced PIO zone");
    for len in [1u8, 2, 4] {
        assert_eq!(acc(&mut g, pio_w(0x604, len, 0xa1b2_c3d4), 0), Exit::InKernel);
        assert_eq!(
            g.drain_coalesced().unwrap(),
            vec![CoalescedEntry { addr: 0x604, pio: true, data: le(0xa1b2_c3d4, len) }]
        );
    }
    assert_eq!(acc(&mut g, pio_r(0x604, 2), 0x4242), Exit::IoIn { port: 0x604, len: 2 });
    // The PIO zone is not an MMIO zone at the same number, and vice versa.
    assert_eq!(acc(&mut g, pio_w(0x2000, 1, 1), 0), Exit::IoOut { port: 0x2000, data: vec![1] });
    assert!(g.drain_coalesced().unwrap().is_empty());
}

/// Item 6: with a coalesced zone and an ioeventfd overlapping on the MMIO
/// bus, which one takes a write depends on the registration order.
#[test]
fn overlapping_coalesced_zone_and_ioeventfd() {
    if guest_or_skip().is_none() {
        return;
    }
    let z = 0x1000_2000u64;
    for zone_first in [true, false] {
        for off in [0u64, 0x40] {
            let mut g = KvmGuest::new().unwrap();
            let e = eventfd();
            let reg_zone = |g: &KvmGuest| g.vm().register_coalesced_mmio(IoEventAddress::Mmio(z), 0x100).unwrap();
            let reg_fd =
                |g: &KvmGuest| g.vm().register_ioevent(&e, &IoEventAddress::Mmio(z + off), NoDatamatch).unwrap();
            if zone_first {
                reg_zone(&g);
                reg_fd(&g);
            } else {
                reg_fd(&g);
                reg_zone(&g);
            }
            for len in [1u8, 4, 8] {
                assert_eq!(acc(&mut g, mmio_w(z + off, len, 9), 0), Exit::InKernel);
                let (signalled, queued) = (count(&e), g.drain_coalesced().unwrap().len());
                let expect = if zone_first { (0, 1) } else { (1, 0) };
                assert_eq!((signalled, queued), expect, "zone_first {zone_first} off {off:#x} len {len}");
            }
        }
    }
}

/// Item 5: the raw ioctls accept arbitrary arguments and report errnos.
#[test]
fn raw_ioctl_errnos() {
    let Some(g) = guest_or_skip() else { return };
    let vm = g.vm();
    let (e, e2) = (eventfd(), eventfd());
    let fd = e.as_raw_fd();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    // Descriptor numbers that are certainly not open (a just-closed number
    // could be reused by a test running in parallel).
    let closed = i32::MAX;
    let a = 0x1000_3000u64;

    assert_eq!(raw_ioeventfd(vm, 0, a, 3, fd, 0), Err(libc::EINVAL), "len 3");
    assert_eq!(raw_ioeventfd(vm, 0, a, 16, fd, 0), Err(libc::EINVAL), "len 16");
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, fd, 1 << 10), Err(libc::EINVAL), "flag 10");
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, fd, 1 << 5), Err(libc::EINVAL), "flag 5");
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, closed, 0), Err(libc::EBADF), "closed fd");
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, -1, 0), Err(libc::EBADF), "fd -1");
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, devnull.as_raw_fd(), 0), Err(libc::EINVAL), "non-eventfd");
    assert_eq!(raw_ioeventfd(vm, 0, a, 0, fd, FLAG_DATAMATCH), Err(libc::EINVAL), "len 0 with datamatch");
    assert_eq!(raw_ioeventfd(vm, 0, u64::MAX - 1, 4, fd, 0), Err(libc::EINVAL), "address wraps");

    assert_eq!(raw_ioeventfd(vm, 0, a, 4, fd, 0), Ok(()));
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, fd, 0), Err(libc::EEXIST), "duplicate");
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, e2.as_raw_fd(), 0), Err(libc::EEXIST), "duplicate with another fd");
    assert_eq!(raw_ioeventfd(vm, 0, a, 0, e2.as_raw_fd(), 0), Err(libc::EEXIST), "len 0 over len 4");
    assert_eq!(
        raw_ioeventfd(vm, 5, a, 4, e2.as_raw_fd(), FLAG_DATAMATCH),
        Err(libc::EEXIST),
        "datamatch over wildcard"
    );
    assert_eq!(raw_ioeventfd(vm, 0, a, 2, e2.as_raw_fd(), 0), Ok(()), "other length, same address");
    assert_eq!(raw_ioeventfd(vm, 5, a + 0x100, 4, fd, FLAG_DATAMATCH), Ok(()));
    assert_eq!(raw_ioeventfd(vm, 6, a + 0x100, 4, fd, FLAG_DATAMATCH), Ok(()));

    assert_eq!(raw_ioeventfd(vm, 0, a + 0x800, 4, fd, FLAG_DEASSIGN), Err(libc::ENOENT), "deassign of nothing");
    assert_eq!(
        raw_ioeventfd(vm, 0, a, 4, e2.as_raw_fd(), FLAG_DEASSIGN),
        Err(libc::ENOENT),
        "deassign with the wrong fd"
    );
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, closed, FLAG_DEASSIGN), Err(libc::EBADF), "deassign with a closed fd");
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, fd, FLAG_DEASSIGN), Ok(()));
    assert_eq!(raw_ioeventfd(vm, 0, a, 4, fd, FLAG_DEASSIGN), Err(libc::ENOENT), "second deassign");

    let z = 0x1000_4000u64;
    assert_eq!(raw_coalesced(vm, z, 0x100, 2, false), Err(libc::EINVAL), "pio=2");
    assert_eq!(raw_coalesced(vm, z, 0x100, 2, true), Err(libc::EINVAL), "unreg pio=2");
    assert_eq!(raw_coalesced(vm, z, 0x100, 0, false), Ok(()));
    assert_eq!(raw_coalesced(vm, z, 0x100, 0, false), Ok(()), "duplicate zone");
    assert_eq!(raw_coalesced(vm, z + 0x80, 0x100, 0, false), Ok(()), "overlap");
    assert_eq!(raw_coalesced(vm, z + 0x1000, 0x100, 0, true), Ok(()), "unreg nothing");
    assert_eq!(raw_coalesced(vm, z, 0x100, 0, true), Ok(()));
    assert_eq!(raw_coalesced(vm, 0x600, 0x10, 1, false), Ok(()), "PIO zone");
}
