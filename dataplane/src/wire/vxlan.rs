//! The VXLAN header (RFC 7348 §5).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The I flag must be 1 for a valid VNI; the other flag bits and reserved fields are
//! sent as 0 and ignored on receipt (RFC 7348 §5).

use std::fmt;

/// IANA-assigned VXLAN UDP destination port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;
/// Length of the VXLAN header in bytes.
pub const HEADER_LEN: usize = 8;
/// The I flag (valid VNI) in the first byte.
pub const FLAG_I: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;
/// Bytes a VXLAN encapsulation adds over IPv4 without options:
/// Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const OVERHEAD_V4: usize = 50;
/// Bytes a VXLAN encapsulation adds over IPv6: Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8.
pub const OVERHEAD_V6: usize = 70;
/// First UDP source port for VXLAN (RFC 7348 §5 recommends the dynamic/private range
/// 49152–65535 for the entropy-carrying source port).
pub const SRC_PORT_MIN: u16 = 49152;

mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: std::ops::Range<usize> = 4..7;
}

/// Errors of the VXLAN view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    /// Fewer than 8 bytes.
    #[error("VXLAN header truncated: {0} bytes, need 8")]
    Truncated(usize),
    /// The I flag is clear: the VNI field is not valid (RFC 7348 §5).
    #[error("VXLAN I flag not set (flags {0:#04x})")]
    NoVni(u8),
}

/// A zero-copy view of a VXLAN header at the start of a buffer (the UDP payload).
#[derive(Debug, Clone, Copy)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> VxlanPacket<T> {
        VxlanPacket { buffer }
    }

    /// Wraps `buffer` after checking that it holds at least the 8-byte header.
    ///
    /// # Errors
    /// [`VxlanError::Truncated`].
    pub fn new_checked(buffer: T) -> Result<VxlanPacket<T>, VxlanError> {
        let n = buffer.as_ref().len();
        if n < HEADER_LEN {
            return Err(VxlanError::Truncated(n));
        }
        Ok(VxlanPacket { buffer })
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// True when the I flag is set (the VNI is valid).
    #[inline]
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The 24-bit VNI (0 ..= [`VNI_MAX`]).
    #[inline]
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The encapsulated Ethernet frame (everything after the header).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Writes a header with only the I flag set and `vni` (its low 24 bits), reserved
    /// fields zero.
    #[inline]
    pub fn set_header(&mut self, vni: u32) {
        let v = vni.to_be_bytes();
        self.buffer.as_mut()[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

/// The parsed meaning of a VXLAN header: its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// VXLAN Network Identifier, 0 ..= [`VNI_MAX`].
    pub vni: u32,
}

impl VxlanRepr {
    /// Parses a header: checks the I flag (RFC 7348 §5); other bits are ignored.
    ///
    /// # Errors
    /// [`VxlanError::NoVni`].
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> Result<VxlanRepr, VxlanError> {
        if !p.has_vni() {
            return Err(VxlanError::NoVni(p.flags()));
        }
        Ok(VxlanRepr { vni: p.vni() })
    }

    /// Writes the header into `p`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut VxlanPacket<T>) {
        p.set_header(self.vni);
    }
}

impl fmt::Display for VxlanRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VXLAN vni={}", self.vni)
    }
}

/// The UDP source port for an inner flow hash (RFC 7348 §5): in 49152–65535.
#[inline]
pub fn source_port(hash: u32) -> u16 {
    SRC_PORT_MIN | ((hash ^ (hash >> 16)) as u16 & 0x3fff)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VXLAN header of a real capture (VNI 42).
    const HDR: [u8; 8] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00];

    #[test]
    fn parse_and_emit_round_trip() {
        let p = VxlanPacket::new_checked(&HDR[..]).unwrap();
        let r = VxlanRepr::parse(&p).unwrap();
        assert_eq!(r, VxlanRepr { vni: 42 });
        assert_eq!(r.to_string(), "VXLAN vni=42");
        let mut buf = [0xffu8; 8];
        r.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, HDR);
        let mut buf = [0u8; 8];
        VxlanPacket::new_unchecked(&mut buf[..]).set_header(VNI_MAX);
        assert_eq!(buf, [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
    }

    #[test]
    fn rejects_truncated_and_missing_i_flag() {
        assert_eq!(
            VxlanPacket::new_checked(&HDR[..7]).unwrap_err(),
            VxlanError::Truncated(7)
        );
        let mut h = HDR;
        h[0] = 0x00;
        let p = VxlanPacket::new_checked(&h[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p).unwrap_err(), VxlanError::NoVni(0));
        // Reserved bits set are ignored (RFC 7348 §5).
        h[0] = 0xff;
        h[7] = 0xff;
        let p = VxlanPacket::new_checked(&h[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p).unwrap().vni, 42);
    }

    #[test]
    fn source_port_in_dynamic_range() {
        for h in [0u32, 1, 0xffff_ffff, 0x1234_5678, 0xdead_beef] {
            let p = source_port(h);
            assert!(p >= 49152, "{p}");
        }
        assert_ne!(source_port(1), source_port(2));
    }
}
