//! Proptest state machines of the three ioregionfd designs (`seed`, `rfc-v3`, `proposed`) against
//! a second, independent implementation written from docs/spec.md (§2-4), the knob
//! docs of `src/design.rs`, the seed registration order documented on
//! `KvmIo::set_ioregion_seed`, and the transport semantics documented on `fd::channel` and `fd`.
//!
//! The reference ([`World`], the crate `ioregionfd-model-reference`, shared with the
//! `registration` fuzz target) is a plain value: index-linked tables of files (`f_count`, inode as
//! superblock and number, from the two counters that both start at 100), channels (bytes or
//! seqpacket messages, capacity, open ends, and the ghost tag of every queued byte the model uses
//! for `route`, `isolation` and `wire`), ioregionfd objects with their last-close rule,
//! serialization contexts (busy flag, kref), regions, ioeventfds, per-VM bus arrays (Linux
//! `kvm_io_bus_cmp`, its insertion rule, bsearch and the walk back), the VMX/EPT fast path
//! (FAST_MMIO, length 0, after a page's first access), the served memory devices and the ghost
//! ledger of the commands they read (`exactly-once`).
//!
//! Generated operations: VM creation (1-2 VMs, emulated or VMX/EPT), transports (socketpair
//! stream/seqpacket, pipe, FIFO; small buffers and `O_NONBLOCK`; `ioregionfd` for seed), close,
//! serve, ioregion register/deassign (v3 structure incl. DEASSIGN, size 0 with and without posted
//! writes, sizes beyond `INT_MAX`, PIO and MMIO, raw flags, wrapping ranges, bad fds, FIFO ends
//! and inode-number games; seed structure incl. fd = -1 delete, modify, split), ioeventfd assign
//! and deassign (both collision directions) and sequential reads and writes of 1, 2, 4 and 8
//! bytes, mostly aimed at what is registered, in small address windows so that regions collide.
//!
//! After every step the test compares the result (ioctl errno, fd numbers, access outcome: an
//! ioregion access with the memory device's value, an eventfd, an exit, proposed's
//! ioregion-failure exit, or `blocked`), the multiset of event violation ids the recorder gained
//! in that step, and the multiset of structural violation ids `check_structure()` reports after
//! it. The reference predicts every violation from its mechanism (a kref taken from 0, a NULL
//! context dereference, a file put on the wrong file and then used, a response made of another
//! access's bytes, a message made of two commands, a malformed message, a command read twice, an
//! overlap accepted, a size the bus's `int` len cannot hold), so the comparison is exact for all
//! three designs. For `proposed` the test also demands that no violation at all appears; there
//! the generator keeps, by preconditions, to a sanely wired userspace (registrations proposed
//! refuses included). The reference answers as the spec and the knob docs do where the model
//! once did not (the `model_bug_*` tests of `tests/regressions_ioregion.rs`): seed's last close
//! drops only the regions that still use the ioregionfd; proposed's size-0 regions are doorbells
//! (a read exits with nothing sent); proposed's writers of a command channel serialize on the
//! send side of its inode's context, which nothing holds while it waits for anything else;
//! proposed's accesses claim their region (context and file references, kept by a blocked
//! access); proposed refuses one pipe or FIFO as both read and write file.
//!
//! A failing case prints the whole sequence as a script (`ioregionfd-model script --design D`).
//! `generated_cases_reach_the_mechanisms` reports what the generator reaches; the ignored
//! `harvest_violations` lists every distinct violation with a minimized script.

use std::collections::BTreeMap;

use ioregionfd_model::bus::{BusKind, Insertion, NR_IOBUS_DEVS};
use ioregionfd_model::design::Design;
use ioregionfd_model::fd::channel::{PIPE_CAPACITY, SOCKET_CAPACITY};
use ioregionfd_model::script::{Op, TransportKind};
use ioregionfd_model::uapi::{KvmIoregionSeed, KvmIoregionV3};
use ioregionfd_model::vm::Backend;
use ioregionfd_model_reference::*;
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

fn base(bus: BusKind) -> u64 {
    if bus == BusKind::Pio { PIO_BASE } else { MMIO_BASE }
}

