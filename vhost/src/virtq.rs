//! The virtqueue side of the virtio-net device: descriptor chains in guest memory ↔ frames.
//!
//! Nothing here knows about sockets or the graph (after cloud-hypervisor's
//! `net_util/src/queue_pair.rs` split): [`TxVirtio`] turns the chains the driver offers on its
//! transmit queue into pool frames, [`RxVirtio`] copies frames into the buffers the driver
//! offers on its receive queue. Both work on a [`Queue`] and a [`GuestMem`] and are tested
//! against `virtio_queue::mock::MockSplitQueue`.
//!
//! A hostile driver cannot make them panic or access memory outside the guest regions:
//! every guest access goes through `vm-memory`'s checked `read_slice`/`write_slice`, chain
//! walks are bounded by the queue size (loops end), and a chain that breaks a rule
//! (device-writable buffer on the transmit queue, read-only buffer on the receive queue,
//! buffer outside guest memory, empty or longer than a frame) is returned to the driver
//! unused, dropped and counted.
//!
//! Spec: VIRTIO 1.2 §2.7 "Split Virtqueues", §5.1.6 "Device Operation" (virtio-net).

use std::num::Wrapping;

use arrayvec::ArrayVec;
use packetgraph::{Burst, Packet, Pool};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::net_hdr::{HdrError, NetHdr};

/// The guest memory type the backend maps (regions shared by the frontend).
pub type GuestMem = vm_memory::GuestMemoryMmap<()>;

/// Most receive-queue chains one frame may be spread over with `VIRTIO_NET_F_MRG_RXBUF`.
pub const MAX_RX_BUFFERS: usize = 32;

/// Why one descriptor chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A buffer lies (partly) outside the guest memory regions.
    #[error("descriptor buffer {addr:#x}+{len} outside guest memory")]
    OutOfMemory {
        /// Guest physical address of the buffer.
        addr: u64,
        /// Buffer length in bytes.
        len: u32,
    },
    /// A device-writable buffer on the transmit queue or a read-only one on the receive
    /// queue (VIRTIO 1.2 §2.7.4.2).
    #[error("descriptor with the wrong VIRTQ_DESC_F_WRITE flag")]
    WrongDirection,
    /// The chain holds no bytes (or fewer than a virtio-net header).
    #[error("chain of {0} bytes is shorter than a virtio-net header")]
    Short(usize),
    /// The chain is longer than a pool frame.
    #[error("chain longer than {0} bytes")]
    TooLong(usize),
    /// The virtio-net header was refused.
    #[error(transparent)]
    Header(#[from] HdrError),
}

/// Counters of the transmit path (guest → host).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxStats {
    /// Frames taken from the guest.
    pub packets: u64,
    /// Their bytes (Ethernet frame, without the virtio-net header).
    pub bytes: u64,
    /// Chains with a buffer outside guest memory.
    pub drop_out_of_memory: u64,
    /// Chains with a device-writable buffer.
    pub drop_wrong_direction: u64,
    /// Chains shorter than a virtio-net header (incl. empty ones).
    pub drop_short: u64,
    /// Chains longer than a frame.
    pub drop_too_long: u64,
    /// Chains whose virtio-net header was refused (GSO, bad checksum offsets).
    pub drop_bad_header: u64,
    /// Used-ring or avail-ring accesses that failed (ring outside memory, bad avail index).
    pub ring_errors: u64,
    /// Frames whose partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) was completed.
    pub checksums_completed: u64,
}

impl TxStats {
    fn count(&mut self, e: ChainError) {
        match e {
            ChainError::OutOfMemory { .. } => self.drop_out_of_memory += 1,
            ChainError::WrongDirection => self.drop_wrong_direction += 1,
            ChainError::Short(_) => self.drop_short += 1,
            ChainError::TooLong(_) => self.drop_too_long += 1,
            ChainError::Header(_) => self.drop_bad_header += 1,
        }
    }

    /// All dropped chains.
    pub fn drops(&self) -> u64 {
        self.drop_out_of_memory
            + self.drop_wrong_direction
            + self.drop_short
            + self.drop_too_long
            + self.drop_bad_header
    }
}

