//! End to end: security groups through real kernel stacks.
//!
//! Graph: `tap(net) — firewall — tap(vm)`. TAP "net" lives in namespace NET (the network
//! side, the firewall's WEST), TAP "vm" in namespace VM (the VM side, EAST, the default
//! `vm_side`). VM has 10.50.0.10/24 and fd50::10/64; NET has 10.50.0.1, .2 and .3 and
//! fd50::1, fd50::2, so tests pick the source address of each connection with `bind=` /
//! `ping -I`. Traffic is real: `socat` echo servers and clients (TCP and UDP, IPv4 and
//! IPv6), `ping` (also with 3000-byte payloads, so fragments cross), a UDP datagram to a
//! closed port (the ICMP port unreachable must come back), and DHCP discovers sent from
//! 0.0.0.0 with scapy. A check "passes" when the echo comes back; a blocked check waits
//! for a 1 s timeout. The firewall's counters are checked too (drops by reason, revoked
//! flows, fragments, related ICMP errors).
//!
//! Rules are changed while the graph runs, through `Worker::exec`, as the daemon does.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use butterfly_tests::{
    KillOnDrop, Netns, move_to_netns, require_root, require_tool, unique_ifname,
};
use packetgraph::bricks::Tap;
use packetgraph::bricks::firewall::{
    Cidr, Firewall, FirewallConfig, FirewallCounters, Peer, PortRange, Protocol, Rule,
    SecurityGroup,
};
use packetgraph::{Clock, Graph, Pool, PoolConfig, Side, Worker, WorkerConfig};

const VM4: &str = "10.50.0.10";
const VM6: &str = "fd50::10";
const NET1: &str = "10.50.0.1";
const NET2: &str = "10.50.0.2";
const NET3: &str = "10.50.0.3";
const NET6_1: &str = "fd50::1";
const NET6_2: &str = "fd50::2";

fn cidr(s: &str) -> Peer {
    Peer::Cidr(s.parse::<Cidr>().unwrap())
}

fn any4() -> Peer {
    cidr("0.0.0.0/0")
}

struct Lab {
    // Field order = drop order: servers, then the worker (TAP descriptors), then the
    // namespaces.
    servers: Vec<KillOnDrop>,
    worker: Option<Worker>,
    net: Netns,
    vm: Netns,
    tap_vm: String,
}

