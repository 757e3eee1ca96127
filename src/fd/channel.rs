//! One direction of an in-memory transport: a pipe's buffer, or one socket's receive queue.
//!
//! The semantics are the kernel's, as far as a 32-byte command/response protocol can see them:
//!
//! | kind | write | read |
//! |---|---|---|
//! | stream socket (`SOCK_STREAM`) | takes what fits; blocks for the rest (a signal or `O_NONBLOCK` ends it with a short count) | returns what is there, at least 1 byte (short reads) |
//! | seqpacket socket (`SOCK_SEQPACKET`) | a whole message or nothing | one whole message; a longer one is truncated, the rest dropped |
//! | pipe / FIFO | up to `PIPE_BUF` bytes all at once or not at all; more may be split | returns what is there, at least 1 byte |
//!
//! With no reader left a write fails with `EPIPE` (the caller delivers `SIGPIPE`); with no writer
//! left and nothing queued a read returns 0 (EOF). A transfer that cannot make progress returns
//! what it moved so far if anything, `EAGAIN` for a non-blocking file, `EINTR` when a signal is
//! pending, and otherwise waits: on the facade condition variable ([`Wait::Block`]) or, in the
//! sequential model where nothing else can run, by reporting [`Transfer::WouldBlock`]
//! ([`Wait::Never`]).
//!
//! ```
//! use ioregionfd_model::fd::channel::{Channel, ChannelKind, Transfer, Wait};
//! let c = Channel::new(ChannelKind::Stream, 40);
//! c.open_ends(1, 1);
//! assert_eq!(c.write(&[1; 32], false, &Wait::Never), Transfer::Done(32));
//! // 8 bytes of room left: the next 32-byte write moves 8 and then cannot go on
//! assert_eq!(c.write(&[2; 32], false, &Wait::Never), Transfer::WouldBlock { moved: 8 });
//! let mut buf = [0u8; 64];
//! assert_eq!(c.read(&mut buf, false, &Wait::Never), Transfer::Done(40)); // a short read of 40
//! assert_eq!(c.read(&mut buf, false, &Wait::Never), Transfer::WouldBlock { moved: 0 });
//! c.close_writer();
//! assert_eq!(c.read(&mut buf, false, &Wait::Never), Transfer::Done(0)); // EOF
//! ```

use crate::errno::Errno;
use crate::sync::{Condvar, Mutex};
pub use crate::trace::Tag;
use std::collections::VecDeque;
use std::fmt;

/// `PIPE_BUF`: pipe writes up to this size are atomic.
pub const PIPE_BUF: usize = 4096;
/// Default pipe capacity (16 pages).
pub const PIPE_CAPACITY: usize = 65536;
/// Default socket buffer in the model (bytes queued per direction).
pub const SOCKET_CAPACITY: usize = 212_992;

/// The kind of transport a channel belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// `socketpair(AF_UNIX, SOCK_STREAM)`.
    Stream,
    /// `socketpair(AF_UNIX, SOCK_SEQPACKET)`.
    Seqpacket,
    /// `pipe(2)` or a FIFO.
    Pipe,
}

/// How a transfer that cannot progress waits.
pub enum Wait<'a> {
    /// Sequential model: nothing else can run, so report [`Transfer::WouldBlock`].
    Never,
    /// Concurrent model: wait for data, room, a close, or a signal (`pending()` true).
    Block {
        /// Whether a signal is pending for the waiting thread.
        pending: &'a (dyn Fn() -> bool + Sync),
    },
}

impl fmt::Debug for Wait<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Never => f.write_str("Wait::Never"),
            Wait::Block { .. } => f.write_str("Wait::Block"),
        }
    }
}

/// The result of one read or write call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// The call returned this many bytes (possibly fewer than asked: a short transfer; 0 on a
    /// read is EOF).
    Done(usize),
    /// The call failed with nothing moved.
    Failed(Errno),
    /// Sequential model only: the call would block forever after moving `moved` bytes.
    WouldBlock {
        /// Bytes already moved by this call.
        moved: usize,
    },
}

#[derive(Debug, Default)]
struct State {
    bytes: VecDeque<u8>,
    messages: VecDeque<Vec<u8>>,
    queued: usize,
    readers: usize,
    writers: usize,
    /// Ghost: which access each queued byte belongs to, as runs `(tag, length)` in queue order.
    tags: VecDeque<(Option<Tag>, usize)>,
}

impl State {
    fn push_tags(&mut self, tag: Option<Tag>, n: usize) {
        match self.tags.back_mut() {
            Some((t, len)) if *t == tag => *len += n,
            _ => self.tags.push_back((tag, n)),
        }
    }

