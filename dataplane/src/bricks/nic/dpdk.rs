//! DPDK backend of the [`Nic`](super::Nic) brick: one RX/TX queue pair of one DPDK
//! ethdev port (a physical NIC bound to vfio-pci, or a virtual device such as
//! `net_af_packet`, `net_tap`, `net_af_xdp`), polled in the graph's worker thread.
//! Built only with the `dpdk` cargo feature (crate `dpdk-sys`, DPDK 22.11).
//!
//! - **EAL**: [`eal_init`] initialises DPDK's Environment Abstraction Layer once per
//!   process with the given arguments (`--no-huge -m 512 --no-pci --vdev ...`). The EAL
//!   cannot be initialised twice: a second call with the same arguments is a no-op, with
//!   other arguments it is [`DpdkError::EalArgsMismatch`]; a failed init stays failed (the
//!   same error comes back). `rte_eal_init` pins the calling thread to the main lcore; the
//!   thread's CPU affinity is restored afterwards. Poll-mode drivers are loaded by the EAL
//!   as plugins from Debian's plugin directory (`pmds-23.0`): no `-d` is needed.
//! - **Port**: [`Dpdk::open`] configures the port with one RX and one TX queue (sizes
//!   adjusted to the driver's limits), an mbuf pool of its own, optional MTU and
//!   promiscuous mode, and starts it. Dropping the backend stops and closes the port and
//!   frees the mbuf pool.
//! - **Frames**: received mbufs are copied into frames of the engine's [`Pool`] and freed
//!   at once (one copy, all segments); transmitted packets are copied into mbufs of the
//!   port's pool (one copy). Zero-copy (external mbuf buffers over the engine's frames)
//!   is not done. Measured by the `dpdk` bench on a `net_null` port (64-byte frames, per
//!   CPU-second of the forwarding thread, shared 2-core machine under load, three runs):
//!   raw RX→TX bursts 34–41 Mpps, through this backend 11.2–13.3 Mpps (53–60 ns per
//!   frame more than raw). Transmitted frames go back to the engine's pool in one lock
//!   per burst (they were released one by one: 8.8–9.1 Mpps, ~76 ns more than raw, with
//!   `PoolInner::release` the top symbol at 14% in perf), and fresh mbufs are not reset a
//!   second time before the copy. What is left is DPDK's own mbuf alloc/free and the
//!   driver; the two memcpys are ~5% of samples. On a veth `net_af_xdp` port the kernel
//!   dominates and the copies do not show.
//! - **Checksums**: with [`DpdkConfig::tx_checksum`], the IPv4 header checksum and the
//!   UDP/TCP checksums (over IPv4 and IPv6, RFC 768/793 with the pseudo-headers of RFC
//!   768 and RFC 8200 §8.1) of transmitted frames are filled: by the port when it offers
//!   `RTE_ETH_TX_OFFLOAD_{IPV4,UDP,TCP}_CKSUM`, in software ([`crate::wire::checksum`])
//!   otherwise. Counted as `tx_csum_offloaded` / `tx_csum_software`.
//! - **Threads**: the first burst call of a thread registers it with the EAL
//!   (`rte_thread_register`) so mempool per-lcore caches are used.

use std::cell::Cell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use dpdk_sys as sys;

use super::NicBackend;
use crate::burst::{BURST_SIZE, Burst};
use crate::error::BrickError;
use crate::packet::Pool;
use crate::wire::checksum;
use crate::wire::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, IP_PROTO_UDP};

/// IP protocol number of TCP.
const IP_PROTO_TCP: u8 = 6;
/// EtherType of an IEEE 802.1Q VLAN tag.
const ETHERTYPE_VLAN: u16 = 0x8100;

/// Errors of the EAL and of DPDK ports. Each message says what failed, with what, and
/// the usual fix.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DpdkError {
    /// `rte_eal_init` failed; `errno` is `rte_errno`, `hint` the likely cause.
    #[error("rte_eal_init({args:?}) failed: {name} ({message}): {hint}")]
    EalInit {
        /// The arguments given (without the program name).
        args: Vec<String>,
        /// `rte_errno` value.
        errno: i32,
        /// Its symbolic name (`"EACCES"`).
        name: &'static str,
        /// `rte_strerror(errno)`.
        message: String,
        /// What usually causes it and how to fix it.
        hint: &'static str,
    },
    /// The EAL was already initialised in this process with other arguments.
    #[error(
        "the DPDK EAL is initialised once per process: it already runs with {first:?}, \
         cannot re-initialise with {asked:?}"
    )]
    EalArgsMismatch {
        /// Arguments of the first (successful) initialisation.
        first: Vec<String>,
        /// Arguments of this call.
        asked: Vec<String>,
    },
    /// A port was opened before [`eal_init`].
    #[error("the DPDK EAL is not initialised: call eal_init first")]
    EalNotInitialised,
    /// An EAL argument contains a NUL byte.
    #[error("EAL argument {0:?} contains a NUL byte")]
    BadArgument(String),
    /// No ethdev port has this name (the device did not probe).
    #[error(
        "no DPDK port named '{name}' (ports: {available:?}): the device did not probe; check \
         its devargs (--vdev/-a: driver name, iface=... exists in this network namespace) \
         and the EAL log above"
    )]
    NoPort {
        /// Name asked for (`"net_af_packet0"`).
        name: String,
        /// Names of the ports that exist.
        available: Vec<String>,
    },
    /// Hot-plugging a device (`rte_dev_probe`) failed.
    #[error(
        "rte_dev_probe({devargs:?}) failed: {message} (errno {errno}): unknown driver or bad \
         devargs (see the EAL log above)"
    )]
    Probe {
        /// The devargs string.
        devargs: String,
        /// Negative return value, as a positive errno.
        errno: i32,
        /// `rte_strerror(errno)`.
        message: String,
    },
    /// An ethdev call on a port failed.
    #[error("{op} on DPDK port {port} ({name}): {message} (errno {errno})")]
    Port {
        /// The call (`"rte_eth_dev_configure"`).
        op: &'static str,
        /// Port id.
        port: u16,
        /// Port name.
        name: String,
        /// errno (from the negative return value or `rte_errno`).
        errno: i32,
        /// `rte_strerror(errno)`.
        message: String,
    },
    /// The mbuf pool could not be created.
    #[error(
        "cannot create mbuf pool '{name}' of {mbufs} mbufs: {message} (errno {errno}): \
         not enough DPDK memory: raise -m/--socket-mem or reserve more hugepages"
    )]
    Mempool {
        /// Pool name.
        name: String,
        /// Number of mbufs asked for.
        mbufs: u32,
        /// `rte_errno`.
        errno: i32,
        /// `rte_strerror(errno)`.
        message: String,
    },
    /// The configuration cannot be applied; the text says which field and why.
    #[error("invalid DPDK configuration: {0}")]
    Config(String),
}