fn bus_strategy() -> impl Strategy<Value = BusKind> {
    prop_oneof![3 => Just(BusKind::Mmio), 1 => Just(BusKind::Pio)]
}

fn offset_strategy() -> impl Strategy<Value = u64> {
    prop::sample::select(vec![0u64, 0, 1, 2, 3, 4, 4, 6, 7, 8, 8, 0xc, 0xf, 0x10, 0x14])
}

fn vm_strategy(s: &World) -> BoxedStrategy<usize> {
    match s.vms.len() {
        0 => Just(0).boxed(),
        n => prop_oneof![9 => 0..n, 1 => Just(1usize)].boxed(),
    }
}

fn pick(v: Vec<i32>, fallback: i32) -> BoxedStrategy<i32> {
    if v.is_empty() { Just(fallback).boxed() } else { prop::sample::select(v).boxed() }
}

fn access_strategy(s: &World) -> BoxedStrategy<Op> {
    (vm_strategy(s), bus_strategy(), 0u64..0x18, any::<bool>(), any::<u64>(), 0usize..4)
        .prop_map(|(vm, bus, off, write, v, l)| {
            let len = if bus == BusKind::Pio { [1, 2, 4, 2][l] } else { [1, 2, 4, 8][l] };
            let addr = base(bus) + off;
            if write { Op::Write { vm, bus, addr, len, value: v & mask(len) } } else { Op::Read { vm, bus, addr, len } }
        })
        .boxed()
}

fn transport_strategy(s: &World) -> BoxedStrategy<Op> {
    let kinds = prop_oneof![
        3 => Just(TransportKind::Stream),
        2 => Just(TransportKind::Seqpacket),
        2 => Just(TransportKind::Pipe),
        2 => Just(TransportKind::Fifo),
    ];
    // proposed refuses O_NONBLOCK files: fewer of them
    let nonblock = prop::bool::weighted(if s.strict { 0.15 } else { 0.2 });
    let buf = prop_oneof![6 => Just(None), 1 => prop::sample::select(vec![40usize, 48, 64, 100]).prop_map(Some)];
    (kinds, nonblock, buf).prop_map(|(kind, nonblock, buf)| Op::Transport { kind, nonblock, buf }).boxed()
}

/// Region sizes: small ones, and rarely one the bus's `int` len cannot hold (negative or
/// truncated).
fn size_strategy(small: &[u64]) -> BoxedStrategy<u64> {
    prop_oneof![40 => prop::sample::select(small.to_vec()), 1 => prop::sample::select(vec![0x8000_0000u64, 0x1_0000_0008])]
        .boxed()
}

fn ioregion_v3_strategy(s: &World) -> BoxedStrategy<Op> {
    let sockets = s.open_fds(|k| matches!(k, FKind::Socket { .. }));
    let readers = s.open_fds(|k| matches!(k, FKind::Socket { .. } | FKind::PipeRead(_)));
    let writers = s.open_fds(|k| matches!(k, FKind::Socket { .. } | FKind::PipeWrite(_)));
    let mut any: Vec<i32> = s.open_fds(|k| !matches!(k, FKind::Eventfd(_)));
    any.extend([99, -1]);
    // any file of a pipe or FIFO as the read file: a FIFO's two files share an inode, and FIFO
    // (tmpfs) inode numbers meet socket and pipe ones
    let mut inodes = s.open_fds(|k| matches!(k, FKind::PipeRead(_) | FKind::PipeWrite(_)));
    inodes.extend(&sockets);
    let same = pick(sockets, 3).prop_map(|fd| (fd, fd));
    let directed = (pick(readers, 3), pick(writers.clone(), 4));
    let inode_games = (pick(inodes, 3), pick(writers, 4));
    let random = (pick(any.clone(), 3), pick(any, 4));
    let fds = prop_oneof![6 => same, 3 => directed, 2 => inode_games, 1 => random];
    let live = s.live_regions();
    let fresh = (vm_strategy(s), bus_strategy(), offset_strategy(), size_strategy(&[0, 1, 2, 4, 8, 8, 0x10]))
        .prop_map(|(vm, bus, off, size)| (vm, bus, base(bus) + off, size))
        .boxed();
    let target = if live.is_empty() {
        fresh.clone()
    } else {
        let existing = prop::sample::select(live).prop_map(|(vm, bus, paddr, size)| {
            (vm, if bus == PIO { BusKind::Pio } else { BusKind::Mmio }, paddr, size)
        });
        prop_oneof![3 => fresh.clone(), 1 => existing].boxed()
    };
    let wrap = Just((0usize, BusKind::Mmio, u64::MAX - 7, 0x10u64)).boxed();
    let place = prop_oneof![30 => target, 1 => wrap];
    let flags = (
        prop::bool::weighted(0.4),
        prop::bool::weighted(0.1),
        prop::sample::select(vec![0u32, 0, 0, 0, 0, 0, 0, 0, 0, 0x8, 0x10]),
    );
    (place, fds, 1u64..4, flags)
        .prop_map(|((vm, bus, paddr, size), (read_fd, write_fd), user_data, (posted, deassign, extra))| {
            let mut flags = extra;
            if bus == BusKind::Pio {
                flags |= IOREGION_PIO;
            }
            if posted || (size == 0 && extra == 0 && user_data != 3) {
                flags |= IOREGION_POSTED;
            }
            if deassign {
                flags |= IOREGION_DEASSIGN;
            }
            let args = KvmIoregionV3 {
                guest_paddr: paddr,
                memory_size: size,
                user_data,
                read_fd,
                write_fd,
                flags,
                pad: [0; 28],
            };
            Op::IoregionV3 { vm, args }
        })
        .boxed()
}

