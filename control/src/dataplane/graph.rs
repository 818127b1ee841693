//! The real [`Dataplane`]: one packetgraph [`Worker`] (optionally pinned to a CPU) owning
//! the host graph of DESIGN.md.
//!
//! ```text
//! vm-ID ─ [sniffer-ID] ─ antispoof-ID ─ firewall-ID ─┬─────────────── vtep ─ underlay
//!                                                    └─ switch-VNI ─┘
//! ```
//!
//! - `underlay`: a [`Nic`] brick, with one of two backends (`--nic-backend`):
//!   - `afxdp` (default): an AF_XDP socket bound to queue 0 of `--nic`, whose UMEM is the
//!     graph's frame pool; the XDP steering program (crate `butterfly-ebpf`) sends only
//!     VXLAN to our VTEP IP (or to a joined flood group) on the VXLAN port to the socket,
//!     everything else to the kernel.
//!   - `dpdk` (cargo feature `dpdk`): queue 0 of DPDK port `--dpdk-port` after the EAL
//!     is initialised with `--dpdk-args`. No XDP program: the port delivers every frame
//!     to the VTEP, which answers ARP/NDP for the VTEP IP itself (the kernel does not own
//!     the address); frames it does not take are dropped and counted there.
//! - `vtep`: our `--ip`, the underlay's MAC (the interface's, or the DPDK port's); each
//!   VNI floods to its static list or to its multicast group (joined in the XDP program
//!   too, with AF_XDP).
//! - per NIC the chain of [`super::topology`], the settings of [`super::translate`].
//!
//! Every change is computed on the API thread (new bricks are created there, so a bad
//! socket path or trace path fails before the graph is touched) and then carried out by
//! one [`Worker::exec`] command between two polls: no lock on the packet path.
//!
//! Limits: one worker, one RX queue (queue 0) of the underlay interface.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use butterfly_ebpf::{AttachMode, AttachedMode, Steering, Variant};
use butterfly_vhost::{Endpoint, Vhost};
use packetgraph::bricks::firewall::{FirewallConfig, FirewallCounters};
use packetgraph::bricks::nic::afxdp::{AfXdp, AfXdpConfig, ZeroCopy};
use packetgraph::bricks::vtep::EncapDrop;
use packetgraph::bricks::{Antispoof, Firewall, Flood, Nic, Print, Switch, Tap, Vtep, VtepConfig};
use packetgraph::{Brick, Clock, Graph, Pool, PoolConfig, Side, Worker, WorkerConfig};

use super::topology::{Part, Step, Topology, UNDERLAY, VTEP};
use super::{Dataplane, DataplaneError, NicCounters, translate};
use crate::model::{Config, DesiredChange, NicType};
use crate::settings::{NicBackend, XdpMode};

/// How to start a [`GraphDataplane`].
#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// The underlay interface (AF_XDP on its queue 0).
    pub nic: String,
    /// Our VTEP address.
    pub vtep_ip: IpAddr,
    /// XDP attach mode (AF_XDP backend).
    pub xdp_mode: XdpMode,
    /// What drives the underlay.
    pub nic_backend: NicBackend,
    /// EAL arguments (DPDK backend), without the program name.
    pub dpdk_args: Vec<String>,
    /// DPDK port id of the underlay (DPDK backend).
    pub dpdk_port: u16,
    /// Underlay MTU asked for (`--mtu`), bytes; `None`: the underlay's own.
    pub mtu: Option<u32>,
    /// CPU the worker is pinned to.
    pub worker_cpu: Option<usize>,
    /// The worker busy-polls (never sleeps between empty polls).
    pub busy_poll: bool,
    /// Frames in the pool shared by the AF_XDP UMEM, the VTEP, the taps and vhost.
    pub frames: u32,
}

struct State {
    topo: Topology,
    /// Flood destination per VNI currently set in the VTEP.
    flood: BTreeMap<u32, Flood>,
    /// Multicast groups joined in the steering program.
    groups: BTreeSet<IpAddr>,
}

/// The host graph on one worker. See the module documentation.
pub struct GraphDataplane {
    settings: GraphSettings,
    pool: Pool,
    worker: Mutex<Option<Worker>>,
    steering: Mutex<Option<Arc<Mutex<Steering>>>>,
    state: Mutex<State>,
    /// What drives the underlay, for `status` (`"AF_XDP on eth0 (native, copy mode)"`).
    underlay: String,
    /// The MTUs in force, see [`Mtu`].
    mtu: Mtu,
    /// Take static flood remotes' MACs from the kernel (off in unit tests, which must
    /// not send anything).
    kernel_neighbours: bool,
}

fn failed(what: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Failed(format!("{what}: {e}"))
}

fn interface_mac(ifname: &str) -> Result<[u8; 6], DataplaneError> {
    let path = format!("/sys/class/net/{ifname}/address");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| failed(&format!("--nic {ifname}: reading {path}"), e))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(failed(&path, format!("not a MAC address: {text}")));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|e| failed(&path, e))?;
    }
    Ok(mac)
}