impl From<DpdkError> for BrickError {
    fn from(e: DpdkError) -> BrickError {
        BrickError::State(e.to_string())
    }
}

/// `rte_strerror(errno)` as a `String`.
fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a NUL-terminated static or per-lcore string.
    unsafe { CStr::from_ptr(sys::rte_strerror(errno)) }
        .to_string_lossy()
        .into_owned()
}

/// The symbolic name and usual cause of an `rte_eal_init` failure (from the errno list
/// of `rte_eal.h`).
fn eal_errno_hint(errno: i32) -> (&'static str, &'static str) {
    match errno {
        libc::EACCES => (
            "EACCES",
            "permission denied or no hugepage information: run as root (or with \
             CAP_SYS_ADMIN, CAP_IPC_LOCK and CAP_NET_RAW), mount hugetlbfs and reserve \
             hugepages (echo 512 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages), \
             or run without hugepages: --no-huge -m 512",
        ),
        libc::ENOMEM => (
            "ENOMEM",
            "not enough memory: too few free hugepages for -m/--socket-mem (reserve more, \
             or use --no-huge -m 512)",
        ),
        libc::ENODEV => (
            "ENODEV",
            "no such device: a --vdev/-a names a driver that does not exist (check the \
             name: net_af_packet0, net_tap0, net_af_xdp0...), or memory setup failed \
             (--in-memory with --no-huge, which DPDK refuses)",
        ),
        libc::EINVAL => (
            "EINVAL",
            "invalid EAL arguments (an unknown option or a bad value: see the EAL log above)",
        ),
        libc::EALREADY => (
            "EALREADY",
            "the EAL was already initialised in this process (outside of eal_init)",
        ),
        libc::EAGAIN => (
            "EAGAIN",
            "a bus or system resource was not available (another DPDK process with the \
             same --file-prefix? use a unique --file-prefix or --no-shconf)",
        ),
        libc::ENOTSUP => (
            "ENOTSUP",
            "the EAL cannot initialise on this system (or device probing failed)",
        ),
        libc::EPROTO => (
            "EPROTO",
            "the PCI bus is not present or not readable: add --no-pci when no PCI device \
             is used",
        ),
        libc::EFAULT => (
            "EFAULT",
            "a tailq configuration was not found (mixed DPDK library versions?)",
        ),
        libc::ENOEXEC => ("ENOEXEC", "a service core failed to launch"),
        _ => ("unknown", "see the EAL log above"),
    }
}

type EalState = Result<Vec<String>, DpdkError>;

/// The process-wide EAL state: the arguments of the one `rte_eal_init` call and its
/// outcome.
static EAL: OnceLock<EalState> = OnceLock::new();

/// Initialises DPDK's EAL with `args` (without the program name; e.g. `["--no-huge",
/// "-m", "512", "--no-pci", "--no-shconf", "--vdev", "net_tap0"]`), once per process.
///
/// Calling it again with the same arguments returns `Ok` without doing anything.
/// The calling thread's CPU affinity is kept (the EAL pins it to the main lcore; it is
/// set back). Devices named by `--vdev` are probed in the calling thread's network
/// namespace.
///
/// # Errors
/// [`DpdkError::EalInit`] (with `rte_errno` and a hint: hugepages, permissions, bad
/// arguments), [`DpdkError::EalArgsMismatch`] when already initialised with other
/// arguments, [`DpdkError::BadArgument`].
pub fn eal_init<S: AsRef<str>>(args: &[S]) -> Result<(), DpdkError> {
    let asked: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    if let Some(a) = asked.iter().find(|a| a.contains('\0')) {
        return Err(DpdkError::BadArgument(a.clone()));
    }
    let state = EAL.get_or_init(|| init_once(&asked));
    match state {
        Ok(first) if *first == asked => Ok(()),
        Ok(first) => Err(DpdkError::EalArgsMismatch {
            first: first.clone(),
            asked,
        }),
        Err(e) => Err(e.clone()),
    }
}

/// The arguments the EAL was initialised with, if [`eal_init`] succeeded.
pub fn eal_args() -> Option<&'static [String]> {
    match EAL.get() {
        Some(Ok(a)) => Some(a.as_slice()),
        _ => None,
    }
}

fn eal_ready() -> Result<(), DpdkError> {
    match EAL.get() {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e.clone()),
        None => Err(DpdkError::EalNotInitialised),
    }
}