fn ioregion_seed_strategy(s: &World) -> BoxedStrategy<Op> {
    let objs = s.open_fds(|k| matches!(k, FKind::Ioregionfd(_)));
    let mut others: Vec<i32> = s.open_fds(|k| !matches!(k, FKind::Ioregionfd(_)));
    others.push(99);
    let fd = prop_oneof![7 => pick(objs, 3), 2 => Just(-1), 1 => pick(others, 99)];
    let live = s.live_regions();
    let fresh =
        (vm_strategy(s), bus_strategy(), offset_strategy(), size_strategy(&[0, 1, 2, 4, 8, 8, 0x10, 0x10, 0x20]))
            .prop_map(|(vm, bus, off, size)| (vm, bus, base(bus) + off, size))
            .boxed();
    let target = if live.is_empty() {
        fresh.clone()
    } else {
        let existing = prop::sample::select(live).prop_map(|(vm, bus, paddr, size)| {
            (vm, if bus == PIO { BusKind::Pio } else { BusKind::Mmio }, paddr, size)
        });
        prop_oneof![2 => fresh.clone(), 1 => existing].boxed()
    };
    let wrap = Just((0usize, BusKind::Mmio, u64::MAX - 7, 0x10u64)).boxed();
    let place = prop_oneof![30 => target, 1 => wrap];
    let extra = prop::sample::select(vec![0u32, 0, 0, 0, 0, 0, 0, 0, 0, 0x4, 0x8]);
    (place, fd, 1u64..4, prop::bool::weighted(0.3), extra)
        .prop_map(|((vm, bus, paddr, size), fd, user_data, posted, extra)| {
            let mut flags = extra;
            if bus == BusKind::Pio {
                flags |= IOREGION_PIO;
            }
            if posted {
                flags |= IOREGION_POSTED;
            }
            let args = KvmIoregionSeed { guest_paddr: paddr, memory_size: size, user_data, fd, flags, pad: [0; 32] };
            Op::IoregionSeed { vm, args }
        })
        .boxed()
}

fn ioeventfd_strategy(s: &World) -> BoxedStrategy<Op> {
    let efds = s.open_fds(|k| matches!(k, FKind::Eventfd(_)));
    let mut others = s.open_fds(|k| !matches!(k, FKind::Eventfd(_)));
    others.push(99);
    let fd = prop_oneof![9 => pick(efds, 3), 1 => pick(others, 99)];
    let len = prop::sample::select(vec![0u32, 1, 2, 4, 4, 8]);
    (
        vm_strategy(s),
        bus_strategy(),
        offset_strategy(),
        len,
        fd,
        prop::bool::weighted(0.2),
        prop::option::weighted(0.15, 0u64..4),
        // raw flags now and then: the CCW notify bus, FAST_MMIO's flag, an unknown bit
        prop::sample::select(vec![0u32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x8, 0x10, 0x20]),
    )
        .prop_map(|(vm, bus, off, len, fd, deassign, datamatch, extra_flags)| Op::Ioeventfd {
            vm,
            bus,
            addr: base(bus) + off,
            len,
            fd,
            datamatch,
            deassign,
            extra_flags,
        })
        .boxed()
}

