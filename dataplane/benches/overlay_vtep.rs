//! VTEP throughput on one core, 64-byte inner frames (`cargo xtask bench overlay`).
//!
//! Each figure runs a graph `packetgen → brick → collect` for a fixed time and counts
//! what reached the sink; the baseline is the same graph with a `nop` in place of the
//! brick, measured in the same run. Packet generation (frame allocation and a 64-byte
//! copy per packet) and the return of frames to the pool are in every figure, as a NIC's
//! receive path would be.
//!
//! - `overlay.vtep_encap`: frames from a VM side to a known unicast MAC (static FDB entry),
//!   encapsulated over IPv4.
//! - `overlay.vtep_encap_v6`: the same over IPv6 (with the UDP checksum).
//! - `overlay.vtep_decap`: VXLAN/IPv4 frames (zero UDP checksum, as Linux sends them),
//!   four inner source MACs, checked, learned and decapsulated.
//! - `overlay.chain`: encap → switch → decap: `packetgen → vtep A → switch → vtep B →
//!   collect`, the switch being the underlay segment between two VTEPs.
//!
//! The measured loop must make no heap allocation (a counting global allocator checks
//! it): the hot path allocates nothing.
//!
//! Rates are packets per second of the graph thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`),
//! i.e. Mpps per core, so that other load on a shared machine does not skew them.
//!
//! Prints `RESULT <name>: <X> Mpps (ratio <R> vs nop)` lines.

use std::net::IpAddr;
use std::time::Duration;

use etherparse::PacketBuilder;
use packetgraph::bricks::vtep::{Flood, Vtep, VtepConfig};
use packetgraph::bricks::{Collect, Nop, PacketGen, Switch};
use packetgraph::{Graph, Pool, PoolConfig, Side};

mod support;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const VM1: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const VM2: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const VNI: u32 = 42;
const MEASURE: Duration = Duration::from_millis(1000);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("valid literal")
}

fn pool() -> Pool {
    Pool::new(PoolConfig {
        frame_count: 8192,
        ..Default::default()
    })
    .expect("pool")
}

/// A 64-byte inner Ethernet/IPv4/UDP frame from `src` to `dst` (UDP source port `port`).
fn inner(dst: [u8; 6], src: [u8; 6], port: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4([192, 168, 0, 1], [192, 168, 0, 2], 64)
        .udp(port, 9)
        .write(&mut v, &[0u8; 22])
        .expect("write");
    v
}

/// A VXLAN/IPv4 frame from VTEP B to VTEP A carrying `inner`, UDP checksum 0.
fn outer(inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0, 0, 0, VNI as u8, 0];
    payload.extend_from_slice(inner);
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
        .udp(50000, 4789)
        .write(&mut v, &payload)
        .expect("write");
    v[40] = 0;
    v[41] = 0;
    v
}

fn vtep(pool: &Pool, our: &str, mac: [u8; 6], peer: &str, peer_mac: [u8; 6]) -> Vtep {
    let mut v = Vtep::new(pool.clone(), VtepConfig::new(ip(our), mac)).expect("vtep");
    v.set_neighbour(ip(peer), peer_mac).expect("neighbour");
    v
}

#[global_allocator]
static GLOBAL: support::CountingAllocator = support::CountingAllocator;

/// CPU time consumed by this thread, in seconds (`CLOCK_THREAD_CPUTIME_ID`). The figures
/// are packets per second of CPU time of the one thread that runs the graph: on a
/// machine shared with other work, wall-clock time would measure the scheduler instead.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Polls `g` for [`MEASURE`] of thread CPU time after a warm-up; returns Mpps (per
/// CPU-second) reaching `sink` on `side`.
fn measure(g: &mut Graph, side: Side) -> f64 {
    let count = |g: &Graph| g.get::<Collect>("sink").expect("sink").packets(side);
    let t = thread_cpu();
    while thread_cpu() - t < 0.2 {
        for _ in 0..64 {
            g.poll().expect("poll");
        }
    }
    let c0 = count(g);
    let a0 = support::allocations();
    let t = thread_cpu();
    let mut el;
    loop {
        for _ in 0..256 {
            g.poll().expect("poll");
        }
        el = thread_cpu() - t;
        if el >= MEASURE.as_secs_f64() {
            break;
        }
    }
    let allocs = support::allocations() - a0;
    assert_eq!(g.empty_bursts(), 0);
    assert_eq!(
        allocs,
        0,
        "{}: {allocs} heap allocations in the measured loop",
        g.name()
    );
    (count(g) - c0) as f64 / el / 1e6
}

/// `gen → nop → sink`: the baseline.
fn nop_graph(pool: &Pool, frames: Vec<Vec<u8>>) -> Graph {
    let mut g = Graph::new("nop");
    g.add("gen", PacketGen::new(pool.clone(), frames, u64::MAX))
        .expect("add");
    g.add("nop", Nop::new()).expect("add");
    g.add("sink", Collect::new()).expect("add");
    g.link_chain(&["gen", "nop", "sink"]).expect("link");
    g
}

