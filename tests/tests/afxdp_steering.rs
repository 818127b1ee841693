//! AF_XDP end to end: a kernel VXLAN peer in one namespace, Butterfly's XDP steering and
//! an AF_XDP nic brick in another, joined by a veth.
//!
//! Checked, in native and in generic XDP mode:
//! - VXLAN sent by the peer's kernel (unicast IPv4, multicast group, IPv6 underlay)
//!   reaches the graph: exactly the frames sent, with the right VNI and inner packet;
//! - meanwhile ping (IPv4, IPv6) and TCP to the host's own address work through the
//!   kernel, without a lost packet;
//! - frames the graph transmits arrive at the peer byte for byte, and the peer's kernel
//!   accepts them (it answers the encapsulated ping, and the answer reaches the graph);
//! - after detach, `ip -d link show` is as before (no XDP program).

mod afxdp_util;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use afxdp_util::*;
use butterfly_ebpf::{AttachMode, AttachedMode, Steering, Variant};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use packetgraph::bricks::nic::afxdp::{AfXdp, AfXdpConfig};
use packetgraph::bricks::{Nic, NicBackend};
use packetgraph::{Brick, Burst, Graph, Pool, PoolConfig, Side, Worker, WorkerConfig};

/// MAC the peer's kernel uses for the overlay address 192.168.4x.1 ("our VM").
const VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x42, 0x01];

fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let s = ns.run_ok(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// A VXLAN frame parsed down to the inner packet.
#[derive(Debug)]
struct Vxlan {
    outer_dst: IpAddr,
    udp_dst: u16,
    vni: u32,
    inner_src: IpAddr,
    inner_dst: IpAddr,
    icmp_echo_request: bool,
    icmp_echo_reply: bool,
}

fn parse_vxlan(frame: &[u8]) -> Option<Vxlan> {
    let outer = SlicedPacket::from_ethernet(frame).ok()?;
    let outer_dst = match outer.net? {
        NetSlice::Ipv4(ip) => IpAddr::V4(ip.header().destination_addr()),
        NetSlice::Ipv6(ip) => IpAddr::V6(ip.header().destination_addr()),
        _ => return None,
    };
    let TransportSlice::Udp(udp) = outer.transport? else {
        return None;
    };
    let payload = udp.payload();
    if payload.len() < 8 || payload[0] & 0x08 == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, payload[4], payload[5], payload[6]]);
    let inner = SlicedPacket::from_ethernet(&payload[8..]).ok()?;
    let (inner_src, inner_dst) = match inner.net? {
        NetSlice::Ipv4(ip) => (
            IpAddr::V4(ip.header().source_addr()),
            IpAddr::V4(ip.header().destination_addr()),
        ),
        _ => return None,
    };
    let (req, rep) = match inner.transport {
        Some(TransportSlice::Icmpv4(i)) => match i.icmp_type() {
            etherparse::Icmpv4Type::EchoRequest(_) => (true, false),
            etherparse::Icmpv4Type::EchoReply(_) => (false, true),
            _ => (false, false),
        },
        _ => (false, false),
    };
    Some(Vxlan {
        outer_dst,
        udp_dst: udp.destination_port(),
        vni,
        inner_src,
        inner_dst,
        icmp_echo_request: req,
        icmp_echo_reply: rep,
    })
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn steering_end_to_end(mode: AttachMode, expect: AttachedMode) {
    require_root();
    for t in ["ping", "socat", "tcpdump", "ethtool"] {
        require_tool(t);
    }
    let topo = Topology::new(if expect == AttachedMode::Native {
        "axn"
    } else {
        "axg"
    });
    let before = topo.host_link_details();
    assert!(!before.contains("prog/xdp"), "fresh veth has XDP: {before}");

    let pool = Pool::new(PoolConfig {
        frame_count: 4096,
        ..PoolConfig::default()
    })
    .unwrap();
    let (steering, nic) = {
        let _in_host = topo.host.enter();
        let mut s = Steering::load(Variant::Linear).unwrap();
        s.set_vxlan_port(4789).unwrap();
        s.add_vtep_addr(HOST_V4.parse().unwrap()).unwrap();
        s.add_vtep_addr(HOST_V6.parse().unwrap()).unwrap();
        s.join_group(GROUP_V4.parse().unwrap()).unwrap();
        let got = s.attach(&topo.host_if, mode, false).unwrap();
        assert_eq!(got, expect);
        let s = Arc::new(Mutex::new(s));
        let mut x = AfXdp::open(&AfXdpConfig::new(&topo.host_if, 0), &pool).unwrap();
        assert!(!x.is_zerocopy(), "veth has no zero-copy AF_XDP");
        x.register(&s).unwrap();
        assert_eq!(x.xdp_mode(), Some(expect));
        (s, x)
    };
    let during = topo.host_link_details();
    assert!(
        during.contains("prog/xdp"),
        "no XDP program shown: {during}"
    );
    let shown = if expect == AttachedMode::Native {
        " xdp "
    } else {
        " xdpgeneric "
    };
    assert!(during.contains(shown), "expected '{shown}' in: {during}");

    let frames: Frames = Arc::default();
    let mut g = Graph::new("afxdp");
    g.add("nic", Nic::new(nic)).unwrap();
    g.add(
        "rec",
        Recorder {
            frames: frames.clone(),
        },
    )
    .unwrap();
    g.link("nic", "rec").unwrap();
    let worker = Worker::spawn(g, WorkerConfig::default()).unwrap();

    // Host traffic through the kernel while the program is attached: no loss.
    let server = topo.host.spawn(&[
        "socat",
        "-T",
        "5",
        "TCP-LISTEN:7777,reuseaddr",
        "SYSTEM:echo butterfly-pong",
    ]);
    for dst in [HOST_V4, HOST_V6] {
        let out = topo
            .peer
            .run_ok(&["ping", "-c", "20", "-i", "0.02", "-W", "1", dst]);
        assert!(out.contains(" 0% packet loss"), "ping {dst}: {out}");
    }
    let tcp = topo.peer.run_ok(&[
        "socat",
        "-T",
        "5",
        "-",
        &format!("TCP:{HOST_V4}:7777,retry=50,interval=0.1"),
    ]);
    assert_eq!(tcp.trim(), "butterfly-pong");
    drop(server);
    assert!(
        frames.lock().unwrap().is_empty(),
        "host traffic reached the graph"
    );

    // VXLAN from the peer's kernel: 5 pings per VNI to "our VM" (a static neighbour, so
    // there is no ARP): VNI 42 unicast IPv4, VNI 43 multicast group, VNI 44 over IPv6.
    let vm = |vni: u8| format!("192.168.{vni}.1");
    for (dev, vni) in [("vx42", 42u8), ("vx43", 43), ("vx44", 44)] {
        topo.peer.run_ok(&[
            "ip",
            "neigh",
            "replace",
            &vm(vni),
            "lladdr",
            "02:00:00:00:42:01",
            "dev",
            dev,
        ]);
        let _ = topo
            .peer
            .run(&["ping", "-c", "5", "-i", "0.02", "-W", "1", &vm(vni)]);
    }
    wait_for(
        "15 VXLAN frames in the graph",
        Duration::from_secs(5),
        || frames.lock().unwrap().len() >= 15,
    );
    std::thread::sleep(Duration::from_millis(200));
    {
        let got = frames.lock().unwrap();
        assert_eq!(got.len(), 15, "exactly the 15 VXLAN frames sent");
        for (vni, outer) in [(42, HOST_V4), (43, GROUP_V4), (44, HOST_V6)] {
            let n = got
                .iter()
                .filter_map(|f| parse_vxlan(f))
                .filter(|v| {
                    v.vni == vni
                        && v.udp_dst == 4789
                        && v.outer_dst == outer.parse::<IpAddr>().unwrap()
                        && v.icmp_echo_request
                        && v.inner_dst == vm(vni as u8).parse::<IpAddr>().unwrap()
                })
                .count();
            assert_eq!(n, 5, "VNI {vni} to {outer}: {n} of 5 echo requests");
        }
    }
    frames.lock().unwrap().clear();
    let c = steering.lock().unwrap().counters().unwrap();
    assert_eq!(c.steered, 15, "{c:?}");
    assert!(c.passed >= 40, "host traffic passed to the kernel: {c:?}");

    // The graph transmits 8 VXLAN frames (VNI 42) with an ICMP echo request to the
    // peer's overlay address: they arrive at the peer byte for byte, its kernel
    // decapsulates them and answers, and the 8 encapsulated replies reach the graph.
    let host_mac = mac_of(&topo.host, &topo.host_if);
    let peer_mac = mac_of(&topo.peer, &topo.peer_if);
    let vx42_mac = mac_of(&topo.peer, "vx42");
    let mut sent = Vec::new();
    for seq in 0..8u16 {
        let mut inner = Vec::new();
        PacketBuilder::ethernet2(VM_MAC, vx42_mac)
            .ipv4([192, 168, 42, 1], [192, 168, 42, 2], 64)
            .icmpv4_echo_request(0x4242, seq)
            .write(&mut inner, b"butterfly afxdp tx test")
            .unwrap();
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
        vx.extend_from_slice(&inner);
        let mut outer = Vec::new();
        PacketBuilder::ethernet2(host_mac, peer_mac)
            .ipv4([10, 77, 0, 1], [10, 77, 0, 2], 64)
            .udp(40000 + seq, 4789)
            .write(&mut outer, &vx)
            .unwrap();
        sent.push(outer);
    }
    let pcap = format!("/tmp/{}-tx.pcap", topo.peer.name());
    let dump = topo.peer.spawn(&[
        "timeout",
        "10",
        "tcpdump",
        "-i",
        &topo.peer_if,
        "-U",
        "-c",
        "8",
        "-w",
        &pcap,
        "udp dst port 4789 and src host 10.77.0.1",
    ]);
    std::thread::sleep(Duration::from_millis(700)); // tcpdump attaches
    let tx_pool = pool.clone();
    let to_send = sent.clone();
    worker
        .exec(move |g| {
            let mut b = Burst::new();
            for f in &to_send {
                b.push(tx_pool.packet_from(f).unwrap()).unwrap();
            }
            g.inject("nic", Side::West, 0, b).unwrap();
        })
        .unwrap();
    let out = dump.wait_output();
    assert!(
        out.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::File::open(&pcap).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut seen = Vec::new();
    while let Some(p) = reader.next_packet() {
        seen.push(p.unwrap().data.to_vec());
    }
    let _ = std::fs::remove_file(&pcap);
    assert_eq!(seen, sent, "the peer saw exactly the frames the graph sent");
    wait_for(
        "8 echo replies in the graph",
        Duration::from_secs(5),
        || frames.lock().unwrap().len() >= 8,
    );
    std::thread::sleep(Duration::from_millis(100));
    {
        let got = frames.lock().unwrap();
        let replies = got
            .iter()
            .filter_map(|f| parse_vxlan(f))
            .filter(|v| {
                v.vni == 42
                    && v.icmp_echo_reply
                    && v.inner_src == "192.168.42.2".parse::<IpAddr>().unwrap()
            })
            .count();
        assert_eq!((got.len(), replies), (8, 8), "{got:02x?}");
    }

    // Counters of the brick, then detach: the interface is as before.
    let counters = worker
        .exec(|g| g.get::<Nic>("nic").unwrap().counters())
        .unwrap();
    let get = |k: &str| counters.iter().find(|(n, _)| *n == k).unwrap().1;
    assert_eq!(get("rx_packets"), 23);
    assert_eq!(get("tx_packets"), 8);
    assert_eq!(
        get("tx_copied"),
        0,
        "same-pool frames go out without a copy"
    );
    assert_eq!(get("mode_zerocopy"), 0);
    let native = u64::from(expect == AttachedMode::Native);
    assert_eq!(get("mode_xdp_native"), native);
    assert_eq!(get("mode_xdp_generic"), 1 - native);
    let g = worker.stop().unwrap();
    drop(g); // closes the socket, clears its XSKMAP slot
    drop(steering); // detaches
    let after = topo.host_link_details();
    assert!(!after.contains("prog/xdp"), "XDP still attached: {after}");
    let strip = |s: &str| {
        s.replace(" xdpgeneric", "")
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(strip(&after), strip(&before));
    // And the kernel still answers.
    let out = topo
        .peer
        .run_ok(&["ping", "-c", "3", "-i", "0.05", HOST_V4]);
    assert!(out.contains(" 0% packet loss"), "{out}");
}

#[test]
fn native_xdp_steers_vxlan_and_leaves_host_traffic() {
    steering_end_to_end(AttachMode::Native, AttachedMode::Native);
}

#[test]
fn generic_xdp_steers_vxlan_and_leaves_host_traffic() {
    steering_end_to_end(AttachMode::Generic, AttachedMode::Generic);
}

/// VXLAN in an 802.1Q-tagged frame (VLAN 100): the program looks through the tag and the
/// frame reaches the graph with its tag; a tagged frame to another UDP port is passed. This
/// kernel has no 802.1Q support (CONFIG_VLAN_8021Q unset), so the peer sends the tagged
/// frames with an AF_XDP socket of its own (the same nic backend, used as a sender).
#[test]
fn vlan_tagged_vxlan_is_steered() {
    require_root();
    let topo = Topology::new("axv");
    let pool = Pool::new(PoolConfig::default()).unwrap();
    let (steering, mut x) = {
        let _in_host = topo.host.enter();
        let mut s = Steering::load(Variant::Linear).unwrap();
        s.set_vxlan_port(4789).unwrap();
        s.add_vtep_addr(HOST_V4.parse().unwrap()).unwrap();
        s.attach(&topo.host_if, AttachMode::Native, false).unwrap();
        let s = Arc::new(Mutex::new(s));
        let mut x = AfXdp::open(&AfXdpConfig::new(&topo.host_if, 0), &pool).unwrap();
        x.register(&s).unwrap();
        (s, x)
    };
    let mut sender = {
        let _in_peer = topo.peer.enter();
        AfXdp::open(&AfXdpConfig::new(&topo.peer_if, 0), &pool).unwrap()
    };
    let host_mac = mac_of(&topo.host, &topo.host_if);
    let peer_mac = mac_of(&topo.peer, &topo.peer_if);
    let tagged = |dport: u16, seq: u16| {
        let mut inner = Vec::new();
        PacketBuilder::ethernet2([0x02, 0, 0, 0, 0x45, 2], VM_MAC)
            .ipv4([192, 168, 45, 2], [192, 168, 45, 1], 64)
            .icmpv4_echo_request(7, seq)
            .write(&mut inner, b"tagged")
            .unwrap();
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 45, 0];
        vx.extend_from_slice(&inner);
        let mut f = Vec::new();
        PacketBuilder::ethernet2(peer_mac, host_mac)
            .single_vlan(etherparse::VlanId::try_new(100).unwrap())
            .ipv4([10, 77, 0, 2], [10, 77, 0, 1], 64)
            .udp(50000, dport)
            .write(&mut f, &vx)
            .unwrap();
        f
    };
    let mut b = Burst::new();
    for seq in 0..4 {
        b.push(pool.packet_from(&tagged(4789, seq)).unwrap())
            .unwrap();
    }
    b.push(pool.packet_from(&tagged(4790, 9)).unwrap()).unwrap();
    assert_eq!(NicBackend::tx_burst(&mut sender, b).unwrap(), 5);
    let t = Instant::now();
    let mut got = Vec::new();
    while got.len() < 4 && t.elapsed() < Duration::from_secs(5) {
        let mut b = Burst::new();
        NicBackend::rx_burst(&mut x, &mut b).unwrap();
        got.extend(b.iter().map(|p| p.data().to_vec()));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut b = Burst::new();
    NicBackend::rx_burst(&mut x, &mut b).unwrap();
    got.extend(b.iter().map(|p| p.data().to_vec()));
    assert_eq!(
        got.len(),
        4,
        "the 4 tagged VXLAN frames, not the one to port 4790"
    );
    for (seq, f) in got.iter().enumerate() {
        assert_eq!(
            f,
            &tagged(4789, seq as u16),
            "received byte for byte, tag included"
        );
        let untagged = [&f[..12], &f[16..]].concat();
        let v = parse_vxlan(&untagged).expect("VXLAN inside the tag");
        assert_eq!((v.vni, v.icmp_echo_request), (45, true));
    }
    let c = steering.lock().unwrap().counters().unwrap();
    assert_eq!(c.steered, 4, "{c:?}");
    assert!(
        c.passed >= 1,
        "the frame to port 4790 went to the kernel: {c:?}"
    );
}
