//! Files, their reference counts and inodes, the transports behind them, and the process fd table.
//!
//! A [`File`] is a `struct file`: a reference count (`f_count`, a [`Kref`] whose misuse is a
//! `lifetime` violation), an [`Inode`] (superblock and number: two files can share an inode, as
//! a FIFO opened twice does, and two filesystems can reuse a number), and what it is
//! ([`FileKind`]). When the last reference goes, the file is released: a pipe or socket end closes
//! (the peer sees EOF or `EPIPE`), an eventfd puts its context.
//!
//! Inode numbers come from two counters, as in the kernel: sockfs and pipefs take theirs from
//! `get_next_ino()`, a FIFO's inode belongs to the filesystem it was made on (a tmpfs counter of
//! its own, starting at the same number), and every anonymous-inode file (eventfd, the seed
//! design's ioregionfd) shares the one anonymous inode.
//!
//! File descriptor numbers are given out as a fresh process does: the lowest free number,
//! starting at 3.
//!
//! ```
//! use ioregionfd_model::fd::{FdTable, FileKind};
//! use ioregionfd_model::errno::Errno;
//! let mut t = FdTable::new();
//! let mut open = |t: &mut FdTable| {
//!     let f = t.new_file(FileKind::Other { name: "/dev/null".into() });
//!     t.install(f)
//! };
//! let (a, b) = (open(&mut t), open(&mut t));
//! assert_eq!((a, b), (3, 4));
//! assert!(t.close(a).is_ok());
//! assert_eq!(t.close(a).err(), Some(Errno::EBADF));
//! assert_eq!(open(&mut t), 3);
//! ```

pub mod channel;
mod eventfd;

pub use eventfd::EventfdCtx;

use crate::errno::Errno;
use crate::sync::Arc;
use crate::trace::Recorder;
use crate::trace::{Kref, Lifetime};
use channel::{Channel, ChannelKind, Transfer, Wait};
use std::collections::BTreeMap;
use std::fmt;

/// The first fd number a fresh process gives out (0, 1 and 2 are stdio).
pub const FIRST_FD: i32 = 3;

/// A filesystem instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Superblock {
    /// The anonymous-inode filesystem: eventfds, the seed ioregionfd.
    Anon,
    /// Sockets.
    Sockfs,
    /// Pipes.
    Pipefs,
    /// The tmpfs where FIFOs are made.
    Tmpfs,
}

/// An inode: its superblock and number (`i_ino`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inode {
    /// The filesystem.
    pub sb: Superblock,
    /// `i_ino`: unique within `sb` only.
    pub ino: u64,
}

impl fmt::Display for Inode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sb = match self.sb {
            Superblock::Anon => "anon",
            Superblock::Sockfs => "sockfs",
            Superblock::Pipefs => "pipefs",
            Superblock::Tmpfs => "tmpfs",
        };
        write!(f, "{sb}:{}", self.ino)
    }
}

/// What a file is.
#[derive(Debug)]
pub enum FileKind {
    /// An eventfd.
    Eventfd(Arc<EventfdCtx>),
    /// One end of a socketpair: reads from `rx`, writes to `tx`.
    Socket {
        /// Where this end reads.
        rx: Arc<Channel>,
        /// Where this end writes.
        tx: Arc<Channel>,
    },
    /// The read end of a pipe or FIFO.
    PipeRead(Arc<Channel>),
    /// The write end of a pipe or FIFO.
    PipeWrite(Arc<Channel>),
    /// The seed design's ioregionfd (`KVM_CREATE_IOREGIONFD`).
    Ioregionfd(Arc<IoregionfdObject>),
    /// Any other file (not an eventfd, not readable or writable by the model).
    Other {
        /// What it is, for messages.
        name: String,
    },
}

/// What runs when the last userspace reference of an ioregionfd goes.
pub type ReleaseHook = Box<dyn FnOnce(&Recorder) + Send>;

/// The seed design's ioregionfd, a kernel object of its own type: KVM writes commands into `cmd`
/// and reads responses from `resp`; the userspace file reads commands and writes responses, one
/// 32-byte message at a time. One object can serve several VMs; when its last userspace fd
/// closes, the release hooks (registered by `KVM_SET_IOREGION`) drop every region using it.
pub struct IoregionfdObject {
    /// KVM to device.
    pub cmd: Arc<Channel>,
    /// Device to KVM.
    pub resp: Arc<Channel>,
    hooks: crate::sync::Mutex<Vec<ReleaseHook>>,
}

