//! The shape of the host graph a configuration asks for, and the steps that turn one
//! shape into another. Pure functions: a dataplane creates the bricks
//! ([`Part`] → brick) and carries out the [`Step`]s on its `Graph` between polls.
//!
//! Links are written `(west, east)`, as `Graph::link` takes them. Every chain runs from
//! the VM on the WEST to the underlay on the EAST:
//!
//! ```text
//! vm-ID ─ [sniffer-ID] ─ antispoof-ID ─ firewall-ID ─┬─────────────── vtep ─ underlay
//!                                                    └─ switch-VNI ─┘
//! ```
//!
//! - The VTEP's WEST edges are its VNIs (one per VNI: `vtep.add_vni(edge, vni, flood)`),
//!   its EAST edge the underlay NIC.
//! - So the firewall's VM side is WEST, and the antispoof brick's outside is EAST
//!   (both the opposite of those bricks' defaults).
//! - A VNI with one NIC links that NIC's last brick to the VTEP; with two or more, a
//!   `switch-VNI` sits between them and the VTEP (all the NICs on its WEST side).
//! - `bypass_filtering` leaves out firewall and antispoof; `packet_trace` adds the
//!   sniffer.
//!
//! Settings of bricks that stay (firewall rules, antispoof addresses, flood lists) are not
//! steps: after the steps, the dataplane loads [`super::translate`]'s settings into the
//! bricks of every NIC the [`crate::model::DesiredChange`]s name (all of them on
//! `reconcile`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::model::{Config, NicType};

/// The underlay NIC brick.
pub const UNDERLAY: &str = "underlay";
/// The VTEP brick.
pub const VTEP: &str = "vtep";

/// One brick of the host graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// The host NIC (AF_XDP or DPDK): `underlay`.
    Underlay,
    /// The VXLAN VTEP: `vtep`.
    Vtep,
    /// The switch of a VNI with two NICs or more: `switch-VNI`.
    Switch {
        /// The VNI.
        vni: u32,
    },
    /// The VM's end (vhost-user or tap): `vm-ID`.
    Vm {
        /// The NIC id.
        nic: String,
        /// vhost-user or tap.
        nic_type: NicType,
        /// The vhost-user socket (a NIC re-added with another socket gets a new brick).
        socket_path: Option<PathBuf>,
    },
    /// The pcap sniffer of a NIC with `packet_trace`: `sniffer-ID`.
    Sniffer {
        /// The NIC id.
        nic: String,
    },
    /// The NIC's antispoof brick (outside = EAST): `antispoof-ID`.
    Antispoof {
        /// The NIC id.
        nic: String,
    },
    /// The NIC's firewall (VM side = WEST): `firewall-ID`.
    Firewall {
        /// The NIC id.
        nic: String,
    },
}

impl Part {
    /// The brick's name in the graph.
    pub fn name(&self) -> String {
        match self {
            Part::Underlay => UNDERLAY.into(),
            Part::Vtep => VTEP.into(),
            Part::Switch { vni } => format!("switch-{vni}"),
            Part::Vm { nic, .. } => format!("vm-{nic}"),
            Part::Sniffer { nic } => format!("sniffer-{nic}"),
            Part::Antispoof { nic } => format!("antispoof-{nic}"),
            Part::Firewall { nic } => format!("firewall-{nic}"),
        }
    }
}

/// The bricks and links a configuration asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Bricks by name.
    pub parts: BTreeMap<String, Part>,
    /// Links `(west, east)`.
    pub links: BTreeSet<(String, String)>,
    /// For each VNI, the brick linked to the VTEP's WEST side (a NIC's last brick or the
    /// VNI's switch).
    pub vni_ports: BTreeMap<u32, String>,
}

