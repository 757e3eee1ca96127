//! `registration`: sequences of VM, fd, ioregion, ioeventfd and coalesced-zone operations, with
//! injected allocation failures and sequential guest accesses, run under one design.
//!
//! The input's first byte picks the design (`byte % 3`: seed, rfc-v3, proposed; or
//! `IOREGIONFD_FUZZ_DESIGN`, see [`design_of`](super::design_of)); the rest is
//! read, through [`arbitrary::Unstructured`], as up to [`MAX_OPS`] operations of the script
//! language ([`Op`]). Each operation starts with a tag byte that picks its kind; its fields are
//! read against the current state, as the proptest generator of
//! `crates/reference/tests/ioregion_state_machine.rs` draws them: fds that are open (and sometimes ones that are
//! not), addresses in small windows so that regions, ioeventfds and zones collide, the regions
//! that are registered, accesses aimed at them. One tag carries a raw script line instead (the
//! seed corpus is made of those), so any operation the script has can be reached.
//!
//! Checks, after every operation:
//! - the model must not panic (any design);
//! - the model's result, its event violations and its standing structural violations must equal
//!   those of the reference (the crate `ioregionfd-model-reference`, `crates/reference/`; any design: for seed and rfc-v3 the
//!   reference predicts their violations, so they are expected findings, not crashes);
//! - for `proposed`, no violation at all, event or structural.
//!
//! The structural violations are those of the full checks (the model's
//! `Kvm::check_structure`, the reference's `World::structure`), kept up to date incrementally:
//! after an operation only what it could have changed is looked at again, on both sides, and
//! compared as counts per invariant ([`run`] says how; the tests of
//! `crates/fuzz-targets/tests/incremental_checks.rs` show that nothing is lost). Both full checks
//! still run once at the end of each input, and whenever a step differs (for the report).
//!
//! The reference models everything but injected allocation failures (`fail-next-alloc`). One
//! that is asked for changes nothing until an allocation fails, so the comparison goes on until
//! then (the model says when: [`Vm::alloc_failure_pending`]); from the operation in which it
//! happens on, the model runs on alone, and `proposed` is judged on [`WIRING_INDEPENDENT`]
//! only. Operations the reference is not meant for ([`World::admits`]: a userspace that
//! miswires its transports under `proposed`, a device on a socket under `seed`, a device on an
//! eventfd under `proposed`) are skipped, as the proptest generator skips them.
//!
//! [`Vm::alloc_failure_pending`]: ioregionfd_model::vm::Vm::alloc_failure_pending

use arbitrary::Unstructured;
use ioregionfd_model::bus::{BusKind, Insertion, NR_IOBUS_DEVS};
use ioregionfd_model::design::Design;
use ioregionfd_model::script::{Op, TransportKind, parse_line};
use ioregionfd_model::structure::Tally;
use ioregionfd_model::trace::Violation;
use ioregionfd_model::uapi::{
    KVM_IOREGION_DEASSIGN, KVM_IOREGION_PIO, KVM_IOREGION_POSTED_WRITES, KvmIoregionSeed, KvmIoregionV3,
};
use ioregionfd_model::vm::Backend;

use ioregionfd_model_reference as reference;
use reference::{Counted, End, Expect, FKind, Logged, Sut, World, compare};

/// At most this many operations are read from one input.
pub const MAX_OPS: usize = 64;

/// At most this many VMs (a `vm` tag past it reads as an access).
const MAX_VMS: usize = 3;

/// The tag that carries a raw script line: the tag byte, a length byte, then the line's bytes.
pub const RAW_LINE_TAG: u8 = 31;

const MMIO_BASE: u64 = 0x1000;
const PIO_BASE: u64 = 0x60;

/// What running one input did (for the seed corpus test and the statistics of `docs/fuzzing.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The design the input ran under.
    pub design: Option<Design>,
    /// Operations run on the model.
    pub ops: usize,
    /// Of those, operations compared with the reference.
    pub compared: usize,
    /// Injected allocation failures that happened (the first ends the comparison).
    pub alloc_failures: usize,
    /// Operations the reference is not meant for, skipped.
    pub skipped: usize,
    /// Violations the model recorded (event and newly standing structural ones), by id.
    pub violations: Vec<&'static str>,
    /// The same violations' texts, in order.
    pub texts: Vec<String>,
}

