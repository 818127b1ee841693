//! The graph: owns bricks by name, links their edges, delivers bursts, polls sources.
//!
//! Delivery is iterative (a stack of pending bursts, like VPP's next frames): a brick puts
//! bursts in an [`Emit`], the graph hands them to the neighbours afterwards, depth first and
//! in emission order, until everything read by one poll has run to completion.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use crate::brick::{Brick, BrickStats, Dest, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::GraphError;

/// One end of a link, as seen from the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    node: usize,
    side: Side,
    edge: usize,
}

struct Node {
    name: String,
    brick: Box<dyn Brick>,
    /// `edges[side][i]`: edge `i` of that side, `None` when unlinked (indices stay stable).
    edges: [Vec<Option<Link>>; 2],
    stats: BrickStats,
    errors: u64,
}

impl Node {
    fn edge_count(&self) -> usize {
        self.edges.iter().flatten().filter(|e| e.is_some()).count()
    }
}

/// Snapshot of one brick for reports (`status`, `nic stats`).
#[derive(Debug, Clone)]
pub struct BrickReport {
    /// Brick name.
    pub name: String,
    /// Brick kind (`"nop"`, `"switch"`...).
    pub kind: &'static str,
    /// Per-side counters.
    pub stats: BrickStats,
    /// Brick-specific counters.
    pub counters: Vec<(&'static str, u64)>,
    /// Errors returned by the brick's handlers.
    pub errors: u64,
}

/// A burst waiting to be delivered: destination node, side and edge, and its byte count
/// (computed once per hop for both the sender's TX and the receiver's RX counters).
struct Pending {
    node: usize,
    side: Side,
    edge: usize,
    bytes: u64,
    burst: Burst,
}

/// A graph of bricks.
pub struct Graph {
    name: String,
    nodes: Vec<Option<Node>>,
    by_name: HashMap<String, usize>,
    sources: Vec<usize>,
    pending: Vec<Pending>,
    emit: Emit,
}

impl Graph {
    /// An empty graph; `name` appears in logs and the Graphviz output.
    pub fn new(name: impl Into<String>) -> Graph {
        Graph {
            name: name.into(),
            nodes: Vec::new(),
            by_name: HashMap::new(),
            sources: Vec::new(),
            pending: Vec::with_capacity(64),
            emit: Emit::new(),
        }
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a brick under a unique name.
    ///
    /// # Errors
    /// [`GraphError::DuplicateName`] when the name is taken.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        brick: impl Brick + 'static,
    ) -> Result<(), GraphError> {
        self.add_boxed(name, Box::new(brick))
    }

