//! `antispoof`: a dipole that stops a VM from pretending to be another station.
//!
//! One side faces the network (the *outside*), the other faces the VM. By default the
//! outside is **WEST** (towards the switch / VTEP / NIC) and the VM is on **EAST**
//! (towards the vhost or tap brick of the VM), which matches butterfly's host graph
//! `VTEP — switch — firewall — antispoof — vhost`; [`Antispoof::with_outside`] turns it
//! around. Frames from the outside always pass. Frames from the VM are checked, each
//! check enabled separately ([`AntispoofChecks`], all on by default):
//!
//! | check  | a frame from the VM is dropped when |
//! |--------|-------------------------------------|
//! | `mac`  | its Ethernet source is not the VM's MAC |
//! | `vlan` | it carries an 802.1Q / 802.1ad tag (a tag would hide the EtherType from the other checks) |
//! | `rarp` | it is RARP (EtherType 0x8035, RFC 903) |
//! | `arp`  | ARP (RFC 826) whose sender hardware address is not the VM's MAC, whose sender IPv4 address is not in the VM's list (0.0.0.0 is allowed: an RFC 5227 probe), which is not Ethernet/IPv4 ARP, or whose operation is not request (1) or reply (2); covers requests, replies and gratuitous ARP |
//! | `ipv4` | IPv4 whose source is not in the VM's list; 0.0.0.0 is allowed only for DHCP client messages (UDP 68 → 67, RFC 2131 §4.1: DHCPDISCOVER / DHCPREQUEST before the VM has an address) |
//! | `ipv6` | IPv6 whose source is not in the VM's list; `::` is allowed only for DAD neighbour solicitations (RFC 4862 §5.4.2) and MLD reports (RFC 3810 §5.2.13) |
//! | `ndp`  | a neighbour advertisement (RFC 4861 §4.4) whose target is not in the VM's IPv6 list or whose target link-layer address option is not the VM's MAC; a neighbour solicitation (§4.3) whose source link-layer address option is not the VM's MAC, or, for DAD (source `::`), whose target is not in the VM's list; a fragmented NS/NA (RFC 6980 forbids fragmented NDP) |
//!
//! The VM's MAC and address lists can be changed at run time ([`Antispoof::set_mac`],
//! [`Antispoof::add_ipv4`], ...) between polls, through `Graph::get_mut` or a worker
//! command. A neighbour solicitation's *target* is the address the VM wants to resolve
//! (another station's), so only DAD solicitations have their target checked. A VM's
//! IPv6 link-local address (fe80::/64) must be in its list like any other.
//!
//! Malformed frames from the VM (truncated headers, bad lengths, bad NDP options) are
//! dropped and counted as `drop_malformed`; nothing here panics on any input. Frames
//! of other EtherTypes (after the MAC check) pass.
//!
//! Ethernet, ARP, IPv4, IPv6 and NDP fields are read by small views in this file (they
//! need only a few fields each, and `etherparse` 0.18 misreads IPv6 fragment headers:
//! its issue #150, fixed in 0.20).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;

/// EtherType of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP (RFC 826).
const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of RARP (RFC 903).
const ETHERTYPE_RARP: u16 = 0x8035;
/// EtherType of IPv6.
const ETHERTYPE_IPV6: u16 = 0x86DD;
/// EtherTypes of VLAN tags: 802.1Q, 802.1ad, and the old pre-standard QinQ value.
const ETHERTYPE_VLANS: [u16; 3] = [0x8100, 0x88A8, 0x9100];
/// Ethernet II header length, bytes.
const ETH_HLEN: usize = 14;
/// ARP for Ethernet/IPv4: fixed part (8) + 2 × (6 + 4) bytes.
const ARP_ETH_IPV4_LEN: usize = 28;
/// IP protocol number of ICMPv6.
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 types (RFC 4861 §4, RFC 3810 §5.2, RFC 2710 §3).
const ICMPV6_MLD_REPORT_V1: u8 = 131;
const ICMPV6_NS: u8 = 135;
const ICMPV6_NA: u8 = 136;
const ICMPV6_MLD_REPORT_V2: u8 = 143;
/// NDP option types (RFC 4861 §4.6.1).
const NDP_OPT_SOURCE_LLA: u8 = 1;
const NDP_OPT_TARGET_LLA: u8 = 2;
/// Fixed part of an NS or NA: type, code, checksum, flags/reserved, target (bytes).
const NDP_NS_NA_LEN: usize = 24;
/// DHCP ports (RFC 2131 §4.1).
const DHCP_CLIENT_PORT: u16 = 68;
const DHCP_SERVER_PORT: u16 = 67;

/// Which checks an [`Antispoof`] brick applies to frames from the VM (all on by
/// default; see the module documentation for what each one drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AntispoofChecks {
    /// Ethernet source MAC must be the VM's.
    pub mac: bool,
    /// VLAN-tagged frames are dropped.
    pub vlan: bool,
    /// RARP is dropped.
    pub rarp: bool,
    /// ARP sender MAC and IPv4 must be the VM's.
    pub arp: bool,
    /// IPv4 source must be in the VM's list.
    pub ipv4: bool,
    /// IPv6 source must be in the VM's list.
    pub ipv6: bool,
    /// NDP NA/NS must carry the VM's addresses and MAC.
    pub ndp: bool,
}

impl Default for AntispoofChecks {
    fn default() -> Self {
        AntispoofChecks::ALL
    }
}

