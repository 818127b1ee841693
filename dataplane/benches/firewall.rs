//! Firewall benchmarks (`cargo xtask bench firewall`).
//!
//! The brick is driven directly (no graph): a burst of 64 frames of 64 bytes is handed to
//! `Firewall::burst` and taken back from the `Emit` to be reused, so no frame is allocated
//! in the loop. The `nop` brick driven the same way (same header rewrites per burst) is
//! the baseline of the throughput ratios.
//!
//! Figures (one `RESULT` line each):
//! - `firewall.established_1`: Mpps, 1 established TCP flow (handshake done; replies
//!   inbound, ACK set);
//! - `firewall.established_100k`: Mpps, 100,000 established flows visited in a
//!   pseudo-random order (the source address of each packet is rewritten per burst);
//! - `firewall.new_flows`: Mflows/s, first packets (TCP SYN inbound, allowed by a rule
//!   among 10) each creating a flow, table sized for 1M flows;
//! - `firewall.first_packet_10` / `_1k` / `_10k`: ns per first packet with 10 / 1,000 /
//!   10,000 rules, and `firewall.first_packet_10k_vs_10`, the ratio;
//! - `firewall.bytes_per_flow`: resident memory added by a firewall holding 1M flows,
//!   divided by 1M (measured with `/proc/self/statm`).
//!
//! Every measured loop also counts heap allocations (a counting global allocator) and
//! fails if the packet path allocates.
//!
//! A filter argument (as criterion takes: `cargo bench --bench firewall -- established_100k`)
//! also skips the figures whose name does not contain it, so a profiler sees only the
//! chosen loop.
//!
//! Times are this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`): the machines these run on
//! are shared, and wall time would count time spent descheduled.

use std::cell::Cell;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::Criterion;
use packetgraph::bricks::Nop;
use packetgraph::bricks::firewall::{
    Cidr, Firewall, FirewallConfig, Peer, PortRange, Protocol, Rule, SecurityGroup,
};
use packetgraph::flowtable::parse::build::{fix_ipv4_checksum, frame};
use packetgraph::flowtable::parse::{TCP_ACK, TCP_SYN};
use packetgraph::flowtable::{FlowTableConfig, FullPolicy, IPPROTO_TCP};
use packetgraph::{Brick, Burst, Clock, Emit, Pool, PoolConfig, Side};

mod support;

const VM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

/// Byte offsets in an untagged Ethernet + IPv4 + TCP frame.
const IP_SRC: usize = 26;
const IP_CSUM: usize = 24;

fn remote(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xac10_0000 + i) // 172.16.0.0/12
}

/// Inbound TCP frame from remote `i`:80 to the VM:40000, 64 bytes with FCS room.
fn reply(i: u32, flags: u8) -> Vec<u8> {
    let mut f = frame(
        IpAddr::V4(remote(i)),
        IpAddr::V4(VM),
        IPPROTO_TCP,
        80,
        40000,
        flags,
        0,
        6,
    );
    f.truncate(60);
    f
}

/// A rewrite of a frame's source address and header checksum (precomputed per flow).
#[derive(Clone, Copy)]
struct Rewrite {
    src: [u8; 4],
    csum: [u8; 2],
}

fn rewrites(n: u32, flags: u8) -> Vec<Rewrite> {
    (0..n)
        .map(|i| {
            let mut f = reply(i, flags);
            fix_ipv4_checksum(&mut f);
            Rewrite {
                src: f[IP_SRC..IP_SRC + 4].try_into().unwrap(),
                csum: f[IP_CSUM..IP_CSUM + 2].try_into().unwrap(),
            }
        })
        .collect()
}

