//! `nic`: the brick for a network interface, with pluggable backends
//! (pcap file, AF_XDP socket, DPDK port).
//!
//! The brick is a pollable monopole: a poll reads up to one burst from the backend and
//! sends it to the graph; a burst from the graph is transmitted by the backend.

pub mod afxdp;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod pcap;

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;

/// A NIC backend: where a [`Nic`] brick reads and writes frames.
pub trait NicBackend: Send {
    /// Backend name for logs and counters (`"pcap"`, `"af_xdp"`, `"dpdk"`).
    fn kind(&self) -> &'static str;

    /// Reads up to `BURST_SIZE - out.len()` frames into `out`; returns how many were read.
    ///
    /// # Errors
    /// [`BrickError`] when the device failed (not when nothing was there: that is `Ok(0)`).
    fn rx_burst(&mut self, out: &mut Burst) -> Result<usize, BrickError>;

    /// Transmits `pkts`; frames that cannot be sent are dropped and counted by the
    /// backend. Returns how many were handed to the device.
    ///
    /// # Errors
    /// [`BrickError`] when the device failed.
    fn tx_burst(&mut self, pkts: Burst) -> Result<usize, BrickError>;

    /// Backend counters (`("rx_ring_full", n)`...).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The NIC brick: a pollable monopole around a [`NicBackend`].
pub struct Nic {
    backend: Box<dyn NicBackend>,
    rx_packets: u64,
    tx_packets: u64,
    tx_dropped: u64,
}

impl Nic {
    /// A NIC brick on `backend`.
    pub fn new(backend: impl NicBackend + 'static) -> Nic {
        Nic::from_boxed(Box::new(backend))
    }

    /// A NIC brick on an already boxed backend.
    pub fn from_boxed(backend: Box<dyn NicBackend>) -> Nic {
        Nic {
            backend,
            rx_packets: 0,
            tx_packets: 0,
            tx_dropped: 0,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &dyn NicBackend {
        self.backend.as_ref()
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut dyn NicBackend {
        self.backend.as_mut()
    }
}

impl Brick for Nic {
    fn kind(&self) -> &'static str {
        "nic"
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
        let n = pkts.len();
        let sent = self.backend.tx_burst(pkts)?;
        self.tx_packets += sent as u64;
        self.tx_dropped += (n - sent.min(n)) as u64;
        Ok(())
    }

    fn poll(&mut self, out: &mut Emit) -> Result<usize, BrickError> {
        let mut b = Burst::new();
        let n = self.backend.rx_burst(&mut b)?;
        self.rx_packets += n as u64;
        if !b.is_empty() {
            out.send_peer(b);
        }
        Ok(n)
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = vec![
            ("rx_packets", self.rx_packets),
            ("tx_packets", self.tx_packets),
            ("tx_dropped", self.tx_dropped),
        ];
        c.extend(self.backend.counters());
        c
    }
}
