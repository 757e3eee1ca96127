// SPDX-License-Identifier: MIT OR Apache-2.0
//! A minimal real-KVM guest that performs exactly one MMIO or port I/O access
//! per call, for differential tests against the userspace model of KVM's
//! in-kernel I/O bus.
//!
//! # Guest setup
//!
//! The vCPU starts directly in 64-bit long mode (everything is programmed
//! with `KVM_SET_SREGS`; the guest never runs a mode switch):
//!
//! * guest RAM is a single memslot `0..RAM_SIZE` (32 KiB) backed by an
//!   anonymous private mapping;
//! * page 0 holds a flat GDT (null, 64-bit code, data, TSS descriptors) that
//!   mirrors the cached segment state given to KVM;
//! * pages 1..6 hold a PML4, one PDPT and four page directories that
//!   identity-map guest-physical `0..4 GiB` with 2 MiB pages (1 GiB pages are
//!   not used: the `pdpe1gb` CPUID bit is not offered by KVM on this kind of
//!   host);
//! * page 7 is the code page: every [`KvmGuest::access`] writes a fresh
//!   instruction sequence there, e.g. `mov rdi, imm64; mov rax, imm64;
//!   mov [rdi], eax; hlt` and points RIP at it;
//! * there is no IDT (limit 0): any exception in the guest becomes a triple
//!   fault, i.e. a `KVM_EXIT_SHUTDOWN`, which [`KvmGuest::access`] reports as
//!   an error;
//! * no in-kernel irqchip/PIT is created, so `hlt` exits to userspace
//!   (`KVM_EXIT_HLT`, the checkpoint) and no port or MMIO address is claimed
//!   by an emulated device: the only in-kernel I/O-bus users are the
//!   ioeventfds and coalesced zones the test registers.  In particular the
//!   LAPIC page at `0xfee0_0000` is plain unbacked MMIO here.
//!
//! Long mode with shadow paging works on the `kvm_pvm` host this was written
//! on (AMD EPYC, no VMX/EPT, `kvm.mmio_caching=N`), so no
//! real-mode/unreal-mode fallback is needed. Every MMIO access there is
//! decoded by KVM's instruction emulator, so the exit (or the in-kernel bus
//! access) has exactly the width of the guest instruction. A `KvmGuest::new`
//! takes about 0.6-1 ms, one `access` about 25-70 us.
//!
//! Observed on that host (see `tests/kvm_guest_selftest.rs`): a len-0 MMIO
//! ioeventfd is signalled by writes of every width at exactly its address,
//! reads there always exit (no `FAST_MMIO` shortcut, also on later accesses to
//! the same page); the coalesced ring holds 169 entries; and where a coalesced
//! zone and an ioeventfd overlap, which one takes a write depends on the
//! registration order.
//!
//! MMIO accesses may target any guest-physical address in
//! `RAM_SIZE..4 GiB` (outside the memslot, i.e. unbacked) with width 1, 2, 4
//! or 8 and any alignment as long as the access does not cross a 4 KiB page.
//! Port I/O may use any port with width 1, 2 or 4 (`in`/`out` with the port
//! in `dx`); no port is reserved by the harness.
//!
//! The module also offers [`raw_ioeventfd`] and [`raw_coalesced`], thin
//! wrappers around the raw `KVM_IOEVENTFD` and
//! `KVM_(UN)REGISTER_COALESCED_MMIO` ioctls that accept arbitrary flags,
//! lengths and fds (the `kvm-ioctls` wrappers only build well-formed
//! requests), so that tests can probe the kernel's argument validation.
//!
//! [`KvmGuest::coalesced_pending`] counts the ring's waiting entries without
//! consuming them (for tests that let the ring fill up), and
//! [`KvmGuest::drop_in_background`] destroys a VM on another thread: once any
//! I/O device was registered, VM destruction waits for an SRCU grace period
//! (measured 8-20 ms here), which would dominate a test creating thousands of
//! VMs.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::OnceLock;

use kvm_bindings::{CpuId, KVM_CAP_COALESCED_MMIO, kvm_coalesced_mmio_zone, kvm_ioeventfd, kvm_regs, kvm_segment};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

