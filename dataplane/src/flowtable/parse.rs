//! From an Ethernet frame to a 5-tuple: the small, allocation-free parser the flow table's
//! users share (firewall, and any brick that keys packets by flow).
//!
//! Layers and their specs:
//! - Ethernet II (IEEE 802.3 §3.2.6), with up to two 802.1Q / 802.1ad VLAN tags skipped;
//! - IPv4 (RFC 791 §3.1): version, IHL ≥ 5, total length within the frame, header checksum
//!   (RFC 1071), fragments (MF flag, fragment offset);
//! - IPv6 (RFC 8200 §3–§4): payload length within the frame, extension headers Hop-by-Hop
//!   (0), Routing (43), Fragment (44), Destination Options (60) and AH (51, RFC 4302 §2.2)
//!   skipped up to [`MAX_EXTENSION_HEADERS`];
//! - TCP (RFC 9293 §3.1) ports and flags, UDP (RFC 768) ports, ICMP (RFC 792) and ICMPv6
//!   (RFC 4443 §4) type and the identifier of query/response messages.
//!
//! Trailing bytes after the IP datagram (Ethernet padding) are ignored. L4 checksums are
//! not checked (a firewall forwards, it does not terminate).

use super::key::{
    FiveTuple, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, mapped_v4,
};

/// Ethertype of IPv4 (IEEE 802 numbers).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// Ethertype of an 802.1ad service VLAN tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Most IPv6 extension headers walked before the packet counts as malformed.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// TCP FIN flag (RFC 9293 §3.1).
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// Where a packet stands with respect to IP fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    No,
    /// First fragment (offset 0, more fragments follow): it carries the L4 header.
    First {
        /// IPv4 identification (16 bits) or IPv6 fragment identification (32 bits).
        id: u32,
    },
    /// A fragment at a non-zero offset: no L4 header, ports unknown (0 in the tuple).
    Later {
        /// IPv4 identification or IPv6 fragment identification.
        id: u32,
    },
}

/// What the parser learned from an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedIp {
    /// The 5-tuple (ports 0 for [`Fragment::Later`]).
    pub tuple: FiveTuple,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type, when the protocol is one of those and the header is present.
    pub icmp_type: Option<u8>,
    /// For an ICMP / ICMPv6 error (destination unreachable, packet too big, time
    /// exceeded, parameter problem), the 5-tuple of the packet it quotes (RFC 792,
    /// RFC 4443 §2.4(c)): the packet that caused the error, as its sender sent it.
    /// `None` when the quote is too short to read (or not an error).
    pub related: Option<FiveTuple>,
    /// Fragmentation state.
    pub fragment: Fragment,
    /// Offset of the IP header from the frame start, bytes.
    pub l3_offset: usize,
    /// Offset of the L4 header from the frame start, bytes (`None` for later fragments).
    pub l4_offset: Option<usize>,
}

impl ParsedIp {
    /// True for an ICMPv6 Neighbor Discovery message (RFC 4861 §4: Router Solicitation
    /// 133, Router Advertisement 134, Neighbor Solicitation 135, Neighbor Advertisement
    /// 136): IPv6's ARP.
    pub fn is_ndp(&self) -> bool {
        self.tuple.proto == IPPROTO_ICMPV6 && matches!(self.icmp_type, Some(133..=136))
    }
}

/// Result of parsing a well-formed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 nor IPv6 (ARP, LLDP, ...): the ethertype after any VLAN tags.
    NotIp {
        /// The ethertype.
        ethertype: u16,
    },
    /// An IPv4 or IPv6 packet.
    Ip(ParsedIp),
}

/// Why a frame was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than an Ethernet header (+ VLAN tags).
    #[error("frame shorter than its Ethernet header")]
    ShortEthernet,
    /// IPv4: shorter than 20 bytes, or version not 4, or IHL < 5 or beyond the frame,
    /// or total length smaller than the header or beyond the frame (RFC 791 §3.1).
    #[error("malformed IPv4 header")]
    BadIpv4Header,
    /// IPv4 header checksum mismatch (RFC 791 §3.1, RFC 1071).
    #[error("IPv4 header checksum mismatch")]
    BadIpv4Checksum,
    /// IPv6: shorter than 40 bytes, version not 6, or payload length beyond the frame
    /// (a zero payload length with a Jumbo option is not supported: RFC 2675).
    #[error("malformed IPv6 header")]
    BadIpv6Header,
    /// An IPv6 extension header is truncated, or there are more than
    /// [`MAX_EXTENSION_HEADERS`].
    #[error("malformed or too many IPv6 extension headers")]
    BadExtensionHeader,
    /// The L4 header (TCP, UDP, ICMP) of an unfragmented packet or first fragment is
    /// truncated, or a TCP data offset is below 5 or beyond the datagram.
    #[error("truncated or malformed L4 header")]
    BadL4Header,
}

