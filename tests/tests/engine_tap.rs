//! End to end: `tap(a) — nop — count — tap(b)` with TAP a in network namespace A and
//! TAP b in namespace B, the same /24 on both: `ping` from A to B crosses the graph.
//!
//! `count` is a pass-through dipole defined here that classifies every frame (ARP
//! request/reply, ICMP echo request/reply, anything else) per direction, so the test can
//! assert exactly what crossed. IPv6 is disabled in both namespaces so that no router
//! solicitation or MLD report adds frames the test did not ask for.

use std::time::Duration;

use butterfly_tests::{Netns, move_to_netns, require_root, require_tool, unique_ifname};
use etherparse::{ArpOperation, Icmpv4Type, NetSlice, SlicedPacket, TransportSlice};
use packetgraph::bricks::{Collect, Nop, PacketGen, Tap, TapCounters};
use packetgraph::{
    Brick, BrickError, Burst, Emit, Graph, GraphError, Poles, Pool, PoolConfig, Side, Worker,
    WorkerConfig,
};

/// Frames seen in one direction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    arp_request: u64,
    arp_reply: u64,
    echo_request: u64,
    echo_reply: u64,
    other: u64,
}

impl Seen {
    fn total(&self) -> u64 {
        self.arp_request + self.arp_reply + self.echo_request + self.echo_reply + self.other
    }
}

/// Pass-through dipole that classifies frames; `seen[0]` = WEST → EAST (A → B).
#[derive(Default)]
struct Count {
    seen: [Seen; 2],
}

impl Brick for Count {
    fn kind(&self) -> &'static str {
        "count"
    }

    fn poles(&self) -> Poles {
        Poles::Dipole
    }

    fn burst(
        &mut self,
        from: Side,
        _edge: usize,
        pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        let s = &mut self.seen[from.index()];
        for p in &pkts {
            match SlicedPacket::from_ethernet(p.data()) {
                Ok(SlicedPacket {
                    net: Some(NetSlice::Arp(arp)),
                    ..
                }) if arp.operation() == ArpOperation::REQUEST => s.arp_request += 1,
                Ok(SlicedPacket {
                    net: Some(NetSlice::Arp(arp)),
                    ..
                }) if arp.operation() == ArpOperation::REPLY => s.arp_reply += 1,
                Ok(SlicedPacket {
                    transport: Some(TransportSlice::Icmpv4(icmp)),
                    ..
                }) => match icmp.icmp_type() {
                    Icmpv4Type::EchoRequest(_) => s.echo_request += 1,
                    Icmpv4Type::EchoReply(_) => s.echo_reply += 1,
                    _ => s.other += 1,
                },
                _ => s.other += 1,
            }
        }
        out.send(from.opposite(), 0, pkts);
        Ok(())
    }
}

struct Setup {
    // Field order = drop order: the worker (and its TAP descriptors) goes before the
    // namespaces.
    worker: Option<Worker>,
    ns_a: Netns,
    ns_b: Netns,
    tap_a: String,
    tap_b: String,
}

/// Builds both namespaces and TAP devices, and the graph; `link` decides whether the
/// graph is linked. The graph runs on a worker thread.
fn setup(link: bool) -> Setup {
    require_root();
    require_tool("ping");
    let ns_a = Netns::new("tapA");
    let ns_b = Netns::new("tapB");
    ns_a.disable_ipv6();
    ns_b.disable_ipv6();
    let pool = Pool::new(PoolConfig {
        frame_count: 1024,
        ..Default::default()
    })
    .unwrap();
    let ta = Tap::new(&unique_ifname("tpa"), pool.clone()).expect("create TAP a");
    let tb = Tap::new(&unique_ifname("tpb"), pool.clone()).expect("create TAP b");
    let (tap_a, tap_b) = (ta.name().to_string(), tb.name().to_string());
    move_to_netns(&tap_a, &ns_a);
    move_to_netns(&tap_b, &ns_b);
    ns_a.addr(&tap_a, "10.77.0.1/24");
    ns_b.addr(&tap_b, "10.77.0.2/24");
    ns_a.up(&tap_a);
    ns_b.up(&tap_b);

    let mut g = Graph::new("tap-ping");
    g.add("tap-a", ta).unwrap();
    g.add("nop", Nop::new()).unwrap();
    g.add("count", Count::default()).unwrap();
    g.add("tap-b", tb).unwrap();
    if link {
        g.link_chain(&["tap-a", "nop", "count", "tap-b"]).unwrap();
        g.sanity_check().unwrap();
    } else {
        g.link_chain(&["tap-a", "nop", "count", "tap-b"]).unwrap();
        g.unlink("nop").unwrap();
        let e = g.sanity_check();
        assert!(
            matches!(e, Err(GraphError::Dangling { ref brick, .. }) if brick == "tap-a" || brick == "nop"),
            "an unlinked nop must leave tap-a and nop dangling: {e:?}"
        );
    }
    let worker = Worker::spawn(
        g,
        WorkerConfig {
            name: "tap-ping".into(),
            max_idle_sleep: Duration::from_micros(200),
            ..Default::default()
        },
    )
    .unwrap();
    Setup {
        worker: Some(worker),
        ns_a,
        ns_b,
        tap_a,
        tap_b,
    }
}