/// Runs `bursts` bursts of 64 packets through `brick` from `side`, rewriting each
/// packet's source from `rw` in the order of `order` (empty: no rewrite). Returns the
/// elapsed time and the packets that came out.
#[allow(clippy::too_many_arguments)] // a bench helper: plain inputs read better than a struct
fn drive(
    brick: &mut dyn Brick,
    side: Side,
    burst: &mut Option<Burst>,
    template: &[u8],
    pool: &Pool,
    rw: &[Rewrite],
    order: &[u32],
    cursor: &mut usize,
    bursts: u64,
) -> (Duration, u64) {
    let mut out = Emit::new();
    let mut passed = 0u64;
    // Warm up the burst cache and the Emit storage, then count allocations.
    if burst.is_none() {
        let mut b = Burst::new();
        b.push(pool.packet_from(template).unwrap()).unwrap();
        *burst = Some(b);
    }
    let allocs0 = support::thread_allocations();
    let t0 = cpu_now();
    for _ in 0..bursts {
        let mut b = burst.take().unwrap_or_default();
        // Refill what the brick dropped (not in the steady state of these benches).
        while b.len() < 64 {
            b.push(pool.packet_from(template).unwrap()).unwrap();
        }
        if !order.is_empty() {
            for p in b.iter_mut() {
                let r = rw[order[*cursor] as usize];
                *cursor = (*cursor + 1) % order.len();
                let d = p.data_mut();
                d[IP_SRC..IP_SRC + 4].copy_from_slice(&r.src);
                d[IP_CSUM..IP_CSUM + 2].copy_from_slice(&r.csum);
            }
        }
        brick.burst(side, 0, b, &mut out).unwrap();
        for (_, b) in out.drain() {
            passed += b.len() as u64;
            *burst = Some(b);
        }
    }
    let d = cpu_now() - t0;
    let allocs = support::thread_allocations() - allocs0;
    assert!(
        allocs == 0,
        "{allocs} heap allocations in {bursts} bursts: the packet path must not allocate"
    );
    (d, passed)
}

#[global_allocator]
static GLOBAL: support::CountingAllocator = support::CountingAllocator;

/// CPU time of this thread. The machine is shared (load often above the core count), so
/// wall time would count time spent descheduled; the figures are per core of CPU time.
fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn firewall(max_flows: u32, rules: Vec<Rule>) -> Firewall {
    let mut fw = Firewall::new(
        FirewallConfig {
            flows: FlowTableConfig {
                max_flows,
                policy: FullPolicy::RefuseNew,
                ..Default::default()
            },
            ..Default::default()
        },
        Clock::monotonic(),
    )
    .unwrap();
    fw.set_nic_addresses(vec![IpAddr::V4(VM)]);
    fw.upsert_group(SecurityGroup {
        id: "sg".into(),
        rules,
        members: vec![],
    })
    .unwrap();
    fw.set_nic_groups(vec!["sg".into()]);
    fw
}

/// Opens `n` flows from the VM to remote(i):80 with the TCP handshake (SYN outbound,
/// SYN+ACK inbound, ACK outbound): the flows end up established.
fn open_flows(fw: &mut Firewall, pool: &Pool, n: u32) {
    let mut out = Emit::new();
    let steps = [
        (Side::East, TCP_SYN),
        (Side::West, TCP_SYN | TCP_ACK),
        (Side::East, TCP_ACK),
    ];
    for (side, flags) in steps {
        let mut b = Burst::new();
        for i in 0..n {
            let f = if side == Side::East {
                let mut f = frame(
                    IpAddr::V4(VM),
                    IpAddr::V4(remote(i)),
                    IPPROTO_TCP,
                    40000,
                    80,
                    flags,
                    0,
                    6,
                );
                f.truncate(60);
                f
            } else {
                reply(i, flags)
            };
            b.push(pool.packet_from(&f).unwrap()).unwrap();
            if b.is_full() || i == n - 1 {
                fw.burst(side, 0, std::mem::take(&mut b), &mut out).unwrap();
                out.take();
            }
        }
    }
    assert_eq!(fw.flows().len(), n as usize, "flows opened");
    assert!(
        fw.flows()
            .iter()
            .all(|(_, f)| f.tcp_state() == packetgraph::flowtable::TcpState::Established),
        "flows established"
    );
}

/// Random rules (deterministic): TCP/UDP port ranges, ICMP, any, over 10.0.0.0/8
/// prefixes of length 16, 24, 28 and 32, plus one rule allowing TCP 80 from 10.0.0.0/8.
fn rules(n: usize) -> Vec<Rule> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut v = vec![Rule::inbound(
        Protocol::Tcp,
        Some(PortRange::single(80)),
        Peer::Cidr("10.0.0.0/8".parse().unwrap()),
    )];
    let protos = [Protocol::Tcp, Protocol::Tcp, Protocol::Udp, Protocol::Icmp];
    while v.len() < n {
        let proto = protos[(rnd() % 4) as usize];
        let ports = match proto {
            Protocol::Tcp | Protocol::Udp => {
                let a = (rnd() % 1000) as u16;
                Some(PortRange::new(a, a + (rnd() % 20) as u16).unwrap())
            }
            _ => None,
        };
        let len = [32u8, 24, 16, 28][(rnd() % 4) as usize];
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (rnd() as u32 & 0x00ff_ffff)));
        v.push(Rule::inbound(
            proto,
            ports,
            Peer::Cidr(Cidr::new(addr, len).unwrap()),
        ));
    }
    v
}