impl Topology {
    /// The topology of `config`.
    pub fn of(config: &Config) -> Topology {
        let mut t = Topology::default();
        t.add(Part::Underlay);
        t.add(Part::Vtep);
        t.link(VTEP, UNDERLAY);
        let mut by_vni: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for nic in config.nics.values() {
            let mut chain = vec![Part::Vm {
                nic: nic.id.clone(),
                nic_type: nic.nic_type,
                socket_path: nic.socket_path.clone(),
            }];
            if nic.packet_trace {
                chain.push(Part::Sniffer {
                    nic: nic.id.clone(),
                });
            }
            if !nic.bypass_filtering {
                chain.push(Part::Antispoof {
                    nic: nic.id.clone(),
                });
                chain.push(Part::Firewall {
                    nic: nic.id.clone(),
                });
            }
            let names: Vec<String> = chain.iter().map(Part::name).collect();
            for part in chain {
                t.add(part);
            }
            for w in names.windows(2) {
                t.link(&w[0], &w[1]);
            }
            by_vni
                .entry(nic.vni)
                .or_default()
                .push(names.last().expect("a chain has a VM end").clone());
        }
        for (vni, ends) in by_vni {
            let port = if let [single] = &ends[..] {
                single.clone()
            } else {
                let switch = Part::Switch { vni };
                let name = switch.name();
                t.add(switch);
                for end in &ends {
                    t.link(end, &name);
                }
                name
            };
            t.link(&port, VTEP);
            t.vni_ports.insert(vni, port);
        }
        t
    }

    fn add(&mut self, part: Part) {
        self.parts.insert(part.name(), part);
    }

    fn link(&mut self, west: &str, east: &str) {
        self.links.insert((west.to_string(), east.to_string()));
    }

    /// The VNI whose port is `name`, if `name` is linked to the VTEP.
    fn vni_of_port(&self, name: &str) -> Option<u32> {
        self.vni_ports
            .iter()
            .find(|(_, p)| p.as_str() == name)
            .map(|(v, _)| *v)
    }
}

/// One edit of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `Graph::unlink_edge(west, east)`; when `east` is the VTEP, `vni` is the VNI that
    /// edge carried (`vtep.remove_vni(vni)` first).
    Unlink {
        /// West brick.
        west: String,
        /// East brick.
        east: String,
        /// The VNI of a VTEP edge.
        vni: Option<u32>,
    },
    /// `Graph::remove(name)`.
    Remove(String),
    /// Create the brick for this part and `Graph::add` it.
    Add(Part),
    /// `Graph::link(west, east)`; when `east` is the VTEP, `vni` is the VNI of the new
    /// edge (`vtep.add_vni(edge, vni, flood)` after).
    Link {
        /// West brick.
        west: String,
        /// East brick.
        east: String,
        /// The VNI of a VTEP edge.
        vni: Option<u32>,
    },
}