fn init_once(args: &[String]) -> EalState {
    // argv lives for the whole process: the EAL may keep pointers into it.
    let mut argv: Vec<*mut c_char> = std::iter::once("butterfly")
        .chain(args.iter().map(String::as_str))
        .map(|a| CString::new(a).expect("checked for NUL").into_raw())
        .collect();
    let argc = argv.len() as c_int;
    argv.push(std::ptr::null_mut());
    let argv: &'static mut [*mut c_char] = argv.leak();

    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut cpus: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpus is a writable cpu_set_t of the size passed.
    let have_cpus =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut cpus) }
            == 0;
    // SAFETY: argv is a NULL-terminated array of argc valid C strings that outlives the
    // process; the EAL is initialised once (guarded by the OnceLock).
    let r = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
    // SAFETY: reads the calling thread's rte_errno.
    let errno = unsafe { sys::bf_errno() };
    if have_cpus {
        // SAFETY: cpus is the set read above.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus) };
    }
    if r < 0 {
        let (name, hint) = eal_errno_hint(errno);
        return Err(DpdkError::EalInit {
            args: args.to_vec(),
            errno,
            name,
            message: strerror(errno),
            hint,
        });
    }
    tracing::info!(?args, "DPDK EAL initialised");
    Ok(args.to_vec())
}

/// Hot-plugs a device (`rte_dev_probe`), e.g. `"net_af_packet1,iface=veth0"`, in the
/// calling thread's network namespace. Its port name is the part before the comma.
///
/// # Errors
/// [`DpdkError::EalNotInitialised`], [`DpdkError::Probe`], [`DpdkError::BadArgument`].
pub fn probe(devargs: &str) -> Result<(), DpdkError> {
    eal_ready()?;
    let c = CString::new(devargs).map_err(|_| DpdkError::BadArgument(devargs.to_string()))?;
    // SAFETY: c is a valid C string; the EAL is initialised.
    let r = unsafe { sys::rte_dev_probe(c.as_ptr()) };
    if r < 0 {
        return Err(DpdkError::Probe {
            devargs: devargs.to_string(),
            errno: -r,
            message: strerror(-r),
        });
    }
    Ok(())
}

/// Names of the ethdev ports that exist (`"net_tap0"`...).
pub fn port_names() -> Vec<String> {
    let mut v = Vec::new();
    if eal_ready().is_err() {
        return v;
    }
    for port in 0..sys::RTE_MAX_ETHPORTS as u16 {
        // SAFETY: any port id may be asked about once the EAL runs.
        if unsafe { sys::rte_eth_dev_is_valid_port(port) } == 1 {
            v.push(port_name(port));
        }
    }
    v
}

fn port_name(port: u16) -> String {
    let mut buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: buf has RTE_ETH_NAME_MAX_LEN bytes, as the function requires.
    if unsafe { sys::rte_eth_dev_get_name_by_port(port, buf.as_mut_ptr()) } != 0 {
        return format!("port{port}");
    }
    // SAFETY: the function wrote a NUL-terminated name into buf.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Which port to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortId {
    /// By ethdev name (`"net_af_packet0"`, or a PCI address `"0000:01:00.0"`).
    Name(String),
    /// By port id (0-based, in probe order).
    Id(u16),
}

/// How to open a [`Dpdk`] port.
#[derive(Debug, Clone)]
pub struct DpdkConfig {
    /// The port.
    pub port: PortId,
    /// RX descriptors (rounded to the driver's limits; default 1024).
    pub rx_desc: u16,
    /// TX descriptors (rounded to the driver's limits; default 1024).
    pub tx_desc: u16,
    /// mbufs in the port's pool (default 4095; at least `rx_desc + tx_desc + 2 *
    /// BURST_SIZE` are needed).
    pub mbufs: u32,
    /// Per-lcore mbuf cache size (default 256; at most 512).
    pub mbuf_cache: u32,
    /// MTU to set, in bytes (default: the port's).
    pub mtu: Option<u16>,
    /// Receive frames for any destination MAC (default true: the brick is a switch port).
    pub promiscuous: bool,
    /// Fill IPv4/UDP/TCP checksums of transmitted frames (offload or software; default
    /// false: frames go out as the graph made them).
    pub tx_checksum: bool,
}

impl DpdkConfig {
    /// Defaults for `port`.
    pub fn new(port: PortId) -> DpdkConfig {
        DpdkConfig {
            port,
            rx_desc: 1024,
            tx_desc: 1024,
            mbufs: 4095,
            mbuf_cache: 256,
            mtu: None,
            promiscuous: true,
            tx_checksum: false,
        }
    }
}

/// Link state (`rte_eth_link`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Carrier up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Port counters from the driver (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub ipackets: u64,
    /// Frames sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Frames dropped by the device (RX queue full).
    pub imissed: u64,
    /// Erroneous received frames.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// Counters of the backend itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    rx_packets: u64,
    rx_bytes: u64,
    rx_pool_empty: u64,
    rx_too_big: u64,
    tx_packets: u64,
    tx_bytes: u64,
    tx_no_mbuf: u64,
    tx_too_big: u64,
    tx_full: u64,
    tx_csum_offloaded: u64,
    tx_csum_software: u64,
}

static POOL_SEQ: AtomicU32 = AtomicU32::new(0);

/// A thread's EAL registration, undone when the thread exits (so a daemon that restarts
/// worker threads does not run out of lcore ids, `RTE_MAX_LCORE`).
struct Registration(bool);

