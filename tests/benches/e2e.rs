//! `cargo xtask bench e2e` (privileged): butterflyd end to end against the kernel's own
//! path for the same traffic, on one host, in the same run.
//!
//! # What is measured
//! 64-byte inner frames (Ethernet + IPv4 + UDP 10.0.42.2:5001 ↔ 10.0.42.1:5000, one
//! flow), VNI 42, VXLAN over an IPv4 veth underlay (10.88.0.2 ↔ 10.88.0.1).
//!
//! - `e2e.vxlan_to_vm`: an XDP load generator on the underlay peer veth sends VXLAN into
//!   butterflyd's underlay veth: XDP steering → AF_XDP (copy mode: veth) → VTEP (decap)
//!   → switch-42 (the VNI has a second, idle vhost-user NIC, so the switch is on the
//!   path) → firewall (security group allowing UDP/5000 in; the flow is established by a
//!   warm-up before the window) → antispoof (MAC and IP checks on) → vhost-user →
//!   DPDK testpmd `net_virtio_user` in rxonly mode, standing in for the VM. Counted by
//!   testpmd (`Rx-pps`).
//! - `e2e.vm_to_vxlan`: testpmd txonly on `net_virtio_user` (the NIC's own MAC and IP as
//!   source, so antispoof lets it through) → vhost → antispoof → firewall (the same
//!   flow) → switch → VTEP (encap, unicast to the remote learned in the warm-up) →
//!   AF_XDP TX → the peer veth, where an XDP sink counts and drops VXLAN to 10.88.0.2,
//!   UDP 4789, VNI 42 (anything else is counted apart and passed).
//! - The kernel's path, same frames, same flow, same window: `e2e.kernel_vxlan_to_vm`:
//!   generator → underlay veth → `vxlan` device (VNI 42) → bridge → br_netfilter with
//!   nftables conntrack (inet forward chain: `ct state established accept`, UDP/5000 in
//!   and the VM's own address out for new flows, policy drop) and bridge-family antispoof
//!   rules (source MAC and IP of the VM port) → veth into the VM's namespace, counted by
//!   an XDP sink matching UDP to 10.0.42.1:5000. `e2e.kernel_vm_to_vxlan`: the generator
//!   on the VM's veth pushes the reverse frames into the bridge port → bridge → nftables
//!   → vxlan → underlay veth → the same VXLAN sink as Butterfly's.
//!
//! Each figure is the median of 3 back-to-back 2 s windows after a 1 s warm-up (these
//! machines are noisy; the windows are printed): the median second of testpmd's `Rx-pps`
//! for butterflyd's `vxlan_to_vm`, the XDP sinks' `matched` counts otherwise. The
//! bench also reads butterflyd's `nic stats` (firewall and antispoof drops, frames to
//! and from the VM, the idle NIC's frames: the switch must not flood) and the nftables
//! rule counters (the kernel's frames went through conntrack as established), prints
//! them, and fails when they show the wrong packets were counted.
//!
//! # CPU placement
//! Default on 2 CPUs: CPU 1 is the device under test (DUT); CPU 0 makes and takes the
//! traffic. With 3 CPUs or more the VM side (testpmd, the kernel VM's sink) gets CPU 2.
//! `E2E_GEN_CPU`, `E2E_DUT_CPU`, `E2E_VM_CPU` override.
//! - Butterfly: the worker is pinned to the DUT CPU (`--worker-cpu`) and busy-polls
//!   (`--busy-poll`, as DPDK's lcores do). The generator thread is pinned to CPU 0, testpmd
//!   (both lcores) to the VM CPU. veth runs the receiving end's NAPI on the sending CPU,
//!   so the XDP steering program and the copy into the UMEM run on CPU 0 (as a NIC's
//!   DMA would); AF_XDP TX runs in the worker's `sendto` on the DUT CPU.
//! - Kernel: the generator is pinned to CPU 0, where veth's NAPI turns the frames into
//!   skbs (GRO on, as the kernel needs NAPI to take XDP_TX frames); RPS on the receiving
//!   veth (`rps_cpus` = the DUT CPU) moves everything after that — vxlan, bridge,
//!   netfilter, conntrack, the transmit into the next veth — to the DUT CPU, one core.
//! - Both: the veths carrying the XDP sinks run threaded NAPI pinned to CPU 0 (underlay
//!   sinks) or the VM CPU (the kernel VM's sink), so counting costs the DUT nothing. The
//!   underlay sinks' NAPI threads run `SCHED_FIFO`: on 2 CPUs they share CPU 0 with the
//!   busy-polling traffic source (testpmd txonly, the generator), and at normal priority
//!   they got half of it, the veth ring filled and the veth dropped what the DUT sent
//!   (18% of butterflyd's frames), so the figure measured the counter. Now the source
//!   gets what the sink leaves, and when the DUT forwards about all the source offered
//!   the `vm_to_vxlan` RESULT line says so (the figure is then a lower bound).
//!
//! # What the figures mean on a shared machine
//! Other processes share both CPUs, so every figure also comes as `_per_cpu`: Mpps per
//! CPU-second the device under test actually got in the window — the worker thread's run
//! time (`/proc/PID/task/TID/schedstat`) for butterflyd, CPU 1's softirq time
//! (`/proc/stat`, tick-sampled) for the kernel. The bench prints how long the worker
//! waited for its CPU, and what testpmd and the generator got of CPU 0.
//!
//! # The paced generator (`vxlan_to_vm`, both paths)
//! On 2 CPUs the generator and testpmd's rxonly lcore share CPU 0. Two busy threads on
//! one CPU take turns of a scheduler tick (4 ms at 250 Hz): while a busy generator runs
//! nothing drains the virtqueue, while testpmd runs nothing feeds the AF_XDP ring, and the
//! figure measured the scheduler (a few tens of kpps). So for the measured `vxlan_to_vm`
//! window of BOTH paths the generator is paced ([`Pace`]): BPF_PROG_TEST_RUN calls of
//! `E2E_GEN_FRAMES` frames (default 2048: about butterflyd's AF_XDP RX ring, 1024, plus
//! what the worker drains during a call) separated by sleeps of `E2E_GEN_PAUSE_US` µs
//! (default 100), so CPU 0 changes hands at sub-millisecond granularity and testpmd runs
//! between calls. testpmd's virtqueue is the deepest virtio_user takes (`queue_size=1024`,
//! `--rxd=1024`). Both paths get the same offered pattern (bursts of E2E_GEN_FRAMES at
//! line rate); the offered load (frames the receiving veth's NAPI took,
//! `rx_queue_N_xdp_packets`), the generator's own count and, for butterflyd, the frames
//! the veth dropped for want of room in the AF_XDP RX ring are printed, and the `vxlan_to_vm` RESULT line says what was
//! offered to each path and whether a path delivered about all it was offered (then the
//! generator, not that path, bounds its figure and the ratio is not a fair comparison).
//! The paced generator offers about 0.5–1.2 Mpps to the kernel (whose receive path up to
//! the RPS hand-off runs in the generator's calls) and 1.4–2.6 Mpps to butterflyd, more
//! than either delivers. It does not remove the limit entirely: testpmd still waits for
//! CPU 0 during each call (and other processes share it), the 1024-descriptor
//! virtqueue then fills, and the vhost brick drops the rest; so the bench prints the rate
//! butterflyd handed to the vhost brick, and the RESULT line says when it exceeds what
//! testpmd took (then `vxlan_to_vm` is a lower bound for butterflyd; the worker is not
//! busy all the time). Butterflyd's AF_XDP RX ring (1024) also overflows during bursts
//! (printed). The warm-ups and `vm_to_vxlan` (one busy thread per CPU) keep the unpaced
//! generator.
//!
//! Needs root (netns, XDP, BPF), `ip`, `nft`, `ethtool`, `stdbuf` and `dpdk-testpmd`
//! (apt `dpdk`); builds butterflyd in release mode if needed. Fails with a message when
//! something is missing. Namespaces, daemons, testpmd and XDP programs are removed on
//! exit, also on failure.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use butterfly_ebpf::{LoadGen, SinkCounts, SinkMatch, VXLAN_PORT};
use butterfly_tests::cpu::{
    CpuTimes, thread_cpu_ns, thread_named, thread_report, thread_times, thread_wait_ns,
};
use butterfly_tests::daemon::{Host, bin_dir};
use butterfly_tests::testpmd::{self, Testpmd};
use butterfly_tests::xdpgen::{Generator, Pace, install_stop_signal};
use butterfly_tests::{Netns, TempDir, require_root, require_tool};

