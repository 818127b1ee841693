//! `queue`: a pair of friend bricks that carry packets between two graphs, usually run
//! by two [`Worker`](crate::Worker) threads.
//!
//! [`Queue::pair`] returns two bricks sharing two bounded lock-free rings (one per
//! direction, `crossbeam_queue::ArrayQueue`). A burst sent to one brick is pushed on the
//! ring towards its friend; polling the friend pops up to 64 packets from that ring into
//! its own graph. When a ring is full, pushing drops the *oldest* packet waiting in it
//! (returned to its pool and counted as `drop_oldest` by the pushing brick), so a slow
//! consumer sees the freshest traffic. [`Queue::pressure`] tells how full the ring this
//! brick reads from is, from 0 (empty) to 255 (full), so a producer can back off.
//!
//! Packets keep their frame: a packet allocated in graph A's pool and read by graph B
//! goes back to A's pool when B drops it (pools are thread-safe).

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::{BURST_SIZE, Burst};
use crate::error::BrickError;
use crate::packet::Packet;

/// One end of a queue pair.
pub struct Queue {
    /// Ring this brick pushes to (its friend reads it).
    tx: Arc<ArrayQueue<Packet>>,
    /// Ring this brick reads from (its friend pushes to it).
    rx: Arc<ArrayQueue<Packet>>,
    rx_packets: u64,
    tx_packets: u64,
    drop_oldest: u64,
    drop_no_friend: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("capacity", &self.tx.capacity())
            .field("tx_len", &self.tx.len())
            .field("rx_len", &self.rx.len())
            .finish()
    }
}

impl Queue {
    /// Two friend queue bricks; each direction holds up to `capacity` packets.
    ///
    /// # Errors
    /// [`BrickError::Config`] when `capacity` is 0.
    pub fn pair(capacity: usize) -> Result<(Queue, Queue), BrickError> {
        if capacity == 0 {
            return Err(BrickError::Config(
                "queue capacity must be at least 1 packet".into(),
            ));
        }
        let ab = Arc::new(ArrayQueue::new(capacity));
        let ba = Arc::new(ArrayQueue::new(capacity));
        let q = |tx: &Arc<ArrayQueue<Packet>>, rx: &Arc<ArrayQueue<Packet>>| Queue {
            tx: tx.clone(),
            rx: rx.clone(),
            rx_packets: 0,
            tx_packets: 0,
            drop_oldest: 0,
            drop_no_friend: 0,
        };
        Ok((q(&ab, &ba), q(&ba, &ab)))
    }

    /// Packets per direction.
    pub fn capacity(&self) -> usize {
        self.rx.capacity()
    }

    /// How full the ring this brick reads is: `len * 255 / capacity`, 0 (empty) to 255
    /// (full). High pressure means this brick's graph does not keep up with its friend.
    pub fn pressure(&self) -> u8 {
        fill(&self.rx)
    }

    /// How full the ring towards the friend is (0–255): the friend's [`Queue::pressure`].
    pub fn friend_pressure(&self) -> u8 {
        fill(&self.tx)
    }

    /// True while the friend brick exists.
    pub fn has_friend(&self) -> bool {
        Arc::strong_count(&self.tx) > 1
    }

    /// Packets read from the friend.
    pub fn rx_packets(&self) -> u64 {
        self.rx_packets
    }

    /// Packets pushed towards the friend (including those later dropped as oldest).
    pub fn tx_packets(&self) -> u64 {
        self.tx_packets
    }

    /// Packets dropped from a full ring to make room for newer ones.
    pub fn drop_oldest(&self) -> u64 {
        self.drop_oldest
    }
}

fn fill(q: &ArrayQueue<Packet>) -> u8 {
    (q.len() * 255 / q.capacity()).min(255) as u8
}