impl Drop for Registration {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: this thread registered itself with rte_thread_register.
            unsafe { sys::rte_thread_unregister() };
        }
    }
}

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static REGISTRATION: std::cell::RefCell<Registration> =
        const { std::cell::RefCell::new(Registration(false)) };
}

/// The DPDK backend: queue 0 (RX and TX) of one started port.
pub struct Dpdk {
    port: u16,
    name: String,
    pool: Pool,
    mempool: *mut sys::rte_mempool,
    /// `bf_csum` bits the port computes for us (empty without `tx_checksum`).
    csum_offload: u32,
    tx_checksum: bool,
    /// Largest frame an mbuf of the pool holds, in bytes.
    max_tx_len: usize,
    c: Counters,
}

// SAFETY: the port and mempool pointers are only used through `&mut self` (one thread at
// a time); DPDK allows a queue to move between threads as long as one uses it at once.
unsafe impl Send for Dpdk {}

impl Dpdk {
    /// Configures and starts `cfg.port` with one RX and one TX queue. Frames received
    /// are copied into frames of `pool`.
    ///
    /// # Errors
    /// [`DpdkError::EalNotInitialised`], [`DpdkError::NoPort`], [`DpdkError::Mempool`],
    /// [`DpdkError::Port`] (configure, queue setup, MTU, start), [`DpdkError::Config`].
    pub fn open(cfg: &DpdkConfig, pool: &Pool) -> Result<Dpdk, DpdkError> {
        eal_ready()?;
        let port = match &cfg.port {
            PortId::Id(id) => {
                // SAFETY: the EAL runs.
                if unsafe { sys::rte_eth_dev_is_valid_port(*id) } != 1 {
                    return Err(DpdkError::NoPort {
                        name: format!("port{id}"),
                        available: port_names(),
                    });
                }
                *id
            }
            PortId::Name(n) => {
                let c = CString::new(n.as_str()).map_err(|_| DpdkError::BadArgument(n.clone()))?;
                let mut id = 0u16;
                // SAFETY: c is a valid C string; id is writable.
                if unsafe { sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) } != 0 {
                    return Err(DpdkError::NoPort {
                        name: n.clone(),
                        available: port_names(),
                    });
                }
                id
            }
        };
        let name = port_name(port);
        if cfg.mbuf_cache > 512 {
            return Err(DpdkError::Config(format!(
                "mbuf_cache = {} must be at most 512 (RTE_MEMPOOL_CACHE_MAX_SIZE)",
                cfg.mbuf_cache
            )));
        }
        let need = u32::from(cfg.rx_desc) + u32::from(cfg.tx_desc) + 2 * BURST_SIZE as u32;
        if cfg.mbufs < need {
            return Err(DpdkError::Config(format!(
                "mbufs = {} is fewer than rx_desc + tx_desc + 2 bursts = {need}",
                cfg.mbufs
            )));
        }
        let port_err = |op: &'static str, errno: i32| DpdkError::Port {
            op,
            port,
            name: name.clone(),
            errno,
            message: strerror(errno),
        };

        // SAFETY: rte_eth_dev_info is plain data; the call fills it.
        let mut info: sys::rte_eth_dev_info = unsafe { std::mem::zeroed() };
        // SAFETY: valid port, writable info.
        let r = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
        if r != 0 {
            return Err(port_err("rte_eth_dev_info_get", -r));
        }
        let csum_offload = if cfg.tx_checksum {
            // SAFETY: pure bit mapping.
            (unsafe { sys::bf_tx_csum_capa(info.tx_offload_capa) }) as u32
        } else {
            0
        };

        // SAFETY: rte_eth_conf is plain data; all-zero is its documented default.
        let mut conf: sys::rte_eth_conf = unsafe { std::mem::zeroed() };
        if let Some(mtu) = cfg.mtu {
            if mtu < info.min_mtu || mtu > info.max_mtu {
                return Err(DpdkError::Config(format!(
                    "mtu = {mtu} is outside the port's range {}..={}",
                    info.min_mtu, info.max_mtu
                )));
            }
            conf.rxmode.mtu = u32::from(mtu);
        }
        // SAFETY: pure bit mapping.
        conf.txmode.offloads = unsafe { sys::bf_tx_offloads(csum_offload as c_int) };
        // SAFETY: valid port and conf; the port is not started.
        let r = unsafe { sys::rte_eth_dev_configure(port, 1, 1, &conf) };
        if r != 0 {
            return Err(port_err("rte_eth_dev_configure", -r));
        }
        let (mut nb_rx, mut nb_tx) = (cfg.rx_desc, cfg.tx_desc);
        // SAFETY: valid port, writable counts.
        let r = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut nb_rx, &mut nb_tx) };
        if r != 0 {
            return Err(port_err("rte_eth_dev_adjust_nb_rx_tx_desc", -r));
        }

        // SAFETY: valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port) };
        let pool_name = format!(
            "bf{}_{}",
            port,
            POOL_SEQ.fetch_add(1, Ordering::Relaxed) // names are unique per process
        );
        let c_pool = CString::new(pool_name.as_str()).expect("no NUL");
        // SAFETY: valid name; the EAL runs. The data room is DPDK's default (2 KiB + headroom).
        let mempool = unsafe {
            sys::rte_pktmbuf_pool_create(
                c_pool.as_ptr(),
                cfg.mbufs,
                cfg.mbuf_cache,
                0,
                sys::bf_mbuf_default_buf_size(),
                socket,
            )
        };
        if mempool.is_null() {
            // SAFETY: reads rte_errno of this thread.
            let errno = unsafe { sys::bf_errno() };
            return Err(DpdkError::Mempool {
                name: pool_name,
                mbufs: cfg.mbufs,
                errno,
                message: strerror(errno),
            });
        }
        // From here on, Drop stops/closes the port and frees the pool.
        let mut me = Dpdk {
            port,
            name: name.clone(),
            pool: pool.clone(),
            mempool,
            csum_offload,
            tx_checksum: cfg.tx_checksum,
            // SAFETY: constants.
            max_tx_len: unsafe {
                usize::from(sys::bf_mbuf_default_buf_size())
                    - usize::from(sys::bf_pktmbuf_headroom_default())
            },
            c: Counters::default(),
        };
        let mut txconf = info.default_txconf;
        txconf.offloads = conf.txmode.offloads;
        // SAFETY: valid port, configured with 1 RX/1 TX queue; default rxconf; mempool live.
        let r = unsafe {
            sys::rte_eth_rx_queue_setup(port, 0, nb_rx, socket as u32, std::ptr::null(), mempool)
        };
        if r != 0 {
            me.close_port(false);
            return Err(port_err("rte_eth_rx_queue_setup", -r));
        }
        // SAFETY: as above.
        let r = unsafe { sys::rte_eth_tx_queue_setup(port, 0, nb_tx, socket as u32, &txconf) };
        if r != 0 {
            me.close_port(false);
            return Err(port_err("rte_eth_tx_queue_setup", -r));
        }
        // SAFETY: valid, configured port.
        let r = unsafe { sys::rte_eth_dev_start(port) };
        if r != 0 {
            me.close_port(false);
            return Err(port_err("rte_eth_dev_start", -r));
        }
        if cfg.promiscuous {
            // SAFETY: valid started port. Failure (driver without it) is logged only.
            let r = unsafe { sys::rte_eth_promiscuous_enable(port) };
            if r != 0 {
                tracing::warn!(port, name, "promiscuous mode: {}", strerror(-r));
            }
        }
        tracing::info!(port, name, nb_rx, nb_tx, csum_offload, "DPDK port started");
        Ok(me)
    }

    /// Stops (if started) and closes the port, frees the mempool.
    fn close_port(&mut self, started: bool) {
        if self.mempool.is_null() {
            return;
        }
        // SAFETY: valid port owned by this backend; queues are released by close, which
        // frees the mbufs they held before the pool is freed.
        unsafe {
            if started {
                sys::rte_eth_dev_stop(self.port);
            }
            sys::rte_eth_dev_close(self.port);
            sys::rte_mempool_free(self.mempool);
        }
        self.mempool = std::ptr::null_mut();
    }

    /// The port id.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port name (`"net_tap0"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port's MAC address.
    ///
    /// # Errors
    /// [`DpdkError::Port`].
    pub fn mac(&self) -> Result<[u8; 6], DpdkError> {
        let mut a = sys::rte_ether_addr::default();
        // SAFETY: valid port, writable address.
        let r = unsafe { sys::rte_eth_macaddr_get(self.port, &mut a) };
        if r != 0 {
            return Err(self.err("rte_eth_macaddr_get", -r));
        }
        Ok(a.addr_bytes)
    }

    /// The port's MTU in bytes.
    ///
    /// # Errors
    /// [`DpdkError::Port`].
    pub fn mtu(&self) -> Result<u16, DpdkError> {
        let mut m = 0u16;
        // SAFETY: valid port, writable u16.
        let r = unsafe { sys::rte_eth_dev_get_mtu(self.port, &mut m) };
        if r != 0 {
            return Err(self.err("rte_eth_dev_get_mtu", -r));
        }
        Ok(m)
    }

    /// Sets the port's MTU in bytes.
    ///
    /// # Errors
    /// [`DpdkError::Port`] (EINVAL when outside the driver's range, ENOTSUP).
    pub fn set_mtu(&mut self, mtu: u16) -> Result<(), DpdkError> {
        // SAFETY: valid port.
        let r = unsafe { sys::rte_eth_dev_set_mtu(self.port, mtu) };
        if r != 0 {
            return Err(self.err("rte_eth_dev_set_mtu", -r));
        }
        Ok(())
    }

    /// The link state, without waiting for autonegotiation.
    ///
    /// # Errors
    /// [`DpdkError::Port`].
    pub fn link(&self) -> Result<LinkState, DpdkError> {
        let mut l = sys::rte_eth_link::default();
        // SAFETY: valid port, writable link.
        let r = unsafe { sys::rte_eth_link_get_nowait(self.port, &mut l) };
        if r != 0 {
            return Err(self.err("rte_eth_link_get_nowait", -r));
        }
        Ok(LinkState {
            // SAFETY: reads bitfields of l.
            up: unsafe { sys::bf_link_up(&l) } != 0,
            speed_mbps: l.link_speed,
            // SAFETY: as above.
            full_duplex: unsafe { sys::bf_link_full_duplex(&l) } != 0,
        })
    }

    /// The driver's counters.
    ///
    /// # Errors
    /// [`DpdkError::Port`].
    pub fn port_stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: valid port, writable stats.
        let r = unsafe { sys::rte_eth_stats_get(self.port, &mut s) };
        if r != 0 {
            return Err(self.err("rte_eth_stats_get", -r));
        }
        Ok(PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// True when the port computes (some) TX checksums for us.
    pub fn tx_checksum_offloaded(&self) -> bool {
        self.csum_offload != 0
    }

    /// mbufs of the port's pool not in use (diagnostics: leaks show here).
    pub fn mbufs_available(&self) -> u32 {
        // SAFETY: the mempool is live.
        unsafe { sys::rte_mempool_avail_count(self.mempool) }
    }

    fn err(&self, op: &'static str, errno: i32) -> DpdkError {
        DpdkError::Port {
            op,
            port: self.port,
            name: self.name.clone(),
            errno,
            message: strerror(errno),
        }
    }

    /// Prepares one frame's checksums in mbuf `m` whose data is `data`: software or
    /// offload per [`Self::csum_offload`].
    fn fill_checksums(&mut self, m: *mut sys::rte_mbuf, data: &mut [u8]) {
        let Some(h) = Headers::parse(data) else {
            return;
        };
        let offload = h.needs() & self.csum_offload;
        let software = h.needs() & !self.csum_offload;
        if software != 0 {
            h.fill_software(data, software);
            self.c.tx_csum_software += 1;
        }
        if offload != 0 {
            h.prepare_offload(data, offload);
            let l3 = if h.v4 {
                sys::BF_L3_IPV4
            } else {
                sys::BF_L3_IPV6
            };
            // SAFETY: m is our mbuf holding `data`; sets offload fields only.
            unsafe {
                sys::bf_mbuf_tx_csum(
                    m,
                    h.l2_len as u16,
                    h.l3_len as u16,
                    l3 as c_int,
                    offload as c_int,
                )
            };
            self.c.tx_csum_offloaded += 1;
        }
    }
}

