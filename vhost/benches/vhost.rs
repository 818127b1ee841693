//! `cargo xtask bench vhost`: the vhost brick against DPDK testpmd `net_virtio_user`,
//! compared in the same run with DPDK's own vhost PMD (testpmd `net_vhost` ↔ testpmd
//! `net_virtio_user`).
//!
//! - guest → host: testpmd txonly on virtio_user; received by the brick (its counter) or
//!   by testpmd rxonly on `net_vhost` (its `Rx-pps`).
//! - host → guest: a packetgen brick (or testpmd txonly on `net_vhost`) sends; testpmd
//!   rxonly on virtio_user counts (`Rx-pps`).
//!
//! Placement (2 CPUs): the brick's worker (busy polling) or the vhost-side testpmd
//! forwarding lcore on CPU 0, the virtio_user testpmd forwarding lcore on CPU 1.
//! Prints `RESULT vhost.<direction>_<size>: X Mpps (ratio R vs dpdk)` and the same in
//! Gbit/s (`..._gbps`). Needs root and `dpdk-testpmd` (apt `dpdk`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use butterfly_vhost::{Endpoint, Vhost};
use packetgraph::bricks::{Collect, PacketGen};
use packetgraph::{Graph, Pool, PoolConfig, Worker, WorkerConfig};

const WARMUP: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(5);
/// testpmd takes several seconds to start on a loaded 2-CPU machine.
const START: Duration = Duration::from_secs(60);

