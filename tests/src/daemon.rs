//! The two-host `butterflyd` harness shared by the daemon tests (`daemon_e2e`,
//! `daemon_qemu`, `daemon_dpdk`) and the demos (`demo_qemu`, `demo_butterfly`).
//!
//! - [`Host`]: one "host": a network namespace, its underlay interface and VTEP address,
//!   a directory for the daemon's files (API socket, state file, log, traces, vhost-user
//!   sockets) and the `butterflyd` running in the namespace (`ip netns exec`, killed on
//!   drop), driven with the real `butterfly` CLI over the API socket.
//! - [`Lab`]: two hosts whose underlay interfaces are the ends of one veth pair.
//! - [`TapVm`]: a "VM" made of a tap NIC of a host (`butterfly nic add --type tap`)
//!   moved into its own namespace, whose kernel pings and connects.
//!
//! Binaries: [`bin_dir`] is `$BUTTERFLY_BIN_DIR` when set (`cargo xtask demo` sets it),
//! else the tests first build them (`cargo build -p butterfly --bins`, with `--features
//! butterfly/dpdk` when this crate is built with its `dpdk` feature, so every daemon
//! test of one run uses the same daemon) and run links to what cargo built for these
//! features (immune to other tests building `butterfly` with other features). Examples
//! do not build: they use [`bin_dir_unbuilt`] (`target/<profile>`).
//!
//! Every method has a fallible `try_` form returning the failure as text (for the demos,
//! which report and carry on) and a panicking form whose message holds the daemon's log
//! (for tests).
//!
//! ```no_run
//! use butterfly_tests::daemon::Lab;
//!
//! let mut lab = Lab::new("doc", ["10.99.0.1", "10.99.0.2"]);
//! lab.start();
//! lab.hosts[0].cli(&["sg", "add", "web"]);
//! let a = lab.tap_vm(0, "bdv", "52:54:00:42:00:01", 42, "10.0.42.1", &["--bypass-filtering"]);
//! let b = lab.tap_vm(1, "bdv", "52:54:00:42:00:02", 42, "10.0.42.2", &["--bypass-filtering"]);
//! assert!(lab.vms[a].reach("10.0.42.2"));
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{KillOnDrop, Netns, TempDir, Veth, unique_ifname, veth_pair};

/// How long [`Host::start`] waits for the daemon's API to answer `status`.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// MTU butterflyd gives VMs on the labs' 1500-byte IPv4 underlay veths (bytes: 1500 −
/// 50 of VXLAN encapsulation, RFC 7348 §5); QEMU guests get it with
/// [`crate::qemu::Guest::start_mtu`].
pub const VM_MTU_V4: u16 = 1450;

/// MTU [`Host::plug`] gives a tap VM's interface by default ([`Host::tap_vm_mtu`]), in
/// bytes (below the 1450 a 1500-byte IPv4 underlay leaves for guests).
pub const TAP_VM_MTU: u32 = 1400;