/// Where the IP and UDP/TCP headers of a frame are, for checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Headers {
    l2_len: usize,
    l3_len: usize,
    v4: bool,
    /// `IP_PROTO_UDP` / `IP_PROTO_TCP` when the L4 checksum can be computed (whole
    /// segment present, not a fragment), else 0.
    l4: u8,
    /// L4 length (header + payload), in bytes.
    l4_len: usize,
}

impl Headers {
    /// Parses Ethernet (one optional 802.1Q tag), IPv4 (RFC 791) or IPv6 (RFC 8200; no
    /// extension headers) and checks lengths. `None` for anything else or truncated.
    fn parse(f: &[u8]) -> Option<Headers> {
        let be16 =
            |o: usize| -> Option<u16> { Some(u16::from_be_bytes([*f.get(o)?, *f.get(o + 1)?])) };
        let (l2_len, ethertype) = match be16(12)? {
            ETHERTYPE_VLAN => (18, be16(16)?),
            t => (14, t),
        };
        let ip = f.get(l2_len..)?;
        match ethertype {
            ETHERTYPE_IPV4 => {
                let ihl = usize::from(*ip.first()? & 0x0f) * 4;
                let total = usize::from(be16(l2_len + 2)?);
                if *ip.first()? >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() {
                    return None;
                }
                let frag = be16(l2_len + 6)? & 0x3fff; // MF flag + fragment offset
                let proto = ip[9];
                let l4_len = total - ihl;
                let l4 = if frag == 0 && l4_ok(proto, l4_len) {
                    proto
                } else {
                    0
                };
                Some(Headers {
                    l2_len,
                    l3_len: ihl,
                    v4: true,
                    l4,
                    l4_len,
                })
            }
            ETHERTYPE_IPV6 => {
                let payload = usize::from(be16(l2_len + 4)?);
                if ip.len() < 40 || *ip.first()? >> 4 != 6 || 40 + payload > ip.len() {
                    return None;
                }
                let proto = ip[6];
                if !l4_ok(proto, payload) {
                    return None;
                }
                Some(Headers {
                    l2_len,
                    l3_len: 40,
                    v4: false,
                    l4: proto,
                    l4_len: payload,
                })
            }
            _ => None,
        }
    }

