//! Feeds arbitrary bursts to an antispoof brick (VM MAC 02:00:00:00:00:01, 10.0.0.1,
//! fd00::1, fe80::1).
//!
//! Input: byte 0 picks the checks (bits 0–6: mac, vlan, rarp, arp, ipv4, ipv6, ndp) and
//! the side the burst comes from (bit 7: set = the VM side); then frames as
//! `[len: u8][len bytes]`, up to 64. After each input every frame must be counted once
//! (passed or dropped by reason), nothing may come out on the wrong side, no empty burst
//! may be emitted and no frame may leak.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use packetgraph::bricks::{Antispoof, AntispoofChecks};
use packetgraph::{BURST_SIZE, Brick, Burst, Dest, Emit, Pool, PoolConfig, Side};

const FRAMES: usize = 256;

struct State {
    pool: Pool,
    anti: Antispoof,
    fed: u64,
    out: u64,
}

fn state() -> &'static Mutex<State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(|| {
        let pool = Pool::new(PoolConfig {
            frame_count: FRAMES as u32,
            ..Default::default()
        })
        .expect("pool");
        let anti = Antispoof::new([0x02, 0, 0, 0, 0, 1]).with_addresses(
            &["10.0.0.1".parse().unwrap()],
            &["fd00::1".parse().unwrap(), "fe80::1".parse().unwrap()],
        );
        Mutex::new(State {
            pool,
            anti,
            fed: 0,
            out: 0,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *st;
    let bit = |i: u8| sel & (1 << i) != 0;
    st.anti.set_checks(AntispoofChecks {
        mac: bit(0),
        vlan: bit(1),
        rarp: bit(2),
        arp: bit(3),
        ipv4: bit(4),
        ipv6: bit(5),
        ndp: bit(6),
    });
    // The outside is WEST: bit 7 set sends from the VM (EAST).
    let from = if bit(7) { Side::East } else { Side::West };
    let mut b = Burst::new();
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let Some(p) = st.pool.packet_from(&tail[..len]) else {
            break;
        };
        rest = &tail[len..];
        if b.push(p).is_err() || b.len() == BURST_SIZE {
            break;
        }
    }
    let n = b.len() as u64;
    let mut out = Emit::new();
    st.anti
        .burst(from, 0, b, &mut out)
        .expect("antispoof never fails, it drops");
    assert_eq!(out.empty_bursts(), 0, "an empty burst was emitted");
    for (dest, burst) in out.pending() {
        assert_eq!(*dest, Dest::Edge(from.opposite(), 0), "wrong side");
        st.out += burst.len() as u64;
    }
    if from == Side::West {
        assert_eq!(
            out.pending()
                .iter()
                .map(|(_, b)| b.len() as u64)
                .sum::<u64>(),
            n
        );
    }
    drop(out);
    st.fed += n;
    let c = st.anti.stats();
    let drops = c.drop_mac
        + c.drop_vlan
        + c.drop_rarp
        + c.drop_arp
        + c.drop_ipv4
        + c.drop_ipv6
        + c.drop_ndp
        + c.drop_malformed;
    assert_eq!(
        st.out,
        c.passed_outside + c.passed_vm,
        "passed frames counted"
    );
    assert_eq!(
        st.fed,
        st.out + drops,
        "every frame passed or dropped by reason"
    );
    assert_eq!(st.pool.available(), FRAMES, "no frame leaked");
});
