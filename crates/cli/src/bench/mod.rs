// SPDX-License-Identifier: MIT OR Apache-2.0
//! Measurement code shared by the criterion benches (`crates/cli/benches/*.rs`) and by
//! `ioregionfd-model bench`.
//!
//! * [`rt`]: one 32-byte command and one 32-byte response between a "vCPU" thread and a device
//!   thread over real fds (pipes, socketpairs, FIFOs, an eventfd pair with a shared slot) and a
//!   futex ping-pong (the floor), pinned to one CPU or across two.
//! * [`kvm`]: the paths a guest access takes on `/dev/kvm` (an exit handled in the vCPU thread,
//!   an exit forwarded to a device thread, an ioeventfd-signalled posted write).
//! * [`bus`]: device lookup on the crate's bus, a sorted array, and a Firecracker-style scan.
//! * [`report`]: statistics, tables and the SVG chart.

pub mod bus;
#[cfg(target_os = "linux")]
pub mod kvm;
pub mod report;
#[cfg(target_os = "linux")]
pub mod rt;

/// Where the two threads of a round trip run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Both threads on CPU 0.
    OneCpu,
    /// The vCPU thread on CPU 0, the device thread on CPU 1.
    TwoCpus,
}

impl Pinning {
    pub const ALL: [Pinning; 2] = [Pinning::OneCpu, Pinning::TwoCpus];

    pub fn name(self) -> &'static str {
        match self {
            Pinning::OneCpu => "one CPU",
            Pinning::TwoCpus => "two CPUs",
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Pinning::OneCpu => "one-cpu",
            Pinning::TwoCpus => "two-cpus",
        }
    }

    /// CPU of the vCPU thread and of the device thread.
    pub fn cpus(self) -> (usize, usize) {
        match self {
            Pinning::OneCpu => (0, 0),
            Pinning::TwoCpus => (0, 1),
        }
    }
}

/// The CPUs this process may run on.
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size; pid 0 is the calling thread.
    let r = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET only reads the set.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Pins the calling thread to the `index`-th allowed CPU (`None`: every allowed CPU).
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpus: &[usize], index: Option<usize>) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    match index {
        // SAFETY: CPU_SET writes one bit of `set`; the CPU number is below CPU_SETSIZE.
        Some(i) => unsafe { libc::CPU_SET(cpus[i % cpus.len()], &mut set) },
        None => {
            for &c in cpus {
                // SAFETY: as above.
                unsafe { libc::CPU_SET(c, &mut set) };
            }
        }
    }
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// Restores the calling thread's affinity to every allowed CPU when dropped.
#[cfg(target_os = "linux")]
pub struct Unpin(pub Vec<usize>);

#[cfg(target_os = "linux")]
impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = pin_current_thread(&self.0, None);
    }
}
