//! The virtqueue side of the virtio-net device: descriptor chains in guest memory ↔ frames.
//!
//! Nothing here knows about sockets or the graph (after cloud-hypervisor's
//! `net_util/src/queue_pair.rs` split): [`TxVirtio`] turns the chains the driver offers on its
//! transmit queue into pool frames, [`RxVirtio`] copies frames into the buffers the driver
//! offers on its receive queue. Both work on a [`Queue`] (its addresses and indices) and a
//! [`GuestMap`], and are tested against `virtio_queue::mock::MockSplitQueue`.
//!
//! Per burst (after DPDK's vhost library): the rings are translated to host pointers once,
//! the avail index is read once, used elements are written as chains complete and the
//! used index is published once (one release store), and the driver is notified at most
//! once ([`notify`]).
//!
//! A hostile driver cannot make them panic or access memory outside the guest regions:
//! the rings are used only when they lie entirely in guest memory, every buffer access
//! goes through [`GuestMap`]'s bounds-checked `read`/`write`, chain
//! walks are bounded by the queue size (loops end), and a chain that breaks a rule
//! (device-writable buffer on the transmit queue, read-only buffer on the receive queue,
//! buffer outside guest memory, empty or longer than a frame) is returned to the driver
//! unused, dropped and counted.
//!
//! Spec: VIRTIO 1.2 §2.7 "Split Virtqueues", §5.1.6 "Device Operation" (virtio-net).

use std::sync::atomic::{AtomicU16, Ordering};

use arrayvec::ArrayVec;
use packetgraph::{Burst, Packet, Pool};
use virtio_queue::{Queue, QueueT};

use crate::guest_map::GuestMap;

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

