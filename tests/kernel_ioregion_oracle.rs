// SPDX-License-Identifier: MIT OR Apache-2.0
//! Model vs kernel differential for ioregionfd: generated `script` sequences run on the model
//! (`design proposed`) and on a kernel with the ioregionfd series (`kernel/patches/`), line for
//! line.
//!
//! It runs where `/dev/kvm` has `KVM_CAP_IOREGIONFD`, which is the QEMU guest that `kernel/run`
//! boots (it builds this test statically and runs it there); anywhere else it prints one
//! `skip:` line and passes, having checked nothing.
//!
//! ```text
//! kernel_ioregion_oracle [N]            N generated sequences (default 2000; seeds 0..N)
//! kernel_ioregion_oracle FIRST-LAST     the sequences of seeds FIRST..=LAST
//! kernel_ioregion_oracle --seed S       the sequence of seed S only, printed as it runs
//! kernel_ioregion_oracle --script FILE  FILE on the kernel, one result line per operation
//! ```
//!
//! A sequence is built step by step from a seeded generator, so a seed replays it exactly. Each
//! step becomes script lines (`vm`, `socketpair`, `pipe`, `fifo`, `serve`, `ioregion`,
//! `eventfd`, `ioeventfd`, `coalesced`, `read`, `write`, `close`); every line runs on the model
//! first and then on the kernel, and the two result lines must be equal. Every transport KVM is
//! given is served by a device that speaks the v3 wire format and remembers what was written
//! (the model's `serve`: reads return the last value written at that user_data and offset, else
//! 0), so no access waits for ever. Registrations aim at a few addresses so that they collide,
//! with sizes from 0 (doorbells) to beyond `INT_MAX`, sometimes bad or swapped fds, sometimes
//! non-blocking transports; accesses of every width go to registered regions, ioeventfds and
//! coalesced zones of up to three VMs sharing transports.
//!
//! On the kernel, a `vm` is a fresh one-vCPU VM (tests/common/kvm_guest.rs: no in-kernel
//! irqchip, so its buses hold only what the sequence registers), fds are renumbered to the
//! model's numbers (lowest free from 3), a served transport gets a device thread, and an access
//! that completes without an exit prints what the model prints for the device that took it: the
//! coalesced ring's new entry, the eventfd whose counter went up, or the command the device
//! thread received (`ioregion USER_DATA read|write OFFSET LEN VALUE`). An access still running
//! after 5 s prints `blocked` and ends the sequence (a blocked vCPU cannot be reused).
//!
//! A mismatch prints the whole sequence as a script, each line with the model's result, and the
//! differing line with both results; the run ends with the counts and fails.

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::kvm_guest::{
    ABORT_ON_EINTR, Exit, GuestAccess, KvmGuest, join_background_drops, raw_coalesced, raw_ioeventfd,
};
use ioregionfd_model::bus::BusKind;
use ioregionfd_model::design::Design;
use ioregionfd_model::errno::Errno;
use ioregionfd_model::script::{Op, Runner, TransportKind, parse_line};
use ioregionfd_model::uapi::{KVM_IOREGION_DEASSIGN, KVM_IOREGION_PIO, KVM_IOREGION_POSTED_WRITES, KvmIoregionV3};

/// `_IOW(KVMIO, 0xd2, struct kvm_ioregion)` of the series.
const KVM_SET_IOREGION: libc::c_ulong = (1 << 30) | (64 << 16) | (0xae << 8) | 0xd2;
/// Where MMIO registrations go (above the guest's RAM, identity mapped).
const MMIO_BASE: u64 = 0x1000_0000;
/// Where PIO registrations go.
const PIO_BASE: u64 = 0x60;
/// The value the kernel side answers a read that exits with.
const READ_ANSWER: u64 = 0;
/// How long an access may take before it counts as blocked.
const BLOCKED_AFTER: Duration = Duration::from_secs(5);
/// How long to wait for a posted command to reach its device.
const POSTED_WAIT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// A small deterministic generator (splitmix64): a seed replays its sequence.

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel side: script operations on real fds and real VMs.

/// One command a device thread received.
#[derive(Clone, Copy, Debug)]
struct Received {
    user_data: u64,
    is_write: bool,
    offset: u64,
    len: usize,
    data: u64,
}

/// Every command the sequence's device threads received, in order.
#[derive(Default)]
struct Log {
    cmds: Mutex<Vec<Received>>,
    grew: Condvar,
}