/// A testpmd process with its stdout collected.
struct Testpmd {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Testpmd {
    /// `lcores`: `main@cpu,fwd@cpu`; `vdev`: the port; `mode`: txonly or rxonly.
    fn start(prefix: &str, lcores: &str, vdev: &str, mode: &str, size: usize) -> Testpmd {
        let mut child = Command::new("stdbuf")
            .args([
                "-o0",
                "dpdk-testpmd",
                "--no-huge",
                "-m",
                "1024",
                "--no-pci",
                "--no-shconf",
            ])
            .arg(format!("--lcores={lcores}"))
            .arg(format!("--file-prefix={prefix}"))
            .arg(format!("--vdev={vdev}"))
            .args([
                "--",
                "--nb-cores=1",
                "--stats-period=1",
                "--total-num-mbufs=32768",
            ])
            .arg(format!("--forward-mode={mode}"))
            .arg(format!("--txpkts={size}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dpdk-testpmd");
        let out = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stdout.take().expect("stdout");
        let buf = out.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Testpmd { child, out }
    }

    /// Median of the `key` (e.g. `Rx-pps:`) values printed after byte `from`.
    fn median_rate(&self, key: &str, from: usize) -> f64 {
        let o = self.out.lock().unwrap();
        let mut v: Vec<f64> = o
            .get(from..)
            .unwrap_or("")
            .match_indices(key)
            .filter_map(|(i, _)| {
                o[from + i + key.len()..]
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }

    /// Waits until a non-zero `key` value is printed (traffic flows).
    fn wait_flowing(&self, key: &str) {
        let deadline = Instant::now() + START;
        while self.median_rate_max(key) <= 0.0 {
            assert!(
                Instant::now() < deadline,
                "testpmd: no traffic ({key} stays 0)"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn median_rate_max(&self, key: &str) -> f64 {
        let o = self.out.lock().unwrap();
        o.match_indices(key)
            .filter_map(|(i, _)| {
                o[i + key.len()..]
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .fold(0.0, f64::max)
    }

    fn len(&self) -> usize {
        self.out.lock().unwrap().len()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

fn virtio_user(sock: &Path) -> String {
    format!(
        "net_virtio_user0,path={},queues=1,queue_size=1024",
        sock.display()
    )
}

fn worker_cfg() -> WorkerConfig {
    WorkerConfig {
        name: "bench-vhost".into(),
        cpu: Some(0),
        max_idle_sleep: Duration::ZERO,
        ..Default::default()
    }
}

fn wait_running(worker: &Worker) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !worker
        .exec(|g| g.get::<Vhost>("vm").unwrap().is_running())
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "testpmd did not start the virtqueues"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Guest → host through the brick: packets per second the brick takes from testpmd.
fn ours_guest_to_host(dir: &Path, size: usize) -> f64 {
    let sock = dir.join("ours-g2h.sock");
    let pool = Pool::new(PoolConfig::default()).unwrap();
    let mut g = Graph::new("bench");
    g.add(
        "vm",
        Vhost::new(Endpoint::Server(sock.clone()), pool).unwrap(),
    )
    .unwrap();
    g.add("sink", Collect::new()).unwrap();
    g.link("vm", "sink").unwrap();
    let worker = Worker::spawn(g, worker_cfg()).unwrap();
    let _pmd = Testpmd::start("bfvb1", "0@0,1@1", &virtio_user(&sock), "txonly", size);
    wait_running(&worker);
    let count = |w: &Worker| {
        w.exec(|g| g.get::<Vhost>("vm").unwrap().tx_stats().packets)
            .unwrap()
    };
    let deadline = Instant::now() + START;
    while count(&worker) == 0 {
        assert!(Instant::now() < deadline, "testpmd sends nothing");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(WARMUP);
    let (t0, c0) = (Instant::now(), count(&worker));
    std::thread::sleep(WINDOW);
    let (t1, c1) = (Instant::now(), count(&worker));
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// Host → guest through the brick: packets per second testpmd receives.
fn ours_host_to_guest(dir: &Path, size: usize) -> f64 {
    let sock = dir.join("ours-h2g.sock");
    let pool = Pool::new(PoolConfig::default()).unwrap();
    let mut g = Graph::new("bench");
    g.add(
        "gen",
        PacketGen::new(pool.clone(), vec![frame(size)], u64::MAX),
    )
    .unwrap();
    g.add(
        "vm",
        Vhost::new(Endpoint::Server(sock.clone()), pool).unwrap(),
    )
    .unwrap();
    g.link("gen", "vm").unwrap();
    let worker = Worker::spawn(g, worker_cfg()).unwrap();
    let pmd = Testpmd::start("bfvb2", "0@0,1@1", &virtio_user(&sock), "rxonly", size);
    wait_running(&worker);
    pmd.wait_flowing("Rx-pps:");
    std::thread::sleep(WARMUP);
    let from = pmd.len();
    std::thread::sleep(WINDOW);
    pmd.median_rate("Rx-pps:", from)
}

/// DPDK's vhost PMD in place of the brick; `mode` is the vhost side's forward mode.
fn dpdk(dir: &Path, size: usize, vhost_mode: &str) -> f64 {
    let sock = dir.join(format!("dpdk-{vhost_mode}.sock"));
    let vhost = Testpmd::start(
        "bfvb3",
        "0@0,1@0",
        &format!("net_vhost0,iface={},queues=1", sock.display()),
        vhost_mode,
        size,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "net_vhost did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let user_mode = if vhost_mode == "rxonly" {
        "txonly"
    } else {
        "rxonly"
    };
    let user = Testpmd::start("bfvb4", "0@1,1@1", &virtio_user(&sock), user_mode, size);
    if vhost_mode == "rxonly" {
        vhost.wait_flowing("Rx-pps:");
    } else {
        user.wait_flowing("Rx-pps:");
    }
    std::thread::sleep(WARMUP);
    let (from_v, from_u) = (vhost.len(), user.len());
    std::thread::sleep(WINDOW);
    if vhost_mode == "rxonly" {
        vhost.median_rate("Rx-pps:", from_v)
    } else {
        user.median_rate("Rx-pps:", from_u)
    }
}

fn report(name: &str, size: usize, ours: f64, base: f64) {
    let ratio = if base > 0.0 { ours / base } else { 0.0 };
    println!(
        "RESULT vhost.{name}_{size}: {:.3} Mpps (ratio {ratio:.2} vs dpdk)",
        ours / 1e6
    );
    println!(
        "RESULT vhost.{name}_{size}_gbps: {:.2} Gbit/s (ratio {ratio:.2} vs dpdk)",
        ours * size as f64 * 8.0 / 1e9
    );
    eprintln!("  dpdk vhost PMD: {:.3} Mpps", base / 1e6);
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the vhost bench needs root (DPDK testpmd)");
        std::process::exit(1);
    }
    if !Path::new("/usr/bin/dpdk-testpmd").exists() {
        eprintln!("dpdk-testpmd not installed: run cargo xtask deps (apt package dpdk)");
        std::process::exit(1);
    }
    let dir = PathBuf::from(format!("/tmp/bf-vhost-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    // VHOST_BENCH_ONLY=guest_to_host_64 (etc.) runs one figure, for profiling.
    let only = std::env::var("VHOST_BENCH_ONLY").ok();
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    for size in [64usize, 1500] {
        if want(&format!("guest_to_host_{size}")) {
            let ours = ours_guest_to_host(&dir, size);
            let base = dpdk(&dir, size, "rxonly");
            report("guest_to_host", size, ours, base);
        }
        if want(&format!("host_to_guest_{size}")) {
            let ours = ours_host_to_guest(&dir, size);
            let base = dpdk(&dir, size, "txonly");
            report("host_to_guest", size, ours, base);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
