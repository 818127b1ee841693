//! `cargo xtask install`: butterflyd, the butterfly CLI, the systemd unit, shell
//! completions and the directories the unit expects, into a prefix (default
//! `/usr/local`) or staged under a `--destdir` as packagers do.
//!
//! Layout (`P` = prefix, every path under `DESTDIR` when given):
//!
//! | what | where | mode |
//! |---|---|---|
//! | daemon, CLI | `P/bin/butterflyd`, `P/bin/butterfly` | 0755 |
//! | systemd unit (`ExecStart` pointing at `P/bin/butterflyd`) | `/etc/systemd/system/butterflyd.service` | 0644 |
//! | example configuration | `/etc/butterfly/butterflyd.example.toml` | 0644 |
//! | completions | `P/share/bash-completion/completions/butterfly`, `P/share/zsh/site-functions/_butterfly`, `P/share/fish/vendor_completions.d/butterfly.fish` | 0644 |
//! | state (config, traces) and runtime (sockets) directories | `/var/lib/butterfly`, `/run/butterfly` | 0750 |
//!
//! Idempotent: a file whose content and mode are already right is left alone
//! (`unchanged`), others are written to a temporary file and renamed into place (a
//! running daemon's binary is replaced, not overwritten). Every action is printed.
//! `/etc/butterfly/butterflyd.toml`, the configuration the unit reads, is never written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// The options of `cargo xtask install`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Installation prefix (`/usr/local`).
    pub prefix: PathBuf,
    /// Staging directory every path is put under, or `None` for the real root.
    pub destdir: Option<PathBuf>,
    /// Print the actions without doing them.
    pub dry_run: bool,
    /// Do not build; install what `target/<profile>/` holds.
    pub no_build: bool,
    /// Cargo profile of the binaries (`release`, or `dev` for `target/debug`).
    pub profile: String,
}

/// What a file's content comes from.
enum Content {
    /// Known bytes.
    Bytes(Vec<u8>),
    /// Not available yet (a dry run before the build): the reason.
    Later(String),
}

/// One step of the installation.
enum Action {
    /// A directory with a mode.
    Dir { path: PathBuf, mode: u32 },
    /// A file with its content and mode.
    File {
        path: PathBuf,
        content: Content,
        mode: u32,
    },
}

/// `target/<dir>` for a cargo profile name.
fn profile_dir(profile: &str) -> &str {
    match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        p => p,
    }
}

