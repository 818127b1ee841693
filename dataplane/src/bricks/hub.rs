//! `hub`: a multipole that repeats every burst to all its other edges.
//!
//! A burst that arrives on edge `e` of side `s` leaves by every linked edge of both sides
//! except `(s, e)` itself. With `no_backward`, it leaves only by the edges of the other
//! side (nothing goes back towards the side it came from). The last destination gets the
//! original packets; each other destination gets copies made with
//! [`Packet::try_clone`](crate::Packet::try_clone) (flooding is the rare case that copies).
//! A copy that cannot be made because the pool is empty is counted and skipped.

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;

/// Default most edges per side of a [`Hub`].
pub const HUB_DEFAULT_EDGES: usize = 32;

/// A repeater.
#[derive(Debug)]
pub struct Hub {
    max_edges: usize,
    no_backward: bool,
    /// `linked[side][edge]`, maintained from `on_link`/`on_unlink`.
    linked: [Vec<bool>; 2],
    /// Scratch list of destinations, reused (no allocation per burst once warmed up).
    dests: Vec<(Side, usize)>,
    copies: u64,
    copy_failures: u64,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// A hub with up to [`HUB_DEFAULT_EDGES`] edges per side that repeats to every edge
    /// but the ingress one.
    pub fn new() -> Hub {
        Hub::with_edges(HUB_DEFAULT_EDGES)
    }

    /// A hub with up to `max_edges` (at least 1) edges per side.
    pub fn with_edges(max_edges: usize) -> Hub {
        Hub {
            max_edges: max_edges.max(1),
            no_backward: false,
            linked: [Vec::new(), Vec::new()],
            dests: Vec::with_capacity(2 * max_edges.max(1)),
            copies: 0,
            copy_failures: 0,
        }
    }

    /// When `true`, a burst leaves only by the side opposite to the one it came from.
    pub fn no_backward(mut self, yes: bool) -> Hub {
        self.no_backward = yes;
        self
    }

    /// Changes the `no_backward` option on a hub already in a graph.
    pub fn set_no_backward(&mut self, yes: bool) {
        self.no_backward = yes;
    }

    /// Packets copied so far (one per extra destination).
    pub fn copies(&self) -> u64 {
        self.copies
    }

    /// Copies that could not be made (pool exhausted).
    pub fn copy_failures(&self) -> u64 {
        self.copy_failures
    }
}

fn clone_burst(pkts: &Burst, failures: &mut u64) -> Burst {
    let mut b = Burst::new();
    for p in pkts {
        match p.try_clone() {
            Some(c) => {
                let _ = b.push(c);
            }
            None => *failures += 1,
        }
    }
    b
}

