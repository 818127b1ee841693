//! Entry point shared by the `vhost/fuzz` cargo-fuzz target and the deterministic random
//! unit test: arbitrary bytes become a descriptor table, an available ring and buffer
//! contents in a small guest memory, then both the transmit and the receive paths of
//! [`crate::virtq`] run on them. Whatever the bytes, this must not panic, must not read or
//! write outside guest memory ([`GuestMap`] checks every access), must return every frame to
//! the pool, and the used ring index must never move by more than the chains offered.

pub use packetgraph::Pool;
use packetgraph::{Burst, PoolConfig};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::guest_map::GuestMap;
use crate::virtq::{GuestMem, NetConfig, RxVirtio, TxVirtio};

/// Guest memory size used by [`run`], in bytes.
pub const MEM_SIZE: usize = 0x1_0000;
/// Queue size used by [`run`].
pub const QUEUE_SIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x200;
const USED: u64 = 0x400;

/// A pool for [`run`] (kept across calls by the fuzz target).
pub fn pool() -> Pool {
    // Cannot fail with these parameters.
    Pool::new(PoolConfig {
        frame_count: 128,
        ..Default::default()
    })
    .expect("pool")
}

/// Runs the transmit then the receive path over a guest memory built from `data`.
///
/// Layout of `data`: byte 0 selects the features (bit 0: mergeable buffers, bit 1: event
/// index, bit 2: legacy 10-byte header), byte 1 the available index; then 16 descriptors
/// (16 bytes each) and 16 available-ring entries; the rest fills guest memory from 0x1000.
///
/// # Panics
/// When an invariant above is broken (that is the point).
pub fn run(data: &[u8], pool: &Pool) {
    if data.len() < 2 {
        return;
    }
    let before = pool.available();
    let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
    let mode = data[0];
    let avail_idx = u16::from(data[1]);
    let rest = &data[2..];
    let table_len = 16 * QUEUE_SIZE as usize + 2 * QUEUE_SIZE as usize;
    let (tables, payload) = rest.split_at(rest.len().min(table_len));
    let (descs, ring) = tables.split_at(tables.len().min(16 * QUEUE_SIZE as usize));
    mem.write_slice(descs, GuestAddress(DESC))
        .expect("desc table");
    mem.write_slice(ring, GuestAddress(AVAIL + 4))
        .expect("avail ring");
    let n = payload.len().min(MEM_SIZE - 0x1000);
    mem.write_slice(&payload[..n], GuestAddress(0x1000))
        .expect("payload");
    mem.write_obj(avail_idx.to_le(), GuestAddress(AVAIL + 2))
        .expect("avail idx");

    let cfg = NetConfig {
        hdr_len: if mode & 4 != 0 { 10 } else { 12 },
        mrg_rxbuf: mode & 1 != 0,
    };
    let new_queue = || {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(QUEUE_SIZE);
        q.try_set_desc_table_address(GuestAddress(DESC))
            .expect("desc");
        q.try_set_avail_ring_address(GuestAddress(AVAIL))
            .expect("avail");
        q.try_set_used_ring_address(GuestAddress(USED))
            .expect("used");
        q.set_event_idx(mode & 2 != 0);
        q.set_ready(true);
        q
    };

    // Transmit path.
    let mut q = new_queue();
    let mut tx = TxVirtio::default();
    let mut out = Burst::new();
    let map = GuestMap::new(&mem);
    let since = q.next_used();
    let taken = tx.pop_frames(&mut q, &map, pool, cfg, 64, &mut out);
    assert!(taken <= usize::from(avail_idx.min(QUEUE_SIZE)));
    assert_eq!(tx.stats.packets + tx.stats.drops(), taken as u64);
    for p in out.iter() {
        assert!(p.len() <= pool.max_data());
    }
    // Never more chains returned than taken (the guest may scribble over its own rings:
    // buffers can point anywhere in its memory, so check the device's own indices).
    assert!(q.next_avail().wrapping_sub(q.next_used()) <= QUEUE_SIZE);
    let _ = crate::virtq::notify(&q, &map, None, since);
    drop(out);

    // Receive path on the same chains.
    let mut q = new_queue();
    let mut rx = RxVirtio::default();
    let frame = [0x5au8; 1514];
    for len in [60usize, 1514, 14, 600] {
        let _ = rx.push_frame(&mut q, &map, cfg, &frame[..len]);
        assert!(q.next_avail().wrapping_sub(q.next_used()) <= QUEUE_SIZE);
    }
    // And as one burst on a fresh queue.
    let mut q = new_queue();
    let lens = [60usize, 1514, 14, 600, 2048, 0];
    let delivered = rx.push_burst(
        &mut q,
        &map,
        cfg,
        lens.iter().map(|&l| &frame[..l.min(1514)]),
    );
    assert!(delivered <= lens.len());
    assert!(q.next_avail().wrapping_sub(q.next_used()) <= QUEUE_SIZE);
    assert_eq!(pool.available(), before, "frames leaked");
}

#[cfg(test)]
mod tests {
    /// Deterministic random inputs (xorshift), biased towards plausible descriptors so the
    /// chain walks go deep; the fuzz target explores further.
    #[test]
    fn random_chains_never_panic() {
        let pool = super::pool();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for round in 0..3000 {
            let mut data = vec![0u8; 2 + 16 * 16 + 32 + 512];
            for b in data.iter_mut() {
                *b = next() as u8;
            }
            if round % 2 == 0 {
                // Plausible descriptors: addresses in memory, small lengths, sane flags.
                for i in 0..16 {
                    let o = 2 + 16 * i;
                    let r = next();
                    let addr = 0x1000 + (r % 0xf000);
                    let len = (r >> 20) as u32 % 2048;
                    let flags = (r >> 40) as u16 & 0x7;
                    let nxt = (r >> 50) as u16 % 20;
                    data[o..o + 8].copy_from_slice(&addr.to_le_bytes());
                    data[o + 8..o + 12].copy_from_slice(&len.to_le_bytes());
                    data[o + 12..o + 14].copy_from_slice(&flags.to_le_bytes());
                    data[o + 14..o + 16].copy_from_slice(&nxt.to_le_bytes());
                }
                for i in 0..16 {
                    let o = 2 + 256 + 2 * i;
                    data[o..o + 2].copy_from_slice(&((next() % 18) as u16).to_le_bytes());
                }
                data[1] %= 18;
            }
            super::run(&data, &pool);
        }
    }

    /// The fuzz target's seed inputs (`vhost/fuzz/seeds/chains`), which must also exist.
    #[test]
    fn seed_files_never_panic() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/chains");
        let pool = super::pool();
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let data = std::fs::read(e.path()).unwrap();
            super::run(&data, &pool);
            n += 1;
        }
        assert!(n >= 5, "seed corpus missing in {}", dir.display());
    }
}
