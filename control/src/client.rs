//! Connecting to butterflyd's API: over its Unix socket, or over TCP with TLS.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::proto::butterfly_client::ButterflyClient;

/// Where the daemon's API is.
#[derive(Debug, Clone)]
pub enum Target {
    /// The Unix socket at this path.
    Unix(PathBuf),
    /// `https://HOST:PORT`, verified against a CA.
    Tls {
        /// The URL.
        url: String,
        /// CA certificate (PEM) that signed the server's certificate.
        ca: PathBuf,
        /// Name to verify in the server's certificate (default: the URL's host).
        domain: Option<String>,
        /// Client certificate and key (PEM) when the server requires one.
        identity: Option<(PathBuf, PathBuf)>,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tls { url, .. } => f.write_str(url),
        }
    }
}

/// The daemon could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to butterflyd at {target}: {reason} (is butterflyd running? {hint})")]
pub struct ConnectError {
    /// Where we tried.
    pub target: String,
    /// The innermost cause.
    pub reason: String,
    /// What to check.
    pub hint: String,
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Connects (eagerly, so an absent daemon is reported here) to `target`.
pub async fn connect(target: &Target) -> Result<ButterflyClient<Channel>, ConnectError> {
    let fail = |reason: String, hint: String| ConnectError {
        target: target.to_string(),
        reason,
        hint,
    };
    let channel = match target {
        Target::Unix(path) => {
            let path = path.clone();
            let hint = format!(
                "socket {}; another path with --socket or BUTTERFLY_SOCKET",
                path.display()
            );
            // The URI is required by the HTTP/2 layer but not used: the connector below
            // ignores it and opens the Unix socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| fail(innermost(&e), hint))?
        }
        Target::Tls {
            url,
            ca,
            domain,
            identity,
        } => connect_tls(url, ca, domain.as_deref(), identity.as_ref())
            .await
            .map_err(|reason| fail(reason, format!("TLS endpoint {url}")))?,
    };
    Ok(ButterflyClient::new(channel))
}

#[cfg(feature = "tls")]
async fn connect_tls(
    url: &str,
    ca: &std::path::Path,
    domain: Option<&str>,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Result<Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    if let Some(d) = domain {
        tls = tls.domain_name(d);
    }
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad URL {url}: {e}"))?
        .tls_config(tls)
        .map_err(|e| innermost(&e))?
        .connect()
        .await
        .map_err(|e| innermost(&e))
}

#[cfg(not(feature = "tls"))]
async fn connect_tls(
    _: &str,
    _: &std::path::Path,
    _: Option<&str>,
    _: Option<&(PathBuf, PathBuf)>,
) -> Result<Channel, String> {
    Err("this butterfly was built without the `tls` feature".into())
}
