// SPDX-License-Identifier: MIT OR Apache-2.0
//! The device library inside an event loop: a `NonBlockingServer` on non-blocking fds, driven
//! by mio (edge-triggered epoll), with commands that arrive in pieces (1, 7 and 24 bytes, the
//! loop turning between them), a response that waits for room, a stop request polled beside the
//! device's fds, end of file; and `serve_until`, the blocking loop with a stop fd.

#![cfg(target_os = "linux")]

use ioregionfd_model::device::{
    KernelSide, MemoryDevice, NonBlockingServer, Progress, Received, ServeError, ServeSummary, StopEvent, StopReason,
    Transport, TransportKind, connect, serve_until,
};
use ioregionfd_model::wire::{Command, Direction, MESSAGE_SIZE, WireFormat};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(20);
const CMD: Token = Token(0);
const RESP: Token = Token(1);
const STOP: Token = Token(2);

fn read(format: WireFormat, user_data: u64, offset: u64, size_exponent: u8) -> Command {
    Command { direction: Direction::Read, size_exponent, resp: format == WireFormat::V3, user_data, offset, data: 0 }
}

fn write(user_data: u64, offset: u64, size_exponent: u8, data: u64, posted: bool) -> Command {
    Command { direction: Direction::Write, size_exponent, resp: !posted, user_data, offset, data }
}

/// A device task as a VMM would write it: one mio poll with the device's fds and a stop event.
struct EventLoop {
    poll: Poll,
    events: Events,
    server: NonBlockingServer,
    device: MemoryDevice,
    stop: StopEvent,
}

/// What one turn of the loop saw.
#[derive(Debug, Default)]
struct Turn {
    /// Events delivered.
    events: usize,
    /// What the last `process` returned.
    progress: Option<Progress>,
    /// The stop event fired.
    stopped: bool,
}

impl EventLoop {
    fn new(transport: Transport) -> EventLoop {
        let server = NonBlockingServer::new(transport).unwrap();
        let poll = Poll::new().unwrap();
        let (cmd, resp) = (server.cmd_fd().as_raw_fd(), server.resp_fd().as_raw_fd());
        // Edge-triggered: an event means "something changed"; `process` goes on until the fds
        // would block. One socket is registered once, for both directions.
        if cmd == resp {
            poll.registry().register(&mut SourceFd(&cmd), CMD, Interest::READABLE | Interest::WRITABLE).unwrap();
        } else {
            poll.registry().register(&mut SourceFd(&cmd), CMD, Interest::READABLE).unwrap();
            poll.registry().register(&mut SourceFd(&resp), RESP, Interest::WRITABLE).unwrap();
        }
        let stop = StopEvent::new().unwrap();
        poll.registry().register(&mut SourceFd(&stop.as_fd().as_raw_fd()), STOP, Interest::READABLE).unwrap();
        EventLoop { poll, events: Events::with_capacity(8), server, device: MemoryDevice::default(), stop }
    }

    /// One turn: waits up to `timeout` for events and handles them.
    fn turn(&mut self, timeout: Duration) -> Turn {
        self.poll.poll(&mut self.events, Some(timeout)).unwrap();
        let mut turn = Turn::default();
        for event in &self.events {
            turn.events += 1;
            if event.token() == STOP {
                turn.stopped = true;
            } else {
                turn.progress = Some(self.server.process(&mut self.device).unwrap_or_else(|e| panic!("process: {e}")));
            }
        }
        turn
    }

    /// Turns until a turn delivers an event for the device (a stream socket may report
    /// writability on its own).
    fn turn_for_device(&mut self) -> Progress {
        for _ in 0..10 {
            let t = self.turn(WAIT);
            assert!(t.events > 0, "no event within {WAIT:?}");
            if let Some(p) = t.progress {
                return p;
            }
        }
        panic!("no device event in 10 turns");
    }
}

