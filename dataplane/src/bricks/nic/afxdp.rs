//! AF_XDP backend of the [`Nic`](super::Nic) brick: one AF_XDP socket on one RX queue of
//! an interface, with the engine's frame [`Pool`] registered as the socket's UMEM.
//!
//! Because the UMEM *is* the pool, a received frame becomes a [`Packet`] without a copy,
//! and a packet of the same pool goes out on the TX ring without a copy (on this socket or
//! on any other socket sharing the UMEM, see [`AfXdp::open_shared`]). Packets of another
//! pool are copied into a frame of ours.
//!
//! The rings (linux `Documentation/networking/af_xdp.rst`):
//! - **fill ring**: frames we give the kernel to receive into. It is topped up on every
//!   poll, from frames the completion ring gave back first, then from the pool, so it
//!   never starves while the pool has frames; a poll that finds it empty is counted
//!   (`fill_ring_empty`).
//! - **RX ring**: received frames (one descriptor per frame; several with `XDP_PKT_CONTD`
//!   for a multi-buffer frame when bound with `XDP_USE_SG`).
//! - **TX ring**: frames to send; **completion ring**: sent frames coming back, recycled
//!   into the fill ring.
//!
//! Zero-copy (`XDP_ZEROCOPY`) is tried first when [`ZeroCopy::Auto`]; drivers without it
//! (veth, for one) refuse with EOPNOTSUPP and the socket binds in copy mode (`XDP_COPY`).
//! The mode is logged and reported in the counters (`mode_zerocopy`).
//!
//! Frames are 2048 or 4096 bytes (an aligned-mode UMEM chunk cannot be larger than a
//! page). A multi-buffer frame whose fragments fit in one pool frame (after its headroom)
//! is reassembled by copying; a larger one is dropped and counted (`rx_jumbo_dropped`):
//! for a jumbo MTU use 4096-byte frames, which hold 3840 bytes after the headroom.
//!
//! Since a frame belongs to exactly one owner at a time (the pool, a packet, or one
//! socket's rings), one pool may also back several sockets opened with [`AfXdp::open`]
//! (each registers the same region as its own UMEM): frames still move between them
//! without a copy. [`AfXdp::open_shared`] shares one registration instead.
//!
//! Steering VXLAN to the socket is the XDP program's job (crate `butterfly-ebpf`):
//! [`AfXdp::register`] puts the socket into its XSKMAP slot and takes it out on drop.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use butterfly_ebpf::{AttachedMode, SteerError, Steering};

use super::NicBackend;
use crate::burst::{BURST_SIZE, Burst};
use crate::error::BrickError;
use crate::packet::{Packet, Pool};

/// `XDP_PACKET_HEADROOM`: the kernel puts received data this many bytes into a chunk.
pub const XDP_PACKET_HEADROOM: usize = 256;
/// `SO_PREFER_BUSY_POLL` (asm-generic/socket.h, Linux 5.11).
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
/// `SO_BUSY_POLL_BUDGET` (asm-generic/socket.h, Linux 5.11).
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
/// Fill-ring top-ups smaller than this wait for the next poll (unless the ring is empty).
const FILL_BATCH: u32 = 32;

/// The steering program shared by the sockets of one interface (one XSKMAP slot each).
pub type SharedSteering = Arc<Mutex<Steering>>;

/// Whether to use zero-copy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Try `XDP_ZEROCOPY`, fall back to copy mode (logged) when the driver refuses.
    Auto,
    /// Zero-copy or fail with [`AfXdpError::ZeroCopyUnsupported`].
    Require,
    /// Copy mode only.
    Never,
}

/// Busy-polling settings (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: microseconds a receive call may busy-poll the device (e.g. 20).
    pub usec: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets per busy-poll (e.g. 64).
    pub budget: u32,
}

/// How to open an [`AfXdp`] socket.
#[derive(Debug, Clone)]
pub struct AfXdpConfig {
    /// Interface name, in the calling thread's network namespace.
    pub ifname: String,
    /// RX (and TX) queue index to bind to (0-based; must exist on the interface).
    pub queue: u32,
    /// RX ring size in descriptors (power of two, 64 ..= 16384).
    pub rx_size: u32,
    /// TX ring size in descriptors (power of two, 64 ..= 16384).
    pub tx_size: u32,
    /// Fill ring size in frames (power of two, 64 ..= 16384). At most this many pool
    /// frames wait in the kernel for received data.
    pub fill_size: u32,
    /// Completion ring size in frames (power of two, 64 ..= 16384).
    pub comp_size: u32,
    /// Zero-copy policy.
    pub zero_copy: ZeroCopy,
    /// Bind with `XDP_USE_NEED_WAKEUP`: the kernel says when it needs a syscall to make
    /// progress, so the fast path makes none.
    pub need_wakeup: bool,
    /// Bind with `XDP_USE_SG` (multi-buffer frames, needed for MTUs above ~3.5 KiB with
    /// the `xdp.frags` program).
    pub multi_buffer: bool,
    /// Optional busy polling.
    pub busy_poll: Option<BusyPoll>,
}

impl AfXdpConfig {
    /// Defaults for `ifname` queue `queue`: rings of 1024, zero-copy when possible,
    /// need_wakeup on, no multi-buffer, no busy polling.
    pub fn new(ifname: impl Into<String>, queue: u32) -> AfXdpConfig {
        AfXdpConfig {
            ifname: ifname.into(),
            queue,
            rx_size: 1024,
            tx_size: 1024,
            fill_size: 1024,
            comp_size: 1024,
            zero_copy: ZeroCopy::Auto,
            need_wakeup: true,
            multi_buffer: false,
            busy_poll: None,
        }
    }
}

