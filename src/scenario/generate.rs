//! Generated scenarios: a bounded-exhaustive enumeration over the scenario vocabulary, each
//! written as scenario text (so it goes through the same parser and runner as a file) with one
//! row, `proposed`, expected to hold.
//!
//! The space:
//! - topologies: one VM with one region; one VM with two regions on one channel (MMIO and PIO);
//!   one VM with two regions on two channels; two VMs with a region each on one shared channel;
//!   two VMs with a region each on its own channel;
//! - the transport of every channel: seqpacket, stream, pipe pair or FIFO pair (for the one-channel
//!   topologies; the two-channel ones use seqpacket and pipe pairs);
//! - vCPU threads: one vCPU with one or two accesses, or two vCPUs with one access each (reads,
//!   non-posted writes; with two regions, the second vCPU uses the second region), symmetric
//!   duplicates removed (two vCPUs of one VM on one region are interchangeable; with two VMs and
//!   one vCPU, the vCPU is VM 0's);
//! - one device thread per channel, serving every command;
//! - the VMM (the main thread) makes at most one fault, of each kind in turn: none, a signal to
//!   each vCPU, a signal then `park` of vCPU 0 (its thread stops calling KVM_RUN), closing the
//!   kernel's fd of channel 0 or the VMM's copy of its device end, deassigning region 1,
//!   re-registering it, destroying VM 0, the device closing after one command, the device dying,
//!   and process exit.
//!
//! Every scenario also checks `no-leak` after teardown, and each read's value when it completes.

use super::MAX_THREADS;

/// One generated scenario: its name and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// The scenario's name (`gen-...`).
    pub name: String,
    /// The scenario file.
    pub text: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Topology {
    /// One VM, one MMIO region.
    OneRegion,
    /// One VM, an MMIO and a PIO region on one channel.
    TwoRegionsOneChannel,
    /// One VM, two MMIO regions on two channels.
    TwoRegionsTwoChannels,
    /// Two VMs, a region each, one channel.
    TwoVmsOneChannel,
    /// Two VMs, a region each, a channel each.
    TwoVmsTwoChannels,
}

impl Topology {
    const ALL: [Topology; 5] = [
        Topology::OneRegion,
        Topology::TwoRegionsOneChannel,
        Topology::TwoRegionsTwoChannels,
        Topology::TwoVmsOneChannel,
        Topology::TwoVmsTwoChannels,
    ];

    fn short(self) -> &'static str {
        match self {
            Topology::OneRegion => "r1",
            Topology::TwoRegionsOneChannel => "r2c1",
            Topology::TwoRegionsTwoChannels => "r2c2",
            Topology::TwoVmsOneChannel => "vm2c1",
            Topology::TwoVmsTwoChannels => "vm2c2",
        }
    }

    fn vms(self) -> usize {
        match self {
            Topology::TwoVmsOneChannel | Topology::TwoVmsTwoChannels => 2,
            _ => 1,
        }
    }

    fn channels(self) -> usize {
        match self {
            Topology::TwoRegionsTwoChannels | Topology::TwoVmsTwoChannels => 2,
            _ => 1,
        }
    }

    fn kinds(self) -> &'static [&'static str] {
        if self.channels() == 1 { &["seqpacket", "stream", "pipe", "fifo"] } else { &["seqpacket", "pipe"] }
    }

    /// The regions: (vm, bus, address, channel index, user_data).
    fn regions(self) -> Vec<(usize, &'static str, u64, usize, u64)> {
        match self {
            Topology::OneRegion => vec![(0, "mmio", 0x1000, 0, 1)],
            Topology::TwoRegionsOneChannel => vec![(0, "mmio", 0x1000, 0, 1), (0, "pio", 0x60, 0, 2)],
            Topology::TwoRegionsTwoChannels => vec![(0, "mmio", 0x1000, 0, 1), (0, "mmio", 0x2000, 1, 2)],
            Topology::TwoVmsOneChannel => vec![(0, "mmio", 0x1000, 0, 1), (1, "mmio", 0x1000, 0, 2)],
            Topology::TwoVmsTwoChannels => vec![(0, "mmio", 0x1000, 0, 1), (1, "mmio", 0x1000, 1, 2)],
        }
    }
}