impl fmt::Debug for IoregionfdObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IoregionfdObject")
    }
}

impl IoregionfdObject {
    /// A new object: KVM's ends are open for good, the userspace file holds the others.
    pub fn new() -> Self {
        let cmd = Arc::new(Channel::new(ChannelKind::Seqpacket, channel::SOCKET_CAPACITY));
        let resp = Arc::new(Channel::new(ChannelKind::Seqpacket, channel::SOCKET_CAPACITY));
        cmd.open_ends(1, 1);
        resp.open_ends(1, 1);
        IoregionfdObject { cmd, resp, hooks: crate::sync::Mutex::new(Vec::new()) }
    }

    /// Registers what runs when the last userspace fd closes.
    pub fn on_release(&self, hook: ReleaseHook) {
        self.hooks.lock().push(hook);
    }

    fn release(&self, rec: &Recorder) {
        self.cmd.close_reader();
        self.resp.close_writer();
        let hooks = std::mem::take(&mut *self.hooks.lock());
        hooks.into_iter().for_each(|h| h(rec));
    }
}

impl Default for IoregionfdObject {
    fn default() -> Self {
        Self::new()
    }
}

/// A `struct file`.
pub struct File {
    id: u64,
    inode: Inode,
    kind: FileKind,
    nonblock: bool,
    refs: Kref,
    life: Lifetime,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file#{}", self.id)
    }
}

impl fmt::Display for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.kind {
            FileKind::Eventfd(_) => "eventfd",
            FileKind::Socket { rx, .. } if rx.kind() == ChannelKind::Seqpacket => "seqpacket socket",
            FileKind::Socket { .. } => "stream socket",
            FileKind::PipeRead(_) => "pipe read end",
            FileKind::PipeWrite(_) => "pipe write end",
            FileKind::Ioregionfd(_) => "ioregionfd",
            FileKind::Other { name } => name,
        };
        write!(f, "file#{} ({what}, inode {})", self.id, self.inode)
    }
}

impl File {
    /// The file's identity (never reused).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its inode.
    pub fn inode(&self) -> Inode {
        self.inode
    }

    /// What it is.
    pub fn kind(&self) -> &FileKind {
        &self.kind
    }

    /// Whether `O_NONBLOCK` is set.
    pub fn nonblock(&self) -> bool {
        self.nonblock
    }

    /// Whether it is open for reading (`FMODE_READ`): a socket end, a pipe's read end, an
    /// eventfd, the seed's ioregionfd; not a pipe's write end. Any other file counts as both.
    pub fn readable(&self) -> bool {
        !matches!(self.kind, FileKind::PipeWrite(_))
    }

    /// Whether it is open for writing (`FMODE_WRITE`): all but a pipe's read end.
    pub fn writable(&self) -> bool {
        !matches!(self.kind, FileKind::PipeRead(_))
    }

    /// Whether the file is still open (not released).
    pub fn is_live(&self) -> bool {
        self.life.is_live()
    }

    /// References held now.
    pub fn refs(&self) -> i64 {
        self.refs.get_count()
    }

    /// `get_file`: takes a reference (from 0 it is a `lifetime` violation).
    pub fn get(&self, rec: &Recorder) {
        self.refs.get(rec, self);
    }

    /// `fput`: drops a reference; the last one releases the file.
    pub fn put(&self, rec: &Recorder) {
        if self.refs.put(rec, self) {
            self.release(rec);
        }
    }

    /// `f_op->release`: closes this end of its transport.
    fn release(&self, rec: &Recorder) {
        self.life.end(rec, self);
        rec.event(None, format_args!("release {self}"));
        match &self.kind {
            FileKind::Eventfd(ctx) => ctx.put(rec),
            FileKind::Socket { rx, tx } => {
                rx.close_reader();
                tx.close_writer();
            }
            FileKind::PipeRead(c) => c.close_reader(),
            FileKind::PipeWrite(c) => c.close_writer(),
            FileKind::Ioregionfd(obj) => obj.release(rec),
            FileKind::Other { .. } => {}
        }
    }

    /// The channel a `read` of this file takes from (for ghost tags).
    pub fn read_channel(&self) -> Option<&Arc<Channel>> {
        match &self.kind {
            FileKind::Socket { rx, .. } | FileKind::PipeRead(rx) => Some(rx),
            FileKind::Ioregionfd(obj) => Some(&obj.cmd),
            _ => None,
        }
    }