/// Errors opening or configuring an AF_XDP socket.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    /// No such interface in this network namespace.
    #[error("no interface named '{0}' in this network namespace")]
    NoInterface(String),
    /// The queue index does not exist on the interface.
    #[error(
        "interface '{ifname}' has no queue {queue} (veth has 1 active queue by default: \
         `ethtool -L {ifname} rx 2 tx 2` enables the second)"
    )]
    NoQueue {
        /// Interface.
        ifname: String,
        /// Queue asked for.
        queue: u32,
    },
    /// Zero-copy was required and the driver has no zero-copy AF_XDP (EOPNOTSUPP).
    #[error(
        "zero-copy AF_XDP is not supported by the driver of '{ifname}' (EOPNOTSUPP; veth is \
         copy mode only): use ZeroCopy::Auto or ZeroCopy::Never"
    )]
    ZeroCopyUnsupported {
        /// Interface.
        ifname: String,
    },
    /// Another AF_XDP socket (or an XDP program in zero-copy use) holds the queue (EBUSY).
    #[error("queue {queue} of '{ifname}' is already taken by another AF_XDP socket (EBUSY)")]
    QueueBusy {
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
    },
    /// UMEM registration failed for lack of lockable memory (ENOBUFS/ENOMEM).
    #[error(
        "cannot register a {bytes}-byte UMEM: {source} (pinned memory is limited by \
         RLIMIT_MEMLOCK, 8 MiB by default, unless the process has CAP_IPC_LOCK: raise \
         `ulimit -l`, grant CAP_IPC_LOCK, or use a smaller pool)"
    )]
    Memlock {
        /// UMEM size.
        bytes: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The pool or a ring size cannot be used; the text says which and why.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// A socket call failed.
    #[error("{op} on '{ifname}' queue {queue}: {source}")]
    Socket {
        /// The call (`"bind"`, `"setsockopt(XDP_RX_RING)"`...).
        op: &'static str,
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Registering the socket in the XDP program's XSKMAP failed.
    #[error("cannot register the socket in the XSKMAP: {0}")]
    Steering(#[from] SteerError),
}

/// Counters of one socket. `xdp_*` come from the kernel (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfXdpStats {
    /// Frames received (a multi-buffer frame counts once).
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames handed to the TX ring.
    pub tx_packets: u64,
    /// Bytes handed to the TX ring.
    pub tx_bytes: u64,
    /// TX frames that came from another pool and were copied into ours.
    pub tx_copied: u64,
    /// TX frames dropped: larger than the MTU plus Ethernet and one VLAN tag.
    pub tx_too_big: u64,
    /// TX frames dropped: TX ring full (or no frame left to copy into).
    pub tx_ring_full: u64,
    /// Multi-buffer frames dropped: larger than a pool frame.
    pub rx_jumbo_dropped: u64,
    /// RX descriptors that made no sense (outside the UMEM, cut multi-buffer frame).
    pub rx_bad_desc: u64,
    /// Polls that found the fill ring empty (the kernel had no frame to receive into).
    pub fill_ring_empty: u64,
    /// Refills that got fewer frames than asked because the pool ran low.
    pub pool_empty: u64,
    /// Syscalls made to wake the kernel up (RX + TX).
    pub wakeups: u64,
    /// Kernel: frames dropped for other reasons (`rx_dropped`).
    pub xdp_rx_dropped: u64,
    /// Kernel: invalid RX descriptors (`rx_invalid_descs`).
    pub xdp_rx_invalid_descs: u64,
    /// Kernel: invalid TX descriptors (`tx_invalid_descs`).
    pub xdp_tx_invalid_descs: u64,
    /// Kernel: frames dropped because the RX ring was full (`rx_ring_full`).
    pub xdp_rx_ring_full: u64,
    /// Kernel: frames dropped because the fill ring was empty (`rx_fill_ring_empty_descs`).
    pub xdp_rx_fill_ring_empty: u64,
    /// Kernel: times the TX ring was found empty (`tx_ring_empty_descs`).
    pub xdp_tx_ring_empty: u64,
}

/// A mapped ring. `D` is `xdp_desc` (RX/TX) or `u64` (fill/completion).
struct Ring<D> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<D>,
    mask: u32,
    size: u32,
    /// Our copy of the index we own, and the last seen value of the other one.
    cached_prod: u32,
    cached_cons: u32,
    map: NonNull<libc::c_void>,
    map_len: usize,
}

