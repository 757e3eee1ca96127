//! A stop request a device loop can poll: an eventfd.

use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A request to stop serving, as an eventfd: [`stop`](Self::stop) makes it readable for good.
/// Pass it to [`serve_until`](super::serve_until), or register it in an event loop beside the
/// device's fds (it is the "exit event" a VMM loop already polls). Any other fd that becomes
/// readable works as well, for instance a VMM's own exit eventfd.
///
/// ```
/// use ioregionfd_model::device::StopEvent;
/// let stop = StopEvent::new().unwrap();
/// assert!(!stop.is_stopped().unwrap());
/// let other_thread = stop.try_clone().unwrap();
/// other_thread.stop().unwrap();
/// assert!(stop.is_stopped().unwrap()); // and it stays so
/// assert!(stop.is_stopped().unwrap());
/// ```
#[derive(Debug)]
pub struct StopEvent {
    fd: OwnedFd,
}

impl StopEvent {
    /// A new eventfd, not yet stopped (non-blocking, close-on-exec).
    ///
    /// ```
    /// assert!(ioregionfd_model::device::StopEvent::new().is_ok());
    /// ```
    pub fn new() -> io::Result<StopEvent> {
        Ok(StopEvent { fd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)? })
    }

    /// Asks to stop: the eventfd becomes readable (and stays readable: nothing here reads it).
    ///
    /// ```
    /// use ioregionfd_model::device::StopEvent;
    /// let stop = StopEvent::new().unwrap();
    /// stop.stop().unwrap();
    /// stop.stop().unwrap(); // again: no harm
    /// assert!(stop.is_stopped().unwrap());
    /// ```
    pub fn stop(&self) -> io::Result<()> {
        let n = rustix::io::write(&self.fd, &1u64.to_ne_bytes())?;
        debug_assert_eq!(n, 8, "an eventfd takes 8 bytes at once");
        Ok(())
    }

    /// Whether [`stop`](Self::stop) was called (on this one or a clone).
    ///
    /// ```
    /// assert!(!ioregionfd_model::device::StopEvent::new().unwrap().is_stopped().unwrap());
    /// ```
    pub fn is_stopped(&self) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        super::sys::poll_fds(&mut fds, Some(Duration::ZERO))
    }

    /// Another handle on the same eventfd (a `dup`), for another thread.
    ///
    /// ```
    /// use ioregionfd_model::device::StopEvent;
    /// let stop = StopEvent::new().unwrap();
    /// stop.try_clone().unwrap().stop().unwrap();
    /// assert!(stop.is_stopped().unwrap());
    /// ```
    pub fn try_clone(&self) -> io::Result<StopEvent> {
        Ok(StopEvent { fd: self.fd.try_clone()? })
    }
}

impl AsFd for StopEvent {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
