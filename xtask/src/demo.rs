//! `cargo xtask demo`: deps, build, then the TAP ping demo (`tests/examples/demo_tap.rs`).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{deps, util};

/// Package and example that implement the demo.
const PACKAGE: &str = "butterfly-tests";
const EXAMPLE: &str = "demo_tap";

/// Runs deps (unless `no_deps`), builds the demo and runs it.
///
/// # Errors
/// When not root, a build fails, or a step of the demo fails (its exit status).
pub fn run(no_deps: bool) -> Result<()> {
    if !util::is_root() {
        bail!("the demo creates network namespaces and TAP devices: it needs root");
    }
    if !no_deps {
        deps::run()?;
    }
    util::cargo(&["build", "-p", PACKAGE, "--example", EXAMPLE])?;
    let meta = util::metadata()?;
    let bin = meta.target_dir.join("debug").join("examples").join(EXAMPLE);
    util::run(&mut Command::new(&bin))?;
    println!("demo: done");
    Ok(())
}
