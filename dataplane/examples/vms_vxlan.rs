//! Virtual machines on a VXLAN network, each behind its own firewall and anti-spoofing,
//! the host graph of butterfly in small:
//!
//! ```text
//!   VM 0 ── vhost ── antispoof ── firewall ──┐
//!   VM 1 ── vhost ── antispoof ── firewall ──┼── switch ── VTEP ── nic (AF_XDP or TAP)
//!   ...                                      │          VNI 42     underlay
//! ```
//!
//! - `vhost` (crate `butterfly-vhost`): the VM's virtio-net device on a vhost-user socket.
//! - `antispoof`: frames from the VM must carry its MAC and one of its IP addresses.
//! - `firewall`: stateful, security group rules (`--rule`). Inbound (towards the VM) is
//!   denied unless a rule allows it; outbound, without `out` rules, the VM may send from
//!   its own addresses.
//! - `switch`: VMs on this host reach each other without leaving it.
//! - `vtep`: VXLAN (RFC 7348) on one VNI; broadcast and unknown unicast go to a multicast
//!   group (default 230.0.0.VNI, as butterfly, so a Linux `vxlan` device with
//!   `group 230.0.0.42` on VNI 42 is a peer) or, with `--remote`, to a list of VTEPs.
//! - `nic`: the underlay. With `--underlay afxdp` (default) an AF_XDP socket on `--nic`
//!   and butterfly's XDP program, which steers only VXLAN for `--vtep-ip` (and the
//!   group) to the socket: the host keeps its own traffic (SSH...) and owns the VTEP
//!   address (it must be configured on the interface). With `--underlay tap` a TAP
//!   interface named `--nic` is created and the VTEP is a station behind it with its
//!   own MAC (`--vtep-mac`), answering ARP for `--vtep-ip`.
//!
//! ```text
//! sudo cargo run -p packetgraph --example vms_vxlan -- --nic eth1 --vtep-ip 192.0.2.1 \
//!     --vm /tmp/vm0.sock,52:54:00:00:00:01,10.0.0.1 --rule in:icmp --rule in:tcp:22
//! # on another host: ip link add vx42 type vxlan id 42 group 230.0.0.42 dev eth1 dstport 4789
//! ```
//!
//! Ctrl-C (or SIGTERM) stops it, detaches the XDP program and prints the counters of
//! every brick (firewall and antispoof drops by reason, VTEP encap/decap, FDBs).

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use butterfly_ebpf::{AttachMode, Steering, Variant};
use butterfly_vhost::Vhost;
use clap::{Parser, ValueEnum};
use packetgraph::bricks::firewall::{Firewall, FirewallConfig, SecurityGroup};
use packetgraph::bricks::nic::afxdp::{AfXdp, AfXdpConfig};
use packetgraph::bricks::{Antispoof, Flood, Nic, Switch, Tap, Vtep, VtepConfig};
use packetgraph::wire::vxlan::VXLAN_PORT;
use packetgraph::{Brick, Clock, Graph, Pool, PoolConfig};

/// What carries the VXLAN packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Underlay {
    /// An AF_XDP socket on an existing interface (XDP steers VXLAN to it).
    Afxdp,
    /// A new TAP interface (the VTEP is a station behind it).
    Tap,
}

/// Where the XDP program runs (AF_XDP underlay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum XdpMode {
    /// Native (driver) mode, else generic.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: slower, works on every interface.
    Generic,
}

/// VMs on VXLAN behind firewalls and anti-spoofing (packetgraph example).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The underlay interface: an existing one (AF_XDP) or the TAP to create.
    #[arg(long)]
    nic: String,

    /// How to drive the underlay.
    #[arg(long, value_enum, default_value_t = Underlay::Afxdp)]
    underlay: Underlay,

    /// Our VTEP address (outer source IP); with AF_XDP it must be an address of `--nic`.
    #[arg(long)]
    vtep_ip: IpAddr,

    /// Our outer MAC address with `--underlay tap` (AF_XDP uses the interface's MAC).
    #[arg(long, default_value = "02:b7:00:00:00:01")]
    vtep_mac: String,

    /// The VXLAN network identifier (0 ..= 16777215).
    #[arg(long, default_value_t = 42)]
    vni: u32,

    /// Multicast group flooding goes to [default: 230.0.0.0 + VNI, or ff0e::VNI for an
    /// IPv6 underlay].
    #[arg(long, conflicts_with = "remotes")]
    group: Option<IpAddr>,

    /// A remote VTEP to flood to by unicast instead of a group (repeat for more).
    #[arg(long = "remote", value_name = "IP")]
    remotes: Vec<IpAddr>,

    /// A VM: `SOCKET,MAC,IP[,IP...]` (repeat for more). SOCKET is a vhost-user socket
    /// created here (`client:PATH`: served by QEMU); MAC and IPs are what antispoof lets
    /// the VM use and the firewall's own addresses.
    #[arg(long = "vm", value_name = "SPEC", default_values = [
        "/tmp/vm0.sock,52:54:00:00:00:01,10.0.0.1",
        "/tmp/vm1.sock,52:54:00:00:00:02,10.0.0.2",
    ])]
    vms: Vec<String>,

    /// An allow rule for every VM's firewall, `DIR:PROTO[:PORTS][@CIDR]` (repeat), e.g.
    /// `in:tcp:22@192.0.2.0/24`, `out:all`.
    #[arg(long = "rule", value_name = "RULE", default_values = ["in:icmp"])]
    rules: Vec<String>,

    /// XDP attach mode (AF_XDP underlay).
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    xdp_mode: XdpMode,

    /// Pin the worker thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

