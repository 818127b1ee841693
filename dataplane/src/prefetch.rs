//! Cache prefetch hints, as DPDK's `rte_prefetch0`: start loading a line that a later step
//! of a burst will read, so that the 64 independent memory accesses of a burst overlap
//! instead of waiting one after the other.

/// Asks the CPU to load the cache line holding `p` into all cache levels (x86 `PREFETCHT0`).
/// A hint only: it never faults and has no effect on the program's results, whatever the
/// address. No-op on other architectures.
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and never makes data visible to the program,
    // whatever the address; SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`] of the line holding `*r`.
#[inline(always)]
pub fn prefetch_ref<T>(r: &T) {
    prefetch((r as *const T).cast());
}
