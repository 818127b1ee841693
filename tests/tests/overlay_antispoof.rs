//! End to end: a VM namespace behind `tap(peer) — switch — antispoof — tap(vm)`.
//!
//! Namespace VM holds TAP `vm` (MAC 02:00:00:78:00:01, 10.78.0.1/24, fd78::1/64,
//! fe80::78:1/64); namespace PEER holds TAP `peer` (10.78.0.2/24, fd78::2/64). The
//! antispoof brick's outside is WEST (the switch), the VM is on EAST. Legitimate pings
//! (IPv4 and IPv6, with the ARP / NDP that resolve them) must pass; frames the VM sends
//! with a foreign source MAC or IP, spoofed ARP, spoofed NDP NA and NS, RARP, or from a second
//! address not in the VM's list must be dropped, counted by reason, and never reach the
//! peer (a `tcpdump -Q in` capture on the peer's interface proves it, with a legitimate
//! control frame that must be in that capture). Hand-made frames come from scapy.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use butterfly_tests::{
    KillOnDrop, Netns, move_to_netns, require_root, require_tool, unique_ifname,
};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use packetgraph::bricks::antispoof::AntispoofCounters;
use packetgraph::bricks::{Antispoof, Switch, Tap};
use packetgraph::{Graph, Pool, PoolConfig, Worker, WorkerConfig};

const VM_MAC: &str = "02:00:00:78:00:01";
const VM_MAC_BYTES: [u8; 6] = [0x02, 0, 0, 0x78, 0, 0x01];
const OTHER_MAC: &str = "02:00:00:78:00:99";
const VM_IP: &str = "10.78.0.1";
const PEER_IP: &str = "10.78.0.2";
const VM6: &str = "fd78::1";
const VM6_LL: &str = "fe80::78:1";
const PEER6: &str = "fd78::2";
/// Debian's python with python3-scapy (a pyenv `python3` earlier in PATH lacks it).
const PYTHON: &str = "/usr/bin/python3";

struct Setup {
    // Field order = drop order: the worker (and its TAP descriptors) goes first.
    worker: Option<Worker>,
    vm: Netns,
    peer: Netns,
    vm_tap: String,
    peer_tap: String,
}

fn setup() -> Setup {
    require_root();
    require_tool("ping");
    let vm = Netns::new("asvm");
    let peer = Netns::new("aspeer");
    let pool = Pool::new(PoolConfig {
        frame_count: 1024,
        ..Default::default()
    })
    .unwrap();
    let tvm = Tap::new(&unique_ifname("asv"), pool.clone()).expect("create TAP vm");
    let tpeer = Tap::new(&unique_ifname("asp"), pool.clone()).expect("create TAP peer");
    let (vm_tap, peer_tap) = (tvm.name().to_string(), tpeer.name().to_string());
    move_to_netns(&vm_tap, &vm);
    move_to_netns(&peer_tap, &peer);
    // The VM: a fixed MAC and a link-local address we choose (no EUI-64 surprise), no DAD
    // delay.
    vm.run_ok(&["ip", "link", "set", "dev", &vm_tap, "address", VM_MAC]);
    vm.run_ok(&["ip", "link", "set", "dev", &vm_tap, "addrgenmode", "none"]);
    vm.addr(&vm_tap, &format!("{VM_IP}/24"));
    vm.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{VM6}/64"),
        "dev",
        &vm_tap,
        "nodad",
    ]);
    vm.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{VM6_LL}/64"),
        "dev",
        &vm_tap,
        "nodad",
    ]);
    peer.addr(&peer_tap, &format!("{PEER_IP}/24"));
    peer.run_ok(&[
        "ip",
        "addr",
        "add",
        &format!("{PEER6}/64"),
        "dev",
        &peer_tap,
        "nodad",
    ]);
    vm.up(&vm_tap);
    peer.up(&peer_tap);

    let anti = Antispoof::new(VM_MAC_BYTES).with_addresses(
        &[VM_IP.parse().unwrap()],
        &[VM6.parse().unwrap(), VM6_LL.parse().unwrap()],
    );
    let mut g = Graph::new("antispoof");
    g.add("tap-peer", tpeer).unwrap();
    g.add("switch", Switch::new()).unwrap();
    g.add("antispoof", anti).unwrap();
    g.add("tap-vm", tvm).unwrap();
    g.link_chain(&["tap-peer", "switch", "antispoof", "tap-vm"])
        .unwrap();
    g.sanity_check().unwrap();
    let worker = Worker::spawn(
        g,
        WorkerConfig {
            name: "antispoof".into(),
            max_idle_sleep: Duration::from_micros(200),
            ..Default::default()
        },
    )
    .unwrap();
    Setup {
        worker: Some(worker),
        vm,
        peer,
        vm_tap,
        peer_tap,
    }
}

