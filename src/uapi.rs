//! uAPI structures as Rust types with their exact byte images (x86-64: little endian).
//!
//! Decoding never panics: an image of the wrong size is a [`UapiError`]. Fields the kernel does
//! not look at (padding) are kept, so `decode` then `encode` gives back the same image.
//!
//! ```
//! use ioregionfd_model::uapi::{KvmIoeventfd, KVM_IOEVENTFD_FLAG_PIO};
//! let io = KvmIoeventfd { addr: 0x60, len: 1, fd: 3, flags: KVM_IOEVENTFD_FLAG_PIO, ..Default::default() };
//! let image = io.encode();
//! assert_eq!(image.len(), 64);
//! assert_eq!(KvmIoeventfd::decode(&image), Ok(io));
//! assert!(KvmIoeventfd::decode(&image[..63]).is_err());
//! ```

use std::fmt;

/// `KVM_IOEVENTFD_FLAG_DATAMATCH`: only a write of this value signals.
pub const KVM_IOEVENTFD_FLAG_DATAMATCH: u32 = 1 << 0;
/// `KVM_IOEVENTFD_FLAG_PIO`: the address is a port on the PIO bus.
pub const KVM_IOEVENTFD_FLAG_PIO: u32 = 1 << 1;
/// `KVM_IOEVENTFD_FLAG_DEASSIGN`: remove instead of add.
pub const KVM_IOEVENTFD_FLAG_DEASSIGN: u32 = 1 << 2;
/// `KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY`: s390 CCW notification bus.
pub const KVM_IOEVENTFD_FLAG_VIRTIO_CCW_NOTIFY: u32 = 1 << 3;
/// `KVM_IOEVENTFD_VALID_FLAG_MASK` = `(1 << 5) - 1`: bit 4 (`nr_fast_mmio`) is accepted and ignored.
pub const KVM_IOEVENTFD_VALID_FLAG_MASK: u32 = (1 << 5) - 1;

/// A decoding error: the image does not have the structure's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UapiError {
    /// The structure being decoded.
    pub what: &'static str,
    /// Its size in bytes.
    pub expected: usize,
    /// The size of the image given.
    pub got: usize,
}

impl fmt::Display for UapiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} image must be {} bytes, got {}", self.what, self.expected, self.got)
    }
}

impl std::error::Error for UapiError {}

/// Checks the image size and returns it as a fixed array.
pub(crate) fn sized<const N: usize>(what: &'static str, image: &[u8]) -> Result<[u8; N], UapiError> {
    image.try_into().map_err(|_| UapiError { what, expected: N, got: image.len() })
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// `struct kvm_ioeventfd` (64 bytes): `datamatch u64, addr u64, len u32, fd s32, flags u32, pad[36]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmIoeventfd {
    /// Value a write must carry when `KVM_IOEVENTFD_FLAG_DATAMATCH` is set.
    pub datamatch: u64,
    /// Guest physical address or port.
    pub addr: u64,
    /// Access length: 0 (any), 1, 2, 4 or 8.
    pub len: u32,
    /// The eventfd.
    pub fd: i32,
    /// `KVM_IOEVENTFD_FLAG_*`.
    pub flags: u32,
    /// Padding, kept as given (the kernel ignores it).
    pub pad: [u8; 36],
}

impl Default for KvmIoeventfd {
    fn default() -> Self {
        KvmIoeventfd { datamatch: 0, addr: 0, len: 0, fd: -1, flags: 0, pad: [0; 36] }
    }
}

impl KvmIoeventfd {
    /// Size of the image.
    pub const SIZE: usize = 64;

    /// The 64-byte image.
    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.datamatch.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.fd.to_le_bytes());
        b[24..28].copy_from_slice(&self.flags.to_le_bytes());
        b[28..64].copy_from_slice(&self.pad);
        b
    }

    /// Decodes a 64-byte image.
    pub fn decode(image: &[u8]) -> Result<Self, UapiError> {
        let b: [u8; 64] = sized("kvm_ioeventfd", image)?;
        Ok(KvmIoeventfd {
            datamatch: u64_at(&b, 0),
            addr: u64_at(&b, 8),
            len: u32_at(&b, 16),
            fd: u32_at(&b, 20) as i32,
            flags: u32_at(&b, 24),
            pad: b[28..64].try_into().expect("36 bytes"),
        })
    }
}

/// `struct kvm_coalesced_mmio_zone` (16 bytes): `addr u64, size u32, union { pad u32; pio u32 }`.
///
/// ```
/// use ioregionfd_model::uapi::KvmCoalescedMmioZone;
/// let z = KvmCoalescedMmioZone { addr: 0x1000, size: 16, pio: 0 };
/// assert_eq!(KvmCoalescedMmioZone::decode(&z.encode()), Ok(z));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmCoalescedMmioZone {
    /// Start address or port.
    pub addr: u64,
    /// Size in bytes (becomes the bus entry's signed `int len`).
    pub size: u32,
    /// 0 for MMIO, 1 for PIO; anything else is refused with `EINVAL`.
    pub pio: u32,
}

