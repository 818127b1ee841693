//! Conversions between the protobuf messages ([`crate::proto`]) and the model's requests
//! and objects ([`crate::model`]). Proto3 has no "absent" for scalars: an empty string
//! means "not given", ports 0/0 mean "any port".

use crate::model::{
    self, Direction, FieldError, NicSpec, NicType, NicUpdate, Request, Rule, RuleSpec,
};
use crate::proto;
use crate::proto::request::Request as Oneof;

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn nic_type_from_proto(v: i32) -> Result<NicType, FieldError> {
    match proto::NicType::try_from(v) {
        Ok(proto::NicType::VhostUserServer) => Ok(NicType::VhostUserServer),
        Ok(proto::NicType::VhostUserClient) => Ok(NicType::VhostUserClient),
        Ok(proto::NicType::Tap) => Ok(NicType::Tap),
        Err(_) => Err(FieldError::invalid(
            "type",
            format!("{v} is not a NIC type"),
        )),
    }
}

fn nic_type_to_proto(t: NicType) -> proto::NicType {
    match t {
        NicType::VhostUserServer => proto::NicType::VhostUserServer,
        NicType::VhostUserClient => proto::NicType::VhostUserClient,
        NicType::Tap => proto::NicType::Tap,
    }
}

fn direction_from_proto(v: i32) -> Result<Direction, FieldError> {
    match proto::Direction::try_from(v) {
        Ok(proto::Direction::In) => Ok(Direction::In),
        Ok(proto::Direction::Out) => Ok(Direction::Out),
        Err(_) => Err(FieldError::invalid(
            "direction",
            format!("{v} is not a direction"),
        )),
    }
}

fn direction_to_proto(d: Direction) -> proto::Direction {
    match d {
        Direction::In => proto::Direction::In,
        Direction::Out => proto::Direction::Out,
    }
}

