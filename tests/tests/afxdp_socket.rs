//! AF_XDP socket and XDP attach: the failures users hit, with the error they get, and the
//! shared-UMEM and multi-buffer paths, on veth pairs in network namespaces.

mod afxdp_util;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use afxdp_util::*;
use butterfly_ebpf::{
    AttachMode, AttachedMode, LOADGEN_OBJECT, SteerError, Steering, Variant, XdpAttachment,
};
use packetgraph::bricks::nic::NicBackend;
use packetgraph::bricks::nic::afxdp::{AfXdp, AfXdpConfig, AfXdpError, BusyPoll, ZeroCopy};
use packetgraph::{Burst, Pool, PoolConfig};

fn pool(frame_size: usize) -> Pool {
    Pool::new(PoolConfig {
        frame_count: 4096,
        frame_size,
        ..PoolConfig::default()
    })
    .unwrap()
}

fn steering(topo: &Topology, variant: Variant, mode: AttachMode) -> Steering {
    let _in = topo.host.enter();
    let mut s = Steering::load(variant).unwrap();
    s.set_vxlan_port(4789).unwrap();
    s.add_vtep_addr(HOST_V4.parse().unwrap()).unwrap();
    s.attach(&topo.host_if, mode, false).unwrap();
    s
}

/// Polls `x` until `n` frames came in (or 5 s passed); returns them as bytes.
fn receive(x: &mut AfXdp, n: usize) -> Vec<Vec<u8>> {
    let t = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && t.elapsed() < Duration::from_secs(5) {
        let mut b = Burst::new();
        x.rx_burst(&mut b).unwrap();
        got.extend(b.iter().map(|p| p.data().to_vec()));
        if b.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    got
}

fn vxlan_vni(frame: &[u8]) -> Option<u32> {
    // Outer IPv4 without options: 14 + 20 + 8, then the VXLAN header.
    let v = frame.get(42..50)?;
    (frame[12..14] == [0x08, 0x00] && v[0] & 0x08 != 0)
        .then(|| u32::from_be_bytes([0, v[4], v[5], v[6]]))
}

#[test]
fn socket_errors_are_typed_and_explained() {
    require_root();
    let topo = Topology::new("axe");
    let p = pool(2048);
    let _in = topo.host.enter();

    let e = AfXdp::open(&AfXdpConfig::new("nosuchdev0", 0), &p)
        .err()
        .unwrap();
    assert!(matches!(e, AfXdpError::NoInterface(_)), "{e}");

    let e = AfXdp::open(&AfXdpConfig::new(&topo.host_if, 7), &p)
        .err()
        .unwrap();
    assert!(matches!(e, AfXdpError::NoQueue { queue: 7, .. }), "{e}");
    assert!(e.to_string().contains("ethtool -L"), "{e}");

    let mut cfg = AfXdpConfig::new(&topo.host_if, 0);
    cfg.zero_copy = ZeroCopy::Require;
    let e = AfXdp::open(&cfg, &p).err().unwrap();
    assert!(matches!(e, AfXdpError::ZeroCopyUnsupported { .. }), "{e}");

    let mut cfg = AfXdpConfig::new(&topo.host_if, 0);
    cfg.rx_size = 1000;
    let e = AfXdp::open(&cfg, &p).err().unwrap();
    assert!(matches!(e, AfXdpError::Config(_)), "{e}");
    let e = AfXdp::open(&AfXdpConfig::new(&topo.host_if, 0), &pool(8192))
        .err()
        .unwrap();
    assert!(matches!(e, AfXdpError::Config(_)), "{e}");

    // Auto falls back to copy mode on veth; a second socket on the queue is refused.
    let first = AfXdp::open(&AfXdpConfig::new(&topo.host_if, 0), &p).unwrap();
    assert!(!first.is_zerocopy());
    let e = AfXdp::open(&AfXdpConfig::new(&topo.host_if, 0), &p)
        .err()
        .unwrap();
    assert!(matches!(e, AfXdpError::QueueBusy { queue: 0, .. }), "{e}");
    let free_before_close = p.available();
    drop(first);
    // Closing the socket gives every frame of the fill ring back to the pool.
    assert!(p.available() > free_before_close);
    assert_eq!(p.available(), 4096);
}

#[test]
fn attach_refuses_a_foreign_program_unless_told_to_replace() {
    require_root();
    let topo = Topology::new("axr");
    let obj = format!("/tmp/{}-other.o", topo.host.name());
    std::fs::write(&obj, LOADGEN_OBJECT).unwrap();
    topo.host.run_ok(&[
        "ip",
        "link",
        "set",
        "dev",
        &topo.host_if,
        "xdpgeneric",
        "obj",
        &obj,
        "sec",
        "xdp",
    ]);
    let _ = std::fs::remove_file(&obj);
    let _in = topo.host.enter();
    let mut s = Steering::load(Variant::Linear).unwrap();
    let e = s
        .attach(&topo.host_if, AttachMode::Auto, false)
        .unwrap_err();
    match &e {
        SteerError::AlreadyAttached { prog_id, mode, .. } => {
            assert!(*prog_id > 0);
            assert_eq!(*mode, XdpAttachment::Skb);
        }
        other => panic!("expected AlreadyAttached, got {other}"),
    }
    assert!(e.to_string().contains("xdp off"), "{e}");
    assert_eq!(s.attached(), None);
    let mode = s.attach(&topo.host_if, AttachMode::Native, true).unwrap();
    assert_eq!(mode, AttachedMode::Native);
    let shown = topo.host_link_details();
    assert!(
        shown.contains(" xdp ") && !shown.contains("xdpgeneric"),
        "{shown}"
    );
    s.detach().unwrap();
    assert!(!topo.host_link_details().contains("prog/xdp"));
    assert!(matches!(
        s.attach("nosuchdev0", AttachMode::Auto, false),
        Err(SteerError::NoInterface(_))
    ));
}

#[test]
fn veth_native_attach_failures_explain_the_fix() {
    require_root();
    // ENOSPC: the peer has more TX queues than this end has RX queues.
    let ns = Netns::new("axq");
    let a = unique_ifname("qa");
    let b = unique_ifname("qb");
    ns.run_ok(&[
        "ip",
        "link",
        "add",
        &a,
        "numrxqueues",
        "1",
        "numtxqueues",
        "1",
        "type",
        "veth",
        "peer",
        "name",
        &b,
        "numrxqueues",
        "4",
        "numtxqueues",
        "4",
    ]);
    ns.run_ok(&["ip", "link", "set", &a, "up"]);
    ns.run_ok(&["ip", "link", "set", &b, "up"]);
    let _in = ns.enter();
    let mut s = Steering::load(Variant::Linear).unwrap();
    let e = s.attach(&a, AttachMode::Native, false).unwrap_err();
    assert!(e.to_string().contains("ENOSPC"), "{e}");
    // Auto falls back to generic mode.
    assert_eq!(
        s.attach(&a, AttachMode::Auto, false).unwrap(),
        AttachedMode::Generic
    );
    s.detach().unwrap();

    // ERANGE: peer MTU above 3506 with a single-buffer program; the frags variant works.
    ns.run_ok(&["ip", "link", "set", &a, "mtu", "9000"]);
    ns.run_ok(&["ip", "link", "set", &b, "mtu", "9000"]);
    let c = unique_ifname("qc");
    let d = unique_ifname("qd");
    ns.run_ok(&[
        "ip", "link", "add", &c, "mtu", "9000", "type", "veth", "peer", "name", &d, "mtu", "9000",
    ]);
    ns.run_ok(&["ip", "link", "set", &c, "up"]);
    ns.run_ok(&["ip", "link", "set", &d, "up"]);
    let e = s.attach(&c, AttachMode::Native, false).unwrap_err();
    assert!(
        e.to_string().contains("ERANGE") && e.to_string().contains("Frags"),
        "{e}"
    );
    let mut f = Steering::load(Variant::Frags).unwrap();
    assert_eq!(
        f.attach(&c, AttachMode::Native, false).unwrap(),
        AttachedMode::Native
    );
}

/// Two sockets on queues 0 and 1 of the same interface share one UMEM: what one receives
/// goes out on the other without a copy, and the peer gets it.
#[test]
fn shared_umem_forwards_between_sockets_without_copy() {
    require_root();
    require_tool("tcpdump");
    let topo = Topology::new("axu");
    for (ns, dev) in [(&topo.host, &topo.host_if), (&topo.peer, &topo.peer_if)] {
        ns.run_ok(&["ethtool", "-L", dev, "rx", "2", "tx", "2"]);
    }
    let p = pool(2048);
    let s = Arc::new(Mutex::new(steering(
        &topo,
        Variant::Linear,
        AttachMode::Native,
    )));
    let (mut q0, mut q1) = {
        let _in = topo.host.enter();
        let mut q0 = AfXdp::open(&AfXdpConfig::new(&topo.host_if, 0), &p).unwrap();
        let mut q1 = AfXdp::open_shared(&AfXdpConfig::new(&topo.host_if, 1), &q0).unwrap();
        q0.register(&s).unwrap();
        q1.register(&s).unwrap();
        (q0, q1)
    };
    topo.peer.run_ok(&[
        "ip",
        "neigh",
        "replace",
        "192.168.42.1",
        "lladdr",
        "02:00:00:00:42:01",
        "dev",
        "vx42",
    ]);
    // Flows hash to either queue: send until both sockets got some.
    let mut got = [Vec::new(), Vec::new()];
    let t = Instant::now();
    while (got[0].is_empty() || got[1].is_empty()) && t.elapsed() < Duration::from_secs(10) {
        // A new source port per run of ping (the kernel hashes the inner flow).
        let _ = topo
            .peer
            .run(&["ping", "-c", "4", "-i", "0.01", "-W", "1", "192.168.42.1"]);
        for (i, x) in [&mut q0, &mut q1].into_iter().enumerate() {
            let mut b = Burst::new();
            x.rx_burst(&mut b).unwrap();
            got[i].extend(b.drain());
        }
    }
    let total = got[0].len() + got[1].len();
    assert!(total > 0, "no VXLAN reached either socket");
    // Forward everything received (on either queue) out of socket 1: same UMEM, no copy.
    let dump = topo.peer.spawn(&[
        "timeout",
        "10",
        "tcpdump",
        "-i",
        &topo.peer_if,
        "-c",
        &total.to_string(),
        "-n",
        "src host 10.77.0.2 and udp dst port 4789",
        "-Q",
        "in",
    ]);
    std::thread::sleep(Duration::from_millis(700));
    let mut out = Burst::new();
    let mut expected = Vec::new();
    for pkt in got.into_iter().flatten() {
        assert_eq!(vxlan_vni(pkt.data()), Some(42));
        expected.push(pkt.data().to_vec());
        out.push(pkt).unwrap();
    }
    assert_eq!(q1.tx_burst(out).unwrap(), total);
    let st = q1.stats();
    assert_eq!((st.tx_packets, st.tx_copied), (total as u64, 0), "{st:?}");
    let o = dump.wait_output();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "tcpdump saw fewer than {total}: {text}");
    // Completions come back to socket 1; frames return to the pool when both close.
    drop(q1);
    drop(q0);
    drop(s);
    assert_eq!(p.available(), 4096);
}