fn encap_graph(pool: &Pool, v6: bool) -> Graph {
    let mut g = Graph::new("encap");
    let frames = (0..16).map(|i| inner(VM2, VM1, 1000 + i)).collect();
    let (our, peer) = if v6 {
        ("fd00::1", "fd00::2")
    } else {
        ("10.0.0.1", "10.0.0.2")
    };
    g.add("gen", PacketGen::new(pool.clone(), frames, u64::MAX))
        .expect("add");
    g.add("vtep", vtep(pool, our, MAC_A, peer, MAC_B))
        .expect("add");
    g.add("sink", Collect::new()).expect("add");
    g.link_chain(&["gen", "vtep", "sink"]).expect("link");
    let v = g.get_mut::<Vtep>("vtep").expect("vtep");
    v.add_vni(0, VNI, Flood::None).expect("vni");
    v.add_static(VNI, VM2, ip(peer)).expect("static");
    g
}

fn decap_graph(pool: &Pool) -> Graph {
    let mut g = Graph::new("decap");
    let frames = (0..4u8)
        .map(|i| outer(&inner(VM1, [0x02, 0xbb, 0, 0, 0, i], 1000)))
        .collect();
    g.add("sink", Collect::new()).expect("add");
    g.add("vtep", vtep(pool, "10.0.0.1", MAC_A, "10.0.0.2", MAC_B))
        .expect("add");
    g.add("gen", PacketGen::new(pool.clone(), frames, u64::MAX))
        .expect("add");
    g.link_chain(&["sink", "vtep", "gen"]).expect("link");
    g.get_mut::<Vtep>("vtep")
        .expect("vtep")
        .add_vni(0, VNI, Flood::None)
        .expect("vni");
    g
}

/// `gen → vtep A (encap) → switch → vtep B (decap) → sink`: the switch is the L2
/// segment of the underlay between the two VTEPs (both VTEPs' EAST sides are switch
/// ports; vtep B's MAC is a static entry, as it would be learned from its own traffic).
fn chain_graph(pool: &Pool) -> Graph {
    let mut g = Graph::new("chain");
    let frames = (0..16).map(|i| inner(VM2, VM1, 1000 + i)).collect();
    g.add("gen", PacketGen::new(pool.clone(), frames, u64::MAX))
        .expect("add");
    g.add("a", vtep(pool, "10.0.0.1", MAC_A, "10.0.0.2", MAC_B))
        .expect("add");
    g.add("b", vtep(pool, "10.0.0.2", MAC_B, "10.0.0.1", MAC_A))
        .expect("add");
    g.add("switch", Switch::new()).expect("add");
    g.add("sink", Collect::new()).expect("add");
    g.link("gen", "a").expect("link");
    g.link("a", "switch").expect("link");
    let (_, b_port) = g.link("b", "switch").expect("link");
    g.link("sink", "b").expect("link");
    g.get_mut::<Switch>("switch")
        .expect("switch")
        .add_static(MAC_B, Side::West, b_port)
        .expect("static");
    let a = g.get_mut::<Vtep>("a").expect("a");
    a.add_vni(0, VNI, Flood::None).expect("vni");
    a.add_static(VNI, VM2, ip("10.0.0.2")).expect("static");
    g.get_mut::<Vtep>("b")
        .expect("b")
        .add_vni(0, VNI, Flood::None)
        .expect("vni");
    g
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let pool = pool();
    let base = measure(
        &mut nop_graph(&pool, (0..16).map(|i| inner(VM2, VM1, 1000 + i)).collect()),
        Side::West,
    );
    let report = |name: &str, mpps: f64| {
        println!(
            "RESULT {name}: {mpps:.2} Mpps (ratio {:.2} vs nop)",
            mpps / base
        );
    };
    println!("# nop baseline: {base:.2} Mpps");
    // OVERLAY_VTEP_ONLY=encap|encap_v6|decap|chain runs one figure (for perf).
    let only = std::env::var("OVERLAY_VTEP_ONLY").ok();
    let run = |n: &str| only.as_deref().is_none_or(|o| o == n);
    if run("encap") {
        let mut g = encap_graph(&pool, false);
        report("overlay.vtep_encap", measure(&mut g, Side::West));
        let s = g.get::<Vtep>("vtep").expect("vtep").stats();
        assert_eq!(s.encap_dropped(), 0, "encap dropped frames: {s:?}");
    }
    if run("encap_v6") {
        let mut g = encap_graph(&pool, true);
        report("overlay.vtep_encap_v6", measure(&mut g, Side::West));
    }
    if run("decap") {
        let mut g = decap_graph(&pool);
        report("overlay.vtep_decap", measure(&mut g, Side::East));
        let s = g.get::<Vtep>("vtep").expect("vtep").stats();
        assert_eq!(s.decap_dropped(), 0, "decap dropped frames: {s:?}");
    }
    if run("chain") {
        let mut g = chain_graph(&pool);
        report("overlay.chain", measure(&mut g, Side::East));
    }
}
