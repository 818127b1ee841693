//! Benchmarks of the overlay L2 bricks, 64-byte frames, one core:
//! - `overlay.switch_10k`: a switch with 10,000 learned MACs behind 4 edges, known
//!   unicast frames whose destinations cycle through all 10,000 MACs;
//! - `overlay.antispoof`: IPv4/UDP frames from the VM through an antispoof brick with
//!   every check on (all pass).
//!
//! Each figure is measured in the same run as its baseline, a `nop` brick fed by the same
//! driver (which rewrites each frame's destination MAC before injecting it, so both see
//! the same cache traffic). Printed as `RESULT overlay.NAME: X Mpps (ratio R vs nop)`.
//! Criterion does the warm-up and sampling; the figure is the median of its samples,
//! timed in thread CPU time (per core-second: the machine is shared). A counting
//! allocator checks that the packet path makes no heap allocation (exit status 1 if it
//! does).

use std::cell::RefCell;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use packetgraph::bricks::{Antispoof, Nop, Switch, SwitchConfig};
use packetgraph::{
    BURST_SIZE, Brick, BrickError, Burst, Emit, Graph, Packet, Poles, Pool, PoolConfig, Side,
};

mod support;

const MACS: usize = 10_000;
const OUT_EDGES: usize = 4;
const FRAME_LEN: usize = 64;
const VM_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const VM_IP: [u8; 4] = [10, 0, 0, 1];

#[global_allocator]
static GLOBAL: support::CountingAllocator = support::CountingAllocator;

/// A sink that keeps the packets it receives so the driver can send them again.
#[derive(Default)]
struct Park {
    pkts: Vec<Packet>,
}

impl Brick for Park {
    fn kind(&self) -> &'static str {
        "park"
    }
    fn poles(&self) -> Poles {
        Poles::Multipole { west: 8, east: 8 }
    }
    fn burst(&mut self, _: Side, _: usize, pkts: Burst, _: &mut Emit) -> Result<(), BrickError> {
        self.pkts.extend(pkts);
        Ok(())
    }
}

fn station(i: usize) -> [u8; 6] {
    [0x02, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]
}

/// A 64-byte IPv4/UDP frame from the VM (`VM_MAC`, `VM_IP`).
fn udp_frame() -> Vec<u8> {
    let mut v = Vec::with_capacity(FRAME_LEN);
    etherparse::PacketBuilder::ethernet2(VM_MAC, station(0))
        .ipv4(VM_IP, [10, 0, 0, 2], 64)
        .udp(1234, 5678)
        .write(&mut v, &[0u8; FRAME_LEN - 42])
        .expect("frame builds");
    v
}

/// The graph under test: `in — dut — out` (`out` linked `edges` times for a switch),
/// with the packets to drive parked in `in`'s buffer. `from` is the side the driver
/// injects on.
struct Rig {
    g: Graph,
    from: Side,
    feed: Vec<Packet>,
    next_mac: usize,
}

impl Rig {
    fn new(dut: Box<dyn Brick>, edges: usize, from: Side, pool: &Pool) -> Rig {
        let mut g = Graph::new("bench");
        g.add("in", Park::default()).unwrap();
        g.add_boxed("dut", dut).unwrap();
        g.add("out", Park::default()).unwrap();
        if from == Side::West {
            g.link("in", "dut").unwrap();
            for _ in 0..edges {
                g.link("dut", "out").unwrap();
            }
        } else {
            g.link("out", "dut").unwrap();
            g.link("dut", "in").unwrap();
        }
        let frame = udp_frame();
        let mut feed = Vec::with_capacity(BURST_SIZE * 4);
        for _ in 0..BURST_SIZE * 2 {
            feed.push(pool.packet_from(&frame).unwrap());
        }
        Rig {
            g,
            from,
            feed,
            next_mac: 0,
        }
    }