/// Runs one input; panics (a crash for libFuzzer) on a divergence from the reference, on any
/// violation under `proposed`, and on a panic of the model.
///
/// The fuzzer's path: after each operation both sides' structural checks are brought up to date
/// incrementally (the model's [`StructureWatch`](ioregionfd_model::structure::StructureWatch),
/// the reference's [`World::structure_tally`]) and compared as counts; texts and the failure
/// report are made only when something differs. At the end of the input both sides' full checks
/// run once and must agree with the incremental ones. [`execute`] runs the full checks after
/// every operation instead (and keeps the violations' texts): the same verdict on every input.
pub fn run(data: &[u8]) {
    run_counted(data, false);
}

/// What [`run_verified`] saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Operations after which both sides' incremental checks were compared with their full ones.
    pub steps: usize,
    /// Of those, steps after which structural violations stood (seed and rfc-v3 findings).
    pub standing: usize,
}

/// [`run`], with the full structural checks of both sides run after every operation as well and
/// compared with the incremental ones (a test of the incremental checks: any difference
/// panics).
pub fn run_verified(data: &[u8]) -> Checked {
    run_counted(data, true)
}

/// The fuzzer's path ([`run`]); with `verify`, the full checks after every step too.
fn run_counted(data: &[u8], verify: bool) -> Checked {
    let mut checked = Checked::default();
    let Some((&first, rest)) = data.split_first() else { return checked };
    let design = super::design_of(first);
    let mut u = Unstructured::new(rest);
    let mut world = World::new(design);
    let mut sut = Sut::new(design);
    let mut armed: Vec<(usize, BusKind)> = Vec::new();
    let mut in_step = true;
    let mut ops = 0;
    while !u.is_empty() && ops < MAX_OPS {
        let Some(op) = decode_op(&mut u, &world) else { continue };
        if !world.admits(&op) {
            continue;
        }
        ops += 1;
        if let Op::FailNextAlloc { vm, bus } = op {
            let out = sut.runner.execute(&op).unwrap_or_else(|e| panic!("registration: the decoder made `{op}`: {e}"));
            sut.log.push((op, Logged::ModelOnly(out.result)));
            armed.push((vm, bus));
            continue;
        }
        let want = world.apply_counted(&op);
        let (got, new) = sut.apply_counted(&op);
        if !armed.is_empty() {
            let kvm = sut.runner.kvm();
            let before = armed.len();
            armed.retain(|&(vm, bus)| kvm.vm(vm).is_some_and(|v| v.alloc_failure_pending(bus)));
            in_step &= armed.len() == before;
        }
        if verify {
            let full = Tally::of(&sut.runner.kvm().check_structure());
            assert_eq!(got.structure, full, "registration: the model's incremental check disagrees with its full one");
            let full = Tally::of_ids(world.structure()).expect("structural ids");
            assert_eq!(
                want.structure, full,
                "registration: the reference's incremental check disagrees with its full one"
            );
            checked.steps += 1;
            checked.standing += usize::from(!got.structure.is_clear());
        }
        if in_step {
            if got != want || (world.strict && !got.clean()) {
                diverged(&sut, &world, &got, &want, new);
            }
        } else if world.strict && judged_after_failure(&got) {
            let shown = sut.shown(&got, new);
            panic!(
                "registration: proposed must violate nothing (after an injected allocation failure: {WIRING_INDEPENDENT:?} judged)\n  violations this step: {:#?}\n  standing: {:#?}\nscript:\n{}\n",
                shown.event_texts(),
                shown.standing_texts(),
                sut.script()
            );
        }
    }
    // the backstop: both sides' full checks once, against the incremental ones
    if ops > 0 {
        let full = Tally::of(&sut.runner.kvm().check_structure());
        let counted = sut.watch.update(sut.runner.kvm());
        assert_eq!(counted, full, "registration: the model's incremental check disagrees with its full one at the end");
        let full = Tally::of_ids(world.structure()).expect("structural ids");
        assert_eq!(
            world.structure_tally(),
            full,
            "registration: the reference's incremental check disagrees with its full one at the end"
        );
    }
    checked
}

