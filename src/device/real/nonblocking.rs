//! Serving from non-blocking fds inside an event loop: a receive that keeps a partial command
//! across calls, a response write that keeps its unsent tail, and [`NonBlockingServer`], which
//! drives both for a VMM's poll/epoll/mio loop.

use super::serve::{ServeError, ServeSummary, apply};
use super::sys::{FdKind, read_nb, set_nonblocking, write_nb};
use super::transport::Transport;
use crate::device::IoregionDevice;
use crate::wire::{Command, MESSAGE_SIZE, Response, WireFormat};
use std::io;
use std::os::fd::BorrowedFd;

/// What one non-blocking receive found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole command.
    Command(Command),
    /// No whole command now. The bytes of a command that has begun to arrive are kept; the next
    /// call goes on from them once the command fd is readable again.
    WouldBlock,
    /// End of file between commands: the kernel side closed (a clean stop).
    Closed,
}

/// Where [`NonBlockingServer::process`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every command that had arrived was served and answered; call again when the command fd
    /// is readable.
    WantRead,
    /// A response is not (wholly) written: the response fd had no room. Its unsent bytes are
    /// kept; call again when the response fd is writable. No further command is read until the
    /// response is out (as KVM, which waits for it, would expect).
    WantWrite,
    /// End of file between commands with nothing left to send: the kernel side closed.
    Closed,
}

/// The bytes of the command being received. One read at a time, so that a caller can wait
/// between reads (poll) or go on until the fd would block.
#[derive(Debug)]
pub(super) struct CommandReader {
    /// Room for one command, or (seqpacket) for a message too long, to report its size.
    buf: [u8; 2 * MESSAGE_SIZE],
    /// Bytes of the current command received so far (stream, pipe, FIFO).
    have: usize,
}

/// What one read of a [`CommandReader`] did.
pub(super) enum Step {
    /// A whole command.
    Command(Command),
    /// Some bytes, not yet a whole command.
    Partial,
    /// Nothing now (`EAGAIN`).
    WouldBlock,
    /// End of file between commands.
    Closed,
}

impl Default for CommandReader {
    fn default() -> Self {
        CommandReader { buf: [0; 2 * MESSAGE_SIZE], have: 0 }
    }
}

impl CommandReader {
    /// Bytes of a command received so far.
    pub(super) fn partial_len(&self) -> usize {
        self.have
    }

    /// One read of the command fd (never waits on an `O_NONBLOCK` fd; on a blocking one, only
    /// call it once poll said the fd is readable). End of file inside a command, a seqpacket
    /// message that is not 32 bytes and a command that does not decode are errors, as in
    /// [`Transport::recv_command`].
    pub(super) fn step(&mut self, fd: BorrowedFd<'_>, kind: FdKind, format: WireFormat) -> Result<Step, ServeError> {
        let room = if kind == FdKind::Seqpacket { &mut self.buf[..] } else { &mut self.buf[self.have..MESSAGE_SIZE] };
        let n = match read_nb(fd, kind, room) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Step::WouldBlock),
            Err(e) => return Err(ServeError::Io { op: "read a command", source: e }),
        };
        if n == 0 {
            return match self.have {
                0 => Ok(Step::Closed),
                got => Err(ServeError::Truncated { got }),
            };
        }
        if kind == FdKind::Seqpacket && n != MESSAGE_SIZE {
            return Err(ServeError::MessageSize { got: n });
        }
        self.have += n;
        if self.have < MESSAGE_SIZE {
            return Ok(Step::Partial);
        }
        self.have = 0;
        let image = &self.buf[..MESSAGE_SIZE];
        Command::decode(format, image)
            .map(Step::Command)
            .map_err(|error| ServeError::Malformed { error, bytes: image.try_into().unwrap_or([0; MESSAGE_SIZE]) })
    }
}

/// Responses not yet written, with how much of the first is out.
#[derive(Debug, Default)]
pub(super) struct ResponseWriter {
    /// Encoded responses, one after another.
    pending: Vec<u8>,
    /// Bytes of `pending` already written.
    sent: usize,
}

impl ResponseWriter {
    /// Queues one response behind those not yet written.
    pub(super) fn push(&mut self, response: &Response) {
        self.pending.extend_from_slice(&response.encode());
    }

