//! A learning Ethernet switch with several interfaces:
//!
//! ```text
//!   tap sw0 ──┐
//!   tap sw1 ──┼── switch (FDB: MAC → port, aging, flooding)
//!   tap sw2 ──┘
//! ```
//!
//! Each `--port NAME` creates a TAP interface linked to one port of a `switch` brick,
//! which learns where each source MAC lives, sends known unicast to one port and floods
//! broadcast, multicast and unknown unicast to all the others.
//!
//! ```text
//! sudo cargo run -p packetgraph --example switch -- --port sw0 --port sw1 --port sw2
//! # attach each TAP to what it should switch: a namespace, a VM (QEMU -netdev tap), ...
//! sudo ip link set sw0 netns red; sudo ip -n red link set sw0 up
//! ```
//!
//! Ctrl-C (or SIGTERM) stops it and prints the counters of every brick (unicast, flooded,
//! learned MACs, FDB size, packets per TAP).

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use packetgraph::bricks::{Switch, SwitchConfig, Tap};
use packetgraph::{Graph, Pool, PoolConfig};

/// A learning switch between TAP interfaces (packetgraph example).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A TAP interface to create and plug into the switch (repeat: at least two).
    #[arg(long = "port", value_name = "IFNAME", default_values = ["sw0", "sw1", "sw2"])]
    ports: Vec<String>,

    /// Seconds after which an unused MAC is forgotten (802.1D default 300).
    #[arg(long, default_value_t = 300)]
    aging: u64,

    /// Most MAC addresses in the forwarding database.
    #[arg(long, default_value_t = 8192)]
    fdb_max: usize,

    /// Pin the worker thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

fn main() -> Result<()> {
    let signals = common::block_stop_signals()?;
    common::init_logging();
    let args = Args::parse();
    if args.ports.len() < 2 {
        bail!("a switch needs at least two --port");
    }

    let switch = Switch::with_config(SwitchConfig {
        fdb_max: args.fdb_max,
        aging: Duration::from_secs(args.aging),
        ..SwitchConfig::default()
    })?;
    // One frame pool for every port.
    let pool = Pool::new(PoolConfig {
        frame_count: 2048 * args.ports.len() as u32,
        ..PoolConfig::default()
    })?;

    let mut g = Graph::new("switch");
    g.add("switch", switch)?;
    for name in &args.ports {
        let tap = Tap::new(name, pool.clone()).with_context(|| format!("TAP interface {name}"))?;
        // Bricks are named after their interface; each link adds one switch port (an
        // EAST edge of the switch).
        g.add(name.as_str(), tap)?;
        g.link("switch", name)?;
        tracing::info!(port = %name, "TAP interface plugged into the switch");
    }

    let g = common::run_until_signal(g, &signals, args.cpu)?;
    common::print_report(&g);
    Ok(())
}