/// Whether `proposed` fails a step after an injected allocation failure: a violation of one of
/// [`WIRING_INDEPENDENT`] (every structural one is).
fn judged_after_failure(got: &Counted) -> bool {
    // `bus`, `lifetime` and `overlap`, all a structural check can find, are all judged
    got.events.iter().any(|id| WIRING_INDEPENDENT.contains(id)) || !got.structure.is_clear()
}

/// A step that differs from the reference (or violates something under `proposed`): the failure
/// report of [`compare`], from both sides' full checks. Panics in every case: if the full checks
/// agree where the incremental ones did not, that is a defect of the incremental checks.
fn diverged(sut: &Sut, world: &World, got: &Counted, want: &Counted, new: Vec<Violation>) -> ! {
    let shown = sut.shown(got, new);
    let want = Expect { obs: want.obs.clone(), events: want.events.clone(), structure: world.structure() };
    match compare(&shown, &want, world.strict, sut) {
        Err(report) => panic!("registration: {report}"),
        Ok(()) => panic!(
            "registration: the incremental structural checks disagree with the full ones\n  model: {}\n  full: {:?}\n  reference full: {:?}\nscript:\n{}\n",
            got.structure,
            shown.expect.structure,
            want.structure,
            sut.script()
        ),
    }
}

/// Runs one input and says what it did, violation texts included; panics as [`run`] does. It
/// runs both sides' full structural checks after every operation (to keep the texts).
pub fn execute(data: &[u8]) -> Summary {
    let Some((&first, rest)) = data.split_first() else { return Summary::default() };
    let design = super::design_of(first);
    let mut u = Unstructured::new(rest);
    let mut world = World::new(design);
    let mut sut = Sut::new(design);
    let mut summary = Summary { design: Some(design), ..Summary::default() };
    // allocation failures asked for and not yet happened, and whether the reference is still in
    // step with the model (it is until one happens)
    let mut armed: Vec<(usize, BusKind)> = Vec::new();
    let mut in_step = true;
    let mut standing: Vec<String> = Vec::new();
    while !u.is_empty() && summary.ops < MAX_OPS {
        let Some(op) = decode_op(&mut u, &world) else { continue };
        if !world.admits(&op) {
            summary.skipped += 1;
            continue;
        }
        summary.ops += 1;
        if let Op::FailNextAlloc { vm, bus } = op {
            let out = sut.runner.execute(&op).unwrap_or_else(|e| panic!("registration: the decoder made `{op}`: {e}"));
            sut.log.push((op, Logged::ModelOnly(out.result)));
            armed.push((vm, bus));
            continue;
        }
        world.apply(&op);
        let shown = sut.apply(&op);
        let kvm = sut.runner.kvm();
        let before = armed.len();
        armed.retain(|&(vm, bus)| kvm.vm(vm).is_some_and(|v| v.alloc_failure_pending(bus)));
        if armed.len() < before {
            summary.alloc_failures += 1;
            in_step = false;
        }
        summary.violations.extend(&shown.expect.events);
        summary.texts.extend(shown.event_texts());
        let standing_now = shown.standing_texts();
        for text in &standing_now {
            if !standing.contains(text) {
                summary.violations.extend(shown.expect.structure.iter().find(|id| text.starts_with(*id)));
                summary.texts.push(text.clone());
            }
        }
        standing = standing_now;
        if in_step {
            summary.compared += 1;
            let want = world.last.as_ref().expect("the reference ran");
            if let Err(report) = compare(&shown, want, world.strict, &sut) {
                panic!("registration: {report}");
            }
        } else if world.strict {
            let judged =
                shown.expect.events.iter().chain(&shown.expect.structure).any(|id| WIRING_INDEPENDENT.contains(id));
            if judged {
                panic!(
                    "registration: proposed must violate nothing (after an injected allocation failure: {WIRING_INDEPENDENT:?} judged)\n  violations this step: {:#?}\n  standing: {:#?}\nscript:\n{}\n",
                    shown.event_texts(),
                    shown.standing_texts(),
                    sut.script()
                );
            }
        }
    }
    summary
}

