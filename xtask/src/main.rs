//! `cargo xtask`: the one entry point for developers and CI.
//!
//! Build steps that cargo alone cannot express: installing the system packages the project
//! needs (`deps`), running the whole test suite including the privileged end-to-end tests
//! (`test`), the benchmarks (`bench`), the XDP programs (`build-ebpf`) and the demo (`demo`).
//! Every external command is printed (`$ ...`) before it runs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod deps;
mod fuzz;
mod guest;
mod install;
mod test;
mod util;

/// Developer tasks for Butterfly (run as `cargo xtask <COMMAND>`).
///
/// The commands that touch the system (`deps`, `test`, `demo`) expect root on Debian 12:
/// they install apt packages and create network namespaces, TAP devices and XDP programs.
#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about,
    long_about
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install every apt package the project needs (idempotent; quiet when all present).
    ///
    /// Checks each package with dpkg-query and runs `apt-get update` and
    /// `apt-get install -y --no-install-recommends` only for the missing ones
    /// (DEBIAN_FRONTEND=noninteractive, no prompt). QEMU comes from bookworm-backports:
    /// the backports apt source is added when none exists. Needs root when something is
    /// missing.
    Deps,

    /// Run the whole test suite: deps, cargo-nextest on the workspace, doc tests, fuzz build.
    ///
    /// Runs `cargo nextest run --workspace --no-fail-fast` (profile in .config/nextest.toml)
    /// and `cargo test --doc --workspace`. The end-to-end tests need root (network
    /// namespaces, TAP, XDP); they fail, not skip, without it. Exits non-zero when any test
    /// fails.
    Test {
        /// Skip `deps` (when you know the packages are there).
        #[arg(long)]
        no_deps: bool,
        /// Extra arguments for cargo-nextest, after `--` (e.g. `-- -p packetgraph tap`).
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },

    /// Run the benchmarks named NAME or NAME_* of the whole workspace (no NAME: list them).
    ///
    /// A benchmark is a bench target with `harness = false` that prints its figures as
    /// stdout lines `RESULT <name>: <value> <unit> (ratio <r> vs <baseline>)`. Each matching
    /// target runs with `cargo bench -p <package> --bench <target>`; its figures are printed
    /// as they come, without the `RESULT ` prefix, and again all together at the end.
    Bench {
        /// Bench target name or prefix: `engine` runs `engine` and `engine_*`.
        name: Option<String>,
        /// Skip `deps`.
        #[arg(long)]
        no_deps: bool,
    },

    /// Fuzz the packet parsers, the descriptor-chain handling and the XDP program.
    ///
    /// Runs `cargo +nightly fuzz run TARGET` for each cargo-fuzz target of `dataplane/fuzz`,
    /// `vhost/fuzz` and `ebpf/fuzz` (the `ebpf` one needs root), starting from the committed
    /// seeds. Installs the nightly toolchain and cargo-fuzz when missing. Exits non-zero
    /// and names the reproducer when a target crashes.
    Fuzz {
        /// One target (e.g. `vtep_decap`, `chains`, `steer`); all when omitted.
        target: Option<String>,
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },

    /// Build the XDP programs (the butterfly-ebpf crate; its build.rs runs clang -target bpf).
    BuildEbpf,

    /// Run the demo: deps, build, then VMs on two hosts talking through butterflyd.
    ///
    /// Two hosts as network namespaces joined by a veth underlay, a `butterflyd` in each
    /// (AF_XDP on the underlay), three QEMU guests on vhost-user (two on VNI 42 across the
    /// hosts, one on VNI 7), configured with the `butterfly` CLI. Checks ping across hosts,
    /// TCP/5000 allowed, TCP/6000 blocked, VNI isolation and a spoofed source dropped;
    /// prints `status`, `nic stats` and the pcap trace path; tears everything down and
    /// exits non-zero when a step fails. Needs root.
    Demo {
        /// Skip `deps`.
        #[arg(long)]
        no_deps: bool,
    },
    /// Build the tiny QEMU guest used by the vhost tests and the demo (cached).
    ///
    /// Kernel from Debian's linux-image package (uncompressed vmlinux for the fast PVH
    /// boot), busybox-static initramfs with the virtio-net modules and an `/init` that
    /// takes its IP, MAC, peers and test from the kernel command line. Cached under
    /// `target/guest/`; rebuilt only when missing or with `--force`.
    Guest {
        /// Rebuild even when the cached image exists.
        #[arg(long)]
        force: bool,
        /// Skip `deps`.
        #[arg(long)]
        no_deps: bool,
    },

    /// Install butterflyd, butterfly, the systemd unit and shell completions.
    ///
    /// Builds the release binaries (unless --no-build), then installs into PREFIX/bin, the
    /// unit into /etc/systemd/system (ExecStart pointing at PREFIX/bin/butterflyd), the
    /// example configuration into /etc/butterfly, bash/zsh/fish completions under
    /// PREFIX/share, and creates /var/lib/butterfly and /run/butterfly (0750). Idempotent:
    /// files already right are left alone; every action is printed. Runs `systemctl
    /// daemon-reload` when installing into / on a host where systemd runs.
    Install {
        /// Installation prefix of the binaries and completions.
        #[arg(long, default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Stage every path under this directory (for packages) instead of /.
        #[arg(long)]
        destdir: Option<std::path::PathBuf>,
        /// Print what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not build: install the binaries already in target/<profile>/.
        #[arg(long)]
        no_build: bool,
        /// Cargo profile of the binaries (`dev` installs target/debug).
        #[arg(long, default_value = "release")]
        profile: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Deps => deps::run(),
        Command::Test {
            no_deps,
            nextest_args,
        } => test::run(no_deps, &nextest_args),
        Command::Bench { name, no_deps } => bench::run(name.as_deref(), no_deps),
        Command::Guest { force, no_deps } => guest_cmd(force, no_deps),
        Command::Fuzz { target, seconds } => fuzz::run(target.as_deref(), seconds),
        Command::BuildEbpf => util::cargo(&["build", "-p", "butterfly-ebpf"]),
        Command::Demo { no_deps } => demo::run(no_deps),
        Command::Install {
            prefix,
            destdir,
            dry_run,
            no_build,
            profile,
        } => install::run(&install::Options {
            prefix,
            destdir,
            dry_run,
            no_build,
            profile,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask guest`: deps, then build (or reuse) the guest image and say where it is.
fn guest_cmd(force: bool, no_deps: bool) -> anyhow::Result<()> {
    if !no_deps {
        deps::run()?;
    }
    let img = guest::build(&util::workspace_root().join("target"), force)?;
    println!("guest: kernel {}", img.kernel.display());
    println!("guest: initrd {}", img.initrd.display());
    Ok(())
}