    /// Adds an already boxed brick (see [`Graph::add`]).
    ///
    /// # Errors
    /// [`GraphError::DuplicateName`] when the name is taken.
    pub fn add_boxed(
        &mut self,
        name: impl Into<String>,
        brick: Box<dyn Brick>,
    ) -> Result<(), GraphError> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(GraphError::DuplicateName(name));
        }
        let pollable = brick.pollable();
        let node = Node {
            name: name.clone(),
            brick,
            edges: [Vec::new(), Vec::new()],
            stats: BrickStats::default(),
            errors: 0,
        };
        let id = match self.nodes.iter().position(Option::is_none) {
            Some(i) => {
                self.nodes[i] = Some(node);
                i
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.by_name.insert(name, id);
        if pollable {
            self.sources.push(id);
        }
        Ok(())
    }

    /// Removes a brick (unlinking it first) and gives it back.
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`].
    pub fn remove(&mut self, name: &str) -> Result<Box<dyn Brick>, GraphError> {
        self.unlink(name)?;
        let id = self.id(name)?;
        self.by_name.remove(name);
        self.sources.retain(|&s| s != id);
        let node = self.nodes[id]
            .take()
            .ok_or_else(|| GraphError::NoSuchBrick(name.into()))?;
        Ok(node.brick)
    }

    /// True when a brick has that name.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Names of all bricks, in insertion-slot order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().flatten().map(|n| n.name.as_str())
    }

    fn id(&self, name: &str) -> Result<usize, GraphError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| GraphError::NoSuchBrick(name.into()))
    }

    fn node(&self, id: usize) -> &Node {
        self.nodes[id]
            .as_ref()
            .expect("graph node ids always point to live nodes")
    }

    fn node_mut(&mut self, id: usize) -> &mut Node {
        self.nodes[id]
            .as_mut()
            .expect("graph node ids always point to live nodes")
    }

    fn free_edge(&self, id: usize, side: Side) -> Result<usize, GraphError> {
        let n = self.node(id);
        let poles = n.brick.poles();
        let max = poles.max_edges(side);
        let full = || GraphError::EdgeFull {
            brick: n.name.clone(),
            side,
            max,
        };
        if poles == Poles::Monopole && n.edge_count() >= 1 {
            return Err(full());
        }
        let edges = &n.edges[side.index()];
        if let Some(i) = edges.iter().position(Option::is_none) {
            return Ok(i);
        }
        if edges.len() >= max {
            return Err(full());
        }
        Ok(edges.len())
    }

    fn set_edge(&mut self, id: usize, side: Side, edge: usize, link: Option<Link>) {
        let edges = &mut self.node_mut(id).edges[side.index()];
        if edge == edges.len() {
            edges.push(link);
        } else {
            edges[edge] = link;
        }
    }

    /// Links `west`'s EAST side to `east`'s WEST side. Returns the new edge index on each
    /// side: `(edge on west's EAST, edge on east's WEST)`.
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`], [`GraphError::SelfLink`], [`GraphError::EdgeFull`].
    pub fn link(&mut self, west: &str, east: &str) -> Result<(usize, usize), GraphError> {
        let a = self.id(west)?;
        let b = self.id(east)?;
        if a == b {
            return Err(GraphError::SelfLink(west.into()));
        }
        let ea = self.free_edge(a, Side::East)?;
        let eb = self.free_edge(b, Side::West)?;
        self.set_edge(
            a,
            Side::East,
            ea,
            Some(Link {
                node: b,
                side: Side::West,
                edge: eb,
            }),
        );
        self.set_edge(
            b,
            Side::West,
            eb,
            Some(Link {
                node: a,
                side: Side::East,
                edge: ea,
            }),
        );
        self.node_mut(a).brick.on_link(Side::East, ea);
        self.node_mut(b).brick.on_link(Side::West, eb);
        Ok((ea, eb))
    }

    /// Links bricks in a chain: `link(n0, n1)`, `link(n1, n2)`, ...
    ///
    /// # Errors
    /// The first error of [`Graph::link`] (links made before it stay).
    pub fn link_chain(&mut self, names: &[&str]) -> Result<(), GraphError> {
        for w in names.windows(2) {
            self.link(w[0], w[1])?;
        }
        Ok(())
    }

    fn cut(&mut self, id: usize, side: Side, edge: usize) {
        let Some(Some(l)) = self.node(id).edges[side.index()].get(edge).copied() else {
            return;
        };
        self.node_mut(id).edges[side.index()][edge] = None;
        self.node_mut(l.node).edges[l.side.index()][l.edge] = None;
        self.node_mut(id).brick.on_unlink(side, edge);
        self.node_mut(l.node).brick.on_unlink(l.side, l.edge);
        for n in [id, l.node] {
            for e in &mut self.node_mut(n).edges {
                while e.last() == Some(&None) {
                    e.pop();
                }
            }
        }
    }