struct Device {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

fn low_bytes(v: u64, len: usize) -> u64 {
    if len >= 8 { v } else { v & ((1u64 << (8 * len)) - 1) }
}

/// Moves all of `buf` through `fd` (a read, or a write), polling `stop` every 50 ms so that a
/// device stops even when its peer never reads or writes again. False at end of file, on an
/// error, or on stop.
fn transfer(fd: RawFd, buf: &mut [u8], write: bool, stop: &AtomicBool) -> bool {
    let mut done = 0;
    let events = if write { libc::POLLOUT } else { libc::POLLIN };
    while done < buf.len() {
        let mut p = libc::pollfd { fd, events, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 50) };
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        if n <= 0 {
            continue;
        }
        let rest = &mut buf[done..];
        // SAFETY: reads into, or writes from, the rest of `buf`.
        let r = unsafe {
            if write {
                libc::write(fd, rest.as_ptr().cast(), rest.len())
            } else {
                libc::read(fd, rest.as_mut_ptr().cast(), rest.len())
            }
        };
        if r <= 0 {
            return false;
        }
        done += r as usize;
    }
    true
}

/// The model's `serve`: a memory device on `cmd`/`resp` (its own copies of the files).
fn serve(cmd: OwnedFd, resp: OwnedFd, log: Arc<Log>) -> Device {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut cells: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        let mut m = [0u8; 32];
        while transfer(cmd.as_raw_fd(), &mut m, false, &s) {
            let word = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().expect("8 bytes"));
            let (user_data, offset, data) = (word(8), word(16), word(24));
            let len = 1usize << (m[1] & 0xf);
            let is_write = m[0] == 1;
            let value = if is_write {
                cells.insert((user_data, offset), low_bytes(data, len));
                low_bytes(data, len)
            } else {
                low_bytes(cells.get(&(user_data, offset)).copied().unwrap_or(0), len)
            };
            {
                let mut cmds = log.cmds.lock().expect("log");
                cmds.push(Received { user_data, is_write, offset, len, data: value });
                log.grew.notify_all();
            }
            if m[1] & 0x10 != 0 {
                let mut r = [0u8; 32];
                r[..8].copy_from_slice(&value.to_le_bytes());
                if !transfer(resp.as_raw_fd(), &mut r, true, &s) {
                    break;
                }
            }
        }
    });
    Device { stop, thread }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn err_line(code: i32) -> String {
    match Errno::from_code(code) {
        Some(e) => format!("err {e}"),
        None => format!("err errno {code}"),
    }
}

fn dup(fd: RawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd we own, or -1 (checked).
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    assert!(n >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `n` is a new fd owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(n) }
}

