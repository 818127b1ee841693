//! `cargo xtask test`: deps, then the whole test suite with cargo-nextest, then doc tests.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{deps, util};

/// Features turned on for the test suite: the DPDK backend and its end-to-end tests.
pub const DPDK_FEATURES: &str = "butterfly-tests/dpdk";

/// Runs deps (unless `no_deps`), `cargo nextest run --workspace --no-fail-fast [extra]`,
/// `cargo test --doc --workspace` and a build of the fuzz targets. All three run even when
/// an earlier one fails.
///
/// # Errors
/// When deps fails, cargo-nextest is missing, or any test fails.
pub fn run(no_deps: bool, extra: &[String]) -> Result<()> {
    if !no_deps {
        deps::run()?;
    }
    if !util::is_root() {
        println!("test: warning: not root; the end-to-end tests (netns, TAP, XDP, QEMU) will fail");
    }
    let nextest_present = Command::new(util::cargo_bin())
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nextest_present {
        bail!("cargo-nextest is not installed: cargo install cargo-nextest --locked");
    }
    // The vhost end-to-end tests boot QEMU guests: build (or reuse) the image first.
    println!("test: guest image for the QEMU tests (cargo xtask guest)");
    let img = crate::guest::build(&util::workspace_root().join("target"), false)?;
    println!("test: guest image ready: {}", img.kernel.display());
    // The DPDK backend (feature `dpdk`, needs libdpdk-dev from deps) is built and tested.
    let mut args = vec![
        "nextest",
        "run",
        "--workspace",
        "--no-fail-fast",
        "--features",
        DPDK_FEATURES,
    ];
    args.extend(extra.iter().map(String::as_str));
    let unit = util::cargo(&args);
    let doc = util::cargo(&["test", "--doc", "--workspace", "--features", DPDK_FEATURES]);
    // The cargo-fuzz targets live in their own workspaces: build them so they cannot rot.
    let fuzz = crate::fuzz::build_all();
    let failed: Vec<String> = [unit, doc, fuzz]
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if failed.is_empty() {
        println!("test: all tests passed");
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}