fn serve_strategy(s: &World) -> BoxedStrategy<Op> {
    if s.seed() {
        let objs = s.open_fds(|k| matches!(k, FKind::Ioregionfd(_)));
        let mut resp = objs.clone();
        resp.extend(s.open_fds(|k| matches!(k, FKind::Socket { .. })));
        let resp = prop_oneof![4 => Just(None), 1 => pick(resp, 3).prop_map(Some)];
        return (pick(objs, 3), resp).prop_map(|(fd, resp)| Op::Serve { fd, resp }).boxed();
    }
    let ends = s.open_fds(|k| !matches!(k, FKind::Eventfd(_)));
    let resp = prop_oneof![3 => Just(None), 2 => pick(ends.clone(), 4).prop_map(Some)];
    let random = (pick(ends, 4), resp).prop_map(|(fd, resp)| Op::Serve { fd, resp });
    // the device end of a socket some region writes its commands to
    let peers: Vec<i32> = s
        .regions
        .iter()
        .filter(|r| r.live)
        .filter_map(|r| match r.cmd {
            End::File(wf) => s.fds.iter().find(|(_, f)| **f == wf).and_then(|(fd, _)| s.peer(*fd)),
            End::Obj(_) => None,
        })
        .collect();
    if peers.is_empty() {
        random.boxed()
    } else {
        let peer_weight = if s.strict { 4 } else { 1 };
        prop_oneof![1 => random, peer_weight => prop::sample::select(peers).prop_map(|fd| Op::Serve { fd, resp: None })]
            .boxed()
    }
}

/// Coalesced zones in the same windows (register, and unregister of a range that may hold
/// several), sizes past `INT_MAX` now and then, and a raw `pio` field out of range.
fn coalesced_strategy(s: &World) -> BoxedStrategy<Op> {
    let size = prop_oneof![20 => prop::sample::select(vec![1u32, 2, 4, 8, 0x10, 0x20]), 1 => Just(0x8000_0000u32)];
    let pio = prop_oneof![12 => Just(None), 1 => Just(Some(2u32))];
    (vm_strategy(s), bus_strategy(), offset_strategy(), size, pio, prop::bool::weighted(0.3))
        .prop_map(|(vm, bus, off, size, pio, unregister)| Op::Coalesced {
            vm,
            bus,
            addr: base(bus) + off,
            size,
            pio,
            unregister,
        })
        .boxed()
}

fn close_strategy(s: &World) -> BoxedStrategy<Op> {
    let mut fds: Vec<i32> = s.fds.keys().copied().collect();
    fds.push(99);
    pick(fds, 99).prop_map(|fd| Op::Close { fd }).boxed()
}

/// Removal of a live region (v3 DEASSIGN, seed fd = -1), fds as they come.
fn deassign_strategy(s: &World) -> Option<BoxedStrategy<Op>> {
    let live = s.live_regions();
    if live.is_empty() {
        return None;
    }
    let seed = s.seed();
    let fd = pick(s.fds.keys().copied().collect(), 3);
    let strategy = (prop::sample::select(live), fd, 1u64..4, any::<bool>())
        .prop_map(move |((vm, bus, paddr, size), fd, user_data, posted)| {
            let mut flags = if bus == PIO { IOREGION_PIO } else { 0 };
            if posted {
                flags |= IOREGION_POSTED;
            }
            if seed {
                let args =
                    KvmIoregionSeed { guest_paddr: paddr, memory_size: size, user_data, fd: -1, flags, pad: [0; 32] };
                Op::IoregionSeed { vm, args }
            } else {
                flags |= IOREGION_DEASSIGN;
                let args = KvmIoregionV3 {
                    guest_paddr: paddr,
                    memory_size: size,
                    user_data,
                    read_fd: fd,
                    write_fd: fd,
                    flags,
                    pad: [0; 28],
                };
                Op::IoregionV3 { vm, args }
            }
        })
        .boxed();
    Some(strategy)
}

