//! The device's end of a connection, the kinds of transport, and the launch convention's
//! environment variables.

use super::serve::ServeError;
use super::sys::{FdKind, fd_kind, read_once, set_cloexec, write_all};
use crate::wire::{Command, MESSAGE_SIZE, Response, WireFormat};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment variable naming the fd a device reads its commands from (set by
/// `ioregionfd-model conform`; read by [`Transport::from_env`]).
///
/// ```
/// assert_eq!(ioregionfd_model::device::ENV_CMD_FD, "IOREGIONFD_CMD_FD");
/// ```
pub const ENV_CMD_FD: &str = "IOREGIONFD_CMD_FD";

/// Environment variable naming the fd a device writes its responses to: the same number as
/// [`ENV_CMD_FD`] for a socketpair, another for a pipe or FIFO pair.
///
/// ```
/// assert_eq!(ioregionfd_model::device::ENV_RESP_FD, "IOREGIONFD_RESP_FD");
/// ```
pub const ENV_RESP_FD: &str = "IOREGIONFD_RESP_FD";

/// Environment variable naming the wire format: `seed` or `v3`.
///
/// ```
/// assert_eq!(ioregionfd_model::device::ENV_FORMAT, "IOREGIONFD_FORMAT");
/// ```
pub const ENV_FORMAT: &str = "IOREGIONFD_FORMAT";

/// Environment variable naming the transport (`stream`, `seqpacket`, `pipe` or `fifo`); for
/// information only, a device finds out what its fds are by itself.
///
/// ```
/// assert_eq!(ioregionfd_model::device::ENV_TRANSPORT, "IOREGIONFD_TRANSPORT");
/// ```
pub const ENV_TRANSPORT: &str = "IOREGIONFD_TRANSPORT";

// ----- transports -----

/// The kinds of fd pair: the one vocabulary of the model and the device library
/// ([`crate::wire::TransportKind`]).
pub use crate::wire::TransportKind;

/// The device's end of a connection: commands are read from one fd, responses written to
/// the same fd (a socket) or to another (a pipe or FIFO pair).
///
/// Get one from [`connect`](super::connect) (both ends in this process), from [`Transport::from_env`] (a
/// device started by `ioregionfd-model conform` or by a VMM that follows the same
/// convention), or from fds you already have with [`Transport::new`].
///
/// ```
/// use ioregionfd_model::device::{connect, TransportKind};
/// use ioregionfd_model::wire::{Command, Direction, Response, WireFormat};
/// let (kernel, device) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
/// let cmd = Command { direction: Direction::Read, size_exponent: 2, resp: true, user_data: 1, offset: 8, data: 0 };
/// kernel.send(&cmd).unwrap();
/// assert_eq!(device.recv_command().unwrap(), Some(cmd));
/// device.send_response(&Response { data: 42 }).unwrap();
/// assert_eq!(kernel.recv_response(std::time::Duration::from_secs(5)).unwrap().data, 42);
/// ```
#[derive(Debug)]
pub struct Transport {
    cmd: OwnedFd,
    resp: Option<OwnedFd>,
    cmd_kind: FdKind,
    resp_kind: FdKind,
    format: WireFormat,
}

static ENV_TAKEN: AtomicBool = AtomicBool::new(false);

fn env_fd(var: &str) -> io::Result<Option<RawFd>> {
    let Some(value) = std::env::var_os(var) else { return Ok(None) };
    let text = value.to_str().unwrap_or("");
    match text.trim().parse::<RawFd>() {
        Ok(fd) if fd >= 0 => Ok(Some(fd)),
        _ => {
            Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{var}={value:?} is not a file descriptor number")))
        }
    }
}

impl Transport {
    /// A transport on fds the caller owns: commands come from `cmd`, responses go to `resp`,
    /// or to `cmd` itself when `resp` is `None` (a socket). Fails when an fd is not open.
    ///
    /// ```
    /// use ioregionfd_model::device::Transport;
    /// use ioregionfd_model::wire::WireFormat;
    /// use std::os::unix::net::UnixStream;
    /// let (_kernel, device) = UnixStream::pair().unwrap();
    /// let t = Transport::new(device.into(), None, WireFormat::Seed).unwrap();
    /// assert_eq!(t.format(), WireFormat::Seed);
    /// ```
    pub fn new(cmd: OwnedFd, resp: Option<OwnedFd>, format: WireFormat) -> io::Result<Transport> {
        let cmd_kind = fd_kind(cmd.as_fd())?;
        let resp_kind = match &resp {
            Some(fd) => fd_kind(fd.as_fd())?,
            None => cmd_kind,
        };
        Ok(Transport { cmd, resp, cmd_kind, resp_kind, format })
    }

    /// The transport a launcher passed in the environment: [`ENV_CMD_FD`] (required),
    /// [`ENV_RESP_FD`] (defaults to the same fd) and [`ENV_FORMAT`] (`seed` or `v3`, default
    /// `v3`). The fds become owned by the returned value and are made close-on-exec, so
    /// children the device starts do not inherit them. Only the first successful call in a
    /// process takes them; later calls fail, as do missing variables, numbers that are not
    /// open fds and unknown formats, each with a message naming the variable.
    ///
    /// ```
    /// use ioregionfd_model::device::Transport;
    /// if std::env::var_os("IOREGIONFD_CMD_FD").is_none() {
    ///     let err = Transport::from_env().unwrap_err();
    ///     assert!(err.to_string().contains("IOREGIONFD_CMD_FD"));
    /// }
    /// ```
    pub fn from_env() -> io::Result<Transport> {
        let Some(cmd) = env_fd(ENV_CMD_FD)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{ENV_CMD_FD} is not set: start this device under `ioregionfd-model conform` or a VMM that passes the fds"
                ),
            ));
        };
        let resp = env_fd(ENV_RESP_FD)?.filter(|&r| r != cmd);
        let format = match std::env::var_os(ENV_FORMAT) {
            None => WireFormat::V3,
            Some(v) => WireFormat::from_name(v.to_str().unwrap_or("")).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{ENV_FORMAT}={v:?}: expected seed or v3"))
            })?,
        };
        for (var, fd) in [(ENV_CMD_FD, Some(cmd)), (ENV_RESP_FD, resp)] {
            if let Some(fd) = fd {
                set_cloexec(fd, true)
                    .map_err(|e| io::Error::new(e.kind(), format!("{var}={fd} is not an open fd: {e}")))?;
            }
        }
        if ENV_TAKEN.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the fds named in the environment were already taken by an earlier Transport::from_env",
            ));
        }
        // SAFETY: the launcher handed these fds to this process for the device (that is the
        // convention the variables express), they are open (checked above), and the
        // ENV_TAKEN flag makes this the only place in the process that takes ownership. Not
        // rustix: taking ownership of an inherited fd number is std's `OwnedFd::from_raw_fd`
        // (rustix offers the same constructor, no safer).
        let (cmd, resp) = unsafe { (OwnedFd::from_raw_fd(cmd), resp.map(|r| OwnedFd::from_raw_fd(r))) };
        Transport::new(cmd, resp, format)
    }

    /// The wire format it speaks.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// let (_k, d) = connect(TransportKind::Stream, WireFormat::Seed).unwrap();
    /// assert_eq!(d.format(), WireFormat::Seed);
    /// ```
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// The fd commands are read from.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// use std::os::fd::AsRawFd;
    /// let (_k, d) = connect(TransportKind::Stream, WireFormat::V3).unwrap();
    /// assert_eq!(d.cmd_fd().as_raw_fd(), d.resp_fd().as_raw_fd()); // one socket
    /// ```
    pub fn cmd_fd(&self) -> BorrowedFd<'_> {
        self.cmd.as_fd()
    }

    /// The fd responses are written to.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// use std::os::fd::AsRawFd;
    /// let (_k, d) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    /// assert_ne!(d.cmd_fd().as_raw_fd(), d.resp_fd().as_raw_fd()); // two pipes
    /// ```
    pub fn resp_fd(&self) -> BorrowedFd<'_> {
        self.resp.as_ref().unwrap_or(&self.cmd).as_fd()
    }

    /// How bytes move on the command fd.
    pub(super) fn cmd_kind(&self) -> FdKind {
        self.cmd_kind
    }

    /// How bytes move on the response fd.
    pub(super) fn resp_kind(&self) -> FdKind {
        self.resp_kind
    }

    /// Reads the next whole command, blocking until it is there. `Ok(None)` is end of file
    /// at a message boundary (the kernel side closed: a clean stop). Short reads are
    /// reassembled, EINTR restarts, an `O_NONBLOCK` fd is waited on with poll(2).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// let (kernel, device) = connect(TransportKind::Seqpacket, WireFormat::V3).unwrap();
    /// drop(kernel);
    /// assert_eq!(device.recv_command().unwrap(), None);
    /// ```
    pub fn recv_command(&self) -> Result<Option<Command>, ServeError> {
        let mut buf = [0u8; 2 * MESSAGE_SIZE];
        let fd = self.cmd.as_fd();
        let got = if self.cmd_kind == FdKind::Seqpacket {
            let n = read_once(fd, self.cmd_kind, &mut buf)
                .map_err(|e| ServeError::Io { op: "read a command", source: e })?;
            if n == 0 {
                return Ok(None);
            }
            if n != MESSAGE_SIZE {
                return Err(ServeError::MessageSize { got: n });
            }
            n
        } else {
            let mut got = 0;
            while got < MESSAGE_SIZE {
                let n = read_once(fd, self.cmd_kind, &mut buf[got..MESSAGE_SIZE])
                    .map_err(|e| ServeError::Io { op: "read a command", source: e })?;
                if n == 0 {
                    if got == 0 {
                        return Ok(None);
                    }
                    return Err(ServeError::Truncated { got });
                }
                got += n;
            }
            got
        };
        let image = &buf[..got];
        Command::decode(self.format, image)
            .map(Some)
            .map_err(|error| ServeError::Malformed { error, bytes: image.try_into().unwrap_or([0; MESSAGE_SIZE]) })
    }

    /// Writes one 32-byte response, all of it (short writes resumed, EINTR restarted).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::{Response, WireFormat};
    /// use std::time::Duration;
    /// let (kernel, device) = connect(TransportKind::Fifo, WireFormat::Seed).unwrap();
    /// device.send_response(&Response { data: 7 }).unwrap();
    /// assert_eq!(kernel.recv_response(Duration::from_secs(5)).unwrap(), Response { data: 7 });
    /// ```
    pub fn send_response(&self, response: &Response) -> Result<(), ServeError> {
        write_all(self.resp_fd(), self.resp_kind, &response.encode())
            .map_err(|e| ServeError::Io { op: "write a response", source: e })
    }
}
