//! Feeds arbitrary bytes to the VTEP's underlay side (decapsulation, ARP/NDP handling).
//!
//! The first byte picks the configuration (bit 0: IPv6 underlay, bit 1: accept zero
//! IPv6 UDP checksums); the rest is the frame. After each input the counters must
//! account for every frame and no frame may leak.
#![no_main]

use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use packetgraph::bricks::vtep::{Flood, Vtep, VtepConfig};
use packetgraph::{Brick, Burst, Emit, Pool, PoolConfig, Side};

struct State {
    pool: Pool,
    vteps: Vec<Vtep>,
    fed: Vec<u64>,
}

fn state() -> &'static Mutex<State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(|| {
        let pool = Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .expect("pool");
        let mut vteps = Vec::new();
        for cfg in 0..4u8 {
            let v6 = cfg & 1 != 0;
            let ip: IpAddr = if v6 { "fd00::1" } else { "10.0.0.1" }.parse().unwrap();
            let mut c = VtepConfig::new(ip, [0x02, 0, 0, 0, 0, 1]);
            c.udp6_zero_checksum_rx = cfg & 2 != 0;
            let mut v = Vtep::new(pool.clone(), c).expect("vtep");
            let group: IpAddr = if v6 { "ff05::1" } else { "239.0.0.1" }.parse().unwrap();
            let remote: IpAddr = if v6 { "fd00::2" } else { "10.0.0.2" }.parse().unwrap();
            v.add_vni(0, 42, Flood::Multicast(group)).expect("vni 42");
            v.add_vni(1, 43, Flood::List(vec![remote])).expect("vni 43");
            // Send (and drop) the queued join and ARP/NS request.
            v.poll(&mut Emit::new()).expect("poll");
            vteps.push(v);
        }
        Mutex::new(State {
            pool,
            vteps,
            fed: vec![0; 4],
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *st;
    let i = (sel & 3) as usize;
    let Some(p) = st.pool.packet_from(frame) else {
        return; // longer than a frame: a NIC could not have received it
    };
    let mut b = Burst::new();
    b.push(p).expect("one packet fits");
    let mut out = Emit::new();
    st.vteps[i]
        .burst(Side::East, 0, b, &mut out)
        .expect("decapsulation never fails, it drops");
    assert_eq!(out.empty_bursts(), 0);
    let mut generated = Emit::new();
    let _ = st.vteps[i].poll(&mut generated);
    drop(out);
    drop(generated);
    st.fed[i] += 1;
    let s = st.vteps[i].stats();
    assert_eq!(
        st.fed[i],
        s.decapsulated + s.underlay_control + s.decap_dropped(),
        "every frame decapsulated, consumed or dropped by reason"
    );
    assert_eq!(st.pool.available(), 256, "no frame leaked");
});