impl ParseError {
    /// A short snake_case name for counters.
    pub fn name(&self) -> &'static str {
        match self {
            ParseError::ShortEthernet => "short_ethernet",
            ParseError::BadIpv4Header => "bad_ipv4_header",
            ParseError::BadIpv4Checksum => "bad_ipv4_checksum",
            ParseError::BadIpv6Header => "bad_ipv6_header",
            ParseError::BadExtensionHeader => "bad_ipv6_extension",
            ParseError::BadL4Header => "bad_l4_header",
        }
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses an Ethernet frame down to the 5-tuple.
///
/// # Errors
/// A [`ParseError`] naming the first malformed layer. Never panics, whatever the bytes.
#[inline]
pub fn parse_ethernet(frame: &[u8]) -> Result<Parsed, ParseError> {
    if frame.len() < 14 {
        return Err(ParseError::ShortEthernet);
    }
    let mut off = 12;
    let mut ethertype = be16(frame, off);
    let mut tags = 0;
    while (ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ) && tags < 2 {
        off += 4;
        if frame.len() < off + 2 {
            return Err(ParseError::ShortEthernet);
        }
        ethertype = be16(frame, off);
        tags += 1;
    }
    let l3 = off + 2;
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(frame, l3).map(Parsed::Ip),
        ETHERTYPE_IPV6 => parse_ipv6(frame, l3).map(Parsed::Ip),
        _ => Ok(Parsed::NotIp { ethertype }),
    }
}

/// What [`fast_key`] reads from a packet: its flow key (zone included), whether its
/// source is the key's low endpoint, and its TCP flags (0 for UDP).
pub type FastKey = (FlowKey, bool, u8);

/// The flow key of the commonest packets in one short pass, for a hit path that must not
/// pay for the general parser: untagged Ethernet, then IPv4 without options or IPv6
/// without extension headers, not a fragment, TCP or UDP. The checks are those of
/// [`parse_ethernet`] (IPv4 version, total length, header checksum, fragment fields;
/// IPv6 version and payload length; TCP data offset, L4 lengths).
///
/// `None` for every other frame (VLAN tags, IPv4 options, extension headers, fragments,
/// ICMP, other protocols, malformed or short frames): those need [`parse_ethernet`].
/// For every frame where this returns `Some((key, lo, flags))`, [`parse_ethernet`]
/// returns an unfragmented TCP/UDP [`ParsedIp`] `p` with
/// `FlowKey::new(&p.tuple, zone) == (key, lo)` and `p.tcp_flags == flags` (a unit test
/// and the fuzz target check it).
#[inline(always)]
pub fn fast_key(frame: &[u8], zone: u32) -> Option<FastKey> {
    // The TCP data offset and flags bytes (frame bytes 12 and 13 of the L4 header), when
    // the frame is long enough; a TCP header shorter than that fails `fast_l4` anyway.
    let tcp_bytes = |at: usize| match frame.get(at..at + 2) {
        Some(&[doff, flags]) => (doff, flags),
        _ => (0, 0),
    };
    // Ethernet + IPv4 + UDP: 42 bytes.
    let h = frame.first_chunk::<42>()?;
    let ethertype = u16::from_be_bytes([h[12], h[13]]);
    if ethertype == ETHERTYPE_IPV4 {
        // RFC 791 §3.1: version 4 and IHL 5 (no options) in one byte.
        if h[14] != 0x45 {
            return None;
        }
        let total = u16::from_be_bytes([h[16], h[17]]) as usize;
        // Not a fragment: MF clear and offset 0 (DF and the reserved bit do not matter).
        if total < 20 || total > frame.len() - 14 || h[20] & 0x3f != 0 || h[21] != 0 {
            return None;
        }
        let ip: &[u8; 20] = h[14..34].try_into().ok()?;
        if !ipv4_checksum_ok_20(ip) {
            return None;
        }
        let proto = h[23];
        let (doff, flags) = tcp_bytes(46);
        let flags = fast_l4(proto, total - 20, doff, flags)?;
        let (k, lo) = FlowKey::v4(
            [h[26], h[27], h[28], h[29]],
            [h[30], h[31], h[32], h[33]],
            u16::from_be_bytes([h[34], h[35]]),
            u16::from_be_bytes([h[36], h[37]]),
            proto,
            zone,
        );
        Some((k, lo, flags))
    } else if ethertype == ETHERTYPE_IPV6 {
        // Ethernet + IPv6 + UDP: 62 bytes.
        let h = frame.first_chunk::<62>()?;
        // RFC 8200 §3: version 6; a zero payload length goes to the full parser.
        let payload = u16::from_be_bytes([h[18], h[19]]) as usize;
        if h[14] >> 4 != 6 || payload == 0 || 40 + payload > frame.len() - 14 {
            return None;
        }
        let proto = h[20];
        let (doff, flags) = tcp_bytes(66);
        let flags = fast_l4(proto, payload, doff, flags)?;
        let src: [u8; 16] = h[22..38].try_into().ok()?;
        let dst: [u8; 16] = h[38..54].try_into().ok()?;
        let (k, lo) = FlowKey::v6(
            src,
            dst,
            u16::from_be_bytes([h[54], h[55]]),
            u16::from_be_bytes([h[56], h[57]]),
            proto,
            zone,
        );
        Some((k, lo, flags))
    } else {
        None
    }
}

