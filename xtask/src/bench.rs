//! `cargo xtask bench [NAME]`: run bench targets named NAME or NAME_* and collect their
//! `RESULT ` lines.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::deps;
use crate::util::{self, Target};

/// The prefix a benchmark puts in front of each figure on stdout.
const PREFIX: &str = "RESULT ";

/// Lists the bench targets (no `name`), or runs those matching `name`.
///
/// # Errors
/// When no target matches, deps fails, or a benchmark fails (the others still run).
pub fn run(name: Option<&str>, no_deps: bool) -> Result<()> {
    let meta = util::metadata()?;
    let mut benches: Vec<Target> = meta
        .targets
        .into_iter()
        .filter(|t| t.kinds.iter().any(|k| k == "bench"))
        .collect();
    benches.sort_by(|a, b| a.name.cmp(&b.name));
    let Some(name) = name else {
        if benches.is_empty() {
            println!("no bench targets in the workspace");
        } else {
            println!("available benches (cargo xtask bench NAME runs NAME and NAME_*):");
            for t in &benches {
                println!("  {:<24} (package {})", t.name, t.package);
            }
        }
        return Ok(());
    };
    let selected: Vec<&Target> = benches.iter().filter(|t| selects(name, &t.name)).collect();
    if selected.is_empty() {
        let all: Vec<&str> = benches.iter().map(|t| t.name.as_str()).collect();
        bail!(
            "no bench target named `{name}` or `{name}_*`; available: {}",
            all.join(", ")
        );
    }
    if !no_deps {
        deps::run()?;
    }
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for t in selected {
        match run_one(t, &mut results) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("bench: {e:#}");
                failures.push(t.name.clone());
            }
        }
    }
    println!();
    println!("== results ==");
    if results.is_empty() {
        println!("(no RESULT lines were printed)");
    }
    for r in &results {
        println!("{r}");
    }
    if !failures.is_empty() {
        bail!("benchmark(s) failed: {}", failures.join(", "));
    }
    if results.is_empty() {
        bail!("the benchmarks printed no `RESULT ` line");
    }
    Ok(())
}

/// True when `cargo xtask bench NAME` runs bench target `target`: `NAME` or `NAME_*`.
fn selects(name: &str, target: &str) -> bool {
    target
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
}

/// Runs one bench target, streaming its stdout and collecting its figures.
fn run_one(t: &Target, results: &mut Vec<String>) -> Result<()> {
    let mut cmd = Command::new(util::cargo_bin());
    cmd.args(["bench", "-p", &t.package, "--bench", &t.name])
        .current_dir(util::workspace_root())
        .stdout(Stdio::piped());
    if t.package == "butterfly-tests" && t.name.starts_with("dpdk") {
        // The DPDK bench needs the feature (required-features).
        cmd.args(["--features", "dpdk"]);
    }
    let line = util::show(&cmd);
    println!("$ {line}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    for l in BufReader::new(stdout).lines() {
        let l = l.context("reading the benchmark's stdout")?;
        match l.strip_prefix(PREFIX) {
            Some(r) => {
                println!("{r}");
                results.push(r.to_string());
            }
            None => println!("  | {l}"),
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::selects;

    #[test]
    fn name_selects_itself_and_its_parts_only() {
        assert!(selects("engine", "engine"));
        assert!(selects("overlay", "overlay_vtep"));
        assert!(selects("overlay", "overlay_switch"));
        assert!(!selects("overlay", "overlayx"));
        assert!(!selects("overlay", "afxdp_overlay"));
        assert!(!selects("engine_x", "engine"));
    }
}
