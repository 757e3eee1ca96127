// SPDX-License-Identifier: MIT OR Apache-2.0
//! rust-vmm vm-device devices served over ioregionfd through the library's adapters (feature
//! `vm-device`: `cargo test --features vm-device --test device_vm_device`): the bytes a device
//! sees and returns (little endian, the access's size), the base and offset it is told, MMIO
//! and PIO, a device shared with a vm-device `IoManager`, over every transport and both wire
//! formats, and the conformance suite against an adapted device.

#![cfg(all(target_os = "linux", feature = "vm-device"))]

use ioregionfd_model::device::conform::{self, Launch, Options};
use ioregionfd_model::device::{
    IoregionDevice, Shared, TransportKind, VmDeviceMmio, VmDevicePio, connect, serve, serve_until,
};
use ioregionfd_model::wire::{Command, Direction, WireFormat};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_device::bus::{MmioAddress, MmioAddressOffset, MmioRange, PioAddress, PioAddressOffset};
use vm_device::device_manager::{IoManager, MmioManager};
use vm_device::{MutDeviceMmio, MutDevicePio};

const WAIT: Duration = Duration::from_secs(5);

/// Records every access as vm-device passes it, and keeps byte-addressed memory (keyed by base
/// and offset) so that reads return what was written.
#[derive(Default, Debug)]
struct Recorder {
    log: Vec<(&'static str, u64, u64, Vec<u8>)>,
    memory: std::collections::HashMap<(u64, u64), u8>,
}

impl Recorder {
    fn read(&mut self, kind: &'static str, base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.memory.get(&(base, offset + i as u64)).copied().unwrap_or(0);
        }
        self.log.push((kind, base, offset, data.to_vec()));
    }

    fn write(&mut self, kind: &'static str, base: u64, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.memory.insert((base, offset + i as u64), b);
        }
        self.log.push((kind, base, offset, data.to_vec()));
    }
}

impl MutDeviceMmio for Recorder {
    fn mmio_read(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.read("mmio read", base.0, offset, data);
    }

    fn mmio_write(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.write("mmio write", base.0, offset, data);
    }
}

impl MutDevicePio for Recorder {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.read("pio read", u64::from(base.0), u64::from(offset), data);
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.write("pio write", u64::from(base.0), u64::from(offset), data);
    }
}

fn cmd(format: WireFormat, direction: Direction, user_data: u64, offset: u64, size_exponent: u8, data: u64) -> Command {
    let resp = direction == Direction::Write || format == WireFormat::V3;
    Command { direction, size_exponent, resp, user_data, offset, data }
}

#[test]
fn an_mmio_device_sees_its_base_its_offset_and_little_endian_bytes_over_every_transport() {
    for kind in TransportKind::ALL {
        for format in [WireFormat::Seed, WireFormat::V3] {
            let what = format!("{kind} {format}");
            let (kernel, transport) = connect(kind, format).unwrap();
            let mut device = VmDeviceMmio::new(Recorder::default()).with_region(1, MmioAddress(0xd000_0000));
            std::thread::scope(|s| {
                let server = s.spawn(|| serve(&transport, &mut device).map(|_| ()));
                let call = |c: Command| {
                    kernel.send(&c).unwrap();
                    kernel.recv_response(WAIT).unwrap().data
                };
                assert_eq!(call(cmd(format, Direction::Write, 1, 0x10, 2, 0x5566_7788)), 0, "{what}");
                assert_eq!(call(cmd(format, Direction::Read, 1, 0x10, 2, 0)), 0x5566_7788, "{what}");
                assert_eq!(call(cmd(format, Direction::Read, 1, 0x12, 0, 0)), 0x66, "{what}: one byte inside");
                assert_eq!(call(cmd(format, Direction::Write, 0xfee0_0000, 8, 3, u64::MAX - 1)), 0, "{what}");
                assert_eq!(call(cmd(format, Direction::Read, 0xfee0_0000, 8, 3, 0)), u64::MAX - 1, "{what}");
                drop(kernel);
                server.join().unwrap().unwrap();
            });
            let log = &device.device().log;
            assert_eq!(
                log[..3],
                [
                    ("mmio write", 0xd000_0000, 0x10, vec![0x88, 0x77, 0x66, 0x55]),
                    ("mmio read", 0xd000_0000, 0x10, vec![0x88, 0x77, 0x66, 0x55]),
                    ("mmio read", 0xd000_0000, 0x12, vec![0x66]),
                ],
                "{what}"
            );
            assert_eq!((log[3].1, log[3].2, log[3].3.len()), (0xfee0_0000, 8, 8), "{what}: user_data as the base");
        }
    }
}

