//! `ping` through a `dpdk-nic — nop — tap` graph between two network namespaces: in A,
//! a veth pair whose end `b` is a DPDK `net_af_packet` port; in B, the graph's TAP
//! device. Echo requests cross the graph one way, replies the other.

mod dpdk_util;

use std::time::Duration;

use butterfly_tests::{Netns, move_to_netns, require_root, require_tool, unique_ifname, veth_pair};
use dpdk_util::*;
use packetgraph::bricks::nic::dpdk::{Dpdk, DpdkConfig, PortId, eal_init};
use packetgraph::bricks::{Nic, Nop, Tap};
use packetgraph::{Brick, Graph, Worker, WorkerConfig};

#[test]
fn ping_crosses_a_dpdk_nic_nop_tap_graph() {
    require_root();
    require_tool("ping");
    let ns_a = Netns::new("dpgA");
    let ns_b = Netns::new("dpgB");
    ns_a.disable_ipv6();
    ns_b.disable_ipv6();
    let mut veth = veth_pair("dpg");
    veth.move_a_to(&ns_a);
    veth.move_b_to(&ns_a);
    let (a, b) = (veth.a().to_string(), veth.b().to_string());
    ns_a.addr(&a, "10.68.0.1/24");
    ns_a.up(&a);
    ns_a.up(&b);

    let p = pool();
    let tap = Tap::new(&unique_ifname("dpgt"), p.clone()).expect("create TAP");
    let tap_name = tap.name().to_string();
    move_to_netns(&tap_name, &ns_b);
    ns_b.addr(&tap_name, "10.68.0.2/24");
    ns_b.up(&tap_name);

    let dev = {
        let _in = ns_a.enter();
        eal_init(&eal_args(&[format!("net_af_packet0,iface={b}")])).unwrap();
        Dpdk::open(&DpdkConfig::new(PortId::Name("net_af_packet0".into())), &p).unwrap()
    };
    let mut g = Graph::new("dpdk-ping");
    g.add("dpdk-nic", Nic::new(dev)).unwrap();
    g.add("nop", Nop::new()).unwrap();
    g.add("tap", tap).unwrap();
    g.link_chain(&["dpdk-nic", "nop", "tap"]).unwrap();
    g.sanity_check().unwrap();
    let worker = Worker::spawn(
        g,
        WorkerConfig {
            name: "dpdk-ping".into(),
            max_idle_sleep: Duration::from_micros(200),
            ..Default::default()
        },
    )
    .unwrap();

    let out = ns_a.run(&["ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", "10.68.0.2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    std::thread::sleep(Duration::from_millis(100));
    let g = worker.stop().unwrap();
    assert!(out.status.success(), "ping failed: {text}");
    assert!(text.contains("5 packets transmitted, 5 received"), "{text}");

    let nic = g.get::<Nic>("dpdk-nic").unwrap();
    let c = nic.counters();
    eprintln!("dpdk-nic counters: {c:?}");
    let get = |n: &str| c.iter().find(|(k, _)| *k == n).unwrap().1;
    // 5 echo requests plus ARP in, 5 replies plus ARP out; our own transmissions are not
    // read back (that would loop).
    let (rx, tx) = (get("rx_packets"), get("tx_packets"));
    assert!((6..=8).contains(&rx), "rx {rx}");
    assert!((6..=8).contains(&tx), "tx {tx}");
    assert_eq!(get("port_ipackets"), rx);
    assert_eq!(get("port_opackets"), tx);
    assert_eq!(get("tx_dropped"), 0);
    let t = g.get::<Tap>("tap").unwrap().stats();
    eprintln!("tap {t:?}");
    drop(g);
    assert_eq!(p.available(), 1024);
}
