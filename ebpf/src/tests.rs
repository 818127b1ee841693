//! BPF_PROG_TEST_RUN of the steering program on hand-built frames. Needs root (CAP_BPF):
//! without it the tests fail saying so.

use super::*;

const OUR_V4: [u8; 4] = [10, 0, 0, 1];
const OTHER_V4: [u8; 4] = [10, 0, 0, 9];
const OUR_V6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const GROUP_V4: [u8; 4] = [239, 1, 1, 42];

fn steering(variant: Variant) -> Steering {
    let mut s = Steering::load(variant).unwrap_or_else(|e| {
        panic!("{e}: these tests need root (CAP_BPF) to run BPF_PROG_TEST_RUN")
    });
    s.set_vxlan_port(VXLAN_PORT).unwrap();
    s.add_vtep_addr(IpAddr::from(OUR_V4)).unwrap();
    s.add_vtep_addr(IpAddr::from(OUR_V6)).unwrap();
    s.join_group(IpAddr::from(GROUP_V4)).unwrap();
    s
}

fn eth(ethertype: u16, vlan: Option<u16>) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if let Some(tci) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// UDP header + an 8-byte VXLAN header (VNI 42) + a 14-byte inner Ethernet header.
fn udp_vxlan(dport: u16) -> Vec<u8> {
    let payload_len = 8 + 14;
    let mut u = Vec::new();
    u.extend_from_slice(&50000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]); // checksum 0: allowed over IPv4 and for VXLAN over IPv6
    u.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 42, 0]);
    u.extend_from_slice(&[0xff; 6]);
    u.extend_from_slice(&[0x02, 0, 0, 0, 0, 3]);
    u.extend_from_slice(&0x0806u16.to_be_bytes());
    u
}

fn ipv4(dst: [u8; 4], proto: u8, options: &[u8], l4: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = ihl * 4 + l4.len();
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]); // DF, TTL 64, checksum unchecked
    h.extend_from_slice(&[10, 0, 0, 2]);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    h.extend_from_slice(l4);
    h
}

fn ipv6(dst: [u8; 16], next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    h.extend_from_slice(&dst);
    h.extend_from_slice(ext);
    h.extend_from_slice(l4);
    h
}

fn frame(mut l2: Vec<u8>, l3: Vec<u8>) -> Vec<u8> {
    l2.extend(l3);
    l2
}

/// Runs `f` once and returns the action and which counter moved.
fn run(s: &Steering, f: &[u8]) -> (u32, SteerCounters) {
    let before = s.counters().unwrap();
    let act = s.test_run(f).unwrap();
    let after = s.counters().unwrap();
    let delta = SteerCounters {
        steered: after.steered - before.steered,
        passed: after.passed - before.passed,
        malformed: after.malformed - before.malformed,
        no_socket: after.no_socket - before.no_socket,
    };
    (act, delta)
}

const TO_US: SteerCounters = SteerCounters {
    steered: 0,
    passed: 0,
    malformed: 0,
    no_socket: 1,
};
const PASSED: SteerCounters = SteerCounters {
    steered: 0,
    passed: 1,
    malformed: 0,
    no_socket: 0,
};
const MALFORMED: SteerCounters = SteerCounters {
    steered: 0,
    passed: 0,
    malformed: 1,
    no_socket: 0,
};

// Without a socket in the XSKMAP (no interface in a unit test), VXLAN for us is counted
// as `no_socket` and falls back to XDP_PASS: that counter is how the steering decision
// shows here. The end-to-end tests (tests/tests/afxdp_*.rs) check the redirect itself.

