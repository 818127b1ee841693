//! Underlay control frames a VTEP sends: ARP requests (RFC 826), neighbour
//! solicitations and advertisements (RFC 4861), IGMPv2 reports and leaves (RFC 2236),
//! MLDv2 reports (RFC 3810). Each `emit_*` writes a whole Ethernet frame, checksums
//! included, into the start of a buffer of at least its `*_LEN` bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::checksum;
use super::{
    ETHERNET_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IP_PROTO_HOPOPT,
    IP_PROTO_ICMPV6, IP_PROTO_IGMP,
};

/// Length of an ARP request frame for IPv4 over Ethernet (no padding), in bytes.
pub const ARP_LEN: usize = ETHERNET_HEADER_LEN + 28;
/// Length of a neighbour solicitation / advertisement frame with one link-layer address
/// option, in bytes (Ethernet 14 + IPv6 40 + ICMPv6 32).
pub const ND_LEN: usize = ETHERNET_HEADER_LEN + 40 + 32;
/// Length of an IGMPv2 frame with the Router Alert option, in bytes (14 + 24 + 8).
pub const IGMP_LEN: usize = ETHERNET_HEADER_LEN + 24 + 8;
/// Length of an MLDv2 report frame with one record, in bytes (14 + 40 + 8 + 28).
pub const MLD_LEN: usize = ETHERNET_HEADER_LEN + 40 + 8 + 28;
/// ICMPv6 type of a neighbour solicitation (RFC 4861 §4.3).
pub const ICMPV6_NS: u8 = 135;
/// ICMPv6 type of a neighbour advertisement (RFC 4861 §4.4).
pub const ICMPV6_NA: u8 = 136;
/// ICMPv6 type of an MLDv2 report (RFC 3810 §5.2).
pub const ICMPV6_MLDV2_REPORT: u8 = 143;
/// Neighbour advertisement flag: solicited (RFC 4861 §4.4).
pub const NA_SOLICITED: u8 = 0x40;
/// Neighbour advertisement flag: override (RFC 4861 §4.4).
pub const NA_OVERRIDE: u8 = 0x20;