/// What `proposed` is still judged on after an injected allocation failure has happened. The
/// reference does not model allocation failures, so from then on it no longer vets the
/// userspace (its view of which regions exist differs from the model's), and a miswired
/// userspace can make `route`, `isolation`, `wire`, `exactly-once`, `order` and `exclusive`
/// fire through no fault of the design; these invariants no userspace can break.
pub const WIRING_INDEPENDENT: [&str; 6] = ["lifetime", "bus", "overlap", "no-leak", "liveness", "resume"];

/// A violation's mechanism: its text with numbers blanked (the reference's `mechanism`, shared
/// with the state machines' harvest).
pub fn mechanism(text: &str) -> String {
    reference::mechanism(text)
}

/// The script an input runs (design line first, then one operation per line), as
/// `ioregionfd-model script` replays it: what a crash is turned into for a named regression.
pub fn script_of(data: &[u8]) -> String {
    let Some((&first, rest)) = data.split_first() else { return String::new() };
    let design = super::design_of(first);
    let mut u = Unstructured::new(rest);
    let mut world = World::new(design);
    let mut lines = vec![format!("design {design}")];
    let mut ops = 0;
    while !u.is_empty() && ops < MAX_OPS {
        let Some(op) = decode_op(&mut u, &world) else { continue };
        if !world.admits(&op) {
            lines.push(format!("# skipped: {op}"));
            continue;
        }
        ops += 1;
        if World::models(&op) {
            world.apply(&op);
        }
        lines.push(op.to_string());
    }
    lines.join("\n") + "\n"
}

/// Encodes a script as an input: the design byte, then each operation line as a raw line (what
/// the seed corpus is made of). Lines that do not parse, `design` lines and comments are dropped;
/// a line longer than 255 bytes is dropped too.
pub fn encode_script(design: Design, script: &str) -> Vec<u8> {
    let mut out = vec![match design {
        Design::Seed => 0,
        Design::RfcV3 => 1,
        Design::Proposed => 2,
    }];
    for line in script.lines() {
        let text = line.split('#').next().unwrap_or("").trim();
        let Ok(Some(op)) = parse_line(text) else { continue };
        if matches!(op, Op::Design(_)) || text.len() > 255 {
            continue;
        }
        out.push(RAW_LINE_TAG);
        out.push(text.len() as u8);
        out.extend_from_slice(text.as_bytes());
    }
    out
}

fn byte(u: &mut Unstructured<'_>) -> u8 {
    u.arbitrary().unwrap_or(0)
}

fn word(u: &mut Unstructured<'_>) -> u64 {
    u.arbitrary().unwrap_or(0)
}

fn pick<T: Copy>(u: &mut Unstructured<'_>, from: &[T]) -> T {
    from[usize::from(byte(u)) % from.len()]
}

/// One of `fds`, or `fallback` when there is none.
fn pick_fd(u: &mut Unstructured<'_>, fds: &[i32], fallback: i32) -> i32 {
    if fds.is_empty() { fallback } else { pick(u, fds) }
}

fn base(bus: BusKind) -> u64 {
    if bus == BusKind::Pio { PIO_BASE } else { MMIO_BASE }
}

fn mask(len: usize) -> u64 {
    if len >= 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 }
}

fn guest_bus(u: &mut Unstructured<'_>) -> BusKind {
    pick(u, &[BusKind::Mmio, BusKind::Mmio, BusKind::Mmio, BusKind::Pio])
}

fn vm_index(u: &mut Unstructured<'_>, w: &World) -> usize {
    // mostly a VM that exists, sometimes one that does not
    let b = byte(u);
    if b >= 0xf0 { w.vms.len() } else { usize::from(b) % w.vms.len().max(1) }
}

fn offset(u: &mut Unstructured<'_>) -> u64 {
    pick(u, &[0u64, 0, 1, 2, 3, 4, 4, 6, 7, 8, 8, 0xc, 0xf, 0x10, 0x14, 0x18])
}

/// A region or zone size: small ones, and rarely one the bus's `int` len cannot hold.
fn size(u: &mut Unstructured<'_>, small: &[u64]) -> u64 {
    let b = byte(u);
    match b {
        0xfe => 0x8000_0000,
        0xff => 0x1_0000_0008,
        _ => small[usize::from(b) % small.len()],
    }
}