impl AntispoofChecks {
    /// Every check on.
    pub const ALL: AntispoofChecks = AntispoofChecks {
        mac: true,
        vlan: true,
        rarp: true,
        arp: true,
        ipv4: true,
        ipv6: true,
        ndp: true,
    };
    /// Every check off (everything passes).
    pub const NONE: AntispoofChecks = AntispoofChecks {
        mac: false,
        vlan: false,
        rarp: false,
        arp: false,
        ipv4: false,
        ipv6: false,
        ndp: false,
    };
}

/// Counters of an [`Antispoof`] brick. Every frame is counted once: in `passed_outside`,
/// `passed_vm`, or one `drop_*` counter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AntispoofCounters {
    /// Frames from the outside (never checked).
    pub passed_outside: u64,
    /// Frames from the VM that passed every enabled check.
    pub passed_vm: u64,
    /// Wrong Ethernet source MAC.
    pub drop_mac: u64,
    /// VLAN-tagged.
    pub drop_vlan: u64,
    /// RARP.
    pub drop_rarp: u64,
    /// ARP with a foreign sender MAC or IPv4, or an ARP kind that cannot be checked.
    pub drop_arp: u64,
    /// IPv4 with a source not in the list.
    pub drop_ipv4: u64,
    /// IPv6 with a source not in the list.
    pub drop_ipv6: u64,
    /// NDP NA/NS carrying foreign addresses or MAC, or fragmented.
    pub drop_ndp: u64,
    /// Truncated or inconsistent headers.
    pub drop_malformed: u64,
}

/// Why a frame from the VM was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spoof {
    Mac,
    Vlan,
    Rarp,
    Arp,
    Ipv4,
    Ipv6,
    Ndp,
    Malformed,
}

/// The anti-spoofing dipole (see the module documentation).
#[derive(Debug, Clone)]
pub struct Antispoof {
    outside: Side,
    mac: [u8; 6],
    ipv4: Vec<Ipv4Addr>,
    ipv6: Vec<Ipv6Addr>,
    checks: AntispoofChecks,
    counters: AntispoofCounters,
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

impl Antispoof {
    /// An antispoof brick for a VM with MAC `mac` and no IP address yet, outside on
    /// WEST, every check on.
    pub fn new(mac: [u8; 6]) -> Antispoof {
        Antispoof {
            outside: Side::West,
            mac,
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            checks: AntispoofChecks::ALL,
            counters: AntispoofCounters::default(),
        }
    }

    /// Puts the outside (unchecked) side on `side` (default WEST); the VM is on the other.
    pub fn with_outside(mut self, side: Side) -> Antispoof {
        self.outside = side;
        self
    }

    /// Sets which checks apply.
    pub fn with_checks(mut self, checks: AntispoofChecks) -> Antispoof {
        self.checks = checks;
        self
    }

    /// Sets the VM's IPv4 and IPv6 addresses (replacing the lists).
    pub fn with_addresses(mut self, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) -> Antispoof {
        self.set_ipv4(v4);
        self.set_ipv6(v6);
        self
    }

    /// The outside side.
    pub fn outside(&self) -> Side {
        self.outside
    }

    /// The checks in force.
    pub fn checks(&self) -> AntispoofChecks {
        self.checks
    }

    /// Changes which checks apply (at run time, between polls).
    pub fn set_checks(&mut self, checks: AntispoofChecks) {
        self.checks = checks;
    }

    /// The VM's MAC.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Changes the VM's MAC.
    pub fn set_mac(&mut self, mac: [u8; 6]) {
        self.mac = mac;
    }

    /// The VM's IPv4 addresses.
    pub fn ipv4(&self) -> &[Ipv4Addr] {
        &self.ipv4
    }

    /// The VM's IPv6 addresses.
    pub fn ipv6(&self) -> &[Ipv6Addr] {
        &self.ipv6
    }

    /// Replaces the VM's IPv4 list (duplicates are kept once).
    pub fn set_ipv4(&mut self, list: &[Ipv4Addr]) {
        self.ipv4.clear();
        for &a in list {
            self.add_ipv4(a);
        }
    }

    /// Replaces the VM's IPv6 list (duplicates are kept once).
    pub fn set_ipv6(&mut self, list: &[Ipv6Addr]) {
        self.ipv6.clear();
        for &a in list {
            self.add_ipv6(a);
        }
    }

    /// Adds an IPv4 address to the VM's list (no effect if present).
    pub fn add_ipv4(&mut self, a: Ipv4Addr) {
        if !self.ipv4.contains(&a) {
            self.ipv4.push(a);
        }
    }

    /// Removes an IPv4 address; true if it was there.
    pub fn remove_ipv4(&mut self, a: Ipv4Addr) -> bool {
        let n = self.ipv4.len();
        self.ipv4.retain(|&x| x != a);
        n != self.ipv4.len()
    }

    /// Adds an IPv6 address to the VM's list (no effect if present).
    pub fn add_ipv6(&mut self, a: Ipv6Addr) {
        if !self.ipv6.contains(&a) {
            self.ipv6.push(a);
        }
    }

    /// Removes an IPv6 address; true if it was there.
    pub fn remove_ipv6(&mut self, a: Ipv6Addr) -> bool {
        let n = self.ipv6.len();
        self.ipv6.retain(|&x| x != a);
        n != self.ipv6.len()
    }

    /// The counters.
    pub fn stats(&self) -> &AntispoofCounters {
        &self.counters
    }

    #[inline]
    fn has_v4(&self, a: &[u8]) -> bool {
        let a = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
        self.ipv4.contains(&a)
    }

    #[inline]
    fn has_v6(&self, a: &[u8]) -> bool {
        let mut b = [0u8; 16];
        b.copy_from_slice(&a[..16]);
        self.ipv6.contains(&Ipv6Addr::from(b))
    }

