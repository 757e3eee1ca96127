//! Serving a device: the blocking loop (with or without a stop fd), what it did, and why it
//! stopped.

use super::nonblocking::{CommandReader, ResponseWriter, Step};
use super::sys::poll_fds;
use super::transport::Transport;
use crate::device::IoregionDevice;
use crate::wire::{Command, Direction, MESSAGE_SIZE, Response, WireError};
use rustix::event::{PollFd, PollFlags};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;

/// What [`serve`] did before it stopped.
///
/// ```
/// use ioregionfd_model::device::ServeSummary;
/// let s = ServeSummary::default();
/// assert_eq!(s.commands, 0);
/// assert_eq!(s.to_string(), "0 commands (0 reads, 0 writes of which 0 posted), 0 responses");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeSummary {
    /// Commands read.
    pub commands: u64,
    /// Of them, reads.
    pub reads: u64,
    /// Of them, writes.
    pub writes: u64,
    /// Of the writes, posted ones (no response bit: never answered).
    pub posted_writes: u64,
    /// Responses written.
    pub responses: u64,
}

impl fmt::Display for ServeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} commands ({} reads, {} writes of which {} posted), {} responses",
            self.commands, self.reads, self.writes, self.posted_writes, self.responses
        )
    }
}

/// Why [`serve`] (or [`Transport::recv_command`] / [`Transport::send_response`]) stopped
/// with an error. End of file at a message boundary is not an error.
///
/// ```
/// use ioregionfd_model::device::ServeError;
/// let e = ServeError::Truncated { got: 13 };
/// assert_eq!(e.to_string(), "end of file after 13 of the 32 bytes of a command");
/// ```
#[derive(Debug)]
pub enum ServeError {
    /// A system call failed (`op` says which step).
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// End of file in the middle of a command.
    Truncated {
        /// Bytes of the command that had arrived.
        got: usize,
    },
    /// A `SOCK_SEQPACKET` message that is not 32 bytes.
    MessageSize {
        /// Its size.
        got: usize,
    },
    /// A command the wire format does not allow.
    Malformed {
        /// What is wrong.
        error: WireError,
        /// The 32 bytes.
        bytes: [u8; MESSAGE_SIZE],
    },
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Io { op, source } => write!(f, "cannot {op}: {source}"),
            ServeError::Truncated { got } => {
                write!(f, "end of file after {got} of the {MESSAGE_SIZE} bytes of a command")
            }
            ServeError::MessageSize { got } => {
                write!(f, "a SOCK_SEQPACKET message of {got} bytes (a command is {MESSAGE_SIZE})")
            }
            ServeError::Malformed { error, bytes } => write!(f, "malformed command ({error}): {bytes:02x?}"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Io { source, .. } => Some(source),
            ServeError::Malformed { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Serves `device` on `transport` until the kernel side closes: reads each command, calls
/// [`IoregionDevice::read`] or [`IoregionDevice::write`] with the command's `user_data`,
/// offset and size, and writes a response for reads and for writes with the response bit
/// (never for a posted write). Returns what it did once end of file arrives at a message
/// boundary; any other end (end of file inside a command, a malformed command, an I/O error
/// such as `EPIPE` when the kernel side went away before a response) is an error.
///
/// It blocks: run it on a thread of its own (or in a process of its own). Sockets are written
/// with `MSG_NOSIGNAL`; for pipes and FIFOs keep SIGPIPE ignored (Rust programs do by
/// default), so that a vanished reader is an `EPIPE` error and not a killed process.
///
/// ```
/// use ioregionfd_model::device::{connect, serve, MemoryDevice, TransportKind};
/// use ioregionfd_model::wire::{Command, Direction, WireFormat};
/// use std::time::Duration;
/// let (kernel, transport) = connect(TransportKind::Stream, WireFormat::V3).unwrap();
/// let server = std::thread::spawn(move || serve(&transport, &mut MemoryDevice::default()));
/// let write = Command { direction: Direction::Write, size_exponent: 2, resp: false, user_data: 3, offset: 4, data: 0xbeef };
/// let read = Command { direction: Direction::Read, size_exponent: 2, resp: true, user_data: 3, offset: 4, data: 0 };
/// kernel.send(&write).unwrap(); // posted: no response
/// kernel.send(&read).unwrap();
/// assert_eq!(kernel.recv_response(Duration::from_secs(5)).unwrap().data, 0xbeef);
/// drop(kernel); // end of file: serve returns
/// let summary = server.join().unwrap().unwrap();
/// assert_eq!((summary.commands, summary.posted_writes, summary.responses), (2, 1, 1));
/// ```
pub fn serve<D: IoregionDevice + ?Sized>(transport: &Transport, device: &mut D) -> Result<ServeSummary, ServeError> {
    let mut summary = ServeSummary::default();
    while let Some(cmd) = transport.recv_command()? {
        if let Some(response) = apply(device, &cmd, &mut summary) {
            transport.send_response(&response)?;
            summary.responses += 1;
        }
    }
    Ok(summary)
}

/// Applies one command to `device` and counts it in `summary` (all but the response, which is
/// counted once written): the response to send, if the command wants one.
pub(super) fn apply<D: IoregionDevice + ?Sized>(
    device: &mut D,
    cmd: &Command,
    summary: &mut ServeSummary,
) -> Option<Response> {
    summary.commands += 1;
    let value = match cmd.direction {
        Direction::Read => {
            summary.reads += 1;
            device.read(cmd.user_data, cmd.offset, cmd.size())
        }
        Direction::Write => {
            summary.writes += 1;
            summary.posted_writes += u64::from(!cmd.resp);
            device.write(cmd.user_data, cmd.offset, cmd.size(), cmd.data);
            0
        }
    };
    cmd.wants_response().then_some(Response { data: value })
}

/// Why [`serve_until`] returned `Ok`.
///
/// ```
/// use ioregionfd_model::device::StopReason;
/// assert_ne!(StopReason::EndOfFile, StopReason::Stopped);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// End of file between commands: the kernel side closed.
    EndOfFile,
    /// The stop fd became readable.
    Stopped,
}

/// [`serve`] that also returns when `stop` becomes readable: an exit eventfd of the VMM, a
/// [`StopEvent`](super::StopEvent), or any fd that polls readable when the device should stop. It waits with
/// poll(2) on the command fd and `stop` together (and on the response fd and `stop` while a
/// response waits for room), so it stops while idle, in the middle of a command that arrives in
/// pieces, and while a response waits for room; what it had not finished (part of a command,
/// part of a response, commands not yet read) is left as it is. It never reads `stop`, so one
/// exit eventfd can stop several devices; `stop` is checked first, so commands that arrive
/// together with the request to stop are not served.
///
/// Otherwise it behaves as [`serve`]: the same commands, responses and errors, blocking or
/// `O_NONBLOCK` fds alike.
///
/// ```
/// use ioregionfd_model::device::{connect, serve_until, MemoryDevice, StopEvent, StopReason, TransportKind};
/// use ioregionfd_model::wire::{Command, Direction, WireFormat};
/// use std::time::Duration;
/// let (kernel, transport) = connect(TransportKind::Seqpacket, WireFormat::V3).unwrap();
/// let stop = StopEvent::new().unwrap();
/// let handle = stop.try_clone().unwrap();
/// let server = std::thread::spawn(move || serve_until(&transport, &mut MemoryDevice::default(), &handle));
/// let read = Command { direction: Direction::Read, size_exponent: 2, resp: true, user_data: 3, offset: 4, data: 0 };
/// kernel.send(&read).unwrap();
/// assert_eq!(kernel.recv_response(Duration::from_secs(5)).unwrap().data, 0);
/// stop.stop().unwrap(); // the kernel side is still open
/// let (summary, why) = server.join().unwrap().unwrap();
/// assert_eq!((summary.commands, why), (1, StopReason::Stopped));
/// ```
pub fn serve_until<D: IoregionDevice + ?Sized, S: AsFd + ?Sized>(
    transport: &Transport,
    device: &mut D,
    stop: &S,
) -> Result<(ServeSummary, StopReason), ServeError> {
    let stop = stop.as_fd();
    let mut summary = ServeSummary::default();
    let mut reader = CommandReader::default();
    let mut writer = ResponseWriter::default();
    let (cmd_fd, cmd_kind, format) = (transport.cmd_fd(), transport.cmd_kind(), transport.format());
    let (resp_fd, resp_kind) = (transport.resp_fd(), transport.resp_kind());
    loop {
        if !wait_or_stop(cmd_fd, PollFlags::IN, stop)
            .map_err(|e| ServeError::Io { op: "wait for a command", source: e })?
        {
            return Ok((summary, StopReason::Stopped));
        }
        let cmd = match reader.step(cmd_fd, cmd_kind, format)? {
            Step::Command(cmd) => cmd,
            Step::Partial | Step::WouldBlock => continue,
            Step::Closed => return Ok((summary, StopReason::EndOfFile)),
        };
        let Some(response) = apply(device, &cmd, &mut summary) else { continue };
        writer.push(&response);
        // Poll before each write: on a blocking fd, a write without room would not return.
        while !writer.is_empty() {
            if !wait_or_stop(resp_fd, PollFlags::OUT, stop)
                .map_err(|e| ServeError::Io { op: "wait to write a response", source: e })?
            {
                return Ok((summary, StopReason::Stopped));
            }
            summary.responses += writer.step(resp_fd, resp_kind)?.unwrap_or(0);
        }
    }
}

/// Waits until `fd` reports `events` (`Ok(true)`) or `stop` is readable (`Ok(false)`; checked
/// first, and again before waiting).
fn wait_or_stop(fd: BorrowedFd<'_>, events: PollFlags, stop: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::from_borrowed_fd(stop, PollFlags::IN), PollFd::from_borrowed_fd(fd, events)];
    poll_fds(&mut fds, None)?;
    Ok(fds[0].revents().is_empty())
}

/// The whole `main` of a device process started by a launcher (`ioregionfd-model conform`, or a
/// VMM that passes the fds the same way): takes the transport the environment names
/// ([`Transport::from_env`]), serves `device` on it until the kernel side closes, and gives the
/// exit status the launcher expects: 0 for end of file at a message boundary (a clean stop), 1
/// for any other end, 2 when the environment names no usable transport. Errors are printed on
/// standard error after `name: `.
///
/// ```no_run
/// use ioregionfd_model::device::{ScratchMemory, serve_from_env};
/// fn main() -> std::process::ExitCode {
///     serve_from_env("my_device", &mut ScratchMemory::default())
/// }
/// ```
///
/// Outside such a launcher it says what is missing and returns 2:
///
/// ```
/// # use ioregionfd_model::device::{ScratchMemory, serve_from_env};
/// if std::env::var_os("IOREGIONFD_CMD_FD").is_none() {
///     assert_eq!(serve_from_env("doc", &mut ScratchMemory::default()), std::process::ExitCode::from(2));
/// }
/// ```
pub fn serve_from_env<D: IoregionDevice + ?Sized>(name: &str, device: &mut D) -> ExitCode {
    let transport = match Transport::from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(&transport, device) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
