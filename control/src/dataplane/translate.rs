//! From the desired configuration ([`crate::model`]) to the settings of the bricks that
//! carry it out: a NIC's firewall groups, its antispoof brick, a VNI's flood destinations.
//! Pure functions, so a dataplane implementation only links bricks and posts these
//! settings to its workers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use packetgraph::BrickStats;
use packetgraph::bricks::antispoof::AntispoofCounters;
use packetgraph::bricks::firewall as fw;
use packetgraph::bricks::{Antispoof, AntispoofChecks, Flood};

use super::NicCounters;

use crate::model::{self, Config, Direction, Nic, Protocol, RuleSource};

/// A rule as the firewall brick takes it.
pub fn firewall_rule(r: &model::Rule) -> fw::Rule {
    let protocol = match r.protocol {
        Protocol::All => fw::Protocol::Any,
        Protocol::Tcp => fw::Protocol::Tcp,
        Protocol::Udp => fw::Protocol::Udp,
        Protocol::Icmp => fw::Protocol::Icmp,
        Protocol::Icmpv6 => fw::Protocol::Icmpv6,
        Protocol::Number(n) => fw::Protocol::Number(n),
    };
    let peer = match &r.source {
        RuleSource::Cidr(net) => fw::Peer::Cidr(
            fw::Cidr::new(net.network(), net.prefix_len())
                .expect("the model only holds valid CIDRs"),
        ),
        RuleSource::SgMembers(sg) => fw::Peer::Group(sg.clone()),
    };
    fw::Rule {
        direction: match r.direction {
            Direction::In => fw::RuleDirection::Inbound,
            Direction::Out => fw::RuleDirection::Outbound,
        },
        protocol,
        ports: r.ports.map(|p| fw::PortRange {
            first: p.start,
            last: p.end,
        }),
        peer,
    }
}

/// A security group as the firewall brick takes it.
pub fn firewall_group(sg: &model::SecurityGroup) -> fw::SecurityGroup {
    fw::SecurityGroup {
        id: sg.id.clone(),
        rules: sg.rules.iter().map(firewall_rule).collect(),
        members: sg.members.iter().copied().collect(),
    }
}

/// What a NIC's firewall needs: the ids of the groups applied to the NIC (in order), and
/// every group definition involved — those groups, plus the groups their rules name in
/// `sg_members` (whose members the rules match). Sorted by id, no duplicates.
pub fn firewall_groups(nic: &Nic, config: &Config) -> (Vec<String>, Vec<fw::SecurityGroup>) {
    let mut needed: Vec<&str> = nic.security_groups.iter().map(String::as_str).collect();
    for id in &nic.security_groups {
        if let Some(sg) = config.sgs.get(id) {
            for r in &sg.rules {
                if let RuleSource::SgMembers(other) = &r.source {
                    needed.push(other);
                }
            }
        }
    }
    needed.sort_unstable();
    needed.dedup();
    let groups = needed
        .into_iter()
        .filter_map(|id| config.sgs.get(id))
        .map(firewall_group)
        .collect();
    (nic.security_groups.clone(), groups)
}

/// The antispoof brick of a NIC. The source MAC (with VLAN and RARP) is always checked;
/// `ip_antispoof` adds the IPv4/IPv6 source, ARP and NDP checks against the NIC's IPs.
/// Not used when the NIC has `bypass_filtering`.
pub fn antispoof(nic: &Nic) -> Antispoof {
    let checks = if nic.ip_antispoof {
        AntispoofChecks::ALL
    } else {
        AntispoofChecks {
            mac: true,
            vlan: true,
            rarp: true,
            ..AntispoofChecks::NONE
        }
    };
    let v4: Vec<Ipv4Addr> = nic
        .ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Addr> = nic
        .ips
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
        .collect();
    Antispoof::new(nic.mac.0)
        .with_checks(checks)
        .with_addresses(&v4, &v6)
}

/// Where the VTEP floods a VNI's broadcast and unknown traffic: its static flood list, or
/// its multicast group ([`model::multicast_group`]) on the underlay of `vtep_ip`.
pub fn flood(vni: u32, config: &Config, vtep_ip: IpAddr) -> Flood {
    match config.flood.get(&vni) {
        Some(list) if !list.is_empty() => Flood::List(list.iter().copied().collect()),
        _ => Flood::Multicast(model::multicast_group(vni, vtep_ip)),
    }
}

