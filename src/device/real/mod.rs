//! The device library on real file descriptors (Linux), for VMM authors: a device's end of a
//! connection ([`Transport`]), the blocking loop that serves an
//! [`IoregionDevice`](super::IoregionDevice) on it ([`serve`], and [`serve_until`] with a stop
//! fd such as a [`StopEvent`]), the non-blocking server for event loops ([`NonBlockingServer`]),
//! and KVM's end played in userspace ([`KernelSide`], [`connect`]) for tests, benchmarks and the
//! conformance harness. It needs the wire format (`crate::wire`) and system calls, nothing of
//! the model.

mod kernel_side;
mod nonblocking;
mod serve;
mod stop;
mod sys;
mod transport;

pub(crate) use sys::inherit_on_exec;

pub use kernel_side::{KernelSide, ResponseError, connect};
pub use nonblocking::{NonBlockingServer, Progress, Received};
pub use serve::{ServeError, ServeSummary, StopReason, serve, serve_from_env, serve_until};
pub use stop::StopEvent;
pub use transport::{ENV_CMD_FD, ENV_FORMAT, ENV_RESP_FD, ENV_TRANSPORT, Transport, TransportKind};