    /// Removes every edge of a brick.
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`].
    pub fn unlink(&mut self, name: &str) -> Result<(), GraphError> {
        let id = self.id(name)?;
        for side in Side::BOTH {
            for e in (0..self.node(id).edges[side.index()].len()).rev() {
                self.cut(id, side, e);
            }
        }
        Ok(())
    }

    /// Removes the edge(s) between `west`'s EAST side and `east`'s WEST side.
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`], [`GraphError::NotLinked`].
    pub fn unlink_edge(&mut self, west: &str, east: &str) -> Result<(), GraphError> {
        let a = self.id(west)?;
        let b = self.id(east)?;
        let edges: Vec<usize> = self.node(a).edges[Side::East.index()]
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.filter(|l| l.node == b).map(|_| i))
            .collect();
        if edges.is_empty() {
            return Err(GraphError::NotLinked(west.into(), east.into()));
        }
        for e in edges.into_iter().rev() {
            self.cut(a, Side::East, e);
        }
        Ok(())
    }

    /// The edge index on `name`'s `side` that leads to `peer`, if linked.
    pub fn edge_to(&self, name: &str, side: Side, peer: &str) -> Option<usize> {
        let a = self.id(name).ok()?;
        let b = self.id(peer).ok()?;
        self.node(a).edges[side.index()]
            .iter()
            .position(|l| l.is_some_and(|l| l.node == b))
    }

    /// Names of the bricks linked to `name` on `side`, by edge index (`None` = free slot).
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`].
    pub fn neighbours(&self, name: &str, side: Side) -> Result<Vec<Option<String>>, GraphError> {
        let id = self.id(name)?;
        Ok(self.node(id).edges[side.index()]
            .iter()
            .map(|l| l.map(|l| self.node(l.node).name.clone()))
            .collect())
    }

    /// The brick named `name`, as its concrete type.
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`], [`GraphError::WrongType`].
    pub fn get<T: Brick>(&self, name: &str) -> Result<&T, GraphError> {
        let n = self.node(self.id(name)?);
        let any: &dyn Any = n.brick.as_ref();
        any.downcast_ref::<T>()
            .ok_or_else(|| GraphError::WrongType {
                name: name.into(),
                kind: n.brick.kind(),
            })
    }

    /// The brick named `name`, as its concrete type, mutably (configure it between polls).
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`], [`GraphError::WrongType`].
    pub fn get_mut<T: Brick>(&mut self, name: &str) -> Result<&mut T, GraphError> {
        let id = self.id(name)?;
        let n = self.node_mut(id);
        let kind = n.brick.kind();
        let any: &mut dyn Any = n.brick.as_mut();
        any.downcast_mut::<T>()
            .ok_or_else(|| GraphError::WrongType {
                name: name.into(),
                kind,
            })
    }

    /// Per-side counters of a brick.
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`].
    pub fn stats(&self, name: &str) -> Result<BrickStats, GraphError> {
        Ok(self.node(self.id(name)?).stats)
    }

    /// A report of every brick (counters included).
    pub fn report(&self) -> Vec<BrickReport> {
        self.nodes
            .iter()
            .flatten()
            .map(|n| BrickReport {
                name: n.name.clone(),
                kind: n.brick.kind(),
                stats: n.stats,
                counters: n.brick.counters(),
                errors: n.errors,
            })
            .collect()
    }

    /// Empty bursts that bricks tried to emit (a brick bug; 0 in a correct graph).
    pub fn empty_bursts(&self) -> u64 {
        self.emit.empty_bursts
    }

    /// Delivers `burst` to `name` as if it had arrived on `side`, edge `edge`, and runs
    /// everything that follows to completion. Returns the first brick error.
    ///
    /// # Errors
    /// [`GraphError::NoSuchBrick`], or the first [`GraphError::Brick`] error raised.
    pub fn inject(
        &mut self,
        name: &str,
        side: Side,
        edge: usize,
        burst: Burst,
    ) -> Result<(), GraphError> {
        let id = self.id(name)?;
        if burst.is_empty() {
            return Ok(());
        }
        let bytes = burst.bytes();
        self.pending.push(Pending {
            node: id,
            side,
            edge,
            bytes,
            burst,
        });
        self.run()
    }

    /// Polls every pollable brick once and runs what they read to completion.
    /// Returns the number of packets polled.
    ///
    /// # Errors
    /// The first [`GraphError::Brick`] raised (the other bricks are still polled and
    /// every polled packet is still delivered).
    pub fn poll(&mut self) -> Result<usize, GraphError> {
        let mut total = 0;
        let mut first_err = None;
        for i in 0..self.sources.len() {
            let id = self.sources[i];
            let node = self.nodes[id].as_mut().expect("sources are live nodes");
            match node.brick.poll(&mut self.emit) {
                Ok(n) => {
                    total += n;
                    node.stats.polled_packets += n as u64;
                }
                Err(e) => {
                    node.errors += 1;
                    if first_err.is_none() {
                        first_err = Some(GraphError::Brick {
                            brick: node.name.clone(),
                            source: e,
                        });
                    }
                }
            }
            self.dispatch(id);
            if let Err(e) = self.run() {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Moves what `src` emitted onto the pending stack (reversed, so the stack pops them
    /// in emission order).
    fn dispatch(&mut self, src: usize) {
        let Graph {
            nodes,
            emit,
            pending,
            ..
        } = self;
        let node = nodes[src].as_mut().expect("live node");
        for (dest, burst) in emit.items.drain(..).rev() {
            let (side, edge) = match dest {
                Dest::Edge(s, e) => (s, e),
                Dest::Peer => {
                    if node.edges[Side::East.index()]
                        .first()
                        .is_some_and(Option::is_some)
                    {
                        (Side::East, 0)
                    } else {
                        (Side::West, 0)
                    }
                }
            };
            match node.edges[side.index()].get(edge).copied().flatten() {
                Some(l) => {
                    let bytes = burst.bytes();
                    let st = node.stats.side_mut(side);
                    st.tx_packets += burst.len() as u64;
                    st.tx_bytes += bytes;
                    pending.push(Pending {
                        node: l.node,
                        side: l.side,
                        edge: l.edge,
                        bytes,
                        burst,
                    });
                }
                None => node.stats.unlinked_drops += burst.len() as u64,
            }
        }
    }

    fn run(&mut self) -> Result<(), GraphError> {
        let mut first_err = None;
        while let Some(Pending {
            node: id,
            side,
            edge,
            bytes,
            burst,
        }) = self.pending.pop()
        {
            let node = self.nodes[id]
                .as_mut()
                .expect("pending bursts go to live nodes");
            let st = node.stats.side_mut(side);
            st.rx_packets += burst.len() as u64;
            st.rx_bytes += bytes;
            if let Err(e) = node.brick.burst(side, edge, burst, &mut self.emit) {
                node.errors += 1;
                if first_err.is_none() {
                    first_err = Some(GraphError::Brick {
                        brick: node.name.clone(),
                        source: e,
                    });
                }
            }
            self.dispatch(id);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Checks that the graph can work: at least one pollable brick, every brick reachable
    /// from a pollable brick, no dipole with an unlinked side, no brick without edges.
    ///
    /// # Errors
    /// [`GraphError::NoSource`], [`GraphError::Unreachable`], [`GraphError::Dangling`].
    pub fn sanity_check(&self) -> Result<(), GraphError> {
        if self.sources.is_empty() {
            return Err(GraphError::NoSource);
        }
        for n in self.nodes.iter().flatten() {
            let linked = |s: Side| n.edges[s.index()].iter().any(Option::is_some);
            match n.brick.poles() {
                Poles::Dipole => {
                    for s in Side::BOTH {
                        if !linked(s) {
                            return Err(GraphError::Dangling {
                                brick: n.name.clone(),
                                side: s,
                            });
                        }
                    }
                }
                _ => {
                    if !linked(Side::West) && !linked(Side::East) {
                        return Err(GraphError::Dangling {
                            brick: n.name.clone(),
                            side: Side::East,
                        });
                    }
                }
            }
        }
        let mut seen = vec![false; self.nodes.len()];
        let mut queue: VecDeque<usize> = self.sources.iter().copied().collect();
        for &s in &self.sources {
            seen[s] = true;
        }
        while let Some(id) = queue.pop_front() {
            for l in self.node(id).edges.iter().flatten().flatten() {
                if !seen[l.node] {
                    seen[l.node] = true;
                    queue.push_back(l.node);
                }
            }
        }
        let unreachable: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().filter(|_| !seen[i]).map(|n| n.name.clone()))
            .collect();
        if !unreachable.is_empty() {
            return Err(GraphError::Unreachable(unreachable));
        }
        Ok(())
    }

    /// The graph in Graphviz dot: one box per brick (`name` and kind, pollable bricks
    /// doubled), one edge per link from the EAST side of one brick to the WEST side of
    /// the next, labelled with the packets that crossed it.
    pub fn to_dot(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut s = String::new();
        let _ = writeln!(s, "digraph \"{}\" {{", esc(&self.name));
        let _ = writeln!(s, "  rankdir=LR;\n  node [shape=box];");
        for n in self.nodes.iter().flatten() {
            let periph = if n.brick.pollable() { 2 } else { 1 };
            let _ = writeln!(
                s,
                "  \"{}\" [label=\"{}\\n({})\", peripheries={}];",
                esc(&n.name),
                esc(&n.name),
                n.brick.kind(),
                periph
            );
        }
        for n in self.nodes.iter().flatten() {
            for (i, l) in n.edges[Side::East.index()].iter().enumerate() {
                if let Some(l) = l {
                    let peer = self.node(l.node);
                    let _ = writeln!(
                        s,
                        "  \"{}\" -> \"{}\" [taillabel=\"{}\", headlabel=\"{}\", dir=both];",
                        esc(&n.name),
                        esc(&peer.name),
                        i,
                        l.edge
                    );
                }
            }
        }
        s.push_str("}\n");
        s
    }
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("name", &self.name)
            .field("bricks", &self.by_name.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bricks::{Collect, Nop, PacketGen};
    use crate::{Pool, PoolConfig};

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            frame_count: 1024,
            ..Default::default()
        })
        .unwrap()
    }

    fn gen_nop_sink(p: &Pool, count: u64) -> Graph {
        let mut g = Graph::new("t");
        g.add("gen", PacketGen::new(p.clone(), vec![vec![7u8; 64]], count))
            .unwrap();
        g.add("nop", Nop::new()).unwrap();
        g.add("sink", Collect::new()).unwrap();
        g
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let mut g = Graph::new("t");
        g.add("a", Nop::new()).unwrap();
        assert!(matches!(g.add("a", Nop::new()), Err(GraphError::DuplicateName(n)) if n == "a"));
    }

    #[test]
    fn dipole_accepts_one_edge_per_side_and_monopole_one_in_all() {
        let p = pool();
        let mut g = gen_nop_sink(&p, 1);
        g.add("nop2", Nop::new()).unwrap();
        g.link("gen", "nop").unwrap();
        assert!(matches!(
            g.link("nop2", "nop"),
            Err(GraphError::EdgeFull {
                side: Side::West,
                ..
            })
        ));
        // gen is a monopole already linked on EAST: no edge left on WEST either.
        assert!(matches!(
            g.link("nop2", "gen"),
            Err(GraphError::EdgeFull { .. })
        ));
        assert!(matches!(g.link("nop", "nop"), Err(GraphError::SelfLink(_))));
        assert!(matches!(
            g.link("nop", "zzz"),
            Err(GraphError::NoSuchBrick(_))
        ));
    }

    #[test]
    fn link_unlink_relink_moves_traffic() {
        let p = pool();
        let mut g = gen_nop_sink(&p, 200);
        g.add("sink2", Collect::new()).unwrap();
        g.link_chain(&["gen", "nop", "sink"]).unwrap();
        g.sanity_check().unwrap_err(); // sink2 is not linked
        g.poll().unwrap();
        assert_eq!(g.get::<Collect>("sink").unwrap().packets(Side::West), 64);

        g.unlink_edge("nop", "sink").unwrap();
        assert!(matches!(
            g.unlink_edge("nop", "sink"),
            Err(GraphError::NotLinked(..))
        ));
        g.poll().unwrap();
        // Sent to an unlinked edge: dropped and counted, frames back in the pool.
        assert_eq!(g.stats("nop").unwrap().unlinked_drops, 64);
        assert_eq!(g.get::<Collect>("sink").unwrap().packets(Side::West), 64);

        g.link("nop", "sink2").unwrap();
        g.sanity_check().unwrap_err(); // now sink is alone
        g.remove("sink").unwrap();
        g.sanity_check().unwrap();
        g.poll().unwrap();
        assert_eq!(g.get::<Collect>("sink2").unwrap().packets(Side::West), 64);
        assert!(!g.contains("sink"));
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn unlink_removes_every_edge_and_frees_slots() {
        let p = pool();
        let mut g = gen_nop_sink(&p, 1);
        g.link_chain(&["gen", "nop", "sink"]).unwrap();
        g.unlink("nop").unwrap();
        assert_eq!(
            g.neighbours("nop", Side::West).unwrap(),
            Vec::<Option<String>>::new()
        );
        assert_eq!(
            g.neighbours("gen", Side::East).unwrap(),
            Vec::<Option<String>>::new()
        );
        g.link_chain(&["gen", "nop", "sink"]).unwrap();
        assert_eq!(g.edge_to("nop", Side::East, "sink"), Some(0));
    }

    #[test]
    fn sanity_errors_name_the_problem() {
        let mut g = Graph::new("t");
        g.add("a", Nop::new()).unwrap();
        assert!(matches!(g.sanity_check(), Err(GraphError::NoSource)));
        let p = pool();
        let mut g = gen_nop_sink(&p, 1);
        g.link("gen", "nop").unwrap();
        match g.sanity_check() {
            Err(GraphError::Dangling { brick, side }) => {
                assert_eq!((brick.as_str(), side), ("nop", Side::East));
            }
            other => panic!("expected a dangling nop, got {other:?}"),
        }
        g.link("nop", "sink").unwrap();
        g.add("x", Nop::new()).unwrap();
        g.add("y", Nop::new()).unwrap();
        g.add("z", Collect::new()).unwrap();
        g.link_chain(&["z", "x", "y", "z"]).unwrap();
        match g.sanity_check() {
            Err(GraphError::Unreachable(v)) => assert_eq!(v, vec!["x", "y", "z"]),
            other => panic!("expected unreachable bricks, got {other:?}"),
        }
    }

    #[test]
    fn get_checks_the_type() {
        let p = pool();
        let g = gen_nop_sink(&p, 1);
        assert!(g.get::<Nop>("nop").is_ok());
        assert!(matches!(
            g.get::<Collect>("nop"),
            Err(GraphError::WrongType { kind: "nop", .. })
        ));
    }

    #[test]
    fn dot_lists_bricks_and_links() {
        let p = pool();
        let mut g = gen_nop_sink(&p, 1);
        g.link_chain(&["gen", "nop", "sink"]).unwrap();
        let dot = g.to_dot();
        assert!(dot.starts_with("digraph \"t\" {"));
        assert!(dot.contains("\"gen\" [label=\"gen\\n(packetgen)\", peripheries=2];"));
        assert!(dot.contains("\"gen\" -> \"nop\""));
        assert!(dot.contains("\"nop\" -> \"sink\""));
        assert_eq!(dot.matches("->").count(), 2);
    }

    /// A brick that sends each packet back where it came from, in separate bursts of one,
    /// to check the graph keeps emission order.
    struct Splitter;
    impl Brick for Splitter {
        fn kind(&self) -> &'static str {
            "splitter"
        }
        fn poles(&self) -> Poles {
            Poles::Dipole
        }
        fn burst(
            &mut self,
            from: Side,
            _edge: usize,
            pkts: Burst,
            out: &mut Emit,
        ) -> Result<(), crate::BrickError> {
            for p in pkts {
                let mut b = Burst::new();
                let _ = b.push(p);
                out.send(from.opposite(), 0, b);
            }
            Ok(())
        }
    }

    /// Records the first byte of every packet in arrival order.
    #[derive(Default)]
    struct Order(Vec<u32>);
    impl Brick for Order {
        fn kind(&self) -> &'static str {
            "order"
        }
        fn poles(&self) -> Poles {
            Poles::Monopole
        }
        fn burst(
            &mut self,
            _from: Side,
            _edge: usize,
            pkts: Burst,
            _out: &mut Emit,
        ) -> Result<(), crate::BrickError> {
            for p in &pkts {
                self.0
                    .push(u32::from_be_bytes(p.data()[0..4].try_into().unwrap()));
            }
            Ok(())
        }
    }

    #[test]
    fn delivery_keeps_emission_order() {
        let p = pool();
        let mut g = Graph::new("t");
        g.add(
            "gen",
            PacketGen::new(p.clone(), vec![vec![0u8; 60]], 64).with_sequence(0),
        )
        .unwrap();
        g.add("split", Splitter).unwrap();
        g.add("nop", Nop::new()).unwrap();
        g.add("order", Order::default()).unwrap();
        g.link_chain(&["gen", "split", "nop", "order"]).unwrap();
        assert_eq!(g.poll().unwrap(), 64);
        assert_eq!(
            g.get::<Order>("order").unwrap().0,
            (0..64).collect::<Vec<u32>>()
        );
        assert_eq!(g.stats("nop").unwrap().west.rx_packets, 64);
        assert_eq!(p.available(), 1024);
    }
}
