//! A flow table: per-connection state keyed by a normalised 5-tuple and a zone, after the
//! flowtable plugin Qosmos wrote for VPP.
//!
//! - **Key**: [`FlowKey`], the 5-tuple with sorted endpoints plus a zone (VNI or NIC id):
//!   both directions of a connection find the same entry; the entry remembers which
//!   endpoint sent the first packet (the *forward* direction).
//! - **Context** ([`Flow`]): packets and bytes per direction, TCP state, creation and
//!   last-seen time, lifetime, a verdict, an `offloaded` flag, a tag byte for the brick
//!   that created the flow and an opaque `user` u64 for other bricks or the API.
//! - **Lifetimes by state** ([`Lifetimes`], VPP's defaults): TCP SYN 15 s, established
//!   300 s, FIN 15 s, RST 6 s, UDP 60 s, ICMP and other protocols 30 s.
//! - **Expiry** by a timer wheel of `wheel_slots` slots of `tick` each. A flow is armed in
//!   the slot of its expiry tick when created. Packets only move `last_seen`; the wheel
//!   notices when it reaches the slot and re-arms the flow at its true expiry (lazy
//!   re-arm), so a packet costs no list operation unless its TCP state *shortens* the
//!   lifetime (FIN, RST), in which case the flow moves to its earlier slot at once.
//!   [`FlowTable::advance`] reads the clock and walks the slots that passed, doing at most
//!   `expire_budget` units of work per call (one per slot visited, one per flow looked
//!   at): no full scan ever happens on the packet path. A lookup that finds a flow past
//!   its expiry (the wheel lagging behind) expires it there and then.
//! - **Records**: every flow that ends (expired, evicted, removed) leaves a
//!   [`FlowRecord`] with its final counters in a bounded ring (oldest records are dropped
//!   and counted when nobody reads them), read with [`FlowTable::pop_record`].
//! - **Capacity**: at most `max_flows` flows; when full, [`FullPolicy::EvictOldest`]
//!   evicts the flow armed to expire first, [`FullPolicy::RefuseNew`] refuses the new one.
//!   Counters: hit, created, expired, evicted, refused, removed, unhandled.
//! - **Index**: open addressing with linear probing and backward-shift deletion over a
//!   power-of-two array of 8-byte slots (hash tag + slab index), at most half full. The
//!   hash is seeded with a random secret per table ([`FlowTable::hash`]).
//! - **Memory**: everything is allocated when the table is made (flow slab, hash index,
//!   wheel, record ring); nothing is allocated per packet. A flow takes 128 bytes in the
//!   slab plus 16 bytes of index (2 slots of 8 bytes per flow, load ≤ 50 %). Slab and
//!   index of 2 MiB or more start on a 2 MiB boundary (the slab leaves up to 2 MiB of
//!   leading slots unused, the index up to 2 MiB of untouched memory in front) and are
//!   advised to transparent huge pages (`MADV_HUGEPAGE`): random lookups in a large table
//!   would otherwise miss the TLB on most packets.
//! - **Hit path** ([`FlowTable::hit`]): one index line (the tag filters other keys), then
//!   the flow's first cache line (key, flags, state, lifetime) and its second (last-seen,
//!   counters). A caller handling a burst hashes every packet first and calls
//!   [`FlowTable::prefetch_index`], then [`FlowTable::prefetch_flow`] a few packets ahead
//!   of the lookups, so the misses of several packets overlap (as VPP's nodes do).
//!
//! Time comes from a [`Clock`], so tests move it by hand.

pub mod key;
pub mod parse;

use crate::prefetch::prefetch;
use std::collections::VecDeque;
use std::time::Duration;

pub use key::{
    FiveTuple, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, addr_bytes,
    bytes_addr,
};
pub use parse::{Fragment, ParseError, Parsed, ParsedIp, parse_ethernet};

use crate::clock::Clock;
use parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

const NIL: u32 = u32::MAX;

/// Most index slots [`FlowTable::prefetch_flow`] looks at for a matching tag (at most
/// half full, linear probing: a key is rarely further than that from its home slot).
pub const PREFETCH_PROBE: usize = 4;

/// Lifetimes of idle flows, by protocol and TCP state (defaults like VPP's flowtable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// TCP while the handshake is in progress (SYN seen): 15 s.
    pub tcp_syn: Duration,
    /// TCP once established: 300 s.
    pub tcp_established: Duration,
    /// TCP after a FIN: 15 s.
    pub tcp_fin: Duration,
    /// TCP after a RST: 6 s.
    pub tcp_rst: Duration,
    /// UDP: 60 s.
    pub udp: Duration,
    /// ICMP and ICMPv6: 30 s.
    pub icmp: Duration,
    /// Any other protocol: 30 s.
    pub other: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            tcp_syn: Duration::from_secs(15),
            tcp_established: Duration::from_secs(300),
            tcp_fin: Duration::from_secs(15),
            tcp_rst: Duration::from_secs(6),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(30),
        }
    }
}

