// SPDX-License-Identifier: MIT OR Apache-2.0
//! The code of the `ioregionfd-model` command line that is not the command line itself: the
//! measurements `ioregionfd-model bench` makes, shared with the criterion benches of this crate
//! (`cargo bench`).

pub mod bench;