/// One access of a vCPU: read or write, of region `region`, at offset `offset`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Access {
    write: bool,
    offset: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    Signal(usize),
    SignalThenPark,
    CloseKernel,
    CloseDeviceCopy,
    Deassign,
    Reregister,
    DestroyVm0,
    DeviceCloses,
    DeviceDies,
    Exit,
}

impl Fault {
    fn short(self) -> String {
        match self {
            Fault::None => "none".into(),
            Fault::Signal(v) => format!("signal{v}"),
            Fault::SignalThenPark => "park0".into(),
            Fault::CloseKernel => "close-kernel".into(),
            Fault::CloseDeviceCopy => "close-device".into(),
            Fault::Deassign => "deassign".into(),
            Fault::Reregister => "reregister".into(),
            Fault::DestroyVm0 => "destroy-vm0".into(),
            Fault::DeviceCloses => "device-closes".into(),
            Fault::DeviceDies => "device-dies".into(),
            Fault::Exit => "exit".into(),
        }
    }
}

/// The access lists one vCPU may make: one or two accesses (read or write; a second access at
/// offset 4).
fn access_lists() -> Vec<Vec<Access>> {
    let one = [Access { write: false, offset: 0 }, Access { write: true, offset: 0 }];
    let mut lists: Vec<Vec<Access>> = one.iter().map(|a| vec![*a]).collect();
    for a in one {
        for b in one {
            lists.push(vec![a, Access { offset: 4, ..b }]);
        }
    }
    lists
}

/// Every generated scenario, in a fixed order.
///
/// ```
/// let all = ioregionfd_model::scenario::generate::all();
/// assert!(all.len() > 100);
/// for g in all.iter().step_by(97) {
///     let s = ioregionfd_model::scenario::Scenario::parse(&g.text, &g.name).unwrap();
///     assert_eq!(s.rows.len(), 1);
/// }
/// ```
pub fn all() -> Vec<Generated> {
    let mut out = Vec::new();
    let lists = access_lists();
    for topo in Topology::ALL {
        let regions = topo.regions();
        for kind in topo.kinds() {
            // One vCPU with one or two accesses; or two vCPUs with one access each. vCPU 0 uses
            // region 0; vCPU 1 uses the last region (region 0 in the one-region topology, where
            // the two vCPUs are interchangeable).
            let mut vcpu_sets: Vec<Vec<Vec<Access>>> = lists.iter().map(|l| vec![l.clone()]).collect();
            let singles: Vec<&Vec<Access>> = lists.iter().filter(|l| l.len() == 1).collect();
            for (i, a) in singles.iter().enumerate() {
                for (j, b) in singles.iter().enumerate() {
                    if regions.len() == 1 && j < i {
                        continue;
                    }
                    vcpu_sets.push(vec![(*a).clone(), (*b).clone()]);
                }
            }
            for vcpus in &vcpu_sets {
                for fault in faults(vcpus.len()) {
                    if let Some(g) = scenario(topo, kind, vcpus, fault) {
                        out.push(g);
                    }
                }
            }
        }
    }
    out
}

fn faults(vcpus: usize) -> Vec<Fault> {
    let mut f = vec![Fault::None, Fault::Signal(0)];
    if vcpus > 1 {
        f.push(Fault::Signal(1));
    }
    f.extend([
        Fault::SignalThenPark,
        Fault::CloseKernel,
        Fault::CloseDeviceCopy,
        Fault::Deassign,
        Fault::Reregister,
        Fault::DestroyVm0,
        Fault::DeviceCloses,
        Fault::DeviceDies,
        Fault::Exit,
    ]);
    f
}