impl Lab {
    /// Builds the namespaces, TAPs and graph; `setup` configures the firewall (NIC
    /// addresses are set, group "sg-a" is defined empty and applied to the NIC).
    fn new(setup: impl FnOnce(&mut Firewall)) -> Lab {
        require_root();
        require_tool("socat");
        require_tool("ping");
        require_tool("ss");
        let net = Netns::new("fwN");
        let vm = Netns::new("fwV");
        let pool = Pool::new(PoolConfig {
            frame_count: 2048,
            ..Default::default()
        })
        .unwrap();
        let tn = Tap::new(&unique_ifname("fwn"), pool.clone()).expect("create TAP net");
        let tv = Tap::new(&unique_ifname("fwv"), pool.clone()).expect("create TAP vm");
        let (tap_net, tap_vm) = (tn.name().to_string(), tv.name().to_string());
        move_to_netns(&tap_net, &net);
        move_to_netns(&tap_vm, &vm);
        for a in [NET1, NET2, NET3] {
            net.addr(&tap_net, &format!("{a}/24"));
        }
        for a in [NET6_1, NET6_2] {
            net.run_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                &tap_net,
                "nodad",
            ]);
        }
        vm.addr(&tap_vm, &format!("{VM4}/24"));
        vm.run_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{VM6}/64"),
            "dev",
            &tap_vm,
            "nodad",
        ]);
        net.up(&tap_net);
        vm.up(&tap_vm);
        net.up("lo");
        vm.up("lo");

        let mut fw = Firewall::new(
            FirewallConfig {
                vm_side: Side::East,
                zone: 1,
                ..Default::default()
            },
            Clock::monotonic(),
        )
        .unwrap();
        fw.set_nic_addresses(vec![VM4.parse().unwrap(), VM6.parse().unwrap()]);
        fw.upsert_group(SecurityGroup {
            id: "sg-a".into(),
            ..Default::default()
        })
        .unwrap();
        fw.set_nic_groups(vec!["sg-a".into()]);
        setup(&mut fw);

        let mut g = Graph::new("fw-e2e");
        g.add("tap-net", tn).unwrap();
        g.add("fw", fw).unwrap();
        g.add("tap-vm", tv).unwrap();
        g.link_chain(&["tap-net", "fw", "tap-vm"]).unwrap();
        g.sanity_check().unwrap();
        let worker = Worker::spawn(
            g,
            WorkerConfig {
                name: "fw-e2e".into(),
                max_idle_sleep: Duration::from_micros(200),
                ..Default::default()
            },
        )
        .unwrap();
        Lab {
            servers: Vec::new(),
            worker: Some(worker),
            net,
            vm,
            tap_vm,
        }
    }

    /// Runs `f` on the firewall between polls.
    fn fw<R: Send + 'static>(&self, f: impl FnOnce(&mut Firewall) -> R + Send + 'static) -> R {
        self.worker
            .as_ref()
            .unwrap()
            .exec(move |g| f(g.get_mut::<Firewall>("fw").unwrap()))
            .unwrap()
    }

    fn counters(&self) -> FirewallCounters {
        self.fw(|f| f.stats())
    }

    fn ns(&self, side: Side) -> &Netns {
        match side {
            Side::West => &self.net,
            Side::East => &self.vm,
        }
    }

    /// Starts TCP and UDP echo servers (dual stack) on `port` in the namespace of `side`.
    fn echo_servers(&mut self, side: Side, port: u16) {
        let ns = self.ns(side);
        let tcp = ns.spawn(&[
            "socat",
            &format!("TCP6-LISTEN:{port},reuseaddr,fork"),
            "EXEC:cat",
        ]);
        let udp = ns.spawn(&["socat", &format!("UDP6-RECVFROM:{port},fork"), "EXEC:cat"]);
        wait_listening(ns, port);
        self.servers.push(tcp);
        self.servers.push(udp);
    }
}

