//! `vhost`: a monopole brick that is the virtio-net device of one VM NIC.
//!
//! Guest → graph: each poll takes up to a burst (64) of descriptor chains from the guest's
//! transmit queue, copies each into a pool frame (virtio-net header stripped, partial
//! checksum completed) and sends the burst to the brick's peer. Graph → guest: each burst
//! that arrives is copied into the guest's receive buffers (several per frame with
//! `VIRTIO_NET_F_MRG_RXBUF`). After each burst the guest is notified through the call
//! eventfd when it asked for it (EVENT_IDX `used_event`).
//!
//! The vhost-user socket is served by a control thread ([`ControlThread`]); the brick only
//! touches the shared [`DeviceState`] with `try_lock`, so a poll never waits for the
//! control path (it skips the round and counts `busy`). One copy each way: guest memory is
//! not ours. No heap allocation per packet.

use std::sync::{Arc, Mutex, TryLockError};

use packetgraph::{Brick, BrickError, Burst, Emit, Poles, Pool, Side};
use virtio_queue::QueueT;

use crate::device::{DeviceState, MtuError, RX_QUEUE, TX_QUEUE};
use crate::protocol::{ControlThread, Endpoint, ProtocolError};
use crate::virtq::{RxStats, RxVirtio, TxStats, TxVirtio, notify};

/// Errors creating a [`Vhost`] brick.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// The vhost-user socket could not be set up.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The MTU given to [`Vhost::with_mtu`] is below 68 bytes.
    #[error(transparent)]
    Mtu(#[from] MtuError),
}

/// Brick counters beyond the per-side packet counts the graph keeps.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VhostStats {
    /// Polls or bursts skipped because the control thread held the device state.
    pub busy: u64,
    /// Frames from the graph dropped because the guest's receive queue is not running.
    pub rx_drop_not_ready: u64,
    /// Notifications sent to the guest (call eventfd writes).
    pub notifications: u64,
}

/// The vhost brick. See the module documentation.
pub struct Vhost {
    shared: Arc<Mutex<DeviceState>>,
    control: Option<ControlThread>,
    endpoint: Option<Endpoint>,
    pool: Pool,
    tx: TxVirtio,
    rx: RxVirtio,
    stats: VhostStats,
}

