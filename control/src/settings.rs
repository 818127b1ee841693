//! butterflyd's settings: command-line options, the optional TOML configuration file
//! (same keys as the long options, e.g. `api-socket = "/run/butterfly/api.sock"`), and
//! their defaults. A command-line option wins over the file, the file over the default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::Context;
use crate::server::{DEFAULT_SOCKET, TlsEndpoint};

/// Default state file.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/butterfly/state.json";
/// Default directory of the vhost-user sockets butterflyd creates.
pub const DEFAULT_VHOST_SOCKET_DIR: &str = "/run/butterfly/vhost";
/// Default directory of packet traces.
pub const DEFAULT_TRACE_DIR: &str = "/var/lib/butterfly/trace";
/// Underlay MTU assumed when the underlay's own cannot be read (a DPDK driver without
/// MTU support), in bytes.
pub const DEFAULT_MTU: u32 = 1500;
/// Smallest accepted underlay MTU, in bytes: the IPv6 minimum link MTU (RFC 8200 §5).
pub const MIN_MTU: u32 = 1280;
/// Largest accepted underlay MTU (common jumbo frame limit), in bytes.
pub const MAX_MTU: u32 = 9216;
/// EAL arguments of the DPDK backend when `--dpdk-args` is not given, before the
/// `--vdev` of [`default_dpdk_args`]: no hugepages (512 MiB of ordinary memory), no PCI
/// scan, no shared configuration files (several DPDK processes can run side by side).
/// `--in-memory` is not used: DPDK 22.11 refuses it together with `--no-huge`.
pub const DEFAULT_DPDK_EAL: &[&str] = &["--no-huge", "--no-pci", "-m", "512", "--no-shconf"];

/// The EAL arguments used when `--dpdk-args` is not given: [`DEFAULT_DPDK_EAL`] plus
/// `--vdev net_af_packet0,iface=NIC`, a DPDK port (id 0) on the kernel interface `nic`
/// through an AF_PACKET socket. Works on any Linux interface without hugepages or a
/// vfio-bound NIC; a NIC that DPDK owns needs explicit `--dpdk-args` (e.g. `-a
/// 0000:01:00.0` with hugepages reserved).
pub fn default_dpdk_args(nic: &str) -> Vec<String> {
    DEFAULT_DPDK_EAL
        .iter()
        .map(|s| s.to_string())
        .chain(["--vdev".to_string(), format!("net_af_packet0,iface={nic}")])
        .collect()
}

/// How the XDP program that steers VXLAN to the AF_XDP sockets is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic; zero-copy when the
    /// driver supports it, else copy mode.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only (slow; for drivers without XDP support).
    Generic,
}

/// What drives the host NIC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicBackend {
    /// AF_XDP sockets (the kernel keeps the NIC; only VXLAN is steered to butterflyd).
    #[default]
    Afxdp,
    /// A DPDK poll-mode driver (the NIC belongs to DPDK).
    Dpdk,
}