/// Accesses aimed at what is registered: a live region (an access that fits in it, at its
/// address for size 0) or an ioeventfd.
fn targeted_access_strategy(s: &World) -> Option<BoxedStrategy<Op>> {
    let mut targets: Vec<(usize, usize, u64, u64)> =
        s.regions.iter().filter(|r| r.live && r.bus != FAST).map(|r| (r.vm, r.bus, r.paddr, r.size)).collect();
    targets.extend(s.ioevs.iter().filter(|p| p.live && p.bus != FAST).map(|p| (p.vm, p.bus, p.addr, u64::from(p.len))));
    if targets.is_empty() {
        return None;
    }
    let strategy = (prop::sample::select(targets), prop::bool::weighted(0.5), any::<u64>(), 0usize..4, any::<u64>())
        .prop_map(|((vm, b, paddr, size), write, v, l, r)| {
            let bus = if b == PIO { BusKind::Pio } else { BusKind::Mmio };
            let lens: &[usize] = if bus == BusKind::Pio { &[1, 2, 4] } else { &[1, 2, 4, 8] };
            let fitting: Vec<usize> = lens.iter().copied().filter(|&n| size == 0 || n as u64 <= size).collect();
            let len = fitting[l % fitting.len()];
            let room = if size == 0 { 0 } else { (size - len as u64).min(0x18) };
            let addr = paddr + r % (room + 1);
            if write { Op::Write { vm, bus, addr, len, value: v & mask(len) } } else { Op::Read { vm, bus, addr, len } }
        })
        .boxed();
    Some(strategy)
}

fn transitions_of(s: &World) -> BoxedStrategy<Op> {
    let mut arms: Vec<(u32, BoxedStrategy<Op>)> = Vec::new();
    let vm = |backend| Op::Vm { backend, nr_iobus_devs: Some(NR_IOBUS_DEVS), insertion: Insertion::Sorted };
    let vms = prop_oneof![4 => Just(vm(Backend::Emulated)), 1 => Just(vm(Backend::VmxEpt))];
    match s.vms.len() {
        0 => arms.push((60, vms.boxed())),
        1 => arms.push((1, vms.boxed())),
        _ => {}
    }
    let channels = s.open_fds(|k| !matches!(k, FKind::Eventfd(_))).len();
    let regions = s.regions.iter().filter(|r| r.live).count();
    let serving = s.devices.iter().filter(|d| !d.stopped).count();
    let transport_weight = match channels {
        0 | 1 => 15,
        2..=5 => 3,
        6..=9 => 1,
        _ => 0,
    };
    if s.seed() {
        if transport_weight > 0 {
            arms.push((transport_weight, Just(Op::Ioregionfd).boxed()));
            arms.push((1, transport_strategy(s)));
        }
        arms.push((if regions == 0 { 15 } else { 6 }, ioregion_seed_strategy(s)));
    } else {
        if transport_weight > 0 {
            arms.push((transport_weight, transport_strategy(s)));
        }
        arms.push((if regions == 0 { 15 } else { 6 }, ioregion_v3_strategy(s)));
    }
    if let Some(d) = deassign_strategy(s) {
        arms.push((3, d));
    }
    arms.push((if serving == 0 && regions > 0 { 8 } else { 2 }, serve_strategy(s)));
    arms.push((1, Just(Op::Eventfd).boxed()));
    arms.push((3, ioeventfd_strategy(s)));
    arms.push((2, coalesced_strategy(s)));
    arms.push((2, close_strategy(s)));
    arms.push((4, access_strategy(s)));
    if let Some(t) = targeted_access_strategy(s) {
        arms.push((14, t));
    }
    Union::new_weighted(arms).boxed()
}

// ---------------------------------------------------------------------------------------------
// The state machines
// ---------------------------------------------------------------------------------------------

trait Preset: 'static {
    const DESIGN: Design;
}

struct SeedPreset;
struct RfcV3Preset;
struct ProposedPreset;

