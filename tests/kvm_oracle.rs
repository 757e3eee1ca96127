// SPDX-License-Identifier: MIT OR Apache-2.0
//! Differential test of the I/O-bus model against the real kernel.
//!
//! Every test builds an [`Oracle`]: a fresh real VM (`tests/common/kvm_guest.rs`) and a fresh
//! modelled system with one VM, and runs the same steps on both. Registrations must give the same
//! result (`ok` or the same errno); guest accesses must have the same observable effect: the same
//! exit (address/port, length, direction, written bytes), or the same eventfd counter going up by
//! exactly one, or the same entry appended to the coalesced ring. After every step the model's
//! structural invariants and recorded violations must be clean.
//!
//! * `generated_sequences_agree_with_kvm`: proptest sequences of 1..=40 operations (2000 cases by
//!   default, `PROPTEST_CASES` overrides) over small address windows so that registrations
//!   collide: MMIO `0x1000_0000 + 0..0x40` plus offsets around the next page boundary, ports
//!   `0x60..0x70`, raw ioeventfd arguments (every length, datamatch or wildcard, unknown flag
//!   bits, bad fds, wrapping addresses), coalesced zones (raw `pio` 0/1/2, odd sizes), writes and
//!   reads of every width, and closing registered eventfds. Files are named by recency and
//!   accesses, deassigns and colliding assigns are aimed at recent registrations, resolved when
//!   the step runs, so that a good share of accesses is taken in the kernel.
//! * fixed cases: the NR_IOBUS_DEVS boundary, the nested-range quirk of the bus walk, the full
//!   coalesced ring, and registration order deciding between a len-0 ioeventfd and a zone.
//!
//! A mismatch prints the sequence run so far as a script for `ioregionfd-model script` (each
//! line followed by `# result`), then the model's and the kernel's view of the differing step.
//! Without a usable `/dev/kvm` every test prints one `skip: /dev/kvm not available: ...` line.
//!
//! The backend is detected once (see [`backend`]) and the model VM configured with it. Real VMs
//! of finished sequences are destroyed on other threads: after any registration, destroying a VM
//! waits for an SRCU grace period (the old bus arrays are freed with `call_srcu`), 8-20 ms here.

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::kvm_guest::{
    CoalescedEntry, Exit, GuestAccess, KvmGuest, guest_or_skip, join_background_drops, raw_coalesced, raw_ioeventfd,
};
use ioregionfd_model::bus::{BusKind, HandledBy};
use ioregionfd_model::errno::Errno;
use ioregionfd_model::kvm::Kvm;
use ioregionfd_model::script::{Op, parse_line};
use ioregionfd_model::sync::Arc;
use ioregionfd_model::trace::Recorder;
use ioregionfd_model::uapi::KvmCoalescedMmioZone;
use ioregionfd_model::vm::{AccessOutcome, Backend, KvmExit, Vm, VmConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner, contextualize_config};
use vmm_sys_util::eventfd::EventFd;

/// Start of the MMIO window (unbacked guest-physical memory, identity mapped by the guest).
const MMIO_BASE: u64 = 0x1000_0000;
/// An fd number the model never gives out in these tests (it would need 997 open files).
const NEVER_OPEN_MODEL_FD: i32 = 1000;
/// Its real counterpart: far above any RLIMIT_NOFILE, so certainly not open (a just-closed real
/// number could be reused by a test running in parallel).
const NEVER_OPEN_REAL_FD: i32 = 1 << 29;
/// `KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY`: accepted on x86, lands on a bus nothing reads.
const FLAG_CCW: u32 = 1 << 3;

// ---------------------------------------------------------------------------------------------
// Backend detection
// ---------------------------------------------------------------------------------------------

/// The host's backend, checked once on a scratch VM: a len-0 MMIO ioeventfd also sits on the
/// FAST_MMIO bus, which only VMX/EPT's EPT-misconfig fast path consults, and that path does not
/// know the direction: there, a *read* of the address (after the page's first access installed an
/// MMIO SPTE) signals the eventfd. On emulating backends every read exits to userspace.
fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| {
        let mut g = KvmGuest::new().unwrap_or_else(|e| panic!("backend probe VM: {e}"));
        let e = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let addr = MMIO_BASE + 0x8000;
        raw_ioeventfd(g.vm(), 0, addr, 0, e.as_raw_fd(), 0).expect("len-0 MMIO ioeventfd for the probe");
        let mut fast = false;
        for _ in 0..4 {
            let exit =
                g.access(GuestAccess::Mmio { write: false, addr, len: 4, value: 0 }, 0x1234).expect("probe read");
            fast |= exit == Exit::InKernel;
        }
        fast |= read_counter(&e) > 0;
        if fast { Backend::VmxEpt } else { Backend::Emulated }
    })
}

fn backend_line(b: Backend) -> String {
    match b {
        Backend::Emulated => {
            "kvm oracle: backend emulated (kvm_pvm/shadow paging: no FAST_MMIO fast path seen)".to_string()
        }
        Backend::VmxEpt => {
            "kvm oracle: backend vmx-ept (a read of a len-0 MMIO ioeventfd signalled it: FAST_MMIO fast path)"
                .to_string()
        }
    }
}

/// Reads and resets a non-blocking eventfd (0 when nothing was signalled).
fn read_counter(e: &EventFd) -> u64 {
    match e.read() {
        Ok(n) => n,
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(err) => panic!("eventfd read: {err}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Steps and observations
// ---------------------------------------------------------------------------------------------

/// One step of a run: a script operation, or opening a file that is not an eventfd (which the
/// script syntax cannot express).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Op(Op),
    OpenOther,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Op(op) => op.fmt(f),
            // Not in the script syntax: `Kvm::open_other("/dev/null")`.
            Step::OpenOther => f.write_str("open-other /dev/null"),
        }
    }
}

/// What an access did, in terms both sides can report.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// An exit to userspace; `data` is empty for reads.
    Exit { bus: BusKind, addr: u64, len: usize, write: bool, data: Vec<u8> },
    /// Handled in the kernel by an ioeventfd: the open eventfd (model fd number) whose counter went
    /// up, or `None` when it signalled an eventfd userspace no longer holds open.
    Eventfd(Option<i32>),
    /// Appended to the coalesced ring.
    Coalesced,
    /// Any other model outcome (no other device is registered here, so never right).
    Other(String),
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Exit { bus, addr, len, write, data } => {
                write!(f, "exit {bus} {addr:#x} {len}")?;
                if *write {
                    let mut b = [0u8; 8];
                    b[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
                    write!(f, " {:#x}", u64::from_le_bytes(b))?;
                }
                Ok(())
            }
            Seen::Eventfd(Some(fd)) => write!(f, "eventfd {fd}"),
            Seen::Eventfd(None) => f.write_str("eventfd (closed)"),
            Seen::Coalesced => f.write_str("coalesced"),
            Seen::Other(what) => write!(f, "unexpected {what}"),
        }
    }
}