/// Descriptor flag: the chain continues at `next` (VIRTIO 1.2 §2.7.5).
const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable buffer.
const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (§2.7.5.3).
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Size of one descriptor in bytes.
const DESC_SIZE: usize = 16;
/// `avail.flags`: the driver does not want used-buffer notifications (§2.7.7).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One descriptor as read from guest memory (a copy: the guest cannot change it under us).
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    #[inline]
    fn from_bytes(b: [u8; DESC_SIZE]) -> Desc {
        Desc {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

/// The three parts of a split virtqueue (VIRTIO 1.2 §2.7) translated to host pointers
/// once per burst. Built only when each part lies entirely in one guest region, with the
/// alignment the spec requires (avail 2, used 4), so every access below stays inside the
/// part it names.
pub(crate) struct SplitRing<'a> {
    desc: *const u8,
    avail: *mut u8,
    used: *mut u8,
    size: u16,
    map: &'a GuestMap,
}

impl<'a> SplitRing<'a> {
    /// The rings of `q` in `map`, or `None` when the queue is not ready, its size is not a
    /// power of two, or a part is not (entirely, aligned) in guest memory.
    pub(crate) fn new(q: &Queue, map: &'a GuestMap) -> Option<SplitRing<'a>> {
        let size = q.size();
        if !q.ready() || !size.is_power_of_two() {
            return None;
        }
        let n = usize::from(size);
        let desc = map.translate(q.desc_table(), DESC_SIZE * n)?;
        // flags, idx, ring[size], used_event
        let avail = map.translate(q.avail_ring(), 6 + 2 * n)?;
        // flags, idx, ring[size] of (id u32, len u32), avail_event
        let used = map.translate(q.used_ring(), 6 + 8 * n)?;
        if !avail.cast::<u16>().is_aligned() || !used.cast::<u32>().is_aligned() {
            return None;
        }
        Some(SplitRing {
            desc,
            avail,
            used,
            size,
            map,
        })
    }

    /// The `u16` at byte `off` of the avail ring, as an atomic.
    #[inline]
    fn avail_u16(&self, off: usize) -> &AtomicU16 {
        debug_assert!(off + 2 <= 6 + 2 * usize::from(self.size));
        // SAFETY: `new` checked that the avail ring (6 + 2 * size bytes) is mapped and
        // 2-aligned; every caller passes an even `off` inside it. The mapping outlives
        // `self` (borrowed map). Atomics are the right access for memory the guest writes
        // concurrently.
        unsafe { AtomicU16::from_ptr(self.avail.add(off).cast::<u16>()) }
    }

    /// `avail.idx`, with acquire ordering: the ring entries and descriptors it covers are
    /// read after it (§2.7.13).
    #[inline]
    fn avail_idx(&self) -> u16 {
        u16::from_le(self.avail_u16(2).load(Ordering::Acquire))
    }

    /// `avail.flags`.
    #[inline]
    fn avail_flags(&self) -> u16 {
        u16::from_le(self.avail_u16(0).load(Ordering::Relaxed))
    }

    /// `avail.ring[i mod size]`: the head of a chain.
    #[inline]
    fn avail_entry(&self, i: u16) -> u16 {
        let slot = usize::from(i & (self.size - 1));
        u16::from_le(self.avail_u16(4 + 2 * slot).load(Ordering::Relaxed))
    }

    /// `used_event` (after the avail ring entries, §2.7.10).
    #[inline]
    fn used_event(&self) -> u16 {
        u16::from_le(
            self.avail_u16(4 + 2 * usize::from(self.size))
                .load(Ordering::Relaxed),
        )
    }

    /// Descriptor `i` of the table (`i < size`, checked by the caller).
    #[inline]
    fn desc(&self, i: u16) -> Desc {
        debug_assert!(i < self.size);
        // SAFETY: `new` checked that the table (16 * size bytes) is mapped and `i < size`;
        // an unaligned volatile read of 16 bytes copies the descriptor once.
        let b = unsafe {
            std::ptr::read_volatile(
                self.desc
                    .add(DESC_SIZE * usize::from(i))
                    .cast::<[u8; DESC_SIZE]>(),
            )
        };
        Desc::from_bytes(b)
    }

    /// Writes used element `slot mod size`; made visible by [`SplitRing::publish_used`].
    #[inline]
    fn set_used(&self, slot: u16, id: u16, len: u32) {
        let off = 4 + 8 * usize::from(slot & (self.size - 1));
        // SAFETY: `new` checked that the used ring (6 + 8 * size bytes) is mapped and
        // 4-aligned; `off + 8` is inside the ring entries.
        unsafe {
            let p = self.used.add(off).cast::<u32>();
            std::ptr::write_volatile(p, u32::from(id).to_le());
            std::ptr::write_volatile(p.add(1), len.to_le());
        }
    }

    /// Stores `used.idx` with release ordering: the used elements written before it are
    /// visible to the driver first (§2.7.8).
    #[inline]
    fn publish_used(&self, idx: u16) {
        // SAFETY: as in `avail_u16`, for the used ring's 2-aligned `idx` at offset 2.
        let a = unsafe { AtomicU16::from_ptr(self.used.add(2).cast::<u16>()) };
        a.store(idx.to_le(), Ordering::Release);
    }
}

/// Walks one descriptor chain like `virtio_queue::DescriptorChain`: at most `size`
/// descriptors (loops end), an indirect table (not nested, length a multiple of 16) is
/// followed once, a `next` outside the table ends the chain, as does a total length over
/// `u32::MAX` (§2.7.5.2).
struct ChainWalk {
    next: u16,
    ttl: u16,
    /// Indirect table (guest address, entries), once switched to it.
    indirect: Option<(u64, u16)>,
    bytes: u32,
}

impl ChainWalk {
    fn new(head: u16, size: u16) -> ChainWalk {
        ChainWalk {
            next: head,
            ttl: size,
            indirect: None,
            bytes: 0,
        }
    }

    #[inline]
    fn next(&mut self, ring: &SplitRing<'_>) -> Option<Desc> {
        loop {
            if self.ttl == 0 {
                return None;
            }
            let d = match self.indirect {
                None => {
                    if self.next >= ring.size {
                        return None;
                    }
                    ring.desc(self.next)
                }
                Some((table, len)) => {
                    if self.next >= len {
                        return None;
                    }
                    let at = table.checked_add(DESC_SIZE as u64 * u64::from(self.next))?;
                    let mut b = [0u8; DESC_SIZE];
                    ring.map.read(at, &mut b).ok()?;
                    Desc::from_bytes(b)
                }
            };
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if self.indirect.is_some() || d.len % DESC_SIZE as u32 != 0 {
                    return None;
                }
                let entries = u16::try_from(d.len / DESC_SIZE as u32).ok()?;
                self.indirect = Some((d.addr, entries));
                self.next = 0;
                self.ttl = entries;
                continue;
            }
            self.bytes = self.bytes.checked_add(d.len)?;
            if d.flags & VIRTQ_DESC_F_NEXT != 0 {
                self.next = d.next;
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(d);
        }
    }
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
    /// not, and the used index is published once for the whole burst. Chains stay in the
    /// ring when the pool is empty (back-pressure, no drop).
    ///
    /// Returns the number of chains taken; the caller then notifies the driver
    /// ([`notify`] with the used index from before the call).
    pub fn pop_frames(
        &mut self,
        q: &mut Queue,
        mem: &GuestMap,
        pool: &Pool,
        cfg: NetConfig,
        budget: usize,
        out: &mut Burst,
    ) -> usize {
        let Some(ring) = SplitRing::new(q, mem) else {
            self.stats.ring_errors += 1;
            return 0;
        };
        let mut next_avail = q.next_avail();
        let n = ring.avail_idx().wrapping_sub(next_avail);
        if n > ring.size {
            // The driver published more entries than the queue holds.
            self.stats.ring_errors += 1;
            return 0;
        }
        let chains = usize::from(n).min(budget);
        let want = chains.min(packetgraph::BURST_SIZE - out.len());
        if want == 0 {
            return 0;
        }
        let mut frames: ArrayVec<Packet, { packetgraph::BURST_SIZE }> = ArrayVec::new();
        pool.alloc_with(want, |p| {
            // Cannot fail: want <= BURST_SIZE.
            let _ = frames.try_push(p);
        });
        let mut frames = frames.into_iter();
        let mut spare: Option<Packet> = None;
        let mut next_used = q.next_used();
        // Used elements kept aside, written in batches (see `SHADOW`).
        let mut shadow: ArrayVec<u16, SHADOW> = ArrayVec::new();
        let mut taken = 0;
        while taken < chains {
            let Some(mut pkt) = spare.take().or_else(|| frames.next()) else {
                break;
            };
            let head = ring.avail_entry(next_avail);
            next_avail = next_avail.wrapping_add(1);
            taken += 1;
            match copy_chain(&ring, head, &mut pkt, cfg.hdr_len) {
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
                    spare = Some(pkt);
                }
            }
            if head < ring.size {
                if shadow.is_full() {
                    for &h in &shadow {
                        ring.set_used(next_used, h, 0);
                        next_used = next_used.wrapping_add(1);
                    }
                    shadow.clear();
                }
                shadow.push(head);
            } else {
                // Not a descriptor index: nothing to give back.
                self.stats.ring_errors += 1;
            }
        }
        for &h in &shadow {
            ring.set_used(next_used, h, 0);
            next_used = next_used.wrapping_add(1);
        }
        if taken > 0 {
            ring.publish_used(next_used);
            q.set_next_avail(next_avail);
            q.set_next_used(next_used);
        }
        if spare.is_some() || frames.len() > 0 {
            // Frames not used go back to the pool in one lock.
            let mut rest = Burst::new();
            rest.extend(spare.into_iter().chain(frames));
        }
        taken
    }
}

/// Copies the transmit chain at `head` into `pkt` (which must be empty), then checks and
/// strips the virtio-net header. Returns whether a partial checksum was completed.
#[inline]
fn copy_chain(
    ring: &SplitRing<'_>,
    head: u16,
    pkt: &mut Packet,
    hdr_len: usize,
) -> Result<bool, ChainError> {
    let max = pkt.tailroom();
    // The common case: one read-only descriptor (no `NEXT`, not indirect) in one region:
    // one translation, the header read aside, the frame copied once to its place.
    if head < ring.size {
        let d = ring.desc(head);
        let len = d.len as usize;
        if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE) == 0
            && len > hdr_len
            && len <= max
            && let Some(src) = ring.map.translate(d.addr, len)
        {
            let mut hb = [0u8; crate::net_hdr::NET_HDR_LEN_V1];
            let hb = &mut hb[..hdr_len.min(crate::net_hdr::NET_HDR_LEN_V1)];
            // SAFETY: `translate` checked that `src` points to `len` > `hdr_len` mapped
            // guest bytes; `hb` holds at most `hdr_len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(src, hb.as_mut_ptr(), hb.len()) };
            let hdr = NetHdr::parse(hb, hdr_len)?;
            let dst = pkt
                .append(len - hdr_len)
                .map_err(|_| ChainError::TooLong(max - hdr_len))?;
            // SAFETY: as above, `src + hdr_len .. + len - hdr_len` is inside the checked
            // range; `dst` is exactly `len - hdr_len` bytes of our frame.
            unsafe { std::ptr::copy_nonoverlapping(src.add(hdr_len), dst.as_mut_ptr(), dst.len()) };
            hdr.finish_tx(dst)?;
            return Ok(hdr.flags & crate::net_hdr::VIRTIO_NET_HDR_F_NEEDS_CSUM != 0);
        }
    }
    let mut walk = ChainWalk::new(head, ring.size);
    while let Some(desc) = walk.next(ring) {
        if desc.flags & VIRTQ_DESC_F_WRITE != 0 {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len as usize;
        if len == 0 {
            continue;
        }
        if pkt.len() + len > max {
            return Err(ChainError::TooLong(max - hdr_len));
        }
        let dst = pkt
            .append(len)
            .map_err(|_| ChainError::TooLong(max - hdr_len))?;
        ring.map
            .read(desc.addr, dst)
            .map_err(|_| ChainError::OutOfMemory {
                addr: desc.addr,
                len: desc.len,
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

/// Where the bytes of the virtio-net header go in guest memory (the header is written
/// last, once `num_buffers` is known, and may straddle descriptors): (guest address,
/// offset in the header, length).
type HdrSegments = ArrayVec<(u64, usize, usize), { crate::net_hdr::NET_HDR_LEN_V1 }>;

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

/// Used elements kept aside before they are written to the ring in one go (after DPDK's
/// shadow used ring: the driver reading the ring sees fewer lines change under it).
const SHADOW: usize = 64;

/// The receive ring during one burst: the avail index read once, the device's indices
/// advanced locally, used elements written in batches of [`SHADOW`] and the used index
/// published once at the end.
struct RxCursor<'a> {
    ring: SplitRing<'a>,
    avail_idx: u16,
    next_avail: u16,
    next_used: u16,
    shadow: ArrayVec<(u16, u32), SHADOW>,
    /// The virtio-net header of a frame in one buffer (`num_buffers` 1).
    simple_hdr: [u8; crate::net_hdr::NET_HDR_LEN_V1],
}

impl RxCursor<'_> {
    /// The head of the next chain the driver offers, if any.
    #[inline]
    fn pop(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_idx {
            return None;
        }
        let head = self.ring.avail_entry(self.next_avail);
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(head)
    }

    /// Returns chain `head` to the driver with `len` bytes written; a head that is not a
    /// descriptor index cannot be returned (`false`).
    #[inline]
    fn put_used(&mut self, head: u16, len: u32) -> bool {
        if head >= self.ring.size {
            return false;
        }
        if self.shadow.is_full() {
            self.flush();
        }
        self.shadow.push((head, len));
        true
    }

    /// Writes the used elements kept aside to the ring (not yet published).
    #[inline]
    fn flush(&mut self) {
        for &(head, len) in &self.shadow {
            self.ring.set_used(self.next_used, head, len);
            self.next_used = self.next_used.wrapping_add(1);
        }
        self.shadow.clear();
    }
}

/// The receive queue's side: frames → chains.
#[derive(Debug, Default)]
pub struct RxVirtio {
    /// Counters.
    pub stats: RxStats,
}

impl RxVirtio {
    /// Copies each of `frames` (Ethernet frames) behind a virtio-net header into the
    /// buffers the driver offers on receive queue `q`, spreading a frame over several
    /// chains with mergeable buffers. The avail index is read once and the used index
    /// published once for the whole burst. Frames that cannot be delivered are dropped and
    /// counted; a malformed chain is returned to the driver with length 0.
    ///
    /// Returns the number of frames delivered; the caller then notifies the driver
    /// ([`notify`] with the used index from before the call).
    pub fn push_burst<'f>(
        &mut self,
        q: &mut Queue,
        mem: &GuestMap,
        cfg: NetConfig,
        frames: impl IntoIterator<Item = &'f [u8]>,
    ) -> usize {
        let ring = SplitRing::new(q, mem).and_then(|ring| {
            let avail_idx = ring.avail_idx();
            let next_avail = q.next_avail();
            let mut simple_hdr = [0u8; crate::net_hdr::NET_HDR_LEN_V1];
            NetHdr {
                num_buffers: 1,
                ..Default::default()
            }
            .emit(&mut simple_hdr, cfg.hdr_len);
            (avail_idx.wrapping_sub(next_avail) <= ring.size).then_some(RxCursor {
                ring,
                avail_idx,
                next_avail,
                next_used: q.next_used(),
                shadow: ArrayVec::new(),
                simple_hdr,
            })
        });
        let Some(mut cur) = ring else {
            self.stats.ring_errors += frames.into_iter().count() as u64;
            return 0;
        };
        let mut delivered = 0;
        for frame in frames {
            if cur.next_avail == cur.avail_idx {
                // Ring exhausted for this burst: the rest is dropped without a look.
                self.stats.drop_no_buffer += 1;
                continue;
            }
            match self.try_push(&mut cur, cfg, frame) {
                Ok(()) => {
                    delivered += 1;
                    self.stats.packets += 1;
                    self.stats.bytes += frame.len() as u64;
                }
                Err(RxError::NoBuffer) => self.stats.drop_no_buffer += 1,
                Err(RxError::TooBig) => self.stats.drop_too_big += 1,
                Err(RxError::Chain(_)) => self.stats.drop_bad_chain += 1,
                Err(RxError::Ring) => self.stats.ring_errors += 1,
            }
        }
        cur.flush();
        if cur.next_used != q.next_used() {
            cur.ring.publish_used(cur.next_used);
        }
        q.set_next_avail(cur.next_avail);
        q.set_next_used(cur.next_used);
        delivered
    }

    /// [`RxVirtio::push_burst`] of one frame.
    ///
    /// # Errors
    /// [`RxError`] saying why the frame was dropped (already counted).
    pub fn push_frame(
        &mut self,
        q: &mut Queue,
        mem: &GuestMap,
        cfg: NetConfig,
        frame: &[u8],
    ) -> Result<(), RxError> {
        let before = self.stats;
        if self.push_burst(q, mem, cfg, [frame]) == 1 {
            return Ok(());
        }
        let s = self.stats;
        Err(if s.drop_no_buffer > before.drop_no_buffer {
            RxError::NoBuffer
        } else if s.drop_too_big > before.drop_too_big {
            RxError::TooBig
        } else if s.drop_bad_chain > before.drop_bad_chain {
            RxError::Chain(ChainError::Short(0))
        } else {
            RxError::Ring
        })
    }

    /// The common case in one translation: the next chain is one device-writable
    /// descriptor (no `NEXT`, not indirect) that holds header and frame. Does what the
    /// general path would do for it; `false` (nothing done) for anything else.
    #[inline]
    fn push_simple(&mut self, cur: &mut RxCursor<'_>, hdr_len: usize, frame: &[u8]) -> bool {
        if cur.next_avail == cur.avail_idx {
            return false;
        }
        let head = cur.ring.avail_entry(cur.next_avail);
        if head >= cur.ring.size {
            return false;
        }
        let d = cur.ring.desc(head);
        let total = hdr_len + frame.len();
        if d.flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE)
            != VIRTQ_DESC_F_WRITE
            || (d.len as usize) < total
        {
            return false;
        }
        let Some(dst) = cur.ring.map.translate(d.addr, total) else {
            return false;
        };
        let hb = &cur.simple_hdr[..hdr_len.min(crate::net_hdr::NET_HDR_LEN_V1)];
        // SAFETY: `translate` checked that `dst` points to `total` = `hdr_len` +
        // `frame.len()` mapped guest bytes (kept alive by the map), `hb` holds at most
        // `hdr_len` bytes; our buffers do not overlap guest memory.
        unsafe {
            std::ptr::copy_nonoverlapping(hb.as_ptr(), dst, hb.len());
            std::ptr::copy_nonoverlapping(frame.as_ptr(), dst.add(hdr_len), frame.len());
        }
        cur.next_avail = cur.next_avail.wrapping_add(1);
        cur.put_used(head, total as u32);
        self.stats.buffers += 1;
        true
    }

    fn try_push(
        &mut self,
        cur: &mut RxCursor<'_>,
        cfg: NetConfig,
        frame: &[u8],
    ) -> Result<(), RxError> {
        let start = cur.next_avail;
        let hdr_len = cfg.hdr_len;
        let total = hdr_len + frame.len();
        if self.push_simple(cur, hdr_len, frame) {
            return Ok(());
        }
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
            let Some(head) = cur.pop() else {
                failure = Some(RxError::NoBuffer);
                break;
            };
            let mut walk = ChainWalk::new(head, cur.ring.size);
            let mut in_chain = 0usize;
            let mut bad = None;
            while written < total {
                let Some(desc) = walk.next(&cur.ring) else {
                    break;
                };
                if desc.flags & VIRTQ_DESC_F_WRITE == 0 {
                    bad = Some(ChainError::WrongDirection);
                    break;
                }
                let cap = desc.len as usize;
                let oom = ChainError::OutOfMemory {
                    addr: desc.addr,
                    len: desc.len,
                };
                let mut off = 0usize;
                while off < cap && written < total {
                    let Some(addr) = desc.addr.checked_add(off as u64) else {
                        bad = Some(oom);
                        break;
                    };
                    let res = if written < hdr_len {
                        // Reserve room for the header; it is written at the end.
                        let n = (hdr_len - written).min(cap - off);
                        if cur.ring.map.contains(addr, n) {
                            hdr_at.push((addr, written, n));
                            Ok(n)
                        } else {
                            Err(())
                        }
                    } else {
                        let from = written - hdr_len;
                        let n = (frame.len() - from).min(cap - off);
                        cur.ring
                            .map
                            .write(addr, &frame[from..from + n])
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
                            bad = Some(oom);
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
                        if !cur.put_used(head, 0) {
                            self.stats.ring_errors += 1;
                        }
                    }
                }
                _ => {
                    // Leave the chains to a later (smaller) frame.
                    cur.next_avail = start;
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
            if cur.ring.map.write(addr, &hb[from..from + n]).is_err() {
                return Err(RxError::Ring);
            }
        }
        for &(head, len) in &used {
            if !cur.put_used(head, len) {
                return Err(RxError::Ring);
            }
        }
        self.stats.buffers += used.len() as u64;
        Ok(())
    }
}

/// Sends a notification through `call` (an eventfd) if the driver wants one for the used
/// entries queue `q` published since its used index was `since` (EVENT_IDX `used_event`,
/// VIRTIO 1.2 §2.7.10; without it the `VRING_AVAIL_F_NO_INTERRUPT` flag, §2.7.7). At most
/// one eventfd write per call. Returns whether it notified.
pub fn notify(q: &Queue, mem: &GuestMap, call: Option<&std::fs::File>, since: u16) -> bool {
    let Some(call) = call else { return false };
    let new = q.next_used();
    if new == since {
        return false;
    }
    let Some(ring) = SplitRing::new(q, mem) else {
        return false;
    };
    // The used index store is ordered before the read of the driver's suppression field
    // (§2.7.10: the device must not miss a `used_event` update).
    std::sync::atomic::fence(Ordering::SeqCst);
    let needed = if q.event_idx_enabled() {
        // Notify when `used_event` lies in [since, new): `new - used_event - 1 < new - since`.
        new.wrapping_sub(ring.used_event()).wrapping_sub(1) < new.wrapping_sub(since)
    } else {
        ring.avail_flags() & VRING_AVAIL_F_NO_INTERRUPT == 0
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
    use vm_memory::{Bytes, GuestAddress};

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

    /// Pops up to a burst of chains of `q` (guest memory `m`) into `out`, with the default
    /// virtio-net header; returns the chains consumed.
    fn pop_all(tx: &mut TxVirtio, q: &mut Queue, m: &GuestMem, p: &Pool, out: &mut Burst) -> usize {
        tx.pop_frames(q, &GuestMap::new(m), p, NetConfig::default(), 64, out)
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
        let n = tx.pop_frames(
            &mut q,
            &GuestMap::new(&m),
            &p,
            NetConfig::default(),
            64,
            &mut out,
        );
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
        assert_eq!(pop_all(&mut tx, &mut q, &m, &p, &mut out), 0);
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
        assert_eq!(pop_all(&mut tx, &mut q, &m, &p, &mut out), 1);
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
        tx.pop_frames(
            &mut q,
            &GuestMap::new(&m),
            &p,
            NetConfig::default(),
            64,
            &mut out,
        );
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
        assert_eq!(pop_all(&mut tx, &mut q, &m, &p, &mut out), 9);
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
        assert_eq!(pop_all(&mut tx, &mut q, &m, &p, &mut out), 1);
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
        assert_eq!(pop_all(&mut tx, &mut q, &m, &p, &mut out), 0);
        assert_eq!(tx.stats.ring_errors, 1);
    }

    /// Rings that are not entirely in guest memory are never used: nothing is taken,
    /// nothing written, the error is counted.
    #[test]
    fn rings_outside_guest_memory_are_refused() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let f = frame(60, 1);
        let l = put_tx(&m, 0x10_0000, NetHdr::default(), &f);
        vq.add_desc_chains(&[desc(0x10_0000, l, 0, 0)], 0).unwrap();
        let p = pool();
        // Used ring ending past the end of guest memory (6 + 8 * 16 bytes needed).
        let mut q: Queue = vq.create_queue().unwrap();
        q.try_set_used_ring_address(GuestAddress(0x20_0000 - 64))
            .unwrap();
        let mut tx = TxVirtio::default();
        let mut out = Burst::new();
        let map = GuestMap::new(&m);
        assert_eq!(
            tx.pop_frames(&mut q, &map, &p, NetConfig::default(), 64, &mut out),
            0
        );
        assert_eq!(tx.stats.ring_errors, 1);
        assert_eq!(q.next_avail(), 0);
        // Descriptor table straddling the end.
        let mut q: Queue = vq.create_queue().unwrap();
        q.try_set_desc_table_address(GuestAddress(0x20_0000 - 128))
            .unwrap();
        let mut rx = RxVirtio::default();
        assert_eq!(
            rx.push_burst(&mut q, &map, NetConfig::default(), [&f[..]]),
            0
        );
        assert_eq!(rx.stats.ring_errors, 1);
        assert!(out.is_empty());
        drop(out);
        assert_eq!(p.available(), 128);
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
        assert_eq!(pop_all(&mut tx, &mut q, &m, &p, &mut out), 1);
        assert_eq!(q.next_avail(), 1);
        drop(out);
        let mut out = Burst::new();
        assert_eq!(pop_all(&mut tx, &mut q, &m, &p, &mut out), 1);
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
        rx.push_frame(&mut q, &GuestMap::new(&m), NetConfig::default(), &f)
            .unwrap();
        assert_eq!(used_elem(&m, &vq, 0), (0, 1526));
        let got = read(&m, 0x10_0000, 1526);
        assert_eq!(&got[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&got[12..], &f[..]);
        assert_eq!(rx.stats.packets, 1);
        // Ring now empty: next frame has no buffer and is counted.
        assert_eq!(
            rx.push_frame(&mut q, &GuestMap::new(&m), NetConfig::default(), &f),
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
        rx.push_frame(&mut q, &GuestMap::new(&m), NetConfig::default(), &f)
            .unwrap();
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
        rx.push_frame(&mut q, &GuestMap::new(&m), NetConfig::default(), &f)
            .unwrap();
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
            rx.push_frame(&mut q, &GuestMap::new(&m), cfg, &frame(200, 0)),
            Err(RxError::TooBig)
        );
        assert_eq!(q.next_avail(), 0, "the buffer stays for the next frame");
        rx.push_frame(&mut q, &GuestMap::new(&m), cfg, &frame(60, 0))
            .unwrap();
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
                rx.push_frame(&mut q, &GuestMap::new(&m), NetConfig::default(), &f),
                Err(RxError::Chain(_))
            ));
        }
        rx.push_frame(&mut q, &GuestMap::new(&m), NetConfig::default(), &f)
            .unwrap();
        assert_eq!(rx.stats.drop_bad_chain, 3);
        assert_eq!(vq.used().idx().load(), 4);
        assert_eq!(used_elem(&m, &vq, 0), (0, 0));
        assert_eq!(used_elem(&m, &vq, 1), (1, 0));
        assert_eq!(used_elem(&m, &vq, 2), (2, 0));
        assert_eq!(used_elem(&m, &vq, 3), (3, 72));
    }

    fn read_eventfd(efd: &std::fs::File) -> u64 {
        use std::io::Read;
        let mut v = [0u8; 8];
        match (&*efd).read(&mut v) {
            Ok(8) => u64::from_ne_bytes(v),
            _ => 0,
        }
    }

    /// EVENT_IDX (VIRTIO 1.2 §2.7.10): one notification for a burst whose used entries pass
    /// `used_event`, none for a burst that does not reach it; one eventfd write per burst.
    #[test]
    fn notify_honours_event_idx() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        rx_chains(&vq, &[(0x10_0000, 2048); 6]);
        let mut q: Queue = vq.create_queue().unwrap();
        // The mock lays its used ring over the avail ring's `used_event`: move it away.
        q.try_set_used_ring_address(GuestAddress(0x8000)).unwrap();
        q.set_event_idx(true);
        let map = GuestMap::new(&m);
        // used_event (after the avail ring of 16 entries) = 3: notify when used idx passes 3.
        let used_event = q.avail_ring() + 4 + 2 * 16;
        m.write_obj(3u16, GuestAddress(used_event)).unwrap();
        let efd = tempfile_eventfd();
        let mut rx = RxVirtio::default();
        let f = frame(60, 0);
        let cfg = NetConfig::default();
        // Burst of 2: used idx 0 → 2, does not reach entry 3.
        let since = q.next_used();
        assert_eq!(rx.push_burst(&mut q, &map, cfg, [&f[..], &f[..]]), 2);
        assert!(!notify(&q, &map, Some(&efd), since));
        assert_eq!(read_eventfd(&efd), 0);
        // Burst of 3: 2 → 5 passes entry 3: exactly one write.
        let since = q.next_used();
        assert_eq!(
            rx.push_burst(&mut q, &map, cfg, [&f[..], &f[..], &f[..]]),
            3
        );
        assert_eq!(used_idx(&m, &q), 5, "used index published for the burst");
        assert!(notify(&q, &map, Some(&efd), since));
        assert_eq!(read_eventfd(&efd), 1);
        // Nothing new used: no notification.
        assert!(!notify(&q, &map, Some(&efd), q.next_used()));
    }

    /// Without EVENT_IDX the `VRING_AVAIL_F_NO_INTERRUPT` flag suppresses notifications.
    #[test]
    fn notify_honours_no_interrupt_flag() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        rx_chains(&vq, &[(0x10_0000, 2048); 2]);
        let mut q: Queue = vq.create_queue().unwrap();
        let map = GuestMap::new(&m);
        let efd = tempfile_eventfd();
        let mut rx = RxVirtio::default();
        let f = frame(60, 0);
        m.write_obj(1u16, GuestAddress(q.avail_ring())).unwrap();
        let since = q.next_used();
        rx.push_burst(&mut q, &map, NetConfig::default(), [&f[..]]);
        assert!(!notify(&q, &map, Some(&efd), since));
        m.write_obj(0u16, GuestAddress(q.avail_ring())).unwrap();
        let since = q.next_used();
        rx.push_burst(&mut q, &map, NetConfig::default(), [&f[..]]);
        assert!(notify(&q, &map, Some(&efd), since));
        assert_eq!(read_eventfd(&efd), 1);
    }

    fn used_idx(m: &GuestMem, q: &Queue) -> u16 {
        m.read_obj::<u16>(GuestAddress(q.used_ring() + 2)).unwrap()
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
