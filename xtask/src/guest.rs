//! `cargo xtask guest`: builds the tiny QEMU guest used by the vhost tests and the demo.
//!
//! - Kernel: Debian's `linux-image-amd64` dependency (`linux-image-6.1.0-N-amd64`),
//!   fetched with `apt-get download` and unpacked with `dpkg -x`. The uncompressed ELF
//!   `vmlinux` is cut out of the bzImage's xz payload so QEMU boots it through the PVH
//!   entry point (~2 s to `/init` under TCG instead of ~5 s); when that fails the bzImage
//!   is used.
//! - Initramfs: busybox-static, the virtio-net modules of that same kernel
//!   (`virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover
//!   net_failover virtio_net`, loaded in that order) and an `/init` script.
//!
//! `/init` reads from the kernel command line:
//! `bf.ip=10.0.0.1/24` (address of eth0), `bf.mac=02:..` (optional, else QEMU's),
//! `bf.peers=10.0.0.2,10.0.0.3`, `bf.test=ping|tcp-recv|tcp-send|none`,
//! `bf.bytes=N` (tcp-send size, default 100000). Results are printed on the serial console
//! as `BF-RESULT <test> <peer> ok|fail ...`; `BF-READY` when eth0 is configured. It then
//! reads commands from the console, one per line, `<id> <shell command>`, runs each and
//! prints its output followed by `BF-DONE <id> <exit status>` (tests drive the guest that
//! way: ping, nc, reboot -f).
//!
//! Everything is cached under `<target>/guest/` and rebuilt only when missing (or forced).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The files QEMU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// `vmlinux` (ELF, PVH boot) or `vmlinuz` (bzImage).
    pub kernel: PathBuf,
    /// gzip-compressed newc cpio initramfs.
    pub initrd: PathBuf,
}

/// virtio-net modules in load order.
const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The guest's `/init`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in /lib/modules/*.ko; do insmod "$m" 2>/dev/null; done
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}";; esac; done; }
IP=$(arg bf.ip); MAC=$(arg bf.mac); PEERS=$(arg bf.peers | tr , ' '); TEST=$(arg bf.test)
BYTES=$(arg bf.bytes); [ -n "$BYTES" ] || BYTES=100000
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
[ -n "$MAC" ] && ip link set eth0 address "$MAC"
[ -n "$IP" ] && ip addr add "$IP" dev eth0
ip link set eth0 up
echo "BF-READY ip=$IP mac=$(cat /sys/class/net/eth0/address 2>/dev/null)"
pattern() { i=0; while [ $i -lt "$1" ]; do echo "butterfly line $i"; i=$((i+1)); done | head -c "$1"; }
case "$TEST" in
  ping)
    for p in $PEERS; do
      if ping -c 3 -W 2 "$p" >/tmp/ping 2>&1; then echo "BF-RESULT ping $p ok"; else echo "BF-RESULT ping $p fail"; cat /tmp/ping; fi
    done;;
  tcp-recv)
    nc -l -p 5000 > /tmp/rx
    echo "BF-RESULT tcp-recv - $(wc -c < /tmp/rx) $(md5sum < /tmp/rx | cut -d' ' -f1)";;
  tcp-send)
    for p in $PEERS; do
      if pattern "$BYTES" | nc "$p" 5000; then echo "BF-RESULT tcp-send $p ok"; else echo "BF-RESULT tcp-send $p fail"; fi
    done;;
esac
echo "BF-IDLE"
while read -r id cmd; do
  [ -n "$id" ] || continue
  sh -c "$cmd"
  echo "BF-DONE $id $?"
done
poweroff -f
"#;

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian kernel package `linux-image-amd64` currently depends on.
fn kernel_package() -> Result<String> {
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .context(
            "apt-cache depends linux-image-amd64 names no linux-image-*-amd64 (run apt-get update)",
        )
}

/// Extracts the ELF vmlinux from a bzImage whose payload is xz-compressed.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let data = std::fs::read(bzimage).with_context(|| format!("read {}", bzimage.display()))?;
    let magic = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
    let at = data
        .windows(magic.len())
        .position(|w| w == magic)
        .context("no xz payload in the bzImage")?;
    let xz = out.with_extension("xz");
    std::fs::write(&xz, &data[at..])?;
    let elf = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .arg(&xz)
        .output()
        .context("cannot run xz (apt xz-utils)")?;
    let _ = std::fs::remove_file(&xz);
    if elf.stdout.len() < 4 || &elf.stdout[..4] != b"\x7fELF" {
        bail!("the bzImage's xz payload is not an ELF vmlinux");
    }
    std::fs::write(out, &elf.stdout)?;
    Ok(())
}