    /// Checks one frame from the VM.
    #[inline]
    fn check(&self, d: &[u8]) -> Result<(), Spoof> {
        if d.len() < ETH_HLEN {
            return Err(Spoof::Malformed);
        }
        let c = &self.checks;
        if c.mac && d[6..12] != self.mac {
            return Err(Spoof::Mac);
        }
        let mut ethertype = u16::from_be_bytes([d[12], d[13]]);
        let mut off = ETH_HLEN;
        while ETHERTYPE_VLANS.contains(&ethertype) {
            if c.vlan {
                return Err(Spoof::Vlan);
            }
            ethertype = be16(d, off + 2).ok_or(Spoof::Malformed)?;
            off += 4;
        }
        let l3 = &d[off..];
        match ethertype {
            ETHERTYPE_IPV4 if c.ipv4 => self.check_ipv4(l3),
            ETHERTYPE_ARP if c.arp => self.check_arp(l3),
            ETHERTYPE_RARP if c.rarp => Err(Spoof::Rarp),
            ETHERTYPE_IPV6 if c.ipv6 || c.ndp => self.check_ipv6(l3),
            _ => Ok(()),
        }
    }

    /// ARP (RFC 826), Ethernet/IPv4 only.
    fn check_arp(&self, a: &[u8]) -> Result<(), Spoof> {
        if a.len() < 8 {
            return Err(Spoof::Malformed);
        }
        let (htype, ptype, hlen, plen) = (be16(a, 0), be16(a, 2), a[4], a[5]);
        if htype != Some(1) || ptype != Some(ETHERTYPE_IPV4) || hlen != 6 || plen != 4 {
            // Not Ethernet/IPv4 ARP: nothing a VM on an Ethernet needs, and not checkable.
            return Err(Spoof::Arp);
        }
        if a.len() < ARP_ETH_IPV4_LEN {
            return Err(Spoof::Malformed);
        }
        let op = be16(a, 6);
        if op != Some(1) && op != Some(2) {
            return Err(Spoof::Arp);
        }
        let (sha, spa) = (&a[8..14], &a[14..18]);
        if sha != self.mac {
            return Err(Spoof::Arp);
        }
        if spa == [0, 0, 0, 0] || self.has_v4(spa) {
            Ok(())
        } else {
            Err(Spoof::Arp)
        }
    }

    /// IPv4 (RFC 791) source check.
    #[inline]
    fn check_ipv4(&self, ip: &[u8]) -> Result<(), Spoof> {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return Err(Spoof::Malformed);
        }
        let ihl = usize::from(ip[0] & 0xF) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ihl < 20 || total < ihl || total > ip.len() {
            return Err(Spoof::Malformed);
        }
        let src = &ip[12..16];
        if self.has_v4(src) {
            return Ok(());
        }
        if src == [0, 0, 0, 0] {
            // DHCP client messages before the VM has an address: unfragmented UDP 68 → 67.
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3FFF;
            let udp = &ip[ihl..total];
            if ip[9] == 17
                && frag == 0
                && udp.len() >= 8
                && be16(udp, 0) == Some(DHCP_CLIENT_PORT)
                && be16(udp, 2) == Some(DHCP_SERVER_PORT)
            {
                return Ok(());
            }
        }
        Err(Spoof::Ipv4)
    }

    /// IPv6 (RFC 8200) source check and NDP (RFC 4861) checks.
    fn check_ipv6(&self, ip: &[u8]) -> Result<(), Spoof> {
        let v6 = Ipv6View::parse(ip)?;
        let unspecified = v6.src == [0u8; 16];
        if self.checks.ipv6 && !self.has_v6(v6.src) {
            let allowed_unspecified = unspecified
                && !v6.fragmented
                && matches!(
                    v6.icmp_type(),
                    Some(ICMPV6_NS | ICMPV6_MLD_REPORT_V1 | ICMPV6_MLD_REPORT_V2)
                );
            if !allowed_unspecified {
                return Err(Spoof::Ipv6);
            }
        }
        if !self.checks.ndp {
            return Ok(());
        }
        match v6.icmp_type() {
            Some(t @ (ICMPV6_NS | ICMPV6_NA)) => {
                if v6.fragmented {
                    return Err(Spoof::Ndp);
                }
                self.check_ns_na(t, unspecified, v6.upper)
            }
            _ => Ok(()),
        }
    }

    /// NS / NA contents: target and link-layer address options.
    fn check_ns_na(&self, t: u8, unspecified_src: bool, m: &[u8]) -> Result<(), Spoof> {
        if m.len() < NDP_NS_NA_LEN {
            return Err(Spoof::Malformed);
        }
        let target = &m[8..24];
        let target_ok = self.has_v6(target);
        if t == ICMPV6_NA && !target_ok {
            return Err(Spoof::Ndp);
        }
        if t == ICMPV6_NS && unspecified_src && !target_ok {
            return Err(Spoof::Ndp);
        }
        let mut opts = &m[NDP_NS_NA_LEN..];
        while !opts.is_empty() {
            if opts.len() < 2 {
                return Err(Spoof::Malformed);
            }
            let len = usize::from(opts[1]) * 8;
            if len == 0 || len > opts.len() {
                // RFC 4861 §4.6: a zero-length option must be discarded.
                return Err(Spoof::Malformed);
            }
            let ty = opts[0];
            if ty == NDP_OPT_SOURCE_LLA || ty == NDP_OPT_TARGET_LLA {
                // A link-layer address option of the other kind is just as much a claim.
                if len < 8 || opts[2..8] != self.mac {
                    return Err(Spoof::Ndp);
                }
            }
            opts = &opts[len..];
        }
        Ok(())
    }

