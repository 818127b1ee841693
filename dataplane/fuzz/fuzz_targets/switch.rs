//! Feeds arbitrary bursts to a switch with a small FDB (16 entries), 4 linked edges (2 per
//! side) and a manual clock.
//!
//! Input: byte 0 picks the ingress edge (bits 0–1) and how far the clock moves before the
//! burst (bits 2–7, × 10 s, so entries age); then frames as `[len: u8][len bytes]`, up to
//! 64. After each input every frame must be counted once (forwarded, flooded or dropped
//! by reason), the FDB must stay within its limit, no empty burst may be emitted and no
//! frame may leak.
#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use packetgraph::bricks::{Switch, SwitchConfig};
use packetgraph::{BURST_SIZE, Brick, Burst, Clock, Emit, Pool, PoolConfig, Side};

const FRAMES: usize = 1024;
const FDB_MAX: usize = 16;

struct State {
    pool: Pool,
    clock: Clock,
    switch: Switch,
    fed: u64,
}

fn state() -> &'static Mutex<State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(|| {
        let pool = Pool::new(PoolConfig {
            frame_count: FRAMES as u32,
            ..Default::default()
        })
        .expect("pool");
        let clock = Clock::manual();
        let mut switch = Switch::with_config(SwitchConfig {
            fdb_max: FDB_MAX,
            clock: clock.clone(),
            ..Default::default()
        })
        .expect("switch");
        for side in Side::BOTH {
            for edge in 0..2 {
                switch.on_link(side, edge);
            }
        }
        Mutex::new(State {
            pool,
            clock,
            switch,
            fed: 0,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let mut st = state().lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *st;
    st.clock
        .advance(Duration::from_secs(u64::from(sel >> 2) * 10));
    let side = if sel & 2 == 0 { Side::West } else { Side::East };
    let edge = usize::from(sel & 1);
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
    st.switch
        .burst(side, edge, b, &mut out)
        .expect("the switch never fails, it drops");
    assert_eq!(out.empty_bursts(), 0, "an empty burst was emitted");
    for (_, burst) in out.pending() {
        assert!(!burst.is_empty());
    }
    drop(out);
    st.fed += n;
    let c = st.switch.stats();
    assert_eq!(
        st.fed,
        c.unicast
            + c.flooded
            + c.drop_no_edge
            + c.drop_link_local
            + c.drop_malformed
            + c.drop_invalid_src
            + c.drop_same_edge,
        "every frame forwarded, flooded or dropped by reason"
    );
    assert!(
        st.switch.fdb_len() <= FDB_MAX,
        "the FDB grew past its limit"
    );
    assert_eq!(st.pool.available(), FRAMES, "no frame leaked");
});
