//! Network namespaces, veth pairs and the checks privileged tests start with.
//!
//! Every object made here has a unique name (a short prefix, the test process id and a
//! per-process counter) and is removed when its guard is dropped, also when the test
//! panics. Failures panic with the command and its stderr: these are test helpers.
//!
//! ```no_run
//! use butterfly_tests::netns::{Netns, require_root, veth_pair};
//!
//! require_root();
//! let a = Netns::new("doc");
//! let b = Netns::new("doc");
//! let mut veth = veth_pair("doc");
//! veth.move_a_to(&a);
//! veth.move_b_to(&b);
//! a.addr(veth.a(), "10.9.0.1/24");
//! b.addr(veth.b(), "10.9.0.2/24");
//! a.up(veth.a());
//! b.up(veth.b());
//! assert!(a.run(&["ping", "-c", "1", "-W", "1", "10.9.0.2"]).status.success());
//! ```

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

/// Longest interface name Linux accepts (`IFNAMSIZ - 1`), in bytes.
pub const IFNAME_MAX: usize = 15;

/// Longest prefix [`unique_ifname`] keeps: the 7-character suffix must fit in
/// [`IFNAME_MAX`].
pub const IFNAME_PREFIX_MAX: usize = IFNAME_MAX - 7;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless the test runs as root (privileged tests need CAP_NET_ADMIN and friends).
///
/// # Panics
/// With "needs root: run as root / via cargo xtask test" when the effective uid is not 0.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("needs root: run as root / via cargo xtask test");
    }
}

/// Panics unless `tool` is an executable in `PATH`.
///
/// # Panics
/// With "TOOL not found: run cargo xtask deps" when it is missing.
pub fn require_tool(tool: &str) {
    if find_in_path(tool).is_none() {
        panic!("{tool} not found: run cargo xtask deps");
    }
}