/// The steps from `old` to `new`, in an order the graph accepts: unlink what goes away,
/// remove bricks no longer wanted, add new bricks, link. Bricks and links in both are
/// untouched (a VM's vhost-user connection survives its VNI gaining a switch); a link
/// to the VTEP whose VNI changed is redone.
pub fn plan(old: &Topology, new: &Topology) -> Vec<Step> {
    let vtep_vni = |t: &Topology, (w, e): &(String, String)| {
        if e == VTEP { t.vni_of_port(w) } else { None }
    };
    let kept = |l: &(String, String)| {
        new.links.contains(l) && vtep_vni(old, l) == vtep_vni(new, l) && {
            // A brick replaced by another of the same name (a NIC re-added with another
            // type) loses its links.
            old.parts.get(&l.0) == new.parts.get(&l.0) && old.parts.get(&l.1) == new.parts.get(&l.1)
        }
    };
    let mut steps = Vec::new();
    for l in &old.links {
        if !kept(l) {
            steps.push(Step::Unlink {
                west: l.0.clone(),
                east: l.1.clone(),
                vni: vtep_vni(old, l),
            });
        }
    }
    for (name, part) in &old.parts {
        if new.parts.get(name) != Some(part) {
            steps.push(Step::Remove(name.clone()));
        }
    }
    for (name, part) in &new.parts {
        if old.parts.get(name) != Some(part) {
            steps.push(Step::Add(part.clone()));
        }
    }
    for l in &new.links {
        if !(old.links.contains(l) && kept(l)) {
            steps.push(Step::Link {
                west: l.0.clone(),
                east: l.1.clone(),
                vni: vtep_vni(new, l),
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Context, NicSpec, NicUpdate, Request};
    use packetgraph::bricks::{Hub, Nop};
    use packetgraph::{Graph, Side};

    fn ctx() -> Context {
        Context {
            vtep_ip: "192.0.2.1".parse().unwrap(),
            vhost_socket_dir: "/run/butterfly/vhost".into(),
            trace_dir: "/tmp".into(),
        }
    }

    fn add(id: &str, vni: u32, n: u8) -> Request {
        Request::NicAdd(NicSpec {
            id: id.into(),
            mac: format!("52:54:00:00:00:{n:02x}"),
            vni,
            ..NicSpec::default()
        })
    }

    fn apply(c: &Config, reqs: &[Request]) -> Config {
        c.apply_all(reqs, false, &ctx()).unwrap().config
    }

    fn links(t: &Topology) -> Vec<(&str, &str)> {
        t.links
            .iter()
            .map(|(w, e)| (w.as_str(), e.as_str()))
            .collect()
    }

    fn link(w: &str, e: &str, vni: Option<u32>) -> Step {
        Step::Link {
            west: w.into(),
            east: e.into(),
            vni,
        }
    }

    fn unlink(w: &str, e: &str, vni: Option<u32>) -> Step {
        Step::Unlink {
            west: w.into(),
            east: e.into(),
            vni,
        }
    }

    #[test]
    fn a_nic_alone_on_its_vni_links_to_the_vtep() {
        let t = Topology::of(&apply(&Config::default(), &[add("a", 42, 1)]));
        assert_eq!(
            links(&t),
            [
                ("antispoof-a", "firewall-a"),
                ("firewall-a", "vtep"),
                ("vm-a", "antispoof-a"),
                ("vtep", "underlay"),
            ]
        );
        assert_eq!(t.vni_ports[&42], "firewall-a");
        assert!(!t.parts.keys().any(|n| n.starts_with("switch")));
    }

    #[test]
    fn the_second_nic_of_a_vni_inserts_a_switch_and_the_last_one_removes_it() {
        let one = apply(&Config::default(), &[add("a", 42, 1), add("c", 7, 3)]);
        let two = apply(&one, &[add("b", 42, 2)]);
        let (t1, t2) = (Topology::of(&one), Topology::of(&two));
        assert_eq!(t2.vni_ports[&42], "switch-42");
        assert_eq!(t2.vni_ports[&7], "firewall-c", "VNI 7 is untouched");
        let steps = plan(&t1, &t2);
        assert_eq!(
            steps,
            vec![
                unlink("firewall-a", "vtep", Some(42)),
                Step::Add(Part::Antispoof { nic: "b".into() }),
                Step::Add(Part::Firewall { nic: "b".into() }),
                Step::Add(Part::Switch { vni: 42 }),
                Step::Add(Part::Vm {
                    nic: "b".into(),
                    nic_type: NicType::VhostUserServer,
                    socket_path: Some("/run/butterfly/vhost/b.sock".into()),
                }),
                link("antispoof-b", "firewall-b", None),
                link("firewall-a", "switch-42", None),
                link("firewall-b", "switch-42", None),
                link("switch-42", "vtep", Some(42)),
                link("vm-b", "antispoof-b", None),
            ],
            "vm-a's chain stays as it is"
        );
        // Removing b takes the switch out again and relinks a to the VTEP.
        let back = plan(
            &t2,
            &Topology::of(&apply(&two, &[Request::NicDel { id: "b".into() }])),
        );
        assert_eq!(
            back,
            vec![
                unlink("antispoof-b", "firewall-b", None),
                unlink("firewall-a", "switch-42", None),
                unlink("firewall-b", "switch-42", None),
                unlink("switch-42", "vtep", Some(42)),
                unlink("vm-b", "antispoof-b", None),
                Step::Remove("antispoof-b".into()),
                Step::Remove("firewall-b".into()),
                Step::Remove("switch-42".into()),
                Step::Remove("vm-b".into()),
                link("firewall-a", "vtep", Some(42)),
            ]
        );
    }

    #[test]
    fn bypass_and_trace_change_the_chain() {
        let c = apply(&Config::default(), &[add("a", 42, 1)]);
        let bypass = apply(
            &c,
            &[Request::NicUpdate(NicUpdate {
                id: "a".into(),
                bypass_filtering: Some(true),
                packet_trace: Some(true),
                ..NicUpdate::default()
            })],
        );
        let t = Topology::of(&bypass);
        assert_eq!(
            links(&t),
            [
                ("sniffer-a", "vtep"),
                ("vm-a", "sniffer-a"),
                ("vtep", "underlay")
            ]
        );
        let steps = plan(&Topology::of(&c), &t);
        assert!(steps.contains(&Step::Remove("firewall-a".into())));
        assert!(steps.contains(&Step::Add(Part::Sniffer { nic: "a".into() })));
        assert!(steps.contains(&link("sniffer-a", "vtep", Some(42))));
        assert!(!steps.iter().any(|s| matches!(s, Step::Remove(n) | Step::Add(Part::Vm { nic: n, .. }) if n == "vm-a" || n == "a")), "the VM end stays: {steps:?}");
        assert_eq!(plan(&t, &t), vec![], "no change, no step");
    }

    #[test]
    fn a_nic_re_added_with_another_socket_gets_a_new_vm_brick() {
        let c = apply(&Config::default(), &[add("a", 42, 1)]);
        let readded = apply(
            &c,
            &[
                Request::NicDel { id: "a".into() },
                Request::NicAdd(NicSpec {
                    socket_path: Some("/tmp/other.sock".into()),
                    ..match add("a", 42, 1) {
                        Request::NicAdd(s) => s,
                        _ => unreachable!(),
                    }
                }),
            ],
        );
        let steps = plan(&Topology::of(&c), &Topology::of(&readded));
        assert_eq!(
            steps,
            vec![
                unlink("vm-a", "antispoof-a", None),
                Step::Remove("vm-a".into()),
                Step::Add(Part::Vm {
                    nic: "a".into(),
                    nic_type: NicType::VhostUserServer,
                    socket_path: Some("/tmp/other.sock".into()),
                }),
                link("vm-a", "antispoof-a", None),
            ]
        );
    }

    /// Carries the steps out on a real `Graph`, with stand-in bricks (Hub for the
    /// multipoles, Nop for the rest); returns the graph's links.
    fn run(g: &mut Graph, steps: &[Step]) {
        for s in steps {
            match s {
                Step::Unlink { west, east, .. } => g.unlink_edge(west, east).unwrap(),
                Step::Remove(n) => drop(g.remove(n).unwrap()),
                Step::Add(p) => match p {
                    Part::Vtep | Part::Switch { .. } => g.add(p.name(), Hub::new()).unwrap(),
                    _ => g.add(p.name(), Nop::new()).unwrap(),
                },
                Step::Link { west, east, .. } => drop(g.link(west, east).unwrap()),
            }
        }
    }

    fn graph_links(g: &Graph) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for name in g.names() {
            for east in g
                .neighbours(name, Side::East)
                .unwrap()
                .into_iter()
                .flatten()
            {
                out.insert((name.to_string(), east));
            }
        }
        out
    }

    #[test]
    fn plans_run_on_a_real_graph_and_reach_the_topology() {
        let mut g = Graph::new("host");
        let mut topo = Topology::default();
        let mut cfg = Config::default();
        let script: Vec<Vec<Request>> = vec![
            vec![add("a", 42, 1)],
            vec![add("b", 42, 2), add("c", 7, 3)],
            vec![add("d", 42, 4)],
            vec![Request::NicDel { id: "a".into() }],
            vec![Request::NicUpdate(NicUpdate {
                id: "b".into(),
                bypass_filtering: Some(true),
                ..NicUpdate::default()
            })],
            vec![Request::NicDel { id: "d".into() }],
            vec![Request::NicDel { id: "b".into() }, add("b", 7, 2)],
            vec![
                Request::NicDel { id: "c".into() },
                Request::NicDel { id: "b".into() },
            ],
        ];
        for reqs in script {
            cfg = apply(&cfg, &reqs);
            let next = Topology::of(&cfg);
            run(&mut g, &plan(&topo, &next));
            assert_eq!(graph_links(&g), next.links, "after {reqs:?}");
            let mut names: Vec<String> = g.names().map(String::from).collect();
            names.sort();
            assert_eq!(names, next.parts.keys().cloned().collect::<Vec<_>>());
            topo = next;
        }
        assert_eq!(g.names().count(), 2, "underlay and vtep remain");
    }
}
