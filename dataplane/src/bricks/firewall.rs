//! `firewall`: a stateful firewall dipole implementing security groups (SG), as in
//! butterfly and every cloud.
//!
//! # Sides
//! One side faces the VM, the other the network. By default **EAST is the VM side and
//! WEST the network side** (the host graph is `vtep/switch — firewall — antispoof — vhost`,
//! so the VM is east of the firewall); [`FirewallConfig::vm_side`] changes that. Packets
//! that arrive from the VM side are *outbound*, the others *inbound*.
//!
//! # Semantics
//! - A NIC has several security groups ([`Firewall::set_nic_groups`]); the rules of all of
//!   them add up (a packet passes if any rule allows it; there are no deny rules).
//! - A [`Rule`] has a direction, a protocol (any, TCP, UDP, ICMP, ICMPv6 or a number), an
//!   optional destination port range (TCP and UDP only) and a peer: a CIDR (IPv4 or IPv6)
//!   or a reference to a security group, which matches that group's *current* member
//!   addresses. For inbound rules the peer is the packet's source; for outbound rules its
//!   destination. Ports are always the destination port (the VM's for inbound, the
//!   remote's for outbound).
//! - **Default**: inbound denied. Outbound: while none of the NIC's groups has an outbound
//!   rule, packets from the NIC's own addresses ([`Firewall::set_nic_addresses`]) pass,
//!   plus DHCP (UDP 0.0.0.0:68 → 255.255.255.255:67, RFC 2131 §4.1); a DHCP server's reply
//!   (UDP source port 67 → destination port 68) passes inbound for one UDP lifetime after
//!   the VM sent a DHCP request. As soon as an outbound rule exists, the outbound rules
//!   replace that default.
//! - **Stateful**: the first packet of a flow is classified; if allowed it creates a flow
//!   in the [`FlowTable`] (zone = [`FirewallConfig::zone`]), and later packets of either
//!   direction hit it and pass. TCP flows are only created by a SYN without ACK: a
//!   non-SYN TCP packet without a flow is dropped (`drop_tcp_no_flow`), so a cut
//!   connection stays cut. Denied packets create no state (a flood of denied packets
//!   cannot fill the table). When the table is full and refuses new flows, the packet is
//!   dropped (`drop_table_full`).
//! - **Rule changes** (rules, members, groups, NIC addresses) recompile the classifier
//!   and re-evaluate every flow against the new rules in its original direction: flows no
//!   longer allowed are removed (`flows_revoked`) and their next packets are classified
//!   again; flows still allowed keep going. This runs off the packet path (the worker
//!   applies configuration between polls).
//! - **Non-IP** frames (ARP, ...) pass, and so does ICMPv6 Neighbor Discovery (types
//!   133–136, IPv6's ARP; RFC 4861); the antispoof brick polices both.
//! - **Fragments**: a first fragment (offset 0, more fragments) carries the L4 header and
//!   is filtered like any packet; when it passes, (zone, source, destination, protocol,
//!   IP identification) is remembered in a fixed-size fragment table
//!   ([`FirewallConfig::fragment_slots`], entries live
//!   [`FirewallConfig::fragment_lifetime`]) together with its flow. A later fragment
//!   (offset > 0) passes when it matches a remembered first fragment whose flow is still
//!   there; otherwise it is dropped (`drop_fragment_unknown`). Fragments that arrive
//!   before their first fragment are therefore dropped (no reassembly here).
//! - **Malformed** IP headers (see [`crate::flowtable::parse`]) are dropped and counted
//!   (`drop_malformed`); nothing panics whatever the bytes.
//! - **ICMP errors** (ICMP destination unreachable, time exceeded, parameter problem;
//!   ICMPv6 destination unreachable, packet too big, time exceeded, parameter problem)
//!   that quote a packet of an existing flow and go back to that packet's sender pass
//!   (`passed_related`, conntrack's RELATED): port unreachable and path MTU discovery
//!   work for allowed flows. Other ICMP errors are classified like any ICMP packet.
//!
//! # Example
//! ```
//! use packetgraph::bricks::firewall::{Firewall, FirewallConfig, Peer, PortRange, Protocol, Rule, SecurityGroup};
//! use packetgraph::flowtable::parse::build::frame;
//! use packetgraph::flowtable::parse::TCP_SYN;
//! use packetgraph::{Brick, Burst, Clock, Emit, Pool, PoolConfig, Side};
//!
//! let mut fw = Firewall::new(FirewallConfig::default(), Clock::monotonic()).unwrap();
//! fw.set_nic_addresses(vec!["10.0.0.10".parse().unwrap()]);
//! fw.upsert_group(SecurityGroup {
//!     id: "sg-web".into(),
//!     rules: vec![Rule::inbound(
//!         Protocol::Tcp,
//!         Some(PortRange::single(80)),
//!         Peer::Cidr("0.0.0.0/0".parse().unwrap()),
//!     )],
//!     members: vec![],
//! })
//! .unwrap();
//! fw.set_nic_groups(vec!["sg-web".into()]);
//!
//! // A SYN from the network (WEST) to the VM's port 80 passes to the VM side (EAST).
//! let pool = Pool::new(PoolConfig { frame_count: 8, ..Default::default() }).unwrap();
//! let syn = frame("192.0.2.1".parse().unwrap(), "10.0.0.10".parse().unwrap(), 6, 40000, 80, TCP_SYN, 0, 0);
//! let mut burst = Burst::new();
//! burst.push(pool.packet_from(&syn).unwrap()).unwrap();
//! let mut out = Emit::new();
//! fw.burst(Side::West, 0, burst, &mut out).unwrap();
//! assert_eq!(out.pending().len(), 1);
//! assert_eq!(fw.flows().len(), 1);
//! ```
//!
//! # Packet path
//! A burst is handled in two passes. The first reads each packet with
//! [`crate::flowtable::parse::fast_key`] (untagged IPv4 without options or IPv6 without
//! extension headers, unfragmented TCP or UDP: the same checks as the full parser, in one
//! short pass), hashes its key and prefetches its index slot (and the flow of the
//! packet 16 places back). The second decides in order: a fast packet whose flow exists
//! is counted on it and passes ([`crate::flowtable::FlowTable::hit`]), with the flows of
//! the burst's last packets prefetched 8 places ahead; any other packet (ARP, ICMP, VLAN tags, fragments, options, a first packet)
//! takes the general parser and the classifier. One clock reading per burst; nothing is
//! allocated.
//!
//! # Classification cost
//! Rules are compiled ([`Firewall`] does it on every change) into, per direction: an
//! "any protocol" peer set, and per protocol number a peer set for rules without ports
//! plus a sorted array of elementary port segments (binary search) each pointing to a
//! shared peer set. A peer set holds one hash set per prefix length present (IPv4 and
//! IPv6 apart), member addresses of referenced groups expanded as host prefixes. A
//! lookup costs a binary search plus one hash probe per distinct prefix length, not a
//! walk of the rules: 10,000 rules cost about the same as 10. Memory is the number of
//! segments times the peers overlapping each (quadratic only for many nested port
//! ranges).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::{BURST_SIZE, Burst};
use crate::clock::Clock;
use crate::error::BrickError;
use crate::flowtable::key::fmix64;
use crate::flowtable::parse::{TCP_ACK, TCP_RST, TCP_SYN, fast_key};
use crate::flowtable::{
    FiveTuple, FlowKey, FlowTable, FlowTableConfig, FlowTableError, Fragment, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Parsed, ParsedIp, Verdict, addr_bytes,
    parse_ethernet,
};

/// Direction of a rule, seen from the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleDirection {
    /// Traffic towards the VM; the rule's peer matches the packet's source.
    Inbound,
    /// Traffic from the VM; the rule's peer matches the packet's destination.
    Outbound,
}

/// Protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Every IP protocol (no port range allowed).
    Any,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1), IPv4 only.
    Icmp,
    /// ICMPv6 (58), IPv6 only.
    Icmpv6,
    /// Any IP protocol number (ports allowed for 6 and 17).
    Number(u8),
}

impl Protocol {
    /// The IP protocol number (`None` for [`Protocol::Any`]).
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Any => None,
            Protocol::Tcp => Some(IPPROTO_TCP),
            Protocol::Udp => Some(IPPROTO_UDP),
            Protocol::Icmp => Some(IPPROTO_ICMP),
            Protocol::Icmpv6 => Some(IPPROTO_ICMPV6),
            Protocol::Number(n) => Some(n),
        }
    }
}

/// An inclusive range of destination ports, `first ..= last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (≥ `first`).
    pub last: u16,
}

impl PortRange {
    /// One port.
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// `first ..= last`.
    ///
    /// # Errors
    /// [`FirewallError::PortRange`] when `first > last`.
    pub fn new(first: u16, last: u16) -> Result<PortRange, FirewallError> {
        if first > last {
            return Err(FirewallError::PortRange { first, last });
        }
        Ok(PortRange { first, last })
    }
}

/// An IPv4 or IPv6 prefix. Host bits are cleared on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `addr/len`, `len` ≤ 32 for IPv4 and ≤ 128 for IPv6.
    ///
    /// # Errors
    /// [`FirewallError::Cidr`] when `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, FirewallError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(FirewallError::Cidr(format!("{addr}/{len}")));
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(len))),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(len)).into()),
        };
        Ok(Cidr { addr, len })
    }

    /// A host prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for /0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.len) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.len) == u128::from(n),
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = FirewallError;

    /// `10.0.0.0/8`, `fd00::/64`, or a bare address (host prefix).
    fn from_str(s: &str) -> Result<Cidr, FirewallError> {
        let bad = || FirewallError::Cidr(s.to_string());
        match s.split_once('/') {
            Some((a, l)) => Cidr::new(a.parse().map_err(|_| bad())?, l.parse().map_err(|_| bad())?),
            None => Ok(Cidr::host(s.parse().map_err(|_| bad())?)),
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

/// Whom a rule allows: a prefix, or the members of a security group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Addresses inside a prefix.
    Cidr(Cidr),
    /// The current member addresses of the security group with this id (a group not
    /// defined yet matches nothing until it is).
    Group(String),
}

/// A security group rule (allow only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Inbound or outbound.
    pub direction: RuleDirection,
    /// The protocol.
    pub protocol: Protocol,
    /// Destination ports (TCP and UDP only; `None` = all ports).
    pub ports: Option<PortRange>,
    /// The peer.
    pub peer: Peer,
}

impl Rule {
    /// An inbound rule.
    pub fn inbound(protocol: Protocol, ports: Option<PortRange>, peer: Peer) -> Rule {
        Rule {
            direction: RuleDirection::Inbound,
            protocol,
            ports,
            peer,
        }
    }

    /// An outbound rule.
    pub fn outbound(protocol: Protocol, ports: Option<PortRange>, peer: Peer) -> Rule {
        Rule {
            direction: RuleDirection::Outbound,
            protocol,
            ports,
            peer,
        }
    }