/// Where a new registration goes: a fresh place in the window, a live region's place, or (rarely)
/// a range that wraps around the address space.
fn place(u: &mut Unstructured<'_>, w: &World, small: &[u64]) -> (usize, BusKind, u64, u64) {
    let live = w.live_regions();
    match byte(u) % 16 {
        0 => (0, BusKind::Mmio, u64::MAX - 7, 0x10),
        1..=4 if !live.is_empty() => {
            let (vm, bus, paddr, size) = pick(u, &live);
            (vm, if bus == 1 { BusKind::Pio } else { BusKind::Mmio }, paddr, size)
        }
        _ => {
            let vm = vm_index(u, w);
            let bus = guest_bus(u);
            let addr = base(bus) + offset(u);
            (vm, bus, addr, size(u, small))
        }
    }
}

fn ioregion_v3(u: &mut Unstructured<'_>, w: &World) -> Op {
    let (vm, bus, paddr, memory_size) = place(u, w, &[0, 1, 2, 4, 8, 8, 0x10]);
    let sockets = w.open_fds(|k| matches!(k, FKind::Socket { .. }));
    let readers = w.open_fds(|k| matches!(k, FKind::Socket { .. } | FKind::PipeRead(_)));
    let writers = w.open_fds(|k| matches!(k, FKind::Socket { .. } | FKind::PipeWrite(_)));
    let (read_fd, write_fd) = match byte(u) % 12 {
        0..=5 => {
            let fd = pick_fd(u, &sockets, 3);
            (fd, fd)
        }
        6..=8 => (pick_fd(u, &readers, 3), pick_fd(u, &writers, 4)),
        9..=10 => {
            // any file of a pipe or FIFO as the read file: a FIFO's two files share an inode
            let mut inodes = w.open_fds(|k| matches!(k, FKind::PipeRead(_) | FKind::PipeWrite(_)));
            inodes.extend(&sockets);
            (pick_fd(u, &inodes, 3), pick_fd(u, &writers, 4))
        }
        _ => {
            let mut any = w.open_fds(|k| !matches!(k, FKind::Eventfd(_)));
            any.extend([99, -1]);
            (pick(u, &any), pick(u, &any))
        }
    };
    let user_data = 1 + u64::from(byte(u) % 3);
    let bits = byte(u);
    let mut flags = [0, 0, 0, 0, 0, 0, 0x8, 0x10][usize::from(bits >> 5)];
    if bus == BusKind::Pio {
        flags |= KVM_IOREGION_PIO;
    }
    if bits & 1 != 0 || (memory_size == 0 && bits & 2 == 0) {
        flags |= KVM_IOREGION_POSTED_WRITES;
    }
    if bits & 0x1c == 0x1c {
        flags |= KVM_IOREGION_DEASSIGN;
    }
    let args = KvmIoregionV3 { guest_paddr: paddr, memory_size, user_data, read_fd, write_fd, flags, pad: [0; 28] };
    Op::IoregionV3 { vm, args }
}

fn ioregion_seed(u: &mut Unstructured<'_>, w: &World) -> Op {
    let (vm, bus, paddr, memory_size) = place(u, w, &[0, 1, 2, 4, 8, 8, 0x10, 0x10, 0x20]);
    let objs = w.open_fds(|k| matches!(k, FKind::Ioregionfd(_)));
    let fd = match byte(u) % 10 {
        0..=6 => pick_fd(u, &objs, 3),
        7 | 8 => -1,
        _ => {
            let mut others = w.open_fds(|k| !matches!(k, FKind::Ioregionfd(_)));
            others.push(99);
            pick(u, &others)
        }
    };
    let user_data = 1 + u64::from(byte(u) % 3);
    let bits = byte(u);
    let mut flags = [0, 0, 0, 0, 0, 0, 0x4, 0x8][usize::from(bits >> 5)];
    if bus == BusKind::Pio {
        flags |= KVM_IOREGION_PIO;
    }
    if bits & 3 == 3 {
        flags |= KVM_IOREGION_POSTED_WRITES;
    }
    let args = KvmIoregionSeed { guest_paddr: paddr, memory_size, user_data, fd, flags, pad: [0; 32] };
    Op::IoregionSeed { vm, args }
}