    /// Whether some response is not wholly written.
    pub(super) fn is_empty(&self) -> bool {
        self.sent == self.pending.len()
    }

    /// One write of what is left (never waits on an `O_NONBLOCK` fd; on a blocking one, only
    /// call it once poll said the fd is writable). Returns how many responses this write
    /// completed, or `None` when the fd had no room.
    pub(super) fn step(&mut self, fd: BorrowedFd<'_>, kind: FdKind) -> Result<Option<u64>, ServeError> {
        let before = self.sent / MESSAGE_SIZE;
        match write_nb(fd, kind, &self.pending[self.sent..]) {
            Ok(Some(n)) => self.sent += n,
            Ok(None) => return Ok(None),
            Err(e) => return Err(ServeError::Io { op: "write a response", source: e }),
        }
        let done = (self.sent / MESSAGE_SIZE - before) as u64;
        if self.is_empty() {
            self.pending.clear();
            self.sent = 0;
        }
        Ok(Some(done))
    }
}

/// A device's end of a connection in non-blocking mode, for an event loop (poll, epoll, mio,
/// event-manager): it never waits. [`try_recv_command`](Self::try_recv_command) keeps a command
/// that arrives in pieces across calls; [`send_response`](Self::send_response) keeps the unsent
/// tail of a response when the fd has no room; [`process`](Self::process) does both for a
/// device until the fds would block.
///
/// Register [`cmd_fd`](Self::cmd_fd) for readability and, while
/// [`wants_write`](Self::wants_write), [`resp_fd`](Self::resp_fd) for writability (they are the
/// same fd on a socket), and call [`process`](Self::process) on every event. With an
/// edge-triggered loop (mio, `EPOLLET`) that is enough: `process` goes on until the fd would
/// block.
///
/// Short writes: a response of 32 bytes is written whole or not at all on the transports the
/// library makes (a pipe or FIFO takes writes of up to `PIPE_BUF` bytes whole; a seqpacket
/// socket takes whole messages; a stream socket with room for one small buffer takes all of
/// it), but the server does not rely on it: whatever a write leaves is written by the next
/// call.
///
/// ```
/// use ioregionfd_model::device::{connect, MemoryDevice, NonBlockingServer, Progress, TransportKind};
/// use ioregionfd_model::wire::{Command, Direction, WireFormat};
/// use std::time::Duration;
/// let (kernel, transport) = connect(TransportKind::Stream, WireFormat::V3).unwrap();
/// let mut server = NonBlockingServer::new(transport).unwrap();
/// let mut device = MemoryDevice::default();
/// assert_eq!(server.process(&mut device).unwrap(), Progress::WantRead); // nothing yet
/// let read = Command { direction: Direction::Read, size_exponent: 2, resp: true, user_data: 1, offset: 0, data: 0 };
/// let image = read.encode(WireFormat::V3);
/// kernel.send_bytes(&image[..5]).unwrap(); // a piece of a command
/// assert_eq!(server.process(&mut device).unwrap(), Progress::WantRead);
/// assert_eq!(server.partial_len(), 5); // kept for the next call
/// kernel.send_bytes(&image[5..]).unwrap();
/// assert_eq!(server.process(&mut device).unwrap(), Progress::WantRead);
/// assert_eq!(kernel.recv_response(Duration::from_secs(5)).unwrap().data, 0);
/// drop(kernel);
/// assert_eq!(server.process(&mut device).unwrap(), Progress::Closed);
/// assert_eq!(server.summary().responses, 1);
/// ```
#[derive(Debug)]
pub struct NonBlockingServer {
    transport: Transport,
    reader: CommandReader,
    writer: ResponseWriter,
    summary: ServeSummary,
}

impl NonBlockingServer {
    /// Serves on `transport`, whose fds it makes non-blocking (`O_NONBLOCK` is a flag of the
    /// open file, so every other holder of these files sees it too).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// let (_kernel, transport) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    /// let server = NonBlockingServer::new(transport).unwrap();
    /// assert!(!server.wants_write());
    /// ```
    pub fn new(transport: Transport) -> io::Result<NonBlockingServer> {
        set_nonblocking(transport.cmd_fd(), true)?;
        set_nonblocking(transport.resp_fd(), true)?;
        Ok(NonBlockingServer {
            transport,
            reader: CommandReader::default(),
            writer: ResponseWriter::default(),
            summary: ServeSummary::default(),
        })
    }

