//! `nop`: a dipole that passes every burst to the other side unchanged.

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;

/// Passes bursts through, WEST → EAST and EAST → WEST.
#[derive(Debug, Default)]
pub struct Nop;

impl Nop {
    /// A new nop brick.
    pub fn new() -> Nop {
        Nop
    }
}

impl Brick for Nop {
    fn kind(&self) -> &'static str {
        "nop"
    }

    fn poles(&self) -> Poles {
        Poles::Dipole
    }

    #[inline]
    fn burst(
        &mut self,
        from: Side,
        _edge: usize,
        pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        out.send(from.opposite(), 0, pkts);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bricks::{Collect, PacketGen};
    use crate::{Graph, Pool, PoolConfig};

    #[test]
    fn passes_both_ways_and_counts() {
        let pool = Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .unwrap();
        let mut g = Graph::new("t");
        g.add("gen", PacketGen::new(pool.clone(), vec![vec![1u8; 60]], 10))
            .unwrap();
        g.add("nop", Nop::new()).unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link_chain(&["gen", "nop", "sink"]).unwrap();
        g.poll().unwrap();
        let st = g.stats("nop").unwrap();
        assert_eq!(st.west.rx_packets, 10);
        assert_eq!(st.east.tx_packets, 10);
        assert_eq!(st.east.tx_bytes, 600);
        // Reverse direction: a burst injected on nop's EAST comes out on WEST, at gen
        // (which drops it).
        let mut b = Burst::new();
        b.push(pool.packet_from(&[2u8; 60]).unwrap()).unwrap();
        g.inject("nop", Side::East, 0, b).unwrap();
        assert_eq!(g.stats("nop").unwrap().west.tx_packets, 1);
        assert_eq!(g.stats("gen").unwrap().east.rx_packets, 1);
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn never_emits_an_empty_burst() {
        let mut out = Emit::new();
        Nop.burst(Side::West, 0, Burst::new(), &mut out).unwrap();
        assert_eq!(
            out.empty_bursts(),
            1,
            "the check itself must see an empty send"
        );
        let mut out = Emit::new();
        let pool = Pool::new(PoolConfig {
            frame_count: 4,
            ..Default::default()
        })
        .unwrap();
        let mut b = Burst::new();
        b.push(pool.packet_from(&[0; 60]).unwrap()).unwrap();
        Nop.burst(Side::West, 0, b, &mut out).unwrap();
        assert_eq!(out.empty_bursts(), 0);
        assert_eq!(out.pending().len(), 1);
    }
}
