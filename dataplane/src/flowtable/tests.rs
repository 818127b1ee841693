//! Unit tests of the flow table (manual clock).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use super::*;

fn table(max: u32, policy: FullPolicy) -> (FlowTable, Clock) {
    let clock = Clock::manual();
    let cfg = FlowTableConfig {
        max_flows: max,
        policy,
        tick: Duration::from_secs(1),
        wheel_slots: 64,
        ..Default::default()
    };
    (FlowTable::new(cfg, clock.clone()).unwrap(), clock)
}

fn udp(i: u32) -> FiveTuple {
    FiveTuple::new(
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
        "10.255.0.1".parse().unwrap(),
        IPPROTO_UDP,
        1000 + (i % 50000) as u16,
        53,
    )
}

fn tcp() -> FiveTuple {
    FiveTuple::new(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        IPPROTO_TCP,
        40000,
        80,
    )
}

/// Looks `t` up and touches it, or creates it.
fn packet(
    ft: &mut FlowTable,
    t: &FiveTuple,
    len: u32,
    flags: u8,
) -> Result<FlowId, FlowTableError> {
    let (k, lo) = FlowKey::new(t, 7);
    let h = ft.hash(&k);
    if let Some((id, dir)) = ft.lookup(&k, h, lo) {
        ft.touch(id, dir, len, flags);
        return Ok(id);
    }
    ft.create(&k, h, lo, len, flags, 0)
}

#[test]
fn flow_is_48_bytes_of_key_and_128_in_all() {
    assert_eq!(std::mem::size_of::<Flow>(), 128);
}

#[test]
fn both_directions_hit_one_flow_with_per_direction_counters() {
    let (mut ft, _c) = table(16, FullPolicy::RefuseNew);
    let t = udp(1);
    let id = packet(&mut ft, &t, 100, 0).unwrap();
    assert_eq!(packet(&mut ft, &t.reversed(), 60, 0).unwrap(), id);
    assert_eq!(packet(&mut ft, &t.reversed(), 60, 0).unwrap(), id);
    let f = ft.get(id).unwrap();
    assert_eq!(f.forward_tuple(), t);
    assert_eq!(
        (f.packets(FlowDir::Forward), f.packets(FlowDir::Reverse)),
        (1, 2)
    );
    assert_eq!(
        (f.bytes(FlowDir::Forward), f.bytes(FlowDir::Reverse)),
        (100, 120)
    );
    assert_eq!(f.zone(), 7);
    let c = ft.counters();
    assert_eq!((c.created, c.hit), (1, 2));
    assert_eq!(ft.find_tuple(&t.reversed(), 7), Some(id));
    assert_eq!(ft.find_tuple(&t, 8), None);
}

#[test]
fn udp_flow_expires_after_60_s_idle_with_a_record() {
    let (mut ft, clock) = table(16, FullPolicy::RefuseNew);
    let t = udp(1);
    let id = packet(&mut ft, &t, 100, 0).unwrap();
    ft.get_mut(id).unwrap().set_user(0xdead);
    clock.advance(Duration::from_secs(30));
    ft.advance();
    packet(&mut ft, &t.reversed(), 50, 0).unwrap(); // last seen at 30 s
    clock.advance(Duration::from_secs(59)); // 89 s: 59 s idle
    ft.advance();
    assert_eq!(ft.len(), 1, "59 s idle: still there (lazily re-armed)");
    clock.advance(Duration::from_secs(2)); // 91 s
    ft.advance();
    assert_eq!(ft.len(), 0);
    let c = ft.counters();
    assert_eq!(c.expired, 1);
    let r = ft.pop_record().unwrap();
    assert_eq!(r.reason, EndReason::Expired);
    assert_eq!(r.tuple, t);
    assert_eq!(r.packets, [1, 1]);
    assert_eq!(r.bytes, [100, 50]);
    assert_eq!(r.user, 0xdead);
    assert_eq!(r.last_seen_ns, 30_000_000_000);
    assert!(ft.pop_record().is_none());
    assert!(ft.get(id).is_none());
}