    /// Takes the tags of the next `n` bytes (each tag once, in order).
    fn take_tags(&mut self, mut n: usize) -> Vec<Tag> {
        let mut out = Vec::new();
        while n > 0 {
            let Some((tag, len)) = self.tags.front_mut() else { break };
            let k = n.min(*len);
            if let Some(t) = tag
                && out.last() != Some(t)
            {
                out.push(*t);
            }
            *len -= k;
            n -= k;
            if *len == 0 {
                self.tags.pop_front();
            }
        }
        out
    }

    /// Drops the tags of `n` bytes that left without being read (the rest of a truncated
    /// message).
    fn drop_tags(&mut self, n: usize) {
        let _ = self.take_tags(n);
    }
}

/// One direction of a transport.
#[derive(Debug)]
pub struct Channel {
    kind: ChannelKind,
    capacity: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Channel {
    /// An empty channel holding at most `capacity` bytes, with no open end yet.
    pub fn new(kind: ChannelKind, capacity: usize) -> Self {
        Channel { kind, capacity, state: Mutex::new(State::default()), changed: Condvar::new() }
    }

    /// The kind.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Counts `readers` more open read ends and `writers` more write ends.
    pub fn open_ends(&self, readers: usize, writers: usize) {
        let mut s = self.state.lock();
        s.readers += readers;
        s.writers += writers;
    }

    /// The last reference to a read end went away.
    #[track_caller]
    pub fn close_reader(&self) {
        let mut s = self.state.lock();
        s.readers = s.readers.saturating_sub(1);
        self.changed.notify_all();
    }

    /// The last reference to a write end went away.
    #[track_caller]
    pub fn close_writer(&self) {
        let mut s = self.state.lock();
        s.writers = s.writers.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.state.lock().queued
    }

    /// Whether any read end is still open.
    pub fn has_reader(&self) -> bool {
        self.state.lock().readers > 0
    }

    /// Wakes every waiter (a signal was delivered to one of them).
    pub fn wake_all(&self) {
        let _s = self.state.lock();
        self.changed.notify_all();
    }

    /// How many of `remaining` bytes can go in now (0: none yet).
    fn room_for(&self, s: &State, remaining: usize, moved: usize) -> usize {
        let room = self.capacity.saturating_sub(s.queued);
        match self.kind {
            ChannelKind::Stream => room.min(remaining),
            ChannelKind::Seqpacket => {
                if room >= remaining {
                    remaining
                } else {
                    0
                }
            }
            ChannelKind::Pipe if moved + remaining <= PIPE_BUF => {
                if room >= remaining {
                    remaining
                } else {
                    0
                }
            }
            ChannelKind::Pipe => room.min(remaining),
        }
    }

    /// `write(2)` of `buf`. `nonblock` is the file's `O_NONBLOCK`. On `EPIPE` the caller sends
    /// `SIGPIPE` to the writing thread (unless ignored or blocked).
    #[track_caller]
    pub fn write(&self, buf: &[u8], nonblock: bool, wait: &Wait<'_>) -> Transfer {
        self.write_tagged(buf, nonblock, wait, None)
    }

    /// [`write`](Self::write) whose bytes carry the ghost `tag` of the access they belong to.
    #[track_caller]
    pub fn write_tagged(&self, buf: &[u8], nonblock: bool, wait: &Wait<'_>, tag: Option<Tag>) -> Transfer {
        let mut s = self.state.lock();
        let mut moved = 0;
        loop {
            if s.readers == 0 {
                return if moved > 0 { Transfer::Done(moved) } else { Transfer::Failed(Errno::EPIPE) };
            }
            let n = self.room_for(&s, buf.len() - moved, moved);
            if n > 0 {
                match self.kind {
                    ChannelKind::Seqpacket => s.messages.push_back(buf.to_vec()),
                    _ => s.bytes.extend(&buf[moved..moved + n]),
                }
                s.queued += n;
                s.push_tags(tag, n);
                moved += n;
                self.changed.notify_all();
            }
            if moved == buf.len() {
                return Transfer::Done(moved);
            }
            if let Some(t) = self.stop(moved, nonblock, wait) {
                return t;
            }
            self.changed.wait(&mut s);
        }
    }

    /// `read(2)` of up to `buf.len()` bytes.
    #[track_caller]
    pub fn read(&self, buf: &mut [u8], nonblock: bool, wait: &Wait<'_>) -> Transfer {
        self.read_tagged(buf, nonblock, wait).0
    }

    /// [`read`](Self::read), with the ghost tags of the bytes it took.
    #[track_caller]
    pub fn read_tagged(&self, buf: &mut [u8], nonblock: bool, wait: &Wait<'_>) -> (Transfer, Vec<Tag>) {
        let mut s = self.state.lock();
        loop {
            if s.queued > 0 {
                let (n, tags) = match self.kind {
                    ChannelKind::Seqpacket => {
                        let msg = s.messages.pop_front().expect("queued message");
                        s.queued -= msg.len();
                        let n = msg.len().min(buf.len());
                        buf[..n].copy_from_slice(&msg[..n]);
                        let tags = s.take_tags(n);
                        s.drop_tags(msg.len() - n);
                        (n, tags)
                    }
                    _ => {
                        let n = s.queued.min(buf.len());
                        for (i, b) in s.bytes.drain(..n).enumerate() {
                            buf[i] = b;
                        }
                        s.queued -= n;
                        (n, s.take_tags(n))
                    }
                };
                self.changed.notify_all();
                return (Transfer::Done(n), tags);
            }
            if s.writers == 0 {
                return (Transfer::Done(0), Vec::new());
            }
            if let Some(t) = self.stop(0, nonblock, wait) {
                return (t, Vec::new());
            }
            self.changed.wait(&mut s);
        }
    }

    /// What a transfer that cannot progress returns, or `None` to wait.
    fn stop(&self, moved: usize, nonblock: bool, wait: &Wait<'_>) -> Option<Transfer> {
        let partial = (moved > 0).then_some(Transfer::Done(moved));
        if nonblock {
            return Some(partial.unwrap_or(Transfer::Failed(Errno::EAGAIN)));
        }
        match wait {
            Wait::Never => Some(Transfer::WouldBlock { moved }),
            Wait::Block { pending } if pending() => Some(partial.unwrap_or(Transfer::Failed(Errno::EINTR))),
            Wait::Block { .. } => None,
        }
    }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

    fn open(kind: ChannelKind, capacity: usize) -> Channel {
        let c = Channel::new(kind, capacity);
        c.open_ends(1, 1);
        c
    }

    #[test]
    fn pipe_writes_up_to_pipe_buf_are_atomic() {
        let c = open(ChannelKind::Pipe, 40);
        assert_eq!(c.write(&[1; 32], false, &Wait::Never), Transfer::Done(32));
        assert_eq!(c.write(&[2; 32], false, &Wait::Never), Transfer::WouldBlock { moved: 0 });
        assert_eq!(c.write(&[2; 32], true, &Wait::Never), Transfer::Failed(Errno::EAGAIN));
        assert_eq!(c.queued(), 32);
    }

    #[test]
    fn stream_write_is_short_when_nonblocking() {
        let c = open(ChannelKind::Stream, 40);
        assert_eq!(c.write(&[1; 32], false, &Wait::Never), Transfer::Done(32));
        assert_eq!(c.write(&[2; 32], true, &Wait::Never), Transfer::Done(8));
        assert_eq!(c.write(&[2; 32], true, &Wait::Never), Transfer::Failed(Errno::EAGAIN));
    }

    #[test]
    fn signal_ends_a_blocked_transfer() {
        let c = open(ChannelKind::Stream, 40);
        let pending = || true;
        let wait = Wait::Block { pending: &pending };
        assert_eq!(c.write(&[1; 48], false, &wait), Transfer::Done(40), "short count after a signal");
        let mut buf = [0u8; 32];
        let empty = open(ChannelKind::Pipe, 40);
        assert_eq!(empty.read(&mut buf, false, &wait), Transfer::Failed(Errno::EINTR));
    }

    #[test]
    fn seqpacket_keeps_boundaries_and_truncates() {
        let c = open(ChannelKind::Seqpacket, 1000);
        c.write(&[1; 16], false, &Wait::Never);
        c.write(&[2; 48], false, &Wait::Never);
        let mut buf = [0u8; 32];
        assert_eq!(c.read(&mut buf, false, &Wait::Never), Transfer::Done(16));
        assert_eq!(c.read(&mut buf, false, &Wait::Never), Transfer::Done(32));
        assert_eq!(buf, [2; 32]);
        assert_eq!(c.queued(), 0, "the rest of the long message is dropped");
    }

    #[test]
    fn closed_ends() {
        let c = open(ChannelKind::Pipe, 100);
        c.write(&[1; 4], false, &Wait::Never);
        c.close_writer();
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf, false, &Wait::Never), Transfer::Done(4));
        assert_eq!(c.read(&mut buf, false, &Wait::Never), Transfer::Done(0));
        c.close_reader();
        assert_eq!(c.write(&[1; 4], false, &Wait::Never), Transfer::Failed(Errno::EPIPE));
    }

    #[test]
    fn blocked_reader_wakes_on_data_from_another_thread() {
        let c = std::sync::Arc::new(open(ChannelKind::Stream, 100));
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 32];
            let never = || false;
            c2.read(&mut buf, false, &Wait::Block { pending: &never })
        });
        c.write(&[7; 32], false, &Wait::Never);
        assert_eq!(t.join().unwrap(), Transfer::Done(32));
    }
}
