//! The brick model: sides, poles, the [`Brick`] trait and the [`Emit`] output buffer.

use std::any::Any;
use std::fmt;

use crate::burst::Burst;
use crate::error::BrickError;

/// One of a brick's two sides. `link(a, b)` joins a's EAST to b's WEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The west side (where `link(x, this)` attaches).
    West,
    /// The east side (where `link(this, x)` attaches).
    East,
}

impl Side {
    /// The other side.
    #[inline]
    pub fn opposite(self) -> Side {
        match self {
            Side::West => Side::East,
            Side::East => Side::West,
        }
    }

    /// 0 for WEST, 1 for EAST (index into per-side arrays).
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// Both sides, WEST first.
    pub const BOTH: [Side; 2] = [Side::West, Side::East];
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::West => "west",
            Side::East => "east",
        })
    }
}

/// How many edges a brick accepts on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poles {
    /// One edge in all, on either side (nic, vhost, tap, queue, packetgen).
    Monopole,
    /// At most one edge per side (firewall, antispoof, diode, print, nop).
    Dipole,
    /// Up to `west` edges on WEST and `east` on EAST (switch, hub, vtep).
    Multipole {
        /// Most edges on the WEST side.
        west: usize,
        /// Most edges on the EAST side.
        east: usize,
    },
}

impl Poles {
    /// Most edges allowed on `side`, not counting edges on the other side
    /// (a monopole allows 1 on either side but 1 in all).
    pub fn max_edges(self, side: Side) -> usize {
        match self {
            Poles::Monopole | Poles::Dipole => 1,
            Poles::Multipole { west, east } => match side {
                Side::West => west,
                Side::East => east,
            },
        }
    }
}

/// Where a brick sends a burst: a side and an edge index on that side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// Edge `edge` of side `side`.
    Edge(Side, usize),
    /// The single edge of a monopole brick, whichever side it is on.
    Peer,
}

/// What a brick emits while handling a burst or a poll; the graph delivers it to the
/// neighbours afterwards (bricks never call each other). Its storage is reused from burst
/// to burst, so emitting allocates nothing once warmed up.
#[derive(Default)]
pub struct Emit {
    pub(crate) items: Vec<(Dest, Burst)>,
    pub(crate) empty_bursts: u64,
}

impl Emit {
    /// A new, empty output buffer.
    pub fn new() -> Emit {
        Emit {
            items: Vec::with_capacity(16),
            empty_bursts: 0,
        }
    }

    /// Sends `burst` out of edge `edge` of side `side`. An empty burst is not sent (and
    /// is counted as a brick bug in [`Emit::empty_bursts`]).
    #[inline]
    pub fn send(&mut self, side: Side, edge: usize, burst: Burst) {
        if burst.is_empty() {
            self.empty_bursts += 1;
            return;
        }
        self.items.push((Dest::Edge(side, edge), burst));
    }

    /// Sends `burst` out of a monopole brick's only edge.
    #[inline]
    pub fn send_peer(&mut self, burst: Burst) {
        if burst.is_empty() {
            self.empty_bursts += 1;
            return;
        }
        self.items.push((Dest::Peer, burst));
    }

    /// Number of empty bursts bricks tried to send through this buffer (always 0 for a
    /// correct brick; tests assert it).
    pub fn empty_bursts(&self) -> u64 {
        self.empty_bursts
    }

    /// Bursts emitted and not yet delivered.
    pub fn pending(&self) -> &[(Dest, Burst)] {
        &self.items
    }

    /// Takes the emitted bursts out (for tests that drive a brick without a graph).
    pub fn take(&mut self) -> Vec<(Dest, Burst)> {
        std::mem::take(&mut self.items)
    }

    /// Removes the emitted bursts and keeps the storage, so a bench or test that drives a
    /// brick without a graph allocates nothing either.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (Dest, Burst)> {
        self.items.drain(..)
    }
}

/// Packet and byte counters of one side of a brick, kept by the graph.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SideStats {
    /// Packets that came in on this side.
    pub rx_packets: u64,
    /// Bytes that came in on this side.
    pub rx_bytes: u64,
    /// Packets the brick sent out of this side.
    pub tx_packets: u64,
    /// Bytes the brick sent out of this side.
    pub tx_bytes: u64,
}

/// Counters of a brick: per side, plus packets the graph dropped because the brick sent
/// them to an edge that is not linked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BrickStats {
    /// Counters of the WEST side.
    pub west: SideStats,
    /// Counters of the EAST side.
    pub east: SideStats,
    /// Packets polled from outside the graph (pollable bricks only).
    pub polled_packets: u64,
    /// Packets sent to an unlinked edge and dropped.
    pub unlinked_drops: u64,
}

impl BrickStats {
    /// The counters of one side.
    pub fn side(&self, side: Side) -> &SideStats {
        match side {
            Side::West => &self.west,
            Side::East => &self.east,
        }
    }

    pub(crate) fn side_mut(&mut self, side: Side) -> &mut SideStats {
        match side {
            Side::West => &mut self.west,
            Side::East => &mut self.east,
        }
    }
}

/// A network function in the graph.
///
/// The graph owns bricks and calls them; a brick never holds a reference to another.
/// Per-side packet and byte counters are kept by the graph ([`BrickStats`]); a brick adds
/// its own counters (drops by reason, learned entries…) through [`Brick::counters`].
pub trait Brick: Any + Send {
    /// A short type name for logs and Graphviz labels (`"nop"`, `"switch"`).
    fn kind(&self) -> &'static str;

    /// How many edges this brick accepts.
    fn poles(&self) -> Poles;

    /// Handles `pkts`, which arrived on side `from`, edge `edge`. What leaves goes into
    /// `out`; what is not emitted is dropped (returned to its pool) when `pkts` goes out
    /// of scope.
    ///
    /// # Errors
    /// A [`BrickError`] for a failure that the graph should report (I/O error of a
    /// device, ...). Dropped malformed packets are *not* errors: count them instead.
    fn burst(
        &mut self,
        from: Side,
        edge: usize,
        pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError>;

    /// True for bricks that produce packets when polled (nic, tap, vhost, queue, packetgen).
    fn pollable(&self) -> bool {
        false
    }

    /// Sources only: reads up to one burst from outside the graph into `out`.
    /// Returns the number of packets read.
    ///
    /// # Errors
    /// A [`BrickError`] when the source failed (device gone, ...).
    fn poll(&mut self, _out: &mut Emit) -> Result<usize, BrickError> {
        Ok(0)
    }

    /// Called after an edge was added on `side` at index `edge`.
    fn on_link(&mut self, _side: Side, _edge: usize) {}

    /// Called after the edge at `side`/`edge` was removed (e.g. a switch forgets the
    /// MACs it learned on it).
    fn on_unlink(&mut self, _side: Side, _edge: usize) {}

    /// Brick-specific counters as `(name, value)` pairs, e.g. `("drop_spoofed_mac", 3)`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
