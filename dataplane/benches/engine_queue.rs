//! `cargo xtask bench engine`: throughput of a queue pair between two workers.
//!
//! Worker 1 (CPU 0): `packetgen → queue-a`; worker 2 (CPU 1): `queue-b → sink`, 64-byte
//! frames, busy polling. Baseline measured in the same run: `packetgen → nop → sink` on
//! one thread. Prints
//! `RESULT engine.queue_2workers: X Mpps (ratio R vs nop)`.

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

fn two_workers() -> (f64, u64) {
    let (qa, qb) = Queue::pair(4096).unwrap();
    let mut g1 = Graph::new("producer");
    g1.add("gen", PacketGen::new(pool(), vec![vec![0u8; 64]], 0))
        .unwrap();
    g1.add("queue-a", qa).unwrap();
    g1.link("gen", "queue-a").unwrap();
    let mut g2 = Graph::new("consumer");
    g2.add("queue-b", qb).unwrap();
    g2.add("sink", Collect::new()).unwrap();
    g2.link("queue-b", "sink").unwrap();
    let cfg = |name: &str, cpu| WorkerConfig {
        name: name.into(),
        cpu: Some(cpu),
        max_idle_sleep: Duration::ZERO,
        ..Default::default()
    };
    let w2 = Worker::spawn(g2, cfg("bench-consumer", 1)).unwrap();
    let w1 = Worker::spawn(g1, cfg("bench-producer", 0)).unwrap();
    let t = Instant::now();
    w1.exec(|g| g.get_mut::<PacketGen>("gen").unwrap().add_count(PACKETS))
        .unwrap();
    // Done when the producer has generated everything and the ring is drained.
    loop {
        std::thread::sleep(Duration::from_millis(2));
        let (generated, pressure) = w1
            .exec(|g| {
                let gen_done = g.get::<PacketGen>("gen").unwrap().generated();
                let q = g.get::<Queue>("queue-a").unwrap();
                (gen_done, q.friend_pressure())
            })
            .unwrap();
        if generated == PACKETS && pressure == 0 {
            break;
        }
    }
    let g2 = w2.stop().unwrap();
    let dt = t.elapsed();
    let g1 = w1.stop().unwrap();
    let received = g2.get::<Collect>("sink").unwrap().packets(Side::West);
    let dropped = g1.get::<Queue>("queue-a").unwrap().drop_oldest();
    (received as f64 / dt.as_secs_f64() / 1e6, dropped)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let base = baseline();
    let (q, dropped) = two_workers();
    println!("RESULT engine.queue_baseline_nop: {base:.1} Mpps (ratio 1.00 vs nop)");
    println!(
        "RESULT engine.queue_2workers: {q:.1} Mpps (ratio {:.2} vs nop)",
        q / base
    );
    println!(
        "RESULT engine.queue_2workers_drop_oldest: {dropped} packets (ratio {:.4} vs sent)",
        dropped as f64 / PACKETS as f64
    );
}