/// What to do with a new flow when the table holds `max_flows` flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    /// Evict the flow armed to expire first (counted in `evicted`). A flow whose expiry
    /// was lazily extended is re-armed instead of evicted when seen (up to 8 per
    /// eviction), so busy flows are spared.
    EvictOldest,
    /// Refuse the new flow (counted in `refused`); [`FlowTable::create`] fails.
    RefuseNew,
}

/// How to build a [`FlowTable`].
#[derive(Debug, Clone)]
pub struct FlowTableConfig {
    /// Most flows at once (1 ..= 2^30). Memory is reserved for all of them up front.
    pub max_flows: u32,
    /// Policy when full.
    pub policy: FullPolicy,
    /// Idle lifetimes.
    pub lifetimes: Lifetimes,
    /// Timer wheel granularity (≥ 1 ms): flows expire up to one tick late.
    pub tick: Duration,
    /// Number of wheel slots (rounded up to a power of two, ≥ 2). Lifetimes longer than
    /// `tick × wheel_slots` work (flows are re-armed when their slot comes round).
    pub wheel_slots: u32,
    /// Most units of expiry work per [`FlowTable::advance`] call (≥ 1).
    pub expire_budget: u32,
    /// Capacity of the ring of expiry records (0 keeps none).
    pub record_capacity: usize,
}

impl Default for FlowTableConfig {
    fn default() -> Self {
        FlowTableConfig {
            max_flows: 65_536,
            policy: FullPolicy::EvictOldest,
            lifetimes: Lifetimes::default(),
            tick: Duration::from_millis(100),
            wheel_slots: 4096,
            expire_budget: 256,
            record_capacity: 1024,
        }
    }
}

/// Errors of the flow table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowTableError {
    /// The table holds `max` flows and its policy refuses new ones.
    #[error("flow table full ({max} flows) and the policy refuses new flows")]
    Full {
        /// The table's `max_flows`.
        max: u32,
    },
    /// A configuration value is out of range; the text says which.
    #[error("invalid flow table configuration: {0}")]
    Config(String),
}

/// TCP connection state as the table tracks it (a simplification of RFC 9293 §3.3.2 seen
/// from the middle: the table sees both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    /// Not a TCP flow.
    None = 0,
    /// SYN seen from the forward side.
    SynSent = 1,
    /// SYN+ACK seen from the reverse side.
    SynReceived = 2,
    /// Handshake completed (or flow picked up mid-stream).
    Established = 3,
    /// A FIN seen from one side.
    FinWait = 4,
    /// FINs seen from both sides.
    Closing = 5,
    /// A RST seen.
    Reset = 6,
}

impl TcpState {
    fn from_u8(v: u8) -> TcpState {
        match v {
            1 => TcpState::SynSent,
            2 => TcpState::SynReceived,
            3 => TcpState::Established,
            4 => TcpState::FinWait,
            5 => TcpState::Closing,
            6 => TcpState::Reset,
            _ => TcpState::None,
        }
    }
}

/// A verdict a brick stores in a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Verdict {
    /// Not decided.
    Unknown = 0,
    /// Let the flow pass.
    Allow = 1,
    /// Drop the flow.
    Deny = 2,
}

/// Direction of a packet relative to its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowDir {
    /// Same direction as the flow's first packet.
    Forward = 0,
    /// The reply direction.
    Reverse = 1,
}

/// Handle of a flow in the table (its slab index). Handles are reused after a flow ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowId(pub u32);

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Idle past its lifetime.
    Expired,
    /// Evicted to make room for a new flow.
    Evicted,
    /// Removed by its owner ([`FlowTable::remove`], [`FlowTable::retain`]).
    Removed,
}

const F_LIVE: u8 = 1;
const F_FWD_IS_LO: u8 = 2;
const F_OFFLOADED: u8 = 4;
const F_FIN_FWD: u8 = 8;
const F_FIN_REV: u8 = 16;

/// One flow's context. 128 bytes: the first cache line holds what a lookup compares
/// (key, flags, state, lifetime), the second what a hit updates (last-seen, counters).
#[repr(C, align(64))]
#[derive(Clone)]
pub struct Flow {
    key: FlowKey,
    state: u8,
    verdict: u8,
    flags: u8,
    tag: u8,
    lifetime_ms: u32,
    prev: u32,
    next: u32,
    armed_tick: u64,
    created_ns: u64,
    last_seen_ns: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
    user: u64,
}

impl Flow {
    fn empty() -> Flow {
        Flow {
            key: FlowKey::new(
                &FiveTuple {
                    src: [0; 16],
                    dst: [0; 16],
                    sport: 0,
                    dport: 0,
                    proto: 0,
                    ipv6: false,
                },
                0,
            )
            .0,
            state: 0,
            verdict: 0,
            flags: 0,
            tag: 0,
            lifetime_ms: 0,
            prev: NIL,
            next: NIL,
            armed_tick: 0,
            created_ns: 0,
            last_seen_ns: 0,
            packets: [0; 2],
            bytes: [0; 2],
            user: 0,
        }
    }

    /// The normalised key.
    pub fn key(&self) -> &FlowKey {
        &self.key
    }

    /// The 5-tuple of the flow's first packet (forward direction).
    pub fn forward_tuple(&self) -> FiveTuple {
        self.key.tuple(self.flags & F_FWD_IS_LO != 0)
    }

