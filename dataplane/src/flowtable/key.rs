//! 5-tuples and the normalised flow key.
//!
//! A [`FiveTuple`] is a packet's view (source first). A [`FlowKey`] is the same 5-tuple
//! plus a zone, with the two endpoints sorted so that both directions of a connection give
//! the same key; [`FlowKey::new`] also says whether the packet's source was the "low"
//! endpoint, which the flow table compares with the flow's forward direction.
//!
//! Addresses are kept as 16 bytes: IPv6 as is, IPv4 as IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), with an explicit family flag so an IPv4 flow and
//! an IPv6 flow to `::ffff:a.b.c.d` never share a key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of ICMP (RFC 792).
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP (RFC 9293).
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP (RFC 768).
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6 (RFC 4443).
pub const IPPROTO_ICMPV6: u8 = 58;

/// An IPv4 address as the 16 bytes of its IPv4-mapped IPv6 form (RFC 4291 §2.5.5.2).
#[inline]
pub fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The 16-byte form of an address (IPv4 mapped, see [`mapped_v4`]).
#[inline]
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => mapped_v4(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Back from the 16-byte form: IPv4 when `ipv6` is false (the last 4 bytes).
#[inline]
pub fn bytes_addr(b: &[u8; 16], ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::from(*b))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]))
    }
}

/// A packet's 5-tuple, source first.
///
/// `sport`/`dport` are the TCP or UDP ports; for ICMP and ICMPv6 echo (and other
/// query/response types that carry an identifier) both hold the identifier, so a request
/// and its reply give the same key; for other protocols (and other ICMP types) both are 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// Source address (16-byte form, see [`addr_bytes`]).
    pub src: [u8; 16],
    /// Destination address (16-byte form).
    pub dst: [u8; 16],
    /// Source port (or ICMP identifier, or 0).
    pub sport: u16,
    /// Destination port (or ICMP identifier, or 0).
    pub dport: u16,
    /// IP protocol number (IPv4 protocol / IPv6 upper-layer next header).
    pub proto: u8,
    /// True for IPv6, false for IPv4.
    pub ipv6: bool,
}

impl FiveTuple {
    /// A 5-tuple from addresses of the same family.
    ///
    /// # Panics
    /// When `src` and `dst` are of different families (a caller bug).
    pub fn new(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> FiveTuple {
        assert_eq!(
            src.is_ipv6(),
            dst.is_ipv6(),
            "5-tuple with mixed address families"
        );
        FiveTuple {
            src: addr_bytes(src),
            dst: addr_bytes(dst),
            sport,
            dport,
            proto,
            ipv6: src.is_ipv6(),
        }
    }

    /// Source address.
    pub fn src_ip(&self) -> IpAddr {
        bytes_addr(&self.src, self.ipv6)
    }

    /// Destination address.
    pub fn dst_ip(&self) -> IpAddr {
        bytes_addr(&self.dst, self.ipv6)
    }

    /// The 5-tuple of the other direction.
    pub fn reversed(&self) -> FiveTuple {
        FiveTuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }
}

impl fmt::Debug for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for FiveTuple {
    /// `proto 6 10.0.0.1:1234 -> 10.0.0.2:80`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, d) = (self.src_ip(), self.dst_ip());
        if self.ipv6 {
            write!(
                f,
                "proto {} [{s}]:{} -> [{d}]:{}",
                self.proto, self.sport, self.dport
            )
        } else {
            write!(
                f,
                "proto {} {s}:{} -> {d}:{}",
                self.proto, self.sport, self.dport
            )
        }
    }
}

/// A normalised flow key: 5-tuple with sorted endpoints, plus a zone (a VNI or a NIC id,
/// so equal 5-tuples of different tenants stay apart). 48 bytes, kept as six 64-bit words
/// so that building, comparing and hashing a key are register operations:
///
/// | word | content |
/// |------|---------|
/// | 0, 1 | low endpoint's address (16-byte form, bytes 0..8 and 8..16, little-endian) |
/// | 2, 3 | high endpoint's address |
/// | 4    | `zone << 32 \| low port << 16 \| high port` |
/// | 5    | `protocol << 8 \| ipv6` |
///
/// Endpoints are ordered by (address, port), addresses compared as big-endian numbers
/// (the same order as their bytes).
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct FlowKey {
    w: [u64; 6],
}