/// Removal of a live region (v3 DEASSIGN, seed fd = -1).
fn deassign(u: &mut Unstructured<'_>, w: &World) -> Option<Op> {
    let live = w.live_regions();
    if live.is_empty() {
        return None;
    }
    let (vm, b, guest_paddr, memory_size) = pick(u, &live);
    let bits = byte(u);
    let user_data = 1 + u64::from(bits % 3);
    let mut flags = if b == 1 { KVM_IOREGION_PIO } else { 0 };
    if bits & 0x80 != 0 {
        flags |= KVM_IOREGION_POSTED_WRITES;
    }
    if w.seed() {
        let args = KvmIoregionSeed { guest_paddr, memory_size, user_data, fd: -1, flags, pad: [0; 32] };
        return Some(Op::IoregionSeed { vm, args });
    }
    let fds: Vec<i32> = w.fds.keys().copied().collect();
    let fd = pick_fd(u, &fds, 3);
    flags |= KVM_IOREGION_DEASSIGN;
    let args = KvmIoregionV3 { guest_paddr, memory_size, user_data, read_fd: fd, write_fd: fd, flags, pad: [0; 28] };
    Some(Op::IoregionV3 { vm, args })
}

fn serve(u: &mut Unstructured<'_>, w: &World) -> Op {
    if w.seed() {
        let objs = w.open_fds(|k| matches!(k, FKind::Ioregionfd(_)));
        let mut resp = objs.clone();
        resp.extend(w.open_fds(|k| matches!(k, FKind::Socket { .. })));
        let fd = pick_fd(u, &objs, 3);
        let resp = if byte(u).is_multiple_of(5) { Some(pick_fd(u, &resp, 3)) } else { None };
        return Op::Serve { fd, resp };
    }
    // the device end of a socket some region writes its commands to
    let peers: Vec<i32> = w
        .regions
        .iter()
        .filter(|r| r.live)
        .filter_map(|r| match r.cmd {
            End::File(wf) => w.fds.iter().find(|(_, f)| **f == wf).and_then(|(fd, _)| w.peer(*fd)),
            End::Obj(_) => None,
        })
        .collect();
    if !peers.is_empty() && !byte(u).is_multiple_of(4) {
        return Op::Serve { fd: pick(u, &peers), resp: None };
    }
    let ends = w.open_fds(|k| !matches!(k, FKind::Eventfd(_)));
    let fd = pick_fd(u, &ends, 4);
    let resp = if byte(u) % 5 < 2 { Some(pick_fd(u, &ends, 4)) } else { None };
    Op::Serve { fd, resp }
}

fn ioeventfd(u: &mut Unstructured<'_>, w: &World) -> Op {
    let efds = w.open_fds(|k| matches!(k, FKind::Eventfd(_)));
    let vm = vm_index(u, w);
    let bus = guest_bus(u);
    let addr = base(bus) + offset(u);
    let len = pick(u, &[0u32, 1, 2, 4, 4, 8, 3, 16]);
    let bits = byte(u);
    let fd = if bits & 0xf0 == 0xf0 {
        let mut others = w.open_fds(|k| !matches!(k, FKind::Eventfd(_)));
        others.push(99);
        pick(u, &others)
    } else {
        pick_fd(u, &efds, 3)
    };
    let datamatch = (bits & 0x6 == 0x6).then(|| u64::from(bits >> 6));
    let deassign = bits & 0x9 == 0x9;
    let extra_flags = if bits == 0xee { 0x20 } else { 0 };
    Op::Ioeventfd { vm, bus, addr, len, fd, datamatch, deassign, extra_flags }
}

fn coalesced(u: &mut Unstructured<'_>, w: &World) -> Op {
    let vm = vm_index(u, w);
    let bus = guest_bus(u);
    let addr = base(bus) + offset(u);
    let b = byte(u);
    let size = match b {
        0xfd => 0x8000_0000,
        0xfe => u32::MAX,
        0xff => 0,
        _ => [1u32, 2, 4, 8, 0x10, 0x20, 0x100][usize::from(b) % 7],
    };
    let bits = byte(u);
    let pio = (bits & 0x70 == 0x70).then_some(u32::from(bits & 3));
    Op::Coalesced { vm, bus, addr, size, pio, unregister: bits & 0x3 == 0x3 }
}