/// Everything compared after one access.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Observation {
    seen: Seen,
    /// Entries waiting in the coalesced ring right after the access.
    pending: usize,
    /// The entries drained after the access (empty when not draining).
    ring: Vec<CoalescedEntry>,
    /// Counter increments of the open eventfds (model fd numbers), zero ones left out.
    signalled: BTreeMap<i32, u64>,
}

fn fmt_entry(e: &CoalescedEntry) -> String {
    let bytes: Vec<String> = e.data.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} {:#x} len {} [{}]", if e.pio { "pio" } else { "mmio" }, e.addr, e.data.len(), bytes.join(" "))
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; ring pending {}", self.seen, self.pending)?;
        if !self.ring.is_empty() {
            let entries: Vec<String> = self.ring.iter().map(fmt_entry).collect();
            write!(f, ", drained {{{}}}", entries.join(", "))?;
        }
        let sig: Vec<String> = self.signalled.iter().map(|(fd, n)| format!("eventfd {fd} +{n}")).collect();
        write!(f, "; counters {{{}}}", sig.join(", "))
    }
}

/// The two sides' views of a step that differs.
#[derive(Debug)]
struct Mismatch {
    model: String,
    kernel: String,
}

fn errno_str(r: Result<(), Errno>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("err {e}"),
    }
}

fn real_errno_str(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "ok".to_string(),
        Err(code) => match Errno::from_code(code) {
            Some(e) => format!("err {e}"),
            None => format!("err errno {code}"),
        },
    }
}

/// Agreement of two ioctl-like results.
fn agree(model: String, kernel: String) -> Result<String, Mismatch> {
    if model == kernel { Ok(model) } else { Err(Mismatch { model, kernel }) }
}

// ---------------------------------------------------------------------------------------------
// The oracle: a real VM and a modelled one, stepped together
// ---------------------------------------------------------------------------------------------

/// A file the real process holds for a model fd number.
enum RealFile {
    Eventfd(EventFd),
    Other(File),
}

impl RealFile {
    fn raw(&self) -> i32 {
        match self {
            RealFile::Eventfd(e) => e.as_raw_fd(),
            RealFile::Other(f) => f.as_raw_fd(),
        }
    }
}

/// Per-run tallies.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    ops: u64,
    accesses: u64,
    exits: u64,
    eventfd: u64,
    coalesced: u64,
    reg_ok: u64,
    reg_err: u64,
}

struct Oracle {
    guest: KvmGuest,
    kvm: Kvm,
    vm_id: usize,
    vm: Arc<Vm>,
    /// Open files, keyed by the model's fd number (the real numbers differ).
    real: BTreeMap<i32, RealFile>,
    /// Open model eventfds and their counter when last looked at.
    counts: BTreeMap<i32, u64>,
    /// Model fd numbers in creation order (generated steps name files by recency).
    created: Vec<i32>,
    /// Every registration tried so far, and whether it is (probably) still in place: generated
    /// steps aim at them.
    targets: Vec<(Target, bool)>,
    /// The steps run so far, as script lines with their agreed results.
    script: Vec<String>,
    /// Drain both rings after every access (and compare the entries).
    auto_drain: bool,
    next_read_value: u64,
    tally: Tally,
}

impl Oracle {
    fn new(backend: Backend) -> Oracle {
        let guest = KvmGuest::new().unwrap_or_else(|e| panic!("real VM: {e}"));
        let kvm = Kvm::with_recorder(Recorder::without_events());
        let vm_id = kvm.create_vm(VmConfig { backend, ..VmConfig::default() });
        let vm = kvm.vm(vm_id).expect("model VM");
        // Parsed rather than built, so that new `vm` options keep their defaults.
        let vm_line = parse_line(&format!("vm backend={}", backend.name())).expect("vm line").expect("an op");
        Oracle {
            guest,
            kvm,
            vm_id,
            vm,
            real: BTreeMap::new(),
            counts: BTreeMap::new(),
            created: Vec::new(),
            targets: Vec::new(),
            script: vec![format!("{vm_line}  # vm {vm_id}")],
            auto_drain: true,
            next_read_value: 0x0123_4567_89ab_cdef,
            tally: Tally::default(),
        }
    }

    /// Runs `step` on both sides. `Ok` with the agreed result (`ok`, `err EEXIST`, `coalesced`,
    /// `eventfd 3`, `exit mmio 0x10000000 4 0x55`, ...), `Err` with the full report otherwise.
    fn step(&mut self, step: &Step) -> Result<String, String> {
        self.tally.ops += 1;
        let r = match step {
            Step::OpenOther => Ok(self.open_other()),
            Step::Op(op) => self.run_op(op),
        };
        let line = step.to_string();
        match r.and_then(|result| self.check_model(&result).map(|()| result)) {
            Ok(result) => {
                self.script.push(format!("{line}  # {result}"));
                Ok(result)
            }
            Err(m) => Err(self.report(&line, &m)),
        }
    }

    /// `step` for fixed tests: panics with the report on a mismatch.
    fn must(&mut self, step: Step) -> String {
        self.step(&step).unwrap_or_else(|report| panic!("{report}"))
    }

    fn op(&mut self, op: Op) -> String {
        self.must(Step::Op(op))
    }

    fn report(&self, line: &str, m: &Mismatch) -> String {
        let mut s = format!(
            "kvm oracle mismatch at step {} `{line}`\n  model:  {}\n  kernel: {}\n\
             script (ioregionfd-model script; `# result` as agreed so far; `open-other /dev/null` is \
             Kvm::open_other, not in the script syntax):\n",
            self.script.len(),
            m.model,
            m.kernel
        );
        for l in &self.script {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&format!("{line}  # MISMATCH: model `{}`, kernel `{}`\n", m.model, m.kernel));
        s
    }

    /// The model's invariants after a step that agreed on `result`: no structural violation,
    /// no recorded violation.
    fn check_model(&self, result: &str) -> Result<(), Mismatch> {
        let structure = self.kvm.check_structure();
        let recorded = self.kvm.recorder().violations();
        if structure.is_empty() && recorded.is_empty() {
            return Ok(());
        }
        let mut what: Vec<String> =
            structure.iter().map(|(inv, text)| format!("violation {}: {text}", inv.id)).collect();
        what.extend(recorded.iter().map(|v| v.to_string()));
        Err(Mismatch { model: format!("{result}, then {}", what.join("; ")), kernel: result.to_string() })
    }

    fn open_other(&mut self) -> String {
        let fd = self.kvm.open_other("/dev/null");
        let f = File::open("/dev/null").expect("open /dev/null");
        assert!(self.real.insert(fd, RealFile::Other(f)).is_none(), "model reused open fd {fd}");
        self.created.push(fd);
        format!("fd {fd}")
    }

