//! The real `butterflyd` in a network namespace, driven by the real `butterfly` CLI over
//! its Unix socket: for end-to-end tests and benchmarks.
//!
//! The binaries come from the same `target/<profile>` as the running test or bench
//! (`cargo build -p butterfly --bins [--release]` is run once per process to make sure
//! they are there and current).
//!
//! ```no_run
//! use butterfly_tests::{Netns, TempDir, daemon::Daemon};
//! let ns = Netns::new("doc");
//! let dir = TempDir::new("doc");
//! // ... an interface "u0" with 10.99.0.1/24 in ns ...
//! let d = Daemon::start(&ns, dir.path(), "u0", "10.99.0.1", &["--worker-cpu", "1"]);
//! d.cli(&["sg", "add", "web"]);
//! println!("{}", d.cli(&["status"]));
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::netns::{KillOnDrop, Netns};

/// `target/<profile>` holding `butterfly` and `butterflyd`, built if missing or older
/// than their sources (`cargo build -p butterfly --bins`, `--release` from a release or
/// bench build).
///
/// # Panics
/// When the build fails.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "butterfly", "--bins", "--quiet"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build -p butterfly --bins");
        assert!(status.success(), "cargo build -p butterfly --bins failed");
        dir
    })
}

/// A `butterflyd` running in a namespace; killed (SIGKILL) on drop. Its API socket,
/// state file, vhost-user sockets and log live in the directory given at start.
#[derive(Debug)]
pub struct Daemon {
    process: KillOnDrop,
    dir: PathBuf,
}

impl Daemon {
    /// Starts `butterflyd --nic NIC --ip IP` plus `extra` options in `ns`, with every
    /// path under `dir`, and waits (up to 20 s) until its API answers `status`.
    ///
    /// # Panics
    /// When the daemon exits or its API does not come up, with its log.
    pub fn start(ns: &Netns, dir: &Path, nic: &str, ip: &str, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(dir).expect("daemon directory");
        let socket = dir.join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("butterflyd.log"))
            .expect("daemon log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(bin_dir().join("butterflyd"))
            .args(["--nic", nic, "--ip", ip, "--log-level", "info"])
            .arg("--api-socket")
            .arg(&socket)
            .arg("--state-file")
            .arg(dir.join("state.json"))
            .arg("--trace-dir")
            .arg(dir)
            .arg("--vhost-socket-dir")
            .arg(dir.join("vhost"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting butterflyd");
        let mut d = Daemon {
            process: KillOnDrop::new(child),
            dir: dir.to_path_buf(),
        };
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = d.process.child().try_wait() {
                panic!("butterflyd exited at start ({st}):\n{}", d.log());
            }
            if socket.exists() && d.cli_raw(&["status"]).status.success() {
                return d;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "butterflyd API not up after 20 s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemon's process id (`ip netns exec` execs it, so this is butterflyd itself).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("butterflyd.log")).unwrap_or_default()
    }

    /// Runs the CLI against this daemon and returns its output, whatever its status.
    pub fn cli_raw(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("butterfly"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running butterfly")
    }

    /// Runs the CLI; panics with its output and the daemon's log unless it succeeds.
    /// Returns stdout.
    ///
    /// # Panics
    /// When the command fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_raw(args);
        assert!(
            out.status.success(),
            "butterfly {args:?} failed ({}): {}{}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One counter of `butterfly --json nic stats ID` (`"rx_packets"`, `"tx_packets"`,
    /// `"dropped_firewall"`, `"dropped_antispoof"` ...).
    ///
    /// # Panics
    /// When the command fails or the counter is not in its output.
    pub fn stat(&self, id: &str, name: &str) -> u64 {
        let out = self.cli(&["--json", "nic", "stats", id]);
        let key = format!("\"{name}\":");
        let at = out
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in {out}"));
        out[at + key.len()..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("bad {name} in {out}"))
    }

    /// The per-side packet counters of brick `brick` from the graph in `butterfly
    /// status` (`"NAME" [xlabel="W rx A tx B / E rx C tx D"]`): `[A, B, C, D]`.
    ///
    /// # Panics
    /// When the brick is not in the graph.
    pub fn brick_counters(&self, brick: &str) -> [u64; 4] {
        let status = self.cli(&["status", "--dot"]);
        let key = format!("\"{brick}\" [xlabel=\"");
        let at = status
            .find(&key)
            .unwrap_or_else(|| panic!("no brick {brick} in status:\n{status}"));
        let label: String = status[at + key.len()..]
            .chars()
            .take_while(|c| *c != '"')
            .collect();
        let n: Vec<u64> = label
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        n.try_into()
            .unwrap_or_else(|n| panic!("bad counters of {brick}: {label:?} ({n:?})"))
    }
}
