//! The DPDK backend of the `nic` brick on virtual devices in a network namespace, with
//! the kernel on the other side: `net_af_packet` on one end of a veth pair, and `net_tap`
//! (whose TAP interface the kernel owns). Frames go in and out of a graph, byte for
//! byte; TX checksums are filled in software (af_packet offers no offload) or by the
//! port (tap offers IPv4/UDP/TCP checksum offload); MAC, MTU, link and port counters
//! match what the kernel sees.

mod dpdk_util;

use std::time::Duration;

use butterfly_tests::{Netns, require_root, require_tool, unique_ifname, veth_pair};
use dpdk_util::*;
use packetgraph::bricks::Collect;
use packetgraph::bricks::nic::dpdk::{Dpdk, DpdkConfig, PortId, eal_init, probe};
use packetgraph::bricks::nic::{Nic, NicBackend};
use packetgraph::{Brick, Graph, Side};

const PORT_MAC: [u8; 6] = [0x02, 0, 0, 0xdd, 0, 0x02];

fn port(name: &str, tx_checksum: bool, p: &packetgraph::Pool) -> Dpdk {
    let mut cfg = DpdkConfig::new(PortId::Name(name.into()));
    cfg.tx_checksum = tx_checksum;
    Dpdk::open(&cfg, p).unwrap_or_else(|e| panic!("open {name}: {e}"))
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn af_packet_frames_in_and_out_of_the_graph_with_software_checksums() {
    require_root();
    require_tool("python3");
    let ns = Netns::new("dpk");
    ns.disable_ipv6();
    let mut veth = veth_pair("dpk");
    veth.move_a_to(&ns);
    veth.move_b_to(&ns);
    let (a, b) = (veth.a().to_string(), veth.b().to_string());
    ns.addr(&a, "10.66.0.1/24");
    ns.up(&a);
    ns.up(&b);
    let port_mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        PORT_MAC[0], PORT_MAC[1], PORT_MAC[2], PORT_MAC[3], PORT_MAC[4], PORT_MAC[5]
    );
    // The kernel sends to 10.66.0.2 without ARP.
    ns.run_ok(&[
        "ip",
        "neigh",
        "add",
        "10.66.0.2",
        "lladdr",
        &port_mac,
        "dev",
        &a,
    ]);
    let a_mac = parse_mac(&ns.mac(&a));

    let _in = ns.enter();
    // One af_packet port for now: sockets on the same interface share a PACKET_FANOUT
    // group, so a second port would take some of the received frames.
    eal_init(&eal_args(&[format!("net_af_packet0,iface={b}")])).unwrap();
    let p = pool();
    let dev = port("net_af_packet0", false, &p);
    // MAC, link, MTU: those of the veth end.
    assert_eq!(dev.mac().unwrap(), parse_mac(&ns.mac(&b)));
    assert!(dev.link().unwrap().up);
    assert_eq!(dev.mtu().unwrap(), 1500);
    assert!(!dev.tx_checksum_offloaded());

    let mut g = Graph::new("dpdk-af-packet");
    g.add("nic", Nic::new(dev)).unwrap();
    g.add("sink", Collect::new()).unwrap();
    g.link("nic", "sink").unwrap();

    // In: 5 datagrams from the kernel arrive in the graph, exactly those, byte for byte.
    let sent = payloads("in", 5);
    udp_send(&ns, "10.66.0.2", 7000, &sent);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        g.poll().unwrap();
        if let Some(b) = g.get_mut::<Collect>("sink").unwrap().take(Side::West) {
            got.extend(b.iter().map(|p| p.data().to_vec()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        got.len(),
        5,
        "exactly the 5 datagrams, nothing else: {got:x?}"
    );
    for (f, payload) in got.iter().zip(&sent) {
        let want = udp_frame(
            a_mac,
            PORT_MAC,
            [10, 66, 0, 1],
            [10, 66, 0, 2],
            7000,
            payload.as_bytes(),
        );
        // The kernel picks the source port and IP ID: compare the rest.
        assert_eq!(f.len(), want.len());
        assert_eq!(&f[..14], &want[..14], "Ethernet header");
        assert_eq!(&f[26..34], &want[26..34], "IP addresses");
        assert_eq!(&f[36..38], &7000u16.to_be_bytes(), "UDP destination port");
        assert_eq!(&f[42..], payload.as_bytes());
    }

    // Out: 5 frames injected into the nic brick reach a kernel socket.
    let out = payloads("out", 5);
    let frames: Vec<Vec<u8>> = out
        .iter()
        .map(|s| {
            udp_frame(
                PORT_MAC,
                a_mac,
                [10, 66, 0, 2],
                [10, 66, 0, 1],
                7001,
                s.as_bytes(),
            )
        })
        .collect();
    let rx = udp_receiver(&ns, "10.66.0.1", 7001, 5, 3);
    g.inject("nic", Side::West, 0, burst_of(&p, &frames))
        .unwrap();
    assert_eq!(received(rx), out);
    let nic = g.get::<Nic>("nic").unwrap();
    let c = nic.counters();
    let get = |n: &str| c.iter().find(|(k, _)| *k == n).unwrap().1;
    assert_eq!(get("rx_packets"), 5);
    assert_eq!(get("tx_packets"), 5);
    assert_eq!(get("port_ipackets"), 5);
    assert_eq!(get("port_opackets"), 5);
    assert_eq!(get("tx_csum_software") + get("tx_csum_offloaded"), 0);

    // Frames with wrong IPv4 and UDP checksums: dropped by the kernel when sent as they
    // are, delivered when the port fills the checksums (software: af_packet offers no
    // offload).
    let bad: Vec<Vec<u8>> = payloads("bad", 5)
        .iter()
        .map(|s| {
            let mut f = udp_frame(
                PORT_MAC,
                a_mac,
                [10, 66, 0, 2],
                [10, 66, 0, 1],
                7002,
                s.as_bytes(),
            );
            break_checksums(&mut f);
            f
        })
        .collect();
    // Two more ports on the same interface, hot-plugged (TX only from here on).
    probe(&format!("net_af_packet1,iface={b}")).unwrap();
    probe(&format!("net_af_packet2,iface={b}")).unwrap();
    let mut raw = port("net_af_packet1", false, &p);
    let rx = udp_receiver(&ns, "10.66.0.1", 7002, 5, 2);
    assert_eq!(raw.tx_burst(burst_of(&p, &bad)).unwrap(), 5);
    assert_eq!(
        received(rx),
        Vec::<String>::new(),
        "bad checksums must be dropped"
    );

    let mut fixing = port("net_af_packet2", true, &p);
    assert!(!fixing.tx_checksum_offloaded());
    let rx = udp_receiver(&ns, "10.66.0.1", 7002, 5, 3);
    assert_eq!(fixing.tx_burst(burst_of(&p, &bad)).unwrap(), 5);
    assert_eq!(received(rx), payloads("bad", 5));
    assert_eq!(counter(&fixing, "tx_csum_software"), 5);
    assert_eq!(counter(&fixing, "tx_csum_offloaded"), 0);

    // The MTU set on a port is the interface's.
    raw.set_mtu(1400).unwrap();
    assert_eq!(raw.mtu().unwrap(), 1400);
    assert_eq!(
        ns.run_ok(&["cat", &format!("/sys/class/net/{b}/mtu")])
            .trim(),
        "1400"
    );
    drop(raw);
    drop(fixing);
    drop(g);
    // Every frame went back to the pool.
    assert_eq!(p.available(), 1024);
}

#[test]
fn tap_frames_in_and_out_with_checksum_offload() {
    require_root();
    require_tool("python3");
    let ns = Netns::new("dpt");
    ns.disable_ipv6();
    let tap = unique_ifname("dpt");
    let _in = ns.enter();
    eal_init(&eal_args(&[format!(
        "net_tap0,iface={tap},mac={}",
        "02:00:00:dd:00:03"
    )]))
    .unwrap();
    let tap_port_mac = [0x02, 0, 0, 0xdd, 0, 0x03];
    ns.addr(&tap, "10.67.0.1/24");
    ns.up(&tap);
    ns.run_ok(&[
        "ip",
        "neigh",
        "add",
        "10.67.0.2",
        "lladdr",
        "02:00:00:dd:00:03",
        "dev",
        &tap,
    ]);
    let kernel_mac = parse_mac(&ns.mac(&tap));
    let p = pool();
    let mut dev = port("net_tap0", true, &p);
    assert_eq!(dev.mac().unwrap(), tap_port_mac);
    assert!(
        dev.tx_checksum_offloaded(),
        "the tap PMD offers checksum offload"
    );
    assert!(dev.link().unwrap().up);

    // Out, with wrong checksums: the port computes them (offload), the kernel accepts.
    let out = payloads("tap-out", 5);
    let frames: Vec<Vec<u8>> = out
        .iter()
        .map(|s| {
            let mut f = udp_frame(
                tap_port_mac,
                kernel_mac,
                [10, 67, 0, 2],
                [10, 67, 0, 1],
                7003,
                s.as_bytes(),
            );
            break_checksums(&mut f);
            f
        })
        .collect();
    let rx = udp_receiver(&ns, "10.67.0.1", 7003, 5, 3);
    assert_eq!(dev.tx_burst(burst_of(&p, &frames)).unwrap(), 5);
    assert_eq!(received(rx), out);
    assert_eq!(counter(&dev, "tx_csum_offloaded"), 5);
    assert_eq!(counter(&dev, "tx_csum_software"), 0);

    // In: exactly the 3 datagrams the kernel sends to the port.
    let sent = payloads("tap-in", 3);
    udp_send(&ns, "10.67.0.2", 7004, &sent);
    let got = receive(&mut dev, 3, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(200));
    let late = receive(&mut dev, 1, Duration::from_millis(100));
    assert!(late.is_empty(), "nothing else arrives: {late:x?}");
    assert_eq!(got.len(), 3);
    for (f, s) in got.iter().zip(&sent) {
        assert_eq!(&f[..6], &tap_port_mac);
        assert_eq!(&f[6..12], &kernel_mac);
        assert_eq!(&f[42..], s.as_bytes());
    }
    let st = dev.port_stats().unwrap();
    assert_eq!((st.ipackets, st.opackets), (3, 5));
    drop(dev);
    assert_eq!(p.available(), 1024);
}
