//! `cargo xtask bench vhost`: the vhost brick against DPDK testpmd `net_virtio_user`,
//! compared in the same run with DPDK's own vhost PMD (testpmd `net_vhost` ↔ testpmd
//! `net_virtio_user`).
//!
//! - guest → host: testpmd txonly on virtio_user; received by the brick (its counter) or
//!   by testpmd rxonly on `net_vhost` (its `Rx-pps`).
//! - host → guest: a generator brick doing what testpmd txonly does (frames from the pool,
//!   42-byte header written, payload untouched), or testpmd txonly on `net_vhost`, sends;
//!   testpmd rxonly on virtio_user counts (`Rx-pps`).
//!
//! Placement (2 CPUs): the brick's worker (busy polling, no idle sleep) or the vhost-side
//! testpmd forwarding lcore on CPU 0, the virtio_user testpmd forwarding lcore on CPU 1.
//! Both setups run side by side and are measured over the same window (the machine is
//! shared: measured one after the other, a change of load between the two windows moved
//! the ratio by up to 4×); `VHOST_BENCH_SEQUENTIAL=1` measures them one after the other
//! (absolute figures on a quiet machine). `VHOST_BENCH_ROUNDS=N` (default 2) rounds are
//! averaged; each prints the CPU share every busy thread got during its window.
//! Prints `RESULT vhost.<direction>_<size>: X Mpps (ratio R vs dpdk)` and the same in
//! Gbit/s (`..._gbps`). Needs root and `dpdk-testpmd` (apt `dpdk`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use butterfly_vhost::{Endpoint, Vhost};
use packetgraph::bricks::Collect;
use packetgraph::{
    Brick, BrickError, Burst, Emit, Graph, Poles, Pool, PoolConfig, Side, Worker, WorkerConfig,
};

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

/// CPU time (clock ticks, user + system) of each thread of process `pid`, by thread name.
fn thread_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return v;
    };
    for e in dir.flatten() {
        let Ok(st) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ... field 14 utime, 15 stime (1-based).
        let (Some(open), Some(close)) = (st.find('('), st.rfind(')')) else {
            continue;
        };
        let comm = st[open + 1..close].to_string();
        let f: Vec<&str> = st[close + 2..].split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        let tid = e.file_name().to_string_lossy().into_owned();
        v.push((format!("{tid}:{comm}"), t(11) + t(12)));
    }
    v
}

/// Prints the share of a CPU each busy thread of `pids` got between two samples.
fn print_cpu(before: &[(String, u64)], after: &[(String, u64)], secs: f64) {
    let hz = 100.0; // USER_HZ
    let mut line = String::from("    cpu during the window:");
    for (name, t1) in after {
        let t0 = before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, t)| *t);
        let share = t1.saturating_sub(t0) as f64 / hz / secs;
        if share > 0.05 {
            line.push_str(&format!(" {name} {:.0}%", share * 100.0));
        }
    }
    eprintln!("{line}");
}

fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// Frames per burst of testpmd `txonly` (its default `--burst`, 32).
const TXONLY_BURST: usize = 32;

/// Bytes testpmd `txonly` writes into each mbuf: its Ethernet + IPv4 + UDP header (the
/// payload is left as the mbuf holds it).
const TXONLY_HEADER: usize = 42;

/// The host-side generator, doing what testpmd `txonly` does on DPDK's side of the same
/// figure: a burst of 32 frames from the pool (one lock), the 42-byte header written, the
/// length set, the payload left as is. (`PacketGen` copies its whole template, an extra
/// 1500-byte copy per frame that DPDK's generator does not make.)
struct TxOnly {
    pool: Pool,
    header: Vec<u8>,
    size: usize,
}

impl Brick for TxOnly {
    fn kind(&self) -> &'static str {
        "txonly"
    }

    fn poles(&self) -> Poles {
        Poles::Monopole
    }

    fn pollable(&self) -> bool {
        true
    }

    fn burst(&mut self, _: Side, _: usize, _: Burst, _: &mut Emit) -> Result<(), BrickError> {
        Ok(())
    }

    fn poll(&mut self, out: &mut Emit) -> Result<usize, BrickError> {
        let mut burst = Burst::new();
        let (header, size) = (&self.header, self.size);
        let n = self.pool.alloc_with(TXONLY_BURST, |mut p| {
            if let Ok(b) = p.append(size) {
                b[..header.len()].copy_from_slice(header);
            }
            let _ = burst.push(p);
        });
        if n > 0 {
            out.send_peer(burst);
        }
        Ok(n)
    }
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
    let features = worker
        .exec(|g| {
            let st = g.get::<Vhost>("vm").unwrap().state().clone();
            st.lock().unwrap().features
        })
        .unwrap();
    eprintln!("    virtio features negotiated with testpmd: {features:#x}");
}

