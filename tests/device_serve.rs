// SPDX-License-Identifier: MIT OR Apache-2.0
//! The device library on real fds: `serve` over every transport and both wire formats, short
//! reads, EINTR, `O_NONBLOCK` fds, end of file (a clean stop at a message boundary, an error
//! inside a command), malformed commands, and posted writes that are never answered.

#![cfg(target_os = "linux")]

use ioregionfd_model::device::{
    KernelSide, MemoryDevice, ServeError, ServeSummary, Transport, TransportKind, connect, serve,
};
use ioregionfd_model::wire::{Command, Direction, MESSAGE_SIZE, WireFormat};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(20);

fn read(format: WireFormat, user_data: u64, offset: u64, size_exponent: u8) -> Command {
    let resp = format == WireFormat::V3;
    Command { direction: Direction::Read, size_exponent, resp, user_data, offset, data: 0 }
}

fn write(user_data: u64, offset: u64, size_exponent: u8, data: u64, posted: bool) -> Command {
    Command { direction: Direction::Write, size_exponent, resp: !posted, user_data, offset, data }
}

fn spawn_server(transport: Transport) -> JoinHandle<Result<ServeSummary, ServeError>> {
    std::thread::spawn(move || serve(&transport, &mut MemoryDevice::default()))
}

fn call(kernel: &KernelSide, cmd: &Command) -> u64 {
    kernel.send(cmd).unwrap();
    kernel.recv_response(WAIT).unwrap_or_else(|e| panic!("{cmd}: {e}")).data
}

#[test]
fn serves_every_transport_and_format() {
    for kind in TransportKind::ALL {
        for format in [WireFormat::Seed, WireFormat::V3] {
            let (kernel, transport) = connect(kind, format).unwrap();
            assert_eq!(transport.format(), format);
            let server = spawn_server(transport);
            for e in 0..4u8 {
                let size = 1usize << e;
                let mask = if size == 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 };
                let value = 0x8877_6655_4433_2211 & mask;
                assert_eq!(call(&kernel, &read(format, 1, 8 * u64::from(e), e)), 0, "{kind} {format}");
                assert_eq!(call(&kernel, &write(1, 8 * u64::from(e), e, value, false)), 0);
                assert_eq!(call(&kernel, &read(format, 1, 8 * u64::from(e), e)), value, "{kind} {format} size {size}");
                kernel.send(&write(2, 8 * u64::from(e), e, !value & mask, true)).unwrap();
                assert_eq!(kernel.pending(QUIET).unwrap(), None, "{kind} {format}: a posted write was answered");
                assert_eq!(call(&kernel, &read(format, 2, 8 * u64::from(e), e)), !value & mask);
            }
            drop(kernel);
            let summary = server.join().unwrap().unwrap_or_else(|e| panic!("{kind} {format}: {e}"));
            let expect = ServeSummary { commands: 20, reads: 12, writes: 8, posted_writes: 4, responses: 16 };
            assert_eq!(summary, expect, "{kind} {format}");
        }
    }
}