fn tap_counters(g: &Graph, name: &str) -> TapCounters {
    g.get::<Tap>(name).unwrap().stats()
}

fn ping(ns: &Netns, count: u32, dst: &str) -> std::process::Output {
    ns.run(&[
        "ping",
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        dst,
    ])
}

#[test]
fn ping_between_namespaces_crosses_the_graph_and_counters_match() {
    let mut s = setup(true);
    let out = ping(&s.ns_a, 5, "10.77.0.2");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ping failed: {text}");
    assert!(text.contains("5 packets transmitted, 5 received"), "{text}");
    // Let the last reply's frames finish their trip, then stop the graph.
    std::thread::sleep(Duration::from_millis(100));
    let g = s.worker.take().unwrap().stop().unwrap();

    let a = tap_counters(&g, "tap-a");
    let b = tap_counters(&g, "tap-b");
    let count = g.get::<Count>("count").unwrap();
    let (ab, ba) = (count.seen[0], count.seen[1]);
    eprintln!("tap a {a:?}\ntap b {b:?}\nA->B {ab:?}\nB->A {ba:?}");

    // What crossed: exactly the 5 echo requests one way and 5 replies the other, the ARP
    // exchange that resolved the peer, and nothing else.
    assert_eq!(ab.echo_request, 5, "A->B {ab:?}");
    assert_eq!(ab.echo_reply, 0, "A->B {ab:?}");
    assert_eq!(ba.echo_reply, 5, "B->A {ba:?}");
    assert_eq!(ba.echo_request, 0, "B->A {ba:?}");
    assert!(ab.arp_request >= 1, "A must resolve B first: {ab:?}");
    assert!(ba.arp_reply >= 1, "B must answer A's ARP: {ba:?}");
    assert!(
        ab.arp_request + ba.arp_request <= 4 && ab.arp_reply + ba.arp_reply <= 4,
        "ARP storm? {ab:?} {ba:?}"
    );
    assert_eq!(ab.other, 0, "unexpected frames A->B: {ab:?}");
    assert_eq!(ba.other, 0, "unexpected frames B->A: {ba:?}");

    // Graph counters: every frame TAP a read crossed the nop and was written to TAP b,
    // and the other way round.
    let nop = g.stats("nop").unwrap();
    assert_eq!(a.rx_packets, ab.total());
    assert_eq!(nop.west.rx_packets, a.rx_packets);
    assert_eq!(nop.east.tx_packets, a.rx_packets);
    assert_eq!(nop.west.rx_bytes, a.rx_bytes);
    assert_eq!(b.tx_packets, a.rx_packets);
    assert_eq!(b.tx_bytes, a.rx_bytes);
    assert_eq!(b.rx_packets, ba.total());
    assert_eq!(nop.east.rx_packets, b.rx_packets);
    assert_eq!(nop.west.tx_packets, b.rx_packets);
    assert_eq!(a.tx_packets, b.rx_packets);
    assert_eq!(a.tx_bytes, b.rx_bytes);
    assert_eq!(
        (
            a.tx_drops,
            a.tx_errors,
            a.rx_errors,
            b.tx_drops,
            b.tx_errors,
            b.rx_errors
        ),
        (0, 0, 0, 0, 0, 0)
    );
    assert_eq!(g.stats("tap-a").unwrap().polled_packets, a.rx_packets);
    assert_eq!(g.stats("tap-a").unwrap().unlinked_drops, 0);
    assert_eq!(g.empty_bursts(), 0);

    // The kernels agree: what each interface sent is what its TAP read, what it received
    // is what its TAP wrote.
    assert_eq!(s.ns_a.link_stat(&s.tap_a, "tx_packets"), a.rx_packets);
    assert_eq!(s.ns_a.link_stat(&s.tap_a, "rx_packets"), a.tx_packets);
    assert_eq!(s.ns_b.link_stat(&s.tap_b, "tx_packets"), b.rx_packets);
    assert_eq!(s.ns_b.link_stat(&s.tap_b, "rx_packets"), b.tx_packets);
    drop(g);
}