impl PartialEq for FlowKey {
    /// Word by word without early exit (no `memcmp` call on the lookup path).
    #[inline(always)]
    fn eq(&self, o: &FlowKey) -> bool {
        let mut d = 0;
        for i in 0..6 {
            d |= self.w[i] ^ o.w[i];
        }
        d == 0
    }
}

impl Eq for FlowKey {}

impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.w.hash(state);
    }
}

/// The 128-bit product of `a` and `b` folded to 64 bits (high half xor low half): a
/// multiply whose every output bit depends on every input bit of both.
#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    (p as u64) ^ (p >> 64) as u64
}

/// The two little-endian words of a 16-byte address.
#[inline(always)]
fn addr_words(a: u128) -> [u64; 2] {
    // `a` holds the address bytes as a little-endian number: word 0 is bytes 0..8.
    [a as u64, (a >> 64) as u64]
}

impl FlowKey {
    /// The key of `t` in `zone`, and whether `t`'s source is the key's low endpoint
    /// (endpoints are ordered by (address, port)).
    #[inline]
    pub fn new(t: &FiveTuple, zone: u32) -> (FlowKey, bool) {
        FlowKey::from_parts(
            u128::from_be_bytes(t.src),
            u128::from_be_bytes(t.dst),
            t.sport,
            t.dport,
            t.proto,
            t.ipv6,
            zone,
        )
    }

    /// [`FlowKey::new`] for an IPv4 packet, from the addresses' 4 bytes as they are on
    /// the wire (the key holds their IPv4-mapped form, RFC 4291 §2.5.5.2).
    #[inline(always)]
    pub fn v4(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
        zone: u32,
    ) -> (FlowKey, bool) {
        let (s, d) = (u32::from_be_bytes(src), u32::from_be_bytes(dst));
        let src_is_lo = ((s as u64) << 16 | sport as u64) <= ((d as u64) << 16 | dport as u64);
        let (lo, lo_port, hi, hi_port) = if src_is_lo {
            (src, sport, dst, dport)
        } else {
            (dst, dport, src, sport)
        };
        // Bytes 8..16 of `::ffff:a.b.c.d` as a little-endian word: 0, 0, ff, ff, a, b, c, d.
        let mapped = |a: [u8; 4]| 0xffff_0000 | (u32::from_le_bytes(a) as u64) << 32;
        (
            FlowKey {
                w: [
                    0,
                    mapped(lo),
                    0,
                    mapped(hi),
                    (zone as u64) << 32 | (lo_port as u64) << 16 | hi_port as u64,
                    (proto as u64) << 8,
                ],
            },
            src_is_lo,
        )
    }

    /// [`FlowKey::new`] for an IPv6 packet, from the addresses' 16 bytes.
    #[inline(always)]
    pub fn v6(
        src: [u8; 16],
        dst: [u8; 16],
        sport: u16,
        dport: u16,
        proto: u8,
        zone: u32,
    ) -> (FlowKey, bool) {
        FlowKey::from_parts(
            u128::from_be_bytes(src),
            u128::from_be_bytes(dst),
            sport,
            dport,
            proto,
            true,
            zone,
        )
    }

    /// The key from addresses as big-endian numbers.
    #[inline(always)]
    fn from_parts(
        src: u128,
        dst: u128,
        sport: u16,
        dport: u16,
        proto: u8,
        ipv6: bool,
        zone: u32,
    ) -> (FlowKey, bool) {
        let src_is_lo = (src, sport) <= (dst, dport);
        let (lo, lo_port, hi, hi_port) = if src_is_lo {
            (src, sport, dst, dport)
        } else {
            (dst, dport, src, sport)
        };
        let [l0, l1] = addr_words(lo.swap_bytes());
        let [h0, h1] = addr_words(hi.swap_bytes());
        (
            FlowKey {
                w: [
                    l0,
                    l1,
                    h0,
                    h1,
                    (zone as u64) << 32 | (lo_port as u64) << 16 | hi_port as u64,
                    (proto as u64) << 8 | ipv6 as u64,
                ],
            },
            src_is_lo,
        )
    }

    fn lo(&self) -> [u8; 16] {
        ((self.w[1] as u128) << 64 | self.w[0] as u128).to_le_bytes()
    }

    fn hi(&self) -> [u8; 16] {
        ((self.w[3] as u128) << 64 | self.w[2] as u128).to_le_bytes()
    }