impl<D: Copy> Ring<D> {
    /// Maps ring `pgoff` of socket `fd`, laid out as `off` says, with `size` entries.
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: libc::off_t,
    ) -> io::Result<Ring<D>> {
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<D>();
        // SAFETY: maps a ring the kernel created for this socket (size set by setsockopt);
        // the result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        let at = |o: u64| {
            // SAFETY: the kernel's offsets lie inside the mapping.
            NonNull::new(unsafe { base.add(o as usize) }).expect("mmap is not null")
        };
        let mut r = Ring {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            descs: at(off.desc).cast(),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
            map: NonNull::new(p).expect("mmap is not null"),
            map_len,
        };
        r.cached_prod = r.prod().load(Ordering::Acquire);
        r.cached_cons = r.cons().load(Ordering::Acquire);
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping; the kernel updates it atomically.
        unsafe { self.producer.as_ref() }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as for `prod`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `prod`.
        unsafe { self.flags.as_ref() }.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // Producer side (fill, TX): we own `producer`.

    /// Free entries, refreshing the consumer index.
    #[inline]
    fn free(&mut self) -> u32 {
        self.cached_cons = self.cons().load(Ordering::Acquire);
        self.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Entries the kernel has not consumed yet (as of the last [`Ring::free`]).
    #[inline]
    fn queued(&self) -> u32 {
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Writes entry `i` past the producer (not visible until [`Ring::submit`]).
    #[inline]
    fn write(&mut self, i: u32, d: D) {
        let idx = (self.cached_prod.wrapping_add(i) & self.mask) as usize;
        // SAFETY: idx <= mask < size entries of the mapping; the slot is ours (free).
        unsafe { self.descs.as_ptr().add(idx).write(d) };
    }

    /// Publishes `n` written entries.
    #[inline]
    fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    // Consumer side (RX, completion): we own `consumer`.

    /// Entries ready to be read, refreshing the producer index.
    #[inline]
    fn available(&mut self) -> u32 {
        self.cached_prod = self.prod().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Reads entry `i` past the consumer.
    #[inline]
    fn read(&self, i: u32) -> D {
        let idx = (self.cached_cons.wrapping_add(i) & self.mask) as usize;
        // SAFETY: idx < size; the entry was published by the kernel (i < available()).
        unsafe { self.descs.as_ptr().add(idx).read() }
    }

    /// Gives `n` read entries back to the kernel.
    #[inline]
    fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.cons().store(self.cached_cons, Ordering::Release);
    }
}

impl<D> Ring<D> {
    /// Unmaps the ring (a mapping keeps the socket alive, even after close). The ring must
    /// not be used afterwards.
    fn unmap(&mut self) {
        if self.map_len > 0 {
            // SAFETY: unmaps the mapping made in `Ring::map`, once (map_len is zeroed);
            // the owner does not touch the ring after this.
            unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
            self.map_len = 0;
        }
    }
}

impl<D> Drop for Ring<D> {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// The AF_XDP backend: one socket bound to one queue of one interface.
pub struct AfXdp {
    fd: ManuallyDrop<OwnedFd>,
    ifname: String,
    queue: u32,
    pool: Pool,
    umem_base: *mut u8,
    frame_shift: u32,
    frame_mask: u64,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    /// Free frames owned by this socket (completed TX frames, dropped fragments), used
    /// before the pool. Never grows past its initial capacity.
    stash: Vec<u32>,
    /// One bit per frame: set while the frame is in the kernel (fill or TX ring, or
    /// receiving), so the frames can be given back to the pool when the socket closes.
    in_kernel: Vec<u64>,
    zerocopy: bool,
    need_wakeup: bool,
    busy_poll: bool,
    multi_buffer: bool,
    /// Largest frame accepted for TX: MTU + Ethernet header + one VLAN tag, in bytes.
    max_tx_len: usize,
    /// Descriptors left on the TX ring by the last kick (ENOBUFS...): kicked again on the
    /// next poll, so they do not wait for the next transmitted burst.
    tx_pending: bool,
    stats: AfXdpStats,
    steering: Option<SharedSteering>,
    xdp_mode: Option<AttachedMode>,
}

// SAFETY: the rings and the UMEM pointer are only used through `&mut self`; the mappings
// and the socket belong to this value and can move between threads (one owner at a time).
unsafe impl Send for AfXdp {}

struct Opened {
    fd: OwnedFd,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    fill: Ring<u64>,
    comp: Ring<u64>,
    zerocopy: bool,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points to a live T of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(last_err()) } else { Ok(()) }
}

fn getsockopt<T: Default>(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: v is a writable T of `len` bytes.
    let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut T).cast(), &mut len) };
    if r < 0 { Err(last_err()) } else { Ok(v) }
}

/// Raises the soft RLIMIT_MEMLOCK to the hard limit (UMEM pages are pinned memory).
fn raise_memlock() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill/read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim);
        }
    }
}

/// MTU of `ifname` (SIOCGIFMTU), in bytes.
fn interface_mtu(ifname: &str) -> io::Result<usize> {
    // SAFETY: plain socket(2); checked below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(last_err());
    }
    // SAFETY: s is a fresh descriptor we own.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // struct ifreq: 16-byte name then a union whose first int is ifr_mtu.
    let mut req = [0u8; 40];
    let n = ifname.len().min(15);
    req[..n].copy_from_slice(&ifname.as_bytes()[..n]);
    // SAFETY: req is large enough for struct ifreq (40 bytes on x86_64).
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFMTU, req.as_mut_ptr()) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(i32::from_ne_bytes([req[16], req[17], req[18], req[19]]) as usize)
}

fn check_ring(name: &str, n: u32) -> Result<(), AfXdpError> {
    if !n.is_power_of_two() || !(64..=16384).contains(&n) {
        return Err(AfXdpError::Config(format!(
            "{name} = {n} must be a power of two from 64 to 16384"
        )));
    }
    Ok(())
}

impl AfXdp {
    /// Opens a socket on `cfg.ifname` queue `cfg.queue` with `pool` as its UMEM (the
    /// whole pool region is registered). Raises RLIMIT_MEMLOCK to its hard limit first.
    ///
    /// The pool must have 2048- or 4096-byte frames. It should have room for the fill
    /// ring plus the frames in flight in the graph and the TX ring.
    ///
    /// # Errors
    /// [`AfXdpError::NoInterface`], [`AfXdpError::NoQueue`],
    /// [`AfXdpError::ZeroCopyUnsupported`], [`AfXdpError::QueueBusy`],
    /// [`AfXdpError::Memlock`], [`AfXdpError::Config`], [`AfXdpError::Socket`].
    pub fn open(cfg: &AfXdpConfig, pool: &Pool) -> Result<AfXdp, AfXdpError> {
        AfXdp::open_inner(cfg, pool, None)
    }

    /// Opens a socket sharing `owner`'s UMEM (`XDP_SHARED_UMEM`), on another queue or
    /// interface, with its own fill and completion rings. Frames received on one socket
    /// can be sent on the other without a copy. Zero-copy/copy and need_wakeup follow the
    /// owner (the kernel takes them from the UMEM's first socket).
    ///
    /// # Errors
    /// As [`AfXdp::open`].
    pub fn open_shared(cfg: &AfXdpConfig, owner: &AfXdp) -> Result<AfXdp, AfXdpError> {
        let mut cfg = cfg.clone();
        cfg.need_wakeup = owner.need_wakeup;
        cfg.multi_buffer = owner.multi_buffer;
        AfXdp::open_inner(&cfg, &owner.pool, Some(owner.fd.as_raw_fd()))
    }