impl std::fmt::Debug for Vhost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vhost")
            .field("endpoint", &self.endpoint)
            .field("tx", &self.tx.stats)
            .field("rx", &self.rx.stats)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Vhost {
    /// A vhost brick serving `endpoint` (a socket it listens on, or one it connects to);
    /// frames for the graph come from `pool`.
    ///
    /// # Errors
    /// [`VhostError::Protocol`] when the server socket cannot be bound.
    pub fn new(endpoint: Endpoint, pool: Pool) -> Result<Vhost, VhostError> {
        let shared = Arc::new(Mutex::new(DeviceState::default()));
        let control = ControlThread::spawn(endpoint.clone(), shared.clone())?;
        let mut v = Vhost::with_state(shared, pool);
        v.control = Some(control);
        v.endpoint = Some(endpoint);
        Ok(v)
    }

    /// A vhost brick on an existing device state without a socket (tests drive the state
    /// directly, or another control path owns it).
    pub fn with_state(shared: Arc<Mutex<DeviceState>>, pool: Pool) -> Vhost {
        Vhost {
            shared,
            control: None,
            endpoint: None,
            pool,
            tx: TxVirtio::default(),
            rx: RxVirtio::default(),
            stats: VhostStats::default(),
        }
    }

    /// Advertises `mtu` (bytes, 68..=65535) to the guest: `VIRTIO_NET_F_MTU` is offered and
    /// the virtio-net config space `mtu` field (VIRTIO 1.2 §5.1.4) holds it, served by
    /// `GET_CONFIG` (protocol features `CONFIG` and `MTU` are then offered too). `None`
    /// advertises none (the default). Call it before the frontend connects: a connected
    /// frontend sees the change at its next connection.
    ///
    /// QEMU takes the value it shows the guest from its own `host_mtu` property (which it
    /// only keeps when the backend offers `VIRTIO_NET_F_MTU`): pass the same MTU there, e.g.
    /// `-device virtio-net-pci,netdev=n0,host_mtu=1450`.
    ///
    /// # Errors
    /// [`VhostError::Mtu`] when `mtu` is below 68.
    pub fn with_mtu(self, mtu: Option<u16>) -> Result<Vhost, VhostError> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_mtu(mtu)?;
        Ok(self)
    }

    /// The MTU advertised to the guest (see [`Vhost::with_mtu`]).
    pub fn mtu(&self) -> Option<u16> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).mtu
    }

    /// The device state shared with the control thread.
    pub fn state(&self) -> &Arc<Mutex<DeviceState>> {
        &self.shared
    }

    /// The socket this brick serves, if any.
    pub fn endpoint(&self) -> Option<&Endpoint> {
        self.endpoint.as_ref()
    }

    /// True when a frontend is connected and both virtqueues run.
    pub fn is_running(&self) -> bool {
        let st = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        st.connected && st.ring_ready(RX_QUEUE) && st.ring_ready(TX_QUEUE)
    }

    /// Receive buffers (descriptor chains) the guest has posted and the brick has not used
    /// yet, or `None` while the receive queue is not running. A sender can pace itself on
    /// it instead of overflowing the ring.
    pub fn rx_room(&self) -> Option<u16> {
        let st = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if !st.ring_ready(RX_QUEUE) {
            return None;
        }
        let q = &st.vrings[RX_QUEUE].queue;
        let idx = q
            .avail_idx(st.mem.as_ref()?, std::sync::atomic::Ordering::Acquire)
            .ok()?;
        Some(idx.0.wrapping_sub(q.next_avail()))
    }

    /// Guest → graph counters.
    pub fn tx_stats(&self) -> TxStats {
        self.tx.stats
    }

    /// Graph → guest counters.
    pub fn rx_stats(&self) -> RxStats {
        self.rx.stats
    }

    /// Brick counters.
    pub fn stats(&self) -> VhostStats {
        self.stats
    }
}