impl Brick for Queue {
    fn kind(&self) -> &'static str {
        "queue"
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
        mut pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        if !self.has_friend() {
            self.drop_no_friend += pkts.len() as u64;
            return Ok(());
        }
        let mut oldest = Burst::new();
        for p in pkts.drain() {
            self.tx_packets += 1;
            if let Some(old) = self.tx.force_push(p) {
                self.drop_oldest += 1;
                // At most one per pushed packet, so at most a burst: push cannot fail.
                let _ = oldest.push(old);
            }
        }
        // `oldest` goes back to its pool here, in one batch.
        Ok(())
    }

    fn poll(&mut self, out: &mut Emit) -> Result<usize, BrickError> {
        let mut b = Burst::new();
        while b.len() < BURST_SIZE {
            match self.rx.pop() {
                Some(p) => {
                    let _ = b.push(p);
                }
                None => break,
            }
        }
        let n = b.len();
        self.rx_packets += n as u64;
        if n > 0 {
            out.send_peer(b);
        }
        Ok(n)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_packets", self.rx_packets),
            ("tx_packets", self.tx_packets),
            ("drop_oldest", self.drop_oldest),
            ("drop_no_friend", self.drop_no_friend),
            ("pressure", u64::from(self.pressure())),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::bricks::{Collect, PacketGen};
    use crate::{Graph, Pool, PoolConfig, Worker, WorkerConfig};

    fn pool(frames: u32) -> Pool {
        Pool::new(PoolConfig {
            frame_count: frames,
            ..Default::default()
        })
        .unwrap()
    }

    fn seq(p: &Packet) -> u32 {
        u32::from_be_bytes(p.data()[14..18].try_into().unwrap())
    }

    fn burst_of(pool: &Pool, range: std::ops::Range<u32>) -> Burst {
        let mut b = Burst::new();
        for i in range {
            let mut f = [0u8; 60];
            f[14..18].copy_from_slice(&i.to_be_bytes());
            b.push(pool.packet_from(&f).unwrap()).unwrap();
        }
        b
    }

    #[test]
    fn full_ring_drops_the_oldest_back_to_its_pool_and_reports_pressure() {
        let pool = pool(64);
        let (mut a, mut b) = Queue::pair(4).unwrap();
        let mut out = Emit::new();
        assert_eq!((a.friend_pressure(), b.pressure()), (0, 0));
        a.burst(Side::East, 0, burst_of(&pool, 0..2), &mut out)
            .unwrap();
        assert_eq!(b.pressure(), 127, "2 of 4");
        a.burst(Side::East, 0, burst_of(&pool, 2..10), &mut out)
            .unwrap();
        assert_eq!(b.pressure(), 255);
        assert_eq!(a.friend_pressure(), 255);
        assert_eq!(a.drop_oldest(), 6);
        assert_eq!(a.tx_packets(), 10);
        assert_eq!(pool.available(), 60, "the 6 oldest went back to the pool");
        assert!(out.pending().is_empty(), "pushing emits nothing");

        assert_eq!(b.poll(&mut out).unwrap(), 4);
        let got = out.take();
        assert_eq!(got.len(), 1);
        let seqs: Vec<u32> = got[0].1.iter().map(seq).collect();
        assert_eq!(seqs, vec![6, 7, 8, 9], "the newest survive, in order");
        assert_eq!(b.pressure(), 0);
        drop(got);
        assert_eq!(pool.available(), 64);

        // Empty ring: no burst at all.
        assert_eq!(b.poll(&mut out).unwrap(), 0);
        assert!(out.pending().is_empty());
        assert_eq!(out.empty_bursts(), 0);
        // Nothing flows backwards unless sent.
        assert_eq!(a.poll(&mut out).unwrap(), 0);
        assert!(Queue::pair(0).is_err());
    }

    #[test]
    fn packets_in_flight_return_to_the_pool_when_both_ends_are_gone() {
        let pool = pool(16);
        let (mut a, b) = Queue::pair(8).unwrap();
        let mut out = Emit::new();
        a.burst(Side::East, 0, burst_of(&pool, 0..5), &mut out)
            .unwrap();
        assert_eq!(pool.available(), 11);
        drop(b);
        assert!(!a.has_friend());
        // Without a friend, sending drops at once.
        a.burst(Side::East, 0, burst_of(&pool, 0..3), &mut out)
            .unwrap();
        assert_eq!(a.counters()[3], ("drop_no_friend", 3));
        assert!(out.pending().is_empty());
        assert_eq!(out.empty_bursts(), 0);
        drop(a);
        assert_eq!(pool.available(), 16);
    }

    /// Graph 1 (worker 1): `gen → queue-a`; graph 2 (worker 2): `queue-b → sink`.
    #[test]
    fn carries_packets_between_two_workers_in_order() {
        const N: u64 = 1000;
        let pool = pool(4096);
        let (qa, qb) = Queue::pair(4096).unwrap();
        let mut g1 = Graph::new("producer");
        g1.add(
            "gen",
            PacketGen::new(pool.clone(), vec![vec![0; 60]], N).with_sequence(14),
        )
        .unwrap();
        g1.add("queue-a", qa).unwrap();
        g1.link("gen", "queue-a").unwrap();
        g1.sanity_check().unwrap();
        let mut g2 = Graph::new("consumer");
        g2.add("queue-b", qb).unwrap();
        g2.add("sink", Collect::new()).unwrap();
        g2.link("queue-b", "sink").unwrap();
        g2.sanity_check().unwrap();

        // Each sink burst is checked for order as it arrives, on the consumer worker.
        let w2 = Worker::spawn(
            g2,
            WorkerConfig {
                name: "queue-consumer".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let w1 = Worker::spawn(
            g1,
            WorkerConfig {
                name: "queue-producer".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = w2
                .exec(|g| g.get::<Collect>("sink").unwrap().packets(Side::West))
                .unwrap();
            if n == N {
                break;
            }
            assert!(Instant::now() < deadline, "only {n} of {N} packets arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        let g1 = w1.stop().unwrap();
        let g2 = w2.stop().unwrap();
        let qa = g1.get::<Queue>("queue-a").unwrap();
        let qb = g2.get::<Queue>("queue-b").unwrap();
        assert_eq!(qa.tx_packets(), N);
        assert_eq!(qa.drop_oldest(), 0);
        assert_eq!(qb.rx_packets(), N);
        let last = g2.get::<Collect>("sink").unwrap().last(Side::West).unwrap();
        let seqs: Vec<u32> = last.iter().map(seq).collect();
        assert_eq!(*seqs.last().unwrap() as u64, N - 1);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(g1.empty_bursts() + g2.empty_bursts(), 0);
        drop((g1, g2));
        assert_eq!(pool.available(), 4096);
    }
}