/// `path` (absolute) under `destdir` (or as is).
fn staged(destdir: Option<&Path>, path: &Path) -> PathBuf {
    match destdir {
        Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

/// True when systemd is the running init (sd_booted(3): `/run/systemd/system` exists).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Runs `cargo xtask install`.
///
/// # Errors
/// When the build fails, a binary is missing with `--no-build`, installing into the real
/// root without root, or a file cannot be written.
pub fn run(opts: &Options) -> Result<()> {
    if !opts.prefix.is_absolute() {
        bail!(
            "--prefix {} must be an absolute path",
            opts.prefix.display()
        );
    }
    let destdir = match &opts.destdir {
        Some(d) if d.is_relative() => Some(std::env::current_dir()?.join(d)),
        d => d.clone(),
    };
    if destdir.is_none() && !opts.dry_run && !util::is_root() {
        bail!("installing into / needs root (or stage it with --destdir DIR, or --dry-run)");
    }

    let mut build = Command::new(util::cargo_bin());
    build
        .args([
            "build",
            "-p",
            "butterfly",
            "--bins",
            "--profile",
            &opts.profile,
        ])
        .current_dir(util::workspace_root());
    if opts.no_build {
        println!("install: --no-build: using the binaries already built");
    } else if opts.dry_run {
        println!("would run: $ {}", util::show(&build));
    } else {
        util::run(&mut build)?;
    }

    let bins = util::metadata()?
        .target_dir
        .join(profile_dir(&opts.profile));
    let actions = plan(opts, &bins)?;
    let mut changed = 0;
    for a in &actions {
        if apply(a, destdir.as_deref(), opts.dry_run)? {
            changed += 1;
        }
    }

    let verb = if opts.dry_run {
        "would change"
    } else {
        "changed"
    };
    println!("install: {changed} of {} items {verb}", actions.len());
    match &destdir {
        Some(d) => println!(
            "install: staged under {}: not reloading systemd",
            d.display()
        ),
        None if !systemd_running() => println!(
            "install: systemd is not running here (no /run/systemd/system): skipping \
             systemctl daemon-reload"
        ),
        None if opts.dry_run => println!("would run: $ systemctl daemon-reload"),
        None => util::run(Command::new("systemctl").arg("daemon-reload"))?,
    }
    if destdir.is_none() {
        println!(
            "install: next: write /etc/butterfly/butterflyd.toml (at least `nic` and `ip`, see \
             /etc/butterfly/butterflyd.example.toml), then `systemctl enable --now butterflyd`"
        );
    }
    Ok(())
}

/// The actions, in order: directories first, then files.
fn plan(opts: &Options, bins: &Path) -> Result<Vec<Action>> {
    let p = &opts.prefix;
    let root = util::workspace_root();
    let read_bin = |name: &str| -> Result<Content> {
        let path = bins.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Content::Bytes(b)),
            Err(_) if opts.dry_run => {
                Ok(Content::Later(format!("{} not built yet", path.display())))
            }
            Err(e) => Err(e).with_context(|| {
                format!(
                    "cannot read {} (build it: cargo build -p butterfly --bins --profile {}, \
                     or run without --no-build)",
                    path.display(),
                    opts.profile
                )
            }),
        }
    };

    // The unit starts the daemon from where we install it.
    let unit = std::fs::read_to_string(root.join("control/systemd/butterflyd.service"))
        .context("reading control/systemd/butterflyd.service")?;
    let daemon = p.join("bin/butterflyd");
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/butterflyd",
        &format!("ExecStart={}", daemon.display()),
    );
    if !unit.contains(&format!("ExecStart={} ", daemon.display())) {
        bail!(
            "control/systemd/butterflyd.service: no ExecStart=/usr/local/bin/butterflyd line to adapt"
        );
    }
    let example_config = std::fs::read(root.join("control/butterflyd.example.toml"))
        .context("reading control/butterflyd.example.toml")?;

    // Completions come from the CLI itself (`butterfly completions SHELL`).
    let cli = bins.join("butterfly");
    let completion = |shell: &str| -> Result<Content> {
        if !cli.exists() && opts.dry_run {
            return Ok(Content::Later(format!("{} not built yet", cli.display())));
        }
        let out = Command::new(&cli)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("cannot run {} completions {shell}", cli.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "{} completions {shell} failed: {}",
                cli.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Content::Bytes(out.stdout))
    };

    let dir = |path: PathBuf, mode| Action::Dir { path, mode };
    let file = |path: PathBuf, content, mode| Action::File {
        path,
        content,
        mode,
    };
    Ok(vec![
        dir(p.join("bin"), 0o755),
        dir(p.join("share/bash-completion/completions"), 0o755),
        dir(p.join("share/zsh/site-functions"), 0o755),
        dir(p.join("share/fish/vendor_completions.d"), 0o755),
        dir("/etc/systemd/system".into(), 0o755),
        dir("/etc/butterfly".into(), 0o755),
        dir("/var/lib/butterfly".into(), 0o750),
        dir("/run/butterfly".into(), 0o750),
        file(p.join("bin/butterflyd"), read_bin("butterflyd")?, 0o755),
        file(p.join("bin/butterfly"), read_bin("butterfly")?, 0o755),
        file(
            "/etc/systemd/system/butterflyd.service".into(),
            Content::Bytes(unit.into_bytes()),
            0o644,
        ),
        file(
            "/etc/butterfly/butterflyd.example.toml".into(),
            Content::Bytes(example_config),
            0o644,
        ),
        file(
            p.join("share/bash-completion/completions/butterfly"),
            completion("bash")?,
            0o644,
        ),
        file(
            p.join("share/zsh/site-functions/_butterfly"),
            completion("zsh")?,
            0o644,
        ),
        file(
            p.join("share/fish/vendor_completions.d/butterfly.fish"),
            completion("fish")?,
            0o644,
        ),
    ])
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Does one action (or says what it would do); true when something changed.
fn apply(a: &Action, destdir: Option<&Path>, dry_run: bool) -> Result<bool> {
    let would = if dry_run { "would " } else { "" };
    match a {
        Action::Dir { path, mode } => {
            let at = staged(destdir, path);
            match mode_of(&at) {
                Some(m) if m == *mode && at.is_dir() => {
                    println!("unchanged  {} (directory, {mode:04o})", at.display());
                    Ok(false)
                }
                Some(m) if at.is_dir() => {
                    println!("{would}chmod  {} ({m:04o} → {mode:04o})", at.display());
                    if !dry_run {
                        set_mode(&at, *mode)?;
                    }
                    Ok(true)
                }
                Some(_) => bail!("{} exists and is not a directory", at.display()),
                None => {
                    println!("{would}mkdir  {} ({mode:04o})", at.display());
                    if !dry_run {
                        std::fs::create_dir_all(&at)
                            .with_context(|| format!("cannot create {}", at.display()))?;
                        set_mode(&at, *mode)?;
                    }
                    Ok(true)
                }
            }
        }
        Action::File {
            path,
            content,
            mode,
        } => {
            let at = staged(destdir, path);
            let bytes = match content {
                Content::Bytes(b) => b,
                Content::Later(why) => {
                    println!("{would}install  {} ({mode:04o}; {why})", at.display());
                    return Ok(true);
                }
            };
            let same_content = std::fs::read(&at).is_ok_and(|old| old == *bytes);
            if same_content && mode_of(&at) == Some(*mode) {
                println!("unchanged  {} ({mode:04o})", at.display());
                return Ok(false);
            }
            println!(
                "{would}install  {} ({mode:04o}, {} bytes)",
                at.display(),
                bytes.len()
            );
            if !dry_run {
                write_atomic(&at, bytes, *mode)?;
            }
            Ok(true)
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Writes `bytes` to a temporary file beside `path`, sets `mode`, renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().context("a file path has a name")?;
    let tmp = dir.join(format!(
        ".{}.xtask-install-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    set_mode(&tmp, mode)?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot rename {} to {}", tmp.display(), path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_puts_absolute_paths_under_destdir() {
        assert_eq!(
            staged(Some(Path::new("/tmp/stage")), Path::new("/usr/local/bin/x")),
            PathBuf::from("/tmp/stage/usr/local/bin/x")
        );
        assert_eq!(
            staged(None, Path::new("/etc/butterfly")),
            PathBuf::from("/etc/butterfly")
        );
    }

    #[test]
    fn profiles_map_to_target_dirs() {
        assert_eq!(profile_dir("release"), "release");
        assert_eq!(profile_dir("dev"), "debug");
        assert_eq!(profile_dir("custom"), "custom");
    }
}
