//! The one concurrency facade of the crate.
//!
//! Every lock, condition variable, atomic and thread that the model uses comes from here, so that
//! the same code runs on three backends:
//!
//! | build | backend |
//! |---|---|
//! | default | `parking_lot` locks, `std` atomics and threads |
//! | `RUSTFLAGS="--cfg loom"` | [loom](https://docs.rs/loom): every interleaving, bounded by preemptions |
//! | `--features shuttle` | [shuttle](https://docs.rs/shuttle): randomized and PCT schedules |
//!
//! The API is parking_lot-shaped: [`Mutex::lock`] returns the guard directly and
//! [`Condvar::wait`] takes `&mut` guard. Wrappers carry `#[track_caller]` so that loom reports the
//! caller's location rather than this file.
//!
//! [`Ghost`] is the one exception to "everything is a scheduling point": it holds instrumentation
//! (the trace, recorded violations) that is not part of the modelled kernel. It is a plain
//! `std::sync::Mutex` on every backend, never contended under loom or shuttle (both run one model
//! thread at a time), and never a place where the checker switches threads.
//!
//! Ownership of Rust objects uses [`Arc`] (`std::sync::Arc` on every backend): reference counts of
//! *modelled kernel objects* are modelled explicitly (see `fd` and `bus`), not by Rust's `Arc`.
//!
//! ```
//! use ioregionfd_model::sync::{Condvar, Mutex};
//! let m = Mutex::new(0u32);
//! let cv = Condvar::new();
//! {
//!     let mut g = m.lock();
//!     *g += 1;
//!     cv.notify_all();
//! }
//! assert_eq!(*m.lock(), 1);
//! ```

pub use std::sync::Arc;

/// Wraps a std-shaped `Mutex`/`Condvar` pair (loom's, shuttle's) in the parking_lot-shaped API.
#[cfg(any(loom, feature = "shuttle"))]
macro_rules! std_shaped {
    ($path:path) => {
        use $path as backend;

        /// A mutual-exclusion lock (parking_lot-shaped over the checker's std-shaped lock).
        #[derive(Debug)]
        pub struct Mutex<T>(backend::Mutex<T>);

        /// The guard of a locked [`Mutex`].
        #[derive(Debug)]
        pub struct MutexGuard<'a, T>(Option<backend::MutexGuard<'a, T>>);

        impl<T> Mutex<T> {
            /// A new unlocked mutex holding `value`.
            #[track_caller]
            pub fn new(value: T) -> Self {
                Mutex(backend::Mutex::new(value))
            }

            /// Locks, blocking until the lock is free.
            #[track_caller]
            pub fn lock(&self) -> MutexGuard<'_, T> {
                // A poisoned lock means a model thread panicked; the checker reports that panic.
                MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
            }
        }

        impl<T: Default> Default for Mutex<T> {
            fn default() -> Self {
                Mutex::new(T::default())
            }
        }

        impl<T> std::ops::Deref for MutexGuard<'_, T> {
            type Target = T;
            fn deref(&self) -> &T {
                self.0.as_ref().expect("guard present outside Condvar::wait")
            }
        }

        impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
            fn deref_mut(&mut self) -> &mut T {
                self.0.as_mut().expect("guard present outside Condvar::wait")
            }
        }

        /// A condition variable used with [`Mutex`]; no spurious wake-ups on either checker.
        #[derive(Debug)]
        pub struct Condvar(backend::Condvar);

        impl Default for Condvar {
            fn default() -> Self {
                Self::new()
            }
        }

        impl Condvar {
            /// A new condition variable.
            #[track_caller]
            pub fn new() -> Self {
                Condvar(backend::Condvar::new())
            }

            /// Releases the guard's lock, waits for a notification, and locks again.
            #[track_caller]
            pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
                let inner = guard.0.take().expect("guard present");
                guard.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
            }

            /// Wakes one waiter.
            #[track_caller]
            pub fn notify_one(&self) {
                self.0.notify_one();
            }

            /// Wakes every waiter.
            #[track_caller]
            pub fn notify_all(&self) {
                self.0.notify_all();
            }
        }
    };
}

#[cfg(not(any(loom, feature = "shuttle")))]
mod imp {
    pub use parking_lot::{Condvar, Mutex, MutexGuard};
    pub use std::sync::atomic;
    pub use std::thread;
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::atomic;
    pub use loom::thread;
    std_shaped!(loom::sync);
}

#[cfg(all(feature = "shuttle", not(loom)))]
mod imp {
    pub use shuttle::sync::atomic;
    pub use shuttle::thread;
    std_shaped!(shuttle::sync);
}

pub use imp::{Condvar, Mutex, MutexGuard, atomic, thread};

/// Which backend this build of the facade runs on: `"std"`, `"loom"` or `"shuttle"`.
///
/// ```
/// assert!(["std", "loom", "shuttle"].contains(&ioregionfd_model::sync::BACKEND));
/// ```
pub const BACKEND: &str = if cfg!(loom) {
    "loom"
} else if cfg!(feature = "shuttle") {
    "shuttle"
} else {
    "std"
};

/// Instrumentation state (trace, recorded violations) that is *not* part of the modelled kernel.
///
/// Reads and writes of a `Ghost` are never scheduling points of loom or shuttle, so recording an
/// event does not multiply the interleavings to explore. Never use it for state the modelled
/// kernel itself reads to decide what to do.
///
/// ```
/// use ioregionfd_model::sync::Ghost;
/// let g = Ghost::new(Vec::new());
/// g.with(|v| v.push(1));
/// assert_eq!(g.with(|v| v.len()), 1);
/// ```
#[derive(Debug, Default)]
pub struct Ghost<T>(std::sync::Mutex<T>);

impl<T> Ghost<T> {
    /// New ghost state.
    pub fn new(value: T) -> Self {
        Ghost(std::sync::Mutex::new(value))
    }

    /// Runs `f` with exclusive access to the ghost state.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }
}

/// The name of the current thread as the model's trace shows it (`"main"` when unnamed).
pub fn thread_name() -> String {
    thread::current().name().unwrap_or("main").to_string()
}

/// Spawns a named model thread (the name shows in traces: `vcpu0`, `vmm`, `device`).
///
/// ```
/// let h = ioregionfd_model::sync::spawn_named("vmm", || ioregionfd_model::sync::thread_name());
/// assert_eq!(h.join().unwrap(), "vmm");
/// ```
#[track_caller]
pub fn spawn_named<F, T>(name: &str, f: F) -> thread::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    thread::Builder::new().name(name.to_string()).spawn(f).expect("spawn a model thread")
}