/// Size of the guest RAM memslot, starting at guest-physical address 0.
/// MMIO accesses must lie above it.
pub const RAM_SIZE: u64 = 0x8000;
/// Exclusive upper bound of the identity-mapped guest-physical range
/// (MMIO accesses must end at or below it).
pub const MAPPED_LIMIT: u64 = 4 << 30;

const GDT_ADDR: u64 = 0x0000;
const PML4_ADDR: u64 = 0x1000;
const PDPT_ADDR: u64 = 0x2000;
const PD_ADDR: u64 = 0x3000; // four page directories: 0x3000..0x7000
const CODE_ADDR: u64 = 0x7000;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// `_IOW(KVMIO, 0x79, struct kvm_ioeventfd)`.
pub const KVM_IOEVENTFD: libc::c_ulong = iow(0x79, size_of::<kvm_ioeventfd>());
/// `_IOW(KVMIO, 0x67, struct kvm_coalesced_mmio_zone)`.
pub const KVM_REGISTER_COALESCED_MMIO: libc::c_ulong = iow(0x67, size_of::<kvm_coalesced_mmio_zone>());
/// `_IOW(KVMIO, 0x68, struct kvm_coalesced_mmio_zone)`.
pub const KVM_UNREGISTER_COALESCED_MMIO: libc::c_ulong = iow(0x68, size_of::<kvm_coalesced_mmio_zone>());

const _: () = assert!(KVM_IOEVENTFD == 0x4040_ae79);
const _: () = assert!(KVM_REGISTER_COALESCED_MMIO == 0x4010_ae67);
const _: () = assert!(KVM_UNREGISTER_COALESCED_MMIO == 0x4010_ae68);

/// Linux `_IOW(0xAE, nr, size)` on x86.
const fn iow(nr: u64, size: usize) -> libc::c_ulong {
    ((1u64 << 30) | ((size as u64) << 16) | (0xAE << 8) | nr) as libc::c_ulong
}

/// One guest access, performed by exactly one guest instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestAccess {
    /// `mov [addr], reg` (write) or `mov reg, [addr]` (read) of `len` bytes
    /// (1, 2, 4 or 8). `value` is the value written (truncated to `len`);
    /// ignored for reads.
    Mmio {
        /// Write (`true`) or read (`false`).
        write: bool,
        /// Guest-physical address, in `RAM_SIZE..MAPPED_LIMIT`, not crossing
        /// a 4 KiB page.
        addr: u64,
        /// Access width in bytes: 1, 2, 4 or 8.
        len: u8,
        /// Value written (little-endian, truncated to `len`).
        value: u64,
    },
    /// `out dx, al/ax/eax` (write) or `in al/ax/eax, dx` (read).
    Pio {
        /// `out` (`true`) or `in` (`false`).
        write: bool,
        /// I/O port.
        port: u16,
        /// Access width in bytes: 1, 2 or 4.
        len: u8,
        /// Value written (little-endian, truncated to `len`); ignored for `in`.
        value: u64,
    },
}

/// What one [`KvmGuest::access`] caused, as seen by userspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest reached the checkpoint without exiting to userspace: the
    /// access was consumed in the kernel (ioeventfd, coalesced zone, ...).
    InKernel,
    /// `KVM_EXIT_MMIO` for a write, with the written little-endian bytes.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// Data bytes as written by the guest.
        data: Vec<u8>,
    },
    /// `KVM_EXIT_MMIO` for a read of `len` bytes.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Access width.
        len: usize,
    },
    /// `KVM_EXIT_IO` for an `out`, with the written little-endian bytes.
    IoOut {
        /// I/O port.
        port: u16,
        /// Data bytes as written by the guest.
        data: Vec<u8>,
    },
    /// `KVM_EXIT_IO` for an `in` of `len` bytes.
    IoIn {
        /// I/O port.
        port: u16,
        /// Access width.
        len: usize,
    },
    /// `KVM_EXIT_IOREGIONFD_FAILURE` (exit reason 38, only on a kernel with the ioregionfd
    /// series): the access's command was sent and its response will not come. Reads are
    /// answered like an MMIO read, through the payload's `data`.
    IoregionFailure {
        /// Guest-physical address or port.
        addr: u64,
        /// Access width.
        len: usize,
        /// Whether the access is a write.
        write: bool,
        /// Whether it is port I/O.
        pio: bool,
        /// A write's data bytes (`len` of them); empty for a read.
        data: Vec<u8>,
    },
}