/// Where things run: `E2E_GEN_CPU` (default 0: the load generators and the underlay
/// sinks), `E2E_DUT_CPU` (default 1: butterflyd's worker; the kernel's receive path through
/// RPS), `E2E_VM_CPU` (default 2 on a machine with 3 CPUs or more, else the generator's:
/// testpmd and the kernel VM's sink).
#[derive(Debug, Clone, Copy)]
struct Cpus {
    generator: usize,
    dut: usize,
    vm: usize,
}

fn cpus() -> Cpus {
    static CPUS: std::sync::OnceLock<Cpus> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let env = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        let generator = env("E2E_GEN_CPU", 0);
        let c = Cpus {
            generator,
            dut: env("E2E_DUT_CPU", 1),
            vm: env("E2E_VM_CPU", if n >= 3 { 2 } else { generator }),
        };
        for (what, cpu) in [("generator", c.generator), ("dut", c.dut), ("vm", c.vm)] {
            assert!(cpu < n, "{what} CPU {cpu}: this machine has {n} CPUs");
        }
        assert_ne!(
            c.generator, c.dut,
            "the generator and the DUT need different CPUs"
        );
        assert_ne!(c.vm, c.dut, "the VM and the DUT need different CPUs");
        c
    })
}
const WARMUP: Duration = Duration::from_secs(1);
/// One measuring window; each figure is the median of [`ROUNDS`] back-to-back windows.
const WINDOW: Duration = Duration::from_secs(2);
/// Windows per figure (the median is reported: these machines are noisy).
const ROUNDS: u32 = 3;
/// How long testpmd and the first frames may take on a loaded machine.
const START: Duration = Duration::from_secs(60);

const VNI: u32 = 42;
const FRAME_LEN: usize = 64;
/// Underlay: the generator's end (the remote VTEP) and the device under test's end.
const GEN_MAC: [u8; 6] = [0x02, 0, 0, 0x88, 0, 0x02];
const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const DUT_MAC: [u8; 6] = [0x02, 0, 0, 0x88, 0, 0x01];
const DUT_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The VM (testpmd's port, or the kernel VM namespace's veth).
const VM_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x01];
const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 42, 1);
const VM_PORT: u16 = 5000;
/// The remote end of the flow, behind the remote VTEP.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x42, 0x02];
const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 42, 2);
const PEER_PORT: u16 = 5001;
/// The idle second NIC of the VNI (puts the switch on the path).
const IDLE_MAC: &str = "52:54:00:00:00:09";
/// butterflyd's worker thread name (`butterfly-worker` cut to 15 bytes by the kernel).
const WORKER_THREAD: &str = "butterfly-worke";

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The 64-byte inner frame: Ethernet, IPv4, UDP and a zero payload.
fn inner_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut f, &[0u8; FRAME_LEN - 42])
        .expect("building the inner frame");
    assert_eq!(f.len(), FRAME_LEN);
    f
}