/// The MAC of IPv4 neighbour `ip` in the kernel's ARP table (`/proc/net/arp`), asking
/// the kernel to resolve it first when it is not there: a zero-length UDP datagram to the
/// remote's VXLAN port (which the remote VTEP drops as malformed) makes the kernel send
/// an ARP request; the answer is waited for up to 500 ms. IPv6 remotes are left to the
/// VTEP's own resolution (`None`).
fn kernel_neighbour(ip: IpAddr) -> Option<[u8; 6]> {
    let IpAddr::V4(v4) = ip else {
        return None;
    };
    let lookup = || -> Option<[u8; 6]> {
        let table = std::fs::read_to_string("/proc/net/arp").ok()?;
        table.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // IP address, HW type, Flags (0x2 = complete), HW address, Mask, Device
            if f.len() < 4 || f[0] != v4.to_string() || f[2] == "0x0" {
                return None;
            }
            let mut mac = [0u8; 6];
            let parts: Vec<&str> = f[3].split(':').collect();
            if parts.len() != 6 {
                return None;
            }
            for (m, p) in mac.iter_mut().zip(parts) {
                *m = u8::from_str_radix(p, 16).ok()?;
            }
            (mac != [0; 6]).then_some(mac)
        })
    };
    if let Some(m) = lookup() {
        return Some(m);
    }
    if let Ok(sock) = std::net::UdpSocket::bind("0.0.0.0:0") {
        let _ = sock.send_to(&[], (v4, packetgraph::wire::vxlan::VXLAN_PORT));
    }
    for _ in 0..25 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if let Some(m) = lookup() {
            return Some(m);
        }
    }
    tracing::warn!(%ip, "remote VTEP not resolved by the kernel yet; the VTEP will resolve it");
    None
}

/// The MTUs butterflyd works with, in bytes.
///
/// `underlay` is `--mtu` when given (it must not exceed the interface's or DPDK port's
/// MTU: a larger one would make the NIC drop what the VTEP sends), else the underlay's
/// own MTU; it is capped by what one frame of the pool holds (frame size − headroom −
/// Ethernet header). The VTEP drops and counts (`drop_too_big`) encapsulated frames whose
/// outer IP packet exceeds it. VMs get `underlay − 50` on an IPv4 underlay (outer IPv4
/// 20 + UDP 8 + VXLAN 8 + inner Ethernet 14, RFC 7348 §5) or `− 70` on IPv6 (IPv6
/// header 40): tap NICs are created with that MTU, vhost-user NICs advertise it
/// (`VIRTIO_NET_F_MTU`; QEMU passes it to the guest with `host_mtu=` set to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mtu {
    /// Largest outer IP packet sent on the underlay.
    pub underlay: u32,
    /// The VMs' (inner IP) MTU.
    pub vm: u32,
}

impl Mtu {
    /// The MTUs for `asked` (`--mtu`) on an underlay whose own MTU is `link` (named
    /// `what` in errors), for VTEP address `vtep_ip`, with frames of `pool`.
    ///
    /// # Errors
    /// [`DataplaneError::Failed`] when `asked` exceeds `link`, or when the result leaves
    /// VMs less than the IPv6 minimum of 1280 bytes (RFC 8200 §5).
    pub fn resolve(
        asked: Option<u32>,
        link: u32,
        what: &str,
        vtep_ip: IpAddr,
        pool: &Pool,
    ) -> Result<Mtu, DataplaneError> {
        use crate::settings::{MAX_MTU, MIN_MTU};
        let underlay = match asked {
            Some(m) if m > link => {
                return Err(DataplaneError::Failed(format!(
                    "--mtu {m}: the underlay {what} has MTU {link}; raise it (ip link set \
                     dev IFACE mtu {m}) or give --mtu {link} or less"
                )));
            }
            Some(m) => m,
            None => link.min(MAX_MTU),
        };
        let frame_ip = (pool.frame_size() - pool.headroom()) as u32 - 14;
        if underlay > frame_ip {
            tracing::warn!(
                mtu = underlay,
                limit = frame_ip,
                "frames of the pool hold IP packets of at most {frame_ip} bytes: the \
                 underlay MTU is limited to that"
            );
        }
        let underlay = underlay.min(frame_ip);
        let overhead = if vtep_ip.is_ipv6() { 70 } else { 50 };
        let vm = underlay.saturating_sub(overhead);
        if underlay < MIN_MTU {
            return Err(DataplaneError::Failed(format!(
                "the underlay {what} has MTU {underlay}, below the {MIN_MTU} bytes VXLAN \
                 needs (VMs would get {vm}): raise it"
            )));
        }
        Ok(Mtu { underlay, vm })
    }
}

/// The MTU of kernel interface `ifname` (`/sys/class/net/IF/mtu`), bytes.
fn interface_mtu(ifname: &str) -> Result<u32, DataplaneError> {
    let path = format!("/sys/class/net/{ifname}/mtu");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| failed(&format!("--nic {ifname}: reading {path}"), e))?;
    text.trim().parse().map_err(|e| failed(&path, e))
}

