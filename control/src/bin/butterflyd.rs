//! `butterflyd`: the Butterfly daemon. One per host: it serves the API (gRPC on a Unix
//! socket, optionally TCP with TLS), persists the configuration and restores it at start,
//! and drives the dataplane.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use butterfly::api::Api;
use butterfly::dataplane::graph::{GraphDataplane, GraphSettings};
use butterfly::dataplane::{Dataplane, Detached};
use butterfly::persist::StateFile;
use butterfly::server;
use butterfly::settings::{NicBackend, Options, Settings};
use butterfly::systemd;

const AFTER_HELP: &str = "\
Only --nic and --ip are required. A configuration file (--config) takes the same keys as
the long options, e.g.:

    nic = \"eth0\"
    ip = \"192.0.2.1\"
    worker-cpu = 1
    xdp-mode = \"native\"

Options on the command line win over the file. Flooding on a VNI goes to the multicast
group 230.0.0.0/8 + VNI (ff0e::VNI on an IPv6 underlay) unless the VNI has a static flood
list (`butterfly flood add`).

Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad options.";

/// `butterflyd --version`: the version and whether the DPDK backend is built in.
const VERSION: &str = if cfg!(feature = "dpdk") {
    concat!(env!("CARGO_PKG_VERSION"), " (DPDK backend built in)")
} else {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (no DPDK backend: build with --features dpdk)"
    )
};

/// The Butterfly daemon: VMs' vhost-user NICs on VXLAN networks, filtered by security
/// groups, over an AF_XDP (or DPDK) host NIC; driven by `butterfly` through its API.
#[derive(Debug, Parser)]
#[command(name = "butterflyd", version = VERSION, after_help = AFTER_HELP)]
struct Cli {
    /// TOML configuration file (same keys as the long options).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = match &cli.config {
        Some(path) => match Options::from_file(path) {
            Ok(file) => cli.options.or(file),
            Err(e) => return usage(e),
        },
        None => cli.options,
    };
    let settings = match Settings::resolve(options) {
        Ok(s) => s,
        Err(e) => return usage(e),
    };
    init_logging(&settings.log_level);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    match rt.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("butterflyd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("butterflyd: {e}\n(see butterflyd --help)");
    ExitCode::from(2)
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // Under systemd the journal timestamps each line already.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        nic = %settings.nic,
        vtep = %settings.ip,
        mtu = ?settings.mtu,
        xdp_mode = ?settings.xdp_mode,
        nic_backend = ?settings.nic_backend,
        worker_cpu = ?settings.worker_cpu,
        busy_poll = settings.busy_poll,
        state_file = %settings.state_file.display(),
        "butterflyd starting"
    );
    // The API endpoints first: a second daemon for the same socket stops here, before
    // touching the interface of the first.
    let listener = server::bind_unix(&settings.api_socket).map_err(|e| e.to_string())?;
    let tcp = match &settings.api_tcp {
        Some(t) => Some(server::bind_tls(t).map_err(|e| e.to_string())?),
        None => None,
    };
    let dataplane: Arc<dyn Dataplane> = if settings.no_dataplane {
        tracing::warn!("API-only mode (--no-dataplane): nothing will be forwarded");
        Arc::new(Detached)
    } else {
        if settings.nic_backend == NicBackend::Dpdk {
            tracing::info!(
                eal = %settings.dpdk_args.join(" "),
                port = settings.dpdk_port,
                "DPDK backend: no XDP program is attached to {}",
                settings.nic
            );
        }
        let dp = GraphDataplane::start(GraphSettings {
            nic: settings.nic.clone(),
            vtep_ip: settings.ip,
            xdp_mode: settings.xdp_mode,
            nic_backend: settings.nic_backend,
            dpdk_args: settings.dpdk_args.clone(),
            dpdk_port: settings.dpdk_port,
            mtu: settings.mtu,
            worker_cpu: settings.worker_cpu,
            busy_poll: settings.busy_poll,
            frames: 8192,
        })
        .map_err(|e| format!("{e} (run with --no-dataplane for API-only mode)"))?;
        Arc::new(dp)
    };
    let state = StateFile::new(&settings.state_file);
    let api = Api::start(settings.context(), state, dataplane).map_err(|e| e.to_string())?;
    let restored = api.config();
    tracing::info!(
        nics = restored.nics.len(),
        sgs = restored.sgs.len(),
        "configuration restored"
    );
    tracing::info!(socket = %settings.api_socket.display(), "API listening");

    // Shutdown: SIGTERM, SIGINT or the API's Shutdown call.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut api_stop = api.shutdown_requested();
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
            _ = api_stop.wait_for(|s| *s) => tracing::info!("shutdown requested through the API"),
        }
        systemd::notify("STOPPING=1");
        stop_tx.send_replace(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    if let Some(addr) = settings.prometheus {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--prometheus {addr}: {e}"))?;
        tracing::info!(%addr, "Prometheus metrics on /metrics");
        tokio::spawn(server::serve_metrics(
            api.clone(),
            l,
            stopped(stop_rx.clone()),
        ));
    }
    if let Some(period) = systemd::watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                systemd::notify("WATCHDOG=1");
            }
        });
    }
    systemd::notify("READY=1");
    let served = server::serve(
        api.clone(),
        listener,
        settings.api_socket.clone(),
        tcp,
        stopped(stop_rx),
    )
    .await;
    api.stop_dataplane();
    tracing::info!("butterflyd stopped");
    served.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_all_options() {
        let cli = Cli::try_parse_from([
            "butterflyd",
            "--nic",
            "eth0",
            "--ip",
            "192.0.2.1",
            "--config",
            "/etc/butterfly.toml",
            "--api-socket",
            "/tmp/a.sock",
            "--state-file",
            "/tmp/s.json",
            "--worker-cpu",
            "1",
            "--mtu",
            "9000",
            "--xdp-mode",
            "native",
            "--nic-backend",
            "dpdk",
            "--prometheus",
            "127.0.0.1:9611",
            "--log-level",
            "debug",
            "--no-dataplane",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/etc/butterfly.toml")));
        let s = Settings::resolve(cli.options).unwrap();
        assert_eq!(s.worker_cpu, Some(1));
        assert_eq!(s.xdp_mode, butterfly::settings::XdpMode::Native);
        assert_eq!(s.nic_backend, butterfly::settings::NicBackend::Dpdk);
        assert!(s.no_dataplane);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["butterflyd", "--nic", "eth0", "--ip", "not-an-ip"][..],
            &["butterflyd", "--xdp-mode", "turbo"],
            &["butterflyd", "--mtu", "-5"],
        ] {
            assert_eq!(
                Cli::try_parse_from(bad).unwrap_err().exit_code(),
                2,
                "{bad:?}"
            );
        }
    }
}