/// Remote → VM inner frame.
fn to_vm() -> Vec<u8> {
    inner_frame(PEER_MAC, VM_MAC, (PEER_IP, PEER_PORT), (VM_IP, VM_PORT))
}

/// VM → remote inner frame (what testpmd txonly sends).
fn from_vm() -> Vec<u8> {
    inner_frame(VM_MAC, PEER_MAC, (VM_IP, VM_PORT), (PEER_IP, PEER_PORT))
}

/// `inner` in VXLAN (RFC 7348 §5: UDP checksum 0, VNI 42, I flag) from the remote VTEP
/// to the device under test.
fn vxlan_frame(inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(VNI << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(GEN_MAC, DUT_MAC)
        .ipv4(GEN_IP.octets(), DUT_IP.octets(), 64)
        .udp(49200, VXLAN_PORT)
        .write(&mut f, &payload)
        .expect("building the VXLAN frame");
    // The kernel accepts a zero outer UDP checksum over IPv4 (RFC 7348 §5); so does the
    // VTEP. Zero it so both paths see the same bytes and skip the same work.
    f[40..42].copy_from_slice(&[0, 0]);
    f
}

/// A veth pair created directly inside namespaces: `a` in `ns_a`, `b` in `ns_b` (short
/// fixed names; the namespaces are ours and unique). Goes away with the namespaces.
fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) {
    ns_a.run_ok(&[
        "ip",
        "link",
        "add",
        a,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns_b.name(),
    ]);
}

fn setup_if(ns: &Netns, dev: &str, mac: [u8; 6], cidr: &str) {
    ns.run_ok(&["ip", "link", "set", dev, "address", &mac_str(mac)]);
    ns.addr(dev, cidr);
    ns.up(dev);
}

/// Attaches a matching XDP sink to `dev` in `ns` and moves that veth's NAPI to a thread
/// pinned to `cpu`.
fn sink(ns: &Netns, dev: &str, m: SinkMatch, cpu: usize, priority: Priority) -> LoadGen {
    let mut lg = LoadGen::load().unwrap_or_else(|e| panic!("loading the XDP sink: {e}"));
    ns.within(|| lg.attach_match_sink(dev, m))
        .unwrap_or_else(|e| panic!("attaching the XDP sink to {dev}: {e}"));
    napi_on_cpu(ns, dev, cpu, priority);
    lg
}

/// Scheduling of a sink's NAPI thread.
#[derive(Clone, Copy, PartialEq)]
enum Priority {
    /// Like any other thread (it takes turns with whatever shares its CPU).
    Normal,
    /// `SCHED_FIFO`: it runs as soon as frames wait, ahead of the busy-polling threads
    /// (generator, testpmd) that share its CPU, so the counter never drops frames and
    /// the figure is what the device under test put on the wire.
    RealTime,
}

