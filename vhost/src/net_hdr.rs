//! The virtio-net header that precedes every frame on a virtio-net virtqueue, and the
//! checksum completion the device owes the driver when it offers `VIRTIO_NET_F_CSUM`.
//!
//! Spec: VIRTIO 1.2 §5.1.6 "Device Operation" (`struct virtio_net_hdr`), §5.1.6.2
//! "Packet Transmission" (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, `csum_start`, `csum_offset`).

/// Header length in bytes with `VIRTIO_F_VERSION_1` or `VIRTIO_NET_F_MRG_RXBUF`
/// (the `num_buffers` field is present).
pub const NET_HDR_LEN_V1: usize = 12;
/// Header length in bytes of a legacy device without `VIRTIO_NET_F_MRG_RXBUF`.
pub const NET_HDR_LEN_LEGACY: usize = 10;

/// `flags`: the driver left a partial checksum; the device completes it
/// (`csum_start`/`csum_offset`, §5.1.6.2).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was validated (device → driver only).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// Byte offsets of the header fields (all little endian with `VERSION_1`).
mod field {
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const CSUM_START: std::ops::Range<usize> = 6..8;
    pub const CSUM_OFFSET: std::ops::Range<usize> = 8..10;
    pub const NUM_BUFFERS: std::ops::Range<usize> = 10..12;
}

/// The fields of a virtio-net header this backend acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` (only `NONE` is accepted: no GSO feature is offered).
    pub gso_type: u8,
    /// Where checksumming starts, in bytes from the start of the Ethernet frame.
    pub csum_start: u16,
    /// Where to store the checksum, in bytes from `csum_start`.
    pub csum_offset: u16,
    /// Number of descriptor chains this frame uses (mergeable RX buffers), 1 otherwise.
    pub num_buffers: u16,
}

/// Why a header or a partial checksum was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HdrError {
    /// The buffer is shorter than the negotiated header length.
    #[error("virtio-net header needs {need} bytes, got {got}")]
    Short {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// A GSO frame although no GSO feature was offered.
    #[error("GSO type {0} not negotiated")]
    Gso(u8),
    /// `csum_start + csum_offset + 2` lies past the end of the frame.
    #[error("partial checksum at {start}+{offset} outside a {len}-byte frame")]
    ChecksumRange {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length in bytes.
        len: usize,
    },
}

impl NetHdr {
    /// Parses the first `hdr_len` bytes of `buf` (10 or 12, see [`NET_HDR_LEN_V1`]).
    ///
    /// # Errors
    /// [`HdrError::Short`] when `buf` is shorter than `hdr_len`.
    pub fn parse(buf: &[u8], hdr_len: usize) -> Result<NetHdr, HdrError> {
        if buf.len() < hdr_len || hdr_len < NET_HDR_LEN_LEGACY {
            return Err(HdrError::Short {
                need: hdr_len.max(NET_HDR_LEN_LEGACY),
                got: buf.len(),
            });
        }
        let u16_at =
            |r: std::ops::Range<usize>| u16::from_le_bytes([buf[r.start], buf[r.start + 1]]);
        Ok(NetHdr {
            flags: buf[field::FLAGS],
            gso_type: buf[field::GSO_TYPE],
            csum_start: u16_at(field::CSUM_START),
            csum_offset: u16_at(field::CSUM_OFFSET),
            num_buffers: if hdr_len >= NET_HDR_LEN_V1 {
                u16_at(field::NUM_BUFFERS)
            } else {
                1
            },
        })
    }

    /// Writes the header into `buf[..hdr_len]` (`num_buffers` only when `hdr_len` is 12).
    /// Fields it does not model (`hdr_len`, `gso_size`) are written as 0.
    ///
    /// # Panics
    /// When `buf` is shorter than `hdr_len` (a caller bug).
    pub fn emit(&self, buf: &mut [u8], hdr_len: usize) {
        buf[..hdr_len].fill(0);
        buf[field::FLAGS] = self.flags;
        buf[field::GSO_TYPE] = self.gso_type;
        buf[field::CSUM_START].copy_from_slice(&self.csum_start.to_le_bytes());
        buf[field::CSUM_OFFSET].copy_from_slice(&self.csum_offset.to_le_bytes());
        if hdr_len >= NET_HDR_LEN_V1 {
            buf[field::NUM_BUFFERS].copy_from_slice(&self.num_buffers.to_le_bytes());
        }
    }