/// `$BUTTERFLY_BIN_DIR`, else `target/<profile>` above the running executable
/// (`target/debug/deps/TEST` or `target/debug/examples/DEMO` → `target/debug`).
/// Nothing is built.
pub fn bin_dir_unbuilt() -> PathBuf {
    if let Some(d) = std::env::var_os("BUTTERFLY_BIN_DIR") {
        return d.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

/// Features `butterfly` is built with for the tests: `dpdk` when this crate has its
/// `dpdk` feature (the DPDK backend of butterflyd), else none.
pub const BUTTERFLY_FEATURES: &[&str] = if cfg!(feature = "dpdk") {
    &["--features", "butterfly/dpdk"]
} else {
    &[]
};

/// What `butterflyd --version` says when built as [`BUTTERFLY_FEATURES`] ask.
const VERSION_MARK: &str = if cfg!(feature = "dpdk") {
    "(DPDK backend built in)"
} else {
    "(no DPDK backend"
};

/// The directory holding the `butterfly` and `butterflyd` the tests run, built once per
/// process (`cargo build -p butterfly --bins`, release when the tests run in release,
/// plus [`BUTTERFLY_FEATURES`]); `$BUTTERFLY_BIN_DIR` instead when set (nothing built).
///
/// Other tests of the same run build `butterfly` too, possibly with other features
/// (cargo then replaces `target/<profile>/butterflyd`). So the tests do not run the
/// binaries there: they run hard links (in `target/<profile>/daemon-tests/<features>/`)
/// to the hash-named files in `target/<profile>/deps/` that cargo built for these
/// features, which no build with other features touches. A link is checked with
/// `butterflyd --version` (which says whether the DPDK backend is in) and made again
/// when a concurrent build swapped the binary under it.
///
/// # Panics
/// When cargo cannot be run, the build fails, or no binary with the right features can
/// be found after 5 attempts.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = bin_dir_unbuilt();
        if std::env::var_os("BUTTERFLY_BIN_DIR").is_some() {
            return target;
        }
        let tag = if cfg!(feature = "dpdk") {
            "dpdk"
        } else {
            "default"
        };
        let dir = target.join("daemon-tests").join(tag);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut last = String::new();
        for _ in 0..5 {
            build_butterfly(&target);
            match link_built(&target, &dir) {
                Ok(()) => return dir,
                Err(e) => last = e,
            }
        }
        panic!("no butterflyd built with {BUTTERFLY_FEATURES:?}: {last}");
    })
}

fn build_butterfly(target: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "butterfly", "--bins", "--quiet"])
        .args(BUTTERFLY_FEATURES);
    if target.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .expect("running cargo build -p butterfly --bins");
    assert!(
        status.success(),
        "cargo build -p butterfly --bins {BUTTERFLY_FEATURES:?} failed"
    );
}

/// Links `target/NAME`'s file in `target/deps/` (the same inode) as `dir/NAME`, for both
/// binaries, and checks `butterflyd --version`.
fn link_built(target: &Path, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for name in ["butterfly", "butterflyd"] {
        let ino = std::fs::metadata(target.join(name))
            .map_err(|e| format!("{name}: {e}"))?
            .ino();
        let built = std::fs::read_dir(target.join("deps"))
            .map_err(|e| format!("deps: {e}"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.strip_prefix(name))
                    .and_then(|f| f.strip_prefix('-'))
                    .is_some_and(|h| !h.contains('.'))
                    && std::fs::metadata(p).is_ok_and(|m| m.ino() == ino)
            })
            .ok_or_else(|| format!("{name}: no file of target/deps is target/{name}"))?;
        // Atomic replacement: other test processes may be linking at the same time.
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(&built, &tmp).map_err(|e| format!("{name}: link: {e}"))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(|e| format!("{name}: rename: {e}"))?;
        // rename() between two links of one file does nothing (POSIX): drop the spare.
        let _ = std::fs::remove_file(&tmp);
    }
    let out = Command::new(dir.join("butterflyd"))
        .arg("--version")
        .output()
        .map_err(|e| format!("butterflyd --version: {e}"))?;
    let v = String::from_utf8_lossy(&out.stdout);
    if v.contains(VERSION_MARK) {
        Ok(())
    } else {
        Err(format!("butterflyd --version says {v:?}"))
    }
}