    /// The real fd standing for model fd `fd`.
    fn real_fd(&self, fd: i32) -> i32 {
        match self.real.get(&fd) {
            Some(f) => f.raw(),
            None if fd < 0 => fd,
            None => NEVER_OPEN_REAL_FD,
        }
    }

    fn run_op(&mut self, op: &Op) -> Result<String, Mismatch> {
        match *op {
            Op::Eventfd => {
                let fd = self.kvm.eventfd();
                let e = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
                assert!(self.real.insert(fd, RealFile::Eventfd(e)).is_none(), "model reused open fd {fd}");
                self.counts.insert(fd, 0);
                self.created.push(fd);
                Ok(format!("eventfd {fd}"))
            }
            Op::Close { fd } => {
                let model = errno_str(self.kvm.close(fd));
                let kernel = match self.real.remove(&fd) {
                    // Dropping the EventFd/File closes it (KVM keeps its own eventfd reference).
                    Some(f) => {
                        drop(f);
                        Ok(())
                    }
                    None => {
                        let bad = if fd < 0 { fd } else { NEVER_OPEN_REAL_FD };
                        // SAFETY: `bad` is not an open descriptor of this process (see
                        // NEVER_OPEN_REAL_FD), so nothing is closed; only the errno is wanted.
                        let r = unsafe { libc::close(bad) };
                        if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) }
                    }
                };
                self.counts.remove(&fd);
                agree(model, real_errno_str(kernel))
            }
            Op::Ioeventfd { vm: _, bus, addr, len, fd, datamatch, deassign, extra_flags } => {
                let args = Op::ioeventfd_args(bus, addr, len, fd, datamatch, deassign, extra_flags);
                let model = self.kvm.ioeventfd(self.vm_id, &args);
                let t = Target { bus, addr, len, zone: false, datamatch, fd, extra: extra_flags, pio: None };
                if !deassign {
                    self.targets.push((t, model.is_ok()));
                } else if model.is_ok()
                    && let Some(live) = self.targets.iter_mut().find(|(x, live)| *live && !x.zone && *x == t)
                {
                    live.1 = false;
                }
                let kernel =
                    raw_ioeventfd(self.guest.vm(), args.datamatch, args.addr, args.len, self.real_fd(fd), args.flags);
                self.tally_reg(model.is_ok());
                note_result(if deassign { "deassign" } else { "assign" }, &model);
                agree(errno_str(model), real_errno_str(kernel))
            }
            Op::Coalesced { vm: _, bus, addr, size, pio, unregister } => {
                let zone = KvmCoalescedMmioZone { addr, size, pio: pio.unwrap_or(u32::from(bus == BusKind::Pio)) };
                let model = if unregister {
                    self.kvm.unregister_coalesced_mmio(self.vm_id, &zone)
                } else {
                    self.kvm.register_coalesced_mmio(self.vm_id, &zone)
                };
                let bus = if zone.pio == 1 { BusKind::Pio } else { BusKind::Mmio };
                if !unregister {
                    let t = Target { bus, addr, len: size, zone: true, datamatch: None, fd: -1, extra: 0, pio };
                    self.targets.push((t, model.is_ok()));
                } else {
                    // Roughly what unregister removes: zones of the kind containing the range.
                    let end = addr.checked_add(u64::from(size)).filter(|_| i32::try_from(size).is_ok());
                    for (t, live) in self.targets.iter_mut().filter(|(t, _)| t.zone && t.bus == bus) {
                        if end.is_some_and(|end| addr >= t.addr && end <= t.addr.wrapping_add(u64::from(t.len))) {
                            *live = false;
                        }
                    }
                }
                let kernel = raw_coalesced(self.guest.vm(), zone.addr, zone.size, zone.pio, unregister);
                self.tally_reg(model.is_ok());
                note_result(if unregister { "unregister" } else { "register" }, &model);
                agree(errno_str(model), real_errno_str(kernel))
            }
            Op::Write { bus, addr, len, value, .. } => self.access(bus, addr, len, Some(value)),
            Op::Read { bus, addr, len, .. } => self.access(bus, addr, len, None),
            // `vm`, `fail-next-alloc`, and the ioregion operations have no counterpart here.
            #[allow(unreachable_patterns)]
            _ => panic!("`{op}` has no kernel counterpart in this test"),
        }
    }

    fn tally_reg(&mut self, ok: bool) {
        if ok {
            self.tally.reg_ok += 1;
        } else {
            self.tally.reg_err += 1;
        }
    }

    /// Counter increments of the open model eventfds since the last look.
    fn model_signalled(&mut self) -> BTreeMap<i32, u64> {
        let mut out = BTreeMap::new();
        for (&fd, last) in self.counts.iter_mut() {
            let now = self.kvm.eventfd_count(fd).unwrap_or_else(|e| panic!("model eventfd {fd}: {e}"));
            if now != *last {
                out.insert(fd, now.wrapping_sub(*last));
                *last = now;
            }
        }
        out
    }

    /// Counter values of the open real eventfds (reading resets them).
    fn real_signalled(&self) -> BTreeMap<i32, u64> {
        let mut out = BTreeMap::new();
        for (&fd, f) in &self.real {
            if let RealFile::Eventfd(e) = f {
                let n = read_counter(e);
                if n != 0 {
                    out.insert(fd, n);
                }
            }
        }
        out
    }

    fn model_drain(&self) -> Vec<CoalescedEntry> {
        std::iter::from_fn(|| self.vm.io.ring.pop())
            .map(|e| {
                let len = (e.len as usize).min(8);
                CoalescedEntry { addr: e.phys_addr, pio: e.pio != 0, data: e.data[..len].to_vec() }
            })
            .collect()
    }

    fn real_drain(&mut self) -> Result<Vec<CoalescedEntry>, Mismatch> {
        self.guest
            .drain_coalesced()
            .map_err(|e| Mismatch { model: "(ring drained)".into(), kernel: format!("harness: {e}") })
    }

    fn access(&mut self, bus: BusKind, addr: u64, len: usize, value: Option<u64>) -> Result<String, Mismatch> {
        self.tally.accesses += 1;
        // Model.
        let outcome = self.vm.access(bus, addr, len, value).unwrap_or_else(|e| panic!("model refused access: {e}"));
        let pending = self.vm.io.ring.len();
        let ring = if self.auto_drain { self.model_drain() } else { Vec::new() };
        let signalled = self.model_signalled();
        let seen = match outcome {
            AccessOutcome::Handled(HandledBy::Coalesced) => Seen::Coalesced,
            AccessOutcome::Handled(HandledBy::Ioeventfd { eventfd }) => {
                // The label is the fd number at creation; that number may now be closed or name a
                // newer eventfd: only an open one whose counter went up is "this eventfd".
                Seen::Eventfd((signalled.get(&eventfd) == Some(&1)).then_some(eventfd))
            }
            AccessOutcome::Exit(KvmExit::Mmio { addr, len, data, is_write }) => Seen::Exit {
                bus: BusKind::Mmio,
                addr,
                len: len as usize,
                write: is_write,
                data: if is_write { data[..len as usize].to_vec() } else { Vec::new() },
            },
            AccessOutcome::Exit(KvmExit::Io { port, size, data, is_out }) => Seen::Exit {
                bus: BusKind::Pio,
                addr: u64::from(port),
                len: usize::from(size),
                write: is_out,
                data: if is_out { data[..usize::from(size)].to_vec() } else { Vec::new() },
            },
            // Other devices (ioregions) and outcomes (blocked, interrupted) are never right here:
            // nothing but ioeventfds and coalesced zones is registered.
            #[allow(unreachable_patterns)]
            other => Seen::Other(format!("{other:?}")),
        };
        let model = Observation { seen, pending, ring, signalled };

        // Kernel.
        let kernel = self.real_access(bus, addr, len, value, &model)?;
        if model != kernel {
            return Err(Mismatch { model: model.to_string(), kernel: kernel.to_string() });
        }
        match model.seen {
            Seen::Exit { .. } => self.tally.exits += 1,
            Seen::Eventfd(_) => self.tally.eventfd += 1,
            Seen::Coalesced => self.tally.coalesced += 1,
            Seen::Other(_) => {}
        }
        Ok(model.seen.to_string())
    }

    fn real_access(
        &mut self,
        bus: BusKind,
        addr: u64,
        len: usize,
        value: Option<u64>,
        model: &Observation,
    ) -> Result<Observation, Mismatch> {
        let harness = |e: String| Mismatch { model: model.to_string(), kernel: format!("harness: {e}") };
        let write = value.is_some();
        let len8 = u8::try_from(len).expect("access length");
        let access = match bus {
            BusKind::Pio => GuestAccess::Pio {
                write,
                port: u16::try_from(addr).expect("port"),
                len: len8,
                value: value.unwrap_or(0),
            },
            _ => GuestAccess::Mmio { write, addr, len: len8, value: value.unwrap_or(0) },
        };
        self.next_read_value = self.next_read_value.rotate_left(7) ^ 0x9e37_79b9_7f4a_7c15;
        let before = self.guest.coalesced_pending().map_err(harness)?;
        let exit = self.guest.access(access, self.next_read_value).map_err(harness)?;
        let pending = self.guest.coalesced_pending().map_err(harness)?;
        let ring = if self.auto_drain { self.real_drain()? } else { Vec::new() };
        let signalled = self.real_signalled();
        let seen = match exit {
            Exit::InKernel if pending > before => Seen::Coalesced,
            Exit::InKernel => match signalled.iter().next() {
                Some((&fd, &1)) if signalled.len() == 1 => Seen::Eventfd(Some(fd)),
                _ => Seen::Eventfd(None),
            },
            Exit::MmioWrite { addr, data } => {
                Seen::Exit { bus: BusKind::Mmio, addr, len: data.len(), write: true, data }
            }
            Exit::MmioRead { addr, len } => {
                Seen::Exit { bus: BusKind::Mmio, addr, len, write: false, data: Vec::new() }
            }
            Exit::IoOut { port, data } => {
                Seen::Exit { bus: BusKind::Pio, addr: u64::from(port), len: data.len(), write: true, data }
            }
            Exit::IoIn { port, len } => {
                Seen::Exit { bus: BusKind::Pio, addr: u64::from(port), len, write: false, data: Vec::new() }
            }
            // No ioregion is ever registered here.
            Exit::IoregionFailure { .. } => {
                return Err(harness(format!("unexpected ioregionfd failure exit {exit:?}")));
            }
        };
        Ok(Observation { seen, pending, ring, signalled })
    }

    /// Drains both rings and compares them entry by entry; returns the number of entries.
    fn drain_and_compare(&mut self) -> usize {
        let model = self.model_drain();
        let kernel = self.real_drain().unwrap_or_else(|m| panic!("{}", self.report("(drain rings)", &m)));
        if model != kernel {
            let show = |v: &[CoalescedEntry]| v.iter().map(fmt_entry).collect::<Vec<_>>().join(", ");
            let m = Mismatch { model: show(&model), kernel: show(&kernel) };
            panic!("{}", self.report("(drain rings)", &m));
        }
        self.script.push(format!("# drained {} ring entries", model.len()));
        model.len()
    }

    /// Model fd standing for a generated file reference.
    fn resolve_fd(&self, r: FdRef) -> i32 {
        match r {
            FdRef::Recent(k) if !self.created.is_empty() => {
                let n = self.created.len();
                self.created[n - 1 - usize::from(k) % n]
            }
            FdRef::Recent(_) | FdRef::NeverOpened => NEVER_OPEN_MODEL_FD,
            FdRef::Minus1 => -1,
        }
    }

    /// The step a generated operation stands for in the current state.
    fn resolve(&self, g: &GenOp) -> Step {
        let vm = self.vm_id;
        Step::Op(match *g {
            GenOp::Eventfd => Op::Eventfd,
            GenOp::OpenOther => return Step::OpenOther,
            GenOp::Close(r) => Op::Close { fd: self.resolve_fd(r) },
            GenOp::Ioeventfd { pio, addr, len, fd, datamatch, deassign, extra } => Op::Ioeventfd {
                vm,
                bus: if pio { BusKind::Pio } else { BusKind::Mmio },
                addr,
                len,
                fd: self.resolve_fd(fd),
                datamatch,
                deassign,
                extra_flags: extra,
            },
            GenOp::Coalesced { pio, addr, size, unregister } => {
                let bus = if pio == 1 { BusKind::Pio } else { BusKind::Mmio };
                let default = u32::from(bus == BusKind::Pio);
                Op::Coalesced { vm, bus, addr, size, pio: (pio != default).then_some(pio), unregister }
            }
            GenOp::Access { pio, addr, len, value } => {
                access_op_for(vm, if pio { BusKind::Pio } else { BusKind::Mmio }, addr, len, value)
            }
            GenOp::Poke { k, len_pick, offset, use_datamatch, write, value } => {
                let Some(t) = self.target(k) else {
                    return Step::Op(access_op_for(vm, BusKind::Mmio, MMIO_BASE, 4, write.then_some(value)));
                };
                let lens: &[usize] = if t.bus == BusKind::Pio { &[1, 2, 4] } else { &[1, 2, 4, 8] };
                let len = match usize::try_from(t.len) {
                    Ok(l) if len_pick == 0 && lens.contains(&l) => l,
                    _ => lens[usize::from(len_pick) % lens.len()],
                };
                let mut addr = t.addr;
                if t.zone {
                    addr = addr.wrapping_add(u64::from(offset) % u64::from(t.len.clamp(1, 0x100)));
                }
                // Registrations the guest cannot reach (wrapping addresses) are replaced by the
                // start of the window.
                let addr = match t.bus {
                    BusKind::Pio if addr > 0xfffc => 0x60,
                    BusKind::Pio => addr,
                    _ if !(MMIO_BASE..MMIO_BASE + 0x1_0000).contains(&addr) => MMIO_BASE,
                    _ => addr,
                };
                let value = match t.datamatch {
                    Some(d) if use_datamatch => d,
                    _ => value,
                };
                access_op_for(vm, t.bus, addr, len, write.then_some(value))
            }
            GenOp::Undo { k, same_fd, fd, narrow } => {
                let Some(t) = self.target(k) else { return Step::Op(Op::Eventfd) };
                if t.zone {
                    // The exact zone, or a range inside it (removes every zone containing it).
                    let (addr, size) = if narrow == 0 {
                        (t.addr, t.len)
                    } else {
                        (t.addr.wrapping_add(u64::from(narrow) % u64::from(t.len.max(1))), 1)
                    };
                    Op::Coalesced { vm, bus: t.bus, addr, size, pio: t.pio, unregister: true }
                } else {
                    let fd = if same_fd { t.fd } else { self.resolve_fd(fd) };
                    let len = if narrow % 4 == 3 { t.len ^ 4 } else { t.len };
                    Op::Ioeventfd {
                        vm,
                        bus: t.bus,
                        addr: t.addr,
                        len,
                        fd,
                        datamatch: t.datamatch,
                        deassign: true,
                        extra_flags: t.extra,
                    }
                }
            }
            GenOp::Redo { k, fd, len, datamatch, offset } => {
                let Some(t) = self.target(k) else { return Step::Op(Op::Eventfd) };
                let addr =
                    if t.zone { t.addr.wrapping_add(u64::from(offset) % u64::from(t.len.max(1))) } else { t.addr };
                let datamatch = datamatch.map(|d| t.datamatch.unwrap_or(d));
                let fd = self.resolve_fd(fd);
                Op::Ioeventfd { vm, bus: t.bus, addr, len, fd, datamatch, deassign: false, extra_flags: 0 }
            }
        })
    }

    /// The k-th most recent registration still in place (of any, when none is).
    fn target(&self, k: u8) -> Option<Target> {
        let ok: Vec<Target> = self.targets.iter().filter(|(_, ok)| *ok).map(|(t, _)| *t).collect();
        let pool = if ok.is_empty() { self.targets.iter().map(|(t, _)| *t).collect() } else { ok };
        let n = pool.len();
        (n > 0).then(|| pool[n - 1 - usize::from(k) % n])
    }

    /// Ends the run; the real VM is destroyed on another thread (see
    /// `KvmGuest::drop_in_background`).
    fn finish(self) {
        let Oracle { guest, .. } = self;
        guest.drop_in_background();
    }
}

