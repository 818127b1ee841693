//! `cargo xtask fuzz`: the cargo-fuzz targets of the workspace.
//!
//! Three crates have a `fuzz/` directory in the cargo-fuzz layout (its own workspace, lock
//! file and target directory): `dataplane` (packet parsers of the bricks), `vhost`
//! (descriptor chains of a hostile guest) and `ebpf` (the XDP steering program through
//! BPF_PROG_TEST_RUN, needs root). [`build_all`] builds every target on the stable
//! toolchain, so the targets cannot rot (`cargo xtask test` calls it); [`run`] fuzzes them
//! with libFuzzer, which needs the nightly toolchain and `cargo-fuzz`, both installed on
//! demand.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// Crates (directories of the workspace root) that have a cargo-fuzz `fuzz/` directory.
pub const FUZZ_CRATES: [&str; 3] = ["dataplane", "vhost", "ebpf"];

/// The `fuzz/` directory of `krate`.
fn fuzz_dir(krate: &str) -> PathBuf {
    util::workspace_root().join(krate).join("fuzz")
}

/// Target names of one fuzz crate: the `[[bin]]` names of its manifest, in order.
///
/// # Errors
/// When the manifest cannot be read or declares no target.
pub fn targets(krate: &str) -> Result<Vec<String>> {
    let manifest = fuzz_dir(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let names = bin_names(&text);
    if names.is_empty() {
        bail!("{} declares no [[bin]] fuzz target", manifest.display());
    }
    Ok(names)
}

/// The `name = "…"` of every `[[bin]]` table of a Cargo manifest.
fn bin_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some(v) = line.strip_prefix("name")
            && let Some(v) = v.trim_start().strip_prefix('=')
        {
            names.push(v.trim().trim_matches('"').to_string());
        }
    }
    names
}

/// Builds every fuzz target of every fuzz crate on the current (stable) toolchain, without
/// instrumentation: proves they compile against today's crates. Not `--locked`: a fuzz
/// crate's lock file follows the crate it fuzzes, and is refreshed here when that changed.
///
/// # Errors
/// When a build fails.
pub fn build_all() -> Result<()> {
    // One target directory for the three: they share packetgraph and libfuzzer-sys.
    let target_dir = util::workspace_root().join("target").join("fuzz-stable");
    for krate in FUZZ_CRATES {
        let manifest = fuzz_dir(krate).join("Cargo.toml");
        println!("fuzz: building the {krate} fuzz targets (stable, no instrumentation)");
        util::run(Command::new(util::cargo_bin()).args([
            "build",
            "--manifest-path",
            &manifest.to_string_lossy(),
            "--target-dir",
            &target_dir.to_string_lossy(),
        ]))?;
    }
    Ok(())
}

/// Fuzzes `target` (every target when `None`) for `seconds` each with libFuzzer through
/// `cargo +nightly fuzz run`, starting from the committed seeds (`fuzz/seeds/<target>`)
/// and the local corpus (`fuzz/corpus/<target>`, git-ignored). A crash stops with an
/// error naming the artifact directory.
///
/// # Errors
/// When the toolchain or cargo-fuzz cannot be installed, the target is unknown, or a
/// target finds a crash.
pub fn run(target: Option<&str>, seconds: u64) -> Result<()> {
    ensure_tools()?;
    let mut plan: Vec<(&str, String)> = Vec::new();
    for krate in FUZZ_CRATES {
        for t in targets(krate)? {
            if target.is_none_or(|want| want == t) {
                plan.push((krate, t));
            }
        }
    }
    if plan.is_empty() {
        let all: Vec<String> = FUZZ_CRATES
            .iter()
            .filter_map(|k| targets(k).ok())
            .flatten()
            .collect();
        bail!(
            "no fuzz target named {:?}; targets: {}",
            target.unwrap_or(""),
            all.join(", ")
        );
    }
    if plan.iter().any(|(k, _)| *k == "ebpf") && !util::is_root() {
        println!("fuzz: warning: the ebpf target loads an XDP program and needs root");
    }
    for (i, (krate, t)) in plan.iter().enumerate() {
        println!(
            "fuzz: [{}/{}] {krate}/{t} for {seconds} s",
            i + 1,
            plan.len()
        );
        fuzz_one(krate, t, seconds)?;
    }
    println!("fuzz: {} target(s), no crash", plan.len());
    Ok(())
}

/// One `cargo +nightly fuzz run` in the crate directory.
fn fuzz_one(krate: &str, target: &str, seconds: u64) -> Result<()> {
    let dir = util::workspace_root().join(krate);
    let corpus = fuzz_dir(krate).join("corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&dir)
        .args(["+nightly", "fuzz", "run", target])
        .arg(&corpus);
    let seeds = fuzz_dir(krate).join("seeds").join(target);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.args(["--", &format!("-max_total_time={seconds}")]);
    util::run(&mut cmd).with_context(|| {
        format!(
            "{krate}/{target}: a crash was found; reproducer in {}",
            fuzz_dir(krate).join("artifacts").join(target).display()
        )
    })
}

/// Installs the nightly toolchain (minimal profile) and cargo-fuzz when missing.
fn ensure_tools() -> Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        println!("fuzz: installing the nightly toolchain (libFuzzer needs -Zsanitizer)");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let cargo_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !cargo_fuzz {
        println!("fuzz: installing cargo-fuzz from crates.io");
        util::run(Command::new(util::cargo_bin()).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_names_reads_only_bin_tables() {
        let m = "[package]\nname = \"x-fuzz\"\n\n[[bin]]\nname = \"a\"\npath = \"a.rs\"\n\n[dependencies]\nname = \"no\"\n\n[[bin]]\nname= \"b\"\n";
        assert_eq!(bin_names(m), ["a", "b"]);
    }

    #[test]
    fn every_fuzz_crate_declares_targets_whose_sources_exist() {
        for krate in FUZZ_CRATES {
            let ts = targets(krate).unwrap();
            assert!(!ts.is_empty(), "{krate}");
            let manifest = std::fs::read_to_string(fuzz_dir(krate).join("Cargo.toml")).unwrap();
            assert!(
                manifest.contains("[package]"),
                "{krate}/fuzz/Cargo.toml lost its [package] table"
            );
            for t in ts {
                assert!(
                    fuzz_dir(krate)
                        .join("fuzz_targets")
                        .join(format!("{t}.rs"))
                        .exists(),
                    "{krate}: fuzz target {t} has no fuzz_targets/{t}.rs"
                );
            }
        }
    }
}
