//! Butterfly's control plane: the desired configuration of a host ([`model`]), its state
//! file ([`persist`]), the gRPC API ([`api`], messages in [`proto`]) and the boundary to
//! the packet graph ([`dataplane`]). The binaries are `butterflyd` (the daemon) and
//! `butterfly` (the CLI).

pub mod api;
pub mod client;
pub mod convert;
pub mod dataplane;
pub mod model;
pub mod persist;
pub mod server;
pub mod settings;
pub mod systemd;

/// Messages, client and server generated from `proto/butterfly.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("butterfly.v1");
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "butterfly-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
