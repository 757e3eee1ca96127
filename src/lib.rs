//! # ioregionfd-model
//!
//! An executable, model-checked reimplementation of the KVM side of *ioregionfd* and of the
//! mainline in-kernel I/O bus it builds on.
//!
//! Layers, bottom up: [`uapi`] (structures and their byte images) and [`wire`] (the ioregionfd
//! command and response formats) → [`bus`] (`kvm_io_bus`, ioeventfd, coalesced MMIO, SRCU) →
//! [`fd`] (files and the process fd table) → [`vm`] and [`kvm`] (the system). Beside them:
//! [`design`] (the presets), [`sync`] (the concurrency facade: std, loom or shuttle),
//! [`invariants`] (the catalogue and its checks), [`trace`] (events for counterexamples), and
//! [`script`] (the line-oriented interface reviewers and differential tests use).
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
pub mod sync;
pub mod trace;
pub mod uapi;
pub mod vcpu;
pub mod vm;
pub mod wire;
