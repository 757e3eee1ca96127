//! rust-vmm vm-device devices served over ioregionfd (feature `vm-device`).
//!
//! vm-device's [`MutDeviceMmio`] and [`MutDevicePio`] take an access as a base address, an
//! offset from it and a byte slice (the shape of Cloud Hypervisor's `BusDevice` too); an
//! ioregionfd command carries the region's `user_data`, an offset into the region, a size and a
//! value. [`VmDeviceMmio`] and [`VmDevicePio`] turn one into the other, so a device written for
//! a vm-device bus can be handed to [`serve`](super::serve),
//! [`NonBlockingServer`](super::NonBlockingServer) or the conformance harness unchanged:
//!
//! - the base is the region's: by default `user_data` itself (register each region with its
//!   guest address as `user_data` and nothing else is needed), or what
//!   [`with_region`](VmDeviceMmio::with_region) maps that `user_data` to;
//! - the offset is the command's offset into the region;
//! - the bytes are the value's low `size` bytes in little-endian order (what the guest wrote, on
//!   x86), and a read's bytes are read back the same way.
//!
//! A device shared as vm-device expects (`Arc<Mutex<T>>`, which implements [`DeviceMmio`] /
//! [`DevicePio`]) is served through [`Shared`].

use super::IoregionDevice;
use std::collections::HashMap;
use vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress, PioAddressOffset};
use vm_device::{DeviceMmio, DevicePio, MutDeviceMmio, MutDevicePio};

/// The low `size` bytes of `value`, little endian, as the byte slice vm-device passes.
fn bytes_of(value: u64, size: usize) -> ([u8; 8], usize) {
    (value.to_le_bytes(), size.min(8))
}

/// Serves a vm-device MMIO device ([`MutDeviceMmio`]) as an [`IoregionDevice`].
///
/// ```
/// use ioregionfd_model::device::{IoregionDevice, VmDeviceMmio};
/// use vm_device::MutDeviceMmio;
/// use vm_device::bus::{MmioAddress, MmioAddressOffset};
///
/// /// A device with one 32-bit register at offset 4 that remembers the base it was told.
/// #[derive(Default)]
/// struct Register { value: u32, seen_base: u64 }
/// impl MutDeviceMmio for Register {
///     fn mmio_read(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
///         self.seen_base = base.0;
///         if offset == 4 && data.len() == 4 {
///             data.copy_from_slice(&self.value.to_le_bytes());
///         }
///     }
///     fn mmio_write(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
///         self.seen_base = base.0;
///         if offset == 4 && data.len() == 4 {
///             self.value = u32::from_le_bytes(data.try_into().unwrap());
///         }
///     }
/// }
///
/// let mut d = VmDeviceMmio::new(Register::default()).with_region(7, MmioAddress(0xd000_0000));
/// d.write(7, 4, 4, 0x1234_5678);
/// assert_eq!(d.read(7, 4, 4), 0x1234_5678);
/// assert_eq!(d.device().seen_base, 0xd000_0000); // the base mapped from user_data 7
/// d.read(0xfee0_0000, 4, 4);
/// assert_eq!(d.device().seen_base, 0xfee0_0000); // no mapping: user_data is the base
/// ```
#[derive(Debug)]
pub struct VmDeviceMmio<D> {
    device: D,
    bases: HashMap<u64, MmioAddressOffset>,
}

impl<D> VmDeviceMmio<D> {
    /// Serves `device`; the base of an access is its region's `user_data` unless
    /// [`with_region`](Self::with_region) says otherwise.
    pub fn new(device: D) -> Self {
        VmDeviceMmio { device, bases: HashMap::new() }
    }

    /// Accesses to the region registered with `user_data` get `base` as their base address.
    pub fn with_region(mut self, user_data: u64, base: MmioAddress) -> Self {
        self.bases.insert(user_data, base.0);
        self
    }

    fn base(&self, user_data: u64) -> MmioAddress {
        MmioAddress(self.bases.get(&user_data).copied().unwrap_or(user_data))
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to change.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device back.
    pub fn into_inner(self) -> D {
        self.device
    }
}

impl<D: MutDeviceMmio + Send> IoregionDevice for VmDeviceMmio<D> {
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64 {
        let base = self.base(user_data);
        let (mut bytes, n) = bytes_of(0, size);
        self.device.mmio_read(base, offset, &mut bytes[..n]);
        u64::from_le_bytes(bytes)
    }

    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) {
        let base = self.base(user_data);
        let (bytes, n) = bytes_of(value, size);
        self.device.mmio_write(base, offset, &bytes[..n]);
    }
}