/// `nic add`'s body.
pub fn nic_spec_from_proto(n: &proto::Nic) -> Result<NicSpec, FieldError> {
    Ok(NicSpec {
        id: n.id.clone(),
        mac: n.mac.clone(),
        vni: n.vni,
        ips: n.ips.clone(),
        security_groups: n.security_groups.clone(),
        ip_antispoof: n.ip_antispoof,
        bypass_filtering: n.bypass_filtering,
        nic_type: nic_type_from_proto(n.r#type)?,
        socket_path: opt(&n.socket_path),
        packet_trace: n.packet_trace,
        packet_trace_path: opt(&n.packet_trace_path),
    })
}

/// The message for a NIC spec.
pub fn nic_spec_to_proto(s: &NicSpec) -> proto::Nic {
    proto::Nic {
        id: s.id.clone(),
        mac: s.mac.clone(),
        vni: s.vni,
        ips: s.ips.clone(),
        security_groups: s.security_groups.clone(),
        ip_antispoof: s.ip_antispoof,
        bypass_filtering: s.bypass_filtering,
        r#type: nic_type_to_proto(s.nic_type) as i32,
        socket_path: s.socket_path.clone().unwrap_or_default(),
        packet_trace: s.packet_trace,
        packet_trace_path: s.packet_trace_path.clone().unwrap_or_default(),
    }
}

/// The message for a configured NIC.
pub fn nic_to_proto(n: &model::Nic) -> proto::Nic {
    nic_spec_to_proto(&n.to_spec())
}

/// `nic update`'s body.
pub fn nic_update_from_proto(u: &proto::NicUpdateRequest) -> NicUpdate {
    NicUpdate {
        id: u.id.clone(),
        ips: u.ips.as_ref().map(|l| l.ids.clone()),
        security_groups: u.security_groups.as_ref().map(|l| l.ids.clone()),
        ip_antispoof: u.ip_antispoof,
        bypass_filtering: u.bypass_filtering,
        packet_trace: u.packet_trace,
        packet_trace_path: u.packet_trace_path.clone(),
    }
}

/// The message for a NIC update.
pub fn nic_update_to_proto(u: &NicUpdate) -> proto::NicUpdateRequest {
    proto::NicUpdateRequest {
        id: u.id.clone(),
        ips: u.ips.clone().map(|ids| proto::IdList { ids }),
        security_groups: u.security_groups.clone().map(|ids| proto::IdList { ids }),
        ip_antispoof: u.ip_antispoof,
        bypass_filtering: u.bypass_filtering,
        packet_trace: u.packet_trace,
        packet_trace_path: u.packet_trace_path.clone(),
    }
}

/// `sg rule add`'s rule.
pub fn rule_spec_from_proto(r: &proto::Rule) -> Result<RuleSpec, FieldError> {
    let (port_start, port_end) = if r.port_start == 0 && r.port_end == 0 {
        (None, None)
    } else {
        (Some(r.port_start), Some(r.port_end))
    };
    Ok(RuleSpec {
        id: opt(&r.id),
        direction: direction_from_proto(r.direction)?,
        protocol: r.protocol.clone(),
        port_start,
        port_end,
        cidr: opt(&r.cidr),
        sg_members: opt(&r.sg_members),
    })
}

/// The message for a rule spec.
pub fn rule_spec_to_proto(r: &RuleSpec) -> proto::Rule {
    proto::Rule {
        id: r.id.clone().unwrap_or_default(),
        direction: direction_to_proto(r.direction) as i32,
        protocol: r.protocol.clone(),
        port_start: r.port_start.unwrap_or(0),
        port_end: r.port_end.unwrap_or(0),
        cidr: r.cidr.clone().unwrap_or_default(),
        sg_members: r.sg_members.clone().unwrap_or_default(),
    }
}

/// The message for a configured rule.
pub fn rule_to_proto(r: &Rule) -> proto::Rule {
    rule_spec_to_proto(&r.to_spec())
}

/// A request of a dump/load.
pub fn request_from_proto(r: &proto::Request) -> Result<Request, FieldError> {
    let missing = |f: &str| FieldError::invalid(f, "missing");
    Ok(
        match r.request.as_ref().ok_or_else(|| missing("request"))? {
            Oneof::NicAdd(a) => Request::NicAdd(
                nic_spec_from_proto(a.nic.as_ref().ok_or_else(|| missing("nic_add.nic"))?)
                    .map_err(|e| e.within("nic_add.nic"))?,
            ),
            Oneof::NicUpdate(u) => Request::NicUpdate(nic_update_from_proto(u)),
            Oneof::NicDel(d) => Request::NicDel { id: d.id.clone() },
            Oneof::NicSgAdd(s) => Request::NicSgAdd {
                nic: s.nic.clone(),
                sg: s.sg.clone(),
            },
            Oneof::NicSgDel(s) => Request::NicSgDel {
                nic: s.nic.clone(),
                sg: s.sg.clone(),
            },
            Oneof::SgAdd(s) => Request::SgAdd { id: s.id.clone() },
            Oneof::SgDel(s) => Request::SgDel { id: s.id.clone() },
            Oneof::SgRuleAdd(a) => Request::SgRuleAdd {
                sg: a.sg.clone(),
                rule: rule_spec_from_proto(
                    a.rule.as_ref().ok_or_else(|| missing("sg_rule_add.rule"))?,
                )
                .map_err(|e| e.within("sg_rule_add.rule"))?,
            },
            Oneof::SgRuleDel(d) => Request::SgRuleDel {
                sg: d.sg.clone(),
                rule_id: d.rule_id.clone(),
            },
            Oneof::SgMemberAdd(m) => Request::SgMemberAdd {
                sg: m.sg.clone(),
                ip: m.ip.clone(),
            },
            Oneof::SgMemberDel(m) => Request::SgMemberDel {
                sg: m.sg.clone(),
                ip: m.ip.clone(),
            },
            Oneof::FloodAdd(f) => Request::FloodAdd {
                vni: f.vni,
                vtep: f.vtep.clone(),
            },
            Oneof::FloodDel(f) => Request::FloodDel {
                vni: f.vni,
                vtep: f.vtep.clone(),
            },
        },
    )
}

/// The message for a request.
pub fn request_to_proto(r: &Request) -> proto::Request {
    let nic_sg = |nic: &String, sg: &String| proto::NicSgRequest {
        nic: nic.clone(),
        sg: sg.clone(),
    };
    let member = |sg: &String, ip: &String| proto::SgMemberRequest {
        sg: sg.clone(),
        ip: ip.clone(),
    };
    let flood = |vni: &u32, vtep: &String| proto::FloodRequest {
        vni: *vni,
        vtep: vtep.clone(),
    };
    let oneof = match r {
        Request::NicAdd(s) => Oneof::NicAdd(proto::NicAddRequest {
            nic: Some(nic_spec_to_proto(s)),
        }),
        Request::NicUpdate(u) => Oneof::NicUpdate(nic_update_to_proto(u)),
        Request::NicDel { id } => Oneof::NicDel(proto::NicDelRequest { id: id.clone() }),
        Request::NicSgAdd { nic, sg } => Oneof::NicSgAdd(nic_sg(nic, sg)),
        Request::NicSgDel { nic, sg } => Oneof::NicSgDel(nic_sg(nic, sg)),
        Request::SgAdd { id } => Oneof::SgAdd(proto::SgAddRequest { id: id.clone() }),
        Request::SgDel { id } => Oneof::SgDel(proto::SgId { id: id.clone() }),
        Request::SgRuleAdd { sg, rule } => Oneof::SgRuleAdd(proto::SgRuleAddRequest {
            sg: sg.clone(),
            rule: Some(rule_spec_to_proto(rule)),
        }),
        Request::SgRuleDel { sg, rule_id } => Oneof::SgRuleDel(proto::SgRuleDelRequest {
            sg: sg.clone(),
            rule_id: rule_id.clone(),
        }),
        Request::SgMemberAdd { sg, ip } => Oneof::SgMemberAdd(member(sg, ip)),
        Request::SgMemberDel { sg, ip } => Oneof::SgMemberDel(member(sg, ip)),
        Request::FloodAdd { vni, vtep } => Oneof::FloodAdd(flood(vni, vtep)),
        Request::FloodDel { vni, vtep } => Oneof::FloodDel(flood(vni, vtep)),
    };
    proto::Request {
        request: Some(oneof),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_requests() -> Vec<Request> {
        vec![
            Request::NicAdd(NicSpec {
                id: "vm1".into(),
                mac: "52:54:00:00:00:01".into(),
                vni: 42,
                ips: vec!["10.0.0.1".into()],
                security_groups: vec!["web".into()],
                ip_antispoof: true,
                bypass_filtering: true,
                nic_type: NicType::VhostUserClient,
                socket_path: Some("/tmp/vm1.sock".into()),
                packet_trace: true,
                packet_trace_path: Some("/tmp/vm1.pcap".into()),
            }),
            Request::NicUpdate(NicUpdate {
                id: "vm1".into(),
                ips: Some(vec![]),
                security_groups: None,
                ip_antispoof: Some(false),
                bypass_filtering: None,
                packet_trace: Some(true),
                packet_trace_path: None,
            }),
            Request::NicDel { id: "vm1".into() },
            Request::NicSgAdd {
                nic: "a".into(),
                sg: "b".into(),
            },
            Request::NicSgDel {
                nic: "a".into(),
                sg: "b".into(),
            },
            Request::SgAdd { id: "web".into() },
            Request::SgDel { id: "web".into() },
            Request::SgRuleAdd {
                sg: "web".into(),
                rule: RuleSpec {
                    id: Some("r".into()),
                    direction: Direction::Out,
                    protocol: "tcp".into(),
                    port_start: Some(1),
                    port_end: Some(2),
                    cidr: None,
                    sg_members: Some("web".into()),
                },
            },
            Request::SgRuleDel {
                sg: "web".into(),
                rule_id: "r".into(),
            },
            Request::SgMemberAdd {
                sg: "web".into(),
                ip: "10.0.0.1".into(),
            },
            Request::SgMemberDel {
                sg: "web".into(),
                ip: "10.0.0.1".into(),
            },
            Request::FloodAdd {
                vni: 42,
                vtep: "192.0.2.2".into(),
            },
            Request::FloodDel {
                vni: 42,
                vtep: "192.0.2.2".into(),
            },
        ]
    }

    #[test]
    fn every_request_round_trips_through_protobuf() {
        for r in all_requests() {
            assert_eq!(request_from_proto(&request_to_proto(&r)).unwrap(), r);
        }
    }

    #[test]
    fn bad_enums_and_missing_parts_name_the_field() {
        let mut n = nic_spec_to_proto(&NicSpec::default());
        n.r#type = 9;
        assert_eq!(nic_spec_from_proto(&n).unwrap_err().field, "type");
        let r = proto::Rule {
            direction: 5,
            ..proto::Rule::default()
        };
        assert_eq!(rule_spec_from_proto(&r).unwrap_err().field, "direction");
        let e = request_from_proto(&proto::Request { request: None }).unwrap_err();
        assert_eq!(e.to_string(), "request: missing");
        let e = request_from_proto(&proto::Request {
            request: Some(Oneof::NicAdd(proto::NicAddRequest { nic: None })),
        })
        .unwrap_err();
        assert_eq!(e.field, "nic_add.nic");
    }
}