/// A write (`value` given, truncated to `len` bytes) or read, kept inside one 4 KiB page.
fn access_op_for(vm: usize, bus: BusKind, addr: u64, len: usize, value: Option<u64>) -> Op {
    let addr = if bus == BusKind::Mmio && (addr & 0xfff) + len as u64 > 0x1000 {
        (addr | 0xfff) + 1 - len as u64
    } else {
        addr
    };
    match value {
        Some(v) => {
            let v = if len == 8 { v } else { v & ((1u64 << (8 * len)) - 1) };
            Op::Write { vm, bus, addr, len, value: v }
        }
        None => Op::Read { vm, bus, addr, len },
    }
}

/// A registration some generated accesses aim at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    bus: BusKind,
    addr: u64,
    /// ioeventfd length or zone size.
    len: u32,
    zone: bool,
    datamatch: Option<u64>,
    /// The ioeventfd's eventfd.
    fd: i32,
    /// The ioeventfd's extra flag bits.
    extra: u32,
    /// The zone's explicit raw `pio` field.
    pio: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Generated sequences
// ---------------------------------------------------------------------------------------------

/// A file named by a generated operation, resolved when it runs.
#[derive(Clone, Copy, Debug)]
enum FdRef {
    /// The k-th most recently created file (0 = newest); never-opened when none exists yet.
    Recent(u8),
    /// `-1`.
    Minus1,
    /// A number that was never open.
    NeverOpened,
}