fn scenario(topo: Topology, kind: &str, vcpus: &[Vec<Access>], fault: Fault) -> Option<Generated> {
    let regions = topo.regions();
    let channels = topo.channels();
    // Threads: the vCPUs and a device per channel (the VMM is the main thread).
    if vcpus.len() + channels > MAX_THREADS {
        return None;
    }
    let region_of = |v: usize| if v == 0 { 0 } else { regions.len() - 1 };
    let lists: Vec<String> = vcpus
        .iter()
        .map(|l| l.iter().map(|a| format!("{}{}", if a.write { "w" } else { "r" }, a.offset)).collect::<String>())
        .collect();
    let name = format!("gen-{}-{kind}-{}-{}", topo.short(), lists.join("-"), fault.short());
    let mut t = String::new();
    t.push_str(&format!(
        "scenario {name}\nsummary generated: {} {kind}, vCPUs {}, fault {}\n",
        topo.short(),
        lists.join(" "),
        fault.short()
    ));
    t.push_str("row proposed expect holds\noption no-leak\n\nsetup\n");
    for _ in 0..topo.vms() {
        t.push_str("vm\n");
    }
    for c in 0..channels {
        t.push_str(&format!("channel c{c} {kind}\n"));
    }
    for (vm, bus, addr, ch, user_data) in &regions {
        t.push_str(&format!("region {vm} {bus} {addr:#x} 0x10 c{ch} user_data={user_data}\n"));
    }
    if matches!(fault, Fault::DeviceDies | Fault::DeviceCloses) {
        // The VMM passed the device end on and closed its copy: the device's end is its only one.
        t.push_str("give c0\n");
    }
    // Devices: serve every command sent on their channel.
    for c in 0..channels {
        let commands: usize =
            vcpus.iter().enumerate().filter(|(v, _)| regions[region_of(*v)].3 == c).map(|(_, l)| l.len()).sum();
        t.push_str(&format!("\nthread device{c} device c{c}\n"));
        match fault {
            Fault::DeviceDies if c == 0 => t.push_str("die\n"),
            Fault::DeviceCloses if c == 0 => t.push_str("serve 1\nclose\n"),
            _ => t.push_str(&format!("serve {commands}\n")),
        }
    }
    let vm_ids: Vec<(usize, usize)> = (0..vcpus.len())
        .map(|v| {
            let vm = regions[region_of(v)].0;
            let id = (0..v).filter(|u| regions[region_of(*u)].0 == vm).count();
            (vm, id)
        })
        .collect();
    for (v, list) in vcpus.iter().enumerate() {
        let (_, bus, addr, _, user_data) = regions[region_of(v)];
        t.push_str(&format!("\nthread vcpu{v} vcpu {} {}\n", vm_ids[v].0, vm_ids[v].1));
        for a in list {
            let at = addr + a.offset;
            if a.write {
                t.push_str(&format!("write {bus} {at:#x} 4 {:#x} runs=3\n", 0x10 + a.offset));
            } else {
                t.push_str(&format!("read {bus} {at:#x} 4 runs=3\n"));
                t.push_str(&format!(
                    "expect ioregion {user_data:#x} read {:#x} 4 {:#x} | exit... | intr\n",
                    a.offset,
                    0x100 * user_data + a.offset
                ));
            }
            if fault == Fault::SignalThenPark && v == 0 {
                t.push_str("park\n");
                break;
            }
        }
    }
    let (vm0, bus0, addr0, _, user_data0) = regions[0];
    let main = match fault {
        Fault::None | Fault::DeviceCloses | Fault::DeviceDies => String::new(),
        Fault::Signal(v) => format!("signal vcpu{v}\n"),
        Fault::SignalThenPark => "signal vcpu0\n".into(),
        Fault::CloseKernel => "close c0.kernel\n".into(),
        Fault::CloseDeviceCopy => "close c0.device\n".into(),
        Fault::Deassign => format!("deassign {vm0} {bus0} {addr0:#x} 0x10\n"),
        Fault::Reregister => format!(
            "deassign {vm0} {bus0} {addr0:#x} 0x10\nregion {vm0} {bus0} {addr0:#x} 0x10 c0 user_data={user_data0}\n"
        ),
        Fault::DestroyVm0 => "destroy-vm 0\n".into(),
        Fault::Exit => "exit\n".into(),
    };
    if !main.is_empty() {
        t.push_str("\nthread main\n");
        t.push_str(&main);
    }
    Some(Generated { name, text: t })
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn every_generated_scenario_parses_and_names_are_unique() {
        let all = all();
        let mut names: Vec<&str> = all.iter().map(|g| g.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate names");
        for g in &all {
            let s = crate::scenario::Scenario::parse(&g.text, &g.name).unwrap_or_else(|e| panic!("{e}\n{}", g.text));
            assert_eq!(s.name, g.name);
        }
    }
}
