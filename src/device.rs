//! The device side of ioregionfd: what a VMM's device task does with the commands KVM sends.
//!
//! [`IoregionDevice`] is what a device implements (read or write at an offset of a region that
//! `user_data` names); [`MemoryDevice`] is the built-in one (reads return the last value written
//! at that offset, else 0). [`ServedDevice`] runs a device on the model's in-memory files for the
//! sequential model: it reads whole 32-byte commands (reassembling short reads), answers those
//! that want a response, and never answers a posted write.
//!
//! ```
//! use ioregionfd_model::device::{IoregionDevice, MemoryDevice};
//! let mut d = MemoryDevice::default();
//! d.write(7, 0x10, 4, 0xabcd);
//! assert_eq!(d.read(7, 0x10, 4), 0xabcd);
//! assert_eq!(d.read(8, 0x10, 4), 0); // another region
//! ```

use crate::fd::File;
use crate::fd::channel::{Transfer, Wait};
use crate::invariants::WIRE;
use crate::sync::Arc;
use crate::trace::Recorder;
use crate::wire::{Command, Direction, MESSAGE_SIZE, Response, WireFormat};
use std::collections::HashMap;
use std::fmt;

/// A device that serves ioregion accesses.
pub trait IoregionDevice: Send {
    /// A read of `size` bytes at `offset` of the region `user_data` names.
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64;
    /// A write of the low `size` bytes of `value`.
    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64);
}

/// What a model device does with one whole 32-byte `message` it read from `from`, whose bytes
/// carried the ghost `tags`: a message made of bytes of more than one command is a `wire`
/// violation (a resend after a partial write does that); the delivery is entered in the ledger
/// (`exactly-once`, and `order` among the commands that came over the same channel); a message
/// that does not decode in `format` is a `wire` violation and `None`.
pub fn receive_model_command(
    rec: &Recorder,
    from: &File,
    format: WireFormat,
    message: &[u8],
    tags: &[crate::fd::channel::Tag],
) -> Option<(Command, Option<crate::fd::channel::Tag>)> {
    if tags.len() > 1 {
        let list: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        rec.violation(&WIRE, format_args!("a 32-byte message on the wire is made of bytes of {}", list.join(" and ")));
    }
    let tag = tags.first().copied();
    if let Some(t) = tag {
        let channel = from.read_channel().map_or(0, |c| Arc::as_ptr(c) as usize as u64);
        rec.delivered(t, channel);
    }
    match Command::decode(format, message) {
        Ok(c) => {
            rec.event(None, format_args!("device reads {c}"));
            Some((c, tag))
        }
        Err(e) => {
            rec.violation(&WIRE, format_args!("the device reads a malformed command: {e} ({message:02x?})"));
            None
        }
    }
}

/// The built-in device: remembers the last value written at each offset of each region.
#[derive(Debug, Default, Clone)]
pub struct MemoryDevice {
    cells: HashMap<(u64, u64), u64>,
}

fn low_bytes(value: u64, size: usize) -> u64 {
    if size >= 8 { value } else { value & ((1u64 << (8 * size)) - 1) }
}

impl IoregionDevice for MemoryDevice {
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64 {
        low_bytes(self.cells.get(&(user_data, offset)).copied().unwrap_or(0), size)
    }

    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) {
        self.cells.insert((user_data, offset), low_bytes(value, size));
    }
}

/// A device served on model files: commands come from `cmd`, responses go to `resp` (the same
/// file for a socket; the ioregionfd itself for the seed design).
pub struct ServedDevice {
    cmd: Arc<File>,
    resp: Arc<File>,
    format: WireFormat,
    device: Box<dyn IoregionDevice>,
    partial: Vec<u8>,
    partial_tags: Vec<crate::fd::channel::Tag>,
    stopped: bool,
}

impl fmt::Debug for ServedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServedDevice(cmd {}, resp {})", self.cmd, self.resp)
    }
}

impl ServedDevice {
    /// Serves `device` on `cmd`/`resp`, speaking `format`; the caller has taken a reference on
    /// each file for it (dropped when it stops).
    pub fn new(cmd: Arc<File>, resp: Arc<File>, format: WireFormat, device: Box<dyn IoregionDevice>) -> Self {
        ServedDevice { cmd, resp, format, device, partial: Vec::new(), partial_tags: Vec::new(), stopped: false }
    }

    /// Whether it stopped (end of file on its command file).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Handles every whole command waiting, without blocking; returns how many it handled.
    pub fn run(&mut self, rec: &Recorder) -> usize {
        let mut handled = 0;
        while !self.stopped {
            let mut buf = [0u8; MESSAGE_SIZE];
            let want = MESSAGE_SIZE - self.partial.len();
            match self.cmd.read_tagged(rec, &mut buf[..want], &Wait::Never) {
                (Transfer::Done(0), _) => self.stop(rec),
                (Transfer::Done(n), tags) => {
                    self.partial.extend_from_slice(&buf[..n]);
                    for t in tags {
                        if self.partial_tags.last() != Some(&t) {
                            self.partial_tags.push(t);
                        }
                    }
                    if self.partial.len() == MESSAGE_SIZE {
                        let message = std::mem::take(&mut self.partial);
                        let tags = std::mem::take(&mut self.partial_tags);
                        self.handle(rec, &message, &tags);
                        handled += 1;
                    }
                }
                (Transfer::Failed(_) | Transfer::WouldBlock { .. }, _) => break,
            }
        }
        handled
    }