impl Brick for Hub {
    fn kind(&self) -> &'static str {
        "hub"
    }

    fn poles(&self) -> Poles {
        Poles::Multipole {
            west: self.max_edges,
            east: self.max_edges,
        }
    }

    fn burst(
        &mut self,
        from: Side,
        edge: usize,
        pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        self.dests.clear();
        for side in Side::BOTH {
            if self.no_backward && side == from {
                continue;
            }
            for (e, &up) in self.linked[side.index()].iter().enumerate() {
                if up && !(side == from && e == edge) {
                    self.dests.push((side, e));
                }
            }
        }
        let Some((&(last_side, last_edge), others)) = self.dests.split_last() else {
            return Ok(());
        };
        for &(side, e) in others {
            let copy = clone_burst(&pkts, &mut self.copy_failures);
            self.copies += copy.len() as u64;
            if !copy.is_empty() {
                out.send(side, e, copy);
            }
        }
        if !pkts.is_empty() {
            out.send(last_side, last_edge, pkts);
        }
        Ok(())
    }

    fn on_link(&mut self, side: Side, edge: usize) {
        let v = &mut self.linked[side.index()];
        if v.len() <= edge {
            v.resize(edge + 1, false);
        }
        v[edge] = true;
    }

    fn on_unlink(&mut self, side: Side, edge: usize) {
        if let Some(l) = self.linked[side.index()].get_mut(edge) {
            *l = false;
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("copies", self.copies),
            ("copy_failures", self.copy_failures),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bricks::{Collect, PacketGen};
    use crate::{Graph, Pool, PoolConfig};

    fn pool(frames: u32) -> Pool {
        Pool::new(PoolConfig {
            frame_count: frames,
            ..Default::default()
        })
        .unwrap()
    }

    /// `gen — hub` on WEST with `w2` (a collect) also on WEST; `e1`, `e2` on EAST.
    fn graph(pool: &Pool, hub: Hub, count: u64) -> Graph {
        let mut g = Graph::new("hub");
        g.add(
            "gen",
            PacketGen::new(pool.clone(), vec![vec![9; 60]], count),
        )
        .unwrap();
        g.add("w2", Collect::new()).unwrap();
        g.add("hub", hub).unwrap();
        g.add("e1", Collect::new()).unwrap();
        g.add("e2", Collect::new()).unwrap();
        g.link("gen", "hub").unwrap();
        g.link("w2", "hub").unwrap();
        g.link("hub", "e1").unwrap();
        g.link("hub", "e2").unwrap();
        g
    }

    fn got(g: &Graph, name: &str) -> u64 {
        g.get::<Collect>(name).unwrap().packets(Side::West)
            + g.get::<Collect>(name).unwrap().packets(Side::East)
    }

    #[test]
    fn repeats_to_every_edge_but_the_ingress_one() {
        let pool = pool(256);
        let mut g = graph(&pool, Hub::new(), 10);
        g.poll().unwrap();
        assert_eq!(got(&g, "e1"), 10);
        assert_eq!(got(&g, "e2"), 10);
        assert_eq!(
            got(&g, "w2"),
            10,
            "other edges of the ingress side get it too"
        );
        assert_eq!(
            g.stats("gen").unwrap().east.rx_packets,
            0,
            "never back to ingress"
        );
        assert_eq!(g.get::<Hub>("hub").unwrap().copies(), 20);
        let e1 = g.get::<Collect>("e1").unwrap().last(Side::West).unwrap();
        assert!(e1.iter().all(|p| p.data() == [9; 60]));
        assert_eq!(g.stats("hub").unwrap().east.tx_packets, 20);
        assert_eq!(g.stats("hub").unwrap().west.tx_packets, 10);
        assert_eq!(g.empty_bursts(), 0);
        drop(g);
        assert_eq!(
            pool.available(),
            256,
            "copies and originals went back to the pool"
        );
    }

    #[test]
    fn no_backward_sends_only_to_the_other_side() {
        let pool = pool(256);
        let mut g = graph(&pool, Hub::new().no_backward(true), 10);
        g.poll().unwrap();
        assert_eq!(got(&g, "e1"), 10);
        assert_eq!(got(&g, "e2"), 10);
        assert_eq!(got(&g, "w2"), 0);
        assert_eq!(g.stats("hub").unwrap().west.tx_packets, 0);
        assert_eq!(g.get::<Hub>("hub").unwrap().copies(), 10);
    }

    #[test]
    fn follows_unlink_and_relink() {
        let pool = pool(256);
        let mut g = graph(&pool, Hub::new(), 5);
        g.unlink_edge("hub", "e1").unwrap();
        g.poll().unwrap();
        assert_eq!(got(&g, "e1"), 0);
        assert_eq!(got(&g, "e2"), 5);
        assert_eq!(g.stats("hub").unwrap().unlinked_drops, 0);
        g.link("hub", "e1").unwrap();
        g.get_mut::<PacketGen>("gen").unwrap().add_count(5);
        g.poll().unwrap();
        assert_eq!(got(&g, "e1"), 5);
        assert_eq!(got(&g, "e2"), 10);
    }

    #[test]
    fn a_lone_edge_or_an_empty_pool_emits_no_empty_burst() {
        // Only the ingress edge: everything is dropped, nothing emitted.
        let pool = pool(64);
        let mut g = Graph::new("lone");
        g.add("gen", PacketGen::new(pool.clone(), vec![vec![1; 60]], 64))
            .unwrap();
        g.add("hub", Hub::new().no_backward(true)).unwrap();
        g.add("w2", Collect::new()).unwrap();
        g.link("gen", "hub").unwrap();
        g.link("w2", "hub").unwrap();
        g.poll().unwrap();
        assert_eq!(got(&g, "w2"), 0);
        assert_eq!(g.empty_bursts(), 0);
        assert_eq!(pool.available(), 64);

        // The generator takes every frame: no copy can be made, the last edge still
        // gets the originals and the failed copies are counted.
        let mut g = graph(&pool, Hub::new(), 64);
        g.poll().unwrap();
        let hub = g.get::<Hub>("hub").unwrap();
        assert_eq!(hub.copy_failures(), 128);
        assert_eq!(hub.copies(), 0);
        assert_eq!(got(&g, "e2"), 64);
        assert_eq!(got(&g, "e1") + got(&g, "w2"), 0);
        assert_eq!(g.empty_bursts(), 0);
    }
}