/// A generated operation (file references are resolved at run time, see [`Oracle::resolve`]).
#[derive(Clone, Debug)]
enum GenOp {
    Eventfd,
    OpenOther,
    Close(FdRef),
    Ioeventfd {
        pio: bool,
        addr: u64,
        len: u32,
        fd: FdRef,
        datamatch: Option<u64>,
        deassign: bool,
        extra: u32,
    },
    Coalesced {
        pio: u32,
        addr: u64,
        size: u32,
        unregister: bool,
    },
    Access {
        pio: bool,
        addr: u64,
        len: usize,
        value: Option<u64>,
    },
    /// An access aimed at the k-th most recent registration: at its address (or inside the
    /// zone, `offset`), of its length when `len_pick` is 0 and the length is one an access can
    /// have, writing its datamatch value when `use_datamatch`.
    Poke {
        k: u8,
        len_pick: u8,
        offset: u8,
        use_datamatch: bool,
        write: bool,
        value: u64,
    },
    /// Deassign / unregister the k-th most recent registration: same arguments (the same eventfd
    /// when `same_fd`; `narrow`: a range inside the zone, or for ioeventfds another length).
    Undo {
        k: u8,
        same_fd: bool,
        fd: FdRef,
        narrow: u8,
    },
    /// A new ioeventfd at the address of the k-th most recent registration (inside the zone at
    /// `offset`), to collide with it or overlap it; a datamatch takes the target's value.
    Redo {
        k: u8,
        fd: FdRef,
        len: u32,
        datamatch: Option<u64>,
        offset: u8,
    },
}

/// Values that datamatch registrations and writes share, so that both hits and misses occur;
/// the last one is wider than 4 bytes (never matches a shorter access).
const HOT_VALUES: [u64; 7] = [0, 1, 0x55, 0xff, 0xbeef, 0xdead_beef, 0x1_0000_0055];

fn value() -> impl Strategy<Value = u64> {
    prop_oneof![4 => prop::sample::select(HOT_VALUES.to_vec()), 1 => any::<u64>()]
}

/// MMIO addresses: a 64-byte window with hot spots, plus offsets around the next page boundary.
fn mmio_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        5 => prop::sample::select(vec![0u64, 2, 4, 8, 0x10, 0x20]),
        4 => 0u64..0x40,
        1 => prop::sample::select(vec![0xff8u64, 0xffc, 0xffe, 0xfff, 0x1000, 0x1004]),
    ]
    .prop_map(|off| MMIO_BASE + off)
}

fn port() -> impl Strategy<Value = u64> {
    prop_oneof![prop::sample::select(vec![0x60u64, 0x64, 0x68]), 0x60u64..0x70]
}

/// A registration address: MMIO or port window, rarely one where `addr + len` wraps.
fn reg_addr(pio: bool) -> impl Strategy<Value = u64> {
    let window = if pio { port().boxed() } else { mmio_addr().boxed() };
    prop_oneof![25 => window, 1 => (0u64..9).prop_map(|k| u64::MAX - k)]
}