    /// Checks the rule.
    ///
    /// # Errors
    /// [`FirewallError::PortsNeedTcpOrUdp`] for a port range on another protocol,
    /// [`FirewallError::PortRange`] for `first > last`.
    pub fn validate(&self) -> Result<(), FirewallError> {
        if let Some(p) = self.ports {
            if !matches!(self.protocol.number(), Some(IPPROTO_TCP | IPPROTO_UDP)) {
                return Err(FirewallError::PortsNeedTcpOrUdp(self.protocol));
            }
            PortRange::new(p.first, p.last)?;
        }
        Ok(())
    }
}

/// A security group: rules and member addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityGroup {
    /// Unique id (`"sg-web"`).
    pub id: String,
    /// Its rules.
    pub rules: Vec<Rule>,
    /// Addresses of the NICs that belong to it (what [`Peer::Group`] rules match).
    pub members: Vec<IpAddr>,
}

/// Errors of firewall configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    /// No security group has this id.
    #[error("unknown security group {0:?}")]
    UnknownGroup(String),
    /// The group has no such rule.
    #[error("security group {0:?} has no such rule")]
    RuleNotFound(String),
    /// A prefix is malformed or its length too long for its family.
    #[error("invalid CIDR {0:?}")]
    Cidr(String),
    /// A port range with `first > last`.
    #[error("invalid port range {first}-{last}")]
    PortRange {
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// A port range on a protocol without ports.
    #[error("port ranges apply to TCP and UDP only, not {0:?}")]
    PortsNeedTcpOrUdp(Protocol),
    /// The flow table configuration is invalid.
    #[error(transparent)]
    FlowTable(#[from] FlowTableError),
}

/// How to build a [`Firewall`].
#[derive(Debug, Clone)]
pub struct FirewallConfig {
    /// The side facing the VM (default EAST; the other side faces the network).
    pub vm_side: Side,
    /// Flow table zone (the NIC id or VNI).
    pub zone: u32,
    /// The flow table.
    pub flows: FlowTableConfig,
    /// Slots of the fragment table (rounded up to a power of two, ≥ 1).
    pub fragment_slots: usize,
    /// How long a first fragment is remembered (default 30 s, Linux's `ipfrag_time`).
    pub fragment_lifetime: Duration,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            vm_side: Side::East,
            zone: 0,
            flows: FlowTableConfig::default(),
            fragment_slots: 1024,
            fragment_lifetime: Duration::from_secs(30),
        }
    }
}

/// Per-reason counters of the firewall. Every packet that enters is counted exactly
/// once in a `passed_*` or `drop_*` counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallCounters {
    /// Passed: hit an existing flow (either direction).
    pub passed_flow: u64,
    /// Passed: allowed by a rule (or the default), flow created.
    pub passed_new: u64,
    /// Passed: not IP (ARP, ...).
    pub passed_non_ip: u64,
    /// Passed: ICMPv6 Neighbor Discovery.
    pub passed_ndp: u64,
    /// Passed: DHCP server reply after a request from the VM.
    pub passed_dhcp_reply: u64,
    /// Passed: a later fragment of a remembered first fragment.
    pub passed_fragment: u64,
    /// Passed: an ICMP error about a packet of a known flow.
    pub passed_related: u64,
    /// Dropped: malformed headers.
    pub drop_malformed: u64,
    /// Dropped: no rule allows it.
    pub drop_denied: u64,
    /// Dropped: TCP without SYN and without a flow.
    pub drop_tcp_no_flow: u64,
    /// Dropped: a later fragment without a remembered first fragment.
    pub drop_fragment_unknown: u64,
    /// Dropped: the flow table refused the new flow.
    pub drop_table_full: u64,
    /// Flows removed because a configuration change no longer allows them.
    pub flows_revoked: u64,
    /// Classifier rebuilds.
    pub recompiles: u64,
}

impl FirewallCounters {
    /// Sum of the `passed_*` counters.
    pub fn passed(&self) -> u64 {
        self.passed_flow
            + self.passed_new
            + self.passed_non_ip
            + self.passed_ndp
            + self.passed_dhcp_reply
            + self.passed_fragment
            + self.passed_related
    }

    /// Sum of the `drop_*` counters.
    pub fn dropped(&self) -> u64 {
        self.drop_malformed
            + self.drop_denied
            + self.drop_tcp_no_flow
            + self.drop_fragment_unknown
            + self.drop_table_full
    }
}

// ---- compiled classifier -------------------------------------------------------------

/// A hasher for addresses already well distributed by `fmix64`.
#[derive(Default, Clone, Copy)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ *b as u64;
        }
        self.0 = fmix64(self.0);
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = fmix64(self.0 ^ n as u64);
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = fmix64(self.0 ^ (n as u64) ^ ((n >> 64) as u64).rotate_left(29));
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type AddrBuild = BuildHasherDefault<AddrHasher>;

/// A set of prefixes: one hash set per prefix length present.
#[derive(Debug, Default, Clone)]
struct PeerSet {
    v4: Vec<(u32, HashSet<u32, AddrBuild>)>,
    v6: Vec<(u128, HashSet<u128, AddrBuild>)>,
}

impl PeerSet {
    fn build(cidrs: &[Cidr]) -> PeerSet {
        let mut v4: BTreeMap<u8, HashSet<u32, AddrBuild>> = BTreeMap::new();
        let mut v6: BTreeMap<u8, HashSet<u128, AddrBuild>> = BTreeMap::new();
        for c in cidrs {
            match c.addr {
                IpAddr::V4(a) => {
                    v4.entry(c.len).or_default().insert(u32::from(a));
                }
                IpAddr::V6(a) => {
                    v6.entry(c.len).or_default().insert(u128::from(a));
                }
            }
        }
        // Shortest prefixes first: /0 answers at once.
        PeerSet {
            v4: v4.into_iter().map(|(l, s)| (mask32(l), s)).collect(),
            v6: v6.into_iter().map(|(l, s)| (mask128(l), s)).collect(),
        }
    }

    #[inline]
    fn contains(&self, a: &[u8; 16], ipv6: bool) -> bool {
        if ipv6 {
            let x = u128::from_be_bytes(*a);
            self.v6.iter().any(|(m, s)| s.contains(&(x & m)))
        } else {
            let x = u32::from_be_bytes([a[12], a[13], a[14], a[15]]);
            self.v4.iter().any(|(m, s)| s.contains(&(x & m)))
        }
    }
}

const NO_SET: u32 = u32::MAX;

/// A rule ready to compile: protocol, ports, peers (groups expanded).
type FlatRule = (Protocol, Option<PortRange>, Vec<Cidr>);

/// Rules of one protocol number.
#[derive(Debug, Default, Clone)]
struct ProtoRules {
    /// Rules without a port range (or with 0-65535).
    all_ports: u32,
    /// Start port of each elementary segment (sorted, first is 0 when not empty).
    starts: Vec<u16>,
    /// Peer set of each segment (`NO_SET`: no rule covers it).
    seg_sets: Vec<u32>,
}

/// Rules of one direction.
#[derive(Debug, Clone)]
struct DirRules {
    sets: Vec<PeerSet>,
    any_proto: u32,
    proto_index: Box<[u16; 256]>,
    protos: Vec<ProtoRules>,
    count: usize,
}

impl DirRules {
    fn compile(rules: &[FlatRule]) -> DirRules {
        let mut sets = Vec::new();
        let mut set_ids: HashMap<Vec<Cidr>, u32> = HashMap::new();
        let mut intern = |mut cidrs: Vec<Cidr>, sets: &mut Vec<PeerSet>| -> u32 {
            if cidrs.is_empty() {
                return NO_SET;
            }
            cidrs.sort_by_key(|c| (c.addr, c.len));
            cidrs.dedup();
            *set_ids.entry(cidrs).or_insert_with_key(|c| {
                sets.push(PeerSet::build(c));
                (sets.len() - 1) as u32
            })
        };
        // Group rules by protocol.
        let mut any = Vec::new();
        // Per protocol: peers of rules on all ports, and (ports, rule index) of ranged rules.
        type ByProto = BTreeMap<u8, (Vec<Cidr>, Vec<(PortRange, usize)>)>;
        let mut by_proto = ByProto::new();
        for (i, (proto, ports, peers)) in rules.iter().enumerate() {
            match proto.number() {
                None => any.extend_from_slice(peers),
                Some(n) => {
                    let e = by_proto.entry(n).or_default();
                    match ports {
                        Some(p) if !(p.first == 0 && p.last == u16::MAX) => e.1.push((*p, i)),
                        _ => e.0.extend_from_slice(peers),
                    }
                }
            }
        }
        let any_proto = intern(any, &mut sets);
        let mut proto_index = Box::new([u16::MAX; 256]);
        let mut protos = Vec::new();
        for (n, (all, ranged)) in by_proto {
            let all_ports = intern(all, &mut sets);
            let mut pr = ProtoRules {
                all_ports,
                starts: Vec::new(),
                seg_sets: Vec::new(),
            };
            if !ranged.is_empty() {
                let mut points: Vec<u16> = vec![0];
                for (p, _) in &ranged {
                    points.push(p.first);
                    if p.last < u16::MAX {
                        points.push(p.last + 1);
                    }
                }
                points.sort_unstable();
                points.dedup();
                let mut segs: Vec<Vec<Cidr>> = vec![Vec::new(); points.len()];
                for (p, i) in &ranged {
                    let k0 = points.partition_point(|&x| x < p.first);
                    let k1 = if p.last == u16::MAX {
                        points.len()
                    } else {
                        points.partition_point(|&x| x <= p.last)
                    };
                    for seg in &mut segs[k0..k1] {
                        seg.extend_from_slice(&rules[*i].2);
                    }
                }
                for (k, seg) in segs.into_iter().enumerate() {
                    let id = intern(seg, &mut sets);
                    // Merge with the previous segment when it has the same set.
                    if pr.seg_sets.last() == Some(&id) {
                        continue;
                    }
                    pr.starts.push(points[k]);
                    pr.seg_sets.push(id);
                }
            }
            proto_index[n as usize] = protos.len() as u16;
            protos.push(pr);
        }
        DirRules {
            sets,
            any_proto,
            proto_index,
            protos,
            count: rules.len(),
        }
    }

    #[inline]
    fn in_set(&self, set: u32, a: &[u8; 16], ipv6: bool) -> bool {
        set != NO_SET && self.sets[set as usize].contains(a, ipv6)
    }

    #[inline]
    fn matches(&self, proto: u8, dport: u16, peer: &[u8; 16], ipv6: bool) -> bool {
        if self.in_set(self.any_proto, peer, ipv6) {
            return true;
        }
        let pi = self.proto_index[proto as usize];
        if pi == u16::MAX {
            return false;
        }
        let pr = &self.protos[pi as usize];
        if self.in_set(pr.all_ports, peer, ipv6) {
            return true;
        }
        if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && !pr.starts.is_empty() {
            let k = pr.starts.partition_point(|&s| s <= dport);
            return k > 0 && self.in_set(pr.seg_sets[k - 1], peer, ipv6);
        }
        false
    }
}

