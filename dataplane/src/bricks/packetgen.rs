//! `packetgen`: a pollable monopole that generates copies of given frames.
//!
//! Each poll emits one burst of up to 64 packets, cycling through the template frames.
//! When a sequence offset is set, a 32-bit big-endian sequence number (starting at 0,
//! +1 per packet) is written at that byte offset of every packet, so a receiver can check
//! order and loss.

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::{BURST_SIZE, Burst};
use crate::error::BrickError;
use crate::packet::Pool;

/// Generates packets from templates.
pub struct PacketGen {
    pool: Pool,
    templates: Vec<Vec<u8>>,
    /// Packets left to generate (`u64::MAX`: unlimited).
    remaining: u64,
    next: usize,
    seq: u32,
    seq_offset: Option<usize>,
    burst_size: usize,
    generated: u64,
    pool_empty: u64,
    received: u64,
}

impl PacketGen {
    /// Generates `count` packets in all (`u64::MAX` for no limit) from `templates`, which
    /// are used in turn. Templates longer than the pool's frames are cut to fit.
    pub fn new(pool: Pool, templates: Vec<Vec<u8>>, count: u64) -> PacketGen {
        let max = pool.max_data();
        let templates = templates.into_iter().map(|mut t| {
            t.truncate(max);
            t
        });
        PacketGen {
            pool,
            templates: templates.collect(),
            remaining: count,
            next: 0,
            seq: 0,
            seq_offset: None,
            burst_size: BURST_SIZE,
            generated: 0,
            pool_empty: 0,
            received: 0,
        }
    }

    /// Writes a big-endian u32 sequence number at byte `offset` of each packet (when the
    /// packet is long enough).
    pub fn with_sequence(mut self, offset: usize) -> PacketGen {
        self.seq_offset = Some(offset);
        self
    }

    /// Packets per poll (1 ..= 64; other values are clamped).
    pub fn with_burst_size(mut self, n: usize) -> PacketGen {
        self.burst_size = n.clamp(1, BURST_SIZE);
        self
    }

    /// Adds `n` packets to generate.
    pub fn add_count(&mut self, n: u64) {
        self.remaining = self.remaining.saturating_add(n);
    }

    /// Packets generated so far.
    pub fn generated(&self) -> u64 {
        self.generated
    }
}

impl Brick for PacketGen {
    fn kind(&self) -> &'static str {
        "packetgen"
    }

    fn poles(&self) -> Poles {
        Poles::Monopole
    }

    fn pollable(&self) -> bool {
        true
    }

    fn burst(
        &mut self,
        _from: Side,
        _edge: usize,
        pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        self.received += pkts.len() as u64;
        Ok(())
    }

    fn poll(&mut self, out: &mut Emit) -> Result<usize, BrickError> {
        if self.templates.is_empty() || self.remaining == 0 {
            return Ok(0);
        }
        let want = (self.burst_size as u64).min(self.remaining) as usize;
        let mut burst = Burst::new();
        let templates = &self.templates;
        let (next, seq, seq_off) = (&mut self.next, &mut self.seq, self.seq_offset);
        let got = self.pool.alloc_with(want, |mut p| {
            let t = &templates[*next];
            *next += 1;
            if *next == templates.len() {
                *next = 0;
            }
            if let Ok(buf) = p.append(t.len()) {
                buf.copy_from_slice(t);
            }
            if let Some(off) = seq_off
                && off + 4 <= p.len()
            {
                p.data_mut()[off..off + 4].copy_from_slice(&seq.to_be_bytes());
            }
            *seq = seq.wrapping_add(1);
            let _ = burst.push(p);
        });
        if got < want {
            self.pool_empty += 1;
        }
        if self.remaining != u64::MAX {
            self.remaining -= got as u64;
        }
        self.generated += got as u64;
        if got > 0 {
            out.send_peer(burst);
        }
        Ok(got)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("generated", self.generated),
            ("pool_empty", self.pool_empty),
            ("received", self.received),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bricks::Collect;
    use crate::{Graph, PoolConfig};

    #[test]
    fn generates_count_with_sequence_numbers() {
        let pool = Pool::new(PoolConfig {
            frame_count: 512,
            ..Default::default()
        })
        .unwrap();
        let mut g = Graph::new("t");
        let pg = PacketGen::new(pool.clone(), vec![vec![0xaa; 64], vec![0xbb; 60]], 100)
            .with_sequence(20);
        g.add("gen", pg).unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link("gen", "sink").unwrap();
        assert_eq!(g.poll().unwrap(), 64);
        assert_eq!(g.poll().unwrap(), 36);
        assert_eq!(
            g.poll().unwrap(),
            0,
            "count reached: nothing more, no empty burst"
        );
        let c = g.get::<Collect>("sink").unwrap();
        assert_eq!(c.packets(Side::West), 100);
        assert_eq!(c.bursts(Side::West), 2);
        let last = c.last(Side::West).unwrap();
        assert_eq!(last.len(), 36);
        // Packet 64 is the first of the second burst: template 0, seq 64.
        assert_eq!(last[0].len(), 64);
        assert_eq!(&last[0].data()[20..24], &64u32.to_be_bytes());
        assert_eq!(last[1].len(), 60);
        assert_eq!(last[1].data()[0], 0xbb);
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn stops_cleanly_when_pool_is_exhausted() {
        let pool = Pool::new(PoolConfig {
            frame_count: 10,
            ..Default::default()
        })
        .unwrap();
        let mut pg = PacketGen::new(pool.clone(), vec![vec![1; 60]], u64::MAX);
        let mut out = Emit::new();
        assert_eq!(pg.poll(&mut out).unwrap(), 10);
        let held = out.take();
        assert_eq!(pg.poll(&mut out).unwrap(), 0);
        assert_eq!(out.empty_bursts(), 0);
        drop(held);
        assert_eq!(pool.available(), 10);
    }
}
