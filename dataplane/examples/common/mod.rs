//! What the examples share: logging, running a graph until Ctrl-C / SIGTERM, printing
//! its counters, and parsing the small values of their command lines (MAC addresses,
//! firewall rules, vhost-user endpoints).
//!
//! Not an example itself: each example includes it with `mod common;`.

// Each example uses a part of this module.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};
use packetgraph::bricks::firewall::{Cidr, Peer, PortRange, Protocol, Rule};
use packetgraph::{Graph, Worker, WorkerConfig};

/// Logs to stderr with `tracing`; `RUST_LOG` overrides the default level (`info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Blocks SIGINT and SIGTERM in the calling thread, so that every thread started
/// afterwards (the worker, the vhost-user control threads) inherits the mask and the
/// signals wait for [`run_until_signal`] instead of killing the process. Call it first
/// thing in `main`.
///
/// # Errors
/// When `pthread_sigmask` fails.
pub fn block_stop_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    Ok(set)
}

/// Runs `graph` on a worker thread until SIGINT (Ctrl-C) or SIGTERM arrives, then stops
/// the worker and returns the graph (its bricks still open: the caller prints the
/// counters, then drops it, which closes the devices and sockets).
///
/// `cpu` pins the worker (`None`: the kernel chooses).
///
/// # Errors
/// When the worker thread cannot start or panicked, or waiting for signals fails.
pub fn run_until_signal(graph: Graph, signals: &SigSet, cpu: Option<usize>) -> Result<Graph> {
    graph
        .sanity_check()
        .context("the graph is not fully linked")?;
    let name = graph.name().to_string();
    let worker = Worker::spawn(
        graph,
        WorkerConfig {
            name: format!("{name}-worker"),
            cpu,
            ..WorkerConfig::default()
        },
    )?;
    tracing::info!(graph = %name, "running; Ctrl-C or SIGTERM to stop");
    let sig = signals.wait().context("waiting for SIGINT/SIGTERM")?;
    tracing::info!(signal = %sig, "stopping");
    Ok(worker.stop()?)
}

/// Prints every brick's counters to stdout, one `brick.counter: value` per line: the
/// per-side packet and byte counts the graph keeps, then the brick's own non-zero
/// counters (drops by reason, flows, FDB entries...).
pub fn print_report(graph: &Graph) {
    println!("counters of graph '{}':", graph.name());
    for b in graph.report() {
        println!("{} ({})", b.name, b.kind);
        for (side, s) in [("west", &b.stats.west), ("east", &b.stats.east)] {
            println!(
                "  {}.{side}: rx {} packets {} bytes, tx {} packets {} bytes",
                b.name, s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes
            );
        }
        if b.stats.unlinked_drops > 0 {
            println!("  {}.unlinked_drops: {}", b.name, b.stats.unlinked_drops);
        }
        if b.errors > 0 {
            println!("  {}.errors: {}", b.name, b.errors);
        }
        for (k, v) in b.counters.iter().filter(|(_, v)| *v != 0) {
            println!("  {}.{k}: {v}", b.name);
        }
    }
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
///
/// # Errors
/// When it is not six hexadecimal bytes separated by `:`.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC address {s:?} must be six bytes like 52:54:00:12:34:56");
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("MAC address {s:?}"))?;
    }
    Ok(mac)
}

/// The MAC address of interface `ifname` in this network namespace (from sysfs).
///
/// # Errors
/// When the interface does not exist.
pub fn interface_mac(ifname: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{ifname}/address");
    let s = std::fs::read_to_string(&path)
        .with_context(|| format!("no interface {ifname:?} in this network namespace"))?;
    parse_mac(s.trim())
}