/// The compiled rules of a NIC.
#[derive(Debug, Clone)]
struct Classifier {
    inbound: DirRules,
    outbound: DirRules,
    default_outbound: bool,
    own: Vec<([u8; 16], bool)>,
}

fn is_dhcp_request(t: &FiveTuple) -> bool {
    !t.ipv6
        && t.proto == IPPROTO_UDP
        && t.sport == 68
        && t.dport == 67
        && t.src == addr_bytes(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        && t.dst == addr_bytes(IpAddr::V4(Ipv4Addr::BROADCAST))
}

impl Classifier {
    #[inline]
    fn allows(&self, dir: RuleDirection, t: &FiveTuple) -> bool {
        match dir {
            RuleDirection::Inbound => self.inbound.matches(t.proto, t.dport, &t.src, t.ipv6),
            RuleDirection::Outbound if self.default_outbound => {
                self.own.iter().any(|(a, v6)| *v6 == t.ipv6 && *a == t.src) || is_dhcp_request(t)
            }
            RuleDirection::Outbound => self.outbound.matches(t.proto, t.dport, &t.dst, t.ipv6),
        }
    }
}

// ---- fragment table ------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct FragEntry {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    proto: u8,
    ipv6: bool,
    flow: u32,
    flow_created: u64,
    expires: u64,
}

fn frag_hash(t: &FiveTuple, id: u32, zone: u32) -> u64 {
    let w = |b: &[u8; 16]| {
        u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))
            ^ u64::from_le_bytes(b[8..].try_into().unwrap_or([0; 8])).rotate_left(17)
    };
    fmix64(
        w(&t.src)
            ^ w(&t.dst).rotate_left(31)
            ^ ((id as u64) << 8 | t.proto as u64)
            ^ (zone as u64) << 40,
    )
}

// ---- the brick -----------------------------------------------------------------------

const TAG_OUTBOUND: u8 = 1;
const TAG_INBOUND: u8 = 2;

/// The firewall brick. See the module documentation.
pub struct Firewall {
    vm_side: Side,
    zone: u32,
    groups: HashMap<String, SecurityGroup>,
    nic_groups: Vec<String>,
    nic_addresses: Vec<IpAddr>,
    classifier: Classifier,
    flows: FlowTable,
    frags: Vec<FragEntry>,
    frag_lifetime_ns: u64,
    udp_lifetime_ns: u64,
    last_dhcp_request: Option<u64>,
    counters: FirewallCounters,
    /// Per-burst scratch of the fast path (allocated once).
    scratch: Box<Scratch>,
}

/// How many packets ahead the decision loop prefetches flows: enough to cover a memory
/// access with the work of the packets in between, few enough that the prefetches do not
/// wait for free line fill buffers (measured with 100k flows: 4, and prefetching a whole
/// burst's flows before the loop, were slower; 8 to 16 alike within the noise).
const PREFETCH_AHEAD: usize = 8;

/// How many packets behind the parsing loop prefetches flows (their index slots, asked
/// for that many packets earlier, have arrived by then).
const PARSE_BEHIND: usize = 16;

/// `Scratch::meta`: the fast parser took the packet (key and hash are set).
const FAST: u16 = 1 << 9;
/// `Scratch::meta`: the packet's source is the key's low endpoint.
const LO: u16 = 1 << 8;

/// Per-burst results of the fast parser, by packet index (struct of arrays).
struct Scratch {
    keys: [FlowKey; BURST_SIZE],
    hashes: [u64; BURST_SIZE],
    /// TCP flags in the low byte, then [`LO`] and [`FAST`]; 0 when the fast parser did
    /// not take the packet.
    meta: [u16; BURST_SIZE],
}

impl Firewall {
    /// A firewall with no security group (inbound denied, outbound from its addresses,
    /// which are none yet, and DHCP).
    ///
    /// # Errors
    /// [`FirewallError::FlowTable`] for a bad flow table configuration.
    pub fn new(cfg: FirewallConfig, clock: Clock) -> Result<Firewall, FirewallError> {
        let udp_lifetime_ns = cfg.flows.lifetimes.udp.as_nanos() as u64;
        let flows = FlowTable::new(cfg.flows, clock)?;
        let slots = cfg.fragment_slots.max(1).next_power_of_two();
        let mut fw = Firewall {
            vm_side: cfg.vm_side,
            zone: cfg.zone,
            groups: HashMap::new(),
            nic_groups: Vec::new(),
            nic_addresses: Vec::new(),
            classifier: Classifier {
                inbound: DirRules::compile(&[]),
                outbound: DirRules::compile(&[]),
                default_outbound: true,
                own: Vec::new(),
            },
            flows,
            frags: vec![FragEntry::default(); slots],
            frag_lifetime_ns: cfg.fragment_lifetime.as_nanos() as u64,
            udp_lifetime_ns,
            last_dhcp_request: None,
            counters: FirewallCounters::default(),
            scratch: Box::new(Scratch {
                keys: [FlowKey::new(
                    &FiveTuple::new(
                        Ipv4Addr::UNSPECIFIED.into(),
                        Ipv4Addr::UNSPECIFIED.into(),
                        0,
                        0,
                        0,
                    ),
                    0,
                )
                .0; BURST_SIZE],
                hashes: [0; BURST_SIZE],
                meta: [0; BURST_SIZE],
            }),
        };
        fw.recompile();
        Ok(fw)
    }

    /// A firewall with the default configuration on the monotonic clock.
    ///
    /// # Panics
    /// Never: the default configuration is valid.
    pub fn with_defaults() -> Firewall {
        Firewall::new(FirewallConfig::default(), Clock::monotonic())
            .unwrap_or_else(|e| unreachable!("default firewall config is valid: {e}"))
    }

    /// The side facing the VM.
    pub fn vm_side(&self) -> Side {
        self.vm_side
    }

    /// Sets the NIC's own addresses (used by the default outbound rule).
    pub fn set_nic_addresses(&mut self, addrs: Vec<IpAddr>) {
        self.nic_addresses = addrs;
        self.recompile();
    }

    /// Sets the security groups applied to this NIC (ids; groups not defined yet apply
    /// once defined).
    pub fn set_nic_groups(&mut self, ids: Vec<String>) {
        self.nic_groups = ids;
        self.recompile();
    }

    /// The ids of the groups applied to this NIC.
    pub fn nic_groups(&self) -> &[String] {
        &self.nic_groups
    }

    /// Defines or replaces a security group (its rules and members).
    ///
    /// # Errors
    /// The first invalid rule's error; nothing changes then.
    pub fn upsert_group(&mut self, sg: SecurityGroup) -> Result<(), FirewallError> {
        for r in &sg.rules {
            r.validate()?;
        }
        self.groups.insert(sg.id.clone(), sg);
        self.recompile();
        Ok(())
    }

    /// Replaces at once the groups applied to the NIC and every group definition (those
    /// groups and the groups their rules reference), with a single recompile and flow
    /// re-evaluation: what a control plane sends when a NIC's security changes.
    ///
    /// # Errors
    /// The first invalid rule's error; nothing changes then.
    pub fn replace_groups(
        &mut self,
        nic_groups: Vec<String>,
        groups: Vec<SecurityGroup>,
    ) -> Result<(), FirewallError> {
        for r in groups.iter().flat_map(|g| &g.rules) {
            r.validate()?;
        }
        self.groups = groups.into_iter().map(|g| (g.id.clone(), g)).collect();
        self.nic_groups = nic_groups;
        self.recompile();
        Ok(())
    }

    /// Forgets a group definition. Returns false when it did not exist.
    pub fn remove_group(&mut self, id: &str) -> bool {
        let had = self.groups.remove(id).is_some();
        if had {
            self.recompile();
        }
        had
    }

    /// A group definition.
    pub fn group(&self, id: &str) -> Option<&SecurityGroup> {
        self.groups.get(id)
    }

    fn group_mut(&mut self, id: &str) -> Result<&mut SecurityGroup, FirewallError> {
        self.groups
            .get_mut(id)
            .ok_or_else(|| FirewallError::UnknownGroup(id.to_string()))
    }

    /// Adds a rule to group `sg` (a duplicate is not added twice).
    ///
    /// # Errors
    /// [`FirewallError::UnknownGroup`], or the rule's validation error.
    pub fn add_rule(&mut self, sg: &str, rule: Rule) -> Result<(), FirewallError> {
        rule.validate()?;
        let g = self.group_mut(sg)?;
        if !g.rules.contains(&rule) {
            g.rules.push(rule);
        }
        self.recompile();
        Ok(())
    }

    /// Removes a rule from group `sg`; connections it allowed (and no other rule does)
    /// are cut.
    ///
    /// # Errors
    /// [`FirewallError::UnknownGroup`], [`FirewallError::RuleNotFound`].
    pub fn remove_rule(&mut self, sg: &str, rule: &Rule) -> Result<(), FirewallError> {
        let g = self.group_mut(sg)?;
        let before = g.rules.len();
        g.rules.retain(|r| r != rule);
        if g.rules.len() == before {
            return Err(FirewallError::RuleNotFound(sg.to_string()));
        }
        self.recompile();
        Ok(())
    }

    /// Adds a member address to group `sg`.
    ///
    /// # Errors
    /// [`FirewallError::UnknownGroup`].
    pub fn add_member(&mut self, sg: &str, ip: IpAddr) -> Result<(), FirewallError> {
        let g = self.group_mut(sg)?;
        if !g.members.contains(&ip) {
            g.members.push(ip);
        }
        self.recompile();
        Ok(())
    }

    /// Removes a member address from group `sg` (rules referencing the group stop
    /// matching it; its connections are cut).
    ///
    /// # Errors
    /// [`FirewallError::UnknownGroup`].
    pub fn remove_member(&mut self, sg: &str, ip: IpAddr) -> Result<(), FirewallError> {
        self.group_mut(sg)?.members.retain(|m| *m != ip);
        self.recompile();
        Ok(())
    }

    /// The flow table.
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// The flow table, mutably (to read records, set user contexts).
    pub fn flows_mut(&mut self) -> &mut FlowTable {
        &mut self.flows
    }

    /// Per-reason counters.
    pub fn stats(&self) -> FirewallCounters {
        self.counters
    }

    /// Number of rules applied to this NIC, (inbound, outbound).
    pub fn rule_count(&self) -> (usize, usize) {
        (
            self.classifier.inbound.count,
            self.classifier.outbound.count,
        )
    }

    /// True when the current rules allow a new flow whose first packet is `t` in
    /// direction `dir` (what the packet path asks for a flow miss).
    pub fn allows(&self, dir: RuleDirection, t: &FiveTuple) -> bool {
        self.classifier.allows(dir, t)
    }

