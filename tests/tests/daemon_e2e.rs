//! butterflyd end to end: two hosts as network namespaces joined by a veth underlay, the
//! real `butterflyd` in each (started with `ip netns exec`, AF_XDP + XDP steering on its
//! underlay veth), driven by the real `butterfly` CLI over its Unix socket.
//!
//! The "VMs" are the daemons' tap NICs moved into their own namespaces (a tap NIC is the
//! interface named by its id): the kernel of each VM namespace pings, and runs socat,
//! through Butterfly's graph (tap → antispoof → firewall → VTEP → AF_XDP → veth → AF_XDP
//! → VTEP → firewall → antispoof → tap). Flooding uses the default multicast group of
//! each VNI (230.0.0.VNI). Underlay 10.99.0.1/24 and 10.99.0.2/24, VMs in 10.0.42.0/24;
//! nothing leaves the namespaces.
//!
//! Needs root, ping, socat and tshark.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use butterfly_tests::{KillOnDrop, Netns, TempDir, Veth, require_root, require_tool, veth_pair};

/// `target/<profile>` holding `butterfly` and `butterflyd`, built if missing or older
/// than their sources (`cargo build -p butterfly --bins`).
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "butterfly", "--bins", "--quiet"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build -p butterfly --bins");
        assert!(status.success(), "cargo build -p butterfly --bins failed");
        dir
    })
}

fn prerequisites() {
    require_root();
    for t in ["ping", "socat", "tshark", "ip"] {
        require_tool(t);
    }
}

/// One host: its namespace, its underlay interface and its daemon (killed on drop).
struct Host {
    daemon: Option<KillOnDrop>,
    ns: Netns,
    nic: String,
    ip: String,
    dir: PathBuf,
}

