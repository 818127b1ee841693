//! Feeds arbitrary bytes to the flow parser and to the firewall brick.
//!
//! The first byte picks the side the frame arrives on (bit 0: EAST, the VM side, i.e.
//! outbound; else WEST, inbound); the rest is the frame. The parser must not panic and
//! its offsets must lie inside the frame; the fast parser (`fast_key`) must agree with it
//! on every frame it takes; after each input the firewall's counters must
//! account for every frame (passed or dropped by reason) and no frame may leak.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use packetgraph::bricks::firewall::{
    Firewall, FirewallConfig, Peer, PortRange, Protocol, Rule, SecurityGroup,
};
use packetgraph::flowtable::parse::fast_key;
use packetgraph::flowtable::{FlowKey, FlowTableConfig, Fragment, Parsed, parse_ethernet};
use packetgraph::{Brick, Burst, Clock, Emit, Pool, PoolConfig, Side};

struct State {
    pool: Pool,
    fw: Firewall,
    fed: u64,
}

fn state() -> &'static Mutex<State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(|| {
        let pool = Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .expect("pool");
        let clock = Clock::manual();
        let mut fw = Firewall::new(
            FirewallConfig {
                flows: FlowTableConfig {
                    max_flows: 4096,
                    ..Default::default()
                },
                ..Default::default()
            },
            clock,
        )
        .expect("firewall");
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
        .expect("group");
        fw.set_nic_groups(vec!["sg".into()]);
        Mutex::new(State { pool, fw, fed: 0 })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    if let Some((key, lo, flags)) = fast_key(frame, 7) {
        let Ok(Parsed::Ip(ip)) = parse_ethernet(frame) else {
            panic!("fast parser took a frame the full parser rejects");
        };
        assert_eq!(ip.fragment, Fragment::No);
        assert_eq!(FlowKey::new(&ip.tuple, 7), (key, lo));
        assert_eq!(ip.tcp_flags, flags);
    }
    if let Ok(Parsed::Ip(ip)) = parse_ethernet(frame) {
        assert!(ip.l3_offset < frame.len());
        if let Some(l4) = ip.l4_offset {
            assert!(l4 <= frame.len() && l4 > ip.l3_offset);
        }
    }
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *st;
    let Some(p) = st.pool.packet_from(frame) else {
        return; // longer than a frame: a NIC could not have received it
    };
    let mut b = Burst::new();
    b.push(p).expect("one packet fits");
    let side = if sel & 1 != 0 { Side::East } else { Side::West };
    let mut out = Emit::new();
    st.fw
        .burst(side, 0, b, &mut out)
        .expect("filtering never fails, it drops");
    assert_eq!(out.empty_bursts(), 0);
    let passed: usize = out.pending().iter().map(|(_, b)| b.len()).sum();
    drop(out);
    st.fed += 1;
    let c = st.fw.stats();
    assert!(passed <= 1);
    assert_eq!(
        st.fed,
        c.passed() + c.dropped(),
        "every frame passed or dropped by reason"
    );
    assert_eq!(st.pool.available(), 256, "no frame leaked");
});
