//! Serving a device: the blocking loop, what it did, and why it stopped.

use super::transport::Transport;
use crate::device::IoregionDevice;
use crate::wire::{Direction, MESSAGE_SIZE, Response, WireError};
use std::fmt;
use std::io;
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
        if cmd.wants_response() {
            transport.send_response(&Response { data: value })?;
            summary.responses += 1;
        }
    }
    Ok(summary)
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