impl KvmCoalescedMmioZone {
    /// Size of the image.
    pub const SIZE: usize = 16;

    /// The 16-byte image.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..16].copy_from_slice(&self.pio.to_le_bytes());
        b
    }

    /// Decodes a 16-byte image.
    pub fn decode(image: &[u8]) -> Result<Self, UapiError> {
        let b: [u8; 16] = sized("kvm_coalesced_mmio_zone", image)?;
        Ok(KvmCoalescedMmioZone { addr: u64_at(&b, 0), size: u32_at(&b, 8), pio: u32_at(&b, 12) })
    }
}

/// `struct kvm_coalesced_mmio` (24 bytes): one entry of the coalesced ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmCoalescedMmio {
    /// Address or port written.
    pub phys_addr: u64,
    /// Bytes written (1 to 8).
    pub len: u32,
    /// 1 when the zone is a PIO zone.
    pub pio: u32,
    /// The bytes written, the rest zero.
    pub data: [u8; 8],
}

impl KvmCoalescedMmio {
    /// Size of the image.
    pub const SIZE: usize = 24;

    /// The 24-byte image.
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&self.phys_addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.pio.to_le_bytes());
        b[16..24].copy_from_slice(&self.data);
        b
    }

    /// Decodes a 24-byte image.
    pub fn decode(image: &[u8]) -> Result<Self, UapiError> {
        let b: [u8; 24] = sized("kvm_coalesced_mmio", image)?;
        Ok(KvmCoalescedMmio {
            phys_addr: u64_at(&b, 0),
            len: u32_at(&b, 8),
            pio: u32_at(&b, 12),
            data: b[16..24].try_into().expect("8 bytes"),
        })
    }
}

/// Slots in the coalesced MMIO ring with 4 KiB pages: `(4096 - 8) / 24` = 170 (one kept free).
pub const KVM_COALESCED_MMIO_MAX: u32 = (4096 - 8) / 24;

/// `KVM_IOREGION_PIO` (both designs): the region is on the PIO bus.
pub const KVM_IOREGION_PIO: u32 = 1 << 0;
/// `KVM_IOREGION_POSTED_WRITES` (both designs): writes do not wait for a response.
pub const KVM_IOREGION_POSTED_WRITES: u32 = 1 << 1;
/// `KVM_IOREGION_DEASSIGN` (rfc-v3): remove the region.
pub const KVM_IOREGION_DEASSIGN: u32 = 1 << 2;
/// `KVM_IOREGION_VALID_FLAG_MASK` of rfc-v3.
pub const KVM_IOREGION_V3_VALID_FLAG_MASK: u32 = 0x7;

/// `struct kvm_ioregion` of the seed document (64 bytes):
/// `guest_paddr u64, memory_size u64, user_data u64, fd s32, flags u32, pad[32]`.
///
/// ```
/// use ioregionfd_model::uapi::KvmIoregionSeed;
/// let r = KvmIoregionSeed { guest_paddr: 0x1000, memory_size: 0x100, user_data: 9, fd: 3, flags: 0, pad: [0; 32] };
/// assert_eq!(KvmIoregionSeed::decode(&r.encode()), Ok(r));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmIoregionSeed {
    /// Guest physical address (or port).
    pub guest_paddr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// Opaque token sent with every command.
    pub user_data: u64,
    /// An ioregionfd from `KVM_CREATE_IOREGIONFD`, or -1 to delete.
    pub fd: i32,
    /// `KVM_IOREGION_PIO`, `KVM_IOREGION_POSTED_WRITES`.
    pub flags: u32,
    /// Padding, kept as given.
    pub pad: [u8; 32],
}

impl KvmIoregionSeed {
    /// Size of the image.
    pub const SIZE: usize = 64;

    /// The 64-byte image.
    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.guest_paddr.to_le_bytes());
        b[8..16].copy_from_slice(&self.memory_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.user_data.to_le_bytes());
        b[24..28].copy_from_slice(&self.fd.to_le_bytes());
        b[28..32].copy_from_slice(&self.flags.to_le_bytes());
        b[32..64].copy_from_slice(&self.pad);
        b
    }

    /// Decodes a 64-byte image.
    pub fn decode(image: &[u8]) -> Result<Self, UapiError> {
        let b: [u8; 64] = sized("kvm_ioregion (seed)", image)?;
        Ok(KvmIoregionSeed {
            guest_paddr: u64_at(&b, 0),
            memory_size: u64_at(&b, 8),
            user_data: u64_at(&b, 16),
            fd: u32_at(&b, 24) as i32,
            flags: u32_at(&b, 28),
            pad: b[32..64].try_into().expect("32 bytes"),
        })
    }
}