/// The L4 checks of [`fast_key`] for a TCP or UDP header of `l4_len` bytes whose TCP
/// bytes 12 (data offset) and 13 (flags) are given: the TCP flags (0 for UDP), or `None`.
#[inline(always)]
fn fast_l4(proto: u8, l4_len: usize, doff_byte: u8, flags: u8) -> Option<u8> {
    match proto {
        IPPROTO_TCP => {
            let doff = (doff_byte >> 4) as usize * 4;
            (l4_len >= 20 && doff >= 20 && doff <= l4_len).then_some(flags)
        }
        IPPROTO_UDP => (l4_len >= 8).then_some(0),
        _ => None,
    }
}

/// The Internet checksum (RFC 1071) of `b`; 0 when a header including its checksum field
/// is intact.
fn internet_checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    let mut chunks = b.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// True when an IPv4 header (a multiple of 4 bytes long) sums to 0xffff in one's
/// complement (RFC 1071: summed here in 32-bit words, folded at the end, which gives the
/// same result as 16-bit words, §2(B)).
#[inline]
fn ipv4_checksum_ok(h: &[u8]) -> bool {
    let mut sum = 0u64;
    for c in h.chunks_exact(4) {
        sum += u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// [`ipv4_checksum_ok`] for a header without options (20 bytes), without a loop: the
/// five 32-bit words summed, folded once to 32 bits and three times to 16 (enough for any
/// sum of five words), compared with 0xffff.
#[inline(always)]
fn ipv4_checksum_ok_20(h: &[u8; 20]) -> bool {
    let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    let mut sum = w(0) + w(4) + w(8) + w(12) + w(16);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

#[inline]
fn parse_ipv4(frame: &[u8], l3: usize) -> Result<ParsedIp, ParseError> {
    let ip = &frame[l3..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(ParseError::BadIpv4Header);
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    let total = be16(ip, 2) as usize;
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err(ParseError::BadIpv4Header);
    }
    if !ipv4_checksum_ok(&ip[..ihl]) {
        return Err(ParseError::BadIpv4Checksum);
    }
    let id = be16(ip, 4) as u32;
    let frag = be16(ip, 6);
    let more = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let fragment = match (offset, more) {
        (0, false) => Fragment::No,
        (0, true) => Fragment::First { id },
        _ => Fragment::Later { id },
    };
    let proto = ip[9];
    let mut t = FiveTuple {
        src: mapped_v4([ip[12], ip[13], ip[14], ip[15]]),
        dst: mapped_v4([ip[16], ip[17], ip[18], ip[19]]),
        sport: 0,
        dport: 0,
        proto,
        ipv6: false,
    };
    let mut p = ParsedIp {
        tuple: t,
        tcp_flags: 0,
        icmp_type: None,
        related: None,
        fragment,
        l3_offset: l3,
        l4_offset: None,
    };
    if let Fragment::Later { .. } = fragment {
        return Ok(p);
    }
    let l4 = &ip[ihl..total];
    parse_l4(l4, proto, &mut t, &mut p)?;
    p.tuple = t;
    p.l4_offset = Some(l3 + ihl);
    Ok(p)
}

#[inline]
fn parse_ipv6(frame: &[u8], l3: usize) -> Result<ParsedIp, ParseError> {
    let ip = &frame[l3..];
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Err(ParseError::BadIpv6Header);
    }
    let payload = be16(ip, 4) as usize;
    if payload == 0 && ip[6] == 0 {
        // A Jumbo Payload option (RFC 2675) would follow: not supported.
        return Err(ParseError::BadIpv6Header);
    }
    if 40 + payload > ip.len() {
        return Err(ParseError::BadIpv6Header);
    }
    let ip = &ip[..40 + payload];
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut off = 40;
    let mut fragment = Fragment::No;
    let mut walked = 0;
    loop {
        match next {
            // Hop-by-Hop, Routing, Destination Options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                if ip.len() < off + 8 {
                    return Err(ParseError::BadExtensionHeader);
                }
                let len = (ip[off + 1] as usize + 1) * 8;
                if ip.len() < off + len {
                    return Err(ParseError::BadExtensionHeader);
                }
                next = ip[off];
                off += len;
            }
            // Fragment header (RFC 8200 §4.5): 8 bytes.
            44 => {
                if ip.len() < off + 8 {
                    return Err(ParseError::BadExtensionHeader);
                }
                let fo = be16(ip, off + 2);
                let id = u32::from_be_bytes([ip[off + 4], ip[off + 5], ip[off + 6], ip[off + 7]]);
                let offset = fo >> 3;
                let more = fo & 1 != 0;
                fragment = match (offset, more) {
                    (0, false) => Fragment::No, // atomic fragment (RFC 6946)
                    (0, true) => Fragment::First { id },
                    _ => Fragment::Later { id },
                };
                next = ip[off];
                off += 8;
            }
            // Authentication Header (RFC 4302 §2.2): (len + 2) * 4 bytes.
            51 => {
                if ip.len() < off + 8 {
                    return Err(ParseError::BadExtensionHeader);
                }
                let len = (ip[off + 1] as usize + 2) * 4;
                if ip.len() < off + len {
                    return Err(ParseError::BadExtensionHeader);
                }
                next = ip[off];
                off += len;
            }
            _ => break,
        }
        walked += 1;
        if walked > MAX_EXTENSION_HEADERS {
            return Err(ParseError::BadExtensionHeader);
        }
        if let Fragment::Later { .. } = fragment {
            break;
        }
    }
    let mut t = FiveTuple {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto: next,
        ipv6: true,
    };
    let mut p = ParsedIp {
        tuple: t,
        tcp_flags: 0,
        icmp_type: None,
        related: None,
        fragment,
        l3_offset: l3,
        l4_offset: None,
    };
    if let Fragment::Later { .. } = fragment {
        return Ok(p);
    }
    parse_l4(&ip[off..], next, &mut t, &mut p)?;
    p.tuple = t;
    p.l4_offset = Some(l3 + off);
    Ok(p)
}