    fn open_inner(
        cfg: &AfXdpConfig,
        pool: &Pool,
        shared: Option<RawFd>,
    ) -> Result<AfXdp, AfXdpError> {
        for (n, v) in [
            ("rx_size", cfg.rx_size),
            ("tx_size", cfg.tx_size),
            ("fill_size", cfg.fill_size),
            ("comp_size", cfg.comp_size),
        ] {
            check_ring(n, v)?;
        }
        let fs = pool.frame_size();
        if fs != 2048 && fs != 4096 {
            return Err(AfXdpError::Config(format!(
                "pool frame size {fs} must be 2048 or 4096 (an aligned UMEM chunk is at most \
                 a page)"
            )));
        }
        let c_if = std::ffi::CString::new(cfg.ifname.as_str())
            .map_err(|_| AfXdpError::NoInterface(cfg.ifname.clone()))?;
        // SAFETY: c_if is NUL-terminated.
        let ifindex = unsafe { libc::if_nametoindex(c_if.as_ptr()) };
        if ifindex == 0 {
            return Err(AfXdpError::NoInterface(cfg.ifname.clone()));
        }
        let mtu = interface_mtu(&cfg.ifname).map_err(|source| AfXdpError::Socket {
            op: "ioctl(SIOCGIFMTU)",
            ifname: cfg.ifname.clone(),
            queue: cfg.queue,
            source,
        })?;
        raise_memlock();

        let opened = match (shared, cfg.zero_copy) {
            (Some(_), _) => Self::try_open(cfg, pool, ifindex, shared, 0)?,
            (None, ZeroCopy::Never) => Self::try_open(cfg, pool, ifindex, None, libc::XDP_COPY)?,
            (None, ZeroCopy::Require) => {
                Self::try_open(cfg, pool, ifindex, None, libc::XDP_ZEROCOPY)?
            }
            (None, ZeroCopy::Auto) => {
                match Self::try_open(cfg, pool, ifindex, None, libc::XDP_ZEROCOPY) {
                    Ok(o) => o,
                    Err(AfXdpError::ZeroCopyUnsupported { .. }) => {
                        tracing::info!(
                            ifname = cfg.ifname,
                            queue = cfg.queue,
                            "driver has no zero-copy AF_XDP: using copy mode"
                        );
                        Self::try_open(cfg, pool, ifindex, None, libc::XDP_COPY)?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let frame_count = pool.frame_count() as usize;
        let mut s = AfXdp {
            fd: ManuallyDrop::new(opened.fd),
            ifname: cfg.ifname.clone(),
            queue: cfg.queue,
            pool: pool.clone(),
            umem_base: pool.region().0,
            frame_shift: fs.trailing_zeros(),
            frame_mask: fs as u64 - 1,
            rx: opened.rx,
            tx: opened.tx,
            fill: opened.fill,
            comp: opened.comp,
            stash: Vec::with_capacity((cfg.fill_size + cfg.comp_size) as usize + BURST_SIZE),
            in_kernel: vec![0; frame_count.div_ceil(64)],
            zerocopy: opened.zerocopy,
            need_wakeup: cfg.need_wakeup,
            busy_poll: cfg.busy_poll.is_some(),
            multi_buffer: cfg.multi_buffer,
            max_tx_len: mtu + 14 + 4,
            tx_pending: false,
            stats: AfXdpStats::default(),
            steering: None,
            xdp_mode: None,
        };
        s.refill();
        tracing::info!(
            ifname = s.ifname,
            queue = s.queue,
            mode = if s.zerocopy { "zero-copy" } else { "copy" },
            shared_umem = shared.is_some(),
            "AF_XDP socket bound"
        );
        Ok(s)
    }

    fn try_open(
        cfg: &AfXdpConfig,
        pool: &Pool,
        ifindex: u32,
        shared: Option<RawFd>,
        mode_flag: u16,
    ) -> Result<Opened, AfXdpError> {
        let err = |op: &'static str| {
            let ifname = cfg.ifname.clone();
            let queue = cfg.queue;
            move |source: io::Error| AfXdpError::Socket {
                op,
                ifname,
                queue,
                source,
            }
        };
        // SAFETY: plain socket(2); checked below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(err("socket(AF_XDP)")(last_err()));
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let raw = fd.as_raw_fd();

        if shared.is_none() {
            let (addr, len) = pool.region();
            let reg = libc::xdp_umem_reg {
                addr: addr as u64,
                len: len as u64,
                chunk_size: pool.frame_size() as u32,
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            setsockopt(raw, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::ENOBUFS) | Some(libc::ENOMEM) | Some(libc::EPERM) => {
                        AfXdpError::Memlock {
                            bytes: len,
                            source: e,
                        }
                    }
                    _ => err("setsockopt(XDP_UMEM_REG)")(e),
                }
            })?;
        }
        setsockopt(raw, libc::SOL_XDP, libc::XDP_UMEM_FILL_RING, &cfg.fill_size)
            .map_err(err("setsockopt(XDP_UMEM_FILL_RING)"))?;
        setsockopt(
            raw,
            libc::SOL_XDP,
            libc::XDP_UMEM_COMPLETION_RING,
            &cfg.comp_size,
        )
        .map_err(err("setsockopt(XDP_UMEM_COMPLETION_RING)"))?;
        setsockopt(raw, libc::SOL_XDP, libc::XDP_RX_RING, &cfg.rx_size)
            .map_err(err("setsockopt(XDP_RX_RING)"))?;
        setsockopt(raw, libc::SOL_XDP, libc::XDP_TX_RING, &cfg.tx_size)
            .map_err(err("setsockopt(XDP_TX_RING)"))?;
        // Copy mode turns at most `max_tx_budget` TX descriptors into skbs per sendto (32
        // by default): let one kick take the whole ring. Linux >= 6.17 only
        // (XDP_MAX_TX_SKB_BUDGET, 32..=TX ring size); older kernels answer ENOPROTOOPT and
        // keep 32 per call, which `kick_tx` handles by calling again on EAGAIN.
        if cfg.tx_size >= 32 {
            let _ = setsockopt(raw, libc::SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &cfg.tx_size);
        }

        let off: libc::xdp_mmap_offsets = {
            let mut v = std::mem::MaybeUninit::<libc::xdp_mmap_offsets>::zeroed();
            let mut len = std::mem::size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
            // SAFETY: v is writable for `len` bytes.
            let r = unsafe {
                libc::getsockopt(
                    raw,
                    libc::SOL_XDP,
                    libc::XDP_MMAP_OFFSETS,
                    v.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if r < 0 {
                return Err(err("getsockopt(XDP_MMAP_OFFSETS)")(last_err()));
            }
            // SAFETY: zero-initialised, then filled by the kernel: every field is valid.
            unsafe { v.assume_init() }
        };
        let rx = Ring::map(raw, &off.rx, cfg.rx_size, libc::XDP_PGOFF_RX_RING)
            .map_err(err("mmap(RX ring)"))?;
        let tx = Ring::map(raw, &off.tx, cfg.tx_size, libc::XDP_PGOFF_TX_RING)
            .map_err(err("mmap(TX ring)"))?;
        let fill = Ring::map(
            raw,
            &off.fr,
            cfg.fill_size,
            libc::XDP_UMEM_PGOFF_FILL_RING as libc::off_t,
        )
        .map_err(err("mmap(fill ring)"))?;
        let comp = Ring::map(
            raw,
            &off.cr,
            cfg.comp_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t,
        )
        .map_err(err("mmap(completion ring)"))?;

        let mut flags = mode_flag;
        if shared.is_some() {
            // Shared sockets take their flags from the UMEM owner.
            flags = libc::XDP_SHARED_UMEM;
        } else {
            if cfg.need_wakeup {
                flags |= libc::XDP_USE_NEED_WAKEUP;
            }
            if cfg.multi_buffer {
                flags |= libc::XDP_USE_SG;
            }
        }
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: cfg.queue,
            sxdp_shared_umem_fd: shared.unwrap_or(0) as u32,
        };
        // SAFETY: sa is a valid sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r < 0 {
            let e = last_err();
            return Err(match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) if mode_flag == libc::XDP_ZEROCOPY => {
                    AfXdpError::ZeroCopyUnsupported {
                        ifname: cfg.ifname.clone(),
                    }
                }
                Some(libc::EBUSY) => AfXdpError::QueueBusy {
                    ifname: cfg.ifname.clone(),
                    queue: cfg.queue,
                },
                Some(libc::EINVAL) if !queue_exists(&cfg.ifname, cfg.queue) => {
                    AfXdpError::NoQueue {
                        ifname: cfg.ifname.clone(),
                        queue: cfg.queue,
                    }
                }
                Some(libc::ENODEV) => AfXdpError::NoInterface(cfg.ifname.clone()),
                _ => err("bind")(e),
            });
        }
        let opts: libc::xdp_options = {
            let mut v = libc::xdp_options { flags: 0 };
            let mut len = std::mem::size_of::<libc::xdp_options>() as libc::socklen_t;
            // SAFETY: v is writable for `len` bytes.
            let r = unsafe {
                libc::getsockopt(
                    raw,
                    libc::SOL_XDP,
                    libc::XDP_OPTIONS,
                    (&mut v as *mut libc::xdp_options).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                return Err(err("getsockopt(XDP_OPTIONS)")(last_err()));
            }
            v
        };
        if let Some(bp) = cfg.busy_poll {
            setsockopt(raw, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, &1i32)
                .map_err(err("setsockopt(SO_PREFER_BUSY_POLL)"))?;
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_BUSY_POLL, &(bp.usec as i32))
                .map_err(err("setsockopt(SO_BUSY_POLL)"))?;
            setsockopt(
                raw,
                libc::SOL_SOCKET,
                SO_BUSY_POLL_BUDGET,
                &(bp.budget as i32),
            )
            .map_err(err("setsockopt(SO_BUSY_POLL_BUDGET)"))?;
        }
        Ok(Opened {
            fd,
            rx,
            tx,
            fill,
            comp,
            zerocopy: opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0,
        })
    }

    /// Puts this socket into `steering`'s XSKMAP at the slot of its queue, so the XDP
    /// program redirects this queue's VXLAN to it; the slot is cleared on drop. The
    /// steering program should be attached to the same interface.
    ///
    /// # Errors
    /// [`AfXdpError::Steering`].
    pub fn register(&mut self, steering: &SharedSteering) -> Result<(), AfXdpError> {
        let mut s = steering.lock().unwrap_or_else(|e| e.into_inner());
        s.register_xsk(self.queue, self.fd.as_raw_fd())?;
        self.xdp_mode = s.attached().map(|(_, m)| m);
        drop(s);
        self.steering = Some(steering.clone());
        Ok(())
    }

    /// The socket descriptor (to put into an XSKMAP by hand, or to poll(2)).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The interface.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The queue the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// True in zero-copy mode, false in copy mode.
    pub fn is_zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// The XDP mode of the steering program this socket is registered with, if any.
    pub fn xdp_mode(&self) -> Option<AttachedMode> {
        self.xdp_mode
    }

    /// The frame pool (= the UMEM).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Largest frame accepted by [`NicBackend::tx_burst`], in bytes (MTU + 18).
    pub fn max_tx_len(&self) -> usize {
        self.max_tx_len
    }

    /// The counters, with the kernel's `XDP_STATISTICS` read now (one syscall).
    pub fn stats(&self) -> AfXdpStats {
        let mut s = self.stats;
        if let Ok(k) = getsockopt::<XdpStatistics>(self.fd(), libc::SOL_XDP, libc::XDP_STATISTICS) {
            s.xdp_rx_dropped = k.rx_dropped;
            s.xdp_rx_invalid_descs = k.rx_invalid_descs;
            s.xdp_tx_invalid_descs = k.tx_invalid_descs;
            s.xdp_rx_ring_full = k.rx_ring_full;
            s.xdp_rx_fill_ring_empty = k.rx_fill_ring_empty_descs;
            s.xdp_tx_ring_empty = k.tx_ring_empty_descs;
        }
        s
    }

    #[inline]
    fn mark_in_kernel(&mut self, frame: u32) {
        self.in_kernel[(frame / 64) as usize] |= 1 << (frame % 64);
    }

    #[inline]
    fn mark_ours(&mut self, frame: u32) {
        self.in_kernel[(frame / 64) as usize] &= !(1 << (frame % 64));
    }

    /// Keeps a free frame in the stash, or gives it back to the pool when the stash is full
    /// (the stash never reallocates).
    #[inline]
    fn recycle(&mut self, frame: u32) {
        if self.stash.len() < self.stash.capacity() {
            self.stash.push(frame);
        } else {
            self.pool.free_raw(&[frame]);
        }
    }

    /// Takes completed TX frames back into the stash (or the pool when the stash is full).
    fn reclaim_completions(&mut self) {
        let n = self.comp.available();
        if n == 0 {
            return;
        }
        let mut spill = [0u32; BURST_SIZE];
        let mut spilled = 0;
        for i in 0..n {
            let frame = (self.comp.read(i) >> self.frame_shift) as u32;
            self.mark_ours(frame);
            if self.stash.len() < self.stash.capacity() {
                self.stash.push(frame);
            } else {
                spill[spilled] = frame;
                spilled += 1;
                if spilled == spill.len() {
                    self.pool.free_raw(&spill);
                    spilled = 0;
                }
            }
        }
        if spilled > 0 {
            self.pool.free_raw(&spill[..spilled]);
        }
        self.comp.release(n);
    }

    /// Tops up the fill ring: stash first, then the pool.
    fn refill(&mut self) {
        let free = self.fill.free();
        if self.fill.queued() == 0 && self.stats.rx_packets > 0 {
            self.stats.fill_ring_empty += 1;
        }
        if free == 0 || (free < FILL_BATCH && self.fill.queued() > 0) {
            return;
        }
        let mut n = 0u32;
        while n < free {
            let Some(frame) = self.stash.pop() else { break };
            self.mark_in_kernel(frame);
            self.fill.write(n, u64::from(frame) << self.frame_shift);
            n += 1;
        }
        if n < free {
            let want = (free - n) as usize;
            let mut frames = [0u32; BURST_SIZE];
            let mut left = want;
            while left > 0 {
                let chunk = left.min(BURST_SIZE);
                let mut got = 0;
                self.pool.alloc_with(chunk, |p| {
                    frames[got] = p.into_raw().0;
                    got += 1;
                });
                for &f in &frames[..got] {
                    self.mark_in_kernel(f);
                    self.fill.write(n, u64::from(f) << self.frame_shift);
                    n += 1;
                }
                if got < chunk {
                    self.stats.pool_empty += 1;
                    break;
                }
                left -= got;
            }
        }
        if n > 0 {
            self.fill.submit(n);
        }
    }

    fn wake_rx(&mut self) {
        if self.busy_poll || (self.need_wakeup && self.fill.needs_wakeup()) {
            self.stats.wakeups += 1;
            // SAFETY: a zero-length receive on our socket; only kicks the kernel.
            unsafe {
                libc::recvfrom(
                    self.fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    fn kick_tx(&mut self) {
        self.tx_pending = false;
        if self.need_wakeup && !self.tx.needs_wakeup() {
            return;
        }
        // Copy mode sends at most its budget per call (EAGAIN when more is left; see
        // XDP_MAX_TX_SKB_BUDGET), and EBUSY when the device dropped a frame.
        for _ in 0..16 {
            self.stats.wakeups += 1;
            // SAFETY: a zero-length send on our socket; only kicks the kernel. The raw
            // system call skips libc's cancellation-point bookkeeping (a kick per burst).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_sendto,
                    self.fd(),
                    std::ptr::null::<libc::c_void>(),
                    0usize,
                    libc::MSG_DONTWAIT,
                    std::ptr::null::<libc::sockaddr>(),
                    0 as libc::socklen_t,
                )
            };
            if r >= 0 {
                // The kernel took what it could; stop when the TX ring is drained.
                if self.tx.free() == self.tx.size {
                    break;
                }
                continue;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EBUSY) => {
                    self.reclaim_completions();
                    if self.tx.free() == self.tx.size {
                        break;
                    }
                }
                _ => break, // ENOBUFS, ENETDOWN...: retried on the next poll
            }
        }
        self.tx_pending = self.tx.free() != self.tx.size;
    }

    /// Copies the data of fragment `d` to the end of `p` if it fits.
    fn append_fragment(&self, p: &mut Packet, d: &libc::xdp_desc) -> bool {
        let len = d.len as usize;
        if p.tailroom() < len || (d.addr as usize) + len > self.pool.region().1 {
            return false;
        }
        // SAFETY: addr + len is inside the UMEM (checked above), and the fragment's frame
        // is ours (just taken off the RX ring); it does not overlap p's frame.
        let src = unsafe { std::slice::from_raw_parts(self.umem_base.add(d.addr as usize), len) };
        match p.append(len) {
            Ok(dst) => {
                dst.copy_from_slice(src);
                true
            }
            Err(_) => false,
        }
    }
}