/// Jumbo MTU: the `xdp.frags` program and an `XDP_USE_SG` socket. A frame that fits one
/// 4096-byte pool frame arrives whole; a larger one comes as several descriptors, does not
/// fit a pool frame, and is dropped and counted.
#[test]
fn multi_buffer_jumbo_frames() {
    require_root();
    let topo = Topology::new("axj");
    for (ns, dev) in [(&topo.host, &topo.host_if), (&topo.peer, &topo.peer_if)] {
        ns.run_ok(&["ip", "link", "set", dev, "mtu", "9000"]);
    }
    topo.peer
        .run_ok(&["ip", "link", "set", "vx42", "mtu", "8950"]);
    topo.peer.run_ok(&[
        "ip",
        "neigh",
        "replace",
        "192.168.42.1",
        "lladdr",
        "02:00:00:00:42:01",
        "dev",
        "vx42",
    ]);
    let p = pool(4096);
    let s = Arc::new(Mutex::new(steering(
        &topo,
        Variant::Frags,
        AttachMode::Native,
    )));
    let mut x = {
        let _in = topo.host.enter();
        let mut cfg = AfXdpConfig::new(&topo.host_if, 0);
        cfg.multi_buffer = true;
        let mut x = AfXdp::open(&cfg, &p).unwrap();
        x.register(&s).unwrap();
        x
    };
    // ICMP payload 3000 -> inner frame 3042, outer 3092 bytes: fits 4096 - 256.
    let _ = topo.peer.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.05",
        "-W",
        "1",
        "-s",
        "3000",
        "-M",
        "dont",
        "192.168.42.1",
    ]);
    let got = receive(&mut x, 3);
    assert_eq!(got.len(), 3);
    for f in &got {
        assert_eq!(f.len(), 3000 + 8 + 20 + 14 + 8 + 8 + 20 + 14);
        assert_eq!(vxlan_vni(f), Some(42));
    }
    // ICMP payload 6000: two or more descriptors, larger than a frame: dropped, counted.
    let _ = topo.peer.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.05",
        "-W",
        "1",
        "-s",
        "6000",
        "-M",
        "dont",
        "192.168.42.1",
    ]);
    let t = Instant::now();
    while x.stats().rx_jumbo_dropped < 3 && t.elapsed() < Duration::from_secs(5) {
        let mut b = Burst::new();
        x.rx_burst(&mut b).unwrap();
        assert!(b.is_empty(), "a jumbo frame reached the graph");
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = x.stats();
    assert_eq!((st.rx_packets, st.rx_jumbo_dropped), (3, 3), "{st:?}");
    let c = s.lock().unwrap().counters().unwrap();
    assert_eq!(c.steered, 6, "{c:?}");
}

