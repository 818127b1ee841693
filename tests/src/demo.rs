//! Progress and verdict of a demo (`cargo xtask demo` and the tap variant): each check
//! printed as it passes or fails, then one line with the outcome and the exit code.

use std::process::ExitCode;

use crate::daemon;

/// The demos' two hosts (underlay 10.99.0.1 and .2), running the binaries next to the
/// demo, with every CLI command echoed, and the security group `web` (ICMP and TCP/5000
/// in) created on both.
///
/// # Errors
/// When a daemon does not start or a CLI command fails.
pub fn start_lab() -> Result<daemon::Lab, String> {
    let mut lab = daemon::Lab::with_bins(
        "demo",
        ["10.99.0.1", "10.99.0.2"],
        &daemon::bin_dir_unbuilt(),
    );
    lab.echo(true);
    lab.try_start()?;
    println!("demo: security group 'web' (ICMP and TCP/5000 in) on both hosts");
    for h in &lab.hosts {
        h.try_web_sg()?;
    }
    Ok(lab)
}

/// The checks of one demo run.
#[derive(Debug, Default)]
pub struct Steps {
    /// Checks made so far.
    pub n: usize,
    /// What each failed check was about, in order.
    pub failed: Vec<String>,
}

impl Steps {
    /// Counts a check and prints `demo: [ok]   WHAT`, or `demo: [FAIL] WHAT` and `detail`.
    pub fn check(&mut self, what: &str, ok: bool, detail: &str) {
        self.n += 1;
        if ok {
            println!("demo: [ok]   {what}");
        } else {
            println!("demo: [FAIL] {what}\n{detail}");
            self.failed.push(what.to_string());
        }
    }

    /// The demo's exit code: failure when `result` (the setup or a step that could not
    /// run) is an error or any check failed; prints the verdict line.
    pub fn verdict(&self, result: Result<(), String>) -> ExitCode {
        if let Err(e) = result {
            println!("demo: [FAIL] {e}");
            return ExitCode::FAILURE;
        }
        if self.failed.is_empty() {
            println!("demo: all {} checks passed", self.n);
            ExitCode::SUCCESS
        } else {
            println!(
                "demo: {} of {} checks failed: {:?}",
                self.failed.len(),
                self.n,
                self.failed
            );
            ExitCode::FAILURE
        }
    }
}
