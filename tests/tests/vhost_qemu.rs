//! Two QEMU guests (TCG), each attached to its own vhost brick, the two bricks linked by a
//! hub: ping both ways, a TCP transfer whose content is checked, a guest reboot then ping
//! again. One guest's vhost-user socket is served by Butterfly (QEMU connects); the other
//! is served by QEMU (`server=on`) and Butterfly connects to it.
//!
//! Needs root, `qemu-system-x86_64` (QEMU 10 from bookworm-backports) and the guest image
//! built by `cargo xtask guest` under `target/guest/`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use butterfly_vhost::{Endpoint, Vhost};
use packetgraph::bricks::Hub;
use packetgraph::{Graph, Pool, PoolConfig, Worker, WorkerConfig};

/// The guest kernel and initramfs from `cargo xtask guest`.
fn guest_image() -> (PathBuf, PathBuf) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("guest");
    let initrd = dir.join("initrd.gz");
    for k in ["vmlinux", "vmlinuz"] {
        let kernel = dir.join(k);
        if kernel.exists() && initrd.exists() {
            return (kernel, initrd);
        }
    }
    panic!(
        "guest image missing in {}: run cargo xtask guest",
        dir.display()
    );
}

fn require_qemu() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "vhost_qemu needs root (vhost-user sockets, shared guest memory)"
    );
    assert!(
        Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 not installed: run cargo xtask deps (QEMU 10 from bookworm-backports)"
    );
}

/// A guest on a serial console: its output is collected; commands go to its `/init`
/// command loop (`<id> <shell command>` → output, then `BF-DONE <id> <status>`).
struct Guest {
    name: String,
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<String>>,
    next_id: u32,
}