    /// Rebuilds the classifier from the NIC's groups and re-evaluates every flow.
    fn recompile(&mut self) {
        let mut rules: [Vec<FlatRule>; 2] = Default::default();
        for id in &self.nic_groups {
            let Some(g) = self.groups.get(id) else {
                continue;
            };
            for r in &g.rules {
                let peers = match &r.peer {
                    Peer::Cidr(c) => vec![*c],
                    Peer::Group(other) => self
                        .groups
                        .get(other)
                        .map(|o| o.members.iter().map(|m| Cidr::host(*m)).collect())
                        .unwrap_or_default(),
                };
                let d = (r.direction == RuleDirection::Outbound) as usize;
                rules[d].push((r.protocol, r.ports, peers));
            }
        }
        self.classifier = Classifier {
            default_outbound: rules[1].is_empty(),
            inbound: DirRules::compile(&rules[0]),
            outbound: DirRules::compile(&rules[1]),
            own: self
                .nic_addresses
                .iter()
                .map(|a| (addr_bytes(*a), a.is_ipv6()))
                .collect(),
        };
        self.counters.recompiles += 1;
        let cls = &self.classifier;
        let revoked = self.flows.retain(|_, f| {
            let dir = if f.tag() == TAG_OUTBOUND {
                RuleDirection::Outbound
            } else {
                RuleDirection::Inbound
            };
            cls.allows(dir, &f.forward_tuple())
        });
        self.counters.flows_revoked += revoked as u64;
    }

    fn remember_first_fragment(&mut self, ip: &ParsedIp, id: u32, flow: crate::flowtable::FlowId) {
        let created = self.flows.get(flow).map_or(0, |f| f.created_ns());
        let slot = frag_hash(&ip.tuple, id, self.zone) as usize & (self.frags.len() - 1);
        self.frags[slot] = FragEntry {
            src: ip.tuple.src,
            dst: ip.tuple.dst,
            id,
            proto: ip.tuple.proto,
            ipv6: ip.tuple.ipv6,
            flow: flow.0,
            flow_created: created,
            expires: self.flows.now_ns() + self.frag_lifetime_ns,
        };
    }

    fn later_fragment(&mut self, ip: &ParsedIp, id: u32, len: u32) -> bool {
        let t = &ip.tuple;
        let slot = frag_hash(t, id, self.zone) as usize & (self.frags.len() - 1);
        let e = self.frags[slot];
        let now = self.flows.now_ns();
        if e.expires > now
            && e.id == id
            && e.proto == t.proto
            && e.ipv6 == t.ipv6
            && e.src == t.src
            && e.dst == t.dst
        {
            let fid = crate::flowtable::FlowId(e.flow);
            if let Some(f) = self.flows.get(fid)
                && f.created_ns() == e.flow_created
            {
                let fwd = f.forward_tuple();
                let dir = if fwd.src == t.src && fwd.dst == t.dst {
                    crate::flowtable::FlowDir::Forward
                } else {
                    crate::flowtable::FlowDir::Reverse
                };
                self.flows.touch(fid, dir, len, 0);
                self.counters.passed_fragment += 1;
                return true;
            }
        }
        self.counters.drop_fragment_unknown += 1;
        false
    }

    /// The general path of a packet (the fast path did not take it, or found no flow:
    /// `missed`): full parse, then [`Firewall::decide`]. True: pass.
    #[inline(never)]
    fn slow_path(&mut self, data: &[u8], dir: RuleDirection, missed: Option<Keyed>) -> bool {
        match self.prepare(data, missed) {
            Step::Done(pass) => pass,
            Step::Flow(s) => self.decide(&s, dir, missed.is_some()),
        }
    }

    /// First half of a packet's decision: parse, and for packets that need the flow
    /// table, the key and its hash (taken from `known` when the fast path computed them:
    /// it gives the same key for every packet it takes).
    #[inline]
    fn prepare(&mut self, data: &[u8], known: Option<Keyed>) -> Step {
        let ip = match parse_ethernet(data) {
            Ok(Parsed::Ip(ip)) => ip,
            Ok(Parsed::NotIp { .. }) => {
                self.flows.note_unhandled();
                self.counters.passed_non_ip += 1;
                return Step::Done(true);
            }
            Err(_) => {
                self.flows.note_unhandled();
                self.counters.drop_malformed += 1;
                return Step::Done(false);
            }
        };
        if ip.is_ndp() {
            self.counters.passed_ndp += 1;
            return Step::Done(true);
        }
        let len = data.len() as u32;
        // Later fragments are decided in order with the rest of the burst (their first
        // fragment may be earlier in the same burst); their key is not used.
        let (key, lo, h) = match known {
            Some(k) => k,
            None => {
                let (key, lo) = FlowKey::new(&ip.tuple, self.zone);
                (key, lo, self.flows.hash(&key))
            }
        };
        Step::Flow(FlowStep {
            ip,
            key,
            h,
            lo,
            len,
        })
    }

    /// Second half: flow lookup (skipped when `missed`: the fast path looked the key up
    /// and found nothing), else classification and flow creation. True: pass.
    fn decide(&mut self, s: &FlowStep, dir: RuleDirection, missed: bool) -> bool {
        let ip = &s.ip;
        let first_frag = match ip.fragment {
            Fragment::First { id } => Some(id),
            Fragment::Later { id } => return self.later_fragment(ip, id, s.len),
            Fragment::No => None,
        };
        if !missed && let Some((id, _)) = self.flows.hit(&s.key, s.h, s.lo, s.len, ip.tcp_flags) {
            if let Some(fr) = first_frag {
                self.remember_first_fragment(ip, fr, id);
            }
            self.counters.passed_flow += 1;
            return true;
        }
        let t = &ip.tuple;
        if dir == RuleDirection::Inbound
            && t.proto == IPPROTO_UDP
            && t.sport == 67
            && t.dport == 68
            && !t.ipv6
            && self
                .last_dhcp_request
                .is_some_and(|at| self.flows.now_ns() < at + self.udp_lifetime_ns)
        {
            self.counters.passed_dhcp_reply += 1;
            return true;
        }
        // An ICMP error about a packet of a known flow, going back to that packet's
        // sender, passes (conntrack's RELATED).
        if let Some(rel) = ip.related
            && rel.ipv6 == t.ipv6
            && rel.src == t.dst
        {
            let (k, lo) = FlowKey::new(&rel, self.zone);
            let h = self.flows.hash(&k);
            if self.flows.lookup(&k, h, lo).is_some() {
                self.counters.passed_related += 1;
                return true;
            }
        }
        if t.proto == IPPROTO_TCP && ip.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
            self.counters.drop_tcp_no_flow += 1;
            return false;
        }
        if !self.classifier.allows(dir, t) {
            self.counters.drop_denied += 1;
            return false;
        }
        let tag = match dir {
            RuleDirection::Outbound => TAG_OUTBOUND,
            RuleDirection::Inbound => TAG_INBOUND,
        };
        match self
            .flows
            .create(&s.key, s.h, s.lo, s.len, ip.tcp_flags, tag)
        {
            Ok(id) => {
                if let Some(f) = self.flows.get_mut(id) {
                    f.set_verdict(Verdict::Allow);
                }
                if let Some(fr) = first_frag {
                    self.remember_first_fragment(ip, fr, id);
                }
                if dir == RuleDirection::Outbound && is_dhcp_request(t) {
                    self.last_dhcp_request = Some(self.flows.now_ns());
                }
                self.counters.passed_new += 1;
                true
            }
            Err(_) => {
                self.counters.drop_table_full += 1;
                false
            }
        }
    }
}

/// A packet's flow key, whether its source is the key's low endpoint, and the key's hash.
type Keyed = (FlowKey, bool, u64);

/// A packet between [`Firewall::prepare`] and [`Firewall::decide`].
struct FlowStep {
    ip: ParsedIp,
    key: FlowKey,
    h: u64,
    lo: bool,
    len: u32,
}

enum Step {
    Done(bool),
    Flow(FlowStep),
}