/// Writes an ARP request (RFC 826) from `mac`/`src` for `target`, broadcast, into the
/// first [`ARP_LEN`] bytes of `b`.
///
/// # Panics
/// When `b` is shorter than [`ARP_LEN`].
pub fn emit_arp_request(b: &mut [u8], mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) {
    let b = &mut b[..ARP_LEN];
    b[0..6].copy_from_slice(&[0xff; 6]);
    b[6..12].copy_from_slice(&mac);
    b[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let a = &mut b[14..];
    a[0..8].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    a[8..14].copy_from_slice(&mac);
    a[14..18].copy_from_slice(&src.octets());
    a[18..24].copy_from_slice(&[0; 6]);
    a[24..28].copy_from_slice(&target.octets());
}

/// Writes an IPv6 header (no extension) into `b[14..54]` and the Ethernet header.
fn ipv6_eth(b: &mut [u8], dst_mac: [u8; 6], src_mac: [u8; 6], plen: u16, nh: u8, hop: u8) {
    b[0..6].copy_from_slice(&dst_mac);
    b[6..12].copy_from_slice(&src_mac);
    b[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    b[14..18].copy_from_slice(&[0x60, 0, 0, 0]);
    b[18..20].copy_from_slice(&plen.to_be_bytes());
    b[20] = nh;
    b[21] = hop;
}

/// Computes the ICMPv6 checksum of `b` (an Ethernet frame with an IPv6 header) whose
/// ICMPv6 message starts at `icmp` and has its checksum field at `icmp + 2`.
fn icmpv6_checksum(b: &mut [u8], icmp: usize) {
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    s.copy_from_slice(&b[22..38]);
    d.copy_from_slice(&b[38..54]);
    let len = (b.len() - icmp) as u32;
    b[icmp + 2] = 0;
    b[icmp + 3] = 0;
    let acc = checksum::pseudo_header_v6(&s, &d, IP_PROTO_ICMPV6, len);
    let c = checksum::finish(checksum::sum(&b[icmp..], acc));
    b[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
}

/// Writes a neighbour solicitation (RFC 4861 §4.3) from `mac`/`src` for `target`, with a
/// source link-layer address option, to the solicited-node group of `target`, hop limit
/// 255, into the first [`ND_LEN`] bytes of `b`.
///
/// # Panics
/// When `b` is shorter than [`ND_LEN`].
pub fn emit_ns(b: &mut [u8], mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) {
    let b = &mut b[..ND_LEN];
    let group = super::solicited_node(target.octets());
    ipv6_eth(
        b,
        super::ipv6_multicast_mac(group),
        mac,
        32,
        IP_PROTO_ICMPV6,
        255,
    );
    b[22..38].copy_from_slice(&src.octets());
    b[38..54].copy_from_slice(&group);
    let m = &mut b[54..];
    m[0..8].copy_from_slice(&[ICMPV6_NS, 0, 0, 0, 0, 0, 0, 0]);
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 1; // source link-layer address
    m[25] = 1; // length in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    icmpv6_checksum(b, 54);
}

/// Writes a neighbour advertisement (RFC 4861 §4.4) for `target` (our address, MAC
/// `mac`) to `dst`/`dst_mac`, with a target link-layer address option, hop limit 255,
/// flags `flags` ([`NA_SOLICITED`] | [`NA_OVERRIDE`]), into the first [`ND_LEN`] bytes of
/// `b`.
///
/// # Panics
/// When `b` is shorter than [`ND_LEN`].
pub fn emit_na(
    b: &mut [u8],
    mac: [u8; 6],
    dst_mac: [u8; 6],
    target: Ipv6Addr,
    dst: Ipv6Addr,
    flags: u8,
) {
    let b = &mut b[..ND_LEN];
    ipv6_eth(b, dst_mac, mac, 32, IP_PROTO_ICMPV6, 255);
    b[22..38].copy_from_slice(&target.octets());
    b[38..54].copy_from_slice(&dst.octets());
    let m = &mut b[54..];
    m[0..8].copy_from_slice(&[ICMPV6_NA, 0, 0, 0, flags, 0, 0, 0]);
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2; // target link-layer address
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    icmpv6_checksum(b, 54);
}

/// Writes an IGMPv2 membership report for `group` (`join`, sent to the group) or a leave
/// group message (sent to 224.0.0.2) (RFC 2236 §2, §3), with the Router Alert option
/// (RFC 2113) and TTL 1, into the first [`IGMP_LEN`] bytes of `b`.
///
/// # Panics
/// When `b` is shorter than [`IGMP_LEN`].
pub fn emit_igmp(b: &mut [u8], mac: [u8; 6], src: Ipv4Addr, group: Ipv4Addr, join: bool) {
    let b = &mut b[..IGMP_LEN];
    let dst = if join {
        group
    } else {
        Ipv4Addr::new(224, 0, 0, 2)
    };
    b[0..6].copy_from_slice(&super::ipv4_multicast_mac(dst.octets()));
    b[6..12].copy_from_slice(&mac);
    b[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut b[14..38];
    ip.copy_from_slice(&[
        0x46,
        0xc0,
        0,
        32,
        0,
        0,
        0x40,
        0,
        1,
        IP_PROTO_IGMP,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0x94,
        0x04,
        0,
        0,
    ]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let m = &mut b[38..46];
    m[0] = if join { 0x16 } else { 0x17 };
    m[1] = 0;
    m[2] = 0;
    m[3] = 0;
    m[4..8].copy_from_slice(&group.octets());
    let c = checksum::checksum(m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
}

/// Writes an MLDv2 report (RFC 3810 §5.2) to ff02::16 from the link-local address
/// derived from `mac` (RFC 3810 §5.2.13 requires a link-local source), hop limit 1, with
/// a hop-by-hop Router Alert option (RFC 2711) and one record for `group`:
/// CHANGE_TO_EXCLUDE_MODE {} to join, CHANGE_TO_INCLUDE_MODE {} to leave; into the first
/// [`MLD_LEN`] bytes of `b`.
///
/// # Panics
/// When `b` is shorter than [`MLD_LEN`].
pub fn emit_mld(b: &mut [u8], mac: [u8; 6], group: Ipv6Addr, join: bool) {
    let b = &mut b[..MLD_LEN];
    let dst: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    ipv6_eth(
        b,
        super::ipv6_multicast_mac(dst),
        mac,
        36,
        IP_PROTO_HOPOPT,
        1,
    );
    b[22..38].copy_from_slice(&super::link_local_from_mac(mac));
    b[38..54].copy_from_slice(&dst);
    b[54..62].copy_from_slice(&[IP_PROTO_ICMPV6, 0, 0x05, 0x02, 0, 0, 0x01, 0x00]);
    let m = &mut b[62..90];
    m[0..8].copy_from_slice(&[ICMPV6_MLDV2_REPORT, 0, 0, 0, 0, 0, 0, 1]);
    m[8] = if join { 4 } else { 3 };
    m[9] = 0;
    m[10] = 0;
    m[11] = 0;
    m[12..28].copy_from_slice(&group.octets());
    // Checksum over the pseudo-header (upper-layer length 28) and the MLD message.
    let mut s = [0u8; 16];
    s.copy_from_slice(&b[22..38]);
    let acc = checksum::pseudo_header_v6(&s, &dst, IP_PROTO_ICMPV6, 28);
    let c = checksum::finish(checksum::sum(&b[62..90], acc));
    b[64..66].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{ArpPacketSlice, Ipv4HeaderSlice, Ipv6HeaderSlice};

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

    #[test]
    fn arp_request_parses() {
        let mut b = [0u8; 64];
        emit_arp_request(
            &mut b,
            MAC,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
        );
        assert_eq!(&b[0..6], &[0xff; 6]);
        let a = ArpPacketSlice::from_slice(&b[14..ARP_LEN]).unwrap();
        assert_eq!(a.operation().0, 1);
        assert_eq!(a.sender_hw_addr(), &MAC);
        assert_eq!(a.target_protocol_addr(), &[10, 0, 0, 2]);
    }

    #[test]
    fn ns_and_na_checksums() {
        let src: Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut b = [0u8; ND_LEN];
        emit_ns(&mut b, MAC, src, dst);
        let ip = Ipv6HeaderSlice::from_slice(&b[14..]).unwrap();
        assert_eq!(
            ip.destination_addr(),
            "ff02::1:ff00:2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(ip.hop_limit(), 255);
        let acc = checksum::pseudo_header_v6(&ip.source(), &ip.destination(), 58, 32);
        assert_eq!(checksum::fold(checksum::sum(&b[54..], acc)), 0xffff);
        emit_na(
            &mut b,
            MAC,
            [0x02, 0, 0, 0, 0, 2],
            src,
            dst,
            NA_SOLICITED | NA_OVERRIDE,
        );
        let ip = Ipv6HeaderSlice::from_slice(&b[14..]).unwrap();
        assert_eq!(b[54], ICMPV6_NA);
        assert_eq!(b[58], 0x60);
        let acc = checksum::pseudo_header_v6(&ip.source(), &ip.destination(), 58, 32);
        assert_eq!(checksum::fold(checksum::sum(&b[54..], acc)), 0xffff);
    }

    #[test]
    fn igmp_join_and_leave() {
        let g = Ipv4Addr::new(239, 1, 2, 3);
        let mut b = [0u8; IGMP_LEN];
        emit_igmp(&mut b, MAC, Ipv4Addr::new(10, 0, 0, 1), g, false);
        let ip = Ipv4HeaderSlice::from_slice(&b[14..]).unwrap();
        assert_eq!(ip.destination(), [224, 0, 0, 2]);
        assert_eq!(checksum::checksum(ip.slice()), 0);
        assert_eq!(b[38], 0x17);
        assert_eq!(&b[42..46], &g.octets());
        assert_eq!(checksum::checksum(&b[38..46]), 0);
    }

    #[test]
    fn mld_report_checksum() {
        let mut b = [0u8; MLD_LEN];
        emit_mld(&mut b, MAC, "ff05::1".parse().unwrap(), true);
        let ip = Ipv6HeaderSlice::from_slice(&b[14..]).unwrap();
        assert_eq!(ip.payload_length(), 36);
        assert_eq!(b[62], ICMPV6_MLDV2_REPORT);
        assert_eq!(b[70], 4);
        let acc = checksum::pseudo_header_v6(&ip.source(), &ip.destination(), 58, 28);
        assert_eq!(checksum::fold(checksum::sum(&b[62..], acc)), 0xffff);
    }
}
