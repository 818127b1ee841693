//! Time for bricks that age entries (FDB, flow table): the monotonic clock, or a manual
//! clock that tests move forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A source of monotonic time in nanoseconds since an arbitrary origin.
#[derive(Debug, Clone)]
pub enum Clock {
    /// `CLOCK_MONOTONIC_COARSE` in nanoseconds at the moment the clock was made (the
    /// origin). Coarse: it moves once per kernel tick (1–4 ms; `clock_getres(2)`), which
    /// is plenty for ageing entries whose lifetimes are seconds, and reading it costs
    /// about a fifth of `CLOCK_MONOTONIC` (10 ns against 45 ns on the test machines):
    /// bricks read it once per burst and once per poll.
    Monotonic(u64),
    /// A clock that only moves when told to ([`Clock::advance`]); for tests.
    Manual(Arc<AtomicU64>),
}

impl Default for Clock {
    fn default() -> Self {
        Clock::monotonic()
    }
}

impl Clock {
    /// The (coarse) monotonic clock.
    pub fn monotonic() -> Clock {
        Clock::Monotonic(coarse_ns())
    }

    /// A manual clock at 0 ns.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(0)))
    }

    /// Nanoseconds since the origin.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Monotonic(t0) => coarse_ns().saturating_sub(*t0),
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

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds.
#[inline]
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC_COARSE always exists on
    // Linux (>= 2.6.32), so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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

    #[test]
    fn monotonic_clock_follows_real_time_to_a_tick() {
        let c = Clock::monotonic();
        let a = c.now_ns();
        std::thread::sleep(Duration::from_millis(50));
        let moved = c.now_ns() - a;
        // A coarse clock lags by at most one tick (10 ms at HZ=100).
        assert!(
            (40_000_000..2_000_000_000).contains(&moved),
            "slept 50 ms, the clock moved {moved} ns"
        );
    }
}
