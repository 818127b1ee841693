//! Shared pieces of the AF_XDP end-to-end tests: a namespace pair joined by a veth with a
//! kernel VXLAN device on the peer side, and a recording sink brick.
//!
//! Namespace and veth handling stays minimal here (create, run, enter, delete on drop);
//! it follows the conventions of `butterfly_tests::netns`.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use nix::sched::{CloneFlags, setns};
use packetgraph::{Brick, BrickError, Burst, Emit, Poles, Side};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless root.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("needs root (CAP_NET_ADMIN, CAP_BPF): run as root / via cargo xtask test");
    }
}

/// Panics unless `tool` runs.
pub fn require_tool(tool: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(tool).exists());
    if !found {
        panic!("{tool} not found: run cargo xtask deps");
    }
}

/// `prefix` + pid + counter, at most 15 bytes.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let p: String = prefix.chars().take(6).collect();
    format!("{p}{:x}{:x}", std::process::id() % 0xfffff, n % 0xff)
}

/// Runs a command, panics with its stderr unless it succeeds; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique(prefix);
        run_ok(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.run_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
    }

    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!(
                "{args:?} in {} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn sh(&self, cmd: &str) -> Output {
        self.run(&["sh", "-c", cmd])
    }

    pub fn spawn(&self, args: &[&str]) -> KillOnDrop {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?}: {e}"));
        KillOnDrop(Some(c))
    }

    /// Switches the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> NsGuard {
        let back = File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
        NsGuard { back }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(o) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

pub struct NsGuard {
    back: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        setns(self.back.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns back");
    }
}

/// A child process killed on drop.
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    /// Waits for the process and returns its output.
    pub fn wait_output(mut self) -> Output {
        self.0
            .take()
            .expect("child")
            .wait_with_output()
            .expect("wait")
    }

    /// Sends SIGINT (tcpdump then writes its file and exits) and waits.
    pub fn interrupt_and_wait(mut self) -> Output {
        let c = self.0.take().expect("child");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        c.wait_with_output().expect("wait")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Addresses of the test topology.
pub const HOST_V4: &str = "10.77.0.1";
pub const PEER_V4: &str = "10.77.0.2";
pub const HOST_V6: &str = "fd77::1";
pub const PEER_V6: &str = "fd77::2";
pub const GROUP_V4: &str = "239.1.1.42";
/// Overlay addresses on the peer's vxlan devices (VNI 42, 43 and 44).
pub const PEER_OVERLAY_42: &str = "192.168.42.2";
pub const PEER_OVERLAY_43: &str = "192.168.43.2";
pub const PEER_OVERLAY_44: &str = "192.168.44.2";

/// Two namespaces ("host" runs Butterfly, "peer" runs the kernel's VXLAN) joined by a veth:
/// `host_if` = 10.77.0.1/24 + fd77::1/64, `peer_if` = 10.77.0.2/24 + fd77::2/64.
/// On the peer: vx42 (VNI 42 unicast to 10.77.0.1, 192.168.42.2/24), vx43 (VNI 43,
/// multicast group 239.1.1.42, 192.168.43.2/24), vx44 (VNI 44 over IPv6 to fd77::1,
/// 192.168.44.2/24). All on UDP port 4789, TX checksum offload off on the peer.
pub struct Topology {
    pub host: Netns,
    pub peer: Netns,
    pub host_if: String,
    pub peer_if: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Topology {
        require_root();
        let host = Netns::new(&format!("{prefix}h"));
        let peer = Netns::new(&format!("{prefix}p"));
        let host_if = unique("xh");
        let peer_if = unique("xp");
        host.run_ok(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns",
            &peer.name,
        ]);
        for (ns, dev, v4, v6) in [
            (&host, &host_if, HOST_V4, HOST_V6),
            (&peer, &peer_if, PEER_V4, PEER_V6),
        ] {
            ns.run_ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.run_ok(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.run_ok(&["ip", "link", "set", dev, "up"]);
        }
        peer.run_ok(&["ethtool", "-K", &peer_if, "tx", "off"]);
        // No IPv6 on the overlay devices: no router solicitations or MLD reports in VXLAN,
        // so the tests count exactly the frames they send.
        peer.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
        let vx = [
            (
                "vx42",
                "42",
                vec!["remote", HOST_V4, "local", PEER_V4],
                PEER_OVERLAY_42,
            ),
            (
                "vx43",
                "43",
                vec!["group", GROUP_V4, "dev", &peer_if],
                PEER_OVERLAY_43,
            ),
            (
                "vx44",
                "44",
                vec!["remote", HOST_V6, "local", PEER_V6],
                PEER_OVERLAY_44,
            ),
        ];
        for (name, vni, extra, addr) in vx {
            let mut args = vec!["ip", "link", "add", name, "type", "vxlan", "id", vni];
            args.extend(extra.iter().copied());
            args.extend(["dstport", "4789", "udp6zerocsumtx", "udp6zerocsumrx"]);
            peer.run_ok(&args);
            peer.run_ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", name]);
            peer.run_ok(&["ip", "link", "set", name, "up"]);
        }
        Topology {
            host,
            peer,
            host_if,
            peer_if,
        }
    }

    /// `ip -d link show` of the host interface, with the counters-free first lines.
    pub fn host_link_details(&self) -> String {
        self.host
            .run_ok(&["ip", "-d", "link", "show", "dev", &self.host_if])
    }
}

/// A frame as recorded by [`Recorder`].
pub type Frames = Arc<Mutex<Vec<Vec<u8>>>>;

/// A test sink: keeps a copy of every frame it receives.
pub struct Recorder {
    pub frames: Frames,
}

impl Brick for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }

    fn poles(&self) -> Poles {
        Poles::Monopole
    }

    fn burst(
        &mut self,
        _from: Side,
        _edge: usize,
        pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        let mut f = self.frames.lock().unwrap();
        for p in pkts.iter() {
            f.push(p.data().to_vec());
        }
        Ok(())
    }
}
