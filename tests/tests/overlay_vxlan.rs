//! Interop of our VTEP with the Linux kernel's `vxlan` device.
//!
//! ```text
//!  test process (H1): graph  tap(vm1) — switch — vtep — tap(underlay)
//!                              │                          │
//!  netns VM1: tap(vm1) 192.168.61.1      netns H2: tap(underlay) 10.61.0.2 | fd61::2
//!                                           vxlan (VNI, dstport 4789) — bridge — veth
//!                                                                               │
//!                                        netns VM2: veth 192.168.61.2 ──────────┘
//! ```
//!
//! Our VTEP is 10.61.0.1 / fd61::1 on the underlay. The kernel in H2 reaches it because
//! the VTEP answers ARP requests / neighbour solicitations for its own VTEP IP, and the
//! VTEP resolves the kernel's MAC with ARP / NS itself: no static neighbour anywhere.
//!
//! Each test pings VM1 ↔ VM2, moves 1 MiB of random data over TCP with `socat` and
//! compares SHA-256 sums, then reads a `tcpdump` capture of the underlay (taken in H2)
//! with `tshark` and checks that every frame our VTEP sent decodes as VXLAN with the right
//! VNI, a good IPv4 header checksum and a zero UDP checksum (IPv4, RFC 7348 §5) or a good
//! UDP checksum (IPv6), and that the IGMPv2 / MLDv2 join was sent for multicast flooding.
//! Underlays: IPv4 and IPv6; flooding: a multicast group and a static flood list.
//! `vni_isolation` runs two VNIs whose VMs have the same MACs and IPs.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use butterfly_tests::{
    KillOnDrop, Netns, Veth, move_to_netns, require_root, require_tool, run, run_ok, unique_ifname,
    veth_pair,
};
use packetgraph::bricks::vtep::{DecapDrop, Flood, Vtep, VtepConfig, VtepCounters};
use packetgraph::bricks::{Switch, Tap};
use packetgraph::{Graph, Pool, PoolConfig, Worker, WorkerConfig};

const OUR_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x61, 0x00, 0x01];
const VM1_MAC: &str = "02:61:00:00:00:01";
const VM2_MAC: &str = "02:61:00:00:00:02";
const VM1_IP: &str = "192.168.61.1";
const VM2_IP: &str = "192.168.61.2";
/// Inner MTU: 1400 + 70 bytes of IPv6 VXLAN overhead fits the 1500-byte underlay.
const VM_MTU: &str = "1400";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Multicast,
    List,
}

struct Underlay {
    v6: bool,
}

