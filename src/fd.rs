//! Files and the process fd table of the modelled VMM process.
//!
//! Numbers are given out as a fresh process does: the lowest free number, starting at 3.
//!
//! ```
//! use ioregionfd_model::fd::{FdTable, File};
//! use ioregionfd_model::errno::Errno;
//! let mut t = FdTable::new();
//! let a = t.install(File::Other { name: "/dev/null".into() });
//! let b = t.install(File::Other { name: "/dev/null".into() });
//! assert_eq!((a, b), (3, 4));
//! assert!(t.close(a).is_ok());
//! assert_eq!(t.close(a).err(), Some(Errno::EBADF));
//! assert_eq!(t.install(File::Other { name: "x".into() }), 3);
//! ```

use crate::bus::ioeventfd::EventfdCtx;
use crate::errno::Errno;
use crate::sync::Arc;
use std::collections::BTreeMap;

/// An open file the modelled process can hold.
#[derive(Debug)]
pub enum File {
    /// An eventfd (`eventfd(2)`).
    Eventfd(Arc<EventfdCtx>),
    /// Any other file (not usable where an eventfd is required: `EINVAL`).
    Other {
        /// What it is, for messages.
        name: String,
    },
}

/// The process fd table (`struct files_struct`).
#[derive(Debug, Default)]
pub struct FdTable {
    files: BTreeMap<i32, Arc<File>>,
}

/// The first fd number a fresh process gives out (0, 1 and 2 are stdio).
pub const FIRST_FD: i32 = 3;

impl FdTable {
    /// An empty table (only stdio, which the model does not represent).
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `file` at the lowest free number from 3 and returns it.
    pub fn install(&mut self, file: File) -> i32 {
        let fd = (FIRST_FD..).find(|n| !self.files.contains_key(n)).expect("a free fd number");
        self.files.insert(fd, Arc::new(file));
        fd
    }

    /// The file behind `fd` (`fdget`): `EBADF` when it is not open.
    pub fn get(&self, fd: i32) -> Result<Arc<File>, Errno> {
        self.files.get(&fd).cloned().ok_or(Errno::EBADF)
    }

    /// `close(2)`: removes `fd` and returns the file, whose reference the caller puts.
    pub fn close(&mut self, fd: i32) -> Result<Arc<File>, Errno> {
        self.files.remove(&fd).ok_or(Errno::EBADF)
    }

    /// Open fd numbers, ascending.
    pub fn open_fds(&self) -> Vec<i32> {
        self.files.keys().copied().collect()
    }
}