fn owned(fd: RawFd) -> OwnedFd {
    assert!(fd >= 0, "fd: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// An fd number no process of ours has open (`fget` fails).
const NEVER_OPEN: RawFd = 1 << 20;

/// The kernel under test, driven by script operations.
struct Kernel {
    vms: Vec<KvmGuest>,
    /// Model fd number -> the real file.
    fds: BTreeMap<i32, OwnedFd>,
    /// Every eventfd the sequence made: the number it was given (the model's label for it) and
    /// a copy that outlives `close`, since an ioeventfd keeps signalling it.
    eventfds: Vec<(i32, OwnedFd)>,
    devices: Vec<Device>,
    log: Arc<Log>,
    fifo_seq: u32,
    /// Set when an access blocked: the sequence ends there.
    blocked: bool,
}

impl Kernel {
    fn new() -> Kernel {
        Kernel {
            vms: Vec::new(),
            fds: BTreeMap::new(),
            eventfds: Vec::new(),
            devices: Vec::new(),
            log: Arc::default(),
            fifo_seq: 0,
            blocked: false,
        }
    }

    fn add_fd(&mut self, f: OwnedFd) -> i32 {
        let n = (3..).find(|n| !self.fds.contains_key(n)).expect("a free number");
        self.fds.insert(n, f);
        n
    }

    fn real(&self, fd: i32) -> RawFd {
        if fd < 0 {
            return fd;
        }
        self.fds.get(&fd).map_or(NEVER_OPEN, |f| f.as_raw_fd())
    }

    fn transport(&mut self, kind: TransportKind, nonblock: bool, buf: Option<usize>) -> String {
        let mut pair = [0 as RawFd; 2];
        match kind {
            TransportKind::Stream | TransportKind::Seqpacket => {
                let ty = if kind == TransportKind::Stream { libc::SOCK_STREAM } else { libc::SOCK_SEQPACKET };
                let flags = libc::SOCK_CLOEXEC | if nonblock { libc::SOCK_NONBLOCK } else { 0 };
                // SAFETY: writes two fds into `pair`.
                let r = unsafe { libc::socketpair(libc::AF_UNIX, ty | flags, 0, pair.as_mut_ptr()) };
                assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
                if let Some(b) = buf {
                    for fd in pair {
                        let v = b as libc::c_int;
                        // SAFETY: sets an int socket option from a live local.
                        unsafe {
                            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (&v as *const i32).cast(), 4);
                        }
                    }
                }
            }
            TransportKind::Pipe => {
                let flags = libc::O_CLOEXEC | if nonblock { libc::O_NONBLOCK } else { 0 };
                // SAFETY: writes two fds into `pair`.
                let r = unsafe { libc::pipe2(pair.as_mut_ptr(), flags) };
                assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
            }
            TransportKind::Fifo => {
                self.fifo_seq += 1;
                let path = format!("/tmp/kernel-ioregion-oracle-{}-{}\0", std::process::id(), self.fifo_seq);
                // SAFETY: NUL-terminated path; the FIFO is unlinked once both ends are open.
                unsafe {
                    assert_eq!(libc::mkfifo(path.as_ptr().cast(), 0o600), 0, "mkfifo");
                    pair[0] = libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC);
                    pair[1] = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
                    libc::unlink(path.as_ptr().cast());
                    if !nonblock {
                        libc::fcntl(pair[0], libc::F_SETFL, 0);
                    } else {
                        libc::fcntl(pair[1], libc::F_SETFL, libc::O_NONBLOCK);
                    }
                }
            }
        }
        let a = self.add_fd(owned(pair[0]));
        let b = self.add_fd(owned(pair[1]));
        format!("fd {a} {b}")
    }

    fn apply(&mut self, op: &Op) -> String {
        match *op {
            Op::Vm { .. } => match KvmGuest::new() {
                Ok(g) => {
                    self.vms.push(g);
                    format!("vm {}", self.vms.len() - 1)
                }
                Err(e) => format!("kernel: cannot create a VM: {e}"),
            },
            Op::Transport { kind, nonblock, buf } => self.transport(kind, nonblock, buf),
            Op::Serve { fd, resp } => {
                let (c, r) = (self.real(fd), self.real(resp.unwrap_or(fd)));
                if c == NEVER_OPEN || r == NEVER_OPEN || c < 0 || r < 0 {
                    return "err EBADF".into();
                }
                let d = serve(dup(c), dup(r), self.log.clone());
                self.devices.push(d);
                "ok".into()
            }
            Op::Eventfd => {
                // Blocking, as the model's (KVM_SET_IOREGION refuses O_NONBLOCK files); its
                // counter is read only after poll says it is not zero.
                // SAFETY: plain syscall; the result is checked by `owned`.
                let fd = owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) });
                let copy = dup(fd.as_raw_fd());
                let n = self.add_fd(fd);
                self.eventfds.push((n, copy));
                format!("eventfd {n}")
            }
            Op::Close { fd } => match self.fds.remove(&fd) {
                Some(f) => {
                    drop(f);
                    "ok".into()
                }
                None => "err EBADF".into(),
            },
            Op::IoregionV3 { vm, args } => {
                let Some(g) = self.vms.get(vm) else { return "err EBADF".into() };
                let mut raw = [0u8; 64];
                raw[0..8].copy_from_slice(&args.guest_paddr.to_le_bytes());
                raw[8..16].copy_from_slice(&args.memory_size.to_le_bytes());
                raw[16..24].copy_from_slice(&args.user_data.to_le_bytes());
                raw[24..28].copy_from_slice(&self.real(args.read_fd).to_le_bytes());
                raw[28..32].copy_from_slice(&self.real(args.write_fd).to_le_bytes());
                raw[32..36].copy_from_slice(&args.flags.to_le_bytes());
                // SAFETY: the kernel reads 64 bytes from `raw`, which lives across the call.
                let r = unsafe { libc::ioctl(g.vm().as_raw_fd(), KVM_SET_IOREGION as _, raw.as_ptr()) };
                if r == 0 { "ok".into() } else { err_line(errno()) }
            }
            Op::Ioeventfd { vm, bus, addr, len, fd, datamatch, deassign, extra_flags } => {
                let Some(g) = self.vms.get(vm) else { return "err EBADF".into() };
                let a = Op::ioeventfd_args(bus, addr, len, fd, datamatch, deassign, extra_flags);
                match raw_ioeventfd(g.vm(), a.datamatch, a.addr, a.len, self.real(a.fd), a.flags) {
                    Ok(()) => "ok".into(),
                    Err(e) => err_line(e),
                }
            }
            Op::Coalesced { vm, bus, addr, size, pio, unregister } => {
                let Some(g) = self.vms.get(vm) else { return "err EBADF".into() };
                let pio = pio.unwrap_or((bus == BusKind::Pio) as u32);
                match raw_coalesced(g.vm(), addr, size, pio, unregister) {
                    Ok(()) => "ok".into(),
                    Err(e) => err_line(e),
                }
            }
            Op::Read { vm, bus, addr, len } => self.access(vm, bus, addr, len, None),
            Op::Write { vm, bus, addr, len, value } => self.access(vm, bus, addr, len, Some(value)),
            ref other => format!("kernel: not supported here: {other}"),
        }
    }

    fn access(&mut self, vm: usize, bus: BusKind, addr: u64, len: usize, value: Option<u64>) -> String {
        if vm >= self.vms.len() {
            return "err EBADF".into();
        }
        let write = value.is_some();
        let v = value.unwrap_or(0);
        let access = match bus {
            BusKind::Pio => GuestAccess::Pio { write, port: addr as u16, len: len as u8, value: v },
            _ => GuestAccess::Mmio { write, addr, len: len as u8, value: v },
        };
        let seen = self.log.cmds.lock().expect("log").len();
        let exit = {
            let _watchdog = Watchdog::arm(BLOCKED_AFTER);
            self.vms[vm].access(access, READ_ANSWER)
        };
        let exit = match exit {
            Ok(e) => e,
            Err(e) if e.starts_with("interrupted") => {
                self.blocked = true;
                return "blocked".into();
            }
            Err(e) => return format!("kernel: {e}"),
        };
        let bytes = |d: &[u8]| {
            let mut b = [0u8; 8];
            b[..d.len().min(8)].copy_from_slice(&d[..d.len().min(8)]);
            u64::from_le_bytes(b)
        };
        match exit {
            Exit::MmioWrite { addr, data } => format!("exit mmio {addr:#x} {} {:#x}", data.len(), bytes(&data)),
            Exit::MmioRead { addr, len } => format!("exit mmio {addr:#x} {len}"),
            Exit::IoOut { port, data } => format!("exit pio {port:#x} {} {:#x}", data.len(), bytes(&data)),
            Exit::IoIn { port, len } => format!("exit pio {port:#x} {len}"),
            Exit::IoregionFailure { addr, len, write: true, data, .. } => {
                format!("exit ioregion-failure {addr:#x} {len} {:#x}", bytes(&data))
            }
            Exit::IoregionFailure { addr, len, .. } => format!("exit ioregion-failure {addr:#x} {len}"),
            Exit::InKernel => self.taken_by(vm, len, write, v, seen),
        }
    }

    /// Which in-kernel device took an access that did not exit.
    fn taken_by(&mut self, vm: usize, len: usize, write: bool, value: u64, seen: usize) -> String {
        if write {
            match self.vms[vm].drain_coalesced() {
                Ok(entries) if !entries.is_empty() => return "coalesced".into(),
                _ => {}
            }
            for (n, copy) in &self.eventfds {
                let fd = copy.as_raw_fd();
                let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd, no wait.
                if unsafe { libc::poll(&mut p, 1, 0) } != 1 {
                    continue;
                }
                let mut c = 0u64;
                // SAFETY: reads 8 bytes into `c`; the counter is not zero, so it does not block.
                let r = unsafe { libc::read(fd, (&mut c as *mut u64).cast(), 8) };
                if r == 8 && c > 0 {
                    return format!("eventfd {n}");
                }
            }
        }
        let deadline = Instant::now() + POSTED_WAIT;
        let mut cmds = self.log.cmds.lock().expect("log");
        while cmds.len() == seen {
            let now = Instant::now();
            if now >= deadline {
                return "kernel: in-kernel, but no device saw the access".into();
            }
            cmds = self.log.grew.wait_timeout(cmds, deadline - now).expect("log").0;
        }
        let c = cmds[seen];
        if cmds.len() > seen + 1 {
            return format!("kernel: {} commands for one access", cmds.len() - seen);
        }
        let shown = if write { low_bytes(value, len) } else { self.vms[vm].read_value(len) };
        if c.len != len {
            return format!("kernel: a {len}-byte access sent a command of size {}", c.len);
        }
        if !write && shown != c.data {
            return format!("kernel: the guest read {shown:#x}, the device answered {:#x}", c.data);
        }
        let dir = if c.is_write { "write" } else { "read" };
        format!("ioregion {:#x} {dir} {:#x} {len} {shown:#x}", c.user_data, c.offset)
    }

    /// Ends the sequence: VMs first (their file references), then our fds, then the devices.
    fn finish(mut self) {
        for g in self.vms.drain(..) {
            g.drop_in_background();
        }
        join_background_drops();
        self.fds.clear();
        for d in self.devices.drain(..) {
            d.stop.store(true, Ordering::SeqCst);
            let _ = d.thread.join();
        }
    }
}