    fn count(&mut self, r: Spoof) {
        let c = &mut self.counters;
        match r {
            Spoof::Mac => c.drop_mac += 1,
            Spoof::Vlan => c.drop_vlan += 1,
            Spoof::Rarp => c.drop_rarp += 1,
            Spoof::Arp => c.drop_arp += 1,
            Spoof::Ipv4 => c.drop_ipv4 += 1,
            Spoof::Ipv6 => c.drop_ipv6 += 1,
            Spoof::Ndp => c.drop_ndp += 1,
            Spoof::Malformed => c.drop_malformed += 1,
        }
    }
}

/// What the checks need from an IPv6 packet (RFC 8200 §4): the source, and where the
/// upper-layer header starts after the extension headers.
///
/// Extension headers are walked here rather than with `etherparse` 0.18, whose IPv6
/// fragment header accessors read the offset and M flag from the wrong bits
/// (etherparse issue #150, fixed in 0.20).
struct Ipv6View<'a> {
    src: &'a [u8],
    /// Upper-layer protocol number (after the extension headers).
    next_header: u8,
    /// True when a fragment header fragments the payload (offset ≠ 0 or M set).
    fragmented: bool,
    /// True when this packet holds the start of the upper-layer header (not a
    /// non-first fragment).
    first: bool,
    /// The upper-layer header and payload (up to the IPv6 payload length).
    upper: &'a [u8],
}

/// Most extension headers walked before a packet is called malformed.
const MAX_IPV6_EXT_HEADERS: usize = 8;

impl<'a> Ipv6View<'a> {
    fn parse(ip: &'a [u8]) -> Result<Ipv6View<'a>, Spoof> {
        const HLEN: usize = 40;
        if ip.len() < HLEN || ip[0] >> 4 != 6 {
            return Err(Spoof::Malformed);
        }
        let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let pkt = ip.get(..HLEN + payload_len).ok_or(Spoof::Malformed)?;
        let mut nh = ip[6];
        let mut off = HLEN;
        let mut fragmented = false;
        let mut first = true;
        for _ in 0..=MAX_IPV6_EXT_HEADERS {
            let len = match nh {
                // Hop-by-hop, routing, destination options: length in 8-octet units,
                // not counting the first 8 (RFC 8200 §4.3, §4.4, §4.6).
                0 | 43 | 60 => (usize::from(*pkt.get(off + 1).ok_or(Spoof::Malformed)?) + 1) * 8,
                // Authentication header: length in 4-octet units, minus 2 (RFC 4302 §2.2).
                51 => (usize::from(*pkt.get(off + 1).ok_or(Spoof::Malformed)?) + 2) * 4,
                // Fragment header (RFC 8200 §4.5): offset in the top 13 bits, M in bit 0.
                44 => {
                    let fo = be16(pkt, off + 2).ok_or(Spoof::Malformed)?;
                    if fo >> 3 != 0 {
                        first = false;
                    }
                    if fo >> 3 != 0 || fo & 1 != 0 {
                        fragmented = true;
                    }
                    8
                }
                _ => {
                    return Ok(Ipv6View {
                        src: &ip[8..24],
                        next_header: nh,
                        fragmented,
                        first,
                        upper: &pkt[off..],
                    });
                }
            };
            if off + len > pkt.len() {
                return Err(Spoof::Malformed);
            }
            nh = pkt[off];
            off += len;
            if !first {
                // A non-first fragment: what follows is data, not headers.
                return Ok(Ipv6View {
                    src: &ip[8..24],
                    next_header: nh,
                    fragmented,
                    first,
                    upper: &pkt[off..],
                });
            }
        }
        Err(Spoof::Malformed)
    }

    /// The ICMPv6 type, when this packet starts an ICMPv6 message.
    fn icmp_type(&self) -> Option<u8> {
        if self.next_header == IPPROTO_ICMPV6 && self.first {
            self.upper.first().copied()
        } else {
            None
        }
    }
}

impl Brick for Antispoof {
    fn kind(&self) -> &'static str {
        "antispoof"
    }

    fn poles(&self) -> Poles {
        Poles::Dipole
    }

