// SPDX-License-Identifier: MIT OR Apache-2.0
//! Round trips of one 32-byte command and one 32-byte response between a "vCPU" thread (the
//! caller) and a device thread, over each transport.
//!
//! The device thread decodes the command (v3 format), applies it to a
//! [`MemoryDevice`](ioregionfd_model::device::MemoryDevice) and encodes the response, the same
//! work on every transport, so that the differences are the transports' own. Every wait blocks
//! in the kernel (no spinning): the futex ping-pong is the floor for "wake the other thread and
//! sleep until it wakes you".

use super::{Pinning, pin_current_thread};
use ioregionfd_model::device::{IoregionDevice, KernelSide, MemoryDevice, TransportKind, connect};
use ioregionfd_model::wire::{Command, Direction, MESSAGE_SIZE, Response, WireFormat};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The transports measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Two pipes.
    Pipe,
    /// `socketpair(AF_UNIX, SOCK_STREAM)`.
    Stream,
    /// `socketpair(AF_UNIX, SOCK_SEQPACKET)`.
    Seqpacket,
    /// Two FIFOs.
    Fifo,
    /// Two eventfds as doorbells and a shared-memory slot for the 32-byte messages: the nearest
    /// userspace stand-in for a custom in-kernel fd (one counter write and one read per
    /// direction, no socket or pipe buffer).
    EventfdShm,
    /// A futex ping-pong on a shared slot (FUTEX_WAIT/FUTEX_WAKE): the floor.
    Futex,
}

impl Kind {
    pub const ALL: [Kind; 6] = [Kind::Pipe, Kind::Stream, Kind::Seqpacket, Kind::Fifo, Kind::EventfdShm, Kind::Futex];

    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pipe => "pipe pair",
            Kind::Stream => "socketpair SOCK_STREAM",
            Kind::Seqpacket => "socketpair SOCK_SEQPACKET",
            Kind::Fifo => "FIFO pair",
            Kind::EventfdShm => "eventfd pair + shared slot",
            Kind::Futex => "futex ping-pong (floor)",
        }
    }

    /// Name in benchmark ids.
    pub fn id(self) -> &'static str {
        match self {
            Kind::Pipe => "pipe",
            Kind::Stream => "stream",
            Kind::Seqpacket => "seqpacket",
            Kind::Fifo => "fifo",
            Kind::EventfdShm => "eventfd-shm",
            Kind::Futex => "futex",
        }
    }

    fn transport(self) -> Option<TransportKind> {
        match self {
            Kind::Pipe => Some(TransportKind::Pipe),
            Kind::Stream => Some(TransportKind::Stream),
            Kind::Seqpacket => Some(TransportKind::Seqpacket),
            Kind::Fifo => Some(TransportKind::Fifo),
            Kind::EventfdShm | Kind::Futex => None,
        }
    }
}

/// user_data of the command that stops a device thread (no response).
const STOP: u64 = u64::MAX;

/// A 4-byte read command of region 1 at `offset`.
pub fn read_command(offset: u64) -> [u8; MESSAGE_SIZE] {
    let cmd = Command { direction: Direction::Read, size_exponent: 2, resp: true, user_data: 1, offset, data: 0 };
    cmd.encode(WireFormat::V3)
}

fn stop_command() -> [u8; MESSAGE_SIZE] {
    let cmd = Command { direction: Direction::Read, size_exponent: 0, resp: true, user_data: STOP, offset: 0, data: 0 };
    cmd.encode(WireFormat::V3)
}

/// What the device thread does with one command: `None` to stop (or for a posted write).
fn answer(device: &mut MemoryDevice, image: &[u8; MESSAGE_SIZE]) -> Result<Option<[u8; MESSAGE_SIZE]>, ()> {
    let cmd = Command::decode(WireFormat::V3, image).map_err(|_| ())?;
    if cmd.user_data == STOP {
        return Err(());
    }
    let value = match cmd.direction {
        Direction::Read => device.read(cmd.user_data, cmd.offset, cmd.size()),
        Direction::Write => {
            device.write(cmd.user_data, cmd.offset, cmd.size(), cmd.data);
            0
        }
    };
    Ok(cmd.wants_response().then(|| Response { data: value }.encode()))
}