impl Underlay {
    fn ours(&self) -> &'static str {
        if self.v6 { "fd61::1" } else { "10.61.0.1" }
    }
    fn peer(&self) -> &'static str {
        if self.v6 { "fd61::2" } else { "10.61.0.2" }
    }
    fn peer_cidr(&self) -> &'static str {
        if self.v6 {
            "fd61::2/64"
        } else {
            "10.61.0.2/24"
        }
    }
    fn group(&self, vni: u32) -> String {
        if self.v6 {
            format!("ff05::61:{vni:x}")
        } else {
            format!("239.1.61.{}", vni % 256)
        }
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ovx-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One VNI: its VM namespaces on both sides.
struct Segment {
    vni: u32,
    vm1: Netns,
    vm2: Netns,
    _veth: Veth,
}

/// The whole topology. Field order = drop order: the capture and the worker (which owns
/// the TAP descriptors) go before the namespaces.
struct Topo {
    capture: Option<KillOnDrop>,
    worker: Option<Worker>,
    segs: Vec<Segment>,
    h2: Netns,
    tap_u: String,
    dir: TempDir,
    u: Underlay,
    mode: Mode,
}

fn tools() {
    require_root();
    for t in [
        "ip",
        "bridge",
        "ping",
        "socat",
        "tcpdump",
        "tshark",
        "sha256sum",
        "ss",
    ] {
        require_tool(t);
    }
}

/// Builds H2, the VM namespaces of each VNI, the kernel VXLAN side and our graph, and
/// starts a capture of the underlay in H2 before the graph runs (so the join is in it).
fn setup(v6: bool, mode: Mode, vnis: &[u32]) -> Topo {
    tools();
    let u = Underlay { v6 };
    let dir = TempDir::new();
    let pool = Pool::new(PoolConfig {
        frame_count: 4096,
        ..Default::default()
    })
    .expect("pool");
    let h2 = Netns::new("ovh2");
    if !v6 {
        h2.disable_ipv6();
    }
    let tu = Tap::new(&unique_ifname("ovu"), pool.clone()).expect("create underlay TAP");
    let tap_u = tu.name().to_string();
    move_to_netns(&tap_u, &h2);
    h2.run_ok(&["ip", "link", "set", &tap_u, "mtu", "1500"]);
    if v6 {
        h2.run_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            u.peer_cidr(),
            "dev",
            &tap_u,
            "nodad",
        ]);
    } else {
        h2.addr(&tap_u, u.peer_cidr());
    }
    // Full checksums on what the kernel sends us (no partial offload on the TAP).
    let _ = h2.run(&["ethtool", "-K", &tap_u, "tx", "off"]);
    h2.up(&tap_u);

    let mut g = Graph::new("overlay");
    let cfg = VtepConfig::new(u.ours().parse().unwrap(), OUR_MAC);
    g.add("vtep", Vtep::new(pool.clone(), cfg).expect("vtep"))
        .unwrap();
    g.add("tap-u", tu).unwrap();
    g.link("vtep", "tap-u").unwrap();

    let mut segs = Vec::new();
    for (i, &vni) in vnis.iter().enumerate() {
        // VM1: a TAP of our graph, moved into its namespace.
        let vm1 = Netns::new("ovv1");
        vm1.disable_ipv6();
        let tv = Tap::new(&unique_ifname("ovm"), pool.clone()).expect("create VM TAP");
        let tv_name = tv.name().to_string();
        move_to_netns(&tv_name, &vm1);
        vm1.run_ok(&[
            "ip", "link", "set", &tv_name, "address", VM1_MAC, "mtu", VM_MTU,
        ]);
        vm1.addr(&tv_name, &format!("{VM1_IP}/24"));
        vm1.up(&tv_name);
        vm1.up("lo");
        let (tap, sw) = (format!("tap-vm{i}"), format!("switch{i}"));
        g.add(&tap, tv).unwrap();
        g.add(&sw, Switch::new()).unwrap();
        g.link(&tap, &sw).unwrap();
        let (_, edge) = g.link(&sw, "vtep").unwrap();
        let flood = match mode {
            Mode::Multicast => Flood::Multicast(u.group(vni).parse().unwrap()),
            Mode::List => Flood::List(vec![u.peer().parse().unwrap()]),
        };
        g.get_mut::<Vtep>("vtep")
            .unwrap()
            .add_vni(edge, vni, flood)
            .expect("add_vni");

        // H2: kernel vxlan + bridge + veth to VM2.
        let vx = format!("vx{vni}");
        let br = format!("br{vni}");
        let mut cmd = vec![
            "ip".to_string(),
            "link".into(),
            "add".into(),
            vx.clone(),
            "type".into(),
            "vxlan".into(),
            "id".into(),
            vni.to_string(),
            "dstport".into(),
            "4789".into(),
            "local".into(),
            u.peer().into(),
        ];
        if mode == Mode::Multicast {
            cmd.extend(["group".into(), u.group(vni), "dev".into(), tap_u.clone()]);
        }
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        h2.run_ok(&cmd);
        if mode == Mode::List {
            h2.run_ok(&[
                "bridge",
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &vx,
                "dst",
                u.ours(),
            ]);
        }
        h2.run_ok(&["ip", "link", "set", &vx, "mtu", VM_MTU]);
        h2.run_ok(&["ip", "link", "add", &br, "type", "bridge"]);
        h2.run_ok(&["ip", "link", "set", &vx, "master", &br]);
        let vm2 = Netns::new("ovv2");
        vm2.disable_ipv6();
        let mut veth = veth_pair("ovp");
        veth.move_a_to(&h2);
        veth.move_b_to(&vm2);
        h2.run_ok(&["ip", "link", "set", veth.a(), "master", &br, "mtu", VM_MTU]);
        vm2.run_ok(&[
            "ip",
            "link",
            "set",
            veth.b(),
            "address",
            VM2_MAC,
            "mtu",
            VM_MTU,
        ]);
        vm2.addr(veth.b(), &format!("{VM2_IP}/24"));
        for d in [vx.as_str(), br.as_str(), veth.a()] {
            h2.up(d);
        }
        vm2.up(veth.b());
        vm2.up("lo");
        segs.push(Segment {
            vni,
            vm1,
            vm2,
            _veth: veth,
        });
    }
    g.sanity_check().expect("graph sanity");

    // Capture the underlay in H2 before the graph runs.
    let pcap = dir.path("underlay.pcap");
    let mut cap = h2.spawn(&["tcpdump", "-i", &tap_u, "-n", "-U", "-w", &pcap]);
    let stderr = cap.child().stderr.take().expect("tcpdump stderr");
    let mut line = String::new();
    BufReader::new(stderr)
        .read_line(&mut line)
        .expect("read tcpdump stderr");
    assert!(
        line.contains("listening on"),
        "tcpdump did not start: {line}"
    );

    let worker = Worker::spawn(
        g,
        WorkerConfig {
            name: "overlay".into(),
            max_idle_sleep: Duration::from_micros(200),
            ..Default::default()
        },
    )
    .expect("worker");
    Topo {
        capture: Some(cap),
        worker: Some(worker),
        segs,
        h2,
        tap_u,
        dir,
        u,
        mode,
    }
}

