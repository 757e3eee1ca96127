//! `uapi`: any byte image of the uAPI structures of `src/uapi.rs`.
//!
//! The input's first 64 bytes (zero-padded when it is shorter) are decoded as both designs'
//! `struct kvm_ioregion` ([`KvmIoregionSeed`], [`KvmIoregionV3`]) and as `struct kvm_ioeventfd`
//! ([`KvmIoeventfd`]); its first 16 bytes as `struct kvm_coalesced_mmio_zone`
//! ([`KvmCoalescedMmioZone`]) and its first 24 as a coalesced ring entry ([`KvmCoalescedMmio`]).
//! The properties checked, for each structure:
//!
//! - decoding an image of the structure's size never panics and always succeeds: every field
//!   (flags, fds, sizes) is taken as given, validation is the ioctl's job;
//! - each field holds the little-endian bytes at the offset the structure's doc comment gives,
//!   padding included, and the two `kvm_ioregion` layouts agree on their common prefix;
//! - encode gives back exactly the image. The kernel does not look at the padding (rfc-v3 does
//!   not check `kvm_ioregion.pad`, mainline ignores `kvm_ioeventfd.pad`), so the model keeps it
//!   instead of rejecting it, and the round trip holds for every image, not only canonical ones;
//! - a slice of any other length, the input itself at its real length included, is a
//!   [`UapiError`] naming the structure, its size and the length given.

use ioregionfd_model::script::{Op, parse_line};
use ioregionfd_model::uapi::{
    KvmCoalescedMmio, KvmCoalescedMmioZone, KvmIoeventfd, KvmIoregionSeed, KvmIoregionV3, UapiError,
};

/// The largest structure: every input is read through a zero-padded image of this size.
const IMAGE: usize = 64;