impl Host {
    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("butterflyd.log")).unwrap_or_default()
    }

    /// Starts butterflyd in the host's namespace and waits for its API.
    fn start(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("butterflyd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(bin_dir().join("butterflyd"))
            .args(["--nic", &self.nic, "--ip", &self.ip, "--log-level", "info"])
            .arg("--api-socket")
            .arg(self.socket())
            .arg("--state-file")
            .arg(self.dir.join("state.json"))
            .arg("--trace-dir")
            .arg(&self.dir)
            .arg("--vhost-socket-dir")
            .arg(self.dir.join("vhost"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting butterflyd");
        let mut guard = KillOnDrop::new(child);
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = guard.child().try_wait() {
                panic!("butterflyd exited at start ({st}):\n{}", self.log());
            }
            if self.socket().exists() && self.cli_raw(&["status"]).status.success() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "butterflyd API not up after 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.daemon = Some(guard);
    }

    /// `kill -9` the daemon.
    fn kill9(&mut self) {
        let mut d = self.daemon.take().expect("daemon running");
        let _ = d.child().kill();
        let _ = d.child().wait();
    }

    fn cli_raw(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("butterfly"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running butterfly")
    }

    /// Runs the CLI; panics with its output and the daemon's log unless it succeeds.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_raw(args);
        assert!(
            out.status.success(),
            "butterfly {args:?} failed ({}): {}{}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One counter of `butterfly --json nic stats ID`.
    fn stat(&self, id: &str, name: &str) -> u64 {
        let out = self.cli(&["--json", "nic", "stats", id]);
        let key = format!("\"{name}\":");
        let at = out
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in {out}"));
        out[at + key.len()..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("bad {name} in {out}"))
    }
}

/// A "VM": a namespace holding the tap NIC `id` of a host.
struct Vm {
    ns: Netns,
    id: String,
    mac: String,
    ip: String,
}

impl Vm {
    fn ping(&self, dst: &str, count: u32) -> bool {
        let c = count.to_string();
        self.ns
            .run(&["ping", "-c", &c, "-i", "0.2", "-W", "1", dst])
            .status
            .success()
    }

    /// Pings `dst` until one answer comes back (ARP and FDB learning across the hosts
    /// take a round trip or two), at most 10 s.
    fn reach(&self, dst: &str) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self
                .ns
                .run(&["ping", "-c", "1", "-W", "1", dst])
                .status
                .success()
            {
                return true;
            }
        }
        false
    }
}

/// Two hosts joined by a veth underlay, a daemon in each.
struct Lab {
    vms: Vec<Vm>,
    hosts: [Host; 2],
    _underlay: Veth,
    _dir: TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        Lab::with_underlay(tag, ["10.99.0.1", "10.99.0.2"])
    }

    /// Two hosts whose underlay addresses (and VTEP IPs) are `ips` (IPv4 /24 or IPv6
    /// /64, without DAD).
    fn with_underlay(tag: &str, ips: [&str; 2]) -> Lab {
        prerequisites();
        let dir = TempDir::new(&format!("daemon-{tag}"));
        let h1 = Netns::new(&format!("bd{tag}h"));
        let h2 = Netns::new(&format!("bd{tag}h"));
        let mut underlay = veth_pair(&format!("bd{tag}u"));
        underlay.move_a_to(&h1);
        underlay.move_b_to(&h2);
        let (ua, ub) = (underlay.a().to_string(), underlay.b().to_string());
        let mut hosts = [(h1, ua, ips[0]), (h2, ub, ips[1])]
            .into_iter()
            .enumerate()
            .map(|(i, (ns, nic, ip))| {
                if ip.contains(':') {
                    ns.run_ok(&[
                        "ip",
                        "addr",
                        "add",
                        &format!("{ip}/64"),
                        "dev",
                        &nic,
                        "nodad",
                    ]);
                } else {
                    ns.addr(&nic, &format!("{ip}/24"));
                }
                ns.up(&nic);
                let d = dir.join(&format!("host{}", i + 1));
                std::fs::create_dir_all(&d).unwrap();
                Host {
                    daemon: None,
                    ns,
                    nic,
                    ip: ip.to_string(),
                    dir: d,
                }
            });
        let mut hosts: [Host; 2] = [hosts.next().unwrap(), hosts.next().unwrap()];
        for h in &mut hosts {
            h.start();
        }
        Lab {
            vms: Vec::new(),
            hosts,
            _underlay: underlay,
            _dir: dir,
        }
    }

    /// Adds a tap NIC on host `h` (0 or 1) with the CLI, plus `extra` options, and moves
    /// it into a new VM namespace with its MAC and IP. Returns the VM's index.
    fn vm(&mut self, h: usize, vni: u32, ip: &str, extra: &[&str]) -> usize {
        let n = self.vms.len() + 1;
        let id = butterfly_tests::unique_ifname("bdv");
        let mac = format!("52:54:00:42:00:{n:02x}");
        let vni = vni.to_string();
        let mut args = vec![
            "nic", "add", "--id", &id, "--mac", &mac, "--vni", &vni, "--ip", ip, "--type", "tap",
        ];
        args.extend_from_slice(extra);
        self.hosts[h].cli(&args);
        let ns = Netns::new("bdvm");
        ns.disable_ipv6();
        let vm = Vm {
            ns,
            id,
            mac,
            ip: ip.to_string(),
        };
        self.plug(h, &vm);
        self.vms.push(vm);
        self.vms.len() - 1
    }

    /// Moves the (re)created tap of `vm` from host `h` into the VM's namespace.
    fn plug(&self, h: usize, vm: &Vm) {
        self.hosts[h]
            .ns
            .run_ok(&["ip", "link", "set", &vm.id, "netns", vm.ns.name()]);
        vm.ns.run_ok(&[
            "ip", "link", "set", &vm.id, "address", &vm.mac, "mtu", "1400", "up",
        ]);
        if !vm.ip.contains(':') {
            // IPv6 VMs get their address from their test, after enabling IPv6.
            vm.ns.addr(&vm.id, &format!("{}/24", vm.ip));
        }
    }

    /// The security group `web` on both hosts: ICMP and TCP/5000 in from anywhere.
    fn web_sg(&self) {
        for h in &self.hosts {
            h.cli(&["sg", "add", "web"]);
            h.cli(&[
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "icmp",
                "--cidr",
                "0.0.0.0/0",
            ]);
            h.cli(&[
                "sg",
                "rule",
                "add",
                "web",
                "--dir",
                "in",
                "--ip-proto",
                "tcp",
                "--port",
                "5000",
                "--cidr",
                "0.0.0.0/0",
            ]);
        }
    }
}

#[test]
fn ping_across_hosts_same_host_switch_and_vni_isolation() {
    let mut lab = Lab::new("p");
    lab.web_sg();
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = lab.vm(0, 42, "10.0.42.1", &sg);
    let b = lab.vm(1, 42, "10.0.42.2", &sg);
    // VNI 7, same subnet: must reach nobody on VNI 42.
    let c = lab.vm(1, 7, "10.0.42.3", &sg);

    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "VM a (host 1) cannot ping VM b (host 2) on VNI 42\nhost1:\n{}\nhost2:\n{}",
        lab.hosts[0].log(),
        lab.hosts[1].log()
    );
    assert!(lab.vms[a].ping("10.0.42.2", 5), "5 more pings a → b");
    assert!(lab.vms[b].ping("10.0.42.1", 3), "pings b → a");
    assert!(!lab.vms[c].ping("10.0.42.1", 2), "VNI 7 reached VNI 42 (a)");
    assert!(!lab.vms[c].ping("10.0.42.2", 2), "VNI 7 reached VNI 42 (b)");
    assert!(!lab.vms[a].ping("10.0.42.3", 2), "VNI 42 reached VNI 7 (c)");

    // Counters: a sent and received at least the 6 echo requests/replies.
    let id_a = lab.vms[a].id.clone();
    let rx = lab.hosts[0].stat(&id_a, "rx_packets");
    let tx = lab.hosts[0].stat(&id_a, "tx_packets");
    assert!(rx >= 6 && tx >= 6, "nic stats of a: rx {rx} tx {tx}");

    // A second NIC on VNI 42 on host 1 inserts a switch; same-host ping works; deleting
    // it removes the switch and a still reaches b.
    let d = lab.vm(0, 42, "10.0.42.4", &sg);
    let dot = lab.hosts[0].cli(&["status"]);
    assert!(dot.contains("\"switch-42\""), "no switch-42 in: {dot}");
    assert!(lab.vms[d].reach("10.0.42.1"), "same-host ping d → a");
    assert!(lab.vms[d].reach("10.0.42.2"), "d (host 1) → b (host 2)");
    let id_d = lab.vms[d].id.clone();
    lab.hosts[0].cli(&["nic", "del", &id_d]);
    let dot = lab.hosts[0].cli(&["status"]);
    assert!(!dot.contains("switch-42"), "switch-42 still there: {dot}");
    assert!(!dot.contains(&id_d), "NIC d still in the graph: {dot}");
    assert!(
        lab.vms[a].ping("10.0.42.2", 3),
        "a → b after the switch went away"
    );
}