fn ping_vm(topo: &Topology, count: u32) {
    topo.peer.run_ok(&[
        "ip",
        "neigh",
        "replace",
        "192.168.42.1",
        "lladdr",
        "02:00:00:00:42:01",
        "dev",
        "vx42",
    ]);
    let _ = topo.peer.run(&[
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.002",
        "-W",
        "1",
        "192.168.42.1",
    ]);
}

/// A pool smaller than the traffic: while the graph holds every frame the fill ring runs
/// dry (counted by us and by the kernel, frames dropped by the kernel, nothing breaks);
/// once the graph lets go, the next poll refills it and traffic flows again.
#[test]
fn fill_ring_starvation_is_counted_and_recovers() {
    require_root();
    let topo = Topology::new("axf");
    let p = Pool::new(PoolConfig {
        frame_count: 64,
        ..PoolConfig::default()
    })
    .unwrap();
    let s = Arc::new(Mutex::new(steering(
        &topo,
        Variant::Linear,
        AttachMode::Native,
    )));
    let mut x = {
        let _in = topo.host.enter();
        let mut cfg = AfXdpConfig::new(&topo.host_if, 0);
        (cfg.rx_size, cfg.tx_size, cfg.fill_size, cfg.comp_size) = (64, 64, 64, 64);
        let mut x = AfXdp::open(&cfg, &p).unwrap();
        x.register(&s).unwrap();
        x
    };
    assert_eq!(p.available(), 0, "every frame waits in the fill ring");
    ping_vm(&topo, 80);
    let mut held = Vec::new();
    let t = Instant::now();
    while held.len() < 64 && t.elapsed() < Duration::from_secs(5) {
        let mut b = Burst::new();
        x.rx_burst(&mut b).unwrap();
        held.extend(b.drain());
    }
    assert_eq!(held.len(), 64, "the 64 frames of the fill ring were used");
    let mut b = Burst::new();
    assert_eq!(x.rx_burst(&mut b).unwrap(), 0);
    let st = x.stats();
    assert!(st.fill_ring_empty >= 1, "{st:?}");
    assert!(st.pool_empty >= 1, "{st:?}");
    assert!(
        st.xdp_rx_fill_ring_empty >= 1,
        "kernel saw the fill ring empty: {st:?}"
    );
    let steered = s.lock().unwrap().counters().unwrap().steered;
    assert_eq!(steered, 80, "the XDP program steered all of them");
    // The graph lets go: the next poll refills and new traffic comes in.
    drop(held);
    let mut b = Burst::new();
    x.rx_burst(&mut b).unwrap();
    assert_eq!(p.available(), 0, "frames went back to the fill ring");
    ping_vm(&topo, 5);
    assert_eq!(receive(&mut x, 5).len(), 5);
}