/// A NIC's counters from its bricks: the VM end `vm-ID` (linked by its EAST side, see
/// [`super::topology`]: what it sends EAST came from the VM, what arrives there goes to
/// the VM), and its firewall and antispoof when it has them.
pub fn nic_counters(
    vm: &BrickStats,
    firewall: Option<&fw::FirewallCounters>,
    antispoof: Option<&AntispoofCounters>,
) -> NicCounters {
    NicCounters {
        rx_packets: vm.east.tx_packets,
        rx_bytes: vm.east.tx_bytes,
        tx_packets: vm.east.rx_packets,
        tx_bytes: vm.east.rx_bytes,
        dropped_firewall: firewall.map_or(0, fw::FirewallCounters::dropped),
        dropped_antispoof: antispoof.map_or(0, |a| {
            a.drop_mac
                + a.drop_vlan
                + a.drop_rarp
                + a.drop_arp
                + a.drop_ipv4
                + a.drop_ipv6
                + a.drop_ndp
                + a.drop_malformed
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Context, NicSpec, Request, RuleSpec};
    use packetgraph::flowtable::FiveTuple;

    fn ctx() -> Context {
        Context {
            vtep_ip: "192.0.2.1".parse().unwrap(),
            vhost_socket_dir: "/run/butterfly/vhost".into(),
            trace_dir: "/tmp".into(),
        }
    }

    fn rule(
        dir: Direction,
        proto: &str,
        ports: Option<(u32, u32)>,
        cidr: Option<&str>,
        members: Option<&str>,
    ) -> RuleSpec {
        RuleSpec {
            id: None,
            direction: dir,
            protocol: proto.into(),
            port_start: ports.map(|p| p.0),
            port_end: ports.map(|p| p.1),
            cidr: cidr.map(Into::into),
            sg_members: members.map(Into::into),
        }
    }

    /// vm1 (10.0.0.1) in `web`: ICMP and TCP/5000 from anywhere, UDP/53 from `dns`'s
    /// members (10.0.0.53), ICMPv6 from fd00::/8.
    fn config() -> Config {
        let add = |sg: &str, r| Request::SgRuleAdd {
            sg: sg.into(),
            rule: r,
        };
        let reqs = vec![
            Request::SgAdd { id: "web".into() },
            Request::SgAdd { id: "dns".into() },
            Request::SgAdd {
                id: "unused".into(),
            },
            Request::SgMemberAdd {
                sg: "dns".into(),
                ip: "10.0.0.53".into(),
            },
            add(
                "web",
                rule(Direction::In, "icmp", None, Some("0.0.0.0/0"), None),
            ),
            add(
                "web",
                rule(
                    Direction::In,
                    "tcp",
                    Some((5000, 5000)),
                    Some("0.0.0.0/0"),
                    None,
                ),
            ),
            add(
                "web",
                rule(Direction::In, "udp", Some((53, 53)), None, Some("dns")),
            ),
            add(
                "web",
                rule(Direction::In, "icmpv6", None, Some("fd00::/8"), None),
            ),
            Request::NicAdd(NicSpec {
                id: "vm1".into(),
                mac: "52:54:00:00:00:01".into(),
                vni: 42,
                ips: vec!["10.0.0.1".into(), "fd00::1".into()],
                security_groups: vec!["web".into()],
                ip_antispoof: true,
                ..NicSpec::default()
            }),
        ];
        Config::default()
            .apply_all(&reqs, false, &ctx())
            .unwrap()
            .config
    }

    /// A real firewall brick loaded with what [`firewall_groups`] gives for `nic`.
    fn firewall_for(cfg: &Config, nic: &str) -> packetgraph::bricks::Firewall {
        let nic = &cfg.nics[nic];
        let (ids, groups) = firewall_groups(nic, cfg);
        let mut f = packetgraph::bricks::Firewall::with_defaults();
        for g in groups {
            f.upsert_group(g).unwrap();
        }
        f.set_nic_groups(ids);
        f.set_nic_addresses(nic.ips.clone());
        f
    }

    fn inbound(f: &packetgraph::bricks::Firewall, src: &str, proto: u8, dport: u16) -> bool {
        let t = FiveTuple::new(
            src.parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            proto,
            40000,
            dport,
        );
        f.allows(fw::RuleDirection::Inbound, &t)
    }

    #[test]
    fn the_firewall_brick_enforces_the_configured_groups() {
        let cfg = config();
        let (ids, groups) = firewall_groups(&cfg.nics["vm1"], &cfg);
        assert_eq!(ids, vec!["web".to_string()]);
        let names: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(
            names,
            ["dns", "web"],
            "web and the group its rules name; not 'unused'"
        );
        let f = firewall_for(&cfg, "vm1");
        assert!(
            inbound(&f, "198.51.100.7", 6, 5000),
            "TCP/5000 from anywhere"
        );
        assert!(
            !inbound(&f, "198.51.100.7", 6, 6000),
            "TCP/6000 is not allowed"
        );
        assert!(inbound(&f, "198.51.100.7", 1, 0), "ICMP from anywhere");
        assert!(inbound(&f, "10.0.0.53", 17, 53), "DNS from a member of dns");
        assert!(!inbound(&f, "10.0.0.54", 17, 53), "DNS from a non-member");
        let v6 = FiveTuple::new(
            "fd00::9".parse().unwrap(),
            "fd00::1".parse().unwrap(),
            58,
            0,
            0,
        );
        assert!(f.allows(fw::RuleDirection::Inbound, &v6));
    }

    #[test]
    fn member_and_rule_changes_reach_the_brick() {
        let mut cfg = config();
        cfg = cfg
            .apply(
                &Request::SgMemberDel {
                    sg: "dns".into(),
                    ip: "10.0.0.53".into(),
                },
                &ctx(),
            )
            .unwrap()
            .config;
        assert!(!inbound(&firewall_for(&cfg, "vm1"), "10.0.0.53", 17, 53));
        let id = cfg.sgs["web"].rules[1].id.clone();
        cfg = cfg
            .apply(
                &Request::SgRuleDel {
                    sg: "web".into(),
                    rule_id: id,
                },
                &ctx(),
            )
            .unwrap()
            .config;
        assert!(!inbound(
            &firewall_for(&cfg, "vm1"),
            "198.51.100.7",
            6,
            5000
        ));
    }

    #[test]
    fn rules_translate_field_by_field() {
        let cfg = config();
        let r = firewall_rule(&cfg.sgs["web"].rules[1]);
        assert_eq!(
            r,
            fw::Rule::inbound(
                fw::Protocol::Tcp,
                Some(fw::PortRange::single(5000)),
                fw::Peer::Cidr("0.0.0.0/0".parse().unwrap())
            )
        );
        assert!(r.validate().is_ok());
        let r = firewall_rule(&cfg.sgs["web"].rules[2]);
        assert_eq!(r.peer, fw::Peer::Group("dns".into()));
    }

    #[test]
    fn nic_counters_read_the_vm_end_from_the_vm_side() {
        let mut vm = BrickStats::default();
        vm.east.tx_packets = 3; // sent into the graph: from the VM
        vm.east.tx_bytes = 300;
        vm.east.rx_packets = 5; // arrived from the graph: to the VM
        vm.east.rx_bytes = 500;
        let a = AntispoofCounters {
            drop_mac: 1,
            drop_ipv4: 2,
            drop_malformed: 4,
            passed_vm: 100,
            ..AntispoofCounters::default()
        };
        let c = nic_counters(&vm, None, Some(&a));
        assert_eq!(
            (c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes),
            (3, 300, 5, 500)
        );
        assert_eq!((c.dropped_firewall, c.dropped_antispoof), (0, 7));
        let f = fw::FirewallCounters {
            drop_denied: 6,
            drop_tcp_no_flow: 2,
            passed_new: 9,
            ..fw::FirewallCounters::default()
        };
        assert_eq!(f.dropped(), 8);
        assert_eq!(nic_counters(&vm, Some(&f), None).dropped_firewall, 8);
    }

    #[test]
    fn antispoof_follows_ip_antispoof() {
        let cfg = config();
        let a = antispoof(&cfg.nics["vm1"]);
        assert_eq!(a.mac(), [0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(a.checks(), AntispoofChecks::ALL);
        assert_eq!(a.ipv4(), &["10.0.0.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(a.ipv6(), &["fd00::1".parse::<Ipv6Addr>().unwrap()]);
        let mut nic = cfg.nics["vm1"].clone();
        nic.ip_antispoof = false;
        let c = antispoof(&nic).checks();
        assert!(c.mac && c.vlan && c.rarp && !c.ipv4 && !c.ipv6 && !c.arp && !c.ndp);
    }

    #[test]
    fn flood_is_the_static_list_or_the_multicast_group() {
        let cfg = config();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            flood(42, &cfg, v4),
            Flood::Multicast("230.0.0.42".parse().unwrap())
        );
        assert_eq!(
            flood(42, &cfg, "2001:db8::1".parse().unwrap()),
            Flood::Multicast("ff0e::2a".parse().unwrap())
        );
        let cfg = cfg
            .apply(
                &Request::FloodAdd {
                    vni: 42,
                    vtep: "192.0.2.9".into(),
                },
                &ctx(),
            )
            .unwrap()
            .config;
        assert_eq!(
            flood(42, &cfg, v4),
            Flood::List(vec!["192.0.2.9".parse().unwrap()])
        );
    }
}