/// A SYN from 10.1.1.1:1000 to the VM:80.
fn syn_template() -> Vec<u8> {
    let mut f = frame(
        IpAddr::V4(Ipv4Addr::new(10, 1, 1, 1)),
        IpAddr::V4(VM),
        IPPROTO_TCP,
        1000,
        80,
        TCP_SYN,
        0,
        6,
    );
    f.truncate(60);
    f
}

/// SYN frames from 10.x.y.z:1000 to the VM:80, all different.
fn syn_rewrites(n: u32) -> Vec<Rewrite> {
    let mut f = syn_template();
    (0..n)
        .map(|i| {
            let a = Ipv4Addr::from(0x0a00_0000 | (i.wrapping_mul(2_654_435_761) & 0x00ff_ffff));
            f[IP_SRC..IP_SRC + 4].copy_from_slice(&a.octets());
            fix_ipv4_checksum(&mut f);
            Rewrite {
                src: a.octets(),
                csum: f[IP_CSUM..IP_CSUM + 2].try_into().unwrap(),
            }
        })
        .collect()
}

/// Nanoseconds per first packet: `n` new flows through a firewall with `rule_count`
/// rules (best of 3 runs).
fn first_packet_ns(pool: &Pool, rule_count: usize, n: u32) -> f64 {
    let rw = syn_rewrites(n);
    let order: Vec<u32> = (0..n).collect();
    let tmpl = syn_template();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut fw = firewall(n, rules(rule_count));
        let mut burst = None;
        let mut cursor = 0;
        let (d, passed) = drive(
            &mut fw,
            Side::West,
            &mut burst,
            &tmpl,
            pool,
            &rw,
            &order,
            &mut cursor,
            n as u64 / 64,
        );
        assert_eq!(passed, n as u64 / 64 * 64, "all first packets allowed");
        assert_eq!(fw.flows().len() as u64, passed, "{:?}", fw.stats());
        best = best.min(d.as_nanos() as f64 / passed as f64);
    }
    best
}

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Measures a steady-state throughput with criterion; returns Mpps.
fn mpps(c: &mut Criterion, name: &str, mut run: impl FnMut(u64) -> (Duration, u64)) -> f64 {
    let total = Cell::new((Duration::ZERO, 0u64));
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (d, p) = run(iters);
            let (td, tp) = total.get();
            total.set((td + d, tp + p));
            d
        })
    });
    let (d, p) = total.get();
    p as f64 / d.as_secs_f64() / 1e6
}

/// The name filter given on the command line (criterion's positional argument), if any.
fn filter() -> Option<String> {
    std::env::args().skip(1).find(|a| !a.starts_with('-'))
}