/// Sends `bytes` in pieces of the given sizes, turning the loop after each; checks that no
/// response comes before the last piece and that the bytes of a partial command are kept.
fn send_in_pieces(kernel: &KernelSide, lp: &mut EventLoop, bytes: &[u8], pieces: &[usize], what: &str) {
    assert_eq!(pieces.iter().sum::<usize>(), bytes.len(), "{what}: pieces");
    let mut at = 0;
    for (i, &n) in pieces.iter().enumerate() {
        let before = lp.server.summary().commands;
        kernel.send_bytes(&bytes[at..at + n]).unwrap();
        at += n;
        assert_eq!(lp.turn_for_device(), Progress::WantRead, "{what}: piece {i} ({n} bytes)");
        assert_eq!(lp.server.partial_len(), at % MESSAGE_SIZE, "{what}: bytes kept after piece {i} ({n} bytes)");
        let whole = (at / MESSAGE_SIZE) as u64 - (at - n) as u64 / MESSAGE_SIZE as u64;
        assert_eq!(lp.server.summary().commands, before + whole, "{what}: commands served after piece {i}");
        if i + 1 < pieces.len() && at % MESSAGE_SIZE != 0 {
            assert_eq!(kernel.pending(QUIET).unwrap(), None, "{what}: a response before the command was whole");
        }
    }
}

#[test]
fn serves_commands_that_arrive_in_pieces_with_the_loop_turning_between() {
    for kind in [TransportKind::Stream, TransportKind::Pipe, TransportKind::Fifo] {
        for format in [WireFormat::Seed, WireFormat::V3] {
            let what = format!("{kind} {format}");
            let (kernel, transport) = connect(kind, format).unwrap();
            let mut lp = EventLoop::new(transport);
            // Nothing has arrived: the loop may see writability, never a command.
            assert_eq!(kernel.pending(QUIET).unwrap(), None);

            // A non-posted 8-byte write in pieces of 1, 7 and 24 bytes.
            let value = 0x1122_3344_5566_7788;
            let w = write(0x77, 0x10, 3, value, false).encode(format);
            send_in_pieces(&kernel, &mut lp, &w, &[1, 7, 24], &what);
            assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0, "{what}: the write's response");

            // A read of it, in the same pieces: the value the write carried, every byte in place.
            let r = read(format, 0x77, 0x10, 3).encode(format);
            send_in_pieces(&kernel, &mut lp, &r, &[1, 7, 24], &what);
            assert_eq!(kernel.recv_response(WAIT).unwrap().data, value, "{what}: the read's response");

            // A posted write and a read sent as one run of bytes cut across the boundary
            // between them: 5, 30 (the rest of the write and 3 bytes of the read), 29.
            let mut both = write(0x78, 0x20, 2, 0xcafe_f00d, true).encode(format).to_vec();
            both.extend_from_slice(&read(format, 0x78, 0x20, 2).encode(format));
            send_in_pieces(&kernel, &mut lp, &both, &[5, 30, 29], &what);
            assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0xcafe_f00d, "{what}: after a posted write");
            assert_eq!(kernel.pending(QUIET).unwrap(), None, "{what}: the posted write was answered");

            // End of file between commands: the clean stop.
            drop(kernel);
            assert_eq!(lp.turn_for_device(), Progress::Closed, "{what}");
            let expect = ServeSummary { commands: 4, reads: 2, writes: 2, posted_writes: 1, responses: 3 };
            assert_eq!(lp.server.summary(), expect, "{what}");
        }
    }
}

#[test]
fn serves_whole_messages_on_a_seqpacket_socket() {
    let (kernel, transport) = connect(TransportKind::Seqpacket, WireFormat::V3).unwrap();
    let mut lp = EventLoop::new(transport);
    for i in 0..16u64 {
        kernel.send(&write(1, 8 * i, 3, 0x100 + i, true)).unwrap();
    }
    for i in 0..16u64 {
        kernel.send(&read(WireFormat::V3, 1, 8 * i, 3)).unwrap();
    }
    while lp.server.summary().responses < 16 {
        assert_eq!(lp.turn_for_device(), Progress::WantRead);
    }
    for i in 0..16u64 {
        assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0x100 + i, "response {i}");
    }
    assert_eq!(lp.server.partial_len(), 0);
}

