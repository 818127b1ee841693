//! Packet buffers: a pool of fixed-size frames and the [`Packet`] handle that owns one.
//!
//! A [`Pool`] is one page-aligned memory region cut into `frame_count` frames of
//! `frame_size` bytes (2048 by default). A frame's first `headroom` bytes (256 by default)
//! are left free so a brick can prepend headers in place (a VXLAN VTEP prepends 50 bytes for
//! an IPv4 underlay, 70 for IPv6). The region is `mmap`ed, so it can be registered as an
//! AF_XDP UMEM: frame `i` starts at byte `i * frame_size` of the region, which is also its
//! UMEM address.
//!
//! A [`Packet`] is a 24-byte handle (pool pointer, frame index, data offset and length,
//! parsed L2/L3/L4 offsets). Moving it moves no packet byte. Dropping it returns the frame
//! to its pool. Nothing here allocates on the heap per packet: the free list is a vector
//! allocated once with room for every frame.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Mutex;

use crate::error::PoolError;

/// Default frame size in bytes (one AF_XDP UMEM chunk).
pub const DEFAULT_FRAME_SIZE: usize = 2048;
/// Default headroom in bytes kept in front of received data, enough for an IPv6 VXLAN
/// outer header (70 bytes) many times over, and equal to the kernel's `XDP_PACKET_HEADROOM`.
pub const DEFAULT_HEADROOM: usize = 256;
/// Smallest headroom a pool accepts, in bytes.
pub const MIN_HEADROOM: usize = 128;
/// Offset value meaning "not parsed / not present" in the L2/L3/L4 metadata.
pub const NO_OFFSET: u16 = u16::MAX;

/// How to build a [`Pool`].
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    /// Number of frames (1 ..= 2^24).
    pub frame_count: u32,
    /// Size of each frame in bytes: a power of two from 2048 to 32768 (so it can be
    /// an AF_XDP chunk).
    pub frame_size: usize,
    /// Bytes reserved at the start of each frame for in-place prepends
    /// (from [`MIN_HEADROOM`] to `frame_size / 2`).
    pub headroom: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            frame_count: 4096,
            frame_size: DEFAULT_FRAME_SIZE,
            headroom: DEFAULT_HEADROOM,
        }
    }
}

struct PoolState {
    /// Indices of free frames (a stack: the most recently freed frame is reused first,
    /// it is still warm in cache).
    free: Vec<u32>,
    /// Number of live [`Pool`] handles. When it reaches 0 and every frame is back, the
    /// region is unmapped.
    handles: usize,
}

pub(crate) struct PoolInner {
    base: NonNull<u8>,
    region_len: usize,
    frame_size: usize,
    frame_count: u32,
    headroom: usize,
    state: Mutex<PoolState>,
}

// SAFETY: the region is only accessed through `Packet`s, each of which owns its frame
// exclusively, and through `Pool` methods that take the state lock. Raw frames handed out
// by `alloc_raw` are owned by the caller (e.g. an AF_XDP ring) until given back.
unsafe impl Send for PoolInner {}
// SAFETY: see `Send`; shared access only reads immutable fields or takes the lock.
unsafe impl Sync for PoolInner {}

impl PoolInner {
    /// Returns frames to the free list; frees the pool if it was orphaned and is now whole.
    ///
    /// # Safety
    /// `this` must point to a live pool and every index must be a frame of it that the
    /// caller owns and no longer uses.
    unsafe fn release(this: NonNull<PoolInner>, frames: &[u32]) {
        // SAFETY: the caller guarantees the pool is alive (it owns frames of it).
        let inner = unsafe { this.as_ref() };
        let destroy = {
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.free.extend_from_slice(frames);
            st.handles == 0 && st.free.len() == inner.frame_count as usize
        };
        if destroy {
            // SAFETY: no handle and no frame refers to the pool any more.
            unsafe { PoolInner::destroy(this) };
        }
    }

