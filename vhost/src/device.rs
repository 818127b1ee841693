//! The state of one virtio-net device that the vhost-user control thread and the brick
//! share: guest memory, the two virtqueues (receive 0, transmit 1) and their eventfds,
//! the negotiated features.
//!
//! The control thread changes it while handling a vhost-user message (holding the lock a
//! few microseconds); the brick takes it with `try_lock` at each poll and skips the poll
//! when the control thread holds it, so the packet path never waits.
//!
//! Spec: vhost-user protocol (QEMU `docs/interop/vhost-user.rst`), "Ring states",
//! "Memory region description"; VIRTIO 1.2 §5.1.3 (virtio-net feature bits).

use std::fs::File;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestRegionMmap};

use crate::guest_map::GuestMap;
use crate::net_hdr::{NET_HDR_LEN_LEGACY, NET_HDR_LEN_V1};
use crate::virtq::{GuestMem, NetConfig, SplitRing};

/// Device handles partial checksums from the driver (VIRTIO 1.2 §5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// Driver handles partial checksums from the device.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// Device reports its maximum MTU in the config space `mtu` field (VIRTIO 1.2 §5.1.3,
/// §5.1.4).
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
/// Driver can merge receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// Indirect descriptor tables (VIRTIO 1.2 §2.7.5.3).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `used_event`/`avail_event` notification suppression (VIRTIO 1.2 §2.7.7, §2.7.10).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// vhost-user protocol feature negotiation (vhost-user spec).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Non-legacy device (VIRTIO 1.2 §6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The device uses buffers in the order the driver made them available (VIRTIO 1.2 §2.7.9,
/// §6): the brick takes chains in avail-ring order and returns every chain it takes, good
/// or not, in that order (a frame that finds too few buffers takes none). Lets drivers use
/// their cheaper in-order paths (DPDK virtio's `*_inorder` Rx/Tx, as with DPDK's vhost).
pub const VIRTIO_F_IN_ORDER: u64 = 1 << 35;

/// Virtio features this backend offers.
pub const OFFERED_FEATURES: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES
    | VIRTIO_F_VERSION_1
    | VIRTIO_F_IN_ORDER;

/// Smallest MTU a device may advertise, in bytes (VIRTIO 1.2 §5.1.4.1: the device MUST
/// NOT set `mtu` below 68).
pub const MIN_MTU: u16 = 68;
/// Length of the virtio-net config space served by `GET_CONFIG`, in bytes: `mac` (6),
/// `status` (2), `max_virtqueue_pairs` (2), `mtu` (2) (VIRTIO 1.2 §5.1.4).
pub const NET_CONFIG_LEN: usize = 12;

/// An MTU outside `MIN_MTU..=65535`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("MTU {0} below the virtio minimum of 68 bytes")]
pub struct MtuError(pub u16);