/// Busy polling (SO_PREFER_BUSY_POLL, SO_BUSY_POLL, SO_BUSY_POLL_BUDGET) and a socket
/// without need_wakeup both receive.
#[test]
fn busy_poll_and_no_need_wakeup_sockets_receive() {
    require_root();
    for (busy, wakeup) in [(true, true), (false, false)] {
        let topo = Topology::new("axb");
        let p = pool(2048);
        let s = Arc::new(Mutex::new(steering(
            &topo,
            Variant::Linear,
            AttachMode::Native,
        )));
        let mut x = {
            let _in = topo.host.enter();
            let mut cfg = AfXdpConfig::new(&topo.host_if, 0);
            cfg.need_wakeup = wakeup;
            cfg.busy_poll = busy.then_some(BusyPoll {
                usec: 20,
                budget: 64,
            });
            let mut x = AfXdp::open(&cfg, &p).unwrap();
            x.register(&s).unwrap();
            x
        };
        ping_vm(&topo, 5);
        let got = receive(&mut x, 5);
        assert_eq!(got.len(), 5, "busy {busy} need_wakeup {wakeup}");
        assert!(got.iter().all(|f| vxlan_vni(f) == Some(42)));
        if busy {
            assert!(x.stats().wakeups > 0, "busy polling calls recvfrom");
        }
    }
}