#[test]
fn a_pio_device_is_told_its_port_and_ports_outside_16_bits_do_not_reach_it() {
    let (kernel, transport) = connect(TransportKind::Seqpacket, WireFormat::V3).unwrap();
    let stop = ioregionfd_model::device::StopEvent::new().unwrap();
    let mut device = VmDevicePio::new(Recorder::default()).with_region(9, PioAddress(0x60));
    std::thread::scope(|s| {
        let server = s.spawn(|| serve_until(&transport, &mut device, &stop));
        let call = |c: Command| {
            kernel.send(&c).unwrap();
            kernel.recv_response(WAIT).unwrap().data
        };
        let f = WireFormat::V3;
        assert_eq!(call(cmd(f, Direction::Write, 0x3f8, 1, 1, 0xbeef)), 0);
        assert_eq!(call(cmd(f, Direction::Read, 0x3f8, 1, 1, 0)), 0xbeef);
        assert_eq!(call(cmd(f, Direction::Write, 9, 4, 0, 0x7f)), 0);
        assert_eq!(call(cmd(f, Direction::Read, 0x1_0000, 0, 1, 0)), 0xffff, "not a port: all ones");
        assert_eq!(call(cmd(f, Direction::Read, 0x3f8, 0x1_0000, 0, 0)), 0xff, "an offset past 16 bits");
        stop.stop().unwrap();
        server.join().unwrap().unwrap();
    });
    let log = &device.device().log;
    assert_eq!(
        *log,
        [
            ("pio write", 0x3f8, 1, vec![0xef, 0xbe]),
            ("pio read", 0x3f8, 1, vec![0xef, 0xbe]),
            ("pio write", 0x60, 4, vec![0x7f]),
        ]
    );
}

#[test]
fn a_device_shared_with_an_io_manager_is_one_device() {
    let shared = Arc::new(Mutex::new(Recorder::default()));
    let mut manager = IoManager::new();
    manager.register_mmio(MmioRange::new(MmioAddress(0x1000), 0x100).unwrap(), shared.clone()).unwrap();
    // The VMM's own bus writes; the ioregionfd side reads it back, and the other way round.
    manager.mmio_write(MmioAddress(0x1010), &[1, 2, 3, 4]).unwrap();
    let mut served = VmDeviceMmio::new(Shared(shared.clone()));
    // IoManager passes the range's base and the offset into it; so does the adapter when
    // user_data is the base.
    assert_eq!(served.read(0x1000, 0x10, 4), 0x0403_0201);
    served.write(0x1000, 0x20, 2, 0xaabb);
    let mut back = [0u8; 2];
    manager.mmio_read(MmioAddress(0x1020), &mut back).unwrap();
    assert_eq!(back, [0xbb, 0xaa]);
    assert_eq!(shared.lock().unwrap().log.len(), 4);
}

/// A memory-like MMIO device for the conformance suite: 64-bit offsets, any user_data.
#[derive(Default)]
struct Memory(std::collections::HashMap<(u64, u64), u8>);

impl MutDeviceMmio for Memory {
    fn mmio_read(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.0.get(&(base.0, offset.wrapping_add(i as u64))).copied().unwrap_or(0);
        }
    }

    fn mmio_write(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.0.insert((base.0, offset.wrapping_add(i as u64)), b);
        }
    }
}

#[test]
fn an_adapted_mmio_device_passes_the_conformance_suite() {
    fn make() -> Box<dyn IoregionDevice> {
        Box::new(VmDeviceMmio::new(Memory::default()))
    }
    for kind in TransportKind::ALL {
        for format in [WireFormat::Seed, WireFormat::V3] {
            let options = Options { quiet: Duration::from_millis(5), ..Options::new(format, kind) };
            let mut out = Vec::new();
            let summary = conform::run(&options, &Launch::Thread(make), &mut out).unwrap();
            assert!(summary.ok(), "{kind} {format}:\n{}", String::from_utf8_lossy(&out));
        }
    }
}
