//! Small system-call helpers of the device library, on rustix (no `unsafe` here but the one
//! `fcntl(2)` on a raw fd number, which says why).

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{Mode, OFlags};
use rustix::io::{Errno, FdFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Waits until one of `fds` reports one of its events (or an error or hangup): `Ok(true)`, and
/// each entry's `revents` says which. `None` waits forever; `Ok(false)` is a timeout. Signals
/// (EINTR) restart the wait with the time left.
pub(super) fn poll_fds(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        // A wait too long for a timespec is a wait without end.
        let left = deadline.and_then(|d| Timespec::try_from(d.saturating_duration_since(Instant::now())).ok());
        match poll(fds, left.as_ref()) {
            Ok(n) if n > 0 => return Ok(true),
            Ok(_) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits until `fd` reports one of `events` (or an error or hangup). `None` waits forever;
/// `Ok(false)` is a timeout. Signals (EINTR) restart the wait with the time left.
pub(super) fn poll_fd(fd: BorrowedFd<'_>, events: PollFlags, timeout: Option<Duration>) -> io::Result<bool> {
    poll_fds(&mut [PollFd::from_borrowed_fd(fd, events)], timeout)
}

/// How bytes move on an fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FdKind {
    /// A `SOCK_SEQPACKET` socket: one read is one message.
    Seqpacket,
    /// Another socket (`SOCK_STREAM`): `send(MSG_NOSIGNAL)` avoids SIGPIPE.
    Socket,
    /// A pipe, a FIFO or anything else read and written with read(2)/write(2).
    Other,
}

/// What `fd` is; fails with `EBADF` when it is not open.
pub(super) fn fd_kind(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    let st = rustix::fs::fstat(fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Ok(FdKind::Other);
    }
    let ty = rustix::net::sockopt::socket_type(fd)?;
    Ok(if ty == SocketType::SEQPACKET { FdKind::Seqpacket } else { FdKind::Socket })
}

/// One read(2) (or, on a seqpacket socket, one recv(2) that reports the message's real size
/// with `MSG_TRUNC`). Restarts on EINTR; on EAGAIN (an `O_NONBLOCK` fd) waits with poll.
pub(super) fn read_once(fd: BorrowedFd<'_>, kind: FdKind, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let r = match kind {
            // MSG_TRUNC only changes the count returned (the message's real size), never how
            // much is written into `buf`.
            FdKind::Seqpacket => rustix::net::recv(fd, &mut *buf, RecvFlags::TRUNC).map(|(_, real)| real),
            _ => rustix::io::read(fd, &mut *buf),
        };
        match r {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                poll_fd(fd, PollFlags::IN, None)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `buf`, resuming after short writes, EINTR and EAGAIN. Sockets are written
/// with `MSG_NOSIGNAL`, so a closed peer is `EPIPE` without a SIGPIPE.
pub(super) fn write_all(fd: BorrowedFd<'_>, kind: FdKind, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let r = match kind {
            FdKind::Other => rustix::io::write(fd, buf),
            _ => rustix::net::send(fd, buf, SendFlags::NOSIGNAL),
        };
        match r {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "write(2) wrote nothing")),
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => {
                poll_fd(fd, PollFlags::OUT, None)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One read attempt that never waits: `Ok(Some(n))` as [`read_once`] would return, `Ok(None)`
/// when the fd has nothing now (`EAGAIN` on an `O_NONBLOCK` fd). Restarts on EINTR. On a
/// blocking fd it blocks unless poll said the fd is readable.
pub(super) fn read_nb(fd: BorrowedFd<'_>, kind: FdKind, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        let r = match kind {
            FdKind::Seqpacket => rustix::net::recv(fd, &mut *buf, RecvFlags::TRUNC).map(|(_, real)| real),
            _ => rustix::io::read(fd, &mut *buf),
        };
        match r {
            Ok(n) => return Ok(Some(n)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// One write attempt that never waits: `Ok(Some(n))` bytes written (perhaps fewer than
/// `buf.len()`), `Ok(None)` when the fd has no room now (`EAGAIN`). Restarts on EINTR; sockets
/// are written with `MSG_NOSIGNAL`.
pub(super) fn write_nb(fd: BorrowedFd<'_>, kind: FdKind, buf: &[u8]) -> io::Result<Option<usize>> {
    loop {
        let r = match kind {
            FdKind::Other => rustix::io::write(fd, buf),
            _ => rustix::net::send(fd, buf, SendFlags::NOSIGNAL),
        };
        match r {
            Ok(0) if !buf.is_empty() => {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write(2) wrote nothing"));
            }
            Ok(n) => return Ok(Some(n)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Bytes waiting to be read on `fd` (`FIONREAD`).
pub(super) fn bytes_waiting(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(usize::try_from(rustix::io::ioctl_fionread(fd)?).unwrap_or(usize::MAX))
}

/// Sets or clears `FD_CLOEXEC` on an fd number that may not be open (a number named in the
/// environment, checked here before anything takes ownership of it).
pub(super) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl(2) with F_GETFD/F_SETFD takes and returns plain ints and touches no memory
    // of this process; a number that is not open is EBADF. Not rustix: its fcntl takes a
    // BorrowedFd, and making one from a number not yet known to be open (BorrowedFd::borrow_raw)
    // would promise what this very call is there to check.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    // SAFETY: as above (the fd was open a moment ago; if it is not, the call fails with EBADF).
    if new != flags && unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clears `FD_CLOEXEC` on an open fd, so that a child started with exec inherits it.
/// Async-signal-safe (two raw system calls, no allocation, no lock): usable between fork and
/// exec.
pub(crate) fn inherit_on_exec(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    rustix::io::fcntl_setfd(fd, flags - FdFlags::CLOEXEC)?;
    Ok(())
}

/// Sets or clears `O_NONBLOCK` on the open file description of `fd`.
pub(super) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    let new = if on { flags | OFlags::NONBLOCK } else { flags - OFlags::NONBLOCK };
    rustix::fs::fcntl_setfl(fd, new)?;
    Ok(())
}

/// `socketpair(AF_UNIX, ty | SOCK_CLOEXEC)`.
pub(super) fn socketpair(ty: SocketType) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)?)
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
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
    rustix::fs::mkfifoat(rustix::fs::CWD, path, Mode::from_raw_mode(0o600))?;
    let r = rustix::fs::open(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC, Mode::empty())?;
    let w = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    set_nonblocking(r.as_fd(), false)?;
    Ok((r, w))
}

/// Two FIFOs in a private directory, opened, then unlinked: (cmd read, cmd write, resp read,
/// resp write).
pub(super) fn fifo_pair() -> io::Result<(OwnedFd, OwnedFd, OwnedFd, OwnedFd)> {
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