    /// `bf_csum` bits this frame needs.
    fn needs(&self) -> u32 {
        let mut n = 0;
        if self.v4 {
            n |= sys::BF_CSUM_IPV4;
        }
        match self.l4 {
            IP_PROTO_UDP => n |= sys::BF_CSUM_UDP,
            IP_PROTO_TCP => n |= sys::BF_CSUM_TCP,
            _ => {}
        }
        n
    }

    /// Offset of the L4 checksum field.
    fn l4_csum_at(&self) -> usize {
        let l4 = self.l2_len + self.l3_len;
        if self.l4 == IP_PROTO_UDP {
            l4 + 6
        } else {
            l4 + 16
        }
    }

    /// Unfolded pseudo-header sum (RFC 768 / RFC 8200 §8.1).
    fn pseudo(&self, f: &[u8]) -> u64 {
        let ip = &f[self.l2_len..];
        if self.v4 {
            let a = |o: usize| [ip[o], ip[o + 1], ip[o + 2], ip[o + 3]];
            checksum::pseudo_header_v4(a(12), a(16), self.l4, self.l4_len as u16)
        } else {
            let src: &[u8; 16] = ip[8..24].try_into().expect("16 bytes");
            let dst: &[u8; 16] = ip[24..40].try_into().expect("16 bytes");
            checksum::pseudo_header_v6(src, dst, self.l4, self.l4_len as u32)
        }
    }