/// Sets the MTU of kernel interface `ifname` (SIOCSIFMTU), bytes.
fn set_interface_mtu(ifname: &str, mtu: u32) -> std::io::Result<()> {
    let name = ifname.as_bytes();
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    // SAFETY: fd is an open socket; req is a valid ifreq with a NUL-terminated name
    // (zeroed beyond it) and the MTU set, as SIOCSIFMTU expects.
    let r = unsafe { libc::ioctl(fd, libc::SIOCSIFMTU as _, &req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    if r < 0 { Err(err) } else { Ok(()) }
}

/// The VTEP's configuration: address, underlay MAC, MTU limit.
fn vtep_config(ip: IpAddr, mac: [u8; 6], mtu: Mtu) -> VtepConfig {
    let mut c = VtepConfig::new(ip, mac);
    c.underlay_mtu = Some(u16::try_from(mtu.underlay).unwrap_or(u16::MAX));
    c
}

/// How `status` names an AF_XDP underlay.
fn afxdp_description(nic: &str, attached: AttachedMode, zerocopy: bool) -> String {
    format!(
        "AF_XDP on {nic} ({}, {} mode)",
        attached.as_str(),
        if zerocopy { "zero-copy" } else { "copy" }
    )
}

/// The message of a DPDK request to a butterflyd built without the `dpdk` feature.
pub const NO_DPDK: &str = "--nic-backend dpdk: this butterflyd was built without DPDK support: \
                           rebuild with --features dpdk";

impl GraphDataplane {
    /// Starts the dataplane on the backend of `settings.nic_backend`: see
    /// [`GraphDataplane::start_afxdp`] and `GraphDataplane::start_dpdk` (feature `dpdk`).
    ///
    /// # Errors
    /// [`DataplaneError::Failed`] naming the step; for DPDK without the `dpdk` feature,
    /// [`NO_DPDK`].
    pub fn start(settings: GraphSettings) -> Result<GraphDataplane, DataplaneError> {
        let pool = Pool::new(PoolConfig {
            frame_count: settings.frames,
            ..PoolConfig::default()
        })
        .map_err(|e| failed("frame pool", e))?;
        match settings.nic_backend {
            NicBackend::Afxdp => GraphDataplane::start_afxdp(settings, pool),
            #[cfg(feature = "dpdk")]
            NicBackend::Dpdk => GraphDataplane::start_dpdk(settings, pool),
            #[cfg(not(feature = "dpdk"))]
            NicBackend::Dpdk => Err(DataplaneError::Failed(NO_DPDK.to_string())),
        }
    }

    /// Initialises the EAL with `settings.dpdk_args` (in the calling thread's network
    /// namespace: `--vdev` devices such as `net_af_packet0,iface=IF` bind there), opens
    /// queue 0 of port `settings.dpdk_port` (promiscuous, RX and TX copied between mbufs
    /// and the graph's frames), builds the `underlay` and `vtep` bricks (the VTEP MAC is
    /// the port's) and starts the worker. No XDP program is attached.
    ///
    /// # Errors
    /// [`DataplaneError::Failed`] with the EAL's or the port's error and its usual fix
    /// (hugepages, permissions, unknown devargs, no such port).
    #[cfg(feature = "dpdk")]
    pub fn start_dpdk(
        settings: GraphSettings,
        pool: Pool,
    ) -> Result<GraphDataplane, DataplaneError> {
        use packetgraph::bricks::nic::dpdk::{Dpdk, DpdkConfig, PortId, eal_init, port_names};
        eal_init(&settings.dpdk_args).map_err(|e| failed("--dpdk-args: DPDK EAL", e))?;
        let port = Dpdk::open(&DpdkConfig::new(PortId::Id(settings.dpdk_port)), &pool)
            .map_err(|e| failed(&format!("--dpdk-port {}", settings.dpdk_port), e))?;
        let mac = port
            .mac()
            .map_err(|e| failed(&format!("--dpdk-port {}", settings.dpdk_port), e))?;
        let link = port.link().map(|l| l.up).unwrap_or(false);
        let name = port.name().to_string();
        let port_mtu = port.mtu().map(u32::from).unwrap_or_else(|e| {
            let d = crate::settings::DEFAULT_MTU;
            tracing::warn!(error = %e, "DPDK port MTU unknown: assuming {d}");
            d
        });
        let mtu = Mtu::resolve(
            settings.mtu,
            port_mtu,
            &format!("DPDK port {} ({name})", settings.dpdk_port),
            settings.vtep_ip,
            &pool,
        )?;
        let vtep = Vtep::new(pool.clone(), vtep_config(settings.vtep_ip, mac, mtu))
            .map_err(|e| failed("VTEP", e))?;
        let description = format!(
            "DPDK port {} ({name}, link {}), EAL '{}', no XDP program",
            settings.dpdk_port,
            if link { "up" } else { "down" },
            settings.dpdk_args.join(" ")
        );
        let dp = GraphDataplane::assemble(
            settings,
            pool,
            Box::new(Nic::new(port)),
            vtep,
            None,
            description,
            mtu,
        )?;
        tracing::info!(
            port = dp.settings.dpdk_port,
            name,
            mac = %mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            link_up = link,
            ports = ?port_names(),
            "DPDK dataplane started: no XDP program attached, the DPDK port receives every \
             frame and the VTEP answers ARP/NDP for the VTEP IP"
        );
        Ok(dp)
    }

    /// Attaches the steering program to `settings.nic`, opens the AF_XDP socket, builds
    /// the `underlay` and `vtep` bricks and starts the worker.
    ///
    /// # Errors
    /// [`DataplaneError::Failed`] naming the step (no such interface, XDP refused, no
    /// CAP_NET_ADMIN/CAP_BPF, worker thread).
    pub fn start_afxdp(
        settings: GraphSettings,
        pool: Pool,
    ) -> Result<GraphDataplane, DataplaneError> {
        let mac = interface_mac(&settings.nic)?;
        let mtu = Mtu::resolve(
            settings.mtu,
            interface_mtu(&settings.nic)?,
            &format!("interface {}", settings.nic),
            settings.vtep_ip,
            &pool,
        )?;
        let mut steering =
            Steering::load(Variant::Linear).map_err(|e| failed("loading the XDP program", e))?;
        steering
            .set_vxlan_port(packetgraph::wire::vxlan::VXLAN_PORT)
            .map_err(|e| failed("XDP program config", e))?;
        steering
            .add_vtep_addr(settings.vtep_ip)
            .map_err(|e| failed("XDP program config", e))?;
        let mode = match settings.xdp_mode {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
        };
        let attached = steering
            .attach(&settings.nic, mode, true)
            .map_err(|e| failed(&format!("attaching XDP to {}", settings.nic), e))?;
        let steering = Arc::new(Mutex::new(steering));
        let mut cfg = AfXdpConfig::new(&settings.nic, 0);
        cfg.zero_copy = ZeroCopy::Auto;
        let mut xsk = AfXdp::open(&cfg, &pool)
            .map_err(|e| failed(&format!("AF_XDP socket on {}", settings.nic), e))?;
        xsk.register(&steering)
            .map_err(|e| failed("registering the AF_XDP socket", e))?;
        let zerocopy = xsk.is_zerocopy();
        let vtep = Vtep::new(pool.clone(), vtep_config(settings.vtep_ip, mac, mtu))
            .map_err(|e| failed("VTEP", e))?;
        let description = afxdp_description(&settings.nic, attached, zerocopy);
        let dp = GraphDataplane::assemble(
            settings,
            pool,
            Box::new(Nic::new(xsk)),
            vtep,
            Some(steering),
            description,
            mtu,
        )?;
        tracing::info!(
            nic = %dp.settings.nic,
            mode = attached.as_str(),
            zerocopy,
            "AF_XDP dataplane started"
        );
        Ok(dp)
    }

    /// The graph `underlay ─ vtep` on a new worker.
    fn assemble(
        settings: GraphSettings,
        pool: Pool,
        underlay: Box<dyn Brick>,
        vtep: Vtep,
        steering: Option<Arc<Mutex<Steering>>>,
        description: String,
        mtu: Mtu,
    ) -> Result<GraphDataplane, DataplaneError> {
        tracing::info!(
            underlay_mtu = mtu.underlay,
            vm_mtu = mtu.vm,
            "MTU: encapsulated frames above the underlay MTU are dropped (drop_too_big)"
        );
        let steering_present = steering.is_some();
        let mut g = Graph::new("butterfly");
        let setup = (|| {
            g.add_boxed(UNDERLAY, underlay)?;
            g.add(VTEP, vtep)?;
            g.link(VTEP, UNDERLAY).map(|_| ())
        })();
        setup.map_err(|e| failed("host graph", e))?;
        let worker = Worker::spawn(
            g,
            WorkerConfig {
                name: "butterfly-worker".into(),
                cpu: settings.worker_cpu,
                max_idle_sleep: if settings.busy_poll {
                    std::time::Duration::ZERO
                } else {
                    WorkerConfig::default().max_idle_sleep
                },
                ..WorkerConfig::default()
            },
        )
        .map_err(|e| failed("worker", e))?;
        let mut topo = Topology::default();
        topo.parts.insert(UNDERLAY.into(), Part::Underlay);
        topo.parts.insert(VTEP.into(), Part::Vtep);
        topo.links.insert((VTEP.into(), UNDERLAY.into()));
        Ok(GraphDataplane {
            settings,
            pool,
            worker: Mutex::new(Some(worker)),
            steering: Mutex::new(steering),
            state: Mutex::new(State {
                topo,
                flood: BTreeMap::new(),
                groups: BTreeSet::new(),
            }),
            underlay: description,
            mtu,
            kernel_neighbours: steering_present,
        })
    }

    fn exec<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Graph) -> R + Send + 'static,
    ) -> Result<R, DataplaneError> {
        let w = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        match w.as_ref() {
            Some(w) => w.exec(f).map_err(|e| failed("worker", e)),
            None => Err(DataplaneError::Unavailable(
                "the dataplane is stopped".into(),
            )),
        }
    }

    /// Creates the brick of a new part (on the API thread).
    fn make(&self, part: &Part, config: &Config) -> Result<Box<dyn Brick>, DataplaneError> {
        let nic_of = |id: &str| {
            config
                .nics
                .get(id)
                .ok_or_else(|| failed("topology", format!("no NIC {id}")))
        };
        Ok(match part {
            Part::Underlay | Part::Vtep => {
                return Err(failed("topology", "underlay and vtep are never re-created"));
            }
            Part::Switch { .. } => Box::new(Switch::new()),
            Part::Vm {
                nic,
                nic_type,
                socket_path,
            } => match nic_type {
                NicType::Tap => {
                    let tap =
                        Tap::new(nic, self.pool.clone()).map_err(|e| DataplaneError::Refused {
                            field: "id".into(),
                            reason: format!("cannot create tap interface '{nic}': {e}"),
                        })?;
                    if let Err(e) = set_interface_mtu(tap.name(), self.mtu.vm) {
                        tracing::warn!(tap = tap.name(), mtu = self.mtu.vm, error = %e, "tap MTU");
                    }
                    Box::new(tap)
                }
                NicType::VhostUserServer | NicType::VhostUserClient => {
                    let path = socket_path.clone().ok_or_else(|| DataplaneError::Refused {
                        field: "socket_path".into(),
                        reason: "a vhost-user NIC needs a socket path".into(),
                    })?;
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let ep = if *nic_type == NicType::VhostUserServer {
                        Endpoint::Server(path.clone())
                    } else {
                        Endpoint::Client(path.clone())
                    };
                    let vhost =
                        Vhost::new(ep, self.pool.clone()).map_err(|e| DataplaneError::Refused {
                            field: "socket_path".into(),
                            reason: format!("{}: {e}", path.display()),
                        })?;
                    // VIRTIO_NET_F_MTU with the VM MTU (QEMU shows it to the guest when
                    // started with the same `host_mtu=`).
                    let mtu = u16::try_from(self.mtu.vm).unwrap_or(u16::MAX);
                    Box::new(
                        vhost
                            .with_mtu(Some(mtu))
                            .map_err(|e| failed("vhost-user MTU", e))?,
                    )
                }
            },
            Part::Sniffer { nic } => {
                let n = nic_of(nic)?;
                let path = n
                    .packet_trace_path
                    .clone()
                    .ok_or_else(|| DataplaneError::Refused {
                        field: "packet_trace_path".into(),
                        reason: "packet trace on without a path".into(),
                    })?;
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                Box::new(
                    Print::pcap_file(&path).map_err(|e| DataplaneError::Refused {
                        field: "packet_trace_path".into(),
                        reason: e.to_string(),
                    })?,
                )
            }
            Part::Antispoof { nic } => {
                Box::new(translate::antispoof(nic_of(nic)?).with_outside(Side::East))
            }
            Part::Firewall { nic } => {
                let zone = config.nics.keys().position(|k| k == nic).unwrap_or(0) as u32;
                Box::new(
                    Firewall::new(
                        FirewallConfig {
                            vm_side: Side::West,
                            zone,
                            ..FirewallConfig::default()
                        },
                        Clock::monotonic(),
                    )
                    .map_err(|e| failed("firewall", e))?,
                )
            }
        })
    }

    fn sync(&self, config: &Config) -> Result<(), DataplaneError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let next = Topology::of(config);
        let steps = super::topology::plan(&st.topo, &next);
        // New bricks first: a failure leaves the graph untouched.
        let mut made: BTreeMap<String, Box<dyn Brick>> = BTreeMap::new();
        for s in &steps {
            if let Step::Add(p) = s {
                made.insert(p.name(), self.make(p, config)?);
            }
        }
        // Flood destination of every VNI; VNIs whose destination changed (but whose VTEP
        // edge stays) are re-added with the new one.
        let vtep_ip = self.settings.vtep_ip;
        let floods: BTreeMap<u32, Flood> = next
            .vni_ports
            .keys()
            .map(|&v| (v, translate::flood(v, config, vtep_ip)))
            .collect();
        let relinked: BTreeSet<u32> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Link { vni, .. } | Step::Unlink { vni, .. } => *vni,
                _ => None,
            })
            .collect();
        let reflood: Vec<(u32, Flood)> = floods
            .iter()
            .filter(|(v, f)| !relinked.contains(v) && st.flood.get(v) != Some(f))
            .map(|(v, f)| (*v, f.clone()))
            .collect();
        // Settings of every NIC's firewall and antispoof (cheap; rules and addresses are
        // replaced, flows stay).
        struct NicSettings {
            id: String,
            groups: (
                Vec<String>,
                Vec<packetgraph::bricks::firewall::SecurityGroup>,
            ),
            addrs: Vec<IpAddr>,
            antispoof: Antispoof,
        }
        let nics: Vec<NicSettings> = config
            .nics
            .values()
            .filter(|n| !n.bypass_filtering)
            .map(|n| NicSettings {
                id: n.id.clone(),
                groups: translate::firewall_groups(n, config),
                addrs: n.ips.clone(),
                antispoof: translate::antispoof(n),
            })
            .collect();
        let floods2 = floods.clone();
        let result = self.exec(move |g: &mut Graph| -> Result<(), String> {
            let mut made = made;
            for s in steps {
                match s {
                    Step::Unlink { west, east, vni } => {
                        if let Some(v) = vni {
                            g.get_mut::<Vtep>(VTEP)
                                .map_err(|e| e.to_string())?
                                .remove_vni(v)
                                .map_err(|e| e.to_string())?;
                        }
                        g.unlink_edge(&west, &east).map_err(|e| e.to_string())?;
                    }
                    Step::Remove(n) => drop(g.remove(&n).map_err(|e| e.to_string())?),
                    Step::Add(p) => {
                        let name = p.name();
                        let b = made.remove(&name).ok_or("brick not made")?;
                        g.add_boxed(name, b).map_err(|e| e.to_string())?;
                    }
                    Step::Link { west, east, vni } => {
                        let (_, edge) = g.link(&west, &east).map_err(|e| e.to_string())?;
                        if let Some(v) = vni {
                            let f = floods2.get(&v).cloned().unwrap_or(Flood::None);
                            g.get_mut::<Vtep>(VTEP)
                                .map_err(|e| e.to_string())?
                                .add_vni(edge, v, f)
                                .map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
            for (v, f) in reflood {
                let vtep = g.get_mut::<Vtep>(VTEP).map_err(|e| e.to_string())?;
                let edge = vtep.remove_vni(v).map_err(|e| e.to_string())?;
                vtep.add_vni(edge, v, f).map_err(|e| e.to_string())?;
            }
            for n in nics {
                let fw = g
                    .get_mut::<Firewall>(&format!("firewall-{}", n.id))
                    .map_err(|e| e.to_string())?;
                let (ids, groups) = n.groups;
                for sg in groups {
                    fw.upsert_group(sg).map_err(|e| e.to_string())?;
                }
                fw.set_nic_groups(ids);
                fw.set_nic_addresses(n.addrs);
                let a = g
                    .get_mut::<Antispoof>(&format!("antispoof-{}", n.id))
                    .map_err(|e| e.to_string())?;
                a.set_mac(n.antispoof.mac());
                a.set_checks(n.antispoof.checks());
                a.set_ipv4(n.antispoof.ipv4());
                a.set_ipv6(n.antispoof.ipv6());
            }
            Ok(())
        })?;
        if let Err(e) = result {
            // The graph may be half-changed: remember what it is now is unknown; rebuild
            // from scratch on the next call is not possible without the bricks, so report.
            tracing::error!(error = %e, "graph edit failed");
            return Err(failed("graph edit", e));
        }
        st.topo = next;
        // Steering: join the multicast groups of the VNIs flooding to one, leave others.
        let wanted: BTreeSet<IpAddr> = floods
            .values()
            .filter_map(|f| match f {
                Flood::Multicast(g) => Some(*g),
                _ => None,
            })
            .collect();
        if let Some(s) = self
            .steering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            for g in wanted.difference(&st.groups) {
                if let Err(e) = s.join_group(*g) {
                    tracing::warn!(group = %g, error = %e, "XDP program: cannot join group");
                }
            }
            for g in st.groups.difference(&wanted) {
                let _ = s.leave_group(*g);
            }
        }
        st.groups = wanted;
        // Remote VTEPs of static flood lists: the VTEP resolves them with ARP, but the
        // replies go to the kernel (the XDP program steers only VXLAN), so their MACs
        // are taken from the kernel's neighbour table.
        let remotes: BTreeSet<IpAddr> = floods
            .values()
            .filter_map(|f| match f {
                Flood::List(l) => Some(l.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let known: Vec<(IpAddr, [u8; 6])> = remotes
            .into_iter()
            .filter(|_| self.kernel_neighbours)
            .filter_map(|ip| kernel_neighbour(ip).map(|m| (ip, m)))
            .collect();
        if !known.is_empty() {
            let _ = self.exec(move |g: &mut Graph| {
                if let Ok(v) = g.get_mut::<Vtep>(VTEP) {
                    for (ip, mac) in known {
                        if let Err(e) = v.set_neighbour(ip, mac) {
                            tracing::warn!(%ip, error = %e, "VTEP neighbour");
                        }
                    }
                }
            });
        }
        st.flood = floods;
        Ok(())
    }
}

impl Dataplane for GraphDataplane {
    fn describe(&self) -> String {
        format!(
            "{}, underlay MTU {}, VM MTU {}, 1 worker{}{}",
            self.underlay,
            self.mtu.underlay,
            self.mtu.vm,
            self.settings
                .worker_cpu
                .map(|c| format!(" pinned to CPU {c}"))
                .unwrap_or_default(),
            if self.settings.busy_poll {
                ", busy-polling"
            } else {
                ""
            }
        )
    }

    fn apply(&self, changes: &[DesiredChange], config: &Config) -> Result<(), DataplaneError> {
        tracing::debug!(changes = changes.len(), "applying");
        self.sync(config)
    }

    fn reconcile(&self, config: &Config) -> Result<(), DataplaneError> {
        self.sync(config)
    }

    fn nic_stats(&self, id: &str) -> Result<NicCounters, DataplaneError> {
        let owned = id.to_string();
        self.exec(move |g: &mut Graph| {
            let id = owned;
            let vm = g.stats(&format!("vm-{id}")).ok()?;
            let fw: Option<FirewallCounters> = g
                .get::<Firewall>(&format!("firewall-{id}"))
                .ok()
                .map(Firewall::stats);
            let a = g
                .get::<Antispoof>(&format!("antispoof-{id}"))
                .ok()
                .map(|a| *a.stats());
            Some(translate::nic_counters(&vm, fw.as_ref(), a.as_ref()))
        })?
        .ok_or_else(|| DataplaneError::Unavailable(format!("NIC {id} is not in the graph")))
    }

    fn graph_dot(&self) -> String {
        self.exec(|g: &mut Graph| {
            // The graph's dot, plus each brick's packet counters (per side, as the graph
            // counts them) as an external label.
            let dot = g.to_dot();
            let body = dot.trim_end().strip_suffix('}').unwrap_or(&dot).to_string();
            let mut out = body;
            let mut names: Vec<String> = g.names().map(String::from).collect();
            names.sort();
            for n in names {
                if let Ok(st) = g.stats(&n) {
                    // The VTEP's MTU drops too (frames too big for the underlay).
                    let extra = match g.get::<Vtep>(&n) {
                        Ok(v) => format!(
                            " / drop_too_big {}",
                            v.stats().encap_drop(EncapDrop::TooBig)
                        ),
                        Err(_) => String::new(),
                    };
                    out.push_str(&format!(
                        "  \"{n}\" [xlabel=\"W rx {} tx {} / E rx {} tx {}{extra}\"];\n",
                        st.west.rx_packets,
                        st.west.tx_packets,
                        st.east.rx_packets,
                        st.east.tx_packets
                    ));
                }
            }
            out.push_str("}\n");
            out
        })
        .unwrap_or_else(|e| format!("digraph butterfly {{\n  label=\"{e}\";\n}}\n"))
    }

    fn shutdown(&self) {
        if let Some(w) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            match w.stop() {
                Ok(g) => drop(g),
                Err(e) => tracing::warn!(error = %e, "worker stop"),
            }
        }
        // Dropping the steering program detaches it from the interface.
        let xdp = self
            .steering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some();
        if xdp {
            tracing::info!("dataplane stopped: XDP detached, sockets closed");
        } else {
            // The worker's graph is gone: a DPDK port was stopped and closed with it.
            tracing::info!("dataplane stopped: underlay port closed, sockets closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Context, NicSpec, NicUpdate, Request, RuleSpec};
    use packetgraph::bricks::Collect;
    use std::path::PathBuf;

    /// A dataplane whose underlay is a `Collect` sink (no XDP, no privileges).
    fn dataplane() -> GraphDataplane {
        let pool = Pool::new(PoolConfig {
            frame_count: 1024,
            ..PoolConfig::default()
        })
        .unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let vtep = Vtep::new(pool.clone(), VtepConfig::new(ip, [2, 0, 0, 0, 0, 1])).unwrap();
        GraphDataplane::assemble(
            GraphSettings {
                nic: "test0".into(),
                vtep_ip: ip,
                xdp_mode: XdpMode::Auto,
                nic_backend: NicBackend::Afxdp,
                dpdk_args: Vec::new(),
                dpdk_port: 0,
                mtu: None,
                worker_cpu: None,
                busy_poll: false,
                frames: 1024,
            },
            pool,
            Box::new(Collect::new()),
            vtep,
            None,
            afxdp_description("test0", AttachedMode::Generic, false),
            Mtu {
                underlay: 1500,
                vm: 1450,
            },
        )
        .unwrap()
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "bf-graph-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ctx(d: &std::path::Path) -> Context {
        Context {
            vtep_ip: "192.0.2.1".parse().unwrap(),
            vhost_socket_dir: d.join("vhost"),
            trace_dir: d.to_path_buf(),
        }
    }

    fn add(id: &str, vni: u32, n: u8, ip: &str) -> Request {
        Request::NicAdd(NicSpec {
            id: id.into(),
            mac: format!("52:54:00:00:00:{n:02x}"),
            vni,
            ips: vec![ip.into()],
            security_groups: vec!["web".into()],
            ..NicSpec::default()
        })
    }

    fn apply(dp: &GraphDataplane, c: &Config, d: &std::path::Path, reqs: &[Request]) -> Config {
        let out = c.apply_all(reqs, false, &ctx(d)).unwrap();
        dp.apply(&out.changes, &out.config).unwrap();
        out.config
    }

    fn names(dp: &GraphDataplane) -> Vec<String> {
        let mut v = dp
            .exec(|g: &mut Graph| g.names().map(String::from).collect::<Vec<_>>())
            .unwrap();
        v.sort();
        v
    }

    fn web() -> Vec<Request> {
        vec![
            Request::SgAdd { id: "web".into() },
            Request::SgRuleAdd {
                sg: "web".into(),
                rule: RuleSpec {
                    id: None,
                    direction: crate::model::Direction::In,
                    protocol: "icmp".into(),
                    port_start: None,
                    port_end: None,
                    cidr: Some("0.0.0.0/0".into()),
                    sg_members: None,
                },
            },
        ]
    }

    #[test]
    fn builds_the_chains_inserts_and_removes_the_switch() {
        let dp = dataplane();
        let d = dir();
        let c = apply(&dp, &Config::default(), &d, &web());
        let c = apply(&dp, &c, &d, &[add("a", 42, 1, "10.0.0.1")]);
        assert_eq!(
            names(&dp),
            ["antispoof-a", "firewall-a", "underlay", "vm-a", "vtep"]
        );
        assert!(d.join("vhost/a.sock").exists(), "vhost-user socket of a");
        let mtu = dp
            .exec(|g: &mut Graph| g.get::<Vhost>("vm-a").unwrap().mtu())
            .unwrap();
        assert_eq!(mtu, Some(1450), "vhost-user NIC advertises the VM MTU");
        let c = apply(&dp, &c, &d, &[add("b", 42, 2, "10.0.0.2")]);
        assert!(names(&dp).contains(&"switch-42".to_string()));
        let dot = dp.graph_dot();
        assert!(dot.contains("\"switch-42\" -> \"vtep\""), "{dot}");
        assert!(dot.contains("\"vtep\" [xlabel=\"W rx 0 tx "), "{dot}");
        assert!(
            dot.ends_with("}\n") && dot.matches('}').count() == 1,
            "{dot}"
        );
        let vni_edges = dp
            .exec(|g: &mut Graph| {
                let v = g.get::<Vtep>(VTEP).unwrap();
                (v.edge_of_vni(42), v.groups().to_vec())
            })
            .unwrap();
        assert!(vni_edges.0.is_some(), "VNI 42 has a VTEP edge");
        assert_eq!(
            vni_edges.1.iter().map(|g| g.0).collect::<Vec<_>>(),
            ["230.0.0.42".parse::<IpAddr>().unwrap()],
            "VNI 42 floods to its multicast group"
        );
        // Firewall settings reached the brick.
        let groups = dp
            .exec(|g: &mut Graph| {
                g.get::<Firewall>("firewall-b")
                    .unwrap()
                    .nic_groups()
                    .to_vec()
            })
            .unwrap();
        assert_eq!(groups, ["web"]);
        let c = apply(&dp, &c, &d, &[Request::NicDel { id: "b".into() }]);
        assert_eq!(
            names(&dp),
            ["antispoof-a", "firewall-a", "underlay", "vm-a", "vtep"]
        );
        assert!(dp.graph_dot().contains("\"firewall-a\" -> \"vtep\""));
        // A static flood list replaces the multicast group.
        apply(
            &dp,
            &c,
            &d,
            &[Request::FloodAdd {
                vni: 42,
                vtep: "192.0.2.7".into(),
            }],
        );
        let groups = dp
            .exec(|g: &mut Graph| g.get::<Vtep>(VTEP).unwrap().groups().len())
            .unwrap();
        assert_eq!(groups, 0, "group left when the flood list took over");
        let st = dp.nic_stats("a").unwrap();
        assert_eq!(st, NicCounters::default());
        assert!(matches!(
            dp.nic_stats("zz"),
            Err(DataplaneError::Unavailable(_))
        ));
        dp.shutdown();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bypass_and_trace_rebuild_the_chain_and_keep_the_vm_end() {
        let dp = dataplane();
        let d = dir();
        let c = apply(&dp, &Config::default(), &d, &web());
        let c = apply(&dp, &c, &d, &[add("a", 42, 1, "10.0.0.1")]);
        apply(
            &dp,
            &c,
            &d,
            &[Request::NicUpdate(NicUpdate {
                id: "a".into(),
                bypass_filtering: Some(true),
                packet_trace: Some(true),
                ..NicUpdate::default()
            })],
        );
        assert_eq!(names(&dp), ["sniffer-a", "underlay", "vm-a", "vtep"]);
        assert!(d.join("a.pcap").exists(), "trace file created");
        dp.shutdown();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_brick_that_cannot_be_created_changes_nothing() {
        let dp = dataplane();
        let d = dir();
        let c = apply(&dp, &Config::default(), &d, &web());
        let before = dp.graph_dot();
        let bad = Request::NicAdd(NicSpec {
            id: "a".into(),
            mac: "52:54:00:00:00:01".into(),
            vni: 42,
            socket_path: Some("/proc/no-such-dir/a.sock".into()),
            ..NicSpec::default()
        });
        let out = c.apply_all(&[bad], false, &ctx(&d)).unwrap();
        let err = dp.apply(&out.changes, &out.config).unwrap_err();
        assert!(
            matches!(&err, DataplaneError::Refused { field, .. } if field == "socket_path"),
            "{err}"
        );
        assert_eq!(dp.graph_dot(), before, "graph untouched");
        // The dataplane still takes the next change.
        apply(&dp, &c, &d, &[add("b", 42, 2, "10.0.0.2")]);
        assert!(names(&dp).contains(&"vm-b".to_string()));
        dp.shutdown();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn mtu_is_asked_or_the_links_never_above_it_and_vms_get_50_or_70_less() {
        let pool = Pool::new(PoolConfig {
            frame_count: 16,
            ..PoolConfig::default()
        })
        .unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let r = |asked, link, ip| Mtu::resolve(asked, link, "interface eth0", ip, &pool);
        assert_eq!(
            r(None, 1500, v4).unwrap(),
            Mtu {
                underlay: 1500,
                vm: 1450
            }
        );
        assert_eq!(r(None, 1500, v6).unwrap().vm, 1430);
        assert_eq!(r(Some(1400,), 1500, v4).unwrap().vm, 1350);
        let e = r(Some(1600), 1500, v4).unwrap_err().to_string();
        assert!(
            e.contains("--mtu 1600: the underlay interface eth0 has MTU 1500"),
            "{e}"
        );
        assert!(r(None, 1000, v4).is_err(), "below 1280");
        // Jumbo links: capped by what a frame of the pool holds (2048 − 256 − 14).
        assert_eq!(r(None, 9000, v4).unwrap().underlay, 1778);
    }

    #[test]
    fn describe_names_the_interface_and_mode() {
        let dp = dataplane();
        assert_eq!(
            dp.describe(),
            "AF_XDP on test0 (generic, copy mode), underlay MTU 1500, VM MTU 1450, 1 worker"
        );
        dp.shutdown();
        assert!(matches!(
            dp.nic_stats("a"),
            Err(DataplaneError::Unavailable(_))
        ));
    }
}