/// One side of a figure, started: the brick with testpmd virtio_user as its peer, or
/// DPDK's vhost PMD (testpmd `net_vhost`) with the same peer.
enum Setup {
    /// Guest → host through the brick: the brick's counter of frames taken.
    OursG2h { worker: Worker, pmd: Testpmd },
    /// Host → guest through the brick: testpmd rxonly's `Rx-pps`.
    OursH2g { worker: Worker, pmd: Testpmd },
    /// DPDK's vhost PMD; the rate is read on the receiving testpmd.
    Dpdk {
        vhost: Testpmd,
        user: Testpmd,
        rx_on_vhost: bool,
    },
}

/// Start of a measurement window.
struct Mark {
    t: Instant,
    count: u64,
    from: usize,
    rx: butterfly_vhost::virtq::RxStats,
}

impl Setup {
    fn ours(dir: &Path, size: usize, g2h: bool) -> Setup {
        let sock = dir.join(if g2h {
            "ours-g2h.sock"
        } else {
            "ours-h2g.sock"
        });
        let pool = Pool::new(PoolConfig::default()).unwrap();
        let mut g = Graph::new("bench");
        g.add(
            "vm",
            Vhost::new(Endpoint::Server(sock.clone()), pool.clone()).unwrap(),
        )
        .unwrap();
        if g2h {
            g.add("sink", Collect::new()).unwrap();
            g.link("vm", "sink").unwrap();
        } else {
            g.add(
                "gen",
                TxOnly {
                    pool,
                    header: frame(size)[..TXONLY_HEADER].to_vec(),
                    size,
                },
            )
            .unwrap();
            g.link("gen", "vm").unwrap();
        }
        let worker = Worker::spawn(g, worker_cfg()).unwrap();
        let mode = if g2h { "txonly" } else { "rxonly" };
        let prefix = if g2h { "bfvb1" } else { "bfvb2" };
        let pmd = Testpmd::start(prefix, "0@0,1@1", &virtio_user(&sock), mode, size);
        if g2h {
            Setup::OursG2h { worker, pmd }
        } else {
            Setup::OursH2g { worker, pmd }
        }
    }

    fn dpdk(dir: &Path, size: usize, g2h: bool) -> Setup {
        let vhost_mode = if g2h { "rxonly" } else { "txonly" };
        let sock = dir.join(format!("dpdk-{vhost_mode}.sock"));
        let vhost = Testpmd::start(
            "bfvb3",
            "0@0,1@0",
            &format!("net_vhost0,iface={},queues=1", sock.display()),
            vhost_mode,
            size,
        );
        let deadline = Instant::now() + START;
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "net_vhost did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let user_mode = if g2h { "txonly" } else { "rxonly" };
        let user = Testpmd::start("bfvb4", "0@1,1@1", &virtio_user(&sock), user_mode, size);
        Setup::Dpdk {
            vhost,
            user,
            rx_on_vhost: g2h,
        }
    }

    fn brick_count(worker: &Worker) -> u64 {
        worker
            .exec(|g| g.get::<Vhost>("vm").unwrap().tx_stats().packets)
            .unwrap()
    }

    fn brick_rx(worker: &Worker) -> butterfly_vhost::virtq::RxStats {
        worker
            .exec(|g| g.get::<Vhost>("vm").unwrap().rx_stats())
            .unwrap()
    }

