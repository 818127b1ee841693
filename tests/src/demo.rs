//! Progress and verdict of a demo (`cargo xtask demo` and the tap variant): each check
//! printed as it passes or fails, then one line with the outcome and the exit code.

use std::process::ExitCode;

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