/// Index of the receive queue (device → driver) of the queue pair.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (driver → device) of the queue pair.
pub const TX_QUEUE: usize = 1;
/// Virtqueues handled: one receive/transmit pair.
pub const NUM_QUEUES: usize = 2;
/// Largest virtqueue size accepted (QEMU's `rx_queue_size`/`tx_queue_size` maximum).
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Addresses of a vring as the frontend gave them (its own virtual addresses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VringAddrs {
    /// Descriptor table (frontend virtual address).
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// One virtqueue and its vhost-user state.
#[derive(Debug)]
pub struct Vring {
    /// The split virtqueue (guest-physical addresses, indices).
    pub queue: Queue,
    /// Driver → device notifications (unused by the polling backend, kept open).
    pub kick: Option<File>,
    /// Device → driver notifications (eventfd).
    pub call: Option<File>,
    /// Error notifications (eventfd), unused.
    pub err: Option<File>,
    /// Enabled by `SET_VRING_ENABLE` (accepted in any order relative to `SET_FEATURES`).
    pub enabled: bool,
    /// Started by `SET_VRING_KICK`, stopped by `GET_VRING_BASE`.
    pub started: bool,
    /// Addresses from `SET_VRING_ADDR`.
    pub addrs: Option<VringAddrs>,
}

impl Vring {
    fn new() -> Vring {
        Vring {
            // Cannot fail: MAX_QUEUE_SIZE is a power of two.
            queue: Queue::new(MAX_QUEUE_SIZE).expect("valid queue size"),
            kick: None,
            call: None,
            err: None,
            enabled: false,
            started: false,
            addrs: None,
        }
    }
}

/// A guest memory region shared by the frontend.
#[derive(Debug)]
pub struct MemRegion {
    /// Guest physical address of its start.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Its start in the frontend's address space (vring addresses are given in those).
    pub uaddr: u64,
    /// The mapping.
    pub mapping: Arc<GuestRegionMmap<()>>,
}

/// Everything the control thread and the brick share about one device.
#[derive(Debug)]
pub struct DeviceState {
    /// Guest memory built from `regions` (None until the first memory table).
    pub mem: Option<GuestMem>,
    /// The packet path's translation snapshot of `mem` (rebuilt with it).
    pub map: Option<GuestMap>,
    /// The regions of `mem`.
    pub regions: Vec<MemRegion>,
    /// Receive and transmit virtqueues.
    pub vrings: [Vring; NUM_QUEUES],
    /// Virtio features acked with `SET_FEATURES`.
    pub features: u64,
    /// vhost-user protocol features acked with `SET_PROTOCOL_FEATURES`.
    pub protocol_features: u64,
    /// virtio-net header layout following from `features`.
    pub net: NetConfig,
    /// A frontend is connected.
    pub connected: bool,
    /// Connections accepted so far.
    pub connections: u64,
    /// MTU advertised to the driver (bytes, `MIN_MTU..=65535`): when set,
    /// `VIRTIO_NET_F_MTU` is offered and the config space `mtu` field holds it. It is
    /// configuration, kept across connections and resets. Set with [`DeviceState::set_mtu`].
    pub mtu: Option<u16>,
    /// MTU the frontend announced with `NET_SET_MTU` (bytes), if any.
    pub frontend_mtu: Option<u16>,
}

impl Default for DeviceState {
    fn default() -> Self {
        DeviceState {
            mem: None,
            map: None,
            regions: Vec::new(),
            vrings: [Vring::new(), Vring::new()],
            features: 0,
            protocol_features: 0,
            net: NetConfig::default(),
            connected: false,
            connections: 0,
            mtu: None,
            frontend_mtu: None,
        }
    }
}

impl DeviceState {
    /// True when virtqueue `i` may be processed: memory mapped, ring started and valid,
    /// enabled (or `VHOST_USER_F_PROTOCOL_FEATURES` not negotiated: then rings start enabled).
    #[inline]
    pub fn ring_ready(&self, i: usize) -> bool {
        let v = &self.vrings[i];
        self.map.is_some()
            && v.started
            && v.queue.ready()
            && (v.enabled || self.features & VHOST_USER_F_PROTOCOL_FEATURES == 0)
    }

    /// Sets (or clears, `None`) the MTU advertised to the driver, in bytes. Takes effect at
    /// the frontend's next `GET_FEATURES` (the next connection for a running one).
    ///
    /// # Errors
    /// [`MtuError`] when `mtu` is below [`MIN_MTU`] (68); the MTU is then unchanged.
    pub fn set_mtu(&mut self, mtu: Option<u16>) -> Result<(), MtuError> {
        if let Some(m) = mtu
            && m < MIN_MTU
        {
            return Err(MtuError(m));
        }
        self.mtu = mtu;
        Ok(())
    }

    /// Virtio features offered to the frontend: [`OFFERED_FEATURES`], plus
    /// [`VIRTIO_NET_F_MTU`] when an MTU is set.
    pub fn offered_features(&self) -> u64 {
        if self.mtu.is_some() {
            OFFERED_FEATURES | VIRTIO_NET_F_MTU
        } else {
            OFFERED_FEATURES
        }
    }

    /// The virtio-net device config space (VIRTIO 1.2 §5.1.4, little endian): `mac` zero
    /// (`VIRTIO_NET_F_MAC` not offered: the frontend picks the MAC), `status` 0
    /// (`VIRTIO_NET_F_STATUS` not offered: the link is up), `max_virtqueue_pairs` 1, `mtu`
    /// the configured MTU (0 when none is set: then `VIRTIO_NET_F_MTU` is not offered).
    pub fn config_space(&self) -> [u8; NET_CONFIG_LEN] {
        let mut c = [0u8; NET_CONFIG_LEN];
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        c
    }

    /// Records the virtio features the driver acked.
    pub fn set_features(&mut self, features: u64) {
        self.features = features;
        let v1 = features & VIRTIO_F_VERSION_1 != 0;
        let mrg = features & VIRTIO_NET_F_MRG_RXBUF != 0;
        self.net = NetConfig {
            hdr_len: if v1 || mrg {
                NET_HDR_LEN_V1
            } else {
                NET_HDR_LEN_LEGACY
            },
            mrg_rxbuf: mrg,
        };
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        for v in &mut self.vrings {
            v.queue.set_event_idx(event_idx);
        }
    }

    /// Translates a frontend virtual address into a guest physical address.
    pub fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| va >= r.uaddr && va - r.uaddr < r.size)
            .map(|r| r.gpa + (va - r.uaddr))
    }

    /// Rebuilds the guest memory from `regions`; returns the previous one so the caller
    /// unmaps it after releasing the lock.
    ///
    /// # Errors
    /// A message when the regions overlap.
    pub fn rebuild_memory(&mut self) -> Result<Option<GuestMem>, String> {
        let old = self.mem.take();
        self.map = None;
        if self.regions.is_empty() {
            return Ok(old);
        }
        self.regions.sort_by_key(|r| r.gpa);
        let mem =
            GuestMem::from_arc_regions(self.regions.iter().map(|r| r.mapping.clone()).collect())
                .map_err(|e| format!("guest memory regions: {e}"))?;
        self.map = Some(GuestMap::new(&mem));
        self.mem = Some(mem);
        // Vring addresses are translated through the regions: redo it.
        for i in 0..NUM_QUEUES {
            if self.vrings[i].started {
                self.place_ring(i);
            }
        }
        Ok(old)
    }

    /// Points virtqueue `i` at its rings (translating the frontend's addresses) and marks it
    /// ready when they lie in guest memory. Returns whether the queue is ready.
    pub fn place_ring(&mut self, i: usize) -> bool {
        let Some(a) = self.vrings[i].addrs else {
            self.vrings[i].queue.set_ready(false);
            return false;
        };
        let (Some(d), Some(av), Some(u)) = (
            self.va_to_gpa(a.desc),
            self.va_to_gpa(a.avail),
            self.va_to_gpa(a.used),
        ) else {
            tracing::warn!(ring = i, "vring addresses outside the memory table");
            self.vrings[i].queue.set_ready(false);
            return false;
        };
        let q = &mut self.vrings[i].queue;
        let ok = q.try_set_desc_table_address(GuestAddress(d)).is_ok()
            && q.try_set_avail_ring_address(GuestAddress(av)).is_ok()
            && q.try_set_used_ring_address(GuestAddress(u)).is_ok();
        q.set_ready(ok);
        // The packet path also wants each ring inside one region (as DPDK's vhost does).
        let valid = ok
            && self.mem.as_ref().is_some_and(|m| q.is_valid(m))
            && self
                .map
                .as_ref()
                .is_some_and(|m| SplitRing::new(q, m).is_some());
        if !valid {
            tracing::warn!(ring = i, "vring does not fit in guest memory");
            q.set_ready(false);
        }
        valid
    }

    /// Stops virtqueue `i` (`GET_VRING_BASE`) and returns the index of the next available
    /// entry it would have read.
    pub fn stop_ring(&mut self, i: usize) -> u16 {
        let v = &mut self.vrings[i];
        v.started = false;
        v.queue.set_ready(false);
        v.kick = None;
        v.queue.next_avail()
    }

    /// Back to the state of a new connection (disconnect, `RESET_OWNER`, `RESET_DEVICE`);
    /// returns the guest memory for the caller to unmap after releasing the lock.
    pub fn reset(&mut self, keep_memory: bool) -> Option<GuestMem> {
        self.vrings = [Vring::new(), Vring::new()];
        self.features = 0;
        self.frontend_mtu = None;
        self.net = NetConfig::default();
        if keep_memory {
            None
        } else {
            self.protocol_features = 0;
            self.regions.clear();
            self.map = None;
            self.mem.take()
        }
    }
}