/// One VM of the command line.
struct VmSpec {
    socket: String,
    mac: [u8; 6],
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

fn parse_vm(s: &str) -> Result<VmSpec> {
    let mut parts = s.split(',');
    let socket = parts.next().unwrap_or_default().to_string();
    let mac = common::parse_mac(parts.next().unwrap_or_default())
        .with_context(|| format!("--vm {s:?} must be SOCKET,MAC,IP[,IP...]"))?;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for ip in parts {
        match common::parse_ip(ip)? {
            IpAddr::V4(a) => v4.push(a),
            IpAddr::V6(a) => v6.push(a),
        }
    }
    if socket.is_empty() || v4.len() + v6.len() == 0 {
        bail!("--vm {s:?} must be SOCKET,MAC,IP[,IP...]");
    }
    Ok(VmSpec {
        socket,
        mac,
        v4,
        v6,
    })
}

/// butterfly's group for a VNI: 230.0.0.0/8 with the VNI in the low 24 bits (IPv4
/// underlay), ff0e::VNI (IPv6 underlay).
fn default_group(vni: u32, underlay: IpAddr) -> IpAddr {
    match underlay {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(0xE600_0000 | (vni & 0x00FF_FFFF))),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from((0xff0e_u128 << 112) | u128::from(vni))),
    }
}

