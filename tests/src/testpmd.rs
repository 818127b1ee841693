//! DPDK `dpdk-testpmd` as a traffic source or sink for benchmarks, e.g. on a
//! `net_virtio_user` port standing in for a VM in front of a vhost-user backend.
//!
//! testpmd runs non-interactively with `--stats-period=1`: it prints its port statistics
//! every second (`RX-packets:`, `Rx-pps:`, `Tx-pps:` ...) until SIGINT, then its
//! forward statistics. The output is collected in the background and parsed here.
//! Needs root and `dpdk-testpmd` (apt `dpdk`); no hugepages (`--no-huge`).
//!
//! ```no_run
//! use butterfly_tests::testpmd::Testpmd;
//! let pmd = Testpmd::start(
//!     "doc",
//!     "0@0,1@1",
//!     "net_virtio_user0,path=/tmp/vm.sock,queues=1,queue_size=1024",
//!     &["--forward-mode=rxonly"],
//! );
//! pmd.wait_for_rate("Rx-pps:", std::time::Duration::from_secs(60));
//! let from = pmd.len();
//! std::thread::sleep(std::time::Duration::from_secs(3));
//! println!("{:.0} pps", pmd.mean_rate("Rx-pps:", from));
//! ```

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netns::KillOnDrop;

/// Path of the testpmd binary installed by apt `dpdk`.
pub const TESTPMD: &str = "dpdk-testpmd";

/// A running testpmd; interrupted (SIGINT, then SIGKILL after 10 s) on drop.
#[derive(Debug)]
pub struct Testpmd {
    child: Mutex<Option<KillOnDrop>>,
    out: Arc<Mutex<String>>,
}

impl Testpmd {
    /// Starts testpmd with `--lcores=LCORES` (e.g. `"0@0,1@1"`: main lcore on CPU 0,
    /// forwarding lcore on CPU 1), `--file-prefix=PREFIX` (unique per concurrent
    /// instance), one `--vdev=VDEV`, no hugepages, no PCI, and the application arguments
    /// `args` after `--nb-cores=1 --stats-period=1 --total-num-mbufs=32768`.
    ///
    /// # Panics
    /// When testpmd cannot be started.
    pub fn start(prefix: &str, lcores: &str, vdev: &str, args: &[&str]) -> Testpmd {
        Testpmd::start_niced(0, prefix, lcores, vdev, args)
    }

    /// [`Testpmd::start`] at scheduling priority `nice` (-20..=19; below 0 needs root).
    /// Note that a poll-mode lcore never sleeps: sharing its CPU with another busy thread,
    /// it runs in turns of a scheduler tick (4 ms at 250 Hz), whatever the priorities.
    ///
    /// # Panics
    /// When testpmd cannot be started.
    pub fn start_niced(
        nice: i32,
        prefix: &str,
        lcores: &str,
        vdev: &str,
        args: &[&str],
    ) -> Testpmd {
        crate::netns::require_tool(TESTPMD);
        let mut child = Command::new("nice")
            .args(["-n", &nice.to_string(), "stdbuf", "-o0", TESTPMD])
            .args(["--no-huge", "-m", "1024", "--no-pci"])
            .arg("--no-shconf")
            .arg(format!("--lcores={lcores}"))
            .arg(format!("--file-prefix={prefix}"))
            .arg(format!("--vdev={vdev}"))
            .args([
                "--",
                "--nb-cores=1",
                "--stats-period=1",
                "--total-num-mbufs=32768",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {TESTPMD}: {e}"));
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let buf = out.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        Testpmd {
            child: Mutex::new(Some(KillOnDrop::new(child))),
            out,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, KillOnDrop::id)
    }

    /// Everything testpmd printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Bytes of output so far: pass it to [`Testpmd::samples`] to read only what comes
    /// after this point.
    pub fn len(&self) -> usize {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when testpmd printed nothing yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numbers printed after `key` (e.g. `"Rx-pps:"`) from output byte `from` on.
    pub fn samples(&self, key: &str, from: usize) -> Vec<f64> {
        let o = self.out.lock().unwrap_or_else(|e| e.into_inner());
        values(o.get(from..).unwrap_or(""), key)
    }

    /// Mean of the `key` values printed after byte `from` (0 when none): with
    /// `--stats-period=1`, `Rx-pps:` samples are per-second rates, so their mean over a
    /// window is the window's rate.
    pub fn mean_rate(&self, key: &str, from: usize) -> f64 {
        let v = self.samples(key, from);
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }

    /// The last `key` value printed (e.g. the cumulative `"RX-packets:"`), 0 when none.
    pub fn last(&self, key: &str) -> f64 {
        self.samples(key, 0).last().copied().unwrap_or(0.0)
    }

    /// Waits until testpmd prints a non-zero `key` value (traffic flows).
    ///
    /// # Panics
    /// When `timeout` passes first or testpmd exits, with its output.
    pub fn wait_for_rate(&self, key: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.samples(key, 0).iter().any(|v| *v > 0.0) {
            if Instant::now() > deadline || self.exited() {
                panic!(
                    "testpmd: no traffic ({key} stays 0 for {timeout:?}); output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// True when the process has exited.
    pub fn exited(&self) -> bool {
        let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
        c.as_mut()
            .is_none_or(|c| c.child().try_wait().ok().flatten().is_some())
    }

    /// Interrupts testpmd (it then prints its forward statistics and exits), waits up to
    /// 10 s, and returns all its output.
    pub fn stop(mut self) -> String {
        self.halt();
        // Give the reader threads a moment to drain the pipes.
        std::thread::sleep(Duration::from_millis(100));
        self.output()
    }

    fn halt(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut c) = child else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.child().try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // KillOnDrop kills and reaps.
    }
}

/// The numbers that follow `key` (e.g. `"Rx-pps:"`) in testpmd output `text`, in order.
pub fn values(text: &str, key: &str) -> Vec<f64> {
    text.match_indices(key)
        .filter_map(|(i, _)| {
            text[i + key.len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.halt();
    }
}