    /// The zone given at creation.
    pub fn zone(&self) -> u32 {
        self.key.zone()
    }

    /// Packets seen in direction `d` (the first packet counts as forward).
    pub fn packets(&self, d: FlowDir) -> u64 {
        self.packets[d as usize]
    }

    /// Bytes seen in direction `d` (frame lengths as given to the table).
    pub fn bytes(&self, d: FlowDir) -> u64 {
        self.bytes[d as usize]
    }

    /// TCP state ([`TcpState::None`] for other protocols).
    pub fn tcp_state(&self) -> TcpState {
        TcpState::from_u8(self.state)
    }

    /// Creation time, ns on the table's clock.
    pub fn created_ns(&self) -> u64 {
        self.created_ns
    }

    /// Time of the last packet, ns on the table's clock.
    pub fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }

    /// Idle lifetime in the current state.
    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.lifetime_ms as u64)
    }

    /// When the flow expires if no packet comes: `last_seen + lifetime`, ns.
    pub fn expires_ns(&self) -> u64 {
        self.last_seen_ns + self.lifetime_ms as u64 * 1_000_000
    }

    /// The stored verdict.
    pub fn verdict(&self) -> Verdict {
        match self.verdict {
            1 => Verdict::Allow,
            2 => Verdict::Deny,
            _ => Verdict::Unknown,
        }
    }

    /// Stores a verdict.
    pub fn set_verdict(&mut self, v: Verdict) {
        self.verdict = v as u8;
    }

    /// True when a faster path (hardware, XDP) handles the flow.
    pub fn offloaded(&self) -> bool {
        self.flags & F_OFFLOADED != 0
    }

    /// Marks the flow as offloaded or not.
    pub fn set_offloaded(&mut self, on: bool) {
        if on {
            self.flags |= F_OFFLOADED;
        } else {
            self.flags &= !F_OFFLOADED;
        }
    }

    /// The byte the creating brick stored (the firewall stores the side the flow came
    /// from).
    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// Opaque context for other bricks or the API.
    pub fn user(&self) -> u64 {
        self.user
    }

    /// Sets the opaque context.
    pub fn set_user(&mut self, v: u64) {
        self.user = v;
    }

    fn live(&self) -> bool {
        self.flags & F_LIVE != 0
    }
}

/// Final state of a flow that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    /// The 5-tuple of the first packet.
    pub tuple: FiveTuple,
    /// The zone.
    pub zone: u32,
    /// Packets forward / reverse.
    pub packets: [u64; 2],
    /// Bytes forward / reverse.
    pub bytes: [u64; 2],
    /// Creation time, ns.
    pub created_ns: u64,
    /// Last packet time, ns.
    pub last_seen_ns: u64,
    /// Final TCP state.
    pub tcp_state: TcpState,
    /// Final verdict.
    pub verdict: Verdict,
    /// The tag byte.
    pub tag: u8,
    /// The opaque user context.
    pub user: u64,
    /// Why it ended.
    pub reason: EndReason,
    /// When it ended, ns.
    pub ended_ns: u64,
}

/// Counters of a flow table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Lookups that found a live flow.
    pub hit: u64,
    /// Flows created.
    pub created: u64,
    /// Flows ended by idleness.
    pub expired: u64,
    /// Flows evicted to make room.
    pub evicted: u64,
    /// New flows refused because the table was full.
    pub refused: u64,
    /// Flows removed by their owner.
    pub removed: u64,
    /// Packets the caller could not key (non-IP, malformed), reported with
    /// [`FlowTable::note_unhandled`].
    pub unhandled: u64,
    /// Records dropped from the full ring before being read.
    pub records_lost: u64,
}

/// The flow table. See the module documentation.
pub struct FlowTable {
    cfg: FlowTableConfig,
    clock: Clock,
    now: u64,
    flows: Vec<Flow>,
    free: u32,
    active: u32,
    index: Index,
    mask: usize,
    /// Ids from here on are wheel list sentinels (the slab's capacity).
    sentinel_base: u32,
    /// Wheel list sentinels: `wheel_slots` slots, then the "due" list; (prev, next).
    sentinels: Vec<(u32, u32)>,
    slot_mask: u64,
    tick_ns: u64,
    /// Last tick whose slot was moved to the due list.
    cur_tick: u64,
    lifetimes_ms: [u32; 7],
    records: VecDeque<FlowRecord>,
    counters: FlowCounters,
    /// Secret hash seed (random per table).
    seed: u64,
}

