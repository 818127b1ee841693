//! The demo run by `cargo xtask demo`: two hosts, a `butterflyd` on each, VMs on VXLAN.
//!
//! ```text
//!   host1 (netns)                                     host2 (netns)
//!   butterflyd: AF_XDP on the underlay veth           butterflyd: AF_XDP on the underlay veth
//!   10.99.0.1 ═══════════════ veth underlay ═══════════════ 10.99.0.2
//!     │ VNI 42                                          │ VNI 42       │ VNI 7
//!   "VM" a 10.0.42.1                               "VM" b 10.0.42.2  "VM" c 10.0.42.3
//! ```
//!
//! The "VMs" are TAP NICs of the daemons (`butterfly nic add --type tap`) moved into
//! their own network namespaces: the kernel of each namespace plays the guest. (QEMU
//! guests attach the same way with `--type vhost-user-server`; the end-to-end tests cover
//! the tap path, which is fast and deterministic.)
//!
//! Steps: security group `web` (ICMP and TCP/5000 in) on both hosts through the CLI;
//! ping across the hosts; TCP/5000 works; TCP/6000 is blocked by the firewall; the VNI 7
//! VM reaches nobody on VNI 42; a spoofed source is dropped by antispoof; then `butterfly
//! status`, `nic stats`, the pcap trace of VM a (read back with tshark), and teardown
//! (also when a step fails). Exit status 0 only when every step succeeded.
//!
//! The `butterfly` and `butterflyd` binaries come from `BUTTERFLY_BIN_DIR` (set by
//! `cargo xtask demo`), else from the directory of this example's parent.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use butterfly_tests::{KillOnDrop, Netns, TempDir, Veth, require_root, require_tool, veth_pair};

fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BUTTERFLY_BIN_DIR") {
        return d.into();
    }
    // target/debug/examples/demo_butterfly → target/debug
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

struct Host {
    name: &'static str,
    daemon: Option<KillOnDrop>,
    ns: Netns,
    nic: String,
    ip: &'static str,
    dir: PathBuf,
}