    fn handle(&mut self, rec: &Recorder, message: &[u8], tags: &[crate::fd::channel::Tag]) {
        let Some((cmd, tag)) = receive_model_command(rec, &self.cmd, self.format, message, tags) else { return };
        let value = match cmd.direction {
            Direction::Read => self.device.read(cmd.user_data, cmd.offset, cmd.size()),
            Direction::Write => {
                self.device.write(cmd.user_data, cmd.offset, cmd.size(), cmd.data);
                0
            }
        };
        if !cmd.wants_response() {
            return;
        }
        let t = self.resp.write_tagged(rec, &Response { data: value }.encode(), &Wait::Never, tag);
        rec.event(None, format_args!("device responds {value:#x}: {t:?}"));
    }

    fn stop(&mut self, rec: &Recorder) {
        if !self.stopped {
            self.stopped = true;
            rec.event(None, format_args!("device on {} sees end of file and stops", self.cmd));
            self.cmd.put(rec);
            self.resp.put(rec);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Real file descriptors (Linux). Everything below works on fds the operating system gave out;
// the in-memory model above never touches them.
// ---------------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
pub use real::*;

#[cfg(target_os = "linux")]
mod real {
    use super::IoregionDevice;
    use crate::wire::{Command, Direction, MESSAGE_SIZE, Response, WireError, WireFormat};
    use std::ffi::CString;
    use std::fmt;
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

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

    // ----- small syscall helpers (the only unsafe code of the device library) -----

    fn last_error() -> io::Error {
        io::Error::last_os_error()
    }

    fn is_eintr(e: &io::Error) -> bool {
        e.raw_os_error() == Some(libc::EINTR)
    }

    fn is_eagain(e: &io::Error) -> bool {
        matches!(e.raw_os_error(), Some(libc::EAGAIN))
    }

    /// Waits until `fd` reports one of `events` (or an error or hangup). `None` waits forever;
    /// `Ok(false)` is a timeout. Signals (EINTR) restart the wait with the time left.
    pub(crate) fn poll_fd(fd: BorrowedFd<'_>, events: libc::c_short, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ms: libc::c_int = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up so that a wait of less than a millisecond still waits.
                    let ms = left.as_micros().div_ceil(1000);
                    ms.min(libc::c_int::MAX as u128) as libc::c_int
                }
            };
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
            // SAFETY: `p` is one valid pollfd and the count is 1.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r > 0 {
                return Ok(true);
            }
            if r < 0 {
                let e = last_error();
                if is_eintr(&e) {
                    continue;
                }
                return Err(e);
            }
            if ms == 0 {
                return Ok(false);
            }
        }
    }

    /// How bytes move on an fd.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum FdKind {
        /// A `SOCK_SEQPACKET` socket: one read is one message.
        Seqpacket,
        /// Another socket (`SOCK_STREAM`): `send(MSG_NOSIGNAL)` avoids SIGPIPE.
        Socket,
        /// A pipe, a FIFO or anything else read and written with read(2)/write(2).
        Other,
    }

    /// What `fd` is; fails with `EBADF` when it is not open.
    fn fd_kind(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
        // SAFETY: an all-zero `stat` is a valid value to be overwritten.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid, writable stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(last_error());
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Ok(FdKind::Other);
        }
        let mut ty: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `ty` and `len` are valid for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE, (&raw mut ty).cast(), &mut len)
        };
        if r < 0 {
            return Err(last_error());
        }
        Ok(if ty == libc::SOCK_SEQPACKET { FdKind::Seqpacket } else { FdKind::Socket })
    }

    /// One read(2) (or, on a seqpacket socket, one recv(2) that reports the message's real size
    /// with `MSG_TRUNC`). Restarts on EINTR; on EAGAIN (an `O_NONBLOCK` fd) waits with poll.
    fn read_once(fd: BorrowedFd<'_>, kind: FdKind, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let r = match kind {
                // SAFETY: `buf` is valid for `buf.len()` bytes of writes; MSG_TRUNC only changes
                // the returned count, never how much is written.
                FdKind::Seqpacket => unsafe {
                    libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC)
                },
                // SAFETY: as above.
                _ => unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) },
            };
            if r >= 0 {
                return Ok(r as usize);
            }
            let e = last_error();
            if is_eintr(&e) {
                continue;
            }
            if is_eagain(&e) {
                poll_fd(fd, libc::POLLIN, None)?;
                continue;
            }
            return Err(e);
        }
    }

    /// Writes all of `buf`, resuming after short writes, EINTR and EAGAIN. Sockets are written
    /// with `MSG_NOSIGNAL`, so a closed peer is `EPIPE` without a SIGPIPE.
    fn write_all(fd: BorrowedFd<'_>, kind: FdKind, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let r = match kind {
                // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
                FdKind::Other => unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) },
                // SAFETY: as above.
                _ => unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) },
            };
            if r < 0 {
                let e = last_error();
                if is_eintr(&e) {
                    continue;
                }
                if is_eagain(&e) {
                    poll_fd(fd, libc::POLLOUT, None)?;
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write(2) wrote nothing"));
            }
            buf = &buf[r as usize..];
        }
        Ok(())
    }

    /// Bytes waiting to be read on `fd` (`FIONREAD`).
    fn bytes_waiting(fd: BorrowedFd<'_>) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer given.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
            return Err(last_error());
        }
        Ok(n.max(0) as usize)
    }

    /// Sets or clears `FD_CLOEXEC`.
    pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
        // SAFETY: F_GETFD/F_SETFD take and return plain ints; a bad fd is EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(last_error());
        }
        let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
        // SAFETY: as above.
        if new != flags && unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
        // SAFETY: F_GETFL/F_SETFL take and return plain ints.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(last_error());
        }
        let new = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new) } < 0 {
            return Err(last_error());
        }
        Ok(())
    }

    /// `socketpair(AF_UNIX, ty | SOCK_CLOEXEC)`.
    fn socketpair(ty: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` has room for the two fds the call writes.
        if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } < 0 {
            return Err(last_error());
        }
        // SAFETY: both fds were just created and are owned by nothing else.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// `pipe2(O_CLOEXEC)`: (read end, write end).
    fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [-1; 2];
        // SAFETY: `fds` has room for the two fds the call writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(last_error());
        }
        // SAFETY: both fds were just created and are owned by nothing else.
        Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
    }

    /// A fresh private directory under the temporary directory.
    fn private_dir() -> io::Result<PathBuf> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let dir = base.join(format!("ioregionfd-{}-{n}-{nanos}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(io::ErrorKind::AlreadyExists, "no fresh temporary directory"))
    }

    /// mkfifo at `path`, opened as (read end, write end), both blocking and close-on-exec. The
    /// read end is opened first with O_NONBLOCK (an open for reading alone would wait for a
    /// writer), then made blocking.
    fn fifo_at(path: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "FIFO path contains a NUL byte"))?;
        // SAFETY: `c` is a NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } < 0 {
            return Err(last_error());
        }
        let r: OwnedFd = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?.into();
        let w: OwnedFd = std::fs::OpenOptions::new().write(true).open(path)?.into();
        set_nonblocking(r.as_fd(), false)?;
        Ok((r, w))
    }

    /// Two FIFOs in a private directory, opened, then unlinked: (cmd read, cmd write, resp read,
    /// resp write).
    fn fifo_pair() -> io::Result<(OwnedFd, OwnedFd, OwnedFd, OwnedFd)> {
        let dir = private_dir()?;
        let result = (|| {
            let (cr, cw) = fifo_at(&dir.join("cmd"))?;
            let (rr, rw) = fifo_at(&dir.join("resp"))?;
            Ok((cr, cw, rr, rw))
        })();
        let _ = std::fs::remove_file(dir.join("cmd"));
        let _ = std::fs::remove_file(dir.join("resp"));
        let _ = std::fs::remove_dir(&dir);
        result
    }

    // ----- transports -----

    /// The kinds of fd pair that connect KVM (the kernel side) and a device.
    ///
    /// ```
    /// use ioregionfd_model::device::TransportKind;
    /// assert_eq!(TransportKind::from_name("seqpacket"), Some(TransportKind::Seqpacket));
    /// assert_eq!(TransportKind::ALL.len(), 4);
    /// assert_eq!(TransportKind::Pipe.to_string(), "pipe");
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum TransportKind {
        /// `socketpair(AF_UNIX, SOCK_STREAM)`: one fd each, both directions; bytes, no message
        /// boundaries.
        Stream,
        /// `socketpair(AF_UNIX, SOCK_SEQPACKET)`: one fd each; every write is one message.
        Seqpacket,
        /// Two pipes: commands one way, responses the other.
        Pipe,
        /// Two FIFOs (named pipes), made in a private temporary directory, opened, unlinked.
        Fifo,
    }

    impl TransportKind {
        /// Every kind, in the order the tools list them.
        ///
        /// ```
        /// use ioregionfd_model::device::TransportKind;
        /// let names: Vec<_> = TransportKind::ALL.iter().map(|k| k.name()).collect();
        /// assert_eq!(names, ["stream", "seqpacket", "pipe", "fifo"]);
        /// ```
        pub const ALL: [TransportKind; 4] =
            [TransportKind::Stream, TransportKind::Seqpacket, TransportKind::Pipe, TransportKind::Fifo];

        /// Name as the command line writes it.
        ///
        /// ```
        /// assert_eq!(ioregionfd_model::device::TransportKind::Stream.name(), "stream");
        /// ```
        pub fn name(self) -> &'static str {
            match self {
                TransportKind::Stream => "stream",
                TransportKind::Seqpacket => "seqpacket",
                TransportKind::Pipe => "pipe",
                TransportKind::Fifo => "fifo",
            }
        }

        /// The kind with this [`name`](Self::name).
        ///
        /// ```
        /// use ioregionfd_model::device::TransportKind;
        /// assert_eq!(TransportKind::from_name("fifo"), Some(TransportKind::Fifo));
        /// assert_eq!(TransportKind::from_name("tcp"), None);
        /// ```
        pub fn from_name(name: &str) -> Option<TransportKind> {
            TransportKind::ALL.into_iter().find(|k| k.name() == name)
        }

        /// What it is made of, for reports.
        ///
        /// ```
        /// use ioregionfd_model::device::TransportKind;
        /// assert!(TransportKind::Seqpacket.describe().contains("SOCK_SEQPACKET"));
        /// ```
        pub fn describe(self) -> &'static str {
            match self {
                TransportKind::Stream => "socketpair(AF_UNIX, SOCK_STREAM)",
                TransportKind::Seqpacket => "socketpair(AF_UNIX, SOCK_SEQPACKET)",
                TransportKind::Pipe => "a pipe pair",
                TransportKind::Fifo => "a FIFO pair",
            }
        }
    }

    impl fmt::Display for TransportKind {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.name())
        }
    }

    /// The device's end of a connection: commands are read from one fd, responses written to
    /// the same fd (a socket) or to another (a pipe or FIFO pair).
    ///
    /// Get one from [`connect`] (both ends in this process), from [`Transport::from_env`] (a
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
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{var}={value:?} is not a file descriptor number"),
            )),
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
            // ENV_TAKEN flag makes this the only place in the process that takes ownership.
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
    pub fn serve<D: IoregionDevice + ?Sized>(
        transport: &Transport,
        device: &mut D,
    ) -> Result<ServeSummary, ServeError> {
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
                ResponseError::Timeout { got, waited } => write!(
                    f,
                    "short response: {got} of {MESSAGE_SIZE} bytes, then nothing for {} ms",
                    waited.as_millis()
                ),
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
                if !poll_fd(fd, libc::POLLIN, Some(timeout)).map_err(ResponseError::Io)? {
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
            if !poll_fd(fd, libc::POLLIN, Some(wait))? {
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
                let ty = if kind == TransportKind::Stream { libc::SOCK_STREAM } else { libc::SOCK_SEQPACKET };
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
}

/// The conformance suite behind `ioregionfd-model conform`: plays the kernel side over real fds
/// against a device (a child process or a thread) and checks the protocol.
///
/// Every check prints one line (`ok   NAME: detail` or `FAIL NAME: what went wrong`). The suite
/// covers every access size in both directions, posted and non-posted writes, several regions
/// (`user_data` values that differ only in their high bits) and offsets, in-order delivery of
/// bursts and of pipelined reads, that posted writes get no reply, that every response is
/// exactly 32 bytes with zero padding, a long random sequence against a reference, and what the
/// device does when the kernel side closes (idle, after posted writes, in the middle of a
/// command). Value checks assume memory semantics: a read returns the low `size` bytes of the
/// last value written at the same region and offset (0 if none); turn them off with
/// [`conform::Options::memory`](crate::device::conform::Options::memory) for devices that are not memory-like.
///
/// A device that fails a check is restarted for the next one (a broken reply can leave the
/// stream out of step), so each failure is reported on its own.
///
/// ```
/// use ioregionfd_model::device::conform::{run, Launch, Options};
/// use ioregionfd_model::device::{MemoryDevice, TransportKind};
/// use ioregionfd_model::wire::WireFormat;
/// use std::time::Duration;
/// let options = Options { quiet: Duration::from_millis(5), ..Options::new(WireFormat::V3, TransportKind::Seqpacket) };
/// let mut out = Vec::new();
/// let summary = run(&options, &Launch::Thread(|| Box::new(MemoryDevice::default())), &mut out).unwrap();
/// assert_eq!(summary.failed, 0, "{}", String::from_utf8_lossy(&out));
/// assert!(summary.passed > 20);
/// ```
#[cfg(target_os = "linux")]
pub mod conform {
    use super::{
        ENV_CMD_FD, ENV_FORMAT, ENV_RESP_FD, ENV_TRANSPORT, IoregionDevice, KernelSide, ResponseError, ServeError,
        ServeSummary, TransportKind, connect, serve,
    };
    use crate::wire::{Command, Direction, MESSAGE_SIZE, WireFormat};
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::fmt;
    use std::io::{self, Write};
    use std::os::fd::{AsRawFd, RawFd};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Stdio};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// What to check, and how patiently.
    ///
    /// ```
    /// use ioregionfd_model::device::conform::Options;
    /// use ioregionfd_model::device::TransportKind;
    /// use ioregionfd_model::wire::WireFormat;
    /// let o = Options::new(WireFormat::Seed, TransportKind::Pipe);
    /// assert!(o.memory);
    /// assert_eq!(o.timeout.as_millis(), 1000);
    /// ```
    #[derive(Clone, Debug)]
    pub struct Options {
        /// The wire format to speak.
        pub format: WireFormat,
        /// The transport to connect the device with.
        pub transport: TransportKind,
        /// How long to wait for a response (and for the device to exit once the kernel side
        /// closed).
        pub timeout: Duration,
        /// How long to listen for a reply that must not come (after a posted write).
        pub quiet: Duration,
        /// Check values with memory semantics (see the module documentation).
        pub memory: bool,
        /// Run only the checks whose name contains this.
        pub only: Option<String>,
    }

    impl Options {
        /// The defaults for `format` over `transport`: 1 s timeout, 50 ms quiet window, memory
        /// checks on, every check.
        ///
        /// ```
        /// use ioregionfd_model::device::conform::Options;
        /// use ioregionfd_model::device::TransportKind;
        /// use ioregionfd_model::wire::WireFormat;
        /// assert_eq!(Options::new(WireFormat::V3, TransportKind::Fifo).quiet.as_millis(), 50);
        /// ```
        pub fn new(format: WireFormat, transport: TransportKind) -> Options {
            Options {
                format,
                transport,
                timeout: Duration::from_secs(1),
                quiet: Duration::from_millis(50),
                memory: true,
                only: None,
            }
        }
    }

    /// How to start the device under test.
    ///
    /// ```
    /// use ioregionfd_model::device::conform::Launch;
    /// use ioregionfd_model::device::MemoryDevice;
    /// let thread = Launch::Thread(|| Box::new(MemoryDevice::default()));
    /// let process = Launch::Command(vec!["./my-device".into(), "--verbose".into()]);
    /// assert_eq!(process.to_string(), "./my-device --verbose");
    /// assert_eq!(thread.to_string(), "an in-process device thread");
    /// ```
    pub enum Launch {
        /// A program and its arguments, started once per device session with the fds inherited
        /// and named in the environment: `IOREGIONFD_CMD_FD`, `IOREGIONFD_RESP_FD`,
        /// `IOREGIONFD_FORMAT`, `IOREGIONFD_TRANSPORT`. Its standard output goes to the
        /// harness's standard error; its standard input is empty.
        Command(Vec<OsString>),
        /// A device served with [`serve`] on a thread of this process.
        Thread(fn() -> Box<dyn IoregionDevice>),
    }

    impl fmt::Display for Launch {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Launch::Command(argv) => {
                    let words: Vec<_> = argv.iter().map(|a| a.to_string_lossy()).collect();
                    f.write_str(&words.join(" "))
                }
                Launch::Thread(_) => f.write_str("an in-process device thread"),
            }
        }
    }

    /// Counts of one [`run`].
    ///
    /// ```
    /// use ioregionfd_model::device::conform::Summary;
    /// let s = Summary { passed: 3, failed: 1 };
    /// assert!(!s.ok());
    /// assert_eq!(s.to_string(), "3 passed, 1 failed");
    /// ```
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Summary {
        /// Checks that passed.
        pub passed: usize,
        /// Checks that failed.
        pub failed: usize,
    }

    impl Summary {
        /// No check failed.
        ///
        /// ```
        /// assert!(ioregionfd_model::device::conform::Summary { passed: 1, failed: 0 }.ok());
        /// ```
        pub fn ok(&self) -> bool {
            self.failed == 0
        }
    }

    impl fmt::Display for Summary {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{} passed, {} failed", self.passed, self.failed)
        }
    }

    enum Device {
        Child(Child),
        Thread(JoinHandle<Result<ServeSummary, ServeError>>),
    }

    /// How a device ended.
    enum Ended {
        Status(std::process::ExitStatus),
        Served(Result<ServeSummary, ServeError>),
        Panicked,
        /// A device thread that finished (its result is read when it is joined).
        ThreadDone,
        StillRunning,
    }

    impl fmt::Display for Ended {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Ended::Status(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => write!(f, "exited with status {c}"),
                    (None, Some(sig)) => write!(f, "was killed by signal {sig}"),
                    _ => write!(f, "ended ({s})"),
                },
                Ended::Served(Ok(s)) => write!(f, "serve returned Ok after {s}"),
                Ended::Served(Err(e)) => write!(f, "serve returned an error: {e}"),
                Ended::Panicked => f.write_str("thread panicked"),
                Ended::ThreadDone => f.write_str("thread has ended"),
                Ended::StillRunning => f.write_str("is still running"),
            }
        }
    }

    impl Ended {
        /// A clean stop: exit status 0, or serve returning `Ok`.
        fn clean(&self) -> bool {
            match self {
                Ended::Status(s) => s.success(),
                Ended::Served(r) => r.is_ok(),
                _ => false,
            }
        }

        /// Stopped on its own, by an exit or a return (not a signal, not a panic, not a hang).
        fn stopped(&self) -> bool {
            match self {
                Ended::Status(s) => s.code().is_some(),
                Ended::Served(_) => true,
                _ => false,
            }
        }
    }

    impl Device {
        /// How it ended, if it has.
        fn poll(&mut self) -> Option<Ended> {
            match self {
                Device::Child(c) => match c.try_wait() {
                    Ok(Some(s)) => Some(Ended::Status(s)),
                    _ => None,
                },
                Device::Thread(h) => h.is_finished().then_some(Ended::ThreadDone),
            }
        }

        /// Waits up to `timeout` for it to end; kills a child that does not.
        fn finish(self, timeout: Duration) -> Ended {
            let deadline = Instant::now() + timeout;
            match self {
                Device::Child(mut c) => loop {
                    if let Ok(Some(s)) = c.try_wait() {
                        return Ended::Status(s);
                    }
                    if Instant::now() >= deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        return Ended::StillRunning;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                },
                Device::Thread(h) => loop {
                    if h.is_finished() {
                        return match h.join() {
                            Ok(r) => Ended::Served(r),
                            Err(_) => Ended::Panicked,
                        };
                    }
                    if Instant::now() >= deadline {
                        // A thread cannot be killed: leave it; it ends when its fds do.
                        return Ended::StillRunning;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                },
            }
        }
    }

    struct Session {
        kernel: KernelSide,
        device: Device,
    }

    fn start(options: &Options, launch: &Launch) -> io::Result<Session> {
        let (kernel, transport) = connect(options.transport, options.format)?;
        let device = match launch {
            Launch::Thread(make) => {
                let mut dev = make();
                Device::Thread(std::thread::spawn(move || serve(&transport, dev.as_mut())))
            }
            Launch::Command(argv) => {
                let Some((program, args)) = argv.split_first() else {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "no device command given"));
                };
                let cmd_fd: RawFd = transport.cmd_fd().as_raw_fd();
                let resp_fd: RawFd = transport.resp_fd().as_raw_fd();
                let stdout = io::stderr().lock();
                let out: Stdio = match std::os::fd::AsFd::as_fd(&stdout).try_clone_to_owned() {
                    Ok(fd) => fd.into(),
                    Err(_) => Stdio::null(),
                };
                drop(stdout);
                let mut command = std::process::Command::new(program);
                command
                    .args(args)
                    .env(ENV_CMD_FD, cmd_fd.to_string())
                    .env(ENV_RESP_FD, resp_fd.to_string())
                    .env(ENV_FORMAT, options.format.name())
                    .env(ENV_TRANSPORT, options.transport.name())
                    .stdin(Stdio::null())
                    .stdout(out);
                // SAFETY: the closure runs in the child between fork and exec and only calls
                // fcntl(2), which is async-signal-safe; it allocates nothing and takes no lock.
                unsafe {
                    command.pre_exec(move || {
                        for fd in [cmd_fd, resp_fd] {
                            let flags = libc::fcntl(fd, libc::F_GETFD);
                            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                                return Err(io::Error::last_os_error());
                            }
                        }
                        Ok(())
                    });
                }
                let child = command.spawn().map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot start `{}`: {e}", program.to_string_lossy()))
                })?;
                // The parent's copies of the device's fds close here, so that the device is the
                // only holder of its end (end of file then reaches each side).
                drop(transport);
                Device::Child(child)
            }
        };
        Ok(Session { kernel, device })
    }

    /// A check's view: the kernel side, the device (to say how it ended), the options.
    struct Ctx<'a> {
        kernel: &'a KernelSide,
        device: &'a mut Device,
        options: &'a Options,
        round_trips: usize,
    }

    fn mask(size: usize) -> u64 {
        if size >= 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 }
    }

    fn exponent(size: usize) -> u8 {
        size.trailing_zeros() as u8
    }

    impl Ctx<'_> {
        fn read_cmd(&self, user_data: u64, offset: u64, size: usize) -> Command {
            Command {
                direction: Direction::Read,
                size_exponent: exponent(size),
                // Seed reads leave the bit clear, v3 reads set it (what each kernel sends).
                resp: self.options.format == WireFormat::V3,
                user_data,
                offset,
                data: 0,
            }
        }

        fn write_cmd(&self, user_data: u64, offset: u64, size: usize, value: u64, posted: bool) -> Command {
            Command {
                direction: Direction::Write,
                size_exponent: exponent(size),
                resp: !posted,
                user_data,
                offset,
                data: value & mask(size),
            }
        }

        /// Adds what happened to the device to a failure message.
        fn explain(&mut self, what: String) -> String {
            std::thread::sleep(Duration::from_millis(2));
            match self.device.poll() {
                Some(ended) => format!("{what} (the device {ended})"),
                None => what,
            }
        }

        fn send(&mut self, cmd: &Command) -> Result<(), String> {
            self.kernel.send(cmd).map_err(|e| {
                let what = format!("cannot send `{cmd}`: {e}");
                self.explain(what)
            })
        }

        fn response(&mut self, cmd: &Command) -> Result<u64, String> {
            match self.kernel.recv_response(self.options.timeout) {
                Ok(r) => {
                    self.round_trips += 1;
                    Ok(r.data)
                }
                Err(e) => {
                    let hint = match e {
                        ResponseError::Size { .. } | ResponseError::Timeout { got: 1.., .. } => {
                            " (KVM reads a response with one 32-byte read: anything shorter fails the access)"
                        }
                        ResponseError::Malformed(_) => {
                            " (a response is 8 bytes of data and 24 zero bytes: a short or extra response puts the stream out of step)"
                        }
                        _ => "",
                    };
                    let what = format!("`{cmd}`: {e}{hint}");
                    Err(self.explain(what))
                }
            }
        }

        /// Nothing must arrive within the quiet window (after a posted write, or after the
        /// last expected response).
        fn silence(&mut self, after: &str) -> Result<(), String> {
            match self.kernel.pending(self.options.quiet) {
                Ok(None) => Ok(()),
                Ok(Some(0)) => {
                    let what = format!("the device closed its end after {after}");
                    Err(self.explain(what))
                }
                Ok(Some(n)) => Err(format!(
                    "{n} unexpected bytes arrived within {} ms after {after}{}",
                    self.options.quiet.as_millis(),
                    if after.contains("posted") {
                        ": the device answered a posted write (a write without the response bit gets no reply)"
                    } else {
                        ": more than one response per command"
                    }
                )),
                Err(e) => Err(format!("cannot poll the response fd: {e}")),
            }
        }

        fn read(&mut self, user_data: u64, offset: u64, size: usize) -> Result<u64, String> {
            let cmd = self.read_cmd(user_data, offset, size);
            self.send(&cmd)?;
            self.response(&cmd)
        }

        fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) -> Result<(), String> {
            let cmd = self.write_cmd(user_data, offset, size, value, false);
            self.send(&cmd)?;
            self.response(&cmd).map(|_| ())
        }

        fn posted(&mut self, user_data: u64, offset: u64, size: usize, value: u64) -> Result<(), String> {
            let cmd = self.write_cmd(user_data, offset, size, value, true);
            self.send(&cmd)
        }

        /// With memory checks on: `got` must be `want`.
        fn expect(&self, what: &str, got: u64, want: u64, hint: &str) -> Result<(), String> {
            if !self.options.memory || got == want {
                return Ok(());
            }
            // Bytes already waiting after a wrong value usually mean the responses are out of
            // step: an extra reply (to a posted write) came first.
            let extra = match self.kernel.pending(Duration::ZERO) {
                Ok(Some(n)) if n > 0 => {
                    format!(" ({n} more bytes were already waiting: does the device answer posted writes?)")
                }
                _ => String::new(),
            };
            Err(format!("{what} returned {got:#x}, expected {want:#x}{hint}{extra}"))
        }
    }

    type CheckFn = Box<dyn Fn(&mut Ctx<'_>) -> Result<String, String>>;

    /// Region ids (user_data) for the checks: each check its own, distinct in the low 32 bits.
    fn region(n: u64) -> u64 {
        0x5eed_0000 + n
    }

    const PATTERN: u64 = 0x8877_6655_4433_2211;

    fn checks() -> Vec<(String, CheckFn)> {
        let mut v: Vec<(String, CheckFn)> = Vec::new();
        for (i, size) in [1usize, 2, 4, 8].into_iter().enumerate() {
            let r = region(i as u64);
            v.push((
                format!("read/size-{size}"),
                Box::new(move |c| {
                    let got = c.read(r, 0x40, size)?;
                    c.expect(&format!("a {size}-byte read of a never-written offset"), got, 0, "")?;
                    c.silence("a read's response")?;
                    Ok(format!("one 32-byte response, value {got:#x}"))
                }),
            ));
            v.push((
                format!("write/size-{size}"),
                Box::new(move |c| {
                    let value = PATTERN & mask(size);
                    c.write(r, 0x80, size, value)?;
                    c.silence("a non-posted write's response")?;
                    let got = c.read(r, 0x80, size)?;
                    c.expect(&format!("reading back a {size}-byte write of {value:#x}"), got, value, "")?;
                    Ok(format!("answered; reads back {got:#x}"))
                }),
            ));
            v.push((
                format!("posted-write/size-{size}"),
                Box::new(move |c| {
                    let value = !PATTERN & mask(size);
                    c.posted(r, 0xc0, size, value)?;
                    c.silence(&format!("a posted {size}-byte write (user_data {r:#x}, offset 0xc0)"))?;
                    let got = c.read(r, 0xc0, size)?;
                    c.expect(&format!("reading back a posted {size}-byte write of {value:#x}"), got, value, "")?;
                    Ok(format!("no reply within {} ms; reads back {got:#x}", c.options.quiet.as_millis()))
                }),
            ));
        }
        v.push((
            "narrow-reads".into(),
            Box::new(|c| {
                let r = region(10);
                c.write(r, 0x100, 8, PATTERN)?;
                for size in [1usize, 2, 4] {
                    let got = c.read(r, 0x100, size)?;
                    c.expect(&format!("a {size}-byte read of an 8-byte value"), got, PATTERN & mask(size), "")?;
                }
                Ok("1-, 2- and 4-byte reads of an 8-byte value give its low bytes".into())
            }),
        ));
        v.push((
            "user-data".into(),
            Box::new(|c| {
                // Distinct regions whose user_data agree in the low 32 bits, or in the high ones.
                let regions = [7u64, 0x1_0000_0007, 0xdead_beef_0000_0007, u64::MAX, 0xffff_ffff, 0x8000_0000_0000_0000, 0];
                for (i, &r) in regions.iter().enumerate() {
                    c.write(r, 0x18, 8, 0x1111_0000 + i as u64)?;
                }
                for (i, &r) in regions.iter().enumerate() {
                    let got = c.read(r, 0x18, 8)?;
                    let want = 0x1111_0000 + i as u64;
                    let hint = match got.checked_sub(0x1111_0000).map(|j| j as usize) {
                        Some(j) if j < regions.len() && j != i => format!(
                            ": that is the value written to user_data {:#x}, so the device mixes up these regions (does it keep only part of user_data?)",
                            regions[j]
                        ),
                        _ => String::new(),
                    };
                    c.expect(&format!("a read of user_data {r:#x} offset 0x18"), got, want, &hint)?;
                }
                Ok(format!("{} regions kept apart, including user_data that differ only in the high or low 32 bits", regions.len()))
            }),
        ));
        v.push((
            "offsets".into(),
            Box::new(|c| {
                let r = region(11);
                let offsets = [0u64, 8, 0xff8, 0x1000, 0xffff_fff8, 0x1_0000_0000, 0x7fff_ffff_ffff_fff0, u64::MAX - 7];
                for (i, &o) in offsets.iter().enumerate() {
                    c.write(r, o, 8, 0x2222_0000 + i as u64)?;
                }
                for (i, &o) in offsets.iter().enumerate() {
                    let got = c.read(r, o, 8)?;
                    c.expect(&format!("a read at offset {o:#x}"), got, 0x2222_0000 + i as u64, "")?;
                }
                Ok(format!("{} offsets up to {:#x} kept apart", offsets.len(), u64::MAX - 7))
            }),
        ));
        v.push((
            "in-order/posted-burst".into(),
            Box::new(|c| {
                let r = region(12);
                for i in 1..=64u64 {
                    c.posted(r, 0, 4, i)?;
                }
                for i in 0..64u64 {
                    c.posted(r, 8 * (i + 1), 8, 0x3333_0000 + i)?;
                }
                c.silence("128 posted writes")?;
                let got = c.read(r, 0, 4)?;
                c.expect(
                    "a read after 64 posted writes of 1..=64 to one offset",
                    got,
                    64,
                    ": writes were applied out of order or lost",
                )?;
                for i in 0..64u64 {
                    let got = c.read(r, 8 * (i + 1), 8)?;
                    c.expect(
                        &format!("a read of offset {:#x} after a burst of posted writes", 8 * (i + 1)),
                        got,
                        0x3333_0000 + i,
                        "",
                    )?;
                }
                Ok("128 posted writes sent back to back, all applied in order, none answered".into())
            }),
        ));
        v.push((
            "in-order/pipelined-reads".into(),
            Box::new(|c| {
                let r = region(13);
                for i in 0..16u64 {
                    c.posted(r, 8 * i, 8, 0x4444_0000 + i)?;
                }
                c.silence("16 posted writes")?;
                let cmds: Vec<Command> = (0..16u64).map(|i| c.read_cmd(r, 8 * i, 8)).collect();
                for cmd in &cmds {
                    c.send(cmd)?;
                }
                for (i, cmd) in cmds.iter().enumerate() {
                    let got = c.response(cmd)?;
                    c.expect(
                        &format!("response {i} of 16 pipelined reads"),
                        got,
                        0x4444_0000 + i as u64,
                        ": responses out of command order",
                    )?;
                }
                c.silence("16 responses to 16 reads")?;
                Ok("16 reads sent before any response was read; answered in order".into())
            }),
        ));
        v.push((
            "response-size".into(),
            Box::new(|c| {
                let r = region(14);
                for size in [1usize, 2, 4, 8] {
                    c.read(r, 0x200, size)?;
                    c.write(r, 0x208, size, 1)?;
                }
                c.silence("8 responses")?;
                Ok(format!(
                    "8 responses of exactly {MESSAGE_SIZE} bytes with zero padding ({})",
                    if c.kernel.kind() == TransportKind::Seqpacket { "one message each" } else { "no extra bytes" }
                ))
            }),
        ));
        v.push((
            "random-sequence".into(),
            Box::new(|c| {
                // Slots 8 bytes apart, each with a fixed size, so that byte-addressed memory and
                // an offset-keyed device agree.
                let mut model: HashMap<(u64, u64), u64> = HashMap::new();
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let n = 600;
                for step in 0..n {
                    let (a, b, value) = (next(), next(), next());
                    let r = region(20 + a % 3);
                    let slot = b % 24;
                    let (offset, size) = (8 * slot, 1usize << (slot % 4));
                    match a % 5 {
                        0 | 1 => {
                            let got = c.read(r, offset, size)?;
                            let want = model.get(&(r, offset)).copied().unwrap_or(0);
                            c.expect(
                                &format!("step {step}: a {size}-byte read of user_data {r:#x} offset {offset:#x}"),
                                got,
                                want,
                                "",
                            )?;
                        }
                        2 => {
                            c.write(r, offset, size, value)?;
                            model.insert((r, offset), value & mask(size));
                        }
                        _ => {
                            c.posted(r, offset, size, value)?;
                            model.insert((r, offset), value & mask(size));
                        }
                    }
                }
                c.silence("the random sequence")?;
                Ok(format!("{n} mixed accesses agree with the reference ({} round trips)", c.round_trips))
            }),
        ));
        v
    }

    /// What must happen when the kernel side closes: a clean stop at a message boundary, a stop
    /// of any kind (not a hang, not a signal) in the middle of a command.
    enum CloseCase {
        Idle,
        AfterPosted,
        MidCommand,
    }

    fn close_checks() -> Vec<(String, CloseCase)> {
        vec![
            ("close/idle".into(), CloseCase::Idle),
            ("close/after-posted-writes".into(), CloseCase::AfterPosted),
            ("close/mid-command".into(), CloseCase::MidCommand),
        ]
    }

    fn run_close(options: &Options, launch: &Launch, case: &CloseCase) -> Result<String, String> {
        let mut s = start(options, launch).map_err(|e| format!("cannot start the device: {e}"))?;
        let mut c = Ctx { kernel: &s.kernel, device: &mut s.device, options, round_trips: 0 };
        c.read(region(30), 0, 4)?;
        match case {
            CloseCase::Idle => {}
            CloseCase::AfterPosted => {
                for i in 0..8 {
                    c.posted(region(30), 8 * i, 8, i)?;
                }
            }
            CloseCase::MidCommand => {
                let cmd = c.read_cmd(region(30), 0, 4).encode(options.format);
                c.kernel.send_bytes(&cmd[..13]).map_err(|e| format!("cannot send 13 bytes: {e}"))?;
            }
        }
        let Session { kernel, device } = s;
        drop(kernel);
        let ended = device.finish(options.timeout);
        let ms = options.timeout.as_millis();
        match case {
            CloseCase::MidCommand if ended.stopped() => {
                Ok(format!("the device {ended} after a partial command (13 of 32 bytes) and end of file"))
            }
            CloseCase::MidCommand => Err(format!(
                "after 13 bytes of a command and end of file the device {ended} within {ms} ms; it must stop by itself"
            )),
            _ if ended.clean() => Ok(format!("end of file: the device {ended}")),
            _ => Err(format!(
                "the kernel side closed at a message boundary and the device {ended} within {ms} ms; end of file there is a clean stop (exit status 0)"
            )),
        }
    }

    /// Runs the suite once (one format, one transport) against devices started by `launch`,
    /// writing one line per check to `out`. `Err` only when the device cannot be started at all
    /// or `out` fails.
    ///
    /// ```
    /// use ioregionfd_model::device::conform::{run, Launch, Options};
    /// use ioregionfd_model::device::{IoregionDevice, TransportKind};
    /// use ioregionfd_model::wire::WireFormat;
    /// // A device that ignores writes: memory checks fail, the protocol checks pass.
    /// struct Zero;
    /// impl IoregionDevice for Zero {
    ///     fn read(&mut self, _: u64, _: u64, _: usize) -> u64 { 0 }
    ///     fn write(&mut self, _: u64, _: u64, _: usize, _: u64) {}
    /// }
    /// let mut options = Options::new(WireFormat::Seed, TransportKind::Pipe);
    /// options.quiet = std::time::Duration::from_millis(5);
    /// let mut out = Vec::new();
    /// let s = run(&options, &Launch::Thread(|| Box::new(Zero)), &mut out).unwrap();
    /// assert!(s.failed > 0);
    /// options.memory = false;
    /// let s = run(&options, &Launch::Thread(|| Box::new(Zero)), &mut out).unwrap();
    /// assert_eq!(s.failed, 0);
    /// ```
    pub fn run(options: &Options, launch: &Launch, out: &mut dyn Write) -> io::Result<Summary> {
        let mut summary = Summary::default();
        let selected = |name: &str| options.only.as_deref().is_none_or(|o| name.contains(o));
        let mut session: Option<Session> = None;
        let mut report = |out: &mut dyn Write, name: &str, r: Result<String, String>| -> io::Result<()> {
            match r {
                Ok(detail) => {
                    summary.passed += 1;
                    writeln!(out, "ok   {name}: {detail}")
                }
                Err(msg) => {
                    summary.failed += 1;
                    writeln!(out, "FAIL {name}: {msg}")
                }
            }
        };
        for (name, check) in checks() {
            if !selected(&name) {
                continue;
            }
            if session.is_none() {
                session = Some(start(options, launch)?);
            }
            let s = session.as_mut().expect("started above");
            let mut ctx = Ctx { kernel: &s.kernel, device: &mut s.device, options, round_trips: 0 };
            let r = check(&mut ctx);
            if r.is_err() {
                // The stream may be out of step now: the next check gets a fresh device.
                if let Some(Session { kernel, device }) = session.take() {
                    drop(kernel);
                    device.finish(options.timeout);
                }
            }
            report(out, &name, r)?;
        }
        if let Some(Session { kernel, device }) = session.take() {
            drop(kernel);
            device.finish(options.timeout);
        }
        for (name, case) in close_checks() {
            if selected(&name) {
                let r = run_close(options, launch, &case);
                report(out, &name, r)?;
            }
        }
        Ok(summary)
    }
}
