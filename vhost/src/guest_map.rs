//! Guest physical address → host pointer translation for the packet path.
//!
//! `vm-memory`'s `GuestMemoryMmap` finds the region of every access by a binary search
//! behind several layers of checked accessors; the packet path makes 7–9 guest accesses per
//! frame, so that lookup dominated. [`GuestMap`] is a snapshot of the same regions as a
//! small sorted array of `(guest address, length, host pointer)` with a last-hit index:
//! for a guest with one region a translation is one compare, for QEMU's usual two or
//! three regions it is one compare when consecutive accesses hit the same region.
//!
//! Every translation is bounds checked: a range is only ever turned into a host pointer
//! when all of its bytes lie in mapped guest memory ([`GuestMap::translate`] for a range in
//! one region; [`GuestMap::read`]/[`GuestMap::write`] also follow a range across adjacent
//! regions). A hostile driver's addresses and lengths (up to `u64`/`u32` maxima, wrapping
//! sums) yield `None`/[`OutOfGuest`], never an access outside its memory.
//!
//! The map owns a clone of the [`GuestMem`] it was built from (reference-counted regions),
//! so its pointers stay valid for as long as the map lives, whatever happens to the
//! original. It is rebuilt with the memory (`SET_MEM_TABLE`, `ADD_MEM_REG`, `REM_MEM_REG`).

use std::cell::Cell;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::virtq::GuestMem;

/// A guest range that is not entirely inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("guest range {addr:#x}+{len} outside guest memory")]
pub struct OutOfGuest {
    /// Guest physical address of the range.
    pub addr: u64,
    /// Its length in bytes.
    pub len: usize,
}

/// One mapped region: guest physical `[gpa, end)` at host address `host`.
#[derive(Debug, Clone, Copy)]
struct MapRegion {
    gpa: u64,
    end: u64,
    host: *mut u8,
}

/// Snapshot of the guest memory regions for fast, bounds-checked translation. See the
/// module documentation.
#[derive(Debug)]
pub struct GuestMap {
    /// Keeps the mappings `regions` points into alive.
    mem: GuestMem,
    /// Sorted by `gpa`, non-overlapping (as `GuestMemoryMmap` guarantees).
    regions: Vec<MapRegion>,
    /// Index of the region the last translation hit.
    last: Cell<usize>,
}

// SAFETY: the raw pointers point into mmap'ed regions owned (through `Arc`s) by `mem`,
// which is `Send`; nothing in the map is tied to the thread that built it. `Cell` is
// `Send`. (The map is not `Sync`: it is used under the device-state mutex.)
unsafe impl Send for GuestMap {}