/// Counters of the receive path (host → guest).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxStats {
    /// Frames written into guest buffers.
    pub packets: u64,
    /// Their bytes (Ethernet frame, without the virtio-net header).
    pub bytes: u64,
    /// Descriptor chains used (more than `packets` with mergeable buffers).
    pub buffers: u64,
    /// Frames dropped because the guest offered no (or not enough) buffers.
    pub drop_no_buffer: u64,
    /// Frames dropped because the buffer offered was too small (no mergeable buffers).
    pub drop_too_big: u64,
    /// Frames dropped because a chain was malformed (returned to the guest with length 0).
    pub drop_bad_chain: u64,
    /// Used-ring or avail-ring accesses that failed.
    pub ring_errors: u64,
}

/// Virtio-net parameters negotiated with the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// virtio-net header length: 12 with `VERSION_1` or `MRG_RXBUF`, else 10.
    pub hdr_len: usize,
    /// `VIRTIO_NET_F_MRG_RXBUF` negotiated: a frame may span several receive chains.
    pub mrg_rxbuf: bool,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            hdr_len: crate::net_hdr::NET_HDR_LEN_V1,
            mrg_rxbuf: true,
        }
    }
}

/// Frames available on a queue: `avail.idx - next_avail`, or `None` when the ring cannot
/// be read or the driver published more entries than the queue holds.
fn pending(q: &Queue, mem: &GuestMem) -> Option<u16> {
    let idx = q
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .ok()?;
    let n = (idx - Wrapping(q.next_avail())).0;
    (n <= q.size()).then_some(n)
}

/// The transmit queue's side: chains → frames.
#[derive(Debug, Default)]
pub struct TxVirtio {
    /// Counters.
    pub stats: TxStats,
}

impl TxVirtio {
    /// Takes up to `budget` chains from the transmit queue `q`, copies each into a frame of
    /// `pool` (virtio-net header stripped, partial checksum completed) and pushes it into
    /// `out`. Every chain taken is put in the used ring (length 0: nothing written), good or
    /// not. Chains stay in the ring when the pool is empty (back-pressure, no drop).
    ///
    /// Returns the number of chains taken; the caller decides whether to notify the driver
    /// (`Queue::needs_notification`).
    pub fn pop_frames(
        &mut self,
        q: &mut Queue,
        mem: &GuestMem,
        pool: &Pool,
        cfg: NetConfig,
        budget: usize,
        out: &mut Burst,
    ) -> usize {
        let Some(n) = pending(q, mem) else {
            self.stats.ring_errors += 1;
            return 0;
        };
        let want = (n as usize)
            .min(budget)
            .min(packetgraph::BURST_SIZE - out.len());
        if want == 0 {
            return 0;
        }
        let mut frames: ArrayVec<Packet, { packetgraph::BURST_SIZE }> = ArrayVec::new();
        pool.alloc_with(want, |p| frames.push(p));
        let mut taken = 0;
        while let Some(mut pkt) = frames.pop() {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                frames.push(pkt);
                break;
            };
            taken += 1;
            let head = chain.head_index();
            match copy_chain(chain, mem, &mut pkt, cfg.hdr_len) {
                Ok(csum) => {
                    self.stats.checksums_completed += u64::from(csum);
                    self.stats.packets += 1;
                    self.stats.bytes += pkt.len() as u64;
                    // Cannot fail: `out` had room for `want` packets.
                    let _ = out.push(pkt);
                }
                Err(e) => {
                    self.stats.count(e);
                    pkt.truncate(0);
                    frames.push(pkt);
                }
            }
            if q.add_used(mem, head, 0).is_err() {
                self.stats.ring_errors += 1;
            }
        }
        taken
    }
}

/// Copies a transmit chain into `pkt` (which must be empty), then checks and strips the
/// virtio-net header. Returns whether a partial checksum was completed.
fn copy_chain<M>(
    chain: virtio_queue::DescriptorChain<M>,
    mem: &GuestMem,
    pkt: &mut Packet,
    hdr_len: usize,
) -> Result<bool, ChainError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let max = pkt.tailroom();
    for desc in chain {
        if desc.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        if pkt.len() + len > max {
            return Err(ChainError::TooLong(max - hdr_len));
        }
        let dst = pkt
            .append(len)
            .map_err(|_| ChainError::TooLong(max - hdr_len))?;
        mem.read_slice(dst, desc.addr())
            .map_err(|_| ChainError::OutOfMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
    }
    if pkt.len() <= hdr_len {
        return Err(ChainError::Short(pkt.len()));
    }
    let hdr = NetHdr::parse(pkt.data(), hdr_len)?;
    hdr.finish_tx(&mut pkt.data_mut()[hdr_len..])?;
    // Cannot fail: the packet is longer than the header.
    let _ = pkt.trim_front(hdr_len);
    Ok(hdr.flags & crate::net_hdr::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0)
}