    /// The channel a `write` of this file puts into (for ghost tags).
    pub fn write_channel(&self) -> Option<&Arc<Channel>> {
        match &self.kind {
            FileKind::Socket { tx, .. } | FileKind::PipeWrite(tx) => Some(tx),
            FileKind::Ioregionfd(obj) => Some(&obj.resp),
            _ => None,
        }
    }

    /// `kernel_read` / `read(2)`: `EINVAL` for a file that cannot be read. Reading a released
    /// file is a `lifetime` violation (and `EBADF`).
    pub fn read(&self, rec: &Recorder, buf: &mut [u8], wait: &Wait<'_>) -> Transfer {
        self.read_tagged(rec, buf, wait).0
    }

    /// [`read`](Self::read), with the ghost tags of the bytes it took.
    pub fn read_tagged(&self, rec: &Recorder, buf: &mut [u8], wait: &Wait<'_>) -> (Transfer, Vec<channel::Tag>) {
        if !self.life.check_use(rec, self) {
            return (Transfer::Failed(Errno::EBADF), Vec::new());
        }
        let t = match &self.kind {
            FileKind::Socket { rx, .. } | FileKind::PipeRead(rx) => {
                return traced_wait(rec, wait, &|| format!("data on {self}"), |w| {
                    rx.read_tagged(buf, self.nonblock, w)
                });
            }
            FileKind::Ioregionfd(obj) => {
                let what = || format!("a command on {self}");
                return traced_wait(rec, wait, &what, |w| obj.cmd.read_tagged(buf, self.nonblock, w));
            }
            FileKind::Eventfd(ctx) if buf.len() >= 8 => {
                let n = ctx.take();
                if n == 0 {
                    let t = match wait {
                        Wait::Never => Transfer::WouldBlock { moved: 0 },
                        Wait::Block { .. } => Transfer::Failed(Errno::EAGAIN),
                    };
                    return (t, Vec::new());
                }
                buf[..8].copy_from_slice(&n.to_le_bytes());
                Transfer::Done(8)
            }
            _ => Transfer::Failed(Errno::EINVAL),
        };
        (t, Vec::new())
    }

    /// `kernel_write` / `write(2)`: `EINVAL` for a file that cannot be written. `EPIPE` means the
    /// writer is due a `SIGPIPE`.
    pub fn write(&self, rec: &Recorder, buf: &[u8], wait: &Wait<'_>) -> Transfer {
        self.write_tagged(rec, buf, wait, None)
    }

    /// [`write`](Self::write) whose bytes carry the ghost `tag` of the access they belong to.
    pub fn write_tagged(&self, rec: &Recorder, buf: &[u8], wait: &Wait<'_>, tag: Option<channel::Tag>) -> Transfer {
        if !self.life.check_use(rec, self) {
            return Transfer::Failed(Errno::EBADF);
        }
        let what = || format!("room on {self}");
        match &self.kind {
            FileKind::Socket { tx, .. } | FileKind::PipeWrite(tx) => {
                traced_wait(rec, wait, &what, |w| tx.write_tagged(buf, self.nonblock, w, tag))
            }
            FileKind::Ioregionfd(obj) => {
                traced_wait(rec, wait, &what, |w| obj.resp.write_tagged(buf, self.nonblock, w, tag))
            }
            _ => Transfer::Failed(Errno::EINVAL),
        }
    }
}

/// Runs a transfer with its sleeps in the trace: a channel asks `pending()` exactly when it is
/// about to sleep, so the wrapper records "waits for `what`" then (and marks the thread blocked on
/// it, for a deadlock report), and "the wait ... ends: a signal is pending" when a signal stops it.
fn traced_wait<R>(
    rec: &Recorder,
    wait: &Wait<'_>,
    what: &(dyn Fn() -> String + Sync),
    transfer: impl FnOnce(&Wait<'_>) -> R,
) -> R {
    let Wait::Block { pending } = wait else { return transfer(wait) };
    let sleeps = std::sync::atomic::AtomicUsize::new(0);
    let traced = || {
        let signalled = pending();
        let n = sleeps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let what = what();
        if signalled {
            crate::trace::unblocked();
            rec.event(None, format_args!("the wait for {what} ends: a signal is pending"));
        } else {
            let again = if n > 0 { "woken, still " } else { "" };
            rec.event(None, format_args!("{again}waits for {what}"));
            crate::trace::blocked(what);
        }
        signalled
    };
    let result = transfer(&Wait::Block { pending: &traced });
    if sleeps.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        crate::trace::unblocked();
    }
    result
}

