//! Virtual machines bridged with a host interface:
//!
//! ```text
//!   VM 0 ── vhost ──┐
//!   VM 1 ── vhost ──┼── switch ── tap (host side: bridge it with the NIC)
//!   ...             │
//! ```
//!
//! Each `--vm SOCKET` is a vhost-user socket a QEMU guest's virtio-net NIC attaches to
//! (the `vhost` brick of `butterfly-vhost` is the device; one copy each way between guest
//! memory and the frame pool). The VMs and a TAP interface share a learning switch, so
//! the VMs reach each other and, through the TAP, whatever the host connects it to: add
//! it to a Linux bridge with the physical NIC to put the VMs on the NIC's network.
//!
//! ```text
//! sudo cargo run -p packetgraph --example vms_bridged -- \
//!     --vm /tmp/vm0.sock --vm /tmp/vm1.sock --tap pg-host
//! sudo ip link set pg-host master br0 up     # br0 holds the physical NIC
//! qemu-system-x86_64 ... -object memory-backend-memfd,id=mem,size=1G,share=on \
//!     -M q35,memory-backend=mem -chardev socket,id=c0,path=/tmp/vm0.sock \
//!     -netdev vhost-user,id=n0,chardev=c0 -device virtio-net-pci,netdev=n0
//! ```
//!
//! Guest memory must be shared (`share=on`). A socket given as `client:PATH` is one QEMU
//! serves (`-chardev socket,...,server=on`) and this program connects to. Ctrl-C (or
//! SIGTERM) stops it and prints the counters of every brick.

mod common;

use anyhow::{Context, Result};
use butterfly_vhost::Vhost;
use clap::Parser;
use packetgraph::bricks::{Switch, Tap};
use packetgraph::{Graph, Pool, PoolConfig};

/// VMs (vhost-user) and a TAP interface on one switch (packetgraph example).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A VM's vhost-user socket (repeat for more VMs): `PATH` is created here and QEMU
    /// connects to it; `client:PATH` is served by QEMU (`server=on`) and we connect.
    #[arg(long = "vm", value_name = "SOCKET", default_values = ["/tmp/vm0.sock", "/tmp/vm1.sock"])]
    vms: Vec<String>,

    /// Name of the host-side TAP interface (≤ 15 bytes); bridge it with the NIC.
    #[arg(long, default_value = "pg-host")]
    tap: String,

    /// Pin the worker thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

fn main() -> Result<()> {
    let signals = common::block_stop_signals()?;
    common::init_logging();
    let args = Args::parse();

    // One frame pool for the TAP and every VM.
    let pool = Pool::new(PoolConfig {
        frame_count: 2048 * (args.vms.len() as u32 + 1),
        ..PoolConfig::default()
    })?;

    let mut g = Graph::new("vms_bridged");
    g.add("switch", Switch::new())?;

    let tap =
        Tap::new(&args.tap, pool.clone()).with_context(|| format!("TAP interface {}", args.tap))?;
    tracing::info!(tap = tap.name(), "host TAP interface created");
    g.add("host", tap)?;
    g.link("switch", "host")?;

    for (i, spec) in args.vms.iter().enumerate() {
        let endpoint = common::parse_endpoint(spec);
        common::remove_stale_socket(&endpoint);
        let vm = Vhost::new(endpoint, pool.clone())
            .with_context(|| format!("vhost-user socket {spec}"))?;
        let name = format!("vm{i}");
        g.add(name.as_str(), vm)?;
        g.link("switch", &name)?;
        tracing::info!(vm = %name, socket = %spec, "vhost-user port plugged into the switch");
    }

    let g = common::run_until_signal(g, &signals, args.cpu)?;
    common::print_report(&g);
    Ok(())
}
