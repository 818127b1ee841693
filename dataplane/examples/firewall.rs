//! A stateful firewall between two interfaces:
//!
//! ```text
//!   outside ── tap ── firewall ── tap ── inside
//!   (network)   WEST           EAST     (protected)
//! ```
//!
//! Two TAP interfaces are created (`--outside`, `--inside`); what the kernel sends out of
//! one comes out of the other if the firewall lets it through. Rules are security group
//! rules (`--rule`, allow only): inbound rules for traffic towards the inside, outbound
//! rules for traffic from it. Flows are stateful: the answers of an allowed flow pass, a
//! TCP connection must start with a SYN. ARP and IPv6 neighbour discovery always pass.
//!
//! ```text
//! sudo cargo run -p packetgraph --example firewall -- \
//!     --outside fw-out --inside fw-in --rule in:icmp --rule in:tcp:22 --rule out:all
//! # then connect the interfaces: move them into namespaces, or add them to bridges
//! sudo ip link set fw-out master br-wan up; sudo ip link set fw-in master br-lan up
//! ```
//!
//! Ctrl-C (or SIGTERM) stops it and prints the counters of every brick (passed and
//! dropped packets by reason, flows).

mod common;

use anyhow::{Context, Result};
use clap::Parser;
use packetgraph::bricks::Tap;
use packetgraph::bricks::firewall::{Firewall, FirewallConfig, SecurityGroup};
use packetgraph::{Clock, Graph, Pool, PoolConfig};

/// A stateful firewall between two TAP interfaces (packetgraph example).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Name of the TAP interface on the outside (network) side, ≤ 15 bytes.
    #[arg(long, default_value = "fw-out")]
    outside: String,

    /// Name of the TAP interface on the inside (protected) side, ≤ 15 bytes.
    #[arg(long, default_value = "fw-in")]
    inside: String,

    /// An allow rule `DIR:PROTO[:PORTS][@CIDR]` (repeat for more). DIR is `in` (towards
    /// the inside) or `out`; PROTO `all`, `tcp`, `udp`, `icmp`, `icmpv6` or a number;
    /// PORTS `P` or `A-B` (destination, TCP/UDP); CIDR the peer (default 0.0.0.0/0).
    /// Without any `out` rule only DHCP requests leave the inside.
    #[arg(long = "rule", value_name = "RULE", default_values = ["in:icmp", "out:all"])]
    rules: Vec<String>,

    /// Most flows kept in the flow table.
    #[arg(long, default_value_t = 65536)]
    max_flows: u32,

    /// Pin the worker thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

fn main() -> Result<()> {
    let signals = common::block_stop_signals()?;
    common::init_logging();
    let args = Args::parse();

    // The security group: every rule of the command line.
    let rules = args
        .rules
        .iter()
        .map(|r| common::parse_rule(r))
        .collect::<Result<Vec<_>>>()?;
    let mut cfg = FirewallConfig::default();
    cfg.flows.max_flows = args.max_flows;
    let mut fw = Firewall::new(cfg, Clock::monotonic()).context("firewall")?;
    fw.upsert_group(SecurityGroup {
        id: "cli".into(),
        rules,
        members: vec![],
    })?;
    fw.set_nic_groups(vec!["cli".into()]);

    // One frame pool for both TAP devices: 4096 frames of 2 KiB.
    let pool = Pool::new(PoolConfig {
        frame_count: 4096,
        ..PoolConfig::default()
    })?;
    let outside = Tap::new(&args.outside, pool.clone())
        .with_context(|| format!("TAP interface {}", args.outside))?;
    let inside =
        Tap::new(&args.inside, pool).with_context(|| format!("TAP interface {}", args.inside))?;
    tracing::info!(
        outside = outside.name(),
        inside = inside.name(),
        "TAP interfaces created"
    );

    // The firewall's VM (protected) side is EAST by default: link the outside to its
    // WEST side and the inside to its EAST side.
    let mut g = Graph::new("firewall");
    g.add("outside", outside)?;
    g.add("fw", fw)?;
    g.add("inside", inside)?;
    g.link_chain(&["outside", "fw", "inside"])?;

    let g = common::run_until_signal(g, &signals, args.cpu)?;
    common::print_report(&g);
    Ok(())
}
