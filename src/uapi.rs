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