    /// # Safety
    /// Nothing may refer to the pool afterwards.
    unsafe fn destroy(this: NonNull<PoolInner>) {
        // SAFETY: created by Box::into_raw in Pool::new; nothing refers to it any more.
        let inner = unsafe { Box::from_raw(this.as_ptr()) };
        // SAFETY: base/region_len come from the mmap in Pool::new.
        unsafe {
            libc::munmap(inner.base.as_ptr().cast(), inner.region_len);
        }
    }
}

/// A pool of fixed-size packet frames in one `mmap`ed region.
///
/// Cloning a `Pool` gives another handle to the same frames. The region lives until the
/// last handle is dropped *and* every frame has come back, so packets may outlive the
/// handles they came from. `Pool` is `Send + Sync`; taking or returning frames takes a
/// short lock once per call (use the burst-sized calls on hot paths).
pub struct Pool {
    inner: NonNull<PoolInner>,
}

// SAFETY: PoolInner is Send + Sync and the handle count is kept under its lock.
unsafe impl Send for Pool {}
// SAFETY: as above.
unsafe impl Sync for Pool {}

impl Pool {
    /// Maps a new region and cuts it into frames.
    ///
    /// # Errors
    /// [`PoolError::Config`] when a size is out of range, [`PoolError::Map`] when `mmap`
    /// fails (for example `ENOMEM`).
    pub fn new(cfg: PoolConfig) -> Result<Pool, PoolError> {
        if !cfg.frame_size.is_power_of_two() || !(2048..=32768).contains(&cfg.frame_size) {
            return Err(PoolError::Config(format!(
                "frame_size {} must be a power of two from 2048 to 32768",
                cfg.frame_size
            )));
        }
        if cfg.headroom < MIN_HEADROOM || cfg.headroom > cfg.frame_size / 2 {
            return Err(PoolError::Config(format!(
                "headroom {} must be between {MIN_HEADROOM} and frame_size/2 = {}",
                cfg.headroom,
                cfg.frame_size / 2
            )));
        }
        if cfg.frame_count == 0 || cfg.frame_count > 1 << 24 {
            return Err(PoolError::Config(format!(
                "frame_count {} must be between 1 and 16777216",
                cfg.frame_count
            )));
        }
        let region_len = cfg.frame_size * cfg.frame_count as usize;
        // SAFETY: anonymous private mapping, no file, checked for MAP_FAILED below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                region_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(PoolError::Map(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| PoolError::Map(std::io::Error::other("mmap returned a null region")))?;
        let free: Vec<u32> = (0..cfg.frame_count).rev().collect();
        let inner = Box::new(PoolInner {
            base,
            region_len,
            frame_size: cfg.frame_size,
            frame_count: cfg.frame_count,
            headroom: cfg.headroom,
            state: Mutex::new(PoolState { free, handles: 1 }),
        });
        Ok(Pool {
            inner: NonNull::from(Box::leak(inner)),
        })
    }

    fn inner(&self) -> &PoolInner {
        // SAFETY: a live handle keeps the pool alive.
        unsafe { self.inner.as_ref() }
    }

    /// Size of each frame in bytes.
    pub fn frame_size(&self) -> usize {
        self.inner().frame_size
    }

    /// Number of frames in the pool.
    pub fn frame_count(&self) -> u32 {
        self.inner().frame_count
    }

    /// Headroom in bytes in front of a freshly allocated packet's data.
    pub fn headroom(&self) -> usize {
        self.inner().headroom
    }

    /// Largest packet a frame can hold after the headroom, in bytes.
    pub fn max_data(&self) -> usize {
        self.frame_size() - self.headroom()
    }

    /// Start and length (bytes) of the whole region, to register it as an AF_XDP UMEM.
    pub fn region(&self) -> (*mut u8, usize) {
        (self.inner().base.as_ptr(), self.inner().region_len)
    }

    /// Number of frames currently free.
    pub fn available(&self) -> usize {
        self.inner()
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .len()
    }

    /// Takes one frame and returns an empty packet (length 0, data at the headroom),
    /// or `None` when the pool is exhausted.
    pub fn alloc(&self) -> Option<Packet> {
        let frame = {
            let mut st = self.inner().state.lock().unwrap_or_else(|e| e.into_inner());
            st.free.pop()?
        };
        Some(Packet::new_in(self.inner, frame, self.headroom() as u16, 0))
    }

