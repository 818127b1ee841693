//! The vhost brick against DPDK testpmd's `net_virtio_user`, an independent virtio-net
//! frontend: frames the graph sends to the "guest" come back through testpmd's io
//! forwarding and must reach the graph again, all of them, byte for byte.
//!
//! Needs root (DPDK), `dpdk-testpmd` (apt `dpdk`: `cargo xtask deps`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use butterfly_vhost::{Endpoint, Vhost};
use packetgraph::{
    Brick, BrickError, Burst, Emit, Graph, Poles, Pool, PoolConfig, Side, Worker, WorkerConfig,
};

/// A sink that keeps a copy of every frame it receives (test only).
#[derive(Default)]
struct Keep {
    frames: Vec<Vec<u8>>,
}

impl Brick for Keep {
    fn kind(&self) -> &'static str {
        "keep"
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
        self.frames.extend(pkts.iter().map(|p| p.data().to_vec()));
        Ok(())
    }
}

fn require_testpmd() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "vhost_testpmd needs root (DPDK maps memory and sockets)"
    );
    assert!(
        Path::new("/usr/bin/dpdk-testpmd").exists(),
        "dpdk-testpmd not installed: run cargo xtask deps (apt package dpdk)"
    );
}

/// testpmd with a virtio_user port on `sock`, io forwarding port 0 → port 0, started at
/// once; it quits when the `sleep` feeding its stdin ends or is killed.
struct Testpmd {
    sleep: Child,
    pmd: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Testpmd {
    fn start(sock: &Path, prefix: &str) -> Testpmd {
        let mut sleep = Command::new("sleep")
            .arg("100")
            .stdout(Stdio::piped())
            .spawn()
            .expect("sleep");
        let stdin = sleep.stdout.take().expect("pipe");
        let pmd = Command::new("stdbuf")
            // Unbuffered stdout: the test waits for testpmd's "Press enter" line.
            .args(["-o0", "dpdk-testpmd"])
            .args([
                "-l",
                "0,1",
                "--no-huge",
                "-m",
                "512",
                "--no-pci",
                "--no-shconf",
            ])
            .arg(format!("--file-prefix={prefix}"))
            .arg(format!(
                "--vdev=net_virtio_user0,path={},queues=1,queue_size=256",
                sock.display()
            ))
            .args([
                "--",
                "--forward-mode=io",
                "--total-num-mbufs=16384",
                "--port-topology=loop",
                "--auto-start",
                "--nb-cores=1",
            ])
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dpdk-testpmd");
        let mut pmd = pmd;
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut o = pmd.stdout.take().expect("stdout");
        let buf = stdout.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = o.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Testpmd {
            sleep,
            pmd,
            stdout,
            reader: Some(reader),
        }
    }

    /// Waits until testpmd forwards (its ports started: packets sent before are flushed).
    fn wait_forwarding(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.stdout.lock().unwrap().contains("Press enter to exit") {
            if let Ok(Some(st)) = self.pmd.try_wait() {
                panic!("testpmd exited ({st}):\n{}", self.stdout.lock().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "testpmd did not start forwarding"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends testpmd (EOF on stdin) and returns its output.
    fn finish(mut self) -> String {
        let _ = self.sleep.kill();
        let _ = self.sleep.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.pmd.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.pmd.kill();
        let _ = self.pmd.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let mut out = self.stdout.lock().unwrap().clone();
        if let Some(mut e) = self.pmd.stderr.take() {
            let _ = e.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.sleep.kill();
        let _ = self.pmd.kill();
        let _ = self.sleep.wait();
        let _ = self.pmd.wait();
    }
}

/// Value of the first `KEY: N` in testpmd's accumulated port statistics.
fn stat(out: &str, key: &str) -> Option<u64> {
    let block = out
        .rfind("Accumulated forward statistics")
        .map(|i| &out[i..])
        .unwrap_or(out);
    let i = block.find(key)? + key.len();
    block[i..]
        .trim_start_matches([':', ' '])
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn frame(i: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f[14..18].copy_from_slice(&i.to_be_bytes());
    for (k, b) in f[18..].iter_mut().enumerate() {
        *b = (k as u32).wrapping_add(i) as u8;
    }
    f
}

#[test]
fn vhost_testpmd_io_forward_returns_every_frame() {
    require_testpmd();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = PathBuf::from(format!("/tmp/bf-vhost-testpmd-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sock = dir.join("vm0.sock");
    let pool = Pool::new(PoolConfig {
        frame_count: 8192,
        ..Default::default()
    })
    .unwrap();
    let mut g = Graph::new("vhost-testpmd");
    g.add(
        "vm",
        Vhost::new(Endpoint::Server(sock.clone()), pool.clone()).unwrap(),
    )
    .unwrap();
    g.add("keep", Keep::default()).unwrap();
    g.link("vm", "keep").unwrap();
    let worker = Worker::spawn(
        g,
        WorkerConfig {
            max_idle_sleep: Duration::from_micros(50),
            ..Default::default()
        },
    )
    .unwrap();

    let mut pmd = Testpmd::start(&sock, &format!("bfvt{}", std::process::id()));
    pmd.wait_forwarding();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !worker
        .exec(|g| g.get::<Vhost>("vm").unwrap().is_running())
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "testpmd did not bring the virtqueues up:\n{}",
            pmd.finish()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Sizes: minimum, odd, a full 1514-byte frame (spans two 1526-byte-header buffers
    // only if DPDK posts small ones: mergeable buffers either way).
    const N: u32 = 3000;
    let sizes = [60usize, 61, 128, 1000, 1514];
    let mut sent = Vec::new();
    let mut i = 0u32;
    while i < N {
        let mut burst = Burst::new();
        for _ in 0..32 {
            if i == N {
                break;
            }
            let f = frame(i, sizes[i as usize % sizes.len()]);
            burst.push(pool.packet_from(&f).unwrap()).unwrap();
            sent.push(f);
            i += 1;
        }
        // Pace on the receive buffers testpmd has posted: the ring must not overflow.
        let deadline = Instant::now() + Duration::from_secs(10);
        while worker
            .exec(|g| g.get::<Vhost>("vm").unwrap().rx_room())
            .unwrap()
            .unwrap_or(0)
            < 64
        {
            assert!(
                Instant::now() < deadline,
                "testpmd stopped posting receive buffers"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        worker
            .exec(move |g| g.inject("vm", Side::East, 0, burst).unwrap())
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = worker
            .exec(|g| g.get::<Keep>("keep").unwrap().frames.len())
            .unwrap();
        if n >= N as usize || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = pmd.finish();
    let g = worker.stop().unwrap();
    let vm = g.get::<Vhost>("vm").unwrap();
    let (rx, tx) = (vm.rx_stats(), vm.tx_stats());
    let got = &g.get::<Keep>("keep").unwrap().frames;
    eprintln!(
        "brick rx {rx:?}\nbrick tx {tx:?}\ncounters {:?}",
        vm.counters()
    );
    assert_eq!(
        rx.packets,
        u64::from(N),
        "frames written into testpmd's RX ring; testpmd said:\n{out}"
    );
    assert_eq!(rx.drop_no_buffer + rx.drop_bad_chain + rx.drop_too_big, 0);
    assert_eq!(
        stat(&out, "RX-packets"),
        Some(u64::from(N)),
        "testpmd RX count:\n{out}"
    );
    assert_eq!(
        stat(&out, "TX-packets"),
        Some(u64::from(N)),
        "testpmd TX count:\n{out}"
    );
    assert_eq!(
        tx.packets,
        u64::from(N),
        "frames taken from testpmd's TX ring"
    );
    assert_eq!(tx.drops(), 0);
    assert_eq!(got.len(), N as usize, "frames that reached the graph");
    // Same frames, same bytes, same order (one queue, io forwarding keeps order).
    for (k, (a, b)) in sent.iter().zip(got.iter()).enumerate() {
        assert_eq!(a, b, "frame {k} differs");
    }
    assert_eq!(g.empty_bursts(), 0);
    drop(g);
    let _ = std::fs::remove_dir_all(&dir);
}
