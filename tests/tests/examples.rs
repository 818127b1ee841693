//! The library examples of `dataplane/examples/` run as their users would run them: the
//! example binary (built here with `cargo build -p packetgraph --examples`) inside a
//! network namespace, its interfaces moved into other namespaces (or a veth underlay and
//! a kernel `vxlan` peer), real traffic with ping and socat, then SIGTERM: the example
//! must exit 0 and print its counters, which are checked too.
//!
//! - `firewall`: ICMP and TCP/5000 in, everything out; TCP/6000 in is blocked (the
//!   listener never gets a connection) and counted `drop_denied`.
//! - `switch`: three ports, every pair pings both ways; once learned, unicast between two
//!   ports does not reach the third.
//! - `vms_bridged`: a QEMU guest on a vhost-user port and a TAP port in a namespace ping
//!   each other through the switch.
//! - `vms_vxlan`: a QEMU guest behind firewall and antispoof, VXLAN over AF_XDP on a veth
//!   to a kernel `vxlan` device in another namespace (multicast flooding, VNI 42): the
//!   guest's ping out passes (outbound, stateful), the peer's ping in is denied by the
//!   rules (no `in:icmp`), a spoofed source address is dropped by antispoof.
//!
//! Needs root, `ping`, `socat`, `ip`, and for the VM tests `qemu-system-x86_64` and the
//! guest image of `cargo xtask guest`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use butterfly_tests::qemu::{Guest, guest_image};
use butterfly_tests::{
    KillOnDrop, Netns, TempDir, require_root, require_tool, unique_ifname, veth_pair,
};

/// Builds the examples once per test process and returns the path of `name`.
fn example(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/examples-HASH → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "packetgraph", "--examples", "--quiet"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .expect("cannot run cargo to build the examples");
        assert!(st.success(), "cargo build -p packetgraph --examples failed");
        profile_dir.join("examples")
    });
    let bin = dir.join(name);
    assert!(bin.exists(), "example binary {} missing", bin.display());
    bin
}

/// An example running in a namespace; SIGKILLed on drop if [`Running::stop`] was not
/// called.
struct Running {
    child: Option<KillOnDrop>,
    what: String,
}

impl Running {
    fn start(ns: &Netns, bin: &Path, args: &[&str]) -> Running {
        let mut argv = vec![bin.to_str().expect("UTF-8 path")];
        argv.extend_from_slice(args);
        Running {
            child: Some(ns.spawn(&argv)),
            what: format!("{argv:?}"),
        }
    }

    /// Fails the test (with the example's output) when it exited early.
    fn check_alive(&mut self) {
        let c = self.child.as_mut().expect("running");
        if let Ok(Some(st)) = c.child().try_wait() {
            let out = self.child.take().expect("running").wait_output();
            panic!("{} exited early ({st}):\n{}", self.what, text(&out));
        }
    }

    /// Stops the example, whatever its state, and returns its output (for failure
    /// messages).
    fn stop_any(mut self) -> String {
        let c = self.child.take().expect("running");
        text(&c.interrupt_and_wait())
    }

    /// Sends SIGTERM, waits (10 s at most) and returns stdout (the counters); panics
    /// unless the example exits 0.
    fn stop(mut self) -> String {
        let mut c = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while c.child().try_wait().ok().flatten().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{} did not exit within 10 s of SIGTERM",
                self.what
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = c.wait_output();
        assert!(
            out.status.success(),
            "{} exited with {} after SIGTERM:\n{}",
            self.what,
            out.status,
            text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            stdout.contains("counters of graph"),
            "no counters printed at exit:\n{}",
            text(&out)
        );
        stdout
    }
}