    /// Takes up to `n` frames at once (one lock) and calls `f` with each new empty packet.
    /// Returns how many were taken (fewer than `n` when the pool runs low).
    pub fn alloc_with(&self, n: usize, mut f: impl FnMut(Packet)) -> usize {
        let mut frames = [0u32; crate::burst::BURST_SIZE];
        let mut done = 0;
        while done < n {
            let want = (n - done).min(frames.len());
            let got = {
                let mut st = self.inner().state.lock().unwrap_or_else(|e| e.into_inner());
                let got = want.min(st.free.len());
                let from = st.free.len() - got;
                frames[..got].copy_from_slice(&st.free[from..]);
                st.free.truncate(from);
                got
            };
            for &fr in &frames[..got] {
                f(Packet::new_in(self.inner, fr, self.headroom() as u16, 0));
            }
            done += got;
            if got < want {
                break;
            }
        }
        done
    }

    /// Takes one frame without wrapping it in a [`Packet`] (for rings such as the AF_XDP
    /// fill ring that hold frames outside the graph). Returns the frame index.
    /// The caller must give it back with [`Pool::free_raw`] or [`Pool::packet_from_raw`].
    pub fn alloc_raw(&self) -> Option<u32> {
        self.inner()
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .pop()
    }

    /// Gives back frames taken with [`Pool::alloc_raw`] (or [`Packet::into_raw`]).
    ///
    /// # Panics
    /// If an index is not a frame of this pool (a caller bug that would corrupt the pool).
    pub fn free_raw(&self, frames: &[u32]) {
        for &f in frames {
            assert!(f < self.frame_count(), "frame {f} is not in this pool");
        }
        // SAFETY: the handle keeps the pool alive; the caller gives back frames it owns.
        unsafe { PoolInner::release(self.inner, frames) };
    }

    /// Wraps a raw frame (from [`Pool::alloc_raw`] or [`Packet::into_raw`]) into a packet
    /// whose data starts `offset` bytes into the frame and is `len` bytes long.
    ///
    /// # Errors
    /// [`PoolError::Frame`] when the frame index or `offset + len` is out of range.
    ///
    /// # Safety
    /// The caller must own `frame` (taken out of the pool and not owned by any other
    /// packet, ring or kernel queue).
    pub unsafe fn packet_from_raw(
        &self,
        frame: u32,
        offset: usize,
        len: usize,
    ) -> Result<Packet, PoolError> {
        if frame >= self.frame_count() || offset + len > self.frame_size() {
            return Err(PoolError::Frame { frame, offset, len });
        }
        Ok(Packet::new_in(self.inner, frame, offset as u16, len as u16))
    }

    /// Copies `bytes` into a new packet. `None` when the pool is empty or `bytes` is longer
    /// than [`Pool::max_data`].
    pub fn packet_from(&self, bytes: &[u8]) -> Option<Packet> {
        if bytes.len() > self.max_data() {
            return None;
        }
        let mut p = self.alloc()?;
        p.append(bytes.len()).ok()?.copy_from_slice(bytes);
        Some(p)
    }
}