/// `KVM_EXIT_IOREGIONFD_FAILURE` of the ioregionfd series (kernel/patches).
pub const KVM_EXIT_IOREGIONFD_FAILURE: u32 = 38;

/// When set, an `access` whose `KVM_RUN` returns `EINTR` fails ("interrupted") instead of
/// running the vCPU again: a watchdog sets it and signals the thread to end an access that
/// never completes.
pub static ABORT_ON_EINTR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One entry of the coalesced MMIO/PIO ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoalescedEntry {
    /// Guest-physical address or port.
    pub addr: u64,
    /// Whether the entry comes from a port I/O zone.
    pub pio: bool,
    /// The written bytes (`len` of them).
    pub data: Vec<u8>,
}

/// Anonymous private mapping used as guest RAM; unmapped on drop.
struct GuestMem {
    ptr: NonNull<u8>,
    len: usize,
}

impl GuestMem {
    fn new(len: usize) -> Result<GuestMem, String> {
        // SAFETY: anonymous mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap of guest RAM failed: {}", std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap returned NULL")?;
        Ok(GuestMem { ptr, len })
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let off = usize::try_from(gpa).expect("gpa fits usize");
        assert!(off + bytes.len() <= self.len, "guest RAM write out of range");
        // SAFETY: range checked above; the mapping is owned by `self`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), bytes.len());
        };
    }

    fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }
}

// SAFETY: `GuestMem` exclusively owns its anonymous mapping, which any thread
// of the process may access or unmap; there is no thread affinity.
unsafe impl Send for GuestMem {}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping created by `GuestMem::new`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Read-only shared mapping of a vCPU's coalesced MMIO ring page
/// (`struct kvm_coalesced_mmio_ring`: `u32 first, u32 last`, then entries of
/// 24 bytes); unmapped on drop.
struct RingView {
    ptr: NonNull<u8>,
    len: usize,
}

impl RingView {
    fn map(vcpu: &VcpuFd) -> Result<RingView, String> {
        // SAFETY: sysconf has no memory-safety preconditions.
        let len = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let offset = libc::off_t::try_from(kvm_bindings::KVM_COALESCED_MMIO_PAGE_OFFSET as usize * len)
            .map_err(|e| format!("ring offset: {e}"))?;
        // SAFETY: a new read-only shared mapping of the vCPU fd at the ring
        // page offset; no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, vcpu.as_raw_fd(), offset)
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap of the coalesced ring failed: {}", std::io::Error::last_os_error()));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap returned NULL")?;
        Ok(RingView { ptr, len })
    }

    /// `(last - first) mod KVM_COALESCED_MMIO_MAX`.
    fn pending(&self) -> usize {
        let max = ((self.len - 8) / 24) as u32;
        // SAFETY: the page is mapped and at least 8 bytes long; the kernel
        // writes these u32 fields, hence the volatile reads.
        let (first, last) = unsafe {
            let base = self.ptr.as_ptr().cast::<u32>();
            (std::ptr::read_volatile(base), std::ptr::read_volatile(base.add(1)))
        };
        ((last % max + max - first % max) % max) as usize
    }
}

// SAFETY: `RingView` exclusively owns its read-only mapping, which any thread
// of the process may read or unmap; there is no thread affinity.
unsafe impl Send for RingView {}