impl Brick for Firewall {
    fn kind(&self) -> &'static str {
        "firewall"
    }

    fn poles(&self) -> Poles {
        Poles::Dipole
    }

    fn burst(
        &mut self,
        from: Side,
        _edge: usize,
        mut pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        self.flows.advance();
        let dir = if from == self.vm_side {
            RuleDirection::Outbound
        } else {
            RuleDirection::Inbound
        };
        // Two passes so the flow table's cache misses overlap (as VPP's graph nodes do):
        // key and hash every packet the fast parser takes, prefetching its index slot and
        // the flow of the packet PARSE_BEHIND places back (whose index slot has arrived);
        // then decide in order (a flow created by a packet is found by the later packets
        // of the same burst), prefetching the flows of the last PARSE_BEHIND packets
        // PREFETCH_AHEAD places ahead. Packets the fast parser does not take, and fast
        // packets without a flow, go through the general parser and the classifier.
        const DROP: u8 = 0;
        const PASS: u8 = 1;
        let n = pkts.len();
        let zone = self.zone;
        let sc = &mut *self.scratch;
        for (i, p) in pkts.iter().enumerate().take(BURST_SIZE) {
            match fast_key(p.data(), zone) {
                Some((key, lo, flags)) => {
                    let h = self.flows.hash(&key);
                    self.flows.prefetch_index(h);
                    sc.keys[i] = key;
                    sc.hashes[i] = h;
                    sc.meta[i] = FAST | (lo as u16) << 8 | flags as u16;
                }
                None => sc.meta[i] = 0,
            }
            if let Some(back) = i.checked_sub(PARSE_BEHIND)
                && sc.meta[back] & FAST != 0
            {
                self.flows.prefetch_flow(sc.hashes[back]);
            }
        }
        let n = n.min(BURST_SIZE);
        // The last PARSE_BEHIND packets' flows are prefetched by the decision loop.
        let first_late = n.saturating_sub(PARSE_BEHIND);
        for i in first_late..(first_late + PREFETCH_AHEAD).min(n) {
            if sc.meta[i] & FAST != 0 {
                self.flows.prefetch_flow(sc.hashes[i]);
            }
        }
        let mut verdict = [DROP; BURST_SIZE];
        let mut all = true;
        let mut hits = 0;
        for (i, p) in pkts.iter().enumerate().take(BURST_SIZE) {
            let ahead = first_late + i + PREFETCH_AHEAD;
            if ahead < n && self.scratch.meta[ahead] & FAST != 0 {
                self.flows.prefetch_flow(self.scratch.hashes[ahead]);
            }
            let meta = self.scratch.meta[i];
            let fast = meta & FAST != 0;
            let pass = if fast
                && self
                    .flows
                    .hit(
                        &self.scratch.keys[i],
                        self.scratch.hashes[i],
                        meta & LO != 0,
                        p.len() as u32,
                        meta as u8,
                    )
                    .is_some()
            {
                hits += 1;
                true
            } else {
                let known = fast.then(|| {
                    let sc = &self.scratch;
                    (sc.keys[i], meta & LO != 0, sc.hashes[i])
                });
                self.slow_path(p.data(), dir, known)
            };
            verdict[i] = pass as u8;
            all &= pass;
        }
        self.counters.passed_flow += hits;
        if !all {
            let mut i = 0;
            pkts.retain(|_| {
                i += 1;
                verdict[i - 1] == PASS
            });
        }
        if !pkts.is_empty() {
            out.send(from.opposite(), 0, pkts);
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        let f = self.flows.counters();
        vec![
            ("passed_flow", c.passed_flow),
            ("passed_new", c.passed_new),
            ("passed_non_ip", c.passed_non_ip),
            ("passed_ndp", c.passed_ndp),
            ("passed_dhcp_reply", c.passed_dhcp_reply),
            ("passed_fragment", c.passed_fragment),
            ("passed_related", c.passed_related),
            ("drop_malformed", c.drop_malformed),
            ("drop_denied", c.drop_denied),
            ("drop_tcp_no_flow", c.drop_tcp_no_flow),
            ("drop_fragment_unknown", c.drop_fragment_unknown),
            ("drop_table_full", c.drop_table_full),
            ("flows_revoked", c.flows_revoked),
            ("flows_active", self.flows.len() as u64),
            ("flows_hit", f.hit),
            ("flows_created", f.created),
            ("flows_expired", f.expired),
            ("flows_evicted", f.evicted),
            ("flows_refused", f.refused),
            ("flows_removed", f.removed),
            ("flows_unhandled", f.unhandled),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brick::Dest;
    use crate::flowtable::parse::build::{fix_ipv4_checksum, frame, make_ipv4_fragment};
    use crate::flowtable::parse::{TCP_ACK, TCP_FIN};
    use crate::{Pool, PoolConfig};

    const VM: &str = "10.0.0.10";
    const VM6: &str = "fd00::10";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        frame(ip(src), ip(dst), IPPROTO_TCP, sport, dport, flags, 0, 0)
    }

    fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
        frame(ip(src), ip(dst), IPPROTO_UDP, sport, dport, 0, 0, 8)
    }

    fn icmp(src: &str, dst: &str, id: u16, ty: u8) -> Vec<u8> {
        let proto = if ip(src).is_ipv6() {
            IPPROTO_ICMPV6
        } else {
            IPPROTO_ICMP
        };
        frame(ip(src), ip(dst), proto, id, 0, 0, ty, 8)
    }

    fn cidr(s: &str) -> Peer {
        Peer::Cidr(s.parse().unwrap())
    }

    struct H {
        fw: Firewall,
        pool: Pool,
        clock: Clock,
        sent: u64,
    }

    impl H {
        /// A firewall (VM on EAST) for a NIC 10.0.0.10 / fd00::10 in group "sg-a"
        /// (defined, no rule).
        fn new() -> H {
            H::with(FirewallConfig {
                flows: FlowTableConfig {
                    max_flows: 1024,
                    tick: Duration::from_secs(1),
                    wheel_slots: 512,
                    ..Default::default()
                },
                ..Default::default()
            })
        }

        fn with(cfg: FirewallConfig) -> H {
            let clock = Clock::manual();
            let mut fw = Firewall::new(cfg, clock.clone()).unwrap();
            fw.set_nic_addresses(vec![ip(VM), ip(VM6)]);
            fw.upsert_group(SecurityGroup {
                id: "sg-a".into(),
                ..Default::default()
            })
            .unwrap();
            fw.set_nic_groups(vec!["sg-a".into()]);
            let pool = Pool::new(PoolConfig {
                frame_count: 256,
                ..Default::default()
            })
            .unwrap();
            H {
                fw,
                pool,
                clock,
                sent: 0,
            }
        }

        fn send(&mut self, from: Side, f: &[u8]) -> bool {
            let mut b = Burst::new();
            b.push(self.pool.packet_from(f).unwrap()).unwrap();
            let mut out = Emit::new();
            self.fw.burst(from, 0, b, &mut out).unwrap();
            self.sent += 1;
            assert_eq!(out.empty_bursts(), 0);
            let v = out.take();
            match v.len() {
                0 => false,
                1 => {
                    assert_eq!(v[0].0, Dest::Edge(from.opposite(), 0), "wrong side");
                    assert_eq!(v[0].1.len(), 1);
                    assert_eq!(v[0].1[0].data(), f, "bytes changed");
                    true
                }
                n => panic!("{n} bursts for one packet"),
            }
        }

        /// From the network to the VM.
        fn inb(&mut self, f: &[u8]) -> bool {
            let side = self.fw.vm_side().opposite();
            self.send(side, f)
        }

        /// From the VM to the network.
        fn outb(&mut self, f: &[u8]) -> bool {
            let side = self.fw.vm_side();
            self.send(side, f)
        }

        fn rule(&mut self, r: Rule) {
            self.fw.add_rule("sg-a", r).unwrap();
        }

        fn check_counters(&self) {
            let c = self.fw.stats();
            assert_eq!(c.passed() + c.dropped(), self.sent, "{c:?}");
        }
    }

    #[test]
    fn default_denies_inbound_allows_outbound_from_own_address_and_replies() {
        let mut h = H::new();
        assert!(!h.inb(&tcp("10.0.0.1", VM, 1000, 22, TCP_SYN)));
        assert!(!h.inb(&udp("10.0.0.1", VM, 1000, 53)));
        assert!(!h.inb(&icmp("10.0.0.1", VM, 1, 8)));
        // The VM connects out; the replies come back.
        assert!(h.outb(&tcp(VM, "10.0.0.1", 2000, 80, TCP_SYN)));
        assert!(h.inb(&tcp("10.0.0.1", VM, 80, 2000, TCP_SYN | TCP_ACK)));
        assert!(h.outb(&tcp(VM, "10.0.0.1", 2000, 80, TCP_ACK)));
        assert!(h.inb(&tcp("10.0.0.1", VM, 80, 2000, TCP_ACK)));
        assert!(h.outb(&udp(VM, "10.0.0.1", 3000, 53)));
        assert!(h.inb(&udp("10.0.0.1", VM, 53, 3000)));
        assert!(h.outb(&icmp(VM, "10.0.0.1", 7, 8)));
        assert!(h.inb(&icmp("10.0.0.1", VM, 7, 0)));
        assert!(h.outb(&icmp(VM6, "fd00::1", 7, 128)));
        assert!(h.inb(&icmp("fd00::1", VM6, 7, 129)));
        // Not from its own address: denied.
        assert!(!h.outb(&udp("10.0.0.99", "10.0.0.1", 3000, 53)));
        let c = h.fw.stats();
        assert_eq!(c.passed_new, 4);
        assert_eq!(c.passed_flow, 6);
        assert_eq!(c.drop_denied, 4);
        assert_eq!(c.drop_tcp_no_flow, 0);
        h.check_counters();
    }

    #[test]
    fn dhcp_is_allowed_by_default_and_its_reply_passes() {
        let mut h = H::new();
        assert!(
            !h.inb(&udp("10.0.0.1", "255.255.255.255", 67, 68)),
            "no request yet"
        );
        assert!(h.outb(&udp("0.0.0.0", "255.255.255.255", 68, 67)));
        assert!(h.inb(&udp("10.0.0.1", "255.255.255.255", 67, 68)));
        assert!(h.inb(&udp("10.0.0.1", "10.0.0.10", 67, 68)));
        assert!(
            !h.outb(&udp("0.0.0.0", "255.255.255.255", 68, 53)),
            "only DHCP"
        );
        assert_eq!(h.fw.stats().passed_dhcp_reply, 2);
        // Outbound rules replace the default, DHCP included.
        h.rule(Rule::outbound(
            Protocol::Tcp,
            Some(PortRange::single(443)),
            cidr("0.0.0.0/0"),
        ));
        assert!(!h.outb(&udp("0.0.0.0", "255.255.255.255", 68, 67)));
        h.check_counters();
    }

    #[test]
    fn arp_and_ndp_pass_malformed_is_dropped() {
        let mut h = H::new();
        let mut arp = vec![0xffu8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(h.inb(&arp));
        assert!(h.outb(&arp));
        assert!(h.inb(&icmp("fe80::1", "ff02::1:ff00:10", 0, 135)));
        assert!(h.outb(&icmp("fe80::10", "fe80::1", 0, 136)));
        let mut bad = udp("10.0.0.1", VM, 1, 2);
        bad[14] = 0x46; // IHL 6 without options: checksum and length break
        assert!(!h.inb(&bad));
        assert!(!h.inb(&[0u8; 13]));
        let c = h.fw.stats();
        assert_eq!((c.passed_non_ip, c.passed_ndp, c.drop_malformed), (2, 2, 2));
        assert_eq!(h.fw.flows().counters().unhandled, 4);
        h.check_counters();
    }

    /// One burst mixing the fast path (untagged TCP/UDP) and the general path (ARP,
    /// VLAN tag, ICMP, IPv4 options, a bad checksum): a flow created by a packet is hit by
    /// the later packets of the same burst on either path, passing packets leave in
    /// their order, and the counters say which way each went.
    #[test]
    fn mixed_burst_keeps_order_and_later_packets_hit_flows_created_earlier() {
        let mut h = H::new();
        let syn = tcp(VM, "10.0.0.1", 2000, 80, TCP_SYN);
        let ack = tcp(VM, "10.0.0.1", 2000, 80, TCP_ACK);
        let mut vlan_ack = ack.clone();
        vlan_ack.splice(12..12, [0x81, 0x00, 0x00, 0x2a]);
        let mut arp = vec![0xffu8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let ping = icmp(VM, "10.0.0.1", 5, 8);
        let mut bad = udp(VM, "10.0.0.1", 3000, 53);
        bad[24] ^= 0xff; // header checksum
        // IPv4 with 4 bytes of options (a NOP list): general parser, same 5-tuple.
        let mut opts = udp(VM, "10.0.0.1", 3000, 53);
        opts.splice(34..34, [1, 1, 1, 1]);
        opts[14] = 0x46;
        let total = u16::from_be_bytes([opts[16], opts[17]]) + 4;
        opts[16..18].copy_from_slice(&total.to_be_bytes());
        fix_ipv4_checksum(&mut opts);
        let mut short_udp = udp(VM, "10.0.0.1", 3000, 53);
        short_udp.truncate(42);
        short_udp[16..18].copy_from_slice(&28u16.to_be_bytes());
        fix_ipv4_checksum(&mut short_udp);
        let frames: Vec<&[u8]> = vec![
            &syn, &arp, &ack, &vlan_ack, &bad, &ping, &short_udp, &opts, &ack,
        ];
        let mut b = Burst::new();
        for f in &frames {
            b.push(h.pool.packet_from(f).unwrap()).unwrap();
        }
        let mut out = Emit::new();
        let side = h.fw.vm_side();
        h.fw.burst(side, 0, b, &mut out).unwrap();
        let v = out.take();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, Dest::Edge(side.opposite(), 0));
        let got: Vec<&[u8]> = v[0].1.iter().map(|p| p.data()).collect();
        let want: Vec<&[u8]> = frames
            .iter()
            .copied()
            .filter(|f| f.as_ptr() != bad.as_ptr())
            .collect();
        assert_eq!(got, want, "all but the bad checksum, in order");
        let c = h.fw.stats();
        // New: TCP, ICMP, UDP (the 42-byte frame); hits: ACK, tagged ACK, UDP with
        // options, ACK.
        assert_eq!((c.passed_new, c.passed_flow), (3, 4), "{c:?}");
        assert_eq!((c.passed_non_ip, c.drop_malformed), (1, 1), "{c:?}");
        assert_eq!(h.fw.flows().len(), 3);
        let t = FiveTuple::new(ip(VM), ip("10.0.0.1"), IPPROTO_TCP, 2000, 80);
        let id = h.fw.flows().find_tuple(&t, 0).unwrap();
        let f = h.fw.flows().get(id).unwrap();
        assert_eq!(f.packets(crate::flowtable::FlowDir::Forward), 4);
        assert_eq!(f.bytes(crate::flowtable::FlowDir::Forward), 3 * 54 + 58);
    }

    #[test]
    fn allow_by_cidr_and_port_range() {
        let mut h = H::new();
        h.rule(Rule::inbound(
            Protocol::Tcp,
            Some(PortRange::new(8000, 8100).unwrap()),
            cidr("10.0.1.0/24"),
        ));
        assert!(h.inb(&tcp("10.0.1.5", VM, 1234, 8000, TCP_SYN)));
        assert!(h.inb(&tcp("10.0.1.6", VM, 1234, 8100, TCP_SYN)));
        assert!(h.inb(&tcp("10.0.1.7", VM, 1234, 8050, TCP_SYN)));
        assert!(!h.inb(&tcp("10.0.1.8", VM, 1234, 7999, TCP_SYN)));
        assert!(!h.inb(&tcp("10.0.1.9", VM, 1234, 8101, TCP_SYN)));
        assert!(!h.inb(&tcp("10.0.2.5", VM, 1234, 8000, TCP_SYN)));
        assert!(!h.inb(&udp("10.0.1.5", VM, 1234, 8000)), "TCP only");
        // The reply of an allowed inbound flow passes outbound.
        assert!(h.outb(&tcp(VM, "10.0.1.5", 8000, 1234, TCP_SYN | TCP_ACK)));
        assert!(h.inb(&tcp("10.0.1.5", VM, 1234, 8000, TCP_ACK)));
        h.check_counters();
    }

    #[test]
    fn allow_by_protocol_any_icmp_and_number() {
        let mut h = H::new();
        h.rule(Rule::inbound(Protocol::Icmp, None, cidr("0.0.0.0/0")));
        assert!(h.inb(&icmp("192.0.2.1", VM, 1, 8)));
        assert!(!h.inb(&udp("192.0.2.1", VM, 1, 2)));
        assert!(
            !h.inb(&icmp("2001:db8::1", VM6, 1, 128)),
            "ICMP is not ICMPv6"
        );
        h.rule(Rule::inbound(
            Protocol::Number(47),
            None,
            cidr("192.0.2.0/24"),
        ));
        assert!(h.inb(&frame(ip("192.0.2.1"), ip(VM), 47, 0, 0, 0, 0, 20)));
        h.rule(Rule::inbound(Protocol::Icmpv6, None, cidr("::/0")));
        assert!(h.inb(&icmp("2001:db8::1", VM6, 1, 128)));
        h.rule(Rule::inbound(Protocol::Any, None, cidr("198.51.100.7/32")));
        assert!(h.inb(&udp("198.51.100.7", VM, 1, 2)));
        assert!(h.inb(&tcp("198.51.100.7", VM, 1, 2, TCP_SYN)));
        assert!(!h.inb(&tcp("198.51.100.8", VM, 1, 2, TCP_SYN)));
        // Protocol number 6 with ports is TCP.
        h.rule(Rule::inbound(
            Protocol::Number(6),
            Some(PortRange::single(5)),
            cidr("0.0.0.0/0"),
        ));
        assert!(h.inb(&tcp("203.0.113.1", VM, 1, 5, TCP_SYN)));
        h.check_counters();
    }

    #[test]
    fn ipv6_rules() {
        let mut h = H::new();
        h.rule(Rule::inbound(
            Protocol::Udp,
            Some(PortRange::single(53)),
            cidr("2001:db8:1::/48"),
        ));
        assert!(h.inb(&udp("2001:db8:1:2::5", VM6, 999, 53)));
        assert!(!h.inb(&udp("2001:db8:2::5", VM6, 999, 53)));
        assert!(!h.inb(&udp("2001:db8:1:2::5", VM6, 999, 54)));
        assert!(h.outb(&udp(VM6, "2001:db8:1:2::5", 53, 999)), "reply");
        assert!(!h.inb(&udp("10.0.0.1", VM, 999, 53)), "v6 rule, v4 packet");
        h.check_counters();
    }

    #[test]
    fn security_group_members_change_reachability() {
        let mut h = H::new();
        h.fw.upsert_group(SecurityGroup {
            id: "sg-web".into(),
            rules: vec![],
            members: vec![ip("10.0.5.1")],
        })
        .unwrap();
        h.rule(Rule::inbound(
            Protocol::Udp,
            None,
            Peer::Group("sg-web".into()),
        ));
        assert!(h.inb(&udp("10.0.5.1", VM, 1, 9)));
        assert!(!h.inb(&udp("10.0.5.2", VM, 1, 9)));
        h.fw.add_member("sg-web", ip("10.0.5.2")).unwrap();
        assert!(h.inb(&udp("10.0.5.2", VM, 1, 9)));
        assert_eq!(h.fw.flows().len(), 2);
        h.fw.remove_member("sg-web", ip("10.0.5.1")).unwrap();
        assert_eq!(h.fw.flows().len(), 1, "the removed member's flow is cut");
        assert!(!h.inb(&udp("10.0.5.1", VM, 1, 9)));
        assert!(h.inb(&udp("10.0.5.2", VM, 1, 9)), "still a member");
        assert_eq!(h.fw.stats().flows_revoked, 1);
        // A rule on a group not defined yet matches once it is.
        h.rule(Rule::inbound(
            Protocol::Udp,
            None,
            Peer::Group("sg-later".into()),
        ));
        assert!(!h.inb(&udp("10.0.6.1", VM, 1, 9)));
        h.fw.upsert_group(SecurityGroup {
            id: "sg-later".into(),
            rules: vec![],
            members: vec![ip("10.0.6.1")],
        })
        .unwrap();
        assert!(h.inb(&udp("10.0.6.1", VM, 1, 9)));
        h.check_counters();
    }

    #[test]
    fn two_groups_add_up() {
        let mut h = H::new();
        h.fw.upsert_group(SecurityGroup {
            id: "sg-b".into(),
            rules: vec![Rule::inbound(
                Protocol::Tcp,
                Some(PortRange::single(80)),
                cidr("0.0.0.0/0"),
            )],
            members: vec![],
        })
        .unwrap();
        h.rule(Rule::inbound(
            Protocol::Tcp,
            Some(PortRange::single(22)),
            cidr("0.0.0.0/0"),
        ));
        assert!(
            !h.inb(&tcp("10.0.0.1", VM, 1, 80, TCP_SYN)),
            "sg-b not applied yet"
        );
        h.fw.set_nic_groups(vec!["sg-a".into(), "sg-b".into()]);
        assert!(h.inb(&tcp("10.0.0.1", VM, 1, 80, TCP_SYN)));
        assert!(h.inb(&tcp("10.0.0.1", VM, 2, 22, TCP_SYN)));
        assert!(!h.inb(&tcp("10.0.0.1", VM, 3, 23, TCP_SYN)));
        assert_eq!(h.fw.rule_count(), (2, 0));
        // Taking sg-b off the NIC cuts its connections only.
        h.fw.set_nic_groups(vec!["sg-a".into()]);
        assert!(!h.inb(&tcp("10.0.0.1", VM, 1, 80, TCP_ACK)));
        assert!(h.inb(&tcp("10.0.0.1", VM, 2, 22, TCP_ACK)));
        h.check_counters();
    }

    #[test]
    fn replace_groups_applies_everything_at_once() {
        let mut h = H::new();
        assert!(!h.inb(&udp("10.0.7.1", VM, 1, 9)));
        let web = SecurityGroup {
            id: "sg-web".into(),
            rules: vec![Rule::inbound(
                Protocol::Udp,
                None,
                Peer::Group("sg-peers".into()),
            )],
            members: vec![],
        };
        let peers = SecurityGroup {
            id: "sg-peers".into(),
            rules: vec![],
            members: vec![ip("10.0.7.1")],
        };
        let before = h.fw.stats().recompiles;
        h.fw.replace_groups(vec!["sg-web".into()], vec![web, peers])
            .unwrap();
        assert_eq!(h.fw.stats().recompiles, before + 1);
        assert!(h.inb(&udp("10.0.7.1", VM, 1, 9)));
        assert!(h.fw.group("sg-a").is_none(), "replaced");
        let bad = SecurityGroup {
            id: "x".into(),
            rules: vec![Rule::inbound(
                Protocol::Any,
                Some(PortRange::single(1)),
                cidr("::/0"),
            )],
            members: vec![],
        };
        assert!(h.fw.replace_groups(vec![], vec![bad]).is_err());
        assert!(
            h.inb(&udp("10.0.7.1", VM, 1, 9)),
            "unchanged after an error"
        );
    }

    #[test]
    fn rule_delete_cuts_established_connection_and_keeps_others() {
        let mut h = H::new();
        let ssh = Rule::inbound(
            Protocol::Tcp,
            Some(PortRange::single(22)),
            cidr("10.0.1.0/24"),
        );
        let web = Rule::inbound(
            Protocol::Tcp,
            Some(PortRange::single(80)),
            cidr("0.0.0.0/0"),
        );
        h.rule(ssh.clone());
        h.rule(web.clone());
        for port in [22, 80] {
            assert!(h.inb(&tcp("10.0.1.5", VM, 1000, port, TCP_SYN)));
            assert!(h.outb(&tcp(VM, "10.0.1.5", port, 1000, TCP_SYN | TCP_ACK)));
            assert!(h.inb(&tcp("10.0.1.5", VM, 1000, port, TCP_ACK)));
        }
        // Outbound connection from the VM: unaffected by inbound rule changes.
        assert!(h.outb(&tcp(VM, "10.0.1.5", 5000, 443, TCP_SYN)));
        assert_eq!(h.fw.flows().len(), 3);
        h.fw.remove_rule("sg-a", &ssh).unwrap();
        assert_eq!(h.fw.flows().len(), 2);
        assert!(!h.inb(&tcp("10.0.1.5", VM, 1000, 22, TCP_ACK)), "cut");
        assert!(
            !h.outb(&tcp(VM, "10.0.1.5", 22, 1000, TCP_ACK)),
            "cut both ways"
        );
        assert!(
            !h.inb(&tcp("10.0.1.5", VM, 1001, 22, TCP_SYN)),
            "no new ones"
        );
        assert!(
            h.inb(&tcp("10.0.1.5", VM, 1000, 80, TCP_ACK)),
            "still allowed"
        );
        assert!(h.inb(&tcp("10.0.1.5", VM, 443, 5000, TCP_SYN | TCP_ACK)));
        assert_eq!(
            h.fw.remove_rule("sg-a", &ssh),
            Err(FirewallError::RuleNotFound("sg-a".into()))
        );
        let r = h.fw.flows_mut().pop_record().unwrap();
        assert_eq!(r.reason, crate::flowtable::EndReason::Removed);
        assert_eq!(r.tuple.dport, 22);
        assert_eq!(r.packets, [2, 1]);
        let c = h.fw.stats();
        assert_eq!(c.drop_tcp_no_flow, 2);
        h.check_counters();
    }

    #[test]
    fn outbound_rules_replace_the_default() {
        let mut h = H::new();
        assert!(h.outb(&tcp(VM, "192.0.2.1", 1000, 80, TCP_SYN)));
        h.rule(Rule::outbound(
            Protocol::Tcp,
            Some(PortRange::single(443)),
            cidr("192.0.2.0/24"),
        ));
        // The port 80 flow no longer is allowed: revoked.
        assert!(!h.inb(&tcp("192.0.2.1", VM, 80, 1000, TCP_SYN | TCP_ACK)));
        assert!(!h.outb(&tcp(VM, "192.0.2.1", 1001, 80, TCP_SYN)));
        assert!(h.outb(&tcp(VM, "192.0.2.1", 1002, 443, TCP_SYN)));
        assert!(!h.outb(&tcp(VM, "198.51.100.1", 1003, 443, TCP_SYN)));
        assert!(!h.outb(&udp(VM, "192.0.2.1", 1004, 53)));
        assert!(h.inb(&tcp("192.0.2.1", VM, 443, 1002, TCP_SYN | TCP_ACK)));
        assert_eq!(h.fw.stats().flows_revoked, 1);
        h.check_counters();
    }

    #[test]
    fn flows_expire_with_the_clock() {
        let mut h = H::new();
        assert!(h.outb(&udp(VM, "10.0.0.1", 3000, 53)));
        h.clock.advance(Duration::from_secs(59));
        assert!(h.inb(&udp("10.0.0.1", VM, 53, 3000)));
        h.clock.advance(Duration::from_secs(61));
        assert!(!h.inb(&udp("10.0.0.1", VM, 53, 3000)), "expired");
        assert_eq!(h.fw.flows().counters().expired, 1);
        // TCP: FIN shortens to 15 s.
        assert!(h.outb(&tcp(VM, "10.0.0.1", 4000, 80, TCP_SYN)));
        assert!(h.inb(&tcp("10.0.0.1", VM, 80, 4000, TCP_SYN | TCP_ACK)));
        assert!(h.outb(&tcp(VM, "10.0.0.1", 4000, 80, TCP_ACK | TCP_FIN)));
        h.clock.advance(Duration::from_secs(16));
        assert!(!h.inb(&tcp("10.0.0.1", VM, 80, 4000, TCP_ACK)));
        h.check_counters();
    }

    #[test]
    fn fragments_of_allowed_flows_pass() {
        let mut h = H::new();
        h.rule(Rule::inbound(
            Protocol::Udp,
            Some(PortRange::single(9)),
            cidr("10.0.1.0/24"),
        ));
        let mut first = frame(ip("10.0.1.5"), ip(VM), IPPROTO_UDP, 1, 9, 0, 0, 64);
        make_ipv4_fragment(&mut first, 77, true, 0);
        let mut later = frame(ip("10.0.1.5"), ip(VM), 17, 0, 0, 0, 0, 0);
        later.truncate(34);
        later.extend_from_slice(&[0xab; 40]);
        later[16..18].copy_from_slice(&60u16.to_be_bytes());
        make_ipv4_fragment(&mut later, 77, false, 9);
        assert!(!h.inb(&later), "before its first fragment: dropped");
        assert!(h.inb(&first));
        assert!(h.inb(&later));
        // Another datagram id: unknown.
        let mut other = later.clone();
        make_ipv4_fragment(&mut other, 78, false, 9);
        assert!(!h.inb(&other));
        // A denied first fragment does not open the way.
        let mut dfirst = frame(ip("10.0.2.5"), ip(VM), IPPROTO_UDP, 1, 9, 0, 0, 64);
        make_ipv4_fragment(&mut dfirst, 79, true, 0);
        let mut dlater = later.clone();
        dlater[26..30].copy_from_slice(&[10, 0, 2, 5]);
        make_ipv4_fragment(&mut dlater, 79, false, 9);
        fix_ipv4_checksum(&mut dlater);
        assert!(!h.inb(&dfirst));
        assert!(!h.inb(&dlater));
        let c = h.fw.stats();
        assert_eq!((c.passed_fragment, c.drop_fragment_unknown), (1, 3));
        h.check_counters();
    }

    #[test]
    fn vm_side_is_configurable() {
        let mut h = H::with(FirewallConfig {
            vm_side: Side::West,
            ..Default::default()
        });
        assert!(h.send(Side::West, &udp(VM, "10.0.0.1", 1, 2)));
        assert!(h.send(Side::East, &udp("10.0.0.1", VM, 2, 1)));
        assert!(!h.send(Side::East, &udp("10.0.0.1", VM, 3, 1)));
    }

    #[test]
    fn table_full_drops_new_flows_when_refusing() {
        let mut h = H::with(FirewallConfig {
            flows: FlowTableConfig {
                max_flows: 2,
                policy: crate::flowtable::FullPolicy::RefuseNew,
                ..Default::default()
            },
            ..Default::default()
        });
        assert!(h.outb(&udp(VM, "10.0.0.1", 1, 2)));
        assert!(h.outb(&udp(VM, "10.0.0.1", 2, 2)));
        assert!(!h.outb(&udp(VM, "10.0.0.1", 3, 2)));
        assert!(h.inb(&udp("10.0.0.1", VM, 2, 1)));
        assert_eq!(h.fw.stats().drop_table_full, 1);
        h.check_counters();
    }

    #[test]
    fn invalid_rules_are_rejected() {
        let mut h = H::new();
        assert_eq!(
            h.fw.add_rule(
                "sg-a",
                Rule::inbound(
                    Protocol::Icmp,
                    Some(PortRange::single(1)),
                    cidr("0.0.0.0/0")
                )
            ),
            Err(FirewallError::PortsNeedTcpOrUdp(Protocol::Icmp))
        );
        assert!(PortRange::new(5, 4).is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!(matches!(
            h.fw.add_rule("nope", Rule::inbound(Protocol::Any, None, cidr("::/0"))),
            Err(FirewallError::UnknownGroup(_))
        ));
    }

    #[test]
    fn many_rules_classify_like_a_linear_scan() {
        // Deterministic xorshift PRNG.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let protos = [Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::Any];
        let mut rules = Vec::new();
        for _ in 0..2000 {
            let proto = protos[(rnd() % 4) as usize];
            let ports = match proto {
                Protocol::Tcp | Protocol::Udp if rnd() % 4 != 0 => {
                    let a = (rnd() % 2000) as u16;
                    Some(PortRange::new(a, a + (rnd() % 50) as u16).unwrap())
                }
                _ => None,
            };
            let len = [32u8, 24, 16, 28][(rnd() % 4) as usize];
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (rnd() as u32 & 0x00ff_ffff)));
            rules.push(Rule::inbound(
                proto,
                ports,
                Peer::Cidr(Cidr::new(addr, len).unwrap()),
            ));
        }
        let mut h = H::new();
        h.fw.upsert_group(SecurityGroup {
            id: "sg-a".into(),
            rules: rules.clone(),
            members: vec![],
        })
        .unwrap();
        let mut allowed = 0;
        for _ in 0..20_000 {
            let proto = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, 47][(rnd() % 4) as usize];
            let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (rnd() as u32 & 0x00ff_ffff)));
            let dport = (rnd() % 2100) as u16;
            let t = FiveTuple::new(src, ip(VM), proto, 1, dport);
            let linear = rules.iter().any(|r| {
                r.protocol.number().is_none_or(|n| n == proto)
                    && r.ports.is_none_or(|p| p.first <= dport && dport <= p.last)
                    && matches!(&r.peer, Peer::Cidr(c) if c.contains(src))
            });
            assert_eq!(h.fw.allows(RuleDirection::Inbound, &t), linear, "{t}");
            allowed += linear as u32;
        }
        assert!(
            allowed > 100,
            "the test must exercise matches too ({allowed})"
        );
    }

    #[test]
    fn fuzz_random_and_truncated_frames_never_panic_and_counters_add_up() {
        let mut s = 0x0123_4567_89ab_cdefu64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut h = H::new();
        h.rule(Rule::inbound(Protocol::Any, None, cidr("0.0.0.0/0")));
        h.rule(Rule::inbound(Protocol::Any, None, cidr("::/0")));
        let seeds = [
            tcp("10.0.0.1", VM, 1, 2, TCP_SYN),
            udp("fd00::1", VM6, 1, 2),
            icmp("10.0.0.1", VM, 1, 8),
            frame(ip("fd00::1"), ip(VM6), 44, 0, 0, 0, 0, 24),
        ];
        let mut total = 0u64;
        let mut passed = 0u64;
        for i in 0..30_000 {
            let mut f = seeds[i % seeds.len()].clone();
            match rnd() % 4 {
                0 => {
                    let n = (rnd() % 120) as usize;
                    f = (0..n).map(|_| rnd() as u8).collect();
                }
                1 => f.truncate((rnd() as usize) % (f.len() + 1)),
                _ => {
                    for _ in 0..1 + rnd() % 4 {
                        let at = (rnd() as usize) % f.len();
                        f[at] = rnd() as u8;
                    }
                }
            }
            if i % 2 == 1 && f.len() >= 34 && f[12..14] == [8, 0] {
                fix_ipv4_checksum(&mut f); // get past the checksum sometimes
            }
            let side = if rnd() % 2 == 0 {
                Side::West
            } else {
                Side::East
            };
            total += 1;
            passed += h.send(side, &f) as u64;
        }
        let c = h.fw.stats();
        assert_eq!(c.passed() + c.dropped(), total);
        assert_eq!(c.passed(), passed);
        assert!(c.drop_malformed > 1000 && c.passed_new > 100, "{c:?}");
        assert_eq!(h.pool.available(), 256, "every frame came back");
    }

    /// An IPv6 datagram of `proto` with a Fragment header (RFC 8200 §4.5) at `offset8`
    /// (8-byte units), M flag `more`, identification `id`; `l4` follows it.
    fn v6_fragment(
        src: &str,
        dst: &str,
        proto: u8,
        id: u32,
        offset8: u16,
        more: bool,
        l4: &[u8],
    ) -> Vec<u8> {
        let mut f = frame(ip(src), ip(dst), 44, 0, 0, 0, 0, 8 + l4.len());
        let fh = &mut f[54..62];
        fh[0] = proto;
        fh[2..4].copy_from_slice(&((offset8 << 3) | more as u16).to_be_bytes());
        fh[4..8].copy_from_slice(&id.to_be_bytes());
        f[62..].copy_from_slice(l4);
        f
    }

    #[test]
    fn icmp_errors_about_known_flows_pass() {
        let mut h = H::new();
        let orig = udp(VM, "192.0.2.1", 5000, 9);
        assert!(h.outb(&orig));
        // Port unreachable from the remote, and from a router on the way, quoting it.
        let unreachable = |from: &str, to: &str, quoted: &[u8]| {
            let mut e = frame(ip(from), ip(to), IPPROTO_ICMP, 0, 0, 0, 3, 0);
            e.extend_from_slice(&quoted[14..14 + 28]);
            let total = (e.len() - 14) as u16;
            e[16..18].copy_from_slice(&total.to_be_bytes());
            fix_ipv4_checksum(&mut e);
            e
        };
        assert!(h.inb(&unreachable("192.0.2.1", VM, &orig)));
        assert!(h.inb(&unreachable("198.51.100.254", VM, &orig)));
        // Quoting a packet of no flow: denied.
        let other = udp(VM, "192.0.2.1", 5001, 9);
        assert!(!h.inb(&unreachable("192.0.2.1", VM, &other)));
        // Sent to someone else than the quoted packet's sender: denied.
        assert!(!h.inb(&unreachable("192.0.2.1", "10.0.0.11", &orig)));
        assert_eq!(h.fw.stats().passed_related, 2);
        h.check_counters();
    }

    #[test]
    fn first_and_later_fragments_in_one_burst_pass() {
        let mut h = H::new();
        h.rule(Rule::inbound(
            Protocol::Udp,
            Some(PortRange::single(9)),
            cidr("10.0.1.0/24"),
        ));
        let mut first = frame(ip("10.0.1.5"), ip(VM), IPPROTO_UDP, 1, 9, 0, 0, 64);
        make_ipv4_fragment(&mut first, 5, true, 0);
        let mut later = frame(ip("10.0.1.5"), ip(VM), 17, 0, 0, 0, 0, 0);
        later.truncate(34);
        later.extend_from_slice(&[0xab; 40]);
        later[16..18].copy_from_slice(&60u16.to_be_bytes());
        make_ipv4_fragment(&mut later, 5, false, 9);
        let mut b = Burst::new();
        for f in [&first, &later, &later] {
            b.push(h.pool.packet_from(f).unwrap()).unwrap();
        }
        let mut out = Emit::new();
        h.fw.burst(Side::West, 0, b, &mut out).unwrap();
        let v = out.take();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].1.len(), 3, "{:?}", h.fw.stats());
        assert_eq!(h.fw.stats().passed_fragment, 2);
    }

    #[test]
    fn ipv6_fragments_of_allowed_flows_pass() {
        let mut h = H::new();
        h.rule(Rule::inbound(
            Protocol::Udp,
            Some(PortRange::single(9)),
            cidr("fd00:1::/64"),
        ));
        let mut udp_hdr = vec![0u8; 16];
        udp_hdr[0..2].copy_from_slice(&1000u16.to_be_bytes());
        udp_hdr[2..4].copy_from_slice(&9u16.to_be_bytes());
        let first = v6_fragment("fd00:1::5", VM6, IPPROTO_UDP, 0xabcd, 0, true, &udp_hdr);
        let later = v6_fragment("fd00:1::5", VM6, IPPROTO_UDP, 0xabcd, 2, false, &[7; 16]);
        let stray = v6_fragment("fd00:1::5", VM6, IPPROTO_UDP, 0xabce, 2, false, &[7; 16]);
        assert!(!h.inb(&later), "before its first fragment");
        assert!(h.inb(&first));
        assert!(h.inb(&later));
        assert!(!h.inb(&stray));
        let denied = v6_fragment("fd00:2::5", VM6, IPPROTO_UDP, 1, 0, true, &udp_hdr);
        assert!(!h.inb(&denied));
        let c = h.fw.stats();
        assert_eq!(
            (
                c.passed_new,
                c.passed_fragment,
                c.drop_fragment_unknown,
                c.drop_denied
            ),
            (1, 1, 2, 1)
        );
        let f = h.fw.flows().iter().next().unwrap().1;
        assert_eq!(
            f.packets(crate::flowtable::FlowDir::Forward),
            2,
            "the later fragment is counted in its flow"
        );
        h.check_counters();
    }

    #[test]
    fn runs_in_a_graph_between_a_generator_and_a_sink() {
        use crate::Graph;
        use crate::bricks::{Collect, PacketGen};
        let pool = Pool::new(PoolConfig {
            frame_count: 512,
            ..Default::default()
        })
        .unwrap();
        let mut fw = Firewall::new(FirewallConfig::default(), Clock::manual()).unwrap();
        fw.set_nic_addresses(vec![ip(VM)]);
        let mut g = Graph::new("fw");
        // The generator plays the VM (EAST of the firewall): its frames are outbound.
        let frames = vec![
            udp(VM, "10.0.0.1", 1, 53),
            udp("10.0.0.99", "10.0.0.1", 1, 53), // not the VM's address
            {
                let mut arp = vec![0xffu8; 42];
                arp[12..14].copy_from_slice(&[0x08, 0x06]);
                arp
            },
        ];
        g.add("sink", Collect::new()).unwrap();
        g.add("fw", fw).unwrap();
        g.add("vm", PacketGen::new(pool.clone(), frames, 30))
            .unwrap();
        g.link_chain(&["sink", "fw", "vm"]).unwrap();
        g.sanity_check().unwrap();
        assert_eq!(g.poll().unwrap(), 30);
        let sink = g.get::<Collect>("sink").unwrap();
        assert_eq!(sink.packets(Side::East), 20, "10 UDP + 10 ARP");
        let st = g.stats("fw").unwrap();
        assert_eq!(st.east.rx_packets, 30);
        assert_eq!(st.west.tx_packets, 20);
        let c = g.get::<Firewall>("fw").unwrap().stats();
        assert_eq!(
            (c.passed_new, c.passed_flow, c.passed_non_ip, c.drop_denied),
            (1, 9, 10, 10)
        );
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn a_fully_denied_burst_emits_nothing() {
        let mut h = H::new();
        let mut b = Burst::new();
        for i in 0..64 {
            b.push(h.pool.packet_from(&udp("10.0.0.1", VM, i, 9)).unwrap())
                .unwrap();
        }
        let mut out = Emit::new();
        h.fw.burst(Side::West, 0, b, &mut out).unwrap();
        assert!(out.pending().is_empty());
        assert_eq!(out.empty_bursts(), 0);
        assert_eq!(h.fw.stats().drop_denied, 64);
        assert_eq!(h.pool.available(), 256);
    }
}