/// Interrupts the calling thread's `KVM_RUN` if it lasts longer than `after`.
struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

impl Watchdog {
    fn arm(after: Duration) -> Watchdog {
        // SAFETY: installs a no-op handler without SA_RESTART so that KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as *const () as usize;
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
        }
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let d = done.clone();
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*d;
            let guard = lock.lock().expect("watchdog");
            let (guard, timeout) = cv.wait_timeout_while(guard, after, |done| !*done).expect("watchdog");
            let finished = *guard;
            drop(guard);
            if timeout.timed_out() && !finished {
                ABORT_ON_EINTR.store(true, Ordering::SeqCst);
                let mut tries = 0;
                while !*lock.lock().expect("watchdog") {
                    // SAFETY: signals a live thread of this process (it waits for us in Drop).
                    unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
                    std::thread::sleep(Duration::from_millis(20));
                    tries += 1;
                    if tries == 500 {
                        println!("kernel: an access is stuck in KVM_RUN and signals do not end it (10 s)");
                        std::process::exit(3);
                    }
                }
            }
        });
        Watchdog { done, thread: Some(thread) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.done.0.lock().expect("watchdog") = true;
        self.done.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        ABORT_ON_EINTR.store(false, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Sequences.

/// A transport KVM was given: the fds a region uses, and whether a device serves it.
#[derive(Clone, Copy)]
struct Channel {
    rfd: i32,
    wfd: i32,
}

/// A registration the sequence made, to aim accesses and removals at.
#[derive(Clone, Copy)]
struct Target {
    vm: usize,
    bus: BusKind,
    addr: u64,
    size: u64,
}

/// What the generator knows of the system so far (from the model's result lines).
#[derive(Default)]
struct State {
    vms: usize,
    channels: Vec<Channel>,
    targets: Vec<Target>,
    eventfds: Vec<i32>,
    /// Every fd the model gave out and not closed.
    open: Vec<i32>,
}

fn fds_of(result: &str) -> Vec<i32> {
    result.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect()
}

/// The next step of the sequence, made from the state: one line, or a transport with its device
/// (whose lines need the numbers the transport's line gives out).
enum Step {
    Line(Op),
    /// A transport, then `serve` of its device end (unless non-blocking).
    Transport {
        kind: TransportKind,
        nonblock: bool,
    },
}

fn bus_base(bus: BusKind) -> u64 {
    if bus == BusKind::Pio { PIO_BASE } else { MMIO_BASE }
}

fn next_step(g: &mut Gen, s: &State) -> Step {
    if s.vms == 0 || (s.vms < 3 && g.chance(4)) {
        return Step::Line(Op::Vm {
            backend: Default::default(),
            nr_iobus_devs: Some(ioregionfd_model::bus::NR_IOBUS_DEVS),
            insertion: Default::default(),
        });
    }
    if s.channels.is_empty() || g.chance(8) {
        let kind = g.pick(&[TransportKind::Seqpacket, TransportKind::Stream, TransportKind::Pipe, TransportKind::Fifo]);
        return Step::Transport { kind, nonblock: g.chance(8) };
    }
    let vm = g.below(s.vms as u64) as usize;
    let bus = if g.chance(30) { BusKind::Pio } else { BusKind::Mmio };
    let roll = g.below(100);
    if roll < 25 {
        // A registration, aimed at a few addresses so that they collide.
        let slot = g.below(6) * 8 + g.pick(&[0, 0, 0, 1, 2, 4]);
        let size = g.pick(&[0u64, 1, 2, 4, 4, 8, 8, 8, 0x10, 0x10, 0x20]);
        let size = if g.chance(3) { g.pick(&[0x8000_0000u64, 0x1_0000_0008, 0x7fff_ffff]) } else { size };
        let c = s.channels[g.below(s.channels.len() as u64) as usize];
        let (mut rfd, mut wfd) = (c.rfd, c.wfd);
        if g.chance(4) {
            std::mem::swap(&mut rfd, &mut wfd);
        }
        // Bad numbers; never another channel's fds (a device end would race the device thread
        // for the messages, and two channels crossed are a wiring error of the VMM's, which the
        // model reports as a `route` violation).
        if g.chance(2) {
            rfd = g.pick(&[-1, 999]);
        }
        if g.chance(2) {
            wfd = g.pick(&[-1, 999]);
        }
        let posted = size == 0 || g.chance(25);
        let mut flags = if bus == BusKind::Pio { KVM_IOREGION_PIO } else { 0 };
        if posted && !g.chance(5) {
            flags |= KVM_IOREGION_POSTED_WRITES;
        }
        if g.chance(2) {
            flags |= 1 << g.below(32);
        }
        let addr = if g.chance(2) { u64::MAX - g.below(8) } else { bus_base(bus) + slot };
        let args = KvmIoregionV3 {
            guest_paddr: addr,
            memory_size: size,
            user_data: 1 + g.below(4),
            read_fd: if size == 0 && g.chance(50) { -1 } else { rfd },
            write_fd: wfd,
            flags,
            pad: [0; 28],
        };
        return Step::Line(Op::IoregionV3 { vm, args });
    }
    if roll < 32 && !s.targets.is_empty() {
        // Removal of a registered region (sometimes with a wrong size).
        let t = s.targets[g.below(s.targets.len() as u64) as usize];
        let size = if g.chance(10) { t.size + 1 } else { t.size };
        let flags = KVM_IOREGION_DEASSIGN | if t.bus == BusKind::Pio { KVM_IOREGION_PIO } else { 0 };
        let args = KvmIoregionV3 {
            guest_paddr: t.addr,
            memory_size: size,
            user_data: 0,
            read_fd: -1,
            write_fd: -1,
            flags,
            pad: [0; 28],
        };
        return Step::Line(Op::IoregionV3 { vm: t.vm, args });
    }
    if roll < 36 {
        return Step::Line(Op::Eventfd);
    }
    if roll < 42 {
        let fd = if s.eventfds.is_empty() || g.chance(10) { 999 } else { g.pick(&s.eventfds) };
        let len = g.pick(&[0u32, 1, 2, 4, 8]);
        let addr = bus_base(bus) + g.below(6) * 8 + g.pick(&[0, 0, 2, 4, 7]);
        let datamatch = if g.chance(30) { Some(g.below(4)) } else { None };
        return Step::Line(Op::Ioeventfd { vm, bus, addr, len, fd, datamatch, deassign: g.chance(15), extra_flags: 0 });
    }
    if roll < 47 {
        let addr = bus_base(bus) + g.below(6) * 8 + g.pick(&[0, 0, 4]);
        let size = g.pick(&[1u32, 2, 4, 8, 0x10, 0x40]);
        return Step::Line(Op::Coalesced { vm, bus, addr, size, pio: None, unregister: g.chance(25) });
    }
    if roll < 52 && !s.open.is_empty() {
        let fd = if g.chance(10) { 999 } else { s.open[g.below(s.open.len() as u64) as usize] };
        return Step::Line(Op::Close { fd });
    }
    // An access: at a registered region mostly, else in the window.
    let lens: &[usize] = if bus == BusKind::Pio { &[1, 2, 4] } else { &[1, 2, 4, 8] };
    let len = g.pick(lens);
    let (vm, bus, addr) = match s.targets.get(g.below(s.targets.len() as u64 + 1) as usize) {
        Some(t) if g.chance(85) => {
            let span = t.size.clamp(1, 0x40);
            let off = g.below(span);
            let lens: &[usize] = if t.bus == BusKind::Pio { &[1, 2, 4] } else { &[1, 2, 4, 8] };
            (t.vm, t.bus, t.addr.wrapping_add(off & !(g.pick(lens) as u64 - 1)))
        }
        _ => (vm, bus, bus_base(bus) + g.below(0x30)),
    };
    let len = if bus == BusKind::Pio { len.min(4) } else { len };
    // Keep the access inside the identity map and a page (MMIO) or the port space (PIO).
    let addr = match bus {
        BusKind::Pio if addr.checked_add(len as u64).is_none_or(|end| end > 0x1_0000) => PIO_BASE,
        BusKind::Pio => addr,
        _ if !(MMIO_BASE..MMIO_BASE + 0x1000 - 8).contains(&addr) => MMIO_BASE,
        _ => addr,
    };
    if g.chance(50) {
        let value = g.next() & if len == 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
        Step::Line(Op::Write { vm, bus, addr, len, value })
    } else {
        Step::Line(Op::Read { vm, bus, addr, len })
    }
}

/// Records what a line did to the generator's state, from the model's result.
fn note(s: &mut State, op: &Op, result: &str) {
    match op {
        Op::Vm { .. } if result.starts_with("vm ") => s.vms += 1,
        Op::Eventfd => {
            let fds = fds_of(result);
            s.eventfds.extend(&fds);
            s.open.extend(&fds);
        }
        Op::Close { fd } if result == "ok" => {
            s.open.retain(|f| f != fd);
            s.eventfds.retain(|f| f != fd);
            // Its number may be given to something else next: regions are registered only on
            // channels whose fds are all still open.
            s.channels.retain(|c| c.rfd != *fd && c.wfd != *fd);
        }
        Op::IoregionV3 { vm, args } if result == "ok" => {
            let bus = if args.flags & KVM_IOREGION_PIO != 0 { BusKind::Pio } else { BusKind::Mmio };
            if args.flags & KVM_IOREGION_DEASSIGN != 0 {
                if let Some(i) = s.targets.iter().position(|t| {
                    t.vm == *vm && t.bus == bus && t.addr == args.guest_paddr && t.size == args.memory_size
                }) {
                    s.targets.remove(i);
                }
            } else {
                s.targets.push(Target { vm: *vm, bus, addr: args.guest_paddr, size: args.memory_size });
            }
        }
        Op::Ioeventfd { vm, bus, addr, len, deassign: false, .. } if result == "ok" => {
            s.targets.push(Target { vm: *vm, bus: *bus, addr: *addr, size: u64::from(*len) });
        }
        Op::Coalesced { vm, bus, addr, size, unregister: false, .. } if result == "ok" => {
            s.targets.push(Target { vm: *vm, bus: *bus, addr: *addr, size: u64::from(*size) });
        }
        _ => {}
    }
}

/// One line on both sides.
struct Pair {
    line: String,
    model: String,
    kernel: String,
}

#[derive(Default)]
struct Counts {
    sequences: u64,
    lines: u64,
    accesses: u64,
    ioregion_completions: u64,
    exits: u64,
    failure_exits: u64,
    registrations_ok: u64,
    registration_errors: u64,
    blocked: u64,
    mismatches: u64,
}

/// One sequence in progress: both sides and what ran so far.
struct Seq<'a> {
    seed: u64,
    model: Runner,
    kernel: Kernel,
    done: Vec<Pair>,
    counts: &'a mut Counts,
    echo: bool,
}

/// How a line ended: the model's result, or the sequence ends here.
enum Ran {
    Agreed(String),
    Blocked,
}

impl Seq<'_> {
    /// Runs one line on the model, then on the kernel; `Err` with the report if they differ.
    fn line(&mut self, op: Op) -> Result<Ran, String> {
        let text = op.to_string();
        // The line must read back as itself: it is what a replay runs.
        assert_eq!(parse_line(&text).ok().flatten().as_ref(), Some(&op), "{text}");
        let out = self.model.execute(&op).map_err(|e| format!("the model refused `{text}`: {e}"))?;
        let k = self.kernel.apply(&op);
        self.counts.lines += 1;
        tally(self.counts, &op, &k);
        if self.echo {
            println!("{text}  # model: {} | kernel: {k}", out.result);
        }
        let violations = out.violations.join("; ");
        let differ = out.result != k || !violations.is_empty();
        self.done.push(Pair { line: text, model: out.result.clone(), kernel: k.clone() });
        if differ {
            self.counts.mismatches += 1;
            return Err(report(self.seed, &self.done, &violations));
        }
        Ok(if k == "blocked" { Ran::Blocked } else { Ran::Agreed(out.result) })
    }

    /// A transport and, unless it is non-blocking, the device serving it: a socketpair's second
    /// end, or for pipes and FIFOs a second one for the responses.
    fn transport(&mut self, state: &mut State, kind: TransportKind, nonblock: bool) -> Result<Ran, String> {
        let Ran::Agreed(r) = self.line(Op::Transport { kind, nonblock, buf: None })? else { return Ok(Ran::Blocked) };
        let a = fds_of(&r);
        state.open.extend(&a);
        let socket = matches!(kind, TransportKind::Stream | TransportKind::Seqpacket);
        if nonblock {
            state.channels.push(Channel { rfd: a[0], wfd: if socket { a[0] } else { a[1] } });
            return Ok(Ran::Agreed(r));
        }
        if socket {
            state.channels.push(Channel { rfd: a[0], wfd: a[0] });
            return self.line(Op::Serve { fd: a[1], resp: None });
        }
        // Commands: KVM writes a[1], the device reads a[0]; responses: the device writes b[1],
        // KVM reads b[0].
        let Ran::Agreed(r2) = self.line(Op::Transport { kind, nonblock: false, buf: None })? else {
            return Ok(Ran::Blocked);
        };
        let b = fds_of(&r2);
        state.open.extend(&b);
        state.channels.push(Channel { rfd: b[0], wfd: a[1] });
        self.line(Op::Serve { fd: a[0], resp: Some(b[1]) })
    }
}