fn write_full(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
        let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[r as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` on end of file.
fn read_full(fd: RawFd, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the tail of `buf` is valid for writes of its length.
        let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(false);
        }
        got += r as usize;
    }
    Ok(true)
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes plain ints and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ring(fd: RawFd) -> io::Result<()> {
    write_full(fd, &1u64.to_ne_bytes())
}

fn wait_bell(fd: RawFd) -> io::Result<()> {
    let mut b = [0u8; 8];
    read_full(fd, &mut b).map(|_| ())
}

/// The shared slot of the eventfd and futex transports.
#[derive(Default)]
struct Slot {
    /// Futex word: odd while a command waits for its response.
    seq: AtomicU32,
    cmd: [AtomicU64; 4],
    resp: [AtomicU64; 4],
}

fn store(words: &[AtomicU64; 4], image: &[u8; MESSAGE_SIZE]) {
    for (w, chunk) in words.iter().zip(image.chunks_exact(8)) {
        w.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
    }
}

fn load(words: &[AtomicU64; 4]) -> [u8; MESSAGE_SIZE] {
    let mut image = [0u8; MESSAGE_SIZE];
    for (w, chunk) in words.iter().zip(image.chunks_exact_mut(8)) {
        chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    image
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: `word` is a live, aligned u32 for the whole call; FUTEX_WAIT only sleeps while it
    // still holds `expected` (no timeout: a null timespec).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above; FUTEX_WAKE wakes at most one waiter on the word.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG, 1) };
}

enum VcpuSide {
    Fd(KernelSide),
    Eventfd { slot: Arc<Slot>, to_device: OwnedFd, to_vcpu: OwnedFd },
    Futex { slot: Arc<Slot> },
}

/// A connected vCPU side and its device thread (pinned per the [`Pinning`]).
pub struct Pair {
    vcpu: VcpuSide,
    device: Option<JoinHandle<()>>,
}

impl Pair {
    /// Connects over `kind` and starts the device thread on `cpus[pinning.cpus().1]`.
    pub fn new(kind: Kind, pinning: Pinning, cpus: &[usize]) -> io::Result<Pair> {
        let cpus = cpus.to_vec();
        let device_cpu = pinning.cpus().1;
        let pin = move || {
            let _ = pin_current_thread(&cpus, Some(device_cpu));
        };
        let mut memory = MemoryDevice::default();
        let (vcpu, device) = match kind.transport() {
            Some(t) => {
                let (kernel, transport) = connect(t, WireFormat::V3)?;
                let h = std::thread::spawn(move || {
                    pin();
                    let (cmd, resp) = (transport.cmd_fd().as_raw_fd(), transport.resp_fd().as_raw_fd());
                    let mut image = [0u8; MESSAGE_SIZE];
                    while let Ok(true) = read_full(cmd, &mut image) {
                        match answer(&mut memory, &image) {
                            Ok(Some(r)) => {
                                if write_full(resp, &r).is_err() {
                                    break;
                                }
                            }
                            Ok(None) => {}
                            Err(()) => break,
                        }
                    }
                });
                (VcpuSide::Fd(kernel), h)
            }
            None if kind == Kind::EventfdShm => {
                let slot = Arc::new(Slot::default());
                let (to_device, to_vcpu) = (eventfd()?, eventfd()?);
                let (s, td, tv) = (slot.clone(), to_device.as_raw_fd(), to_vcpu.as_raw_fd());
                let h = std::thread::spawn(move || {
                    pin();
                    while wait_bell(td).is_ok() {
                        std::sync::atomic::fence(Ordering::Acquire);
                        match answer(&mut memory, &load(&s.cmd)) {
                            Ok(Some(r)) => {
                                store(&s.resp, &r);
                                std::sync::atomic::fence(Ordering::Release);
                                if ring(tv).is_err() {
                                    break;
                                }
                            }
                            Ok(None) => {}
                            Err(()) => break,
                        }
                    }
                });
                (VcpuSide::Eventfd { slot, to_device, to_vcpu }, h)
            }
            None => {
                let slot = Arc::new(Slot::default());
                let s = slot.clone();
                let h = std::thread::spawn(move || {
                    pin();
                    let mut seen = 0u32;
                    loop {
                        loop {
                            let v = s.seq.load(Ordering::Acquire);
                            if v != seen {
                                break;
                            }
                            futex_wait(&s.seq, seen);
                        }
                        match answer(&mut memory, &load(&s.cmd)) {
                            Ok(r) => {
                                if let Some(r) = r {
                                    store(&s.resp, &r);
                                }
                                seen = s.seq.fetch_add(1, Ordering::Release).wrapping_add(1);
                                futex_wake(&s.seq);
                            }
                            Err(()) => break,
                        }
                    }
                });
                (VcpuSide::Futex { slot }, h)
            }
        };
        Ok(Pair { vcpu, device: Some(device) })
    }

    /// Sends `cmd` and waits for its response.
    pub fn round_trip(&mut self, cmd: &[u8; MESSAGE_SIZE]) -> [u8; MESSAGE_SIZE] {
        let mut resp = [0u8; MESSAGE_SIZE];
        match &self.vcpu {
            VcpuSide::Fd(k) => {
                write_full(k.cmd_fd().as_raw_fd(), cmd).expect("write a command");
                let ok = read_full(k.resp_fd().as_raw_fd(), &mut resp).expect("read a response");
                assert!(ok, "the device thread closed its end");
            }
            VcpuSide::Eventfd { slot, to_device, to_vcpu } => {
                store(&slot.cmd, cmd);
                std::sync::atomic::fence(Ordering::Release);
                ring(to_device.as_raw_fd()).expect("ring the device");
                wait_bell(to_vcpu.as_raw_fd()).expect("wait for the device");
                std::sync::atomic::fence(Ordering::Acquire);
                resp = load(&slot.resp);
            }
            VcpuSide::Futex { slot } => {
                store(&slot.cmd, cmd);
                let mine = slot.seq.fetch_add(1, Ordering::Release).wrapping_add(1);
                futex_wake(&slot.seq);
                while slot.seq.load(Ordering::Acquire) == mine {
                    futex_wait(&slot.seq, mine);
                }
                resp = load(&slot.resp);
            }
        }
        resp
    }

    /// `n` round trips; returns the time they took.
    pub fn run(&mut self, n: u64) -> Duration {
        let cmd = read_command(8);
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(self.round_trip(std::hint::black_box(&cmd)));
        }
        start.elapsed()
    }

    fn stop(&mut self) {
        let stop = stop_command();
        match &self.vcpu {
            VcpuSide::Fd(k) => {
                let _ = write_full(k.cmd_fd().as_raw_fd(), &stop);
            }
            VcpuSide::Eventfd { slot, to_device, .. } => {
                store(&slot.cmd, &stop);
                std::sync::atomic::fence(Ordering::Release);
                let _ = ring(to_device.as_raw_fd());
            }
            VcpuSide::Futex { slot } => {
                store(&slot.cmd, &stop);
                slot.seq.fetch_add(1, Ordering::Release);
                futex_wake(&slot.seq);
            }
        }
        if let Some(h) = self.device.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Per-round-trip times (ns) of each kind: `rounds` batches of `per_round` round trips after
/// `warmup` ones, measured on a vCPU thread of its own pinned per `pinning`. The kinds are
/// interleaved batch by batch (every pair connected at once, the idle device threads blocked),
/// so that a drift of the machine during the run affects each the same way.
pub fn measure(
    kinds: &[Kind],
    pinning: Pinning,
    cpus: &[usize],
    warmup: u64,
    rounds: usize,
    per_round: u64,
) -> io::Result<Vec<(Kind, Vec<f64>)>> {
    let cpus = cpus.to_vec();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = pin_current_thread(&cpus, Some(pinning.cpus().0));
            let mut pairs = Vec::new();
            for &kind in kinds {
                let mut pair = Pair::new(kind, pinning, &cpus)?;
                pair.run(warmup);
                pairs.push((kind, pair, Vec::with_capacity(rounds)));
            }
            for _ in 0..rounds {
                for (_, pair, samples) in pairs.iter_mut() {
                    samples.push(pair.run(per_round).as_nanos() as f64 / per_round as f64);
                }
            }
            Ok(pairs.into_iter().map(|(k, _, s)| (k, s)).collect())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the vCPU thread panicked")))
    })
}
