//! DPDK backend benchmark (privileged): l2fwd through the `nic` brick's DPDK backend on a
//! `net_af_xdp` port, against the AF_XDP backend and against `dpdk-testpmd
//! --forward-mode=io` on the same port type, in one run, on one veth pair.
//!
//! Topology (one network namespace): veth `gen` ↔ `dut`. The load generator is the XDP
//! live-frames generator of `butterfly-ebpf` (BPF_PROG_TEST_RUN of an XDP_TX program on
//! `gen`, pinned to CPU 0): 64-byte VXLAN frames to `dut`. What `dut` sends back is
//! counted by an XDP_DROP sink on `gen`: that count over a window is the l2fwd rate of
//! all three contenders (the same yardstick for each).
//!
//! - `dpdk`: EAL `--no-huge`, `net_af_xdp` vdev on `dut` (hot-plugged per round; the PMD
//!   loads its own XDP redirect program), graph `nic(dpdk) — reflect` (MACs swapped) on a
//!   busy-polling worker pinned to CPU 1. Frames are copied mbuf → pool frame → mbuf.
//! - `afxdp`: Butterfly's XDP steering program on `dut` and the AF_XDP backend (copy mode),
//!   the same graph and worker.
//! - `testpmd`: `dpdk-testpmd --forward-mode=io` on a `net_af_xdp` port of `dut`,
//!   forwarding lcore on CPU 1 (no MAC swap: io mode touches no data).
//!
//! Prints `RESULT dpdk.l2fwd: X Mpps (ratio R vs testpmd)` and
//! `RESULT afxdp.l2fwd_same_setup: X Mpps (ratio R vs testpmd)`; best of [`ROUNDS`].

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use butterfly_ebpf::{AttachMode, LoadGen, Steering, Variant};
use packetgraph::bricks::Nic;
use packetgraph::bricks::nic::NicBackend;
use packetgraph::bricks::nic::afxdp::{AfXdp, AfXdpConfig};
use packetgraph::bricks::nic::dpdk::{Dpdk, DpdkConfig, PortId, eal_init};
use packetgraph::{Brick, BrickError, Burst, Emit, Graph, Poles, Pool, PoolConfig, Side, Worker};

const WARMUP: Duration = Duration::from_millis(500);
const WINDOW: Duration = Duration::from_secs(2);
const GEN_CPU: usize = 0;
const FWD_CPU: usize = 1;
const ROUNDS: usize = 2;
const NS: &str = "dpdkbench";

fn sh(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu index");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

/// The namespace of the run, deleted on drop.
struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A 64-byte VXLAN frame to `dst_mac` / 10.89.0.1:4789 (VNI 42), so the steering program
/// of the AF_XDP run takes it too.
fn vxlan_frame(dst_mac: [u8; 6]) -> Vec<u8> {
    let mut vx = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
    vx.extend_from_slice(&[0x02, 0, 0, 0, 0x42, 1, 0x02, 0, 0, 0, 0x42, 2, 0x08, 0x06]);
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x99], dst_mac)
        .ipv4([10, 89, 0, 2], [10, 89, 0, 1], 64)
        .udp(49152, 4789)
        .write(&mut f, &vx)
        .unwrap();
    assert_eq!(f.len(), 64);
    f
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// The XDP generator on CPU 0 until dropped (SIGUSR1 cuts the long test run short).
struct Generator {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    tid: Arc<AtomicU64>,
}

