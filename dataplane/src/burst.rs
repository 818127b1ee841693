//! Bursts: up to [`BURST_SIZE`] packets moved together from brick to brick.

use std::cell::RefCell;
use std::mem::ManuallyDrop;

use arrayvec::ArrayVec;

use crate::packet::Packet;

/// Most packets in one burst (64, as in packetgraph and DPDK's usual burst size).
pub const BURST_SIZE: usize = 64;

/// Up to 64 packet handles. Moving a burst moves handles, never packet bytes.
///
/// Dropping a burst returns all its frames to their pools with one lock per pool
/// (not one per packet).
///
/// The 64 handles live in a boxed array recycled through a per-thread cache, so moving a
/// burst from brick to brick moves one pointer, and making a burst allocates nothing once
/// the cache is warm.
pub struct Burst {
    /// Always present; `ManuallyDrop` so `Drop` can move the box into the cache.
    pkts: ManuallyDrop<Box<ArrayVec<Packet, BURST_SIZE>>>,
}

/// Most recycled burst arrays kept per thread.
const BURST_CACHE: usize = 512;

thread_local! {
    // The boxes are the point: a burst moves as one pointer, and recycling keeps them.
    #[allow(clippy::vec_box)]
    static CACHE: RefCell<Vec<Box<ArrayVec<Packet, BURST_SIZE>>>> =
        const { RefCell::new(Vec::new()) };
}

impl Default for Burst {
    fn default() -> Self {
        Burst::new()
    }
}

impl Burst {
    /// An empty burst.
    #[inline]
    pub fn new() -> Burst {
        let cached = CACHE.try_with(|c| c.borrow_mut().pop()).ok().flatten();
        Burst {
            pkts: ManuallyDrop::new(cached.unwrap_or_default()),
        }
    }

    /// Number of packets (0 ..= 64).
    #[inline]
    pub fn len(&self) -> usize {
        self.pkts.len()
    }

    /// True when the burst holds no packet.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pkts.is_empty()
    }

    /// True when the burst holds 64 packets.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.pkts.is_full()
    }

    /// Adds a packet; gives it back when the burst is full.
    ///
    /// # Errors
    /// The packet itself, when the burst already holds 64 packets.
    #[inline]
    pub fn push(&mut self, p: Packet) -> Result<(), Packet> {
        self.pkts.try_push(p).map_err(|e| e.element())
    }

    /// Removes and returns the last packet.
    #[inline]
    pub fn pop(&mut self) -> Option<Packet> {
        self.pkts.pop()
    }

    /// Iterates over the packets.
    #[inline]
    pub fn iter(&self) -> std::slice::Iter<'_, Packet> {
        self.pkts.iter()
    }

    /// Iterates over the packets, mutably.
    #[inline]
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Packet> {
        self.pkts.iter_mut()
    }

    /// The packets as a slice.
    #[inline]
    pub fn as_slice(&self) -> &[Packet] {
        &self.pkts
    }

    /// The packets as a mutable slice.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Packet] {
        &mut self.pkts
    }

    /// Total bytes of all packets.
    #[inline]
    pub fn bytes(&self) -> u64 {
        self.pkts.iter().map(|p| p.len() as u64).sum()
    }

    /// Keeps the packets for which `keep` returns true, in order; the others are dropped
    /// (returned to their pools in one batch). Returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&mut Packet) -> bool) -> usize {
        let mut dropped = Burst::new();
        let mut kept = Burst::new();
        for mut p in self.pkts.drain(..) {
            if keep(&mut p) {
                kept.pkts.push(p);
            } else {
                dropped.pkts.push(p);
            }
        }
        let n = dropped.len();
        std::mem::swap(&mut **self.pkts, &mut **kept.pkts);
        n
    }

    /// Splits the burst in two: packets for which `pred` is true go to the returned burst.
    pub fn split_off_where(&mut self, mut pred: impl FnMut(&mut Packet) -> bool) -> Burst {
        let mut taken = Burst::new();
        let mut kept = Burst::new();
        for mut p in self.pkts.drain(..) {
            if pred(&mut p) {
                taken.pkts.push(p);
            } else {
                kept.pkts.push(p);
            }
        }
        std::mem::swap(&mut **self.pkts, &mut **kept.pkts);
        taken
    }

    /// Removes every packet, yielding them in order.
    pub fn drain(&mut self) -> arrayvec::Drain<'_, Packet, BURST_SIZE> {
        self.pkts.drain(..)
    }

    /// Drops every packet (batched) and leaves the burst empty.
    pub fn clear(&mut self) {
        release_all(&mut self.pkts);
    }
}

/// Prefetches packet headers a fixed distance ahead while a brick walks a burst in order
/// (as DPDK's examples do with `rte_prefetch0` on packet `i + PREFETCH_OFFSET`).
///
/// Take it before draining the burst: it records where each packet's data starts, starts
/// loading the first [`HeaderPrefetch::DISTANCE`] packets' headers, and [`Self::ahead`]
/// called for packet `i` starts loading packet `i + DISTANCE`. Frames are often last
/// written by another core (the kernel's copy into the UMEM, a vhost copy), so the first
/// touch of a header is a cache miss; this overlaps those misses.
pub struct HeaderPrefetch {
    heads: [*const u8; BURST_SIZE],
    n: usize,
}

impl HeaderPrefetch {
    /// How many packets ahead the headers are loaded.
    pub const DISTANCE: usize = 4;

    /// Records the burst's packet addresses and prefetches the first ones.
    #[inline]
    pub fn new(b: &Burst) -> HeaderPrefetch {
        let mut heads = [std::ptr::null(); BURST_SIZE];
        for (h, p) in heads.iter_mut().zip(b.iter()) {
            *h = p.data().as_ptr();
        }
        let hp = HeaderPrefetch { heads, n: b.len() };
        for &h in &hp.heads[..hp.n.min(Self::DISTANCE)] {
            Self::load(h);
        }
        hp
    }