    /// Checks a header sent by the driver and, with `VIRTIO_NET_HDR_F_NEEDS_CSUM`, completes
    /// the partial checksum in `frame` (the Ethernet frame that followed the header).
    ///
    /// # Errors
    /// [`HdrError::Gso`] for a GSO frame, [`HdrError::ChecksumRange`] for checksum offsets
    /// outside the frame.
    pub fn finish_tx(&self, frame: &mut [u8]) -> Result<(), HdrError> {
        if self.gso_type != VIRTIO_NET_HDR_GSO_NONE {
            return Err(HdrError::Gso(self.gso_type));
        }
        if self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            complete_checksum(frame, self.csum_start, self.csum_offset)?;
        }
        Ok(())
    }
}

/// Completes a partial checksum (RFC 1071 one's complement sum) as a NIC with checksum
/// offload would: sums `frame[csum_start..]` (the field at `csum_start + csum_offset`
/// already holds the pseudo-header sum the driver put there) and stores the complement
/// there. A result of 0 is stored as 0xffff (RFC 768: 0 means "no checksum" for UDP;
/// both encode zero in one's complement, so TCP accepts it too).
///
/// # Errors
/// [`HdrError::ChecksumRange`] when the checksum field is not inside `frame`.
pub fn complete_checksum(
    frame: &mut [u8],
    csum_start: u16,
    csum_offset: u16,
) -> Result<(), HdrError> {
    let start = csum_start as usize;
    let at = start + csum_offset as usize;
    if at + 2 > frame.len() {
        return Err(HdrError::ChecksumRange {
            start: csum_start,
            offset: csum_offset,
            len: frame.len(),
        });
    }
    let folded = !fold(sum(&frame[start..]));
    let v = if folded == 0 { 0xffff } else { folded };
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
    Ok(())
}

/// One's complement sum of `data` as big-endian 16-bit words (odd byte padded with 0),
/// not folded.
pub fn sum(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits (end-around carry).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_emit_round_trip() {
        let h = NetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: 0,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let mut b = [0xaau8; 12];
        h.emit(&mut b, 12);
        assert_eq!(b, [1, 0, 0, 0, 0, 0, 34, 0, 16, 0, 3, 0]);
        assert_eq!(NetHdr::parse(&b, 12).unwrap(), h);
        let legacy = NetHdr::parse(&b[..10], 10).unwrap();
        assert_eq!(legacy.num_buffers, 1);
        assert!(matches!(
            NetHdr::parse(&b[..9], 12),
            Err(HdrError::Short { .. })
        ));
    }

    /// A real IPv4/UDP frame; its checksum is removed and replaced by the pseudo-header
    /// sum (as Linux does with CHECKSUM_PARTIAL), then completed.
    #[test]
    fn completes_partial_udp_checksum() {
        // eth(14) + ipv4(20) + udp(8) + "hi"
        let mut f = vec![
            0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, // eth
            0x45, 0, 0, 30, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // ip
            0x30, 0x39, 0x00, 0x35, 0, 10, 0, 0, // udp 12345 -> 53, len 10
            b'h', b'i',
        ];
        // Reference checksum computed over pseudo header + udp.
        let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 10];
        pseudo.extend_from_slice(&f[34..]);
        let expect = !fold(sum(&pseudo));
        // Partial: pseudo-header sum (not complemented) in the checksum field.
        let ph = fold(sum(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 10]));
        f[40..42].copy_from_slice(&ph.to_be_bytes());
        let h = NetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        h.finish_tx(&mut f).unwrap();
        assert_eq!(u16::from_be_bytes([f[40], f[41]]), expect);
        // Verifying the whole UDP datagram with its pseudo header now gives 0xffff.
        let mut check = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 17, 0, 10];
        check.extend_from_slice(&f[34..]);
        assert_eq!(fold(sum(&check)), 0xffff);
    }

    #[test]
    fn refuses_out_of_range_checksum_and_gso() {
        let mut f = [0u8; 60];
        assert!(matches!(
            complete_checksum(&mut f, 50, 9),
            Err(HdrError::ChecksumRange { .. })
        ));
        assert!(complete_checksum(&mut f, 50, 8).is_ok());
        assert!(matches!(
            complete_checksum(&mut f, u16::MAX, u16::MAX),
            Err(HdrError::ChecksumRange { .. })
        ));
        let h = NetHdr {
            gso_type: 1,
            ..Default::default()
        };
        assert_eq!(h.finish_tx(&mut f), Err(HdrError::Gso(1)));
    }
}