    /// Computes the checksums `which` (bf_csum bits) in place.
    fn fill_software(&self, f: &mut [u8], which: u32) {
        if which & sys::BF_CSUM_IPV4 != 0 {
            let h = &mut f[self.l2_len..self.l2_len + self.l3_len];
            h[10] = 0;
            h[11] = 0;
            let c = checksum::checksum(h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
        }
        if which & (sys::BF_CSUM_UDP | sys::BF_CSUM_TCP) != 0 {
            let at = self.l4_csum_at();
            f[at] = 0;
            f[at + 1] = 0;
            let l4 = self.l2_len + self.l3_len;
            let acc = checksum::sum(&f[l4..l4 + self.l4_len], self.pseudo(f));
            let c = if self.l4 == IP_PROTO_UDP {
                checksum::udp_field(acc)
            } else {
                checksum::finish(acc)
            };
            f[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }

    /// Writes what the device expects before computing checksums `which`: 0 in the IPv4
    /// checksum, the folded pseudo-header sum in the L4 one (`rte_mbuf_core.h`).
    fn prepare_offload(&self, f: &mut [u8], which: u32) {
        if which & sys::BF_CSUM_IPV4 != 0 {
            f[self.l2_len + 10] = 0;
            f[self.l2_len + 11] = 0;
        }
        if which & (sys::BF_CSUM_UDP | sys::BF_CSUM_TCP) != 0 {
            let at = self.l4_csum_at();
            let p = checksum::fold(self.pseudo(f));
            f[at..at + 2].copy_from_slice(&p.to_be_bytes());
        }
    }
}

/// True when `proto` is UDP or TCP and `len` bytes hold at least its header.
fn l4_ok(proto: u8, len: usize) -> bool {
    (proto == IP_PROTO_UDP && len >= 8) || (proto == IP_PROTO_TCP && len >= 20)
}

/// Registers the calling thread with the EAL once (an lcore id for mempool caches);
/// unregistered when the thread exits.
#[inline]
fn register_thread() {
    REGISTERED.with(|r| {
        if !r.get() {
            r.set(true);
            // SAFETY: the EAL runs (a port exists). Failure (no free lcore id) only means
            // the thread works without a mempool cache.
            let ok = unsafe { sys::rte_thread_register() } == 0;
            REGISTRATION.with(|g| g.borrow_mut().0 = ok);
        }
    });
}

impl NicBackend for Dpdk {
    fn kind(&self) -> &'static str {
        "dpdk"
    }

    fn rx_burst(&mut self, out: &mut Burst) -> Result<usize, BrickError> {
        register_thread();
        let room = BURST_SIZE - out.len();
        if room == 0 {
            return Ok(0);
        }
        let mut mbufs = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST_SIZE];
        // SAFETY: the port is started; mbufs has room for `room` pointers.
        let n =
            usize::from(unsafe { sys::bf_rx_burst(self.port, 0, mbufs.as_mut_ptr(), room as u16) });
        if n == 0 {
            return Ok(0);
        }
        let mut fresh = Burst::new();
        self.pool.alloc_with(n, |p| {
            let _ = fresh.push(p); // n <= room <= BURST_SIZE
        });
        if fresh.len() < n {
            self.c.rx_pool_empty += (n - fresh.len()) as u64;
        }
        let mut got = 0;
        for (i, mut p) in fresh.drain().enumerate() {
            let m = mbufs[i];
            // The whole tailroom of the fresh (empty) packet, cut to the frame after.
            let cap = p.tailroom();
            let Ok(dst) = p.append(cap) else { continue };
            // SAFETY: m is an mbuf the driver gave us; dst is cap writable bytes, written
            // only when the frame fits.
            let len = unsafe { sys::bf_pktmbuf_copy_out(m, dst.as_mut_ptr(), cap as u32) };
            if len < 0 {
                self.c.rx_too_big += 1;
                continue;
            }
            p.truncate(len as usize);
            self.c.rx_bytes += len as u64;
            let _ = out.push(p);
            got += 1;
        }
        // SAFETY: the n mbufs are ours and no longer referenced.
        unsafe { sys::rte_pktmbuf_free_bulk(mbufs.as_mut_ptr(), n as u32) };
        self.c.rx_packets += got as u64;
        Ok(got)
    }

    fn tx_burst(&mut self, pkts: Burst) -> Result<usize, BrickError> {
        register_thread();
        let n = pkts.len();
        if n == 0 {
            return Ok(0);
        }
        let mut mbufs = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST_SIZE];
        // SAFETY: the mempool is live; mbufs has room for n pointers.
        if unsafe { sys::bf_pktmbuf_alloc_bulk(self.mempool, mbufs.as_mut_ptr(), n as u32) } != 0 {
            self.c.tx_no_mbuf += n as u64;
            return Ok(0);
        }
        let mut filled = 0usize;
        let mut lens = [0u16; BURST_SIZE];
        // Copied by reference: the frames all go back to the pool at once (one lock) when
        // the burst is dropped below, not one by one.
        for p in pkts.iter() {
            let len = p.len();
            if len == 0 || len > self.max_tx_len {
                self.c.tx_too_big += u64::from(len > 0);
                continue;
            }
            let m = mbufs[filled];
            // SAFETY: m is a fresh mbuf of ours; len fits its data room (checked).
            if unsafe { sys::bf_pktmbuf_copy_in(m, p.data().as_ptr(), len as u16) } != 0 {
                self.c.tx_too_big += 1;
                continue;
            }
            if self.tx_checksum {
                // SAFETY: the mbuf's data is `len` contiguous bytes we just wrote.
                let data = unsafe {
                    std::slice::from_raw_parts_mut(sys::bf_pktmbuf_mtod(m).cast::<u8>(), len)
                };
                self.fill_checksums(m, data);
            }
            lens[filled] = len as u16;
            filled += 1;
        }
        drop(pkts);
        let mut ready = filled;
        if self.csum_offload != 0 && filled > 0 {
            // SAFETY: the first `filled` mbufs are ours, filled.
            ready = usize::from(unsafe {
                sys::bf_tx_prepare(self.port, 0, mbufs.as_mut_ptr(), filled as u16)
            });
        }
        let sent = if ready > 0 {
            // SAFETY: as above; the driver takes ownership of the `sent` first mbufs.
            usize::from(unsafe { sys::bf_tx_burst(self.port, 0, mbufs.as_mut_ptr(), ready as u16) })
        } else {
            0
        };
        if sent < n {
            // Unsent (ring full, refused by tx_prepare) and unused mbufs go back.
            self.c.tx_full += (filled - sent) as u64;
            // SAFETY: mbufs[sent..n] are still ours.
            unsafe { sys::rte_pktmbuf_free_bulk(mbufs.as_mut_ptr().add(sent), (n - sent) as u32) };
        }
        self.c.tx_bytes += lens[..sent].iter().map(|&l| u64::from(l)).sum::<u64>();
        self.c.tx_packets += sent as u64;
        Ok(sent)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = self.c;
        let s = self.port_stats().unwrap_or_default();
        vec![
            ("rx_bytes", c.rx_bytes),
            ("rx_pool_empty", c.rx_pool_empty),
            ("rx_too_big", c.rx_too_big),
            ("tx_bytes", c.tx_bytes),
            ("tx_no_mbuf", c.tx_no_mbuf),
            ("tx_too_big", c.tx_too_big),
            ("tx_full", c.tx_full),
            ("tx_csum_offloaded", c.tx_csum_offloaded),
            ("tx_csum_software", c.tx_csum_software),
            ("port_ipackets", s.ipackets),
            ("port_opackets", s.opackets),
            ("port_ibytes", s.ibytes),
            ("port_obytes", s.obytes),
            ("port_imissed", s.imissed),
            ("port_ierrors", s.ierrors),
            ("port_oerrors", s.oerrors),
            ("port_rx_nombuf", s.rx_nombuf),
        ]
    }
}

