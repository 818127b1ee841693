//! Two QEMU guests (TCG), each attached to its own vhost brick, the two bricks linked by a
//! hub: ping both ways, a TCP transfer whose content is checked, a guest reboot then ping
//! again. One guest's vhost-user socket is served by Butterfly (QEMU connects); the other
//! is served by QEMU (`server=on`) and Butterfly connects to it.
//!
//! Needs root, `qemu-system-x86_64` (QEMU 10 from bookworm-backports) and the guest image
//! built by `cargo xtask guest` under `target/guest/`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use butterfly_tests::qemu::{Guest, guest_image};
use butterfly_vhost::{Endpoint, Vhost};
use packetgraph::bricks::Hub;
use packetgraph::{Graph, Pool, PoolConfig, Worker, WorkerConfig};

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

fn ping(g: &mut Guest, peer: &str) {
    let (st, out) = g.run(&format!("ping -c 3 -W 5 {peer}"), Duration::from_secs(60));
    assert_eq!(
        st,
        0,
        "ping from {} to {peer} failed:\n{out}\nconsole:\n{}",
        g.name(),
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
        let b = Guest::boot(
            "b",
            &format!("socket,id=c0,path={},server=on,wait=off", sock_b.display()),
            "52:54:00:00:00:0b",
            "10.0.0.2/24",
            "",
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

        let mut a = Guest::boot(
            "a",
            &format!("socket,id=c0,path={}{a_chardev_extra}", sock_a.display()),
            "52:54:00:00:00:0a",
            "10.0.0.1/24",
            // /init pings B at each boot (B may not be up at the first one).
            "bf.peers=10.0.0.2 bf.test=ping",
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
        pool,
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
    a.send_line("99 reboot -f");
    let ready = a.wait_for("BF-IDLE", mark, Duration::from_secs(90));
    // The ping /init runs from the kernel command line at boot went through.
    let boot = a.output()[mark..ready].to_string();
    assert!(
        boot.contains("BF-RESULT ping 10.0.0.2 ok"),
        "ping at boot after the reboot failed:\n{boot}"
    );
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
    assert_eq!(pool.available(), 4096, "frames leaked");
}

/// Butterfly (the vhost-user server) goes away and comes back while QEMU keeps running
/// with `reconnect-ms`: QEMU reconnects, sets the device up again with the ring indices it
/// kept, and traffic resumes. Then the other way round: QEMU is killed and a new QEMU
/// connects to the same brick.
#[test]
fn vhost_qemu_backend_restart_and_qemu_restart_resume_traffic() {
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

    // QEMU restart: the brick sees the disconnection, then a new frontend.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker
        .exec(|g| g.get::<Vhost>("vm-a").unwrap().is_running())
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "vm-a still running after QEMU died"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut a = Guest::boot(
        "a2",
        &format!("socket,id=c0,path={},reconnect-ms=200", sock_a.display()),
        "52:54:00:00:00:0a",
        "10.0.0.1/24",
        "",
    );
    a.wait_for("BF-IDLE", 0, Duration::from_secs(90));
    wait_running(&worker, "vm-a", Duration::from_secs(20));
    ping(&mut a, "10.0.0.2");
    ping(&mut b, "10.0.0.1");
    let g = worker.stop().unwrap();
    let vm = g.get::<Vhost>("vm-a").unwrap();
    assert!(vm.tx_stats().packets >= 6, "{:?}", vm.tx_stats());
    assert_eq!(vm.tx_stats().drops(), 0);
    assert_eq!(g.empty_bursts(), 0);
    assert_eq!(pool.available(), 4096, "frames leaked");
}
