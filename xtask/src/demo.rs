//! `cargo xtask demo`: deps, build, the guest image, then the issue-7 demo
//! (`tests/examples/demo_qemu.rs`): two hosts as network namespaces joined by a veth
//! underlay, a `butterflyd` on each (AF_XDP on its underlay), three QEMU guests on
//! vhost-user (two on VNI 42 across the hosts, one on VNI 7), driven by the `butterfly`
//! CLI: ping across hosts, TCP/5000 allowed, TCP/6000 blocked, VNI 7 isolated, spoofed
//! source dropped, then `status`, `nic stats`, the pcap trace, teardown. Non-zero exit
//! when a check fails.
//!
//! `tests/examples/demo_butterfly.rs` is the same demo with tap NICs in namespaces
//! standing in for the guests (no QEMU needed): `cargo run -p butterfly-tests --example
//! demo_butterfly` as root.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{deps, guest, util};

/// Package and example that implement the demo.
const PACKAGE: &str = "butterfly-tests";
const EXAMPLE: &str = "demo_qemu";

/// Runs deps (unless `no_deps`), builds the daemon, the CLI, the guest image and the demo,
/// and runs it.
///
/// # Errors
/// When not root, a build fails, or a step of the demo fails (its exit status).
pub fn run(no_deps: bool) -> Result<()> {
    if !util::is_root() {
        bail!("the demo creates network namespaces, XDP programs and QEMU guests: it needs root");
    }
    if !no_deps {
        deps::run()?;
    }
    util::cargo(&["build", "-p", "butterfly", "--bins"])?;
    util::cargo(&["build", "-p", PACKAGE, "--example", EXAMPLE])?;
    let meta = util::metadata()?;
    let img = guest::build(&util::workspace_root().join("target"), false)?;
    println!("demo: guest image {}", img.kernel.display());
    let debug = meta.target_dir.join("debug");
    let bin = debug.join("examples").join(EXAMPLE);
    util::run(Command::new(&bin).env("BUTTERFLY_BIN_DIR", &debug))?;
    println!("demo: done");
    Ok(())
}
