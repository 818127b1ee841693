//! `diode`: a dipole that lets packets through in one direction only.
//!
//! Packets going towards the *output side* pass; packets that arrive *from* the output
//! side are dropped (returned to their pool) and counted. With the default output side
//! EAST, `link(a, diode)`, `link(diode, b)` lets `a → b` through and stops `b → a`.

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;

/// A one-way dipole.
#[derive(Debug)]
pub struct Diode {
    output: Side,
    passed: u64,
    dropped: u64,
}

impl Default for Diode {
    fn default() -> Self {
        Diode::new(Side::East)
    }
}

impl Diode {
    /// A diode whose packets leave by `output`: what arrives on the other side passes,
    /// what arrives on `output` is dropped.
    pub fn new(output: Side) -> Diode {
        Diode {
            output,
            passed: 0,
            dropped: 0,
        }
    }

    /// The side packets leave by.
    pub fn output(&self) -> Side {
        self.output
    }

    /// Changes the output side (takes effect at the next burst).
    pub fn set_output(&mut self, output: Side) {
        self.output = output;
    }

    /// Packets let through.
    pub fn passed(&self) -> u64 {
        self.passed
    }

    /// Packets dropped because they came from the output side.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Brick for Diode {
    fn kind(&self) -> &'static str {
        "diode"
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
        if from == self.output {
            // Dropped here: the burst goes back to its pool when it leaves scope.
            self.dropped += pkts.len() as u64;
        } else if !pkts.is_empty() {
            self.passed += pkts.len() as u64;
            out.send(self.output, 0, pkts);
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![("passed", self.passed), ("drop_wrong_way", self.dropped)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bricks::{Collect, PacketGen};
    use crate::{Graph, Pool, PoolConfig};

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            frame_count: 128,
            ..Default::default()
        })
        .unwrap()
    }

    /// `west — diode — east`, both ends packet generators with a collect beside them.
    fn graph(pool: &Pool, output: Side) -> Graph {
        let mut g = Graph::new("diode");
        g.add("west", PacketGen::new(pool.clone(), vec![vec![1; 60]], 5))
            .unwrap();
        g.add("east", PacketGen::new(pool.clone(), vec![vec![2; 70]], 7))
            .unwrap();
        g.add("diode", Diode::new(output)).unwrap();
        g.link_chain(&["west", "diode", "east"]).unwrap();
        g
    }

    #[test]
    fn passes_towards_the_output_side_only() {
        let pool = pool();
        let mut g = graph(&pool, Side::East);
        assert_eq!(g.poll().unwrap(), 12);
        let st = g.stats("diode").unwrap();
        assert_eq!(st.west.rx_packets, 5);
        assert_eq!(st.east.tx_packets, 5);
        assert_eq!(st.east.rx_packets, 7);
        assert_eq!(st.west.tx_packets, 0, "nothing goes back west");
        assert_eq!(st.west.tx_bytes, 0);
        let d = g.get::<Diode>("diode").unwrap();
        assert_eq!((d.passed(), d.dropped()), (5, 7));
        assert_eq!(g.stats("east").unwrap().west.rx_packets, 5);
        assert_eq!(g.stats("west").unwrap().east.rx_packets, 0);
        assert_eq!(
            pool.available(),
            128,
            "dropped packets went back to the pool"
        );
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn output_side_is_configurable() {
        let pool = pool();
        let mut g = graph(&pool, Side::West);
        g.poll().unwrap();
        let st = g.stats("diode").unwrap();
        assert_eq!(st.west.tx_packets, 7);
        assert_eq!(st.east.tx_packets, 0);
        let d = g.get_mut::<Diode>("diode").unwrap();
        assert_eq!((d.passed(), d.dropped()), (7, 5));
        d.set_output(Side::East);
        assert_eq!(d.output(), Side::East);
    }

    #[test]
    fn dropping_everything_emits_no_empty_burst() {
        let pool = pool();
        let mut g = Graph::new("d");
        g.add("gen", PacketGen::new(pool.clone(), vec![vec![1; 60]], 64))
            .unwrap();
        g.add("diode", Diode::new(Side::West)).unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link_chain(&["gen", "diode", "sink"]).unwrap();
        g.poll().unwrap();
        assert_eq!(g.get::<Diode>("diode").unwrap().dropped(), 64);
        assert_eq!(g.get::<Collect>("sink").unwrap().bursts(Side::West), 0);
        assert_eq!(g.empty_bursts(), 0);
        let mut out = Emit::new();
        let mut d = Diode::default();
        d.burst(Side::East, 0, Burst::new(), &mut out).unwrap();
        d.burst(Side::West, 0, Burst::new(), &mut out).unwrap();
        assert_eq!(out.empty_bursts(), 0);
        assert!(out.pending().is_empty());
    }
}