/// `struct kvm_ioregion` of RFC v3 (64 bytes):
/// `guest_paddr u64, memory_size u64, user_data u64, read_fd s32, write_fd s32, flags u32, pad[28]`.
///
/// ```
/// use ioregionfd_model::uapi::KvmIoregionV3;
/// let r = KvmIoregionV3 { guest_paddr: 0x1000, memory_size: 8, user_data: 1, read_fd: 3, write_fd: 4, flags: 2, pad: [0; 28] };
/// let image = r.encode();
/// assert_eq!(&image[24..32], &[3, 0, 0, 0, 4, 0, 0, 0]);
/// assert_eq!(KvmIoregionV3::decode(&image), Ok(r));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmIoregionV3 {
    /// Guest physical address (or port).
    pub guest_paddr: u64,
    /// Size in bytes; 0 registers a FAST_MMIO-style doorbell (posted writes only).
    pub memory_size: u64,
    /// Opaque token sent with every command.
    pub user_data: u64,
    /// The fd KVM reads responses from (not looked at when `memory_size` is 0).
    pub read_fd: i32,
    /// The fd KVM writes commands to.
    pub write_fd: i32,
    /// `KVM_IOREGION_PIO`, `KVM_IOREGION_POSTED_WRITES`, `KVM_IOREGION_DEASSIGN`.
    pub flags: u32,
    /// Padding, kept as given.
    pub pad: [u8; 28],
}

impl KvmIoregionV3 {
    /// Size of the image.
    pub const SIZE: usize = 64;

    /// The 64-byte image.
    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.guest_paddr.to_le_bytes());
        b[8..16].copy_from_slice(&self.memory_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.user_data.to_le_bytes());
        b[24..28].copy_from_slice(&self.read_fd.to_le_bytes());
        b[28..32].copy_from_slice(&self.write_fd.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..64].copy_from_slice(&self.pad);
        b
    }

    /// Decodes a 64-byte image.
    pub fn decode(image: &[u8]) -> Result<Self, UapiError> {
        let b: [u8; 64] = sized("kvm_ioregion (rfc-v3)", image)?;
        Ok(KvmIoregionV3 {
            guest_paddr: u64_at(&b, 0),
            memory_size: u64_at(&b, 8),
            user_data: u64_at(&b, 16),
            read_fd: u32_at(&b, 24) as i32,
            write_fd: u32_at(&b, 28) as i32,
            flags: u32_at(&b, 32),
            pad: b[36..64].try_into().expect("28 bytes"),
        })
    }
}

#[cfg(all(test, not(loom), not(feature = "shuttle")))]
mod tests {
    use super::*;

    #[test]
    fn images_are_byte_exact() {
        let io = KvmIoeventfd { datamatch: 0x0102, addr: 0x0304, len: 4, fd: -1, flags: 5, pad: [0xaa; 36] };
        let b = io.encode();
        assert_eq!(&b[0..2], &[2, 1]);
        assert_eq!(&b[8..10], &[4, 3]);
        assert_eq!(&b[16..20], &[4, 0, 0, 0]);
        assert_eq!(&b[20..24], &[0xff; 4]);
        assert_eq!(&b[24..28], &[5, 0, 0, 0]);
        assert_eq!(&b[28..], &[0xaa; 36]);
        let z = KvmCoalescedMmioZone { addr: 1, size: 2, pio: 1 }.encode();
        assert_eq!(z, [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        let seed = KvmIoregionSeed { guest_paddr: 1, memory_size: 2, user_data: 3, fd: -1, flags: 3, pad: [0; 32] };
        let b = seed.encode();
        assert_eq!((b[0], b[8], b[16]), (1, 2, 3));
        assert_eq!(&b[24..32], &[0xff, 0xff, 0xff, 0xff, 3, 0, 0, 0]);
        let e = KvmCoalescedMmio { phys_addr: 0x10, len: 2, pio: 0, data: [1, 2, 0, 0, 0, 0, 0, 0] };
        assert_eq!(KvmCoalescedMmio::decode(&e.encode()), Ok(e));
    }

    #[test]
    fn wrong_sizes_are_typed_errors() {
        assert_eq!(KvmIoeventfd::decode(&[0; 65]), Err(UapiError { what: "kvm_ioeventfd", expected: 64, got: 65 }));
        assert!(KvmCoalescedMmioZone::decode(&[]).is_err());
        assert!(KvmIoregionSeed::decode(&[0; 16]).is_err());
        assert!(KvmIoregionV3::decode(&[0; 63]).is_err());
        assert!(KvmCoalescedMmio::decode(&[0; 23]).is_err());
    }
}
