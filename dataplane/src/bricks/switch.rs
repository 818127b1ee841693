//! `switch`: a multipole learning Ethernet switch (transparent bridging after
//! IEEE 802.1D/802.1Q §8: learning, filtering database, flooding, aging).
//!
//! Every linked edge, on either side, is a switch port. A frame that arrives on an edge
//! teaches the switch that its source MAC lives behind that edge (the FDB entry
//! `MAC → (side, edge)`), then goes:
//! - to exactly one edge when its destination MAC is a known unicast address
//!   (and nowhere when that edge is the one it came from: hairpin filtering),
//! - to every edge but the ingress one, on both sides, when the destination is broadcast,
//!   multicast or an unknown unicast address (*flooding*; one copy per extra edge with
//!   [`Packet::try_clone`], the last edge gets the original),
//! - nowhere when the destination is an IEEE 802.1D reserved link-local address
//!   `01:80:C2:00:00:00`–`01:80:C2:00:00:0F` (STP BPDUs, LACP, LLDP, 802.1X, pause
//!   frames), which a bridge must not forward (802.1Q §8.6.3, table 8-1).
//!
//! Beyond packetgraph's switch, which never forgot a MAC:
//! - **Aging**: a dynamic entry not refreshed for [`SwitchConfig::aging`] (default 300 s,
//!   the 802.1D default) is forgotten. Expiry is checked on every lookup (an expired
//!   entry is never used) and memory is reclaimed incrementally: each burst sweeps a
//!   few table slots, more when time has passed since the last burst, so a whole sweep
//!   completes at least every `aging / 2` of traffic time; no burst ever scans the
//!   whole table.
//! - **Size limit**: at most [`SwitchConfig::fdb_max`] entries. When the FDB is full a
//!   new source MAC is not learned (counted as `learn_table_full`); its frames are still
//!   forwarded, and frames *to* it are flooded. A MAC flood cannot grow memory.
//! - **Unlink**: when an edge is unlinked every entry (dynamic and static) that points
//!   to it is removed, since the edge index may later be reused by another neighbour.
//! - **Static entries** ([`Switch::add_static`]) never age, are not moved by learning,
//!   and count toward the size limit.
//! - **FDB dump** ([`Switch::fdb`]).
//!
//! Frames with a multicast or all-zero source MAC are dropped (an 802.1D bridge never
//! learns them and Linux's bridge drops them); frames shorter than an Ethernet header
//! (14 bytes) are dropped as malformed.
//!
//! The hot path allocates nothing: the FDB is an open-addressing hash table of fixed
//! size (`fdb_max × 4/3` slots rounded up to a power of two, so its load stays at or
//! under 75 %; linear probing, backward-shift deletion, no tombstones) allocated when the switch is made; the per-packet decision is kept in the
//! packet's mark while the burst is split by destination.

use std::time::Duration;

use arrayvec::ArrayVec;

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::{BURST_SIZE, Burst};
use crate::clock::Clock;
use crate::error::BrickError;

/// Default FDB aging time: 300 s (IEEE 802.1D-2004 §7.9.2 recommended value).
pub const DEFAULT_AGING: Duration = Duration::from_secs(300);
/// Default most FDB entries per switch.
pub const DEFAULT_FDB_MAX: usize = 8192;
/// Largest accepted [`SwitchConfig::fdb_max`] (2^22 entries).
pub const MAX_FDB_MAX: usize = 1 << 22;
/// Default most edges per side.
pub const DEFAULT_MAX_EDGES: usize = 64;
/// Largest accepted [`SwitchConfig::max_edges`] per side.
pub const MAX_EDGES: usize = 4096;
/// Length of an Ethernet II header: destination, source, EtherType (bytes).
const ETH_HLEN: usize = 14;

/// Time unit of FDB timestamps: 2^24 ns (about 16.8 ms). A `u32` of ticks wraps after
/// about 2.2 years, far beyond any aging time.
const TICK_SHIFT: u32 = 24;
/// Slots of the table every burst sweeps for expired entries, at least.
const SWEEP_MIN: usize = 16;

/// Packet marks used for per-packet decisions inside [`Switch::burst`] (ports are
/// `side << 15 | edge` with `edge < MAX_EDGES`, so they never reach these values).
const MARK_FLOOD: u16 = 0xFFFF;
const MARK_DROP_LINK_LOCAL: u16 = 0xFFFE;
const MARK_DROP_MALFORMED: u16 = 0xFFFD;
const MARK_DROP_INVALID_SRC: u16 = 0xFFFC;
const MARK_DROP_SAME_EDGE: u16 = 0xFFFB;
/// Smallest drop mark.
const MARK_DROP_MIN: u16 = 0xFFFB;

/// Slot key bit meaning "occupied" (a MAC uses the low 48 bits).
const OCCUPIED: u64 = 1 << 63;
const MAC_MASK: u64 = (1 << 48) - 1;
/// Slot flag: static entry.
const FLAG_STATIC: u16 = 1;

/// How to build a [`Switch`].
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// Most edges on each side (1 ..= [`MAX_EDGES`], default [`DEFAULT_MAX_EDGES`]).
    pub max_edges: usize,
    /// Most FDB entries, static ones included (1 ..= [`MAX_FDB_MAX`], default
    /// [`DEFAULT_FDB_MAX`]). The table takes 16 bytes × 4/3 of this, rounded up to a
    /// power of two.
    pub fdb_max: usize,
    /// How long a dynamic entry lives without being refreshed by a frame from that MAC
    /// (default [`DEFAULT_AGING`]; resolution about 16.8 ms; `Duration::ZERO` disables
    /// aging).
    pub aging: Duration,
    /// The time source for aging ([`Clock::manual`] in tests).
    pub clock: Clock,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            max_edges: DEFAULT_MAX_EDGES,
            fdb_max: DEFAULT_FDB_MAX,
            aging: DEFAULT_AGING,
            clock: Clock::monotonic(),
        }
    }
}

/// One FDB entry, as dumped by [`Switch::fdb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// The station's MAC address.
    pub mac: [u8; 6],
    /// Side of the edge it lives behind.
    pub side: Side,
    /// Edge index on that side.
    pub edge: usize,
    /// True for entries added with [`Switch::add_static`].
    pub is_static: bool,
    /// Time since the entry was learned or last refreshed (zero for static entries).
    pub age: Duration,
}

