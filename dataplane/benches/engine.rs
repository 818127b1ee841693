//! Engine benchmark (`cargo xtask bench engine`): the cost of moving bursts through bricks.
//!
//! Two graphs run on one thread, pinned to one CPU, with 64-byte frames:
//! - `gen_sink` (the baseline): packetgen → sink;
//! - `nop4`: packetgen → nop → nop → nop → nop → sink.
//!
//! The sink drops what it receives, so frames go straight back to the pool. Each graph is
//! warmed up, then measured in alternating rounds, both in the same run. A round is cut
//! into windows of 64 polls (4096 packets, about 100 µs); the rate reported is the median
//! window rate over all rounds, so the time the thread spends descheduled on a shared
//! machine (a few windows out of hundreds) does not skew it. The overall wall-clock rate
//! is printed for reference. A counting global allocator records every heap allocation
//! made during the measured rounds: the packet path must make none. Prints:
//!
//! ```text
//! RESULT engine.gen_sink: X Mpps (baseline)
//! RESULT engine.nop4: X Mpps (ratio R vs gen_sink)
//! RESULT engine.nop_hop: X ns per burst (ratio R vs gen_sink burst cost)
//! RESULT engine.alloc_per_packet: 0 allocs (ratio A allocs / P packets, gen_sink A/P)
//! ```
//!
//! Environment: `ENGINE_BENCH_ROUNDS` (default 5), `ENGINE_BENCH_ROUND_MS` (default 400),
//! `ENGINE_BENCH_CPU` (default: the last CPU), `ENGINE_BENCH_PROFILE=gen_sink|nop4` (runs
//! only that graph for the rounds and prints no RESULT: for `valgrind --tool=callgrind`).
//! Exits with status 1 when the measured rounds allocated or lost packets.

use std::time::{Duration, Instant};

use packetgraph::bricks::{Nop, PacketGen};
use packetgraph::{Brick, BrickError, Burst, Emit, Graph, Poles, Pool, PoolConfig, Side};

mod support;

#[global_allocator]
static GLOBAL: support::CountingAllocator = support::CountingAllocator;

/// A monopole that drops every burst it receives (its frames go back to the pool at once)
/// and counts the packets.
#[derive(Default)]
struct Sink {
    packets: u64,
}

impl Brick for Sink {
    fn kind(&self) -> &'static str {
        "sink"
    }

    fn poles(&self) -> Poles {
        Poles::Monopole
    }

    #[inline]
    fn burst(
        &mut self,
        _from: Side,
        _edge: usize,
        pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        self.packets += pkts.len() as u64;
        Ok(())
    }
}

/// Polls per measured window (64 bursts of 64 packets).
const WINDOW_POLLS: usize = 64;

/// A 64-byte Ethernet/IPv4/UDP frame (10.0.0.1:1024 → 10.0.0.2:4789, 22 bytes of payload).
fn frame64() -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
    f.extend_from_slice(&[0x08, 0x00]); // IPv4
    f.extend_from_slice(&[0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0]); // IPv4, len 50
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[0x04, 0x00, 0x12, 0xb5, 0, 30, 0, 0]); // UDP, len 30
    f.resize(64, 0xab);
    f
}

/// One graph under test.
struct Case {
    name: &'static str,
    graph: Graph,
    pool: Pool,
    frames: u32,
    /// Rate of each measured window, in packets per second.
    windows: Vec<f64>,
    /// Wall-clock time of the measured rounds.
    wall: Duration,
    packets: u64,
    allocations: u64,
}

impl Case {
    fn new(name: &'static str, nops: usize) -> Case {
        let cfg = PoolConfig {
            frame_count: 1024,
            ..Default::default()
        };
        let pool = Pool::new(cfg).expect("pool");
        let mut graph = Graph::new(name);
        graph
            .add(
                "gen",
                PacketGen::new(pool.clone(), vec![frame64()], u64::MAX),
            )
            .expect("add gen");
        let mut chain = vec!["gen".to_string()];
        for i in 0..nops {
            let n = format!("nop{i}");
            graph.add(n.clone(), Nop::new()).expect("add nop");
            chain.push(n);
        }
        graph.add("sink", Sink::default()).expect("add sink");
        chain.push("sink".into());
        let names: Vec<&str> = chain.iter().map(String::as_str).collect();
        graph.link_chain(&names).expect("link");
        graph.sanity_check().expect("sane graph");
        Case {
            name,
            graph,
            pool,
            frames: cfg.frame_count,
            windows: Vec::with_capacity(1 << 18),
            wall: Duration::ZERO,
            packets: 0,
            allocations: 0,
        }
    }

    fn sunk(&self) -> u64 {
        self.graph.get::<Sink>("sink").expect("sink").packets
    }

    /// Polls for about `d` of wall-clock time in windows of [`WINDOW_POLLS`] polls,
    /// recording each window's rate. Returns (packets, wall-clock time).
    fn spin(&mut self, d: Duration, record: bool) -> (u64, Duration) {
        let before = self.sunk();
        let start = Instant::now();
        let mut last = start;
        let mut last_sunk = before;
        loop {
            for _ in 0..WINDOW_POLLS {
                let _ = self.graph.poll();
            }
            let now = Instant::now();
            let sunk = self.sunk();
            // Within the capacity reserved in `new`: no allocation while measuring.
            if record && self.windows.len() < self.windows.capacity() {
                let ns = (now - last).as_nanos().max(1) as f64;
                self.windows.push((sunk - last_sunk) as f64 * 1e9 / ns);
            }
            last = now;
            last_sunk = sunk;
            if now - start >= d {
                break;
            }
        }
        (self.sunk() - before, last - start)
    }