#[test]
fn reassembles_commands_that_arrive_in_pieces() {
    for kind in [TransportKind::Stream, TransportKind::Pipe, TransportKind::Fifo] {
        let (kernel, transport) = connect(kind, WireFormat::V3).unwrap();
        let server = spawn_server(transport);
        let w = write(9, 0x10, 3, 0x0102_0304_0506_0708, false).encode(WireFormat::V3);
        let r = read(WireFormat::V3, 9, 0x10, 3).encode(WireFormat::V3);
        // Pieces that cut both commands at odd places, with pauses so that each is its own read.
        let mut both = w.to_vec();
        both.extend_from_slice(&r);
        for piece in [&both[..5], &both[5..25], &both[25..33], &both[33..63], &both[63..]] {
            kernel.send_bytes(piece).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0, "{kind}: the write's response");
        assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0x0102_0304_0506_0708, "{kind}: the read's response");
        drop(kernel);
        assert_eq!(server.join().unwrap().unwrap().commands, 2);
    }
}

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn restarts_reads_interrupted_by_signals() {
    // A handler installed without SA_RESTART: a blocked read(2) returns EINTR.
    // SAFETY: an all-zero sigaction is valid; the handler only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as *const () as libc::sighandler_t;
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
    for kind in TransportKind::ALL {
        let (kernel, transport) = connect(kind, WireFormat::Seed).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tx.send(unsafe { libc::pthread_self() }).unwrap();
            serve(&transport, &mut MemoryDevice::default())
        });
        let thread = rx.recv().unwrap();
        let before = SIGNALS.load(Ordering::SeqCst);
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(10));
            // SAFETY: the thread is alive (it is blocked in serve until the kernel side closes).
            assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR1) }, 0);
        }
        std::thread::sleep(Duration::from_millis(10));
        assert!(SIGNALS.load(Ordering::SeqCst) >= before + 5, "{kind}: the signals were not delivered");
        assert_eq!(call(&kernel, &write(1, 0, 2, 0xabcd, false)), 0);
        assert_eq!(call(&kernel, &read(WireFormat::Seed, 1, 0, 2)), 0xabcd, "{kind}");
        drop(kernel);
        assert_eq!(server.join().unwrap().unwrap().commands, 2, "{kind}");
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) {
    // SAFETY: F_GETFL/F_SETFL on an open fd.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        assert!(flags >= 0);
        assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK), 0);
    }
}

#[test]
fn waits_on_nonblocking_fds_instead_of_failing() {
    for kind in TransportKind::ALL {
        let (kernel, transport) = connect(kind, WireFormat::V3).unwrap();
        set_nonblocking(transport.cmd_fd());
        set_nonblocking(transport.resp_fd());
        let server = spawn_server(transport);
        std::thread::sleep(Duration::from_millis(20)); // serve meets EAGAIN first
        assert_eq!(call(&kernel, &write(3, 0, 0, 0x7f, false)), 0);
        assert_eq!(call(&kernel, &read(WireFormat::V3, 3, 0, 0)), 0x7f, "{kind}");
        drop(kernel);
        assert_eq!(server.join().unwrap().unwrap().commands, 2, "{kind}");
    }
}

