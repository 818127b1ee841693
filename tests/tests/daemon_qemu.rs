//! butterflyd end to end with real QEMU guests on vhost-user: two hosts as network
//! namespaces joined by a veth underlay, a `butterflyd` in each (AF_XDP on its veth), one
//! guest per host on VNI 42 attached to a vhost-user server socket of its daemon
//! (`butterfly nic add --type vhost-user-server`). The guests ping each other across the
//! hosts; then host 2's daemon is killed with `kill -9` and restarted: the configuration
//! is restored, QEMU reconnects (`reconnect-ms`) and the ping works again; then guest 2
//! restarts (a new QEMU on the same socket) and the ping works again.
//!
//! Needs root, `qemu-system-x86_64` and the guest image of `cargo xtask guest`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use butterfly_tests::qemu::{Guest, guest_image};
use butterfly_tests::{KillOnDrop, Netns, TempDir, Veth, require_root, require_tool, veth_pair};

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
        assert!(
            cmd.status().expect("cargo build").success(),
            "cargo build -p butterfly --bins failed"
        );
        dir
    })
}

struct Host {
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
            .args(["--nic", &self.nic, "--ip", self.ip])
            .arg("--api-socket")
            .arg(self.socket())
            .arg("--state-file")
            .arg(self.dir.join("state.json"))
            .arg("--vhost-socket-dir")
            .arg(self.dir.join("vhost"))
            .arg("--trace-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting butterflyd");
        let mut guard = KillOnDrop::new(child);
        let t0 = Instant::now();
        while !(self.socket().exists() && self.cli_raw(&["status"]).status.success()) {
            if let Ok(Some(st)) = guard.child().try_wait() {
                panic!("butterflyd exited at start ({st}):\n{}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "butterflyd API not up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.daemon = Some(guard);
    }

    fn cli_raw(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("butterfly"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running butterfly")
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_raw(args);
        assert!(
            out.status.success(),
            "butterfly {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A QEMU guest (TCG) on a serial console driven by the image's `/init` command loop.
#[test]
fn qemu_guests_ping_across_hosts_reconnect_after_kill9_and_guest_restart() {
    require_root();
    require_tool("ip");
    require_tool("qemu-system-x86_64");
    let _ = guest_image();
    let dir = TempDir::new("daemon-qemu");
    let mut underlay: Veth = veth_pair("bdqu");
    let mut hosts = Vec::new();
    for (i, ip) in ["10.99.0.1", "10.99.0.2"].into_iter().enumerate() {
        let ns = Netns::new("bdqh");
        let nic = if i == 0 {
            underlay.move_a_to(&ns);
            underlay.a().to_string()
        } else {
            underlay.move_b_to(&ns);
            underlay.b().to_string()
        };
        ns.addr(&nic, &format!("{ip}/24"));
        ns.up(&nic);
        let d = dir.join(&format!("host{}", i + 1));
        std::fs::create_dir_all(&d).unwrap();
        let mut h = Host {
            daemon: None,
            ns,
            nic,
            ip,
            dir: d,
        };
        h.start();
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
        hosts.push(h);
    }
    let mut guests = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        let mac = format!("52:54:00:00:00:{n:02x}");
        let sock = h.dir.join(format!("vm{n}.sock"));
        let sock_s = sock.to_str().unwrap().to_string();
        let ip = format!("10.0.42.{n}");
        h.cli(&[
            "nic",
            "add",
            "--id",
            &format!("vm{n}"),
            "--mac",
            &mac,
            "--vni",
            "42",
            "--ip",
            &ip,
            "--sg",
            "web",
            "--enable-antispoof",
            "--type",
            "vhost-user-server",
            "--socket-path",
            &sock_s,
        ]);
        assert!(sock.exists(), "no vhost-user socket at {}", sock.display());
        guests.push(Guest::start(
            &format!("vm{n}"),
            &sock,
            &mac,
            &format!("{ip}/24"),
        ));
    }
    for g in &mut guests {
        g.wait_for("BF-IDLE", 0, Duration::from_secs(90));
    }
    guests[0].ping("10.0.42.2", 5);
    guests[1].ping("10.0.42.1", 2);
    let rx: u64 = {
        let out = hosts[0].cli(&["--json", "nic", "stats", "vm1"]);
        let at = out.find("\"rx_packets\":").expect("rx_packets") + 13;
        out[at..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    assert!(rx >= 6, "vm1 rx_packets {rx}");

    // kill -9 host 2's daemon and restart it: vm2's QEMU reconnects to the restored
    // vhost-user socket and traffic resumes.
    {
        let mut d = hosts[1].daemon.take().unwrap();
        let _ = d.child().kill();
        let _ = d.child().wait();
    }
    hosts[1].start();
    guests[0].ping("10.0.42.2", 10);

    // Guest restart: vm2's QEMU is killed and a new one attaches to the same socket.
    drop(guests.pop());
    let sock = hosts[1].dir.join("vm2.sock");
    let mut g2 = Guest::start("vm2-again", &sock, "52:54:00:00:00:02", "10.0.42.2/24");
    g2.wait_for("BF-IDLE", 0, Duration::from_secs(90));
    g2.ping("10.0.42.1", 10);
    guests[0].ping("10.0.42.2", 3);
}
