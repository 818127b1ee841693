//! `vtep`: a VXLAN tunnel end point (RFC 7348), IPv4 or IPv6 underlay.
//!
//! A multipole brick. Its WEST side faces the tenant networks: each WEST edge carries
//! exactly one VNI ([`Vtep::add_vni`]). Its EAST side has one edge, the underlay (a NIC
//! or a tap). Frames from a WEST edge are encapsulated in place into their headroom
//! (Ethernet / IPv4 or IPv6 / UDP / VXLAN, 50 or 70 bytes) and leave EAST; VXLAN frames
//! from EAST are checked, decapsulated in place and leave on the WEST edge of their VNI.
//!
//! # Forwarding
//! - Known unicast: the FDB maps (VNI, inner destination MAC) to a remote VTEP IP. Entries
//!   are static ([`Vtep::add_static`]) or learned from decapsulated frames (inner source
//!   MAC → outer source IP and outer source MAC), and learned ones age out
//!   ([`VtepConfig::fdb_aging`], default 300 s). Learned entries are capped at
//!   [`VtepConfig::fdb_max`]; beyond that new MACs are not learned (counted `fdb_full`)
//!   and their frames are flooded.
//! - Broadcast, multicast and unknown unicast are flooded per VNI ([`Flood`]): to a
//!   multicast group (the VTEP sends an IGMPv2 membership report / MLDv2 report on
//!   [`Vtep::add_vni`] and a leave on [`Vtep::remove_vni`]), or by head-end replication to
//!   a static list of remote VTEPs (one copy per remote).
//!
//! # Outer headers (RFC 7348 §5)
//! UDP destination port [`VtepConfig::udp_port`] (4789 by default); UDP source port from a
//! hash of the inner flow (MACs, EtherType, IP addresses, protocol and TCP/UDP ports) in
//! 49152–65535, so the receiver's RSS/ECMP spreads flows; IPv6 flow label from the same
//! hash (RFC 6438). IPv4: header checksum computed, DF set unless [`VtepConfig::df`] is
//! false (then the IP ID increments), UDP checksum 0 (RFC 7348 §5 allows it). IPv6: a
//! valid UDP checksum, or 0 only when [`VtepConfig::udp6_zero_checksum_tx`] is set
//! (RFC 6935/6936 allow it for tunnel protocols when both ends are configured for it).
//!
//! # Next-hop MAC (outer destination MAC): resolved, not only configured
//! In this order: the outer source MAC learned with the FDB entry (where that remote's
//! frames came from); [`VtepConfig::next_hop_mac`] if configured (a router: every remote
//! is behind it); else the neighbour table ([`Vtep::set_neighbour`] static entries, plus
//! entries learned from ARP and NDP on the underlay and from received VXLAN frames). A
//! remote with no known MAC is resolved: the VTEP sends an ARP request (IPv4) or a
//! neighbour solicitation (IPv6) for it (at most one per second per remote) and drops
//! the frame (counted `drop_no_neighbour`); the next frame goes out once the kernel of the
//! remote host has answered. Multicast groups use their mapped MAC (RFC 1112 §6.4,
//! RFC 2464 §7).
//!
//! The VTEP also answers ARP requests and neighbour solicitations for its own VTEP IP
//! ([`VtepConfig::answer_neighbour_discovery`], on by default), so a kernel peer on the
//! underlay (the tests use a kernel `vxlan` device) can reach it without static
//! neighbours. Frames the VTEP generates (ARP, NDP, IGMP, MLD) leave EAST on the next
//! burst or poll (the VTEP is pollable for that reason; its poll also ages the FDB).
//!
//! # Decapsulation checks
//! Outer destination MAC (ours or a group MAC), outer IP version and header (etherparse),
//! IPv4 header checksum, no fragments, outer destination IP (our VTEP IP or a joined
//! group), UDP, UDP destination port, UDP length, UDP checksum (verified when present;
//! over IPv6 a zero checksum is refused unless [`VtepConfig::udp6_zero_checksum_rx`]), the
//! VXLAN I flag, a configured VNI, and an inner Ethernet header. Every frame that arrives
//! on EAST is decapsulated, consumed as underlay control (ARP/NDP), or dropped and counted
//! under exactly one [`DecapDrop`] reason.
//!
//! # Limits
//! No outer VLAN tag, no IPv4 options or IPv6 extension headers on VXLAN frames (dropped
//! as malformed / not UDP), no MTU check (the underlay device drops what it cannot send),
//! no answer to IGMP/MLD queries (reports are sent once on join).
//!
//! The hot path allocates nothing: encapsulation writes into the frame's headroom and
//! decapsulation moves the data start; FDB lookups and learning use a pre-sized table.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use etherparse::{ArpPacketSlice, Ipv4HeaderSlice, Ipv6HeaderSlice, UdpHeaderSlice};

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::{Burst, HeaderPrefetch};
use crate::clock::Clock;
use crate::error::BrickError;
use crate::packet::{Packet, Pool};
use crate::wire::checksum;
use crate::wire::control::{self, ICMPV6_NA, ICMPV6_NS};
use crate::wire::vxlan::{self, VNI_MAX, VXLAN_PORT, VxlanPacket};
use crate::wire::{
    ETHERNET_HEADER_LEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IP_PROTO_ICMPV6,
    IP_PROTO_UDP, is_group_mac,
};

/// Most VNIs (WEST edges) a VTEP accepts.
pub const MAX_VNIS: usize = 4096;
/// Default FDB aging time: 300 s (as Linux bridges and the kernel `vxlan` device).
pub const DEFAULT_FDB_AGING: Duration = Duration::from_secs(300);
/// Default limit of learned FDB entries (and of learned neighbours).
pub const DEFAULT_FDB_MAX: usize = 16384;
/// Shortest interval between two ARP/NS requests for the same remote, in nanoseconds.
const RESOLVE_INTERVAL_NS: u64 = 1_000_000_000;

/// Errors of the VTEP's configuration calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VtepError {
    /// A VNI above 2^24 - 1.
    #[error("VNI {0} is out of range (0..=16777215, RFC 7348 §5)")]
    VniRange(u32),
    /// The VNI is already attached to a WEST edge.
    #[error("VNI {vni} is already attached to WEST edge {edge}")]
    VniInUse {
        /// The VNI.
        vni: u32,
        /// The edge that has it.
        edge: usize,
    },
    /// The WEST edge already carries a VNI.
    #[error("WEST edge {edge} already carries VNI {vni}")]
    EdgeInUse {
        /// The edge.
        edge: usize,
        /// Its VNI.
        vni: u32,
    },
    /// The edge index is beyond [`MAX_VNIS`].
    #[error("WEST edge {0} is out of range (at most {MAX_VNIS} edges)")]
    EdgeRange(usize),
    /// The VNI is not configured.
    #[error("VNI {0} is not configured on this VTEP")]
    NoSuchVni(u32),
    /// An address of the other IP family than the underlay.
    #[error("{addr} is not an {family} address, and the underlay is {family}")]
    Family {
        /// The address given.
        addr: IpAddr,
        /// The underlay's family (`"IPv4"` or `"IPv6"`).
        family: &'static str,
    },
    /// A flood group that is not a multicast address.
    #[error("{0} is not a multicast address")]
    NotMulticast(IpAddr),
    /// A VTEP or remote address that is multicast, unspecified or broadcast.
    #[error("{0} is not a unicast address")]
    NotUnicast(IpAddr),
    /// A MAC address that is a group address or zero.
    #[error("{0:02x?} is not a unicast MAC address")]
    BadMac([u8; 6]),
    /// Another configuration value out of range; the text names it.
    #[error("invalid VTEP configuration: {0}")]
    Config(String),
}

impl From<VtepError> for BrickError {
    fn from(e: VtepError) -> BrickError {
        BrickError::Config(e.to_string())
    }
}

/// How a VNI floods broadcast, multicast and unknown-unicast frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flood {
    /// Send one copy to this multicast group (IPv4 224.0.0.0/4 or IPv6 ff00::/8, the
    /// underlay's family); the VTEP joins it (IGMPv2 / MLDv2) and accepts VXLAN frames
    /// sent to it.
    Multicast(IpAddr),
    /// Head-end replication: one unicast copy to each remote VTEP of the list.
    List(Vec<IpAddr>),
    /// Do not flood: such frames are dropped (counted `drop_no_flood`).
    None,
}

/// Configuration of a [`Vtep`].
#[derive(Debug, Clone)]
pub struct VtepConfig {
    /// Our VTEP IP (unicast); its family is the underlay's family.
    pub ip: IpAddr,
    /// Our MAC on the underlay (unicast): the outer source MAC.
    pub mac: [u8; 6],
    /// UDP destination port of VXLAN, sent and accepted (default 4789, RFC 7348 §5).
    pub udp_port: u16,
    /// IPv4 TTL / IPv6 hop limit of encapsulated frames (1..=255, default 64).
    pub ttl: u8,
    /// Set the IPv4 Don't Fragment bit (default true). RFC 7348 §4.3: VTEPs must not
    /// fragment VXLAN packets.
    pub df: bool,
    /// IPv6 underlay: send a zero UDP checksum instead of computing it (RFC 6935/6936;
    /// default false: a valid checksum is sent).
    pub udp6_zero_checksum_tx: bool,
    /// IPv6 underlay: accept VXLAN frames with a zero UDP checksum (default false: they are
    /// dropped as `drop_udp_checksum`, RFC 6936 §5).
    pub udp6_zero_checksum_rx: bool,
    /// Outer destination MAC of every unicast remote (a router), instead of resolving
    /// each remote with ARP/NDP. An FDB entry's learned outer MAC still wins.
    pub next_hop_mac: Option<[u8; 6]>,
    /// Most learned FDB entries (and most learned neighbours), >= 1, default 16384. The FDB
    /// table is allocated for this many entries when the VTEP is made (about 64 bytes each).
    pub fdb_max: usize,
    /// Idle time after which a learned FDB entry or neighbour is forgotten (default
    /// 300 s).
    pub fdb_aging: Duration,
    /// Answer ARP requests / neighbour solicitations for our VTEP IP (default true).
    pub answer_neighbour_discovery: bool,
    /// Underlay MTU in bytes: an encapsulated frame whose outer IP packet (outer IP
    /// header + UDP + VXLAN + inner frame) would be longer is dropped and counted as
    /// [`EncapDrop::TooBig`] instead of sent (RFC 7348 §4.3: VTEPs do not fragment).
    /// Default `None`: only the IP length limit (65535) applies.
    pub underlay_mtu: Option<u16>,
}

impl VtepConfig {
    /// A configuration with the defaults above for VTEP IP `ip` and underlay MAC `mac`.
    pub fn new(ip: IpAddr, mac: [u8; 6]) -> VtepConfig {
        VtepConfig {
            ip,
            mac,
            udp_port: VXLAN_PORT,
            ttl: 64,
            df: true,
            udp6_zero_checksum_tx: false,
            udp6_zero_checksum_rx: false,
            next_hop_mac: None,
            fdb_max: DEFAULT_FDB_MAX,
            fdb_aging: DEFAULT_FDB_AGING,
            answer_neighbour_discovery: true,
            underlay_mtu: None,
        }
    }
}

/// Why a frame that arrived on the underlay (EAST) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DecapDrop {
    /// Shorter than an Ethernet header.
    Runt,
    /// EtherType is neither the underlay's IP family nor ARP.
    Ethertype,
    /// Outer destination MAC or IP is not ours (nor a joined group).
    NotForUs,
    /// Outer IP header malformed: version, header length, total/payload length.
    IpMalformed,
    /// Wrong IPv4 header checksum.
    IpChecksum,
    /// An IPv4 fragment (VXLAN is never fragmented by a VTEP, RFC 7348 §4.3).
    Fragment,
    /// Not UDP (also IPv6 with extension headers, other ICMPv6).
    NotUdp,
    /// UDP destination port is not the VXLAN port.
    UdpPort,
    /// UDP length field inconsistent with the IP length or too short for VXLAN.
    UdpLength,
    /// Wrong UDP checksum, or a zero checksum over IPv6 when not allowed.
    UdpChecksum,
    /// VXLAN I flag not set.
    VxlanFlags,
    /// VNI not configured on this VTEP.
    UnknownVni,
    /// Inner frame shorter than an Ethernet header.
    InnerRunt,
    /// Malformed ARP or neighbour discovery message.
    BadControl,
}

impl DecapDrop {
    /// Every reason, in counter order.
    pub const ALL: [DecapDrop; 14] = [
        DecapDrop::Runt,
        DecapDrop::Ethertype,
        DecapDrop::NotForUs,
        DecapDrop::IpMalformed,
        DecapDrop::IpChecksum,
        DecapDrop::Fragment,
        DecapDrop::NotUdp,
        DecapDrop::UdpPort,
        DecapDrop::UdpLength,
        DecapDrop::UdpChecksum,
        DecapDrop::VxlanFlags,
        DecapDrop::UnknownVni,
        DecapDrop::InnerRunt,
        DecapDrop::BadControl,
    ];

    /// The counter name (`"drop_runt"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DecapDrop::Runt => "drop_runt",
            DecapDrop::Ethertype => "drop_ethertype",
            DecapDrop::NotForUs => "drop_not_for_us",
            DecapDrop::IpMalformed => "drop_ip_malformed",
            DecapDrop::IpChecksum => "drop_ip_checksum",
            DecapDrop::Fragment => "drop_fragment",
            DecapDrop::NotUdp => "drop_not_udp",
            DecapDrop::UdpPort => "drop_udp_port",
            DecapDrop::UdpLength => "drop_udp_length",
            DecapDrop::UdpChecksum => "drop_udp_checksum",
            DecapDrop::VxlanFlags => "drop_vxlan_flags",
            DecapDrop::UnknownVni => "drop_unknown_vni",
            DecapDrop::InnerRunt => "drop_inner_runt",
            DecapDrop::BadControl => "drop_bad_control",
        }
    }
}