#[cfg(test)]
mod corpus_tests {
    //! Runs the `firewall_parse` fuzz seeds (`fuzz/seeds/firewall_parse`, in git) and
    //! whatever a local `cargo fuzz run firewall_parse` put in `fuzz/corpus/firewall_parse`
    //! through the parser and the brick the way the fuzz target does, with every
    //! truncation and single-byte corruption of each seed, so CI exercises the fuzz
    //! target's checks on stable.

    use super::*;
    use crate::flowtable::parse_ethernet;
    use crate::{Pool, PoolConfig};

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
            "/fuzz/seeds/firewall_parse"
        ));
        assert!(
            seeds.len() >= 10,
            "the seeds are in git (fuzz/seeds/firewall_parse)"
        );
        let mut inputs = seeds.clone();
        inputs.extend(read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/firewall_parse"
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
        let mut fw = Firewall::new(FirewallConfig::default(), Clock::manual()).unwrap();
        fw.set_nic_addresses(vec![
            "10.0.0.10".parse().unwrap(),
            "fd00::10".parse().unwrap(),
        ]);
        let cidr = |s: &str| Peer::Cidr(s.parse().unwrap());
        fw.upsert_group(SecurityGroup {
            id: "sg".into(),
            rules: vec![
                Rule::inbound(
                    Protocol::Tcp,
                    Some(PortRange::new(1, 1024).unwrap()),
                    cidr("0.0.0.0/0"),
                ),
                Rule::inbound(Protocol::Udp, None, cidr("10.0.0.0/8")),
                Rule::inbound(Protocol::Icmp, None, cidr("0.0.0.0/0")),
                Rule::inbound(Protocol::Any, None, cidr("fd00::/16")),
                Rule::inbound(Protocol::Number(47), None, Peer::Group("sg".into())),
            ],
            members: vec!["10.0.0.1".parse().unwrap()],
        })
        .unwrap();
        fw.set_nic_groups(vec!["sg".into()]);
        let mut fed = 0u64;
        let mut passed = 0u64;
        let mut seeds_passed = 0;
        for (k, inp) in inputs.iter().enumerate() {
            let Some((&sel, frame)) = inp.split_first() else {
                continue;
            };
            if let Ok(Parsed::Ip(ip)) = parse_ethernet(frame) {
                assert!(ip.l3_offset < frame.len());
                if let Some(l4) = ip.l4_offset {
                    assert!(l4 <= frame.len() && l4 > ip.l3_offset);
                }
            }
            let Some(p) = pool.packet_from(frame) else {
                continue;
            };
            let mut b = Burst::new();
            b.push(p).unwrap();
            let side = if sel & 1 != 0 { Side::East } else { Side::West };
            let mut out = Emit::new();
            fw.burst(side, 0, b, &mut out).unwrap();
            assert_eq!(out.empty_bursts(), 0);
            let n: usize = out.pending().iter().map(|(_, b)| b.len()).sum();
            passed += n as u64;
            if k < seeds.len() {
                seeds_passed += n;
            }
            drop(out);
            fed += 1;
            let c = fw.stats();
            assert_eq!(fed, c.passed() + c.dropped(), "input {k}: {c:?}");
            assert_eq!(c.passed(), passed);
            assert_eq!(pool.available(), 256, "no frame leaked");
        }
        assert!(
            seeds_passed >= 10,
            "most seeds are allowed traffic ({seeds_passed} passed)"
        );
        assert!(fw.stats().drop_malformed > 100);
    }
}
