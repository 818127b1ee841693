//! `rxtx`: a pollable monopole whose input and output are user callbacks.
//!
//! When the graph polls it, the *rx* callback fills a burst (up to 64 packets) that enters
//! the graph; every burst the graph sends to it is handed to the *tx* callback. This is
//! how an application plugs its own packet source or sink into a graph (packetgraph's
//! `pg_rxtx`).

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;

/// Produces packets when polled: push at most `BURST_SIZE - burst.len()` packets into the
/// burst (more cannot be pushed). Returning an error reports it to the graph; packets
/// already pushed are still sent.
pub type RxFn = Box<dyn FnMut(&mut Burst) -> Result<(), BrickError> + Send>;

/// Receives the bursts the graph sends to the brick, with the side they arrived on.
/// The callback owns the burst: packets it does not keep go back to their pool.
pub type TxFn = Box<dyn FnMut(Side, Burst) -> Result<(), BrickError> + Send>;

/// A brick driven by user callbacks.
pub struct RxTx {
    rx: Option<RxFn>,
    tx: Option<TxFn>,
    rx_packets: u64,
    tx_packets: u64,
    tx_dropped: u64,
}

impl std::fmt::Debug for RxTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxTx")
            .field("rx", &self.rx.is_some())
            .field("tx", &self.tx.is_some())
            .field("rx_packets", &self.rx_packets)
            .field("tx_packets", &self.tx_packets)
            .finish()
    }
}

impl RxTx {
    /// A brick with both callbacks.
    pub fn new(
        rx: impl FnMut(&mut Burst) -> Result<(), BrickError> + Send + 'static,
        tx: impl FnMut(Side, Burst) -> Result<(), BrickError> + Send + 'static,
    ) -> RxTx {
        RxTx {
            rx: Some(Box::new(rx)),
            tx: Some(Box::new(tx)),
            rx_packets: 0,
            tx_packets: 0,
            tx_dropped: 0,
        }
    }

    /// A source only: what the graph sends to it is dropped and counted.
    pub fn rx_only(rx: impl FnMut(&mut Burst) -> Result<(), BrickError> + Send + 'static) -> RxTx {
        RxTx {
            tx: None,
            ..RxTx::new(rx, |_, _| Ok(()))
        }
    }

    /// A sink only: polling it produces nothing.
    pub fn tx_only(tx: impl FnMut(Side, Burst) -> Result<(), BrickError> + Send + 'static) -> RxTx {
        RxTx {
            rx: None,
            ..RxTx::new(|_| Ok(()), tx)
        }
    }

    /// Packets the rx callback produced.
    pub fn rx_packets(&self) -> u64 {
        self.rx_packets
    }

    /// Packets handed to the tx callback.
    pub fn tx_packets(&self) -> u64 {
        self.tx_packets
    }
}

impl Brick for RxTx {
    fn kind(&self) -> &'static str {
        "rxtx"
    }

    fn poles(&self) -> Poles {
        Poles::Monopole
    }

    fn pollable(&self) -> bool {
        self.rx.is_some()
    }

    fn burst(
        &mut self,
        from: Side,
        _edge: usize,
        pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        match &mut self.tx {
            Some(tx) => {
                self.tx_packets += pkts.len() as u64;
                tx(from, pkts)
            }
            None => {
                self.tx_dropped += pkts.len() as u64;
                Ok(())
            }
        }
    }

    fn poll(&mut self, out: &mut Emit) -> Result<usize, BrickError> {
        let Some(rx) = &mut self.rx else {
            return Ok(0);
        };
        let mut b = Burst::new();
        let r = rx(&mut b);
        let n = b.len();
        self.rx_packets += n as u64;
        if n > 0 {
            out.send_peer(b);
        }
        r.map(|()| n)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_packets", self.rx_packets),
            ("tx_packets", self.tx_packets),
            ("tx_dropped", self.tx_dropped),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::bricks::Nop;
    use crate::{Graph, Pool, PoolConfig};

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn rx_callback_feeds_the_graph_and_tx_callback_receives_it() {
        let pool = pool();
        let p2 = pool.clone();
        let mut next = 0u8;
        let received = Arc::new(Mutex::new(Vec::<(Side, Vec<u8>)>::new()));
        let r2 = received.clone();
        let mut g = Graph::new("rxtx");
        g.add(
            "src",
            RxTx::rx_only(move |b| {
                // Three packets per poll, for two polls.
                for _ in 0..3 {
                    if next < 6 {
                        b.push(p2.packet_from(&[next; 60]).unwrap()).unwrap();
                        next += 1;
                    }
                }
                Ok(())
            }),
        )
        .unwrap();
        g.add("nop", Nop::new()).unwrap();
        g.add(
            "dst",
            RxTx::tx_only(move |side, b| {
                let mut r = r2.lock().unwrap();
                r.extend(b.iter().map(|p| (side, p.data().to_vec())));
                Ok(())
            }),
        )
        .unwrap();
        g.link_chain(&["src", "nop", "dst"]).unwrap();
        g.sanity_check().unwrap();
        assert_eq!(g.poll().unwrap(), 3);
        assert_eq!(g.poll().unwrap(), 3);
        assert_eq!(g.poll().unwrap(), 0);
        let r = received.lock().unwrap();
        assert_eq!(r.len(), 6);
        for (i, (side, data)) in r.iter().enumerate() {
            assert_eq!(*side, Side::West);
            assert_eq!(data, &vec![i as u8; 60]);
        }
        assert_eq!(g.get::<RxTx>("src").unwrap().rx_packets(), 6);
        assert_eq!(g.get::<RxTx>("dst").unwrap().tx_packets(), 6);
        assert!(!g.get::<RxTx>("dst").unwrap().pollable());
        assert_eq!(g.empty_bursts(), 0);
        drop(g);
        assert_eq!(pool.available(), 256);
    }

    #[test]
    fn an_empty_rx_never_emits_an_empty_burst_and_errors_are_reported() {
        let mut calls = 0;
        let mut b = RxTx::rx_only(move |_| {
            calls += 1;
            if calls == 2 {
                Err(BrickError::State("source gone".into()))
            } else {
                Ok(())
            }
        });
        let mut out = Emit::new();
        assert_eq!(b.poll(&mut out).unwrap(), 0);
        let e = b.poll(&mut out).unwrap_err();
        assert!(e.to_string().contains("source gone"));
        assert!(out.pending().is_empty());
        assert_eq!(out.empty_bursts(), 0);
        // A sink-only brick drops nothing silently: it hands everything to the callback.
        let pool = pool();
        let mut n = 0;
        let mut sink = RxTx::tx_only(move |_, b| {
            n += b.len();
            assert!(n <= 2);
            Ok(())
        });
        let mut burst = Burst::new();
        burst.push(pool.packet_from(&[1; 10]).unwrap()).unwrap();
        burst.push(pool.packet_from(&[2; 10]).unwrap()).unwrap();
        sink.burst(Side::East, 0, burst, &mut out).unwrap();
        assert_eq!(sink.tx_packets(), 2);
        assert_eq!(sink.poll(&mut out).unwrap(), 0);
        assert_eq!(out.empty_bursts(), 0);
        assert_eq!(pool.available(), 256);
    }
}