    /// Called when the brick starts on packet `i`: prefetches packet `i + DISTANCE`.
    #[inline(always)]
    pub fn ahead(&self, i: usize) {
        if let Some(&h) = self.heads[..self.n].get(i + Self::DISTANCE) {
            Self::load(h);
        }
    }

    /// The first two cache lines (128 bytes) of a packet's data.
    #[inline(always)]
    fn load(h: *const u8) {
        crate::prefetch::prefetch(h);
        crate::prefetch::prefetch(h.wrapping_add(64));
    }
}

/// Returns every packet's frame to its pool, one lock per run of same-pool packets.
fn release_all(pkts: &mut ArrayVec<Packet, BURST_SIZE>) {
    if pkts.is_empty() {
        return;
    }
    let mut frames = [0u32; BURST_SIZE];
    let mut n = 0;
    let mut pool = pkts[0].pool_ptr();
    for p in pkts.drain(..) {
        if p.pool_ptr() != pool {
            // SAFETY: the frames were owned by packets of `pool` we just forgot.
            unsafe { Packet::release_frames(pool, &frames[..n]) };
            n = 0;
            pool = p.pool_ptr();
        }
        frames[n] = p.forget_frame();
        n += 1;
    }
    // SAFETY: as above.
    unsafe { Packet::release_frames(pool, &frames[..n]) };
}

impl Drop for Burst {
    fn drop(&mut self) {
        release_all(&mut self.pkts);
        // SAFETY: `pkts` is not used after this point (we are in drop).
        let arr = unsafe { ManuallyDrop::take(&mut self.pkts) };
        let _ = CACHE.try_with(|c| {
            let mut c = c.borrow_mut();
            if c.len() < BURST_CACHE {
                c.push(arr);
            }
        });
    }
}

impl Extend<Packet> for Burst {
    /// Adds packets until the burst is full; the rest are dropped.
    fn extend<I: IntoIterator<Item = Packet>>(&mut self, iter: I) {
        for p in iter {
            if self.push(p).is_err() {
                break;
            }
        }
    }
}

impl IntoIterator for Burst {
    type Item = Packet;
    type IntoIter = arrayvec::IntoIter<Packet, BURST_SIZE>;
    fn into_iter(mut self) -> Self::IntoIter {
        std::mem::take(&mut **self.pkts).into_iter()
    }
}

impl<'a> IntoIterator for &'a Burst {
    type Item = &'a Packet;
    type IntoIter = std::slice::Iter<'a, Packet>;
    fn into_iter(self) -> Self::IntoIter {
        self.pkts.iter()
    }
}

impl std::ops::Index<usize> for Burst {
    type Output = Packet;
    fn index(&self, i: usize) -> &Packet {
        &self.pkts[i]
    }
}

impl std::ops::IndexMut<usize> for Burst {
    fn index_mut(&mut self, i: usize) -> &mut Packet {
        &mut self.pkts[i]
    }
}

impl std::fmt::Debug for Burst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.pkts.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Pool, PoolConfig};

    #[test]
    fn header_prefetch_accepts_any_burst_length_and_index() {
        let pool = Pool::new(PoolConfig {
            frame_count: 64,
            ..Default::default()
        })
        .unwrap();
        for n in [0, 1, HeaderPrefetch::DISTANCE, BURST_SIZE] {
            let mut b = Burst::new();
            for _ in 0..n {
                b.push(pool.packet_from(&[0u8; 60]).unwrap()).unwrap();
            }
            let hp = HeaderPrefetch::new(&b);
            // Indices past the burst (a brick's loop over a shorter burst, or a bug) are
            // ignored: a prefetch is a hint and must never index out of bounds.
            for i in 0..BURST_SIZE + 8 {
                hp.ahead(i);
            }
            assert_eq!(b.len(), n);
            drop(b);
            assert_eq!(pool.available(), 64);
        }
    }

    #[test]
    fn drop_returns_all_frames_of_two_pools() {
        let a = Pool::new(PoolConfig {
            frame_count: 70,
            ..Default::default()
        })
        .unwrap();
        let b = Pool::new(PoolConfig {
            frame_count: 70,
            ..Default::default()
        })
        .unwrap();
        let mut burst = Burst::new();
        for i in 0..64 {
            let pool = if i % 3 == 0 { &a } else { &b };
            burst.push(pool.packet_from(&[i as u8]).unwrap()).unwrap();
        }
        assert!(burst.is_full());
        assert!(burst.push(a.alloc().unwrap()).is_err());
        drop(burst);
        assert_eq!(a.available(), 70);
        assert_eq!(b.available(), 70);
    }

    #[test]
    fn retain_drops_and_keeps_order() {
        let pool = Pool::new(PoolConfig {
            frame_count: 16,
            ..Default::default()
        })
        .unwrap();
        let mut burst = Burst::new();
        for i in 0..10u8 {
            burst.push(pool.packet_from(&[i]).unwrap()).unwrap();
        }
        let dropped = burst.retain(|p| p.data()[0] % 2 == 0);
        assert_eq!(dropped, 5);
        let v: Vec<u8> = burst.iter().map(|p| p.data()[0]).collect();
        assert_eq!(v, vec![0, 2, 4, 6, 8]);
        assert_eq!(pool.available(), 11);
        let odd = burst.split_off_where(|p| p.data()[0] >= 6);
        assert_eq!(odd.len(), 2);
        assert_eq!(burst.len(), 3);
    }
}