#[test]
fn keeps_a_response_the_pipe_has_no_room_for_until_it_is_writable() {
    let (kernel, transport) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    // Shrink the response pipe to one page and fill it: the response has no room.
    let size = rustix::pipe::fcntl_setpipe_size(transport.resp_fd(), 4096).unwrap();
    let filler = vec![0xeeu8; size];
    assert_eq!(rustix::io::write(transport.resp_fd(), &filler).unwrap(), size);
    let mut lp = EventLoop::new(transport);

    let r = read(WireFormat::V3, 5, 0, 2).encode(WireFormat::V3);
    kernel.send_bytes(&r[..7]).unwrap();
    assert_eq!(lp.turn_for_device(), Progress::WantRead);
    kernel.send_bytes(&r[7..]).unwrap();
    assert_eq!(lp.turn_for_device(), Progress::WantWrite, "the response must wait for room");
    assert!(lp.server.wants_write());
    assert_eq!(lp.server.summary().responses, 0);
    // Meanwhile a further command is not read (the response comes first).
    kernel.send(&write(5, 0, 2, 9, false)).unwrap();
    let t = lp.turn(QUIET);
    assert_ne!(t.progress, Some(Progress::WantRead), "served a command while a response waited");
    assert_eq!(lp.server.summary().commands, 1);

    // The kernel side reads the filler: the pipe has room, the loop sees it and writes.
    let mut drained = vec![0u8; size];
    let mut got = 0;
    while got < size {
        got += rustix::io::read(kernel.resp_fd(), &mut drained[got..]).unwrap();
    }
    assert!(drained.iter().all(|&b| b == 0xee));
    while lp.server.wants_write() || lp.server.summary().commands < 2 {
        lp.turn_for_device();
    }
    assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0, "the read that waited");
    assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0, "the write after it");
    assert_eq!(lp.server.summary().responses, 2);
}

#[test]
fn the_stop_event_ends_the_loop_and_keeps_a_partial_command() {
    for kind in [TransportKind::Stream, TransportKind::Pipe] {
        let (kernel, transport) = connect(kind, WireFormat::V3).unwrap();
        let mut lp = EventLoop::new(transport);
        kernel.send_bytes(&read(WireFormat::V3, 1, 0, 0).encode(WireFormat::V3)[..13]).unwrap();
        assert_eq!(lp.turn_for_device(), Progress::WantRead);
        // Another thread (a VMM's control thread) asks the device task to stop.
        let stopper = lp.stop.try_clone().unwrap();
        std::thread::spawn(move || stopper.stop().unwrap()).join().unwrap();
        let mut turns = 0;
        loop {
            turns += 1;
            assert!(turns < 10, "{kind}: the stop event was not seen");
            if lp.turn(WAIT).stopped {
                break;
            }
        }
        assert_eq!(lp.server.partial_len(), 13, "{kind}");
        assert_eq!(lp.server.summary().commands, 0, "{kind}");
        // The kernel side is untouched: the loop ended without closing it.
        assert_eq!(kernel.pending(QUIET).unwrap(), None, "{kind}");
    }
}

#[test]
fn end_of_file_inside_a_command_is_an_error() {
    let (kernel, transport) = connect(TransportKind::Stream, WireFormat::V3).unwrap();
    let mut server = NonBlockingServer::new(transport).unwrap();
    kernel.send_bytes(&[1, 0, 0]).unwrap();
    assert_eq!(server.try_recv_command().unwrap(), Received::WouldBlock);
    drop(kernel);
    let err = server.process(&mut MemoryDevice::default()).unwrap_err();
    assert!(matches!(err, ServeError::Truncated { got: 3 }), "{err}");
}

