//! `cargo xtask bench engine`: throughput of a queue pair between two threads.
//!
//! Consumer worker (CPU 1): `queue-b → sink`, busy polling; producer (CPU 0):
//! `packetgen → queue-a`, 64-byte frames, either unthrottled (the ring overflows and the
//! oldest packets are dropped: what crosses is what the consumer keeps up with) or
//! backing off while the consumer's `pressure()` is above 128 (no drop). Baseline
//! measured in the same run: `packetgen → nop → sink` on one thread. Prints
//! `RESULT engine.queue_backpressure: X Mpps (ratio R vs nop)` and the overload figures.

use std::time::{Duration, Instant};

use packetgraph::bricks::{Collect, Nop, PacketGen, Queue};
use packetgraph::{Graph, Pool, PoolConfig, Side, Worker, WorkerConfig};

const PACKETS: u64 = 4_000_000;

fn pool() -> Pool {
    Pool::new(PoolConfig {
        frame_count: 16_384,
        ..Default::default()
    })
    .expect("pool")
}

fn baseline() -> f64 {
    let mut g = Graph::new("baseline");
    g.add("gen", PacketGen::new(pool(), vec![vec![0u8; 64]], PACKETS))
        .unwrap();
    g.add("nop", Nop::new()).unwrap();
    g.add("sink", Collect::new()).unwrap();
    g.link_chain(&["gen", "nop", "sink"]).unwrap();
    let t = Instant::now();
    while g.poll().unwrap() > 0 {}
    let dt = t.elapsed();
    assert_eq!(
        g.get::<Collect>("sink").unwrap().packets(Side::West),
        PACKETS
    );
    PACKETS as f64 / dt.as_secs_f64() / 1e6
}

/// Both graphs polled in turn on one thread: the cost of the queue hop itself.
fn same_thread() -> f64 {
    let (qa, qb) = Queue::pair(4096).unwrap();
    let mut g1 = Graph::new("producer");
    g1.add("gen", PacketGen::new(pool(), vec![vec![0u8; 64]], PACKETS))
        .unwrap();
    g1.add("queue-a", qa).unwrap();
    g1.link("gen", "queue-a").unwrap();
    let mut g2 = Graph::new("consumer");
    g2.add("queue-b", qb).unwrap();
    g2.add("sink", Collect::new()).unwrap();
    g2.link("queue-b", "sink").unwrap();
    let t = Instant::now();
    while g1.poll().unwrap() > 0 {
        g2.poll().unwrap();
    }
    while g2.poll().unwrap() > 0 {}
    let dt = t.elapsed();
    assert_eq!(
        g2.get::<Collect>("sink").unwrap().packets(Side::West),
        PACKETS
    );
    PACKETS as f64 / dt.as_secs_f64() / 1e6
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Returns (delivered Mpps, packets dropped as oldest).
fn two_threads(backpressure: bool) -> (f64, u64) {
    let (qa, qb) = Queue::pair(4096).unwrap();
    let mut g1 = Graph::new("producer");
    g1.add("gen", PacketGen::new(pool(), vec![vec![0u8; 64]], PACKETS))
        .unwrap();
    g1.add("queue-a", qa).unwrap();
    g1.link("gen", "queue-a").unwrap();
    let mut g2 = Graph::new("consumer");
    g2.add("queue-b", qb).unwrap();
    g2.add("sink", Collect::new()).unwrap();
    g2.link("queue-b", "sink").unwrap();
    let consumer = Worker::spawn(
        g2,
        WorkerConfig {
            name: "bench-consumer".into(),
            cpu: Some(1),
            max_idle_sleep: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    pin(0);
    let t = Instant::now();
    loop {
        let q = g1.get::<Queue>("queue-a").unwrap();
        if backpressure && q.friend_pressure() > 128 {
            std::hint::spin_loop();
            continue;
        }
        if g1.poll().unwrap() == 0 {
            break;
        }
    }
    // Wait for the consumer to drain the ring.
    while g1.get::<Queue>("queue-a").unwrap().friend_pressure() > 0 {
        std::hint::spin_loop();
    }
    let dt = t.elapsed();
    let g2 = consumer.stop().unwrap();
    let received = g2.get::<Collect>("sink").unwrap().packets(Side::West);
    let dropped = g1.get::<Queue>("queue-a").unwrap().drop_oldest();
    assert_eq!(received + dropped, PACKETS);
    (received as f64 / dt.as_secs_f64() / 1e6, dropped)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let base = baseline();
    let same = same_thread();
    let (bp, bp_dropped) = two_threads(true);
    let (over, over_dropped) = two_threads(false);
    println!("RESULT engine.queue_baseline_nop: {base:.1} Mpps (ratio 1.00 vs nop)");
    println!(
        "RESULT engine.queue_same_thread: {same:.1} Mpps (ratio {:.2} vs nop)",
        same / base
    );
    println!(
        "RESULT engine.queue_backpressure: {bp:.1} Mpps (ratio {:.2} vs nop)",
        bp / base
    );
    println!(
        "RESULT engine.queue_backpressure_dropped: {bp_dropped} packets (ratio {:.4} vs sent)",
        bp_dropped as f64 / PACKETS as f64
    );
    println!(
        "RESULT engine.queue_overload_delivered: {over:.1} Mpps (ratio {:.2} vs nop)",
        over / base
    );
    println!(
        "RESULT engine.queue_overload_drop_oldest: {over_dropped} packets (ratio {:.4} vs sent)",
        over_dropped as f64 / PACKETS as f64
    );
}