impl Drop for Dpdk {
    fn drop(&mut self) {
        self.close_port(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP frame: 10.0.0.1:1000 -> 10.0.0.2:2000, payload "hello", with the
    /// checksums a kernel computes (IP 0x26c9... checked against wire::checksum).
    fn udp4(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + 8 + payload.len();
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let ulen = 8 + payload.len();
        f.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn valid_v4(f: &[u8]) -> bool {
        let ip_ok = checksum::checksum(&f[14..34]) == 0;
        let l4 = &f[34..];
        let p = checksum::pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 17, l4.len() as u16);
        ip_ok && checksum::fold(checksum::sum(l4, p)) == 0xffff
    }

    #[test]
    fn software_checksums_ipv4_udp() {
        let mut f = udp4(b"hello");
        f[24] = 0xde; // garbage in both checksum fields
        f[40] = 0xad;
        assert!(!valid_v4(&f));
        let h = Headers::parse(&f).unwrap();
        assert_eq!(h.needs(), sys::BF_CSUM_IPV4 | sys::BF_CSUM_UDP);
        assert_eq!((h.l2_len, h.l3_len, h.l4_len), (14, 20, 13));
        h.fill_software(&mut f, h.needs());
        assert!(valid_v4(&f));
    }

    #[test]
    fn offload_preparation_writes_pseudo_header() {
        let mut f = udp4(b"hi");
        let h = Headers::parse(&f).unwrap();
        h.prepare_offload(&mut f, h.needs());
        assert_eq!(&f[24..26], &[0, 0]);
        let p = checksum::fold(checksum::pseudo_header_v4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            17,
            10,
        ));
        assert_eq!(u16::from_be_bytes([f[40], f[41]]), p);
    }

    #[test]
    fn fragments_vlan_and_garbage() {
        let mut f = udp4(b"x");
        f[20] = 0x20; // MF set: the L4 checksum cannot be computed
        assert_eq!(Headers::parse(&f).unwrap().needs(), sys::BF_CSUM_IPV4);
        // One VLAN tag.
        let mut v = udp4(b"abc");
        v.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        let h = Headers::parse(&v).unwrap();
        assert_eq!(h.l2_len, 18);
        assert_eq!(h.needs(), sys::BF_CSUM_IPV4 | sys::BF_CSUM_UDP);
        // Truncated/garbage frames are left alone, never panic.
        let g = udp4(b"payload");
        for n in 0..g.len() {
            let _ = Headers::parse(&g[..n]);
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let buf: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if let Some(h) = Headers::parse(&buf) {
                let mut b = buf.clone();
                h.fill_software(&mut b, h.needs());
            }
        }
    }

    #[test]
    fn ipv6_tcp_checksum() {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&24u16.to_be_bytes());
        ip[6] = IP_PROTO_TCP;
        ip[7] = 64;
        ip[23] = 1;
        ip[39] = 2;
        f.extend_from_slice(&ip);
        let mut tcp = [0u8; 24];
        tcp[12] = 0x50;
        tcp[20..24].copy_from_slice(b"data");
        f.extend_from_slice(&tcp);
        let h = Headers::parse(&f).unwrap();
        assert_eq!(h.needs(), sys::BF_CSUM_TCP);
        h.fill_software(&mut f, h.needs());
        let src: [u8; 16] = f[22..38].try_into().unwrap();
        let dst: [u8; 16] = f[38..54].try_into().unwrap();
        let p = checksum::pseudo_header_v6(&src, &dst, IP_PROTO_TCP, 24);
        assert_eq!(checksum::fold(checksum::sum(&f[54..], p)), 0xffff);
    }

    #[test]
    fn eal_errors_have_hints() {
        let (name, hint) = eal_errno_hint(libc::EACCES);
        assert_eq!(name, "EACCES");
        assert!(hint.contains("--no-huge"));
        assert!(
            eal_errno_hint(libc::EINVAL)
                .1
                .contains("invalid EAL arguments")
        );
    }
}