impl Brick for Vhost {
    fn kind(&self) -> &'static str {
        "vhost"
    }

    fn poles(&self) -> Poles {
        Poles::Monopole
    }

    fn pollable(&self) -> bool {
        true
    }

    fn poll(&mut self, out: &mut Emit) -> Result<usize, BrickError> {
        let mut guard = match self.shared.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.stats.busy += 1;
                return Ok(0);
            }
        };
        if !guard.ring_ready(TX_QUEUE) {
            return Ok(0);
        }
        let st = &mut *guard;
        let Some(mem) = st.map.as_ref() else {
            return Ok(0);
        };
        let vring = &mut st.vrings[TX_QUEUE];
        let since = vring.queue.next_used();
        let mut burst = Burst::new();
        let taken = self.tx.pop_frames(
            &mut vring.queue,
            mem,
            &self.pool,
            st.net,
            packetgraph::BURST_SIZE,
            &mut burst,
        );
        if taken > 0 && notify(&vring.queue, mem, vring.call.as_ref(), since) {
            self.stats.notifications += 1;
        }
        drop(guard);
        let n = burst.len();
        if n > 0 {
            out.send_peer(burst);
        }
        Ok(n.max(taken))
    }

    fn burst(
        &mut self,
        _from: Side,
        _edge: usize,
        pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        let mut guard = match self.shared.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                self.stats.busy += 1;
                self.stats.rx_drop_not_ready += pkts.len() as u64;
                return Ok(());
            }
        };
        if !guard.ring_ready(RX_QUEUE) {
            self.stats.rx_drop_not_ready += pkts.len() as u64;
            return Ok(());
        }
        let st = &mut *guard;
        let Some(mem) = st.map.as_ref() else {
            return Ok(());
        };
        let vring = &mut st.vrings[RX_QUEUE];
        let since = vring.queue.next_used();
        let delivered =
            self.rx
                .push_burst(&mut vring.queue, mem, st.net, pkts.iter().map(|p| p.data()));
        if delivered > 0 && notify(&vring.queue, mem, vring.call.as_ref(), since) {
            self.stats.notifications += 1;
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let t = self.tx.stats;
        let r = self.rx.stats;
        vec![
            ("guest_tx_packets", t.packets),
            ("guest_tx_bytes", t.bytes),
            ("guest_tx_drop_out_of_memory", t.drop_out_of_memory),
            ("guest_tx_drop_wrong_direction", t.drop_wrong_direction),
            ("guest_tx_drop_short", t.drop_short),
            ("guest_tx_drop_too_long", t.drop_too_long),
            ("guest_tx_drop_bad_header", t.drop_bad_header),
            ("guest_tx_ring_errors", t.ring_errors),
            ("guest_tx_checksums_completed", t.checksums_completed),
            ("guest_rx_packets", r.packets),
            ("guest_rx_bytes", r.bytes),
            ("guest_rx_buffers", r.buffers),
            ("guest_rx_drop_no_buffer", r.drop_no_buffer),
            ("guest_rx_drop_too_big", r.drop_too_big),
            ("guest_rx_drop_bad_chain", r.drop_bad_chain),
            ("guest_rx_drop_not_ready", self.stats.rx_drop_not_ready),
            ("guest_rx_ring_errors", r.ring_errors),
            ("notifications", self.stats.notifications),
            ("busy", self.stats.busy),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VringAddrs};
    use crate::net_hdr::NetHdr;
    use crate::virtq::GuestMem;
    use packetgraph::bricks::Collect;
    use packetgraph::{Graph, PoolConfig};
    use std::sync::Arc;
    use virtio_queue::QueueT;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion};

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Guest memory of `size` bytes at GPA 0 and its one region.
    fn test_mem(size: usize) -> (GuestMem, Arc<vm_memory::GuestRegionMmap<()>>) {
        let r =
            Arc::new(vm_memory::GuestRegionMmap::from_range(GuestAddress(0), size, None).unwrap());
        (GuestMem::from_arc_regions(vec![r.clone()]).unwrap(), r)
    }

    /// A device state over `region` (identity VA = GPA) with both rings placed on the mock
    /// queues, as the control thread leaves it after QEMU's setup.
    fn state_with(
        region: Arc<vm_memory::GuestRegionMmap<()>>,
        rx: &MockSplitQueue<'_, GuestMem>,
        tx: &MockSplitQueue<'_, GuestMem>,
    ) -> DeviceState {
        let mut st = DeviceState::default();
        st.regions.push(crate::device::MemRegion {
            gpa: 0,
            size: region.len(),
            uaddr: 0,
            mapping: region,
        });
        st.rebuild_memory().unwrap();
        st.set_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF);
        for (i, q) in [(RX_QUEUE, rx), (TX_QUEUE, tx)] {
            st.vrings[i].queue.set_size(16);
            st.vrings[i].addrs = Some(VringAddrs {
                desc: q.desc_table_addr().0,
                avail: q.avail_addr().0,
                used: q.used_addr().0,
            });
            st.vrings[i].started = true;
            st.vrings[i].enabled = true;
            assert!(st.place_ring(i));
        }
        st
    }

    #[test]
    fn guest_tx_to_graph_and_graph_to_guest_rx() {
        let (mem, region) = test_mem(0x40_0000);
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x10_0000), 16);
        let st = state_with(region, &rxq, &txq);
        // Guest TX: three frames.
        let mut descs = Vec::new();
        for i in 0..3u64 {
            let mut b = vec![0u8; 12];
            NetHdr::default().emit(&mut b, 12);
            b.extend(std::iter::repeat_n(i as u8 + 1, 60));
            mem.write_slice(&b, GuestAddress(0x20_0000 + i * 0x1000))
                .unwrap();
            descs.push(desc(0x20_0000 + i * 0x1000, 72, 0));
        }
        txq.add_desc_chains(&descs, 0).unwrap();
        // Guest RX: two buffers.
        rxq.add_desc_chains(&[desc(0x30_0000, 2048, 2), desc(0x30_1000, 2048, 2)], 0)
            .unwrap();
        let shared = Arc::new(Mutex::new(st));
        let pool = Pool::new(PoolConfig {
            frame_count: 64,
            ..Default::default()
        })
        .unwrap();
        let mut g = Graph::new("t");
        g.add("vm", Vhost::with_state(shared.clone(), pool.clone()))
            .unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link("vm", "sink").unwrap();
        assert_eq!(g.poll().unwrap(), 3);
        let sink = g.get::<Collect>("sink").unwrap();
        let got = sink.last(Side::West).unwrap();
        assert_eq!(got.len(), 3);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p.data(), &[i as u8 + 1; 60][..]);
        }
        assert_eq!(txq.used().idx().load(), 3);
        // Graph → guest: three frames into two buffers: one dropped (no buffer).
        let mut b = Burst::new();
        for i in 0..3u8 {
            b.push(pool.packet_from(&[0xa0 + i; 70]).unwrap()).unwrap();
        }
        g.get_mut::<Vhost>("vm")
            .unwrap()
            .burst(Side::East, 0, b, &mut Emit::new())
            .unwrap();
        let vm = g.get::<Vhost>("vm").unwrap();
        assert_eq!(vm.rx_stats().packets, 2);
        assert_eq!(vm.rx_stats().drop_no_buffer, 1);
        let mut buf = [0u8; 82];
        mem.read_slice(&mut buf, GuestAddress(0x30_1000)).unwrap();
        assert_eq!(&buf[12..], &[0xa1; 70][..]);
        assert_eq!(rxq.used().idx().load(), 2);
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn not_ready_device_drops_and_counts() {
        let pool = Pool::new(PoolConfig {
            frame_count: 8,
            ..Default::default()
        })
        .unwrap();
        let mut v = Vhost::with_state(Arc::new(Mutex::new(DeviceState::default())), pool.clone());
        let mut out = Emit::new();
        assert_eq!(v.poll(&mut out).unwrap(), 0);
        let mut b = Burst::new();
        b.push(pool.packet_from(&[1; 60]).unwrap()).unwrap();
        v.burst(Side::West, 0, b, &mut out).unwrap();
        assert_eq!(v.stats().rx_drop_not_ready, 1);
        assert_eq!(pool.available(), 8);
        assert_eq!(out.empty_bursts(), 0);
        assert!(out.pending().is_empty());
    }

    #[test]
    fn with_mtu_sets_the_advertised_mtu_and_refuses_below_68() {
        let pool = Pool::new(PoolConfig {
            frame_count: 8,
            ..Default::default()
        })
        .unwrap();
        let shared = Arc::new(Mutex::new(DeviceState::default()));
        let v = Vhost::with_state(shared.clone(), pool.clone())
            .with_mtu(Some(1450))
            .unwrap();
        assert_eq!(v.mtu(), Some(1450));
        assert_ne!(
            shared.lock().unwrap().offered_features() & crate::device::VIRTIO_NET_F_MTU,
            0
        );
        let e = Vhost::with_state(Arc::new(Mutex::new(DeviceState::default())), pool)
            .with_mtu(Some(67))
            .unwrap_err();
        assert!(matches!(e, VhostError::Mtu(MtuError(67))));
        assert_eq!(v.with_mtu(None).unwrap().mtu(), None);
    }

    #[test]
    fn busy_control_thread_skips_poll() {
        let pool = Pool::new(PoolConfig {
            frame_count: 8,
            ..Default::default()
        })
        .unwrap();
        let shared = Arc::new(Mutex::new(DeviceState::default()));
        let mut v = Vhost::with_state(shared.clone(), pool);
        let _held = shared.lock().unwrap();
        assert_eq!(v.poll(&mut Emit::new()).unwrap(), 0);
        assert_eq!(v.stats().busy, 1);
    }
}