impl Setup {
    fn worker(&self) -> &Worker {
        self.worker.as_ref().unwrap()
    }

    fn antispoof(&self) -> AntispoofCounters {
        self.worker()
            .exec(|g| *g.get::<Antispoof>("antispoof").unwrap().stats())
            .unwrap()
    }

    fn ping(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = vec!["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1"];
        cmd.extend_from_slice(args);
        let out = self.vm.run(&cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

fn drops(c: &AntispoofCounters) -> u64 {
    c.drop_mac
        + c.drop_vlan
        + c.drop_rarp
        + c.drop_arp
        + c.drop_ipv4
        + c.drop_ipv6
        + c.drop_ndp
        + c.drop_malformed
}

/// A `tcpdump -Q in` capture of what arrives at an interface, to a pcap file.
struct Capture {
    child: Option<KillOnDrop>,
    path: PathBuf,
}

impl Capture {
    /// Starts tcpdump in `ns` on `dev` and waits until it is listening.
    fn start(ns: &Netns, dev: &str) -> Capture {
        require_tool("tcpdump");
        let path = std::env::temp_dir().join(format!("{}.pcap", unique_ifname("ascap")));
        let p = path.to_str().unwrap();
        let mut child = ns.spawn(&[
            "tcpdump",
            "-i",
            dev,
            "-Q",
            "in",
            "-n",
            "--immediate-mode",
            "-U",
            "-w",
            p,
        ]);
        let stderr = child
            .child()
            .stderr
            .take()
            .expect("tcpdump stderr is piped");
        let mut line = String::new();
        BufReader::new(stderr)
            .read_line(&mut line)
            .expect("read tcpdump stderr");
        assert!(
            line.contains("listening on"),
            "tcpdump did not start: {line}"
        );
        Capture {
            child: Some(child),
            path,
        }
    }

    /// Stops the capture and returns the frames it holds.
    fn frames(mut self) -> Vec<Vec<u8>> {
        // Immediate mode and -U write every packet as it comes: give the last ones a
        // moment, then stop tcpdump with SIGINT (it flushes and exits) and wait for it.
        std::thread::sleep(Duration::from_millis(300));
        let mut child = self.child.take().expect("capture running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT tcpdump");
        let status = child.child().wait().expect("wait for tcpdump");
        assert!(
            status.success() || status.code().is_none(),
            "tcpdump: {status}"
        );
        let file = std::fs::File::open(&self.path).expect("open capture");
        let mut r = pcap_file::pcap::PcapReader::new(file).expect("read pcap header");
        let mut frames = Vec::new();
        while let Some(p) = r.next_packet() {
            frames.push(p.expect("pcap record").data.into_owned());
        }
        frames
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends frames built by scapy (`frames` is a Python list expression) out of `dev` in
/// `ns`.
fn scapy_send(ns: &Netns, dev: &str, frames: &str) {
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} not found: run cargo xtask deps (python3-scapy)"
    );
    let script = format!(
        "import logging\nlogging.getLogger('scapy.runtime').setLevel(logging.ERROR)\n\
         from scapy.all import *\nsendp({frames}, iface='{dev}', verbose=False)\n"
    );
    let out = ns.run(&[PYTHON, "-c", &script]);
    assert!(
        out.status.success(),
        "scapy failed (python3-scapy installed? run cargo xtask deps): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn legitimate_ipv4_and_ipv6_traffic_passes() {
    let mut s = setup();
    let (ok, text) = s.ping(&[PEER_IP]);
    assert!(
        ok && text.contains("3 received"),
        "IPv4 ping failed: {text}"
    );
    let (ok, text) = s.ping(&["-6", PEER6]);
    assert!(
        ok && text.contains("3 received"),
        "IPv6 ping failed: {text}"
    );
    std::thread::sleep(Duration::from_millis(100));
    let g = s.worker.take().unwrap().stop().unwrap();
    let c = *g.get::<Antispoof>("antispoof").unwrap().stats();
    eprintln!("antispoof {c:?}");
    assert_eq!(drops(&c), 0, "legitimate traffic was dropped: {c:?}");
    // 3 + 3 echo requests at least, plus the ARP request / NDP NS and replies.
    assert!(c.passed_vm >= 8, "{c:?}");
    assert!(c.passed_outside >= 8, "{c:?}");
    let sw = g.get::<Switch>("switch").unwrap();
    assert!(
        sw.lookup_mac(VM_MAC_BYTES).is_some(),
        "the switch learned the VM"
    );
    assert_eq!(g.empty_bursts(), 0);
}

#[test]
fn spoofed_frames_are_dropped_counted_and_never_reach_the_peer() {
    let s = setup();
    // Resolve the peer legitimately first (and prove the path works).
    let (ok, text) = s.ping(&[PEER_IP]);
    assert!(ok, "IPv4 ping failed: {text}");
    let peer_mac = s.peer.mac(&s.peer_tap);
    let before = s.antispoof();
    assert_eq!(drops(&before), 0, "{before:?}");

    let cap = Capture::start(&s.peer, &s.peer_tap);
    let frames = format!(
        "[\
         Ether(src='{OTHER_MAC}', dst='{peer_mac}')/IP(src='{VM_IP}', dst='{PEER_IP}')/ICMP(id=0x7801)/b'spoofed-mac',\
         Ether(src='{VM_MAC}', dst='{peer_mac}')/IP(src='10.78.0.50', dst='{PEER_IP}')/ICMP(id=0x7802)/b'spoofed-ip',\
         Ether(src='{VM_MAC}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=2, hwsrc='{VM_MAC}', psrc='{PEER_IP}', hwdst='ff:ff:ff:ff:ff:ff', pdst='{PEER_IP}'),\
         Ether(src='{VM_MAC}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{OTHER_MAC}', psrc='{VM_IP}', pdst='{PEER_IP}'),\
         Ether(src='{VM_MAC}', dst='33:33:00:00:00:01')/IPv6(src='{VM6}', dst='ff02::1')/ICMPv6ND_NA(tgt='{PEER6}', R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{VM_MAC}'),\
         Ether(src='{VM_MAC}', dst='33:33:00:00:00:01')/IPv6(src='{VM6}', dst='ff02::1')/ICMPv6ND_NA(tgt='{VM6}', R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{OTHER_MAC}'),\
         Ether(src='{VM_MAC}', dst='33:33:ff:00:00:02')/IPv6(src='{VM6}', dst='ff02::1:ff00:2')/ICMPv6ND_NS(tgt='{PEER6}')/ICMPv6NDOptSrcLLAddr(lladdr='{OTHER_MAC}'),\
         Ether(src='{VM_MAC}', dst='ff:ff:ff:ff:ff:ff', type=0x8035)/ARP(op=3, hwsrc='{VM_MAC}', hwdst='{VM_MAC}', psrc='0.0.0.0', pdst='0.0.0.0'),\
         Ether(src='{VM_MAC}', dst='{peer_mac}')/IPv6(src='fd78::99', dst='{PEER6}')/ICMPv6EchoRequest(id=0x7803),\
         Ether(src='{VM_MAC}', dst='{peer_mac}')/IP(src='{VM_IP}', dst='{PEER_IP}')/ICMP(id=0x7899)/b'legit-control'\
         ]"
    );
    scapy_send(&s.vm, &s.vm_tap, &frames);
    let seen = cap.frames();
    let after = s.antispoof();
    eprintln!(
        "before {before:?}\nafter  {after:?}\npeer captured {} frames",
        seen.len()
    );

    // Counted by reason, exactly once each.
    let d = |f: fn(&AntispoofCounters) -> u64| f(&after) - f(&before);
    assert_eq!(d(|c| c.drop_mac), 1, "spoofed source MAC");
    assert_eq!(d(|c| c.drop_ipv4), 1, "spoofed source IPv4");
    assert_eq!(d(|c| c.drop_arp), 2, "spoofed ARP (sender IP, sender MAC)");
    assert_eq!(
        d(|c| c.drop_ndp),
        3,
        "spoofed NA (target, target link-layer address), NS (source link-layer address)"
    );
    assert_eq!(d(|c| c.drop_rarp), 1, "RARP");
    assert_eq!(d(|c| c.drop_ipv6), 1, "spoofed source IPv6");
    assert_eq!(d(|c| c.drop_vlan + c.drop_malformed), 0);

    // What reached the peer: the control frame, and none of the spoofed ones.
    let mut control = 0;
    for f in &seen {
        assert!(
            !f.windows(6).any(|w| w == [0x02, 0, 0, 0x78, 0, 0x99]),
            "a frame carrying the foreign MAC reached the peer: {f:02x?}"
        );
        assert_ne!(
            &f[6..12],
            &[0x02, 0, 0, 0x78, 0, 0x99],
            "spoofed MAC reached the peer"
        );
        assert_ne!(&f[12..14], &[0x80, 0x35], "RARP reached the peer");
        match SlicedPacket::from_ethernet(f) {
            Ok(SlicedPacket {
                net: Some(NetSlice::Arp(a)),
                ..
            }) => {
                assert_eq!(
                    a.sender_hw_addr(),
                    VM_MAC_BYTES,
                    "ARP with a foreign sender MAC"
                );
                assert_ne!(
                    a.sender_protocol_addr(),
                    PEER_IP.parse::<Ipv4Addr>().unwrap().octets(),
                    "ARP claiming the peer's address reached the peer"
                );
            }
            Ok(SlicedPacket {
                net: Some(NetSlice::Ipv4(ip)),
                transport,
                ..
            }) => {
                assert_eq!(ip.header().source_addr().to_string(), VM_IP, "spoofed IPv4");
                if let Some(TransportSlice::Icmpv4(_)) = transport
                    && f.windows(13).any(|w| w == b"legit-control")
                {
                    control += 1;
                }
            }
            Ok(SlicedPacket {
                net: Some(NetSlice::Ipv6(ip)),
                transport,
                ..
            }) => {
                let src = ip.header().source_addr().to_string();
                assert_ne!(src, "fd78::99", "spoofed IPv6 reached the peer");
                if let Some(TransportSlice::Icmpv6(icmp)) = transport
                    && icmp.type_u8() == 136
                {
                    let target = &icmp.slice()[8..24];
                    let vm6: std::net::Ipv6Addr = VM6.parse().unwrap();
                    let ll: std::net::Ipv6Addr = VM6_LL.parse().unwrap();
                    assert!(
                        target == vm6.octets() || target == ll.octets(),
                        "an NA for a foreign target reached the peer"
                    );
                    assert!(
                        !f.windows(6).any(|w| w == [0x02, 0, 0, 0x78, 0, 0x99]),
                        "an NA with a foreign link-layer address reached the peer"
                    );
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        control, 1,
        "the legitimate control frame must reach the peer"
    );
}

#[test]
fn a_second_address_is_spoofing_until_added_to_the_list() {
    let s = setup();
    let (ok, text) = s.ping(&[PEER_IP]);
    assert!(ok, "IPv4 ping failed: {text}");
    s.vm.addr(&s.vm_tap, "10.78.0.99/24");
    let before = s.antispoof();
    let cap = Capture::start(&s.peer, &s.peer_tap);
    let (ok, text) = s.ping(&["-I", "10.78.0.99", PEER_IP]);
    assert!(
        !ok,
        "ping from an address not in the list must fail: {text}"
    );
    assert!(text.contains("0 received"), "{text}");
    let seen = cap.frames();
    let mid = s.antispoof();
    assert!(
        mid.drop_ipv4 - before.drop_ipv4 >= 3,
        "3 echo requests from 10.78.0.99: {mid:?}"
    );
    // Nothing from 10.78.0.99 reached the peer (neither the echo requests nor an ARP
    // request claiming it).
    let spoofed_ip = [10u8, 78, 0, 99];
    for f in &seen {
        assert!(
            !f.windows(4).any(|w| w == spoofed_ip),
            "a frame carrying 10.78.0.99 reached the peer: {f:02x?}"
        );
    }

    // Allow the address at run time: the same ping now works.
    s.worker()
        .exec(|g| {
            g.get_mut::<Antispoof>("antispoof")
                .unwrap()
                .add_ipv4("10.78.0.99".parse().unwrap())
        })
        .unwrap();
    let cap = Capture::start(&s.peer, &s.peer_tap);
    let (ok, text) = s.ping(&["-I", "10.78.0.99", PEER_IP]);
    assert!(ok && text.contains("3 received"), "after add_ipv4: {text}");
    let seen = cap.frames();
    let echo_from_99 = seen
        .iter()
        .filter(|f| f.len() > 34 && f[12..14] == [8, 0] && f[26..30] == spoofed_ip)
        .count();
    assert_eq!(
        echo_from_99, 3,
        "the 3 echo requests from 10.78.0.99 arrive now"
    );
    let end = s.antispoof();
    assert_eq!(
        end.drop_ipv4, mid.drop_ipv4,
        "nothing dropped once the address is in the list: {end:?}"
    );
}