fn u64_le(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i32_le(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks one structure's decoder on the image (which has its size) and on other lengths.
fn check_sizes<T: std::fmt::Debug + PartialEq + Copy>(
    what: &str,
    size: usize,
    decode: fn(&[u8]) -> Result<T, UapiError>,
    image: &[u8],
    data: &[u8],
) -> T {
    assert_eq!(image.len(), size);
    let value = match decode(image) {
        Ok(v) => v,
        Err(e) => panic!("{what}: decode refused the {size}-byte image {image:02x?}: {e}"),
    };
    let mut longer = image.to_vec();
    longer.push(0);
    for wrong in [&image[..size - 1], &longer[..], &[][..]] {
        check_wrong_size(what, size, decode, wrong);
    }
    if data.len() == size {
        assert_eq!(decode(data), Ok(value), "{what}: the input and its image decode differently");
    } else {
        check_wrong_size(what, size, decode, data);
    }
    value
}

fn check_wrong_size<T: std::fmt::Debug>(
    what: &str,
    size: usize,
    decode: fn(&[u8]) -> Result<T, UapiError>,
    slice: &[u8],
) {
    match decode(slice) {
        Ok(v) => panic!("{what}: decode accepted {} bytes as {v:?}", slice.len()),
        Err(e) => {
            assert!(e.what.starts_with(what), "{what}: the error names `{}`", e.what);
            assert_eq!((e.expected, e.got), (size, slice.len()), "{what}: error {e:?}");
            assert!(!e.to_string().is_empty());
        }
    }
}

/// Runs one input; panics when a decoder breaks a property of the module doc.
pub fn run(data: &[u8]) {
    let mut image = [0u8; IMAGE];
    let n = data.len().min(IMAGE);
    image[..n].copy_from_slice(&data[..n]);
    let b = &image[..];

    // guest_paddr u64, memory_size u64, user_data u64, fd s32, flags u32, pad[32]
    let seed = check_sizes("kvm_ioregion", KvmIoregionSeed::SIZE, KvmIoregionSeed::decode, b, data);
    assert_eq!(
        (seed.guest_paddr, seed.memory_size, seed.user_data, seed.fd, seed.flags),
        (u64_le(b, 0), u64_le(b, 8), u64_le(b, 16), i32_le(b, 24), u32_le(b, 28)),
        "kvm_ioregion (seed) fields of {b:02x?}"
    );
    assert_eq!(&seed.pad[..], &b[32..64], "kvm_ioregion (seed) padding");
    assert_eq!(&seed.encode()[..], b, "kvm_ioregion (seed): {seed:?} does not encode back to its image");

    // guest_paddr u64, memory_size u64, user_data u64, read_fd s32, write_fd s32, flags u32, pad[28]
    let v3 = check_sizes("kvm_ioregion", KvmIoregionV3::SIZE, KvmIoregionV3::decode, b, data);
    assert_eq!(
        (v3.guest_paddr, v3.memory_size, v3.user_data, v3.read_fd, v3.write_fd, v3.flags),
        (u64_le(b, 0), u64_le(b, 8), u64_le(b, 16), i32_le(b, 24), i32_le(b, 28), u32_le(b, 32)),
        "kvm_ioregion (rfc-v3) fields of {b:02x?}"
    );
    assert_eq!(&v3.pad[..], &b[36..64], "kvm_ioregion (rfc-v3) padding");
    assert_eq!(&v3.encode()[..], b, "kvm_ioregion (rfc-v3): {v3:?} does not encode back to its image");
    assert_eq!(
        (seed.guest_paddr, seed.memory_size, seed.user_data, seed.fd),
        (v3.guest_paddr, v3.memory_size, v3.user_data, v3.read_fd),
        "the two kvm_ioregion layouts disagree on their common prefix"
    );

    // datamatch u64, addr u64, len u32, fd s32, flags u32, pad[36]
    let io = check_sizes("kvm_ioeventfd", KvmIoeventfd::SIZE, KvmIoeventfd::decode, b, data);
    assert_eq!(
        (io.datamatch, io.addr, io.len, io.fd, io.flags),
        (u64_le(b, 0), u64_le(b, 8), u32_le(b, 16), i32_le(b, 20), u32_le(b, 24)),
        "kvm_ioeventfd fields of {b:02x?}"
    );
    assert_eq!(&io.pad[..], &b[28..64], "kvm_ioeventfd padding");
    assert_eq!(&io.encode()[..], b, "kvm_ioeventfd: {io:?} does not encode back to its image");

    // addr u64, size u32, union { pad u32; pio u32 }
    let zb = &b[..KvmCoalescedMmioZone::SIZE];
    let zone =
        check_sizes("kvm_coalesced_mmio_zone", KvmCoalescedMmioZone::SIZE, KvmCoalescedMmioZone::decode, zb, data);
    assert_eq!((zone.addr, zone.size, zone.pio), (u64_le(zb, 0), u32_le(zb, 8), u32_le(zb, 12)), "zone of {zb:02x?}");
    assert_eq!(&zone.encode()[..], zb, "kvm_coalesced_mmio_zone: {zone:?} does not encode back to its image");

    // phys_addr u64, len u32, pio u32, data[8]
    let eb = &b[..KvmCoalescedMmio::SIZE];
    let entry = check_sizes("kvm_coalesced_mmio", KvmCoalescedMmio::SIZE, KvmCoalescedMmio::decode, eb, data);
    assert_eq!(
        (entry.phys_addr, entry.len, entry.pio, &entry.data[..]),
        (u64_le(eb, 0), u32_le(eb, 8), u32_le(eb, 12), &eb[16..24]),
        "kvm_coalesced_mmio fields of {eb:02x?}"
    );
    assert_eq!(&entry.encode()[..], eb, "kvm_coalesced_mmio: {entry:?} does not encode back to its image");
}

/// The structure an operation passes to its ioctl, if it is one with a uAPI structure.
fn image_of(op: &Op) -> Option<Vec<u8>> {
    match *op {
        Op::Ioeventfd { bus, addr, len, fd, datamatch, deassign, extra_flags, .. } => {
            Some(Op::ioeventfd_args(bus, addr, len, fd, datamatch, deassign, extra_flags).encode().to_vec())
        }
        Op::Coalesced { bus, addr, size, pio, .. } => {
            let pio = pio.unwrap_or(u32::from(bus == ioregionfd_model::bus::BusKind::Pio));
            Some(KvmCoalescedMmioZone { addr, size, pio }.encode().to_vec())
        }
        Op::IoregionV3 { args, .. } => Some(args.encode().to_vec()),
        Op::IoregionSeed { args, .. } => Some(args.encode().to_vec()),
        _ => None,
    }
}

/// Named seed inputs: the structures of `src/uapi.rs`'s unit tests and doc examples, the
/// structure every `ioeventfd`, `coalesced` and `ioregion` line of the golden scripts passes to its
/// ioctl (named `golden-SCRIPT-LINE`), and edge cases (empty, all zero, all 0xff, one byte short
/// or long).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = vec![
        (
            "unit-ioeventfd".into(),
            KvmIoeventfd { datamatch: 0x0102, addr: 0x0304, len: 4, fd: -1, flags: 5, pad: [0xaa; 36] }
                .encode()
                .to_vec(),
        ),
        (
            "doc-ioeventfd-pio".into(),
            KvmIoeventfd { addr: 0x60, len: 1, fd: 3, flags: 2, ..Default::default() }.encode().to_vec(),
        ),
        ("unit-zone-pio".into(), KvmCoalescedMmioZone { addr: 1, size: 2, pio: 1 }.encode().to_vec()),
        ("doc-zone".into(), KvmCoalescedMmioZone { addr: 0x1000, size: 16, pio: 0 }.encode().to_vec()),
        (
            "unit-seed".into(),
            KvmIoregionSeed { guest_paddr: 1, memory_size: 2, user_data: 3, fd: -1, flags: 3, pad: [0; 32] }
                .encode()
                .to_vec(),
        ),
        (
            "doc-seed".into(),
            KvmIoregionSeed { guest_paddr: 0x1000, memory_size: 0x100, user_data: 9, fd: 3, flags: 0, pad: [0; 32] }
                .encode()
                .to_vec(),
        ),
        (
            "doc-v3-posted".into(),
            KvmIoregionV3 {
                guest_paddr: 0x1000,
                memory_size: 8,
                user_data: 1,
                read_fd: 3,
                write_fd: 4,
                flags: 2,
                pad: [0; 28],
            }
            .encode()
            .to_vec(),
        ),
        (
            "unit-ring-entry".into(),
            KvmCoalescedMmio { phys_addr: 0x10, len: 2, pio: 0, data: [1, 2, 0, 0, 0, 0, 0, 0] }.encode().to_vec(),
        ),
        ("empty".into(), Vec::new()),
        ("zero".into(), vec![0; IMAGE]),
        ("ff".into(), vec![0xff; IMAGE]),
        ("short".into(), vec![0xff; IMAGE - 1]),
        ("long".into(), vec![0x5a; IMAGE + 1]),
    ];
    for (script, text) in super::GOLDEN_SCRIPTS {
        for (n, line) in text.lines().enumerate() {
            if let Ok(Some(op)) = parse_line(line)
                && let Some(image) = image_of(&op)
                && !seeds.iter().any(|(_, s)| *s == image)
            {
                seeds.push((format!("golden-{script}-{}", n + 1), image));
            }
        }
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds include what the golden scripts pass to their ioctls.
    #[test]
    fn seeds_come_from_the_goldens() {
        let seeds = seeds();
        assert!(seeds.iter().filter(|(n, _)| n.starts_with("golden-")).count() >= 20);
    }

    #[test]
    fn pseudo_random_inputs_pass() {
        let mut next = super::super::xorshift(0x2545_f491_4f6c_dd1du64);
        for _ in 0..5_000 {
            let len = match next() % 4 {
                0 => KvmIoeventfd::SIZE,
                1 => KvmCoalescedMmioZone::SIZE,
                2 => KvmCoalescedMmio::SIZE,
                _ => (next() % 80) as usize,
            };
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            run(&data);
        }
    }
}