fn text(out: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The value of counter `brick.name` in an example's exit report (0 when not printed:
/// the report leaves out zero counters).
fn counter(report: &str, key: &str) -> u64 {
    let needle = format!("{key}: ");
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(&needle))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

/// The (rx, tx) packet counts of `brick.side` (`"vm0.west"`) in an exit report.
fn side(report: &str, key: &str) -> (u64, u64) {
    let needle = format!("{key}: rx ");
    let line = report
        .lines()
        .find_map(|l| l.trim().strip_prefix(&needle))
        .unwrap_or_else(|| panic!("no {key} in the report:\n{report}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    // "N packets B bytes, tx N packets B bytes"
    (
        words[0].parse().expect("rx packets"),
        words[5].parse().expect("tx packets"),
    )
}

/// Waits until interface `dev` exists in `ns` (the example created it).
fn wait_interface(ns: &Netns, dev: &str, run: &mut Running) {
    let t = Instant::now();
    while !ns.run(&["ip", "link", "show", dev]).status.success() {
        run.check_alive();
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{dev} not created in netns {}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Moves `dev` from `from` into `to`, gives it `cidr`, disables IPv6 on it (no router
/// solicitations or MLD reports to count) and sets it up.
fn plug(from: &Netns, to: &Netns, dev: &str, cidr: &str) {
    from.run_ok(&["ip", "link", "set", dev, "netns", to.name()]);
    to.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6=1"));
    to.addr(dev, cidr);
    to.up(dev);
}

fn ping(ns: &Netns, ip: &str) -> Output {
    ns.run(&["ping", "-c", "3", "-i", "0.2", "-W", "2", ip])
}

fn assert_ping(ns: &Netns, ip: &str) {
    // The first ping may lose a packet to ARP and learning: try a few rounds.
    let mut last = None;
    for _ in 0..3 {
        let out = ping(ns, ip);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss")
        {
            return;
        }
        last = Some(out);
    }
    panic!(
        "ping {ip} from {} failed:\n{}",
        ns.name(),
        text(&last.expect("tried"))
    );
}

/// A TCP listener in `ns` on `port` that answers `reply` to the first connection and
/// exits.
fn listen(ns: &Netns, port: u16, reply: &str) -> KillOnDrop {
    let l = ns.spawn(&[
        "socat",
        &format!("TCP-LISTEN:{port},reuseaddr"),
        &format!("SYSTEM:echo {reply}"),
    ]);
    let t = Instant::now();
    while !ns
        .run(&["sh", "-c", &format!("ss -ltn | grep -q ':{port} '")])
        .status
        .success()
    {
        assert!(t.elapsed() < Duration::from_secs(5), "socat not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    l
}

/// Connects from `ns` to `ip:port` (2 s timeout); the bytes received, or `None` when
/// the connection failed.
fn connect(ns: &Netns, ip: &str, port: u16) -> Option<String> {
    let out = ns.run(&[
        "socat",
        "-T",
        "3",
        "-u",
        &format!("TCP:{ip}:{port},connect-timeout=2"),
        "-",
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn firewall_example_passes_allowed_traffic_and_blocks_the_rest() {
    require_root();
    for t in ["ip", "ping", "socat", "ss"] {
        require_tool(t);
    }
    let bin = example("firewall");
    let mid = Netns::new("exfw");
    let outside = Netns::new("exfwo");
    let inside = Netns::new("exfwi");
    let (tap_out, tap_in) = (unique_ifname("exfo"), unique_ifname("exfi"));
    let mut fw = Running::start(
        &mid,
        &bin,
        &[
            "--outside",
            &tap_out,
            "--inside",
            &tap_in,
            "--rule",
            "in:icmp",
            "--rule",
            "in:tcp:5000",
            "--rule",
            "out:all",
        ],
    );
    wait_interface(&mid, &tap_out, &mut fw);
    wait_interface(&mid, &tap_in, &mut fw);
    plug(&mid, &outside, &tap_out, "10.77.0.1/24");
    plug(&mid, &inside, &tap_in, "10.77.0.2/24");

    // ICMP both ways: `in:icmp` inbound, `out:all` outbound.
    assert_ping(&outside, "10.77.0.2");
    assert_ping(&inside, "10.77.0.1");

    // TCP/5000 inbound is allowed.
    let l5000 = listen(&inside, 5000, "hello-5000");
    assert_eq!(
        connect(&outside, "10.77.0.2", 5000).as_deref(),
        Some("hello-5000\n")
    );
    drop(l5000);

    // TCP/6000 inbound is not: the connection times out, the listener never gets it.
    let mut l6000 = listen(&inside, 6000, "hello-6000");
    assert_eq!(connect(&outside, "10.77.0.2", 6000), None);
    assert!(
        l6000.child().try_wait().unwrap().is_none(),
        "the inside listener on 6000 got a connection through the firewall"
    );
    drop(l6000);

    // Outbound TCP to any port passes, and its answers come back (stateful).
    let lout = listen(&outside, 6000, "hello-out");
    assert_eq!(
        connect(&inside, "10.77.0.1", 6000).as_deref(),
        Some("hello-out\n")
    );
    drop(lout);

    fw.check_alive();
    let report = fw.stop();
    let denied = counter(&report, "fw.drop_denied");
    assert!(denied >= 1, "no SYN to 6000 counted as denied:\n{report}");
    // Flows: 2 pings (≥ 1 flow each), TCP 5000, TCP out.
    assert!(
        counter(&report, "fw.flows_created") >= 4,
        "flows:\n{report}"
    );
    assert!(counter(&report, "fw.passed_flow") > 0, "{report}");
    assert!(counter(&report, "outside.rx_packets") > 0, "{report}");
    assert!(counter(&report, "inside.tx_packets") > 0, "{report}");
}

#[test]
fn switch_example_forwards_between_all_ports_and_learns() {
    require_root();
    for t in ["ip", "ping"] {
        require_tool(t);
    }
    let bin = example("switch");
    let mid = Netns::new("exsw");
    let hosts: Vec<Netns> = (0..3).map(|_| Netns::new("exswh")).collect();
    let ports: Vec<String> = (0..3).map(|_| unique_ifname("exsp")).collect();
    let mut args = Vec::new();
    for p in &ports {
        args.extend(["--port", p.as_str()]);
    }
    let mut sw = Running::start(&mid, &bin, &args);
    for (i, (p, h)) in ports.iter().zip(&hosts).enumerate() {
        wait_interface(&mid, p, &mut sw);
        plug(&mid, h, p, &format!("10.78.0.{}/24", i + 1));
    }

    // Every ordered pair.
    for (i, h) in hosts.iter().enumerate() {
        for j in 0..3 {
            if i != j {
                assert_ping(h, &format!("10.78.0.{}", j + 1));
            }
        }
    }

    // All MACs are learned now: unicast between host 0 and host 1 must not be flooded to
    // host 2 (its TAP receives nothing while they ping).
    let before = hosts[2].link_stat(&ports[2], "rx_packets");
    assert_ping(&hosts[0], "10.78.0.2");
    let after = hosts[2].link_stat(&ports[2], "rx_packets");
    assert_eq!(
        after - before,
        0,
        "known unicast between ports 0 and 1 reached port 2"
    );

    sw.check_alive();
    let report = sw.stop();
    assert!(counter(&report, "switch.learned") >= 3, "{report}");
    assert!(counter(&report, "switch.unicast") > 0, "{report}");
    assert!(counter(&report, "switch.flooded") > 0, "{report}");
    for p in &ports {
        assert!(counter(&report, &format!("{p}.rx_packets")) > 0, "{report}");
        assert!(counter(&report, &format!("{p}.tx_packets")) > 0, "{report}");
    }
}

fn require_qemu() {
    require_tool("qemu-system-x86_64");
    let _ = guest_image();
}

#[test]
fn vms_bridged_example_guest_and_tap_ping_each_other() {
    require_root();
    for t in ["ip", "ping"] {
        require_tool(t);
    }
    require_qemu();
    let bin = example("vms_bridged");
    let dir = TempDir::new("ex-vmsbr");
    let (sock0, sock1) = (dir.join("vm0.sock"), dir.join("vm1.sock"));
    let mid = Netns::new("exvb");
    let host = Netns::new("exvbh");
    let tap = unique_ifname("exvt");
    let mut ex = Running::start(
        &mid,
        &bin,
        &[
            "--vm",
            sock0.to_str().unwrap(),
            "--vm",
            sock1.to_str().unwrap(),
            "--tap",
            &tap,
        ],
    );
    wait_interface(&mid, &tap, &mut ex);
    plug(&mid, &host, &tap, "10.79.0.100/24");
    assert!(sock0.exists(), "no vhost-user socket {}", sock0.display());

    let mut guest = Guest::start("vm0", &sock0, "52:54:00:00:79:01", "10.79.0.1/24");
    guest.wait_for("BF-IDLE", 0, Duration::from_secs(90));
    guest.ping("10.79.0.100", 10);
    assert_ping(&host, "10.79.0.1");
    ex.check_alive();
    drop(guest);

    let report = ex.stop();
    assert!(counter(&report, "switch.learned") >= 2, "{report}");
    // vm0 hangs on the switch by its WEST side: tx = from the guest, rx = to the guest.
    let (rx, tx) = side(&report, "vm0.west");
    assert!(rx >= 6 && tx >= 6, "vm0 rx {rx} tx {tx}:\n{report}");
    assert!(counter(&report, "host.tx_packets") >= 3, "{report}");
    assert!(counter(&report, "host.rx_packets") >= 3, "{report}");
}

#[test]
fn vms_vxlan_example_guest_reaches_a_kernel_vxlan_peer_through_firewall_and_antispoof() {
    vms_vxlan(false);
}

#[test]
fn vms_vxlan_example_over_a_tap_underlay() {
    vms_vxlan(true);
}

/// One guest behind the `vms_vxlan` example; its VXLAN peer a kernel `vxlan` device in
/// namespace `remote`. Underlay: AF_XDP on a veth (the example's namespace owns the
/// VTEP address), or (`tap`) the example's TAP moved into `remote` (the VTEP is a
/// station behind it that answers ARP itself).
fn vms_vxlan(tap: bool) {
    require_root();
    for t in ["ip", "ping", "ethtool"] {
        require_tool(t);
    }
    require_qemu();
    let bin = example("vms_vxlan");
    let dir = TempDir::new("ex-vmsvx");
    let sock = dir.join("vm0.sock");
    let host = Netns::new("exvx");
    let remote = Netns::new("exvxr");
    let tap_name = unique_ifname("exvxt");
    // The veth underlay (AF_XDP case), deleted on drop.
    let mut underlay = (!tap).then(|| veth_pair("exvxu"));
    let (nic, peer_dev) = match &mut underlay {
        None => (tap_name.clone(), tap_name.clone()),
        Some(u) => {
            u.move_a_to(&host);
            u.move_b_to(&remote);
            let (ua, ub) = (u.a().to_string(), u.b().to_string());
            host.addr(&ua, "192.168.79.1/24");
            host.up(&ua);
            remote.addr(&ub, "192.168.79.2/24");
            remote.up(&ub);
            (ua, ub)
        }
    };

    // No `in:icmp`: the peer may not ping the VM, the VM may ping out (default outbound
    // from its own address, stateful answers).
    let vm = format!("{},52:54:00:00:80:01,10.80.0.1", sock.display());
    let mut args = vec![
        "--nic",
        &nic,
        "--vtep-ip",
        "192.168.79.1",
        "--vni",
        "42",
        "--vm",
        &vm,
        "--rule",
        "in:tcp:5000",
    ];
    if tap {
        args.extend(["--underlay", "tap"]);
    }
    let mut ex = Running::start(&host, &bin, &args);
    if tap {
        wait_interface(&host, &tap_name, &mut ex);
        plug(&host, &remote, &tap_name, "192.168.79.2/24");
    }
    let t = Instant::now();
    while !sock.exists() {
        ex.check_alive();
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no vhost-user socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // veth's (and tap's) TX checksum offload would leave the kernel vxlan's outer UDP
    // checksum partial (the VTEP drops those as drop_udp_checksum): compute it in
    // software.
    remote.run_ok(&["ethtool", "-K", &peer_dev, "tx", "off"]);
    // The peer: a kernel vxlan device on VNI 42 flooding to butterfly's group for 42.
    remote.run_ok(&[
        "ip",
        "link",
        "add",
        "vx42",
        "type",
        "vxlan",
        "id",
        "42",
        "group",
        "230.0.0.42",
        "dev",
        &peer_dev,
        "dstport",
        "4789",
        "local",
        "192.168.79.2",
    ]);
    remote.sysctl("net.ipv6.conf.vx42.disable_ipv6=1");
    remote.addr("vx42", "10.80.0.100/24");
    remote.up("vx42");

    let mut guest = Guest::start("vm0", &sock, "52:54:00:00:80:01", "10.80.0.1/24");
    guest.wait_for("BF-IDLE", 0, Duration::from_secs(90));
    if let Err(last) = guest.try_ping("10.80.0.100", 10) {
        let report = ex.stop_any();
        panic!("the guest cannot ping the VXLAN peer:\n{last}\nexample:\n{report}");
    }

    // Inbound ICMP is denied: the peer's pings get no answer.
    let out = ping(&remote, "10.80.0.1");
    assert!(
        !out.status.success(),
        "the peer pinged the VM although no rule allows inbound ICMP:\n{}",
        text(&out)
    );

    // A spoofed source: the guest pings from an address that is not its own.
    let (_, _) = guest.sh("ip addr add 10.80.0.66/24 dev eth0");
    let (ok, spoofed) = guest.sh("ping -c 2 -W 1 -I 10.80.0.66 10.80.0.100");
    assert!(!ok, "a spoofed ping got answers:\n{spoofed}");
    ex.check_alive();
    drop(guest);

    let report = ex.stop();
    assert!(counter(&report, "fw0.drop_denied") >= 3, "{report}");
    assert!(counter(&report, "fw0.passed_new") >= 1, "{report}");
    assert!(counter(&report, "as0.drop_ipv4") >= 2, "{report}");
    assert!(counter(&report, "vtep.encapsulated") >= 3, "{report}");
    assert!(counter(&report, "vtep.decapsulated") >= 3, "{report}");
    if tap {
        // The VTEP answered the peer kernel's ARP for its address itself.
        assert!(counter(&report, "vtep.nd_answers") >= 1, "{report}");
        assert!(!report.contains("xdp steering"), "{report}");
    } else {
        let steered: u64 = report
            .split("xdp steering: steered ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(steered >= 3, "{report}");
    }
}