#[test]
fn tcp_lifetimes_follow_the_state_machine() {
    let (mut ft, clock) = table(16, FullPolicy::RefuseNew);
    let t = tcp();
    let id = packet(&mut ft, &t, 60, TCP_SYN).unwrap();
    assert_eq!(ft.get(id).unwrap().tcp_state(), TcpState::SynSent);
    assert_eq!(ft.get(id).unwrap().lifetime(), Duration::from_secs(15));
    packet(&mut ft, &t.reversed(), 60, TCP_SYN | TCP_ACK).unwrap();
    assert_eq!(ft.get(id).unwrap().tcp_state(), TcpState::SynReceived);
    packet(&mut ft, &t, 60, TCP_ACK).unwrap();
    assert_eq!(ft.get(id).unwrap().tcp_state(), TcpState::Established);
    assert_eq!(ft.get(id).unwrap().lifetime(), Duration::from_secs(300));
    clock.advance(Duration::from_secs(200));
    ft.advance();
    assert_eq!(ft.len(), 1, "established lives 300 s");
    packet(&mut ft, &t, 60, TCP_ACK | TCP_FIN).unwrap();
    assert_eq!(ft.get(id).unwrap().tcp_state(), TcpState::FinWait);
    packet(&mut ft, &t.reversed(), 60, TCP_ACK | TCP_FIN).unwrap();
    assert_eq!(ft.get(id).unwrap().tcp_state(), TcpState::Closing);
    assert_eq!(ft.get(id).unwrap().lifetime(), Duration::from_secs(15));
    clock.advance(Duration::from_secs(16));
    ft.advance();
    assert_eq!(ft.len(), 0, "FIN shortened the lifetime: re-armed early");
    assert_eq!(ft.pop_record().unwrap().tcp_state, TcpState::Closing);

    // RST: 6 s.
    let id = packet(&mut ft, &t, 60, TCP_SYN).unwrap();
    packet(&mut ft, &t.reversed(), 60, TCP_RST | TCP_ACK).unwrap();
    assert_eq!(ft.get(id).unwrap().tcp_state(), TcpState::Reset);
    clock.advance(Duration::from_secs(5));
    ft.advance();
    assert_eq!(ft.len(), 1);
    // A new SYN on the reset flow reopens it.
    packet(&mut ft, &t, 60, TCP_SYN).unwrap();
    assert_eq!(ft.get(id).unwrap().tcp_state(), TcpState::SynSent);
    clock.advance(Duration::from_secs(16));
    ft.advance();
    assert_eq!(ft.len(), 0);

    // Mid-stream pick-up starts established.
    let id = packet(&mut ft, &t, 60, TCP_ACK).unwrap();
    assert_eq!(ft.get(id).unwrap().tcp_state(), TcpState::Established);
}

#[test]
fn lifetimes_beyond_the_wheel_horizon_work() {
    let clock = Clock::manual();
    let cfg = FlowTableConfig {
        max_flows: 8,
        tick: Duration::from_secs(1),
        wheel_slots: 4, // 4 s horizon, 60 s UDP lifetime
        ..Default::default()
    };
    let mut ft = FlowTable::new(cfg, clock.clone()).unwrap();
    packet(&mut ft, &udp(1), 1, 0).unwrap();
    for _ in 0..59 {
        clock.advance(Duration::from_secs(1));
        ft.advance();
    }
    assert_eq!(ft.len(), 1);
    clock.advance(Duration::from_secs(1));
    ft.advance();
    assert_eq!(ft.len(), 0);
    // A clock jump of many turns is handled with bounded work.
    packet(&mut ft, &udp(2), 1, 0).unwrap();
    clock.advance(Duration::from_secs(100_000));
    ft.advance();
    assert_eq!(ft.len(), 0);
}

#[test]
fn expiry_work_per_advance_is_bounded() {
    let clock = Clock::manual();
    let cfg = FlowTableConfig {
        max_flows: 2000,
        tick: Duration::from_secs(1),
        wheel_slots: 64,
        expire_budget: 100,
        ..Default::default()
    };
    let mut ft = FlowTable::new(cfg, clock.clone()).unwrap();
    for i in 0..1000 {
        packet(&mut ft, &udp(i), 1, 0).unwrap();
    }
    clock.advance(Duration::from_secs(61));
    ft.advance();
    let after_one = 1000 - ft.len();
    assert!(
        after_one > 0 && after_one <= 100,
        "{after_one} expired in one call"
    );
    let mut calls = 1;
    while !ft.is_empty() {
        ft.advance();
        calls += 1;
        assert!(calls < 100);
    }
    assert_eq!(ft.counters().expired, 1000);
    // The record ring (1024) holds them all.
    assert_eq!(ft.records().count(), 1000);
}

