//! KVM's end of a connection, played in userspace (tests, benchmarks, the conformance harness).

use super::sys::{FdKind, bytes_waiting, fd_kind, fifo_pair, pipe, poll_fd, read_once, socketpair, write_all};
use super::transport::{Transport, TransportKind};
use crate::wire::{Command, MESSAGE_SIZE, Response, WireError, WireFormat};
use rustix::event::PollFlags;
use rustix::net::SocketType;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// KVM's end of a connection, played in userspace: writes commands, reads responses.
///
/// ```
/// use ioregionfd_model::device::{connect, TransportKind};
/// use ioregionfd_model::wire::WireFormat;
/// let (kernel, _device) = connect(TransportKind::Seqpacket, WireFormat::V3).unwrap();
/// assert_eq!(kernel.kind(), TransportKind::Seqpacket);
/// ```
#[derive(Debug)]
pub struct KernelSide {
    cmd: OwnedFd,
    resp: Option<OwnedFd>,
    cmd_kind: FdKind,
    resp_kind: FdKind,
    kind: TransportKind,
    format: WireFormat,
}

/// Why [`KernelSide::recv_response`] did not return a response.
///
/// ```
/// use ioregionfd_model::device::ResponseError;
/// use std::time::Duration;
/// let e = ResponseError::Timeout { got: 16, waited: Duration::from_millis(100) };
/// assert_eq!(e.to_string(), "short response: 16 of 32 bytes, then nothing for 100 ms");
/// ```
#[derive(Debug)]
pub enum ResponseError {
    /// Nothing complete within the time allowed.
    Timeout {
        /// Bytes that had arrived.
        got: usize,
        /// How long it waited.
        waited: Duration,
    },
    /// End of file: the device closed its end.
    Closed {
        /// Bytes of a response that had arrived before.
        got: usize,
    },
    /// A `SOCK_SEQPACKET` message that is not 32 bytes.
    Size {
        /// Its size.
        got: usize,
    },
    /// Nonzero padding.
    Malformed(WireError),
    /// A system call failed.
    Io(io::Error),
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Timeout { got: 0, waited } => write!(f, "no response within {} ms", waited.as_millis()),
            ResponseError::Timeout { got, waited } => {
                write!(f, "short response: {got} of {MESSAGE_SIZE} bytes, then nothing for {} ms", waited.as_millis())
            }
            ResponseError::Closed { got: 0 } => f.write_str("the device closed its end instead of responding"),
            ResponseError::Closed { got } => {
                write!(f, "short response: {got} of {MESSAGE_SIZE} bytes, then the device closed its end")
            }
            ResponseError::Size { got } => {
                write!(f, "a response message of {got} bytes; a response is exactly {MESSAGE_SIZE}")
            }
            ResponseError::Malformed(e) => write!(f, "malformed response: {e}"),
            ResponseError::Io(e) => write!(f, "cannot read the response: {e}"),
        }
    }
}

impl std::error::Error for ResponseError {}

impl KernelSide {
    /// The transport kind.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// assert_eq!(connect(TransportKind::Fifo, WireFormat::V3).unwrap().0.kind(), TransportKind::Fifo);
    /// ```
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// The wire format.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// assert_eq!(connect(TransportKind::Pipe, WireFormat::Seed).unwrap().0.format(), WireFormat::Seed);
    /// ```
    pub fn format(&self) -> WireFormat {
        self.format
    }

    /// Writes one command (all 32 bytes).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::{Command, Direction, WireFormat};
    /// let (kernel, device) = connect(TransportKind::Stream, WireFormat::Seed).unwrap();
    /// let cmd = Command { direction: Direction::Write, size_exponent: 0, resp: false, user_data: 0, offset: 0, data: 1 };
    /// kernel.send(&cmd).unwrap();
    /// assert_eq!(device.recv_command().unwrap(), Some(cmd));
    /// ```
    pub fn send(&self, cmd: &Command) -> io::Result<()> {
        self.send_bytes(&cmd.encode(self.format))
    }

    /// Writes raw bytes on the command fd (for malformed or partial commands).
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, ServeError, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// let (kernel, device) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    /// kernel.send_bytes(&[0; 13]).unwrap();
    /// drop(kernel);
    /// assert!(matches!(device.recv_command(), Err(ServeError::Truncated { got: 13 })));
    /// ```
    pub fn send_bytes(&self, bytes: &[u8]) -> io::Result<()> {
        write_all(self.cmd.as_fd(), self.cmd_kind, bytes)
    }