/// Waits until something listens on TCP and UDP `port` in `ns` (at most 5 s).
fn wait_listening(ns: &Netns, port: u16) {
    let t0 = Instant::now();
    loop {
        let tcp = ns.run_ok(&["ss", "-Hltn", &format!("sport = :{port}")]);
        let udp = ns.run_ok(&["ss", "-Hlun", &format!("sport = :{port}")]);
        if !tcp.trim().is_empty() && !udp.trim().is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "echo servers on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn host(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

/// True when a TCP connection from `src` to `dst:port` made in `ns` echoes a line back.
fn tcp_ok(ns: &Netns, src: &str, dst: &str, port: u16) -> bool {
    let msg = format!("tcp {src}->{dst}:{port}");
    let fam = if dst.contains(':') { "TCP6" } else { "TCP4" };
    let out = ns.exec(&format!(
        "echo '{msg}' | socat -t 1 -T 2 - {fam}:{}:{port},bind={},connect-timeout=1",
        host(dst),
        host(src)
    ));
    String::from_utf8_lossy(&out.stdout).trim() == msg
}

/// True when a UDP datagram from `src` to `dst:port` made in `ns` is echoed back.
fn udp_ok(ns: &Netns, src: &str, dst: &str, port: u16) -> bool {
    let msg = format!("udp {src}->{dst}:{port}");
    let fam = if dst.contains(':') { "UDP6" } else { "UDP4" };
    let out = ns.exec(&format!(
        "echo '{msg}' | socat -t 1 -T 1 - {fam}:{}:{port},bind={}",
        host(dst),
        host(src)
    ));
    String::from_utf8_lossy(&out.stdout).trim() == msg
}

/// True when one ping from `src` to `dst` made in `ns` is answered.
fn ping_ok(ns: &Netns, src: &str, dst: &str) -> bool {
    ns.run(&["ping", "-n", "-c", "1", "-W", "1", "-I", src, dst])
        .status
        .success()
}

#[test]
fn firewall_default_denies_inbound_and_lets_replies_of_outbound_flows_in() {
    let mut lab = Lab::new(|_| {});
    lab.echo_servers(Side::East, 8080);
    lab.echo_servers(Side::West, 9000);
    assert!(
        !tcp_ok(&lab.net, NET1, VM4, 8080),
        "inbound TCP must be denied"
    );
    assert!(
        !udp_ok(&lab.net, NET1, VM4, 8080),
        "inbound UDP must be denied"
    );
    assert!(!ping_ok(&lab.net, NET1, VM4), "inbound ICMP must be denied");
    assert!(
        !tcp_ok(&lab.net, NET6_1, VM6, 8080),
        "inbound TCP/IPv6 must be denied"
    );
    let denied = lab.counters().drop_denied;
    assert!(
        denied >= 4,
        "the firewall dropped them: {:?}",
        lab.counters()
    );
    // Outbound from the VM's own addresses passes, and so do the replies.
    assert!(tcp_ok(&lab.vm, VM4, NET1, 9000));
    // (UDP to NET's primary address: a dual-stack UDP echo server answers from the primary
    // address, whatever address the request went to.)
    assert!(udp_ok(&lab.vm, VM4, NET1, 9000));
    assert!(ping_ok(&lab.vm, VM4, NET3));
    assert!(tcp_ok(&lab.vm, VM6, NET6_1, 9000));
    let c = lab.counters();
    assert!(c.passed_new >= 4 && c.passed_flow >= 4, "{c:?}");
    assert_eq!(c.drop_malformed, 0, "{c:?}");
}

#[test]
fn firewall_allows_by_cidr() {
    let mut lab = Lab::new(|fw| {
        fw.add_rule(
            "sg-a",
            Rule::inbound(Protocol::Tcp, None, cidr("10.50.0.2/32")),
        )
        .unwrap();
    });
    lab.echo_servers(Side::East, 8080);
    assert!(
        tcp_ok(&lab.net, NET2, VM4, 8080),
        "10.50.0.2 is in the CIDR"
    );
    assert!(!tcp_ok(&lab.net, NET3, VM4, 8080), "10.50.0.3 is not");
    assert!(!udp_ok(&lab.net, NET2, VM4, 8080), "the rule is TCP only");
}

#[test]
fn firewall_allows_by_port_range() {
    let mut lab = Lab::new(|fw| {
        fw.add_rule(
            "sg-a",
            Rule::inbound(
                Protocol::Tcp,
                Some(PortRange::new(8000, 8100).unwrap()),
                any4(),
            ),
        )
        .unwrap();
    });
    for port in [7999, 8000, 8100, 8101] {
        lab.echo_servers(Side::East, port);
    }
    assert!(tcp_ok(&lab.net, NET1, VM4, 8000));
    assert!(tcp_ok(&lab.net, NET1, VM4, 8100));
    assert!(!tcp_ok(&lab.net, NET1, VM4, 7999));
    assert!(!tcp_ok(&lab.net, NET1, VM4, 8101));
}

#[test]
fn firewall_allows_by_protocol_and_icmp() {
    let mut lab = Lab::new(|fw| {
        fw.add_rule("sg-a", Rule::inbound(Protocol::Udp, None, any4()))
            .unwrap();
    });
    lab.echo_servers(Side::East, 5353);
    assert!(udp_ok(&lab.net, NET1, VM4, 5353));
    assert!(!tcp_ok(&lab.net, NET1, VM4, 5353), "UDP rule, TCP denied");
    assert!(!ping_ok(&lab.net, NET1, VM4), "UDP rule, ICMP denied");
    lab.fw(|fw| fw.add_rule("sg-a", Rule::inbound(Protocol::Icmp, None, any4())))
        .unwrap();
    assert!(ping_ok(&lab.net, NET1, VM4), "ICMP rule added");
    lab.fw(|fw| {
        fw.add_rule(
            "sg-a",
            Rule::inbound(Protocol::Any, None, cidr("10.50.0.3/32")),
        )
    })
    .unwrap();
    assert!(tcp_ok(&lab.net, NET3, VM4, 5353), "any protocol from .3");
    assert!(!tcp_ok(&lab.net, NET2, VM4, 5353), "not from .2");
}

#[test]
fn firewall_security_group_members_change_reachability() {
    let mut lab = Lab::new(|fw| {
        fw.upsert_group(SecurityGroup {
            id: "sg-peers".into(),
            rules: vec![],
            members: vec![NET2.parse().unwrap()],
        })
        .unwrap();
        fw.add_rule(
            "sg-a",
            Rule::inbound(Protocol::Tcp, None, Peer::Group("sg-peers".into())),
        )
        .unwrap();
    });
    lab.echo_servers(Side::East, 8080);
    assert!(tcp_ok(&lab.net, NET2, VM4, 8080), "member");
    assert!(!tcp_ok(&lab.net, NET3, VM4, 8080), "not a member yet");
    lab.fw(|fw| fw.add_member("sg-peers", NET3.parse().unwrap()))
        .unwrap();
    assert!(tcp_ok(&lab.net, NET3, VM4, 8080), "member now");
    lab.fw(|fw| fw.remove_member("sg-peers", NET2.parse().unwrap()))
        .unwrap();
    assert!(!tcp_ok(&lab.net, NET2, VM4, 8080), "no longer a member");
    assert!(tcp_ok(&lab.net, NET3, VM4, 8080), "still a member");
}

#[test]
fn firewall_two_security_groups_add_up() {
    let mut lab = Lab::new(|fw| {
        fw.add_rule(
            "sg-a",
            Rule::inbound(Protocol::Tcp, Some(PortRange::single(8080)), any4()),
        )
        .unwrap();
        fw.upsert_group(SecurityGroup {
            id: "sg-b".into(),
            rules: vec![Rule::inbound(
                Protocol::Udp,
                Some(PortRange::single(5353)),
                any4(),
            )],
            members: vec![],
        })
        .unwrap();
    });
    lab.echo_servers(Side::East, 8080);
    lab.echo_servers(Side::East, 5353);
    assert!(tcp_ok(&lab.net, NET1, VM4, 8080));
    assert!(
        !udp_ok(&lab.net, NET1, VM4, 5353),
        "sg-b not on the NIC yet"
    );
    lab.fw(|fw| fw.set_nic_groups(vec!["sg-a".into(), "sg-b".into()]));
    assert!(udp_ok(&lab.net, NET1, VM4, 5353), "sg-b's rule");
    assert!(tcp_ok(&lab.net, NET1, VM4, 8080), "sg-a's rule still");
    assert!(
        !udp_ok(&lab.net, NET1, VM4, 8080),
        "neither allows UDP 8080"
    );
}

/// A long-lived `socat` client: lines written to it go to the server; echoed lines come
/// back on a channel.
struct Conn {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Conn {
    fn open(ns: &Netns, src: &str, dst: &str, port: u16) -> Conn {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "socat",
                "-T",
                "30",
                "-",
                &format!("TCP4:{dst}:{port},bind={src},connect-timeout=1"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat client");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Conn {
            child,
            stdin,
            lines,
        }
    }

    /// Sends a line; returns the echo if it comes back within `wait`.
    fn echo(&mut self, msg: &str, wait: Duration) -> Option<String> {
        writeln!(self.stdin, "{msg}").ok()?;
        self.stdin.flush().ok()?;
        self.lines.recv_timeout(wait).ok()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn firewall_rule_delete_cuts_an_established_connection() {
    let ssh = Rule::inbound(
        Protocol::Tcp,
        Some(PortRange::single(8022)),
        cidr("10.50.0.0/24"),
    );
    let web = Rule::inbound(Protocol::Tcp, Some(PortRange::single(8080)), any4());
    let (r1, r2) = (ssh.clone(), web.clone());
    let mut lab = Lab::new(move |fw| {
        fw.add_rule("sg-a", r1).unwrap();
        fw.add_rule("sg-a", r2).unwrap();
    });
    lab.echo_servers(Side::East, 8022);
    lab.echo_servers(Side::East, 8080);
    let mut a = Conn::open(&lab.net, NET1, VM4, 8022);
    let mut b = Conn::open(&lab.net, NET1, VM4, 8080);
    let w = Duration::from_secs(3);
    assert_eq!(a.echo("one", w).as_deref(), Some("one"), "8022 established");
    assert_eq!(b.echo("one", w).as_deref(), Some("one"), "8080 established");
    let before = lab.counters();
    lab.fw(move |fw| fw.remove_rule("sg-a", &ssh)).unwrap();
    let after = lab.counters();
    assert_eq!(after.flows_revoked, before.flows_revoked + 1, "{after:?}");
    assert_eq!(
        a.echo("two", Duration::from_millis(1500)),
        None,
        "the removed rule's connection is cut"
    );
    assert_eq!(
        b.echo("two", w).as_deref(),
        Some("two"),
        "the still-allowed connection keeps going"
    );
    let c = lab.counters();
    assert!(
        c.drop_tcp_no_flow > after.drop_tcp_no_flow,
        "the cut connection's segments are dropped: {c:?}"
    );
    assert!(!tcp_ok(&lab.net, NET1, VM4, 8022), "and no new one opens");
}

#[test]
fn firewall_ipv6_rules() {
    let mut lab = Lab::new(|fw| {
        fw.add_rule(
            "sg-a",
            Rule::inbound(
                Protocol::Tcp,
                Some(PortRange::single(8080)),
                cidr("fd50::2/128"),
            ),
        )
        .unwrap();
        fw.add_rule(
            "sg-a",
            Rule::inbound(Protocol::Icmpv6, None, cidr("fd50::/64")),
        )
        .unwrap();
    });
    lab.echo_servers(Side::East, 8080);
    assert!(tcp_ok(&lab.net, NET6_2, VM6, 8080), "fd50::2 allowed");
    assert!(!tcp_ok(&lab.net, NET6_1, VM6, 8080), "fd50::1 not");
    assert!(
        !tcp_ok(&lab.net, NET2, VM4, 8080),
        "an IPv6 rule allows no IPv4"
    );
    assert!(ping_ok(&lab.net, NET6_1, VM6), "ICMPv6 from the /64");
    assert!(!ping_ok(&lab.net, NET1, VM4), "ICMPv6 is not ICMP");
}

#[test]
fn firewall_outbound_rules_restrict_the_vm() {
    let mut lab = Lab::new(|fw| {
        fw.add_rule(
            "sg-a",
            Rule::outbound(
                Protocol::Tcp,
                Some(PortRange::single(9443)),
                cidr("10.50.0.1/32"),
            ),
        )
        .unwrap();
    });
    lab.echo_servers(Side::West, 9443);
    lab.echo_servers(Side::West, 9000);
    assert!(
        tcp_ok(&lab.vm, VM4, NET1, 9443),
        "allowed by the outbound rule"
    );
    assert!(!tcp_ok(&lab.vm, VM4, NET2, 9443), "other destination");
    assert!(!tcp_ok(&lab.vm, VM4, NET1, 9000), "other port");
    assert!(!udp_ok(&lab.vm, VM4, NET1, 9443), "other protocol");
    assert!(
        !ping_ok(&lab.vm, VM4, NET1),
        "the default outbound allow is replaced"
    );
}

/// A scapy process that sends a DHCP discover (0.0.0.0:68 → 255.255.255.255:PORT) for
/// each PORT line it reads, and answers "sent" (one process: scapy starts slowly).
const DHCP_SENDER: &str = r#"
import sys
from scapy.all import Ether, IP, UDP, BOOTP, DHCP, sendp
iface = sys.argv[1]
print("ready", flush=True)
for line in sys.stdin:
    p = (Ether(src="02:00:00:00:00:10", dst="ff:ff:ff:ff:ff:ff")
         / IP(src="0.0.0.0", dst="255.255.255.255")
         / UDP(sport=68, dport=int(line))
         / BOOTP(chaddr=bytes.fromhex("020000000010"), xid=0x4242)
         / DHCP(options=[("message-type", "discover"), "end"]))
    sendp(p, iface=iface, verbose=False)
    print("sent", flush=True)
"#;

/// The scapy DHCP sender running in the VM namespace.
struct DhcpSender {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl DhcpSender {
    fn start(lab: &Lab) -> DhcpSender {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                lab.vm.name(),
                "/usr/bin/python3",
                "-c",
                DHCP_SENDER,
                &lab.tap_vm,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = DhcpSender {
            child,
            stdin,
            lines,
        };
        s.expect("ready");
        s
    }

    fn expect(&mut self, what: &str) {
        let got = self.lines.recv_timeout(Duration::from_secs(30));
        assert_eq!(
            got.as_deref(),
            Ok(what),
            "scapy failed (python3-scapy not installed? run cargo xtask deps)"
        );
    }

    /// Sends one discover to `port` and waits until it left.
    fn send(&mut self, port: u16) {
        writeln!(self.stdin, "{port}").unwrap();
        self.stdin.flush().unwrap();
        self.expect("sent");
    }
}

impl Drop for DhcpSender {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Listens for one UDP datagram on `port` in `ns` (socat exits after one datagram).
fn listen_udp_once(ns: &Netns, port: u16) -> KillOnDrop {
    let l = ns.spawn(&[
        "socat",
        "-u",
        &format!("UDP4-RECVFROM:{port},reuseaddr"),
        "STDOUT",
    ]);
    let t0 = Instant::now();
    while ns
        .run_ok(&["ss", "-Hlun", &format!("sport = :{port}")])
        .trim()
        .is_empty()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "listener on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    l
}

/// Sends a DHCP discover to `port` from the VM and returns what the listener on the
/// network side received (it is given 500 ms after the frame left the VM).
fn discover_reaches_network(lab: &Lab, sender: &mut DhcpSender, port: u16) -> Vec<u8> {
    let mut l = listen_udp_once(&lab.net, port);
    sender.send(port);
    std::thread::sleep(Duration::from_millis(500));
    let _ = l.child().kill();
    l.wait_output().stdout
}

#[test]
fn firewall_allows_dhcp_by_default() {
    let lab = Lab::new(|_| {});
    let mut sender = DhcpSender::start(&lab);
    // A DHCP discover from 0.0.0.0:68 reaches the network.
    let got = discover_reaches_network(&lab, &mut sender, 67);
    assert!(
        got.windows(4).any(|w| w == [0x63, 0x82, 0x53, 0x63]),
        "the DHCP discover (magic cookie) must arrive: got {} bytes; {:?}",
        got.len(),
        lab.counters()
    );
    // The same from 0.0.0.0 to another port is not DHCP: denied.
    let got = discover_reaches_network(&lab, &mut sender, 6767);
    assert!(got.is_empty(), "0.0.0.0 → port 6767 must be denied");
    // Outbound rules replace the default, DHCP included.
    lab.fw(|fw| {
        fw.add_rule(
            "sg-a",
            Rule::outbound(Protocol::Tcp, Some(PortRange::single(443)), any4()),
        )
    })
    .unwrap();
    let got = discover_reaches_network(&lab, &mut sender, 67);
    assert!(got.is_empty(), "DHCP denied once outbound rules exist");
    let c = lab.counters();
    assert_eq!(c.passed_new, 1, "{c:?}");
}

#[test]
fn firewall_passes_later_fragments_of_allowed_flows() {
    let lab = Lab::new(|fw| {
        fw.add_rule(
            "sg-a",
            Rule::inbound(Protocol::Icmp, None, cidr("10.50.0.2/32")),
        )
        .unwrap();
    });
    // 3000 bytes of ICMP over a 1500-byte MTU: the request and the reply each go as
    // three fragments; only the first carries the ICMP header.
    let big = |src: &str| {
        lab.net
            .run(&[
                "ping", "-n", "-c", "1", "-W", "2", "-s", "3000", "-I", src, VM4,
            ])
            .status
            .success()
    };
    assert!(big(NET2), "fragmented echo from an allowed source");
    let c = lab.counters();
    assert!(
        c.passed_fragment >= 4,
        "later fragments both ways passed through the fragment table: {c:?}"
    );
    assert!(!big(NET3), "fragmented echo from a denied source");
    let d = lab.counters();
    assert!(
        d.drop_fragment_unknown >= c.drop_fragment_unknown + 2,
        "its later fragments were dropped: {d:?}"
    );
}

#[test]
fn firewall_passes_icmp_errors_about_allowed_flows() {
    let lab = Lab::new(|_| {});
    // The VM sends a datagram to a closed UDP port of NET; NET's kernel answers with an
    // ICMP port unreachable that quotes it: the firewall relates it to the VM's flow and
    // lets it in, so the VM's socket reports the refusal.
    let out = lab.vm.exec(&format!(
        "echo x | socat -t 1 -T 2 - UDP4:{NET1}:9999,bind={VM4}"
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Connection refused"),
        "the port unreachable reached the VM: {err}"
    );
    let c = lab.counters();
    assert!(c.passed_related >= 1, "{c:?}");
}