impl GuestMap {
    /// Snapshots the regions of `mem`.
    pub fn new(mem: &GuestMem) -> GuestMap {
        let mut regions: Vec<MapRegion> = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                let gpa = r.start_addr().0;
                Some(MapRegion {
                    gpa,
                    end: gpa.checked_add(r.len())?,
                    host,
                })
            })
            .collect();
        regions.sort_by_key(|r| r.gpa);
        GuestMap {
            mem: mem.clone(),
            regions,
            last: Cell::new(0),
        }
    }

    /// The guest memory this map was built from.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// The region holding byte `gpa`, trying the last hit first.
    #[inline]
    fn region(&self, gpa: u64) -> Option<&MapRegion> {
        let last = self.last.get();
        if let Some(r) = self.regions.get(last)
            && gpa >= r.gpa
            && gpa < r.end
        {
            return Some(r);
        }
        self.find(gpa)
    }

    #[cold]
    fn find(&self, gpa: u64) -> Option<&MapRegion> {
        let i = self
            .regions
            .partition_point(|r| r.gpa <= gpa)
            .checked_sub(1)?;
        let r = &self.regions[i];
        if gpa < r.end {
            self.last.set(i);
            Some(r)
        } else {
            None
        }
    }

    /// Host pointer to the guest range `[gpa, gpa + len)` when all of it lies in one
    /// region (`len` 0: when `gpa` itself is mapped). The pointer is valid for `len` bytes
    /// while the map lives; the guest may change those bytes at any time.
    #[inline]
    pub fn translate(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let r = self.region(gpa)?;
        let end = gpa.checked_add(len as u64)?;
        if end > r.end {
            return None;
        }
        // Cannot overflow: gpa - r.gpa < r.end - r.gpa, the region's length (an mmap).
        Some(r.host.wrapping_add((gpa - r.gpa) as usize))
    }

    /// Calls `f(host pointer, offset in the range, length)` for each piece of the guest range
    /// `[gpa, gpa + len)` in order, one per region it crosses, after checking that all of
    /// it is mapped (adjacent regions, no hole). Nothing is called on error.
    fn pieces(
        &self,
        gpa: u64,
        len: usize,
        mut f: impl FnMut(*mut u8, usize, usize),
    ) -> Result<(), OutOfGuest> {
        let err = OutOfGuest { addr: gpa, len };
        if let Some(p) = self.translate(gpa, len) {
            f(p, 0, len);
            return Ok(());
        }
        gpa.checked_add(len as u64).ok_or(err)?;
        // Slow path: the range crosses regions (or is not mapped). Check, then copy.
        let walk = |f: &mut dyn FnMut(*mut u8, usize, usize)| -> Result<(), OutOfGuest> {
            let mut done = 0usize;
            while done < len {
                let at = gpa + done as u64;
                let r = self.find(at).ok_or(err)?;
                let n = ((r.end - at) as usize).min(len - done);
                f(r.host.wrapping_add((at - r.gpa) as usize), done, n);
                done += n;
            }
            Ok(())
        };
        walk(&mut |_, _, _| {})?;
        walk(&mut f)
    }

    /// Copies the guest range starting at `gpa` into `dst`.
    ///
    /// # Errors
    /// [`OutOfGuest`] when any byte of the range is outside guest memory (then `dst` is
    /// left unchanged).
    #[inline]
    pub fn read(&self, gpa: u64, dst: &mut [u8]) -> Result<(), OutOfGuest> {
        let d = dst.as_mut_ptr();
        self.pieces(gpa, dst.len(), |src, off, n| {
            // SAFETY: `pieces` checked that `src` points to `n` mapped guest bytes kept
            // alive by `self.mem`; `d + off .. + n` is inside `dst`; guest memory and our
            // buffer never overlap. Concurrent guest writes only make the bytes garbage,
            // which callers treat as untrusted.
            unsafe { std::ptr::copy_nonoverlapping(src, d.add(off), n) }
        })
    }

    /// Copies `src` into guest memory at `gpa`.
    ///
    /// # Errors
    /// [`OutOfGuest`] when any byte of the range is outside guest memory (then nothing is
    /// written).
    #[inline]
    pub fn write(&self, gpa: u64, src: &[u8]) -> Result<(), OutOfGuest> {
        let s = src.as_ptr();
        self.pieces(gpa, src.len(), |dst, off, n| {
            // SAFETY: as in `read`, the other way round: `dst` points to `n` mapped guest
            // bytes, `s + off .. + n` is inside `src`.
            unsafe { std::ptr::copy_nonoverlapping(s.add(off), dst, n) }
        })
    }

    /// True when the whole guest range `[gpa, gpa + len)` is mapped (possibly across
    /// adjacent regions).
    pub fn contains(&self, gpa: u64, len: usize) -> bool {
        self.pieces(gpa, len, |_, _, _| {}).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    /// Three regions: [0x1000, 0x3000) and [0x3000, 0x4000) adjacent, [0x8000, 0x9000).
    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[
            (GuestAddress(0x1000), 0x2000),
            (GuestAddress(0x3000), 0x1000),
            (GuestAddress(0x8000), 0x1000),
        ])
        .unwrap()
    }

    #[test]
    fn translate_inside_one_region_only() {
        let m = mem();
        let map = GuestMap::new(&m);
        let p = map.translate(0x1000, 0x2000).unwrap();
        assert_eq!(
            p,
            m.get_host_address(GuestAddress(0x1000)).unwrap(),
            "same host address as vm-memory"
        );
        assert_eq!(
            map.translate(0x8ff0, 16).unwrap(),
            m.get_host_address(GuestAddress(0x8ff0)).unwrap()
        );
        // Last hit is now the third region; a hit in the first still works.
        assert!(map.translate(0x1800, 8).is_some());
        assert!(map.translate(0x2ff8, 16).is_none(), "straddles two regions");
        assert!(map.translate(0x8ff0, 17).is_none(), "ends past the end");
        assert!(map.translate(0x9000, 0).is_none(), "starts at the end");
        assert!(
            map.translate(0x0fff, 1).is_none(),
            "before the first region"
        );
        assert!(map.translate(0x4000, 1).is_none(), "in the hole");
        assert!(map.translate(0x8000, usize::MAX).is_none(), "huge length");
        assert!(map.translate(u64::MAX, 2).is_none(), "wrapping end");
    }

    #[test]
    fn read_write_straddling_adjacent_regions() {
        let m = mem();
        let map = GuestMap::new(&m);
        let data: Vec<u8> = (0..64u8).collect();
        map.write(0x2fe0, &data).unwrap();
        let mut back = [0u8; 64];
        m.read_slice(&mut back, GuestAddress(0x2fe0)).unwrap();
        assert_eq!(&back[..], &data[..], "vm-memory reads what we wrote");
        let mut ours = [0u8; 64];
        map.read(0x2fe0, &mut ours).unwrap();
        assert_eq!(&ours[..], &data[..]);
        assert!(map.contains(0x1000, 0x3000), "both adjacent regions");
    }

    #[test]
    fn ranges_leaving_guest_memory_are_refused_untouched() {
        let m = mem();
        let map = GuestMap::new(&m);
        // Ends past the end of the last region.
        let mut buf = [0xaau8; 32];
        assert_eq!(
            map.read(0x8ff0, &mut buf),
            Err(OutOfGuest {
                addr: 0x8ff0,
                len: 32
            })
        );
        assert_eq!(buf, [0xaa; 32], "destination unchanged");
        // Straddles the end of the adjacent pair into the hole: nothing written.
        assert!(map.write(0x3ff0, &[1u8; 32]).is_err());
        let mut g = [0u8; 16];
        m.read_slice(&mut g, GuestAddress(0x3ff0)).unwrap();
        assert_eq!(g, [0; 16], "no partial write");
        assert!(map.read(u64::MAX - 3, &mut buf).is_err(), "wrapping range");
        assert!(map.read(0x0, &mut buf).is_err(), "below guest memory");
        assert!(!map.contains(0x3000, 0x1001));
        // Empty ranges: fine where mapped.
        assert!(map.read(0x1000, &mut []).is_ok());
    }

    #[test]
    fn map_keeps_memory_alive() {
        let m = mem();
        let map = GuestMap::new(&m);
        drop(m);
        map.write(0x8000, &[7u8; 8]).unwrap();
        let mut b = [0u8; 8];
        map.read(0x8000, &mut b).unwrap();
        assert_eq!(b, [7; 8]);
    }
}