    /// The transport served.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// let (_kernel, transport) = connect(TransportKind::Seqpacket, WireFormat::Seed).unwrap();
    /// assert_eq!(NonBlockingServer::new(transport).unwrap().transport().format(), WireFormat::Seed);
    /// ```
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The fd to watch for readability (commands).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// use std::os::fd::AsRawFd;
    /// let (_kernel, transport) = connect(TransportKind::Stream, WireFormat::V3).unwrap();
    /// let server = NonBlockingServer::new(transport).unwrap();
    /// assert_eq!(server.cmd_fd().as_raw_fd(), server.resp_fd().as_raw_fd()); // one socket
    /// ```
    pub fn cmd_fd(&self) -> BorrowedFd<'_> {
        self.transport.cmd_fd()
    }

    /// The fd to watch for writability while [`wants_write`](Self::wants_write) (responses).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// use std::os::fd::AsRawFd;
    /// let (_kernel, transport) = connect(TransportKind::Fifo, WireFormat::V3).unwrap();
    /// let server = NonBlockingServer::new(transport).unwrap();
    /// assert_ne!(server.cmd_fd().as_raw_fd(), server.resp_fd().as_raw_fd()); // two FIFOs
    /// ```
    pub fn resp_fd(&self) -> BorrowedFd<'_> {
        self.transport.resp_fd()
    }

    /// What it did so far (responses are counted once wholly written).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, ServeSummary, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// let (_kernel, transport) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    /// assert_eq!(NonBlockingServer::new(transport).unwrap().summary(), ServeSummary::default());
    /// ```
    pub fn summary(&self) -> ServeSummary {
        self.summary
    }

    /// Bytes of a command received so far and kept for the next call (0 between commands).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, Received, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// let (kernel, transport) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    /// let mut server = NonBlockingServer::new(transport).unwrap();
    /// kernel.send_bytes(&[0; 7]).unwrap();
    /// assert_eq!(server.try_recv_command().unwrap(), Received::WouldBlock);
    /// assert_eq!(server.partial_len(), 7);
    /// ```
    pub fn partial_len(&self) -> usize {
        self.reader.partial_len()
    }

    /// Whether part of a response is still to be written (watch [`resp_fd`](Self::resp_fd)
    /// for writability, then call [`flush`](Self::flush) or [`process`](Self::process)).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, TransportKind};
    /// use ioregionfd_model::wire::{Response, WireFormat};
    /// let (_kernel, transport) = connect(TransportKind::Seqpacket, WireFormat::V3).unwrap();
    /// let mut server = NonBlockingServer::new(transport).unwrap();
    /// assert!(server.send_response(&Response { data: 1 }).unwrap()); // room: written at once
    /// assert!(!server.wants_write());
    /// ```
    pub fn wants_write(&self) -> bool {
        !self.writer.is_empty()
    }

    /// Receives the next command without waiting: reads until a whole command is there or the
    /// fd would block, keeping the bytes of a partial command across calls. Errors as
    /// [`Transport::recv_command`]'s (end of file inside a command, a seqpacket message that is
    /// not 32 bytes, a command that does not decode, an I/O error).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, Received, TransportKind};
    /// use ioregionfd_model::wire::{Command, Direction, WireFormat};
    /// let (kernel, transport) = connect(TransportKind::Stream, WireFormat::V3).unwrap();
    /// let mut server = NonBlockingServer::new(transport).unwrap();
    /// let cmd = Command { direction: Direction::Write, size_exponent: 0, resp: false, user_data: 2, offset: 1, data: 9 };
    /// let image = cmd.encode(WireFormat::V3);
    /// kernel.send_bytes(&image[..1]).unwrap();
    /// assert_eq!(server.try_recv_command().unwrap(), Received::WouldBlock);
    /// kernel.send_bytes(&image[1..]).unwrap();
    /// assert_eq!(server.try_recv_command().unwrap(), Received::Command(cmd));
    /// drop(kernel);
    /// assert_eq!(server.try_recv_command().unwrap(), Received::Closed);
    /// ```
    pub fn try_recv_command(&mut self) -> Result<Received, ServeError> {
        let (fd, kind, format) = (self.transport.cmd_fd(), self.transport.cmd_kind(), self.transport.format());
        loop {
            match self.reader.step(fd, kind, format)? {
                Step::Command(cmd) => return Ok(Received::Command(cmd)),
                Step::Partial => {}
                Step::WouldBlock => return Ok(Received::WouldBlock),
                Step::Closed => return Ok(Received::Closed),
            }
        }
    }

    /// Queues `response` behind any not yet written and writes what it can without waiting.
    /// `Ok(true)`: everything is written; `Ok(false)`: the fd had no room, the rest is kept
    /// (see [`wants_write`](Self::wants_write)).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, TransportKind};
    /// use ioregionfd_model::wire::{Response, WireFormat};
    /// use std::time::Duration;
    /// let (kernel, transport) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    /// let mut server = NonBlockingServer::new(transport).unwrap();
    /// assert!(server.send_response(&Response { data: 5 }).unwrap());
    /// assert_eq!(kernel.recv_response(Duration::from_secs(5)).unwrap().data, 5);
    /// ```
    pub fn send_response(&mut self, response: &Response) -> Result<bool, ServeError> {
        self.writer.push(response);
        self.flush()
    }

    /// Writes what is left of the queued responses without waiting: `Ok(true)` when nothing is
    /// left, `Ok(false)` when the fd has no room for the rest.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, NonBlockingServer, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// let (_kernel, transport) = connect(TransportKind::Stream, WireFormat::V3).unwrap();
    /// assert!(NonBlockingServer::new(transport).unwrap().flush().unwrap()); // nothing queued
    /// ```
    pub fn flush(&mut self) -> Result<bool, ServeError> {
        let (fd, kind) = (self.transport.resp_fd(), self.transport.resp_kind());
        while !self.writer.is_empty() {
            match self.writer.step(fd, kind)? {
                Some(done) => self.summary.responses += done,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Serves `device` until the fds would block: writes what is left of a response, then
    /// receives each command that has arrived, applies it to `device` (as [`serve`] does) and
    /// answers it when it wants a response (never a posted write). Call it whenever the command
    /// fd is readable or, while [`wants_write`](Self::wants_write), the response fd is
    /// writable. An error ends the connection as in [`serve`]; `Progress::Closed` is the clean
    /// stop.
    ///
    /// [`serve`]: super::serve
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, MemoryDevice, NonBlockingServer, Progress, TransportKind};
    /// use ioregionfd_model::wire::{Command, Direction, WireFormat};
    /// use std::time::Duration;
    /// let (kernel, transport) = connect(TransportKind::Seqpacket, WireFormat::Seed).unwrap();
    /// let mut server = NonBlockingServer::new(transport).unwrap();
    /// let mut device = MemoryDevice::default();
    /// let write = Command { direction: Direction::Write, size_exponent: 3, resp: false, user_data: 4, offset: 8, data: 77 };
    /// let read = Command { direction: Direction::Read, size_exponent: 3, resp: false, user_data: 4, offset: 8, data: 0 };
    /// kernel.send(&write).unwrap();
    /// kernel.send(&read).unwrap();
    /// assert_eq!(server.process(&mut device).unwrap(), Progress::WantRead);
    /// assert_eq!(kernel.recv_response(Duration::from_secs(5)).unwrap().data, 77);
    /// let s = server.summary();
    /// assert_eq!((s.commands, s.posted_writes, s.responses), (2, 1, 1));
    /// ```
    pub fn process<D: IoregionDevice + ?Sized>(&mut self, device: &mut D) -> Result<Progress, ServeError> {
        loop {
            if !self.flush()? {
                return Ok(Progress::WantWrite);
            }
            match self.try_recv_command()? {
                Received::Command(cmd) => {
                    if let Some(response) = apply(device, &cmd, &mut self.summary) {
                        self.writer.push(&response);
                    }
                }
                Received::WouldBlock => return Ok(Progress::WantRead),
                Received::Closed => return Ok(Progress::Closed),
            }
        }
    }
}