fn main() {
    let only = filter();
    let wanted = |name: &str| only.as_deref().is_none_or(|f| name.contains(f));
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let pool = Pool::new(PoolConfig {
        frame_count: 16384,
        ..Default::default()
    })
    .unwrap();

    // Memory per flow at 1M flows, first, while the heap is fresh (memory freed by
    // earlier runs could be reused without showing in the resident set). The traffic
    // tables are made before the first reading so only the firewall is measured.
    let mut bytes_per_flow = f64::NAN;
    let mut reserved = f64::NAN;
    if wanted("bytes_per_flow") {
        let n = 1u32 << 20;
        let rw = syn_rewrites(n);
        let order: Vec<u32> = (0..n).collect();
        let tmpl = syn_template();
        let before = rss_bytes();
        let mut fw = firewall(n, rules(10));
        let mut burst = None;
        let mut cursor = 0;
        drive(
            &mut fw,
            Side::West,
            &mut burst,
            &tmpl,
            &pool,
            &rw,
            &order,
            &mut cursor,
            n as u64 / 64,
        );
        assert_eq!(fw.flows().len(), n as usize);
        let after = rss_bytes();
        bytes_per_flow = (after - before) as f64 / n as f64;
        reserved = fw.flows().memory_bytes() as f64 / n as f64;
        black_box(&fw);
        drop(burst);
        drop(fw);
        drop((rw, order));
    }

    // Baseline: nop, no rewrite and with the 100k rewrite pattern.
    let tmpl1 = reply(0, TCP_ACK);
    let rw100k = rewrites(100_000, TCP_ACK);
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let order100k: Vec<u32> = (0..1_000_000)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 100_000) as u32
        })
        .collect();

    let mut nop = Nop::new();
    let mut burst = None;
    let mut cur = 0;
    let mut nop_1 = f64::NAN;
    if wanted("nop_1") {
        nop_1 = mpps(&mut c, "nop_1", |it| {
            drive(
                &mut nop,
                Side::West,
                &mut burst,
                &tmpl1,
                &pool,
                &[],
                &[],
                &mut cur,
                it,
            )
        });
    }
    let mut nop_100k = f64::NAN;
    if wanted("nop_100k") {
        nop_100k = mpps(&mut c, "nop_100k", |it| {
            drive(
                &mut nop,
                Side::West,
                &mut burst,
                &tmpl1,
                &pool,
                &rw100k,
                &order100k,
                &mut cur,
                it,
            )
        });
    }
    drop(burst.take());

    let base_rules = rules(10);
    let mut est_1 = f64::NAN;
    if wanted("firewall_established_1") {
        let mut fw = firewall(1 << 17, base_rules.clone());
        open_flows(&mut fw, &pool, 1);
        let mut burst = None;
        est_1 = mpps(&mut c, "firewall_established_1", |it| {
            drive(
                &mut fw,
                Side::West,
                &mut burst,
                &tmpl1,
                &pool,
                &[],
                &[],
                &mut cur,
                it,
            )
        });
        assert_eq!(fw.stats().drop_denied + fw.stats().drop_tcp_no_flow, 0);
        drop(burst.take());
        drop(fw);
    }

    let mut est_100k = f64::NAN;
    if wanted("firewall_established_100k") {
        let mut fw = firewall(1 << 17, base_rules.clone());
        open_flows(&mut fw, &pool, 100_000);
        let mut burst = None;
        est_100k = mpps(&mut c, "firewall_established_100k", |it| {
            drive(
                &mut fw,
                Side::West,
                &mut burst,
                &tmpl1,
                &pool,
                &rw100k,
                &order100k,
                &mut cur,
                it,
            )
        });
        let st = fw.stats();
        assert_eq!(st.dropped(), 0, "{st:?}");
        assert_eq!(fw.flows().len(), 100_000);
        drop(burst.take());
        drop(fw);
    }

    // New flows: 1M first packets, 10 rules.
    let (mut fp_10, mut fp_1k, mut fp_10k) = (f64::NAN, f64::NAN, f64::NAN);
    if wanted("first_packet") || wanted("new_flows") {
        fp_10 = first_packet_ns(&pool, 10, 1 << 20);
        fp_1k = first_packet_ns(&pool, 1_000, 1 << 20);
        fp_10k = first_packet_ns(&pool, 10_000, 1 << 20);
    }

    c.final_summary();
    println!(
        "RESULT firewall.established_1: {est_1:.2} Mpps (ratio {:.2} vs nop)",
        est_1 / nop_1
    );
    println!(
        "RESULT firewall.established_100k: {est_100k:.2} Mpps (ratio {:.2} vs nop)",
        est_100k / nop_100k
    );
    println!(
        "RESULT firewall.new_flows: {:.2} Mflows/s (ratio {:.2} vs nop)",
        1e3 / fp_10,
        (1e3 / fp_10) / nop_100k
    );
    println!("RESULT firewall.first_packet_10: {fp_10:.1} ns (ratio 1.00 vs 10 rules)");
    println!(
        "RESULT firewall.first_packet_1k: {fp_1k:.1} ns (ratio {:.2} vs 10 rules)",
        fp_1k / fp_10
    );
    println!(
        "RESULT firewall.first_packet_10k: {fp_10k:.1} ns (ratio {:.2} vs 10 rules)",
        fp_10k / fp_10
    );
    println!(
        "RESULT firewall.first_packet_10k_vs_10: {:.2} ratio (ratio {:.2} vs 10 rules)",
        fp_10k / fp_10,
        fp_10k / fp_10
    );
    println!(
        "RESULT firewall.bytes_per_flow: {bytes_per_flow:.0} bytes (ratio {:.2} vs reserved {reserved:.0} bytes)",
        bytes_per_flow / reserved
    );
}