impl Generator {
    fn start(gen_if: u32, frame: Vec<u8>) -> Generator {
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU64::new(0));
        let (s2, t2) = (stop.clone(), tid.clone());
        let thread = std::thread::spawn(move || {
            pin(GEN_CPU);
            // SAFETY: pthread_self has no preconditions.
            t2.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
            let lg = LoadGen::load().expect("load the generator");
            while !s2.load(Ordering::Acquire) {
                let _ = lg.run(gen_if, &frame, 200_000_000, 256);
            }
        });
        while tid.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        Generator {
            stop,
            thread: Some(thread),
            tid,
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                // SAFETY: the thread is alive; SIGUSR1 has a no-op handler.
                unsafe {
                    libc::pthread_kill(
                        self.tid.load(Ordering::Acquire) as libc::pthread_t,
                        libc::SIGUSR1,
                    )
                };
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}

/// Frames back at `gen` per second over the window after the warm-up, in Mpps.
fn measure(sink: &LoadGen) -> f64 {
    std::thread::sleep(WARMUP);
    let (c0, t0) = (sink.sink_packets().unwrap(), Instant::now());
    std::thread::sleep(WINDOW);
    let (c1, t1) = (sink.sink_packets().unwrap(), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64() / 1e6
}

/// Swaps source and destination MACs and sends the burst back.
struct Reflect;

impl Brick for Reflect {
    fn kind(&self) -> &'static str {
        "reflect"
    }
    fn poles(&self) -> Poles {
        Poles::Monopole
    }
    fn burst(
        &mut self,
        _: Side,
        _: usize,
        mut pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        for p in pkts.iter_mut() {
            let d = p.data_mut();
            if d.len() >= 12 {
                let (a, b) = d.split_at_mut(6);
                a.swap_with_slice(&mut b[..6]);
            }
        }
        out.send_peer(pkts);
        Ok(())
    }
}

/// Child process: runs `nic — reflect` on a busy-polling worker on CPU 1, prints
/// "ready", forwards until its stdin closes, then prints the nic counters.
fn forwarder(nic: Nic) {
    let mut g = Graph::new("bench");
    g.add("nic", nic).unwrap();
    g.add("app", Reflect).unwrap();
    g.link("nic", "app").unwrap();
    let w = Worker::spawn(
        g,
        packetgraph::WorkerConfig {
            name: "dpdk-bench".into(),
            cpu: Some(FWD_CPU),
            spin_rounds: u32::MAX,
            max_idle_sleep: Duration::ZERO,
        },
    )
    .unwrap();
    println!("ready");
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
    let g = w.stop().unwrap();
    let c = g.get::<Nic>("nic").unwrap().counters();
    let text: Vec<String> = c
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("{}", text.join(" "));
}

fn pool() -> Pool {
    Pool::new(PoolConfig {
        frame_count: 8192,
        ..PoolConfig::default()
    })
    .unwrap()
}

/// Child process body for `--forwarder dpdk`: EAL, a net_af_xdp port on dut.
fn forward_dpdk() {
    let prefix = format!("bfbench{}", std::process::id());
    eal_init(&[
        "--no-huge",
        "-m",
        "512",
        "--no-pci",
        "--no-shconf",
        "-l",
        "0",
        "--log-level",
        "lib.eal:notice",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_af_xdp0,iface=dut,start_queue=0,queue_count=1",
    ])
    .unwrap();
    let mut cfg = DpdkConfig::new(PortId::Name("net_af_xdp0".into()));
    cfg.mbufs = 16383;
    let p = pool();
    let dev = Dpdk::open(&cfg, &p).unwrap_or_else(|e| panic!("DPDK port: {e}"));
    forwarder(Nic::new(dev));
}

/// Child process body for `--forwarder afxdp`: the steering program and an AF_XDP socket.
fn forward_afxdp() {
    let mut steer = Steering::load(Variant::Linear).unwrap();
    steer.set_vxlan_port(4789).unwrap();
    steer.add_vtep_addr("10.89.0.1".parse().unwrap()).unwrap();
    steer.attach("dut", AttachMode::Native, false).unwrap();
    let steer = Arc::new(std::sync::Mutex::new(steer));
    let p = pool();
    let mut cfg = AfXdpConfig::new("dut", 0);
    cfg.rx_size = 2048;
    cfg.tx_size = 2048;
    cfg.fill_size = 2048;
    cfg.comp_size = 2048;
    // The previous process's socket is released by deferred kernel work: retry a little.
    let t = Instant::now();
    let mut x = loop {
        match AfXdp::open(&cfg, &p) {
            Ok(x) => break x,
            Err(_) if t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("AF_XDP socket: {e}"),
        }
    };
    x.register(&steer).unwrap();
    forwarder(Nic::new(x));
    steer.lock().unwrap().detach().unwrap();
}

/// Runs a forwarder process (`cmd`, stdin piped, stdout piped) while the generator runs;
/// returns the rate and what the process printed at the end.
fn run_forwarder(
    mut cmd: Command,
    wait_ready: bool,
    gen_if: u32,
    frame: &[u8],
    sink: &LoadGen,
) -> (f64, String) {
    let mut child = cmd
        .stdin(Stdio::piped()) // the forwarder (and testpmd) stop when stdin closes
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the forwarder");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    if wait_ready {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "forwarder failed to start");
    } else {
        // testpmd: wait for its XDP program on dut.
        let t = Instant::now();
        while !sh(&["ip", "link", "show", "dut"]).contains("prog/xdp") {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "testpmd did not start its af_xdp port"
            );
            assert!(child.try_wait().unwrap().is_none(), "testpmd exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let gen_thread = Generator::start(gen_if, frame.to_vec());
    let mpps = measure(sink);
    drop(gen_thread);
    drop(child.stdin.take());
    let mut rest = String::new();
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = out.read_to_string(&mut rest);
    let _ = Command::new("ip")
        .args(["link", "set", "dut", "xdp", "off"])
        .status();
    (mpps, rest.trim().to_string())
}

/// Copy cost: forwarding between the RX and TX of a `net_null` port (no device work: RX
/// hands out mbufs from the pool, TX frees them) through the backend (mbuf → pool frame
/// → mbuf: two copies and two pool operations per frame) against the raw burst calls
/// (no copy). Returns (backend, raw) in Mpps per CPU-second of the forwarding thread. Runs in this process (the EAL's only
/// user here).
fn copy_cost() -> (f64, f64) {
    pin(FWD_CPU);
    let prefix = format!("bfbenchnull{}", std::process::id());
    eal_init(&[
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "-l",
        "1",
        "--log-level",
        "lib.eal:notice",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_null0,size=64",
    ])
    .unwrap();
    let p = pool();
    let mut dev = Dpdk::open(&DpdkConfig::new(PortId::Name("net_null0".into())), &p).unwrap();
    // Rate per second of CPU time of this thread: the machine is shared, wall-clock time
    // would count other processes' slices.
    let cpu_s = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    };
    let run = |f: &mut dyn FnMut() -> usize| {
        let t = Instant::now();
        while t.elapsed() < WARMUP {
            f();
        }
        let (mut n, t, c0) = (0usize, Instant::now(), cpu_s());
        while t.elapsed() < WINDOW {
            n += f();
        }
        n as f64 / (cpu_s() - c0) / 1e6
    };
    let backend = run(&mut || {
        let mut b = Burst::new();
        dev.rx_burst(&mut b).unwrap();
        dev.tx_burst(b).unwrap()
    });
    let port = dev.port();
    let raw = run(&mut || {
        let mut m = [std::ptr::null_mut::<dpdk_sys::rte_mbuf>(); 64];
        // SAFETY: the port is started (owned by `dev`, alive); m holds 64 pointers; the
        // mbufs received are handed to TX, which frees them (unsent ones freed here).
        unsafe {
            let n = dpdk_sys::bf_rx_burst(port, 0, m.as_mut_ptr(), 64);
            let s = dpdk_sys::bf_tx_burst(port, 0, m.as_mut_ptr(), n);
            if s < n {
                dpdk_sys::rte_pktmbuf_free_bulk(m.as_mut_ptr().add(s as usize), u32::from(n - s));
            }
            s as usize
        }
    });
    drop(dev);
    (backend, raw)
}

fn self_cmd(which: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--forwarder", which]);
    c
}

fn testpmd_cmd(round: usize) -> Command {
    let prefix = format!("bfbench{}_{round}", std::process::id());
    let mut c = Command::new("dpdk-testpmd");
    c.args(["--no-huge", "-m", "512", "--no-pci", "--no-shconf", "-l"])
        .arg(format!("{GEN_CPU},{FWD_CPU}"))
        .args(["--file-prefix", &prefix, "--vdev"])
        .arg("net_af_xdp0,iface=dut,start_queue=0,queue_count=1")
        .args([
            "--",
            "--forward-mode=io",
            "--port-topology=loop",
            "--total-num-mbufs=16384",
            "--auto-start",
        ])
        .stderr(Stdio::null());
    c
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--forwarder") {
        // Child: already in the namespace (inherited from the parent thread).
        match args.get(i + 1).map(String::as_str) {
            Some("dpdk") => forward_dpdk(),
            Some("afxdp") => forward_afxdp(),
            other => panic!("unknown forwarder {other:?}"),
        }
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        panic!("dpdk bench needs root (netns, XDP, AF_XDP): run as root");
    }
    if std::env::var_os("BF_DPDK_BENCH_COPY_ONLY").is_some() {
        // Profiling aid: only the net_null copy-cost part (perf record on this).
        let (f, r) = copy_cost();
        println!("copy cost: backend {f:.2} Mpps/CPU-s, raw bursts {r:.2} Mpps/CPU-s");
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        panic!("dpdk bench needs 2 CPUs (generator and forwarder on different CPUs)");
    }
    if Command::new("dpdk-testpmd")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("dpdk-testpmd not found: run cargo xtask deps (apt dpdk)");
    }
    // SAFETY: installs a no-op handler (no SA_RESTART) so SIGUSR1 interrupts the
    // generator's long BPF_PROG_TEST_RUN with EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let _ = Command::new("ip").args(["netns", "del", NS]).status();
    let ns = Ns(NS.to_string());
    sh(&["ip", "netns", "add", &ns.0]);
    let back = File::open("/proc/thread-self/ns/net").unwrap();
    let target = File::open(format!("/run/netns/{}", ns.0)).unwrap();
    nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    sh(&[
        "ip", "link", "add", "gen", "type", "veth", "peer", "name", "dut",
    ]);
    sh(&["ip", "addr", "add", "10.89.0.1/24", "dev", "dut"]);
    sh(&["ip", "addr", "add", "10.89.0.2/24", "dev", "gen"]);
    sh(&["ip", "link", "set", "gen", "up"]);
    sh(&["ip", "link", "set", "dut", "up"]);
    let link = sh(&["ip", "-o", "link", "show", "dut"]);
    let mac: Vec<u8> = link
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("MAC of dut")
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let frame = vxlan_frame(mac.try_into().unwrap());
    let gen_if = butterfly_ebpf::ifindex("gen").unwrap();
    let mut sink = LoadGen::load().unwrap();
    sink.attach_sink("gen").unwrap();

    println!(
        "dpdk: veth, 64-byte frames, generator on CPU {GEN_CPU}, forwarder on CPU {FWD_CPU}; \
         rate = frames back at gen; each forwarder in its own process; best of {ROUNDS} \
         rounds of {WINDOW:?}"
    );
    let mut best = [0f64; 3]; // dpdk, afxdp, testpmd
    for round in 0..ROUNDS {
        let runs = [
            ("dpdk", self_cmd("dpdk"), true),
            ("afxdp", self_cmd("afxdp"), true),
            ("testpmd", testpmd_cmd(round), false),
        ];
        for (i, (name, cmd, ready)) in runs.into_iter().enumerate() {
            let (mpps, counters) = run_forwarder(cmd, ready, gen_if, &frame, &sink);
            let counters = if ready { counters } else { String::new() };
            println!("dpdk: round {round} {name}: {mpps:.3} Mpps {counters}");
            best[i] = best[i].max(mpps);
        }
    }
    let (null_fwd, null_raw) = copy_cost();

    println!(
        "dpdk: net_null forwarding, per CPU-second: backend {null_fwd:.2} Mpps, raw bursts \
         {null_raw:.2} Mpps: the backend's copies and frame handling cost {:.1} ns per frame",
        if null_fwd > 0.0 && null_raw > 0.0 {
            1e3 / null_fwd - 1e3 / null_raw
        } else {
            0.0
        }
    );
    let ratio = |v: f64| if best[2] > 0.0 { v / best[2] } else { 0.0 };
    println!(
        "RESULT dpdk.l2fwd: {:.2} Mpps (ratio {:.2} vs testpmd)",
        best[0],
        ratio(best[0])
    );
    println!(
        "RESULT afxdp.l2fwd_same_setup: {:.2} Mpps (ratio {:.2} vs testpmd)",
        best[1],
        ratio(best[1])
    );
    println!("RESULT dpdk.testpmd_io: {:.2} Mpps", best[2]);
    println!(
        "RESULT dpdk.null_fwd_copy: {null_fwd:.2} Mpps per CPU-second (ratio {:.2} vs raw bursts without copy)",
        if null_raw > 0.0 {
            null_fwd / null_raw
        } else {
            0.0
        }
    );
    drop(sink);
    nix::sched::setns(back.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}