#[test]
fn lookup_expires_a_flow_the_wheel_has_not_reached() {
    let clock = Clock::manual();
    let cfg = FlowTableConfig {
        max_flows: 8,
        tick: Duration::from_secs(1),
        expire_budget: 1,
        ..Default::default()
    };
    let mut ft = FlowTable::new(cfg, clock.clone()).unwrap();
    let t = udp(3);
    let id = packet(&mut ft, &t, 1, 0).unwrap();
    clock.advance(Duration::from_secs(61));
    ft.advance(); // budget 1: the wheel lags far behind
    let id2 = packet(&mut ft, &t, 1, 0).unwrap();
    assert_eq!(id, id2, "slot reused");
    assert_eq!(
        ft.get(id2).unwrap().packets(FlowDir::Forward),
        1,
        "a new flow"
    );
    assert_eq!(ft.counters().expired, 1);
    assert_eq!(ft.counters().created, 2);
}

#[test]
fn full_table_refuses_new_flows() {
    let (mut ft, _c) = table(4, FullPolicy::RefuseNew);
    for i in 0..4 {
        packet(&mut ft, &udp(i), 1, 0).unwrap();
    }
    assert_eq!(
        packet(&mut ft, &udp(9), 1, 0),
        Err(FlowTableError::Full { max: 4 })
    );
    assert_eq!(ft.counters().refused, 1);
    assert_eq!(ft.len(), 4);
    // Existing flows still hit.
    packet(&mut ft, &udp(2).reversed(), 1, 0).unwrap();
    assert_eq!(ft.counters().hit, 1);
}

#[test]
fn full_table_evicts_the_flow_expiring_first() {
    let (mut ft, clock) = table(4, FullPolicy::EvictOldest);
    for i in 0..4 {
        packet(&mut ft, &udp(i), 1, 0).unwrap();
        clock.advance(Duration::from_secs(2));
        ft.advance();
    }
    // Flow 0 was refreshed: flow 1 now expires first.
    packet(&mut ft, &udp(0), 1, 0).unwrap();
    packet(&mut ft, &udp(9), 1, 0).unwrap();
    assert_eq!(ft.counters().evicted, 1);
    assert_eq!(ft.len(), 4);
    let r = ft.pop_record().unwrap();
    assert_eq!(r.reason, EndReason::Evicted);
    assert_eq!(r.tuple, udp(1), "the flow with the earliest true expiry");
    assert!(ft.find_tuple(&udp(0), 7).is_some());
    assert!(ft.find_tuple(&udp(9), 7).is_some());
}

#[test]
fn records_ring_is_bounded() {
    let clock = Clock::manual();
    let cfg = FlowTableConfig {
        max_flows: 64,
        record_capacity: 4,
        ..Default::default()
    };
    let mut ft = FlowTable::new(cfg, clock).unwrap();
    for i in 0..10 {
        packet(&mut ft, &udp(i), 1, 0).unwrap();
    }
    assert_eq!(ft.retain(|_, f| f.forward_tuple() == udp(3)), 9);
    assert_eq!(ft.len(), 1);
    assert_eq!(ft.counters().removed, 9);
    assert_eq!(ft.counters().records_lost, 5);
    assert_eq!(ft.records().count(), 4);
    assert_eq!(
        ft.pop_record().unwrap().tuple,
        udp(6),
        "removed 0-2, 4-9: the last 4 stay"
    );
}

#[test]
fn index_matches_a_model_under_random_churn() {
    // Deterministic xorshift; small index so probe chains wrap and backward shifts run.
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (mut ft, _c) = table(256, FullPolicy::RefuseNew);
    let mut model: HashMap<FiveTuple, FlowId> = HashMap::new();
    for _ in 0..20_000 {
        let t = udp((rnd() % 400) as u32);
        if rnd() % 3 == 0 {
            if let Some(id) = model.remove(&t) {
                assert!(ft.remove(id));
            }
        } else {
            match model.get(&t) {
                Some(&id) => assert_eq!(packet(&mut ft, &t, 1, 0).unwrap(), id),
                None => {
                    if let Ok(id) = packet(&mut ft, &t, 1, 0) {
                        assert!(model.len() < 256);
                        model.insert(t, id);
                    } else {
                        assert_eq!(model.len(), 256);
                    }
                }
            }
        }
        assert_eq!(ft.len(), model.len());
    }
    for (t, id) in &model {
        assert_eq!(ft.find_tuple(t, 7), Some(*id));
    }
    assert_eq!(ft.iter().count(), model.len());
}