impl FlowTable {
    /// Makes a table and reserves all its memory.
    ///
    /// # Errors
    /// [`FlowTableError::Config`] for a value out of range.
    pub fn new(cfg: FlowTableConfig, clock: Clock) -> Result<FlowTable, FlowTableError> {
        if cfg.max_flows == 0 || cfg.max_flows > 1 << 30 {
            return Err(FlowTableError::Config(format!(
                "max_flows {} must be 1 ..= 2^30",
                cfg.max_flows
            )));
        }
        if cfg.tick < Duration::from_millis(1) {
            return Err(FlowTableError::Config("tick must be at least 1 ms".into()));
        }
        if cfg.expire_budget == 0 {
            return Err(FlowTableError::Config(
                "expire_budget must be at least 1".into(),
            ));
        }
        let slots = cfg.wheel_slots.max(2).next_power_of_two();
        let index_len = (cfg.max_flows as usize * 2).next_power_of_two().max(16);
        let l = &cfg.lifetimes;
        let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
        let lifetimes_ms = [
            ms(l.tcp_syn),
            ms(l.tcp_established),
            ms(l.tcp_fin),
            ms(l.tcp_rst),
            ms(l.udp),
            ms(l.icmp),
            ms(l.other),
        ];
        let tick_ns = cfg.tick.as_nanos() as u64;
        let now = clock.now_ns();
        // A slab of 2 MiB or more gets up to 2 MiB of extra slots in front, left unused,
        // so the slots in use start on a 2 MiB boundary (see `advise_huge_pages`).
        let flow_size = std::mem::size_of::<Flow>();
        let big = cfg.max_flows as usize * flow_size >= HUGE_PAGE;
        let extra = if big { HUGE_PAGE / flow_size } else { 0 };
        let mut flows: Vec<Flow> = Vec::with_capacity(cfg.max_flows as usize + extra);
        if big {
            let addr = flows.as_ptr() as usize;
            let skip = (addr.next_multiple_of(HUGE_PAGE) - addr).div_ceil(flow_size);
            flows.resize(skip.min(extra), Flow::empty());
        }
        let sentinel_base = flows.capacity() as u32;
        let mut t = FlowTable {
            flows,
            free: NIL,
            active: 0,
            index: Index::new(index_len),
            mask: index_len - 1,
            sentinel_base,
            sentinels: Vec::with_capacity(slots as usize + 1),
            slot_mask: slots as u64 - 1,
            tick_ns,
            cur_tick: now / tick_ns,
            lifetimes_ms,
            records: VecDeque::with_capacity(cfg.record_capacity),
            counters: FlowCounters::default(),
            seed: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(0x5eedu64)
            },
            now,
            clock,
            cfg,
        };
        for s in 0..=slots {
            let id = t.sentinel_id(s);
            t.sentinels.push((id, id));
        }
        let used = t.flows.len();
        advise_huge_pages(
            t.flows.as_ptr().wrapping_add(used).cast(),
            (t.flows.capacity() - used) * flow_size,
        );
        advise_huge_pages(t.index.as_ptr().cast(), index_len * 8);
        Ok(t)
    }

    /// The configuration.
    pub fn config(&self) -> &FlowTableConfig {
        &self.cfg
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Counters.
    pub fn counters(&self) -> FlowCounters {
        self.counters
    }

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.active as usize
    }

    /// True when no flow is in the table.
    pub fn is_empty(&self) -> bool {
        self.active == 0
    }

    /// Bytes reserved by the table (slab, index, wheel, record ring).
    pub fn memory_bytes(&self) -> usize {
        self.flows.capacity() * std::mem::size_of::<Flow>()
            + self.index.len() * 8
            + self.sentinels.capacity() * 8
            + self.records.capacity() * std::mem::size_of::<FlowRecord>()
    }

    /// The time the last [`FlowTable::advance`] saw, ns.
    pub fn now_ns(&self) -> u64 {
        self.now
    }

    /// Counts a packet that could not be keyed (non-IP, malformed).
    #[inline]
    pub fn note_unhandled(&mut self) {
        self.counters.unhandled += 1;
    }

    // ---- wheel lists -------------------------------------------------------------------

    fn sentinel_id(&self, s: u32) -> u32 {
        self.sentinel_base + s
    }

    fn due_list(&self) -> u32 {
        self.sentinel_id(self.slot_mask as u32 + 1)
    }

    #[inline]
    fn link_of(&self, i: u32) -> (u32, u32) {
        if i < self.sentinel_base {
            let f = &self.flows[i as usize];
            (f.prev, f.next)
        } else {
            self.sentinels[(i - self.sentinel_base) as usize]
        }
    }

    #[inline]
    fn set_prev(&mut self, i: u32, v: u32) {
        if i < self.sentinel_base {
            self.flows[i as usize].prev = v;
        } else {
            self.sentinels[(i - self.sentinel_base) as usize].0 = v;
        }
    }

    #[inline]
    fn set_next(&mut self, i: u32, v: u32) {
        if i < self.sentinel_base {
            self.flows[i as usize].next = v;
        } else {
            self.sentinels[(i - self.sentinel_base) as usize].1 = v;
        }
    }

    #[inline]
    fn unlink(&mut self, i: u32) {
        let (p, n) = self.link_of(i);
        self.set_next(p, n);
        self.set_prev(n, p);
    }

    /// Inserts flow `i` right after list node `head`.
    #[inline]
    fn push_after(&mut self, head: u32, i: u32) {
        let (_, n) = self.link_of(head);
        self.set_next(head, i);
        self.set_prev(n, i);
        let f = &mut self.flows[i as usize];
        f.prev = head;
        f.next = n;
    }

    /// Arms flow `i` in the slot of its expiry tick (at least the next tick).
    #[inline]
    fn arm(&mut self, i: u32) {
        let exp = self.flows[i as usize].expires_ns();
        let tick = exp.div_ceil(self.tick_ns).max(self.cur_tick + 1);
        self.flows[i as usize].armed_tick = tick;
        let s = self.sentinel_id((tick & self.slot_mask) as u32);
        self.push_after(s, i);
    }

    // ---- hash index --------------------------------------------------------------------

    #[inline(always)]
    fn find(&self, key: &FlowKey, h: u64) -> Option<(usize, u32)> {
        let tag = h as u32;
        let mut pos = h as usize & self.mask;
        loop {
            let s = self.index[pos];
            if s == 0 {
                return None;
            }
            if (s >> 32) as u32 == tag {
                let i = (s as u32).wrapping_sub(1);
                if self.flows[i as usize].key == *key {
                    return Some((pos, i));
                }
            }
            pos = (pos + 1) & self.mask;
        }
    }

    #[inline]
    fn index_insert(&mut self, h: u64, i: u32) {
        let mut pos = h as usize & self.mask;
        while self.index[pos] != 0 {
            pos = (pos + 1) & self.mask;
        }
        self.index[pos] = ((h as u32 as u64) << 32) | (i as u64 + 1);
    }

    /// Removes index slot `pos` with backward-shift deletion (no tombstones).
    fn index_remove_at(&mut self, pos: usize) {
        let mut hole = pos;
        let mut j = pos;
        loop {
            j = (j + 1) & self.mask;
            let s = self.index[j];
            if s == 0 {
                break;
            }
            let home = (s >> 32) as usize & self.mask;
            // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.index[hole] = s;
                hole = j;
            }
        }
        self.index[hole] = 0;
    }

    fn index_remove(&mut self, i: u32) {
        let key = self.flows[i as usize].key;
        if let Some((pos, _)) = self.find(&key, self.hash(&key)) {
            self.index_remove_at(pos);
        }
    }

    // ---- lifecycle ---------------------------------------------------------------------

    fn lifetime_for(&self, proto: u8, state: TcpState) -> u32 {
        let l = &self.lifetimes_ms;
        match state {
            TcpState::SynSent | TcpState::SynReceived => l[0],
            TcpState::Established => l[1],
            TcpState::FinWait | TcpState::Closing => l[2],
            TcpState::Reset => l[3],
            TcpState::None => match proto {
                IPPROTO_UDP => l[4],
                IPPROTO_ICMP | IPPROTO_ICMPV6 => l[5],
                _ => l[6],
            },
        }
    }

    /// Ends flow `i`: unlinks it, leaves a record, frees its slot.
    fn end(&mut self, i: u32, reason: EndReason) {
        self.index_remove(i);
        self.unlink(i);
        let f = &self.flows[i as usize];
        let rec = FlowRecord {
            tuple: f.forward_tuple(),
            zone: f.zone(),
            packets: f.packets,
            bytes: f.bytes,
            created_ns: f.created_ns,
            last_seen_ns: f.last_seen_ns,
            tcp_state: f.tcp_state(),
            verdict: f.verdict(),
            tag: f.tag,
            user: f.user,
            reason,
            ended_ns: self.now,
        };
        if self.cfg.record_capacity > 0 {
            if self.records.len() == self.cfg.record_capacity {
                self.records.pop_front();
                self.counters.records_lost += 1;
            }
            self.records.push_back(rec);
        }
        match reason {
            EndReason::Expired => self.counters.expired += 1,
            EndReason::Evicted => self.counters.evicted += 1,
            EndReason::Removed => self.counters.removed += 1,
        }
        let f = &mut self.flows[i as usize];
        f.flags = 0;
        f.prev = NIL;
        f.next = self.free;
        self.free = i;
        self.active -= 1;
    }

    /// Reads the clock and does up to `expire_budget` units of expiry work (walking the
    /// wheel slots whose tick has passed). Call it once per burst; returns the time, ns.
    #[inline]
    pub fn advance(&mut self) -> u64 {
        let now = self.clock.now_ns();
        self.advance_to(now);
        now
    }

    /// Like [`FlowTable::advance`] with a time given by the caller (ns, never going back).
    pub fn advance_to(&mut self, now: u64) {
        if now > self.now {
            self.now = now;
        }
        let target = self.now / self.tick_ns;
        let due = self.due_list();
        if target <= self.cur_tick && self.link_of(due).1 == due {
            return; // fast path: nothing due
        }
        let mut budget = self.cfg.expire_budget;
        let slots = self.slot_mask + 1;
        if target > self.cur_tick + slots {
            // Beyond one turn every slot is visited once anyway; flows are checked against
            // their true expiry, so skipping whole turns loses nothing.
            self.cur_tick = target - slots;
        }
        loop {
            // Drain the due list.
            loop {
                let (_, i) = self.link_of(due);
                if i == due {
                    break;
                }
                if budget == 0 {
                    return;
                }
                budget -= 1;
                self.unlink(i);
                if self.flows[i as usize].expires_ns() <= self.now {
                    self.end(i, EndReason::Expired);
                } else {
                    self.arm(i);
                }
            }
            if self.cur_tick >= target || budget == 0 {
                return;
            }
            budget -= 1;
            self.cur_tick += 1;
            // Splice the slot's list onto the due list (O(1)).
            let s = self.sentinel_id((self.cur_tick & self.slot_mask) as u32);
            let (last, first) = self.link_of(s);
            if first != s {
                self.set_next(due, first);
                self.set_prev(first, due);
                self.set_prev(due, last);
                self.set_next(last, due);
                self.set_next(s, s);
                self.set_prev(s, s);
            }
        }
    }

    /// Hints the CPU to load the index slot for hash `h` (a burst can issue these for all
    /// its packets before looking any up, so the cache misses overlap). No effect on
    /// results.
    #[inline]
    pub fn prefetch_index(&self, h: u64) {
        prefetch(
            self.index
                .as_ptr()
                .wrapping_add(h as usize & self.mask)
                .cast(),
        );
    }

    /// Hints the CPU to load the flow a lookup of hash `h` will compare first: the first
    /// index slot of its probe sequence whose tag matches `h` (up to
    /// [`PREFETCH_PROBE`] slots; none when an empty slot comes first: a miss). Reads the
    /// index: call [`FlowTable::prefetch_index`] well before. No effect on results.
    #[inline]
    pub fn prefetch_flow(&self, h: u64) {
        let tag = h as u32;
        let mut pos = h as usize & self.mask;
        for _ in 0..PREFETCH_PROBE {
            let s = self.index[pos];
            if s == 0 {
                return;
            }
            if (s >> 32) as u32 == tag {
                let i = (s as u32).wrapping_sub(1) as usize;
                if i < self.flows.len() {
                    let p: *const u8 = self.flows.as_ptr().wrapping_add(i).cast();
                    prefetch(p);
                    prefetch(p.wrapping_add(64));
                }
                return;
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// The hash of `key` under this table's secret seed: the `h` that
    /// [`FlowTable::lookup`] and [`FlowTable::create`] take.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        key.hash_seeded(self.seed)
    }

    /// Finds the flow of a packet whose key and orientation come from [`FlowKey::new`],
    /// with `h = self.hash(key)`. Returns the flow and the packet's direction. A flow found
    /// past its expiry is expired now and not returned. Counts a hit.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, h: u64, src_is_lo: bool) -> Option<(FlowId, FlowDir)> {
        let (_, i) = self.find(key, h)?;
        let f = &self.flows[i as usize];
        if f.expires_ns() <= self.now {
            self.expire_found(i);
            return None;
        }
        self.counters.hit += 1;
        Some((FlowId(i), direction(f.flags, src_is_lo)))
    }

    /// A lookup found flow `i` past its expiry (the wheel lags behind): expire it now.
    #[cold]
    #[inline(never)]
    fn expire_found(&mut self, i: u32) {
        self.end(i, EndReason::Expired);
    }

    /// [`FlowTable::lookup`] then [`FlowTable::touch`] in one call: the hit path of a
    /// packet (key, hash and orientation as for [`FlowTable::lookup`]). Returns the flow
    /// and the packet's direction, or `None` (nothing found, or found expired and
    /// expired now) with nothing touched.
    #[inline(always)]
    pub fn hit(
        &mut self,
        key: &FlowKey,
        h: u64,
        src_is_lo: bool,
        bytes: u32,
        tcp_flags: u8,
    ) -> Option<(FlowId, FlowDir)> {
        let (_, i) = self.find(key, h)?;
        let now = self.now;
        let f = &mut self.flows[i as usize];
        if f.expires_ns() <= now {
            self.expire_found(i);
            return None;
        }
        self.counters.hit += 1;
        let dir = direction(f.flags, src_is_lo);
        f.packets[dir as usize] += 1;
        f.bytes[dir as usize] += bytes as u64;
        f.last_seen_ns = now;
        // An established flow stays so unless SYN, FIN or RST is set.
        if f.state != TcpState::None as u8
            && (f.state != TcpState::Established as u8
                || tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0)
        {
            self.tcp_update(i, dir, tcp_flags);
        }
        Some((FlowId(i), dir))
    }

    /// Accounts a packet of `bytes` bytes in direction `dir` of flow `id` at the current
    /// time and moves its TCP state on with `tcp_flags` (RFC 9293 flags byte; 0 for
    /// other protocols).
    #[inline]
    pub fn touch(&mut self, id: FlowId, dir: FlowDir, bytes: u32, tcp_flags: u8) {
        let now = self.now;
        let i = id.0;
        let f = &mut self.flows[i as usize];
        f.packets[dir as usize] += 1;
        f.bytes[dir as usize] += bytes as u64;
        f.last_seen_ns = now;
        if f.state != TcpState::None as u8 {
            self.tcp_update(i, dir, tcp_flags);
        }
    }

    /// Moves the TCP state of flow `i` on with a packet's flags; a shorter lifetime
    /// (FIN, RST) re-arms the flow in its earlier wheel slot at once.
    #[inline(never)]
    fn tcp_update(&mut self, i: u32, dir: FlowDir, tcp_flags: u8) {
        let f = &mut self.flows[i as usize];
        let old = TcpState::from_u8(f.state);
        let new = next_tcp_state(old, &mut f.flags, dir, tcp_flags);
        if new != old {
            let proto = f.key.proto();
            let lt = self.lifetime_for(proto, new);
            let f = &mut self.flows[i as usize];
            f.state = new as u8;
            let shorter = lt < f.lifetime_ms;
            f.lifetime_ms = lt;
            if shorter {
                let tick = f.expires_ns().div_ceil(self.tick_ns).max(self.cur_tick + 1);
                if tick < f.armed_tick {
                    self.unlink(i);
                    self.arm(i);
                }
            }
        }
    }

    /// Creates a flow for a packet (key and orientation from [`FlowKey::new`], `h` its
    /// hash from [`FlowTable::hash`]) that was not found, counting the packet as its first forward packet.
    /// A TCP flow starts in [`TcpState::SynSent`] when `tcp_flags` is a SYN without ACK,
    /// else in [`TcpState::Established`] (picked up mid-stream). `tag` is kept for the
    /// caller.
    ///
    /// # Errors
    /// [`FlowTableError::Full`] when full and the policy is [`FullPolicy::RefuseNew`].
    #[inline]
    pub fn create(
        &mut self,
        key: &FlowKey,
        h: u64,
        src_is_lo: bool,
        bytes: u32,
        tcp_flags: u8,
        tag: u8,
    ) -> Result<FlowId, FlowTableError> {
        if self.active == self.cfg.max_flows {
            match self.cfg.policy {
                FullPolicy::RefuseNew => {
                    self.counters.refused += 1;
                    return Err(FlowTableError::Full {
                        max: self.cfg.max_flows,
                    });
                }
                FullPolicy::EvictOldest => self.evict_one(),
            }
        }
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.flows[i as usize].next;
            i
        } else {
            // Never reallocates: the capacity is max_flows plus the unused leading slots,
            // and active < max_flows here.
            self.flows.push(Flow::empty());
            (self.flows.len() - 1) as u32
        };
        let state = if key.proto() == IPPROTO_TCP {
            if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                TcpState::SynSent
            } else {
                TcpState::Established
            }
        } else {
            TcpState::None
        };
        let lifetime_ms = self.lifetime_for(key.proto(), state);
        let f = &mut self.flows[i as usize];
        f.key = *key;
        f.state = state as u8;
        f.verdict = Verdict::Unknown as u8;
        f.flags = F_LIVE | if src_is_lo { F_FWD_IS_LO } else { 0 };
        f.tag = tag;
        f.lifetime_ms = lifetime_ms;
        f.created_ns = self.now;
        f.last_seen_ns = self.now;
        f.packets = [1, 0];
        f.bytes = [bytes as u64, 0];
        f.user = 0;
        self.index_insert(h, i);
        self.arm(i);
        self.active += 1;
        self.counters.created += 1;
        Ok(FlowId(i))
    }

    /// Evicts the flow armed to expire first (see [`FullPolicy::EvictOldest`]).
    fn evict_one(&mut self) {
        let due = self.due_list();
        let mut spared = 0;
        let slots = self.slot_mask + 1;
        let mut t = self.cur_tick;
        loop {
            // Candidates: the due list first, then slots in tick order.
            let list = if t == self.cur_tick {
                due
            } else {
                self.sentinel_id((t & self.slot_mask) as u32)
            };
            let (_, i) = self.link_of(list);
            if i != list {
                let f = &self.flows[i as usize];
                let true_tick = f.expires_ns().div_ceil(self.tick_ns);
                if spared < 8 && list != due && true_tick > f.armed_tick {
                    // Lazily extended: re-arm at its true expiry and look again.
                    spared += 1;
                    self.unlink(i);
                    self.arm(i);
                    continue;
                }
                self.end(i, EndReason::Evicted);
                return;
            }
            t += 1;
            if t > self.cur_tick + slots {
                break;
            }
        }
        // Every live flow is on a wheel list, so this is not reached when the table is
        // full; stay correct anyway.
        if let Some(i) = self.flows.iter().position(|f| f.live()) {
            self.end(i as u32, EndReason::Evicted);
        }
    }

    /// The flow `id`, if it is live.
    pub fn get(&self, id: FlowId) -> Option<&Flow> {
        self.flows.get(id.0 as usize).filter(|f| f.live())
    }

    /// The flow `id`, mutably (verdict, offloaded flag, user context), if it is live.
    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        self.flows.get_mut(id.0 as usize).filter(|f| f.live())
    }

    /// Finds a flow by a packet's 5-tuple (any direction) in `zone`, without counting a
    /// hit or checking expiry (for the API).
    pub fn find_tuple(&self, t: &FiveTuple, zone: u32) -> Option<FlowId> {
        let (k, _) = FlowKey::new(t, zone);
        self.find(&k, self.hash(&k)).map(|(_, i)| FlowId(i))
    }

    /// Ends flow `id` (reason [`EndReason::Removed`]). Returns false if it was not live.
    pub fn remove(&mut self, id: FlowId) -> bool {
        if self.get(id).is_none() {
            return false;
        }
        self.end(id.0, EndReason::Removed);
        true
    }

    /// Iterates over live flows.
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &Flow)> + '_ {
        self.flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.live())
            .map(|(i, f)| (FlowId(i as u32), f))
    }

    /// Keeps the flows for which `keep` is true and removes the others (reason
    /// [`EndReason::Removed`]). A full scan: for configuration changes, not the packet
    /// path. Returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(FlowId, &Flow) -> bool) -> usize {
        let mut n = 0;
        for i in 0..self.flows.len() as u32 {
            let f = &self.flows[i as usize];
            if f.live() && !keep(FlowId(i), f) {
                self.end(i, EndReason::Removed);
                n += 1;
            }
        }
        n
    }

    /// Takes the oldest unread record of an ended flow.
    pub fn pop_record(&mut self) -> Option<FlowRecord> {
        self.records.pop_front()
    }

    /// Unread records, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &FlowRecord> + '_ {
        self.records.iter()
    }
}