fn find_in_path(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn base36(mut v: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8(out).expect("ASCII digits")
}

fn next_suffix() -> String {
    let pid = u64::from(std::process::id());
    let n = u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
    // 5 base-36 digits hold any Linux pid (pid_max <= 2^22); 2 digits give 1296 names per
    // process before wrapping.
    format!("{}{}", base36(pid, 5), base36(n % 1296, 2))
}

/// A name unique to this process and call, at most [`IFNAME_MAX`] bytes: `prefix`
/// (cut to [`IFNAME_PREFIX_MAX`] bytes) followed by the pid and a counter in base 36.
/// Usable for interfaces as well as namespaces.
pub fn unique_ifname(prefix: &str) -> String {
    let p: String = prefix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(IFNAME_PREFIX_MAX)
        .collect();
    format!("{p}{}", next_suffix())
}

/// Polls `cond` every 20 ms until it holds.
///
/// # Panics
/// "timed out waiting for WHAT" when `timeout` passes first.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `args[0]` with the rest as arguments and returns its output.
///
/// # Panics
/// When the program cannot be started.
pub fn run(args: &[&str]) -> Output {
    assert!(!args.is_empty(), "run: empty command");
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a command and panics with its stderr unless it exits with status 0. Returns stdout.
///
/// # Panics
/// When the command fails or cannot be started.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    check(args, &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn check(args: &[&str], out: &Output) {
    if !out.status.success() {
        panic!(
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    /// Waits for the process to exit and returns its output (stdout/stderr if piped).
    ///
    /// # Panics
    /// When waiting fails.
    pub fn wait_output(mut self) -> Output {
        self.0
            .take()
            .expect("child present until waited for")
            .wait_with_output()
            .expect("cannot wait for the child process")
    }

    /// Sends SIGINT (tcpdump and dumpcap then close their capture file and exit), waits
    /// and returns the output.
    ///
    /// # Panics
    /// When waiting fails.
    pub fn interrupt_and_wait(mut self) -> Output {
        let c = self.0.take().expect("child present until waited for");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        c.wait_with_output()
            .expect("cannot wait for the child process")
    }

    /// Waits up to `timeout` for the process to exit by itself (a capture tool started
    /// with `-c N`), then interrupts it; returns its output.
    ///
    /// # Panics
    /// When waiting fails.
    pub fn wait_or_interrupt(mut self, timeout: std::time::Duration) -> Output {
        let t = std::time::Instant::now();
        while t.elapsed() < timeout {
            if self.child().try_wait().ok().flatten().is_some() {
                return self.wait_output();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.interrupt_and_wait()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The child, to read its pipes or poll it with `try_wait`.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until waited for")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A named network namespace (`ip netns add`), deleted (`ip netns del`) on drop, which
/// also destroys the interfaces inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `prefix` + pid + counter (see [`unique_ifname`]) with its
    /// loopback up. A stale namespace of the same name (left by a killed run with the same
    /// pid) is deleted first.
    ///
    /// # Panics
    /// When not root or when `ip netns add` fails.
    pub fn new(prefix: &str) -> Netns {
        require_root();
        let name = unique_ifname(prefix);
        if Path::new("/run/netns").join(&name).exists() {
            let _ = run(&["ip", "netns", "del", &name]);
        }
        run_ok(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.run_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name (as used by `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn command(&self, args: &[&str]) -> Command {
        assert!(!args.is_empty(), "Netns::command: empty command");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs a shell command line (`sh -c CMD`) inside the namespace.
    ///
    /// # Panics
    /// When `ip netns exec` cannot be started.
    pub fn exec(&self, cmd: &str) -> Output {
        self.run(&["sh", "-c", cmd])
    }

    /// Runs a program inside the namespace and returns its output.
    ///
    /// # Panics
    /// When `ip netns exec` cannot be started.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in netns {}: {e}", self.name))
    }

    /// Runs a program inside the namespace, panics with its stderr unless it exits with
    /// status 0, and returns its stdout.
    ///
    /// # Panics
    /// When the program fails.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            panic!(
                "{args:?} in netns {} failed ({}): {}{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a program inside the namespace in the background, stdout and stderr piped.
    /// The process is killed when the returned guard is dropped.
    ///
    /// # Panics
    /// When the program cannot be started.
    pub fn spawn(&self, args: &[&str]) -> KillOnDrop {
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {args:?} in netns {}: {e}", self.name));
        KillOnDrop::new(child)
    }

    /// Adds an address in CIDR form (`"10.0.0.1/24"`) to interface `dev`.
    ///
    /// # Panics
    /// When `ip addr add` fails.
    pub fn addr(&self, dev: &str, cidr: &str) {
        self.run_ok(&["ip", "addr", "add", cidr, "dev", dev]);
    }

    /// Sets interface `dev` up.
    ///
    /// # Panics
    /// When `ip link set up` fails.
    pub fn up(&self, dev: &str) {
        self.run_ok(&["ip", "link", "set", dev, "up"]);
    }

    /// Disables IPv6 for the namespace (all current and future interfaces), so tests that
    /// count frames see no router solicitations or MLD reports.
    ///
    /// # Panics
    /// When the setting cannot be written.
    pub fn disable_ipv6(&self) {
        for key in ["all", "default", "lo"] {
            self.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6=1"));
        }
    }

    /// Sets a sysctl inside the namespace (`"net.ipv4.ip_forward=1"`) by writing
    /// `/proc/sys/net/ipv4/ip_forward` from a thread inside it (no `sysctl` binary needed).
    ///
    /// # Panics
    /// When the setting is not `key=value` or cannot be written.
    pub fn sysctl(&self, setting: &str) {
        let (key, value) = setting
            .split_once('=')
            .unwrap_or_else(|| panic!("sysctl setting {setting:?} is not key=value"));
        let path = Path::new("/proc/sys").join(key.trim().replace('.', "/"));
        let value = value.trim().to_string();
        // A fresh thread, so the caller's thread never changes namespace.
        let ns = self.name.clone();
        let target = Path::new("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let f = File::open(&target).unwrap_or_else(|e| panic!("cannot open netns {ns}: {e}"));
            setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {ns} failed: {e}"));
            std::fs::write(&path, format!("{value}\n"))
                .unwrap_or_else(|e| panic!("cannot write {} in netns {ns}: {e}", path.display()));
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }

    /// Reads a counter of interface `dev` from `/sys/class/net/DEV/statistics/NAME`
    /// (`"rx_packets"`, `"tx_bytes"`...) as seen inside the namespace.
    ///
    /// # Panics
    /// When the file cannot be read or parsed.
    pub fn link_stat(&self, dev: &str, name: &str) -> u64 {
        let out = self.run_ok(&["cat", &format!("/sys/class/net/{dev}/statistics/{name}")]);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("bad counter {dev}/{name} = {out:?}: {e}"))
    }

    /// The MAC address of interface `dev` (`"aa:bb:cc:dd:ee:ff"`).
    ///
    /// # Panics
    /// When the interface does not exist.
    pub fn mac(&self, dev: &str) -> String {
        self.run_ok(&["cat", &format!("/sys/class/net/{dev}/address")])
            .trim()
            .to_string()
    }

    /// Switches the *calling thread* into this namespace until the guard is dropped.
    /// Sockets and devices opened meanwhile (a TAP device, an AF_XDP socket) belong to
    /// this namespace and stay there after the switch back.
    ///
    /// # Panics
    /// When `setns` fails.
    pub fn enter(&self) -> NetnsGuard {
        let back =
            File::open("/proc/thread-self/ns/net").expect("cannot open /proc/thread-self/ns/net");
        let target = File::open(Path::new("/run/netns").join(&self.name))
            .unwrap_or_else(|e| panic!("cannot open netns {}: {e}", self.name));
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns into {} failed: {e}", self.name));
        NetnsGuard { back }
    }

    /// Runs `f` on the calling thread inside the namespace and switches back afterwards
    /// (also when `f` panics).
    pub fn within<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.enter();
        f()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside (a ping a failed test left behind), then delete.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// While alive, the calling thread is inside another network namespace; on drop it goes
/// back to the namespace it was in before [`Netns::enter`].
#[derive(Debug)]
pub struct NetnsGuard {
    back: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.back.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread left in the wrong namespace would make later steps lie: stop here.
            if !std::thread::panicking() {
                panic!("cannot return to the original network namespace: {e}");
            }
        }
    }
}

/// A veth pair created in the current thread's namespace. On drop, end `a` is deleted
/// (which deletes `b`), wherever it is (a namespace of ours deletes it too when dropped).
#[derive(Debug)]
pub struct Veth {
    a: String,
    b: String,
    a_ns: Option<String>,
}

/// Creates a veth pair with unique names `PREFIXa…`/`PREFIXb…` (prefix cut to 7 bytes).
///
/// # Panics
/// When `ip link add` fails.
pub fn veth_pair(prefix: &str) -> Veth {
    require_root();
    let short: String = prefix.chars().take(IFNAME_PREFIX_MAX - 1).collect();
    let a = unique_ifname(&format!("{short}a"));
    let b = unique_ifname(&format!("{short}b"));
    run_ok(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
    Veth { a, b, a_ns: None }
}

impl Veth {
    /// Name of end `a`.
    pub fn a(&self) -> &str {
        &self.a
    }

    /// Name of end `b`.
    pub fn b(&self) -> &str {
        &self.b
    }

    /// Moves end `a` into `ns`.
    ///
    /// # Panics
    /// When `ip link set netns` fails.
    pub fn move_a_to(&mut self, ns: &Netns) {
        move_to_netns(&self.a, ns);
        self.a_ns = Some(ns.name().to_string());
    }

    /// Moves end `b` into `ns`.
    ///
    /// # Panics
    /// When `ip link set netns` fails.
    pub fn move_b_to(&self, ns: &Netns) {
        move_to_netns(&self.b, ns);
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let mut c = match &self.a_ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["-n", ns]);
                c
            }
            None => Command::new("ip"),
        };
        let _ = c
            .args(["link", "del", &self.a])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Moves interface `dev` from the current namespace into `ns`.
///
/// # Panics
/// When `ip link set netns` fails.
pub fn move_to_netns(dev: &str, ns: &Netns) {
    run_ok(&["ip", "link", "set", dev, "netns", ns.name()]);
}

/// Sets interface `dev` of the current namespace up.
///
/// # Panics
/// When `ip link set up` fails.
pub fn link_up(dev: &str) {
    run_ok(&["ip", "link", "set", dev, "up"]);
}

/// Adds an address (`"10.0.0.1/24"`) to interface `dev` of the current namespace.
///
/// # Panics
/// When `ip addr add` fails.
pub fn set_addr(dev: &str, cidr: &str) {
    run_ok(&["ip", "addr", "add", cidr, "dev", dev]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_short() {
        let a = unique_ifname("averylongprefix");
        let b = unique_ifname("averylongprefix");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX, "{a}");
        assert!(a.starts_with("averylon"));
        assert_eq!(unique_ifname("x").len(), 8);
    }

    #[test]
    fn base36_is_fixed_width() {
        assert_eq!(base36(0, 5), "00000");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(4_194_304, 5), "2hwcg");
    }
}