impl Preset for SeedPreset {
    const DESIGN: Design = Design::Seed;
}
impl Preset for RfcV3Preset {
    const DESIGN: Design = Design::RfcV3;
}
impl Preset for ProposedPreset {
    const DESIGN: Design = Design::Proposed;
}

struct Reference<P>(std::marker::PhantomData<P>);

impl<P: Preset> ReferenceStateMachine for Reference<P> {
    type State = World;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<World> {
        Just(World::new(P::DESIGN)).boxed()
    }

    fn transitions(state: &World) -> BoxedStrategy<Op> {
        transitions_of(state)
    }

    /// What the reference is meant for: [`World::admits`].
    fn preconditions(state: &World, op: &Op) -> bool {
        state.admits(op)
    }

    fn apply(mut state: World, op: &Op) -> World {
        state.apply(op);
        state
    }
}

struct Machine<P>(std::marker::PhantomData<P>);

impl<P: Preset> StateMachineTest for Machine<P> {
    type SystemUnderTest = Sut;
    type Reference = Reference<P>;

    fn init_test(_: &World) -> Sut {
        Sut::new(P::DESIGN)
    }

    fn apply(mut sut: Sut, state: &World, op: Op) -> Sut {
        let shown = sut.apply(&op);
        let want = state.last.as_ref().expect("the reference ran");
        if let Err(report) = compare(&shown, want, state.strict, &sut) {
            panic!("{report}");
        }
        sut
    }
}

/// 1024 cases per design (`IOREGION_SM_CASES=N` runs another number). A failing case is saved
/// to `crates/reference/tests/ioregion_state_machine.proptest-regressions` (commit it) and replayed first.
fn config() -> Config {
    let cases = std::env::var("IOREGION_SM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    Config {
        cases,
        max_shrink_iters: 4096,
        max_local_rejects: (64 * cases).max(65_536),
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    #[test]
    fn seed_matches_its_reference(sequential 1..40 => Machine<SeedPreset>);

    #[test]
    fn rfc_v3_matches_its_reference(sequential 1..40 => Machine<RfcV3Preset>);

    #[test]
    fn proposed_matches_its_reference_and_violates_nothing(sequential 1..40 => Machine<ProposedPreset>);
}

/// The constants the reference takes from the docs agree with the model's public ones.
#[test]
fn documented_constants_agree() {
    assert_eq!(SOCKET_BUF, SOCKET_CAPACITY);
    assert_eq!(PIPE_BUF_DEFAULT, PIPE_CAPACITY);
    assert_eq!(PIPE_BUF, ioregionfd_model::fd::channel::PIPE_BUF);
    assert_eq!(FIRST_INO, ioregionfd_model::fd::FIRST_INO);
}

// ---------------------------------------------------------------------------------------------
// Coverage: what the generated sequences reach (reference only, same generator and seedless
// deterministic runner), so that a passing run is known to have exercised the mechanisms.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Coverage {
    steps: usize,
    ioctl_ok: usize,
    ioctl_err: BTreeMap<String, usize>,
    handled_read: usize,
    handled_write: usize,
    eventfd: usize,
    exits: usize,
    blocked: usize,
    coalesced: usize,
    events: BTreeMap<&'static str, usize>,
    structure: BTreeMap<&'static str, usize>,
    shared_ctx: usize,
    short_transfer: usize,
    exits_after_send: usize,
    fast_path: usize,
    doorbell_reads: usize,
    doorbell_writes: usize,
    looped_refused: usize,
    removed_under_claim: usize,
}