fn fd_ref() -> impl Strategy<Value = FdRef> {
    prop_oneof![40 => (0u8..4).prop_map(FdRef::Recent), 1 => Just(FdRef::Minus1), 1 => Just(FdRef::NeverOpened)]
}

fn ioeventfd_op() -> impl Strategy<Value = GenOp> {
    let extra = prop_oneof![
        40 => Just(0u32),
        2 => Just(FLAG_CCW),
        2 => Just(1 << 4),
        1 => Just(1 << 5),
        1 => Just(1 << 10),
    ];
    (prop::bool::weighted(0.3), ioeventfd_len())
        .prop_flat_map(move |(pio, len)| {
            // DATAMATCH with len 0 is EINVAL: keep it, but rarer.
            let datamatch = if len == 0 { 0.15 } else { 0.45 };
            (
                Just(pio),
                reg_addr(pio),
                Just(len),
                fd_ref(),
                prop::option::weighted(datamatch, value()),
                prop::bool::weighted(0.15),
                extra.clone(),
            )
        })
        .prop_map(|(pio, addr, len, fd, datamatch, deassign, extra)| GenOp::Ioeventfd {
            pio,
            addr,
            len,
            fd,
            datamatch,
            deassign,
            extra,
        })
}

fn coalesced_op() -> impl Strategy<Value = GenOp> {
    let size = prop_oneof![
        12 => prop::sample::select(vec![0u32, 1, 2, 4, 8, 16, 0x40]),
        1 => prop::sample::select(vec![0x1000u32, 0x8000_0000, 0xffff_ffff]),
    ];
    prop_oneof![12 => Just(0u32), 7 => Just(1), 1 => Just(2)]
        .prop_flat_map(move |pio| (Just(pio), reg_addr(pio == 1), size.clone(), prop::bool::weighted(0.25)))
        .prop_map(|(pio, addr, size, unregister)| GenOp::Coalesced { pio, addr, size, unregister })
}

fn access_op() -> impl Strategy<Value = GenOp> {
    prop::bool::weighted(0.3)
        .prop_flat_map(|pio| {
            let len = if pio {
                prop::sample::select(vec![1usize, 2, 4])
            } else {
                prop::sample::select(vec![1usize, 2, 4, 8])
            };
            let addr = if pio { port().boxed() } else { mmio_addr().boxed() };
            (Just(pio), addr, len, prop::option::weighted(0.75, value()))
        })
        .prop_map(|(pio, addr, len, value)| GenOp::Access { pio, addr, len, value })
}

fn recent() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(0u8), 2 => 1u8..4, 1 => 4u8..16]
}

fn ioeventfd_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(0u32), 2 => Just(1), 2 => Just(2), 4 => Just(4), 2 => Just(8), 1 => Just(3), 1 => Just(16),
    ]
}

fn undo_op() -> impl Strategy<Value = GenOp> {
    (recent(), prop::bool::weighted(0.8), fd_ref(), prop_oneof![3 => Just(0u8), 1 => any::<u8>()])
        .prop_map(|(k, same_fd, fd, narrow)| GenOp::Undo { k, same_fd, fd, narrow })
}

fn redo_op() -> impl Strategy<Value = GenOp> {
    (recent(), fd_ref(), ioeventfd_len(), prop::option::weighted(0.4, value()), any::<u8>())
        .prop_map(|(k, fd, len, datamatch, offset)| GenOp::Redo { k, fd, len, datamatch, offset })
}

fn poke_op() -> impl Strategy<Value = GenOp> {
    (
        recent(),
        prop_oneof![3 => Just(0u8), 1 => 1u8..4],
        any::<u8>(),
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.85),
        value(),
    )
        .prop_map(|(k, len_pick, offset, use_datamatch, write, value)| GenOp::Poke {
            k,
            len_pick,
            offset,
            use_datamatch,
            write,
            value,
        })
}

fn gen_op() -> impl Strategy<Value = GenOp> {
    prop_oneof![
        8 => Just(GenOp::Eventfd),
        1 => Just(GenOp::OpenOther),
        2 => fd_ref().prop_map(GenOp::Close),
        18 => ioeventfd_op(),
        10 => coalesced_op(),
        8 => undo_op(),
        8 => redo_op(),
        16 => access_op(),
        34 => poke_op(),
    ]
}

/// 1..=40 operations; most sequences start by creating an eventfd so that registrations have one.
fn sequence() -> impl Strategy<Value = Vec<GenOp>> {
    (prop::bool::weighted(0.85), prop::collection::vec(gen_op(), 0..=39)).prop_map(|(first, mut ops)| {
        if first || ops.is_empty() {
            ops.insert(0, GenOp::Eventfd);
        }
        ops
    })
}

/// Registration results by kind (`ioeventfd assign: ok`, ...), over every run.
static RESULTS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn note_result(what: &str, r: &Result<(), Errno>) {
    let key = format!("{what} {}", errno_str(*r));
    *RESULTS.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_default() += 1;
}

static SEQUENCES: AtomicU64 = AtomicU64::new(0);
static OPERATIONS: AtomicU64 = AtomicU64::new(0);
static ACCESSES: AtomicU64 = AtomicU64::new(0);
static MISMATCHES: AtomicU64 = AtomicU64::new(0);
static EXITS: AtomicU64 = AtomicU64::new(0);
static SIGNALLED: AtomicU64 = AtomicU64::new(0);
static COALESCED: AtomicU64 = AtomicU64::new(0);
static REG_OK: AtomicU64 = AtomicU64::new(0);
static REG_ERR: AtomicU64 = AtomicU64::new(0);

fn add_tally(t: &Tally) {
    OPERATIONS.fetch_add(t.ops, Ordering::Relaxed);
    ACCESSES.fetch_add(t.accesses, Ordering::Relaxed);
    EXITS.fetch_add(t.exits, Ordering::Relaxed);
    SIGNALLED.fetch_add(t.eventfd, Ordering::Relaxed);
    COALESCED.fetch_add(t.coalesced, Ordering::Relaxed);
    REG_OK.fetch_add(t.reg_ok, Ordering::Relaxed);
    REG_ERR.fetch_add(t.reg_err, Ordering::Relaxed);
}

fn run_sequence(backend: Backend, ops: &[GenOp]) -> Result<(), String> {
    SEQUENCES.fetch_add(1, Ordering::Relaxed);
    let mut o = Oracle::new(backend);
    let mut result = Ok(());
    for g in ops {
        let step = o.resolve(g);
        if let Err(report) = o.step(&step) {
            MISMATCHES.fetch_add(1, Ordering::Relaxed);
            result = Err(report);
            break;
        }
    }
    add_tally(&o.tally);
    o.finish();
    result
}

