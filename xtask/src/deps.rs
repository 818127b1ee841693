//! `cargo xtask deps`: the system packages the project needs, from Debian's apt.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// Packages from the release's own suite, with what needs them.
const PACKAGES: &[(&str, &str)] = &[
    ("tshark", "independent dissector in tests"),
    ("tcpdump", "captures in tests"),
    ("graphviz", "dot -Tsvg checks of Graph::to_dot"),
    ("iputils-ping", "ping across namespaces"),
    ("ethtool", "veth offloads and queues"),
    ("socat", "TCP/UDP peers in tests"),
    ("iperf3", "throughput peers"),
    ("clang", "XDP programs (clang -target bpf)"),
    ("llvm", "XDP programs (llvm-objdump, llvm-strip)"),
    ("libbpf-dev", "bpf_helpers.h for the XDP programs"),
    ("linux-libc-dev", "kernel UAPI headers"),
    ("libelf-dev", "BPF object handling"),
    ("zlib1g-dev", "BPF object handling"),
    ("pkg-config", "finding C libraries (libdpdk)"),
    ("m4", "libbpf headers build"),
    ("bpftool", "inspecting XDP programs and maps"),
    ("nftables", "kernel firewall baseline"),
    ("iproute2", "ip netns / link / route"),
    ("python3-scapy", "hand-built frames in tests"),
    ("libclang-dev", "bindgen (DPDK bindings)"),
    ("busybox-static", "guest initramfs"),
    ("dpdk", "testpmd, PMD plugins"),
    ("dpdk-dev", "DPDK tools"),
    ("libdpdk-dev", "DPDK headers and libraries"),
    ("cpio", "guest initramfs"),
    ("xz-utils", "guest kernel extraction"),
    ("kmod", "modinfo/modprobe for guest modules"),
    ("openssl", "test certificates for the TLS API endpoint"),
    ("arping", "ARP probes in tests"),
    ("gzip", "guest initramfs"),
];

/// QEMU comes from `<codename>-backports` on Debian 12 (QEMU 10; bookworm's 7.2 is too old
/// for the vhost-user behaviour the project is tested against).
const QEMU: &str = "qemu-system-x86";

/// Installs what is missing; prints one line when everything is present.
///
/// # Errors
/// When a package is missing and we are not root, or apt fails.
pub fn run() -> Result<()> {
    let codename = os_codename();
    let backports = codename
        .as_deref()
        .filter(|c| *c == "bookworm")
        .map(|c| format!("{c}-backports"));
    let mut names: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).collect();
    names.push(QEMU);
    let installed = installed_versions(&names)?;
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed.iter().any(|(n, _)| n == p))
        .collect();
    // QEMU must be the backports build where backports exist (its version has `~bpo`).
    let qemu_ok = installed
        .iter()
        .any(|(n, v)| n == QEMU && (backports.is_none() || v.contains("bpo")));
    let total = names.len();
    if missing.is_empty() && qemu_ok {
        println!("deps: all {total} packages present");
        kernel_settings()?;
        return Ok(());
    }
    let mut todo: Vec<&str> = missing.clone();
    if !qemu_ok {
        todo.push(QEMU);
    }
    println!(
        "deps: missing {} of {total}: {}",
        todo.len(),
        todo.join(" ")
    );
    if !util::is_root() {
        bail!(
            "installing packages needs root: run `sudo cargo xtask deps` (or as root), \
             or install them yourself: apt-get install {}",
            todo.join(" ")
        );
    }
    if !qemu_ok && let Some(bp) = &backports {
        ensure_backports_source(bp)?;
    }
    apt(&["update", "-q"])?;
    if !missing.is_empty() {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)?;
    }
    if !qemu_ok {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        if let Some(bp) = &backports {
            args.extend(["-t", bp.as_str()]);
        }
        args.push(QEMU);
        apt(&args)?;
    }
    let installed = installed_versions(&names)?;
    let still: Vec<&str> = names
        .iter()
        .copied()
        .filter(|p| !installed.iter().any(|(n, _)| n == p))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still missing: {}",
            still.join(" ")
        );
    }
    println!("deps: all {total} packages present");
    kernel_settings()
}

/// `VERSION_CODENAME` from `/etc/os-release` (`bookworm`).
fn os_codename() -> Option<String> {
    let s = std::fs::read_to_string("/etc/os-release").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// `(package, version)` of each of `names` that is fully installed.
fn installed_versions(names: &[&str]) -> Result<Vec<(String, String)>> {
    // dpkg-query exits 1 when some name is unknown, but still lists the known ones.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\t${Version}\n")
        .args(names)
        .output()
        .context("cannot run dpkg-query (is this a Debian system?)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (pkg, status, version) = (f.next()?, f.next()?, f.next()?);
            (status == "install ok installed").then(|| (pkg.to_string(), version.to_string()))
        })
        .collect())
}

/// `apt-get <args>` without prompts.
fn apt(args: &[&str]) -> Result<()> {
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args),
    )
}

/// What the apt source files say about a suite.
#[derive(Debug, PartialEq, Eq)]
enum SourceScan {
    /// A source for the suite exists.
    Present,
    /// No source for it; the main Debian mirror and whether it is in deb822 format.
    Absent { mirror: String, deb822: bool },
}