impl Topo {
    fn counters(&self) -> VtepCounters {
        self.worker
            .as_ref()
            .unwrap()
            .exec(|g| *g.get::<Vtep>("vtep").unwrap().stats())
            .unwrap()
    }

    /// Pings until the first answer (ARP on both sides, our ARP/NS for the kernel's
    /// MAC), at most 15 s; then 5 pings that must all be answered.
    fn ping(&self, from: &Netns, to: &str) {
        let t = Instant::now();
        while !from
            .run(&["ping", "-c", "1", "-W", "1", to])
            .status
            .success()
        {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "no ping answer from {to} in 15 s; vtep counters: {:?}",
                self.counters()
            );
        }
        let out = from.run(&["ping", "-c", "5", "-i", "0.2", "-W", "2", to]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(" 0% packet loss"),
            "5 pings to {to} must all be answered: {text}"
        );
    }

    /// Sends 1 MiB of random data from `from` to `to_ns` (listening on VM2_IP:5061) over
    /// TCP and compares the SHA-256 of what arrived.
    fn tcp_transfer(&self, from: &Netns, to_ns: &Netns, to_ip: &str) {
        let file = self.dir.path("data.bin");
        run_ok(&[
            "sh",
            "-c",
            &format!("head -c 1048576 /dev/urandom > {file}"),
        ]);
        let want = run_ok(&["sha256sum", &file]);
        let want = want.split_whitespace().next().unwrap().to_string();
        let rx = to_ns.spawn(&[
            "sh",
            "-c",
            "socat -u TCP-LISTEN:5061,reuseaddr STDOUT | sha256sum",
        ]);
        let t = Instant::now();
        while !to_ns.run_ok(&["ss", "-ltn"]).contains(":5061") {
            assert!(t.elapsed() < Duration::from_secs(5), "socat did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        from.run_ok(&[
            "timeout",
            "60",
            "socat",
            "-u",
            &format!("OPEN:{file}"),
            &format!("TCP:{to_ip}:5061"),
        ]);
        let out = rx.wait_output();
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            got.split_whitespace().next().unwrap_or(""),
            want,
            "the 1 MiB received over TCP differs from what was sent"
        );
    }

    /// Stops the capture and returns `tshark` fields of the frames matching `filter`.
    fn tshark(&mut self, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
        // Let the last frames reach the capture, then stop it (-U flushed every frame).
        std::thread::sleep(Duration::from_millis(300));
        drop(self.capture.take());
        let pcap = self.dir.path("underlay.pcap");
        let mut args = vec![
            "tshark",
            "-n",
            "-r",
            &pcap,
            "-d",
            "udp.port==4789,vxlan",
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-Y",
            filter,
            "-T",
            "fields",
            "-E",
            "separator=|",
        ];
        for f in fields {
            args.push("-e");
            args.push(f);
        }
        let out = run(&args);
        assert!(
            out.status.success(),
            "tshark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }
}

/// Runs ping and TCP both ways for every segment, then checks the capture.
fn interop(v6: bool, mode: Mode) {
    let vni = if v6 { 6100 } else { 4100 } + if mode == Mode::List { 1 } else { 0 };
    let mut t = setup(v6, mode, &[vni]);
    let s = &t.segs[0];
    t.ping(&s.vm1, VM2_IP);
    t.ping(&s.vm2, VM1_IP);
    t.tcp_transfer(&s.vm1, &s.vm2, VM2_IP);
    t.tcp_transfer(&s.vm2, &s.vm1, VM1_IP);
    let c = t.counters();
    assert!(
        c.encapsulated > 700 && c.decapsulated > 700,
        "1 MiB each way moved through the VTEP: {c:?}"
    );
    for r in [
        DecapDrop::IpChecksum,
        DecapDrop::UdpChecksum,
        DecapDrop::UdpLength,
        DecapDrop::VxlanFlags,
        DecapDrop::UnknownVni,
        DecapDrop::IpMalformed,
    ] {
        assert_eq!(
            c.decap_drop(r),
            0,
            "the kernel's VXLAN frames are valid: {r:?}"
        );
    }
    assert!(
        c.nd_answers >= 1,
        "the kernel resolved our VTEP IP through us"
    );
    if mode == Mode::List {
        assert!(
            c.nd_requests >= 1,
            "we resolved the kernel's MAC with ARP/NS"
        );
    }

    let ours = t.u.ours();
    let (filter, fields): (String, Vec<&str>) = if v6 {
        (
            format!("ipv6.src=={ours} && vxlan"),
            vec![
                "vxlan.vni",
                "udp.checksum.status",
                "ipv6.dst",
                "udp.srcport",
            ],
        )
    } else {
        (
            format!("ip.src=={ours} && vxlan"),
            vec![
                "vxlan.vni",
                "ip.checksum.status",
                "udp.checksum",
                "ip.flags.df",
                "udp.srcport",
            ],
        )
    };
    let join = if v6 {
        (
            "icmpv6.type==143 && eth.src==02:00:00:61:00:01 && !vxlan".to_string(),
            vec![
                "ipv6.src",
                "icmpv6.mldr.mar.record_type",
                "icmpv6.mldr.mar.multicast_address",
                "icmpv6.checksum.status",
            ],
        )
    } else {
        (
            format!("igmp && ip.src=={ours} && !vxlan"),
            vec![
                "igmp.type",
                "igmp.maddr",
                "ip.checksum.status",
                "igmp.checksum.status",
            ],
        )
    };
    let rows = t.tshark(&filter, &fields);
    assert!(
        rows.len() as u64 >= 700,
        "our VXLAN frames in the capture: {} (encapsulated {})",
        rows.len(),
        c.encapsulated
    );
    let mut ports = std::collections::HashSet::new();
    for r in &rows {
        assert_eq!(r[0], vni.to_string(), "VNI of {r:?}");
        // A field present in the outer and the inner headers lists both, outer first.
        let outer = |i: usize| r[i].split(',').next().unwrap_or("").to_string();
        if v6 {
            assert_eq!(outer(1), "1", "UDP checksum status must be Good (1): {r:?}");
        } else {
            assert!(
                r[1].split(',').all(|s| s == "1"),
                "IPv4 header checksums (outer, inner) must be Good (1): {r:?}"
            );
            assert_eq!(
                outer(2),
                "0x0000",
                "IPv4: zero UDP checksum (RFC 7348 §5): {r:?}"
            );
            assert!(outer(3) == "1" || outer(3) == "True", "DF set: {r:?}");
        }
        let port: u16 = outer(fields.len() - 1).parse().unwrap();
        assert!(port >= 49152, "UDP source port in 49152-65535: {r:?}");
        ports.insert(port);
    }
    assert!(
        ports.len() >= 2,
        "different inner flows, different source ports"
    );
    // The join was captured (it was sent on the first poll, after the capture started).
    let joins = t.tshark(&join.0, &join.1);
    match mode {
        Mode::Multicast if v6 => {
            assert_eq!(joins.len(), 1, "one MLDv2 report: {joins:?}");
            let j = &joins[0];
            assert!(j[0].starts_with("fe80::"), "link-local source: {j:?}");
            assert_eq!(j[1], "4", "CHANGE_TO_EXCLUDE_MODE (join): {j:?}");
            assert_eq!(j[2], t.u.group(vni));
            assert_eq!(j[3], "1", "ICMPv6 checksum Good: {j:?}");
        }
        Mode::Multicast => {
            assert_eq!(joins.len(), 1, "one IGMPv2 report: {joins:?}");
            let j = &joins[0];
            assert_eq!(j[0], "0x16", "IGMPv2 membership report: {j:?}");
            assert_eq!(j[1], t.u.group(vni));
            assert_eq!(j[2], "1", "IPv4 checksum Good: {j:?}");
            assert_eq!(j[3], "1", "IGMP checksum Good: {j:?}");
        }
        Mode::List => assert!(joins.is_empty(), "no join without a group: {joins:?}"),
    }
    // The tap counters saw what the worker sent.
    let _ = (&t.h2, &t.tap_u);
}

#[test]
fn ipv4_underlay_multicast() {
    interop(false, Mode::Multicast);
}

#[test]
fn ipv4_underlay_flood_list() {
    interop(false, Mode::List);
}

#[test]
fn ipv6_underlay_multicast() {
    interop(true, Mode::Multicast);
}

#[test]
fn ipv6_underlay_flood_list() {
    interop(true, Mode::List);
}

/// Counts ICMP frames seen by `tcpdump` in `ns` on `dev` while `f` runs.
fn icmp_seen_during(ns: &Netns, dev: &str, f: impl FnOnce()) -> usize {
    let mut cap = ns.spawn(&["tcpdump", "-i", dev, "-n", "-l", "icmp"]);
    let stderr = cap.child().stderr.take().expect("stderr");
    let mut r = BufReader::new(stderr);
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        let n = r.read_line(&mut line).expect("read tcpdump stderr");
        assert!(n > 0, "tcpdump did not start");
    }
    f();
    std::thread::sleep(Duration::from_millis(300));
    let _ = cap.child().kill();
    let out = cap.wait_output();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("ICMP"))
        .count()
}