/// Options as given on the command line or in the configuration file; absent = not set
/// there.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Options {
    /// Underlay interface: the host NIC that carries VXLAN (required). With --nic-backend
    /// dpdk the underlay is the DPDK port instead; this names the interface of the default
    /// `net_af_packet` vdev (see --dpdk-args).
    #[arg(long, value_name = "IFACE")]
    pub nic: Option<String>,
    /// This host's VTEP address on the underlay, IPv4 or IPv6 (required).
    #[arg(long, value_name = "VTEP_IP")]
    pub ip: Option<IpAddr>,
    /// API Unix socket (mode 0660) [default: /run/butterfly/api.sock].
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Also serve the API on this TCP address, with TLS (needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR:PORT")]
    pub api_tcp: Option<SocketAddr>,
    /// TLS certificate chain (PEM) of the TCP endpoint.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the TCP endpoint.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM) on the TCP endpoint.
    #[arg(long, value_name = "PEM")]
    pub tls_client_ca: Option<PathBuf>,
    /// Where the configuration is persisted and restored from at start
    /// [default: /var/lib/butterfly/state.json].
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// Directory of the vhost-user sockets of NICs added without --socket-path
    /// [default: /run/butterfly/vhost].
    #[arg(long, value_name = "DIR")]
    pub vhost_socket_dir: Option<PathBuf>,
    /// Directory of packet traces of NICs added without --trace-path
    /// [default: /var/lib/butterfly/trace].
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,
    /// Pin the dataplane worker thread to this CPU [default: not pinned].
    #[arg(long, value_name = "CPU")]
    pub worker_cpu: Option<usize>,
    /// Busy-poll: the worker never sleeps, even with no packet (as OVS-DPDK's PMD threads
    /// and DPDK do), for the lowest latency and the most packets per second at the cost
    /// of one CPU at 100%. Without it the worker spins briefly, then sleeps between empty
    /// polls (1 µs doubling up to 500 µs), so an idle host costs almost no CPU.
    #[arg(long)]
    #[serde(default)]
    pub busy_poll: bool,
    /// Underlay MTU in bytes, 1280..=9216: encapsulated frames longer than this are
    /// dropped (and counted as the VTEP's `drop_too_big`), never sent or fragmented; VMs
    /// get MTU − 50 (IPv4 underlay) or − 70 (IPv6). Must not exceed the underlay
    /// interface's (or DPDK port's) MTU: butterflyd refuses to start then. [default: the
    /// underlay interface's MTU].
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<u32>,
    /// XDP attach mode [default: auto].
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// Host NIC driver [default: afxdp]. `dpdk` needs a butterflyd built with the `dpdk`
    /// cargo feature; no XDP program is attached then.
    #[arg(long, value_enum)]
    pub nic_backend: Option<NicBackend>,
    /// DPDK EAL arguments, separated by whitespace (no quoting), with --nic-backend dpdk
    /// [default: "--no-huge --no-pci -m 512 --no-shconf --vdev
    /// net_af_packet0,iface=NIC"].
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub dpdk_args: Option<String>,
    /// DPDK port id (0-based, in probe order) used as the underlay with --nic-backend
    /// dpdk [default: 0].
    #[arg(long, value_name = "N")]
    pub dpdk_port: Option<u16>,
    /// Serve Prometheus metrics (text format) on http://ADDR:PORT/metrics [default: off].
    #[arg(long, value_name = "ADDR:PORT")]
    pub prometheus: Option<SocketAddr>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter such as
    /// `butterfly=debug` [default: info; RUST_LOG when set].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// API-only mode, for tests of the API, the CLI and persistence: configuration is
    /// validated and persisted but no dataplane runs (no XDP, no sockets, no packets).
    #[arg(long)]
    #[serde(default)]
    pub no_dataplane: bool,
}

/// Everything butterflyd needs, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Underlay interface.
    pub nic: String,
    /// VTEP address.
    pub ip: IpAddr,
    /// API Unix socket.
    pub api_socket: PathBuf,
    /// TCP endpoint with TLS, when asked for.
    pub api_tcp: Option<TlsEndpoint>,
    /// State file.
    pub state_file: PathBuf,
    /// Default vhost-user socket directory.
    pub vhost_socket_dir: PathBuf,
    /// Default trace directory.
    pub trace_dir: PathBuf,
    /// Worker CPU.
    pub worker_cpu: Option<usize>,
    /// Worker never sleeps.
    pub busy_poll: bool,
    /// Underlay MTU asked for, bytes (`None`: the underlay interface's).
    pub mtu: Option<u32>,
    /// XDP mode.
    pub xdp_mode: XdpMode,
    /// NIC backend.
    pub nic_backend: NicBackend,
    /// EAL arguments of the DPDK backend (without the program name).
    pub dpdk_args: Vec<String>,
    /// DPDK port id of the underlay.
    pub dpdk_port: u16,
    /// Prometheus endpoint.
    pub prometheus: Option<SocketAddr>,
    /// Log filter.
    pub log_level: String,
    /// API-only mode.
    pub no_dataplane: bool,
}

