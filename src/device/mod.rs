//! The device side of ioregionfd: what a VMM's device task does with the commands KVM sends.
//!
//! Three parts, each in its own files:
//!
//! - **The model's device** ([`IoregionDevice`], [`MemoryDevice`], [`ServedDevice`],
//!   [`receive_model_command`]): a device running on the model's in-memory files, for the
//!   sequential model, the scenarios and the checkers. It reads whole 32-byte commands
//!   (reassembling short reads), answers those that want a response, and never answers a posted
//!   write.
//! - **The device library on real fds** (Linux; [`Transport`], [`serve`], [`connect`],
//!   [`KernelSide`], ...): what a VMM author uses to serve an [`IoregionDevice`] on the fds it
//!   registered with `KVM_SET_IOREGION`. It needs only the wire format and system calls.
//! - **The conformance harness** ([`conform`]): plays KVM's side over real fds against a device
//!   and checks the protocol (`ioregionfd-model conform`).
//!
//! With the feature `vm-device`, `VmDeviceMmio` and `VmDevicePio` serve a rust-vmm vm-device
//! device (`MutDeviceMmio`, `MutDevicePio`) as an [`IoregionDevice`].
//!
//! [`IoregionDevice`] is what a device implements (read or write at an offset of a region that
//! `user_data` names); [`MemoryDevice`] is the built-in one (reads return the last value written
//! at that offset, else 0).
//!
//! ```
//! use ioregionfd_model::device::{IoregionDevice, MemoryDevice};
//! let mut d = MemoryDevice::default();
//! d.write(7, 0x10, 4, 0xabcd);
//! assert_eq!(d.read(7, 0x10, 4), 0xabcd);
//! assert_eq!(d.read(8, 0x10, 4), 0); // another region
//! ```
//!
//! Layering: these files import from `uapi`, `wire`, `errno`, `sync`, `invariants`, `trace` and
//! `fd` only (the model's device needs the model's files); the real-fd library and the harness
//! need only `wire` (and rustix), the vm-device adapter nothing of the crate but the trait.

mod memory;
mod model;

#[cfg(target_os = "linux")]
pub mod conform;
#[cfg(target_os = "linux")]
mod real;
#[cfg(feature = "vm-device")]
mod vm_device;

pub use memory::{MemoryDevice, ScratchMemory};
pub use model::{ServedDevice, receive_model_command};
#[cfg(target_os = "linux")]
pub use real::*;
#[cfg(feature = "vm-device")]
pub use vm_device::{Shared, VmDeviceMmio, VmDevicePio};

/// A device that serves ioregion accesses.
pub trait IoregionDevice: Send {
    /// A read of `size` bytes at `offset` of the region `user_data` names.
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64;
    /// A write of the low `size` bytes of `value`.
    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64);
}