#[test]
fn nothing_crosses_while_the_nop_is_unlinked_and_relinking_restores_traffic() {
    let mut s = setup(false);
    let out = ping(&s.ns_a, 3, "10.77.0.2");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "ping must fail: {text}");
    assert!(text.contains("3 packets transmitted, 0 received"), "{text}");

    let w = s.worker.as_ref().unwrap();
    let (a, b, nop, tap_a_stats) = w
        .exec(|g| {
            (
                tap_counters(g, "tap-a"),
                tap_counters(g, "tap-b"),
                g.stats("nop").unwrap(),
                g.stats("tap-a").unwrap(),
            )
        })
        .unwrap();
    // A kept asking for B's MAC; the requests were read and dropped at the unlinked edge.
    assert!(a.rx_packets >= 1, "{a:?}");
    assert_eq!(tap_a_stats.unlinked_drops, a.rx_packets);
    assert_eq!(nop.west.rx_packets + nop.east.rx_packets, 0);
    assert_eq!(b.tx_packets, 0, "{b:?}");
    assert_eq!(a.tx_packets, 0, "{a:?}");
    assert_eq!(s.ns_b.link_stat(&s.tap_b, "rx_packets"), 0);
    assert_eq!(s.ns_a.link_stat(&s.tap_a, "rx_packets"), 0);

    // Relink on the running worker: traffic flows again. First drop A's unresolved
    // neighbour entry, whose queue still holds echo requests of the failed ping.
    s.ns_a.run_ok(&["ip", "neigh", "flush", "dev", &s.tap_a]);
    w.exec(|g| {
        g.link_chain(&["tap-a", "nop", "count"]).unwrap();
        g.sanity_check().unwrap();
    })
    .unwrap();
    let out = ping(&s.ns_a, 2, "10.77.0.2");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ping after relink failed: {text}");
    std::thread::sleep(Duration::from_millis(100));
    let g = s.worker.take().unwrap().stop().unwrap();
    let count = g.get::<Count>("count").unwrap();
    assert_eq!(count.seen[0].echo_request, 2, "{:?}", count.seen);
    assert_eq!(count.seen[1].echo_reply, 2, "{:?}", count.seen);
    assert_eq!(g.empty_bursts(), 0);
}

/// Without a worker: 100 echo requests queued by the kernel of namespace A are read 64
/// per poll at most (64, then 36, then nothing); a burst written by the graph reaches
/// the kernel whole.
#[test]
fn a_poll_reads_at_most_one_burst_and_writes_reach_the_kernel() {
    require_root();
    require_tool("ping");
    let ns = Netns::new("tapC");
    ns.disable_ipv6();
    let pool = Pool::new(PoolConfig {
        frame_count: 1024,
        ..Default::default()
    })
    .unwrap();
    let tap = Tap::new(&unique_ifname("tpc"), pool.clone()).expect("create TAP");
    let dev = tap.name().to_string();
    move_to_netns(&dev, &ns);
    ns.addr(&dev, "10.77.1.1/24");
    ns.up(&dev);
    // A static neighbour: the kernel sends the echo requests without asking ARP first.
    ns.run_ok(&[
        "ip",
        "neigh",
        "add",
        "10.77.1.2",
        "lladdr",
        "02:00:00:00:01:02",
        "dev",
        &dev,
    ]);
    let mut g = Graph::new("tap-burst");
    g.add("tap", tap).unwrap();
    g.add("sink", Collect::new()).unwrap();
    g.link("tap", "sink").unwrap();
    // Drain anything the kernel sent while the interface came up.
    while g.poll().unwrap() > 0 {}
    let before = g.get::<Collect>("sink").unwrap().packets(Side::West);

    let out = ns.run(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "100",
        "-i",
        "0.002",
        "-W",
        "0.01",
        "10.77.1.2",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("100 packets transmitted"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(g.poll().unwrap(), 64);
    assert_eq!(g.poll().unwrap(), 36);
    assert_eq!(g.poll().unwrap(), 0);
    let sink = g.get::<Collect>("sink").unwrap();
    assert_eq!(sink.packets(Side::West) - before, 100);
    assert_eq!(sink.bursts(Side::West), if before > 0 { 3 } else { 2 });
    for p in sink.last(Side::West).unwrap() {
        let eth = SlicedPacket::from_ethernet(p.data()).unwrap();
        assert!(
            matches!(&eth.transport, Some(TransportSlice::Icmpv4(i)) if matches!(i.icmp_type(), Icmpv4Type::EchoRequest(_))),
            "{:?}",
            p.data()
        );
        assert_eq!(
            &p.data()[..6],
            &[2, 0, 0, 0, 1, 2],
            "to the static neighbour"
        );
    }

    // Graph → kernel: a burst of 50 frames of a local experimental ethertype.
    let rx0 = ns.link_stat(&dev, "rx_packets");
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 1, 9, 0x88, 0xb5]);
    frame.resize(60, 0xa5);
    g.add("gen", PacketGen::new(pool.clone(), vec![frame], 50))
        .unwrap();
    g.unlink("tap").unwrap();
    g.link("gen", "tap").unwrap();
    g.poll().unwrap();
    let c = g.get::<Tap>("tap").unwrap().stats();
    assert_eq!(c.tx_packets, 50, "{c:?}");
    assert_eq!(c.tx_bytes, 50 * 60);
    assert_eq!((c.tx_drops, c.tx_errors), (0, 0));
    assert_eq!(ns.link_stat(&dev, "rx_packets") - rx0, 50);
    assert_eq!(g.empty_bursts(), 0);
}