    /// The fd commands are written to.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// use std::os::fd::AsRawFd;
    /// let (kernel, _d) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    /// assert_ne!(kernel.cmd_fd().as_raw_fd(), kernel.resp_fd().as_raw_fd());
    /// ```
    pub fn cmd_fd(&self) -> BorrowedFd<'_> {
        self.cmd.as_fd()
    }

    /// The fd responses are read from.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// use std::os::fd::AsRawFd;
    /// let (kernel, _d) = connect(TransportKind::Pipe, WireFormat::V3).unwrap();
    /// assert!(kernel.resp_fd().as_raw_fd() >= 0);
    /// ```
    pub fn resp_fd(&self) -> BorrowedFd<'_> {
        self.resp.as_ref().unwrap_or(&self.cmd).as_fd()
    }

    /// Reads one response, waiting at most `timeout` for it to start and as long again for
    /// the rest of a partial one.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, ResponseError, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// use std::time::Duration;
    /// let (kernel, _device) = connect(TransportKind::Stream, WireFormat::V3).unwrap();
    /// let e = kernel.recv_response(Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(e, ResponseError::Timeout { got: 0, .. }));
    /// ```
    pub fn recv_response(&self, timeout: Duration) -> Result<Response, ResponseError> {
        let fd = self.resp_fd();
        let mut buf = [0u8; 2 * MESSAGE_SIZE];
        let mut got = 0;
        while got < MESSAGE_SIZE {
            if !poll_fd(fd, PollFlags::IN, Some(timeout)).map_err(ResponseError::Io)? {
                return Err(ResponseError::Timeout { got, waited: timeout });
            }
            let room = if self.resp_kind == FdKind::Seqpacket { &mut buf[..] } else { &mut buf[got..MESSAGE_SIZE] };
            let n = read_once(fd, self.resp_kind, room).map_err(ResponseError::Io)?;
            if n == 0 {
                return Err(ResponseError::Closed { got });
            }
            if self.resp_kind == FdKind::Seqpacket && n != MESSAGE_SIZE {
                return Err(ResponseError::Size { got: n });
            }
            got += n;
        }
        Response::decode(&buf[..MESSAGE_SIZE]).map_err(ResponseError::Malformed)
    }

    /// Waits up to `wait` for anything on the response fd: `Ok(Some(n))` with the bytes
    /// waiting (0 means end of file or an error condition), `Ok(None)` if nothing came.
    ///
    /// ```
    /// use ioregionfd_model::device::{connect, TransportKind};
    /// use ioregionfd_model::wire::{Response, WireFormat};
    /// use std::time::Duration;
    /// let (kernel, device) = connect(TransportKind::Seqpacket, WireFormat::V3).unwrap();
    /// assert_eq!(kernel.pending(Duration::from_millis(5)).unwrap(), None);
    /// device.send_response(&Response { data: 1 }).unwrap();
    /// assert_eq!(kernel.pending(Duration::from_millis(5)).unwrap(), Some(32));
    /// ```
    pub fn pending(&self, wait: Duration) -> io::Result<Option<usize>> {
        let fd = self.resp_fd();
        if !poll_fd(fd, PollFlags::IN, Some(wait))? {
            return Ok(None);
        }
        Ok(Some(bytes_waiting(fd)?))
    }
}

/// Connects a kernel side and a device side over a new transport of `kind`. Every fd is
/// close-on-exec; a launcher that passes the device's fds to a child clears that flag in
/// the child only (as `ioregionfd-model conform` does).
///
/// ```
/// use ioregionfd_model::device::{connect, TransportKind};
/// use ioregionfd_model::wire::WireFormat;
/// for kind in TransportKind::ALL {
///     let (kernel, device) = connect(kind, WireFormat::V3).unwrap();
///     assert_eq!(kernel.kind(), kind);
///     drop(kernel);
///     assert_eq!(device.recv_command().unwrap(), None);
/// }
/// ```
pub fn connect(kind: TransportKind, format: WireFormat) -> io::Result<(KernelSide, Transport)> {
    let (kernel_cmd, kernel_resp, device_cmd, device_resp) = match kind {
        TransportKind::Stream | TransportKind::Seqpacket => {
            let ty = if kind == TransportKind::Stream { SocketType::STREAM } else { SocketType::SEQPACKET };
            let (k, d) = socketpair(ty)?;
            (k, None, d, None)
        }
        TransportKind::Pipe => {
            let (cmd_r, cmd_w) = pipe()?;
            let (resp_r, resp_w) = pipe()?;
            (cmd_w, Some(resp_r), cmd_r, Some(resp_w))
        }
        TransportKind::Fifo => {
            let (cmd_r, cmd_w, resp_r, resp_w) = fifo_pair()?;
            (cmd_w, Some(resp_r), cmd_r, Some(resp_w))
        }
    };
    let cmd_kind = fd_kind(kernel_cmd.as_fd())?;
    let resp_kind = match &kernel_resp {
        Some(fd) => fd_kind(fd.as_fd())?,
        None => cmd_kind,
    };
    let kernel = KernelSide { cmd: kernel_cmd, resp: kernel_resp, cmd_kind, resp_kind, kind, format };
    Ok((kernel, Transport::new(device_cmd, device_resp, format)?))
}