impl Host {
    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("butterflyd.log")).unwrap_or_default()
    }

    fn start(&mut self) -> Result<(), String> {
        let log =
            std::fs::File::create(self.dir.join("butterflyd.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(bin_dir().join("butterflyd"))
            .args(["--nic", &self.nic, "--ip", self.ip])
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
            .stderr(log);
        println!(
            "        $ ip netns exec {} butterflyd --nic {} --ip {} --api-socket {} ...",
            self.ns.name(),
            self.nic,
            self.ip,
            self.socket().display()
        );
        let mut guard = KillOnDrop::new(cmd.spawn().map_err(|e| format!("butterflyd: {e}"))?);
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = guard.child().try_wait() {
                return Err(format!("butterflyd exited ({st}):\n{}", self.log()));
            }
            if self.socket().exists() && self.cli_raw(&["status"]).status.success() {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!("butterflyd API not up after 20 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.daemon = Some(guard);
        Ok(())
    }

    fn cli_raw(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("butterfly"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running butterfly")
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        println!("        [{}] $ butterfly {}", self.name, args.join(" "));
        let out = self.cli_raw(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "butterfly {args:?}: {}{text}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

struct Vm {
    ns: Netns,
    id: String,
}

impl Vm {
    fn ping(&self, dst: &str, count: u32) -> bool {
        self.ns
            .run(&[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                dst,
            ])
            .status
            .success()
    }

    fn reach(&self, dst: &str) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self.ping(dst, 1) {
                return true;
            }
        }
        false
    }

    fn tcp(&self, dst: &str, port: u16) -> String {
        let out = self.ns.run(&[
            "socat",
            "-T",
            "3",
            "-",
            &format!("TCP:{dst}:{port},connect-timeout=3"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

struct Lab {
    servers: Vec<KillOnDrop>,
    vms: Vec<Vm>,
    hosts: Vec<Host>,
    _underlay: Veth,
    dir: TempDir,
}

impl Lab {
    fn vm(&mut self, h: usize, n: u8, vni: u32, ip: &str, extra: &[&str]) -> Result<usize, String> {
        let id = butterfly_tests::unique_ifname(&format!("vm{n}"));
        let mac = format!("52:54:00:42:00:{n:02x}");
        let vni = vni.to_string();
        let mut args = vec![
            "nic",
            "add",
            "--id",
            &id,
            "--mac",
            &mac,
            "--vni",
            &vni,
            "--ip",
            ip,
            "--sg",
            "web",
            "--enable-antispoof",
            "--type",
            "tap",
        ];
        args.extend_from_slice(extra);
        self.hosts[h].cli(&args)?;
        let ns = Netns::new(&format!("demovm{n}"));
        ns.disable_ipv6();
        self.hosts[h]
            .ns
            .run_ok(&["ip", "link", "set", &id, "netns", ns.name()]);
        ns.run_ok(&[
            "ip", "link", "set", &id, "address", &mac, "mtu", "1400", "up",
        ]);
        ns.addr(&id, &format!("{ip}/24"));
        println!(
            "        VM {n}: tap '{id}' of {} in netns {}, MAC {mac}, {ip}, VNI {vni}",
            self.hosts[h].name,
            ns.name()
        );
        self.vms.push(Vm { ns, id });
        Ok(self.vms.len() - 1)
    }
}

struct Steps {
    n: usize,
    failed: Vec<String>,
}

impl Steps {
    fn check(&mut self, what: &str, ok: bool, detail: &str) {
        self.n += 1;
        if ok {
            println!("demo: [ok]   {what}");
        } else {
            println!("demo: [FAIL] {what}\n{detail}");
            self.failed.push(what.to_string());
        }
    }
}

fn setup() -> Result<Lab, String> {
    let dir = TempDir::new("butterfly-demo");
    let h1 = Netns::new("demohost");
    let h2 = Netns::new("demohost");
    let mut underlay = veth_pair("demou");
    underlay.move_a_to(&h1);
    underlay.move_b_to(&h2);
    let mut hosts = Vec::new();
    for (name, ns, nic, ip) in [
        ("host1", h1, underlay.a().to_string(), "10.99.0.1"),
        ("host2", h2, underlay.b().to_string(), "10.99.0.2"),
    ] {
        ns.addr(&nic, &format!("{ip}/24"));
        ns.up(&nic);
        let d = dir.join(name);
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let mut h = Host {
            name,
            daemon: None,
            ns,
            nic,
            ip,
            dir: d,
        };
        h.start()?;
        hosts.push(h);
    }
    Ok(Lab {
        servers: Vec::new(),
        vms: Vec::new(),
        hosts,
        _underlay: underlay,
        dir,
    })
}

fn demo(lab: &mut Lab, s: &mut Steps) -> Result<(), String> {
    println!("demo: security group 'web' (ICMP and TCP/5000 in) on both hosts");
    for h in &lab.hosts {
        h.cli(&["sg", "add", "web"])?;
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
        ])?;
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
        ])?;
    }
    println!("demo: VMs (tap NICs in their own network namespaces standing in for guests)");
    let trace = lab.dir.join("vm1.pcap");
    let trace_s = trace.to_string_lossy().into_owned();
    let a = lab.vm(
        0,
        1,
        42,
        "10.0.42.1",
        &["--packet-trace", "--trace-path", &trace_s],
    )?;
    let b = lab.vm(1, 2, 42, "10.0.42.2", &[])?;
    let c = lab.vm(1, 3, 7, "10.0.42.3", &[])?;

    let ok = lab.vms[a].reach("10.0.42.2") && lab.vms[a].ping("10.0.42.2", 3);
    s.check("ping VM 1 (host1) → VM 2 (host2) on VNI 42", ok, "");
    s.check(
        "ping VM 2 (host2) → VM 1 (host1) on VNI 42",
        lab.vms[b].ping("10.0.42.1", 3),
        "",
    );

    for port in [5000u16, 6000] {
        lab.servers.push(lab.vms[b].ns.spawn(&[
            "socat",
            &format!("TCP-LISTEN:{port},reuseaddr,fork"),
            &format!("SYSTEM:echo hello-from-port-{port}"),
        ]));
    }
    std::thread::sleep(Duration::from_millis(300));
    let got = lab.vms[a].tcp("10.0.42.2", 5000);
    s.check(
        "TCP/5000 VM 1 → VM 2 allowed",
        got == "hello-from-port-5000",
        &got,
    );
    let got = lab.vms[a].tcp("10.0.42.2", 6000);
    s.check(
        "TCP/6000 VM 1 → VM 2 blocked by VM 2's firewall",
        got.is_empty(),
        &got,
    );

    let isolated = !lab.vms[c].ping("10.0.42.1", 2) && !lab.vms[c].ping("10.0.42.2", 2);
    s.check("VM 3 on VNI 7 reaches nobody on VNI 42", isolated, "");

    let id_a = lab.vms[a].id.clone();
    let spoof_before = antispoof_drops(&lab.hosts[0], &id_a)?;
    lab.vms[a].ns.addr(&id_a, "10.0.42.99/24");
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
    let spoof_after = antispoof_drops(&lab.hosts[0], &id_a)?;
    s.check(
        "spoofed source 10.0.42.99 from VM 1 dropped by antispoof",
        !spoofed.status.success() && spoof_after >= spoof_before + 3,
        &format!("antispoof drops {spoof_before} → {spoof_after}"),
    );

    println!("demo: butterfly status (host1)");
    print!("{}", lab.hosts[0].cli(&["status"])?);
    println!("demo: butterfly nic stats (host1, host2)");
    print!("{}", lab.hosts[0].cli(&["nic", "stats", &id_a])?);
    print!("{}", lab.hosts[1].cli(&["nic", "stats", &lab.vms[b].id])?);
    println!("demo: packet trace of VM 1: {}", trace.display());
    let frames = butterfly_tests::tshark::count(&trace, "icmp");
    s.check(
        &format!("pcap trace readable by tshark ({frames} ICMP frames)"),
        frames >= 6,
        "",
    );
    Ok(())
}

fn antispoof_drops(h: &Host, id: &str) -> Result<u64, String> {
    let out = h.cli(&["--json", "nic", "stats", id])?;
    let key = "\"dropped_antispoof\":";
    let at = out
        .find(key)
        .ok_or_else(|| format!("no counter in {out}"))?;
    out[at + key.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .map_err(|_| format!("bad counter in {out}"))
}

fn main() -> ExitCode {
    require_root();
    for t in ["ping", "socat", "tshark", "ip"] {
        require_tool(t);
    }
    println!("demo: two hosts (network namespaces) joined by a veth underlay, butterflyd on each");
    let mut steps = Steps {
        n: 0,
        failed: Vec::new(),
    };
    let result = setup().and_then(|mut lab| {
        let r = demo(&mut lab, &mut steps);
        if r.is_err() || !steps.failed.is_empty() {
            for h in &lab.hosts {
                println!("demo: {} daemon log:\n{}", h.name, h.log());
            }
        }
        println!("demo: teardown (daemons stopped, namespaces and interfaces removed)");
        drop(lab);
        r
    });
    if let Err(e) = result {
        println!("demo: [FAIL] {e}");
        return ExitCode::FAILURE;
    }
    if steps.failed.is_empty() {
        println!("demo: all {} checks passed", steps.n);
        ExitCode::SUCCESS
    } else {
        println!(
            "demo: {} of {} checks failed: {:?}",
            steps.failed.len(),
            steps.n,
            steps.failed
        );
        ExitCode::FAILURE
    }
}