#[test]
fn waits_when_the_response_pipe_is_full() {
    let (kernel, transport) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    // Shrink the response pipe to one page and fill it, so that the response must wait.
    let resp = transport.resp_fd().as_raw_fd();
    // SAFETY: F_SETPIPE_SZ on the write end of a pipe this test owns.
    let size = unsafe { libc::fcntl(resp, libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    let filler = vec![0u8; size as usize];
    // SAFETY: writes `filler.len()` bytes from a live buffer.
    assert_eq!(unsafe { libc::write(resp, filler.as_ptr().cast(), filler.len()) }, size as isize);
    set_nonblocking(transport.resp_fd());
    let server = spawn_server(transport);
    kernel.send(&read(WireFormat::V3, 0, 0, 0)).unwrap();
    std::thread::sleep(Duration::from_millis(30)); // serve meets EAGAIN on the full pipe
    let mut drained = vec![0u8; size as usize];
    let mut got = 0;
    while got < drained.len() {
        // SAFETY: reads into the live tail of `drained`.
        let n = unsafe {
            libc::read(kernel.resp_fd().as_raw_fd(), drained[got..].as_mut_ptr().cast(), drained.len() - got)
        };
        assert!(n > 0);
        got += n as usize;
    }
    assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0);
    drop(kernel);
    assert_eq!(server.join().unwrap().unwrap().responses, 1);
}

#[test]
fn end_of_file_is_a_clean_stop_at_a_boundary_and_an_error_inside_a_command() {
    for kind in TransportKind::ALL {
        let (kernel, transport) = connect(kind, WireFormat::V3).unwrap();
        drop(kernel);
        assert_eq!(serve(&transport, &mut MemoryDevice::default()).unwrap(), ServeSummary::default(), "{kind}");

        let (kernel, transport) = connect(kind, WireFormat::V3).unwrap();
        kernel.send(&write(1, 0, 0, 1, true)).unwrap();
        kernel.send_bytes(&[1, 0, 0]).unwrap();
        drop(kernel);
        let err = serve(&transport, &mut MemoryDevice::default()).unwrap_err();
        let text = err.to_string();
        match kind {
            TransportKind::Seqpacket => {
                assert!(matches!(err, ServeError::MessageSize { got: 3 }), "{kind}: {text}");
                assert!(text.contains("SOCK_SEQPACKET message of 3 bytes"), "{text}");
            }
            _ => {
                assert!(matches!(err, ServeError::Truncated { got: 3 }), "{kind}: {text}");
                assert_eq!(text, "end of file after 3 of the 32 bytes of a command");
            }
        }
    }
}

#[test]
fn malformed_commands_stop_with_a_clear_error() {
    let (kernel, transport) = connect(TransportKind::Seqpacket, WireFormat::V3).unwrap();
    let mut image = read(WireFormat::V3, 1, 0, 0).encode(WireFormat::V3);
    image[1] |= 0x20; // a reserved bit
    kernel.send_bytes(&image).unwrap();
    let err = serve(&transport, &mut MemoryDevice::default()).unwrap_err();
    assert!(matches!(err, ServeError::Malformed { .. }), "{err}");
    assert!(err.to_string().starts_with("malformed command (reserved bits set in byte 1)"), "{err}");

    let (kernel, transport) = connect(TransportKind::Stream, WireFormat::Seed).unwrap();
    kernel.send_bytes(&[0xff; MESSAGE_SIZE]).unwrap();
    let err = serve(&transport, &mut MemoryDevice::default()).unwrap_err();
    assert!(err.to_string().contains("malformed command"), "{err}");
}

#[test]
fn never_answers_posted_writes() {
    for kind in TransportKind::ALL {
        let (kernel, transport) = connect(kind, WireFormat::Seed).unwrap();
        let server = spawn_server(transport);
        for i in 0..200u64 {
            kernel.send(&write(5, 8 * (i % 16), 3, i, true)).unwrap();
        }
        assert_eq!(kernel.pending(QUIET).unwrap(), None, "{kind}");
        assert_eq!(call(&kernel, &read(WireFormat::Seed, 5, 8 * (199 % 16), 3)), 199, "{kind}");
        assert_eq!(kernel.pending(QUIET).unwrap(), None, "{kind}");
        drop(kernel);
        let s = server.join().unwrap().unwrap();
        assert_eq!((s.posted_writes, s.responses), (200, 1), "{kind}");
    }
}

#[test]
fn a_vanished_kernel_side_is_an_error_not_a_signal() {
    for kind in TransportKind::ALL {
        let (kernel, transport) = connect(kind, WireFormat::V3).unwrap();
        kernel.send(&read(WireFormat::V3, 1, 0, 0)).unwrap();
        drop(kernel);
        let err = serve(&transport, &mut MemoryDevice::default()).unwrap_err();
        match &err {
            ServeError::Io { op, source } => {
                assert_eq!(*op, "write a response", "{kind}");
                assert_eq!(source.raw_os_error(), Some(libc::EPIPE), "{kind}: {err}");
            }
            other => panic!("{kind}: {other}"),
        }
    }
}

#[test]
fn from_env_names_the_missing_variable() {
    if std::env::var_os("IOREGIONFD_CMD_FD").is_some() {
        println!("skip: IOREGIONFD_CMD_FD is set in this environment");
        return;
    }
    let err = Transport::from_env().unwrap_err();
    assert!(err.to_string().starts_with("IOREGIONFD_CMD_FD is not set"), "{err}");
}