impl Clone for Pool {
    fn clone(&self) -> Self {
        self.inner()
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .handles += 1;
        Pool { inner: self.inner }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let destroy = {
            let inner = self.inner();
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.handles -= 1;
            st.handles == 0 && st.free.len() == inner.frame_count as usize
        };
        if destroy {
            // SAFETY: last handle and every frame is back: nothing refers to the pool.
            unsafe { PoolInner::destroy(self.inner) };
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("frame_count", &self.frame_count())
            .field("frame_size", &self.frame_size())
            .field("headroom", &self.headroom())
            .field("available", &self.available())
            .finish()
    }
}

/// A packet: exclusive ownership of one pool frame plus where its data lies in it.
///
/// Offsets are in bytes from the start of the frame. `l2`, `l3` and `l4` are parse
/// results that bricks may fill in ([`NO_OFFSET`] when unknown); they are reset by
/// [`Packet::clear_meta`] and kept by [`Packet::prepend`]/[`Packet::trim_front`]
/// (offsets are frame-relative, so they stay right when the data start moves).
pub struct Packet {
    pool: NonNull<PoolInner>,
    frame: u32,
    off: u16,
    len: u16,
    l2: u16,
    l3: u16,
    l4: u16,
    /// Free for the brick that owns the packet now (e.g. a sequence number or a VNI).
    mark: u16,
}

// SAFETY: a Packet owns its frame exclusively; the pool is Sync.
unsafe impl Send for Packet {}
// SAFETY: &Packet only reads the frame.
unsafe impl Sync for Packet {}

/// Error of the in-place length operations of [`Packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpaceError {
    /// Not enough headroom for a prepend of `needed` bytes (`available` left).
    #[error("not enough headroom: need {needed} bytes, {available} available")]
    Headroom {
        /// Bytes asked for.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Not enough tailroom for an append of `needed` bytes.
    #[error("not enough tailroom: need {needed} bytes, {available} available")]
    Tailroom {
        /// Bytes asked for.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// Trim of more bytes than the packet holds.
    #[error("cannot trim {needed} bytes from a {available}-byte packet")]
    Trim {
        /// Bytes asked for.
        needed: usize,
        /// Packet length.
        available: usize,
    },
}

impl Packet {
    fn new_in(pool: NonNull<PoolInner>, frame: u32, off: u16, len: u16) -> Packet {
        Packet {
            pool,
            frame,
            off,
            len,
            l2: NO_OFFSET,
            l3: NO_OFFSET,
            l4: NO_OFFSET,
            mark: 0,
        }
    }

    fn pool(&self) -> &PoolInner {
        // SAFETY: an outstanding frame keeps the pool alive.
        unsafe { self.pool.as_ref() }
    }

    fn frame_ptr(&self) -> *mut u8 {
        let p = self.pool();
        // SAFETY: frame < frame_count, so the offset is inside the region.
        unsafe { p.base.as_ptr().add(self.frame as usize * p.frame_size) }
    }

    /// The packet bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: off + len <= frame_size is kept by every mutator; the frame is ours.
        unsafe {
            std::slice::from_raw_parts(self.frame_ptr().add(self.off as usize), self.len as usize)
        }
    }

    /// The packet bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `data`, and &mut self gives exclusive access to the frame.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.frame_ptr().add(self.off as usize),
                self.len as usize,
            )
        }
    }

    /// Packet length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True for a zero-length packet.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset of the data in the frame, in bytes.
    #[inline]
    pub fn offset(&self) -> usize {
        self.off as usize
    }

    /// Index of the frame in its pool (its UMEM address is `frame * frame_size`).
    #[inline]
    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// Bytes free in front of the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.off as usize
    }

    /// Bytes free after the data.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.pool().frame_size - self.off as usize - self.len as usize
    }

    /// Grows the packet by `n` bytes at the front (in place, into the headroom) and returns
    /// the new first `n` bytes to write the header into.
    ///
    /// # Errors
    /// [`SpaceError::Headroom`] when fewer than `n` bytes of headroom are left.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Result<&mut [u8], SpaceError> {
        if n > self.off as usize {
            return Err(SpaceError::Headroom {
                needed: n,
                available: self.off as usize,
            });
        }
        self.off -= n as u16;
        self.len += n as u16;
        Ok(&mut self.data_mut()[..n])
    }

    /// Removes `n` bytes from the front (e.g. an outer header after decapsulation).
    ///
    /// # Errors
    /// [`SpaceError::Trim`] when `n` is larger than the packet.
    #[inline]
    pub fn trim_front(&mut self, n: usize) -> Result<(), SpaceError> {
        if n > self.len as usize {
            return Err(SpaceError::Trim {
                needed: n,
                available: self.len as usize,
            });
        }
        self.off += n as u16;
        self.len -= n as u16;
        Ok(())
    }

    /// Grows the packet by `n` bytes at the end and returns them.
    ///
    /// # Errors
    /// [`SpaceError::Tailroom`] when fewer than `n` bytes are left after the data.
    #[inline]
    pub fn append(&mut self, n: usize) -> Result<&mut [u8], SpaceError> {
        let avail = self.tailroom();
        if n > avail {
            return Err(SpaceError::Tailroom {
                needed: n,
                available: avail,
            });
        }
        let old = self.len as usize;
        self.len += n as u16;
        Ok(&mut self.data_mut()[old..])
    }

    /// Cuts the packet to `len` bytes (no-op when already shorter or equal).
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        if len < self.len as usize {
            self.len = len as u16;
        }
    }

    /// Sets the length, keeping the data start.
    ///
    /// # Errors
    /// [`SpaceError::Tailroom`] when `len` does not fit in the frame after the data start.
    pub fn set_len(&mut self, len: usize) -> Result<(), SpaceError> {
        let max = self.pool().frame_size - self.off as usize;
        if len > max {
            return Err(SpaceError::Tailroom {
                needed: len,
                available: max,
            });
        }
        self.len = len as u16;
        Ok(())
    }

    /// Resets the data start to the pool headroom and the length to 0 (frame reuse).
    pub fn reset(&mut self) {
        self.off = self.pool().headroom as u16;
        self.len = 0;
        self.clear_meta();
    }

    /// Offset (from the data start, bytes) of the L2 header, if parsed.
    pub fn l2_offset(&self) -> Option<usize> {
        self.rel(self.l2)
    }
    /// Offset (from the data start, bytes) of the L3 header, if parsed.
    pub fn l3_offset(&self) -> Option<usize> {
        self.rel(self.l3)
    }
    /// Offset (from the data start, bytes) of the L4 header, if parsed.
    pub fn l4_offset(&self) -> Option<usize> {
        self.rel(self.l4)
    }

    fn rel(&self, abs: u16) -> Option<usize> {
        if abs == NO_OFFSET || abs < self.off {
            None
        } else {
            Some((abs - self.off) as usize)
        }
    }

    /// Records parse results: header offsets from the current data start, in bytes.
    pub fn set_offsets(&mut self, l2: Option<usize>, l3: Option<usize>, l4: Option<usize>) {
        let abs = |o: Option<usize>| o.map_or(NO_OFFSET, |o| (self.off as usize + o) as u16);
        self.l2 = abs(l2);
        self.l3 = abs(l3);
        self.l4 = abs(l4);
    }

    /// Forgets the parse results and the mark.
    pub fn clear_meta(&mut self) {
        self.l2 = NO_OFFSET;
        self.l3 = NO_OFFSET;
        self.l4 = NO_OFFSET;
        self.mark = 0;
    }

    /// A 16-bit value for the brick that owns the packet now.
    pub fn mark(&self) -> u16 {
        self.mark
    }

    /// Sets the 16-bit mark.
    pub fn set_mark(&mut self, mark: u16) {
        self.mark = mark;
    }

    /// Copies the packet into a new frame of the same pool (same data offset, length and
    /// metadata). `None` when the pool is exhausted. Used for flooding, the rare case.
    pub fn try_clone(&self) -> Option<Packet> {
        let frame = {
            let mut st = self.pool().state.lock().unwrap_or_else(|e| e.into_inner());
            st.free.pop()?
        };
        let mut p = Packet::new_in(self.pool, frame, self.off, self.len);
        p.l2 = self.l2;
        p.l3 = self.l3;
        p.l4 = self.l4;
        p.mark = self.mark;
        p.data_mut().copy_from_slice(self.data());
        Some(p)
    }

    /// Gives up the handle without returning the frame: `(frame, offset, len)`.
    /// The frame must come back through [`Pool::free_raw`] or [`Pool::packet_from_raw`],
    /// or it leaks.
    pub fn into_raw(self) -> (u32, usize, usize) {
        let r = (self.frame, self.off as usize, self.len as usize);
        std::mem::forget(self);
        r
    }

    /// True when `self` and `pool` share frames (same region).
    pub fn is_from(&self, pool: &Pool) -> bool {
        self.pool == pool.inner
    }

    pub(crate) fn pool_ptr(&self) -> NonNull<PoolInner> {
        self.pool
    }

    pub(crate) fn forget_frame(self) -> u32 {
        let f = self.frame;
        std::mem::forget(self);
        f
    }

    pub(crate) unsafe fn release_frames(pool: NonNull<PoolInner>, frames: &[u32]) {
        // SAFETY: forwarded to the caller.
        unsafe { PoolInner::release(pool, frames) }
    }
}