#[test]
fn generated_sequences_agree_with_kvm() {
    let Some(probe) = guest_or_skip() else { return };
    drop(probe);
    let backend = backend();
    println!("{}", backend_line(backend));

    // Failing seeds go to tests/kvm_oracle.proptest-regressions (beside this file) and are
    // replayed first on later runs.
    let config = contextualize_config(Config {
        cases: 2000,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    });
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let t = Instant::now();
    let result = runner.run(&sequence(), |ops| run_sequence(backend, &ops).map_err(TestCaseError::fail));
    join_background_drops();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "kvm oracle: {} sequences, {} operations, {} accesses, {} mismatches",
        load(&SEQUENCES),
        load(&OPERATIONS),
        load(&ACCESSES),
        load(&MISMATCHES)
    );
    println!(
        "kvm oracle: accesses: {} exits, {} eventfd signals, {} coalesced; registrations: {} ok, {} errors; \
         {cases} cases in {:.1?}",
        load(&EXITS),
        load(&SIGNALLED),
        load(&COALESCED),
        load(&REG_OK),
        load(&REG_ERR),
        t.elapsed()
    );
    let results = RESULTS.lock().unwrap_or_else(|p| p.into_inner());
    let results: Vec<String> = results.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    println!("kvm oracle: results (all tests): {}", results.join(", "));
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------------------------

fn ioeventfd(bus: BusKind, addr: u64, len: u32, fd: i32, datamatch: Option<u64>) -> Op {
    Op::Ioeventfd { vm: 0, bus, addr, len, fd, datamatch, deassign: false, extra_flags: 0 }
}

fn deassign(bus: BusKind, addr: u64, len: u32, fd: i32, datamatch: Option<u64>) -> Op {
    Op::Ioeventfd { vm: 0, bus, addr, len, fd, datamatch, deassign: true, extra_flags: 0 }
}

fn zone(bus: BusKind, addr: u64, size: u32) -> Op {
    Op::Coalesced { vm: 0, bus, addr, size, pio: None, unregister: false }
}

fn unzone(bus: BusKind, addr: u64, size: u32) -> Op {
    Op::Coalesced { vm: 0, bus, addr, size, pio: None, unregister: true }
}

fn write(bus: BusKind, addr: u64, len: usize, value: u64) -> Op {
    Op::Write { vm: 0, bus, addr, len, value }
}

fn exit_mmio(addr: u64, len: usize, value: u64) -> String {
    Seen::Exit { bus: BusKind::Mmio, addr, len, write: true, data: value.to_le_bytes()[..len].to_vec() }.to_string()
}

/// NR_IOBUS_DEVS: 1000 non-ioeventfd entries per bus; ioeventfds are not counted, but cannot be
/// added once the limit is reached.
#[test]
fn nr_iobus_devs_boundary() {
    let Some(probe) = guest_or_skip() else { return };
    drop(probe);
    let t = Instant::now();
    let mmio = BusKind::Mmio;

    // 1000 coalesced zones fill the MMIO bus.
    let mut o = Oracle::new(backend());
    assert_eq!(o.op(Op::Eventfd), "eventfd 3");
    for i in 0..1000u64 {
        assert_eq!(o.op(zone(mmio, MMIO_BASE + 0x10 * i, 0x10)), "ok", "zone #{i}");
    }
    assert_eq!(o.op(zone(mmio, MMIO_BASE + 0x10 * 1000, 0x10)), "err ENOSPC");
    assert_eq!(o.op(ioeventfd(mmio, MMIO_BASE + 0x10 * 2000, 4, 3, None)), "err ENOSPC");
    assert_eq!(o.op(ioeventfd(mmio, MMIO_BASE + 0x10 * 2000, 0, 3, None)), "err ENOSPC");
    assert_eq!(o.op(ioeventfd(mmio, MMIO_BASE + 0x10 * 2000, 8, 3, Some(1))), "err ENOSPC");
    // Other buses are not full.
    assert_eq!(o.op(ioeventfd(BusKind::Pio, 0x60, 1, 3, None)), "ok");
    assert_eq!(o.op(zone(BusKind::Pio, 0x64, 4)), "ok");
    // Every zone of the full bus still works (bsearch over 1000 entries).
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10 * 999 + 8, 8, 0x77)), "coalesced");
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10 * 1000, 4, 0x77)), exit_mmio(MMIO_BASE + 0x10 * 1000, 4, 0x77));
    // Removing one zone makes room for exactly one entry.
    assert_eq!(o.op(unzone(mmio, MMIO_BASE + 0x10 * 500, 0x10)), "ok");
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10 * 500, 4, 1)), exit_mmio(MMIO_BASE + 0x10 * 500, 4, 1));
    assert_eq!(o.op(ioeventfd(mmio, MMIO_BASE + 0x10 * 500, 4, 3, None)), "ok");
    assert_eq!(o.op(zone(mmio, MMIO_BASE + 0x10 * 1000, 0x10)), "ok");
    assert_eq!(o.op(zone(mmio, MMIO_BASE + 0x10 * 1001, 0x10)), "err ENOSPC");
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10 * 500, 4, 1)), "eventfd 3");
    let n1 = o.script.len();

    // 2000 ioeventfds do not count: zones can still be added afterwards, up to 1000.
    let mut o = Oracle::new(backend());
    assert_eq!(o.op(Op::Eventfd), "eventfd 3");
    for i in 0..2000u64 {
        let dm = (i % 3 == 0).then_some(i);
        let len = [1u32, 2, 4, 8][(i % 4) as usize];
        assert_eq!(o.op(ioeventfd(mmio, MMIO_BASE + 0x10 * i, len, 3, dm)), "ok", "ioeventfd #{i}");
    }
    assert_eq!(o.op(zone(mmio, MMIO_BASE + 0x10_0000, 0x40)), "ok");
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10 * 7, 8, 0x1234)), "eventfd 3");
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10_0000, 4, 0x1234)), "coalesced");
    for i in 1..1000u64 {
        assert_eq!(o.op(zone(mmio, MMIO_BASE + 0x20_0000 + 0x10 * i, 0x10)), "ok", "zone #{i}");
    }
    assert_eq!(o.op(zone(mmio, MMIO_BASE + 0x30_0000, 0x10)), "err ENOSPC");
    assert_eq!(o.op(ioeventfd(mmio, MMIO_BASE + 0x30_0000, 4, 3, None)), "err ENOSPC");
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10 * 10, 4, 0x1234)), "eventfd 3");
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10 * 9, 2, 9)), "eventfd 3");
    assert_eq!(o.op(write(mmio, MMIO_BASE + 0x10 * 9, 2, 8)), exit_mmio(MMIO_BASE + 0x10 * 9, 2, 8));
    println!("NR_IOBUS_DEVS boundary: {} + {} steps agree with the kernel in {:.1?}", n1, o.script.len(), t.elapsed());
}

