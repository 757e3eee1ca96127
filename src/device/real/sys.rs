//! Small system-call helpers (the only unsafe code of the device library).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
pub(super) fn poll_fd(fd: BorrowedFd<'_>, events: libc::c_short, timeout: Option<Duration>) -> io::Result<bool> {
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
    let r =
        unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TYPE, (&raw mut ty).cast(), &mut len) };
    if r < 0 {
        return Err(last_error());
    }
    Ok(if ty == libc::SOCK_SEQPACKET { FdKind::Seqpacket } else { FdKind::Socket })
}

/// One read(2) (or, on a seqpacket socket, one recv(2) that reports the message's real size
/// with `MSG_TRUNC`). Restarts on EINTR; on EAGAIN (an `O_NONBLOCK` fd) waits with poll.
pub(super) fn read_once(fd: BorrowedFd<'_>, kind: FdKind, buf: &mut [u8]) -> io::Result<usize> {
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
pub(super) fn write_all(fd: BorrowedFd<'_>, kind: FdKind, mut buf: &[u8]) -> io::Result<()> {
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
pub(super) fn bytes_waiting(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer given.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return Err(last_error());
    }
    Ok(n.max(0) as usize)
}

/// Sets or clears `FD_CLOEXEC`.
pub(super) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
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
pub(super) fn socketpair(ty: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two fds the call writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } < 0 {
        return Err(last_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
pub(super) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
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