/// Where the bytes of the virtio-net header landed in guest memory (the header is written
/// last, once `num_buffers` is known, and may straddle descriptors).
type HdrSegments = ArrayVec<(GuestAddress, usize, usize), { crate::net_hdr::NET_HDR_LEN_V1 }>;

/// Why one frame could not be delivered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// Not enough buffers on the receive queue.
    #[error("no receive buffer")]
    NoBuffer,
    /// A single chain is too small and mergeable buffers are off.
    #[error("frame larger than the receive buffer")]
    TooBig,
    /// A chain was malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The rings themselves could not be accessed.
    #[error("receive ring not accessible")]
    Ring,
}

/// The receive queue's side: frames → chains.
#[derive(Debug, Default)]
pub struct RxVirtio {
    /// Counters.
    pub stats: RxStats,
}

impl RxVirtio {
    /// Copies `frame` (an Ethernet frame) behind a virtio-net header into the buffers the
    /// driver offers on receive queue `q`, spreading it over several chains with mergeable
    /// buffers. Counts and returns the error when the frame is dropped; a malformed chain
    /// is returned to the driver with length 0.
    ///
    /// The caller notifies the driver after a burst (`Queue::needs_notification`).
    ///
    /// # Errors
    /// [`RxError`] saying why the frame was dropped (already counted).
    pub fn push_frame(
        &mut self,
        q: &mut Queue,
        mem: &GuestMem,
        cfg: NetConfig,
        frame: &[u8],
    ) -> Result<(), RxError> {
        let r = self.try_push(q, mem, cfg, frame);
        match r {
            Ok(()) => {
                self.stats.packets += 1;
                self.stats.bytes += frame.len() as u64;
            }
            Err(RxError::NoBuffer) => self.stats.drop_no_buffer += 1,
            Err(RxError::TooBig) => self.stats.drop_too_big += 1,
            Err(RxError::Chain(_)) => self.stats.drop_bad_chain += 1,
            Err(RxError::Ring) => self.stats.ring_errors += 1,
        }
        r
    }

    fn try_push(
        &mut self,
        q: &mut Queue,
        mem: &GuestMem,
        cfg: NetConfig,
        frame: &[u8],
    ) -> Result<(), RxError> {
        let start = q.next_avail();
        let hdr_len = cfg.hdr_len;
        let total = hdr_len + frame.len();
        // (head, bytes written) of every chain used for this frame.
        let mut used: ArrayVec<(u16, u32), MAX_RX_BUFFERS> = ArrayVec::new();
        let mut hdr_at: HdrSegments = ArrayVec::new();
        let mut written = 0usize;
        let mut failure: Option<RxError> = None;
        while written < total {
            if used.is_full() {
                failure = Some(RxError::TooBig);
                break;
            }
            match pending(q, mem) {
                None => {
                    failure = Some(RxError::Ring);
                    break;
                }
                Some(0) => {
                    failure = Some(RxError::NoBuffer);
                    break;
                }
                Some(_) => {}
            }
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                failure = Some(RxError::Ring);
                break;
            };
            let head = chain.head_index();
            let mut in_chain = 0usize;
            let mut bad = None;
            for desc in chain {
                if written == total {
                    break;
                }
                if !desc.is_write_only() {
                    bad = Some(ChainError::WrongDirection);
                    break;
                }
                let cap = desc.len() as usize;
                let mut off = 0usize;
                while off < cap && written < total {
                    let addr = GuestAddress(desc.addr().0.wrapping_add(off as u64));
                    let res = if written < hdr_len {
                        // Reserve room for the header; it is written at the end.
                        let n = (hdr_len - written).min(cap - off);
                        if mem.check_range(addr, n, vm_memory::Permissions::Write) {
                            hdr_at.push((addr, written, n));
                            Ok(n)
                        } else {
                            Err(())
                        }
                    } else {
                        let from = written - hdr_len;
                        let n = (frame.len() - from).min(cap - off);
                        mem.write_slice(&frame[from..from + n], addr)
                            .map(|_| n)
                            .map_err(|_| ())
                    };
                    match res {
                        Ok(n) => {
                            off += n;
                            written += n;
                            in_chain += n;
                        }
                        Err(()) => {
                            bad = Some(ChainError::OutOfMemory {
                                addr: desc.addr().0,
                                len: desc.len(),
                            });
                            break;
                        }
                    }
                }
                if bad.is_some() {
                    break;
                }
            }
            if bad.is_none() && in_chain == 0 {
                bad = Some(ChainError::Short(0));
            }
            // Cannot overflow: checked `is_full` above.
            used.push((head, in_chain as u32));
            if let Some(e) = bad {
                failure = Some(RxError::Chain(e));
                break;
            }
            if written < total && !cfg.mrg_rxbuf {
                failure = Some(RxError::TooBig);
                break;
            }
        }
        if let Some(e) = failure {
            match e {
                RxError::Chain(_) => {
                    // Give every chain taken back, unused; the frame is dropped.
                    for &(head, _) in &used {
                        if q.add_used(mem, head, 0).is_err() {
                            self.stats.ring_errors += 1;
                        }
                    }
                }
                _ => {
                    // Leave the chains to a later (smaller) frame.
                    q.set_next_avail(start);
                }
            }
            return Err(e);
        }
        let hdr = NetHdr {
            num_buffers: used.len() as u16,
            ..Default::default()
        };
        let mut hb = [0u8; crate::net_hdr::NET_HDR_LEN_V1];
        hdr.emit(&mut hb, hdr_len);
        for &(addr, from, n) in &hdr_at {
            if mem.write_slice(&hb[from..from + n], addr).is_err() {
                return Err(RxError::Ring);
            }
        }
        for &(head, len) in &used {
            if q.add_used(mem, head, len).is_err() {
                return Err(RxError::Ring);
            }
        }
        self.stats.buffers += used.len() as u64;
        Ok(())
    }
}

