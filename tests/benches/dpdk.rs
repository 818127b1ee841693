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

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use butterfly_ebpf::{AttachMode, LoadGen, Steering, Variant};
use butterfly_tests::cpu::pin_current_thread as pin;
use butterfly_tests::run_ok;
use butterfly_tests::veth_rig::{Reflect, VethRig};
use butterfly_tests::xdpgen::{Generator, install_stop_signal};
use packetgraph::bricks::Nic;
use packetgraph::bricks::nic::NicBackend;
use packetgraph::bricks::nic::afxdp::{AfXdp, AfXdpConfig};
use packetgraph::bricks::nic::dpdk::{Dpdk, DpdkConfig, PortId, eal_init};
use packetgraph::{Brick, Burst, Graph, Pool, PoolConfig, Worker};

const WARMUP: Duration = Duration::from_millis(500);
const WINDOW: Duration = Duration::from_secs(2);
const GEN_CPU: usize = 0;
const FWD_CPU: usize = 1;
const ROUNDS: usize = 2;
const NS: &str = "dpdkbench";

/// Frames back at `gen` per second over the window after the warm-up, in Mpps.
fn measure(sink: &LoadGen) -> f64 {
    std::thread::sleep(WARMUP);
    let (c0, t0) = (sink.sink_packets().unwrap(), Instant::now());
    std::thread::sleep(WINDOW);
    let (c1, t1) = (sink.sink_packets().unwrap(), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64() / 1e6
}

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
        while !run_ok(&["ip", "link", "show", "dut"]).contains("prog/xdp") {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "testpmd did not start its af_xdp port"
            );
            assert!(child.try_wait().unwrap().is_none(), "testpmd exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let gen_thread = Generator::start(None, "gen", frame.to_vec(), GEN_CPU);
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
    // SIGUSR1 interrupts the generator's long BPF_PROG_TEST_RUN (EINTR).
    install_stop_signal();
    let rig = VethRig::enter(NS, [10, 89, 0]);
    let frame = rig.vxlan_frame();
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
            let (mpps, counters) = run_forwarder(cmd, ready, &frame, &sink);
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
    drop(rig);
}