fn coverage<P: Preset>(cases: usize) -> Coverage {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = Reference::<P>::sequential_strategy(1..40);
    let mut c = Coverage::default();
    for _ in 0..cases {
        let (mut w, ops, _) = strategy.new_tree(&mut runner).expect("a case").current();
        for op in &ops {
            w = Reference::<P>::apply(w, op);
            let e = w.last.as_ref().expect("ran");
            c.steps += 1;
            match &e.obs {
                Obs::Ret(Ok(())) => c.ioctl_ok += 1,
                Obs::Ret(Err(err)) => *c.ioctl_err.entry(err.to_string()).or_default() += 1,
                Obs::Access(Ok(Acc::Ioregion { is_write: false, .. })) => c.handled_read += 1,
                Obs::Access(Ok(Acc::Ioregion { is_write: true, .. })) => c.handled_write += 1,
                Obs::Access(Ok(Acc::Eventfd(_))) => c.eventfd += 1,
                Obs::Access(Ok(Acc::Exit { .. } | Acc::Failure { .. })) => c.exits += 1,
                Obs::Access(Ok(Acc::Blocked)) => c.blocked += 1,
                Obs::Access(Ok(Acc::Coalesced)) => c.coalesced += 1,
                _ => {}
            }
            for id in &e.events {
                *c.events.entry(id).or_default() += 1;
            }
            for id in &e.structure {
                *c.structure.entry(id).or_default() += 1;
            }
        }
        c.shared_ctx += w.seen.shared_ctx;
        c.short_transfer += w.seen.short_transfer;
        c.exits_after_send += w.seen.exits_after_send;
        c.fast_path += w.seen.fast_path;
        c.doorbell_reads += w.seen.doorbell_reads;
        c.doorbell_writes += w.seen.doorbell_writes;
        c.looped_refused += w.seen.looped_refused;
        c.removed_under_claim += w.seen.removed_under_claim;
    }
    c
}

#[test]
fn generated_cases_reach_the_mechanisms() {
    let seed = coverage::<SeedPreset>(256);
    let rfc = coverage::<RfcV3Preset>(256);
    let proposed = coverage::<ProposedPreset>(256);
    eprintln!("seed:     {seed:#?}\nrfc-v3:   {rfc:#?}\nproposed: {proposed:#?}");
    for (name, c) in [("seed", &seed), ("rfc-v3", &rfc), ("proposed", &proposed)] {
        assert!(c.handled_read > 50 && c.handled_write > 50, "{name}: too few completed ioregion accesses");
        assert!(c.blocked > 10 && c.exits > 50 && c.eventfd > 5, "{name}: outcomes not all reached");
        assert!(c.shared_ctx > 10, "{name}: no shared contexts");
        assert!(c.coalesced > 5, "{name}: no write taken by a coalesced zone");
    }
    for id in ["lifetime", "overlap", "route", "isolation", "wire", "exactly-once", "bus"] {
        assert!(rfc.events.contains_key(id) || rfc.structure.contains_key(id), "rfc-v3 never shows {id}");
    }
    assert!(seed.structure.contains_key("overlap"), "seed never shows its accepted overlaps");
    assert!(seed.structure.contains_key("bus"), "seed never shows a size beyond int");
    assert!(rfc.short_transfer > 0, "no short transfer");
    assert!(rfc.fast_path > 0 && proposed.fast_path > 0, "the VMX fast path is never taken");
    assert!(rfc.exits_after_send > 0 && proposed.exits_after_send > 0, "no command goes unanswered");
    assert!(proposed.events.is_empty() && proposed.structure.is_empty());
    assert!(proposed.doorbell_reads > 0 && proposed.doorbell_writes > 0, "proposed: doorbells not exercised");
    assert!(proposed.looped_refused > 0, "proposed: one pipe for both directions never tried");
    assert!(proposed.removed_under_claim > 0, "proposed: no region removed under a blocked access");
}

// ---------------------------------------------------------------------------------------------
// Harvest: every distinct violation (text with numbers blanked) the generator reaches, with the
// shortest script found for it, minimized by deleting operations while it still appears. Run
// with `cargo test --test ioregion_state_machine harvest -- --ignored --nocapture`; it is how
// the regression tests of `tests/regressions_ioregion.rs` were found.
// ---------------------------------------------------------------------------------------------

fn violations_of(design: Design, ops: &[Op]) -> Vec<String> {
    let mut runner = ioregionfd_model::script::Runner::without_trace(design);
    let mut all = Vec::new();
    for op in ops {
        all.extend(runner.execute(op).expect("the design's own form").violations);
    }
    all
}

fn minimize(design: Design, mut ops: Vec<Op>, key: &str) -> Vec<Op> {
    let still = |ops: &[Op]| violations_of(design, ops).iter().any(|v| mechanism(v) == key);
    let mut changed = true;
    while changed {
        changed = false;
        let mut i = 0;
        while i < ops.len() {
            let mut shorter = ops.clone();
            shorter.remove(i);
            if still(&shorter) {
                ops = shorter;
                changed = true;
            } else {
                i += 1;
            }
        }
    }
    ops
}