/// `XDP_MAX_TX_SKB_BUDGET` (linux/if_xdp.h, Linux 6.17): descriptors a copy-mode socket
/// sends per `sendto`. Not in the libc crate yet.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// `struct xdp_statistics` (linux/if_xdp.h), with `Default` for getsockopt.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct XdpStatistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

/// True when `/sys/class/net/IF/queues/rx-Q` exists (a hint for EINVAL on bind).
fn queue_exists(ifname: &str, queue: u32) -> bool {
    std::path::Path::new(&format!("/sys/class/net/{ifname}/queues/rx-{queue}")).exists()
}

impl NicBackend for AfXdp {
    fn kind(&self) -> &'static str {
        "af_xdp"
    }

    fn rx_burst(&mut self, out: &mut Burst) -> Result<usize, BrickError> {
        if self.tx_pending {
            self.kick_tx();
        }
        self.reclaim_completions();
        self.refill();
        let room = BURST_SIZE - out.len();
        let avail = self.rx.available();
        if avail == 0 || room == 0 {
            self.wake_rx();
            return Ok(0);
        }
        let mut got = 0usize;
        let mut used = 0u32;
        let mut bytes = 0u64;
        // A multi-buffer frame being reassembled, and whether it is already too big.
        let mut pending: Option<Packet> = None;
        let mut pending_bad = false;
        let mut skipping = false;
        let frame_count = self.pool.frame_count();
        while used < avail {
            if pending.is_none() && !skipping && got == room {
                break;
            }
            let d = self.rx.read(used);
            used += 1;
            let frame = (d.addr >> self.frame_shift) as u32;
            if frame >= frame_count {
                self.stats.rx_bad_desc += 1;
                continue;
            }
            self.mark_ours(frame);
            let more = self.multi_buffer && d.options & libc::XDP_PKT_CONTD != 0;
            if skipping {
                // The rest of a multi-buffer frame whose first descriptor was bad.
                self.recycle(frame);
                skipping = more;
                continue;
            }
            match pending.as_mut() {
                None => {
                    let off = (d.addr & self.frame_mask) as usize;
                    // SAFETY: the kernel gave the frame back on the RX ring: it is ours.
                    match unsafe { self.pool.packet_from_raw(frame, off, d.len as usize) } {
                        Ok(p) if more => {
                            pending = Some(p);
                            pending_bad = false;
                        }
                        Ok(p) => {
                            bytes += p.len() as u64;
                            let _ = out.push(p); // room was checked
                            got += 1;
                        }
                        Err(_) => {
                            self.stats.rx_bad_desc += 1;
                            self.recycle(frame);
                            skipping = more;
                        }
                    }
                }
                Some(p) => {
                    if !pending_bad && !self.append_fragment(p, &d) {
                        pending_bad = true;
                    }
                    self.recycle(frame);
                    if !more {
                        let p = pending.take().expect("pending frame");
                        if pending_bad {
                            self.stats.rx_jumbo_dropped += 1;
                            drop(p);
                        } else {
                            bytes += p.len() as u64;
                            let _ = out.push(p);
                            got += 1;
                        }
                    }
                }
            }
        }
        if let Some(p) = pending.take() {
            // The kernel publishes all fragments of a frame at once; a cut one is bad.
            self.stats.rx_bad_desc += 1;
            drop(p);
        }
        self.rx.release(used);
        self.stats.rx_packets += got as u64;
        self.stats.rx_bytes += bytes;
        if got < room {
            self.wake_rx();
        }
        Ok(got)
    }

    fn tx_burst(&mut self, mut pkts: Burst) -> Result<usize, BrickError> {
        self.reclaim_completions();
        let mut free = self.tx.free();
        let mut n = 0u32;
        let mut bytes = 0u64;
        let mut dropped = Burst::new();
        for p in pkts.drain() {
            if p.len() > self.max_tx_len || p.is_empty() {
                self.stats.tx_too_big += u64::from(!p.is_empty());
                let _ = dropped.push(p);
                continue;
            }
            if free == 0 {
                self.stats.tx_ring_full += 1;
                let _ = dropped.push(p);
                continue;
            }
            let (frame, off, len) = if p.is_from(&self.pool) {
                p.into_raw()
            } else {
                let frame = match self.stash.pop().or_else(|| self.pool.alloc_raw()) {
                    Some(f) => f,
                    None => {
                        self.stats.tx_ring_full += 1;
                        let _ = dropped.push(p);
                        continue;
                    }
                };
                let off = XDP_PACKET_HEADROOM.min(self.pool.headroom());
                let len = p.len();
                if off + len > self.pool.frame_size() {
                    self.recycle(frame);
                    self.stats.tx_too_big += 1;
                    let _ = dropped.push(p);
                    continue;
                }
                let dst = (frame as usize) * self.pool.frame_size() + off;
                // SAFETY: the frame is ours (from the stash or the pool, not in any ring)
                // and off + len fits in it (checked above); p's frame is another frame.
                unsafe {
                    std::ptr::copy_nonoverlapping(p.data().as_ptr(), self.umem_base.add(dst), len)
                };
                self.stats.tx_copied += 1;
                let _ = dropped.push(p);
                (frame, off, len)
            };
            self.mark_in_kernel(frame);
            self.tx.write(
                n,
                libc::xdp_desc {
                    addr: ((frame as u64) << self.frame_shift) + off as u64,
                    len: len as u32,
                    options: 0,
                },
            );
            n += 1;
            free -= 1;
            bytes += len as u64;
        }
        drop(dropped);
        if n > 0 {
            self.tx.submit(n);
            self.stats.tx_packets += u64::from(n);
            self.stats.tx_bytes += bytes;
        }
        self.kick_tx();
        Ok(n as usize)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("rx_bytes", s.rx_bytes),
            ("tx_bytes", s.tx_bytes),
            ("tx_copied", s.tx_copied),
            ("tx_too_big", s.tx_too_big),
            ("tx_ring_full", s.tx_ring_full),
            ("rx_jumbo_dropped", s.rx_jumbo_dropped),
            ("rx_bad_desc", s.rx_bad_desc),
            ("fill_ring_empty", s.fill_ring_empty),
            ("pool_empty", s.pool_empty),
            ("wakeups", s.wakeups),
            ("xdp_rx_dropped", s.xdp_rx_dropped),
            ("xdp_rx_invalid_descs", s.xdp_rx_invalid_descs),
            ("xdp_tx_invalid_descs", s.xdp_tx_invalid_descs),
            ("xdp_rx_ring_full", s.xdp_rx_ring_full),
            ("xdp_rx_fill_ring_empty", s.xdp_rx_fill_ring_empty),
            ("xdp_tx_ring_empty", s.xdp_tx_ring_empty),
            ("mode_zerocopy", u64::from(self.zerocopy)),
            (
                "mode_xdp_native",
                u64::from(self.xdp_mode == Some(AttachedMode::Native)),
            ),
            (
                "mode_xdp_generic",
                u64::from(self.xdp_mode == Some(AttachedMode::Generic)),
            ),
        ]
    }
}