/// Sends a notification through `call` (an eventfd) if the driver wants one for queue `q`
/// (EVENT_IDX `used_event`, or the `VRING_AVAIL_F_NO_INTERRUPT` flag). Returns whether it
/// notified.
pub fn notify(q: &mut Queue, mem: &GuestMem, call: Option<&std::fs::File>) -> bool {
    let Some(call) = call else { return false };
    let needed = if q.event_idx_enabled() {
        q.needs_notification(mem).unwrap_or(true)
    } else {
        // Without EVENT_IDX, honour VRING_AVAIL_F_NO_INTERRUPT (avail.flags bit 0).
        let flags: u16 = mem
            .load(
                GuestAddress(q.avail_ring()),
                std::sync::atomic::Ordering::Acquire,
            )
            .map(u16::from_le)
            .unwrap_or(0);
        flags & 1 == 0
    };
    if needed {
        use std::io::Write;
        let mut f = call;
        let _ = f.write(&1u64.to_ne_bytes());
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net_hdr::VIRTIO_NET_HDR_F_NEEDS_CSUM;
    use packetgraph::PoolConfig;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const F_INDIRECT: u16 = 4;

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            frame_count: 128,
            ..Default::default()
        })
        .unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn frame(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    /// Writes a TX buffer (12-byte header + frame) at `addr`.
    fn put_tx(m: &GuestMem, addr: u64, hdr: NetHdr, f: &[u8]) -> u32 {
        let mut b = vec![0u8; 12];
        hdr.emit(&mut b, 12);
        b.extend_from_slice(f);
        m.write_slice(&b, GuestAddress(addr)).unwrap();
        b.len() as u32
    }

    fn used_elem(_m: &GuestMem, vq: &MockSplitQueue<'_, GuestMem>, i: u16) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i as usize).unwrap().load();
        (e.id(), e.len())
    }

    #[test]
    fn tx_single_and_split_chains_strip_header() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let f1 = frame(60, 1);
        let l1 = put_tx(&m, 0x10_0000, NetHdr::default(), &f1);
        // Second frame: header and payload in separate descriptors, payload split again.
        let f2 = frame(1514, 2);
        let l2 = put_tx(&m, 0x11_0000, NetHdr::default(), &f2);
        vq.add_desc_chains(
            &[
                desc(0x10_0000, l1, 0, 0),
                desc(0x11_0000, 12, F_NEXT, 2),
                desc(0x11_000c, 1000, F_NEXT, 3),
                desc(0x11_000c + 1000, l2 - 12 - 1000, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let p = pool();
        let mut tx = TxVirtio::default();
        let mut out = Burst::new();
        let n = tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out);
        assert_eq!(n, 2);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data(), &f1[..]);
        assert_eq!(out[1].data(), &f2[..]);
        assert_eq!(tx.stats.packets, 2);
        assert_eq!(tx.stats.bytes, 60 + 1514);
        assert_eq!(vq.used().idx().load(), 2);
        assert_eq!(used_elem(&m, &vq, 0), (0, 0));
        assert_eq!(used_elem(&m, &vq, 1), (1, 0));
        // Nothing more.
        assert_eq!(
            tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out),
            0
        );
        drop(out);
        assert_eq!(p.available(), 128, "no leaked frames");
    }

    #[test]
    fn tx_indirect_chain() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let f = frame(100, 3);
        let l = put_tx(&m, 0x10_0000, NetHdr::default(), &f);
        // Indirect table at 0x18_0000 with two descriptors.
        let table = [
            desc(0x10_0000, 40, F_NEXT, 1),
            desc(0x10_0000 + 40, l - 40, 0, 0),
        ];
        for (i, d) in table.iter().enumerate() {
            m.write_obj(*d, GuestAddress(0x18_0000 + 16 * i as u64))
                .unwrap();
        }
        vq.add_desc_chains(&[desc(0x18_0000, 32, F_INDIRECT, 0)], 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let p = pool();
        let mut tx = TxVirtio::default();
        let mut out = Burst::new();
        assert_eq!(
            tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out),
            1
        );
        assert_eq!(out[0].data(), &f[..]);
    }

    #[test]
    fn tx_completes_partial_checksum() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut f = vec![0u8; 64];
        f[12] = 0x08;
        f[34..36].copy_from_slice(&[0x12, 0x34]); // data to sum
        let h = NetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 2,
            ..Default::default()
        };
        let l = put_tx(&m, 0x10_0000, h, &f);
        vq.add_desc_chains(&[desc(0x10_0000, l, 0, 0)], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let p = pool();
        let mut tx = TxVirtio::default();
        let mut out = Burst::new();
        tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out);
        let d = out[0].data();
        assert_eq!(u16::from_be_bytes([d[36], d[37]]), !0x1234u16);
        assert_eq!(tx.stats.checksums_completed, 1);
    }

    /// Malformed chains: each is returned to the guest, dropped and counted; the good
    /// chain after them still gets through.
    #[test]
    fn tx_malformed_chains_are_dropped_and_counted() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let good = frame(60, 9);
        let l = put_tx(&m, 0x10_0000, NetHdr::default(), &good);
        let gso = put_tx(
            &m,
            0x12_0000,
            NetHdr {
                gso_type: 1,
                ..Default::default()
            },
            &good,
        );
        let bad_csum = put_tx(
            &m,
            0x13_0000,
            NetHdr {
                flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
                csum_start: 60,
                csum_offset: 10,
                ..Default::default()
            },
            &good,
        );
        vq.add_desc_chains(
            &[
                // 0: outside guest memory
                desc(0x1000_0000, 100, 0, 0),
                // 1: straddles the end of guest memory
                desc(0x1f_fff0, 100, 0, 0),
                // 2: device-writable buffer on the TX queue
                desc(0x10_0000, l, F_WRITE, 0),
                // 3: zero length
                desc(0x10_0000, 0, 0, 0),
                // 4: huge
                desc(0x10_0000, u32::MAX, 0, 0),
                // 5: GSO header
                desc(0x12_0000, gso, 0, 0),
                // 6: checksum offsets outside the frame
                desc(0x13_0000, bad_csum, 0, 0),
                // 7: shorter than the header
                desc(0x10_0000, 8, 0, 0),
                // 8: good
                desc(0x10_0000, l, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let p = pool();
        let mut tx = TxVirtio::default();
        let mut out = Burst::new();
        assert_eq!(
            tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out),
            9
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data(), &good[..]);
        let s = tx.stats;
        assert_eq!(s.drop_out_of_memory, 2);
        assert_eq!(s.drop_wrong_direction, 1);
        assert_eq!(s.drop_short, 2);
        assert_eq!(s.drop_too_long, 1);
        assert_eq!(s.drop_bad_header, 2);
        assert_eq!(s.drops(), 8);
        assert_eq!(
            vq.used().idx().load(),
            9,
            "every chain goes back to the guest"
        );
        drop(out);
        assert_eq!(p.available(), 128);
    }

    /// A descriptor loop (0 → 1 → 0 ...) ends after queue-size descriptors.
    #[test]
    fn tx_descriptor_loop_terminates() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.desc_table()
            .store(0, desc(0x10_0000, 4, F_NEXT, 1))
            .unwrap();
        vq.desc_table()
            .store(1, desc(0x10_0000, 4, F_NEXT, 0))
            .unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        let p = pool();
        let mut tx = TxVirtio::default();
        let mut out = Burst::new();
        assert_eq!(
            tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out),
            1
        );
        // 16 descriptors of 4 bytes = 64 bytes: a frame of 52 bytes of whatever was there.
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 16 * 4 - 12);
    }

    /// An avail index more than a queue ahead is refused without taking anything.
    #[test]
    fn tx_bogus_avail_index() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.avail().idx().store(1000);
        let mut q: Queue = vq.create_queue().unwrap();
        let p = pool();
        let mut tx = TxVirtio::default();
        let mut out = Burst::new();
        assert_eq!(
            tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out),
            0
        );
        assert_eq!(tx.stats.ring_errors, 1);
    }

    #[test]
    fn tx_pool_exhausted_leaves_chains_in_ring() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let f = frame(60, 1);
        let l = put_tx(&m, 0x10_0000, NetHdr::default(), &f);
        vq.add_desc_chains(&[desc(0x10_0000, l, 0, 0), desc(0x10_0000, l, 0, 0)], 0)
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let p = Pool::new(PoolConfig {
            frame_count: 1,
            ..Default::default()
        })
        .unwrap();
        let mut tx = TxVirtio::default();
        let mut out = Burst::new();
        assert_eq!(
            tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out),
            1
        );
        assert_eq!(q.next_avail(), 1);
        drop(out);
        let mut out = Burst::new();
        assert_eq!(
            tx.pop_frames(&mut q, &m, &p, NetConfig::default(), 64, &mut out),
            1
        );
        assert_eq!(out[0].data(), &f[..]);
    }

    fn rx_chains(vq: &MockSplitQueue<'_, GuestMem>, bufs: &[(u64, u32)]) {
        let d: Vec<_> = bufs.iter().map(|&(a, l)| desc(a, l, F_WRITE, 0)).collect();
        vq.add_desc_chains(&d, 0).unwrap();
    }

    fn read(m: &GuestMem, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        m.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    #[test]
    fn rx_single_buffer() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        rx_chains(&vq, &[(0x10_0000, 2048)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rx = RxVirtio::default();
        let f = frame(1514, 4);
        rx.push_frame(&mut q, &m, NetConfig::default(), &f).unwrap();
        assert_eq!(used_elem(&m, &vq, 0), (0, 1526));
        let got = read(&m, 0x10_0000, 1526);
        assert_eq!(&got[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&got[12..], &f[..]);
        assert_eq!(rx.stats.packets, 1);
        // Ring now empty: next frame has no buffer and is counted.
        assert_eq!(
            rx.push_frame(&mut q, &m, NetConfig::default(), &f),
            Err(RxError::NoBuffer)
        );
        assert_eq!(rx.stats.drop_no_buffer, 1);
    }

    #[test]
    fn rx_mergeable_buffers_set_num_buffers() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Three 600-byte buffers; the header itself straddles nothing here.
        rx_chains(&vq, &[(0x10_0000, 600), (0x11_0000, 600), (0x12_0000, 600)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rx = RxVirtio::default();
        let f = frame(1500, 5);
        rx.push_frame(&mut q, &m, NetConfig::default(), &f).unwrap();
        assert_eq!(vq.used().idx().load(), 3);
        assert_eq!(used_elem(&m, &vq, 0), (0, 600));
        assert_eq!(used_elem(&m, &vq, 1), (1, 600));
        assert_eq!(used_elem(&m, &vq, 2), (2, 1512 - 1200));
        let mut all = read(&m, 0x10_0000, 600);
        all.extend(read(&m, 0x11_0000, 600));
        all.extend(read(&m, 0x12_0000, 312));
        assert_eq!(u16::from_le_bytes([all[10], all[11]]), 3);
        assert_eq!(&all[12..], &f[..]);
        assert_eq!(rx.stats.buffers, 3);
    }

    #[test]
    fn rx_header_split_over_descriptors() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                desc(0x10_0000, 5, F_WRITE | F_NEXT, 1),
                desc(0x11_0000, 5, F_WRITE | F_NEXT, 2),
                desc(0x12_0000, 200, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rx = RxVirtio::default();
        let f = frame(60, 6);
        rx.push_frame(&mut q, &m, NetConfig::default(), &f).unwrap();
        let mut all = read(&m, 0x10_0000, 5);
        all.extend(read(&m, 0x11_0000, 5));
        all.extend(read(&m, 0x12_0000, 62));
        assert_eq!(u16::from_le_bytes([all[10], all[11]]), 1);
        assert_eq!(&all[12..], &f[..]);
        assert_eq!(used_elem(&m, &vq, 0), (0, 72));
    }

    #[test]
    fn rx_not_mergeable_too_small_is_dropped_and_buffer_kept() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        rx_chains(&vq, &[(0x10_0000, 100)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rx = RxVirtio::default();
        let cfg = NetConfig {
            hdr_len: 12,
            mrg_rxbuf: false,
        };
        assert_eq!(
            rx.push_frame(&mut q, &m, cfg, &frame(200, 0)),
            Err(RxError::TooBig)
        );
        assert_eq!(q.next_avail(), 0, "the buffer stays for the next frame");
        rx.push_frame(&mut q, &m, cfg, &frame(60, 0)).unwrap();
        assert_eq!(rx.stats.drop_too_big, 1);
        assert_eq!(rx.stats.packets, 1);
    }

    #[test]
    fn rx_malformed_chains_returned_with_zero_length() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                desc(0x10_0000, 2048, 0, 0),         // read-only on the RX queue
                desc(0x1000_0000, 2048, F_WRITE, 0), // outside guest memory
                desc(0x10_0000, 0, F_WRITE, 0),      // empty
                desc(0x10_0000, 2048, F_WRITE, 0),   // good
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut rx = RxVirtio::default();
        let f = frame(60, 1);
        for _ in 0..3 {
            assert!(matches!(
                rx.push_frame(&mut q, &m, NetConfig::default(), &f),
                Err(RxError::Chain(_))
            ));
        }
        rx.push_frame(&mut q, &m, NetConfig::default(), &f).unwrap();
        assert_eq!(rx.stats.drop_bad_chain, 3);
        assert_eq!(vq.used().idx().load(), 4);
        assert_eq!(used_elem(&m, &vq, 0), (0, 0));
        assert_eq!(used_elem(&m, &vq, 1), (1, 0));
        assert_eq!(used_elem(&m, &vq, 2), (2, 0));
        assert_eq!(used_elem(&m, &vq, 3), (3, 72));
    }

    #[test]
    fn notify_honours_event_idx() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        rx_chains(&vq, &[(0x10_0000, 2048), (0x11_0000, 2048)]);
        let mut q: Queue = vq.create_queue().unwrap();
        // The mock lays its used ring over the avail ring's `used_event`: move it away.
        q.try_set_used_ring_address(GuestAddress(0x8000)).unwrap();
        q.set_event_idx(true);
        // used_event (after the avail ring of 16 entries) = 1: notify when used idx passes 1.
        let used_event = q.avail_ring() + 4 + 2 * 16;
        m.write_obj(1u16, GuestAddress(used_event)).unwrap();
        let efd = tempfile_eventfd();
        let mut rx = RxVirtio::default();
        rx.push_frame(&mut q, &m, NetConfig::default(), &frame(60, 0))
            .unwrap();
        assert!(
            !notify(&mut q, &m, Some(&efd)),
            "used idx 1 has not passed used_event 1"
        );
        rx.push_frame(&mut q, &m, NetConfig::default(), &frame(60, 0))
            .unwrap();
        assert!(notify(&mut q, &m, Some(&efd)));
        let mut v = [0u8; 8];
        use std::io::Read;
        (&efd).read_exact(&mut v).unwrap();
        assert_eq!(u64::from_ne_bytes(v), 1);
    }

    fn tempfile_eventfd() -> std::fs::File {
        let fd = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
        )
        .unwrap();
        std::fs::File::from(std::os::fd::OwnedFd::from(fd))
    }
}