impl Guest {
    fn start(name: &str, netdev_chardev: &str, mac: &str, ip: &str) -> Guest {
        let (kernel, initrd) = guest_image();
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
            ])
            .args(["-M", "q35,memory-backend=mem", "-m", "256"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 quiet panic=-1 bf.ip={ip}"))
            .args(["-chardev", netdev_chardev])
            .args(["-netdev", "vhost-user,id=n0,chardev=c0"])
            .args([
                "-device",
                &format!("virtio-net-pci,romfile=,netdev=n0,mac={mac}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64");
        let stdin = child.stdin.take().expect("stdin");
        let out = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let buf = out.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        Guest {
            name: name.into(),
            child,
            stdin,
            out,
            next_id: 1,
        }
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until `needle` appears after byte `from` of the console output; returns the
    /// offset just past it.
    fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let o = self.out.lock().unwrap();
                if let Some(i) = o.get(from..).and_then(|s| s.find(needle)) {
                    return from + i + needle.len();
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "guest {} exited ({st}) while waiting for {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "guest {}: no {needle:?} within {timeout:?}; console:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `cmd` in the guest; returns (exit status, output).
    fn run(&mut self, cmd: &str, timeout: Duration) -> (i32, String) {
        let id = self.next_id;
        self.next_id += 1;
        let start = self.out.lock().unwrap().len();
        writeln!(self.stdin, "{id} {cmd}").expect("guest console");
        self.stdin.flush().unwrap();
        let marker = format!("BF-DONE {id} ");
        let end = self.wait_for(&marker, start, timeout);
        let o = self.output();
        let status: i32 = o[end..]
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        (status, o[start..end].to_string())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(g: &mut Guest, peer: &str) {
    let (st, out) = g.run(&format!("ping -c 3 -W 5 {peer}"), Duration::from_secs(60));
    assert_eq!(
        st,
        0,
        "ping from {} to {peer} failed:\n{out}\nconsole:\n{}",
        g.name,
        g.output()
    );
    assert!(
        out.contains("3 packets transmitted, 3 packets received"),
        "{out}"
    );
}

fn wait_running(worker: &Worker, name: &'static str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !worker
        .exec(move |g| g.get::<Vhost>(name).unwrap().is_running())
        .unwrap()
    {
        assert!(Instant::now() < deadline, "{name}: virtqueues not running");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two guests on a graph `vm-a — hub — vm-b`: A's socket is served by Butterfly (QEMU
/// connects, with `a_chardev_extra` appended to its chardev options), B's by QEMU
/// (`server=on`, Butterfly connects). Returns once both guests are idle on their console
/// and both bricks' virtqueues run.
struct TwoGuests {
    a: Guest,
    b: Guest,
    worker: Worker,
    pool: Pool,
    dir: DirGuard,
    sock_a: PathBuf,
}

/// Removes the test's socket directory when dropped.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TwoGuests {
    fn start(tag: &str, a_chardev_extra: &str) -> TwoGuests {
        require_qemu();
        let _ = guest_image();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = PathBuf::from(format!("/tmp/bf-vhost-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock_a = dir.join("a.sock");
        let sock_b = dir.join("b.sock");

        // Guest B's QEMU serves its socket; start it first so Butterfly can connect.
        let b = Guest::start(
            "b",
            &format!("socket,id=c0,path={},server=on,wait=off", sock_b.display()),
            "52:54:00:00:00:0b",
            "10.0.0.2/24",
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock_b.exists() {
            assert!(
                Instant::now() < deadline,
                "QEMU did not create {}",
                sock_b.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        let pool = Pool::new(PoolConfig {
            frame_count: 4096,
            ..Default::default()
        })
        .unwrap();
        let mut g = Graph::new("vhost-qemu");
        g.add(
            "vm-a",
            Vhost::new(Endpoint::Server(sock_a.clone()), pool.clone()).unwrap(),
        )
        .unwrap();
        g.add(
            "vm-b",
            Vhost::new(Endpoint::Client(sock_b.clone()), pool.clone()).unwrap(),
        )
        .unwrap();
        g.add("hub", Hub::new()).unwrap();
        g.link("vm-a", "hub").unwrap();
        g.link("vm-b", "hub").unwrap();
        let worker = Worker::spawn(g, WorkerConfig::default()).unwrap();

        let mut a = Guest::start(
            "a",
            &format!("socket,id=c0,path={}{a_chardev_extra}", sock_a.display()),
            "52:54:00:00:00:0a",
            "10.0.0.1/24",
        );
        let mut b = b;
        a.wait_for("BF-IDLE", 0, Duration::from_secs(90));
        b.wait_for("BF-IDLE", 0, Duration::from_secs(90));
        wait_running(&worker, "vm-a", Duration::from_secs(20));
        wait_running(&worker, "vm-b", Duration::from_secs(20));
        TwoGuests {
            a,
            b,
            worker,
            pool,
            dir: DirGuard(dir),
            sock_a,
        }
    }
}

#[test]
fn vhost_qemu_two_guests_ping_tcp_reboot() {
    let TwoGuests {
        mut a,
        mut b,
        worker,
        dir: _dir,
        ..
    } = TwoGuests::start("qemu", "");
    // Ping both ways.
    ping(&mut a, "10.0.0.2");
    ping(&mut b, "10.0.0.1");

    // TCP: B listens, A sends `seq 1 20000` (108894 bytes); B checks size and md5.
    let content: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    let md5 = {
        let mut c = Command::new("md5sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("md5sum");
        c.stdin
            .take()
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
        let o = c.wait_with_output().unwrap();
        String::from_utf8(o.stdout).unwrap()[..32].to_string()
    };
    let (st, out) = b.run(
        "sleep 1000 | nc -l -p 5000 >/tmp/rx & sleep 1",
        Duration::from_secs(30),
    );
    assert_eq!(st, 0, "{out}");
    let (st, out) = a.run(
        "seq 1 20000 | timeout 60 nc 10.0.0.2 5000; echo sent",
        Duration::from_secs(90),
    );
    assert_eq!(st, 0, "{out}");
    let (st, out) = b.run(
        "sleep 1; echo size=$(wc -c </tmp/rx) md5=$(md5sum </tmp/rx)",
        Duration::from_secs(30),
    );
    assert_eq!(st, 0, "{out}");
    assert!(
        out.contains(&format!("size={} md5={md5}", content.len())),
        "received content differs: {out}"
    );

    // Reboot A (virtio reset, vrings stopped and set up again), then ping again.
    let mark = a.output().len();
    writeln!(a.stdin, "99 reboot -f").unwrap();
    a.stdin.flush().unwrap();
    a.wait_for("BF-IDLE", mark, Duration::from_secs(90));
    wait_running(&worker, "vm-a", Duration::from_secs(20));
    ping(&mut a, "10.0.0.2");
    ping(&mut b, "10.0.0.1");

    let g = worker.stop().unwrap();
    for name in ["vm-a", "vm-b"] {
        let vm = g.get::<Vhost>(name).unwrap();
        let (tx, rx) = (vm.tx_stats(), vm.rx_stats());
        eprintln!(
            "{name}: tx {tx:?}\n{name}: rx {rx:?}\n{name}: {:?}",
            vm.stats()
        );
        assert!(
            tx.packets > 20 && rx.packets > 20,
            "{name} moved too little"
        );
        assert_eq!(tx.drops(), 0, "{name}: guest sent malformed chains");
        assert_eq!(rx.drop_bad_chain, 0, "{name}");
        // Linux hands TCP segments with partial checksums (VIRTIO_NET_F_CSUM offered):
        // the transfer above only checks out if the brick completed them.
        assert!(
            tx.checksums_completed > 0,
            "{name}: no partial checksum seen"
        );
    }
    assert_eq!(g.empty_bursts(), 0);
}

/// Butterfly (the vhost-user server) goes away and comes back while QEMU keeps running
/// with `reconnect-ms`: QEMU reconnects, sets the device up again with the ring indices it
/// kept, and traffic resumes.
#[test]
fn vhost_qemu_backend_restart_resumes_traffic() {
    let TwoGuests {
        mut a,
        mut b,
        worker,
        pool,
        dir: _dir,
        sock_a,
    } = TwoGuests::start("restart", ",reconnect-ms=200");
    ping(&mut a, "10.0.0.2");

    // "Restart": the brick and its socket go away (connection closed, socket file
    // removed), then a new brick listens on the same path.
    worker
        .exec(|g| {
            let old = g.remove("vm-a").unwrap();
            drop(old);
        })
        .unwrap();
    assert!(!sock_a.exists(), "the old brick left its socket behind");
    std::thread::sleep(Duration::from_secs(1));
    let p = pool.clone();
    let s = sock_a.clone();
    worker
        .exec(move |g| {
            g.add("vm-a", Vhost::new(Endpoint::Server(s), p).unwrap())
                .unwrap();
            g.link("vm-a", "hub").unwrap();
        })
        .unwrap();
    wait_running(&worker, "vm-a", Duration::from_secs(30));
    ping(&mut a, "10.0.0.2");
    ping(&mut b, "10.0.0.1");
    let g = worker.stop().unwrap();
    let vm = g.get::<Vhost>("vm-a").unwrap();
    assert!(vm.tx_stats().packets >= 6, "{:?}", vm.tx_stats());
    assert_eq!(vm.tx_stats().drops(), 0);
    assert_eq!(g.empty_bursts(), 0);
}
