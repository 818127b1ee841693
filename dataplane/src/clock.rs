//! Time for bricks that age entries (FDB, flow table): the monotonic clock, or a manual
//! clock that tests move forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A source of monotonic time in nanoseconds since an arbitrary origin.
#[derive(Debug, Clone)]
pub enum Clock {
    /// `CLOCK_MONOTONIC` (via `Instant`), from the moment the clock was made.
    Monotonic(Instant),
    /// A clock that only moves when told to ([`Clock::advance`]); for tests.
    Manual(Arc<AtomicU64>),
}

impl Default for Clock {
    fn default() -> Self {
        Clock::monotonic()
    }
}

impl Clock {
    /// The monotonic clock.
    pub fn monotonic() -> Clock {
        Clock::Monotonic(Instant::now())
    }

    /// A manual clock at 0 ns.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(0)))
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Monotonic(t0) => t0.elapsed().as_nanos() as u64,
            Clock::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward (no effect on the monotonic clock).
    pub fn advance(&self, d: Duration) {
        if let Clock::Manual(t) = self {
            t.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual();
        let c2 = c.clone();
        assert_eq!(c.now_ns(), 0);
        c2.advance(Duration::from_secs(2));
        assert_eq!(c.now_ns(), 2_000_000_000);
    }
}