/// Why a copy of a frame from a VM side (WEST) was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum EncapDrop {
    /// The WEST edge has no VNI.
    NoVni,
    /// Frame shorter than an Ethernet header.
    InnerRunt,
    /// Not enough headroom for the outer headers.
    Headroom,
    /// Outer destination MAC of the remote not known yet (being resolved).
    NoNeighbour,
    /// Flooding disabled for the VNI, or an empty flood list.
    NoFlood,
    /// No free frame for a flood copy.
    PoolEmpty,
    /// Encapsulated frame whose outer IP packet would exceed
    /// [`VtepConfig::underlay_mtu`] (or 65535 bytes without one).
    TooBig,
}

impl EncapDrop {
    /// Every reason, in counter order.
    pub const ALL: [EncapDrop; 7] = [
        EncapDrop::NoVni,
        EncapDrop::InnerRunt,
        EncapDrop::Headroom,
        EncapDrop::NoNeighbour,
        EncapDrop::NoFlood,
        EncapDrop::PoolEmpty,
        EncapDrop::TooBig,
    ];

    /// The counter name (`"drop_no_vni"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EncapDrop::NoVni => "drop_no_vni",
            EncapDrop::InnerRunt => "drop_encap_inner_runt",
            EncapDrop::Headroom => "drop_headroom",
            EncapDrop::NoNeighbour => "drop_no_neighbour",
            EncapDrop::NoFlood => "drop_no_flood",
            EncapDrop::PoolEmpty => "drop_pool_empty",
            EncapDrop::TooBig => "drop_too_big",
        }
    }
}

/// Counters of a [`Vtep`].
///
/// Invariants: every frame in on EAST is counted once in `decapsulated`, `underlay_control`
/// or `decap_drops`; every frame in on WEST, plus `flood_extra_copies`, equals
/// `encapsulated` plus the sum of `encap_drops`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VtepCounters {
    /// Frames encapsulated and sent EAST (flood copies included).
    pub encapsulated: u64,
    /// Extra copies made by flooding to a list (N - 1 per flooded frame for N remotes).
    pub flood_extra_copies: u64,
    /// Frames decapsulated and sent WEST.
    pub decapsulated: u64,
    /// ARP / NDP frames from the underlay consumed (answered or learned from).
    pub underlay_control: u64,
    /// ARP replies and neighbour advertisements sent for our VTEP IP.
    pub nd_answers: u64,
    /// ARP requests and neighbour solicitations sent to resolve remotes.
    pub nd_requests: u64,
    /// IGMP / MLD reports (joins and leaves) sent.
    pub group_reports: u64,
    /// FDB entries learned (new MAC or moved MAC).
    pub fdb_learned: u64,
    /// MACs not learned because the FDB was full.
    pub fdb_full: u64,
    /// FDB entries and neighbours removed by aging.
    pub aged: u64,
    /// Control frames (reports, requests) not sent because the pool was empty.
    pub control_pool_empty: u64,
    /// Decapsulation drops, indexed by [`DecapDrop`] as usize.
    pub decap_drops: [u64; 14],
    /// Encapsulation drops, indexed by [`EncapDrop`] as usize.
    pub encap_drops: [u64; 7],
}

impl VtepCounters {
    /// Drops of one decapsulation reason.
    pub fn decap_drop(&self, r: DecapDrop) -> u64 {
        self.decap_drops[r as usize]
    }
    /// Drops of one encapsulation reason.
    pub fn encap_drop(&self, r: EncapDrop) -> u64 {
        self.encap_drops[r as usize]
    }
    /// Sum of all decapsulation drops.
    pub fn decap_dropped(&self) -> u64 {
        self.decap_drops.iter().sum()
    }
    /// Sum of all encapsulation drops.
    pub fn encap_dropped(&self) -> u64 {
        self.encap_drops.iter().sum()
    }
}

/// One FDB entry, as dumped by [`Vtep::fdb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// VNI (24 bits).
    pub vni: u32,
    /// Inner MAC address.
    pub mac: [u8; 6],
    /// IP of the remote VTEP behind which the MAC is.
    pub remote: IpAddr,
    /// Outer source MAC its frames came from (learned entries), if known.
    pub remote_mac: Option<[u8; 6]>,
    /// Configured (never ages) rather than learned.
    pub is_static: bool,
    /// Time since the entry was learned or last refreshed (zero for static entries).
    pub age: Duration,
}

/// A seeded multiply-xorshift hasher for the FDB and neighbour tables: a few cycles per
/// key (SipHash would dominate the per-packet cost); the per-VTEP random seed keeps
/// crafted MACs from choosing collisions, and the tables are size-limited anyway.
#[derive(Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 ^= self.0 >> 29;
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (self.0 >> 31)
    }
}

#[derive(Clone, Copy)]
struct FastBuild(u64);

impl BuildHasher for FastBuild {
    type Hasher = FastHasher;
    #[inline]
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

impl FastBuild {
    fn random() -> FastBuild {
        FastBuild(std::collections::hash_map::RandomState::new().hash_one(0x5654_4550u64) | 1)
    }
}

type FastMap<K, V> = HashMap<K, V, FastBuild>;

/// FDB key: VNI and inner MAC packed in one u64 each side of the hash.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FdbKey {
    vni: u32,
    mac: u64,
}

impl Hash for FdbKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.mac ^ ((self.vni as u64) << 48) ^ ((self.vni as u64) >> 16));
    }
}

#[inline]
fn mac_u64(m: &[u8]) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

#[inline]
fn mac_from_u64(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

#[inline]
fn mac6(s: &[u8]) -> [u8; 6] {
    [s[0], s[1], s[2], s[3], s[4], s[5]]
}

#[derive(Clone, Copy)]
struct FdbSlot {
    remote: IpAddr,
    remote_mac: Option<[u8; 6]>,
    /// Next-hop MAC from the neighbour table, valid while `nh_gen` equals the table's
    /// generation (saves a second lookup per packet for static entries).
    nh: [u8; 6],
    nh_gen: u32,
    last_seen_ns: u64,
    is_static: bool,
}

/// Neighbour-table key: an IP address as one u128 (IPv4 as IPv4-mapped IPv6), hashed
/// in two multiplications.
#[derive(Clone, Copy, PartialEq, Eq)]
struct IpKey(u128);

impl Hash for IpKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0 as u64);
        state.write_u64((self.0 >> 64) as u64);
    }
}

#[inline]
fn ip_key(ip: &IpAddr) -> IpKey {
    IpKey(match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().to_bits(),
        IpAddr::V6(a) => a.to_bits(),
    })
}

#[inline]
fn neighbour_in(
    map: &FastMap<IpKey, Neighbour>,
    ip: &IpAddr,
    now: u64,
    aging: u64,
) -> Option<[u8; 6]> {
    let n = map.get(&ip_key(ip))?;
    (n.is_static || now.saturating_sub(n.last_seen_ns) <= aging).then_some(n.mac)
}

#[derive(Clone, Copy)]
struct Neighbour {
    ip: IpAddr,
    mac: [u8; 6],
    last_seen_ns: u64,
    is_static: bool,
}

#[derive(Debug, Clone)]
struct VniConf {
    vni: u32,
    flood: Flood,
}

/// What the classification of an underlay frame found.
enum Verdict {
    Vxlan {
        edge: usize,
        vni: u32,
        start: usize,
        end: usize,
        src_ip: IpAddr,
        src_mac: [u8; 6],
    },
    Arp,
    Nd,
    Drop(DecapDrop),
}

/// The VXLAN tunnel end point brick. See the module documentation.
pub struct Vtep {
    cfg: VtepConfig,
    pool: Pool,
    clock: Clock,
    aging_ns: u64,
    /// Outer header template: Ethernet source/type, IP constants and source, UDP port.
    tmpl: [u8; vxlan::OVERHEAD_V6],
    overhead: usize,
    /// Unfolded sum of the constant IPv4 header words.
    v4_base: u64,
    ip_id: u16,
    vnis: Vec<Option<VniConf>>,
    edge_by_vni: FastMap<u32, usize>,
    /// Joined multicast groups and how many VNIs use each.
    groups: Vec<(IpAddr, usize)>,
    fdb: FastMap<FdbKey, FdbSlot>,
    learned: usize,
    neighbours: FastMap<IpKey, Neighbour>,
    /// Generation of the neighbour table: bumped when a MAC changes or an entry goes.
    neigh_gen: u32,
    resolving: FastMap<IpKey, u64>,
    /// Generated frames waiting to go EAST.
    ctrl: Vec<Packet>,
    /// Per WEST edge output of decapsulation (reused from burst to burst).
    outs: Vec<Burst>,
    next_sweep_ns: u64,
    c: VtepCounters,
}

impl std::fmt::Debug for Vtep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vtep")
            .field("ip", &self.cfg.ip)
            .field("vnis", &self.edge_by_vni.len())
            .field("fdb", &self.fdb.len())
            .finish()
    }
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn is_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_unspecified() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

