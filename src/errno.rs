//! Linux errno values as the modelled kernel returns them.
//!
//! ```
//! use ioregionfd_model::errno::Errno;
//! assert_eq!(Errno::EEXIST.name(), "EEXIST");
//! assert_eq!(Errno::from_code(22), Some(Errno::EINVAL));
//! ```

use std::fmt;

macro_rules! errnos {
    ($($name:ident = $code:literal: $text:literal,)*) => {
        /// An errno value (the positive number; the kernel returns its negation).
        #[allow(clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Errno {
            $(#[doc = $text] $name,)*
        }

        impl Errno {
            /// Every errno the model knows, in numeric order.
            pub const ALL: &'static [Errno] = &[$(Errno::$name,)*];

            /// The symbolic name, e.g. `"EINVAL"`.
            pub fn name(self) -> &'static str {
                match self { $(Errno::$name => stringify!($name),)* }
            }

            /// The Linux x86-64 number, e.g. 22 for `EINVAL`.
            pub fn code(self) -> i32 {
                match self { $(Errno::$name => $code,)* }
            }

            /// The errno with this Linux number, if the model knows it.
            pub fn from_code(code: i32) -> Option<Errno> {
                match code { $($code => Some(Errno::$name),)* _ => None }
            }

            /// The errno with this symbolic name, if the model knows it.
            pub fn from_name(name: &str) -> Option<Errno> {
                match name { $(stringify!($name) => Some(Errno::$name),)* _ => None }
            }
        }
    };
}

errnos! {
    ENOENT = 2: "No such file or directory (no matching registration).",
    EINTR = 4: "Interrupted by a signal.",
    EIO = 5: "I/O error (a short transfer where none is allowed).",
    EBADF = 9: "Bad file descriptor.",
    EAGAIN = 11: "Try again (non-blocking file with nothing to transfer).",
    ENOMEM = 12: "Out of memory, or the bus is gone (NULL).",
    EFAULT = 14: "Bad address.",
    EEXIST = 17: "The registration collides with an existing one.",
    EINVAL = 22: "Invalid argument.",
    ENOSPC = 28: "No space left (NR_IOBUS_DEVS reached).",
    EPIPE = 32: "Broken pipe (the reader is gone).",
    EOPNOTSUPP = 95: "Operation not supported (no device took the access).",
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Errno {}