/// Counters of a [`Switch`]. Every frame that enters the switch is counted in exactly
/// one of `unicast`, `flooded`, `drop_no_edge`, `drop_link_local`, `drop_malformed`,
/// `drop_invalid_src`, `drop_same_edge`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SwitchCounters {
    /// Frames forwarded to one edge (known unicast destination).
    pub unicast: u64,
    /// Frames flooded (broadcast, multicast, unknown unicast) to at least one edge.
    pub flooded: u64,
    /// Copies made for flooding (one per extra edge).
    pub flood_copies: u64,
    /// Flood copies that could not be made because the frame pool was empty.
    pub drop_clone_fail: u64,
    /// Frames to flood while no other edge is linked.
    pub drop_no_edge: u64,
    /// Frames to an IEEE 802.1D reserved link-local address `01:80:C2:00:00:0x`.
    pub drop_link_local: u64,
    /// Frames shorter than an Ethernet header.
    pub drop_malformed: u64,
    /// Frames with a multicast or all-zero source MAC.
    pub drop_invalid_src: u64,
    /// Known unicast frames whose destination lives behind the ingress edge.
    pub drop_same_edge: u64,
    /// New dynamic entries learned.
    pub learned: u64,
    /// Source MACs not learned because the FDB was full.
    pub learn_table_full: u64,
    /// Dynamic entries that moved to another edge.
    pub mac_moves: u64,
    /// Frames whose source MAC has a static entry on another edge (not learned).
    pub static_conflicts: u64,
    /// Dynamic entries removed by aging.
    pub aged: u64,
    /// Entries removed because their edge was unlinked.
    pub unlinked: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// `OCCUPIED | mac` (48 bits), or 0 for an empty slot.
    key: u64,
    /// `side << 15 | edge`.
    port: u16,
    flags: u16,
    /// Last time the entry was learned or refreshed, in ticks.
    seen: u32,
}

/// A multipole learning L2 switch (see the module documentation).
pub struct Switch {
    slots: Box<[Slot]>,
    mask: usize,
    len: usize,
    fdb_max: usize,
    max_edges: usize,
    seed: u64,
    clock: Clock,
    /// Aging time in ticks (0: no aging).
    aging_ticks: u32,
    sweep_cursor: usize,
    last_sweep: u32,
    /// Linked ports (`side << 15 | edge`), sorted.
    ports: Vec<u16>,
    counters: SwitchCounters,
}

#[inline]
fn port_of(side: Side, edge: usize) -> u16 {
    ((side.index() as u16) << 15) | edge as u16
}

#[inline]
fn port_side_edge(port: u16) -> (Side, usize) {
    let side = if port & 0x8000 == 0 {
        Side::West
    } else {
        Side::East
    };
    (side, (port & 0x7FFF) as usize)
}

#[inline]
fn mac_u64(b: &[u8]) -> u64 {
    (u64::from(b[0]) << 40)
        | (u64::from(b[1]) << 32)
        | (u64::from(b[2]) << 24)
        | (u64::from(b[3]) << 16)
        | (u64::from(b[4]) << 8)
        | u64::from(b[5])
}

/// Destination MAC of a frame of at least 14 bytes, as a u64 (one load).
#[inline]
fn dst_mac(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[0..8]);
    u64::from_be_bytes(b) >> 16
}

/// Source MAC of a frame of at least 14 bytes, as a u64 (one load).
#[inline]
fn src_mac(d: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[4..12]);
    u64::from_be_bytes(b) & MAC_MASK
}

