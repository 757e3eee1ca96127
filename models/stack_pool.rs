//! Keeps loom's coroutine stacks for the next execution instead of returning them to the kernel.
//!
//! loom runs every modelled thread (the row's main thread included) as a coroutine of the
//! `generator` crate, on a stack made for it: `mmap` of an anonymous `MAP_STACK` region, `mprotect`
//! of its lowest page as a guard, and `munmap` when the execution ends. With four threads that is
//! twelve system calls, a few page faults and four TLB flushes per interleaving; measured on the
//! heaviest row, about half of the checker's time was the kernel doing this (docs/performance.md),
//! and with two rows checked at once each `munmap` interrupted the other core as well.
//!
//! This binary therefore defines `mmap`, `munmap` and `mprotect` itself (the linker resolves the
//! `generator` crate's calls to these definitions before the C library's). A call that is not about
//! a coroutine stack goes straight to the kernel, unchanged. A stack, recognised by its flags
//! (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK`, read and write, no address hint, no file), is
//! remembered in a fixed table; when it is unmapped it stays mapped and is handed to the next
//! request of the same length, guard page and all, and the guard's `mprotect` is answered from the
//! table. What the pooled stack does not give is what a fresh mapping would: its pages are not
//! zeroed. The coroutine code neither relies on that nor could it (a stack frame's memory is
//! whatever was there), and nothing else in this binary maps `MAP_STACK` memory (the C library maps
//! its threads' stacks with its own internal calls).
//!
//! Memory held: at most `SLOTS` stacks (loom's default is 32 KiB plus the guard). A full table
//! means the extra stacks are mapped and unmapped as before. `IOREGIONFD_STACK_POOL=0` switches the
//! pool off (to time the difference, as docs/performance.md does).

#![allow(unsafe_code)]

use libc::{c_int, c_long, c_void, off_t, size_t};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

const SLOTS: usize = 256;

/// One remembered stack. `addr` is 0 for an empty slot.
#[derive(Clone, Copy)]
struct Slot {
    addr: usize,
    len: usize,
    in_use: bool,
    /// The length of the `PROT_NONE` guard at `addr` the owner asked for (0: none yet).
    guard_len: usize,
}

const EMPTY: Slot = Slot { addr: 0, len: 0, in_use: false, guard_len: 0 };

/// The table, behind a spin lock: held for a scan of the table, never across a system call,
/// and never by code that could call back into these functions.
struct Table {
    lock: AtomicBool,
    slots: std::cell::UnsafeCell<[Slot; SLOTS]>,
}

// SAFETY: `slots` is only touched between `lock`'s acquire and release (`Table::with`).
unsafe impl Sync for Table {}

static TABLE: Table = Table { lock: AtomicBool::new(false), slots: std::cell::UnsafeCell::new([EMPTY; SLOTS]) };

impl Table {
    fn with<R>(&self, f: impl FnOnce(&mut [Slot; SLOTS]) -> R) -> R {
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference to the slots.
        let r = f(unsafe { &mut *self.slots.get() });
        self.lock.store(false, Ordering::Release);
        r
    }
}

/// 0: not yet read from the environment, 1: on, 2: off.
static STATE: AtomicU8 = AtomicU8::new(0);
static REUSED: AtomicUsize = AtomicUsize::new(0);
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Whether the pool is on. Called from the first stack request, long after `main` started, so
/// reading the environment (which allocates) is safe there.
fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var_os("IOREGIONFD_STACK_POOL").is_none_or(|v| v != "0");
            STATE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// (stacks handed out again, stacks mapped by the kernel) since the process started; the second
/// is 0 when no stack was pooled (pool off, or no loom).
pub fn counts() -> (usize, usize) {
    (REUSED.load(Ordering::Relaxed), MAPPED.load(Ordering::Relaxed))
}

const STACK_FLAGS: c_int = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK;

unsafe fn sys_mmap(addr: *mut c_void, len: size_t, prot: c_int, flags: c_int, fd: c_int, off: off_t) -> *mut c_void {
    // SAFETY: the caller's arguments, passed on unchanged. On failure the kernel's -1 is
    // MAP_FAILED and errno is set, as the C library's mmap does.
    unsafe {
        libc::syscall(libc::SYS_mmap, addr, len, prot as c_long, flags as c_long, fd as c_long, off) as *mut c_void
    }
}

/// # Safety
/// The C library's `mmap` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    let is_stack = addr.is_null() && flags == STACK_FLAGS && prot == libc::PROT_READ | libc::PROT_WRITE && fd == -1;
    if !is_stack || !enabled() {
        // SAFETY: forwarded unchanged.
        return unsafe { sys_mmap(addr, len, prot, flags, fd, off) };
    }
    let kept = TABLE.with(|slots| {
        slots.iter_mut().find(|s| s.addr != 0 && !s.in_use && s.len == len).map(|s| {
            s.in_use = true;
            s.addr
        })
    });
    if let Some(addr) = kept {
        REUSED.fetch_add(1, Ordering::Relaxed);
        return addr as *mut c_void;
    }
    // SAFETY: forwarded unchanged.
    let fresh = unsafe { sys_mmap(addr, len, prot, flags, fd, off) };
    if fresh != libc::MAP_FAILED {
        MAPPED.fetch_add(1, Ordering::Relaxed);
        TABLE.with(|slots| {
            if let Some(s) = slots.iter_mut().find(|s| s.addr == 0) {
                *s = Slot { addr: fresh as usize, len, in_use: true, guard_len: 0 };
            }
        });
    }
    fresh
}

/// # Safety
/// The C library's `munmap` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    let kept = TABLE.with(|slots| {
        slots
            .iter_mut()
            .find(|s| s.addr == addr as usize && s.in_use && s.len == len)
            .map(|s| s.in_use = false)
            .is_some()
    });
    if kept {
        return 0;
    }
    // A partial unmap of a pooled stack (not something the coroutine code does) would leave a
    // stale slot; forget the slot first so it is never handed out.
    TABLE.with(|slots| {
        for s in slots.iter_mut().filter(|s| s.addr != 0) {
            let (start, end) = (addr as usize, addr as usize + len);
            if start < s.addr + s.len && s.addr < end {
                *s = EMPTY;
            }
        }
    });
    // SAFETY: forwarded unchanged.
    unsafe { libc::syscall(libc::SYS_munmap, addr, len) as c_int }
}

/// # Safety
/// The C library's `mprotect` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: size_t, prot: c_int) -> c_int {
    // The guard page of a pooled stack, asked for again by its next owner: already in place.
    let guard = |s: &Slot| s.addr == addr as usize && s.in_use && prot == libc::PROT_NONE && len < s.len;
    let already = TABLE.with(|slots| slots.iter().any(|s| guard(s) && s.guard_len == len));
    if already {
        return 0;
    }
    // SAFETY: forwarded unchanged.
    let r = unsafe { libc::syscall(libc::SYS_mprotect, addr, len, prot as c_long) as c_int };
    TABLE.with(|slots| {
        for s in slots.iter_mut().filter(|s| s.addr != 0) {
            let (start, end) = (addr as usize, addr as usize + len);
            if start < s.addr + s.len && s.addr < end {
                // The guard page this pool knows how to keep; any other change to a pooled
                // stack's protection makes the slot one the pool no longer hands out.
                if r == 0 && guard(s) && s.guard_len == 0 {
                    s.guard_len = len;
                } else if s.in_use {
                    *s = EMPTY;
                }
            }
        }
    });
    r
}