impl Drop for RingView {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping created by `RingView::map`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A one-vCPU KVM VM in 64-bit long mode that executes single I/O
/// instructions on demand (see the module documentation for the layout).
pub struct KvmGuest {
    // Field order is drop order: vCPU, then VM, then /dev/kvm, then the RAM
    // (so the memslot is gone before its backing memory is unmapped).
    vcpu: VcpuFd,
    vm: VmFd,
    _kvm: Kvm,
    mem: GuestMem,
    has_coalesced_ring: bool,
    /// A second, read-only view of the coalesced ring page, for
    /// [`KvmGuest::coalesced_pending`] (mapped on first use).
    ring_view: Option<RingView>,
    /// Set when an `access` failed after `KVM_RUN` started: the vCPU may then
    /// hold an unanswered exit or a triple-faulted state, so it is not reused.
    poisoned: Option<String>,
    /// The guest's `rax` when its last access reached the checkpoint (a read's value).
    last_rax: u64,
}

/// Prefix of the [`KvmGuest::new`] error when `/dev/kvm` cannot be opened.
pub const NO_KVM: &str = "cannot open /dev/kvm: ";

/// Guests being dropped by [`KvmGuest::drop_in_background`].
static BACKGROUND_DROPS: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> = std::sync::Mutex::new(Vec::new());

/// Most background drops in flight before [`KvmGuest::drop_in_background`]
/// waits for the older half.
const MAX_BACKGROUND_DROPS: usize = 64;

/// Waits until every [`KvmGuest::drop_in_background`] so far has finished.
pub fn join_background_drops() {
    let handles = std::mem::take(&mut *BACKGROUND_DROPS.lock().unwrap_or_else(|p| p.into_inner()));
    for h in handles {
        h.join().expect("background drop of a KvmGuest panicked");
    }
}

/// Creates a [`KvmGuest`], or prints `skip: /dev/kvm not available: <reason>`
/// and returns `None` when `/dev/kvm` cannot be opened. Panics if `/dev/kvm`
/// opens but the VM cannot be set up (that is a real failure).
pub fn guest_or_skip() -> Option<KvmGuest> {
    match KvmGuest::new() {
        Ok(g) => Some(g),
        Err(e) => match e.strip_prefix(NO_KVM) {
            Some(reason) => {
                println!("skip: /dev/kvm not available: {reason}");
                None
            }
            None => panic!("KVM guest setup failed: {e}"),
        },
    }
}

impl KvmGuest {
    /// Opens `/dev/kvm` and builds the VM (memslot, page tables, GDT, CPUID,
    /// long-mode sregs). Returns `Err` with a clear reason when `/dev/kvm`
    /// cannot be opened (message starts with [`NO_KVM`]) or any setup step
    /// fails.
    pub fn new() -> Result<KvmGuest, String> {
        // `mem` is declared first so that, on an early return, it is dropped
        // after the VM that uses it.
        let mut mem = GuestMem::new(RAM_SIZE as usize)?;
        let kvm = Kvm::new().map_err(|e| format!("{NO_KVM}{e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;

        // Flat GDT: null, code64 (0x08), data (0x10), 64-bit TSS (0x18, 16 bytes).
        mem.write_u64(GDT_ADDR, 0);
        mem.write_u64(GDT_ADDR + 0x08, 0x00af_9b00_0000_ffff);
        mem.write_u64(GDT_ADDR + 0x10, 0x00cf_9300_0000_ffff);
        mem.write_u64(GDT_ADDR + 0x18, 0x0000_8b00_0000_0067);
        mem.write_u64(GDT_ADDR + 0x20, 0);

        // Identity map 0..4 GiB with 2 MiB pages.
        mem.write_u64(PML4_ADDR, PDPT_ADDR | PTE_PRESENT | PTE_WRITE);
        let mut pd_entries = vec![0u8; 4 * 4096];
        for (i, chunk) in pd_entries.chunks_exact_mut(8).enumerate() {
            let e = ((i as u64) << 21) | PTE_PRESENT | PTE_WRITE | PTE_PS;
            chunk.copy_from_slice(&e.to_le_bytes());
        }
        for i in 0..4u64 {
            mem.write_u64(PDPT_ADDR + 8 * i, (PD_ADDR + 0x1000 * i) | PTE_PRESENT | PTE_WRITE);
        }
        mem.write(PD_ADDR, &pd_entries);
        // Start with a bare `hlt` in the code page.
        mem.write(CODE_ADDR, &[0xf4]);

        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM_SIZE,
            userspace_addr: mem.ptr.as_ptr() as u64,
        };
        // SAFETY: the region is backed by `mem`, which outlives the VM
        // (dropped after it, see the field order of `KvmGuest`).
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("KVM_SET_USER_MEMORY_REGION failed: {e}"))?;

        let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("KVM_CREATE_VCPU failed: {e}"))?;
        // KVM_GET_SUPPORTED_CPUID costs ~0.4 ms, more than creating the VM;
        // its answer cannot change while the module is loaded, so cache it.
        static SUPPORTED_CPUID: OnceLock<Result<CpuId, String>> = OnceLock::new();
        let cpuid = SUPPORTED_CPUID
            .get_or_init(|| {
                kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                    .map_err(|e| format!("KVM_GET_SUPPORTED_CPUID failed: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        vcpu.set_cpuid2(cpuid).map_err(|e| format!("KVM_SET_CPUID2 failed: {e}"))?;

        let mut sregs = vcpu.get_sregs().map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x08,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment { selector: 0x10, type_: 0x3, db: 1, l: 0, ..code };
        let tss = kvm_segment {
            base: 0,
            limit: 0x67,
            selector: 0x18,
            type_: 0xb,
            present: 1,
            s: 0,
            g: 0,
            ..Default::default()
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = tss;
        sregs.gdt.base = GDT_ADDR;
        sregs.gdt.limit = 0x27;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        sregs.cr3 = PML4_ADDR;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.efer = EFER_LME | EFER_LMA;
        vcpu.set_sregs(&sregs).map_err(|e| format!("KVM_SET_SREGS (long mode) failed: {e}"))?;

        let has_coalesced_ring =
            kvm.check_extension_raw(KVM_CAP_COALESCED_MMIO.into()) > 0 && vcpu.map_coalesced_mmio_ring().is_ok();

        Ok(KvmGuest { vcpu, vm, _kvm: kvm, mem, has_coalesced_ring, ring_view: None, poisoned: None, last_rax: 0 })
    }

    /// The VM fd: register ioeventfds / coalesced zones on it.
    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// The vCPU fd.
    pub fn vcpu(&self) -> &VcpuFd {
        &self.vcpu
    }

    /// The vCPU fd, mutably (needed by `VcpuFd::coalesced_mmio_read`; the
    /// coalesced ring is already mapped by [`KvmGuest::new`] when
    /// `KVM_CAP_COALESCED_MMIO` is available).
    pub fn vcpu_mut(&mut self) -> &mut VcpuFd {
        &mut self.vcpu
    }

    /// Pops every pending entry of the (per-VM) coalesced MMIO/PIO ring, oldest
    /// first. `Err` if the ring could not be mapped.
    pub fn drain_coalesced(&mut self) -> Result<Vec<CoalescedEntry>, String> {
        if !self.has_coalesced_ring {
            return Err("coalesced MMIO ring not available".into());
        }
        let mut out = Vec::new();
        while let Some(e) = self.vcpu.coalesced_mmio_read().map_err(|e| format!("coalesced_mmio_read: {e}"))? {
            let len = (e.len as usize).min(e.data.len());
            // SAFETY: both union members are plain u32.
            let pio = unsafe { e.__bindgen_anon_1.pio } != 0;
            out.push(CoalescedEntry { addr: e.phys_addr, pio, data: e.data[..len].to_vec() });
        }
        Ok(out)
    }

    /// Number of entries waiting in the coalesced ring, without consuming
    /// any (reads the ring's `first`/`last` indices through a read-only
    /// mapping of the same page). `Err` if the ring is not available.
    pub fn coalesced_pending(&mut self) -> Result<usize, String> {
        if !self.has_coalesced_ring {
            return Err("coalesced MMIO ring not available".into());
        }
        if self.ring_view.is_none() {
            self.ring_view = Some(RingView::map(&self.vcpu)?);
        }
        let view = self.ring_view.as_ref().expect("mapped above");
        Ok(view.pending())
    }

    /// Destroys the VM on another thread. Destroying a VM that ever had an
    /// in-kernel I/O device registered waits for the VM's SRCU callbacks
    /// (the old bus arrays freed with `call_srcu`), which takes a grace period
    /// (~8-20 ms on the kvm_pvm host, against ~0.4 ms otherwise); tests that
    /// create thousands of VMs overlap those waits this way. At most
    /// `MAX_BACKGROUND_DROPS` are in flight; [`join_background_drops`] waits
    /// for all of them.
    pub fn drop_in_background(self) {
        let h = std::thread::Builder::new()
            .name("kvm-guest-drop".into())
            .spawn(move || drop(self))
            .expect("spawn a thread to drop a KvmGuest");
        let older = {
            let mut all = BACKGROUND_DROPS.lock().unwrap_or_else(|p| p.into_inner());
            all.push(h);
            if all.len() >= MAX_BACKGROUND_DROPS { all.drain(..MAX_BACKGROUND_DROPS / 2).collect() } else { Vec::new() }
        };
        for h in older {
            h.join().expect("background drop of a KvmGuest panicked");
        }
    }

    /// Performs exactly one guest instruction doing `access`, then runs to the
    /// checkpoint (`hlt`). Returns the single userspace exit it caused
    /// (answering a read exit with the low `len` bytes of `read_value`), or
    /// [`Exit::InKernel`] if the guest reached `hlt` without exiting.
    ///
    /// `Err` on invalid arguments, on more than one exit, on any unexpected
    /// exit (shutdown, internal error, failed entry, ...), if RIP after `hlt`
    /// is not where expected, or if an answered read did not deliver
    /// `read_value` into the guest register. Except for invalid arguments,
    /// an `Err` poisons the guest: every later `access` fails too (create a
    /// new `KvmGuest`).
    pub fn access(&mut self, access: GuestAccess, read_value: u64) -> Result<Exit, String> {
        let (code, write, len) = encode(access, read_value)?;
        if let Some(why) = &self.poisoned {
            return Err(format!("guest unusable after an earlier error: {why}"));
        }
        let r = self.run_access(access, read_value, &code, write, len);
        if let Err(e) = &r {
            self.poisoned = Some(e.clone());
        }
        r
    }

    fn run_access(
        &mut self,
        access: GuestAccess,
        read_value: u64,
        code: &[u8],
        write: bool,
        len: u8,
    ) -> Result<Exit, String> {
        self.mem.write(CODE_ADDR, code);
        let end_rip = CODE_ADDR + code.len() as u64;

        let regs = kvm_regs { rip: CODE_ADDR, rflags: 0x2, ..Default::default() };
        self.vcpu.set_regs(&regs).map_err(|e| format!("KVM_SET_REGS failed: {e}"))?;

        let mut exit: Option<Exit> = None;
        let mut answered_read = false;
        loop {
            let res = self.vcpu.run();
            let this = match res {
                Ok(VcpuExit::Hlt) => break,
                Ok(VcpuExit::MmioWrite(addr, data)) => Exit::MmioWrite { addr, data: data.to_vec() },
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    let n = data.len().min(8);
                    data[..n].copy_from_slice(&read_value.to_le_bytes()[..n]);
                    answered_read = true;
                    Exit::MmioRead { addr, len: data.len() }
                }
                Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut { port, data: data.to_vec() },
                Ok(VcpuExit::IoIn(port, data)) => {
                    let n = data.len().min(8);
                    data[..n].copy_from_slice(&read_value.to_le_bytes()[..n]);
                    answered_read = true;
                    Exit::IoIn { port, len: data.len() }
                }
                Err(e) if e.errno() == libc::EINTR && ABORT_ON_EINTR.load(std::sync::atomic::Ordering::SeqCst) => {
                    return Err(format!("interrupted: {access:x?} did not complete"));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Ok(VcpuExit::Unsupported(KVM_EXIT_IOREGIONFD_FAILURE)) => {
                    let run = self.vcpu.get_kvm_run();
                    // SAFETY: the failure payload has the layout of the `mmio` member
                    // (addr, data[8], len, is_write, then a pio byte), which is plain data.
                    let m = unsafe { &mut run.__bindgen_anon_1.mmio };
                    let len = (m.len as usize).min(8);
                    let write = m.is_write != 0;
                    // The byte after is_write is `pio`.
                    // SAFETY: `is_write` is followed by padding that the payload uses as `pio`.
                    let pio = unsafe { *std::ptr::addr_of!(m.is_write).add(1) } != 0;
                    let data = if write { m.data[..len].to_vec() } else { Vec::new() };
                    if !write {
                        m.data[..len].copy_from_slice(&read_value.to_le_bytes()[..len]);
                        answered_read = true;
                    }
                    Exit::IoregionFailure { addr: m.phys_addr, len, write, pio, data }
                }
                Err(e) => {
                    return Err(format!("KVM_RUN failed for {access:x?}: {e} (rip {})", self.rip_string()));
                }
                Ok(other) => {
                    let what = format!("{other:?}");
                    let detail = self.run_detail();
                    return Err(format!(
                        "unexpected exit {what} for {access:x?}: {detail} (rip {})",
                        self.rip_string()
                    ));
                }
            };
            if let Some(first) = &exit {
                return Err(format!(
                    "more than one exit for {access:x?}: first {first:x?}, then {this:x?} (rip {})",
                    self.rip_string()
                ));
            }
            exit = Some(this);
        }

        let regs = self.vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
        if regs.rip != end_rip {
            return Err(format!(
                "hlt reached at unexpected rip {:#x} (expected {end_rip:#x}) for {access:x?}",
                regs.rip
            ));
        }
        self.last_rax = regs.rax;
        if !write && answered_read {
            let mask = if len == 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
            if regs.rax & mask != read_value & mask {
                return Err(format!(
                    "read of {access:x?} answered with {read_value:#x} but guest rax = {:#x}",
                    regs.rax
                ));
            }
        }
        Ok(exit.unwrap_or(Exit::InKernel))
    }

    /// The value the guest's last read got (`rax`, masked to `len` bytes).
    pub fn read_value(&self, len: usize) -> u64 {
        if len >= 8 { self.last_rax } else { self.last_rax & ((1u64 << (8 * len)) - 1) }
    }

    /// Whether the kernel has the ioregionfd series (`KVM_CAP_IOREGIONFD`, 224).
    pub fn has_ioregionfd(&self) -> bool {
        // SAFETY: KVM_CHECK_EXTENSION on the VM fd takes an integer argument.
        unsafe { libc::ioctl(self.vm.as_raw_fd(), 0xae03, 224) > 0 }
    }

    fn rip_string(&self) -> String {
        match self.vcpu.get_regs() {
            Ok(r) => format!("{:#x}", r.rip),
            Err(e) => format!("unknown: {e}"),
        }
    }

    fn run_detail(&mut self) -> String {
        let run = self.vcpu.get_kvm_run();
        let reason = run.exit_reason;
        match reason {
            kvm_bindings::KVM_EXIT_INTERNAL_ERROR => {
                // SAFETY: exit_reason says the `internal` union member is valid.
                let ie = unsafe { run.__bindgen_anon_1.internal };
                let n = (ie.ndata as usize).min(ie.data.len());
                format!("exit_reason {reason} (internal error suberror {}, data {:x?})", ie.suberror, &ie.data[..n])
            }
            kvm_bindings::KVM_EXIT_FAIL_ENTRY => {
                // SAFETY: exit_reason says the `fail_entry` union member is valid.
                let fe = unsafe { run.__bindgen_anon_1.fail_entry };
                format!("exit_reason {reason} (fail entry reason {:#x})", fe.hardware_entry_failure_reason)
            }
            _ => format!("exit_reason {reason}"),
        }
    }
}

/// Hand-assembles the instruction sequence for `access`; returns the code,
/// whether it is a write, and the width.
fn encode(access: GuestAccess, read_value: u64) -> Result<(Vec<u8>, bool, u8), String> {
    let mut c = Vec::with_capacity(32);
    match access {
        GuestAccess::Mmio { write, addr, len, value } => {
            if ![1, 2, 4, 8].contains(&len) {
                return Err(format!("MMIO length {len} is not 1, 2, 4 or 8"));
            }
            let end = addr.checked_add(u64::from(len)).ok_or("MMIO address overflows")?;
            if addr < RAM_SIZE || end > MAPPED_LIMIT {
                return Err(format!("MMIO address {addr:#x}+{len} outside {RAM_SIZE:#x}..{MAPPED_LIMIT:#x}"));
            }
            if addr >> 12 != (end - 1) >> 12 {
                return Err(format!("MMIO access {addr:#x}+{len} crosses a 4 KiB page"));
            }
            // mov rdi, imm64
            c.extend_from_slice(&[0x48, 0xbf]);
            c.extend_from_slice(&addr.to_le_bytes());
            // mov rax, imm64 (for reads: a value that differs from read_value
            // in every bit, so an undelivered read is detected)
            c.extend_from_slice(&[0x48, 0xb8]);
            c.extend_from_slice(&(if write { value } else { !read_value }).to_le_bytes());
            let op: &[u8] = match (write, len) {
                (true, 1) => &[0x88, 0x07],        // mov [rdi], al
                (true, 2) => &[0x66, 0x89, 0x07],  // mov [rdi], ax
                (true, 4) => &[0x89, 0x07],        // mov [rdi], eax
                (true, _) => &[0x48, 0x89, 0x07],  // mov [rdi], rax
                (false, 1) => &[0x8a, 0x07],       // mov al, [rdi]
                (false, 2) => &[0x66, 0x8b, 0x07], // mov ax, [rdi]
                (false, 4) => &[0x8b, 0x07],       // mov eax, [rdi]
                (false, _) => &[0x48, 0x8b, 0x07], // mov rax, [rdi]
            };
            c.extend_from_slice(op);
            c.push(0xf4); // hlt
            Ok((c, write, len))
        }
        GuestAccess::Pio { write, port, len, value } => {
            if ![1, 2, 4].contains(&len) {
                return Err(format!("PIO length {len} is not 1, 2 or 4"));
            }
            // mov dx, imm16
            c.extend_from_slice(&[0x66, 0xba]);
            c.extend_from_slice(&port.to_le_bytes());
            c.extend_from_slice(&[0x48, 0xb8]);
            c.extend_from_slice(&(if write { value } else { !read_value }).to_le_bytes());
            let op: &[u8] = match (write, len) {
                (true, 1) => &[0xee],        // out dx, al
                (true, 2) => &[0x66, 0xef],  // out dx, ax
                (true, _) => &[0xef],        // out dx, eax
                (false, 1) => &[0xec],       // in al, dx
                (false, 2) => &[0x66, 0xed], // in ax, dx
                (false, _) => &[0xed],       // in eax, dx
            };
            c.extend_from_slice(op);
            c.push(0xf4); // hlt
            Ok((c, write, len))
        }
    }
}

/// Raw `KVM_IOEVENTFD` with arbitrary fields (`flags` bits: 0 datamatch,
/// 1 pio, 2 deassign, 3 virtio-ccw notify, 4 fast MMIO). Returns the errno on
/// failure.
pub fn raw_ioeventfd(vm: &VmFd, datamatch: u64, addr: u64, len: u32, fd: i32, flags: u32) -> Result<(), i32> {
    let req = kvm_ioeventfd { datamatch, addr, len, fd, flags, ..Default::default() };
    // SAFETY: the kernel reads exactly `size_of::<kvm_ioeventfd>()` bytes
    // from `req`, which lives across the call.
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_IOEVENTFD as _, &req) };
    if r == 0 { Ok(()) } else { Err(last_errno()) }
}

/// Raw `KVM_REGISTER_COALESCED_MMIO` / `KVM_UNREGISTER_COALESCED_MMIO`
/// (`unregister`) with an arbitrary `pio` field. Returns the errno on failure.
pub fn raw_coalesced(vm: &VmFd, addr: u64, size: u32, pio: u32, unregister: bool) -> Result<(), i32> {
    let mut zone = kvm_coalesced_mmio_zone { addr, size, ..Default::default() };
    zone.__bindgen_anon_1.pio = pio;
    let nr = if unregister { KVM_UNREGISTER_COALESCED_MMIO } else { KVM_REGISTER_COALESCED_MMIO };
    // SAFETY: the kernel reads exactly 16 bytes from `zone`, which lives
    // across the call.
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), nr as _, &zone) };
    if r == 0 { Ok(()) } else { Err(last_errno()) }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