impl Vtep {
    /// A VTEP with configuration `cfg`; generated frames (ARP, NDP, IGMP, MLD, flood
    /// copies come from the packet's own pool) are taken from `pool`.
    ///
    /// # Errors
    /// [`VtepError::NotUnicast`] / [`VtepError::BadMac`] for a bad VTEP address,
    /// [`VtepError::Config`] for `ttl == 0`, `fdb_max == 0` or a zero `fdb_aging`.
    pub fn new(pool: Pool, cfg: VtepConfig) -> Result<Vtep, VtepError> {
        if !is_unicast(&cfg.ip) {
            return Err(VtepError::NotUnicast(cfg.ip));
        }
        if is_group_mac(&cfg.mac) || cfg.mac == [0; 6] {
            return Err(VtepError::BadMac(cfg.mac));
        }
        if let Some(m) = cfg.next_hop_mac
            && (is_group_mac(&m) || m == [0; 6])
        {
            return Err(VtepError::BadMac(m));
        }
        if cfg.ttl == 0 {
            return Err(VtepError::Config("ttl must be 1..=255".into()));
        }
        if cfg.fdb_max == 0 {
            return Err(VtepError::Config("fdb_max must be at least 1".into()));
        }
        if cfg.fdb_aging.is_zero() {
            return Err(VtepError::Config("fdb_aging must be above 0".into()));
        }
        let mut tmpl = [0u8; vxlan::OVERHEAD_V6];
        tmpl[6..12].copy_from_slice(&cfg.mac);
        let (overhead, v4_base) = match cfg.ip {
            IpAddr::V4(src) => {
                tmpl[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let ip = &mut tmpl[14..34];
                ip[0] = 0x45;
                if cfg.df {
                    ip[6] = 0x40;
                }
                ip[8] = cfg.ttl;
                ip[9] = IP_PROTO_UDP;
                ip[12..16].copy_from_slice(&src.octets());
                tmpl[36..38].copy_from_slice(&cfg.udp_port.to_be_bytes());
                (vxlan::OVERHEAD_V4, checksum::sum(&tmpl[14..34], 0))
            }
            IpAddr::V6(src) => {
                tmpl[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let ip = &mut tmpl[14..54];
                ip[0] = 0x60;
                ip[6] = IP_PROTO_UDP;
                ip[7] = cfg.ttl;
                ip[8..24].copy_from_slice(&src.octets());
                tmpl[56..58].copy_from_slice(&cfg.udp_port.to_be_bytes());
                (vxlan::OVERHEAD_V6, 0)
            }
        };
        let h = FastBuild::random();
        // The whole learning limit up front: learning never reallocates on the hot path.
        let reserve = cfg.fdb_max;
        Ok(Vtep {
            aging_ns: cfg.fdb_aging.as_nanos().min(u64::MAX as u128) as u64,
            cfg,
            pool,
            clock: Clock::monotonic(),
            tmpl,
            overhead,
            v4_base,
            ip_id: 0,
            vnis: Vec::new(),
            edge_by_vni: HashMap::with_hasher(h),
            groups: Vec::new(),
            fdb: HashMap::with_capacity_and_hasher(reserve, h),
            learned: 0,
            neighbours: HashMap::with_capacity_and_hasher(64, h),
            neigh_gen: 1,
            resolving: HashMap::with_capacity_and_hasher(64, h),
            ctrl: Vec::with_capacity(64),
            outs: Vec::new(),
            next_sweep_ns: 0,
            c: VtepCounters::default(),
        })
    }

    /// Uses `clock` for aging instead of the monotonic clock (tests use a manual clock).
    pub fn with_clock(mut self, clock: Clock) -> Vtep {
        self.clock = clock;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &VtepConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> &VtepCounters {
        &self.c
    }

    fn check_family(&self, ip: &IpAddr) -> Result<(), VtepError> {
        if ip.is_ipv4() != self.cfg.ip.is_ipv4() {
            return Err(VtepError::Family {
                addr: *ip,
                family: family(&self.cfg.ip),
            });
        }
        Ok(())
    }

    /// Attaches VNI `vni` to WEST edge `edge` (the edge index [`crate::Graph::link`]
    /// returned for the VTEP's WEST side), flooding as `flood` says. With a multicast
    /// group, an IGMPv2 membership report (IPv4) or MLDv2 report (IPv6) is queued for the
    /// underlay; with a list, the remotes' MACs are resolved in advance. Queued frames
    /// leave on the next poll.
    ///
    /// The VNI belongs to the edge index, not to the brick linked there: it stays when the
    /// edge is unlinked (so a VM side can be re-linked without reconfiguring the VTEP);
    /// call [`Vtep::remove_vni`] to detach it.
    ///
    /// # Errors
    /// [`VtepError::VniRange`], [`VtepError::EdgeRange`], [`VtepError::VniInUse`],
    /// [`VtepError::EdgeInUse`], [`VtepError::Family`], [`VtepError::NotMulticast`],
    /// [`VtepError::NotUnicast`].
    pub fn add_vni(&mut self, edge: usize, vni: u32, flood: Flood) -> Result<(), VtepError> {
        if vni > VNI_MAX {
            return Err(VtepError::VniRange(vni));
        }
        if edge >= MAX_VNIS {
            return Err(VtepError::EdgeRange(edge));
        }
        if let Some(&e) = self.edge_by_vni.get(&vni) {
            return Err(VtepError::VniInUse { vni, edge: e });
        }
        if let Some(Some(v)) = self.vnis.get(edge) {
            return Err(VtepError::EdgeInUse { edge, vni: v.vni });
        }
        match &flood {
            Flood::Multicast(g) => {
                self.check_family(g)?;
                if !g.is_multicast() {
                    return Err(VtepError::NotMulticast(*g));
                }
            }
            Flood::List(l) => {
                for r in l {
                    self.check_family(r)?;
                    if !is_unicast(r) {
                        return Err(VtepError::NotUnicast(*r));
                    }
                }
            }
            Flood::None => {}
        }
        let now = self.clock.now_ns();
        match &flood {
            Flood::Multicast(g) => {
                if let Some(e) = self.groups.iter_mut().find(|(a, _)| a == g) {
                    e.1 += 1;
                } else {
                    self.groups.push((*g, 1));
                    self.queue_report(*g, true);
                }
            }
            Flood::List(l) => {
                for r in l.clone() {
                    if self.cfg.next_hop_mac.is_none() && self.neighbour(&r, now).is_none() {
                        self.request(r, now);
                    }
                }
            }
            Flood::None => {}
        }
        if self.vnis.len() <= edge {
            self.vnis.resize(edge + 1, None);
        }
        while self.outs.len() <= edge {
            self.outs.push(Burst::new());
        }
        self.vnis[edge] = Some(VniConf { vni, flood });
        self.edge_by_vni.insert(vni, edge);
        Ok(())
    }

    /// Detaches VNI `vni`: its FDB entries are removed, and its multicast group is left
    /// (IGMPv2 leave / MLDv2 report) when no other VNI uses it. Returns the edge it had.
    ///
    /// # Errors
    /// [`VtepError::NoSuchVni`].
    pub fn remove_vni(&mut self, vni: u32) -> Result<usize, VtepError> {
        let edge = self
            .edge_by_vni
            .remove(&vni)
            .ok_or(VtepError::NoSuchVni(vni))?;
        let conf = self.vnis[edge].take().expect("edge_by_vni and vnis agree");
        if let Flood::Multicast(g) = conf.flood
            && let Some(i) = self.groups.iter().position(|(a, _)| *a == g)
        {
            self.groups[i].1 -= 1;
            if self.groups[i].1 == 0 {
                self.groups.swap_remove(i);
                self.queue_report(g, false);
            }
        }
        let before = self.fdb.len();
        self.fdb.retain(|k, _| k.vni != vni);
        let _ = before;
        self.learned = self.fdb.values().filter(|s| !s.is_static).count();
        Ok(edge)
    }

    /// The VNI of WEST edge `edge`, if any.
    pub fn vni_of_edge(&self, edge: usize) -> Option<u32> {
        self.vnis.get(edge)?.as_ref().map(|v| v.vni)
    }

    /// The WEST edge of VNI `vni`, if configured.
    pub fn edge_of_vni(&self, vni: u32) -> Option<usize> {
        self.edge_by_vni.get(&vni).copied()
    }

    /// Adds (or replaces) a static FDB entry: frames of VNI `vni` to inner MAC `mac` go to
    /// remote VTEP `remote`. Static entries never age and do not count against `fdb_max`.
    ///
    /// # Errors
    /// [`VtepError::NoSuchVni`], [`VtepError::Family`], [`VtepError::NotUnicast`],
    /// [`VtepError::BadMac`] (group MAC).
    pub fn add_static(&mut self, vni: u32, mac: [u8; 6], remote: IpAddr) -> Result<(), VtepError> {
        if !self.edge_by_vni.contains_key(&vni) {
            return Err(VtepError::NoSuchVni(vni));
        }
        self.check_family(&remote)?;
        if !is_unicast(&remote) {
            return Err(VtepError::NotUnicast(remote));
        }
        if is_group_mac(&mac) {
            return Err(VtepError::BadMac(mac));
        }
        let key = FdbKey {
            vni,
            mac: mac_u64(&mac),
        };
        if let Some(old) = self.fdb.insert(
            key,
            FdbSlot {
                remote,
                remote_mac: None,
                nh: [0; 6],
                nh_gen: 0,
                last_seen_ns: 0,
                is_static: true,
            },
        ) && !old.is_static
        {
            self.learned -= 1;
        }
        let now = self.clock.now_ns();
        if self.cfg.next_hop_mac.is_none() && self.neighbour(&remote, now).is_none() {
            self.request(remote, now);
        }
        Ok(())
    }

    /// Removes an FDB entry (static or learned). Returns true if there was one.
    pub fn remove_fdb(&mut self, vni: u32, mac: [u8; 6]) -> bool {
        match self.fdb.remove(&FdbKey {
            vni,
            mac: mac_u64(&mac),
        }) {
            Some(s) => {
                if !s.is_static {
                    self.learned -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// A copy of the FDB (static and learned entries that have not aged out), sorted by
    /// VNI then MAC.
    pub fn fdb(&self) -> Vec<FdbEntry> {
        let now = self.clock.now_ns();
        let mut v: Vec<FdbEntry> = self
            .fdb
            .iter()
            .filter(|(_, s)| s.is_static || now.saturating_sub(s.last_seen_ns) <= self.aging_ns)
            .map(|(k, s)| FdbEntry {
                vni: k.vni,
                mac: mac_from_u64(k.mac),
                remote: s.remote,
                remote_mac: s.remote_mac,
                is_static: s.is_static,
                age: if s.is_static {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(now.saturating_sub(s.last_seen_ns))
                },
            })
            .collect();
        v.sort_by_key(|e| (e.vni, e.mac));
        v
    }

    /// Sets a static neighbour: the outer destination MAC for remote VTEP (or next hop)
    /// `ip`. Static neighbours never age.
    ///
    /// # Errors
    /// [`VtepError::Family`], [`VtepError::BadMac`].
    pub fn set_neighbour(&mut self, ip: IpAddr, mac: [u8; 6]) -> Result<(), VtepError> {
        self.check_family(&ip)?;
        if is_group_mac(&mac) || mac == [0; 6] {
            return Err(VtepError::BadMac(mac));
        }
        self.neighbours.insert(
            ip_key(&ip),
            Neighbour {
                ip,
                mac,
                last_seen_ns: 0,
                is_static: true,
            },
        );
        self.neigh_gen = self.neigh_gen.wrapping_add(1).max(1);
        Ok(())
    }

    /// The neighbour table: `(ip, mac, is_static)`, sorted by IP.
    pub fn neighbours(&self) -> Vec<(IpAddr, [u8; 6], bool)> {
        let now = self.clock.now_ns();
        let mut v: Vec<_> = self
            .neighbours
            .iter()
            .filter(|(_, n)| n.is_static || now.saturating_sub(n.last_seen_ns) <= self.aging_ns)
            .map(|(_, n)| (n.ip, n.mac, n.is_static))
            .collect();
        v.sort();
        v
    }

    /// Multicast groups joined, with how many VNIs use each.
    pub fn groups(&self) -> &[(IpAddr, usize)] {
        &self.groups
    }

    /// Removes learned FDB entries and neighbours idle for longer than the aging time.
    /// Runs from [`Brick::poll`] about once a second; public for tests and control
    /// commands. Returns how many were removed.
    pub fn age(&mut self) -> usize {
        let now = self.clock.now_ns();
        let aging = self.aging_ns;
        let mut n = 0;
        self.fdb.retain(|_, s| {
            let keep = s.is_static || now.saturating_sub(s.last_seen_ns) <= aging;
            n += usize::from(!keep);
            keep
        });
        self.learned -= n;
        let before = self.neighbours.len();
        self.neighbours
            .retain(|_, s| s.is_static || now.saturating_sub(s.last_seen_ns) <= aging);
        if before != self.neighbours.len() {
            self.neigh_gen = self.neigh_gen.wrapping_add(1).max(1);
        }
        n += before - self.neighbours.len();
        self.resolving
            .retain(|_, t| now.saturating_sub(*t) <= RESOLVE_INTERVAL_NS);
        self.c.aged += n as u64;
        n
    }

    // ---------------------------------------------------------------- neighbours

    #[inline]
    fn neighbour(&self, ip: &IpAddr, now: u64) -> Option<[u8; 6]> {
        neighbour_in(&self.neighbours, ip, now, self.aging_ns)
    }

    fn learn_neighbour(&mut self, ip: IpAddr, mac: [u8; 6], now: u64) {
        if is_group_mac(&mac) || mac == [0; 6] || !is_unicast(&ip) || ip == self.cfg.ip {
            return;
        }
        let k = ip_key(&ip);
        match self.neighbours.get_mut(&k) {
            Some(n) => {
                if !n.is_static {
                    if n.mac != mac {
                        n.mac = mac;
                        self.neigh_gen = self.neigh_gen.wrapping_add(1).max(1);
                    }
                    n.last_seen_ns = now;
                }
            }
            None => {
                if self.neighbours.len() < self.cfg.fdb_max {
                    self.neighbours.insert(
                        k,
                        Neighbour {
                            ip,
                            mac,
                            last_seen_ns: now,
                            is_static: false,
                        },
                    );
                }
            }
        }
        if !self.resolving.is_empty() {
            self.resolving.remove(&k);
        }
    }

    /// Queues an ARP request / neighbour solicitation for `ip` (rate-limited).
    fn request(&mut self, ip: IpAddr, now: u64) {
        if let Some(&t) = self.resolving.get(&ip_key(&ip))
            && now.saturating_sub(t) < RESOLVE_INTERVAL_NS
        {
            return;
        }
        if self.resolving.len() >= self.cfg.fdb_max {
            return;
        }
        self.resolving.insert(ip_key(&ip), now);
        let Some(mut p) = self.pool.alloc() else {
            self.c.control_pool_empty += 1;
            return;
        };
        let ok = match (self.cfg.ip, ip) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => emit_into(&mut p, control::ARP_LEN, |b| {
                control::emit_arp_request(b, self.cfg.mac, src, dst)
            }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => emit_into(&mut p, control::ND_LEN, |b| {
                control::emit_ns(b, self.cfg.mac, src, dst)
            }),
            _ => false,
        };
        if ok {
            self.c.nd_requests += 1;
            self.ctrl.push(p);
        }
    }

    fn queue_report(&mut self, group: IpAddr, join: bool) {
        let Some(mut p) = self.pool.alloc() else {
            self.c.control_pool_empty += 1;
            return;
        };
        let ok = match (self.cfg.ip, group) {
            (IpAddr::V4(src), IpAddr::V4(g)) => emit_into(&mut p, control::IGMP_LEN, |b| {
                control::emit_igmp(b, self.cfg.mac, src, g, join)
            }),
            (IpAddr::V6(_), IpAddr::V6(g)) => emit_into(&mut p, control::MLD_LEN, |b| {
                control::emit_mld(b, self.cfg.mac, g, join)
            }),
            _ => false,
        };
        if ok {
            self.c.group_reports += 1;
            self.ctrl.push(p);
        }
    }

    // ---------------------------------------------------------------- encapsulation

    /// Writes the outer headers in front of `p` (in place, into the headroom).
    #[inline]
    fn encapsulate(
        &mut self,
        p: &mut Packet,
        vni: u32,
        dst: IpAddr,
        dst_mac: [u8; 6],
        hash: u32,
    ) -> Result<(), EncapDrop> {
        let inner = p.len();
        let oh = self.overhead;
        let max_ip = self.cfg.underlay_mtu.map_or(u16::MAX as usize, usize::from);
        if inner + oh - ETHERNET_HEADER_LEN > max_ip {
            return Err(EncapDrop::TooBig);
        }
        let zero6 = self.cfg.udp6_zero_checksum_tx;
        let h = p.prepend(oh).map_err(|_| EncapDrop::Headroom)?;
        // Constant lengths, so the copy is inlined rather than a call to memmove.
        if oh == vxlan::OVERHEAD_V4 {
            h[..vxlan::OVERHEAD_V4].copy_from_slice(&self.tmpl[..vxlan::OVERHEAD_V4]);
        } else {
            h[..vxlan::OVERHEAD_V6].copy_from_slice(&self.tmpl[..vxlan::OVERHEAD_V6]);
        }
        h[0..6].copy_from_slice(&dst_mac);
        let sport = vxlan::source_port(hash);
        let udp_len = (inner + 16) as u16;
        let l4 = match dst {
            IpAddr::V4(d) => {
                let tot = udp_len + 20;
                let id = if self.cfg.df {
                    0
                } else {
                    self.ip_id = self.ip_id.wrapping_add(1);
                    self.ip_id
                };
                let d = d.octets();
                h[16..18].copy_from_slice(&tot.to_be_bytes());
                h[18..20].copy_from_slice(&id.to_be_bytes());
                h[30..34].copy_from_slice(&d);
                let s = self.v4_base + tot as u64 + id as u64 + u32::from_be_bytes(d) as u64;
                h[24..26].copy_from_slice(&checksum::finish(s).to_be_bytes());
                34
            }
            IpAddr::V6(d) => {
                let fl = hash & 0x000f_ffff;
                h[15] = (fl >> 16) as u8;
                h[16] = (fl >> 8) as u8;
                h[17] = fl as u8;
                h[18..20].copy_from_slice(&udp_len.to_be_bytes());
                h[38..54].copy_from_slice(&d.octets());
                54
            }
        };
        h[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        h[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        VxlanPacket::new_unchecked(&mut h[l4 + 8..l4 + 16]).set_header(vni);
        if l4 == 54 && !zero6 {
            let data = p.data_mut();
            let (src, dst) = (&data[22..38], &data[38..54]);
            let mut acc = checksum::sum(src, 0);
            acc = checksum::sum(dst, acc);
            acc += udp_len as u64 + IP_PROTO_UDP as u64;
            acc = checksum::sum(&data[54..], acc);
            let c = checksum::udp_field(acc);
            data[60..62].copy_from_slice(&c.to_be_bytes());
        }
        p.set_offsets(Some(0), Some(ETHERNET_HEADER_LEN), Some(l4));
        Ok(())
    }

    /// Outer destination MAC for a unicast remote, or None (and a resolution request).
    #[inline]
    fn next_hop(&mut self, remote: IpAddr, learned: Option<[u8; 6]>, now: u64) -> Option<[u8; 6]> {
        if let Some(m) = learned.or(self.cfg.next_hop_mac) {
            return Some(m);
        }
        if let Some(m) = self.neighbour(&remote, now) {
            return Some(m);
        }
        self.request(remote, now);
        None
    }

    #[inline]
    fn push_east(&mut self, east: &mut Burst, out: &mut Emit, p: Packet) {
        if let Err(p) = east.push(p) {
            out.send(Side::East, 0, std::mem::take(east));
            let _ = east.push(p);
        }
    }

    #[inline]
    fn encap_drop(&mut self, r: EncapDrop) {
        self.c.encap_drops[r as usize] += 1;
    }

    fn encapsulate_burst(&mut self, edge: usize, pkts: Burst, out: &mut Emit) {
        let now = self.clock.now_ns();
        let mut east = Burst::new();
        let Some(Some(conf)) = self.vnis.get(edge) else {
            self.c.encap_drops[EncapDrop::NoVni as usize] += pkts.len() as u64;
            return;
        };
        let vni = conf.vni;
        let mut pkts = pkts;
        for mut p in pkts.drain() {
            if p.len() < ETHERNET_HEADER_LEN {
                self.encap_drop(EncapDrop::InnerRunt);
                continue;
            }
            let d = p.data();
            let dst_mac = mac_u64(&d[0..6]);
            let hash = flow_hash(d);
            if !is_group_mac(&mac6(d))
                && let Some(s) = self.fdb.get_mut(&FdbKey { vni, mac: dst_mac })
                && (s.is_static || now.saturating_sub(s.last_seen_ns) <= self.aging_ns)
            {
                let remote = s.remote;
                let nh = match s.remote_mac.or(self.cfg.next_hop_mac) {
                    Some(m) => Some(m),
                    None if s.nh_gen == self.neigh_gen => Some(s.nh),
                    None => {
                        neighbour_in(&self.neighbours, &remote, now, self.aging_ns).inspect(|m| {
                            s.nh = *m;
                            s.nh_gen = self.neigh_gen;
                        })
                    }
                };
                let Some(nh) = nh else {
                    self.request(remote, now);
                    self.encap_drop(EncapDrop::NoNeighbour);
                    continue;
                };
                match self.encapsulate(&mut p, vni, remote, nh, hash) {
                    Ok(()) => {
                        self.c.encapsulated += 1;
                        self.push_east(&mut east, out, p);
                    }
                    Err(r) => self.encap_drop(r),
                }
                continue;
            }
            self.flood(edge, vni, p, hash, now, &mut east, out);
        }
        self.flush_ctrl(&mut east, out);
        if !east.is_empty() {
            out.send(Side::East, 0, east);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn flood(
        &mut self,
        edge: usize,
        vni: u32,
        mut p: Packet,
        hash: u32,
        now: u64,
        east: &mut Burst,
        out: &mut Emit,
    ) {
        enum Mode {
            None,
            Group(IpAddr),
            List(usize),
        }
        let mode = match &self.vnis[edge]
            .as_ref()
            .expect("caller checked the edge")
            .flood
        {
            Flood::None => Mode::None,
            Flood::Multicast(g) => Mode::Group(*g),
            Flood::List(l) => Mode::List(l.len()),
        };
        match mode {
            Mode::None => self.encap_drop(EncapDrop::NoFlood),
            Mode::Group(g) => {
                let mac = match g {
                    IpAddr::V4(a) => crate::wire::ipv4_multicast_mac(a.octets()),
                    IpAddr::V6(a) => crate::wire::ipv6_multicast_mac(a.octets()),
                };
                match self.encapsulate(&mut p, vni, g, mac, hash) {
                    Ok(()) => {
                        self.c.encapsulated += 1;
                        self.push_east(east, out, p);
                    }
                    Err(r) => self.encap_drop(r),
                }
            }
            Mode::List(n) => {
                if n == 0 {
                    self.encap_drop(EncapDrop::NoFlood);
                    return;
                }
                self.c.flood_extra_copies += n as u64 - 1;
                let mut orig = Some(p);
                for i in 0..n {
                    let remote = match &self.vnis[edge] {
                        Some(VniConf {
                            flood: Flood::List(l),
                            ..
                        }) => l[i],
                        _ => unreachable!("the flood list of the edge does not change here"),
                    };
                    let Some(nh) = self.next_hop(remote, None, now) else {
                        self.encap_drop(EncapDrop::NoNeighbour);
                        continue;
                    };
                    let last = i == n - 1;
                    let copy = match &orig {
                        Some(o) if !last => o.try_clone(),
                        _ => orig.take(),
                    };
                    let Some(mut c) = copy else {
                        self.encap_drop(EncapDrop::PoolEmpty);
                        continue;
                    };
                    match self.encapsulate(&mut c, vni, remote, nh, hash) {
                        Ok(()) => {
                            self.c.encapsulated += 1;
                            self.push_east(east, out, c);
                        }
                        Err(r) => self.encap_drop(r),
                    }
                }
            }
        }
    }

    fn flush_ctrl(&mut self, east: &mut Burst, out: &mut Emit) {
        while let Some(p) = self.ctrl.pop() {
            self.push_east(east, out, p);
        }
    }

    // ---------------------------------------------------------------- decapsulation

    #[inline]
    fn is_our_dst(&self, dst: IpAddr) -> bool {
        dst == self.cfg.ip || (dst.is_multicast() && self.groups.iter().any(|(g, _)| *g == dst))
    }

    /// Classifies one underlay frame: checks everything, touches nothing.
    #[inline]
    /// `last` caches the last VNI → edge lookup across calls (bursts are mostly of one
    /// VNI).
    fn classify(&self, d: &[u8], last: &mut Option<(u32, usize)>) -> Verdict {
        use DecapDrop as D;
        if d.len() < ETHERNET_HEADER_LEN {
            return Verdict::Drop(D::Runt);
        }
        let dst_mac = mac6(&d[0..6]);
        let src_mac = mac6(&d[6..12]);
        let et = u16::from_be_bytes([d[12], d[13]]);
        let l3 = &d[ETHERNET_HEADER_LEN..];
        // l4 slice bounded by the IP length; outer src IP.
        let (udp, src_ip) = match (et, self.cfg.ip) {
            (ETHERTYPE_ARP, IpAddr::V4(_)) => return Verdict::Arp,
            (ETHERTYPE_IPV4, IpAddr::V4(_)) => {
                let Ok(ip) = Ipv4HeaderSlice::from_slice(l3) else {
                    return Verdict::Drop(D::IpMalformed);
                };
                let hl = ip.slice().len();
                let tot = ip.total_len() as usize;
                if tot < hl || tot > l3.len() {
                    return Verdict::Drop(D::IpMalformed);
                }
                if checksum::checksum(ip.slice()) != 0 {
                    return Verdict::Drop(D::IpChecksum);
                }
                if ip.is_fragmenting_payload() {
                    return Verdict::Drop(D::Fragment);
                }
                if ip.protocol().0 != IP_PROTO_UDP {
                    return Verdict::Drop(D::NotUdp);
                }
                if !is_group_mac(&dst_mac) && dst_mac != self.cfg.mac
                    || !self.is_our_dst(IpAddr::V4(ip.destination_addr()))
                {
                    return Verdict::Drop(D::NotForUs);
                }
                (&l3[hl..tot], IpAddr::V4(ip.source_addr()))
            }
            (ETHERTYPE_IPV6, IpAddr::V6(_)) => {
                let Ok(ip) = Ipv6HeaderSlice::from_slice(l3) else {
                    return Verdict::Drop(D::IpMalformed);
                };
                let end = 40 + ip.payload_length() as usize;
                if end > l3.len() {
                    return Verdict::Drop(D::IpMalformed);
                }
                match ip.next_header().0 {
                    IP_PROTO_UDP => {}
                    IP_PROTO_ICMPV6 => {
                        let t = l3.get(40).copied().unwrap_or(0);
                        return if t == ICMPV6_NS || t == ICMPV6_NA {
                            Verdict::Nd
                        } else {
                            Verdict::Drop(D::NotUdp)
                        };
                    }
                    _ => return Verdict::Drop(D::NotUdp),
                }
                let dst = ip.destination_addr();
                if !is_group_mac(&dst_mac) && dst_mac != self.cfg.mac
                    || !self.is_our_dst(IpAddr::V6(dst))
                {
                    return Verdict::Drop(D::NotForUs);
                }
                (&l3[40..end], IpAddr::V6(ip.source_addr()))
            }
            _ => return Verdict::Drop(D::Ethertype),
        };
        let Ok(u) = UdpHeaderSlice::from_slice(udp) else {
            return Verdict::Drop(D::UdpLength);
        };
        if u.destination_port() != self.cfg.udp_port {
            return Verdict::Drop(D::UdpPort);
        }
        let ulen = u.length() as usize;
        if ulen > udp.len() || ulen < 8 {
            return Verdict::Drop(D::UdpLength);
        }
        let seg = &udp[..ulen];
        let csum = u.checksum();
        if csum == 0 {
            if src_ip.is_ipv6() && !self.cfg.udp6_zero_checksum_rx {
                return Verdict::Drop(D::UdpChecksum);
            }
        } else {
            let pseudo = match (src_ip, et) {
                (IpAddr::V4(s), _) => {
                    let dst = [l3[16], l3[17], l3[18], l3[19]];
                    checksum::pseudo_header_v4(s.octets(), dst, IP_PROTO_UDP, ulen as u16)
                }
                (IpAddr::V6(_), _) => {
                    let mut s = [0u8; 16];
                    let mut t = [0u8; 16];
                    s.copy_from_slice(&l3[8..24]);
                    t.copy_from_slice(&l3[24..40]);
                    checksum::pseudo_header_v6(&s, &t, IP_PROTO_UDP, ulen as u32)
                }
            };
            if checksum::fold(checksum::sum(seg, pseudo)) != 0xffff {
                return Verdict::Drop(D::UdpChecksum);
            }
        }
        let Ok(vx) = VxlanPacket::new_checked(&seg[8..]) else {
            return Verdict::Drop(D::UdpLength);
        };
        if !vx.has_vni() {
            return Verdict::Drop(D::VxlanFlags);
        }
        let vni = vx.vni();
        let edge = match *last {
            Some((v, e)) if v == vni => e,
            _ => {
                let Some(&e) = self.edge_by_vni.get(&vni) else {
                    return Verdict::Drop(D::UnknownVni);
                };
                *last = Some((vni, e));
                e
            }
        };
        if vx.payload().len() < ETHERNET_HEADER_LEN {
            return Verdict::Drop(D::InnerRunt);
        }
        // Offsets in `d`: the UDP segment starts at seg's offset.
        let seg_off = seg.as_ptr() as usize - d.as_ptr() as usize;
        Verdict::Vxlan {
            edge,
            vni,
            start: seg_off + 16,
            end: seg_off + ulen,
            src_ip,
            src_mac,
        }
    }

    /// Learns inner source MAC `mac` of VNI `vni` behind `remote` (outer source MAC
    /// `remote_mac`).
    #[inline]
    fn learn(&mut self, vni: u32, mac: u64, remote: IpAddr, remote_mac: [u8; 6], now: u64) {
        let key = FdbKey { vni, mac };
        if let Some(s) = self.fdb.get_mut(&key) {
            if s.is_static {
                return;
            }
            if s.remote != remote || s.remote_mac != Some(remote_mac) {
                s.remote = remote;
                s.remote_mac = Some(remote_mac);
                self.c.fdb_learned += 1;
            }
            s.last_seen_ns = now;
            return;
        }
        if self.learned >= self.cfg.fdb_max {
            self.c.fdb_full += 1;
            return;
        }
        self.fdb.insert(
            key,
            FdbSlot {
                remote,
                remote_mac: Some(remote_mac),
                nh: [0; 6],
                nh_gen: 0,
                last_seen_ns: now,
                is_static: false,
            },
        );
        self.learned += 1;
        self.c.fdb_learned += 1;
    }

    fn decapsulate_burst(&mut self, pkts: Burst, out: &mut Emit) {
        let now = self.clock.now_ns();
        let mut dirty = [0u16; crate::burst::BURST_SIZE];
        let mut ndirty = 0;
        let mut east = Burst::new();
        // (VNI, inner source MAC) pairs refreshed in this burst: each MAC is learned once per
        // burst, not once per packet (a MAC that moves to another remote VTEP in the
        // middle of a burst moves with the next burst).
        let mut recent = [u128::MAX; 8];
        let mut recent_next = 0;
        let mut last_neigh: Option<(IpAddr, [u8; 6])> = None;
        let mut last_vni = None;
        let mut pkts = pkts;
        let prefetch = HeaderPrefetch::new(&pkts);
        for (i, mut p) in pkts.drain().enumerate() {
            prefetch.ahead(i);
            match self.classify(p.data(), &mut last_vni) {
                Verdict::Vxlan {
                    edge,
                    vni,
                    start,
                    end,
                    src_ip,
                    src_mac,
                } => {
                    let inner_src = mac_u64(&p.data()[start + 6..start + 12]);
                    let k = ((vni as u128) << 64) | inner_src as u128;
                    if (inner_src >> 40) & 1 == 0 && !recent.contains(&k) {
                        self.learn(vni, inner_src, src_ip, src_mac, now);
                        recent[recent_next] = k;
                        recent_next = (recent_next + 1) % recent.len();
                    }
                    if self.cfg.next_hop_mac.is_none() && last_neigh != Some((src_ip, src_mac)) {
                        self.learn_neighbour(src_ip, src_mac, now);
                        last_neigh = Some((src_ip, src_mac));
                    }
                    p.truncate(end);
                    let _ = p.trim_front(start);
                    p.set_offsets(Some(0), None, None);
                    self.c.decapsulated += 1;
                    let o = &mut self.outs[edge];
                    if o.is_empty() {
                        dirty[ndirty] = edge as u16;
                        ndirty += 1;
                    }
                    let _ = o.push(p);
                }
                Verdict::Arp => match self.handle_arp(&mut p, now) {
                    Ok(reply) => {
                        self.c.underlay_control += 1;
                        if reply {
                            self.c.nd_answers += 1;
                            self.push_east(&mut east, out, p);
                        }
                    }
                    Err(r) => self.c.decap_drops[r as usize] += 1,
                },
                Verdict::Nd => match self.handle_nd(&mut p, now) {
                    Ok(reply) => {
                        self.c.underlay_control += 1;
                        if reply {
                            self.c.nd_answers += 1;
                            self.push_east(&mut east, out, p);
                        }
                    }
                    Err(r) => self.c.decap_drops[r as usize] += 1,
                },
                Verdict::Drop(r) => self.c.decap_drops[r as usize] += 1,
            }
        }
        for &e in &dirty[..ndirty] {
            let e = e as usize;
            out.send(Side::West, e, std::mem::take(&mut self.outs[e]));
        }
        self.flush_ctrl(&mut east, out);
        if !east.is_empty() {
            out.send(Side::East, 0, east);
        }
    }

    /// ARP on the underlay: learn the sender, answer requests for our VTEP IP in place.
    /// Ok(true) when `p` became a reply to send back.
    fn handle_arp(&mut self, p: &mut Packet, now: u64) -> Result<bool, DecapDrop> {
        let IpAddr::V4(our) = self.cfg.ip else {
            return Err(DecapDrop::Ethertype);
        };
        let d = p.data();
        let Ok(arp) = ArpPacketSlice::from_slice(&d[ETHERNET_HEADER_LEN..]) else {
            return Err(DecapDrop::BadControl);
        };
        if arp.hw_addr_type().0 != 1
            || arp.proto_addr_type().0 != ETHERTYPE_IPV4
            || arp.hw_addr_size() != 6
            || arp.proto_addr_size() != 4
        {
            return Err(DecapDrop::BadControl);
        }
        let op = arp.operation().0;
        let sha = mac6(arp.sender_hw_addr());
        let s = arp.sender_protocol_addr();
        let spa = Ipv4Addr::new(s[0], s[1], s[2], s[3]);
        let t = arp.target_protocol_addr();
        let tpa = Ipv4Addr::new(t[0], t[1], t[2], t[3]);
        if op != 1 && op != 2 {
            return Err(DecapDrop::BadControl);
        }
        if !spa.is_unspecified() {
            let k = ip_key(&IpAddr::V4(spa));
            let known = self.neighbours.contains_key(&k);
            if known || tpa == our || self.resolving.contains_key(&k) {
                self.learn_neighbour(IpAddr::V4(spa), sha, now);
            }
        }
        if op == 1 && tpa == our && self.cfg.answer_neighbour_discovery {
            p.truncate(ETHERNET_HEADER_LEN + 28);
            let mac = self.cfg.mac;
            let d = p.data_mut();
            d[0..6].copy_from_slice(&sha);
            d[6..12].copy_from_slice(&mac);
            let a = &mut d[ETHERNET_HEADER_LEN..];
            a[6..8].copy_from_slice(&2u16.to_be_bytes());
            a[8..14].copy_from_slice(&mac);
            a[14..18].copy_from_slice(&our.octets());
            a[18..24].copy_from_slice(&sha);
            a[24..28].copy_from_slice(&spa.octets());
            return Ok(true);
        }
        Ok(false)
    }

    /// Neighbour solicitation / advertisement on the underlay (RFC 4861): learn, and
    /// answer solicitations for our VTEP IP in place. Ok(true) when `p` became an NA.
    fn handle_nd(&mut self, p: &mut Packet, now: u64) -> Result<bool, DecapDrop> {
        let IpAddr::V6(our) = self.cfg.ip else {
            return Err(DecapDrop::Ethertype);
        };
        let d = p.data();
        let Ok(ip) = Ipv6HeaderSlice::from_slice(&d[ETHERNET_HEADER_LEN..]) else {
            return Err(DecapDrop::BadControl);
        };
        let plen = ip.payload_length() as usize;
        let icmp_start = ETHERNET_HEADER_LEN + 40;
        if plen < 24 || icmp_start + plen > d.len() || ip.hop_limit() != 255 {
            return Err(DecapDrop::BadControl);
        }
        let icmp = &d[icmp_start..icmp_start + plen];
        let (src, dst) = (ip.source(), ip.destination());
        let acc = checksum::pseudo_header_v6(&src, &dst, IP_PROTO_ICMPV6, plen as u32);
        if checksum::fold(checksum::sum(icmp, acc)) != 0xffff || icmp[1] != 0 {
            return Err(DecapDrop::BadControl);
        }
        let mut target = [0u8; 16];
        target.copy_from_slice(&icmp[8..24]);
        let target = Ipv6Addr::from(target);
        let eth_src = mac6(&d[6..12]);
        let src = Ipv6Addr::from(src);
        if icmp[0] == ICMPV6_NA {
            let ip = IpAddr::V6(target);
            let k = ip_key(&ip);
            if self.neighbours.contains_key(&k) || self.resolving.contains_key(&k) {
                self.learn_neighbour(ip, eth_src, now);
            }
            return Ok(false);
        }
        // Neighbour solicitation.
        if target != our {
            return Ok(false);
        }
        if !src.is_unspecified() {
            self.learn_neighbour(IpAddr::V6(src), eth_src, now);
        }
        if !self.cfg.answer_neighbour_discovery {
            return Ok(false);
        }
        let (dst, flags) = if src.is_unspecified() {
            (
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                control::NA_OVERRIDE,
            )
        } else {
            (src, control::NA_SOLICITED | control::NA_OVERRIDE)
        };
        let dst_mac = if src.is_unspecified() {
            crate::wire::ipv6_multicast_mac(dst.octets())
        } else {
            eth_src
        };
        p.truncate(0);
        if p.set_len(control::ND_LEN).is_err() {
            return Err(DecapDrop::BadControl);
        }
        control::emit_na(p.data_mut(), self.cfg.mac, dst_mac, our, dst, flags);
        Ok(true)
    }
}

/// A hash of the inner flow for the UDP source port (RFC 7348 §5): MACs, EtherType, and
/// for IPv4/IPv6 the addresses, protocol and (first fragment only) TCP/UDP/SCTP ports.
/// `f` is at least 14 bytes long.
#[inline]
fn flow_hash(f: &[u8]) -> u32 {
    #[inline]
    fn mix(h: u64, v: u64) -> u64 {
        let h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }
    let w0 = u64::from_le_bytes([f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]]);
    let w1 = u64::from_le_bytes([f[8], f[9], f[10], f[11], f[12], f[13], 0, 0]);
    let mut h = mix(mix(0x2545_f491_4f6c_dd1d, w0), w1);
    let et = u16::from_be_bytes([f[12], f[13]]);
    let ports = |proto: u8, at: usize| -> Option<u64> {
        if !matches!(proto, 6 | 17 | 132) {
            return None;
        }
        let p = f.get(at..at + 4)?;
        Some(u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as u64)
    };
    if et == ETHERTYPE_IPV4 && f.len() >= 34 {
        let ihl = (f[14] & 0x0f) as usize * 4;
        let proto = f[23];
        let frag = u16::from_be_bytes([f[20], f[21]]) & 0x1fff;
        let a = u64::from_le_bytes([f[26], f[27], f[28], f[29], f[30], f[31], f[32], f[33]]);
        h = mix(h, a ^ ((proto as u64) << 56));
        if frag == 0
            && let Some(p) = ports(proto, 14 + ihl)
        {
            h = mix(h, p);
        }
    } else if et == ETHERTYPE_IPV6 && f.len() >= 54 {
        for c in f[22..54].chunks_exact(8) {
            h = mix(
                h,
                u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            );
        }
        let nh = f[20];
        h = mix(h, nh as u64);
        if let Some(p) = ports(nh, 54) {
            h = mix(h, p);
        }
    }
    (h ^ (h >> 32)) as u32
}

/// Appends `len` bytes to empty packet `p` and lets `emit` write them; false when the
/// frame has no room (cannot happen with pool frames of 2048 bytes or more).
fn emit_into(p: &mut Packet, len: usize, emit: impl FnOnce(&mut [u8])) -> bool {
    match p.append(len) {
        Ok(b) => {
            emit(b);
            true
        }
        Err(_) => false,
    }
}

impl Brick for Vtep {
    fn kind(&self) -> &'static str {
        "vtep"
    }

    fn poles(&self) -> Poles {
        Poles::Multipole {
            west: MAX_VNIS,
            east: 1,
        }
    }

    fn burst(
        &mut self,
        from: Side,
        edge: usize,
        pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        match from {
            Side::West => self.encapsulate_burst(edge, pkts, out),
            Side::East => self.decapsulate_burst(pkts, out),
        }
        Ok(())
    }

    fn pollable(&self) -> bool {
        true
    }

    /// Sends queued control frames (IGMP/MLD reports, ARP/NS requests) and ages the FDB
    /// about once a second.
    fn poll(&mut self, out: &mut Emit) -> Result<usize, BrickError> {
        let mut n = 0;
        if !self.ctrl.is_empty() {
            let mut east = Burst::new();
            while let Some(p) = self.ctrl.pop() {
                n += 1;
                self.push_east(&mut east, out, p);
            }
            out.send(Side::East, 0, east);
        }
        let now = self.clock.now_ns();
        if now >= self.next_sweep_ns {
            self.next_sweep_ns = now + RESOLVE_INTERVAL_NS;
            self.age();
        }
        Ok(n)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.c;
        let mut v = vec![
            ("encapsulated", c.encapsulated),
            ("flood_extra_copies", c.flood_extra_copies),
            ("decapsulated", c.decapsulated),
            ("underlay_control", c.underlay_control),
            ("nd_answers", c.nd_answers),
            ("nd_requests", c.nd_requests),
            ("group_reports", c.group_reports),
            ("fdb_learned", c.fdb_learned),
            ("fdb_full", c.fdb_full),
            ("fdb_entries", self.fdb.len() as u64),
            ("aged", c.aged),
            ("control_pool_empty", c.control_pool_empty),
        ];
        v.extend(DecapDrop::ALL.iter().map(|r| (r.name(), c.decap_drop(*r))));
        v.extend(EncapDrop::ALL.iter().map(|r| (r.name(), c.encap_drop(*r))));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brick::Dest;
    use crate::packet::PoolConfig;
    use etherparse::{Ipv4Header, PacketBuilder, UdpHeader};

    const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
    const VM1: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
    const VM2: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 0x02];
    const BCAST: [u8; 6] = [0xff; 6];

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pool(n: u32) -> Pool {
        Pool::new(PoolConfig {
            frame_count: n,
            ..Default::default()
        })
        .unwrap()
    }

    fn vtep4(pool: &Pool) -> Vtep {
        Vtep::new(pool.clone(), VtepConfig::new(ip("10.0.0.1"), OUR_MAC))
            .unwrap()
            .with_clock(Clock::manual())
    }

    fn vtep6(pool: &Pool) -> Vtep {
        Vtep::new(pool.clone(), VtepConfig::new(ip("fd00::1"), OUR_MAC))
            .unwrap()
            .with_clock(Clock::manual())
    }

    /// An inner Ethernet/IPv4/UDP frame of 64 bytes.
    fn inner(dst: [u8; 6], src: [u8; 6], sport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(src, dst)
            .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
            .udp(sport, 7);
        let mut v = Vec::new();
        b.write(&mut v, &[0x55; 22]).unwrap();
        assert_eq!(v.len(), 64);
        v
    }

    fn vxlan_payload(vni: u32, inner: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        VxlanPacket::new_unchecked(&mut v[..]).set_header(vni);
        v.extend_from_slice(inner);
        v
    }

    /// A VXLAN frame over IPv4 built by etherparse (independent of our encapsulation).
    fn outer4(src: &str, dst: &str, dport: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
            panic!()
        };
        let b = PacketBuilder::ethernet2(PEER_MAC, OUR_MAC)
            .ipv4(s.octets(), d.octets(), 64)
            .udp(50000, dport);
        let mut v = Vec::new();
        b.write(&mut v, &vxlan_payload(vni, inner)).unwrap();
        v
    }

    fn outer6(src: &str, dst: &str, vni: u32, inner: &[u8]) -> Vec<u8> {
        let (IpAddr::V6(s), IpAddr::V6(d)) = (ip(src), ip(dst)) else {
            panic!()
        };
        let b = PacketBuilder::ethernet2(PEER_MAC, OUR_MAC)
            .ipv6(s.octets(), d.octets(), 64)
            .udp(50000, 4789);
        let mut v = Vec::new();
        b.write(&mut v, &vxlan_payload(vni, inner)).unwrap();
        v
    }

    /// Sends `frames` into the VTEP on `side`/`edge`; returns what came out, by
    /// destination, as byte vectors.
    fn run(
        v: &mut Vtep,
        pool: &Pool,
        side: Side,
        edge: usize,
        frames: &[Vec<u8>],
    ) -> Vec<(Dest, Vec<Vec<u8>>)> {
        let mut b = Burst::new();
        for f in frames {
            b.push(pool.packet_from(f).unwrap()).unwrap();
        }
        let mut out = Emit::new();
        v.burst(side, edge, b, &mut out).unwrap();
        assert_eq!(out.empty_bursts(), 0);
        out.take()
            .into_iter()
            .map(|(d, b)| (d, b.iter().map(|p| p.data().to_vec()).collect()))
            .collect()
    }

    fn polled(v: &mut Vtep) -> Vec<Vec<u8>> {
        let mut out = Emit::new();
        v.poll(&mut out).unwrap();
        assert_eq!(out.empty_bursts(), 0);
        out.take()
            .into_iter()
            .flat_map(|(d, b)| {
                assert_eq!(d, Dest::Edge(Side::East, 0));
                b.iter().map(|p| p.data().to_vec()).collect::<Vec<_>>()
            })
            .collect()
    }

    /// Checks an IPv4 VXLAN frame: returns (dst mac, dst ip, sport, vni, inner).
    fn check4(f: &[u8]) -> ([u8; 6], Ipv4Addr, u16, u32, Vec<u8>) {
        assert_eq!(&f[6..12], &OUR_MAC);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let (h, _) = Ipv4Header::from_slice(&f[14..]).unwrap();
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "IPv4 header checksum"
        );
        assert!(h.dont_fragment);
        assert_eq!(h.time_to_live, 64);
        assert_eq!(h.protocol.0, 17);
        assert_eq!(h.source, [10, 0, 0, 1]);
        assert_eq!(h.total_len as usize, f.len() - 14);
        let (u, rest) = UdpHeader::from_slice(&f[34..]).unwrap();
        assert_eq!(u.destination_port, 4789);
        assert!(u.source_port >= 49152);
        assert_eq!(u.length as usize, f.len() - 34);
        assert_eq!(u.checksum, 0, "RFC 7348: zero UDP checksum over IPv4");
        let vx = VxlanPacket::new_checked(rest).unwrap();
        assert_eq!(vx.flags(), 0x08);
        assert_eq!(&rest[1..4], &[0, 0, 0]);
        assert_eq!(rest[7], 0);
        (
            mac6(&f[0..6]),
            Ipv4Addr::from(h.destination),
            u.source_port,
            vx.vni(),
            vx.payload().to_vec(),
        )
    }

    fn check6(f: &[u8], zero_csum: bool) -> ([u8; 6], Ipv6Addr, u16, u32, Vec<u8>) {
        assert_eq!(&f[6..12], &OUR_MAC);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        let ip6 = Ipv6HeaderSlice::from_slice(&f[14..]).unwrap();
        assert_eq!(ip6.next_header().0, 17);
        assert_eq!(ip6.payload_length() as usize, f.len() - 54);
        assert_eq!(ip6.source_addr(), "fd00::1".parse::<Ipv6Addr>().unwrap());
        let (u, rest) = UdpHeader::from_slice(&f[54..]).unwrap();
        if zero_csum {
            assert_eq!(u.checksum, 0);
        } else {
            let want = u
                .calc_checksum_ipv6_raw(ip6.source(), ip6.destination(), rest)
                .unwrap();
            assert_eq!(u.checksum, want, "IPv6 UDP checksum");
            assert_ne!(u.checksum, 0);
        }
        assert_eq!(u.destination_port, 4789);
        assert!(u.source_port >= 49152);
        let vx = VxlanPacket::new_checked(rest).unwrap();
        assert!(vx.has_vni());
        (
            mac6(&f[0..6]),
            ip6.destination_addr(),
            u.source_port,
            vx.vni(),
            vx.payload().to_vec(),
        )
    }

    #[test]
    fn config_errors_are_typed() {
        let p = pool(8);
        assert_eq!(
            Vtep::new(p.clone(), VtepConfig::new(ip("224.0.0.1"), OUR_MAC)).unwrap_err(),
            VtepError::NotUnicast(ip("224.0.0.1"))
        );
        assert!(matches!(
            Vtep::new(p.clone(), VtepConfig::new(ip("10.0.0.1"), BCAST)),
            Err(VtepError::BadMac(_))
        ));
        let mut v = vtep4(&p);
        assert_eq!(
            v.add_vni(0, 1 << 24, Flood::None),
            Err(VtepError::VniRange(1 << 24))
        );
        v.add_vni(0, 42, Flood::None).unwrap();
        assert_eq!(
            v.add_vni(1, 42, Flood::None),
            Err(VtepError::VniInUse { vni: 42, edge: 0 })
        );
        assert_eq!(
            v.add_vni(0, 43, Flood::None),
            Err(VtepError::EdgeInUse { edge: 0, vni: 42 })
        );
        assert!(matches!(
            v.add_vni(1, 43, Flood::Multicast(ip("10.1.1.1"))),
            Err(VtepError::NotMulticast(_))
        ));
        assert!(matches!(
            v.add_vni(1, 43, Flood::List(vec![ip("fd00::2")])),
            Err(VtepError::Family { .. })
        ));
        assert_eq!(v.remove_vni(7), Err(VtepError::NoSuchVni(7)));
        assert_eq!(
            v.add_static(7, VM2, ip("10.0.0.2")),
            Err(VtepError::NoSuchVni(7))
        );
    }

    #[test]
    fn encap_ipv4_static_entry_right_bytes() {
        let p = pool(64);
        let mut v = vtep4(&p);
        v.add_vni(0, 42, Flood::None).unwrap();
        v.set_neighbour(ip("10.0.0.2"), PEER_MAC).unwrap();
        v.add_static(42, VM2, ip("10.0.0.2")).unwrap();
        let f = inner(VM2, VM1, 1000);
        let out = run(&mut v, &p, Side::West, 0, std::slice::from_ref(&f));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, Dest::Edge(Side::East, 0));
        assert_eq!(out[0].1.len(), 1);
        let e = &out[0].1[0];
        assert_eq!(e.len(), 64 + 50);
        let (mac, dst, _, vni, inn) = check4(e);
        assert_eq!(mac, PEER_MAC);
        assert_eq!(dst, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(vni, 42);
        assert_eq!(inn, f);
        assert_eq!(v.stats().encapsulated, 1);
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn frames_over_the_underlay_mtu_are_dropped_and_counted() {
        let p = pool(64);
        let mut cfg = VtepConfig::new(ip("10.0.0.1"), OUR_MAC);
        cfg.next_hop_mac = Some(PEER_MAC);
        cfg.underlay_mtu = Some(1500);
        let mut v = Vtep::new(p.clone(), cfg).unwrap();
        v.add_vni(0, 42, Flood::None).unwrap();
        v.add_vni(1, 43, Flood::Multicast(ip("230.0.0.43")))
            .unwrap();
        v.add_static(42, VM2, ip("10.0.0.2")).unwrap();
        // Inner frame of `len` bytes: outer IP = len + 50 - 14.
        let sized = |len: usize| {
            let mut f = inner(VM2, VM1, 1000);
            f.resize(len, 0);
            f
        };
        let fits = sized(1500 + 14 - 50);
        let over = sized(1500 + 14 - 50 + 1);
        let out = run(&mut v, &p, Side::West, 0, &[fits.clone(), over.clone()]);
        // (The IGMP report joining VNI 43's group leaves with them.)
        let big: Vec<&Vec<u8>> = out
            .iter()
            .flat_map(|(_, fs)| fs)
            .filter(|f| f.len() > 1000)
            .collect();
        assert_eq!(big.len(), 1, "only the frame at the MTU is sent");
        assert_eq!(big[0].len() - 14, 1500, "outer IP packet of 1500 bytes");
        assert_eq!(v.stats().encap_drop(EncapDrop::TooBig), 1);
        // Flooded copies obey the same limit.
        let mut bcast = over.clone();
        bcast[..6].copy_from_slice(&[0xff; 6]);
        let out = run(&mut v, &p, Side::West, 1, &[bcast]);
        assert!(
            out.iter().flat_map(|(_, fs)| fs).all(|f| f.len() < 1000),
            "oversized flood sent"
        );
        assert_eq!(v.stats().encap_drop(EncapDrop::TooBig), 2);
        assert_eq!(p.available(), 64, "dropped frames returned to the pool");
    }

    #[test]
    fn source_port_follows_the_inner_flow() {
        let p = pool(256);
        let mut v = vtep4(&p);
        v.add_vni(0, 42, Flood::None).unwrap();
        v.set_neighbour(ip("10.0.0.2"), PEER_MAC).unwrap();
        v.add_static(42, VM2, ip("10.0.0.2")).unwrap();
        let frames: Vec<Vec<u8>> = (0..32).map(|i| inner(VM2, VM1, 1000 + i)).collect();
        let a = run(&mut v, &p, Side::West, 0, &frames);
        let b = run(&mut v, &p, Side::West, 0, &frames);
        let ports = |o: &Vec<(Dest, Vec<Vec<u8>>)>| -> Vec<u16> {
            o[0].1.iter().map(|f| check4(f).2).collect()
        };
        let (pa, pb) = (ports(&a), ports(&b));
        assert_eq!(pa, pb, "same flow, same source port");
        let distinct: std::collections::HashSet<_> = pa.iter().collect();
        assert!(
            distinct.len() >= 24,
            "32 flows spread over {} ports",
            distinct.len()
        );
        assert!(pa.iter().all(|&p| p >= 49152));
    }

    #[test]
    fn df_off_increments_ip_id() {
        let p = pool(64);
        let mut cfg = VtepConfig::new(ip("10.0.0.1"), OUR_MAC);
        cfg.df = false;
        cfg.next_hop_mac = Some(PEER_MAC);
        let mut v = Vtep::new(p.clone(), cfg).unwrap();
        v.add_vni(0, 5, Flood::None).unwrap();
        v.add_static(5, VM2, ip("10.0.0.9")).unwrap();
        let out = run(
            &mut v,
            &p,
            Side::West,
            0,
            &[inner(VM2, VM1, 1), inner(VM2, VM1, 1)],
        );
        let f = &out[0].1;
        let h0 = Ipv4Header::from_slice(&f[0][14..]).unwrap().0;
        let h1 = Ipv4Header::from_slice(&f[1][14..]).unwrap().0;
        assert!(!h0.dont_fragment);
        assert_eq!(h1.identification, h0.identification.wrapping_add(1));
        assert_eq!(h0.header_checksum, h0.calc_header_checksum());
        assert_eq!(&f[0][0..6], &PEER_MAC, "configured next hop");
    }

    #[test]
    fn encap_ipv6_valid_udp_checksum_or_zero_when_configured() {
        for zero in [false, true] {
            let p = pool(64);
            let mut cfg = VtepConfig::new(ip("fd00::1"), OUR_MAC);
            cfg.udp6_zero_checksum_tx = zero;
            let mut v = Vtep::new(p.clone(), cfg).unwrap();
            v.add_vni(3, 0xabcdef, Flood::None).unwrap();
            v.set_neighbour(ip("fd00::2"), PEER_MAC).unwrap();
            v.add_static(0xabcdef, VM2, ip("fd00::2")).unwrap();
            for len in [64usize, 65, 1400] {
                let mut f = inner(VM2, VM1, 9);
                f.resize(len, 0x3c);
                let out = run(&mut v, &p, Side::West, 3, std::slice::from_ref(&f));
                let e = &out[0].1[0];
                assert_eq!(e.len(), len + 70);
                let (mac, dst, _, vni, inn) = check6(e, zero);
                assert_eq!(mac, PEER_MAC);
                assert_eq!(dst, "fd00::2".parse::<Ipv6Addr>().unwrap());
                assert_eq!(vni, 0xabcdef);
                assert_eq!(inn, f);
            }
        }
    }

    #[test]
    fn decap_delivers_on_the_vni_edge_and_learns() {
        let p = pool(64);
        let mut v = vtep4(&p);
        v.add_vni(2, 42, Flood::None).unwrap();
        v.add_vni(5, 43, Flood::None).unwrap();
        let f = inner(VM1, VM2, 1);
        let out = run(
            &mut v,
            &p,
            Side::East,
            0,
            &[outer4("10.0.0.2", "10.0.0.1", 4789, 43, &f)],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, Dest::Edge(Side::West, 5));
        assert_eq!(out[0].1, vec![f.clone()]);
        let fdb = v.fdb();
        assert_eq!(fdb.len(), 1);
        assert_eq!(
            (
                fdb[0].vni,
                fdb[0].mac,
                fdb[0].remote,
                fdb[0].remote_mac,
                fdb[0].is_static
            ),
            (43, VM2, ip("10.0.0.2"), Some(PEER_MAC), false)
        );
        // The reply to the learned MAC goes unicast to the learned VTEP and MAC.
        let out = run(&mut v, &p, Side::West, 5, &[inner(VM2, VM1, 2)]);
        let (mac, dst, _, vni, _) = check4(&out[0].1[0]);
        assert_eq!((mac, dst, vni), (PEER_MAC, Ipv4Addr::new(10, 0, 0, 2), 43));
        // The same MAC on VNI 42 is unknown there: not learned across VNIs.
        let out = run(&mut v, &p, Side::West, 2, &[inner(VM2, VM1, 2)]);
        assert!(out.is_empty());
        assert_eq!(v.stats().encap_drop(EncapDrop::NoFlood), 1);
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn decap_ipv6_checks_checksum() {
        let p = pool(64);
        let mut v = vtep6(&p);
        v.add_vni(0, 42, Flood::None).unwrap();
        let f = inner(VM1, VM2, 1);
        let good = outer6("fd00::2", "fd00::1", 42, &f);
        let out = run(&mut v, &p, Side::East, 0, std::slice::from_ref(&good));
        assert_eq!(out[0].1, vec![f.clone()]);
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 1;
        let mut zero = good.clone();
        zero[60] = 0;
        zero[61] = 0;
        assert!(run(&mut v, &p, Side::East, 0, &[bad, zero.clone()]).is_empty());
        assert_eq!(v.stats().decap_drop(DecapDrop::UdpChecksum), 2);
        // Zero accepted only when configured (RFC 6936).
        let mut cfg = VtepConfig::new(ip("fd00::1"), OUR_MAC);
        cfg.udp6_zero_checksum_rx = true;
        let mut v = Vtep::new(p.clone(), cfg).unwrap();
        v.add_vni(0, 42, Flood::None).unwrap();
        assert_eq!(run(&mut v, &p, Side::East, 0, &[zero])[0].1, vec![f]);
    }

    /// Every decapsulation check, one frame each: dropped, counted under its reason, nothing
    /// emitted.
    #[test]
    fn decap_drops_each_reason() {
        let p = pool(64);
        let mut v = vtep4(&p);
        v.add_vni(0, 42, Flood::None).unwrap();
        let f = inner(VM1, VM2, 1);
        let good = outer4("10.0.0.2", "10.0.0.1", 4789, 42, &f);
        let mut cases: Vec<(DecapDrop, Vec<u8>)> = Vec::new();
        cases.push((DecapDrop::Runt, good[..13].to_vec()));
        let mut x = good.clone();
        x[12] = 0x88;
        cases.push((DecapDrop::Ethertype, x));
        let mut x = good.clone();
        x[0..6].copy_from_slice(&[0x02, 9, 9, 9, 9, 9]);
        cases.push((DecapDrop::NotForUs, x));
        cases.push((
            DecapDrop::NotForUs,
            outer4("10.0.0.2", "10.0.0.7", 4789, 42, &f),
        ));
        cases.push((
            DecapDrop::NotForUs,
            outer4("10.0.0.2", "239.1.1.1", 4789, 42, &f),
        ));
        let mut x = good.clone();
        x[14] = 0x44; // IHL 4
        cases.push((DecapDrop::IpMalformed, x));
        cases.push((DecapDrop::IpMalformed, good[..good.len() - 1].to_vec()));
        let mut x = good.clone();
        x[24] ^= 0xff;
        cases.push((DecapDrop::IpChecksum, x));
        let mut x = good.clone();
        x[20] |= 0x20; // MF
        let c = checksum::checksum(&{
            let mut h = x[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        x[24..26].copy_from_slice(&c.to_be_bytes());
        cases.push((DecapDrop::Fragment, x));
        let mut x = good.clone();
        x[23] = 6;
        let c = checksum::checksum(&{
            let mut h = x[14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        x[24..26].copy_from_slice(&c.to_be_bytes());
        cases.push((DecapDrop::NotUdp, x));
        cases.push((
            DecapDrop::UdpPort,
            outer4("10.0.0.2", "10.0.0.1", 4790, 42, &f),
        ));
        let mut x = good.clone();
        x[38..40].copy_from_slice(&9999u16.to_be_bytes());
        cases.push((DecapDrop::UdpLength, x));
        let mut x = good.clone();
        x[40] ^= 0x5a;
        cases.push((DecapDrop::UdpChecksum, x));
        let mut x = good.clone();
        x[40] = 0;
        x[41] = 0; // zero UDP checksum is fine over IPv4 ...
        x[42] = 0; // ... but the I flag is missing
        cases.push((DecapDrop::VxlanFlags, x));
        cases.push((
            DecapDrop::UnknownVni,
            outer4("10.0.0.2", "10.0.0.1", 4789, 7, &f),
        ));
        cases.push((
            DecapDrop::InnerRunt,
            outer4("10.0.0.2", "10.0.0.1", 4789, 42, &f[..13]),
        ));
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&PEER_MAC);
        arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0]);
        cases.push((DecapDrop::BadControl, arp));
        for (reason, frame) in cases {
            let before = *v.stats();
            let out = run(&mut v, &p, Side::East, 0, &[frame]);
            assert!(out.is_empty(), "{reason:?}: nothing may leave");
            assert_eq!(
                v.stats().decap_drop(reason),
                before.decap_drop(reason) + 1,
                "{reason:?}"
            );
            assert_eq!(
                v.stats().decap_dropped(),
                before.decap_dropped() + 1,
                "{reason:?}"
            );
        }
        assert_eq!(v.stats().decapsulated, 0);
        assert!(v.fdb().is_empty(), "nothing learned from dropped frames");
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn multicast_flooding_joins_floods_and_leaves_ipv4() {
        let p = pool(64);
        let mut v = vtep4(&p);
        v.add_vni(0, 42, Flood::Multicast(ip("239.1.1.42")))
            .unwrap();
        let ctrl = polled(&mut v);
        assert_eq!(ctrl.len(), 1);
        let j = &ctrl[0];
        assert_eq!(&j[0..6], &[0x01, 0x00, 0x5e, 0x01, 0x01, 0x2a]);
        let (h, rest) = Ipv4Header::from_slice(&j[14..]).unwrap();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!((h.time_to_live, h.protocol.0), (1, 2));
        assert_eq!(h.options.as_slice(), &[0x94, 4, 0, 0], "router alert");
        assert_eq!(h.destination, [239, 1, 1, 42]);
        assert_eq!(rest[0], 0x16, "IGMPv2 membership report");
        assert_eq!(&rest[4..8], &[239, 1, 1, 42]);
        assert_eq!(checksum::checksum(&rest[..8]), 0);
        // A broadcast from the VM goes to the group, with the group's MAC.
        let f = inner(BCAST, VM1, 1);
        let out = run(&mut v, &p, Side::West, 0, std::slice::from_ref(&f));
        let (mac, dst, _, vni, inn) = check4(&out[0].1[0]);
        assert_eq!(mac, [0x01, 0x00, 0x5e, 0x01, 0x01, 0x2a]);
        assert_eq!((dst, vni), (Ipv4Addr::new(239, 1, 1, 42), 42));
        assert_eq!(inn, f);
        // Frames sent to the group are accepted.
        let mut g = outer4("10.0.0.2", "239.1.1.42", 4789, 42, &inner(BCAST, VM2, 1));
        g[0..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x01, 0x01, 0x2a]);
        assert_eq!(run(&mut v, &p, Side::East, 0, &[g.clone()]).len(), 1);
        v.remove_vni(42).unwrap();
        let ctrl = polled(&mut v);
        assert_eq!(ctrl.len(), 1);
        let (h, rest) = Ipv4Header::from_slice(&ctrl[0][14..]).unwrap();
        assert_eq!(h.destination, [224, 0, 0, 2]);
        assert_eq!(rest[0], 0x17, "IGMPv2 leave group");
        assert!(v.groups().is_empty());
        // After leaving, the group is not ours any more.
        assert!(run(&mut v, &p, Side::East, 0, &[g]).is_empty());
        assert_eq!(v.stats().decap_drop(DecapDrop::NotForUs), 1);
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn multicast_flooding_ipv6_mld() {
        let p = pool(64);
        let mut v = vtep6(&p);
        v.add_vni(0, 42, Flood::Multicast(ip("ff05::42"))).unwrap();
        let ctrl = polled(&mut v);
        assert_eq!(ctrl.len(), 1);
        let m = &ctrl[0];
        assert_eq!(&m[0..6], &[0x33, 0x33, 0, 0, 0, 0x16]);
        let ip6 = Ipv6HeaderSlice::from_slice(&m[14..]).unwrap();
        assert_eq!(ip6.hop_limit(), 1);
        assert_eq!(ip6.next_header().0, 0, "hop-by-hop with router alert");
        assert!(ip6.source_addr().is_unicast_link_local());
        assert_eq!(
            ip6.destination_addr(),
            "ff02::16".parse::<Ipv6Addr>().unwrap()
        );
        let icmp = &m[62..];
        assert_eq!(icmp[0], 143);
        assert_eq!(icmp[8], 4, "CHANGE_TO_EXCLUDE_MODE: join");
        assert_eq!(
            Ipv6Addr::from(<[u8; 16]>::try_from(&icmp[12..28]).unwrap()),
            "ff05::42".parse::<Ipv6Addr>().unwrap()
        );
        let acc = checksum::pseudo_header_v6(&ip6.source(), &ip6.destination(), 58, 28);
        assert_eq!(
            checksum::fold(checksum::sum(icmp, acc)),
            0xffff,
            "ICMPv6 checksum"
        );
        let out = run(&mut v, &p, Side::West, 0, &[inner(BCAST, VM1, 1)]);
        let (mac, dst, _, _, _) = check6(&out[0].1[0], false);
        assert_eq!(mac, [0x33, 0x33, 0, 0, 0, 0x42]);
        assert_eq!(dst, "ff05::42".parse::<Ipv6Addr>().unwrap());
        v.remove_vni(42).unwrap();
        let ctrl = polled(&mut v);
        assert_eq!(ctrl[0][62 + 8], 3, "CHANGE_TO_INCLUDE_MODE: leave");
    }

    #[test]
    fn head_end_replication_resolves_then_copies() {
        let p = pool(64);
        let mut v = vtep4(&p);
        let remotes = vec![ip("10.0.0.2"), ip("10.0.0.3"), ip("10.0.0.4")];
        v.add_vni(0, 42, Flood::List(remotes.clone())).unwrap();
        // ARP requests for the three remotes are queued on add.
        let reqs = polled(&mut v);
        assert_eq!(reqs.len(), 3);
        let mut asked: Vec<[u8; 4]> = Vec::new();
        for r in &reqs {
            assert_eq!(&r[0..6], &BCAST);
            let a = ArpPacketSlice::from_slice(&r[14..]).unwrap();
            assert_eq!(a.operation().0, 1);
            assert_eq!(a.sender_hw_addr(), &OUR_MAC);
            assert_eq!(a.sender_protocol_addr(), &[10, 0, 0, 1]);
            asked.push(a.target_protocol_addr().try_into().unwrap());
        }
        asked.sort();
        assert_eq!(asked, vec![[10, 0, 0, 2], [10, 0, 0, 3], [10, 0, 0, 4]]);
        // Unresolved: dropped and counted per copy.
        let out = run(&mut v, &p, Side::West, 0, &[inner(BCAST, VM1, 1)]);
        assert!(out.is_empty(), "requests are rate limited, copies dropped");
        assert_eq!(v.stats().encap_drop(EncapDrop::NoNeighbour), 3);
        // The kernel of each remote answers the ARP request.
        let replies: Vec<Vec<u8>> = (2..=4u8)
            .map(|i| {
                let mut r = reqs[0].clone();
                let m = [0x02, 0, 0, 0, 0, i];
                r[0..6].copy_from_slice(&OUR_MAC);
                r[6..12].copy_from_slice(&m);
                r[20..22].copy_from_slice(&[0, 2]);
                r[22..28].copy_from_slice(&m);
                r[28..32].copy_from_slice(&[10, 0, 0, i]);
                r[32..38].copy_from_slice(&OUR_MAC);
                r[38..42].copy_from_slice(&[10, 0, 0, 1]);
                r
            })
            .collect();
        assert!(run(&mut v, &p, Side::East, 0, &replies).is_empty());
        assert_eq!(v.stats().underlay_control, 3);
        assert_eq!(v.neighbours().len(), 3);
        let f = inner(BCAST, VM1, 1);
        let out = run(&mut v, &p, Side::West, 0, std::slice::from_ref(&f));
        assert_eq!(out[0].1.len(), 3);
        let mut got: Vec<([u8; 6], Ipv4Addr)> = out[0]
            .1
            .iter()
            .map(|e| {
                let (mac, dst, _, vni, inn) = check4(e);
                assert_eq!((vni, &inn), (42, &f));
                (mac, dst)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            (2..=4u8)
                .map(|i| ([0x02, 0, 0, 0, 0, i], Ipv4Addr::new(10, 0, 0, i)))
                .collect::<Vec<_>>()
        );
        let s = v.stats();
        // 2 frames in on WEST + 2 * 2 extra copies = 3 sent + 3 dropped.
        assert_eq!(2 + s.flood_extra_copies, s.encapsulated + s.encap_dropped());
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn answers_arp_for_the_vtep_ip() {
        let p = pool(16);
        let mut v = vtep4(&p);
        let mut req = vec![0xff; 6];
        req.extend_from_slice(&PEER_MAC);
        req.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&PEER_MAC);
        req.extend_from_slice(&[10, 0, 0, 2]);
        req.extend_from_slice(&[0; 6]);
        req.extend_from_slice(&[10, 0, 0, 1]);
        req.resize(60, 0);
        let out = run(&mut v, &p, Side::East, 0, std::slice::from_ref(&req));
        assert_eq!(out[0].0, Dest::Edge(Side::East, 0));
        let r = &out[0].1[0];
        assert_eq!(&r[0..6], &PEER_MAC);
        assert_eq!(&r[6..12], &OUR_MAC);
        let a = ArpPacketSlice::from_slice(&r[14..]).unwrap();
        assert_eq!(a.operation().0, 2);
        assert_eq!(a.sender_hw_addr(), &OUR_MAC);
        assert_eq!(a.sender_protocol_addr(), &[10, 0, 0, 1]);
        assert_eq!(a.target_hw_addr(), &PEER_MAC);
        assert_eq!(a.target_protocol_addr(), &[10, 0, 0, 2]);
        assert_eq!(v.neighbours(), vec![(ip("10.0.0.2"), PEER_MAC, false)]);
        // A request for another IP is not answered.
        req[41] = 9;
        assert!(run(&mut v, &p, Side::East, 0, &[req]).is_empty());
        assert_eq!(v.stats().nd_answers, 1);
        assert_eq!(v.stats().underlay_control, 2);
    }

    #[test]
    fn answers_neighbour_solicitation_for_the_vtep_ip() {
        let p = pool(16);
        let mut v = vtep6(&p);
        // A solicitation built by our own builder, from the peer, checked by hand.
        let mut pk = p.alloc().unwrap();
        let IpAddr::V6(peer) = ip("fd00::2") else {
            panic!()
        };
        let IpAddr::V6(our) = ip("fd00::1") else {
            panic!()
        };
        control::emit_ns(pk.append(control::ND_LEN).unwrap(), PEER_MAC, peer, our);
        let ns = pk.data().to_vec();
        drop(pk);
        assert_eq!(&ns[0..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
        let out = run(&mut v, &p, Side::East, 0, &[ns]);
        let na = &out[0].1[0];
        assert_eq!(&na[0..6], &PEER_MAC);
        let ip6 = Ipv6HeaderSlice::from_slice(&na[14..]).unwrap();
        assert_eq!(ip6.hop_limit(), 255);
        assert_eq!(ip6.source_addr(), our);
        assert_eq!(ip6.destination_addr(), peer);
        let icmp = &na[54..];
        assert_eq!(icmp[0], 136);
        assert_eq!(icmp[4], 0x60, "solicited + override");
        assert_eq!(&icmp[8..24], &our.octets());
        assert_eq!(
            &icmp[24..32],
            &[2, 1, 2, 0, 0, 0, 0, 1],
            "target link-layer address"
        );
        let acc = checksum::pseudo_header_v6(&ip6.source(), &ip6.destination(), 58, 32);
        assert_eq!(checksum::fold(checksum::sum(icmp, acc)), 0xffff);
        assert_eq!(v.neighbours(), vec![(ip("fd00::2"), PEER_MAC, false)]);
    }

    #[test]
    fn fdb_ages_and_is_limited() {
        let p = pool(128);
        let clock = Clock::manual();
        let mut cfg = VtepConfig::new(ip("10.0.0.1"), OUR_MAC);
        cfg.fdb_max = 10;
        cfg.fdb_aging = Duration::from_secs(30);
        let mut v = Vtep::new(p.clone(), cfg).unwrap().with_clock(clock.clone());
        v.add_vni(0, 42, Flood::None).unwrap();
        v.add_static(42, [0x02, 0xcc, 0, 0, 0, 1], ip("10.0.0.3"))
            .unwrap();
        let frames: Vec<Vec<u8>> = (0..15u8)
            .map(|i| {
                outer4(
                    "10.0.0.2",
                    "10.0.0.1",
                    4789,
                    42,
                    &inner(VM1, [0x02, 0xdd, 0, 0, 0, i], 1),
                )
            })
            .collect();
        let out = run(&mut v, &p, Side::East, 0, &frames);
        assert_eq!(out[0].1.len(), 15, "frames still pass when the FDB is full");
        assert_eq!(v.fdb().len(), 11, "10 learned + 1 static");
        assert_eq!(v.stats().fdb_full, 5);
        clock.advance(Duration::from_secs(20));
        // Refresh one learned MAC.
        run(&mut v, &p, Side::East, 0, &frames[..1]);
        clock.advance(Duration::from_secs(20));
        assert_eq!(v.fdb().len(), 2, "expired entries are not dumped");
        assert_eq!(
            v.age(),
            9,
            "9 MACs aged out (the refreshed one and its neighbour stay)"
        );
        let fdb = v.fdb();
        assert!(fdb.iter().any(|e| e.is_static));
        assert!(fdb.iter().any(|e| e.mac == [0x02, 0xdd, 0, 0, 0, 0]));
        // Room again: new MACs are learned.
        run(&mut v, &p, Side::East, 0, &frames[14..]);
        assert_eq!(v.fdb().len(), 3);
        assert!(v.remove_fdb(42, [0x02, 0xdd, 0, 0, 0, 14]));
        assert_eq!(v.fdb().len(), 2);
    }

    #[test]
    fn vni_isolation_same_macs_two_vnis() {
        let p = pool(64);
        let mut v = vtep4(&p);
        v.add_vni(0, 100, Flood::None).unwrap();
        v.add_vni(1, 200, Flood::None).unwrap();
        let a = outer4("10.0.0.2", "10.0.0.1", 4789, 100, &inner(VM1, VM2, 1));
        let b = outer4("10.0.0.3", "10.0.0.1", 4789, 200, &inner(VM1, VM2, 1));
        let out = run(&mut v, &p, Side::East, 0, &[a, b]);
        let mut by_edge: Vec<_> = out.iter().map(|(d, f)| (*d, f.len())).collect();
        by_edge.sort_by_key(|(d, _)| format!("{d:?}"));
        assert_eq!(
            by_edge,
            vec![
                (Dest::Edge(Side::West, 0), 1),
                (Dest::Edge(Side::West, 1), 1)
            ]
        );
        let fdb = v.fdb();
        assert_eq!(fdb.len(), 2);
        assert_eq!((fdb[0].vni, fdb[0].remote), (100, ip("10.0.0.2")));
        assert_eq!((fdb[1].vni, fdb[1].remote), (200, ip("10.0.0.3")));
        // Each VNI's reply goes to its own remote with its own VNI.
        let o = run(&mut v, &p, Side::West, 1, &[inner(VM2, VM1, 1)]);
        let (_, dst, _, vni, _) = check4(&o[0].1[0]);
        assert_eq!((dst, vni), (Ipv4Addr::new(10, 0, 0, 3), 200));
        let o = run(&mut v, &p, Side::West, 0, &[inner(VM2, VM1, 1)]);
        let (_, dst, _, vni, _) = check4(&o[0].1[0]);
        assert_eq!((dst, vni), (Ipv4Addr::new(10, 0, 0, 2), 100));
        // Edge without a VNI.
        assert!(run(&mut v, &p, Side::West, 7, &[inner(VM2, VM1, 1)]).is_empty());
        assert_eq!(v.stats().encap_drop(EncapDrop::NoVni), 1);
    }

    /// Deterministic xorshift64* generator for the hostile-frame test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Feeds many random, truncated and mutated frames through the brick on both sides
    /// (IPv4 and IPv6 underlay): no panic, every frame accounted for by the counters, every
    /// frame back in the pool. CI runs this; `cargo fuzz run vtep_decap` goes further.
    #[test]
    fn hostile_frames_never_panic_and_counters_add_up() {
        for v6 in [false, true] {
            let p = pool(512);
            let mut v = if v6 { vtep6(&p) } else { vtep4(&p) };
            let group = if v6 { ip("ff05::1") } else { ip("239.0.0.1") };
            v.add_vni(0, 42, Flood::Multicast(group)).unwrap();
            v.add_vni(
                1,
                43,
                Flood::List(vec![if v6 { ip("fd00::9") } else { ip("10.0.0.9") }]),
            )
            .unwrap();
            let _ = polled(&mut v);
            let f = inner(VM1, VM2, 1);
            let seeds: Vec<Vec<u8>> = if v6 {
                vec![
                    outer6("fd00::2", "fd00::1", 42, &f),
                    outer6("fd00::2", "fd00::1", 43, &f),
                ]
            } else {
                vec![
                    outer4("10.0.0.2", "10.0.0.1", 4789, 42, &f),
                    outer4("10.0.0.2", "10.0.0.1", 4789, 43, &f),
                ]
            };
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ v6 as u64);
            let (mut east_in, mut west_in) = (0u64, 0u64);
            for round in 0..400 {
                let mut frames = Vec::new();
                for _ in 0..1 + rng.below(64) {
                    let mut x = seeds[rng.below(seeds.len())].clone();
                    match rng.below(5) {
                        0 => {
                            let n = rng.below(x.len() + 1);
                            x.truncate(n);
                        }
                        1 => {
                            for _ in 0..1 + rng.below(4) {
                                let i = rng.below(x.len());
                                x[i] = rng.next() as u8;
                            }
                        }
                        2 => {
                            let n = rng.below(200);
                            x = (0..n).map(|_| rng.next() as u8).collect();
                        }
                        3 => {
                            // Corrupt a length field.
                            let at = [16usize, 18, 38, 58][rng.below(4)];
                            if at + 1 < x.len() {
                                x[at] = rng.next() as u8;
                                x[at + 1] = rng.next() as u8;
                            }
                        }
                        _ => {}
                    }
                    frames.push(x);
                }
                let side = if round % 3 == 2 {
                    Side::West
                } else {
                    Side::East
                };
                let edge = if side == Side::West { rng.below(3) } else { 0 };
                let _ = run(&mut v, &p, side, edge, &frames);
                match side {
                    Side::East => east_in += frames.len() as u64,
                    Side::West => west_in += frames.len() as u64,
                }
            }
            let s = *v.stats();
            assert_eq!(
                east_in,
                s.decapsulated + s.underlay_control + s.decap_dropped(),
                "every underlay frame decapsulated, consumed or dropped by reason"
            );
            assert_eq!(
                west_in + s.flood_extra_copies,
                s.encapsulated + s.encap_dropped()
            );
            assert!(s.decapsulated > 0 && s.decap_dropped() > 0 && s.encapsulated > 0);
            let _ = polled(&mut v);
            assert_eq!(p.available(), 512, "no frame leaked");
        }
    }
}

#[cfg(test)]
mod corpus_tests {
    //! Runs the `vtep_decap` fuzz seeds (`fuzz/seeds/vtep_decap`, in git) and whatever a
    //! local `cargo fuzz run` put in `fuzz/corpus/vtep_decap` through the brick the way the fuzz target does, with every
    //! truncation and single-byte corruption of each seed, so CI exercises the fuzz
    //! target's checks on stable.

    use super::*;
    use crate::packet::PoolConfig;

    fn vteps(pool: &Pool) -> Vec<Vtep> {
        (0..4u8)
            .map(|cfg| {
                let v6 = cfg & 1 != 0;
                let ip: IpAddr = if v6 { "fd00::1" } else { "10.0.0.1" }.parse().unwrap();
                let mut c = VtepConfig::new(ip, [0x02, 0, 0, 0, 0, 1]);
                c.udp6_zero_checksum_rx = cfg & 2 != 0;
                let mut v = Vtep::new(pool.clone(), c).unwrap();
                let group: IpAddr = if v6 { "ff05::1" } else { "239.0.0.1" }.parse().unwrap();
                let remote: IpAddr = if v6 { "fd00::2" } else { "10.0.0.2" }.parse().unwrap();
                v.add_vni(0, 42, Flood::Multicast(group)).unwrap();
                v.add_vni(1, 43, Flood::List(vec![remote])).unwrap();
                // Send (and drop) the queued join and ARP/NS request.
                v.poll(&mut Emit::new()).unwrap();
                v
            })
            .collect()
    }

    #[test]
    fn fuzz_corpus_and_its_mutations() {
        let read = |dir: &str| -> Vec<Vec<u8>> {
            match std::fs::read_dir(dir) {
                Ok(d) => d
                    .map(|e| std::fs::read(e.unwrap().path()).unwrap())
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        let seeds = read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/vtep_decap"
        ));
        assert!(
            seeds.len() >= 5,
            "the seeds are in git (fuzz/seeds/vtep_decap)"
        );
        let mut inputs = seeds.clone();
        // Inputs a local `cargo fuzz run` found (not in git).
        inputs.extend(read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/vtep_decap"
        )));
        for s in &seeds {
            for n in 1..s.len() {
                inputs.push(s[..n].to_vec());
            }
            for i in 1..s.len() {
                for x in [0x00u8, 0xff, 0x80, 0x01] {
                    let mut m = s.clone();
                    m[i] ^= x | 1;
                    inputs.push(m);
                }
            }
        }
        let pool = Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .unwrap();
        let mut vs = vteps(&pool);
        let mut fed = [0u64; 4];
        let mut decapsulated_seeds = 0;
        for (k, inp) in inputs.iter().enumerate() {
            let Some((&sel, frame)) = inp.split_first() else {
                continue;
            };
            let i = (sel & 3) as usize;
            let Some(p) = pool.packet_from(frame) else {
                continue;
            };
            let mut b = Burst::new();
            b.push(p).unwrap();
            let before = vs[i].stats().decapsulated;
            let mut out = Emit::new();
            vs[i].burst(Side::East, 0, b, &mut out).unwrap();
            assert_eq!(out.empty_bursts(), 0);
            let mut gen_out = Emit::new();
            vs[i].poll(&mut gen_out).unwrap();
            drop((out, gen_out));
            fed[i] += 1;
            if k < seeds.len() && vs[i].stats().decapsulated > before {
                decapsulated_seeds += 1;
            }
            let s = vs[i].stats();
            assert_eq!(
                fed[i],
                s.decapsulated + s.underlay_control + s.decap_dropped()
            );
            assert_eq!(pool.available(), 256, "no frame leaked (input {k})");
        }
        assert!(decapsulated_seeds >= 3, "the VXLAN seeds decapsulate");
    }
}
