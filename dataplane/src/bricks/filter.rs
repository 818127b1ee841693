//! `filter`: a dipole that keeps or drops each packet according to a user callback.
//!
//! The callback sees every packet with the side it came from and returns `true` to
//! keep it. Kept packets go on to the other side in their original order; the others are
//! dropped (returned to their pool) and counted per side. A burst of which nothing is
//! kept emits nothing.

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;
use crate::packet::Packet;

/// The decision function of a [`Filter`]: `(side the packet came from, packet) -> keep`.
/// It may modify the packet (set a mark, rewrite a field).
pub type FilterFn = Box<dyn FnMut(Side, &mut Packet) -> bool + Send>;

/// A user-defined filter.
pub struct Filter {
    keep: FilterFn,
    passed: [u64; 2],
    dropped: [u64; 2],
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("passed", &self.passed)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl Filter {
    /// A filter that keeps the packets for which `keep` returns `true`.
    pub fn new(keep: impl FnMut(Side, &mut Packet) -> bool + Send + 'static) -> Filter {
        Filter {
            keep: Box::new(keep),
            passed: [0; 2],
            dropped: [0; 2],
        }
    }

    /// Packets that arrived on `from` and were kept.
    pub fn passed(&self, from: Side) -> u64 {
        self.passed[from.index()]
    }

    /// Packets that arrived on `from` and were dropped.
    pub fn dropped(&self, from: Side) -> u64 {
        self.dropped[from.index()]
    }
}

impl Brick for Filter {
    fn kind(&self) -> &'static str {
        "filter"
    }

    fn poles(&self) -> Poles {
        Poles::Dipole
    }

    fn burst(
        &mut self,
        from: Side,
        _edge: usize,
        mut pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        let keep = &mut self.keep;
        let dropped = pkts.retain(|p| keep(from, p));
        self.dropped[from.index()] += dropped as u64;
        self.passed[from.index()] += pkts.len() as u64;
        if !pkts.is_empty() {
            out.send(from.opposite(), 0, pkts);
        }
        Ok(())
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("west_passed", self.passed[0]),
            ("west_dropped", self.dropped[0]),
            ("east_passed", self.passed[1]),
            ("east_dropped", self.dropped[1]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bricks::{Collect, PacketGen};
    use crate::{Graph, Pool, PoolConfig};

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .unwrap()
    }

    /// Frames carry a sequence number at byte 14; keep the even ones.
    #[test]
    fn keeps_what_the_callback_keeps_in_order_and_counts_the_rest() {
        let pool = pool();
        let mut g = Graph::new("f");
        g.add(
            "gen",
            PacketGen::new(pool.clone(), vec![vec![0; 60]], 20).with_sequence(14),
        )
        .unwrap();
        g.add(
            "filter",
            Filter::new(|_, p| {
                let seq = u32::from_be_bytes(p.data()[14..18].try_into().unwrap());
                p.set_mark(7);
                seq % 2 == 0
            }),
        )
        .unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link_chain(&["gen", "filter", "sink"]).unwrap();
        g.poll().unwrap();
        let sink = g.get::<Collect>("sink").unwrap();
        let got: Vec<u32> = sink
            .last(Side::West)
            .unwrap()
            .iter()
            .map(|p| {
                assert_eq!(p.mark(), 7, "the callback may modify packets");
                u32::from_be_bytes(p.data()[14..18].try_into().unwrap())
            })
            .collect();
        assert_eq!(got, (0..20).step_by(2).collect::<Vec<_>>());
        let f = g.get::<Filter>("filter").unwrap();
        assert_eq!((f.passed(Side::West), f.dropped(Side::West)), (10, 10));
        assert_eq!((f.passed(Side::East), f.dropped(Side::East)), (0, 0));
        assert_eq!(g.stats("filter").unwrap().east.tx_packets, 10);
        drop(g);
        assert_eq!(pool.available(), 256);
    }

    #[test]
    fn sees_the_side_packets_come_from() {
        let pool = pool();
        let mut g = Graph::new("f");
        g.add("w", PacketGen::new(pool.clone(), vec![vec![1; 60]], 3))
            .unwrap();
        g.add("e", PacketGen::new(pool.clone(), vec![vec![2; 60]], 4))
            .unwrap();
        g.add("filter", Filter::new(|from, _| from == Side::East))
            .unwrap();
        g.link_chain(&["w", "filter", "e"]).unwrap();
        g.poll().unwrap();
        let f = g.get::<Filter>("filter").unwrap();
        assert_eq!(f.dropped(Side::West), 3);
        assert_eq!(f.passed(Side::East), 4);
        assert_eq!(g.stats("w").unwrap().east.rx_packets, 4);
        assert_eq!(g.stats("e").unwrap().west.rx_packets, 0);
    }

    #[test]
    fn dropping_everything_emits_no_empty_burst() {
        let pool = pool();
        let mut g = Graph::new("f");
        g.add("gen", PacketGen::new(pool.clone(), vec![vec![0; 60]], 200))
            .unwrap();
        g.add("filter", Filter::new(|_, _| false)).unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link_chain(&["gen", "filter", "sink"]).unwrap();
        for _ in 0..4 {
            g.poll().unwrap();
        }
        assert_eq!(g.get::<Filter>("filter").unwrap().dropped(Side::West), 200);
        assert_eq!(g.get::<Collect>("sink").unwrap().bursts(Side::West), 0);
        assert_eq!(g.empty_bursts(), 0);
        assert_eq!(pool.available(), 256);
    }
}