    /// Sends one burst of 64 frames through `dut` and collects them back.
    #[inline]
    fn step(&mut self) {
        let mut b = Burst::new();
        for mut p in self.feed.drain(self.feed.len() - BURST_SIZE..) {
            let m = station(1 + self.next_mac);
            self.next_mac = (self.next_mac + 1) % MACS;
            p.data_mut()[0..6].copy_from_slice(&m);
            let _ = b.push(p);
        }
        self.g.inject("dut", self.from, 0, b).unwrap();
        let out = &mut self.g.get_mut::<Park>("out").unwrap().pkts;
        self.feed.append(out);
        assert!(self.feed.len() >= BURST_SIZE, "frames lost in the rig");
    }
}

/// CPU time of this thread (`CLOCK_THREAD_CPUTIME_ID`): the machine is shared, and time
/// spent descheduled is not time the brick took. Mpps figures are per core-second.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs one benchmark; returns the median Mpps (`None` when filtered out on the command
/// line). Then checks that 1,000 more bursts allocate nothing (exits with status 1 if
/// they do).
fn measure(c: &mut Criterion, name: &str, mut rig: Rig) -> Option<f64> {
    let samples = RefCell::new(Vec::new());
    let mut group = c.benchmark_group("overlay");
    group.throughput(Throughput::Elements(BURST_SIZE as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let t = thread_cpu_time();
            for _ in 0..iters {
                rig.step();
            }
            let d = thread_cpu_time().saturating_sub(t);
            samples.borrow_mut().push(d.as_secs_f64() / iters as f64);
            d
        })
    });
    group.finish();
    let mut s = samples.into_inner();
    s.sort_by(f64::total_cmp);
    let per_burst = *s.get(s.len() / 2)?;
    let before = support::allocations();
    for _ in 0..1000 {
        rig.step();
    }
    let allocs = support::allocations() - before;
    if allocs != 0 {
        eprintln!("{name}: {allocs} heap allocations in 64,000 packets (must be 0)");
        std::process::exit(1);
    }
    black_box(&rig.g);
    Some(BURST_SIZE as f64 / per_burst / 1e6)
}

fn switch_10k(pool: &Pool) -> Box<dyn Brick> {
    let mut sw = Switch::with_config(SwitchConfig {
        fdb_max: 12_288,
        ..Default::default()
    })
    .unwrap();
    for e in 0..OUT_EDGES {
        sw.on_link(Side::East, e);
    }
    sw.on_link(Side::West, 0);
    // Learn the 10,000 stations: one frame from each, from edge i % 4 of EAST.
    let mut out = Emit::new();
    for i in 0..MACS {
        let mut f = udp_frame();
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&station(1 + i));
        let mut b = Burst::new();
        b.push(pool.packet_from(&f).unwrap()).unwrap();
        sw.burst(Side::East, i % OUT_EDGES, b, &mut out).unwrap();
        drop(out.take());
    }
    assert_eq!(sw.fdb_len(), MACS);
    Box::new(sw)
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args();
    let pool = Pool::new(PoolConfig {
        frame_count: 1024,
        ..Default::default()
    })
    .unwrap();

    let nop_w = measure(
        &mut c,
        "nop",
        Rig::new(Box::new(Nop::new()), 1, Side::West, &pool),
    );
    let sw = measure(
        &mut c,
        "switch_10k",
        Rig::new(switch_10k(&pool), OUT_EDGES, Side::West, &pool),
    );
    let nop_e = measure(
        &mut c,
        "nop_vm_side",
        Rig::new(Box::new(Nop::new()), 1, Side::East, &pool),
    );
    let anti = Antispoof::new(VM_MAC).with_addresses(&[Ipv4Addr::from(VM_IP)], &[]);
    let as_mpps = measure(
        &mut c,
        "antispoof",
        Rig::new(Box::new(anti), 1, Side::East, &pool),
    );

    if let (Some(sw), Some(nop)) = (sw, nop_w) {
        println!(
            "RESULT overlay.switch_10k: {sw:.1} Mpps (ratio {:.2} vs nop)",
            sw / nop
        );
    }
    if let (Some(anti), Some(nop)) = (as_mpps, nop_e) {
        println!(
            "RESULT overlay.antispoof: {anti:.1} Mpps (ratio {:.2} vs nop)",
            anti / nop
        );
    }
}
