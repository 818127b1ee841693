//! `cargo xtask demo` with real QEMU guests: two hosts as network namespaces joined by a
//! veth underlay, a `butterflyd` on each (AF_XDP on its underlay veth), three QEMU guests
//! (TCG, the image of `cargo xtask guest`) on vhost-user sockets served by the daemons:
//! guest 1 on host1 and guest 2 on host2 on VNI 42, guest 3 on host2 on VNI 7.
//!
//! Steps: security group `web` (ICMP and TCP/5000 in) through the CLI on both hosts; ping
//! across the hosts; TCP/5000 works (busybox nc); TCP/6000 is blocked by the firewall;
//! guest 3 (VNI 7) reaches nobody on VNI 42; a spoofed source is dropped by antispoof; then
//! `butterfly status`, `nic stats`, the pcap trace of guest 1 (read back with tshark), and
//! teardown (also when a step fails). Exit status 0 only when every step succeeded.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use butterfly_tests::qemu::{Guest, guest_image};
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

struct Lab {
    guests: Vec<Guest>,
    hosts: Vec<Host>,
    _underlay: Veth,
    dir: TempDir,
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
        guests: Vec::new(),
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
    println!("demo: QEMU guests on vhost-user");
    let trace = lab.dir.join("guest1.pcap");
    let trace_s = trace.to_string_lossy().into_owned();
    for (n, h, vni) in [(1u8, 0usize, 42u32), (2, 1, 42), (3, 1, 7)] {
        let mac = format!("52:54:00:42:00:{n:02x}");
        let ip = format!("10.0.42.{n}");
        let sock = lab.hosts[h].dir.join(format!("guest{n}.sock"));
        let sock_s = sock.to_string_lossy().into_owned();
        let vni_s = vni.to_string();
        let id = format!("guest{n}");
        let mut args = vec![
            "nic",
            "add",
            "--id",
            &id,
            "--mac",
            &mac,
            "--vni",
            &vni_s,
            "--ip",
            &ip,
            "--sg",
            "web",
            "--enable-antispoof",
            "--type",
            "vhost-user-server",
            "--socket-path",
            &sock_s,
        ];
        if n == 1 {
            args.extend_from_slice(&["--packet-trace", "--trace-path", &trace_s]);
        }
        print!("{}", lab.hosts[h].cli(&args)?);
        println!(
            "        guest {n}: QEMU on {}, MAC {mac}, {ip}/24, VNI {vni}",
            sock.display()
        );
        lab.guests
            .push(Guest::start(&id, &sock, &mac, &format!("{ip}/24")));
    }
    for g in &mut lab.guests {
        g.wait_for("BF-IDLE", 0, Duration::from_secs(120));
    }
    println!("demo: guests booted");

    s.check(
        "ping guest 1 (host1) → guest 2 (host2) on VNI 42",
        lab.guests[0].try_ping("10.0.42.2", 5).is_ok(),
        "",
    );
    s.check(
        "ping guest 2 (host2) → guest 1 (host1) on VNI 42",
        lab.guests[1].try_ping("10.0.42.1", 3).is_ok(),
        "",
    );

    for port in [5000, 6000] {
        lab.guests[1].sh(&format!(
            "sh -c 'while true; do echo hello-from-port-{port} | nc -l -p {port}; done' </dev/null >/dev/null 2>&1 &"
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, out) = lab.guests[0].sh("echo hi | nc -w 3 10.0.42.2 5000");
    s.check(
        "TCP/5000 guest 1 → guest 2 allowed",
        out.contains("hello-from-port-5000"),
        &out,
    );
    let (_, out) = lab.guests[0].sh("echo hi | nc -w 3 10.0.42.2 6000");
    s.check(
        "TCP/6000 guest 1 → guest 2 blocked by guest 2's firewall",
        !out.contains("hello-from-port-6000"),
        &out,
    );

    let isolated = lab.guests[2].try_ping("10.0.42.1", 1).is_err()
        && lab.guests[2].try_ping("10.0.42.2", 1).is_err();
    s.check("guest 3 on VNI 7 reaches nobody on VNI 42", isolated, "");

    let before = antispoof_drops(&lab.hosts[0], "guest1")?;
    lab.guests[0].sh("ip addr add 10.0.42.99/24 dev eth0");
    let (ok, _) = lab.guests[0].sh("ping -c 3 -W 1 -I 10.0.42.99 10.0.42.2");
    let after = antispoof_drops(&lab.hosts[0], "guest1")?;
    s.check(
        "spoofed source 10.0.42.99 from guest 1 dropped by antispoof",
        !ok && after >= before + 3,
        &format!("antispoof drops {before} → {after}"),
    );

    println!("demo: butterfly status (host1)");
    print!("{}", lab.hosts[0].cli(&["status"])?);
    println!("demo: butterfly nic stats (host1, host2)");
    print!("{}", lab.hosts[0].cli(&["nic", "stats", "guest1"])?);
    print!("{}", lab.hosts[1].cli(&["nic", "stats", "guest2"])?);
    println!("demo: packet trace of guest 1: {}", trace.display());
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
    for t in ["ip", "tshark", "qemu-system-x86_64"] {
        require_tool(t);
    }
    let _ = guest_image();
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
        println!("demo: teardown (guests, daemons, namespaces and interfaces removed)");
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