/// The nested-range quirk: the bus walk starts at the entry the bsearch lands on, so an entry
/// that encloses later ones is skipped for accesses that land past them.
#[test]
fn nested_range_quirk() {
    let Some(probe) = guest_or_skip() else { return };
    drop(probe);
    let mmio = BusKind::Mmio;
    let base = MMIO_BASE + 0x100;
    let x = 0xdead_beefu64;

    // Control: with the zone alone, every 4-byte write inside it is coalesced.
    let mut o = Oracle::new(backend());
    assert_eq!(o.op(zone(mmio, base, 100)), "ok");
    for off in [0u64, 5, 20, 50, 80, 96] {
        assert_eq!(o.op(write(mmio, base + off, 4, 1)), "coalesced", "zone alone, +{off}");
    }

    let mut o = Oracle::new(backend());
    assert_eq!(o.op(Op::Eventfd), "eventfd 3");
    assert_eq!(o.op(Op::Eventfd), "eventfd 4");
    assert_eq!(o.op(zone(mmio, base, 100)), "ok");
    assert_eq!(o.op(ioeventfd(mmio, base + 10, 2, 3, None)), "ok");
    assert_eq!(o.op(ioeventfd(mmio, base + 50, 4, 4, Some(x))), "ok");
    // Bus: [base,+100) zone, [base+10,+2) fd 3, [base+50,+4) fd 4 (datamatch X).
    // A non-matching 4-byte write at base+50: bsearch lands on the datamatch entry, walking back
    // stops at [base+10,+2), so the zone is never offered the write.
    assert_eq!(o.op(write(mmio, base + 50, 4, x ^ 1)), exit_mmio(base + 50, 4, x ^ 1));
    assert_eq!(o.op(write(mmio, base + 50, 4, x)), "eventfd 4");
    // The 2-byte ioeventfd at base+10 is shadowed: the walk back from it reaches the enclosing
    // zone, which comes first and takes the write.
    assert_eq!(o.op(write(mmio, base + 10, 2, 7)), "coalesced");
    // base+20 is not coalesced either: bsearch probes [base+10,+2) (key sticks out: go right),
    // then [base+50,+4) (key before it: go left), and finds nothing: no entry is offered.
    assert_eq!(o.op(write(mmio, base + 20, 4, 1)), exit_mmio(base + 20, 4, 1));
    // Only writes whose bsearch reaches the zone are coalesced: those before base+10.
    let mut map = String::new();
    for off in 0..97u64 {
        let r = o.op(write(mmio, base + off, 4, 0x5a5a_5a5a));
        map.push(match r.as_str() {
            "coalesced" => 'c',
            s if s.starts_with("exit") => '.',
            _ => 'e',
        });
        let expect_coalesced = off < 10;
        assert_eq!(r == "coalesced", expect_coalesced, "4-byte write at base+{off}: {r}");
    }
    println!("nested ranges, 4-byte writes at base+0..=96 (c coalesced, . exit, e eventfd): {map}");
}

/// The coalesced ring holds 169 entries; a full ring declines (the write exits); after draining,
/// writes are coalesced again.
#[test]
fn coalesced_ring_full() {
    let Some(probe) = guest_or_skip() else { return };
    drop(probe);
    let mmio = BusKind::Mmio;
    let z = MMIO_BASE + 0x2000;
    let mut o = Oracle::new(backend());
    o.auto_drain = false;
    assert_eq!(o.op(zone(mmio, z, 0x100)), "ok");
    assert_eq!(o.op(zone(BusKind::Pio, 0x60, 0x10)), "ok");
    for i in 0..169u64 {
        let r = if i % 5 == 4 {
            o.op(write(BusKind::Pio, 0x60 + i % 16, 1, i & 0xff))
        } else {
            o.op(write(mmio, z + (i % 32) * 8, 8, i))
        };
        assert_eq!(r, "coalesced", "write #{i}");
    }
    assert_eq!(o.op(write(mmio, z, 4, 0xfeed)), exit_mmio(z, 4, 0xfeed));
    assert_eq!(
        o.op(write(BusKind::Pio, 0x62, 2, 0xfeed)),
        Seen::Exit { bus: BusKind::Pio, addr: 0x62, len: 2, write: true, data: vec![0xed, 0xfe] }.to_string()
    );
    assert_eq!(o.drain_and_compare(), 169);
    assert_eq!(o.op(write(mmio, z + 3, 2, 0xbeef)), "coalesced");
    assert_eq!(o.op(write(BusKind::Pio, 0x62, 2, 0xbeef)), "coalesced");
    assert_eq!(o.drain_and_compare(), 2);
}

/// A len-0 ioeventfd and a coalesced zone at the same address: both compare equal to the access,
/// and the one registered first sits first on the bus and takes the write.
#[test]
fn registration_order_decides_overlap() {
    let Some(probe) = guest_or_skip() else { return };
    drop(probe);
    let mmio = BusKind::Mmio;
    let a = MMIO_BASE + 0x3000;
    for zone_first in [true, false] {
        let mut o = Oracle::new(backend());
        assert_eq!(o.op(Op::Eventfd), "eventfd 3");
        let (z, fd) = (zone(mmio, a, 0x10), ioeventfd(mmio, a, 0, 3, None));
        let (first, second) = if zone_first { (z, fd) } else { (fd, z) };
        assert_eq!(o.op(first), "ok");
        assert_eq!(o.op(second), "ok");
        let winner = if zone_first { "coalesced" } else { "eventfd 3" };
        for len in [1usize, 2, 4, 8] {
            assert_eq!(o.op(write(mmio, a, len, 0x42)), winner, "zone_first {zone_first}, len {len}");
        }
        // Past the start only the zone contains the access, but with the len-0 entry after the
        // zone the bsearch probes it first (key past it: go right) and finds nothing: exit.
        let inside = if zone_first { exit_mmio(a + 4, 4, 0x42) } else { "coalesced".to_string() };
        assert_eq!(o.op(write(mmio, a + 4, 4, 0x42)), inside, "zone_first {zone_first}, +4");
        // Without the winner, the other one takes the write.
        if zone_first {
            assert_eq!(o.op(unzone(mmio, a, 0x10)), "ok");
            assert_eq!(o.op(write(mmio, a, 4, 0x42)), "eventfd 3");
        } else {
            assert_eq!(o.op(deassign(mmio, a, 0, 3, None)), "ok");
            assert_eq!(o.op(write(mmio, a, 4, 0x42)), "coalesced");
        }
        // Same on the PIO bus (no FAST_MMIO twin there).
        let (z, fd) = (zone(BusKind::Pio, 0x68, 4), ioeventfd(BusKind::Pio, 0x68, 0, 3, None));
        let (first, second) = if zone_first { (z, fd) } else { (fd, z) };
        assert_eq!(o.op(first), "ok");
        assert_eq!(o.op(second), "ok");
        assert_eq!(o.op(write(BusKind::Pio, 0x68, 2, 0x42)), winner, "pio, zone_first {zone_first}");
    }
}