fn access(u: &mut Unstructured<'_>, w: &World) -> Op {
    let vm = vm_index(u, w);
    let bus = guest_bus(u);
    let addr = base(bus) + u64::from(byte(u) % 0x18);
    let len = if bus == BusKind::Pio { pick(u, &[1, 2, 4]) } else { pick(u, &[1, 2, 4, 8]) };
    let value = word(u) & mask(len);
    if byte(u) & 1 == 0 { Op::Read { vm, bus, addr, len } } else { Op::Write { vm, bus, addr, len, value } }
}

/// An access aimed at what is registered: a live region (an access that fits in it, at its
/// address for size 0) or an ioeventfd.
fn targeted_access(u: &mut Unstructured<'_>, w: &World) -> Option<Op> {
    let mut targets: Vec<(usize, usize, u64, u64)> = w.live_regions();
    targets.extend(w.ioevs.iter().filter(|p| p.live && p.bus != 2).map(|p| (p.vm, p.bus, p.addr, u64::from(p.len))));
    if targets.is_empty() {
        return None;
    }
    let (vm, b, paddr, size) = pick(u, &targets);
    let bus = if b == 1 { BusKind::Pio } else { BusKind::Mmio };
    let lens: &[usize] = if bus == BusKind::Pio { &[1, 2, 4] } else { &[1, 2, 4, 8] };
    let fitting: Vec<usize> = lens.iter().copied().filter(|&n| size == 0 || n as u64 <= size).collect();
    let len = pick_fd_usize(u, &fitting);
    let room = if size == 0 { 0 } else { (size - len as u64).min(0x18) };
    let addr = paddr.wrapping_add(u64::from(byte(u)) % (room + 1));
    let value = word(u) & mask(len);
    let op = if byte(u) & 1 == 0 { Op::Read { vm, bus, addr, len } } else { Op::Write { vm, bus, addr, len, value } };
    valid_access(&op).then_some(op)
}

fn pick_fd_usize(u: &mut Unstructured<'_>, from: &[usize]) -> usize {
    if from.is_empty() { 1 } else { pick(u, from) }
}

/// Whether the model takes this access at all (a length of its bus, no page crossed, a port
/// below 0x10000): the script's parser refuses the others, and so does the decoder.
fn valid_access(op: &Op) -> bool {
    let (bus, addr, len) = match *op {
        Op::Read { bus, addr, len, .. } | Op::Write { bus, addr, len, .. } => (bus, addr, len),
        _ => return true,
    };
    let lens: &[usize] = match bus {
        BusKind::Mmio => &[1, 2, 4, 8],
        BusKind::Pio => &[1, 2, 4],
        _ => return false,
    };
    let Some(last) = addr.checked_add(len as u64 - 1) else { return false };
    lens.contains(&len) && addr >> 12 == last >> 12 && (bus == BusKind::Mmio || last <= 0xffff)
}

/// A raw script line (tag [`RAW_LINE_TAG`]): an operation of the design's own form that the
/// decoder can run (no `design` line, a VM with the default bus settings, a valid access).
fn raw_line(u: &mut Unstructured<'_>, w: &World) -> Option<Op> {
    let len = usize::from(byte(u));
    let bytes = u.bytes(len.min(u.len())).ok()?;
    let text = std::str::from_utf8(bytes).ok()?;
    let op = parse_line(text).ok()??;
    let ours = match op {
        Op::Design(_) => false,
        Op::Vm { nr_iobus_devs, insertion, .. } => {
            nr_iobus_devs == Some(NR_IOBUS_DEVS) && insertion == Insertion::Sorted
        }
        Op::IoregionSeed { .. } => w.seed(),
        Op::IoregionV3 { .. } => !w.seed(),
        _ => valid_access(&op),
    };
    ours.then_some(op)
}

