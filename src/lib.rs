//! # ioregionfd-model
//!
//! An executable, model-checked reimplementation of the KVM side of *ioregionfd* and of the
//! mainline in-kernel I/O bus it builds on.
//!
//! Layers, bottom up (imports run one way; `tests/layers.rs` keeps them so): [`errno`], [`sync`]
//! (the concurrency facade: std, loom or shuttle) and [`uapi`] → [`wire`] (the ioregionfd command
//! and response formats) → [`design`] (presets and knobs) → [`invariants`] (the catalogue) →
//! [`trace`] (events, violations, ghost tags, object lifetimes) → [`fd`] (files, channels, the fd
//! table) → [`bus`] (`kvm_io_bus`, ioeventfd, coalesced MMIO, SRCU) and [`device`] (the device side)
//! → [`region`] (what `ioregion.c` holds: registration, contexts, the transaction) → [`vcpu`] →
//! [`vm`] → [`kvm`] (the system) → [`script`] and [`scenario`] (the interfaces reviewers use).
//!
//! ```
//! use ioregionfd_model::bus::BusKind;
//! use ioregionfd_model::kvm::Kvm;
//! use ioregionfd_model::vm::VmConfig;
//! use ioregionfd_model::uapi::KvmIoeventfd;
//! let kvm = Kvm::new();
//! let vm = kvm.create_vm(VmConfig::default());
//! let efd = kvm.eventfd();
//! let args = KvmIoeventfd { addr: 0x1000, len: 4, fd: efd, ..Default::default() };
//! kvm.ioeventfd(vm, &args).unwrap();
//! let outcome = kvm.vm(vm).unwrap().access(BusKind::Mmio, 0x1000, 4, Some(7)).unwrap();
//! assert_eq!(outcome.to_string(), format!("eventfd {efd}"));
//! assert_eq!(kvm.eventfd_count(efd), Ok(1));
//! ```

pub mod bus;
pub mod design;
pub mod device;
pub mod errno;
pub mod fd;
pub mod invariants;
pub mod kvm;
pub mod region;
pub mod scenario;
pub mod script;
pub mod structure;
pub mod sync;
pub mod trace;
pub mod uapi;
pub mod vcpu;
pub mod vm;
pub mod wire;
