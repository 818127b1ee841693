//! `cargo xtask install` staged into a temporary `--destdir`, as a packager runs it: the
//! binaries (the ones this test suite was built with: `--profile dev` or `release`,
//! `--no-build` after building them here), the systemd unit with `ExecStart` at the
//! prefix, the example configuration, bash/zsh/fish completions and the state and runtime
//! directories, each with its mode; a second run changes nothing; a damaged install is
//! repaired and only the damaged items are reported; `--dry-run` writes nothing.
//!
//! Needs no root (everything stays under the temporary directory).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use butterfly_tests::TempDir;

/// `target/<profile>` of this test binary and the cargo profile name that builds it.
fn profile() -> (PathBuf, &'static str) {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let name = if dir.file_name().is_some_and(|n| n == "release") {
        "release"
    } else {
        "dev"
    };
    (dir, name)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").into()));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c
}

/// Builds butterflyd and butterfly with this suite's profile.
fn build_binaries() -> PathBuf {
    let (dir, name) = profile();
    let st = cargo()
        .args([
            "build",
            "-p",
            "butterfly",
            "--bins",
            "--quiet",
            "--profile",
            name,
        ])
        // The features every test of this run builds butterfly with, so that no build
        // swaps target/<profile>/butterflyd under another test.
        .args(butterfly_tests::daemon::BUTTERFLY_FEATURES)
        .status()
        .expect("cannot run cargo");
    assert!(st.success(), "cargo build -p butterfly --bins failed");
    dir
}

/// Runs `cargo xtask install --no-build --profile P ARGS...`; returns stdout, panics
/// unless it exits 0.
fn install(args: &[&str]) -> String {
    let (_, name) = profile();
    let out = cargo()
        .args(["xtask", "install", "--no-build", "--profile", name])
        .args(args)
        .output()
        .expect("cannot run cargo xtask install");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo xtask install {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{} not installed: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every installed path under `stage` with its expected mode.
fn expected(stage: &Path, prefix: &str) -> Vec<(PathBuf, u32)> {
    let p = stage.join(prefix.trim_start_matches('/'));
    vec![
        (p.join("bin/butterflyd"), 0o755),
        (p.join("bin/butterfly"), 0o755),
        (stage.join("etc/systemd/system/butterflyd.service"), 0o644),
        (stage.join("etc/butterfly/butterflyd.example.toml"), 0o644),
        (p.join("share/bash-completion/completions/butterfly"), 0o644),
        (p.join("share/zsh/site-functions/_butterfly"), 0o644),
        (
            p.join("share/fish/vendor_completions.d/butterfly.fish"),
            0o644,
        ),
        (stage.join("var/lib/butterfly"), 0o750),
        (stage.join("run/butterfly"), 0o750),
    ]
}

#[test]
fn install_stages_everything_with_modes_and_is_idempotent() {
    let bins = build_binaries();
    let tmp = TempDir::new("xtask-install");
    let stage = tmp.join("stage");
    let stage_s = stage.to_str().unwrap();

    // A dry run writes nothing.
    let dry = install(&["--destdir", stage_s, "--dry-run"]);
    assert!(dry.contains("would install"), "{dry}");
    assert!(!stage.exists(), "--dry-run created {}", stage.display());

    let first = install(&["--destdir", stage_s]);
    assert!(first.contains("15 of 15 items changed"), "{first}");
    assert!(first.contains("not reloading systemd"), "{first}");
    for (path, m) in expected(&stage, "/usr/local") {
        assert_eq!(mode(&path), m, "mode of {}", path.display());
    }
    for b in ["butterflyd", "butterfly"] {
        assert!(
            std::fs::read(stage.join("usr/local/bin").join(b)).unwrap()
                == std::fs::read(bins.join(b)).unwrap(),
            "installed {b} differs from the built one"
        );
    }
    let unit =
        std::fs::read_to_string(stage.join("etc/systemd/system/butterflyd.service")).unwrap();
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/butterflyd --config /etc/butterfly/butterflyd.toml"
        ),
        "{unit}"
    );
    assert!(unit.contains("Type=notify"), "{unit}");
    let bash = std::fs::read_to_string(
        stage.join("usr/local/share/bash-completion/completions/butterfly"),
    )
    .unwrap();
    assert!(
        bash.contains("_butterfly()") && bash.contains("complete"),
        "{bash}"
    );
    let zsh = std::fs::read_to_string(stage.join("usr/local/share/zsh/site-functions/_butterfly"))
        .unwrap();
    assert!(zsh.starts_with("#compdef butterfly"), "{zsh}");
    let fish = std::fs::read_to_string(
        stage.join("usr/local/share/fish/vendor_completions.d/butterfly.fish"),
    )
    .unwrap();
    assert!(fish.contains("complete -c butterfly"), "{fish}");
    // The configuration the unit reads is the administrator's: never written.
    assert!(!stage.join("etc/butterfly/butterflyd.toml").exists());

    // Second run: nothing to do, nothing touched.
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let daemon = stage.join("usr/local/bin/butterflyd");
    let before = mtime(&daemon);
    let second = install(&["--destdir", stage_s]);
    assert!(second.contains("0 of 15 items changed"), "{second}");
    assert!(
        second
            .lines()
            .all(|l| !l.starts_with("install ") && !l.starts_with("mkdir ")),
        "{second}"
    );
    assert_eq!(mtime(&daemon), before, "the second run rewrote butterflyd");

    // Damage two items: exactly those are repaired.
    std::fs::set_permissions(
        stage.join("usr/local/bin/butterfly"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        stage.join("etc/systemd/system/butterflyd.service"),
        "edited\n",
    )
    .unwrap();
    let third = install(&["--destdir", stage_s]);
    assert!(third.contains("2 of 15 items changed"), "{third}");
    for (path, m) in expected(&stage, "/usr/local") {
        assert_eq!(mode(&path), m, "mode of {}", path.display());
    }
    let unit2 =
        std::fs::read_to_string(stage.join("etc/systemd/system/butterflyd.service")).unwrap();
    assert_eq!(unit2, unit);
}

#[test]
fn install_with_prefix_points_the_unit_at_the_prefix() {
    let _ = build_binaries();
    let tmp = TempDir::new("xtask-install-usr");
    let stage = tmp.join("stage");
    let out = install(&["--destdir", stage.to_str().unwrap(), "--prefix", "/usr"]);
    assert!(out.contains("15 of 15 items changed"), "{out}");
    for (path, m) in expected(&stage, "/usr") {
        assert_eq!(mode(&path), m, "mode of {}", path.display());
    }
    assert!(
        !stage.join("usr/local").exists(),
        "files under /usr/local with --prefix /usr"
    );
    let unit =
        std::fs::read_to_string(stage.join("etc/systemd/system/butterflyd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/butterflyd "), "{unit}");
}