impl Drop for Packet {
    fn drop(&mut self) {
        // SAFETY: we own the frame and the pool is alive while we do.
        unsafe { PoolInner::release(self.pool, &[self.frame]) };
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packet")
            .field("frame", &self.frame)
            .field("offset", &self.off)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Pool {
        Pool::new(PoolConfig {
            frame_count: 8,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn alloc_until_empty_then_free_returns_frames() {
        let pool = small();
        let mut v = Vec::new();
        while let Some(p) = pool.alloc() {
            v.push(p);
        }
        assert_eq!(v.len(), 8);
        assert_eq!(pool.available(), 0);
        drop(v);
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn prepend_trim_append_keep_bytes() {
        let pool = small();
        let mut p = pool.packet_from(&[1, 2, 3, 4]).unwrap();
        assert_eq!(p.headroom(), DEFAULT_HEADROOM);
        p.prepend(2).unwrap().copy_from_slice(&[9, 8]);
        assert_eq!(p.data(), &[9, 8, 1, 2, 3, 4]);
        p.trim_front(3).unwrap();
        assert_eq!(p.data(), &[2, 3, 4]);
        p.append(1).unwrap()[0] = 7;
        assert_eq!(p.data(), &[2, 3, 4, 7]);
        assert!(matches!(p.trim_front(5), Err(SpaceError::Trim { .. })));
        assert!(matches!(
            p.prepend(10_000),
            Err(SpaceError::Headroom { .. })
        ));
        assert!(matches!(p.append(10_000), Err(SpaceError::Tailroom { .. })));
    }

    #[test]
    fn offsets_survive_prepend() {
        let pool = small();
        let mut p = pool.packet_from(&[0u8; 64]).unwrap();
        p.set_offsets(Some(0), Some(14), Some(34));
        p.prepend(50).unwrap();
        assert_eq!(p.l2_offset(), Some(50));
        assert_eq!(p.l3_offset(), Some(64));
        assert_eq!(p.l4_offset(), Some(84));
    }

    #[test]
    fn clone_copies_into_another_frame() {
        let pool = small();
        let p = pool.packet_from(b"hello").unwrap();
        let q = p.try_clone().unwrap();
        assert_eq!(q.data(), b"hello");
        assert_ne!(p.frame(), q.frame());
        assert_eq!(pool.available(), 6);
    }

    #[test]
    fn packets_outlive_pool_handle() {
        let pool = small();
        let p = pool.packet_from(b"x").unwrap();
        drop(pool);
        assert_eq!(p.data(), b"x");
        drop(p); // frees the region; must not crash
    }

    #[test]
    fn raw_round_trip() {
        let pool = small();
        let f = pool.alloc_raw().unwrap();
        // SAFETY: f comes from alloc_raw and is owned by this test.
        let p = unsafe { pool.packet_from_raw(f, 300, 60) }.unwrap();
        assert_eq!(p.len(), 60);
        let (f2, off, len) = p.into_raw();
        assert_eq!((f2, off, len), (f, 300, 60));
        pool.free_raw(&[f2]);
        assert_eq!(pool.available(), 8);
        // SAFETY: the index is out of range, which is what is checked.
        assert!(unsafe { pool.packet_from_raw(99, 0, 0) }.is_err());
    }

    #[test]
    fn bad_config_rejected() {
        assert!(
            Pool::new(PoolConfig {
                frame_size: 1000,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Pool::new(PoolConfig {
                headroom: 16,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            Pool::new(PoolConfig {
                frame_count: 0,
                ..Default::default()
            })
            .is_err()
        );
    }
}