/// The first unsigned integer after `"NAME":` in JSON text (a counter of `butterfly
/// --json nic stats`).
///
/// # Errors
/// The text, when the key is absent or not followed by digits.
pub fn json_counter(json: &str, name: &str) -> Result<u64, String> {
    let key = format!("\"{name}\":");
    let at = json
        .find(&key)
        .ok_or_else(|| format!("no {name} in {json}"))?;
    json[at + key.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .map_err(|_| format!("bad {name} in {json}"))
}

/// One host: a namespace, its underlay interface, the daemon's directory, and the daemon
/// (killed on drop, before the namespace goes).
#[derive(Debug)]
pub struct Host {
    daemon: Option<KillOnDrop>,
    /// Name used in printed command lines (`"host1"`).
    pub name: String,
    /// The host's namespace; butterflyd runs inside it.
    pub ns: Netns,
    /// Underlay interface (`--nic`).
    pub nic: String,
    /// VTEP address (`--ip`).
    pub ip: String,
    /// Directory of `api.sock`, `state.json`, `butterflyd.log`, traces and `vhost/`.
    pub dir: PathBuf,
    /// Options added to butterflyd's command line (e.g. `--nic-backend dpdk ...`).
    pub extra_args: Vec<String>,
    /// Print each daemon start and CLI command line (the demos' progress output).
    pub echo: bool,
    /// MTU [`Host::try_tap_vm`] gives its VMs ([`TapVm::mtu`]; default
    /// `Some(TAP_VM_MTU)`; `None` keeps the MTU butterflyd gave the tap).
    pub tap_vm_mtu: Option<u32>,
    bins: PathBuf,
}

impl Host {
    /// A host whose daemon is not started yet; binaries from `bins` (see [`bin_dir`]).
    /// `dir` is created.
    ///
    /// # Panics
    /// When `dir` cannot be created.
    pub fn new(name: &str, ns: Netns, nic: &str, ip: &str, dir: PathBuf, bins: &Path) -> Host {
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Host {
            daemon: None,
            name: name.to_string(),
            ns,
            nic: nic.to_string(),
            ip: ip.to_string(),
            dir,
            extra_args: Vec::new(),
            echo: false,
            tap_vm_mtu: Some(TAP_VM_MTU),
            bins: bins.to_path_buf(),
        }
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// Everything the daemon(s) of this host logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("butterflyd.log")).unwrap_or_default()
    }

    /// The running daemon's process id (of `ip netns exec`, which execs butterflyd).
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(KillOnDrop::id)
    }

    /// Whether a daemon was started and not stopped by this harness.
    pub fn running(&self) -> bool {
        self.daemon.is_some()
    }

    /// Starts butterflyd in the host's namespace (stderr appended to `butterflyd.log`)
    /// with `--nic`, `--ip`, the API socket, state file, trace and vhost-user socket
    /// directories in [`Host::dir`], then [`Host::extra_args`], and waits until its API
    /// answers `status`.
    ///
    /// # Errors
    /// When butterflyd cannot be started, exits, or does not answer within
    /// [`START_TIMEOUT`]; the text holds its log.
    pub fn try_start(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("butterflyd.log"))
            .map_err(|e| format!("butterflyd.log: {e}"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(self.bins.join("butterflyd"))
            .args(["--nic", &self.nic, "--ip", &self.ip, "--log-level", "info"])
            .arg("--api-socket")
            .arg(self.socket())
            .arg("--state-file")
            .arg(self.dir.join("state.json"))
            .arg("--trace-dir")
            .arg(&self.dir)
            .arg("--vhost-socket-dir")
            .arg(self.dir.join("vhost"))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if self.echo {
            println!(
                "        $ ip netns exec {} butterflyd --nic {} --ip {} --api-socket {} {}...",
                self.ns.name(),
                self.nic,
                self.ip,
                self.socket().display(),
                self.extra_args
                    .iter()
                    .map(|a| format!("{a} "))
                    .collect::<String>()
            );
        }
        let mut guard = KillOnDrop::new(cmd.spawn().map_err(|e| format!("butterflyd: {e}"))?);
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = guard.child().try_wait() {
                return Err(format!(
                    "butterflyd exited at start ({st}):\n{}",
                    self.log()
                ));
            }
            if self.socket().exists() && self.cli_raw(&["status"]).status.success() {
                break;
            }
            if t0.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "butterflyd API not up after {} s:\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.daemon = Some(guard);
        Ok(())
    }

    /// [`Host::try_start`], panicking on failure.
    ///
    /// # Panics
    /// When the daemon does not come up (with its log).
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{}: {e}", self.name);
        }
    }

    /// `kill -9` the daemon and reap it.
    ///
    /// # Panics
    /// When no daemon runs.
    pub fn kill9(&mut self) {
        let mut d = self.daemon.take().expect("daemon running");
        let _ = d.child().kill();
        let _ = d.child().wait();
    }

    /// Sends SIGTERM to the daemon and waits for it to exit.
    ///
    /// # Panics
    /// When no daemon runs or waiting fails.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut d = self.daemon.take().expect("daemon running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        d.child().wait().expect("waiting for butterflyd")
    }

    /// Runs `butterfly --socket API ARGS` and returns its output, whatever its status.
    ///
    /// # Panics
    /// When the CLI cannot be started.
    pub fn cli_raw(&self, args: &[&str]) -> Output {
        Command::new(self.bins.join("butterfly"))
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running butterfly")
    }

    /// Runs the CLI (printing the command line when [`Host::echo`]) and returns its
    /// stdout.
    ///
    /// # Errors
    /// Its stderr and stdout when it exits with a failure.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        if self.echo {
            println!("        [{}] $ butterfly {}", self.name, args.join(" "));
        }
        let out = self.cli_raw(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "butterfly {args:?} failed ({}): {}{text}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// [`Host::try_cli`], panicking with the CLI's output and the daemon's log.
    ///
    /// # Panics
    /// When the CLI fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("{e}\n{} daemon log:\n{}", self.name, self.log()))
    }

    /// One counter of `butterfly --json nic stats ID` (`rx_packets`, `dropped_firewall`,
    /// ...).
    ///
    /// # Errors
    /// When the CLI fails or the counter is missing.
    pub fn try_stat(&self, id: &str, name: &str) -> Result<u64, String> {
        json_counter(&self.try_cli(&["--json", "nic", "stats", id])?, name)
    }

    /// The VTEP's `drop_too_big` counter (frames whose encapsulation exceeds the underlay
    /// MTU) from `butterfly status`.
    ///
    /// # Panics
    /// When `status` shows no VTEP counters.
    pub fn vtep_too_big(&self) -> u64 {
        let status = self.cli(&["status"]);
        let line = status
            .lines()
            .find(|l| l.contains("\"vtep\" [xlabel="))
            .unwrap_or_else(|| panic!("no vtep counters in {status}"));
        json_counter(
            &line.replace("drop_too_big ", "\"drop_too_big\":"),
            "drop_too_big",
        )
        .unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The per-side packet counters of brick `brick` from the graph in `butterfly status
    /// --dot` (`"NAME" [xlabel="W rx A tx B / E rx C tx D"]`): `[A, B, C, D]`.
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

    /// [`Host::try_stat`], panicking on failure.
    ///
    /// # Panics
    /// When the CLI fails or the counter is missing.
    pub fn stat(&self, id: &str, name: &str) -> u64 {
        self.try_stat(id, name)
            .unwrap_or_else(|e| panic!("{e}\n{} daemon log:\n{}", self.name, self.log()))
    }

    /// The security group `web`: ICMP and TCP/5000 in from anywhere.
    ///
    /// # Errors
    /// When a CLI command fails.
    pub fn try_web_sg(&self) -> Result<(), String> {
        self.try_cli(&["sg", "add", "web"])?;
        for rule in [&["icmp"][..], &["tcp", "--port", "5000"]] {
            let mut args = vec!["sg", "rule", "add", "web", "--dir", "in", "--ip-proto"];
            args.extend_from_slice(rule);
            args.extend_from_slice(&["--cidr", "0.0.0.0/0"]);
            self.try_cli(&args)?;
        }
        Ok(())
    }

    /// Adds the tap NIC `id` (`butterfly nic add --id ID --mac MAC --vni VNI --ip IP
    /// --type tap EXTRA...`) and moves it into a new namespace (prefix `ns_prefix`) as a
    /// [`TapVm`] with that MAC and IP.
    ///
    /// # Errors
    /// When the CLI fails.
    pub fn try_tap_vm(
        &self,
        ns_prefix: &str,
        id: &str,
        mac: &str,
        vni: u32,
        ip: &str,
        extra: &[&str],
    ) -> Result<TapVm, String> {
        let vni = vni.to_string();
        let mut args = vec![
            "nic", "add", "--id", id, "--mac", mac, "--vni", &vni, "--ip", ip, "--type", "tap",
        ];
        args.extend_from_slice(extra);
        self.try_cli(&args)?;
        let ns = Netns::new(ns_prefix);
        ns.disable_ipv6();
        let vm = TapVm {
            ns,
            id: id.to_string(),
            mac: mac.to_string(),
            ip: ip.to_string(),
            mtu: self.tap_vm_mtu,
        };
        self.plug(&vm);
        Ok(vm)
    }

    /// Moves the (re)created tap of `vm` from this host's namespace into the VM's, sets
    /// its MAC, MTU (when [`TapVm::mtu`] is set) and IPv4 address (IPv6 VMs get theirs
    /// from their test), and sets it up.
    ///
    /// # Panics
    /// When an `ip` command fails.
    pub fn plug(&self, vm: &TapVm) {
        self.ns
            .run_ok(&["ip", "link", "set", &vm.id, "netns", vm.ns.name()]);
        let mtu = vm.mtu.map(|m| m.to_string());
        let mut args = vec!["ip", "link", "set", &vm.id, "address", &vm.mac];
        if let Some(m) = &mtu {
            args.extend_from_slice(&["mtu", m]);
        }
        args.push("up");
        vm.ns.run_ok(&args);
        if !vm.ip.contains(':') {
            vm.ns.addr(&vm.id, &format!("{}/24", vm.ip));
        }
    }
}