    fn round(&mut self, d: Duration) {
        let a0 = support::allocations();
        let (n, wall) = self.spin(d, true);
        let a1 = support::allocations();
        self.allocations += a1 - a0;
        self.packets += n;
        self.wall += wall;
    }

    /// Median window rate in packets per second.
    fn median_pps(&mut self) -> f64 {
        self.windows.sort_by(f64::total_cmp);
        self.windows
            .get(self.windows.len() / 2)
            .copied()
            .unwrap_or(0.0)
    }

    /// Overall packets per second of wall-clock time.
    fn wall_pps(&self) -> f64 {
        self.packets as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Packets generated, sunk, and frames back in the pool must all agree.
    fn check(&self) -> Result<(), String> {
        let generated = self.graph.get::<PacketGen>("gen").expect("gen").generated();
        if generated != self.sunk() {
            return Err(format!(
                "{}: generated {generated} packets but the sink got {}",
                self.name,
                self.sunk()
            ));
        }
        if self.pool.available() != self.frames as usize {
            return Err(format!(
                "{}: {} of {} frames are back in the pool",
                self.name,
                self.pool.available(),
                self.frames
            ));
        }
        if self.graph.empty_bursts() != 0 {
            return Err(format!("{}: empty bursts were emitted", self.name));
        }
        Ok(())
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pins the thread to one CPU (the last one unless `ENGINE_BENCH_CPU` says otherwise).
fn pin() -> Option<usize> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = env_u64("ENGINE_BENCH_CPU", cpus as u64 - 1) as usize;
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).ok()?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).ok()?;
    Some(cpu)
}

fn main() {
    let rounds = env_u64("ENGINE_BENCH_ROUNDS", 5).max(1);
    let round = Duration::from_millis(env_u64("ENGINE_BENCH_ROUND_MS", 400).max(10));
    let cpu = pin();
    println!(
        "engine: {rounds} rounds of {round:?} per graph, 64-byte frames, one thread, CPU {}",
        cpu.map_or("unpinned".into(), |c| c.to_string())
    );
    let mut base = Case::new("gen_sink", 0);
    let mut nop4 = Case::new("nop4", 4);
    if let Ok(only) = std::env::var("ENGINE_BENCH_PROFILE") {
        let c = if only == "gen_sink" {
            &mut base
        } else {
            &mut nop4
        };
        c.spin(Duration::from_millis(50), false);
        for _ in 0..rounds {
            c.round(round);
        }
        let median = c.median_pps() / 1e6;
        println!(
            "engine: profiled {}: {} packets, {} allocations, median {median:.2} Mpps",
            c.name, c.packets, c.allocations
        );
        return;
    }
    // Warm-up: caches, branch predictors, and any lazily grown buffer (Emit, pending
    // stack) reach their steady state before allocations are counted.
    base.spin(Duration::from_millis(200), false);
    nop4.spin(Duration::from_millis(200), false);
    for r in 0..rounds {
        base.round(round);
        nop4.round(round);
        println!(
            "round {}: {} + {} windows measured",
            r + 1,
            base.windows.len(),
            nop4.windows.len()
        );
    }
    let base_pps = base.median_pps();
    let nop4_pps = nop4.median_pps();
    let (base_mpps, nop4_mpps) = (base_pps / 1e6, nop4_pps / 1e6);
    println!(
        "engine: wall-clock over all rounds: gen_sink {:.2} Mpps, nop4 {:.2} Mpps",
        base.wall_pps() / 1e6,
        nop4.wall_pps() / 1e6
    );
    // Per-burst cost of one nop hop: the extra time per packet of nop4 over gen_sink,
    // divided by 4 hops, times 64 packets per burst.
    let base_burst_ns = 64.0 * 1e9 / base_pps;
    let hop_ns = (1e9 / nop4_pps - 1e9 / base_pps) / 4.0 * 64.0;
    println!("RESULT engine.gen_sink: {base_mpps:.2} Mpps (baseline)");
    println!(
        "RESULT engine.nop4: {nop4_mpps:.2} Mpps (ratio {:.2} vs gen_sink)",
        nop4_mpps / base_mpps
    );
    println!(
        "RESULT engine.nop_hop: {hop_ns:.1} ns per burst of 64 (ratio {:.2} vs gen_sink \
         burst {base_burst_ns:.1} ns)",
        hop_ns / base_burst_ns
    );
    let per_packet = nop4.allocations as f64 / nop4.packets.max(1) as f64;
    println!(
        "RESULT engine.alloc_per_packet: {per_packet} allocs (ratio {} allocs / {} packets \
         in nop4; gen_sink {} / {})",
        nop4.allocations, nop4.packets, base.allocations, base.packets
    );
    let mut failed = false;
    for c in [&base, &nop4] {
        if let Err(e) = c.check() {
            eprintln!("engine: FAILED: {e}");
            failed = true;
        }
        if c.allocations != 0 {
            eprintln!(
                "engine: FAILED: {} allocated {} times on the packet path",
                c.name, c.allocations
            );
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
