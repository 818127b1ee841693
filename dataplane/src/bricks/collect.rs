//! `collect`: a multipole sink for tests that keeps the last burst received per side.

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;

/// Keeps the last burst that arrived on each side (older ones are dropped) and counts
/// everything it received. Emits nothing.
#[derive(Debug, Default)]
pub struct Collect {
    last: [Option<Burst>; 2],
    packets: [u64; 2],
    bursts: [u64; 2],
}

impl Collect {
    /// A new collect brick.
    pub fn new() -> Collect {
        Collect::default()
    }

    /// The last burst received on `side`.
    pub fn last(&self, side: Side) -> Option<&Burst> {
        self.last[side.index()].as_ref()
    }

    /// Takes the last burst received on `side`.
    pub fn take(&mut self, side: Side) -> Option<Burst> {
        self.last[side.index()].take()
    }

    /// Packets received on `side` since creation.
    pub fn packets(&self, side: Side) -> u64 {
        self.packets[side.index()]
    }

    /// Bursts received on `side` since creation.
    pub fn bursts(&self, side: Side) -> u64 {
        self.bursts[side.index()]
    }
}

impl Brick for Collect {
    fn kind(&self) -> &'static str {
        "collect"
    }

    fn poles(&self) -> Poles {
        Poles::Multipole { west: 64, east: 64 }
    }

    fn burst(
        &mut self,
        from: Side,
        _edge: usize,
        pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        self.packets[from.index()] += pkts.len() as u64;
        self.bursts[from.index()] += 1;
        self.last[from.index()] = Some(pkts);
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("west_packets", self.packets[0]),
            ("east_packets", self.packets[1]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Pool, PoolConfig};

    #[test]
    fn keeps_last_burst_per_side_and_never_emits() {
        let pool = Pool::new(PoolConfig {
            frame_count: 8,
            ..Default::default()
        })
        .unwrap();
        let mut c = Collect::new();
        let mut out = Emit::new();
        for i in 0..3u8 {
            let mut b = Burst::new();
            b.push(pool.packet_from(&[i]).unwrap()).unwrap();
            c.burst(Side::West, 0, b, &mut out).unwrap();
        }
        assert_eq!(c.last(Side::West).unwrap()[0].data(), &[2]);
        assert!(c.last(Side::East).is_none());
        assert_eq!(c.packets(Side::West), 3);
        assert_eq!(pool.available(), 7, "older bursts went back to the pool");
        assert!(out.pending().is_empty());
        assert_eq!(out.empty_bursts(), 0);
    }
}
