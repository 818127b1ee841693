//! Helpers: run commands loudly, find the workspace, read `cargo metadata`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// The cargo that runs us (`$CARGO`), or `cargo` from `PATH`.
pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A command line as a shell would show it (arguments with spaces quoted).
pub fn show(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    let prog = cmd.get_program().to_string_lossy();
    // Show `cargo` rather than the full path of the toolchain's binary.
    let prog = if prog.ends_with("/cargo") {
        "cargo".into()
    } else {
        prog
    };
    s.push_str(&prog);
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Prints `$ <command>` and runs it with inherited stdio.
///
/// # Errors
/// When the command cannot start or exits with a non-zero status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = show(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cargo <args>` in the workspace root (printed first).
///
/// # Errors
/// When cargo fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(cargo_bin())
        .args(args)
        .current_dir(workspace_root()))
}

/// True when the effective user id is 0 (read from `/proc/self/status`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// One target of a workspace package, from `cargo metadata`.
#[derive(Debug, Clone)]
pub struct Target {
    /// Package name (`packetgraph`).
    pub package: String,
    /// Target name (`engine`).
    pub name: String,
    /// Target kinds (`bench`, `lib`, `example`...).
    pub kinds: Vec<String>,
}

/// Workspace facts from `cargo metadata --format-version 1 --no-deps`.
#[derive(Debug)]
pub struct Metadata {
    /// Every target of every workspace package.
    pub targets: Vec<Target>,
    /// The target directory (`<root>/target` unless configured otherwise).
    pub target_dir: PathBuf,
}

/// Reads `cargo metadata` for the workspace (quietly: it is a query, not a step).
///
/// # Errors
/// When cargo fails or prints something that is not the expected JSON.
pub fn metadata() -> Result<Metadata> {
    let out = Command::new(cargo_bin())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata printed invalid JSON")?;
    let target_dir = v["target_directory"]
        .as_str()
        .context("cargo metadata: no target_directory")?
        .into();
    let mut targets = Vec::new();
    for p in v["packages"]
        .as_array()
        .context("cargo metadata: no packages")?
    {
        let package = p["name"].as_str().unwrap_or_default().to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            targets.push(Target {
                package: package.clone(),
                name: t["name"].as_str().unwrap_or_default().to_string(),
                kinds: t["kind"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect(),
            });
        }
    }
    Ok(Metadata {
        targets,
        target_dir,
    })
}