    #[inline]
    fn burst(
        &mut self,
        from: Side,
        _edge: usize,
        mut pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        if pkts.is_empty() {
            return Ok(());
        }
        if from == self.outside {
            self.counters.passed_outside += pkts.len() as u64;
            out.send(from.opposite(), 0, pkts);
            return Ok(());
        }
        // Fast path: the whole burst passes, no split.
        let mut first_bad = None;
        for (i, p) in pkts.iter().enumerate() {
            if let Err(r) = self.check(p.data()) {
                first_bad = Some((i, r));
                break;
            }
        }
        match first_bad {
            None => {
                self.counters.passed_vm += pkts.len() as u64;
            }
            Some((bad, r)) => {
                self.count(r);
                let mut i = 0;
                pkts.retain(|p| {
                    let keep = if i < bad {
                        true
                    } else if i == bad {
                        false
                    } else {
                        match self.check(p.data()) {
                            Ok(()) => true,
                            Err(r) => {
                                self.count(r);
                                false
                            }
                        }
                    };
                    i += 1;
                    keep
                });
                self.counters.passed_vm += pkts.len() as u64;
                if pkts.is_empty() {
                    return Ok(());
                }
            }
        }
        out.send(from.opposite(), 0, pkts);
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("passed_outside", c.passed_outside),
            ("passed_vm", c.passed_vm),
            ("drop_mac", c.drop_mac),
            ("drop_vlan", c.drop_vlan),
            ("drop_rarp", c.drop_rarp),
            ("drop_arp", c.drop_arp),
            ("drop_ipv4", c.drop_ipv4),
            ("drop_ipv6", c.drop_ipv6),
            ("drop_ndp", c.drop_ndp),
            ("drop_malformed", c.drop_malformed),
        ]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bricks::Collect;
    use crate::burst::BURST_SIZE;
    use crate::{Graph, Pool, PoolConfig};
    use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};

    const VM: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const BCAST: [u8; 6] = [0xff; 6];
    const VM4: [u8; 4] = [10, 0, 0, 1];
    const PEER4: [u8; 4] = [10, 0, 0, 2];
    const VM6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const VM6_LL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const PEER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const UNSPEC: [u8; 16] = [0; 16];

    /// Reads one counter.
    type Counter = fn(&AntispoofCounters) -> u64;
    /// Turns one check off.
    type Disable = fn(&mut AntispoofChecks);

    fn brick() -> Antispoof {
        Antispoof::new(VM).with_addresses(
            &[Ipv4Addr::from(VM4)],
            &[Ipv6Addr::from(VM6), Ipv6Addr::from(VM6_LL)],
        )
    }

    fn udp4(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(src_mac, BCAST)
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, &[0u8; 18]).unwrap();
        v
    }

    fn ping4(src_mac: [u8; 6], src: [u8; 4]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(src_mac, OTHER)
            .ipv4(src, PEER4, 64)
            .icmpv4_echo_request(1, 1);
        let mut v = Vec::new();
        b.write(&mut v, &[0u8; 18]).unwrap();
        v
    }

    fn arp(
        eth_src: [u8; 6],
        op: ArpOperation,
        sha: [u8; 6],
        spa: [u8; 4],
        tpa: [u8; 4],
    ) -> Vec<u8> {
        let a = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            op,
            &sha,
            &spa,
            &[0; 6],
            &tpa,
        )
        .unwrap();
        let mut v = Vec::new();
        PacketBuilder::ethernet2(eth_src, BCAST)
            .arp(a)
            .write(&mut v)
            .unwrap();
        v
    }

    fn rarp() -> Vec<u8> {
        let mut v = arp(VM, ArpOperation::from(3), VM, [0; 4], [0; 4]);
        v[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
        v
    }

    fn icmp6(
        src_mac: [u8; 6],
        src: [u8; 16],
        dst: [u8; 16],
        ty: u8,
        b5to8: [u8; 4],
        body: &[u8],
    ) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(src_mac, BCAST)
            .ipv6(src, dst, 255)
            .icmpv6_raw(ty, 0, b5to8);
        let mut v = Vec::new();
        b.write(&mut v, body).unwrap();
        v
    }

    /// NS (RFC 4861 §4.3) for `target` with an optional source link-layer option.
    fn ns(src: [u8; 16], target: [u8; 16], slla: Option<[u8; 6]>) -> Vec<u8> {
        let mut body = target.to_vec();
        if let Some(m) = slla {
            body.extend_from_slice(&[NDP_OPT_SOURCE_LLA, 1]);
            body.extend_from_slice(&m);
        }
        icmp6(VM, src, ALL_NODES, ICMPV6_NS, [0; 4], &body)
    }

    /// NA (RFC 4861 §4.4, flags S|O) for `target` with an optional target link-layer option.
    fn na(src: [u8; 16], target: [u8; 16], tlla: Option<[u8; 6]>) -> Vec<u8> {
        let mut body = target.to_vec();
        if let Some(m) = tlla {
            body.extend_from_slice(&[NDP_OPT_TARGET_LLA, 1]);
            body.extend_from_slice(&m);
        }
        icmp6(VM, src, ALL_NODES, ICMPV6_NA, [0x60, 0, 0, 0], &body)
    }

    /// An NA split in a first fragment (IPv6 fragment header, offset 0, M set).
    fn fragmented_na() -> Vec<u8> {
        let good = na(VM6, VM6, Some(VM));
        let icmp = &good[14 + 40..];
        let mut v = good[..14 + 40].to_vec();
        v[14 + 6] = 44; // next header: fragment
        let plen = (8 + icmp.len()) as u16;
        v[14 + 4..14 + 6].copy_from_slice(&plen.to_be_bytes());
        v.extend_from_slice(&[58, 0, 0, 1, 0, 0, 0, 7]); // next 58, offset 0, M=1, id 7
        v.extend_from_slice(icmp);
        v
    }

    /// A non-first fragment (offset 8 × 8 bytes, M clear) whose data happens to start
    /// with the NA type byte.
    fn later_fragment(src: [u8; 16]) -> Vec<u8> {
        let mut v = fragmented_na();
        v[14 + 8..14 + 24].copy_from_slice(&src);
        let frag = 14 + 40;
        v[frag + 2..frag + 4].copy_from_slice(&(8u16 << 3).to_be_bytes());
        v
    }

    #[test]
    fn non_first_fragments_are_checked_by_source_only() {
        let mut a = brick();
        assert!(one(&mut a, later_fragment(VM6)));
        assert!(!one(&mut a, later_fragment(PEER6)));
        assert_eq!(a.stats().drop_ipv6, 1);
        assert_eq!(a.stats().drop_ndp, 0);
        // The first fragment of an NA is dropped (RFC 6980).
        assert!(!one(&mut a, fragmented_na()));
        assert_eq!(a.stats().drop_ndp, 1);
    }

    fn pool(n: u32) -> Pool {
        Pool::new(PoolConfig {
            frame_count: n,
            ..Default::default()
        })
        .unwrap()
    }

    /// Runs `frames` from `from` through `a`; returns the frames that came out.
    fn run(a: &mut Antispoof, p: &Pool, from: Side, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut b = Burst::new();
        for f in frames {
            b.push(p.packet_from(f).unwrap()).unwrap();
        }
        let mut out = Emit::new();
        a.burst(from, 0, b, &mut out).unwrap();
        assert_eq!(out.empty_bursts(), 0);
        let mut got = Vec::new();
        for (dest, burst) in out.take() {
            assert_eq!(dest, crate::brick::Dest::Edge(from.opposite(), 0));
            got.extend(burst.iter().map(|p| p.data().to_vec()));
        }
        got
    }

    fn one(a: &mut Antispoof, f: Vec<u8>) -> bool {
        let p = pool(4);
        let got = run(a, &p, Side::East, std::slice::from_ref(&f));
        assert!(got.is_empty() || got == vec![f]);
        !got.is_empty()
    }

    #[test]
    fn legitimate_traffic_from_the_vm_passes_unchanged() {
        let mut a = brick();
        let p = pool(64);
        let frames = vec![
            ping4(VM, VM4),
            udp4(VM, [0; 4], [255; 4], DHCP_CLIENT_PORT, DHCP_SERVER_PORT),
            arp(VM, ArpOperation::REQUEST, VM, VM4, PEER4),
            arp(VM, ArpOperation::REPLY, VM, VM4, PEER4),
            arp(VM, ArpOperation::REQUEST, VM, VM4, VM4), // gratuitous
            arp(VM, ArpOperation::REQUEST, VM, [0; 4], VM4), // RFC 5227 probe
            icmp6(VM, VM6, PEER6, 128, [0, 1, 0, 1], &[0; 8]),
            ns(VM6, PEER6, Some(VM)),
            ns(VM6_LL, PEER6, None),
            ns(UNSPEC, VM6, None), // DAD
            na(VM6, VM6, Some(VM)),
            na(VM6_LL, VM6_LL, None),
            icmp6(VM, UNSPEC, ALL_NODES, ICMPV6_MLD_REPORT_V2, [0; 4], &[]),
            {
                let mut f = ping4(VM, VM4);
                f[12..14].copy_from_slice(&[0x88, 0xcc]); // other EtherType (LLDP)
                f
            },
        ];
        let got = run(&mut a, &p, Side::East, &frames);
        assert_eq!(got, frames);
        assert_eq!(a.stats().passed_vm, frames.len() as u64);
        assert_eq!(a.stats().passed_outside, 0);
    }

    #[test]
    fn spoofed_frames_from_the_vm_are_dropped_by_reason() {
        let mut a = brick();
        let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
            ("mac", ping4(OTHER, VM4), |c| c.drop_mac),
            ("ipv4", ping4(VM, PEER4), |c| c.drop_ipv4),
            (
                "0.0.0.0 not dhcp",
                udp4(VM, [0; 4], [255; 4], 68, 53),
                |c| c.drop_ipv4,
            ),
            (
                "arp sha",
                arp(VM, ArpOperation::REQUEST, OTHER, VM4, PEER4),
                |c| c.drop_arp,
            ),
            (
                "arp spa",
                arp(VM, ArpOperation::REPLY, VM, PEER4, VM4),
                |c| c.drop_arp,
            ),
            (
                "garp foreign",
                arp(VM, ArpOperation::REQUEST, VM, PEER4, PEER4),
                |c| c.drop_arp,
            ),
            (
                "arp op",
                arp(VM, ArpOperation::from(8), VM, VM4, PEER4),
                |c| c.drop_arp,
            ),
            ("rarp", rarp(), |c| c.drop_rarp),
            ("ipv6", icmp6(VM, PEER6, VM6, 128, [0; 4], &[0; 8]), |c| {
                c.drop_ipv6
            }),
            (
                "ipv6 :: echo",
                icmp6(VM, UNSPEC, PEER6, 128, [0; 4], &[0; 8]),
                |c| c.drop_ipv6,
            ),
            ("na target", na(VM6, PEER6, Some(VM)), |c| c.drop_ndp),
            ("na tlla", na(VM6, VM6, Some(OTHER)), |c| c.drop_ndp),
            ("ns slla", ns(VM6, PEER6, Some(OTHER)), |c| c.drop_ndp),
            ("dad foreign", ns(UNSPEC, PEER6, None), |c| c.drop_ndp),
            ("na fragmented", fragmented_na(), |c| c.drop_ndp),
            (
                "vlan",
                {
                    let f = ping4(VM, VM4);
                    let mut v = f[..12].to_vec();
                    v.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
                    v.extend_from_slice(&f[12..]);
                    v
                },
                |c| c.drop_vlan,
            ),
            ("short", vec![0; 13], |c| c.drop_malformed),
            ("ipv4 truncated", ping4(VM, VM4)[..30].to_vec(), |c| {
                c.drop_malformed
            }),
            (
                "arp truncated",
                arp(VM, ArpOperation::REQUEST, VM, VM4, PEER4)[..30].to_vec(),
                |c| c.drop_malformed,
            ),
            ("ipv6 truncated", na(VM6, VM6, None)[..50].to_vec(), |c| {
                c.drop_malformed
            }),
            (
                "ndp zero-length option",
                {
                    let mut f = na(VM6, VM6, Some(VM));
                    let n = f.len();
                    f[n - 7] = 0;
                    f
                },
                |c| c.drop_malformed,
            ),
        ];
        for (name, frame, counter) in cases {
            let before = counter(a.stats());
            assert!(!one(&mut a, frame.clone()), "{name}: passed");
            assert_eq!(counter(a.stats()), before + 1, "{name}: wrong counter");
            // The same frame from the outside passes.
            let p = pool(4);
            assert_eq!(
                run(&mut a, &p, Side::West, std::slice::from_ref(&frame)),
                vec![frame],
                "{name}"
            );
        }
        let c = a.stats();
        let drops = c.drop_mac
            + c.drop_vlan
            + c.drop_rarp
            + c.drop_arp
            + c.drop_ipv4
            + c.drop_ipv6
            + c.drop_ndp
            + c.drop_malformed;
        assert_eq!(drops, 21);
        assert_eq!(c.passed_outside, 21);
        assert_eq!(c.passed_vm, 0);
    }

    #[test]
    fn each_check_can_be_disabled() {
        let frames: Vec<(Disable, Vec<u8>)> = vec![
            (|c| c.mac = false, ping4(OTHER, VM4)),
            (|c| c.ipv4 = false, ping4(VM, PEER4)),
            (
                |c| c.arp = false,
                arp(VM, ArpOperation::REPLY, OTHER, PEER4, VM4),
            ),
            (|c| c.rarp = false, rarp()),
            (
                |c| c.ipv6 = false,
                icmp6(VM, PEER6, VM6, 128, [0; 4], &[0; 8]),
            ),
            (|c| c.ndp = false, na(VM6, PEER6, Some(OTHER))),
        ];
        for (disable, f) in frames {
            let mut a = brick();
            assert!(!one(&mut a, f.clone()));
            let mut checks = AntispoofChecks::ALL;
            disable(&mut checks);
            a.set_checks(checks);
            assert!(one(&mut a, f), "{checks:?}");
        }
        // With the VLAN check off the tag is skipped and the inner frame still checked.
        let mut a = brick().with_checks(AntispoofChecks {
            vlan: false,
            ..AntispoofChecks::ALL
        });
        let tagged = |f: Vec<u8>| {
            let mut v = f[..12].to_vec();
            v.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
            v.extend_from_slice(&f[12..]);
            v
        };
        assert!(one(&mut a, tagged(ping4(VM, VM4))));
        assert!(!one(&mut a, tagged(ping4(VM, PEER4))));
        assert_eq!(a.stats().drop_ipv4, 1);
        let mut a = brick().with_checks(AntispoofChecks::NONE);
        assert!(one(&mut a, rarp()));
    }

    #[test]
    fn lists_change_at_run_time_through_the_graph() {
        let mut g = Graph::new("t");
        g.add("w", Collect::new()).unwrap();
        g.add("as", Antispoof::new(VM)).unwrap();
        g.add("vm", Collect::new()).unwrap();
        g.link_chain(&["w", "as", "vm"]).unwrap();
        let p = pool(16);
        let send = |g: &mut Graph, f: Vec<u8>| {
            let mut b = Burst::new();
            b.push(p.packet_from(&f).unwrap()).unwrap();
            g.inject("as", Side::East, 0, b).unwrap();
            g.get::<Collect>("w").unwrap().packets(Side::East)
        };
        assert_eq!(send(&mut g, ping4(VM, VM4)), 0, "no address yet");
        g.get_mut::<Antispoof>("as")
            .unwrap()
            .add_ipv4(Ipv4Addr::from(VM4));
        assert_eq!(send(&mut g, ping4(VM, VM4)), 1);
        assert!(
            g.get_mut::<Antispoof>("as")
                .unwrap()
                .remove_ipv4(Ipv4Addr::from(VM4))
        );
        assert_eq!(send(&mut g, ping4(VM, VM4)), 1);
        g.get_mut::<Antispoof>("as")
            .unwrap()
            .set_ipv6(&[Ipv6Addr::from(VM6)]);
        assert_eq!(send(&mut g, na(VM6, VM6, Some(VM))), 2);
        g.get_mut::<Antispoof>("as").unwrap().set_mac(OTHER);
        assert_eq!(send(&mut g, na(VM6, VM6, Some(VM))), 2, "MAC changed");
        let r = g.report();
        let c = &r.iter().find(|b| b.name == "as").unwrap().counters;
        assert!(c.contains(&("drop_ipv4", 2)) && c.contains(&("drop_mac", 1)));
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn outside_side_can_be_east() {
        let mut a = brick().with_outside(Side::East);
        assert_eq!(a.outside(), Side::East);
        let p = pool(8);
        assert_eq!(run(&mut a, &p, Side::East, &[rarp()]).len(), 1);
        assert_eq!(run(&mut a, &p, Side::West, &[rarp()]).len(), 0);
        assert_eq!(run(&mut a, &p, Side::West, &[ping4(VM, VM4)]).len(), 1);
    }

    #[test]
    fn never_emits_an_empty_burst_and_keeps_order() {
        let mut a = brick();
        let p = pool(64);
        let mut out = Emit::new();
        let mut b = Burst::new();
        for f in [rarp(), ping4(OTHER, VM4), vec![1, 2, 3]] {
            b.push(p.packet_from(&f).unwrap()).unwrap();
        }
        a.burst(Side::East, 0, b, &mut out).unwrap();
        a.burst(Side::East, 0, Burst::new(), &mut out).unwrap();
        a.burst(Side::West, 0, Burst::new(), &mut out).unwrap();
        assert!(out.pending().is_empty());
        assert_eq!(out.empty_bursts(), 0);
        assert_eq!(p.available(), 64);
        // Mixed: good and bad interleaved; the good ones come out in order.
        let mut frames = Vec::new();
        for i in 0..20u8 {
            let mut f = if i % 3 == 1 {
                ping4(VM, PEER4)
            } else {
                ping4(VM, VM4)
            };
            let n = f.len();
            f[n - 1] = i;
            frames.push(f);
        }
        let got = run(&mut a, &p, Side::East, &frames);
        let tags: Vec<u8> = got.iter().map(|f| f[f.len() - 1]).collect();
        let want: Vec<u8> = (0..20).filter(|i| i % 3 != 1).collect();
        assert_eq!(tags, want);
        assert_eq!(p.available(), 64);
    }

    /// Splits a fuzz input (`[selector][len][frame]...`, see `fuzz/fuzz_targets`) into its
    /// selector and frames.
    pub(crate) fn decode_fuzz_input(data: &[u8]) -> Option<(u8, Vec<Vec<u8>>)> {
        let (&sel, mut rest) = data.split_first()?;
        let mut frames = Vec::new();
        while let Some((&len, tail)) = rest.split_first() {
            let len = usize::from(len).min(tail.len());
            frames.push(tail[..len].to_vec());
            rest = &tail[len..];
            if frames.len() == BURST_SIZE {
                break;
            }
        }
        Some((sel, frames))
    }

    /// Runs the seeds of the `antispoof` fuzz target (`fuzz/seeds/antispoof`, in git) the
    /// way the target does, so CI exercises them on stable.
    #[test]
    fn fuzz_seeds_pass_or_drop_and_are_counted() {
        let seeds = crate::fuzz_corpus::seeds(env!("CARGO_MANIFEST_DIR"), "antispoof", 10);
        let p = pool(256);
        let vm = [0x02, 0, 0, 0, 0, 1];
        let mut passed = 0;
        for input in seeds {
            let (sel, frames) = decode_fuzz_input(&input).unwrap();
            let mut a = Antispoof::new(vm).with_addresses(
                &["10.0.0.1".parse().unwrap()],
                &["fd00::1".parse().unwrap(), "fe80::1".parse().unwrap()],
            );
            let bit = |i: u8| sel & (1 << i) != 0;
            a.set_checks(AntispoofChecks {
                mac: bit(0),
                vlan: bit(1),
                rarp: bit(2),
                arp: bit(3),
                ipv4: bit(4),
                ipv6: bit(5),
                ndp: bit(6),
            });
            let from = if bit(7) { Side::East } else { Side::West };
            let got = run(&mut a, &p, from, &frames).len() as u64;
            let c = a.stats();
            let drops = c.drop_mac
                + c.drop_vlan
                + c.drop_rarp
                + c.drop_arp
                + c.drop_ipv4
                + c.drop_ipv6
                + c.drop_ndp
                + c.drop_malformed;
            assert_eq!(got, c.passed_outside + c.passed_vm, "seed {input:02x?}");
            assert_eq!(got + drops, frames.len() as u64, "seed {input:02x?}");
            passed += got;
        }
        assert!(passed > 0);
        assert_eq!(p.available(), 256);
    }

    /// xorshift64*: a deterministic PRNG for the fuzz-style test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Fuzz-style: valid frames mutated, truncated, extended, plus random bytes, from
    /// both sides. No panic, and every frame is counted exactly once.
    #[test]
    fn random_frames_never_panic_and_counters_add_up() {
        let templates = vec![
            ping4(VM, VM4),
            udp4(VM, [0; 4], [255; 4], 68, 67),
            arp(VM, ArpOperation::REQUEST, VM, VM4, PEER4),
            rarp(),
            ns(VM6, PEER6, Some(VM)),
            ns(UNSPEC, VM6, None),
            na(VM6, VM6, Some(VM)),
            fragmented_na(),
            icmp6(VM, UNSPEC, ALL_NODES, ICMPV6_MLD_REPORT_V2, [0; 4], &[]),
        ];
        let p = pool(256);
        let mut a = brick().with_checks(AntispoofChecks {
            vlan: false,
            ..AntispoofChecks::ALL
        });
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let (mut sent_vm, mut sent_out, mut out_vm, mut out_out) = (0u64, 0u64, 0u64, 0u64);
        for _ in 0..5000 {
            let n = 1 + rng.below(64) as usize;
            let mut frames = Vec::with_capacity(n);
            for _ in 0..n {
                let mut f = if rng.below(8) == 0 {
                    (0..rng.below(120)).map(|_| rng.next() as u8).collect()
                } else {
                    templates[rng.below(templates.len() as u64) as usize].clone()
                };
                for _ in 0..rng.below(4) {
                    if !f.is_empty() {
                        let i = rng.below(f.len() as u64) as usize;
                        f[i] = rng.next() as u8;
                    }
                }
                if rng.below(4) == 0 && !f.is_empty() {
                    f.truncate(rng.below(f.len() as u64) as usize);
                }
                if rng.below(8) == 0 && f.len() > 14 {
                    f.splice(12..12, [0x81, 0x00, 0, 1]); // a VLAN tag
                }
                frames.push(f);
            }
            let from = if rng.below(4) == 0 {
                Side::West
            } else {
                Side::East
            };
            let got = run(&mut a, &p, from, &frames).len() as u64;
            if from == Side::West {
                sent_out += n as u64;
                out_out += got;
                assert_eq!(got, n as u64);
            } else {
                sent_vm += n as u64;
                out_vm += got;
            }
        }
        let c = a.stats();
        let drops = c.drop_mac
            + c.drop_vlan
            + c.drop_rarp
            + c.drop_arp
            + c.drop_ipv4
            + c.drop_ipv6
            + c.drop_ndp
            + c.drop_malformed;
        assert_eq!(c.passed_outside, sent_out);
        assert_eq!(c.passed_outside, out_out);
        assert_eq!(c.passed_vm, out_vm);
        assert_eq!(c.passed_vm + drops, sent_vm);
        for v in [
            c.passed_vm,
            c.drop_mac,
            c.drop_rarp,
            c.drop_arp,
            c.drop_ipv4,
            c.drop_ipv6,
            c.drop_ndp,
            c.drop_malformed,
        ] {
            assert!(v > 0, "{c:?}");
        }
        assert_eq!(p.available(), 256);
    }
}