/// Serves a vm-device PIO device ([`MutDevicePio`]) as an [`IoregionDevice`]. Ports are 16 bits:
/// a base (a `user_data` without a [`with_region`](Self::with_region) mapping) or an offset
/// above `0xffff` names no port, and such an access does not reach the device: a read returns
/// all ones (what x86 reads from a port nobody answers), a write is dropped.
///
/// ```
/// use ioregionfd_model::device::{IoregionDevice, VmDevicePio};
/// use vm_device::MutDevicePio;
/// use vm_device::bus::{PioAddress, PioAddressOffset};
///
/// /// An 8-port scratch device.
/// #[derive(Default)]
/// struct Ports([u8; 8]);
/// impl MutDevicePio for Ports {
///     fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
///         for (i, b) in data.iter_mut().enumerate() {
///             *b = self.0[(usize::from(offset) + i) % 8];
///         }
///     }
///     fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
///         for (i, b) in data.iter().enumerate() {
///             self.0[(usize::from(offset) + i) % 8] = *b;
///         }
///     }
/// }
///
/// let mut d = VmDevicePio::new(Ports::default());
/// d.write(0x3f8, 0, 2, 0xbbaa); // user_data 0x3f8: the base port
/// assert_eq!(d.read(0x3f8, 1, 1), 0xbb);
/// assert_eq!(d.read(0x1_0000, 0, 2), 0xffff); // not a port
/// ```
#[derive(Debug)]
pub struct VmDevicePio<D> {
    device: D,
    bases: HashMap<u64, PioAddressOffset>,
}

impl<D> VmDevicePio<D> {
    /// Serves `device`; the base port of an access is its region's `user_data` unless
    /// [`with_region`](Self::with_region) says otherwise.
    pub fn new(device: D) -> Self {
        VmDevicePio { device, bases: HashMap::new() }
    }

    /// Accesses to the region registered with `user_data` get `base` as their base port.
    pub fn with_region(mut self, user_data: u64, base: PioAddress) -> Self {
        self.bases.insert(user_data, base.0);
        self
    }

    /// The base port and the offset as vm-device takes them, if both are 16-bit.
    fn address(&self, user_data: u64, offset: u64) -> Option<(PioAddress, PioAddressOffset)> {
        let base = match self.bases.get(&user_data) {
            Some(&b) => b,
            None => PioAddressOffset::try_from(user_data).ok()?,
        };
        Some((PioAddress(base), PioAddressOffset::try_from(offset).ok()?))
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to change.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The device back.
    pub fn into_inner(self) -> D {
        self.device
    }
}

impl<D: MutDevicePio + Send> IoregionDevice for VmDevicePio<D> {
    fn read(&mut self, user_data: u64, offset: u64, size: usize) -> u64 {
        let (mut bytes, n) = bytes_of(0, size);
        match self.address(user_data, offset) {
            Some((base, offset)) => self.device.pio_read(base, offset, &mut bytes[..n]),
            None => bytes[..n].fill(0xff),
        }
        u64::from_le_bytes(bytes)
    }

    fn write(&mut self, user_data: u64, offset: u64, size: usize, value: u64) {
        if let Some((base, offset)) = self.address(user_data, offset) {
            let (bytes, n) = bytes_of(value, size);
            self.device.pio_write(base, offset, &bytes[..n]);
        }
    }
}

/// A device vm-device shares (anything that implements [`DeviceMmio`] or [`DevicePio`], such as
/// `Arc<Mutex<T>>`), made usable by [`VmDeviceMmio`] and [`VmDevicePio`], which take the
/// `&mut self` traits.
///
/// ```
/// use ioregionfd_model::device::{IoregionDevice, Shared, VmDeviceMmio};
/// use std::sync::{Arc, Mutex};
/// use vm_device::MutDeviceMmio;
/// use vm_device::bus::{MmioAddress, MmioAddressOffset};
///
/// #[derive(Default)]
/// struct Counter(u64);
/// impl MutDeviceMmio for Counter {
///     fn mmio_read(&mut self, _: MmioAddress, _: MmioAddressOffset, data: &mut [u8]) {
///         data.copy_from_slice(&self.0.to_le_bytes()[..data.len()]);
///     }
///     fn mmio_write(&mut self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {
///         self.0 += 1;
///     }
/// }
///
/// let counter = Arc::new(Mutex::new(Counter::default())); // also on the VMM's own bus
/// let mut served = VmDeviceMmio::new(Shared(counter.clone()));
/// served.write(0x1000, 0, 4, 0);
/// served.write(0x1000, 0, 4, 0);
/// assert_eq!(served.read(0x1000, 0, 8), 2);
/// assert_eq!(counter.lock().unwrap().0, 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shared<D>(pub D);

impl<D: DeviceMmio> MutDeviceMmio for Shared<D> {
    fn mmio_read(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        self.0.mmio_read(base, offset, data);
    }

    fn mmio_write(&mut self, base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        self.0.mmio_write(base, offset, data);
    }
}

impl<D: DevicePio> MutDevicePio for Shared<D> {
    fn pio_read(&mut self, base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        self.0.pio_read(base, offset, data);
    }

    fn pio_write(&mut self, base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        self.0.pio_write(base, offset, data);
    }
}