/// Threaded NAPI for `dev`, its kernel thread(s) (`napi/DEV-ID`) pinned to `cpu`.
fn napi_on_cpu(ns: &Netns, dev: &str, cpu: usize, priority: Priority) {
    ns.exec(&format!("echo 1 > /sys/class/net/{dev}/threaded"));
    let want = format!("napi/{dev}-");
    let mut pinned = 0;
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        // comm is cut at 15 characters: compare what is left.
        if comm.len() >= 6 && want.starts_with(comm) || comm.starts_with(&want) {
            let pid = e.file_name().to_string_lossy().into_owned();
            if butterfly_tests::run(&["taskset", "-pc", &cpu.to_string(), &pid])
                .status
                .success()
            {
                pinned += 1;
                if priority == Priority::RealTime {
                    let out = butterfly_tests::run(&["chrt", "-f", "-p", "50", &pid]);
                    assert!(
                        out.status.success(),
                        "chrt -f -p 50 {pid} ({comm}): {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }
    assert!(pinned > 0, "no NAPI thread for {dev} to pin to CPU {cpu}");
}

/// RPS: the receive processing of `dev`'s queues goes to `cpu`.
fn rps(ns: &Netns, dev: &str, cpu: usize) {
    let mask = format!("{:x}", 1u64 << cpu);
    let out = ns.exec(&format!(
        "for q in /sys/class/net/{dev}/queues/rx-*; do echo {mask} > $q/rps_cpus || exit 1; done"
    ));
    assert!(
        out.status.success(),
        "RPS on {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A rate measured over the window, and the share of a CPU the device under test got
/// during it (CPU-seconds per second: softirq time of CPU 1 for the kernel, the worker
/// thread's run time for butterflyd; other processes share these CPUs).
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    mpps: f64,
    dut_load: f64,
    /// Mpps of each window, in order (the figure is their median).
    rounds: [f64; ROUNDS as usize],
}

impl Rate {
    /// Mpps per CPU-second of the device under test.
    fn per_cpu(&self) -> f64 {
        if self.dut_load > 0.0 {
            self.mpps / self.dut_load
        } else {
            0.0
        }
    }

    /// The rounds as `a/b/c`.
    fn rounds(&self) -> String {
        let r: Vec<String> = self.rounds.iter().map(|m| format!("{m:.3}")).collect();
        r.join("/")
    }
}

/// CPU-seconds the kernel spent in softirqs on the DUT CPU so far.
fn kernel_dut_seconds() -> f64 {
    CpuTimes::read(cpus().dut).softirq as f64 * CpuTimes::tick()
}

/// Measures `count` and `dut_seconds` over [`ROUNDS`] windows (call after the warm-up):
/// the window with the median rate.
fn measure(count: &dyn Fn() -> u64, dut_seconds: &dyn Fn() -> f64) -> Rate {
    let mut windows: Vec<Rate> = (0..ROUNDS)
        .map(|_| {
            let (c0, t0, s0) = (count(), Instant::now(), dut_seconds());
            std::thread::sleep(WINDOW);
            let (c1, t1, s1) = (count(), Instant::now(), dut_seconds());
            let wall = (t1 - t0).as_secs_f64();
            Rate {
                mpps: c1.saturating_sub(c0) as f64 / wall / 1e6,
                dut_load: (s1 - s0) / wall,
                rounds: Default::default(),
            }
        })
        .collect();
    let rounds = std::array::from_fn(|i| windows[i].mpps);
    windows.sort_by(|a, b| a.mpps.total_cmp(&b.mpps));
    Rate {
        rounds,
        ..windows[windows.len() / 2]
    }
}

/// The median of `v` (0 when empty).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Waits until `count` grows (the first frames got through).
fn wait_flowing(what: &str, count: &dyn Fn() -> u64, diag: &dyn Fn() -> String) {
    let c0 = count();
    let t0 = Instant::now();
    while count() == c0 {
        if t0.elapsed() > START {
            panic!("{what}: no frame counted after {START:?}\n{}", diag());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With `E2E_PERF=DIR`: `perf record -g` of thread `tid` for the window, into
/// `DIR/e2e-NAME.data` (for `perf report -i`). Wait for the returned process.
fn perf_window(tid: i32, name: &str) -> Option<butterfly_tests::KillOnDrop> {
    let dir = std::env::var("E2E_PERF").ok()?;
    let out = Path::new(&dir).join(format!("e2e-{name}.data"));
    let child = std::process::Command::new("perf")
        .args(["record", "-q", "-g", "-t", &tid.to_string(), "-o"])
        .arg(&out)
        .args([
            "--",
            "sleep",
            &format!("{}", (WINDOW * ROUNDS).as_secs_f64()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| println!("e2e: perf record: {e}"))
        .ok()?;
    println!("e2e: recording {} for the window", out.display());
    Some(butterfly_tests::KillOnDrop::new(child))
}

/// Sum over the RX queues of veth `dev` (in `ns`) of `ethtool -S` counter
/// `rx_queue_N_NAME`.
fn veth_stat(ns: &Netns, dev: &str, name: &str) -> u64 {
    ns.run_ok(&["ethtool", "-S", dev])
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| {
            k.strip_prefix("rx_queue_")
                .and_then(|r| r.split_once('_'))
                .is_some_and(|(_, n)| n == name)
        })
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Frames offered to veth `dev` in `ns` so far: every frame its NAPI took from the peer
/// (`rx_queue_N_xdp_packets`, which already includes the frames its XDP program then
/// failed to redirect, `rx_queue_N_drops`: an AF_XDP RX ring without room).
fn offered(ns: &Netns, dev: &str) -> u64 {
    veth_stat(ns, dev, "xdp_packets")
}

/// The load generator on `dev` in `ns`, on CPU 0, as fast as it goes.
fn generator(ns: &Netns, dev: &str, frame: Vec<u8>) -> Generator {
    Generator::start(Some(ns), dev, frame, cpus().generator)
}

/// The pace of the generator for `vxlan_to_vm` (both paths): `E2E_GEN_FRAMES` frames
/// per call (default 2048, about the depth of butterflyd's AF_XDP RX ring, 1024, plus
/// what the worker drains while a call runs), then a sleep of `E2E_GEN_PAUSE_US`
/// microseconds (default 100).
fn pace() -> Pace {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    Pace {
        frames: env("E2E_GEN_FRAMES", 2048).clamp(1, u64::from(u32::MAX)) as u32,
        pause: Duration::from_micros(env("E2E_GEN_PAUSE_US", 100)),
    }
}

/// The paced load generator ([`pace`]) on `dev` in `ns`, on CPU 0.
fn paced_generator(ns: &Netns, dev: &str, frame: Vec<u8>) -> Generator {
    Generator::start_paced(Some(ns), dev, frame, cpus().generator, Some(pace()))
}

fn vxlan_sink_match() -> SinkMatch {
    SinkMatch {
        udp_port: VXLAN_PORT,
        dst: Some(GEN_IP),
        vni: Some(VNI),
    }
}

/// Checks that what a sink counted in a window is what was sent: `other` frames (passed
/// to the kernel: not VXLAN to the right place) stay below 1% of the matched ones.
fn check_sink(what: &str, before: SinkCounts, after: SinkCounts) {
    let matched = after.matched - before.matched;
    let other = after.other - before.other;
    println!("e2e: {what}: sink matched {matched}, other {other}");
    assert!(matched > 0, "{what}: the sink matched nothing");
    assert!(
        other * 100 <= matched,
        "{what}: {other} frames of the wrong kind reached the sink (vs {matched} right ones)"
    );
}

// ---------------------------------------------------------------------------------------
// The kernel's path.

/// Kernel results.
struct KernelRun {
    to_vm: Rate,
    /// Mpps the paced generator offered to the underlay veth during the `to_vm` window.
    to_vm_offered: f64,
    from_vm: Rate,
}

fn kernel() -> KernelRun {
    let gen_ns = Netns::new("e2ekg");
    let host = Netns::new("e2ekh");
    let vm = Netns::new("e2ekv");
    for ns in [&gen_ns, &host, &vm] {
        ns.disable_ipv6();
    }
    veth(&gen_ns, "kgen", &host, "kund");
    veth(&vm, "kvm1", &host, "kvm0");
    setup_if(&gen_ns, "kgen", GEN_MAC, &format!("{GEN_IP}/24"));
    setup_if(&host, "kund", DUT_MAC, &format!("{DUT_IP}/24"));
    setup_if(&vm, "kvm1", VM_MAC, &format!("{VM_IP}/24"));
    host.run_ok(&[
        "ip",
        "link",
        "add",
        "vx42",
        "type",
        "vxlan",
        "id",
        &VNI.to_string(),
        "local",
        &DUT_IP.to_string(),
        "remote",
        &GEN_IP.to_string(),
        "dstport",
        &VXLAN_PORT.to_string(),
        "dev",
        "kund",
    ]);
    host.run_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    for dev in ["vx42", "kvm0"] {
        host.run_ok(&["ip", "link", "set", dev, "master", "br0"]);
        host.up(dev);
    }
    host.up("br0");
    host.sysctl("net.bridge.bridge-nf-call-iptables=1");
    // veth takes frames sent by XDP_TX only with NAPI on: GRO on (the default for a NIC).
    for dev in ["kund", "kvm0"] {
        host.run_ok(&["ethtool", "-K", dev, "gro", "on"]);
        rps(&host, dev, cpus().dut);
    }
    let vm_mac = mac_str(VM_MAC);
    let rules = format!(
        "table inet e2e {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related counter accept
    ip daddr {VM_IP} udp dport {VM_PORT} ct state new counter accept
    ip saddr {VM_IP} ct state new counter accept
  }}
}}
table bridge e2e_antispoof {{
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname \"kvm0\" ether saddr != {vm_mac} counter drop
    iifname \"kvm0\" ip saddr != {VM_IP} counter drop
  }}
}}
"
    );
    let out = host.exec(&format!("nft -f - <<'EOF'\n{rules}EOF"));
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let under_sink = sink(
        &gen_ns,
        "kgen",
        vxlan_sink_match(),
        cpus().generator,
        Priority::RealTime,
    );
    let vm_sink = sink(
        &vm,
        "kvm1",
        SinkMatch {
            udp_port: VM_PORT,
            dst: Some(VM_IP),
            vni: None,
        },
        cpus().vm,
        Priority::Normal,
    );
    let established = || -> u64 {
        let r = host.run_ok(&["nft", "list", "chain", "inet", "e2e", "forward"]);
        r.lines()
            .find(|l| l.contains("established"))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let diag = || host.run_ok(&["nft", "list", "ruleset"]);

    // Warm-up: the bridge and vxlan learn the remote, conntrack sees the flow.
    let g = generator(&gen_ns, "kgen", vxlan_frame(&to_vm()));
    let vm_count = || vm_sink.match_counts().map_or(0, |c| c.matched);
    wait_flowing("kernel vxlan → VM (warm-up)", &vm_count, &diag);
    g.stop().expect("generator");

    // VM → VXLAN first: conntrack then has seen both directions (established).
    let before = under_sink.match_counts().unwrap();
    let g = generator(&vm, "kvm1", from_vm());
    let under_count = || under_sink.match_counts().map_or(0, |c| c.matched);
    wait_flowing("kernel VM → vxlan", &under_count, &diag);
    let e0 = established();
    std::thread::sleep(WARMUP);
    let from_vm_rate = measure(&under_count, &kernel_dut_seconds);
    let e1 = established();
    g.stop().expect("generator");
    check_sink(
        "kernel VM → vxlan",
        before,
        under_sink.match_counts().unwrap(),
    );
    println!(
        "e2e: kernel VM → vxlan: {:.3} Mpps (windows {}), DUT CPU softirq {:.0}% ({:.3} Mpps \
         per CPU-second), conntrack established +{}",
        from_vm_rate.mpps,
        from_vm_rate.rounds(),
        from_vm_rate.dut_load * 100.0,
        from_vm_rate.per_cpu(),
        e1 - e0
    );

    let before = vm_sink.match_counts().unwrap();
    let g = paced_generator(&gen_ns, "kgen", vxlan_frame(&to_vm()));
    wait_flowing("kernel vxlan → VM", &vm_count, &diag);
    let e0 = established();
    std::thread::sleep(WARMUP);
    let (o0, t0, sent0) = (offered(&host, "kund"), Instant::now(), g.frames_sent());
    let to_vm_rate = measure(&vm_count, &kernel_dut_seconds);
    let secs = t0.elapsed().as_secs_f64();
    let offered_mpps = (offered(&host, "kund") - o0) as f64 / secs / 1e6;
    let sent_mpps = (g.frames_sent() - sent0) as f64 / secs / 1e6;
    let e1 = established();
    g.stop().expect("generator");
    check_sink("kernel vxlan → VM", before, vm_sink.match_counts().unwrap());
    println!(
        "e2e: kernel vxlan → VM: {:.3} Mpps (windows {}; offered {offered_mpps:.3}, paced \
         generator sent {sent_mpps:.3}), DUT CPU softirq {:.0}% ({:.3} Mpps per CPU-second), \
         conntrack established +{}; kund rx_dropped {}",
        to_vm_rate.mpps,
        to_vm_rate.rounds(),
        to_vm_rate.dut_load * 100.0,
        to_vm_rate.per_cpu(),
        e1 - e0,
        host.link_stat("kund", "rx_dropped")
    );
    // Every measured frame went through conntrack as established.
    assert!(
        e1 - e0 > 0,
        "the kernel's frames did not hit the established rule:\n{}",
        diag()
    );
    KernelRun {
        to_vm: to_vm_rate,
        to_vm_offered: offered_mpps,
        from_vm: from_vm_rate,
    }
}

// ---------------------------------------------------------------------------------------
// Butterfly's path.

struct ButterflyRun {
    to_vm: Rate,
    /// Mpps the paced generator offered to the underlay veth during the `to_vm` window.
    to_vm_offered: f64,
    /// Mpps butterflyd handed to the VM's vhost brick in the `to_vm` window (frames the
    /// brick dropped on a full virtqueue included).
    to_vm_handed: f64,
    from_vm: Rate,
    /// Mpps testpmd (the VM) put on its virtqueue during the `from_vm` window.
    from_vm_offered: f64,
    /// Frames testpmd sent over its whole run, and frames it dropped on a full virtqueue.
    from_vm_sent: u64,
    from_vm_full: u64,
}

/// The counters of butterflyd that tell whether the right frames went the right way.
#[derive(Debug, Clone, Copy, Default)]
struct Nics {
    to_vm: u64,
    from_vm: u64,
    dropped: u64,
    to_idle: u64,
}

fn nics(d: &Host) -> Nics {
    Nics {
        to_vm: d.stat("vm", "tx_packets"),
        from_vm: d.stat("vm", "rx_packets"),
        dropped: d.stat("vm", "dropped_firewall") + d.stat("vm", "dropped_antispoof"),
        to_idle: d.stat("idle", "tx_packets"),
    }
}

fn virtio_user(sock: &Path) -> String {
    format!(
        "net_virtio_user0,path={},queues=1,queue_size=1024,mac={}",
        sock.display(),
        mac_str(VM_MAC)
    )
}

fn testpmd_lcores() -> String {
    let vm = cpus().vm;
    format!("{vm}@{vm},1@{vm}")
}

fn butterfly() -> ButterflyRun {
    let dir = TempDir::new("e2e-bench");
    let gen_ns = Netns::new("e2ebg");
    let host = Netns::new("e2ebh");
    for ns in [&gen_ns, &host] {
        ns.disable_ipv6();
    }
    veth(&gen_ns, "bgen", &host, "bdut");
    setup_if(&gen_ns, "bgen", GEN_MAC, &format!("{GEN_IP}/24"));
    setup_if(&host, "bdut", DUT_MAC, &format!("{DUT_IP}/24"));
    let under_sink = sink(
        &gen_ns,
        "bgen",
        vxlan_sink_match(),
        cpus().generator,
        Priority::RealTime,
    );
    let cpu = cpus().dut.to_string();
    let mut d = Host::new(
        "dut",
        host,
        "bdut",
        &DUT_IP.to_string(),
        dir.path().to_path_buf(),
        bin_dir(),
    );
    // Busy-polling, as a PMD thread: an idle sleep of the worker would let the AF_XDP
    // ring overflow during the generator's bursts.
    d.extra_args = ["--worker-cpu", &cpu, "--xdp-mode", "native", "--busy-poll"]
        .map(String::from)
        .to_vec();
    d.start();
    d.cli(&["sg", "add", "e2e"]);
    d.cli(&[
        "sg",
        "rule",
        "add",
        "e2e",
        "--dir",
        "in",
        "--ip-proto",
        "udp",
        "--port",
        &VM_PORT.to_string(),
        "--cidr",
        "10.0.42.0/24",
    ]);
    let sock = dir.join("vm.sock");
    let vni = VNI.to_string();
    let nic = |id: &str, mac: &str, ip: &str, sock: &Path| {
        d.cli(&[
            "nic",
            "add",
            "--id",
            id,
            "--mac",
            mac,
            "--vni",
            &vni,
            "--ip",
            ip,
            "--sg",
            "e2e",
            "--enable-antispoof",
            "--type",
            "vhost-user-server",
            "--socket-path",
            &sock.display().to_string(),
        ])
    };
    nic("vm", &mac_str(VM_MAC), &VM_IP.to_string(), &sock);
    nic("idle", IDLE_MAC, "10.0.42.9", &dir.join("idle.sock"));
    let status = d.cli(&["status"]);
    for brick in ["switch-42", "firewall-vm", "antispoof-vm", "vm-vm", "vtep"] {
        assert!(
            status.contains(&format!("\"{brick}\"")),
            "no {brick} in the graph:\n{status}"
        );
    }
    let diag = || format!("{}\ndaemon log:\n{}", d.cli(&["status"]), d.log());
    let (pid, worker) = (d.pid().expect("butterflyd runs"), WORKER_THREAD);
    let worker_tid = thread_named(pid, worker)
        .unwrap_or_else(|| panic!("no thread {worker} in butterflyd ({pid})"));
    let worker_seconds = || thread_cpu_ns(pid, worker_tid) as f64 / 1e9;
    let worker_waited = || thread_wait_ns(pid, worker_tid) as f64 / 1e9;

    // Warm-up: the VTEP learns the remote (inner MAC → 10.88.0.2 and its MAC), the
    // switch learns where the remote is, the firewall creates the flow.
    let g = generator(&gen_ns, "bgen", vxlan_frame(&to_vm()));
    let fw_in = || {
        let c = d.brick_counters("firewall-vm");
        c[0] + c[2]
    };
    wait_flowing("butterfly vxlan → firewall (warm-up)", &fw_in, &diag);
    std::thread::sleep(Duration::from_millis(200));
    g.stop().expect("generator");

    // VM → VXLAN.
    let before = under_sink.match_counts().unwrap();
    let pmd = Testpmd::start(
        &format!("e2etx{}", std::process::id()),
        &testpmd_lcores(),
        &virtio_user(&sock),
        &[
            "--forward-mode=txonly",
            &format!("--txpkts={FRAME_LEN}"),
            &format!("--eth-peer=0,{}", mac_str(PEER_MAC)),
            &format!("--tx-ip={VM_IP},{PEER_IP}"),
            &format!("--tx-udp={VM_PORT},{PEER_PORT}"),
        ],
    );
    let under_count = || under_sink.match_counts().map_or(0, |c| c.matched);
    wait_flowing("butterfly VM → vxlan", &under_count, &|| {
        format!("{}\ntestpmd:\n{}", diag(), pmd.output())
    });
    let n0 = nics(&d);
    let from = pmd.len();
    std::thread::sleep(WARMUP);
    let perf = perf_window(worker_tid, "vm_to_vxlan");
    let w0 = worker_waited();
    let from_vm_rate = measure(&under_count, &worker_seconds);
    let from_vm_wait = (worker_waited() - w0) / (WINDOW * ROUNDS).as_secs_f64();
    if let Some(p) = perf {
        p.wait_output();
    }
    let n1 = nics(&d);
    let tx_offered = pmd.mean_rate("Tx-pps:", from) / 1e6;
    let pmd_out = pmd.stop();
    let (pmd_sent, pmd_full) = tx_totals(&pmd_out);
    check_sink(
        "butterfly VM → vxlan",
        before,
        under_sink.match_counts().unwrap(),
    );
    println!(
        "e2e: butterfly VM → vxlan: {:.3} Mpps (windows {}), worker on CPU {:.0}%, waiting \
         for it {:.0}% ({:.3} Mpps per CPU-second); testpmd offered {tx_offered:.3} Mpps (over the whole \
         run it sent {pmd_sent} frames and found the virtqueue full for {pmd_full} more); \
         vm rx +{}, firewall+antispoof drops +{}",
        from_vm_rate.mpps,
        from_vm_rate.rounds(),
        from_vm_rate.dut_load * 100.0,
        from_vm_wait * 100.0,
        from_vm_rate.per_cpu(),
        n1.from_vm - n0.from_vm,
        n1.dropped - n0.dropped
    );
    assert!(
        (n1.dropped - n0.dropped) * 100 <= n1.from_vm - n0.from_vm,
        "butterfly VM → vxlan: the firewall or antispoof dropped the flow\n{}\n{pmd_out}",
        diag()
    );

    // VXLAN → VM.
    let pmd = Testpmd::start(
        &format!("e2erx{}", std::process::id()),
        &testpmd_lcores(),
        &virtio_user(&sock),
        // The deepest virtqueue virtio_user takes (queue_size=1024 in the vdev), all of
        // it posted for receive, so a pause of testpmd's lcore does not overflow it.
        &["--forward-mode=rxonly", "--rxd=1024"],
    );
    // Wait until testpmd has the port up (it prints its statistics every second).
    let t0 = Instant::now();
    while pmd.samples("Rx-pps:", 0).is_empty() {
        assert!(
            t0.elapsed() < START && !pmd.exited(),
            "testpmd rxonly did not start:\n{}",
            pmd.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let g = paced_generator(&gen_ns, "bgen", vxlan_frame(&to_vm()));
    pmd.wait_for_rate("Rx-pps:", START);
    std::thread::sleep(WARMUP);
    let n0 = nics(&d);
    let from = pmd.len();
    let perf = perf_window(worker_tid, "vxlan_to_vm");
    let (t0, s0, w0) = (Instant::now(), worker_seconds(), worker_waited());
    let (o0, sent0) = (offered(&d.ns, "bdut"), g.frames_sent());
    let ring_full0 = veth_stat(&d.ns, "bdut", "drops");
    let (pmd0, me0) = (thread_times(pmd.pid()), thread_times(std::process::id()));
    std::thread::sleep(WINDOW * ROUNDS);
    let (t1, s1, w1) = (Instant::now(), worker_seconds(), worker_waited());
    let secs = (t1 - t0).as_secs_f64();
    let offered_mpps = (offered(&d.ns, "bdut") - o0) as f64 / secs / 1e6;
    let sent_mpps = (g.frames_sent() - sent0) as f64 / secs / 1e6;
    let ring_full =
        veth_stat(&d.ns, "bdut", "drops").saturating_sub(ring_full0) as f64 / secs / 1e6;
    println!(
        "e2e: CPU use during the window: testpmd: {}; bench: {}",
        thread_report(&pmd0, &thread_times(pmd.pid()), secs),
        thread_report(&me0, &thread_times(std::process::id()), secs)
    );
    let n1 = nics(&d);
    // testpmd prints Rx-pps once a second: the median second of the windows.
    let to_vm_rate = Rate {
        mpps: median(pmd.samples("Rx-pps:", from)) / 1e6,
        dut_load: (s1 - s0) / (t1 - t0).as_secs_f64(),
        rounds: Default::default(),
    };
    if let Some(p) = perf {
        p.wait_output();
    }
    g.stop().expect("generator");
    let pmd_out = pmd.stop();
    let to_vm = (n1.to_vm - n0.to_vm) as f64 / (t1 - t0).as_secs_f64() / 1e6;
    println!(
        "e2e: butterfly vxlan → VM: {:.3} Mpps (testpmd Rx-pps; offered {offered_mpps:.3}, \
         paced generator sent {sent_mpps:.3}, {ring_full:.3} of it dropped by the veth \
         for want of room in butterflyd's AF_XDP RX ring), \
         worker on CPU {:.0}%, waiting for it {:.0}% ({:.3} Mpps per CPU-second); butterflyd \
         handed the VM's vhost brick {to_vm:.3} Mpps ({:.3} per worker CPU-second, frames the \
         vhost brick drops on a full ring included), idle NIC +{}, firewall+antispoof drops \
         +{}",
        to_vm_rate.mpps,
        to_vm_rate.dut_load * 100.0,
        (w1 - w0) / (t1 - t0).as_secs_f64() * 100.0,
        to_vm_rate.per_cpu(),
        to_vm / to_vm_rate.dut_load.max(1e-9),
        n1.to_idle - n0.to_idle,
        n1.dropped - n0.dropped
    );
    assert!(to_vm_rate.mpps > 0.0, "testpmd counted nothing:\n{pmd_out}");
    assert!(
        n1.to_idle - n0.to_idle == 0,
        "the switch flooded to the idle NIC: frames were not unicast to the VM\n{}",
        diag()
    );
    assert!(
        (n1.dropped - n0.dropped) as f64 <= 0.01 * (n1.to_vm - n0.to_vm) as f64,
        "butterfly vxlan → VM: the firewall or antispoof dropped the flow\n{}",
        diag()
    );
    println!(
        "e2e: butterflyd graph after the run:\n{}",
        d.cli(&["status"])
    );
    ButterflyRun {
        to_vm: to_vm_rate,
        to_vm_offered: offered_mpps,
        to_vm_handed: to_vm,
        from_vm: from_vm_rate,
        from_vm_offered: tx_offered,
        from_vm_sent: pmd_sent,
        from_vm_full: pmd_full,
    }
}

/// testpmd's totals at exit (`Accumulated forward statistics`): frames sent, and frames
/// it dropped because the virtqueue was full (`TX-dropped`, txonly); 0 when absent.
fn tx_totals(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains("TX-dropped:"))
        .unwrap_or("");
    let field = |key| testpmd::values(line, key).first().map_or(0, |v| *v as u64);
    (field("TX-packets:"), field("TX-dropped:"))
}

/// Context for the `vxlan_to_vm` result: what the paced generator offered to each path,
/// and which figure the offered load (not the path) bounds: a path that delivered 90% or
/// more of what it was offered may be able to do more.
fn offered_note(ours: f64, ours_offered: f64, kernel: f64, kernel_offered: f64) -> String {
    let p = pace();
    let mut note = format!(
        "; paced generator {} frames/{} µs offered {ours_offered:.3} Mpps to butterflyd, \
         {kernel_offered:.3} to the kernel",
        p.frames,
        p.pause.as_micros()
    );
    let bound = |got: f64, offered: f64| offered > 0.0 && got >= 0.9 * offered;
    if bound(kernel, kernel_offered) {
        note.push_str(
            "; the kernel delivered about all it was offered: the generator bounds the \
             baseline, the ratio may overstate butterflyd",
        );
    }
    if bound(ours, ours_offered) {
        note.push_str(
            "; butterflyd delivered about all it was offered: the generator bounds it, \
             the ratio may understate it",
        );
    }
    note
}

fn main() {
    require_root();
    for tool in ["ip", "nft", "ethtool", "stdbuf", "taskset", "dpdk-testpmd"] {
        require_tool(tool);
    }
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        "the e2e bench needs 2 CPUs (traffic and device under test on different CPUs)"
    );
    let c = cpus();
    install_stop_signal();
    // Criterion-style arguments (`--bench`) are ignored. E2E_ONLY=kernel|butterfly runs
    // one side (for profiling).
    let only = std::env::var("E2E_ONLY").ok();
    println!(
        "e2e: {FRAME_LEN}-byte inner frames, 1 flow, VNI {VNI}; generator on CPU {}, \
         device under test on CPU {}, VM (testpmd) on CPU {}; {WARMUP:?} warm-up, \
         {WINDOW:?} windows",
        c.generator, c.dut, c.vm
    );
    let k = (only.as_deref() != Some("butterfly")).then(kernel);
    let b = (only.as_deref() != Some("kernel")).then(butterfly);
    let ratio = |ours: f64, base: f64| if base > 0.0 { ours / base } else { 0.0 };
    if let Some(k) = &k {
        for (name, r) in [("vxlan_to_vm", k.to_vm), ("vm_to_vxlan", k.from_vm)] {
            println!(
                "RESULT e2e.kernel_{name}: {:.3} Mpps ({:.3} Mpps per CPU-second, CPU \
                 {} softirq {:.0}%)",
                r.mpps,
                r.per_cpu(),
                c.dut,
                r.dut_load * 100.0
            );
        }
    }
    if let Some(b) = &b {
        let (kt, kf) = k
            .as_ref()
            .map_or((Rate::default(), Rate::default()), |k| (k.to_vm, k.from_vm));
        let k_offered = k.as_ref().map_or(0.0, |k| k.to_vm_offered);
        let mut to_vm_note = offered_note(b.to_vm.mpps, b.to_vm_offered, kt.mpps, k_offered);
        if b.to_vm_handed > 1.1 * b.to_vm.mpps {
            to_vm_note.push_str(&format!(
                "; butterflyd handed the vhost brick {:.3} Mpps, the VM (testpmd, sharing a CPU \
                 with the generator) took {:.3}: a lower bound for butterflyd",
                b.to_vm_handed, b.to_vm.mpps
            ));
        }
        // testpmd shares a CPU with the underlay sink: when butterflyd forwarded about all
        // it was offered and testpmd (almost) never found the virtqueue full, the VM, not
        // butterflyd, set the figure.
        let full = b.from_vm_full as f64 / (b.from_vm_full + b.from_vm_sent).max(1) as f64;
        let mut from_vm_note = format!(
            "; the VM (testpmd) offered {:.3} Mpps and found its virtqueue full for {:.0}% of \
             its frames",
            b.from_vm_offered,
            full * 100.0
        );
        if b.from_vm.mpps >= 0.95 * b.from_vm_offered && full < 0.01 {
            from_vm_note.push_str(": the VM bounds this figure, a lower bound for butterflyd");
        }
        for (name, r, base, note) in [
            ("vxlan_to_vm", b.to_vm, kt, to_vm_note.as_str()),
            ("vm_to_vxlan", b.from_vm, kf, from_vm_note.as_str()),
        ] {
            println!(
                "RESULT e2e.{name}: {:.3} Mpps (ratio {:.2} vs kernel{note})",
                r.mpps,
                ratio(r.mpps, base.mpps)
            );
            println!(
                "RESULT e2e.{name}_per_cpu: {:.3} Mpps per CPU-second (ratio {:.2} vs kernel)",
                r.per_cpu(),
                ratio(r.per_cpu(), base.per_cpu())
            );
        }
    }
}