/// Reads one operation, or `None` when its tag reads as nothing in this state.
fn decode_op(u: &mut Unstructured<'_>, w: &World) -> Option<Op> {
    let tag = byte(u) & 31;
    if tag == RAW_LINE_TAG {
        return raw_line(u, w);
    }
    let op = match tag {
        0 | 1 if w.vms.len() < MAX_VMS => {
            let backend = if byte(u).is_multiple_of(4) { Backend::VmxEpt } else { Backend::Emulated };
            Op::Vm { backend, nr_iobus_devs: Some(NR_IOBUS_DEVS), insertion: Insertion::Sorted }
        }
        2..=4 if w.seed() && tag != 4 => Op::Ioregionfd,
        2..=4 => {
            let kind = pick(
                u,
                &[
                    TransportKind::Stream,
                    TransportKind::Stream,
                    TransportKind::Seqpacket,
                    TransportKind::Pipe,
                    TransportKind::Fifo,
                ],
            );
            let bits = byte(u);
            let buf = [None, None, None, None, None, Some(40), Some(48), Some(64), Some(100), Some(32)]
                [usize::from(bits % 10)];
            Op::Transport { kind, nonblock: bits >= 0xd8, buf }
        }
        5..=9 if w.seed() => ioregion_seed(u, w),
        5..=9 => ioregion_v3(u, w),
        10 | 11 => deassign(u, w)?,
        12 | 13 => serve(u, w),
        14 => Op::Eventfd,
        15 | 16 => ioeventfd(u, w),
        17 => {
            let mut fds: Vec<i32> = w.fds.keys().copied().collect();
            fds.push(99);
            Op::Close { fd: pick(u, &fds) }
        }
        18 | 19 => access(u, w),
        26 | 27 => coalesced(u, w),
        28 => Op::FailNextAlloc { vm: vm_index(u, w), bus: pick(u, &[BusKind::Mmio, BusKind::Pio, BusKind::FastMmio]) },
        _ => targeted_access(u, w)?,
    };
    Some(op)
}

/// The seed inputs: every golden script (`tests/golden/*.script`, under its design), the script
/// of every named regression of `tests/regressions_ioregion.rs` (under each design whose
/// `ioregion` form it uses), and the cases the proptest state machines export
/// (`fuzz/seeds/registration/*.script`, written by `cargo test --test ioregion_state_machine
/// export_fuzz_seeds -- --ignored`, a test of `crates/reference/`).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let root = super::repo_root();
    let mut out = Vec::new();
    for (name, text) in super::GOLDEN_SCRIPTS {
        let design = match name {
            "seed" => Design::Seed,
            "rfc-v3" => Design::RfcV3,
            _ => Design::Proposed,
        };
        out.push((format!("golden-{name}"), encode_script(design, text)));
    }
    let regressions = std::fs::read_to_string(root.join("tests/regressions_ioregion.rs")).unwrap_or_default();
    for (name, script) in scripts_in_rust_source(&regressions) {
        let seed_form = script
            .lines()
            .any(|l| parse_line(l).ok().flatten().is_some_and(|op| matches!(op, Op::IoregionSeed { .. })));
        let designs: &[Design] = if seed_form { &[Design::Seed] } else { &[Design::RfcV3, Design::Proposed] };
        for &d in designs {
            out.push((format!("regression-{name}-{d}"), encode_script(d, &script)));
        }
    }
    for (name, text) in super::read_dir_sorted(&root.join("fuzz/seeds/registration"), "script") {
        let design = if name.starts_with("seed") {
            Design::Seed
        } else if name.starts_with("rfc-v3") {
            Design::RfcV3
        } else {
            Design::Proposed
        };
        out.push((format!("proptest-{name}"), encode_script(design, &text)));
    }
    out
}

/// The scripts of a Rust source written as `let script = "\` ... `";` (the regression tests),
/// each with the name of the function it is in.
fn scripts_in_rust_source(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = source;
    let mut name = String::from("script");
    while let Some(i) = rest.find("let script = \"\\\n") {
        if let Some(f) = rest[..i].rfind("\nfn ") {
            let after = &rest[f + "\nfn ".len()..];
            name = after.split('(').next().unwrap_or("script").to_string();
        }
        rest = &rest[i + "let script = \"\\\n".len()..];
        let Some(end) = rest.find("\";") else { break };
        out.push((name.clone(), rest[..end].to_string()));
        rest = &rest[end..];
    }
    out
}