impl PartialEq for TlsEndpoint {
    fn eq(&self, o: &Self) -> bool {
        (self.addr, &self.cert, &self.key, &self.client_ca)
            == (o.addr, &o.cert, &o.key, &o.client_ca)
    }
}

/// A setting is missing or wrong. The message names the option.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The configuration file cannot be read.
    #[error("configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML for these options.
    #[error("configuration file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its position.
        source: toml::de::Error,
    },
    /// An option is missing or has a bad value.
    #[error("--{option}: {reason}")]
    Invalid {
        /// The long option (also the file key).
        option: &'static str,
        /// Why.
        reason: String,
    },
}

impl Options {
    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| SettingsError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// These options, with `file`'s where these are not set.
    pub fn or(self, file: Options) -> Options {
        Options {
            nic: self.nic.or(file.nic),
            ip: self.ip.or(file.ip),
            api_socket: self.api_socket.or(file.api_socket),
            api_tcp: self.api_tcp.or(file.api_tcp),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            tls_client_ca: self.tls_client_ca.or(file.tls_client_ca),
            state_file: self.state_file.or(file.state_file),
            vhost_socket_dir: self.vhost_socket_dir.or(file.vhost_socket_dir),
            trace_dir: self.trace_dir.or(file.trace_dir),
            worker_cpu: self.worker_cpu.or(file.worker_cpu),
            busy_poll: self.busy_poll || file.busy_poll,
            mtu: self.mtu.or(file.mtu),
            xdp_mode: self.xdp_mode.or(file.xdp_mode),
            nic_backend: self.nic_backend.or(file.nic_backend),
            dpdk_args: self.dpdk_args.or(file.dpdk_args),
            dpdk_port: self.dpdk_port.or(file.dpdk_port),
            prometheus: self.prometheus.or(file.prometheus),
            log_level: self.log_level.or(file.log_level),
            no_dataplane: self.no_dataplane || file.no_dataplane,
        }
    }
}

fn invalid(option: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        option,
        reason: reason.into(),
    }
}

