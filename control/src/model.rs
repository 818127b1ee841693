//! The desired configuration of a host (NICs, security groups, rules, members, flood
//! lists) and the validation of every request that changes it.
//!
//! [`Config::apply`] is a pure function: it validates a [`Request`] against the current
//! configuration and returns the new configuration plus the [`DesiredChange`]s the
//! dataplane must make, or a [`FieldError`] naming the field and the reason. The current
//! configuration is never touched, so a refused request changes nothing.
//!
//! [`Request`] is also the on-disk format of `butterfly dump` / `butterfly request FILE`
//! (JSON, one object per request), and [`Config::to_requests`] turns a configuration back
//! into the requests that rebuild it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Largest VNI: the field is 24 bits wide (RFC 7348 §5).
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// Longest NIC or security group id, in bytes.
pub const ID_MAX_LEN: usize = 64;
/// Longest Linux interface name (IFNAMSIZ − 1), which a tap NIC's id becomes.
pub const IFNAME_MAX_LEN: usize = 15;
/// Longest Unix socket path, in bytes (`sun_path` is 108 bytes including the NUL).
pub const SOCKET_PATH_MAX_LEN: usize = 107;

/// What kind of refusal a [`FieldError`] is (mapped to a gRPC status code by the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The value is malformed or out of range.
    Invalid,
    /// The request names an object that does not exist.
    NotFound,
    /// The request creates an object that already exists.
    AlreadyExists,
    /// The object is still used by another one.
    InUse,
}

/// A refused request: which field and why. Displayed as `FIELD: REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The kind of refusal.
    pub kind: ErrorKind,
    /// The request field at fault (`mac`, `rule.port_end`, `requests[3].vni`, ...).
    pub field: String,
    /// Why it was refused, naming the offending value.
    pub reason: String,
}

impl FieldError {
    /// A malformed or out-of-range value.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, field, reason)
    }
    /// An unknown id.
    pub fn not_found(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, field, reason)
    }
    /// A duplicate id.
    pub fn exists(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, field, reason)
    }
    /// An object still in use.
    pub fn in_use(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::InUse, field, reason)
    }
    fn new(kind: ErrorKind, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            kind,
            field: field.into(),
            reason: reason.into(),
        }
    }
    /// The same error with `prefix.` in front of the field name.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff` (also accepts `-` separators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// True for group (multicast or broadcast) addresses: the I/G bit (bit 0 of the first
    /// octet, IEEE 802-2014 §8.2) is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    /// True for 00:00:00:00:00:00.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

/// Why a MAC address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a MAC address (expected six hex octets like 52:54:00:12:34:56)")]
pub struct MacParseError(String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How a VM's interface is attached to butterflyd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicType {
    /// butterflyd listens on the vhost-user socket, QEMU connects (the default).
    #[default]
    VhostUserServer,
    /// QEMU listens (`server=on`), butterflyd connects.
    VhostUserClient,
    /// A kernel TAP interface named after the NIC id.
    Tap,
}

impl NicType {
    /// True for both vhost-user variants (they need a socket path).
    pub fn is_vhost_user(self) -> bool {
        matches!(self, NicType::VhostUserServer | NicType::VhostUserClient)
    }
}

impl fmt::Display for NicType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NicType::VhostUserServer => "vhost-user-server",
            NicType::VhostUserClient => "vhost-user-client",
            NicType::Tap => "tap",
        })
    }
}

/// Which traffic a rule matches, seen from the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic towards the VM (ingress).
    In,
    /// Traffic from the VM (egress).
    Out,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
        })
    }
}

/// The IP protocol a rule matches. Numbers of named protocols are normalised to the
/// name (6 → tcp, 17 → udp, 1 → icmp, 58 → icmpv6), so equal rules compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Any protocol.
    All,
    /// TCP (IANA protocol number 6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1), IPv4 only.
    Icmp,
    /// ICMPv6 (58), IPv6 only.
    Icmpv6,
    /// Any other IANA protocol number (0..=255).
    Number(u8),
}

impl Protocol {
    /// True for protocols with ports (TCP, UDP).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// Why a protocol did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a protocol (expected tcp, udp, icmp, icmpv6, all or a number 0..=255)")]
pub struct ProtocolParseError(String);

impl FromStr for Protocol {
    type Err = ProtocolParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "all" | "any" => Protocol::All,
            "tcp" | "6" => Protocol::Tcp,
            "udp" | "17" => Protocol::Udp,
            "icmp" | "1" => Protocol::Icmp,
            "icmpv6" | "58" => Protocol::Icmpv6,
            n => Protocol::Number(n.parse().map_err(|_| ProtocolParseError(s.to_string()))?),
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::All => f.write_str("all"),
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::Number(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An inclusive port range, `start <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

/// Where the remote end of a rule's traffic must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSource {
    /// An address block (the network address, host bits zero).
    Cidr(IpNet),
    /// The member IPs of a security group.
    SgMembers(String),
}

/// A validated firewall rule of a security group (an allow rule: what no rule allows is
/// dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Stable id, unique in its security group.
    pub id: String,
    /// Direction seen from the VM.
    pub direction: Direction,
    /// IP protocol.
    pub protocol: Protocol,
    /// Destination ports (TCP/UDP only); `None` = any.
    pub ports: Option<PortRange>,
    /// The remote end.
    pub source: RuleSource,
}

impl Rule {
    /// The id derived from the rule's content: 16 hex digits of a 64-bit FNV-1a hash of
    /// its canonical text, so the same rule gets the same id on every host and restart.
    pub fn content_id(
        direction: Direction,
        protocol: Protocol,
        ports: Option<PortRange>,
        source: &RuleSource,
    ) -> String {
        let ports = ports.map_or("any".to_string(), |p| format!("{}-{}", p.start, p.end));
        let source = match source {
            RuleSource::Cidr(c) => format!("cidr={c}"),
            RuleSource::SgMembers(s) => format!("sg={s}"),
        };
        let text = format!("{direction} {protocol} {ports} {source}");
        // FNV-1a, 64 bits (offset basis and prime from draft-eastlake-fnv).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// A validated security group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    /// Id.
    pub id: String,
    /// Rules in the order they were added.
    pub rules: Vec<Rule>,
    /// Member IPs (used by rules of any group that name this one in `sg_members`).
    pub members: BTreeSet<IpAddr>,
}

/// A validated virtual NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Id.
    pub id: String,
    /// The VM's MAC address (unicast, not zero, unique in its VNI).
    pub mac: MacAddr,
    /// The VXLAN network (0..=[`VNI_MAX`]).
    pub vni: u32,
    /// The VM's addresses (unique in the VNI).
    pub ips: Vec<IpAddr>,
    /// Attached security groups, in order.
    pub security_groups: Vec<String>,
    /// Drop frames whose source MAC / IP are not the NIC's.
    pub ip_antispoof: bool,
    /// No firewall and no antispoof for this NIC.
    pub bypass_filtering: bool,
    /// How the VM attaches.
    pub nic_type: NicType,
    /// The vhost-user socket (vhost-user types only).
    pub socket_path: Option<PathBuf>,
    /// Record the NIC's traffic to a pcap file.
    pub packet_trace: bool,
    /// Where the pcap file goes (set whenever `packet_trace` is on).
    pub packet_trace_path: Option<PathBuf>,
}

/// The whole desired configuration of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// NICs by id.
    pub nics: BTreeMap<String, Nic>,
    /// Security groups by id.
    pub sgs: BTreeMap<String, SecurityGroup>,
    /// Static flood lists (remote VTEPs) by VNI; a VNI not here floods to its multicast
    /// group ([`multicast_group`]).
    pub flood: BTreeMap<u32, BTreeSet<IpAddr>>,
}

/// Host facts the validation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// This host's VTEP address (the underlay); flood entries must be of its family.
    pub vtep_ip: IpAddr,
    /// Where vhost-user sockets go when a NIC does not name one (`DIR/ID.sock`).
    pub vhost_socket_dir: PathBuf,
    /// Where packet traces go when a NIC does not name one (`DIR/ID.pcap`).
    pub trace_dir: PathBuf,
}

/// A NIC as requested (unvalidated): the body of `nic add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Id: `[A-Za-z0-9._-]{1,64}`, at most 15 bytes for tap NICs.
    pub id: String,
    /// MAC address.
    pub mac: String,
    /// VNI.
    pub vni: u32,
    /// The VM's IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// Security groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// Antispoof on.
    #[serde(default)]
    pub ip_antispoof: bool,
    /// Bypass firewall and antispoof.
    #[serde(default)]
    pub bypass_filtering: bool,
    /// Attachment.
    #[serde(default, rename = "type")]
    pub nic_type: NicType,
    /// vhost-user socket path (absolute); default `VHOST_SOCKET_DIR/ID.sock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// Packet trace on.
    #[serde(default)]
    pub packet_trace: bool,
    /// Packet trace file (absolute); default `TRACE_DIR/ID.pcap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_trace_path: Option<String>,
}

/// The body of `nic update`: absent fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicUpdate {
    /// The NIC.
    pub id: String,
    /// New IP list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
    /// New security group list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    /// Antispoof on/off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_antispoof: Option<bool>,
    /// Bypass on/off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_filtering: Option<bool>,
    /// Packet trace on/off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_trace: Option<bool>,
    /// Packet trace file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_trace_path: Option<String>,
}

/// A rule as requested (unvalidated): the body of `sg rule add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable id; derived from the content ([`Rule::content_id`]) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Direction.
    pub direction: Direction,
    /// `tcp`, `udp`, `icmp`, `all` or a number 0..=255.
    pub protocol: String,
    /// First destination port (TCP/UDP only); absent with `port_end` = any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_start: Option<u32>,
    /// Last destination port (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_end: Option<u32>,
    /// Remote address block; exactly one of `cidr` and `sg_members`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Remote = the members of this security group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sg_members: Option<String>,
}

