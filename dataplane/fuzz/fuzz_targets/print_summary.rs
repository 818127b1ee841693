//! Feeds arbitrary bytes as an Ethernet frame to the `print` brick's one-line summary
//! (`FrameSummary`) and through a text `Print` brick: it must never panic, always produce
//! a line, and pass the frame through unchanged.
#![no_main]

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use packetgraph::bricks::{FrameSummary, Print};
use packetgraph::{Brick, Burst, Emit, Pool, PoolConfig, Side};

struct State {
    pool: Pool,
    print: Print,
    line: String,
}

fn state() -> &'static Mutex<State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(|| {
        Mutex::new(State {
            pool: Pool::new(PoolConfig {
                frame_count: 16,
                ..Default::default()
            })
            .expect("pool"),
            print: Print::text(std::io::sink()),
            line: String::new(),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = state().lock().unwrap();
    let s = &mut *s;
    s.line.clear();
    write!(s.line, "{}", FrameSummary(data)).unwrap();
    assert!(!s.line.is_empty());
    let Some(p) = s.pool.packet_from(data) else {
        return; // longer than a pool frame
    };
    let mut b = Burst::new();
    b.push(p).unwrap();
    let mut out = Emit::new();
    s.print.burst(Side::West, 0, b, &mut out).unwrap();
    let sent = out.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1[0].data(), data);
    assert_eq!(out.empty_bursts(), 0);
});