impl Settings {
    /// Applies defaults and checks the options.
    pub fn resolve(o: Options) -> Result<Settings, SettingsError> {
        let nic = o.nic.ok_or_else(|| {
            invalid(
                "nic",
                "missing: the underlay interface (or `nic` in --config)",
            )
        })?;
        if nic.is_empty() || nic.len() > 15 || nic.contains(['/', ' ', '\0']) {
            return Err(invalid("nic", format!("'{nic}' is not an interface name")));
        }
        let ip = o.ip.ok_or_else(|| {
            invalid(
                "ip",
                "missing: this host's VTEP address (or `ip` in --config)",
            )
        })?;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() && !o.no_dataplane {
            return Err(invalid("ip", format!("{ip} cannot be a VTEP address")));
        }
        let mtu = o.mtu;
        if let Some(mtu) = mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return Err(invalid(
                "mtu",
                format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}"),
            ));
        }
        let nic_backend = o.nic_backend.unwrap_or_default();
        if nic_backend == NicBackend::Dpdk && !cfg!(feature = "dpdk") && !o.no_dataplane {
            return Err(invalid(
                "nic-backend",
                "dpdk: this butterflyd was built without DPDK support: rebuild with \
                 --features dpdk (cargo build -p butterfly --features dpdk; needs \
                 libdpdk-dev, installed by cargo xtask deps)",
            ));
        }
        let dpdk_args = match &o.dpdk_args {
            Some(a) => {
                let v: Vec<String> = a.split_whitespace().map(String::from).collect();
                if v.is_empty() {
                    return Err(invalid(
                        "dpdk-args",
                        "empty: give EAL arguments or leave the option out for the default",
                    ));
                }
                v
            }
            None => default_dpdk_args(&nic),
        };
        let api_tcp = match (o.api_tcp, o.tls_cert, o.tls_key) {
            (None, None, None) if o.tls_client_ca.is_none() => None,
            (Some(addr), Some(cert), Some(key)) => Some(TlsEndpoint {
                addr,
                cert,
                key,
                client_ca: o.tls_client_ca,
            }),
            (None, ..) => {
                return Err(invalid(
                    "api-tcp",
                    "TLS files are given but no --api-tcp address",
                ));
            }
            (Some(_), None, _) => {
                return Err(invalid("tls-cert", "missing: the API over TCP is TLS only"));
            }
            (Some(_), _, None) => {
                return Err(invalid("tls-key", "missing: the API over TCP is TLS only"));
            }
        };
        Ok(Settings {
            nic,
            ip,
            api_socket: o.api_socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            api_tcp,
            state_file: o.state_file.unwrap_or_else(|| DEFAULT_STATE_FILE.into()),
            vhost_socket_dir: o
                .vhost_socket_dir
                .unwrap_or_else(|| DEFAULT_VHOST_SOCKET_DIR.into()),
            trace_dir: o.trace_dir.unwrap_or_else(|| DEFAULT_TRACE_DIR.into()),
            worker_cpu: o.worker_cpu,
            busy_poll: o.busy_poll,
            mtu,
            xdp_mode: o.xdp_mode.unwrap_or_default(),
            nic_backend,
            dpdk_args,
            dpdk_port: o.dpdk_port.unwrap_or(0),
            prometheus: o.prometheus,
            log_level: o.log_level.unwrap_or_else(|| "info".into()),
            no_dataplane: o.no_dataplane,
        })
    }

    /// The facts request validation needs.
    pub fn context(&self) -> Context {
        Context {
            vtep_ip: self.ip,
            vhost_socket_dir: self.vhost_socket_dir.clone(),
            trace_dir: self.trace_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Options {
        Options {
            nic: Some("eth0".into()),
            ip: Some("192.0.2.1".parse().unwrap()),
            ..Options::default()
        }
    }

    #[test]
    fn nic_and_ip_are_enough() {
        let s = Settings::resolve(minimal()).unwrap();
        assert_eq!(s.api_socket, PathBuf::from("/run/butterfly/api.sock"));
        assert_eq!(s.state_file, PathBuf::from("/var/lib/butterfly/state.json"));
        assert_eq!(
            (s.mtu, s.xdp_mode, s.nic_backend),
            (None, XdpMode::Auto, NicBackend::Afxdp)
        );
        assert_eq!(
            (s.api_tcp.clone(), s.prometheus, s.worker_cpu),
            (None, None, None)
        );
        assert_eq!(s.context().vtep_ip, s.ip);
    }

    #[test]
    fn missing_or_bad_values_name_the_option() {
        let msg = |o: Options| Settings::resolve(o).unwrap_err().to_string();
        assert!(
            msg(Options {
                nic: None,
                ..minimal()
            })
            .starts_with("--nic: missing")
        );
        assert!(
            msg(Options {
                ip: None,
                ..minimal()
            })
            .starts_with("--ip: missing")
        );
        assert!(
            msg(Options {
                nic: Some("a/b".into()),
                ..minimal()
            })
            .starts_with("--nic:")
        );
        assert!(
            msg(Options {
                ip: Some("0.0.0.0".parse().unwrap()),
                ..minimal()
            })
            .starts_with("--ip:")
        );
        assert!(
            msg(Options {
                ip: Some("230.0.0.1".parse().unwrap()),
                ..minimal()
            })
            .starts_with("--ip:")
        );
        assert!(
            msg(Options {
                mtu: Some(9217),
                ..minimal()
            })
            .starts_with("--mtu: 9217 is outside")
        );
        let tcp = Some("127.0.0.1:9610".parse().unwrap());
        assert!(
            msg(Options {
                api_tcp: tcp,
                ..minimal()
            })
            .starts_with("--tls-cert: missing")
        );
        assert!(
            msg(Options {
                api_tcp: tcp,
                tls_cert: Some("/c".into()),
                ..minimal()
            })
            .starts_with("--tls-key: missing")
        );
        assert!(
            msg(Options {
                tls_cert: Some("/c".into()),
                ..minimal()
            })
            .starts_with("--api-tcp:")
        );
    }

    #[test]
    fn command_line_wins_over_file_over_defaults() {
        let file: Options = toml::from_str(
            "nic = \"eth1\"\nip = \"2001:db8::1\"\nmtu = 9000\nxdp-mode = \"generic\"\nworker-cpu = 1\nno-dataplane = true\n",
        )
        .unwrap();
        let cli = Options {
            nic: Some("eth0".into()),
            mtu: Some(1600),
            ..Options::default()
        };
        let s = Settings::resolve(cli.or(file)).unwrap();
        assert_eq!(s.nic, "eth0");
        assert_eq!(s.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (s.mtu, s.xdp_mode, s.worker_cpu, s.no_dataplane),
            (Some(1600), XdpMode::Generic, Some(1), true)
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let o: Options = toml::from_str(include_str!("../butterflyd.example.toml")).unwrap();
        let s = Settings::resolve(o).unwrap();
        assert_eq!(
            (s.nic.as_str(), s.ip.to_string().as_str()),
            ("eth0", "192.0.2.1")
        );
        // Every commented key is a real option too.
        let all: String = include_str!("../butterflyd.example.toml")
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.starts_with("butterfly"))
            .map(|l| l.split('#').next().unwrap().trim().to_string() + "\n")
            .collect();
        let o: Options = toml::from_str(&all).unwrap();
        assert!(o.api_tcp.is_some() && o.prometheus.is_some() && o.worker_cpu.is_some());
    }

    #[test]
    fn dpdk_args_and_port_default_to_af_packet_on_the_nic_and_parse_from_file() {
        let s = Settings::resolve(minimal()).unwrap();
        assert_eq!(
            s.dpdk_args.join(" "),
            "--no-huge --no-pci -m 512 --no-shconf --vdev net_af_packet0,iface=eth0"
        );
        assert_eq!(s.dpdk_port, 0);
        let file: Options = toml::from_str(
            "nic-backend = \"dpdk\"\ndpdk-args = \"--no-huge -m 256  --vdev net_tap0\"\ndpdk-port = 1\nno-dataplane = true\n",
        )
        .unwrap();
        let s = Settings::resolve(minimal().or(file)).unwrap();
        assert_eq!(s.nic_backend, NicBackend::Dpdk);
        assert_eq!(
            s.dpdk_args,
            ["--no-huge", "-m", "256", "--vdev", "net_tap0"]
        );
        assert_eq!(s.dpdk_port, 1);
        let e = Settings::resolve(Options {
            dpdk_args: Some("  ".into()),
            ..minimal()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("--dpdk-args: empty"), "{e}");
    }

    #[test]
    fn dpdk_backend_needs_the_dpdk_feature() {
        let r = Settings::resolve(Options {
            nic_backend: Some(NicBackend::Dpdk),
            ..minimal()
        });
        if cfg!(feature = "dpdk") {
            assert_eq!(r.unwrap().nic_backend, NicBackend::Dpdk);
        } else {
            let e = r.unwrap_err().to_string();
            assert!(
                e.starts_with("--nic-backend: dpdk: this butterflyd was built without DPDK")
                    && e.contains("rebuild with --features dpdk"),
                "{e}"
            );
        }
    }

    #[test]
    fn file_errors_are_precise() {
        let e = toml::from_str::<Options>("nic = \"eth0\"\ncolour = 3\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
        let e = toml::from_str::<Options>("xdp-mode = \"fast\"\n").unwrap_err();
        assert!(e.to_string().contains("fast"), "{e}");
        let e = Options::from_file(Path::new("/nonexistent/butterfly.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("configuration file /nonexistent/butterfly.toml"),
            "{e}"
        );
    }
}