/// Looks for `suite` in apt source files given as `(is_deb822, contents)`; remembers the
/// first Debian mirror seen to mirror it.
fn scan_sources(files: &[(bool, String)], suite: &str) -> SourceScan {
    let mut mirror = None;
    let mut deb822 = false;
    let is_debian = |u: &str| u.trim_end_matches('/').ends_with("/debian");
    for (is_sources, text) in files {
        for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
            let words = line.split_whitespace();
            if *is_sources {
                if let Some(suites) = line.strip_prefix("Suites:")
                    && suites.split_whitespace().any(|w| w == suite)
                {
                    return SourceScan::Present;
                }
                if let Some(uri) = line.strip_prefix("URIs:")
                    && let Some(uri) = uri.split_whitespace().next()
                    && is_debian(uri)
                    && mirror.is_none()
                {
                    mirror = Some(uri.to_string());
                    deb822 = true;
                }
            } else if line.starts_with("deb ") {
                // deb [options] URI SUITE COMPONENTS...
                let mut rest = words.skip(1).skip_while(|w| w.starts_with('['));
                let (Some(uri), Some(s)) = (rest.next(), rest.next()) else {
                    continue;
                };
                if s == suite {
                    return SourceScan::Present;
                }
                if is_debian(uri) && mirror.is_none() {
                    mirror = Some(uri.to_string());
                }
            }
        }
    }
    SourceScan::Absent {
        mirror: mirror.unwrap_or_else(|| "http://deb.debian.org/debian".into()),
        deb822,
    }
}

/// Adds a source for `suite` (e.g. `bookworm-backports`) unless one exists, in the same
/// format (deb822 `.sources` or one-line `.list`) and on the same mirror as the system's
/// main Debian source.
fn ensure_backports_source(suite: &str) -> Result<()> {
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut paths = vec![Path::new("/etc/apt/sources.list").to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut more: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        paths.extend(more);
    }
    let files: Vec<(bool, String)> = paths
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            Some((p.extension().is_some_and(|e| e == "sources"), text))
        })
        .collect();
    let SourceScan::Absent { mirror, deb822 } = scan_sources(&files, suite) else {
        return Ok(());
    };
    let (path, text) = if deb822 {
        (
            dir.join("backports.sources"),
            format!(
                "Types: deb\nURIs: {mirror}\nSuites: {suite}\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            ),
        )
    } else {
        (
            dir.join("backports.list"),
            format!("deb {mirror} {suite} main\n"),
        )
    };
    println!(
        "deps: adding apt source {suite} ({mirror}) in {}",
        path.display()
    );
    std::fs::create_dir_all(dir)?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Kernel settings the dataplane relies on; changed (and said) only when needed.
fn kernel_settings() -> Result<()> {
    // The XDP programs must be JIT-compiled (the interpreter is far too slow, and some
    // kernels refuse XDP without JIT).
    let jit = Path::new("/proc/sys/net/core/bpf_jit_enable");
    if let Ok(v) = std::fs::read_to_string(jit)
        && v.trim() == "0"
    {
        println!("deps: enabling the BPF JIT (net.core.bpf_jit_enable = 1)");
        std::fs::write(jit, "1").context("cannot enable the BPF JIT (needs root)")?;
    }
    // TAP devices need /dev/net/tun (module `tun`).
    if !Path::new("/dev/net/tun").exists() {
        println!("deps: /dev/net/tun is missing, loading the tun module");
        util::run(Command::new("modprobe").arg("tun"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_SOURCES: &str = "Types: deb\n# comment\nURIs: http://mirror.example/debian\n\
        Suites: bookworm bookworm-updates\nComponents: main\n";

    #[test]
    fn finds_backports_in_deb822_and_one_line_sources() {
        let bp = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n";
        let files = vec![(true, DEBIAN_SOURCES.to_string()), (true, bp.to_string())];
        assert_eq!(
            scan_sources(&files, "bookworm-backports"),
            SourceScan::Present
        );
        let files = vec![(
            false,
            "deb [arch=amd64] http://deb.debian.org/debian bookworm-backports main\n".into(),
        )];
        assert_eq!(
            scan_sources(&files, "bookworm-backports"),
            SourceScan::Present
        );
    }

    #[test]
    fn absent_backports_mirror_the_main_source() {
        let files = vec![(true, DEBIAN_SOURCES.to_string())];
        assert_eq!(
            scan_sources(&files, "bookworm-backports"),
            SourceScan::Absent {
                mirror: "http://mirror.example/debian".into(),
                deb822: true
            }
        );
        let files = vec![(
            false,
            "# deb http://old/debian bookworm-backports main\n\
             deb http://ftp.fr.debian.org/debian/ bookworm main\n"
                .to_string(),
        )];
        assert_eq!(
            scan_sources(&files, "bookworm-backports"),
            SourceScan::Absent {
                mirror: "http://ftp.fr.debian.org/debian/".into(),
                deb822: false
            }
        );
        assert_eq!(
            scan_sources(&[], "bookworm-backports"),
            SourceScan::Absent {
                mirror: "http://deb.debian.org/debian".into(),
                deb822: false
            }
        );
    }
}