/// One configuration request: what the API's mutating calls carry, and one line of a
/// `butterfly dump` file (JSON, externally tagged: `{"nic_add": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Create a NIC.
    NicAdd(NicSpec),
    /// Change a NIC.
    NicUpdate(NicUpdate),
    /// Remove a NIC.
    NicDel {
        /// The NIC.
        id: String,
    },
    /// Attach a security group to a NIC.
    NicSgAdd {
        /// The NIC.
        nic: String,
        /// The security group.
        sg: String,
    },
    /// Detach a security group from a NIC.
    NicSgDel {
        /// The NIC.
        nic: String,
        /// The security group.
        sg: String,
    },
    /// Create a security group.
    SgAdd {
        /// Its id.
        id: String,
    },
    /// Remove a security group (refused while used).
    SgDel {
        /// Its id.
        id: String,
    },
    /// Add a rule to a security group.
    SgRuleAdd {
        /// The security group.
        sg: String,
        /// The rule.
        rule: RuleSpec,
    },
    /// Remove a rule.
    SgRuleDel {
        /// The security group.
        sg: String,
        /// The rule's id.
        rule_id: String,
    },
    /// Add a member IP.
    SgMemberAdd {
        /// The security group.
        sg: String,
        /// The IP.
        ip: String,
    },
    /// Remove a member IP.
    SgMemberDel {
        /// The security group.
        sg: String,
        /// The IP.
        ip: String,
    },
    /// Add a remote VTEP to a VNI's static flood list.
    FloodAdd {
        /// The VNI.
        vni: u32,
        /// The remote VTEP's underlay address.
        vtep: String,
    },
    /// Remove a remote VTEP from a VNI's flood list.
    FloodDel {
        /// The VNI.
        vni: u32,
        /// The remote VTEP's underlay address.
        vtep: String,
    },
}

/// What the dataplane must do after an accepted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredChange {
    /// Build the NIC's chain (firewall → antispoof → \[sniffer\] → vhost/tap) and link it
    /// to its VNI (to the VTEP, or to the VNI's switch once it has two NICs).
    NicAdded(Nic),
    /// Rebuild what differs between `old` and `new` (IPs, groups, antispoof, bypass,
    /// trace); MAC, VNI, type and socket never change.
    NicUpdated {
        /// Before.
        old: Nic,
        /// After.
        new: Nic,
    },
    /// Unlink and remove the NIC's chain (and the VNI's switch when one NIC is left).
    NicRemoved(Nic),
    /// Security group rules or members changed: reload the firewall rules of these NICs.
    FirewallChanged {
        /// The NICs whose firewall must be rebuilt (sorted, no duplicates).
        nics: Vec<String>,
    },
    /// A VNI's static flood list changed (empty = back to the multicast group).
    FloodChanged {
        /// The VNI.
        vni: u32,
        /// Its remote VTEPs.
        vteps: Vec<IpAddr>,
    },
}

/// An accepted request: the configuration after it and what the dataplane must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The new configuration.
    pub config: Config,
    /// The dataplane's work, in order.
    pub changes: Vec<DesiredChange>,
}

/// The multicast group a VNI floods to by default, as butterfly did: `230.0.0.0/8` with
/// the VNI in the low 24 bits for an IPv4 underlay (VNI 42 → 230.0.0.42), and `ff0e::/16`
/// (global scope, RFC 4291 §2.7) with the VNI in the low 24 bits for an IPv6 underlay
/// (VNI 42 → ff0e::2a). A Linux `vxlan` device with `group 230.0.0.42` interoperates on
/// VNI 42. Bits of `vni` above [`VNI_MAX`] are ignored.
pub fn multicast_group(vni: u32, underlay: IpAddr) -> IpAddr {
    let vni = vni & VNI_MAX;
    match underlay {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(0xe600_0000 | vni)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from((0xff0e_u128 << 112) | u128::from(vni))),
    }
}