#[inline]
fn mac_bytes(m: u64) -> [u8; 6] {
    let b = m.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// The group (multicast/broadcast) bit of a MAC held in a u64.
const GROUP_BIT: u64 = 1 << 40;

/// True for the IEEE 802.1D reserved addresses 01:80:C2:00:00:00 – 01:80:C2:00:00:0F.
#[inline]
fn is_link_local(m: u64) -> bool {
    m & !0xF == 0x0180_C200_0000
}

fn ticks(ns: u64) -> u32 {
    (ns >> TICK_SHIFT) as u32
}

fn duration_ticks(d: Duration) -> u32 {
    let ns = d.as_nanos();
    let t = ns.div_ceil(1u128 << TICK_SHIFT);
    t.min(u128::from(u32::MAX / 2)) as u32
}

impl Default for Switch {
    fn default() -> Self {
        Switch::new()
    }
}

impl Switch {
    /// A switch with the default configuration ([`SwitchConfig::default`]).
    pub fn new() -> Switch {
        Switch::with_config(SwitchConfig::default()).expect("the default configuration is valid")
    }

    /// A switch with the given configuration.
    ///
    /// # Errors
    /// [`BrickError::Config`] when `max_edges` or `fdb_max` is out of range.
    pub fn with_config(cfg: SwitchConfig) -> Result<Switch, BrickError> {
        if cfg.max_edges == 0 || cfg.max_edges > MAX_EDGES {
            return Err(BrickError::Config(format!(
                "switch max_edges {} must be between 1 and {MAX_EDGES}",
                cfg.max_edges
            )));
        }
        if cfg.fdb_max == 0 || cfg.fdb_max > MAX_FDB_MAX {
            return Err(BrickError::Config(format!(
                "switch fdb_max {} must be between 1 and {MAX_FDB_MAX}",
                cfg.fdb_max
            )));
        }
        let nslots = (cfg.fdb_max * 4).div_ceil(3).next_power_of_two().max(16);
        // A per-switch random seed so that an attacker cannot pick MACs that collide.
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(nslots);
            h.finish() | 1
        };
        let now = ticks(cfg.clock.now_ns());
        Ok(Switch {
            slots: vec![Slot::default(); nslots].into_boxed_slice(),
            mask: nslots - 1,
            len: 0,
            fdb_max: cfg.fdb_max,
            max_edges: cfg.max_edges,
            seed,
            aging_ticks: duration_ticks(cfg.aging),
            clock: cfg.clock,
            sweep_cursor: 0,
            last_sweep: now,
            ports: Vec::with_capacity(2 * cfg.max_edges),
            counters: SwitchCounters::default(),
        })
    }

    /// Changes the aging time (`Duration::ZERO` disables aging). Applies to existing
    /// entries too.
    pub fn set_aging(&mut self, aging: Duration) {
        self.aging_ticks = duration_ticks(aging);
    }

    /// The counters.
    pub fn stats(&self) -> &SwitchCounters {
        &self.counters
    }

    /// Number of FDB entries (static included; expired entries not yet swept included).
    pub fn fdb_len(&self) -> usize {
        self.len
    }

    /// Most FDB entries.
    pub fn fdb_max(&self) -> usize {
        self.fdb_max
    }

    /// Adds (or replaces) a static entry: frames to `mac` go to edge `edge` of `side`.
    /// The edge need not be linked yet (frames sent to an unlinked edge are dropped and
    /// counted by the graph); the entry is removed when that edge is unlinked.
    ///
    /// # Errors
    /// [`BrickError::Config`] when `mac` is a multicast or zero address, when `edge` is
    /// not below `max_edges`, or when the FDB is full.
    pub fn add_static(&mut self, mac: [u8; 6], side: Side, edge: usize) -> Result<(), BrickError> {
        let m = mac_u64(&mac);
        if m & GROUP_BIT != 0 || m == 0 {
            return Err(BrickError::Config(format!(
                "static FDB entry {}: not a unicast MAC",
                fmt_mac(&mac)
            )));
        }
        if edge >= self.max_edges {
            return Err(BrickError::Config(format!(
                "static FDB entry {}: edge {edge} is not below max_edges {}",
                fmt_mac(&mac),
                self.max_edges
            )));
        }
        let port = port_of(side, edge);
        let now = self.now();
        match self.lookup(m) {
            Some(i) => {
                let s = &mut self.slots[i];
                s.port = port;
                s.flags |= FLAG_STATIC;
                s.seen = now;
            }
            None => {
                if self.len >= self.fdb_max {
                    return Err(BrickError::Config(format!(
                        "static FDB entry {}: the FDB is full ({} entries)",
                        fmt_mac(&mac),
                        self.fdb_max
                    )));
                }
                self.insert(m, port, FLAG_STATIC, now);
            }
        }
        Ok(())
    }

    /// Removes the entry (static or dynamic) for `mac`. Returns true if there was one.
    pub fn remove_entry(&mut self, mac: [u8; 6]) -> bool {
        match self.lookup(mac_u64(&mac)) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Removes every dynamic entry (static ones stay).
    pub fn flush_dynamic(&mut self) {
        self.remove_where(|s| s.flags & FLAG_STATIC == 0);
    }

    /// The FDB: every live entry (expired entries not yet swept are left out), in table
    /// order. Allocates; for the control plane, not the packet path.
    pub fn fdb(&self) -> Vec<FdbEntry> {
        let now = self.now();
        self.slots
            .iter()
            .filter(|s| s.key != 0 && !self.expired(s, now))
            .map(|s| {
                let (side, edge) = port_side_edge(s.port);
                let is_static = s.flags & FLAG_STATIC != 0;
                let age = if is_static {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(u64::from(now.wrapping_sub(s.seen)) << TICK_SHIFT)
                };
                FdbEntry {
                    mac: mac_bytes(s.key & MAC_MASK),
                    side,
                    edge,
                    is_static,
                    age,
                }
            })
            .collect()
    }

    /// Where frames to `mac` would go now: `Some((side, edge))` for a live entry.
    pub fn lookup_mac(&self, mac: [u8; 6]) -> Option<(Side, usize)> {
        let i = self.lookup(mac_u64(&mac))?;
        let s = &self.slots[i];
        if self.expired(s, self.now()) {
            return None;
        }
        Some(port_side_edge(s.port))
    }

    /// Removes every expired dynamic entry now (a full table scan; the packet path only
    /// ever sweeps a few slots per burst). Returns how many were removed.
    pub fn age_all(&mut self) -> usize {
        if self.aging_ticks == 0 {
            return 0;
        }
        let now = self.now();
        let aging = self.aging_ticks;
        let n =
            self.remove_where(|s| s.flags & FLAG_STATIC == 0 && now.wrapping_sub(s.seen) > aging);
        self.counters.aged += n as u64;
        n
    }

    #[inline]
    fn now(&self) -> u32 {
        ticks(self.clock.now_ns())
    }

    #[inline]
    fn expired(&self, s: &Slot, now: u32) -> bool {
        self.aging_ticks != 0
            && s.flags & FLAG_STATIC == 0
            && now.wrapping_sub(s.seen) > self.aging_ticks
    }

    /// Home slot of a MAC (murmur3's 64-bit finaliser over the seeded key).
    #[inline]
    fn home(&self, mac: u64) -> usize {
        let mut h = mac ^ self.seed;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h as usize & self.mask
    }

    #[inline]
    fn lookup(&self, mac: u64) -> Option<usize> {
        self.lookup_from(mac, self.home(mac))
    }

    /// [`Switch::lookup`] with the home slot already computed.
    #[inline]
    fn lookup_from(&self, mac: u64, home: usize) -> Option<usize> {
        let key = mac | OCCUPIED;
        let mut i = home;
        // Terminates: the table is at most 75 % full, so an empty slot exists.
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Some(i);
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts a MAC known to be absent (caller checked `len < fdb_max`).
    fn insert(&mut self, mac: u64, port: u16, flags: u16, now: u32) {
        let mut i = self.home(mac);
        while self.slots[i].key != 0 {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Slot {
            key: mac | OCCUPIED,
            port,
            flags,
            seen: now,
        };
        self.len += 1;
    }

    /// Removes the entry at slot `i` by backward-shift deletion (no tombstones): the
    /// entries of the probe run after `i` that may live closer to their home move back.
    fn remove_at(&mut self, i: usize) {
        let mask = self.mask;
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let k = self.slots[j].key;
            if k == 0 {
                break;
            }
            let home = self.home(k & MAC_MASK);
            // The entry at j may move to `hole` unless its home lies cyclically in
            // (hole, j].
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
    }

    /// Removes every entry matching `pred` (a full scan; configuration path only).
    fn remove_where(&mut self, mut pred: impl FnMut(&Slot) -> bool) -> usize {
        let mut n = 0;
        let mut i = 0;
        while i < self.slots.len() {
            let s = self.slots[i];
            if s.key != 0 && pred(&s) {
                // Backward shift may bring a not yet visited entry into slot i: look
                // at i again.
                self.remove_at(i);
                n += 1;
            } else {
                i += 1;
            }
        }
        n
    }

    /// Sweeps a few slots for expired entries (amortised aging).
    #[inline]
    fn sweep(&mut self, now: u32) {
        if self.aging_ticks == 0 || self.len == 0 {
            self.last_sweep = now;
            return;
        }
        let dt = now.wrapping_sub(self.last_sweep) as usize;
        let nslots = self.slots.len();
        let mut budget = SWEEP_MIN;
        if dt > 0 {
            // Enough slots for a whole sweep every aging/2 of elapsed time.
            let period = (self.aging_ticks as usize / 2).max(1);
            budget += nslots.saturating_mul(dt) / period;
            self.last_sweep = now;
        }
        let budget = budget.min(nslots);
        let mut i = self.sweep_cursor;
        let mut visited = 0;
        // Removals do not count toward the budget (there are at most `len` of them).
        while visited < budget {
            let s = &self.slots[i];
            if s.key != 0 && self.expired(s, now) {
                self.remove_at(i);
                self.counters.aged += 1;
                // Slot i may now hold an entry shifted back: visit it again.
            } else {
                i = (i + 1) & self.mask;
                visited += 1;
            }
        }
        self.sweep_cursor = i;
    }

    /// Learns (or refreshes) `mac` behind `port`.
    #[inline]
    fn learn(&mut self, mac: u64, port: u16, now: u32) {
        match self.lookup(mac) {
            Some(i) => {
                let s = &mut self.slots[i];
                if s.flags & FLAG_STATIC != 0 {
                    if s.port != port {
                        self.counters.static_conflicts += 1;
                    }
                    return;
                }
                if s.port != port {
                    s.port = port;
                    self.counters.mac_moves += 1;
                }
                if s.seen != now {
                    s.seen = now;
                }
            }
            None => {
                if self.len >= self.fdb_max {
                    self.counters.learn_table_full += 1;
                } else {
                    self.insert(mac, port, 0, now);
                    self.counters.learned += 1;
                }
            }
        }
    }

    /// Starts loading the FDB slot of a frame's destination into the cache (the table
    /// is too big for L1, and the 64 lookups of a burst are independent), and returns
    /// the slot's index for [`Switch::classify`].
    #[inline]
    fn prefetch_dst(&self, d: &[u8]) -> usize {
        if d.len() < ETH_HLEN {
            return 0;
        }
        let home = self.home(dst_mac(d));
        crate::prefetch::prefetch_ref(&self.slots[home]);
        home
    }

    /// The forwarding decision for one frame (a port or a `MARK_*`), learning its source.
    /// `dst_home` is the home slot of its destination MAC ([`Switch::prefetch_dst`]).
    #[inline]
    fn classify(
        &mut self,
        d: &[u8],
        dst_home: usize,
        ingress: u16,
        now: u32,
        last_src: &mut u64,
    ) -> u16 {
        if d.len() < ETH_HLEN {
            self.counters.drop_malformed += 1;
            return MARK_DROP_MALFORMED;
        }
        let dst = dst_mac(d);
        let src = src_mac(d);
        if src & GROUP_BIT != 0 || src == 0 {
            self.counters.drop_invalid_src += 1;
            return MARK_DROP_INVALID_SRC;
        }
        // Frames of one burst often share a source: learn it once per burst.
        if src != *last_src {
            self.learn(src, ingress, now);
            *last_src = src;
        }
        if dst & GROUP_BIT != 0 {
            if is_link_local(dst) {
                self.counters.drop_link_local += 1;
                return MARK_DROP_LINK_LOCAL;
            }
            return MARK_FLOOD;
        }
        match self.lookup_from(dst, dst_home) {
            Some(i) => {
                let s = self.slots[i];
                if self.expired(&s, now) {
                    self.remove_at(i);
                    self.counters.aged += 1;
                    MARK_FLOOD
                } else if s.port == ingress {
                    self.counters.drop_same_edge += 1;
                    MARK_DROP_SAME_EDGE
                } else {
                    self.counters.unicast += 1;
                    s.port
                }
            }
            None => MARK_FLOOD,
        }
    }

    /// Floods `pkts` to every linked edge but `ingress`.
    fn flood(&mut self, pkts: Burst, ingress: u16, out: &mut Emit) {
        let n = pkts.len() as u64;
        let targets = self.ports.iter().filter(|&&p| p != ingress).count();
        if targets == 0 {
            self.counters.drop_no_edge += n;
            return;
        }
        self.counters.flooded += n;
        let mut left = targets;
        for &p in &self.ports {
            if p == ingress {
                continue;
            }
            left -= 1;
            if left == 0 {
                break;
            }
            let mut copies = Burst::new();
            for pkt in &pkts {
                match pkt.try_clone() {
                    Some(c) => {
                        let _ = copies.push(c);
                        self.counters.flood_copies += 1;
                    }
                    None => self.counters.drop_clone_fail += 1,
                }
            }
            if !copies.is_empty() {
                let (side, edge) = port_side_edge(p);
                out.send(side, edge, copies);
            }
        }
        // The last target gets the originals.
        if let Some(&p) = self.ports.iter().rev().find(|&&p| p != ingress) {
            let (side, edge) = port_side_edge(p);
            out.send(side, edge, pkts);
        }
    }

    /// Sends a group of packets that share decision `mark`.
    #[inline]
    fn deliver(&mut self, mark: u16, pkts: Burst, ingress: u16, out: &mut Emit) {
        if mark == MARK_FLOOD {
            self.flood(pkts, ingress, out);
        } else if mark >= MARK_DROP_MIN {
            drop(pkts);
        } else {
            let (side, edge) = port_side_edge(mark);
            out.send(side, edge, pkts);
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

impl Brick for Switch {
    fn kind(&self) -> &'static str {
        "switch"
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
        mut pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        if pkts.is_empty() {
            return Ok(());
        }
        let ingress = port_of(from, edge);
        let now = self.now();
        self.sweep(now);
        let mut homes = [0usize; BURST_SIZE];
        for (h, p) in homes.iter_mut().zip(pkts.iter()) {
            *h = self.prefetch_dst(p.data());
        }
        let mut last_src = u64::MAX;
        let mut first = None;
        let mut uniform = true;
        for (p, &home) in pkts.iter_mut().zip(homes.iter()) {
            let mark = self.classify(p.data(), home, ingress, now, &mut last_src);
            p.set_mark(mark);
            match first {
                None => first = Some(mark),
                Some(f) => uniform &= f == mark,
            }
        }
        let Some(first) = first else {
            return Ok(());
        };
        if uniform {
            // The common case: the whole burst goes one way, handles are moved once.
            self.deliver(first, pkts, ingress, out);
            return Ok(());
        }
        // A mixed burst: one pass puts each packet in the output burst of its decision
        // (in arrival order); bursts are boxed handles, so holding one per decision is
        // cheap. Then each group is delivered once.
        let mut groups: ArrayVec<(u16, Burst), BURST_SIZE> = ArrayVec::new();
        let mut last = 0;
        for p in pkts.drain() {
            let mark = p.mark();
            if groups.get(last).is_none_or(|g| g.0 != mark) {
                last = match groups.iter().position(|g| g.0 == mark) {
                    Some(i) => i,
                    None => {
                        groups.push((mark, Burst::new()));
                        groups.len() - 1
                    }
                };
            }
            // Cannot fail: at most 64 packets in all.
            let _ = groups[last].1.push(p);
        }
        for (mark, group) in groups {
            self.deliver(mark, group, ingress, out);
        }
        Ok(())
    }

    fn on_link(&mut self, side: Side, edge: usize) {
        let p = port_of(side, edge);
        if let Err(i) = self.ports.binary_search(&p) {
            self.ports.insert(i, p);
        }
    }

    fn on_unlink(&mut self, side: Side, edge: usize) {
        let p = port_of(side, edge);
        self.ports.retain(|&q| q != p);
        let n = self.remove_where(|s| s.port == p);
        self.counters.unlinked += n as u64;
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("unicast", c.unicast),
            ("flooded", c.flooded),
            ("flood_copies", c.flood_copies),
            ("drop_clone_fail", c.drop_clone_fail),
            ("drop_no_edge", c.drop_no_edge),
            ("drop_link_local", c.drop_link_local),
            ("drop_malformed", c.drop_malformed),
            ("drop_invalid_src", c.drop_invalid_src),
            ("drop_same_edge", c.drop_same_edge),
            ("learned", c.learned),
            ("learn_table_full", c.learn_table_full),
            ("mac_moves", c.mac_moves),
            ("static_conflicts", c.static_conflicts),
            ("aged", c.aged),
            ("unlinked", c.unlinked),
            ("fdb_entries", self.len as u64),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bricks::Collect;
    use crate::{Graph, Pool, PoolConfig};

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
    const C: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc];
    const BCAST: [u8; 6] = [0xff; 6];

    fn pool(n: u32) -> Pool {
        Pool::new(PoolConfig {
            frame_count: n,
            ..Default::default()
        })
        .unwrap()
    }

    /// A 60-byte frame `dst ← src` whose payload starts with `tag`.
    fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = tag;
        f
    }

    fn burst(pool: &Pool, frames: &[Vec<u8>]) -> Burst {
        let mut b = Burst::new();
        for f in frames {
            b.push(pool.packet_from(f).unwrap()).unwrap();
        }
        b
    }

    /// `w0 — sw — {e0, e1}`: collect bricks on WEST edge 0 and EAST edges 0 and 1.
    fn graph(sw: Switch) -> Graph {
        let mut g = Graph::new("t");
        g.add("sw", sw).unwrap();
        for n in ["w0", "e0", "e1"] {
            g.add(n, Collect::new()).unwrap();
        }
        assert_eq!(g.link("w0", "sw").unwrap(), (0, 0));
        assert_eq!(g.link("sw", "e0").unwrap(), (0, 0));
        assert_eq!(g.link("sw", "e1").unwrap(), (1, 0));
        g
    }

    fn got(g: &Graph, name: &str) -> u64 {
        let side = if name == "w0" { Side::East } else { Side::West };
        g.get::<Collect>(name).unwrap().packets(side)
    }

    fn sw(g: &Graph) -> &Switch {
        g.get::<Switch>("sw").unwrap()
    }

    fn manual(fdb_max: usize) -> (Switch, Clock) {
        let clock = Clock::manual();
        let s = Switch::with_config(SwitchConfig {
            fdb_max,
            clock: clock.clone(),
            ..Default::default()
        })
        .unwrap();
        (s, clock)
    }

    #[test]
    fn learns_floods_unknown_then_forwards_known_unicast_to_one_edge() {
        let p = pool(64);
        let mut g = graph(Switch::new());
        // A (behind w0) to B, unknown: flooded to e0 and e1, not back to w0.
        g.inject("sw", Side::West, 0, burst(&p, &[frame(B, A, 1)]))
            .unwrap();
        assert_eq!((got(&g, "w0"), got(&g, "e0"), got(&g, "e1")), (0, 1, 1));
        for n in ["e0", "e1"] {
            let b = g.get::<Collect>(n).unwrap().last(Side::West).unwrap();
            assert_eq!(b[0].data(), &frame(B, A, 1)[..]);
        }
        // B answers from e1: A is known, the reply goes to w0 only.
        g.inject("sw", Side::East, 1, burst(&p, &[frame(A, B, 2)]))
            .unwrap();
        assert_eq!((got(&g, "w0"), got(&g, "e0"), got(&g, "e1")), (1, 1, 1));
        let b = g.get::<Collect>("w0").unwrap().last(Side::East).unwrap();
        assert_eq!(b[0].data(), &frame(A, B, 2)[..]);
        // Now A → B goes to e1 only.
        g.inject(
            "sw",
            Side::West,
            0,
            burst(&p, &[frame(B, A, 3), frame(B, A, 4)]),
        )
        .unwrap();
        assert_eq!((got(&g, "w0"), got(&g, "e0"), got(&g, "e1")), (1, 1, 3));
        let c = sw(&g).stats();
        assert_eq!(
            (c.unicast, c.flooded, c.flood_copies, c.learned),
            (3, 1, 1, 2)
        );
        assert_eq!(sw(&g).lookup_mac(A), Some((Side::West, 0)));
        assert_eq!(sw(&g).lookup_mac(B), Some((Side::East, 1)));
        assert_eq!(g.empty_bursts(), 0);
        drop(g);
        assert_eq!(p.available(), 64, "every frame went back to the pool");
    }

    #[test]
    fn broadcast_and_multicast_flood_to_both_sides_but_not_ingress() {
        let p = pool(64);
        let mut g = graph(Switch::new());
        let mcast = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
        g.inject(
            "sw",
            Side::East,
            0,
            burst(&p, &[frame(BCAST, A, 1), frame(mcast, A, 2)]),
        )
        .unwrap();
        assert_eq!((got(&g, "w0"), got(&g, "e0"), got(&g, "e1")), (2, 0, 2));
        let w = g.get::<Collect>("w0").unwrap().last(Side::East).unwrap();
        let e = g.get::<Collect>("e1").unwrap().last(Side::West).unwrap();
        for (i, f) in [frame(BCAST, A, 1), frame(mcast, A, 2)].iter().enumerate() {
            assert_eq!(w[i].data(), &f[..]);
            assert_eq!(e[i].data(), &f[..]);
        }
        assert_eq!(sw(&g).stats().flooded, 2);
        assert_eq!(sw(&g).stats().flood_copies, 2);
        assert_eq!(g.stats("sw").unwrap().west.tx_packets, 2);
        assert_eq!(g.stats("sw").unwrap().east.tx_packets, 2);
    }

    #[test]
    fn link_local_invalid_source_short_and_hairpin_frames_are_dropped() {
        let p = pool(64);
        let mut g = graph(Switch::new());
        let stp = [0x01, 0x80, 0xc2, 0, 0, 0x00];
        let lldp = [0x01, 0x80, 0xc2, 0, 0, 0x0e];
        let not_ll = [0x01, 0x80, 0xc2, 0, 0, 0x10];
        let short = vec![0xffu8; 13];
        g.inject(
            "sw",
            Side::West,
            0,
            burst(
                &p,
                &[
                    frame(stp, A, 0),
                    frame(lldp, A, 0),
                    frame(BCAST, BCAST, 0),
                    frame(BCAST, [0; 6], 0),
                    short,
                ],
            ),
        )
        .unwrap();
        assert_eq!((got(&g, "w0"), got(&g, "e0"), got(&g, "e1")), (0, 0, 0));
        // 01:80:c2:00:00:10 is not reserved: flooded.
        g.inject("sw", Side::West, 0, burst(&p, &[frame(not_ll, A, 0)]))
            .unwrap();
        assert_eq!((got(&g, "e0"), got(&g, "e1")), (1, 1));
        // C learned on e0; a frame to C arriving from e0 goes nowhere.
        g.inject("sw", Side::East, 0, burst(&p, &[frame(BCAST, C, 0)]))
            .unwrap();
        g.inject("sw", Side::East, 0, burst(&p, &[frame(C, B, 0)]))
            .unwrap();
        let c = *sw(&g).stats();
        assert_eq!(c.drop_link_local, 2);
        assert_eq!(c.drop_invalid_src, 2);
        assert_eq!(c.drop_malformed, 1);
        assert_eq!(c.drop_same_edge, 1);
        assert_eq!(g.empty_bursts(), 0);
        drop(g);
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn never_emits_an_empty_burst() {
        let p = pool(64);
        let mut s = Switch::new();
        s.on_link(Side::West, 0);
        let mut out = Emit::new();
        let stp = [0x01, 0x80, 0xc2, 0, 0, 0];
        let b = burst(&p, &[frame(stp, A, 0), vec![1, 2, 3], frame(B, BCAST, 0)]);
        s.burst(Side::West, 0, b, &mut out).unwrap();
        // Flood with no other edge: dropped, nothing emitted.
        s.burst(Side::West, 0, burst(&p, &[frame(BCAST, A, 0)]), &mut out)
            .unwrap();
        s.burst(Side::West, 0, Burst::new(), &mut out).unwrap();
        assert!(out.pending().is_empty());
        assert_eq!(out.empty_bursts(), 0);
        assert_eq!(s.stats().drop_no_edge, 1);
        // Flood copies that cannot be made (pool empty) are counted, not sent empty.
        let tiny = pool(2);
        s.on_link(Side::East, 0);
        s.on_link(Side::East, 1);
        let b = burst(&tiny, &[frame(BCAST, A, 0), frame(BCAST, A, 1)]);
        s.burst(Side::West, 0, b, &mut out).unwrap();
        assert_eq!(out.empty_bursts(), 0);
        assert_eq!(out.pending().len(), 1, "only the originals went out");
        assert_eq!(s.stats().drop_clone_fail, 2);
    }

    #[test]
    fn burst_to_many_edges_sends_one_burst_per_edge_in_order() {
        let p = pool(256);
        let mut s = Switch::new();
        let edges = 20;
        for e in 0..edges {
            s.on_link(Side::East, e);
        }
        s.on_link(Side::West, 0);
        let mut out = Emit::new();
        let station = |e: usize| [0x02, 0, 0, 0, 1, e as u8];
        for e in 0..edges {
            s.burst(
                Side::East,
                e,
                burst(&p, &[frame(BCAST, station(e), 0)]),
                &mut out,
            )
            .unwrap();
            drop(out.take());
        }
        // 64 frames to the 20 stations in turn, plus broadcasts and a link-local frame.
        let mut frames = Vec::new();
        for i in 0..60u8 {
            frames.push(frame(station(i as usize % edges), A, i));
        }
        frames.push(frame(BCAST, A, 60));
        frames.push(frame([0x01, 0x80, 0xc2, 0, 0, 2], A, 61));
        frames.push(frame(BCAST, A, 62));
        frames.push(frame(station(3), A, 63));
        let before = *s.stats();
        s.burst(Side::West, 0, burst(&p, &frames), &mut out)
            .unwrap();
        assert_eq!(out.empty_bursts(), 0);
        let mut per_edge = vec![Vec::new(); edges];
        for (dest, b) in out.take() {
            let crate::brick::Dest::Edge(Side::East, e) = dest else {
                panic!("unexpected destination {dest:?}");
            };
            per_edge[e].push(b.iter().map(|p| p.data()[14]).collect::<Vec<u8>>());
        }
        for (e, bursts) in per_edge.iter().enumerate() {
            let mut unicast: Vec<u8> = (0..60u8).filter(|i| *i as usize % edges == e).collect();
            if e == 3 {
                unicast.push(63);
            }
            // One unicast burst (in order) and one burst of the two broadcasts.
            assert_eq!(bursts.len(), 2, "edge {e}: {bursts:?}");
            assert!(bursts.contains(&unicast), "edge {e}: {bursts:?}");
            assert!(bursts.contains(&vec![60, 62]), "edge {e}: {bursts:?}");
        }
        let c = s.stats();
        assert_eq!(
            (
                c.unicast - before.unicast,
                c.flooded - before.flooded,
                c.drop_link_local - before.drop_link_local
            ),
            (61, 2, 1)
        );
        assert_eq!(c.flood_copies - before.flood_copies, 2 * (edges as u64 - 1));
    }

    #[test]
    fn mixed_burst_is_split_by_destination_in_order() {
        let p = pool(64);
        let mut g = graph(Switch::new());
        g.inject("sw", Side::East, 0, burst(&p, &[frame(BCAST, B, 0)]))
            .unwrap();
        g.inject("sw", Side::East, 1, burst(&p, &[frame(BCAST, C, 0)]))
            .unwrap();
        let before = (got(&g, "e0"), got(&g, "e1"));
        let frames: Vec<Vec<u8>> = (0..10)
            .map(|i| frame(if i % 3 == 0 { B } else { C }, A, i))
            .collect();
        g.inject("sw", Side::West, 0, burst(&p, &frames)).unwrap();
        let e0 = g.get::<Collect>("e0").unwrap().last(Side::West).unwrap();
        let e1 = g.get::<Collect>("e1").unwrap().last(Side::West).unwrap();
        let tags = |b: &Burst| b.iter().map(|p| p.data()[14]).collect::<Vec<_>>();
        assert_eq!(tags(e0), vec![0, 3, 6, 9]);
        assert_eq!(tags(e1), vec![1, 2, 4, 5, 7, 8]);
        assert_eq!((got(&g, "e0"), got(&g, "e1")), (before.0 + 4, before.1 + 6));
    }

    #[test]
    fn entries_age_out_with_a_manual_clock() {
        let p = pool(64);
        let (s, clock) = manual(1024);
        let mut g = graph(s);
        g.inject("sw", Side::East, 1, burst(&p, &[frame(BCAST, B, 0)]))
            .unwrap();
        assert_eq!(sw(&g).lookup_mac(B), Some((Side::East, 1)));
        assert_eq!((got(&g, "e0"), got(&g, "e1")), (1, 0));
        clock.advance(Duration::from_secs(299));
        g.inject("sw", Side::West, 0, burst(&p, &[frame(B, A, 0)]))
            .unwrap();
        assert_eq!(
            (got(&g, "e0"), got(&g, "e1")),
            (1, 1),
            "still known at 299 s"
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(sw(&g).lookup_mac(B), None, "expired after 301 s");
        assert!(sw(&g).fdb().iter().all(|e| e.mac != B));
        // A frame to B is flooded again.
        g.inject("sw", Side::West, 0, burst(&p, &[frame(B, A, 0)]))
            .unwrap();
        assert_eq!((got(&g, "e0"), got(&g, "e1")), (2, 2));
        assert_eq!(sw(&g).stats().aged, 1);
        // A (refreshed at 299 s) is still there; B is gone from the table itself.
        assert_eq!(sw(&g).fdb_len(), 1);
        assert_eq!(sw(&g).fdb()[0].mac, A);
        assert!(sw(&g).fdb()[0].age < Duration::from_secs(3));
    }

    #[test]
    fn aging_is_incremental_and_reclaims_memory() {
        let p = pool(256);
        let (mut s, clock) = manual(1024);
        s.on_link(Side::West, 0);
        s.on_link(Side::East, 0);
        let mut out = Emit::new();
        for i in 0..200u16 {
            let src = [0x02, 0, 0, 0, (i >> 8) as u8, i as u8];
            s.burst(Side::West, 0, burst(&p, &[frame(BCAST, src, 0)]), &mut out)
                .unwrap();
            drop(out.take());
        }
        assert_eq!(s.fdb_len(), 200);
        // Bursts with no time passing sweep only SWEEP_MIN slots each.
        clock.advance(Duration::from_secs(301));
        s.burst(Side::East, 0, burst(&p, &[frame(BCAST, C, 0)]), &mut out)
            .unwrap();
        drop(out.take());
        // 301 s passed since the last sweep: the budget covered the whole table.
        assert_eq!(s.fdb_len(), 1, "only C is left");
        assert_eq!(s.stats().aged, 200);
        // With aging 60 s and bursts 1 s apart, entries are reclaimed within aging/2
        // after they expire, never by a full scan in one burst.
        s.set_aging(Duration::from_secs(60));
        for i in 0..100u16 {
            let src = [0x02, 1, 0, 0, (i >> 8) as u8, i as u8];
            s.burst(Side::West, 0, burst(&p, &[frame(BCAST, src, 0)]), &mut out)
                .unwrap();
            drop(out.take());
        }
        for _ in 0..(60 + 31) {
            clock.advance(Duration::from_secs(1));
            s.burst(Side::East, 0, burst(&p, &[frame(BCAST, C, 0)]), &mut out)
                .unwrap();
            drop(out.take());
        }
        assert_eq!(s.fdb_len(), 1);
        assert_eq!(s.age_all(), 0);
    }

    #[test]
    fn size_limit_stops_learning_and_keeps_flooding() {
        let p = pool(64);
        let (s, _clock) = manual(4);
        let mut g = graph(s);
        for i in 0..10u8 {
            let src = [0x02, 0, 0, 0, 1, i];
            g.inject("sw", Side::East, 0, burst(&p, &[frame(BCAST, src, i)]))
                .unwrap();
        }
        assert_eq!(sw(&g).fdb_len(), 4);
        assert_eq!(sw(&g).stats().learned, 4);
        assert_eq!(sw(&g).stats().learn_table_full, 6);
        assert_eq!(
            got(&g, "w0"),
            10,
            "frames from unlearned sources still flooded"
        );
        // A frame to an unlearned MAC is flooded to both other edges.
        g.inject(
            "sw",
            Side::West,
            0,
            burst(&p, &[frame([0x02, 0, 0, 0, 1, 9], A, 0)]),
        )
        .unwrap();
        assert_eq!((got(&g, "e0"), got(&g, "e1")), (1, 11));
        // A static entry does not fit either.
        assert!(matches!(
            g.get_mut::<Switch>("sw")
                .unwrap()
                .add_static(C, Side::West, 0),
            Err(BrickError::Config(_))
        ));
    }

    #[test]
    fn unlink_removes_the_entries_of_that_edge() {
        let p = pool(64);
        let mut g = graph(Switch::new());
        g.inject("sw", Side::East, 1, burst(&p, &[frame(BCAST, B, 0)]))
            .unwrap();
        g.inject("sw", Side::East, 0, burst(&p, &[frame(BCAST, C, 0)]))
            .unwrap();
        g.get_mut::<Switch>("sw")
            .unwrap()
            .add_static([0x02, 9, 9, 9, 9, 9], Side::East, 1)
            .unwrap();
        assert_eq!(sw(&g).fdb_len(), 3);
        g.unlink_edge("sw", "e1").unwrap();
        let fdb = sw(&g).fdb();
        assert_eq!(fdb.len(), 1);
        assert_eq!((fdb[0].mac, fdb[0].side, fdb[0].edge), (C, Side::East, 0));
        assert_eq!(sw(&g).stats().unlinked, 2);
        // B is unknown now: flooded to what is left (e0), not to the removed edge.
        g.inject("sw", Side::West, 0, burst(&p, &[frame(B, A, 0)]))
            .unwrap();
        assert_eq!(got(&g, "e0"), 2, "one flood from B earlier, one now");
        assert_eq!(g.stats("sw").unwrap().unlinked_drops, 0);
    }

    #[test]
    fn static_entries_do_not_move_or_age() {
        let p = pool(64);
        let (s, clock) = manual(64);
        let mut g = graph(s);
        g.get_mut::<Switch>("sw")
            .unwrap()
            .add_static(B, Side::East, 1)
            .unwrap();
        assert!(
            g.get_mut::<Switch>("sw")
                .unwrap()
                .add_static(BCAST, Side::East, 1)
                .is_err()
        );
        assert!(
            g.get_mut::<Switch>("sw")
                .unwrap()
                .add_static(A, Side::East, 4096)
                .is_err()
        );
        // B shows up on e0: the static entry wins.
        g.inject("sw", Side::East, 0, burst(&p, &[frame(BCAST, B, 0)]))
            .unwrap();
        assert_eq!(sw(&g).stats().static_conflicts, 1);
        clock.advance(Duration::from_secs(3600));
        g.inject("sw", Side::West, 0, burst(&p, &[frame(B, A, 0)]))
            .unwrap();
        assert_eq!((got(&g, "e0"), got(&g, "e1")), (0, 2));
        let fdb = sw(&g).fdb();
        let b = fdb.iter().find(|e| e.mac == B).unwrap();
        assert!(b.is_static);
        assert_eq!((b.side, b.edge, b.age), (Side::East, 1, Duration::ZERO));
        assert!(g.get_mut::<Switch>("sw").unwrap().remove_entry(B));
        assert!(!g.get_mut::<Switch>("sw").unwrap().remove_entry(B));
    }

    #[test]
    fn fdb_dump_reports_moves_and_ages() {
        let p = pool(64);
        let (s, clock) = manual(64);
        let mut g = graph(s);
        g.inject("sw", Side::East, 0, burst(&p, &[frame(BCAST, B, 0)]))
            .unwrap();
        clock.advance(Duration::from_secs(10));
        g.inject("sw", Side::East, 1, burst(&p, &[frame(BCAST, B, 0)]))
            .unwrap();
        clock.advance(Duration::from_secs(5));
        let fdb = sw(&g).fdb();
        assert_eq!(fdb.len(), 1);
        assert_eq!(
            (fdb[0].side, fdb[0].edge, fdb[0].is_static),
            (Side::East, 1, false)
        );
        let age = fdb[0].age.as_secs_f64();
        assert!((4.9..5.1).contains(&age), "age {age}");
        assert_eq!(sw(&g).stats().mac_moves, 1);
        g.get_mut::<Switch>("sw").unwrap().flush_dynamic();
        assert_eq!(sw(&g).fdb_len(), 0);
    }

    #[test]
    fn config_is_checked() {
        for (max_edges, fdb_max) in [(0, 10), (MAX_EDGES + 1, 10), (4, 0), (4, MAX_FDB_MAX + 1)] {
            assert!(
                Switch::with_config(SwitchConfig {
                    max_edges,
                    fdb_max,
                    ..Default::default()
                })
                .is_err()
            );
        }
    }

    /// Runs the seeds of the `switch` fuzz target (`fuzz/seeds/switch`, in git) the way
    /// the target does, so CI exercises them on stable.
    #[test]
    fn fuzz_seeds_are_forwarded_or_dropped_and_counted() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/switch");
        let mut seeds: Vec<_> = std::fs::read_dir(dir)
            .expect("fuzz/seeds/switch is in git")
            .map(|e| e.unwrap().path())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty());
        let p = pool(256);
        let (mut s, clock) = manual(16);
        for side in Side::BOTH {
            for edge in 0..2 {
                s.on_link(side, edge);
            }
        }
        let mut fed = 0;
        for path in seeds {
            let (sel, frames) =
                crate::bricks::antispoof::tests::decode_fuzz_input(&std::fs::read(&path).unwrap())
                    .unwrap();
            clock.advance(Duration::from_secs(u64::from(sel >> 2) * 10));
            let side = if sel & 2 == 0 { Side::West } else { Side::East };
            let mut out = Emit::new();
            s.burst(side, usize::from(sel & 1), burst(&p, &frames), &mut out)
                .unwrap();
            assert_eq!(out.empty_bursts(), 0);
            fed += frames.len() as u64;
        }
        let c = s.stats();
        assert_eq!(
            fed,
            c.unicast
                + c.flooded
                + c.drop_no_edge
                + c.drop_link_local
                + c.drop_malformed
                + c.drop_invalid_src
                + c.drop_same_edge
        );
        assert!(
            c.unicast > 0 && c.flooded > 0 && c.drop_link_local > 0,
            "{c:?}"
        );
        assert_eq!(p.available(), 256);
    }

    /// xorshift64*: a deterministic PRNG for the fuzz-style tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn hash_table_matches_a_reference_map() {
        let (mut s, _clock) = manual(8); // 16 slots: long probe runs, many wraps
        let mut reference = std::collections::HashMap::new();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let mac = [0x02, 0, 0, 0, 0, rng.below(24) as u8];
            match rng.below(3) {
                0 => {
                    let edge = rng.below(4) as usize;
                    let r = s.add_static(mac, Side::East, edge);
                    if reference.contains_key(&mac) || reference.len() < 8 {
                        r.unwrap();
                        reference.insert(mac, edge);
                    } else {
                        assert!(r.is_err());
                    }
                }
                1 => assert_eq!(s.remove_entry(mac), reference.remove(&mac).is_some()),
                _ => assert_eq!(
                    s.lookup_mac(mac),
                    reference.get(&mac).map(|&e| (Side::East, e))
                ),
            }
            assert_eq!(s.fdb_len(), reference.len());
        }
    }

    /// Fuzz-style: random, truncated and hostile frames from random edges, random time
    /// steps, links and unlinks. No panic, every frame counted once, nothing leaks.
    #[test]
    fn random_frames_never_panic_and_counters_add_up() {
        let p = pool(4096);
        let (s, clock) = manual(32);
        let mut g = graph(s);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let macs: Vec<[u8; 6]> = (0..48u8)
            .map(|i| match i % 8 {
                0 => BCAST,
                1 => [0x01, 0x80, 0xc2, 0, 0, i & 0xf],
                2 => [0x33, 0x33, 0, 0, 0, i],
                3 => [0; 6],
                _ => [0x02, 0, 0, 0, 0, i],
            })
            .collect();
        let mut sent = 0u64;
        for round in 0..3000 {
            let n = 1 + rng.below(64) as usize;
            let mut frames = Vec::with_capacity(n);
            for _ in 0..n {
                let len = match rng.below(4) {
                    0 => rng.below(20) as usize,
                    _ => 14 + rng.below(100) as usize,
                };
                let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if len >= 12 && rng.below(4) != 0 {
                    f[0..6].copy_from_slice(&macs[rng.below(48) as usize]);
                    f[6..12].copy_from_slice(&macs[rng.below(48) as usize]);
                }
                frames.push(f);
            }
            sent += n as u64;
            let (side, edge) = match rng.below(3) {
                0 => (Side::West, 0),
                1 => (Side::East, 0),
                _ => (Side::East, 1),
            };
            let linked = g.neighbours("sw", side).unwrap();
            let b = burst(&p, &frames);
            if linked.get(edge).is_some_and(Option::is_some) {
                g.inject("sw", side, edge, b).unwrap();
            } else {
                g.inject("sw", side, 0, b).unwrap();
            }
            if rng.below(10) == 0 {
                clock.advance(Duration::from_secs(rng.below(400)));
            }
            if round % 500 == 250 {
                g.unlink_edge("sw", "e1").unwrap();
            }
            if round % 500 == 300 {
                g.link("sw", "e1").unwrap();
            }
        }
        let c = *sw(&g).stats();
        let counted = c.unicast
            + c.flooded
            + c.drop_no_edge
            + c.drop_link_local
            + c.drop_malformed
            + c.drop_invalid_src
            + c.drop_same_edge;
        assert_eq!(counted, sent);
        assert_eq!(
            g.stats("sw").unwrap().west.rx_packets + g.stats("sw").unwrap().east.rx_packets,
            sent
        );
        let tx = g.stats("sw").unwrap().west.tx_packets + g.stats("sw").unwrap().east.tx_packets;
        assert_eq!(tx, c.unicast + c.flooded + c.flood_copies);
        assert!(c.unicast > 0 && c.flooded > 0 && c.learn_table_full > 0 && c.aged > 0);
        assert!(sw(&g).fdb_len() <= 32);
        assert_eq!(g.empty_bursts(), 0);
        drop(g);
        assert_eq!(p.available(), 4096);
    }
}
