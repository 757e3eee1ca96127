// SPDX-License-Identifier: MIT OR Apache-2.0
//! The paths a guest MMIO access takes on a real `/dev/kvm` (kvm-ioctls):
//!
//! * an exit (`KVM_EXIT_MMIO`) handled in the vCPU thread: `KVM_RUN` returns, userspace answers,
//!   `KVM_RUN` again;
//! * an exit forwarded to a device thread over a transport and answered there: what a VMM does
//!   today with a device on another thread, and what ioregionfd removes (KVM would write the
//!   command itself, without returning from `KVM_RUN`);
//! * an ioeventfd-signalled posted write: handled in the kernel, no exit.
//!
//! The guest is a real-mode loop at 0x1000 (one 4 KiB memslot): `mov [0x8000], eax` or
//! `mov eax, [0x8000]`, then `addr32 loop` with ECX preset to the number of accesses, then
//! `hlt`. 0x8000 is outside the memslot, so every access is MMIO. On an emulating backend
//! (`kvm_pvm`, shadow paging) every access goes through KVM's instruction emulator.

use super::Pinning;
use super::rt::{Kind, Pair};
use ioregionfd_model::wire::{Command, Direction, MESSAGE_SIZE, Response, WireFormat};
use kvm_bindings::{kvm_regs, kvm_userspace_memory_region};
use kvm_ioctls::{IoEventAddress, Kvm, NoDatamatch, VcpuExit, VcpuFd, VmFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Prefix of the error when `/dev/kvm` cannot be opened (the caller prints a skip line).
pub const NO_KVM: &str = "cannot open /dev/kvm: ";

const CODE: u64 = 0x1000;
const MMIO: u64 = 0x8000;
const PAGE: usize = 0x1000;

/// Direction of the guest's accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Anonymous memory for the memslot; unmapped on drop (after the VM, see [`Guest`]).
struct Mem(NonNull<u8>);

impl Mem {
    fn new() -> Result<Mem, String> {
        // SAFETY: a new anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        NonNull::new(p.cast()).map(Mem).ok_or_else(|| "mmap returned NULL".into())
    }

    fn write(&mut self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= PAGE);
        // SAFETY: the range is inside the page this value owns.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.0.as_ptr().add(at), bytes.len()) };
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by `Mem::new` and nothing uses it any more.
        unsafe { libc::munmap(self.0.as_ptr().cast(), PAGE) };
    }
}

// SAFETY: the mapping is owned by this value alone; any thread may use or unmap it.
unsafe impl Send for Mem {}

/// A one-vCPU real-mode VM running the access loop.
pub struct Guest {
    // Field order is drop order: the vCPU and VM go before the memory behind the memslot.
    vcpu: VcpuFd,
    vm: VmFd,
    _kvm: Kvm,
    _mem: Mem,
    access: Access,
}

impl Guest {
    /// A VM whose loop makes `access`es. `Err` starting with [`NO_KVM`] when `/dev/kvm` cannot
    /// be opened.
    pub fn new(access: Access) -> Result<Guest, String> {
        let mut mem = Mem::new()?;
        let kvm = Kvm::new().map_err(|e| format!("{NO_KVM}{e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: CODE,
            memory_size: PAGE as u64,
            userspace_addr: mem.0.as_ptr() as u64,
        };
        // SAFETY: the region points at a page this Guest owns and unmaps only after the VM is
        // gone (field order).
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        // L: mov [0x8000], eax (66 a3 00 80) or mov eax, [0x8000] (66 a1 00 80)
        //    addr32 loop L (67 e2 f9: back 7 bytes)
        //    hlt (f4)
        let op = if access == Access::Write { 0xa3 } else { 0xa1 };
        mem.write(0, &[0x66, op, 0x00, 0x80, 0x67, 0xe2, 0xf9, 0xf4]);
        let vcpu = vm.create_vcpu(0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let mut sregs = vcpu.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
        for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
            seg.base = 0;
            seg.selector = 0;
        }
        vcpu.set_sregs(&sregs).map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        Ok(Guest { vcpu, vm, _kvm: kvm, _mem: mem, access })
    }

    /// Registers an ioeventfd (any length, no datamatch) at the MMIO address: writes then
    /// complete in the kernel.
    pub fn ioeventfd(&self) -> Result<EventFd, String> {
        let efd = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
        self.vm
            .register_ioevent(&efd, &IoEventAddress::Mmio(MMIO), NoDatamatch)
            .map_err(|e| format!("KVM_IOEVENTFD: {e}"))?;
        Ok(efd)
    }

    /// Runs the loop for `n` accesses, handing each exit to `handle` (address, data: the bytes
    /// written, or the buffer to fill for a read). Returns the time and the number of exits.
    pub fn run(&mut self, n: u32, mut handle: impl FnMut(u64, &mut [u8])) -> Result<(Duration, u64), String> {
        let regs = kvm_regs { rip: CODE, rflags: 2, rcx: u64::from(n), rax: 0x1234_5678, ..Default::default() };
        self.vcpu.set_regs(&regs).map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        let mut exits = 0;
        let start = Instant::now();
        loop {
            match self.vcpu.run() {
                Ok(VcpuExit::Hlt) => break,
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    exits += 1;
                    handle(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    exits += 1;
                    let mut copy = [0u8; 8];
                    let len = data.len().min(8);
                    copy[..len].copy_from_slice(&data[..len]);
                    handle(addr, &mut copy[..len]);
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(e) => return Err(format!("KVM_RUN: {e}")),
                Ok(other) => return Err(format!("unexpected exit {other:?}")),
            }
        }
        let elapsed = start.elapsed();
        Ok((elapsed, exits))
    }

    pub fn access(&self) -> Access {
        self.access
    }
}

/// The command a VMM would forward for an exit (what KVM would send with ioregionfd).
fn forward_command(access: Access, addr: u64, data: &[u8]) -> [u8; MESSAGE_SIZE] {
    let size_exponent = data.len().trailing_zeros() as u8;
    let mut value = [0u8; 8];
    let n = data.len().min(8);
    value[..n].copy_from_slice(&data[..n]);
    let cmd = match access {
        Access::Read => Command {
            direction: Direction::Read,
            size_exponent,
            resp: true,
            user_data: 1,
            offset: addr - MMIO,
            data: 0,
        },
        Access::Write => Command {
            direction: Direction::Write,
            size_exponent,
            resp: true,
            user_data: 1,
            offset: addr - MMIO,
            data: u64::from_le_bytes(value),
        },
    };
    cmd.encode(WireFormat::V3)
}

/// The paths measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The exit handled in the vCPU thread.
    Inline(Access),
    /// The exit forwarded to a device thread over a transport and answered (reads).
    Forwarded(Kind, Pinning),
    /// A write taken by an ioeventfd in the kernel.
    Ioeventfd,
}

impl Path {
    /// Every path, in table order.
    pub fn all() -> Vec<Path> {
        let mut v = vec![Path::Inline(Access::Read), Path::Inline(Access::Write), Path::Ioeventfd];
        for p in Pinning::ALL {
            for k in Kind::ALL {
                v.push(Path::Forwarded(k, p));
            }
        }
        v
    }