    /// Waits until traffic flows.
    fn wait_flowing(&self) {
        match self {
            Setup::OursG2h { worker, .. } => {
                wait_running(worker);
                let deadline = Instant::now() + START;
                while Setup::brick_count(worker) == 0 {
                    assert!(Instant::now() < deadline, "testpmd sends nothing");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Setup::OursH2g { worker, pmd } => {
                wait_running(worker);
                pmd.wait_flowing("Rx-pps:");
            }
            Setup::Dpdk {
                vhost,
                user,
                rx_on_vhost,
            } => {
                if *rx_on_vhost {
                    vhost.wait_flowing("Rx-pps:");
                } else {
                    user.wait_flowing("Rx-pps:");
                }
            }
        }
    }

    /// The processes whose threads' CPU time is printed.
    fn pids(&self) -> Vec<u32> {
        match self {
            Setup::OursG2h { pmd, .. } | Setup::OursH2g { pmd, .. } => {
                vec![std::process::id(), pmd.child.id()]
            }
            Setup::Dpdk { vhost, user, .. } => vec![vhost.child.id(), user.child.id()],
        }
    }

    fn mark(&self) -> Mark {
        let (count, from, rx) = match self {
            Setup::OursG2h { worker, .. } => (Setup::brick_count(worker), 0, Default::default()),
            Setup::OursH2g { worker, pmd } => (0, pmd.len(), Setup::brick_rx(worker)),
            Setup::Dpdk {
                vhost,
                user,
                rx_on_vhost,
            } => (
                0,
                if *rx_on_vhost {
                    vhost.len()
                } else {
                    user.len()
                },
                Default::default(),
            ),
        };
        Mark {
            t: Instant::now(),
            count,
            from,
            rx,
        }
    }

    /// Packets per second since `m`.
    fn rate(&self, m: &Mark) -> f64 {
        match self {
            Setup::OursG2h { worker, .. } => {
                let c = Setup::brick_count(worker);
                (c - m.count) as f64 / m.t.elapsed().as_secs_f64()
            }
            Setup::OursH2g { worker, pmd } => {
                let rx = Setup::brick_rx(worker);
                eprintln!(
                    "    brick: {} delivered, {} dropped for lack of guest buffers",
                    rx.packets - m.rx.packets,
                    rx.drop_no_buffer - m.rx.drop_no_buffer
                );
                pmd.median_rate("Rx-pps:", m.from)
            }
            Setup::Dpdk {
                vhost,
                user,
                rx_on_vhost,
            } => {
                let pmd = if *rx_on_vhost { vhost } else { user };
                pmd.median_rate("Rx-pps:", m.from)
            }
        }
    }
}

/// Measures the setups in `setups` over the same window (all started, all flowing, one
/// warm-up, one window) and returns their rates.
fn window(setups: &[&Setup]) -> Vec<f64> {
    for s in setups {
        s.wait_flowing();
    }
    std::thread::sleep(WARMUP);
    let pids: Vec<u32> = setups.iter().flat_map(|s| s.pids()).collect();
    let cpu0: Vec<_> = pids.iter().flat_map(|&p| thread_ticks(p)).collect();
    let marks: Vec<Mark> = setups.iter().map(|s| s.mark()).collect();
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    let rates = setups.iter().zip(&marks).map(|(s, m)| s.rate(m)).collect();
    let cpu1: Vec<_> = pids.iter().flat_map(|&p| thread_ticks(p)).collect();
    print_cpu(&cpu0, &cpu1, t0.elapsed().as_secs_f64());
    rates
}

/// One round of a figure: (ours, DPDK's) packets per second. Side by side (default): both
/// setups run at once, with the same CPU placement, and are measured over the same window,
/// so both see the same machine load (the machine is shared and busy; each busy-polling
/// thread then gets about half a CPU, so the absolute figures are about half of a quiet,
/// one-at-a-time run; the ratio is the point). `VHOST_BENCH_SEQUENTIAL=1`: one after the
/// other, for absolute figures on a quiet machine.
fn round(dir: &Path, size: usize, g2h: bool, sequential: bool) -> (f64, f64) {
    if sequential {
        let ours = {
            let s = Setup::ours(dir, size, g2h);
            window(&[&s])[0]
        };
        let s = Setup::dpdk(dir, size, g2h);
        (ours, window(&[&s])[0])
    } else {
        let ours = Setup::ours(dir, size, g2h);
        let base = Setup::dpdk(dir, size, g2h);
        let r = window(&[&ours, &base]);
        (r[0], r[1])
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
    // VHOST_BENCH_ROUNDS=N (default 2): N rounds per figure, averaged.
    let rounds: usize = std::env::var("VHOST_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    let measure = |one: &dyn Fn() -> (f64, f64)| {
        let (mut o, mut b) = (0.0, 0.0);
        for r in 0..rounds {
            // A side that moved nothing (a testpmd that stalled or lost its CPU for the
            // whole window) is a failed measurement, not a figure: retry it, twice.
            let mut tries = 0;
            let (x, y) = loop {
                let (x, y) = one();
                if x > 0.0 && y > 0.0 {
                    break (x, y);
                }
                tries += 1;
                assert!(
                    tries < 3,
                    "round {r}: a side moved no packet 3 times (ours {x:.0} pps, dpdk {y:.0} pps)"
                );
                eprintln!(
                    "  round {r}: failed (ours {x:.0} pps, dpdk {y:.0} pps), measuring again"
                );
            };
            eprintln!(
                "  round {r}: ours {:.3} Mpps, dpdk {:.3} Mpps ({:.2})",
                x / 1e6,
                y / 1e6,
                if y > 0.0 { x / y } else { 0.0 }
            );
            o += x;
            b += y;
        }
        (o / rounds as f64, b / rounds as f64)
    };
    let sequential = std::env::var("VHOST_BENCH_SEQUENTIAL").is_ok_and(|v| v == "1");
    for size in [64usize, 1500] {
        for (name, g2h) in [("guest_to_host", true), ("host_to_guest", false)] {
            if want(&format!("{name}_{size}")) {
                let (ours, base) = measure(&|| round(&dir, size, g2h, sequential));
                report(name, size, ours, base);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