/// Parses a firewall rule `DIR:PROTO[:PORTS][@CIDR]`:
/// - `DIR`: `in` (towards the protected side) or `out` (from it);
/// - `PROTO`: `all`, `tcp`, `udp`, `icmp`, `icmpv6` or an IP protocol number;
/// - `PORTS`: destination port `P` or range `A-B` (TCP and UDP only);
/// - `CIDR`: the peer (the source of inbound packets, the destination of outbound
///   ones), default `0.0.0.0/0`.
///
/// Examples: `in:icmp`, `in:tcp:22@192.0.2.0/24`, `in:udp:5000-5010`, `out:all`.
///
/// # Errors
/// When a part is malformed; the message says which.
pub fn parse_rule(s: &str) -> Result<Rule> {
    let (spec, peer) = match s.split_once('@') {
        Some((a, b)) => (a, b.parse::<Cidr>().with_context(|| format!("rule {s:?}"))?),
        None => (s, "0.0.0.0/0".parse::<Cidr>()?),
    };
    let mut parts = spec.split(':');
    let dir = parts.next().unwrap_or_default();
    let proto = match parts.next() {
        Some("all" | "any") => Protocol::Any,
        Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some("icmp") => Protocol::Icmp,
        Some("icmpv6") => Protocol::Icmpv6,
        Some(n) => Protocol::Number(n.parse().with_context(|| {
            format!("rule {s:?}: protocol must be all, tcp, udp, icmp, icmpv6 or 0-255")
        })?),
        None => bail!("rule {s:?}: expected DIR:PROTO[:PORTS][@CIDR], e.g. in:tcp:22"),
    };
    let ports = match parts.next() {
        None => None,
        Some(p) => {
            let bad = || format!("rule {s:?}: ports must be P or A-B (0-65535)");
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            Some(PortRange::new(
                a.parse().with_context(bad)?,
                b.parse().with_context(bad)?,
            )?)
        }
    };
    if parts.next().is_some() {
        bail!("rule {s:?}: too many ':' parts");
    }
    let rule = match dir {
        "in" => Rule::inbound(proto, ports, Peer::Cidr(peer)),
        "out" => Rule::outbound(proto, ports, Peer::Cidr(peer)),
        d => bail!("rule {s:?}: direction {d:?} must be in or out"),
    };
    rule.validate().with_context(|| format!("rule {s:?}"))?;
    Ok(rule)
}

/// A vhost-user socket for a VM: `PATH` (we create the socket and QEMU connects, the
/// usual case) or `client:PATH` (QEMU serves it with `server=on`, we connect).
pub fn parse_endpoint(s: &str) -> butterfly_vhost::Endpoint {
    match s.strip_prefix("client:") {
        Some(p) => butterfly_vhost::Endpoint::Client(PathBuf::from(p)),
        None => butterfly_vhost::Endpoint::Server(PathBuf::from(s)),
    }
}

/// Removes a stale vhost-user server socket left by a previous run (binding fails on an
/// existing path).
pub fn remove_stale_socket(ep: &butterfly_vhost::Endpoint) {
    if let butterfly_vhost::Endpoint::Server(p) = ep {
        let _ = std::fs::remove_file(p);
    }
}

/// Parses an IP address with a clear message.
///
/// # Errors
/// When `s` is not an IPv4 or IPv6 address.
pub fn parse_ip(s: &str) -> Result<IpAddr> {
    s.parse()
        .with_context(|| format!("{s:?} is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use packetgraph::bricks::firewall::RuleDirection;

    #[test]
    fn rules_parse() {
        let r = parse_rule("in:tcp:22@192.0.2.0/24").unwrap();
        assert_eq!(r.direction, RuleDirection::Inbound);
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!(r.ports, Some(PortRange::single(22)));
        assert_eq!(r.peer, Peer::Cidr("192.0.2.0/24".parse().unwrap()));
        let r = parse_rule("out:udp:5000-5010").unwrap();
        assert_eq!(r.ports, Some(PortRange::new(5000, 5010).unwrap()));
        assert_eq!(parse_rule("out:all").unwrap().protocol, Protocol::Any);
        assert_eq!(parse_rule("in:47").unwrap().protocol, Protocol::Number(47));
        for bad in [
            "in",
            "up:tcp",
            "in:icmp:22",
            "in:tcp:9-1",
            "in:tcp:1:2",
            "in:tcp@x",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("52:54:00:0a:0B:ff").unwrap(),
            [0x52, 0x54, 0, 0x0a, 0x0b, 0xff]
        );
        assert!(parse_mac("52:54:00:0a:0b").is_err());
        assert!(parse_mac("52:54:00:0a:0b:zz").is_err());
    }
}