    pub fn name(self) -> String {
        match self {
            Path::Inline(Access::Read) => "KVM_EXIT_MMIO read, answered in the vCPU thread".into(),
            Path::Inline(Access::Write) => "KVM_EXIT_MMIO write, handled in the vCPU thread".into(),
            Path::Ioeventfd => "ioeventfd posted write (in kernel, no exit)".into(),
            Path::Forwarded(k, p) => format!("KVM_EXIT_MMIO read forwarded over {} ({})", k.name(), p.name()),
        }
    }

    pub fn id(self) -> String {
        match self {
            Path::Inline(Access::Read) => "exit-inline/read".into(),
            Path::Inline(Access::Write) => "exit-inline/write".into(),
            Path::Ioeventfd => "ioeventfd/write".into(),
            Path::Forwarded(k, p) => format!("exit-forwarded/{}/{}", p.id(), k.id()),
        }
    }
}

/// A guest set up for one path, ready to run batches.
pub struct Runner {
    guest: Guest,
    pair: Option<Pair>,
    efd: Option<EventFd>,
    path: Path,
}

impl Runner {
    /// Sets up `path`; the caller's thread is the vCPU thread (pin it before).
    pub fn new(path: Path, cpus: &[usize]) -> Result<Runner, String> {
        let access = match path {
            Path::Inline(a) => a,
            Path::Forwarded(..) => Access::Read,
            Path::Ioeventfd => Access::Write,
        };
        let guest = Guest::new(access)?;
        let efd = if path == Path::Ioeventfd { Some(guest.ioeventfd()?) } else { None };
        let pair = match path {
            Path::Forwarded(kind, pinning) => Some(Pair::new(kind, pinning, cpus).map_err(|e| format!("{e}"))?),
            _ => None,
        };
        Ok(Runner { guest, pair, efd, path })
    }

    /// Runs `n` guest accesses; returns their time. Checks that the path was the one asked for
    /// (every access exits, or none does).
    pub fn run(&mut self, n: u32) -> Result<Duration, String> {
        let access = self.guest.access();
        let pair = &mut self.pair;
        let (t, exits) = self.guest.run(n, |addr, data| match pair {
            Some(p) => {
                let resp = p.round_trip(&forward_command(access, addr, data));
                if access == Access::Read {
                    let value = Response::decode(&resp).map(|r| r.data).unwrap_or(0).to_le_bytes();
                    let len = data.len().min(8);
                    data[..len].copy_from_slice(&value[..len]);
                }
            }
            None => {
                if access == Access::Read {
                    let len = data.len().min(8);
                    data[..len].copy_from_slice(&0x5a5a_5a5a_5a5a_5a5au64.to_le_bytes()[..len]);
                }
            }
        })?;
        let want = if self.path == Path::Ioeventfd { 0 } else { u64::from(n) };
        if exits != want {
            return Err(format!("{}: {exits} exits for {n} accesses (expected {want})", self.path.id()));
        }
        if let Some(efd) = &self.efd {
            let _ = efd.read();
        }
        Ok(t)
    }
}

/// Per-access times (ns) of each path: `rounds` batches of `accesses(path)` guest accesses,
/// after a warm-up batch a quarter that size, the paths interleaved batch by batch. Runs on the
/// calling thread, which is the vCPU thread (pin it before). Forwarded paths across two CPUs
/// are left out when fewer than two CPUs are allowed.
pub fn measure(
    paths: &[Path],
    cpus: &[usize],
    rounds: usize,
    accesses: impl Fn(Path) -> u32,
) -> Result<Vec<(Path, Vec<f64>)>, String> {
    let mut runners = Vec::new();
    for &path in paths {
        if matches!(path, Path::Forwarded(_, Pinning::TwoCpus)) && cpus.len() < 2 {
            continue;
        }
        let mut r = Runner::new(path, cpus)?;
        r.run((accesses(path) / 4).max(1))?;
        runners.push((path, r, Vec::with_capacity(rounds)));
    }
    for _ in 0..rounds {
        for (path, r, samples) in runners.iter_mut() {
            let n = accesses(*path);
            samples.push(r.run(n)?.as_nanos() as f64 / f64::from(n));
        }
    }
    Ok(runners.into_iter().map(|(p, _, s)| (p, s)).collect())
}