#[test]
fn security_groups_allow_icmp_and_tcp_5000_block_6000_and_spoofing() {
    let mut lab = Lab::new("s");
    lab.web_sg();
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = lab.vm(0, 42, "10.0.42.1", &sg);
    let b = lab.vm(1, 42, "10.0.42.2", &sg);
    assert!(lab.vms[a].reach("10.0.42.2"), "ICMP allowed a → b");

    let _s5000 = lab.vms[b].ns.spawn(&[
        "socat",
        "TCP-LISTEN:5000,reuseaddr,fork",
        "SYSTEM:echo port5000",
    ]);
    let _s6000 = lab.vms[b].ns.spawn(&[
        "socat",
        "TCP-LISTEN:6000,reuseaddr,fork",
        "SYSTEM:echo port6000",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let connect = |port: u16| {
        let out = lab.vms[a].ns.run(&[
            "socat",
            "-T",
            "3",
            "-",
            &format!("TCP:10.0.42.2:{port},connect-timeout=3"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(connect(5000), "port5000", "TCP/5000 is allowed");
    let id_b = lab.vms[b].id.clone();
    let fw_before = lab.hosts[1].stat(&id_b, "dropped_firewall");
    assert_eq!(connect(6000), "", "TCP/6000 is blocked");
    let fw_after = lab.hosts[1].stat(&id_b, "dropped_firewall");
    assert!(
        fw_after > fw_before,
        "b's firewall dropped nothing ({fw_before} → {fw_after})"
    );

    // A rule added live opens TCP/6000 on every NIC using the group.
    lab.hosts[1].cli(&[
        "sg",
        "rule",
        "add",
        "web",
        "--dir",
        "in",
        "--ip-proto",
        "tcp",
        "--port",
        "6000",
        "--cidr",
        "0.0.0.0/0",
    ]);
    assert_eq!(
        connect(6000),
        "port6000",
        "TCP/6000 after the rule was added"
    );

    // A rule whose remote is the members of another group: TCP/7000 from `friends`,
    // blocked while a is not a member, allowed once it is.
    let _s7000 = lab.vms[b].ns.spawn(&[
        "socat",
        "TCP-LISTEN:7000,reuseaddr,fork",
        "SYSTEM:echo port7000",
    ]);
    lab.hosts[1].cli(&["sg", "add", "friends"]);
    lab.hosts[1].cli(&[
        "sg",
        "rule",
        "add",
        "web",
        "--dir",
        "in",
        "--ip-proto",
        "tcp",
        "--port",
        "7000",
        "--sg-members",
        "friends",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        connect(7000),
        "",
        "TCP/7000 before a is a member of friends"
    );
    lab.hosts[1].cli(&["sg", "member", "add", "friends", "10.0.42.1"]);
    assert_eq!(connect(7000), "port7000", "TCP/7000 once a is a member");

    // Spoofed source: a second address on a's interface that is not the NIC's IP.
    let id_a = lab.vms[a].id.clone();
    lab.vms[a].ns.addr(&id_a, "10.0.42.99/24");
    let spoof_before = lab.hosts[0].stat(&id_a, "dropped_antispoof");
    let spoofed = lab.vms[a].ns.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        "10.0.42.99",
        "10.0.42.2",
    ]);
    assert!(!spoofed.status.success(), "a spoofed source got through");
    let spoof_after = lab.hosts[0].stat(&id_a, "dropped_antispoof");
    assert!(
        spoof_after >= spoof_before + 3,
        "antispoof dropped {} of 3 spoofed pings",
        spoof_after - spoof_before
    );
}

#[test]
fn nic_del_readd_and_daemon_kill9_restart_recover_traffic() {
    let mut lab = Lab::new("r");
    lab.web_sg();
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = lab.vm(0, 42, "10.0.42.1", &sg);
    let b = lab.vm(1, 42, "10.0.42.2", &sg);
    assert!(lab.vms[a].reach("10.0.42.2"), "a → b before anything");

    // nic del: b's tap disappears, a reaches nobody; re-add: traffic again.
    let id_b = lab.vms[b].id.clone();
    let mac_b = lab.vms[b].mac.clone();
    lab.hosts[1].cli(&["nic", "del", &id_b]);
    assert!(!lab.vms[a].ping("10.0.42.2", 2), "b answered after nic del");
    lab.hosts[1].cli(&[
        "nic",
        "add",
        "--id",
        &id_b,
        "--mac",
        &mac_b,
        "--vni",
        "42",
        "--ip",
        "10.0.42.2",
        "--type",
        "tap",
        "--sg",
        "web",
        "--enable-antispoof",
    ]);
    lab.plug(1, &lab.vms[b]);
    assert!(lab.vms[a].reach("10.0.42.2"), "a → b after nic re-add");

    // kill -9 host 2's daemon: the configuration survives, the tap comes back (a tap
    // lives as long as its file descriptor: the VM gets a new one), traffic recovers.
    let dump = lab.hosts[1].cli(&["dump"]);
    lab.hosts[1].kill9();
    assert!(
        !lab.vms[a].ping("10.0.42.2", 2),
        "b answered with its daemon dead"
    );
    lab.hosts[1].start();
    assert_eq!(
        lab.hosts[1].cli(&["dump"]),
        dump,
        "configuration after kill -9"
    );
    lab.plug(1, &lab.vms[b]);
    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "a → b after the restart\n{}",
        lab.hosts[1].log()
    );
    assert!(lab.vms[b].ping("10.0.42.1", 3), "b → a after the restart");

    // dump / load round trip on the live daemon: replaying the dump with --replace
    // changes nothing and traffic still flows.
    let file = lab.hosts[1].dir.join("dump.json");
    std::fs::write(&file, lab.hosts[1].cli(&["dump"])).unwrap();
    lab.hosts[1].cli(&["request", "--replace", file.to_str().unwrap()]);
    assert_eq!(
        lab.hosts[1].cli(&["dump"]),
        dump,
        "configuration after load"
    );
    assert!(lab.vms[a].ping("10.0.42.2", 3), "a → b after dump/load");

    // SIGTERM detaches XDP: no program left on the underlay.
    let pid = lab.hosts[1].daemon.as_ref().unwrap().id().to_string();
    butterfly_tests::run_ok(&["kill", "-TERM", &pid]);
    let mut d = lab.hosts[1].daemon.take().unwrap();
    let st = d.child().wait().unwrap();
    assert!(st.success(), "butterflyd after SIGTERM: {st}");
    let link = lab.hosts[1]
        .ns
        .run_ok(&["ip", "-d", "link", "show", &lab.hosts[1].nic]);
    assert!(!link.contains("prog/xdp"), "XDP still attached: {link}");
}

#[test]
fn packet_trace_file_grows_and_tshark_reads_it() {
    let mut lab = Lab::new("t");
    lab.web_sg();
    let trace = lab.hosts[0].dir.join("a.pcap");
    let trace_s = trace.to_str().unwrap().to_string();
    let a = lab.vm(
        0,
        42,
        "10.0.42.1",
        &["--sg", "web", "--packet-trace", "--trace-path", &trace_s],
    );
    let _b = lab.vm(1, 42, "10.0.42.2", &["--sg", "web"]);
    assert!(lab.vms[a].reach("10.0.42.2"), "a → b with the trace on");
    let size1 = std::fs::metadata(&trace).map(|m| m.len()).unwrap_or(0);
    assert!(size1 > 24, "trace file {} is empty", trace.display());
    assert!(lab.vms[a].ping("10.0.42.2", 4), "4 more pings");
    let size2 = std::fs::metadata(&trace).unwrap().len();
    assert!(size2 > size1, "trace did not grow: {size1} → {size2}");
    let req = butterfly_tests::tshark::count(&trace, "icmp.type == 8 && ip.dst == 10.0.42.2");
    let rep = butterfly_tests::tshark::count(&trace, "icmp.type == 0 && ip.src == 10.0.42.2");
    assert!(
        req >= 5 && rep >= 5,
        "tshark: {req} requests, {rep} replies"
    );
    // Trace off: the file stops growing.
    let id_a = lab.vms[a].id.clone();
    lab.hosts[0].cli(&["nic", "update", "--id", &id_a, "--packet-trace", "false"]);
    let size3 = std::fs::metadata(&trace).unwrap().len();
    assert!(lab.vms[a].ping("10.0.42.2", 2), "pings with the trace off");
    assert_eq!(std::fs::metadata(&trace).unwrap().len(), size3);
}

#[test]
fn ipv6_guests_across_hosts_with_bypass_filtering() {
    let mut lab = Lab::new("6");
    // No security group at all: with filtering, inbound would be denied; bypass skips
    // firewall and antispoof.
    let a = lab.vm(0, 42, "fd00:42::1", &["--bypass-filtering"]);
    let b = lab.vm(1, 42, "fd00:42::2", &["--bypass-filtering"]);
    for i in [a, b] {
        let vm = &lab.vms[i];
        // The VM namespaces start with IPv6 off; this test wants it (without DAD delay).
        for key in ["all", "default", &vm.id] {
            vm.ns.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6=0"));
        }
        vm.ns.run_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", vm.ip),
            "dev",
            &vm.id,
            "nodad",
        ]);
    }
    let dot = lab.hosts[0].cli(&["status"]);
    let id_a = lab.vms[a].id.clone();
    assert!(
        !dot.contains(&format!("firewall-{id_a}")) && !dot.contains(&format!("antispoof-{id_a}")),
        "bypass_filtering left filtering bricks: {dot}"
    );
    assert!(
        dot.contains(&format!("\"vm-{id_a}\" -> \"vtep\"")),
        "vm-{id_a} not linked straight to the VTEP: {dot}"
    );
    assert!(
        lab.vms[a].reach("fd00:42::2"),
        "ping fd00:42::1 → fd00:42::2"
    );
    assert!(
        lab.vms[b].ping("fd00:42::1", 3),
        "ping fd00:42::2 → fd00:42::1"
    );
}

#[test]
fn ipv6_underlay_carries_ipv4_guests() {
    let mut lab = Lab::with_underlay("u", ["fd99::1", "fd99::2"]);
    lab.web_sg();
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = lab.vm(0, 42, "10.0.42.1", &sg);
    let b = lab.vm(1, 42, "10.0.42.2", &sg);
    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "a → b over the IPv6 underlay (flood group ff0e::2a)\nhost1:\n{}\nhost2:\n{}",
        lab.hosts[0].log(),
        lab.hosts[1].log()
    );
    assert!(
        lab.vms[b].ping("10.0.42.1", 3),
        "b → a over the IPv6 underlay"
    );
}

#[test]
fn static_flood_lists_replace_the_multicast_group() {
    let mut lab = Lab::new("f");
    lab.web_sg();
    lab.hosts[0].cli(&["flood", "add", "42", "10.99.0.2"]);
    lab.hosts[1].cli(&["flood", "add", "42", "10.99.0.1"]);
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = lab.vm(0, 42, "10.0.42.1", &sg);
    let b = lab.vm(1, 42, "10.0.42.2", &sg);
    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "a → b with static flood lists\nhost1:\n{}",
        lab.hosts[0].log()
    );
    assert!(
        lab.vms[b].ping("10.0.42.1", 3),
        "b → a with static flood lists"
    );
}