/// The process fd table (`struct files_struct`), and the inode numbering of the modelled host.
#[derive(Debug)]
pub struct FdTable {
    files: BTreeMap<i32, Arc<File>>,
    channels: Vec<std::sync::Weak<Channel>>,
    /// Every file ever made, held (ghost) so that one the kernel would leak stays visible.
    made: Vec<Arc<File>>,
    next_file: u64,
    next_ino: u64,
    next_tmpfs_ino: u64,
}

impl Default for FdTable {
    fn default() -> Self {
        Self::new()
    }
}

/// The number `get_next_ino()` and the tmpfs counter start from (the same, so that inode numbers
/// of different filesystems do meet).
pub const FIRST_INO: u64 = 100;

impl FdTable {
    /// An empty table.
    pub fn new() -> Self {
        FdTable {
            files: BTreeMap::new(),
            channels: Vec::new(),
            made: Vec::new(),
            next_file: 1,
            next_ino: FIRST_INO,
            next_tmpfs_ino: FIRST_INO,
        }
    }

    fn inode(&mut self, sb: Superblock) -> Inode {
        let counter = match sb {
            Superblock::Anon => return Inode { sb, ino: 1 },
            Superblock::Tmpfs => &mut self.next_tmpfs_ino,
            Superblock::Sockfs | Superblock::Pipefs => &mut self.next_ino,
        };
        let ino = *counter;
        *counter += 1;
        Inode { sb, ino }
    }

    /// Every channel made so far that still exists (a signal wakes their waiters).
    pub fn channels(&self) -> Vec<Arc<Channel>> {
        self.channels.iter().filter_map(std::sync::Weak::upgrade).collect()
    }

    fn file_on(&mut self, inode: Inode, kind: FileKind, nonblock: bool) -> Arc<File> {
        match &kind {
            FileKind::Socket { rx, .. } => self.channels.push(Arc::downgrade(rx)),
            FileKind::PipeRead(c) => self.channels.push(Arc::downgrade(c)),
            FileKind::Ioregionfd(o) => {
                self.channels.push(Arc::downgrade(&o.cmd));
                self.channels.push(Arc::downgrade(&o.resp));
            }
            _ => {}
        }
        let id = self.next_file;
        self.next_file += 1;
        let file = Arc::new(File { id, inode, kind, nonblock, refs: Kref::new(1), life: Lifetime::new() });
        self.made.push(file.clone());
        file
    }

    /// A new file of `kind` on a new inode of the filesystem such files live on (one reference).
    pub fn new_file(&mut self, kind: FileKind) -> Arc<File> {
        let sb = match &kind {
            FileKind::Eventfd(_) | FileKind::Ioregionfd(_) | FileKind::Other { .. } => Superblock::Anon,
            FileKind::Socket { .. } => Superblock::Sockfs,
            FileKind::PipeRead(_) | FileKind::PipeWrite(_) => Superblock::Pipefs,
        };
        let inode = self.inode(sb);
        self.file_on(inode, kind, false)
    }

    /// `socketpair(AF_UNIX, kind)`: two files, each on its own sockfs inode.
    pub fn socketpair(&mut self, kind: ChannelKind, capacity: usize, nonblock: bool) -> (Arc<File>, Arc<File>) {
        let a_to_b = Arc::new(Channel::new(kind, capacity));
        let b_to_a = Arc::new(Channel::new(kind, capacity));
        a_to_b.open_ends(1, 1);
        b_to_a.open_ends(1, 1);
        let ia = self.inode(Superblock::Sockfs);
        let a = self.file_on(ia, FileKind::Socket { rx: b_to_a.clone(), tx: a_to_b.clone() }, nonblock);
        let ib = self.inode(Superblock::Sockfs);
        let b = self.file_on(ib, FileKind::Socket { rx: a_to_b, tx: b_to_a }, nonblock);
        (a, b)
    }

    /// `pipe(2)`: read end and write end, sharing one pipefs inode.
    pub fn pipe(&mut self, capacity: usize, nonblock: bool) -> (Arc<File>, Arc<File>) {
        let inode = self.inode(Superblock::Pipefs);
        self.pipe_on(inode, capacity, nonblock)
    }