impl Drop for AfXdp {
    fn drop(&mut self) {
        if let Some(s) = self.steering.take() {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = s.unregister_xsk(self.queue) {
                tracing::warn!(ifname = self.ifname, queue = self.queue, "{e}");
            }
        }
        let mut frames: Vec<u32> = std::mem::take(&mut self.stash);
        for (w, &bits) in self.in_kernel.iter().enumerate() {
            let mut b = bits;
            while b != 0 {
                frames.push((w * 64) as u32 + b.trailing_zeros());
                b &= b - 1;
            }
        }
        // Unmapping the rings and closing the socket releases it (each mapping holds a
        // reference): the kernel unbinds it and stops using the frames it held (fill
        // ring, TX ring, in flight), which can then go back to the pool.
        self.rx.unmap();
        self.tx.unmap();
        self.fill.unmap();
        self.comp.unmap();
        // SAFETY: `fd` is not used after this point (only the rings' mappings, which do
        // not need it, are dropped after).
        drop(unsafe { ManuallyDrop::take(&mut self.fd) });
        self.pool.free_raw(&frames);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolConfig;

    /// A ring over plain memory, with the test playing the kernel's side.
    struct FakeRing<D> {
        mem: Vec<u64>,
        _d: std::marker::PhantomData<D>,
    }

    impl<D: Copy> FakeRing<D> {
        fn new(size: u32) -> FakeRing<D> {
            // producer, consumer, flags (one u64 each), then the descriptors.
            let words = 3 + (size as usize * std::mem::size_of::<D>()).div_ceil(8);
            FakeRing {
                mem: vec![0; words],
                _d: std::marker::PhantomData,
            }
        }

        fn ring(&mut self, size: u32) -> Ring<D> {
            let base = self.mem.as_mut_ptr().cast::<u8>();
            let at = |o: usize| {
                // SAFETY: offsets inside `mem` (3 header words, then the descriptors).
                NonNull::new(unsafe { base.add(o) }).unwrap()
            };
            Ring {
                producer: at(0).cast(),
                consumer: at(8).cast(),
                flags: at(16).cast(),
                descs: at(24).cast(),
                mask: size - 1,
                size,
                cached_prod: 0,
                cached_cons: 0,
                map: at(0).cast(),
                map_len: 0, // not a mapping: nothing to unmap
            }
        }

        fn word(&self, i: usize) -> u32 {
            self.mem[i] as u32
        }

        fn set_word(&mut self, i: usize, v: u32) {
            self.mem[i] = u64::from(v);
        }
    }

    #[test]
    fn producer_ring_wraps_and_respects_the_consumer() {
        let mut fake = FakeRing::<u64>::new(64);
        let mut r = fake.ring(64);
        assert_eq!(r.free(), 64);
        for round in 0..5u32 {
            let free = r.free();
            assert_eq!(free, 64);
            for i in 0..40 {
                r.write(i, u64::from(round * 100 + i));
            }
            r.submit(40);
            assert_eq!(r.free(), 24, "the kernel has not consumed yet");
            // The kernel consumes everything.
            let prod = fake.word(0);
            assert_eq!(prod, (round + 1) * 40);
            fake.set_word(1, prod);
        }
        // Entry of the last round landed at (4*40 + i) & 63.
        let idx = (4 * 40 + 7) & 63;
        assert_eq!(fake.mem[3 + idx], 407);
    }

    #[test]
    fn consumer_ring_reads_what_the_kernel_published() {
        let mut fake = FakeRing::<libc::xdp_desc>::new(64);
        let mut r = fake.ring(64);
        assert_eq!(r.available(), 0);
        let mut next = 0u32;
        for _ in 0..4 {
            // The kernel publishes 50 descriptors.
            for i in 0..50u32 {
                let idx = ((next + i) & 63) as usize;
                let d = libc::xdp_desc {
                    addr: u64::from(next + i) * 2048 + 256,
                    len: 60 + i,
                    options: 0,
                };
                // SAFETY: inside `mem`, after the three header words.
                unsafe {
                    fake.mem
                        .as_mut_ptr()
                        .add(3)
                        .cast::<libc::xdp_desc>()
                        .add(idx)
                        .write(d)
                };
            }
            next += 50;
            fake.set_word(0, next);
            assert_eq!(r.available(), 50);
            for i in 0..50 {
                let d = r.read(i);
                assert_eq!(d.len, 60 + i);
                assert_eq!(d.addr & 2047, 256);
            }
            r.release(50);
            assert_eq!(fake.word(1), next);
            assert_eq!(r.available(), 0);
        }
    }

    #[test]
    fn config_is_checked_before_touching_the_kernel() {
        assert!(check_ring("rx_size", 1024).is_ok());
        assert!(check_ring("rx_size", 1000).is_err());
        assert!(check_ring("rx_size", 32).is_err());
        assert!(check_ring("rx_size", 32768).is_err());
        let pool = Pool::new(PoolConfig {
            frame_count: 64,
            frame_size: 8192,
            ..PoolConfig::default()
        })
        .unwrap();
        let e = AfXdp::open(&AfXdpConfig::new("lo", 0), &pool)
            .err()
            .unwrap();
        assert!(matches!(e, AfXdpError::Config(_)), "{e}");
        let pool = Pool::new(PoolConfig {
            frame_count: 64,
            ..PoolConfig::default()
        })
        .unwrap();
        let e = AfXdp::open(&AfXdpConfig::new("nosuchdev0", 0), &pool)
            .err()
            .unwrap();
        assert!(matches!(e, AfXdpError::NoInterface(_)), "{e}");
        let mut cfg = AfXdpConfig::new("nosuchdev0", 0);
        cfg.fill_size = 100;
        let e = AfXdp::open(&cfg, &pool).err().unwrap();
        assert!(e.to_string().contains("fill_size"), "{e}");
        assert_eq!(pool.available(), 64);
    }

    #[test]
    fn statistics_struct_matches_the_kernel() {
        assert_eq!(
            std::mem::size_of::<XdpStatistics>(),
            std::mem::size_of::<libc::xdp_statistics>()
        );
    }

    #[test]
    fn memlock_error_says_how_to_fix_it() {
        let e = AfXdpError::Memlock {
            bytes: 16 << 20,
            source: io::Error::from_raw_os_error(libc::ENOBUFS),
        };
        let t = e.to_string();
        assert!(
            t.contains("RLIMIT_MEMLOCK") && t.contains("CAP_IPC_LOCK"),
            "{t}"
        );
    }
}
