//! The demo run by `cargo xtask demo`: a packetgraph graph between two network namespaces.
//!
//! ```text
//!  netns A                                                            netns B
//!  10.99.0.1/24 ── TAP a ═ tap-a ── print ── nop ── tap-b ═ TAP b ── 10.99.0.2/24
//!                          └──────────── graph on a worker thread ─────┘
//! ```
//!
//! Each namespace holds one TAP device owned by the graph; `ping` from A to B and back
//! crosses the graph (the print brick shows every frame). The demo then checks that the
//! counters of the graph and of the kernel agree, prints them and the graph in Graphviz
//! dot, and removes everything (also when a step fails). Exit status 0 only when every
//! step succeeded. Needs root (network namespaces, TAP devices).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use butterfly_tests::{Netns, move_to_netns, require_root, require_tool, unique_ifname};
use packetgraph::bricks::{Nop, Print, Tap, TapCounters};
use packetgraph::{Graph, Pool, PoolConfig, Worker, WorkerConfig};

const ADDR_A: &str = "10.99.0.1";
const ADDR_B: &str = "10.99.0.2";
const PINGS: u32 = 3;

/// Prefixes every line written through it (so frame lines stand out from progress lines).
struct Indent<W: Write> {
    inner: W,
    at_line_start: bool,
}

impl<W: Write> Write for Indent<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start {
                self.inner.write_all(b"        frame ")?;
            }
            self.inner.write_all(line)?;
            self.at_line_start = line.ends_with(b"\n");
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn step(n: u32, text: &str) {
    println!("demo: [{n}/6] {text}");
}