    /// `mkfifo` then `open(O_RDONLY)` and `open(O_WRONLY)`: two files on one tmpfs inode.
    pub fn fifo(&mut self, capacity: usize, nonblock: bool) -> (Arc<File>, Arc<File>) {
        let inode = self.inode(Superblock::Tmpfs);
        self.pipe_on(inode, capacity, nonblock)
    }

    fn pipe_on(&mut self, inode: Inode, capacity: usize, nonblock: bool) -> (Arc<File>, Arc<File>) {
        let c = Arc::new(Channel::new(ChannelKind::Pipe, capacity));
        c.open_ends(1, 1);
        let r = self.file_on(inode, FileKind::PipeRead(c.clone()), nonblock);
        let w = self.file_on(inode, FileKind::PipeWrite(c), nonblock);
        (r, w)
    }

    /// The number the next [`install`](Self::install) gives out.
    pub fn next_fd(&self) -> i32 {
        // the first gap in the numbers in use from FIRST_FD (the map's keys are in order)
        let mut next = FIRST_FD;
        for &fd in self.files.range(FIRST_FD..).map(|(fd, _)| fd) {
            if fd != next {
                break;
            }
            next += 1;
        }
        next
    }

    /// Installs `file` at the lowest free number from 3 (the table owns the file's reference).
    pub fn install(&mut self, file: Arc<File>) -> i32 {
        let fd = self.next_fd();
        self.files.insert(fd, file);
        fd
    }

    /// The file behind `fd`, without a new reference: `EBADF` when it is not open.
    pub fn get(&self, fd: i32) -> Result<Arc<File>, Errno> {
        self.files.get(&fd).cloned().ok_or(Errno::EBADF)
    }

    /// `fget`: the file behind `fd` with a new reference.
    pub fn fget(&self, fd: i32, rec: &Recorder) -> Result<Arc<File>, Errno> {
        let file = self.get(fd)?;
        file.get(rec);
        Ok(file)
    }

    /// `close(2)`: removes `fd` and returns its file, whose reference the caller puts.
    pub fn close(&mut self, fd: i32) -> Result<Arc<File>, Errno> {
        self.files.remove(&fd).ok_or(Errno::EBADF)
    }

    /// Every file ever made (released or not).
    pub fn made(&self) -> Vec<Arc<File>> {
        self.made.clone()
    }

    /// Open fd numbers, ascending.
    pub fn open_fds(&self) -> Vec<i32> {
        self.files.keys().copied().collect()
    }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn inodes_pipes_share_sockets_do_not_fifos_meet_sockets() {
        let mut t = FdTable::new();
        let (r, w) = t.pipe(PIPE, false);
        assert_eq!(r.inode(), w.inode());
        let (a, b) = t.socketpair(ChannelKind::Stream, 64, false);
        assert_ne!(a.inode(), b.inode());
        let (fr, fw) = t.fifo(PIPE, false);
        assert_eq!(fr.inode(), fw.inode());
        assert_eq!(fr.inode().ino, r.inode().ino, "tmpfs and pipefs numbers meet");
        assert_ne!(fr.inode(), r.inode(), "... on different superblocks");
    }

    const PIPE: usize = channel::PIPE_CAPACITY;

    #[test]
    fn release_closes_the_transport_end() {
        let rec = Recorder::new();
        let mut t = FdTable::new();
        let (a, b) = t.socketpair(ChannelKind::Stream, 64, false);
        b.get(&rec); // a second reference (KVM's)
        b.put(&rec);
        assert!(b.is_live());
        b.put(&rec); // the last one
        assert!(!b.is_live());
        assert_eq!(a.write(&rec, &[0; 32], &Wait::Never), Transfer::Failed(Errno::EPIPE));
        let mut buf = [0u8; 32];
        assert_eq!(a.read(&rec, &mut buf, &Wait::Never), Transfer::Done(0));
        assert!(rec.violations().is_empty());
        b.put(&rec);
        assert_eq!(rec.violations()[0].invariant, "lifetime", "a put below zero");
        assert_eq!(b.read(&rec, &mut buf, &Wait::Never), Transfer::Failed(Errno::EBADF));
        assert_eq!(rec.violations().len(), 2, "and a read after release");
    }
}