    /// The 5-tuple whose source is the low endpoint (`src_is_lo`) or the high one.
    pub fn tuple(&self, src_is_lo: bool) -> FiveTuple {
        let t = FiveTuple {
            src: self.lo(),
            dst: self.hi(),
            sport: (self.w[4] >> 16) as u16,
            dport: self.w[4] as u16,
            proto: self.proto(),
            ipv6: self.w[5] & 1 != 0,
        };
        if src_is_lo { t } else { t.reversed() }
    }

    /// The zone (VNI or NIC id).
    #[inline]
    pub fn zone(&self) -> u32 {
        (self.w[4] >> 32) as u32
    }

    /// The IP protocol number.
    #[inline]
    pub fn proto(&self) -> u8 {
        (self.w[5] >> 8) as u8
    }

    /// A 64-bit hash of the key with seed 0 (see [`FlowKey::hash_seeded`]).
    #[inline]
    pub fn hash64(&self) -> u64 {
        self.hash_seeded(0)
    }

    /// A 64-bit hash of the key under `seed`: the six words are xored with the seed and
    /// with constants (digits of π), multiplied in three independent pairs
    /// (a folded multiply: 64×64→128 bits, halves xored, as foldhash and wyhash do), and
    /// the three results folded by a last multiply. Two multiplies deep, so a burst's
    /// hashes overlap in the CPU. A secret seed per table keeps remote peers from choosing
    /// colliding 5-tuples. All 64 bits are mixed; the flow table uses the low ones.
    #[inline(always)]
    pub fn hash_seeded(&self, seed: u64) -> u64 {
        const K: [u64; 7] = [
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
            0x4528_21e6_38d0_1377,
            0xbe54_66cf_34e9_0c6c,
            0xc0ac_29b7_c97c_50dd,
        ];
        let w = &self.w;
        let a = folded_multiply(w[0] ^ seed ^ K[0], w[1] ^ K[1]);
        let b = folded_multiply(w[2] ^ seed ^ K[2], w[3] ^ K[3]);
        let c = folded_multiply(w[4] ^ seed ^ K[4], w[5] ^ K[5]);
        folded_multiply(a ^ c.rotate_left(23), b ^ seed.rotate_left(32) ^ K[6])
    }
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
#[inline]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "zone {} {}", self.zone(), self.tuple(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_give_the_same_key() {
        let t = FiveTuple::new(
            "10.0.0.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            IPPROTO_TCP,
            40000,
            80,
        );
        let (k1, lo1) = FlowKey::new(&t, 42);
        let (k2, lo2) = FlowKey::new(&t.reversed(), 42);
        assert_eq!(k1, k2);
        assert_eq!(k1.hash64(), k2.hash64());
        assert_ne!(lo1, lo2);
        assert_eq!(k1.tuple(lo1), t);
        assert_eq!(k1.tuple(lo2), t.reversed());
        let (k3, _) = FlowKey::new(&t, 43);
        assert_ne!(k1, k3, "zones keep equal 5-tuples apart");
        assert_eq!(std::mem::size_of::<FlowKey>(), 48);
    }

    #[test]
    fn same_address_different_ports_normalise_by_port() {
        let a: IpAddr = "::1".parse().unwrap();
        let t = FiveTuple::new(a, a, IPPROTO_UDP, 9, 7);
        let (k1, lo1) = FlowKey::new(&t, 0);
        let (k2, lo2) = FlowKey::new(&t.reversed(), 0);
        assert_eq!(k1, k2);
        assert!(!lo1 && lo2);
        assert_eq!(t.to_string(), "proto 17 [::1]:9 -> [::1]:7");
    }

    #[test]
    fn v4_and_mapped_v6_differ() {
        let t4 = FiveTuple::new(
            "1.2.3.4".parse().unwrap(),
            "5.6.7.8".parse().unwrap(),
            17,
            1,
            2,
        );
        let t6 = FiveTuple::new(
            "::ffff:1.2.3.4".parse().unwrap(),
            "::ffff:5.6.7.8".parse().unwrap(),
            17,
            1,
            2,
        );
        assert_ne!(FlowKey::new(&t4, 0).0, FlowKey::new(&t6, 0).0);
        assert_eq!(t4.src_ip(), "1.2.3.4".parse::<IpAddr>().unwrap());
    }
}