#[test]
fn bad_config_is_rejected() {
    let c = Clock::manual();
    let bad = FlowTableConfig {
        max_flows: 0,
        ..Default::default()
    };
    assert!(matches!(
        FlowTable::new(bad, c.clone()),
        Err(FlowTableError::Config(_))
    ));
    let bad = FlowTableConfig {
        tick: Duration::from_micros(10),
        ..Default::default()
    };
    assert!(FlowTable::new(bad, c).is_err());
}

/// `hit` (the fast path's lookup + touch with the established-ACK shortcut) leaves a
/// table exactly as `lookup` then `touch` do: two tables fed the same random TCP and UDP
/// packets (random flags, both directions, clock moving) end with the same flows,
/// counters and records.
#[test]
fn hit_matches_lookup_then_touch() {
    let mut s = 0x0bad_cafe_f00d_1234u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (mut a, ca) = table(64, FullPolicy::EvictOldest);
    let (mut b, cb) = table(64, FullPolicy::EvictOldest);
    let flags = [
        TCP_SYN,
        TCP_SYN | TCP_ACK,
        TCP_ACK,
        TCP_ACK,
        TCP_ACK,
        TCP_ACK | TCP_FIN,
        TCP_RST,
        0x18, // PSH + ACK
    ];
    for step in 0..20_000 {
        let i = (rnd() % 80) as u32;
        let mut t = if i.is_multiple_of(2) {
            udp(i)
        } else {
            FiveTuple::new(
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                "10.255.0.1".parse().unwrap(),
                IPPROTO_TCP,
                1000,
                80,
            )
        };
        if rnd() % 2 == 0 {
            t = t.reversed();
        }
        let fl = if t.proto == IPPROTO_TCP {
            flags[(rnd() % flags.len() as u64) as usize]
        } else {
            0
        };
        let len = (rnd() % 1500) as u32;
        let (k, lo) = FlowKey::new(&t, 7);
        let (ha, hb) = (a.hash(&k), b.hash(&k));
        let ra = a.hit(&k, ha, lo, len, fl);
        let rb = b.lookup(&k, hb, lo);
        if let Some((id, dir)) = rb {
            b.touch(id, dir, len, fl);
        }
        assert_eq!(ra, rb, "step {step}");
        if ra.is_none() {
            let x = a.create(&k, ha, lo, len, fl, 0).map(|i| i.0);
            let y = b.create(&k, hb, lo, len, fl, 0).map(|i| i.0);
            assert_eq!(x, y);
        }
        if rnd() % 16 == 0 {
            let d = Duration::from_millis(rnd() % 20_000);
            ca.advance(d);
            cb.advance(d);
            a.advance();
            b.advance();
        }
    }
    assert_eq!(a.counters(), b.counters());
    assert!(a.counters().expired > 0 && a.counters().evicted > 0);
    let flows = |t: &FlowTable| {
        t.iter()
            .map(|(id, f)| {
                (
                    id,
                    f.forward_tuple(),
                    f.tcp_state(),
                    f.lifetime(),
                    f.last_seen_ns(),
                    [f.packets(FlowDir::Forward), f.packets(FlowDir::Reverse)],
                    [f.bytes(FlowDir::Forward), f.bytes(FlowDir::Reverse)],
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(flows(&a), flows(&b));
    assert!(a.records().eq(b.records()));
}

/// Lazy re-arm: a packet only moves `last_seen`; when the flow's first slot comes round
/// the wheel re-arms it at its true expiry instead of expiring it, and it expires one
/// lifetime after its last packet.
#[test]
fn busy_flow_is_re_armed_lazily_and_expires_after_its_last_packet() {
    let (mut ft, clock) = table(16, FullPolicy::RefuseNew);
    let t = udp(9);
    let id = packet(&mut ft, &t, 1, 0).unwrap();
    clock.advance(Duration::from_secs(50));
    ft.advance();
    packet(&mut ft, &t.reversed(), 1, 0).unwrap();
    assert_eq!(ft.get(id).unwrap().expires_ns(), 110_000_000_000);
    // Its first slot (60 s) passes: re-armed, not expired.
    clock.advance(Duration::from_secs(11));
    ft.advance();
    assert_eq!(ft.len(), 1);
    assert_eq!(ft.counters().expired, 0);
    // Just before 110 s it is still there; one tick after, gone.
    clock.advance(Duration::from_secs(48));
    ft.advance();
    assert_eq!(ft.len(), 1);
    clock.advance(Duration::from_secs(2));
    ft.advance();
    assert_eq!(ft.len(), 0);
    let r = ft.pop_record().unwrap();
    assert_eq!(
        (r.reason, r.last_seen_ns),
        (EndReason::Expired, 50_000_000_000)
    );
    assert_eq!(r.packets, [1, 1]);
}

/// The word-built keys of the fast parser equal the keys built from a 5-tuple, and the
/// hash spreads IPv4 keys that differ in one address byte or one port over the index.
#[test]
fn v4_and_v6_keys_match_new_and_hash_spreads() {
    let t4 = FiveTuple::new(
        "192.0.2.7".parse().unwrap(),
        "10.1.2.3".parse().unwrap(),
        IPPROTO_TCP,
        443,
        50000,
    );
    for t in [t4, t4.reversed()] {
        let (s, d) = (t.src_ip(), t.dst_ip());
        let (IpAddr::V4(s), IpAddr::V4(d)) = (s, d) else {
            unreachable!()
        };
        let k = FlowKey::v4(s.octets(), d.octets(), t.sport, t.dport, t.proto, 3);
        assert_eq!(k, FlowKey::new(&t, 3));
    }
    let t6 = FiveTuple::new(
        "fd00::7".parse().unwrap(),
        "fd00::1:3".parse().unwrap(),
        IPPROTO_UDP,
        53,
        53,
    );
    for t in [t6, t6.reversed()] {
        assert_eq!(
            FlowKey::v6(t.src, t.dst, t.sport, t.dport, t.proto, 3),
            FlowKey::new(&t, 3)
        );
    }
    // 2^16 keys differing in the low address bytes, then 2^16 differing in a port, into
    // the low 17 bits of their hashes (a 128k-slot index): a uniform hash gives about
    // 2^17 (1 - e^-1/2) = 51,600 distinct slots (79 % of the keys); ask for 60 %.
    let seed = 0x1234_5678;
    for vary_port in [false, true] {
        let mut seen = vec![false; 1 << 17];
        for i in 0..1u32 << 16 {
            let (a, p) = if vary_port {
                (0xc000_0207, i as u16)
            } else {
                (0xc000_0000 | i, 443)
            };
            let (k, _) = FlowKey::v4(a.to_be_bytes(), [10, 1, 2, 3], p, 80, IPPROTO_TCP, 0);
            seen[(k.hash_seeded(seed) & ((1 << 17) - 1)) as usize] = true;
        }
        let filled = seen.iter().filter(|&&x| x).count();
        assert!(
            filled as f64 > 0.6 * (1 << 16) as f64,
            "{filled} slots of 2^17 for 2^16 keys"
        );
    }
}

/// A table big enough for its slab and index to be laid out for huge pages (unused
/// leading slab slots, an index starting on a 2 MiB boundary) works like a small one:
/// flows are found, the wheel expires them, the full table evicts, ids stay valid.
#[test]
fn large_table_laid_out_for_huge_pages_works() {
    let max = 1 << 17;
    let (mut ft, clock) = table(max, FullPolicy::EvictOldest);
    assert!(ft.memory_bytes() >= max as usize * 144);
    let mut ids = Vec::new();
    for i in 0..3000 {
        ids.push(packet(&mut ft, &udp(i), 10, 0).unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            packet(&mut ft, &udp(i as u32).reversed(), 5, 0).unwrap(),
            *id
        );
        assert_eq!(ft.get(*id).unwrap().packets(FlowDir::Reverse), 1);
    }
    assert_eq!(ft.iter().count(), 3000);
    clock.advance(Duration::from_secs(30));
    ft.advance();
    // Half of them stay busy; the others expire at 60 s.
    for i in 0..1500 {
        packet(&mut ft, &udp(i), 1, 0).unwrap();
    }
    clock.advance(Duration::from_secs(31));
    while ft.len() > 1500 {
        ft.advance();
    }
    assert_eq!(ft.counters().expired, 1500);
    for i in 0..1500 {
        assert_eq!(ft.find_tuple(&udp(i), 7), Some(ids[i as usize]));
    }
    // Fill it: the oldest-expiring flows are evicted, the table stays at max.
    let mut n = 3000;
    while ft.len() < max as usize {
        packet(&mut ft, &udp(n), 1, 0).unwrap();
        n += 1;
    }
    packet(&mut ft, &udp(n), 1, 0).unwrap();
    assert_eq!(ft.len(), max as usize);
    assert_eq!(ft.counters().evicted, 1);
    assert_eq!(ft.iter().count(), max as usize);
}