#[test]
fn serve_until_stops_when_idle_and_in_the_middle_of_a_command() {
    for kind in TransportKind::ALL {
        for nonblocking in [false, true] {
            let what = format!("{kind}, O_NONBLOCK {nonblocking}");
            let (kernel, transport) = connect(kind, WireFormat::V3).unwrap();
            if nonblocking {
                // NonBlockingServer sets O_NONBLOCK; keep the transport.
                for fd in [transport.cmd_fd(), transport.resp_fd()] {
                    let flags = rustix::fs::fcntl_getfl(fd).unwrap();
                    rustix::fs::fcntl_setfl(fd, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
                }
            }
            let stop = StopEvent::new().unwrap();
            // A scoped thread, so that the transport outlives serve_until: the kernel side must
            // see neither a response nor end of file after the stop.
            std::thread::scope(|scope| {
                let server = scope.spawn(|| serve_until(&transport, &mut MemoryDevice::default(), &stop));
                kernel.send(&write(2, 0, 2, 0xabcd, false)).unwrap();
                assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0, "{what}");
                kernel.send(&read(WireFormat::V3, 2, 0, 2)).unwrap();
                assert_eq!(kernel.recv_response(WAIT).unwrap().data, 0xabcd, "{what}");
                if kind != TransportKind::Seqpacket {
                    // Half a command, then the stop.
                    kernel.send_bytes(&read(WireFormat::V3, 2, 0, 2).encode(WireFormat::V3)[..10]).unwrap();
                }
                std::thread::sleep(Duration::from_millis(10));
                assert!(!server.is_finished(), "{what}: serve_until returned before the stop");
                stop.stop().unwrap();
                let (summary, why) = server.join().unwrap().unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(why, StopReason::Stopped, "{what}");
                assert_eq!((summary.commands, summary.responses), (2, 2), "{what}");
            });
            assert_eq!(kernel.pending(QUIET).unwrap(), None, "{what}");
        }
    }
}

#[test]
fn serve_until_ends_at_end_of_file_as_serve_does() {
    for kind in TransportKind::ALL {
        let (kernel, transport) = connect(kind, WireFormat::Seed).unwrap();
        let stop = StopEvent::new().unwrap();
        let server = std::thread::spawn(move || serve_until(&transport, &mut MemoryDevice::default(), &stop));
        for i in 0..50u64 {
            kernel.send(&write(3, 8 * (i % 4), 3, i, true)).unwrap();
        }
        kernel.send(&read(WireFormat::Seed, 3, 8, 3)).unwrap();
        assert_eq!(kernel.recv_response(WAIT).unwrap().data, 49, "{kind}");
        drop(kernel);
        let (summary, why) = server.join().unwrap().unwrap();
        assert_eq!(why, StopReason::EndOfFile, "{kind}");
        let expect = ServeSummary { commands: 51, reads: 1, writes: 50, posted_writes: 50, responses: 1 };
        assert_eq!(summary, expect, "{kind}");

        // End of file inside a command is still an error.
        let (kernel, transport) = connect(kind, WireFormat::V3).unwrap();
        kernel.send_bytes(&[1, 0, 0]).unwrap();
        drop(kernel);
        let err = serve_until(&transport, &mut MemoryDevice::default(), &StopEvent::new().unwrap()).unwrap_err();
        let as_serve = if kind == TransportKind::Seqpacket {
            matches!(err, ServeError::MessageSize { got: 3 })
        } else {
            matches!(err, ServeError::Truncated { got: 3 })
        };
        assert!(as_serve, "{kind}: {err}");
    }
}

#[test]
fn serve_until_stops_while_a_response_waits_for_room() {
    let (kernel, transport) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    let size = rustix::pipe::fcntl_setpipe_size(transport.resp_fd(), 4096).unwrap();
    assert_eq!(rustix::io::write(transport.resp_fd(), &vec![0u8; size]).unwrap(), size);
    let stop = StopEvent::new().unwrap();
    let handle = stop.try_clone().unwrap();
    let server = std::thread::spawn(move || serve_until(&transport, &mut MemoryDevice::default(), &handle));
    kernel.send(&read(WireFormat::V3, 0, 0, 0)).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(!server.is_finished());
    stop.stop().unwrap();
    let (summary, why) = server.join().unwrap().unwrap();
    assert_eq!((summary.commands, summary.responses, why), (1, 0, StopReason::Stopped));
}