/// Finds `<name>.ko` (or `.ko.xz`/`.ko.zst`, decompressed) under `modroot` and copies it to
/// `dest/NN-<name>.ko`. Returns false when the module is not there (built into the kernel).
fn copy_module(modroot: &Path, name: &str, idx: usize, dest: &Path) -> Result<bool> {
    let found = output(
        Command::new("find")
            .arg(modroot)
            .args(["-name", &format!("{name}.ko*")]),
    )?;
    let Some(path) = found.lines().next().map(PathBuf::from) else {
        return Ok(false);
    };
    let target = dest.join(format!("{idx:02}-{name}.ko"));
    let p = path.to_string_lossy();
    if p.ends_with(".ko") {
        std::fs::copy(&path, &target)?;
    } else if p.ends_with(".xz") {
        let out = output(Command::new("sh").arg("-c").arg(format!(
            "xz -dc '{}' > '{}'",
            path.display(),
            target.display()
        )))?;
        drop(out);
    } else if p.ends_with(".zst") {
        run(Command::new("zstd")
            .args(["-q", "-d", "-f", "-o"])
            .arg(&target)
            .arg(&path))?;
    } else {
        bail!("unknown module format {}", path.display());
    }
    Ok(true)
}

/// Builds (or reuses) the guest image under `<target_dir>/guest/`.
///
/// # Errors
/// When a tool is missing (`apt-get`, `dpkg`, `xz`, `cpio`, `gzip`, busybox-static: run
/// `cargo xtask deps`), the kernel package cannot be downloaded, or a file cannot be written.
pub fn build(target_dir: &Path, force: bool) -> Result<GuestImage> {
    let dir = std::path::absolute(target_dir.join("guest"))?;
    let image = GuestImage {
        kernel: dir.join("vmlinux"),
        initrd: dir.join("initrd.gz"),
    };
    let bz_image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: image.initrd.clone(),
    };
    if !force {
        for img in [&image, &bz_image] {
            if img.kernel.exists() && img.initrd.exists() {
                return Ok(img.clone());
            }
        }
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox missing: apt-get install busybox-static (cargo xtask deps)");
    }
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let pkg = kernel_package()?;
    // The .deb is kept (70 MB download) until the package name changes.
    let debs = dir.join("deb");
    std::fs::create_dir_all(&debs)?;
    let cached = std::fs::read_dir(&debs)?.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{pkg}_"))
    });
    if !cached {
        eprintln!("guest: downloading {pkg}");
        for e in std::fs::read_dir(&debs)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        run(Command::new("apt-get")
            .args(["download", "-q", &pkg])
            .current_dir(&debs))?;
    }
    let deb = std::fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
        })
        .context("apt-get download produced no .deb")?;
    let root = work.join("root");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no /boot/vmlinuz-* in the kernel package")?;
    let modroot = root.join("lib/modules");

    // initramfs tree
    let initrd_root = work.join("initrd");
    for d in ["bin", "proc", "sys", "dev", "tmp", "lib/modules"] {
        std::fs::create_dir_all(initrd_root.join(d))?;
    }
    std::fs::copy(busybox, initrd_root.join("bin/busybox"))?;
    for (i, m) in MODULES.iter().enumerate() {
        if !copy_module(&modroot, m, i, &initrd_root.join("lib/modules"))? {
            eprintln!("guest: module {m} not found (built in?)");
        }
    }
    let init = initrd_root.join("init");
    std::fs::write(&init, INIT)?;
    run(Command::new("chmod").arg("755").arg(&init))?;
    std::fs::create_dir_all(&dir)?;
    let tmp_initrd = dir.join("initrd.gz.tmp");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -9 > '{}'",
        initrd_root.display(),
        tmp_initrd.display()
    )))
    .context("cpio/gzip (apt cpio)")?;
    std::fs::rename(&tmp_initrd, &image.initrd)?;

    let result = match extract_vmlinux(&vmlinuz, &image.kernel) {
        Ok(()) => image,
        Err(e) => {
            eprintln!("guest: no uncompressed vmlinux ({e:#}); using the bzImage");
            std::fs::copy(&vmlinuz, &bz_image.kernel)?;
            bz_image
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "guest: kernel {} initrd {}",
        result.kernel.display(),
        result.initrd.display()
    );
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_loads_modules_in_order() {
        // Module files are numbered so the glob in /init loads them in MODULES order.
        let names: Vec<String> = MODULES
            .iter()
            .enumerate()
            .map(|(i, m)| format!("{i:02}-{m}.ko"))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(INIT.contains("BF-RESULT ping"));
        assert!(INIT.starts_with("#!/bin/busybox sh\n"));
    }
}