/// True for ICMP (v4) types that carry an identifier: echo reply 0, echo 8, timestamp
/// 13/14, information 15/16, address mask 17/18 (RFC 792, RFC 950).
fn icmp4_has_id(ty: u8) -> bool {
    matches!(ty, 0 | 8 | 13..=18)
}

/// True for ICMPv6 echo request 128 / reply 129 (RFC 4443 §4).
fn icmp6_has_id(ty: u8) -> bool {
    matches!(ty, 128 | 129)
}

fn parse_l4(l4: &[u8], proto: u8, t: &mut FiveTuple, p: &mut ParsedIp) -> Result<(), ParseError> {
    match proto {
        IPPROTO_TCP => {
            if l4.len() < 20 {
                return Err(ParseError::BadL4Header);
            }
            let doff = (l4[12] >> 4) as usize * 4;
            if doff < 20 || doff > l4.len() {
                return Err(ParseError::BadL4Header);
            }
            t.sport = be16(l4, 0);
            t.dport = be16(l4, 2);
            p.tcp_flags = l4[13];
        }
        IPPROTO_UDP => {
            if l4.len() < 8 {
                return Err(ParseError::BadL4Header);
            }
            t.sport = be16(l4, 0);
            t.dport = be16(l4, 2);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if l4.len() < 8 {
                return Err(ParseError::BadL4Header);
            }
            let ty = l4[0];
            p.icmp_type = Some(ty);
            let has_id = if proto == IPPROTO_ICMP {
                !t.ipv6 && icmp4_has_id(ty)
            } else {
                t.ipv6 && icmp6_has_id(ty)
            };
            if has_id {
                let id = be16(l4, 4);
                t.sport = id;
                t.dport = id;
            }
            let is_error = if proto == IPPROTO_ICMP {
                !t.ipv6 && matches!(ty, 3 | 11 | 12)
            } else {
                t.ipv6 && matches!(ty, 1..=4)
            };
            if is_error {
                p.related = quoted_tuple(&l4[8..], t.ipv6);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The 5-tuple of the datagram quoted in an ICMP error: its IP header and at least the
/// first 8 bytes of its payload (RFC 792; RFC 4443 §3 quotes as much as fits). IPv6
/// quotes with extension headers are not walked (`None`). Checksums are not checked.
fn quoted_tuple(q: &[u8], ipv6: bool) -> Option<FiveTuple> {
    let (mut t, l4) = if ipv6 {
        if q.len() < 40 || q[0] >> 4 != 6 {
            return None;
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&q[8..24]);
        dst.copy_from_slice(&q[24..40]);
        let t = FiveTuple {
            src,
            dst,
            sport: 0,
            dport: 0,
            proto: q[6],
            ipv6: true,
        };
        (t, &q[40..])
    } else {
        if q.len() < 20 || q[0] >> 4 != 4 {
            return None;
        }
        let ihl = (q[0] & 0x0f) as usize * 4;
        if ihl < 20 || q.len() < ihl {
            return None;
        }
        let t = FiveTuple {
            src: mapped_v4([q[12], q[13], q[14], q[15]]),
            dst: mapped_v4([q[16], q[17], q[18], q[19]]),
            sport: 0,
            dport: 0,
            proto: q[9],
            ipv6: false,
        };
        if be16(q, 6) & 0x1fff != 0 {
            return Some(t); // a later fragment: no ports
        }
        (t, &q[ihl..])
    };
    match t.proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            if l4.len() < 4 {
                return None;
            }
            t.sport = be16(l4, 0);
            t.dport = be16(l4, 2);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if l4.len() < 8 {
                return None;
            }
            let has_id = if t.proto == IPPROTO_ICMP {
                !t.ipv6 && icmp4_has_id(l4[0])
            } else {
                t.ipv6 && icmp6_has_id(l4[0])
            };
            if has_id {
                t.sport = be16(l4, 4);
                t.dport = t.sport;
            }
        }
        _ => {}
    }
    Some(t)
}

/// Test and bench helpers: hand-built frames. Public so benches and other bricks' tests
/// can build packets; not for the packet path.
pub mod build {
    use std::net::IpAddr;

    use super::internet_checksum;
    use crate::flowtable::key::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

    /// Ethernet + IPv4/IPv6 + L4 header, padded with `payload` zero bytes. TCP gets
    /// `tcp_flags`; ICMP/ICMPv6 get type `icmp_type` (echo request when 0 is passed for
    /// ICMPv6... pass the real type) and the identifier `sport`.
    #[allow(clippy::too_many_arguments)]
    pub fn frame(
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        sport: u16,
        dport: u16,
        tcp_flags: u8,
        icmp_type: u8,
        payload: usize,
    ) -> Vec<u8> {
        let mut l4 = match proto {
            IPPROTO_TCP => {
                let mut h = vec![0u8; 20];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[12] = 5 << 4;
                h[13] = tcp_flags;
                h
            }
            IPPROTO_UDP => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
                h
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                let mut h = vec![0u8; 8];
                h[0] = icmp_type;
                h[4..6].copy_from_slice(&sport.to_be_bytes());
                h
            }
            _ => Vec::new(),
        };
        l4.resize(l4.len() + payload, 0);
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = vec![0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
                ip[8] = 64;
                ip[9] = proto;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = internet_checksum(&ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
                ip[6] = proto;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                f.extend_from_slice(&ip);
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&l4);
        f
    }

    /// Turns an IPv4 frame from [`frame`] into a fragment: sets the identification, the
    /// MF flag and the offset (in 8-byte units), and fixes the header checksum.
    /// For a later fragment, drop the L4 header yourself if you want realism.
    pub fn make_ipv4_fragment(f: &mut [u8], id: u16, more: bool, offset8: u16) {
        let ip = &mut f[14..34];
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        let v = (if more { 0x2000 } else { 0 }) | (offset8 & 0x1fff);
        ip[6..8].copy_from_slice(&v.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let c = internet_checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }

    /// Recomputes the IPv4 header checksum of an Ethernet + IPv4 frame (no VLAN tag).
    pub fn fix_ipv4_checksum(f: &mut [u8]) {
        let ihl = (f[14] & 0x0f) as usize * 4;
        f[24..26].copy_from_slice(&[0, 0]);
        let c = internet_checksum(&f[14..14 + ihl]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The fast parser's promise: on every frame it takes, the full parser agrees
    /// (unfragmented TCP/UDP, same key, orientation and flags); and it takes the common
    /// frames. Checked on built frames, on every truncation of them and on single-byte
    /// corruptions of every header byte.
    #[test]
    fn fast_key_agrees_with_the_full_parser() {
        fn agrees(f: &[u8]) -> bool {
            let Some((key, lo, flags)) = fast_key(f, 9) else {
                return false;
            };
            let Ok(Parsed::Ip(p)) = parse_ethernet(f) else {
                panic!("fast parser took a frame the full parser rejects: {f:02x?}");
            };
            assert_eq!(p.fragment, Fragment::No, "{f:02x?}");
            assert!(matches!(p.tuple.proto, IPPROTO_TCP | IPPROTO_UDP));
            assert_eq!(FlowKey::new(&p.tuple, 9), (key, lo), "{f:02x?}");
            assert_eq!(p.tcp_flags, flags, "{f:02x?}");
            true
        }
        let mut frames = Vec::new();
        for (s, d) in [
            ("10.0.0.1", "10.0.0.2"),
            ("10.0.0.9", "10.0.0.2"),
            ("fd00::1", "fd00::2"),
            ("fd00::9", "fd00::2"),
        ] {
            for proto in [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, 47] {
                for (sp, dp) in [(1000, 80), (80, 1000), (80, 80)] {
                    for payload in [0, 6, 30] {
                        frames.push(frame(
                            ip(s),
                            ip(d),
                            proto,
                            sp,
                            dp,
                            TCP_SYN | TCP_ACK,
                            8,
                            payload,
                        ));
                    }
                }
            }
        }
        let mut taken = 0;
        let mut rng = 0x1234_5678_9abc_def1u64;
        for f in &frames {
            let common = matches!(f[23], IPPROTO_TCP | IPPROTO_UDP) && f[12..14] == [8, 0]
                || matches!(f[20], IPPROTO_TCP | IPPROTO_UDP) && f[12..14] == [0x86, 0xdd];
            assert_eq!(agrees(f), common, "{f:02x?}");
            for n in 0..f.len() {
                taken += agrees(&f[..n]) as usize;
            }
            for at in 0..f.len().min(80) {
                for _ in 0..8 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let mut g = f.clone();
                    g[at] ^= 1 << (rng % 8);
                    taken += agrees(&g) as usize;
                }
            }
        }
        assert!(
            taken > 1000,
            "corrupted frames the fast parser still takes: {taken}"
        );
    }

    #[test]
    fn parses_tcp_v4_and_matches_etherparse() {
        let f = frame(ip("10.0.0.1"), ip("10.0.0.2"), 6, 1234, 80, TCP_SYN, 0, 10);
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!("not ip")
        };
        assert_eq!(
            p.tuple,
            FiveTuple::new(ip("10.0.0.1"), ip("10.0.0.2"), 6, 1234, 80)
        );
        assert_eq!(p.tcp_flags, TCP_SYN);
        assert_eq!(p.fragment, Fragment::No);
        assert_eq!(p.l4_offset, Some(34));
        // An independent parser agrees on the headers we built.
        let e = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        match e.transport.unwrap() {
            etherparse::TransportSlice::Tcp(t) => {
                assert_eq!((t.source_port(), t.destination_port()), (1234, 80));
                assert!(t.syn());
            }
            _ => panic!("etherparse sees no TCP"),
        }
        let etherparse::NetSlice::Ipv4(v4) = e.net.unwrap() else {
            panic!()
        };
        assert_eq!(
            v4.header().to_header().calc_header_checksum(),
            v4.header().header_checksum()
        );
    }

    #[test]
    fn parses_udp_v6_icmp_echo_and_arp() {
        let f = frame(ip("fd00::1"), ip("fd00::2"), 17, 5353, 53, 0, 0, 4);
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!()
        };
        assert_eq!(
            p.tuple,
            FiveTuple::new(ip("fd00::1"), ip("fd00::2"), 17, 5353, 53)
        );
        let f = frame(ip("fd00::1"), ip("fd00::2"), 58, 77, 0, 0, 128, 0);
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!()
        };
        assert_eq!((p.tuple.sport, p.tuple.dport), (77, 77));
        assert_eq!(p.icmp_type, Some(128));
        let f = frame(ip("fd00::1"), ip("ff02::1:ff00:2"), 58, 0, 0, 0, 135, 16);
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!()
        };
        assert!(p.is_ndp());
        let f = frame(ip("1.1.1.1"), ip("2.2.2.2"), 1, 9, 0, 0, 8, 0);
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!()
        };
        assert_eq!((p.tuple.sport, p.tuple.dport, p.icmp_type), (9, 9, Some(8)));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(
            parse_ethernet(&arp).unwrap(),
            Parsed::NotIp {
                ethertype: ETHERTYPE_ARP
            }
        );
    }

    #[test]
    fn icmp_errors_carry_the_quoted_tuple() {
        // Port unreachable from 10.0.0.2 about a UDP datagram 10.0.0.1:5000 -> 10.0.0.2:9.
        let orig = frame(ip("10.0.0.1"), ip("10.0.0.2"), 17, 5000, 9, 0, 0, 4);
        let mut err = frame(ip("10.0.0.2"), ip("10.0.0.1"), 1, 0, 0, 0, 3, 0);
        err.extend_from_slice(&orig[14..14 + 28]);
        let total = (err.len() - 14) as u16;
        err[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ipv4_checksum(&mut err);
        let Parsed::Ip(p) = parse_ethernet(&err).unwrap() else {
            panic!()
        };
        assert_eq!(p.icmp_type, Some(3));
        assert_eq!(
            p.related,
            Some(FiveTuple::new(ip("10.0.0.1"), ip("10.0.0.2"), 17, 5000, 9))
        );
        // Packet too big (ICMPv6 type 2) about TCP.
        let orig = frame(ip("fd00::1"), ip("fd00::2"), 6, 4000, 443, TCP_ACK, 0, 0);
        let mut err = frame(ip("fe80::9"), ip("fd00::1"), 58, 0, 0, 0, 2, 0);
        err.extend_from_slice(&orig[14..]);
        let plen = (err.len() - 54) as u16;
        err[18..20].copy_from_slice(&plen.to_be_bytes());
        let Parsed::Ip(p) = parse_ethernet(&err).unwrap() else {
            panic!()
        };
        assert_eq!(
            p.related,
            Some(FiveTuple::new(ip("fd00::1"), ip("fd00::2"), 6, 4000, 443))
        );
        // An echo request is not an error.
        let Parsed::Ip(p) =
            parse_ethernet(&frame(ip("1.1.1.1"), ip("2.2.2.2"), 1, 9, 0, 0, 8, 30)).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.related, None);
    }

    #[test]
    fn checksum_in_32_bit_words_agrees_with_rfc_1071() {
        // Edge sums: all zero (sum 0: not valid), all ones (valid).
        assert!(!ipv4_checksum_ok_20(&[0; 20]) && !ipv4_checksum_ok(&[0; 20]));
        assert!(ipv4_checksum_ok_20(&[0xff; 20]) && ipv4_checksum_ok(&[0xff; 20]));
        let mut s = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut h = [0u8; 24];
            for b in &mut h {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                *b = s as u8;
            }
            let n = if s & 1 == 0 { 20 } else { 24 };
            h[10..12].copy_from_slice(&[0, 0]);
            let c = internet_checksum(&h[..n]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            assert!(ipv4_checksum_ok(&h[..n]));
            assert_eq!(internet_checksum(&h[..n]), 0);
            let h20: &[u8; 20] = h[..20].try_into().unwrap();
            assert_eq!(ipv4_checksum_ok_20(h20), internet_checksum(&h[..20]) == 0);
            h[(s as usize >> 8) % n] ^= 0x10;
            assert_eq!(ipv4_checksum_ok(&h[..n]), internet_checksum(&h[..n]) == 0);
            let h20: &[u8; 20] = h[..20].try_into().unwrap();
            assert_eq!(ipv4_checksum_ok_20(h20), ipv4_checksum_ok(&h[..20]));
        }
    }

    #[test]
    fn vlan_tag_is_skipped() {
        let f = frame(ip("10.0.0.1"), ip("10.0.0.2"), 17, 1, 2, 0, 0, 0);
        let mut v = f[..12].to_vec();
        v.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
        v.extend_from_slice(&f[12..]);
        let Parsed::Ip(p) = parse_ethernet(&v).unwrap() else {
            panic!()
        };
        assert_eq!(p.l3_offset, 18);
        assert_eq!(p.tuple.dport, 2);
    }

    #[test]
    fn fragments_v4_and_v6() {
        let mut f = frame(ip("10.0.0.1"), ip("10.0.0.2"), 17, 1, 2, 0, 0, 100);
        make_ipv4_fragment(&mut f, 0x1234, true, 0);
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!()
        };
        assert_eq!(p.fragment, Fragment::First { id: 0x1234 });
        assert_eq!(p.tuple.dport, 2);
        make_ipv4_fragment(&mut f, 0x1234, false, 3);
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!()
        };
        assert_eq!(p.fragment, Fragment::Later { id: 0x1234 });
        assert_eq!((p.tuple.sport, p.tuple.dport), (0, 0));
        assert_eq!(p.l4_offset, None);

        // IPv6 with a Fragment header at offset 8 (in 8-byte units), M=0.
        let mut f = frame(ip("fd00::1"), ip("fd00::2"), 44, 0, 0, 0, 0, 16);
        // payload is 16 zero bytes: put a fragment header in front of it.
        let fh = &mut f[54..62];
        fh[0] = 17; // next header UDP
        fh[2..4].copy_from_slice(&(8u16 << 3).to_be_bytes());
        fh[4..8].copy_from_slice(&7u32.to_be_bytes());
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!()
        };
        assert_eq!(p.fragment, Fragment::Later { id: 7 });
        assert_eq!(p.tuple.proto, 17);
        // First fragment: offset 0, M=1, followed by a UDP header.
        let fh = &mut f[54..62];
        fh[2..4].copy_from_slice(&1u16.to_be_bytes());
        f[62..64].copy_from_slice(&1000u16.to_be_bytes());
        f[64..66].copy_from_slice(&53u16.to_be_bytes());
        let Parsed::Ip(p) = parse_ethernet(&f).unwrap() else {
            panic!()
        };
        assert_eq!(p.fragment, Fragment::First { id: 7 });
        assert_eq!((p.tuple.sport, p.tuple.dport), (1000, 53));
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(parse_ethernet(&[0; 10]), Err(ParseError::ShortEthernet));
        let f = frame(ip("10.0.0.1"), ip("10.0.0.2"), 6, 1, 2, 0, 0, 0);
        assert_eq!(parse_ethernet(&f[..30]), Err(ParseError::BadIpv4Header));
        let mut bad = f.clone();
        bad[22] ^= 1; // TTL changed, checksum not
        assert_eq!(parse_ethernet(&bad), Err(ParseError::BadIpv4Checksum));
        let mut bad = f.clone();
        bad[14] = 0x44; // IHL 4
        assert_eq!(parse_ethernet(&bad), Err(ParseError::BadIpv4Header));
        let mut bad = f.clone();
        bad[14 + 20 + 12] = 4 << 4; // TCP data offset 4
        assert_eq!(parse_ethernet(&bad), Err(ParseError::BadL4Header));
        // Total length says 40 but the TCP header is cut at 10 bytes.
        let mut cut = f[..44].to_vec();
        cut[16..18].copy_from_slice(&30u16.to_be_bytes());
        fix_ipv4_checksum(&mut cut);
        assert_eq!(parse_ethernet(&cut), Err(ParseError::BadL4Header));
        let f6 = frame(ip("fd00::1"), ip("fd00::2"), 17, 1, 2, 0, 0, 0);
        assert_eq!(
            parse_ethernet(&f6[..f6.len() - 1]),
            Err(ParseError::BadIpv6Header)
        );
        // Ethernet padding after a short datagram is fine.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 6]);
        assert!(parse_ethernet(&padded).is_ok());
    }
}