/// Two VNIs whose VMs use the same MACs and IPs on both sides: each VNI's traffic stays
/// in its VNI, and with VNI A's peer down nothing from VNI B answers in its place.
#[test]
fn vni_isolation() {
    let t = setup(false, Mode::List, &[4201, 4202]);
    let (a, b) = (&t.segs[0], &t.segs[1]);
    assert_eq!((a.vni, b.vni), (4201, 4202));
    let vm2_dev = |s: &Segment| -> String {
        let out = s.vm2.run_ok(&["ip", "-o", "link", "show", "type", "veth"]);
        out.split(':')
            .nth(1)
            .unwrap()
            .trim()
            .split('@')
            .next()
            .unwrap()
            .to_string()
    };
    let (a2, b2) = (vm2_dev(a), vm2_dev(b));
    t.ping(&a.vm1, VM2_IP);
    t.ping(&b.vm1, VM2_IP);
    let seen_b = icmp_seen_during(&b.vm2, &b2, || t.ping(&a.vm1, VM2_IP));
    assert_eq!(seen_b, 0, "VNI {} ICMP must not reach VNI {}", a.vni, b.vni);
    let seen_a = icmp_seen_during(&a.vm2, &a2, || t.ping(&b.vm1, VM2_IP));
    assert_eq!(seen_a, 0, "VNI {} ICMP must not reach VNI {}", b.vni, a.vni);
    // VNI A's VM2 goes away: VNI B's VM2 (same IP, same MAC) must not answer for it.
    a.vm2.run_ok(&["ip", "link", "set", &a2, "down"]);
    let seen_b = icmp_seen_during(&b.vm2, &b2, || {
        let out = a
            .vm1
            .run(&["ping", "-c", "3", "-i", "0.3", "-W", "1", VM2_IP]);
        assert!(
            !out.status.success(),
            "nobody may answer in VNI {} once its VM2 is down: {}",
            a.vni,
            String::from_utf8_lossy(&out.stdout)
        );
    });
    assert_eq!(seen_b, 0);
    // Our VTEP learned VM2's MAC once per VNI, behind the same remote VTEP.
    let fdb = t
        .worker
        .as_ref()
        .unwrap()
        .exec(|g| g.get::<Vtep>("vtep").unwrap().fdb())
        .unwrap();
    let vm2_mac = [0x02, 0x61, 0, 0, 0, 0x02];
    let peer: IpAddr = t.u.peer().parse().unwrap();
    for vni in [a.vni, b.vni] {
        assert!(
            fdb.iter()
                .any(|e| e.vni == vni && e.mac == vm2_mac && e.remote == peer),
            "VM2's MAC learned in VNI {vni}: {fdb:?}"
        );
    }
    assert_eq!(t.mode, Mode::List);
}
