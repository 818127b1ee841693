//! Where the API listens: a Unix socket (always; mode 0660 so the owner and the group —
//! the operators allowed to drive butterfly — can connect), and a TCP endpoint only when
//! asked for, then always with TLS (rustls), optionally requiring client certificates.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::api::Api;

/// Mode of the API socket: read/write for owner and group, nothing for others.
pub const SOCKET_MODE: u32 = 0o660;

/// Default path of the API socket.
pub const DEFAULT_SOCKET: &str = "/run/butterfly/api.sock";

/// Why the API could not listen or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another process answers on the socket path.
    #[error("API socket {0}: another butterflyd is already listening there")]
    InUse(PathBuf),
    /// Something that is not a socket is at the socket path.
    #[error("API socket {0}: the path exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// A file system or socket operation failed.
    #[error("API socket {path}: {op}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The TLS material could not be read or is not usable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("gRPC server on {endpoint}: {source}")]
    Transport {
        /// `unix:PATH` or `tcp:ADDR`.
        endpoint: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// The TCP endpoint with its TLS material (PEM files).
#[derive(Debug, Clone)]
pub struct TlsEndpoint {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Binds the API's Unix socket at `path` with mode [`SOCKET_MODE`], creating the parent
/// directory (mode 0750) if needed. A stale socket left by a crashed daemon is replaced;
/// a live one (something accepts connections) or a non-socket file is an error.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let io_err = |op| {
        let path = path.to_path_buf();
        move |source| ServeError::Io { path, op, source }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io_err("create directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_err("remove stale socket"))?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io_err("chmod"))?;
    Ok(listener)
}

/// Serves `api` on `unix` (and on `tcp` when given) until `shutdown` completes, then
/// waits for open calls to finish and removes the socket file.
pub async fn serve(
    api: Api,
    unix: UnixListener,
    unix_path: PathBuf,
    tcp: Option<BoundTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let unix_server = tonic::transport::Server::builder().serve_with_incoming_shutdown(
        api.clone().into_service(),
        UnixListenerStream::new(unix),
        stopped(stop_rx.clone()),
    );
    let tcp_server = async {
        match tcp {
            None => Ok(()),
            Some(t) => serve_tls(api.clone(), t, stopped(stop_rx.clone())).await,
        }
    };
    let trigger = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    let unix_endpoint = format!("unix:{}", unix_path.display());
    let (unix_res, tcp_res, ()) = tokio::join!(unix_server, tcp_server, trigger);
    let _ = std::fs::remove_file(&unix_path);
    unix_res.map_err(|source| ServeError::Transport {
        endpoint: unix_endpoint,
        source,
    })?;
    tcp_res
}

/// The TCP endpoint, bound, with its TLS configuration loaded: made by [`bind_tls`] before
/// serving, so a busy port or unreadable key stops the daemon at start.
pub struct BoundTls {
    addr: SocketAddr,
    mutual: bool,
    #[cfg(feature = "tls")]
    incoming: tonic::transport::server::TcpIncoming,
    #[cfg(feature = "tls")]
    server: tonic::transport::Server,
}

/// Reads the TLS material of `t` and binds its address.
#[cfg(feature = "tls")]
pub fn bind_tls(t: &TlsEndpoint) -> Result<BoundTls, ServeError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| ServeError::Tls(format!("{}: {e}", p.display())));
    let mut cfg =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
    if let Some(ca) = &t.client_ca {
        cfg = cfg.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    let server = tonic::transport::Server::builder()
        .tls_config(cfg)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let incoming =
        tonic::transport::server::TcpIncoming::bind(t.addr).map_err(|source| ServeError::Io {
            path: PathBuf::from(format!("tcp:{}", t.addr)),
            op: "bind",
            source,
        })?;
    Ok(BoundTls {
        addr: t.addr,
        mutual: t.client_ca.is_some(),
        incoming,
        server,
    })
}

/// Without the `tls` feature there is no TCP endpoint.
#[cfg(not(feature = "tls"))]
pub fn bind_tls(_: &TlsEndpoint) -> Result<BoundTls, ServeError> {
    Err(ServeError::Tls(
        "this butterflyd was built without the `tls` feature: no TCP endpoint".into(),
    ))
}

#[cfg(feature = "tls")]
async fn serve_tls(
    api: Api,
    t: BoundTls,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tracing::info!(addr = %t.addr, mutual = t.mutual, "API on TCP with TLS");
    let endpoint = format!("tcp:{}", t.addr);
    t.server
        .serve_with_incoming_shutdown(api.into_service(), t.incoming, shutdown)
        .await
        .map_err(|source| ServeError::Transport { endpoint, source })
}

#[cfg(not(feature = "tls"))]
async fn serve_tls(_: Api, t: BoundTls, _: impl Future<Output = ()>) -> Result<(), ServeError> {
    let _ = (t.addr, t.mutual);
    Ok(())
}

/// Serves Prometheus metrics (text exposition format 0.0.4) on `GET /metrics` until
/// `shutdown` completes. A minimal HTTP/1.1 responder: one request per connection.
pub async fn serve_metrics(
    api: Api,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let accept_loop = async {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let api = api.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                // Read the request head (bounded; the body, if any, is ignored).
                while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        conn.read(&mut buf[len..]),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => len += n,
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let (status, body) = match head.split_whitespace().take(2).collect::<Vec<_>>()[..] {
                    ["GET", "/metrics"] => ("200 OK", api.metrics_text()),
                    ["GET", _] => ("404 Not Found", "try /metrics\n".to_string()),
                    _ => ("405 Method Not Allowed", "GET only\n".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    };
    tokio::select! {
        () = accept_loop => {}
        () = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[tokio::test]
    async fn socket_mode_stale_and_live_sockets() {
        let d = TempDir::new("server");
        let path = d.path().join("run/api.sock");
        let l = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        // Live: refused.
        assert!(matches!(bind_unix(&path), Err(ServeError::InUse(_))));
        // Stale (listener gone, file left): replaced.
        drop(l);
        bind_unix(&path).unwrap();
        // Not a socket: refused, file kept.
        let file = d.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(matches!(bind_unix(&file), Err(ServeError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