fn ping(ns: &Netns, from: &str, to: &str) -> Result<(), String> {
    let out = ns.run(&[
        "ping",
        "-n",
        "-c",
        &PINGS.to_string(),
        "-i",
        "0.3",
        "-W",
        "2",
        to,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("(no summary)");
    println!("demo:       ping {from} → {to}: {summary}");
    let want = format!("{PINGS} packets transmitted, {PINGS} received");
    if out.status.success() && text.contains(&want) {
        Ok(())
    } else {
        Err(format!(
            "ping {from} → {to} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn check(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want {
        println!("demo:       ok   {what}: {got}");
        Ok(())
    } else {
        Err(format!("{what}: got {got}, expected {want}"))
    }
}

fn demo() -> Result<(), String> {
    step(1, "checking privileges and tools (root, ping, ip)");
    require_root();
    require_tool("ping");
    require_tool("ip");

    step(2, "creating two network namespaces and two TAP devices");
    let ns_a = Netns::new("demoA");
    let ns_b = Netns::new("demoB");
    ns_a.disable_ipv6();
    ns_b.disable_ipv6();
    let pool = Pool::new(PoolConfig {
        frame_count: 1024,
        ..Default::default()
    })
    .map_err(|e| format!("frame pool: {e}"))?;
    let tap_a =
        Tap::new(&unique_ifname("demoa"), pool.clone()).map_err(|e| format!("TAP a: {e}"))?;
    let tap_b =
        Tap::new(&unique_ifname("demob"), pool.clone()).map_err(|e| format!("TAP b: {e}"))?;
    let (if_a, if_b) = (tap_a.name().to_string(), tap_b.name().to_string());
    move_to_netns(&if_a, &ns_a);
    move_to_netns(&if_b, &ns_b);
    ns_a.addr(&if_a, &format!("{ADDR_A}/24"));
    ns_b.addr(&if_b, &format!("{ADDR_B}/24"));
    ns_a.up(&if_a);
    ns_b.up(&if_b);
    println!("demo:       {} holds {if_a} ({ADDR_A}/24)", ns_a.name());
    println!("demo:       {} holds {if_b} ({ADDR_B}/24)", ns_b.name());

    step(
        3,
        "building the graph tap-a — print — nop — tap-b on a worker thread",
    );
    let mut g = Graph::new("demo-tap");
    let print = Print::text(Indent {
        inner: std::io::stdout(),
        at_line_start: true,
    });
    g.add("tap-a", tap_a).map_err(|e| e.to_string())?;
    g.add("print", print).map_err(|e| e.to_string())?;
    g.add("nop", Nop::new()).map_err(|e| e.to_string())?;
    g.add("tap-b", tap_b).map_err(|e| e.to_string())?;
    g.link_chain(&["tap-a", "print", "nop", "tap-b"])
        .map_err(|e| e.to_string())?;
    g.sanity_check().map_err(|e| e.to_string())?;
    let worker = Worker::spawn(
        g,
        WorkerConfig {
            name: "demo-tap".into(),
            max_idle_sleep: Duration::from_micros(200),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;

    step(4, "ping A → B, then B → A, through the graph");
    let pings = ping(&ns_a, "A", ADDR_B).and_then(|()| ping(&ns_b, "B", ADDR_A));
    // Let the last replies finish their trip, then take the graph back.
    std::thread::sleep(Duration::from_millis(200));
    let g = worker.stop().map_err(|e| e.to_string())?;
    pings?;

    step(
        5,
        "checking counters: graph, TAP bricks and kernel interfaces agree",
    );
    let a: TapCounters = g.get::<Tap>("tap-a").map_err(|e| e.to_string())?.stats();
    let b: TapCounters = g.get::<Tap>("tap-b").map_err(|e| e.to_string())?.stats();
    let nop = g.stats("nop").map_err(|e| e.to_string())?;
    let print = g.get::<Print>("print").map_err(|e| e.to_string())?;
    // A sent its echo requests and its replies to B's (plus ARP).
    let min = 2 * u64::from(PINGS);
    if a.rx_packets < min || b.rx_packets < min {
        return Err(format!(
            "each TAP should have read at least {min} frames: tap-a {}, tap-b {}",
            a.rx_packets, b.rx_packets
        ));
    }
    println!(
        "demo:       ok   frames read: tap-a {}, tap-b {} (≥ {min} each)",
        a.rx_packets, b.rx_packets
    );
    check("nop WEST rx = tap-a rx", nop.west.rx_packets, a.rx_packets)?;
    check("tap-b tx = tap-a rx", b.tx_packets, a.rx_packets)?;
    check("tap-b tx bytes = tap-a rx bytes", b.tx_bytes, a.rx_bytes)?;
    check("nop EAST rx = tap-b rx", nop.east.rx_packets, b.rx_packets)?;
    check("tap-a tx = tap-b rx", a.tx_packets, b.rx_packets)?;
    check(
        "frames the print brick showed",
        print.recorded(),
        a.rx_packets + b.rx_packets,
    )?;
    check(
        "TAP drops and errors",
        a.tx_drops + a.tx_errors + a.rx_errors + b.tx_drops + b.tx_errors + b.rx_errors,
        0,
    )?;
    check(
        "kernel: A's interface sent = tap-a read",
        ns_a.link_stat(&if_a, "tx_packets"),
        a.rx_packets,
    )?;
    check(
        "kernel: B's interface received = tap-b wrote",
        ns_b.link_stat(&if_b, "rx_packets"),
        b.tx_packets,
    )?;
    check("empty bursts", g.empty_bursts(), 0)?;

    step(6, "graph statistics and Graphviz dot");
    println!(
        "demo:       {:<8} {:<10} {:>10} {:>10} {:>10} {:>10}",
        "brick", "kind", "west rx", "west tx", "east rx", "east tx"
    );
    for r in g.report() {
        println!(
            "demo:       {:<8} {:<10} {:>10} {:>10} {:>10} {:>10}",
            r.name,
            r.kind,
            r.stats.west.rx_packets,
            r.stats.west.tx_packets,
            r.stats.east.rx_packets,
            r.stats.east.tx_packets
        );
    }
    println!("demo:       tap-a {a:?}");
    println!("demo:       tap-b {b:?}");
    print!("{}", g.to_dot());

    println!("demo: teardown: stopping the graph, deleting TAP devices and namespaces");
    drop(g);
    drop(ns_a);
    drop(ns_b);
    Ok(())
}

fn main() -> ExitCode {
    match demo() {
        Ok(()) => {
            println!("demo: OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("demo: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