/// Runs the sequence of `seed` (`steps` steps); `Err` with the report on a mismatch.
fn run_sequence(seed: u64, steps: usize, counts: &mut Counts, echo: bool) -> Result<(), String> {
    let mut g = Gen(seed);
    let mut state = State::default();
    let mut seq =
        Seq { seed, model: Runner::new(Design::Proposed), kernel: Kernel::new(), done: Vec::new(), counts, echo };
    let mut result = Ok(());
    for _ in 0..steps {
        let ran = match next_step(&mut g, &state) {
            Step::Transport { kind, nonblock } => seq.transport(&mut state, kind, nonblock),
            Step::Line(op) => match seq.line(op.clone()) {
                Ok(Ran::Agreed(r)) => {
                    note(&mut state, &op, &r);
                    Ok(Ran::Agreed(r))
                }
                other => other,
            },
        };
        match ran {
            Ok(Ran::Agreed(_)) => {}
            Ok(Ran::Blocked) => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    seq.counts.sequences += 1;
    seq.kernel.finish();
    result
}

fn tally(c: &mut Counts, op: &Op, kernel: &str) {
    match op {
        Op::Read { .. } | Op::Write { .. } => {
            c.accesses += 1;
            if kernel.starts_with("ioregion ") {
                c.ioregion_completions += 1;
            } else if kernel.starts_with("exit ioregion-failure") {
                c.failure_exits += 1;
            } else if kernel.starts_with("exit ") {
                c.exits += 1;
            } else if kernel == "blocked" {
                c.blocked += 1;
            }
        }
        Op::IoregionV3 { .. } => {
            if kernel == "ok" {
                c.registrations_ok += 1;
            } else {
                c.registration_errors += 1;
            }
        }
        _ => {}
    }
}

fn report(seed: u64, done: &[Pair], violations: &str) -> String {
    let mut s = format!("MISMATCH in the sequence of seed {seed}; the script so far (model results):\n");
    for p in &done[..done.len() - 1] {
        s += &format!("{}  # {}\n", p.line, p.model);
    }
    let last = done.last().expect("a line");
    s += &format!("{}\n#   model:  {}\n#   kernel: {}\n", last.line, last.model, last.kernel);
    if !violations.is_empty() {
        s += &format!("#   model violations: {violations}\n");
    }
    s += &format!("(replay: kernel_ioregion_oracle --seed {seed})\n");
    s
}

/// `--script FILE`: the file on the kernel, one result line per operation.
fn run_file(path: &str) -> i32 {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("kernel_ioregion_oracle: {path}: {e}");
            return 2;
        }
    };
    let mut kernel = Kernel::new();
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line.unwrap_or_default();
        match parse_line(&line) {
            Ok(Some(op)) => {
                println!("{}", kernel.apply(&op));
                if kernel.blocked {
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("kernel_ioregion_oracle: {path}:{}: {e}", n + 1);
                return 2;
            }
        }
    }
    kernel.finish();
    0
}

