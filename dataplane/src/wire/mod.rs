//! Packet formats that `etherparse` does not cover (or not without copies), as small
//! zero-copy views in smoltcp's style: a view over a byte buffer whose constructor checks
//! the length once, so its accessors cannot panic afterwards.
//!
//! - [`vxlan`]: the VXLAN header (RFC 7348 §5).
//! - [`control`]: the underlay control frames a VTEP sends (ARP, NDP, IGMPv2, MLDv2).
//! - [`checksum`]: the Internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers
//!   used by UDP and ICMPv6.
//!
//! Ethernet, IPv4, IPv6, UDP and ARP are parsed with `etherparse`'s header slices;
//! bricks that write headers on the hot path (the VTEP's encapsulation) write them in
//! place with the offsets and constants of this module.

pub mod checksum;
pub mod control;
pub mod vxlan;

/// EtherType of IPv4 (IEEE 802 numbers).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Length of an Ethernet II header without VLAN tag, in bytes.
pub const ETHERNET_HEADER_LEN: usize = 14;
/// Length of an IPv4 header without options, in bytes (RFC 791).
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header, in bytes (RFC 8200).
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of a UDP header, in bytes (RFC 768).
pub const UDP_HEADER_LEN: usize = 8;
/// IP protocol number of UDP.
pub const IP_PROTO_UDP: u8 = 17;
/// IP protocol number of IGMP.
pub const IP_PROTO_IGMP: u8 = 2;
/// IPv6 next-header number of ICMPv6.
pub const IP_PROTO_ICMPV6: u8 = 58;
/// IPv6 next-header number of the hop-by-hop options header.
pub const IP_PROTO_HOPOPT: u8 = 0;

/// True for a group (multicast or broadcast) MAC address: the I/G bit is set.
#[inline]
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// The Ethernet address an IPv4 multicast group maps to (RFC 1112 §6.4):
/// `01:00:5e` followed by the low 23 bits of the group address.
#[inline]
pub fn ipv4_multicast_mac(group: [u8; 4]) -> [u8; 6] {
    [0x01, 0x00, 0x5e, group[1] & 0x7f, group[2], group[3]]
}

/// The Ethernet address an IPv6 multicast group maps to (RFC 2464 §7):
/// `33:33` followed by the low 32 bits of the group address.
#[inline]
pub fn ipv6_multicast_mac(group: [u8; 16]) -> [u8; 6] {
    [0x33, 0x33, group[12], group[13], group[14], group[15]]
}

/// The solicited-node multicast address of `addr` (RFC 4291 §2.7.1):
/// `ff02::1:ffXX:XXXX` with the low 24 bits of `addr`.
#[inline]
pub fn solicited_node(addr: [u8; 16]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[11] = 0x01;
    a[12] = 0xff;
    a[13..].copy_from_slice(&addr[13..]);
    a
}

/// The link-local IPv6 address derived from a MAC address with the modified EUI-64
/// interface identifier (RFC 4291 appendix A): `fe80::` + MAC with the U/L bit flipped
/// and `ff:fe` in the middle.
pub fn link_local_from_mac(mac: [u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicast_macs() {
        assert_eq!(
            ipv4_multicast_mac([239, 129, 1, 2]),
            [0x01, 0x00, 0x5e, 0x01, 0x01, 0x02]
        );
        let g: [u8; 16] = "ff0e::1:2:3:4"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_eq!(ipv6_multicast_mac(g), [0x33, 0x33, 0, 3, 0, 4]);
        assert!(is_group_mac(&[0xff; 6]));
        assert!(!is_group_mac(&[0x02, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn derived_ipv6_addresses() {
        let ll = link_local_from_mac([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(
            std::net::Ipv6Addr::from(ll),
            "fe80::11:22ff:fe33:4455"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
        );
        let a: [u8; 16] = "2001:db8::1:2345:6789"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_eq!(
            std::net::Ipv6Addr::from(solicited_node(a)),
            "ff02::1:ff45:6789".parse::<std::net::Ipv6Addr>().unwrap()
        );
    }
}