fn validate_id(field: &str, id: &str) -> Result<(), FieldError> {
    if id.is_empty() {
        return Err(FieldError::invalid(field, "must not be empty"));
    }
    if id.len() > ID_MAX_LEN {
        return Err(FieldError::invalid(
            field,
            format!(
                "'{id}' is {} bytes long, the limit is {ID_MAX_LEN}",
                id.len()
            ),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(FieldError::invalid(
            field,
            format!("'{id}' contains {c:?}; allowed are letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

fn parse_mac(field: &str, s: &str) -> Result<MacAddr, FieldError> {
    let mac: MacAddr = s
        .parse()
        .map_err(|e: MacParseError| FieldError::invalid(field, e.to_string()))?;
    if mac.is_zero() {
        return Err(FieldError::invalid(
            field,
            format!("{mac} is the zero address"),
        ));
    }
    if mac.is_multicast() {
        return Err(FieldError::invalid(
            field,
            format!("{mac} is a multicast/broadcast address (lowest bit of the first octet set)"),
        ));
    }
    Ok(mac)
}

fn validate_vni(field: &str, vni: u32) -> Result<u32, FieldError> {
    if vni > VNI_MAX {
        return Err(FieldError::invalid(
            field,
            format!("{vni} is above {VNI_MAX} (a VNI is 24 bits, RFC 7348 §5)"),
        ));
    }
    Ok(vni)
}

/// A unicast host address: not unspecified, not multicast, not broadcast.
fn parse_unicast_ip(field: &str, s: &str) -> Result<IpAddr, FieldError> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| FieldError::invalid(field, format!("'{s}' is not an IPv4 or IPv6 address")))?;
    if ip.is_unspecified() {
        return Err(FieldError::invalid(
            field,
            format!("{ip} is the unspecified address"),
        ));
    }
    if ip.is_multicast() {
        return Err(FieldError::invalid(
            field,
            format!("{ip} is a multicast address"),
        ));
    }
    if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Err(FieldError::invalid(
            field,
            format!("{ip} is the broadcast address"),
        ));
    }
    Ok(ip)
}

fn parse_ips(field: &str, list: &[String]) -> Result<Vec<IpAddr>, FieldError> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let ip = parse_unicast_ip(&format!("{field}[{i}]"), s)?;
        if out.contains(&ip) {
            return Err(FieldError::invalid(
                format!("{field}[{i}]"),
                format!("{ip} is listed twice"),
            ));
        }
        out.push(ip);
    }
    Ok(out)
}

fn parse_cidr(field: &str, s: &str) -> Result<IpNet, FieldError> {
    let net: IpNet = s.parse().map_err(|_| {
        FieldError::invalid(
            field,
            format!("'{s}' is not a CIDR (expected ADDRESS/PREFIX like 10.0.0.0/24 or fd00::/64)"),
        )
    })?;
    if net.addr() != net.network() {
        return Err(FieldError::invalid(
            field,
            format!("'{s}' has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

fn validate_port(field: &str, p: u32) -> Result<u16, FieldError> {
    u16::try_from(p).map_err(|_| FieldError::invalid(field, format!("{p} is above 65535")))
}

fn parse_path(field: &str, s: &str, max_len: Option<usize>) -> Result<PathBuf, FieldError> {
    if s.is_empty() {
        return Err(FieldError::invalid(field, "must not be empty"));
    }
    if s.contains('\0') {
        return Err(FieldError::invalid(field, "contains a NUL byte"));
    }
    let path = Path::new(s);
    if !path.is_absolute() {
        return Err(FieldError::invalid(
            field,
            format!("'{s}' is not an absolute path"),
        ));
    }
    if path.file_name().is_none() {
        return Err(FieldError::invalid(
            field,
            format!("'{s}' does not name a file"),
        ));
    }
    if let Some(max) = max_len
        && s.len() > max
    {
        return Err(FieldError::invalid(
            field,
            format!(
                "'{s}' is {} bytes long, a Unix socket path holds at most {max}",
                s.len()
            ),
        ));
    }
    Ok(path.to_path_buf())
}

fn ip_family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

impl Config {
    /// Validates `req` against this configuration and returns the configuration after it,
    /// or the first problem found. `self` is never modified.
    pub fn apply(&self, req: &Request, ctx: &Context) -> Result<Outcome, FieldError> {
        let mut next = self.clone();
        let changes = next.apply_in_place(req, ctx)?;
        Ok(Outcome {
            config: next,
            changes,
        })
    }

    /// Applies `reqs` in order, all or nothing (on `base` = this configuration, or an
    /// empty one when `replace`). An error's field is prefixed with `requests[N]`.
    pub fn apply_all(
        &self,
        reqs: &[Request],
        replace: bool,
        ctx: &Context,
    ) -> Result<Outcome, FieldError> {
        let mut next = if replace {
            Config::default()
        } else {
            self.clone()
        };
        let mut changes = Vec::new();
        for (i, req) in reqs.iter().enumerate() {
            changes.extend(
                next.apply_in_place(req, ctx)
                    .map_err(|e| e.within(&format!("requests[{i}]")))?,
            );
        }
        Ok(Outcome {
            config: next,
            changes,
        })
    }

    /// Applies on `self`; callers work on a clone so a failure leaves no trace.
    fn apply_in_place(
        &mut self,
        req: &Request,
        ctx: &Context,
    ) -> Result<Vec<DesiredChange>, FieldError> {
        match req {
            Request::NicAdd(spec) => {
                let nic = self.validate_new_nic(spec, ctx)?;
                self.nics.insert(nic.id.clone(), nic.clone());
                Ok(vec![DesiredChange::NicAdded(nic)])
            }
            Request::NicUpdate(upd) => {
                let old = self.nic("id", &upd.id)?.clone();
                let mut new = old.clone();
                if let Some(ips) = &upd.ips {
                    new.ips = parse_ips("ips", ips)?;
                    self.check_ips_free(&new.ips, new.vni, &new.id)?;
                }
                if let Some(sgs) = &upd.security_groups {
                    new.security_groups = self.validate_sg_list(sgs)?;
                }
                if let Some(v) = upd.ip_antispoof {
                    new.ip_antispoof = v;
                }
                if let Some(v) = upd.bypass_filtering {
                    new.bypass_filtering = v;
                }
                if let Some(p) = &upd.packet_trace_path {
                    new.packet_trace_path = Some(parse_path("packet_trace_path", p, None)?);
                }
                if let Some(v) = upd.packet_trace {
                    new.packet_trace = v;
                }
                if new.packet_trace && new.packet_trace_path.is_none() {
                    new.packet_trace_path = Some(ctx.trace_dir.join(format!("{}.pcap", new.id)));
                }
                if let Some(p) = &new.packet_trace_path {
                    self.check_trace_path_free(p, &new.id)?;
                }
                self.nics.insert(new.id.clone(), new.clone());
                Ok(vec![DesiredChange::NicUpdated { old, new }])
            }
            Request::NicDel { id } => {
                self.nic("id", id)?;
                let nic = self.nics.remove(id).expect("checked above");
                Ok(vec![DesiredChange::NicRemoved(nic)])
            }
            Request::NicSgAdd { nic, sg } => {
                let old = self.nic("nic", nic)?.clone();
                self.sg("sg", sg)?;
                if old.security_groups.contains(sg) {
                    return Err(FieldError::exists(
                        "sg",
                        format!("security group '{sg}' is already attached to nic '{nic}'"),
                    ));
                }
                let mut new = old.clone();
                new.security_groups.push(sg.clone());
                self.nics.insert(nic.clone(), new.clone());
                Ok(vec![DesiredChange::NicUpdated { old, new }])
            }
            Request::NicSgDel { nic, sg } => {
                let old = self.nic("nic", nic)?.clone();
                if !old.security_groups.contains(sg) {
                    return Err(FieldError::not_found(
                        "sg",
                        format!("security group '{sg}' is not attached to nic '{nic}'"),
                    ));
                }
                let mut new = old.clone();
                new.security_groups.retain(|s| s != sg);
                self.nics.insert(nic.clone(), new.clone());
                Ok(vec![DesiredChange::NicUpdated { old, new }])
            }
            Request::SgAdd { id } => {
                validate_id("id", id)?;
                if self.sgs.contains_key(id) {
                    return Err(FieldError::exists(
                        "id",
                        format!("security group '{id}' already exists"),
                    ));
                }
                self.sgs.insert(
                    id.clone(),
                    SecurityGroup {
                        id: id.clone(),
                        ..SecurityGroup::default()
                    },
                );
                Ok(vec![])
            }
            Request::SgDel { id } => {
                self.sg("id", id)?;
                if let Some(nic) = self.nics.values().find(|n| n.security_groups.contains(id)) {
                    return Err(FieldError::in_use(
                        "id",
                        format!("security group '{id}' is used by nic '{}'", nic.id),
                    ));
                }
                for other in self.sgs.values().filter(|s| &s.id != id) {
                    if let Some(rule) = other
                        .rules
                        .iter()
                        .find(|r| r.source == RuleSource::SgMembers(id.clone()))
                    {
                        return Err(FieldError::in_use(
                            "id",
                            format!(
                                "security group '{id}' is named by rule {} of security group '{}'",
                                rule.id, other.id
                            ),
                        ));
                    }
                }
                self.sgs.remove(id);
                Ok(vec![])
            }
            Request::SgRuleAdd { sg, rule } => {
                self.sg("sg", sg)?;
                let rule = self.validate_rule(sg, rule).map_err(|e| e.within("rule"))?;
                let group = self.sgs.get_mut(sg).expect("checked above");
                group.rules.push(rule);
                Ok(self.firewall_change(self.users_of(sg)))
            }
            Request::SgRuleDel { sg, rule_id } => {
                let group = self.sg("sg", sg)?;
                let Some(pos) = group.rules.iter().position(|r| &r.id == rule_id) else {
                    return Err(FieldError::not_found(
                        "rule_id",
                        format!("security group '{sg}' has no rule '{rule_id}'"),
                    ));
                };
                self.sgs.get_mut(sg).expect("checked").rules.remove(pos);
                Ok(self.firewall_change(self.users_of(sg)))
            }
            Request::SgMemberAdd { sg, ip } => {
                self.sg("sg", sg)?;
                let ip = parse_unicast_ip("ip", ip)?;
                let group = self.sgs.get_mut(sg).expect("checked above");
                if !group.members.insert(ip) {
                    return Err(FieldError::exists(
                        "ip",
                        format!("{ip} is already a member of security group '{sg}'"),
                    ));
                }
                Ok(self.firewall_change(self.member_users_of(sg)))
            }
            Request::SgMemberDel { sg, ip } => {
                self.sg("sg", sg)?;
                let ip = parse_unicast_ip("ip", ip)?;
                let group = self.sgs.get_mut(sg).expect("checked above");
                if !group.members.remove(&ip) {
                    return Err(FieldError::not_found(
                        "ip",
                        format!("{ip} is not a member of security group '{sg}'"),
                    ));
                }
                Ok(self.firewall_change(self.member_users_of(sg)))
            }
            Request::FloodAdd { vni, vtep } => {
                let vni = validate_vni("vni", *vni)?;
                let vtep = parse_unicast_ip("vtep", vtep)?;
                if vtep.is_ipv4() != ctx.vtep_ip.is_ipv4() {
                    return Err(FieldError::invalid(
                        "vtep",
                        format!(
                            "{vtep} is {} but this host's VTEP {} is {}",
                            ip_family(&vtep),
                            ctx.vtep_ip,
                            ip_family(&ctx.vtep_ip)
                        ),
                    ));
                }
                if vtep == ctx.vtep_ip {
                    return Err(FieldError::invalid(
                        "vtep",
                        format!("{vtep} is this host's own VTEP"),
                    ));
                }
                let list = self.flood.entry(vni).or_default();
                if !list.insert(vtep) {
                    return Err(FieldError::exists(
                        "vtep",
                        format!("{vtep} is already in the flood list of VNI {vni}"),
                    ));
                }
                let vteps = list.iter().copied().collect();
                Ok(vec![DesiredChange::FloodChanged { vni, vteps }])
            }
            Request::FloodDel { vni, vtep } => {
                let vni = validate_vni("vni", *vni)?;
                let vtep = parse_unicast_ip("vtep", vtep)?;
                let Some(list) = self.flood.get_mut(&vni).filter(|l| l.contains(&vtep)) else {
                    return Err(FieldError::not_found(
                        "vtep",
                        format!("{vtep} is not in the flood list of VNI {vni}"),
                    ));
                };
                list.remove(&vtep);
                let vteps: Vec<IpAddr> = list.iter().copied().collect();
                if vteps.is_empty() {
                    self.flood.remove(&vni);
                }
                Ok(vec![DesiredChange::FloodChanged { vni, vteps }])
            }
        }
    }

    fn nic(&self, field: &str, id: &str) -> Result<&Nic, FieldError> {
        self.nics
            .get(id)
            .ok_or_else(|| FieldError::not_found(field, format!("no nic '{id}'")))
    }

    fn sg(&self, field: &str, id: &str) -> Result<&SecurityGroup, FieldError> {
        self.sgs
            .get(id)
            .ok_or_else(|| FieldError::not_found(field, format!("no security group '{id}'")))
    }

    fn validate_new_nic(&self, spec: &NicSpec, ctx: &Context) -> Result<Nic, FieldError> {
        validate_id("id", &spec.id)?;
        if spec.nic_type == NicType::Tap && spec.id.len() > IFNAME_MAX_LEN {
            return Err(FieldError::invalid(
                "id",
                format!(
                    "'{}' is {} bytes long; a tap NIC's id is its interface name, at most {IFNAME_MAX_LEN}",
                    spec.id,
                    spec.id.len()
                ),
            ));
        }
        if self.nics.contains_key(&spec.id) {
            return Err(FieldError::exists(
                "id",
                format!("nic '{}' already exists", spec.id),
            ));
        }
        let mac = parse_mac("mac", &spec.mac)?;
        let vni = validate_vni("vni", spec.vni)?;
        if let Some(other) = self.nics.values().find(|n| n.vni == vni && n.mac == mac) {
            return Err(FieldError::exists(
                "mac",
                format!("{mac} is already used by nic '{}' on VNI {vni}", other.id),
            ));
        }
        let ips = parse_ips("ips", &spec.ips)?;
        self.check_ips_free(&ips, vni, &spec.id)?;
        let security_groups = self.validate_sg_list(&spec.security_groups)?;
        let socket_path = match (spec.nic_type.is_vhost_user(), &spec.socket_path) {
            (true, Some(p)) => Some(parse_path("socket_path", p, Some(SOCKET_PATH_MAX_LEN))?),
            (true, None) => {
                let p = ctx.vhost_socket_dir.join(format!("{}.sock", spec.id));
                let s = p.to_string_lossy();
                parse_path("socket_path", &s, Some(SOCKET_PATH_MAX_LEN))?;
                Some(p)
            }
            (false, Some(_)) => {
                return Err(FieldError::invalid(
                    "socket_path",
                    "only vhost-user NICs have a socket; a tap NIC is the interface named by its id",
                ));
            }
            (false, None) => None,
        };
        if let Some(p) = &socket_path
            && let Some(other) = self
                .nics
                .values()
                .find(|n| n.socket_path.as_deref() == Some(p.as_path()))
        {
            return Err(FieldError::exists(
                "socket_path",
                format!("{} is already used by nic '{}'", p.display(), other.id),
            ));
        }
        let packet_trace_path = match &spec.packet_trace_path {
            Some(p) => Some(parse_path("packet_trace_path", p, None)?),
            None if spec.packet_trace => Some(ctx.trace_dir.join(format!("{}.pcap", spec.id))),
            None => None,
        };
        if let Some(p) = &packet_trace_path {
            self.check_trace_path_free(p, &spec.id)?;
        }
        Ok(Nic {
            id: spec.id.clone(),
            mac,
            vni,
            ips,
            security_groups,
            ip_antispoof: spec.ip_antispoof,
            bypass_filtering: spec.bypass_filtering,
            nic_type: spec.nic_type,
            socket_path,
            packet_trace: spec.packet_trace,
            packet_trace_path,
        })
    }

    fn check_ips_free(&self, ips: &[IpAddr], vni: u32, nic: &str) -> Result<(), FieldError> {
        for (i, ip) in ips.iter().enumerate() {
            if let Some(other) = self
                .nics
                .values()
                .find(|n| n.id != nic && n.vni == vni && n.ips.contains(ip))
            {
                return Err(FieldError::exists(
                    format!("ips[{i}]"),
                    format!("{ip} is already used by nic '{}' on VNI {vni}", other.id),
                ));
            }
        }
        Ok(())
    }

    fn check_trace_path_free(&self, path: &Path, nic: &str) -> Result<(), FieldError> {
        if let Some(other) = self
            .nics
            .values()
            .find(|n| n.id != nic && n.packet_trace_path.as_deref() == Some(path))
        {
            return Err(FieldError::exists(
                "packet_trace_path",
                format!("{} is already used by nic '{}'", path.display(), other.id),
            ));
        }
        Ok(())
    }

    fn validate_sg_list(&self, list: &[String]) -> Result<Vec<String>, FieldError> {
        let mut out: Vec<String> = Vec::with_capacity(list.len());
        for (i, sg) in list.iter().enumerate() {
            let field = format!("security_groups[{i}]");
            self.sg(&field, sg)?;
            if out.contains(sg) {
                return Err(FieldError::invalid(
                    field,
                    format!("'{sg}' is listed twice"),
                ));
            }
            out.push(sg.clone());
        }
        Ok(out)
    }

    fn validate_rule(&self, sg: &str, spec: &RuleSpec) -> Result<Rule, FieldError> {
        let protocol: Protocol = spec
            .protocol
            .parse()
            .map_err(|e: ProtocolParseError| FieldError::invalid("protocol", e.to_string()))?;
        let ports = match (spec.port_start, spec.port_end) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(FieldError::invalid(
                    "port_end",
                    "missing (port_start is set)",
                ));
            }
            (None, Some(_)) => {
                return Err(FieldError::invalid(
                    "port_start",
                    "missing (port_end is set)",
                ));
            }
            (Some(s), Some(e)) => {
                let start = validate_port("port_start", s)?;
                let end = validate_port("port_end", e)?;
                if start > end {
                    return Err(FieldError::invalid(
                        "port_end",
                        format!("{end} is below port_start {start}"),
                    ));
                }
                if !protocol.has_ports() {
                    return Err(FieldError::invalid(
                        "port_start",
                        format!("ports apply to tcp and udp only, not to protocol {protocol}"),
                    ));
                }
                Some(PortRange { start, end })
            }
        };
        let source = match (&spec.cidr, &spec.sg_members) {
            (Some(c), None) => {
                let net = parse_cidr("cidr", c)?;
                let wrong = match protocol {
                    Protocol::Icmp if net.addr().is_ipv6() => Some("icmp is IPv4 only; use icmpv6"),
                    Protocol::Icmpv6 if net.addr().is_ipv4() => {
                        Some("icmpv6 is IPv6 only; use icmp")
                    }
                    _ => None,
                };
                if let Some(why) = wrong {
                    return Err(FieldError::invalid("protocol", format!("{why} with {net}")));
                }
                RuleSource::Cidr(net)
            }
            (None, Some(s)) => {
                if s != sg {
                    self.sg("sg_members", s)?;
                }
                RuleSource::SgMembers(s.clone())
            }
            (None, None) => {
                return Err(FieldError::invalid(
                    "cidr",
                    "a rule needs a cidr or sg_members (the remote end)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(FieldError::invalid(
                    "sg_members",
                    "give either cidr or sg_members, not both",
                ));
            }
        };
        let content = Rule::content_id(spec.direction, protocol, ports, &source);
        let group = &self.sgs[sg];
        if let Some(same) = group.rules.iter().find(|r| {
            r.direction == spec.direction
                && r.protocol == protocol
                && r.ports == ports
                && r.source == source
        }) {
            return Err(FieldError::exists(
                "rule",
                format!(
                    "security group '{sg}' already has this rule (id {})",
                    same.id
                ),
            ));
        }
        let id = match &spec.id {
            Some(id) => {
                validate_id("id", id)?;
                id.clone()
            }
            None => content,
        };
        if group.rules.iter().any(|r| r.id == id) {
            return Err(FieldError::exists(
                "id",
                format!("security group '{sg}' already has a rule '{id}'"),
            ));
        }
        Ok(Rule {
            id,
            direction: spec.direction,
            protocol,
            ports,
            source,
        })
    }

    /// NICs that use security group `sg` directly.
    fn users_of(&self, sg: &str) -> BTreeSet<String> {
        self.nics
            .values()
            .filter(|n| n.security_groups.iter().any(|s| s == sg))
            .map(|n| n.id.clone())
            .collect()
    }

    /// NICs whose rules name `sg`'s members (through any of their groups).
    fn member_users_of(&self, sg: &str) -> BTreeSet<String> {
        let referring: Vec<&str> = self
            .sgs
            .values()
            .filter(|g| {
                g.rules
                    .iter()
                    .any(|r| r.source == RuleSource::SgMembers(sg.to_string()))
            })
            .map(|g| g.id.as_str())
            .collect();
        referring.iter().flat_map(|g| self.users_of(g)).collect()
    }

    fn firewall_change(&self, nics: BTreeSet<String>) -> Vec<DesiredChange> {
        if nics.is_empty() {
            return vec![];
        }
        vec![DesiredChange::FirewallChanged {
            nics: nics.into_iter().collect(),
        }]
    }

    /// The requests that rebuild this configuration from an empty one, in an order that
    /// applies cleanly: security groups, their members and rules, NICs, flood lists.
    pub fn to_requests(&self) -> Vec<Request> {
        let mut out = Vec::new();
        for id in self.sgs.keys() {
            out.push(Request::SgAdd { id: id.clone() });
        }
        for sg in self.sgs.values() {
            for ip in &sg.members {
                out.push(Request::SgMemberAdd {
                    sg: sg.id.clone(),
                    ip: ip.to_string(),
                });
            }
            for r in &sg.rules {
                out.push(Request::SgRuleAdd {
                    sg: sg.id.clone(),
                    rule: r.to_spec(),
                });
            }
        }
        for nic in self.nics.values() {
            out.push(Request::NicAdd(nic.to_spec()));
        }
        for (vni, vteps) in &self.flood {
            for vtep in vteps {
                out.push(Request::FloodAdd {
                    vni: *vni,
                    vtep: vtep.to_string(),
                });
            }
        }
        out
    }
}

impl Rule {
    /// The request that recreates this rule (id included).
    pub fn to_spec(&self) -> RuleSpec {
        let (cidr, sg_members) = match &self.source {
            RuleSource::Cidr(c) => (Some(c.to_string()), None),
            RuleSource::SgMembers(s) => (None, Some(s.clone())),
        };
        RuleSpec {
            id: Some(self.id.clone()),
            direction: self.direction,
            protocol: self.protocol.to_string(),
            port_start: self.ports.map(|p| u32::from(p.start)),
            port_end: self.ports.map(|p| u32::from(p.end)),
            cidr,
            sg_members,
        }
    }
}

impl Nic {
    /// The request that recreates this NIC (resolved paths included).
    pub fn to_spec(&self) -> NicSpec {
        NicSpec {
            id: self.id.clone(),
            mac: self.mac.to_string(),
            vni: self.vni,
            ips: self.ips.iter().map(|i| i.to_string()).collect(),
            security_groups: self.security_groups.clone(),
            ip_antispoof: self.ip_antispoof,
            bypass_filtering: self.bypass_filtering,
            nic_type: self.nic_type,
            socket_path: self
                .socket_path
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
            packet_trace: self.packet_trace,
            packet_trace_path: self
                .packet_trace_path
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            vtep_ip: "192.0.2.1".parse().unwrap(),
            vhost_socket_dir: PathBuf::from("/run/butterfly/vhost"),
            trace_dir: PathBuf::from("/var/log/butterfly"),
        }
    }

    fn nic(id: &str, mac: &str, vni: u32) -> NicSpec {
        NicSpec {
            id: id.into(),
            mac: mac.into(),
            vni,
            ..NicSpec::default()
        }
    }

    fn rule(proto: &str) -> RuleSpec {
        RuleSpec {
            id: None,
            direction: Direction::In,
            protocol: proto.into(),
            port_start: None,
            port_end: None,
            cidr: Some("10.0.0.0/24".into()),
            sg_members: None,
        }
    }

    /// A configuration with sg `web` (one rule, one member) and nic `vm1` on VNI 42.
    fn base() -> Config {
        let reqs = vec![
            Request::SgAdd { id: "web".into() },
            Request::SgMemberAdd {
                sg: "web".into(),
                ip: "10.0.0.5".into(),
            },
            Request::SgRuleAdd {
                sg: "web".into(),
                rule: rule("icmp"),
            },
            Request::NicAdd(NicSpec {
                ips: vec!["10.0.0.1".into()],
                security_groups: vec!["web".into()],
                ..nic("vm1", "52:54:00:00:00:01", 42)
            }),
        ];
        Config::default()
            .apply_all(&reqs, false, &ctx())
            .unwrap()
            .config
    }

    /// Applies `req` to `cfg`, expects a refusal on `field` of `kind` whose reason contains
    /// `needle`, and checks the configuration is unchanged.
    fn refused(cfg: &Config, req: Request, kind: ErrorKind, field: &str, needle: &str) {
        let before = cfg.clone();
        let err = cfg
            .apply(&req, &ctx())
            .expect_err("request must be refused");
        assert_eq!(err.field, field, "{err}");
        assert_eq!(err.kind, kind, "{err}");
        assert!(
            err.reason.contains(needle),
            "reason {:?} lacks {needle:?}",
            err.reason
        );
        assert_eq!(*cfg, before);
    }

    #[test]
    fn mac_parses_and_prints() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<MacAddr>().unwrap(), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
            "525400abcd0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nic_add_accepts_and_resolves_defaults() {
        let out = base()
            .apply(
                &Request::NicAdd(NicSpec {
                    packet_trace: true,
                    ..nic("vm2", "52:54:00:00:00:02", 42)
                }),
                &ctx(),
            )
            .unwrap();
        let n = &out.config.nics["vm2"];
        assert_eq!(
            n.socket_path.as_deref(),
            Some(Path::new("/run/butterfly/vhost/vm2.sock"))
        );
        assert_eq!(
            n.packet_trace_path.as_deref(),
            Some(Path::new("/var/log/butterfly/vm2.pcap"))
        );
        assert_eq!(out.changes, vec![DesiredChange::NicAdded(n.clone())]);
    }

    #[test]
    fn nic_add_bad_mac() {
        let c = base();
        refused(
            &c,
            Request::NicAdd(nic("vm2", "52:54:00:00:00", 42)),
            ErrorKind::Invalid,
            "mac",
            "not a MAC address",
        );
        refused(
            &c,
            Request::NicAdd(nic("vm2", "00:00:00:00:00:00", 42)),
            ErrorKind::Invalid,
            "mac",
            "zero address",
        );
        refused(
            &c,
            Request::NicAdd(nic("vm2", "01:00:5e:00:00:01", 42)),
            ErrorKind::Invalid,
            "mac",
            "multicast",
        );
        refused(
            &c,
            Request::NicAdd(nic("vm2", "ff:ff:ff:ff:ff:ff", 42)),
            ErrorKind::Invalid,
            "mac",
            "multicast/broadcast",
        );
    }

    #[test]
    fn nic_add_duplicate_mac_in_vni_but_not_across_vnis() {
        let c = base();
        refused(
            &c,
            Request::NicAdd(nic("vm2", "52:54:00:00:00:01", 42)),
            ErrorKind::AlreadyExists,
            "mac",
            "used by nic 'vm1'",
        );
        c.apply(&Request::NicAdd(nic("vm2", "52:54:00:00:00:01", 7)), &ctx())
            .unwrap();
    }

    #[test]
    fn nic_add_bad_vni() {
        let c = base();
        refused(
            &c,
            Request::NicAdd(nic("vm2", "52:54:00:00:00:02", 1 << 24)),
            ErrorKind::Invalid,
            "vni",
            "16777216 is above 16777215",
        );
        c.apply(
            &Request::NicAdd(nic("vm2", "52:54:00:00:00:02", VNI_MAX)),
            &ctx(),
        )
        .unwrap();
    }

    #[test]
    fn nic_add_bad_ids() {
        let c = base();
        refused(
            &c,
            Request::NicAdd(nic("", "52:54:00:00:00:02", 1)),
            ErrorKind::Invalid,
            "id",
            "must not be empty",
        );
        refused(
            &c,
            Request::NicAdd(nic("vm 2", "52:54:00:00:00:02", 1)),
            ErrorKind::Invalid,
            "id",
            "contains ' '",
        );
        refused(
            &c,
            Request::NicAdd(nic("../x", "52:54:00:00:00:02", 1)),
            ErrorKind::Invalid,
            "id",
            "contains '/'",
        );
        refused(
            &c,
            Request::NicAdd(nic(&"a".repeat(65), "52:54:00:00:00:02", 1)),
            ErrorKind::Invalid,
            "id",
            "limit is 64",
        );
        refused(
            &c,
            Request::NicAdd(nic("vm1", "52:54:00:00:00:02", 1)),
            ErrorKind::AlreadyExists,
            "id",
            "already exists",
        );
        let tap = NicSpec {
            nic_type: NicType::Tap,
            ..nic("a-very-long-tap-name", "52:54:00:00:00:02", 1)
        };
        refused(
            &c,
            Request::NicAdd(tap),
            ErrorKind::Invalid,
            "id",
            "at most 15",
        );
    }

    #[test]
    fn nic_add_bad_ips() {
        let c = base();
        let with = |ips: &[&str]| {
            Request::NicAdd(NicSpec {
                ips: ips.iter().map(|s| s.to_string()).collect(),
                ..nic("vm2", "52:54:00:00:00:02", 42)
            })
        };
        refused(
            &c,
            with(&["10.0.0.300"]),
            ErrorKind::Invalid,
            "ips[0]",
            "not an IPv4 or IPv6 address",
        );
        refused(
            &c,
            with(&["10.0.0.2", "0.0.0.0"]),
            ErrorKind::Invalid,
            "ips[1]",
            "unspecified",
        );
        refused(
            &c,
            with(&["224.0.0.1"]),
            ErrorKind::Invalid,
            "ips[0]",
            "multicast",
        );
        refused(
            &c,
            with(&["ff02::1"]),
            ErrorKind::Invalid,
            "ips[0]",
            "multicast",
        );
        refused(
            &c,
            with(&["255.255.255.255"]),
            ErrorKind::Invalid,
            "ips[0]",
            "broadcast",
        );
        refused(
            &c,
            with(&["10.0.0.2", "10.0.0.2"]),
            ErrorKind::Invalid,
            "ips[1]",
            "listed twice",
        );
        refused(
            &c,
            with(&["10.0.0.1"]),
            ErrorKind::AlreadyExists,
            "ips[0]",
            "used by nic 'vm1' on VNI 42",
        );
        c.apply(&with(&["10.0.0.2", "fd00::2"]), &ctx()).unwrap();
    }

    #[test]
    fn nic_add_unknown_or_duplicate_sg() {
        let c = base();
        let with = |sgs: &[&str]| {
            Request::NicAdd(NicSpec {
                security_groups: sgs.iter().map(|s| s.to_string()).collect(),
                ..nic("vm2", "52:54:00:00:00:02", 42)
            })
        };
        refused(
            &c,
            with(&["web", "db"]),
            ErrorKind::NotFound,
            "security_groups[1]",
            "no security group 'db'",
        );
        refused(
            &c,
            with(&["web", "web"]),
            ErrorKind::Invalid,
            "security_groups[1]",
            "listed twice",
        );
    }

    #[test]
    fn nic_add_bad_socket_paths() {
        let c = base();
        let with = |t: NicType, p: &str| {
            Request::NicAdd(NicSpec {
                nic_type: t,
                socket_path: Some(p.into()),
                ..nic("vm2", "52:54:00:00:00:02", 42)
            })
        };
        let v = NicType::VhostUserServer;
        refused(
            &c,
            with(v, "relative.sock"),
            ErrorKind::Invalid,
            "socket_path",
            "not an absolute path",
        );
        refused(
            &c,
            with(v, ""),
            ErrorKind::Invalid,
            "socket_path",
            "must not be empty",
        );
        refused(
            &c,
            with(v, "/tmp/a\0b"),
            ErrorKind::Invalid,
            "socket_path",
            "NUL",
        );
        refused(
            &c,
            with(v, "/"),
            ErrorKind::Invalid,
            "socket_path",
            "does not name a file",
        );
        let long = format!("/{}", "s".repeat(107));
        refused(
            &c,
            with(v, &long),
            ErrorKind::Invalid,
            "socket_path",
            "at most 107",
        );
        refused(
            &c,
            with(v, "/run/butterfly/vhost/vm1.sock"),
            ErrorKind::AlreadyExists,
            "socket_path",
            "used by nic 'vm1'",
        );
        refused(
            &c,
            with(NicType::Tap, "/tmp/x.sock"),
            ErrorKind::Invalid,
            "socket_path",
            "only vhost-user",
        );
        // The default path is checked too: a long socket directory is refused.
        let mut long_ctx = ctx();
        long_ctx.vhost_socket_dir = PathBuf::from(format!("/{}", "d".repeat(100)));
        let err = c
            .apply(
                &Request::NicAdd(nic("vm2", "52:54:00:00:00:02", 42)),
                &long_ctx,
            )
            .unwrap_err();
        assert_eq!(err.field, "socket_path");
        c.apply(
            &with(NicType::VhostUserClient, "/tmp/qemu-vm2.sock"),
            &ctx(),
        )
        .unwrap();
    }

    #[test]
    fn nic_add_bad_trace_path() {
        let c = base();
        let with = |p: &str| {
            Request::NicAdd(NicSpec {
                packet_trace: true,
                packet_trace_path: Some(p.into()),
                ..nic("vm2", "52:54:00:00:00:02", 42)
            })
        };
        refused(
            &c,
            with("trace.pcap"),
            ErrorKind::Invalid,
            "packet_trace_path",
            "not an absolute path",
        );
        let c2 = c.apply(&with("/tmp/t.pcap"), &ctx()).unwrap().config;
        let again = Request::NicAdd(NicSpec {
            packet_trace: true,
            packet_trace_path: Some("/tmp/t.pcap".into()),
            ..nic("vm3", "52:54:00:00:00:03", 42)
        });
        refused(
            &c2,
            again,
            ErrorKind::AlreadyExists,
            "packet_trace_path",
            "used by nic 'vm2'",
        );
    }

    #[test]
    fn nic_update_validates_and_reports_old_and_new() {
        let c = base();
        let upd = |f: fn(&mut NicUpdate)| {
            let mut u = NicUpdate {
                id: "vm1".into(),
                ..NicUpdate::default()
            };
            f(&mut u);
            Request::NicUpdate(u)
        };
        refused(
            &c,
            Request::NicUpdate(NicUpdate {
                id: "nope".into(),
                ..NicUpdate::default()
            }),
            ErrorKind::NotFound,
            "id",
            "no nic 'nope'",
        );
        refused(
            &c,
            upd(|u| u.ips = Some(vec!["bad".into()])),
            ErrorKind::Invalid,
            "ips[0]",
            "not an IPv4",
        );
        refused(
            &c,
            upd(|u| u.security_groups = Some(vec!["db".into()])),
            ErrorKind::NotFound,
            "security_groups[0]",
            "no security group",
        );
        refused(
            &c,
            upd(|u| u.packet_trace_path = Some("x".into())),
            ErrorKind::Invalid,
            "packet_trace_path",
            "absolute",
        );
        let out = c
            .apply(
                &upd(|u| {
                    u.ips = Some(vec!["10.0.0.9".into()]);
                    u.bypass_filtering = Some(true);
                    u.packet_trace = Some(true);
                }),
                &ctx(),
            )
            .unwrap();
        let new = &out.config.nics["vm1"];
        assert_eq!(new.ips, vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
        assert!(new.bypass_filtering && new.packet_trace);
        assert_eq!(
            new.packet_trace_path.as_deref(),
            Some(Path::new("/var/log/butterfly/vm1.pcap"))
        );
        assert_eq!(
            out.changes,
            vec![DesiredChange::NicUpdated {
                old: c.nics["vm1"].clone(),
                new: new.clone()
            }]
        );
        // An update keeping the NIC's own IP is not a conflict with itself.
        c.apply(&upd(|u| u.ips = Some(vec!["10.0.0.1".into()])), &ctx())
            .unwrap();
    }

    #[test]
    fn nic_del_and_nic_sg() {
        let c = base();
        refused(
            &c,
            Request::NicDel { id: "vm9".into() },
            ErrorKind::NotFound,
            "id",
            "no nic 'vm9'",
        );
        let out = c
            .apply(&Request::NicDel { id: "vm1".into() }, &ctx())
            .unwrap();
        assert!(out.config.nics.is_empty());
        assert_eq!(
            out.changes,
            vec![DesiredChange::NicRemoved(c.nics["vm1"].clone())]
        );

        let sg = |nic: &str, sg: &str| (nic.to_string(), sg.to_string());
        let add = |(nic, sg)| Request::NicSgAdd { nic, sg };
        let del = |(nic, sg)| Request::NicSgDel { nic, sg };
        refused(
            &c,
            add(sg("vm9", "web")),
            ErrorKind::NotFound,
            "nic",
            "no nic",
        );
        refused(
            &c,
            add(sg("vm1", "db")),
            ErrorKind::NotFound,
            "sg",
            "no security group 'db'",
        );
        refused(
            &c,
            add(sg("vm1", "web")),
            ErrorKind::AlreadyExists,
            "sg",
            "already attached",
        );
        refused(
            &c,
            del(sg("vm1", "db")),
            ErrorKind::NotFound,
            "sg",
            "not attached",
        );
        let c2 = c.apply(&del(sg("vm1", "web")), &ctx()).unwrap().config;
        assert!(c2.nics["vm1"].security_groups.is_empty());
    }

    #[test]
    fn sg_add_del() {
        let c = base();
        refused(
            &c,
            Request::SgAdd { id: "web".into() },
            ErrorKind::AlreadyExists,
            "id",
            "already exists",
        );
        refused(
            &c,
            Request::SgAdd { id: "a b".into() },
            ErrorKind::Invalid,
            "id",
            "contains ' '",
        );
        refused(
            &c,
            Request::SgDel { id: "db".into() },
            ErrorKind::NotFound,
            "id",
            "no security group 'db'",
        );
        refused(
            &c,
            Request::SgDel { id: "web".into() },
            ErrorKind::InUse,
            "id",
            "used by nic 'vm1'",
        );
        // Named by another group's rule: in use too.
        let c2 = c
            .apply_all(
                &[
                    Request::SgAdd { id: "db".into() },
                    Request::SgAdd { id: "app".into() },
                    Request::SgRuleAdd {
                        sg: "app".into(),
                        rule: RuleSpec {
                            cidr: None,
                            sg_members: Some("db".into()),
                            ..rule("tcp")
                        },
                    },
                ],
                false,
                &ctx(),
            )
            .unwrap()
            .config;
        refused(
            &c2,
            Request::SgDel { id: "db".into() },
            ErrorKind::InUse,
            "id",
            "named by rule",
        );
        c2.apply(&Request::SgDel { id: "app".into() }, &ctx())
            .unwrap();
    }

    #[test]
    fn rule_validation() {
        let c = base();
        let add = |r: RuleSpec| Request::SgRuleAdd {
            sg: "web".into(),
            rule: r,
        };
        refused(
            &c,
            Request::SgRuleAdd {
                sg: "db".into(),
                rule: rule("tcp"),
            },
            ErrorKind::NotFound,
            "sg",
            "no security group 'db'",
        );
        refused(
            &c,
            add(rule("sctp")),
            ErrorKind::Invalid,
            "rule.protocol",
            "not a protocol",
        );
        refused(
            &c,
            add(rule("256")),
            ErrorKind::Invalid,
            "rule.protocol",
            "not a protocol",
        );
        let ports = |p: &str, s: u32, e: u32| RuleSpec {
            port_start: Some(s),
            port_end: Some(e),
            ..rule(p)
        };
        refused(
            &c,
            add(ports("tcp", 80, 70000)),
            ErrorKind::Invalid,
            "rule.port_end",
            "70000 is above 65535",
        );
        refused(
            &c,
            add(ports("tcp", 70000, 70001)),
            ErrorKind::Invalid,
            "rule.port_start",
            "above 65535",
        );
        refused(
            &c,
            add(ports("udp", 90, 80)),
            ErrorKind::Invalid,
            "rule.port_end",
            "80 is below port_start 90",
        );
        refused(
            &c,
            add(ports("icmp", 80, 80)),
            ErrorKind::Invalid,
            "rule.port_start",
            "tcp and udp only",
        );
        refused(
            &c,
            add(ports("all", 80, 80)),
            ErrorKind::Invalid,
            "rule.port_start",
            "tcp and udp only",
        );
        refused(
            &c,
            add(RuleSpec {
                port_start: Some(1),
                ..rule("tcp")
            }),
            ErrorKind::Invalid,
            "rule.port_end",
            "missing",
        );
        refused(
            &c,
            add(RuleSpec {
                port_end: Some(1),
                ..rule("tcp")
            }),
            ErrorKind::Invalid,
            "rule.port_start",
            "missing",
        );
        refused(
            &c,
            add(RuleSpec {
                cidr: Some("10.0.0.0/33".into()),
                ..rule("tcp")
            }),
            ErrorKind::Invalid,
            "rule.cidr",
            "not a CIDR",
        );
        refused(
            &c,
            add(RuleSpec {
                cidr: Some("10.0.0.0".into()),
                ..rule("tcp")
            }),
            ErrorKind::Invalid,
            "rule.cidr",
            "not a CIDR",
        );
        refused(
            &c,
            add(RuleSpec {
                cidr: Some("10.0.0.1/24".into()),
                ..rule("tcp")
            }),
            ErrorKind::Invalid,
            "rule.cidr",
            "did you mean 10.0.0.0/24",
        );
        refused(
            &c,
            add(RuleSpec {
                cidr: None,
                ..rule("tcp")
            }),
            ErrorKind::Invalid,
            "rule.cidr",
            "needs a cidr or sg_members",
        );
        refused(
            &c,
            add(RuleSpec {
                sg_members: Some("web".into()),
                ..rule("tcp")
            }),
            ErrorKind::Invalid,
            "rule.sg_members",
            "not both",
        );
        refused(
            &c,
            add(RuleSpec {
                cidr: None,
                sg_members: Some("db".into()),
                ..rule("tcp")
            }),
            ErrorKind::NotFound,
            "rule.sg_members",
            "no security group 'db'",
        );
        refused(
            &c,
            add(rule("icmp")),
            ErrorKind::AlreadyExists,
            "rule.rule",
            "already has this rule",
        );
        refused(
            &c,
            add(rule("1")),
            ErrorKind::AlreadyExists,
            "rule.rule",
            "already has this rule",
        );
        let existing = c.sgs["web"].rules[0].id.clone();
        refused(
            &c,
            add(RuleSpec {
                id: Some(existing),
                ..rule("udp")
            }),
            ErrorKind::AlreadyExists,
            "rule.id",
            "already has a rule",
        );
        refused(
            &c,
            add(RuleSpec {
                id: Some("bad id".into()),
                ..rule("udp")
            }),
            ErrorKind::Invalid,
            "rule.id",
            "contains ' '",
        );
        // Accepted: a port range on tcp, its own members, protocol numbers.
        let out = c.apply(&add(ports("tcp", 5000, 5000)), &ctx()).unwrap();
        assert_eq!(
            out.changes,
            vec![DesiredChange::FirewallChanged {
                nics: vec!["vm1".into()]
            }]
        );
        let r = out.config.sgs["web"].rules.last().unwrap();
        assert_eq!(
            r.ports,
            Some(PortRange {
                start: 5000,
                end: 5000
            })
        );
        assert_eq!(r.protocol, Protocol::Tcp);
        c.apply(
            &add(RuleSpec {
                cidr: None,
                sg_members: Some("web".into()),
                ..rule("58")
            }),
            &ctx(),
        )
        .unwrap();
    }

    #[test]
    fn rule_ids_are_stable_and_deletable() {
        let c = base();
        let id = &c.sgs["web"].rules[0].id;
        assert_eq!(id.len(), 16);
        assert_eq!(
            *id,
            Rule::content_id(
                Direction::In,
                Protocol::Icmp,
                None,
                &RuleSource::Cidr("10.0.0.0/24".parse().unwrap())
            )
        );
        // Another host building the same rule gets the same id.
        assert_eq!(base().sgs["web"].rules[0].id, *id);
        refused(
            &c,
            Request::SgRuleDel {
                sg: "web".into(),
                rule_id: "nope".into(),
            },
            ErrorKind::NotFound,
            "rule_id",
            "no rule 'nope'",
        );
        refused(
            &c,
            Request::SgRuleDel {
                sg: "db".into(),
                rule_id: id.clone(),
            },
            ErrorKind::NotFound,
            "sg",
            "no security group",
        );
        let out = c
            .apply(
                &Request::SgRuleDel {
                    sg: "web".into(),
                    rule_id: id.clone(),
                },
                &ctx(),
            )
            .unwrap();
        assert!(out.config.sgs["web"].rules.is_empty());
        assert_eq!(
            out.changes,
            vec![DesiredChange::FirewallChanged {
                nics: vec!["vm1".into()]
            }]
        );
    }

    #[test]
    fn members() {
        let c = base();
        let add = |ip: &str| Request::SgMemberAdd {
            sg: "web".into(),
            ip: ip.into(),
        };
        let del = |ip: &str| Request::SgMemberDel {
            sg: "web".into(),
            ip: ip.into(),
        };
        refused(
            &c,
            Request::SgMemberAdd {
                sg: "db".into(),
                ip: "10.0.0.1".into(),
            },
            ErrorKind::NotFound,
            "sg",
            "no security group",
        );
        refused(
            &c,
            add("10.0.0"),
            ErrorKind::Invalid,
            "ip",
            "not an IPv4 or IPv6",
        );
        refused(&c, add("::"), ErrorKind::Invalid, "ip", "unspecified");
        refused(
            &c,
            add("10.0.0.5"),
            ErrorKind::AlreadyExists,
            "ip",
            "already a member",
        );
        refused(
            &c,
            del("10.0.0.6"),
            ErrorKind::NotFound,
            "ip",
            "not a member",
        );
        // No rule names web's members yet: no firewall to rebuild.
        assert_eq!(c.apply(&add("10.0.0.6"), &ctx()).unwrap().changes, vec![]);
        let c2 = c
            .apply(
                &Request::SgRuleAdd {
                    sg: "web".into(),
                    rule: RuleSpec {
                        cidr: None,
                        sg_members: Some("web".into()),
                        ..rule("tcp")
                    },
                },
                &ctx(),
            )
            .unwrap()
            .config;
        assert_eq!(
            c2.apply(&del("10.0.0.5"), &ctx()).unwrap().changes,
            vec![DesiredChange::FirewallChanged {
                nics: vec!["vm1".into()]
            }]
        );
    }

    #[test]
    fn flood_lists() {
        let c = base();
        let add = |vni, vtep: &str| Request::FloodAdd {
            vni,
            vtep: vtep.into(),
        };
        refused(
            &c,
            add(1 << 24, "192.0.2.2"),
            ErrorKind::Invalid,
            "vni",
            "above 16777215",
        );
        refused(
            &c,
            add(42, "192.0.2"),
            ErrorKind::Invalid,
            "vtep",
            "not an IPv4 or IPv6",
        );
        refused(
            &c,
            add(42, "230.0.0.42"),
            ErrorKind::Invalid,
            "vtep",
            "multicast",
        );
        refused(
            &c,
            add(42, "2001:db8::2"),
            ErrorKind::Invalid,
            "vtep",
            "is IPv6 but this host's VTEP 192.0.2.1 is IPv4",
        );
        refused(
            &c,
            add(42, "192.0.2.1"),
            ErrorKind::Invalid,
            "vtep",
            "own VTEP",
        );
        let out = c.apply(&add(42, "192.0.2.2"), &ctx()).unwrap();
        assert_eq!(
            out.changes,
            vec![DesiredChange::FloodChanged {
                vni: 42,
                vteps: vec!["192.0.2.2".parse().unwrap()]
            }]
        );
        let c2 = out.config;
        refused(
            &c2,
            add(42, "192.0.2.2"),
            ErrorKind::AlreadyExists,
            "vtep",
            "already in the flood list",
        );
        refused(
            &c2,
            Request::FloodDel {
                vni: 7,
                vtep: "192.0.2.2".into(),
            },
            ErrorKind::NotFound,
            "vtep",
            "not in the flood list of VNI 7",
        );
        let c3 = c2
            .apply(
                &Request::FloodDel {
                    vni: 42,
                    vtep: "192.0.2.2".into(),
                },
                &ctx(),
            )
            .unwrap();
        assert!(
            c3.config.flood.is_empty(),
            "an empty list means multicast again"
        );
        assert_eq!(
            c3.changes,
            vec![DesiredChange::FloodChanged {
                vni: 42,
                vteps: vec![]
            }]
        );
    }

    #[test]
    fn apply_all_is_all_or_nothing_and_names_the_request() {
        let c = base();
        let reqs = vec![
            Request::SgAdd { id: "db".into() },
            Request::NicAdd(nic("vm2", "52:54:00:00:00:02", 42)),
            Request::NicAdd(nic("vm3", "bad", 42)),
        ];
        let err = c.apply_all(&reqs, false, &ctx()).unwrap_err();
        assert_eq!(err.field, "requests[2].mac");
        assert_eq!(c, base());
    }

    #[test]
    fn to_requests_round_trips() {
        let mut c = base();
        let extra = vec![
            Request::SgAdd { id: "app".into() },
            // A rule naming a group that sorts after it: replay must still work.
            Request::SgRuleAdd {
                sg: "app".into(),
                rule: RuleSpec {
                    cidr: None,
                    sg_members: Some("web".into()),
                    port_start: Some(80),
                    port_end: Some(443),
                    ..rule("tcp")
                },
            },
            Request::SgRuleAdd {
                sg: "app".into(),
                rule: RuleSpec {
                    id: Some("my-rule".into()),
                    ..rule("udp")
                },
            },
            Request::NicAdd(NicSpec {
                nic_type: NicType::Tap,
                ip_antispoof: true,
                packet_trace: true,
                security_groups: vec!["app".into(), "web".into()],
                ..nic("tap0", "52:54:00:00:00:09", 7)
            }),
            Request::FloodAdd {
                vni: 7,
                vtep: "192.0.2.7".into(),
            },
        ];
        c = c.apply_all(&extra, false, &ctx()).unwrap().config;
        let reqs = c.to_requests();
        let rebuilt = Config::default()
            .apply_all(&reqs, true, &ctx())
            .unwrap()
            .config;
        assert_eq!(rebuilt, c);
        // The requests survive JSON too (the dump file format).
        let json = serde_json::to_string(&reqs).unwrap();
        let back: Vec<Request> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, reqs);
        // And a dump replayed into another context keeps the resolved paths.
        let mut other = ctx();
        other.vhost_socket_dir = PathBuf::from("/elsewhere");
        assert_eq!(
            Config::default()
                .apply_all(&reqs, true, &other)
                .unwrap()
                .config,
            c
        );
    }

    #[test]
    fn request_json_is_readable_and_strict() {
        let r: Request = serde_json::from_str(
            r#"{"nic_add": {"id": "vm1", "mac": "52:54:00:00:00:01", "vni": 42, "type": "tap"}}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::NicAdd(NicSpec {
                nic_type: NicType::Tap,
                ..nic("vm1", "52:54:00:00:00:01", 42)
            })
        );
        let err = serde_json::from_str::<Request>(
            r#"{"nic_add": {"id": "vm1", "mac": "x", "vni": 1, "colour": 1}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn multicast_groups_follow_butterfly() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            multicast_group(42, v4),
            "230.0.0.42".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            multicast_group(0x01_02_03, v4),
            "230.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            multicast_group(VNI_MAX, v4),
            "230.255.255.255".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            multicast_group(42, v6),
            "ff0e::2a".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            multicast_group(VNI_MAX, v6),
            "ff0e::ff:ffff".parse::<IpAddr>().unwrap()
        );
        assert!(multicast_group(7, v4).is_multicast() && multicast_group(7, v6).is_multicast());
    }
}

/// Random request sequences: whatever the requests, `apply` never panics, a refusal
/// leaves the configuration unchanged, and every accepted configuration is consistent
/// and rebuilds identically from its dump.
#[cfg(test)]
mod random_tests {
    use super::*;

    /// xorshift64*: deterministic, so a failure is reproducible from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }
    }

    const IDS: &[&str] = &["a", "b", "c", "", "x y"];
    const MACS: &[&str] = &[
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
        "01:00:5e:00:00:01",
        "zz",
        "00:00:00:00:00:00",
    ];
    const IPS: &[&str] = &[
        "10.0.0.1",
        "10.0.0.2",
        "fd00::1",
        "0.0.0.0",
        "224.0.0.1",
        "nope",
        "192.0.2.1",
        "192.0.2.9",
    ];
    const CIDRS: &[&str] = &[
        "0.0.0.0/0",
        "10.0.0.0/8",
        "10.0.0.1/8",
        "fd00::/8",
        "1.2.3.4/33",
        "x",
    ];
    const PROTOS: &[&str] = &["tcp", "udp", "icmp", "icmpv6", "all", "47", "300", "sctp"];
    const VNIS: &[u32] = &[0, 7, 42, VNI_MAX, VNI_MAX + 1];
    const PORTS: &[u32] = &[0, 1, 80, 443, 65535, 65536];

    fn random_request(r: &mut Rng) -> Request {
        let id = |r: &mut Rng| r.pick(IDS).to_string();
        let ips = |r: &mut Rng| {
            (0..r.next() % 3)
                .map(|_| r.pick(IPS).to_string())
                .collect::<Vec<_>>()
        };
        let sgs = |r: &mut Rng| {
            (0..r.next() % 3)
                .map(|_| r.pick(IDS).to_string())
                .collect::<Vec<_>>()
        };
        let vni = |r: &mut Rng| VNIS[(r.next() % VNIS.len() as u64) as usize];
        let port = |r: &mut Rng| PORTS[(r.next() % PORTS.len() as u64) as usize];
        match r.next() % 13 {
            0 | 1 => Request::NicAdd(NicSpec {
                id: id(r),
                mac: r.pick(MACS).into(),
                vni: vni(r),
                ips: ips(r),
                security_groups: sgs(r),
                ip_antispoof: r.coin(),
                bypass_filtering: r.coin(),
                nic_type: if r.coin() {
                    NicType::Tap
                } else {
                    NicType::VhostUserServer
                },
                socket_path: r
                    .coin()
                    .then(|| r.pick(&["/tmp/s.sock", "rel", "/tmp/t.sock"]).into()),
                packet_trace: r.coin(),
                packet_trace_path: r.coin().then(|| r.pick(&["/tmp/a.pcap", "b.pcap"]).into()),
            }),
            2 => Request::NicUpdate(NicUpdate {
                id: id(r),
                ips: r.coin().then(|| ips(r)),
                security_groups: r.coin().then(|| sgs(r)),
                ip_antispoof: r.coin().then(|| r.coin()),
                bypass_filtering: None,
                packet_trace: r.coin().then(|| r.coin()),
                packet_trace_path: r
                    .coin()
                    .then(|| r.pick(&["/tmp/a.pcap", "/tmp/c.pcap"]).into()),
            }),
            3 => Request::NicDel { id: id(r) },
            4 => Request::NicSgAdd {
                nic: id(r),
                sg: id(r),
            },
            5 => Request::NicSgDel {
                nic: id(r),
                sg: id(r),
            },
            6 => Request::SgAdd { id: id(r) },
            7 => Request::SgDel { id: id(r) },
            8 => {
                let ports = r.coin().then(|| (port(r), port(r)));
                Request::SgRuleAdd {
                    sg: id(r),
                    rule: RuleSpec {
                        id: r.coin().then(|| id(r)),
                        direction: if r.coin() {
                            Direction::In
                        } else {
                            Direction::Out
                        },
                        protocol: r.pick(PROTOS).into(),
                        port_start: ports.map(|p| p.0),
                        port_end: ports.map(|p| p.1),
                        cidr: r.coin().then(|| r.pick(CIDRS).into()),
                        sg_members: r.coin().then(|| id(r)),
                    },
                }
            }
            9 => Request::SgRuleDel {
                sg: id(r),
                rule_id: id(r),
            },
            10 => Request::SgMemberAdd {
                sg: id(r),
                ip: r.pick(IPS).into(),
            },
            11 => Request::SgMemberDel {
                sg: id(r),
                ip: r.pick(IPS).into(),
            },
            _ if r.coin() => Request::FloodAdd {
                vni: vni(r),
                vtep: r.pick(IPS).into(),
            },
            _ => Request::FloodDel {
                vni: vni(r),
                vtep: r.pick(IPS).into(),
            },
        }
    }

    /// Every reference points to something that exists.
    fn check_consistent(c: &Config) {
        for nic in c.nics.values() {
            assert!(nic.vni <= VNI_MAX && !nic.mac.is_multicast() && !nic.mac.is_zero());
            for sg in &nic.security_groups {
                assert!(
                    c.sgs.contains_key(sg),
                    "nic {} names missing sg {sg}",
                    nic.id
                );
            }
            assert_eq!(nic.socket_path.is_some(), nic.nic_type.is_vhost_user());
            assert!(!nic.packet_trace || nic.packet_trace_path.is_some());
        }
        for sg in c.sgs.values() {
            for rule in &sg.rules {
                if let RuleSource::SgMembers(other) = &rule.source {
                    assert!(
                        c.sgs.contains_key(other),
                        "rule {} names missing sg {other}",
                        rule.id
                    );
                }
                if let Some(p) = rule.ports {
                    assert!(p.start <= p.end && rule.protocol.has_ports());
                }
            }
        }
        for list in c.flood.values() {
            assert!(!list.is_empty(), "empty flood lists are removed");
        }
    }

    #[test]
    fn random_request_sequences_keep_the_configuration_consistent() {
        let ctx = Context {
            vtep_ip: "192.0.2.1".parse().unwrap(),
            vhost_socket_dir: "/run/butterfly/vhost".into(),
            trace_dir: "/tmp".into(),
        };
        let mut accepted = 0;
        for seed in 1..=200u64 {
            let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut cfg = Config::default();
            for _ in 0..60 {
                let req = random_request(&mut r);
                match cfg.apply(&req, &ctx) {
                    Ok(out) => {
                        accepted += 1;
                        check_consistent(&out.config);
                        cfg = out.config;
                    }
                    Err(e) => {
                        assert!(
                            !e.field.is_empty() && !e.reason.is_empty(),
                            "seed {seed}: {req:?}"
                        );
                    }
                }
            }
            let rebuilt = Config::default().apply_all(&cfg.to_requests(), true, &ctx);
            assert_eq!(
                rebuilt.map(|o| o.config).as_ref(),
                Ok(&cfg),
                "seed {seed}: dump does not replay"
            );
        }
        assert!(
            accepted > 600,
            "the generator must exercise accepted requests too ({accepted})"
        );
    }
}