/// The MAC of IPv4 neighbour `ip` from the kernel's ARP table, after asking the kernel
/// to resolve it (a zero-length UDP datagram to its VXLAN port). With AF_XDP, ARP answers
/// go to the kernel, not to the VTEP, so remote VTEPs of a flood list are resolved this
/// way; the VTEP also learns them from the VXLAN packets they send.
fn kernel_neighbour(ip: Ipv4Addr) -> Option<[u8; 6]> {
    let lookup = || {
        let table = std::fs::read_to_string("/proc/net/arp").ok()?;
        table.lines().skip(1).find_map(|l| {
            // IP address, HW type, Flags (0x0 = incomplete), HW address, Mask, Device
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[0] == ip.to_string() && f[2] != "0x0")
                .then(|| common::parse_mac(f[3]).ok())
                .flatten()
        })
    };
    if let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") {
        let _ = sock.send_to(&[], (ip, VXLAN_PORT));
    }
    for _ in 0..25 {
        if let Some(m) = lookup() {
            return Some(m);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

/// The underlay brick, the VTEP's outer MAC, and the steering program (AF_XDP only,
/// kept to print its counters at exit).
struct UnderlayParts {
    brick: Box<dyn Brick>,
    mac: [u8; 6],
    steering: Option<Arc<Mutex<Steering>>>,
}

fn underlay(args: &Args, pool: &Pool, flood: &Flood) -> Result<UnderlayParts> {
    match args.underlay {
        Underlay::Tap => {
            let tap = Tap::new(&args.nic, pool.clone())
                .with_context(|| format!("TAP interface {}", args.nic))?;
            tracing::info!(tap = tap.name(), "underlay TAP interface created");
            Ok(UnderlayParts {
                brick: Box::new(tap),
                mac: common::parse_mac(&args.vtep_mac)?,
                steering: None,
            })
        }
        Underlay::Afxdp => {
            // The XDP program: VXLAN to our address or group → the AF_XDP socket of the
            // receiving queue; everything else → the kernel.
            let mut steering =
                Steering::load(Variant::Linear).context("loading the XDP steering program")?;
            steering.set_vxlan_port(VXLAN_PORT)?;
            steering.add_vtep_addr(args.vtep_ip)?;
            if let Flood::Multicast(g) = flood {
                steering.join_group(*g)?;
            }
            let mode = match args.xdp_mode {
                XdpMode::Auto => AttachMode::Auto,
                XdpMode::Native => AttachMode::Native,
                XdpMode::Generic => AttachMode::Generic,
            };
            let got = steering
                .attach(&args.nic, mode, false)
                .with_context(|| format!("attaching XDP to {}", args.nic))?;
            let steering = Arc::new(Mutex::new(steering));
            // One socket on queue 0, the pool registered as its UMEM (no copy between
            // the NIC and the graph).
            let mut xsk = AfXdp::open(&AfXdpConfig::new(&args.nic, 0), pool)
                .with_context(|| format!("AF_XDP socket on {} queue 0", args.nic))?;
            xsk.register(&steering)?;
            tracing::info!(
                nic = %args.nic,
                xdp = got.as_str(),
                zerocopy = xsk.is_zerocopy(),
                "AF_XDP underlay ready"
            );
            Ok(UnderlayParts {
                brick: Box::new(Nic::new(xsk)),
                mac: common::interface_mac(&args.nic)?,
                steering: Some(steering),
            })
        }
    }
}

fn main() -> Result<()> {
    let signals = common::block_stop_signals()?;
    common::init_logging();
    let args = Args::parse();
    let vms = args
        .vms
        .iter()
        .map(|s| parse_vm(s))
        .collect::<Result<Vec<_>>>()?;
    let rules = args
        .rules
        .iter()
        .map(|r| common::parse_rule(r))
        .collect::<Result<Vec<_>>>()?;
    let flood = if args.remotes.is_empty() {
        Flood::Multicast(
            args.group
                .unwrap_or_else(|| default_group(args.vni, args.vtep_ip)),
        )
    } else {
        Flood::List(args.remotes.clone())
    };

    // One pool for everything: its region is also the AF_XDP UMEM.
    let pool = Pool::new(PoolConfig {
        frame_count: 8192,
        ..PoolConfig::default()
    })?;
    let UnderlayParts {
        brick: nic,
        mac: vtep_mac,
        steering,
    } = underlay(&args, &pool, &flood)?;

    let mut g = Graph::new("vms_vxlan");
    g.add_boxed("nic", nic)?;
    g.add(
        "vtep",
        Vtep::new(pool.clone(), VtepConfig::new(args.vtep_ip, vtep_mac))?,
    )?;
    g.add("switch", Switch::new())?;
    // switch EAST → VTEP WEST (the tenant side; this edge carries the VNI), VTEP EAST →
    // the underlay.
    let (_, vni_edge) = g.link("switch", "vtep")?;
    g.link("vtep", "nic")?;

    for (i, vm) in vms.iter().enumerate() {
        // The firewall faces the network on WEST and the VM on EAST (its default), and
        // so does antispoof: switch → firewall → antispoof → vhost.
        let mut fw = Firewall::new(FirewallConfig::default(), Clock::monotonic())?;
        let own: Vec<IpAddr> = vm
            .v4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(vm.v6.iter().map(|a| IpAddr::V6(*a)))
            .collect();
        fw.set_nic_addresses(own);
        fw.upsert_group(SecurityGroup {
            id: "cli".into(),
            rules: rules.clone(),
            members: vec![],
        })?;
        fw.set_nic_groups(vec!["cli".into()]);
        let spoof = Antispoof::new(vm.mac).with_addresses(&vm.v4, &vm.v6);
        let endpoint = common::parse_endpoint(&vm.socket);
        common::remove_stale_socket(&endpoint);
        let vhost = Vhost::new(endpoint, pool.clone())
            .with_context(|| format!("vhost-user socket {}", vm.socket))?;
        let (fw_name, as_name, vm_name) = (format!("fw{i}"), format!("as{i}"), format!("vm{i}"));
        g.add(fw_name.as_str(), fw)?;
        g.add(as_name.as_str(), spoof)?;
        g.add(vm_name.as_str(), vhost)?;
        g.link("switch", &fw_name)?;
        g.link_chain(&[&fw_name, &as_name, &vm_name])?;
        tracing::info!(vm = %vm_name, socket = %vm.socket, "VM attached");
    }

    // The VNI lives on the VTEP's WEST edge towards the switch. Joining a group sends an
    // IGMP/MLD report on the first poll.
    if let (Flood::List(remotes), Some(_)) = (&flood, &steering) {
        let vtep = g.get_mut::<Vtep>("vtep")?;
        for r in remotes {
            match r {
                IpAddr::V4(v4) => match kernel_neighbour(*v4) {
                    Some(mac) => vtep.set_neighbour(*r, mac)?,
                    None => tracing::warn!(remote = %r, "not resolved yet: learned later"),
                },
                IpAddr::V6(_) => {}
            }
        }
    }
    g.get_mut::<Vtep>("vtep")?
        .add_vni(vni_edge, args.vni, flood.clone())?;
    tracing::info!(vni = args.vni, flood = ?flood, "VXLAN network ready");

    let g = common::run_until_signal(g, &signals, args.cpu)?;
    common::print_report(&g);
    if let Some(s) = steering {
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(c) = s.counters() {
            println!(
                "xdp steering: steered {}, passed {}, malformed {}, no_socket {}",
                c.steered, c.passed, c.malformed, c.no_socket
            );
        }
    }
    Ok(())
}
