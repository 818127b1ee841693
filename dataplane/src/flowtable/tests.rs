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