/// A "VM": a namespace holding the tap NIC `id` of a host.
#[derive(Debug)]
pub struct TapVm {
    /// The VM's namespace.
    pub ns: Netns,
    /// NIC id, also the tap interface's name.
    pub id: String,
    /// The NIC's MAC.
    pub mac: String,
    /// The NIC's IP (IPv4 set by [`Host::plug`]; IPv6 left to the test).
    pub ip: String,
    /// MTU [`Host::plug`] sets, in bytes; `None` keeps what the daemon gave the tap.
    pub mtu: Option<u32>,
}

impl TapVm {
    /// `ping -c COUNT -i 0.2 -W 1 DST`: whether every reply came back.
    pub fn ping(&self, dst: &str, count: u32) -> bool {
        let c = count.to_string();
        self.ns
            .run(&["ping", "-c", &c, "-i", "0.2", "-W", "1", dst])
            .status
            .success()
    }

    /// Pings `dst` until one answer comes back (ARP and FDB learning across the hosts
    /// take a round trip or two), at most 10 s.
    pub fn reach(&self, dst: &str) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self.ping(dst, 1) {
                return true;
            }
        }
        false
    }

    /// Connects with socat to `dst:port` (3 s timeouts) and returns what the server said,
    /// trimmed (empty when the connection failed).
    pub fn tcp(&self, dst: &str, port: u16) -> String {
        let out = self.ns.run(&[
            "socat",
            "-T",
            "3",
            "-",
            &format!("TCP:{dst}:{port},connect-timeout=3"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Two hosts joined by a veth underlay (`host1` on one end, `host2` on the other), each
/// with its daemon once [`Lab::start`]ed; tap VMs added with [`Lab::tap_vm`]. Dropped in
/// order: VMs, daemons, namespaces, underlay, files.
#[derive(Debug)]
pub struct Lab {
    /// Tap VMs, in the order added.
    pub vms: Vec<TapVm>,
    /// `host1`, `host2`.
    pub hosts: [Host; 2],
    _underlay: Veth,
    /// The lab's temporary directory (hosts' directories are `host1/`, `host2/` in it).
    pub dir: TempDir,
}

impl Lab {
    /// Two namespaces (`TAGh…`) joined by a veth pair (`TAGu…`) whose ends get the
    /// addresses `ips` (IPv4 /24, or IPv6 /64 without DAD) and are set up; a temporary
    /// directory `butterfly-TAG-…`. Daemons are not started: set [`Host::extra_args`]
    /// first if needed, then [`Lab::start`]. Binaries from [`bin_dir`].
    ///
    /// # Panics
    /// When a namespace, the veth or an address cannot be made.
    pub fn new(tag: &str, ips: [&str; 2]) -> Lab {
        Lab::with_bins(tag, ips, bin_dir())
    }

    /// [`Lab::new`] with the binaries of `bins`.
    ///
    /// # Panics
    /// As [`Lab::new`].
    pub fn with_bins(tag: &str, ips: [&str; 2], bins: &Path) -> Lab {
        let dir = TempDir::new(&format!("butterfly-{tag}"));
        let h1 = Netns::new(&format!("{tag}h"));
        let h2 = Netns::new(&format!("{tag}h"));
        let mut underlay = veth_pair(&format!("{tag}u"));
        underlay.move_a_to(&h1);
        underlay.move_b_to(&h2);
        let (ua, ub) = (underlay.a().to_string(), underlay.b().to_string());
        let mut hosts = [(h1, ua, ips[0]), (h2, ub, ips[1])]
            .into_iter()
            .enumerate()
            .map(|(i, (ns, nic, ip))| {
                if ip.contains(':') {
                    ns.run_ok(&[
                        "ip",
                        "addr",
                        "add",
                        &format!("{ip}/64"),
                        "dev",
                        &nic,
                        "nodad",
                    ]);
                } else {
                    ns.addr(&nic, &format!("{ip}/24"));
                }
                ns.up(&nic);
                let name = format!("host{}", i + 1);
                let d = dir.join(&name);
                Host::new(&name, ns, &nic, ip, d, bins)
            });
        let hosts: [Host; 2] = [hosts.next().unwrap(), hosts.next().unwrap()];
        Lab {
            vms: Vec::new(),
            hosts,
            _underlay: underlay,
            dir,
        }
    }

    /// Starts both daemons.
    ///
    /// # Errors
    /// The first that does not come up, with its log.
    pub fn try_start(&mut self) -> Result<(), String> {
        for h in &mut self.hosts {
            let name = h.name.clone();
            h.try_start().map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }

    /// [`Lab::try_start`], panicking on failure.
    ///
    /// # Panics
    /// When a daemon does not come up.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// Sets [`Host::echo`] on both hosts.
    pub fn echo(&mut self, on: bool) {
        for h in &mut self.hosts {
            h.echo = on;
        }
    }

    /// Adds a tap VM on host `h` (0 or 1): NIC id `unique_ifname(id_prefix)`, namespace
    /// prefix `id_prefix` + `"ns"`; see [`Host::try_tap_vm`]. Returns its index in
    /// [`Lab::vms`].
    ///
    /// # Errors
    /// When the CLI fails.
    pub fn try_tap_vm(
        &mut self,
        h: usize,
        id_prefix: &str,
        mac: &str,
        vni: u32,
        ip: &str,
        extra: &[&str],
    ) -> Result<usize, String> {
        let id = unique_ifname(id_prefix);
        let vm = self.hosts[h].try_tap_vm(&format!("{id_prefix}ns"), &id, mac, vni, ip, extra)?;
        self.vms.push(vm);
        Ok(self.vms.len() - 1)
    }

    /// [`Lab::try_tap_vm`], panicking with the daemon's log on failure.
    ///
    /// # Panics
    /// When the CLI fails.
    pub fn tap_vm(
        &mut self,
        h: usize,
        id_prefix: &str,
        mac: &str,
        vni: u32,
        ip: &str,
        extra: &[&str],
    ) -> usize {
        self.try_tap_vm(h, id_prefix, mac, vni, ip, extra)
            .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", self.hosts[h].log()))
    }

    /// Both daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| format!("{} daemon log:\n{}\n", h.name, h.log()))
            .collect()
    }
}
