//! QEMU guests for the vhost-user end-to-end tests and the demo: the tiny image of
//! `cargo xtask guest`, booted under TCG with its NIC on a vhost-user socket.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The kernel and initramfs built by `cargo xtask guest` (under `target/guest/`).
///
/// # Panics
/// When the image is missing, with the command that builds it.
pub fn guest_image() -> (PathBuf, PathBuf) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("guest");
    let initrd = dir.join("initrd.gz");
    for k in ["vmlinux", "vmlinuz"] {
        let kernel = dir.join(k);
        if kernel.exists() && initrd.exists() {
            return (kernel, initrd);
        }
    }
    panic!(
        "guest image missing in {}: run cargo xtask guest",
        dir.display()
    );
}

/// A QEMU (TCG) guest on a vhost-user socket, driven through its serial console: the
/// guest `/init` runs `ID CMD` lines and answers `BF-DONE ID STATUS`. Killed on drop.
pub struct Guest {
    name: String,
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<String>>,
    next_id: u32,
}

impl Guest {
    /// Boots a guest whose NIC (MAC `mac`, address `ip` as CIDR) is a vhost-user client of
    /// `socket` (reconnecting every 200 ms).
    ///
    /// # Panics
    /// When the image is missing or QEMU cannot be started.
    pub fn start(name: &str, socket: &Path, mac: &str, ip: &str) -> Guest {
        Guest::start_mtu(name, socket, mac, ip, None)
    }

    /// Like [`Guest::start`], and with `mtu` QEMU offers `VIRTIO_NET_F_MTU` with that MTU
    /// (bytes; `host_mtu=`), so the guest's interface takes it, as a cloud VM's does. The
    /// vhost-user backend must offer the feature too (butterflyd's NICs do, with the VM
    /// MTU), or the guest keeps 1500.
    ///
    /// # Panics
    /// As [`Guest::start`].
    pub fn start_mtu(name: &str, socket: &Path, mac: &str, ip: &str, mtu: Option<u16>) -> Guest {
        let chardev = format!("socket,id=c0,path={},reconnect-ms=200", socket.display());
        Guest::launch(name, &chardev, mac, ip, "", mtu)
    }

    /// Boots a guest whose NIC is on the vhost-user `-chardev` spec `chardev` (its id must
    /// be `c0`), with `args` appended to the kernel command line for `/init`
    /// (`bf.peers=... bf.test=...`).
    ///
    /// # Panics
    /// When the image is missing or QEMU cannot be started.
    pub fn boot(name: &str, chardev: &str, mac: &str, ip: &str, args: &str) -> Guest {
        Guest::launch(name, chardev, mac, ip, args, None)
    }

    fn launch(
        name: &str,
        chardev: &str,
        mac: &str,
        ip: &str,
        args: &str,
        mtu: Option<u16>,
    ) -> Guest {
        let (kernel, initrd) = guest_image();
        let host_mtu = mtu.map_or(String::new(), |m| format!(",host_mtu={m}"));
        let mut child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-nodefaults", "-display", "none"])
            .args(["-serial", "stdio"])
            .args(["-M", "q35,memory-backend=mem", "-m", "256"])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 quiet panic=-1 bf.ip={ip} {args}"))
            .args(["-chardev", chardev])
            .args(["-netdev", "vhost-user,id=n0,chardev=c0"])
            .args([
                "-device",
                &format!("virtio-net-pci,romfile=,netdev=n0,mac={mac}{host_mtu}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64");
        let stdin = child.stdin.take().expect("stdin");
        let out = Arc::new(Mutex::new(String::new()));
        for mut pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let buf = out.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        Guest {
            name: name.into(),
            child,
            stdin,
            out,
            next_id: 1,
        }
    }

    /// The guest's name (for messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes one raw line to the console (`/init` reads `ID CMD` lines), without
    /// waiting for an answer (e.g. `99 reboot -f`).
    ///
    /// # Panics
    /// When the console pipe is closed.
    pub fn send_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("guest console");
        self.stdin.flush().expect("guest console");
    }

    /// Everything the guest printed so far.
    pub fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until `needle` appears after byte `from` of the output; returns the offset
    /// just after it.
    ///
    /// # Panics
    /// When the guest exits or `timeout` passes first.
    pub fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self
                .out
                .lock()
                .unwrap()
                .get(from..)
                .and_then(|s| s.find(needle))
            {
                return from + i + needle.len();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("guest {} exited ({st}):\n{}", self.name, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "guest {}: no {needle:?} within {timeout:?}:\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `cmd` in the guest; returns (exit status, output).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> (i32, String) {
        let id = self.next_id;
        self.next_id += 1;
        let start = self.out.lock().unwrap().len();
        writeln!(self.stdin, "{id} {cmd}").expect("guest console");
        self.stdin.flush().unwrap();
        let end = self.wait_for(&format!("BF-DONE {id} "), start, timeout);
        let o = self.output();
        let status = o[end..]
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        (status, o[start..end].to_string())
    }

    /// Pings `peer` until 3 answers in a row come back (ARP and FDB learning first),
    /// at most `tries` rounds; the last ping output either way.
    ///
    /// # Errors
    /// The last ping output when no round got 3 answers.
    pub fn try_ping(&mut self, peer: &str, tries: u32) -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..tries {
            let (st, out) = self.run(
                &format!("ping -c 3 -i 0.3 -W 2 {peer}"),
                Duration::from_secs(30),
            );
            if st == 0 && out.contains("3 packets received") {
                return Ok(out);
            }
            last = out;
        }
        Err(last)
    }

    /// Like [`Guest::try_ping`].
    ///
    /// # Panics
    /// When `peer` does not answer, with the last ping output.
    pub fn ping(&mut self, peer: &str, tries: u32) -> String {
        self.try_ping(peer, tries)
            .unwrap_or_else(|last| panic!("guest {} cannot ping {peer}:\n{last}", self.name))
    }

    /// Runs a shell command (30 s at most): whether it exited 0, and its output.
    pub fn sh(&mut self, cmd: &str) -> (bool, String) {
        let (st, out) = self.run(cmd, Duration::from_secs(30));
        (st == 0, out)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