fn harvest<P: Preset>(cases: usize) {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = Reference::<P>::sequential_strategy(1..40);
    let mut found: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for _ in 0..cases {
        let (_, ops, _) = strategy.new_tree(&mut runner).expect("a case").current();
        for v in violations_of(P::DESIGN, &ops) {
            let key = mechanism(&v);
            if found.get(&key).is_none_or(|best| best.len() > ops.len()) {
                found.insert(key, ops.clone());
            }
        }
    }
    eprintln!("==== {}: {} distinct violations", P::DESIGN, found.len());
    for (key, ops) in found {
        let ops = minimize(P::DESIGN, ops, &key);
        eprintln!("--- {key}");
        let mut r = ioregionfd_model::script::Runner::without_trace(P::DESIGN);
        for op in &ops {
            let out = r.execute(op).expect("runs");
            eprintln!("{op}    # {}", out.result);
            for v in out.violations {
                eprintln!("    # {v}");
            }
        }
    }
}

#[test]
#[ignore = "a search, not a check: prints minimized scripts for every distinct violation"]
fn harvest_violations() {
    let cases = std::env::var("IOREGION_SM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    harvest::<SeedPreset>(cases);
    harvest::<RfcV3Preset>(cases);
    harvest::<ProposedPreset>(cases);
}

/// seed's last close of an ioregionfd spares a region modified to use another one (spec:
/// "all regions registered with it ... are dropped"; the region is registered with the other
/// one now): the reference and the model both answer as the spec does
/// (`model_bug_seed_last_close_drops_a_region_modified_to_another_ioregionfd`).
#[test]
fn reference_answers_as_the_spec_on_a_modified_regions_last_close() {
    let script = "vm\nioregionfd\nioregionfd\nioregion 0 mmio 0x1000 8 3 user_data=1\n\
                  ioregion 0 mmio 0x1000 8 4 user_data=2\nserve 4\nclose 3\nread 0 mmio 0x1000 4\n";
    let ops: Vec<Op> =
        script.lines().map(|l| ioregionfd_model::script::parse_line(l).expect("parses").expect("an op")).collect();
    let mut w = World::new(Design::Seed);
    let last = ops.iter().map(|op| w.step(op)).last().expect("ops");
    let spec = Obs::Access(Ok(Acc::Ioregion { user_data: 2, is_write: false, offset: 0, len: 4, value: 0 }));
    assert_eq!(last, spec);
    let mut sut = Sut::new(Design::Seed);
    let model = ops.iter().map(|op| sut.run(op)).last().expect("ops");
    assert_eq!(model, spec);
    assert_eq!(violations_of(Design::Seed, &ops), Vec::<String>::new());
}

/// Writes generated cases as scripts to `fuzz/seeds/registration/DESIGN-NN.script`, the part
/// of the `registration` fuzz target's seed corpus that comes from the proptest generator (a
/// deterministic runner, so the same files every time). Run with `cargo test --test
/// ioregion_state_machine export_fuzz_seeds -- --ignored`, then regenerate the seed corpus
/// (README, "Fuzzing").
#[test]
#[ignore = "writes files: the seeds of the registration fuzz target"]
fn export_fuzz_seeds() {
    fn export<P: Preset>(dir: &std::path::Path, count: usize) {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = Reference::<P>::sequential_strategy(8..40);
        for i in 0..count {
            let (_, ops, _) = strategy.new_tree(&mut runner).expect("a case").current();
            let mut text = format!(
                "# generated by export_fuzz_seeds (crates/reference/tests/ioregion_state_machine.rs)\ndesign {}\n",
                P::DESIGN
            );
            for op in &ops {
                text.push_str(&format!("{op}\n"));
            }
            let path = dir.join(format!("{}-{i:02}.script", P::DESIGN));
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/registration");
    std::fs::create_dir_all(&dir).expect("the seeds directory");
    export::<SeedPreset>(&dir, 16);
    export::<RfcV3Preset>(&dir, 16);
    export::<ProposedPreset>(&dir, 16);
}