/// TX: a frame above MTU + Ethernet + one VLAN tag is dropped and counted; a frame from
/// another pool is copied into the UMEM and arrives at the peer intact.
#[test]
fn tx_checks_the_mtu_and_copies_foreign_frames() {
    require_root();
    require_tool("tcpdump");
    let topo = Topology::new("axt");
    let p = pool(2048);
    let mut x = {
        let _in = topo.host.enter();
        AfXdp::open(&AfXdpConfig::new(&topo.host_if, 0), &p).unwrap()
    };
    assert_eq!(x.max_tx_len(), 1500 + 18);
    let dump = topo.peer.spawn(&[
        "timeout",
        "10",
        "tcpdump",
        "-i",
        &topo.peer_if,
        "-c",
        "1",
        "-x",
        "-n",
        "ether src 02:00:00:00:00:77",
    ]);
    std::thread::sleep(Duration::from_millis(700));
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x77, 0x88, 0xb5]); // local experimental
    frame.extend((0..100u8).map(|i| i ^ 0x5a));
    let other = pool(2048);
    let mut b = Burst::new();
    b.push(p.packet_from(&vec![0u8; 1519]).unwrap()).unwrap();
    b.push(other.packet_from(&frame).unwrap()).unwrap();
    assert_eq!(x.tx_burst(b).unwrap(), 1);
    let st = x.stats();
    assert_eq!(
        (st.tx_too_big, st.tx_copied, st.tx_packets),
        (1, 1, 1),
        "{st:?}"
    );
    assert_eq!(
        other.available(),
        4096,
        "the foreign frame went back to its pool"
    );
    let out = dump.wait_output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the peer did not see the frame: {text}"
    );
    // tcpdump -x prints the bytes after the Ethernet header: the payload starts 5a5b 5859.
    assert!(text.contains("5a5b 5859 5e5f 5c5d"), "{text}");
}