fn usage() -> i32 {
    eprintln!("usage: kernel_ioregion_oracle [N | FIRST-LAST] | --seed S | --script FILE");
    2
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test -- FLAGS` passes libtest's flags (`--nocapture`, `--show-output`, ...) to this
    // binary too: keep only this program's own two options and the plain arguments.
    let args: Vec<&str> =
        args.iter().map(String::as_str).filter(|a| !a.starts_with('-') || *a == "--seed" || *a == "--script").collect();
    match KvmGuest::new() {
        Ok(g) if g.has_ioregionfd() => g.drop_in_background(),
        Ok(_) => {
            println!("skip: this kernel has no KVM_CAP_IOREGIONFD (kernel/run runs this test on one that has)");
            return;
        }
        Err(e) => {
            println!("skip: /dev/kvm not available: {e}");
            return;
        }
    }
    let (mut first, mut n, mut echo) = (0u64, 2000u64, false);
    match args.as_slice() {
        [] => {}
        ["--script", path] => std::process::exit(run_file(path)),
        ["--seed", s] => match s.parse() {
            Ok(s) => (first, n, echo) = (s, 1, true),
            Err(_) => std::process::exit(usage()),
        },
        [count] => match count.split_once('-') {
            // FIRST-LAST: the seeds FIRST..=LAST.
            Some((a, b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) if a <= b => (first, n) = (a, b - a + 1),
                _ => std::process::exit(usage()),
            },
            None => match count.parse() {
                Ok(c) => n = c,
                Err(_) => std::process::exit(usage()),
            },
        },
        _ => std::process::exit(usage()),
    }
    let mut counts = Counts::default();
    let t = Instant::now();
    let mut failures = Vec::new();
    for seed in first..first + n {
        if let Err(r) = run_sequence(seed, 40, &mut counts, echo) {
            println!("{r}");
            failures.push(seed);
            if failures.len() >= 5 {
                println!("(stopping after 5 mismatching sequences)");
                break;
            }
        }
        if (seed - first + 1) % 10 == 0 {
            eprintln!("kernel_ioregion_oracle: {} sequences, {:.0?}", seed - first + 1, t.elapsed());
        }
    }
    println!(
        "kernel ioregion oracle: {} sequences, {} lines, {} accesses ({} completed by an ioregion device, {} exits, \
         {} failure exits, {} blocked), {} registrations ok, {} refused, {} mismatches, {:.1?}",
        counts.sequences,
        counts.lines,
        counts.accesses,
        counts.ioregion_completions,
        counts.exits,
        counts.failure_exits,
        counts.blocked,
        counts.registrations_ok,
        counts.registration_errors,
        counts.mismatches,
        t.elapsed()
    );
    if !failures.is_empty() {
        println!("mismatching seeds: {failures:?}");
        std::process::exit(1);
    }
}
