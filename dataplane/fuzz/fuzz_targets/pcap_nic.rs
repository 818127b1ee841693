//! Feeds arbitrary bytes as a capture file (pcap or pcapng) to the `nic(pcap)` backend:
//! every input gives frames, an error or nothing, never a panic, and every frame read
//! goes back to the pool.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use packetgraph::bricks::NicBackend;
use packetgraph::bricks::nic::pcap::{PcapBackend, read_frames_from_bytes};
use packetgraph::{Burst, Pool, PoolConfig};

fn pool() -> &'static Pool {
    static P: OnceLock<Pool> = OnceLock::new();
    P.get_or_init(|| {
        Pool::new(PoolConfig {
            frame_count: 128,
            ..Default::default()
        })
        .expect("pool")
    })
}

fuzz_target!(|data: &[u8]| {
    let frames = read_frames_from_bytes(data);
    let pool = pool();
    let Ok(mut nic) = PcapBackend::new(pool.clone()).rx_reader(std::io::Cursor::new(data.to_vec()))
    else {
        assert!(
            frames.is_err(),
            "the backend refused what read_frames accepted"
        );
        return;
    };
    let mut n = 0;
    for _ in 0..8 {
        let mut b = Burst::new();
        match nic.rx_burst(&mut b) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => break,
        }
    }
    if let Ok(frames) = frames {
        // Frames longer than a pool frame are skipped by the backend only.
        let fit = frames.iter().filter(|f| f.len() <= pool.max_data()).count();
        assert_eq!(n, fit.min(8 * 64));
    }
    drop(nic);
    assert_eq!(pool.available(), 128);
});