/// Asks the kernel to back the `len` bytes at `p` (an allocation of ours, not touched
/// yet) with transparent huge pages (Linux `madvise(MADV_HUGEPAGE)`, honoured when
/// `/sys/kernel/mm/transparent_hugepage/enabled` is `always` or `madvise`). The flow slab
/// and the index are read at random places: with 4 KiB pages a table of 100k flows spans
/// more pages than the TLB holds, and every miss is a page walk (two-dimensional under a
/// hypervisor). Best effort: nothing happens elsewhere or on error; below 2 MiB it is
/// not worth a call.
fn advise_huge_pages(p: *const u8, len: usize) {
    if len < HUGE_PAGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (p as usize).next_multiple_of(PAGE);
        let end = (p as usize + len) & !(PAGE - 1);
        if end > start {
            // SAFETY: the range lies inside one live allocation of ours (rounded inwards
            // to whole pages); MADV_HUGEPAGE only changes how the kernel backs those
            // pages, never their contents or their mapping's validity.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = p;
}

/// The direction of a packet whose source is the key's low endpoint (`src_is_lo`) in a
/// flow with `flags`.
#[inline(always)]
fn direction(flags: u8, src_is_lo: bool) -> FlowDir {
    if (flags & F_FWD_IS_LO != 0) == src_is_lo {
        FlowDir::Forward
    } else {
        FlowDir::Reverse
    }
}

/// The size of an x86-64 huge page (2 MiB).
const HUGE_PAGE: usize = 2 << 20;

/// The hash index: `len` zeroed 8-byte slots that start on a 2 MiB boundary when they
/// take 2 MiB or more (so huge pages can back all of them), inside a vector 2 MiB longer
/// whose unused head is never touched (calloc'd memory: it costs no resident memory).
struct Index {
    buf: Vec<u64>,
    off: usize,
    len: usize,
}

impl Index {
    fn new(len: usize) -> Index {
        if len * 8 < HUGE_PAGE {
            return Index {
                buf: vec![0; len],
                off: 0,
                len,
            };
        }
        let buf = vec![0u64; len + HUGE_PAGE / 8];
        let addr = buf.as_ptr() as usize;
        let off = (addr.next_multiple_of(HUGE_PAGE) - addr) / 8;
        Index { buf, off, len }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn as_ptr(&self) -> *const u64 {
        self.buf.as_ptr().wrapping_add(self.off)
    }
}

impl std::ops::Index<usize> for Index {
    type Output = u64;

    #[inline(always)]
    fn index(&self, pos: usize) -> &u64 {
        &self.buf[self.off + pos]
    }
}

impl std::ops::IndexMut<usize> for Index {
    #[inline(always)]
    fn index_mut(&mut self, pos: usize) -> &mut u64 {
        &mut self.buf[self.off + pos]
    }
}

/// The TCP state after a packet with `flags` in direction `dir`.
fn next_tcp_state(old: TcpState, fl: &mut u8, dir: FlowDir, flags: u8) -> TcpState {
    if flags & TCP_RST != 0 {
        return TcpState::Reset;
    }
    if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 && dir == FlowDir::Forward {
        // A new SYN on a closed or closing flow reopens it (port reuse).
        if matches!(old, TcpState::Reset | TcpState::Closing | TcpState::FinWait) {
            *fl &= !(F_FIN_FWD | F_FIN_REV);
            return TcpState::SynSent;
        }
        return old;
    }
    if flags & TCP_FIN != 0 {
        *fl |= if dir == FlowDir::Forward {
            F_FIN_FWD
        } else {
            F_FIN_REV
        };
        return if *fl & (F_FIN_FWD | F_FIN_REV) == F_FIN_FWD | F_FIN_REV {
            TcpState::Closing
        } else {
            TcpState::FinWait
        };
    }
    match old {
        TcpState::SynSent
            if dir == FlowDir::Reverse && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK =>
        {
            TcpState::SynReceived
        }
        TcpState::SynReceived if dir == FlowDir::Forward && flags & TCP_ACK != 0 => {
            TcpState::Established
        }
        s => s,
    }
}

#[cfg(test)]
mod tests;
