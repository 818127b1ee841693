//! The desired configuration on disk: the daemon's source of truth at start.
//!
//! The state file is JSON (`{"format": 1, "config": {...}}`). [`StateFile::save`] writes
//! it atomically: the new content goes to a temporary file in the same directory
//! (`.NAME.tmp`), which is fsynced, renamed over the state file, and the directory is
//! fsynced so the rename itself survives a power cut. A crash at any point leaves either
//! the old or the new file whole; a leftover temporary file is never read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Config;

/// Version of the state file layout written by this build.
pub const STATE_FORMAT: u32 = 1;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file system operation failed.
    #[error("state file {path}: {op}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was being done (`open`, `write`, `fsync`, `rename`, ...).
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a valid state file.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: serde_json::Error,
    },
    /// The file was written by an incompatible version.
    #[error("state file {path} has format {found}, this butterflyd reads format {STATE_FORMAT}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The format it declares.
        found: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    config: Config,
}

/// The state file at a path.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file at `path` (nothing is read or created yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file `save` writes before renaming it into place.
    pub fn temp_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(".{name}.tmp"))
    }

    /// Reads the configuration; `Ok(None)` when there is no state file yet (first start).
    pub fn load(&self) -> Result<Option<Config>, PersistError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PersistError::Io {
                    path: self.path.clone(),
                    op: "read",
                    source,
                });
            }
        };
        // Check the format first so a newer layout is reported as such, not as corrupt.
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let corrupt = |source| PersistError::Corrupt {
            path: self.path.clone(),
            source,
        };
        let header: Header = serde_json::from_str(&text).map_err(corrupt)?;
        if header.format != STATE_FORMAT {
            return Err(PersistError::Format {
                path: self.path.clone(),
                found: header.format,
            });
        }
        let disk: OnDisk = serde_json::from_str(&text).map_err(corrupt)?;
        Ok(Some(disk.config))
    }

    /// Replaces the state file with `config`, atomically (see the module documentation).
    /// Creates the parent directory (mode 0750) if needed; the file has mode 0640.
    pub fn save(&self, config: &Config) -> Result<(), PersistError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let io_err = |path: &Path, op| {
            let path = path.to_path_buf();
            move |source| PersistError::Io { path, op, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&dir)
            .map_err(io_err(&dir, "create directory"))?;
        let mut text = serde_json::to_vec_pretty(&OnDisk {
            format: STATE_FORMAT,
            config: config.clone(),
        })
        .expect("a Config always serializes");
        text.push(b'\n');
        let tmp = self.temp_path();
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        file.write_all(&text).map_err(io_err(&tmp, "write"))?;
        file.sync_all().map_err(io_err(&tmp, "fsync"))?;
        drop(file);
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path, "rename"))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir, "fsync directory"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Context, NicSpec, Request};
    use crate::testutil::TempDir;

    fn sample() -> Config {
        let ctx = Context {
            vtep_ip: "192.0.2.1".parse().unwrap(),
            vhost_socket_dir: "/run/butterfly/vhost".into(),
            trace_dir: "/tmp".into(),
        };
        let reqs = vec![
            Request::SgAdd { id: "web".into() },
            Request::SgMemberAdd {
                sg: "web".into(),
                ip: "10.0.0.2".into(),
            },
            Request::NicAdd(NicSpec {
                id: "vm1".into(),
                mac: "52:54:00:00:00:01".into(),
                vni: 42,
                ips: vec!["10.0.0.1".into(), "fd00::1".into()],
                security_groups: vec!["web".into()],
                ..NicSpec::default()
            }),
            Request::FloodAdd {
                vni: 42,
                vtep: "192.0.2.2".into(),
            },
        ];
        Config::default()
            .apply_all(&reqs, false, &ctx)
            .unwrap()
            .config
    }

    #[test]
    fn missing_file_is_a_first_start() {
        let d = TempDir::new("persist");
        assert!(
            StateFile::new(d.path().join("state.json"))
                .load()
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let d = TempDir::new("persist");
        let f = StateFile::new(d.path().join("sub/dir/state.json"));
        f.save(&sample()).unwrap();
        assert_eq!(f.load().unwrap(), Some(sample()));
        assert!(!f.temp_path().exists());
        let names: Vec<_> = fs::read_dir(d.path().join("sub/dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        // A second save replaces the content.
        f.save(&Config::default()).unwrap();
        assert_eq!(f.load().unwrap(), Some(Config::default()));
        let mode = fs::metadata(f.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o640
        );
    }

    #[test]
    fn crash_mid_write_leaves_the_old_state_and_the_leftover_is_ignored() {
        let d = TempDir::new("persist");
        let f = StateFile::new(d.path().join("state.json"));
        f.save(&sample()).unwrap();
        // A crash after part of the next write: a truncated temp file stays behind.
        let full = fs::read(f.path()).unwrap();
        fs::write(f.temp_path(), &full[..full.len() / 2]).unwrap();
        assert_eq!(
            f.load().unwrap(),
            Some(sample()),
            "the leftover temp file must not be read"
        );
        // The next save overwrites the leftover and completes.
        f.save(&Config::default()).unwrap();
        assert_eq!(f.load().unwrap(), Some(Config::default()));
        assert!(!f.temp_path().exists());
    }

    #[test]
    fn crash_before_the_first_rename_is_still_a_first_start() {
        let d = TempDir::new("persist");
        let f = StateFile::new(d.path().join("state.json"));
        fs::write(f.temp_path(), b"{\"format\": 1, \"con").unwrap();
        assert!(f.load().unwrap().is_none());
    }

    #[test]
    fn corrupt_and_foreign_files_are_reported() {
        let d = TempDir::new("persist");
        let f = StateFile::new(d.path().join("state.json"));
        fs::write(f.path(), b"{\"format\": 1, \"config\": {\"nics\": 3").unwrap();
        let e = f.load().unwrap_err();
        assert!(matches!(e, PersistError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("state.json is corrupt"), "{e}");
        fs::write(f.path(), b"{\"format\": 99, \"config\": {}}").unwrap();
        let e = f.load().unwrap_err();
        assert!(e.to_string().contains("has format 99"), "{e}");
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_the_path() {
        let d = TempDir::new("persist");
        // A regular file where the directory should be.
        fs::write(d.path().join("blocker"), b"").unwrap();
        let f = StateFile::new(d.path().join("blocker/state.json"));
        let e = f.save(&sample()).unwrap_err();
        assert!(e.to_string().contains("blocker"), "{e}");
    }
}