#[test]
fn ipv4_vxlan_to_us_is_steered() {
    let s = steering(Variant::Linear);
    let f = frame(eth(0x0800, None), ipv4(OUR_V4, 17, &[], &udp_vxlan(4789)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
}

#[test]
fn ipv4_with_options_is_steered() {
    let s = steering(Variant::Linear);
    // Two NOPs + router alert (4 bytes) + 4 NOPs = 8 bytes of options, IHL 7.
    let opts = [1, 1, 0x94, 4, 0, 0, 1, 1];
    let f = frame(eth(0x0800, None), ipv4(OUR_V4, 17, &opts, &udp_vxlan(4789)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
    // Maximum options: IHL 15.
    let f = frame(
        eth(0x0800, None),
        ipv4(OUR_V4, 17, &[1u8; 40], &udp_vxlan(4789)),
    );
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
}

#[test]
fn multicast_group_is_steered() {
    let mut s = steering(Variant::Linear);
    let f = frame(eth(0x0800, None), ipv4(GROUP_V4, 17, &[], &udp_vxlan(4789)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
    s.leave_group(IpAddr::from(GROUP_V4)).unwrap();
    assert_eq!(run(&s, &f), (action::XDP_PASS, PASSED));
}

#[test]
fn ipv6_vxlan_and_extension_headers() {
    let s = steering(Variant::Linear);
    let f = frame(eth(0x86dd, None), ipv6(OUR_V6, 17, &[], &udp_vxlan(4789)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
    // Hop-by-hop (8 bytes, PadN) then destination options (16 bytes) then UDP.
    let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&[17, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let f = frame(eth(0x86dd, None), ipv6(OUR_V6, 0, &ext, &udp_vxlan(4789)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
    // A fragment header: passed to the kernel for reassembly.
    let frag = [17, 0, 0, 1, 0, 0, 0, 7];
    let f = frame(eth(0x86dd, None), ipv6(OUR_V6, 44, &frag, &udp_vxlan(4789)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, PASSED));
    // More extension headers than the bound: passed.
    let mut many = Vec::new();
    for _ in 0..7 {
        many.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    let last = many.len() - 8;
    many[last] = 17;
    let f = frame(eth(0x86dd, None), ipv6(OUR_V6, 60, &many, &udp_vxlan(4789)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, PASSED));
}

#[test]
fn vlan_tagged_vxlan_is_steered() {
    let s = steering(Variant::Linear);
    let f = frame(
        eth(0x0800, Some(100)),
        ipv4(OUR_V4, 17, &[], &udp_vxlan(4789)),
    );
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
    let f = frame(
        eth(0x86dd, Some(100)),
        ipv6(OUR_V6, 17, &[], &udp_vxlan(4789)),
    );
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
}

#[test]
fn wrong_port_or_destination_or_protocol_is_passed() {
    let s = steering(Variant::Linear);
    let cases = [
        frame(eth(0x0800, None), ipv4(OUR_V4, 17, &[], &udp_vxlan(4790))),
        frame(eth(0x0800, None), ipv4(OTHER_V4, 17, &[], &udp_vxlan(4789))),
        frame(eth(0x0800, None), ipv4(OUR_V4, 6, &[], &udp_vxlan(4789))),
        frame(
            eth(0x86dd, None),
            ipv6([0xfe; 16], 17, &[], &udp_vxlan(4789)),
        ),
        frame(eth(0x0806, None), vec![0; 28]), // ARP
    ];
    for f in &cases {
        assert_eq!(run(&s, f), (action::XDP_PASS, PASSED), "frame {f:02x?}");
    }
}

#[test]
fn ipv4_fragment_is_passed() {
    let s = steering(Variant::Linear);
    let mut f = frame(eth(0x0800, None), ipv4(OUR_V4, 17, &[], &udp_vxlan(4789)));
    f[14 + 6] = 0x20; // MF
    assert_eq!(run(&s, &f), (action::XDP_PASS, PASSED));
}

#[test]
fn truncated_and_invalid_headers_are_malformed() {
    let s = steering(Variant::Linear);
    let full = frame(eth(0x0800, None), ipv4(OUR_V4, 17, &[], &udp_vxlan(4789)));
    // IPv4 header cut (14 + 10), UDP header cut (14 + 20 + 4).
    for cut in [14 + 10, 14 + 20 + 4] {
        assert_eq!(
            run(&s, &full[..cut]),
            (action::XDP_PASS, MALFORMED),
            "cut {cut}"
        );
    }
    // IHL 15 but only 20 header bytes present.
    let mut f = full[..14 + 20].to_vec();
    f[14] = 0x4f;
    assert_eq!(run(&s, &f), (action::XDP_PASS, MALFORMED));
    // IHL below 5.
    let mut f = full.clone();
    f[14] = 0x44;
    assert_eq!(run(&s, &f), (action::XDP_PASS, MALFORMED));
    // Version 6 in an IPv4 EtherType.
    let mut f = full.clone();
    f[14] = 0x65;
    assert_eq!(run(&s, &f), (action::XDP_PASS, MALFORMED));
    // VLAN tag cut.
    let f = eth(0x8100, None);
    let f = [&f[..], &[0, 100]].concat();
    assert_eq!(run(&s, &f), (action::XDP_PASS, MALFORMED));
    // IPv6 header cut, extension header running past the end.
    let v6 = frame(eth(0x86dd, None), ipv6(OUR_V6, 17, &[], &udp_vxlan(4789)));
    assert_eq!(run(&s, &v6[..14 + 30]), (action::XDP_PASS, MALFORMED));
    let f = frame(eth(0x86dd, None), ipv6(OUR_V6, 0, &[17, 200, 0, 0], &[]));
    assert_eq!(run(&s, &f), (action::XDP_PASS, MALFORMED));
}

#[test]
fn port_change_needs_no_reload() {
    let mut s = steering(Variant::Linear);
    let f8472 = frame(eth(0x0800, None), ipv4(OUR_V4, 17, &[], &udp_vxlan(8472)));
    assert_eq!(run(&s, &f8472), (action::XDP_PASS, PASSED));
    s.set_vxlan_port(8472).unwrap();
    assert_eq!(s.vxlan_port().unwrap(), 8472);
    assert_eq!(run(&s, &f8472), (action::XDP_PASS, TO_US));
    s.set_vxlan_port(0).unwrap();
    assert_eq!(run(&s, &f8472), (action::XDP_PASS, PASSED));
    s.set_vxlan_port(8472).unwrap();
    s.remove_vtep_addr(IpAddr::from(OUR_V4)).unwrap();
    assert_eq!(run(&s, &f8472), (action::XDP_PASS, PASSED));
}

#[test]
fn frags_variant_steers_the_same() {
    let s = steering(Variant::Frags);
    let f = frame(eth(0x0800, None), ipv4(OUR_V4, 17, &[], &udp_vxlan(4789)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, TO_US));
    let f = frame(eth(0x0800, None), ipv4(OUR_V4, 17, &[], &udp_vxlan(4790)));
    assert_eq!(run(&s, &f), (action::XDP_PASS, PASSED));
}

#[test]
fn bad_arguments_are_refused() {
    let mut s = steering(Variant::Linear);
    assert!(matches!(
        s.add_vtep_addr("239.0.0.1".parse().unwrap()),
        Err(SteerError::Invalid(_))
    ));
    assert!(matches!(
        s.join_group("10.0.0.1".parse().unwrap()),
        Err(SteerError::Invalid(_))
    ));
    assert!(matches!(
        s.register_xsk(MAX_QUEUES, 0),
        Err(SteerError::Invalid(_))
    ));
    assert!(matches!(
        s.attach("nosuchif0", AttachMode::Auto, false),
        Err(SteerError::NoInterface(_))
    ));
    // A non-AF_XDP descriptor is refused by the XSKMAP.
    assert!(matches!(s.register_xsk(0, 0), Err(SteerError::Map { .. })));
}

/// Random bytes never make the program fail or steer garbage: every run ends in exactly
/// one counter, and the action is XDP_PASS (no socket registered).
#[test]
fn random_frames_never_break_the_program() {
    let s = steering(Variant::Linear);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let base = frame(eth(0x0800, None), ipv4(OUR_V4, 17, &[], &udp_vxlan(4789)));
    for i in 0..300 {
        let mut f = base.clone();
        let len = 14 + (i % (base.len() - 13));
        f.truncate(len);
        for b in f.iter_mut().skip(12) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(4) {
                *b = x as u8;
            }
        }
        let (act, d) = run(&s, &f);
        assert_eq!(act, action::XDP_PASS);
        assert_eq!(d.steered + d.passed + d.malformed + d.no_socket, 1);
    }
}

/// Runs the matching sink configured with `m` on `frame`; returns the XDP action.
fn sink_match_run(lg: &mut LoadGen, m: SinkMatch, frame: &[u8]) -> u32 {
    let mut cfg: Array<&mut MapData, u32> =
        Array::try_from(lg.ebpf.map_mut("match_config").unwrap()).unwrap();
    cfg.set(0, u32::from(m.udp_port), 0).unwrap();
    cfg.set(1, m.vni.map_or(0, |v| v + 1), 0).unwrap();
    cfg.set(2, m.dst.map_or(0, |a| u32::from_ne_bytes(a.octets())), 0)
        .unwrap();
    let xdp: &Xdp = lg
        .ebpf
        .program("butterfly_sink_match")
        .unwrap()
        .try_into()
        .unwrap();
    let mut out = vec![0u8; frame.len() + 512];
    xdp.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ..TestRunOptions::new()
    })
    .unwrap()
    .return_value
}

#[test]
fn match_sink_drops_and_counts_only_the_configured_vxlan_or_udp() {
    let mut lg = LoadGen::load()
        .unwrap_or_else(|e| panic!("{e}: this test needs root (CAP_BPF) to load programs"));
    let vx = SinkMatch {
        udp_port: VXLAN_PORT,
        dst: Some(OUR_V4.into()),
        vni: Some(42),
    };
    let frame = |dst, dport| [eth(0x0800, None), ipv4(dst, 17, &[], &udp_vxlan(dport))].concat();
    use action::{XDP_DROP, XDP_PASS};
    assert_eq!(sink_match_run(&mut lg, vx, &frame(OUR_V4, 4789)), XDP_DROP);
    assert_eq!(
        sink_match_run(&mut lg, vx, &frame(OTHER_V4, 4789)),
        XDP_PASS
    );
    assert_eq!(sink_match_run(&mut lg, vx, &frame(OUR_V4, 4790)), XDP_PASS);
    let other_vni = SinkMatch { vni: Some(7), ..vx };
    assert_eq!(
        sink_match_run(&mut lg, other_vni, &frame(OUR_V4, 4789)),
        XDP_PASS
    );
    let any_udp = SinkMatch {
        udp_port: 4789,
        dst: None,
        vni: None,
    };
    assert_eq!(
        sink_match_run(&mut lg, any_udp, &frame(OTHER_V4, 4789)),
        XDP_DROP
    );
    // ARP, IPv4 options, truncated: passed.
    assert_eq!(sink_match_run(&mut lg, vx, &eth(0x0806, None)), XDP_PASS);
    let opts = [
        eth(0x0800, None),
        ipv4(OUR_V4, 17, &[1, 1, 1, 1], &udp_vxlan(4789)),
    ]
    .concat();
    assert_eq!(sink_match_run(&mut lg, vx, &opts), XDP_PASS);
    assert_eq!(
        sink_match_run(&mut lg, vx, &frame(OUR_V4, 4789)[..40]),
        XDP_PASS
    );
    assert_eq!(
        lg.match_counts().unwrap(),
        SinkCounts {
            matched: 2,
            other: 6
        }
    );
}
