//! `print`: a sniffer dipole. Packets pass through unchanged in both directions; a copy
//! of what it sees goes to a text writer (one line per frame) or to a pcap file.
//!
//! Text lines look like
//! `[west>east len=98] [eth src=02:00:00:00:00:01 dst=02:00:00:00:00:02 type=0x0800]
//! [ipv4 src=10.0.0.1 dst=10.0.0.2 proto=17] [udp sport=4000 dport=5000 len=64]`
//! (one line), with the headers parsed by `etherparse`: Ethernet II (IEEE 802.3),
//! 802.1Q VLAN, ARP (RFC 826), IPv4 (RFC 791), IPv6 (RFC 8200), UDP (RFC 768),
//! TCP (RFC 9293), ICMP (RFC 792) and ICMPv6 (RFC 4443). A frame that does not parse is
//! still printed: the layers that parsed, `[malformed LAYER: reason]`, and the first 64
//! bytes in hex; nothing panics.
//!
//! Pcap output uses the classic libpcap format (LINKTYPE_ETHERNET, microsecond
//! timestamps from the system clock, snap length 65535), readable by tcpdump, tshark and
//! the [`PcapBackend`](crate::bricks::nic::pcap::PcapBackend).
//!
//! An ethertype filter restricts what is *recorded* (everything is still forwarded).

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use etherparse::{LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, LinkSlice, TransportSlice};
use pcap_file::pcap::{PcapHeader, PcapPacket};
use pcap_file::{DataLink, Endianness, TsResolution};

use crate::brick::{Brick, Emit, Poles, Side};
use crate::burst::Burst;
use crate::error::BrickError;

/// Snap length written in pcap headers, bytes.
pub const PCAP_SNAPLEN: u32 = 65535;

/// Bytes of a malformed frame shown in hex.
pub const RAW_HEX_BYTES: usize = 64;

/// Errors when creating a [`Print`] brick.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// The pcap file cannot be created.
    #[error("cannot create pcap file {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The pcap global header cannot be written.
    #[error("cannot write the pcap header: {0}")]
    Header(#[source] pcap_file::PcapError),
}

enum Output {
    Text(BufWriter<Box<dyn Write + Send>>),
    Pcap(BufWriter<Box<dyn Write + Send>>),
}

/// The sniffer brick.
pub struct Print {
    output: Output,
    ethertypes: Vec<u16>,
    recorded: u64,
    filtered: u64,
    malformed: u64,
    write_errors: u64,
}

impl fmt::Debug for Print {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Print")
            .field(
                "output",
                &match self.output {
                    Output::Text(_) => "text",
                    Output::Pcap(_) => "pcap",
                },
            )
            .field("ethertypes", &self.ethertypes)
            .field("recorded", &self.recorded)
            .finish()
    }
}

impl Print {
    fn with_output(output: Output) -> Print {
        Print {
            output,
            ethertypes: Vec::new(),
            recorded: 0,
            filtered: 0,
            malformed: 0,
            write_errors: 0,
        }
    }

    /// Writes one text line per frame to `w` (flushed after every burst).
    pub fn text(w: impl Write + Send + 'static) -> Print {
        Print::with_output(Output::Text(BufWriter::new(Box::new(w))))
    }

    /// Writes one text line per frame to standard output.
    pub fn stdout() -> Print {
        Print::text(io::stdout())
    }

    /// Writes the frames to a new pcap file at `path` (truncated if it exists).
    ///
    /// # Errors
    /// [`PrintError::Create`] when the file cannot be created, [`PrintError::Header`]
    /// when its header cannot be written.
    pub fn pcap_file(path: impl AsRef<Path>) -> Result<Print, PrintError> {
        let path = path.as_ref();
        let f = File::create(path).map_err(|source| PrintError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Print::pcap(f)
    }

    /// Writes the frames in pcap format to `w` (flushed after every burst).
    ///
    /// # Errors
    /// [`PrintError::Header`] when the pcap header cannot be written.
    pub fn pcap(w: impl Write + Send + 'static) -> Result<Print, PrintError> {
        let mut w: BufWriter<Box<dyn Write + Send>> = BufWriter::new(Box::new(w));
        write_pcap_header(&mut w)
            .and_then(|_| w.flush().map_err(pcap_file::PcapError::IoError))
            .map_err(PrintError::Header)?;
        Ok(Print::with_output(Output::Pcap(w)))
    }

    /// Records only frames whose ethertype (after any 802.1Q tags) is in `types`
    /// (`0x0800` IPv4, `0x0806` ARP, `0x86dd` IPv6...). An empty list records everything.
    /// Frames too short to carry an ethertype are always recorded.
    pub fn with_ethertypes(mut self, types: &[u16]) -> Print {
        self.ethertypes = types.to_vec();
        self
    }

    /// Frames written to the output.
    pub fn recorded(&self) -> u64 {
        self.recorded
    }

    /// Frames not recorded because of the ethertype filter.
    pub fn filtered(&self) -> u64 {
        self.filtered
    }

    /// Frames recorded that did not parse completely (text output only: pcap output
    /// does not parse).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    fn wanted(&self, frame: &[u8]) -> bool {
        if self.ethertypes.is_empty() {
            return true;
        }
        match ethertype(frame) {
            Some(t) => self.ethertypes.contains(&t),
            None => true,
        }
    }
}

fn pcap_header() -> PcapHeader {
    PcapHeader {
        snaplen: PCAP_SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
        ..PcapHeader::default()
    }
}

/// Writes one pcap record (little-endian, microseconds) for `frame` captured at `ts`
/// (time since the Unix epoch). Frames longer than [`PCAP_SNAPLEN`] are cut.
pub(crate) fn write_pcap_record(
    w: &mut impl Write,
    ts: Duration,
    frame: &[u8],
) -> Result<(), pcap_file::PcapError> {
    let cut = &frame[..frame.len().min(PCAP_SNAPLEN as usize)];
    PcapPacket::new(ts, frame.len() as u32, cut)
        .write_to::<_, byteorder_slice::LittleEndian>(w, TsResolution::MicroSecond, PCAP_SNAPLEN)
        .map(|_| ())
}

/// The pcap global header our writers use (classic format, little-endian,
/// LINKTYPE_ETHERNET, microseconds, snap length [`PCAP_SNAPLEN`]).
pub(crate) fn write_pcap_header(w: &mut impl Write) -> Result<(), pcap_file::PcapError> {
    pcap_header().write_to(w).map(|_| ())
}

/// Ethertype after any 802.1Q / 802.1ad tags; `None` when the frame is too short.
fn ethertype(frame: &[u8]) -> Option<u16> {
    let mut off = 12;
    loop {
        let t = u16::from_be_bytes(frame.get(off..off + 2)?.try_into().ok()?);
        if t == 0x8100 || t == 0x88a8 {
            off += 4;
        } else {
            return Some(t);
        }
    }
}

struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn addr4(b: &[u8]) -> Option<std::net::Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(std::net::Ipv4Addr::from)
}

/// One-line summary of an Ethernet frame: `[eth …] [ipv4 …] [udp …]`. Never panics, for
/// any input bytes; a frame that stops parsing ends with `[malformed …] [raw …]`.
#[derive(Debug, Clone, Copy)]
pub struct FrameSummary<'a>(pub &'a [u8]);

impl fmt::Display for FrameSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frame = self.0;
        let raw = |f: &mut fmt::Formatter<'_>| {
            let shown = &frame[..frame.len().min(RAW_HEX_BYTES)];
            let more = if frame.len() > shown.len() { "…" } else { "" };
            write!(f, "[raw len={} {}{more}]", frame.len(), Hex(shown))
        };
        let pkt = match LaxSlicedPacket::from_ethernet(frame) {
            Ok(p) => p,
            Err(e) => {
                write!(f, "[malformed eth: {e}] ")?;
                return raw(f);
            }
        };
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| -> fmt::Result {
            if !std::mem::take(&mut first) {
                f.write_str(" ")?;
            }
            Ok(())
        };
        if let Some(LinkSlice::Ethernet2(eth)) = &pkt.link {
            sep(f)?;
            write!(
                f,
                "[eth src={} dst={} type=0x{:04x}]",
                Mac(eth.source()),
                Mac(eth.destination()),
                eth.ether_type().0
            )?;
        }
        for ext in &pkt.link_exts {
            sep(f)?;
            match ext {
                LaxLinkExtSlice::Vlan(v) => write!(
                    f,
                    "[vlan id={} pcp={} type=0x{:04x}]",
                    v.vlan_identifier().value(),
                    v.priority_code_point().value(),
                    v.ether_type().0
                )?,
                LaxLinkExtSlice::Macsec(_) => f.write_str("[macsec]")?,
            }
        }
        match &pkt.net {
            Some(LaxNetSlice::Ipv4(ip)) => {
                let h = ip.header();
                sep(f)?;
                write!(
                    f,
                    "[ipv4 src={} dst={} proto={} ttl={} len={}]",
                    h.source_addr(),
                    h.destination_addr(),
                    h.protocol().0,
                    h.ttl(),
                    h.total_len()
                )?;
            }
            Some(LaxNetSlice::Ipv6(ip)) => {
                let h = ip.header();
                sep(f)?;
                write!(
                    f,
                    "[ipv6 src={} dst={} next={} hlim={}]",
                    h.source_addr(),
                    h.destination_addr(),
                    h.next_header().0,
                    h.hop_limit()
                )?;
            }
            Some(LaxNetSlice::Arp(arp)) => {
                sep(f)?;
                let op = match arp.operation().0 {
                    1 => "request",
                    2 => "reply",
                    _ => "other",
                };
                write!(f, "[arp op={op}")?;
                match (
                    addr4(arp.sender_protocol_addr()),
                    addr4(arp.target_protocol_addr()),
                ) {
                    (Some(s), Some(t)) => write!(f, " spa={s} tpa={t}]")?,
                    _ => f.write_str("]")?,
                }
            }
            None => {}
        }
        match &pkt.transport {
            Some(TransportSlice::Udp(u)) => {
                sep(f)?;
                write!(
                    f,
                    "[udp sport={} dport={} len={}]",
                    u.source_port(),
                    u.destination_port(),
                    u.length()
                )?;
            }
            Some(TransportSlice::Tcp(t)) => {
                sep(f)?;
                write!(
                    f,
                    "[tcp sport={} dport={} flags={}{}{}{}{} seq={}]",
                    t.source_port(),
                    t.destination_port(),
                    if t.syn() { "S" } else { "" },
                    if t.fin() { "F" } else { "" },
                    if t.rst() { "R" } else { "" },
                    if t.psh() { "P" } else { "" },
                    if t.ack() { "A" } else { "" },
                    t.sequence_number()
                )?;
            }
            Some(TransportSlice::Icmpv4(i)) => {
                sep(f)?;
                write!(f, "[icmp type={} code={}]", i.type_u8(), i.code_u8())?;
            }
            Some(TransportSlice::Icmpv6(i)) => {
                sep(f)?;
                write!(f, "[icmpv6 type={} code={}]", i.type_u8(), i.code_u8())?;
            }
            Some(TransportSlice::Igmp(i)) => {
                sep(f)?;
                write!(f, "[igmp type={:#04x}]", i.type_u8())?;
            }
            None => {}
        }
        if let Some((err, layer)) = &pkt.stop_err {
            sep(f)?;
            write!(f, "[malformed {layer}: {err}] ")?;
            raw(f)?;
        }
        Ok(())
    }
}

impl Print {
    fn record(&mut self, from: Side, pkts: &Burst) -> io::Result<()> {
        let ts = match self.output {
            Output::Pcap(_) => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
            Output::Text(_) => Duration::ZERO,
        };
        let mut result = Ok(());
        for p in pkts {
            let frame = p.data();
            if !self.wanted(frame) {
                self.filtered += 1;
                continue;
            }
            let r = match &mut self.output {
                Output::Text(w) => {
                    if LaxSlicedPacket::from_ethernet(frame).map_or(true, |s| s.stop_err.is_some())
                    {
                        self.malformed += 1;
                    }
                    writeln!(
                        w,
                        "[{from}>{} len={}] {}",
                        from.opposite(),
                        frame.len(),
                        FrameSummary(frame)
                    )
                }
                Output::Pcap(w) => write_pcap_record(w, ts, frame).map_err(|e| match e {
                    pcap_file::PcapError::IoError(e) => e,
                    other => io::Error::other(other.to_string()),
                }),
            };
            match r {
                Ok(()) => self.recorded += 1,
                Err(e) => {
                    self.write_errors += 1;
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        let flushed = match &mut self.output {
            Output::Text(w) => w.flush(),
            Output::Pcap(w) => w.flush(),
        };
        result.and(flushed)
    }
}

impl Brick for Print {
    fn kind(&self) -> &'static str {
        "print"
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
    ) -> Result<(), BrickError> {
        let r = self.record(from, &pkts);
        if !pkts.is_empty() {
            out.send(from.opposite(), 0, pkts);
        }
        r.map_err(|e| BrickError::io("print: write", e))
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("recorded", self.recorded),
            ("filtered", self.filtered),
            ("malformed", self.malformed),
            ("write_errors", self.write_errors),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use etherparse::PacketBuilder;

    use super::*;
    use crate::bricks::{Collect, PacketGen};
    use crate::{Graph, Pool, PoolConfig};

    /// A writer the test can read while the brick owns a clone.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    const SRC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const DST: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn udp_frame() -> Vec<u8> {
        let b = PacketBuilder::ethernet2(SRC, DST)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(4000, 5000);
        let mut v = Vec::new();
        b.write(&mut v, &[0xab; 20]).unwrap();
        v
    }

    fn tcp6_frame() -> Vec<u8> {
        let b = PacketBuilder::ethernet2(SRC, DST)
            .ipv6([0xfe; 16], [0xfd; 16], 32)
            .tcp(1234, 80, 77, 1024)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    fn arp_frame() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&SRC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&SRC);
        f.extend_from_slice(&[10, 0, 0, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f
    }

    fn pool() -> Pool {
        Pool::new(PoolConfig {
            frame_count: 256,
            ..Default::default()
        })
        .unwrap()
    }

    fn run(print: Print, frames: Vec<Vec<u8>>) -> Graph {
        let pool = pool();
        let n = frames.len() as u64;
        let mut g = Graph::new("print");
        g.add("gen", PacketGen::new(pool, frames, n)).unwrap();
        g.add("print", print).unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link_chain(&["gen", "print", "sink"]).unwrap();
        g.poll().unwrap();
        g
    }

    #[test]
    fn prints_one_line_per_frame_and_passes_them_through() {
        let out = Shared::default();
        let g = run(
            Print::text(out.clone()),
            vec![udp_frame(), tcp6_frame(), arp_frame()],
        );
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0],
            "[west>east len=62] [eth src=02:00:00:00:00:01 dst=02:00:00:00:00:02 \
             type=0x0800] [ipv4 src=10.0.0.1 dst=10.0.0.2 proto=17 ttl=64 len=48] \
             [udp sport=4000 dport=5000 len=28]"
        );
        assert!(
            lines[1].contains("[ipv6 src=fefe:fefe:fefe:fefe:fefe:fefe:fefe:fefe")
                && lines[1].contains("[tcp sport=1234 dport=80 flags=S seq=77]"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("type=0x0806] [arp op=request spa=10.0.0.1 tpa=10.0.0.2]"),
            "{}",
            lines[2]
        );
        let sink = g.get::<Collect>("sink").unwrap();
        assert_eq!(sink.packets(Side::West), 3);
        assert_eq!(sink.last(Side::West).unwrap()[0].data(), &udp_frame()[..]);
        assert_eq!(g.get::<Print>("print").unwrap().recorded(), 3);
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn ethertype_filter_records_only_those_but_forwards_all() {
        let out = Shared::default();
        let g = run(
            Print::text(out.clone()).with_ethertypes(&[0x0806]),
            vec![udp_frame(), arp_frame(), udp_frame()],
        );
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("[arp op=request"));
        let p = g.get::<Print>("print").unwrap();
        assert_eq!((p.recorded(), p.filtered()), (1, 2));
        assert_eq!(g.get::<Collect>("sink").unwrap().packets(Side::West), 3);
        // A filter that records nothing still forwards and emits no empty burst.
        let out = Shared::default();
        let g = run(
            Print::text(out.clone()).with_ethertypes(&[0x88cc]),
            vec![udp_frame(); 5],
        );
        assert!(out.text().is_empty());
        assert_eq!(g.get::<Collect>("sink").unwrap().packets(Side::West), 5);
        assert_eq!(g.empty_bursts(), 0);
    }

    #[test]
    fn malformed_frames_are_printed_raw() {
        let mut short_ip = udp_frame();
        short_ip.truncate(20); // Ethernet + 6 bytes of IPv4
        let out = Shared::default();
        let g = run(
            Print::text(out.clone()),
            vec![vec![0xde, 0xad], short_ip.clone(), vec![]],
        );
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("[west>east len=2] [malformed eth:")
                && lines[0].ends_with("[raw len=2 dead]"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("[eth src=02:00:00:00:00:01"),
            "{}",
            lines[1]
        );
        assert!(lines[1].contains("[malformed"), "{}", lines[1]);
        assert!(lines[1].contains(&format!("[raw len=20 {}]", Hex(&short_ip))));
        assert!(lines[2].contains("[raw len=0 ]"), "{}", lines[2]);
        assert_eq!(g.get::<Print>("print").unwrap().malformed(), 3);
    }

    #[test]
    fn summary_never_panics_on_random_bytes() {
        // A small xorshift generator: deterministic, no dependency.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = [udp_frame(), tcp6_frame(), arp_frame()];
        let mut s = String::new();
        for i in 0..20_000 {
            let mut f = base[i % 3].clone();
            let len = (next() % (f.len() as u64 + 8)) as usize;
            f.resize(len, 0);
            for _ in 0..(next() % 4) {
                if !f.is_empty() {
                    let at = (next() % f.len() as u64) as usize;
                    f[at] = next() as u8;
                }
            }
            s.clear();
            use std::fmt::Write as _;
            write!(s, "{}", FrameSummary(&f)).unwrap();
            assert!(!s.is_empty());
        }
    }

    /// The fuzz target's seed frames (`fuzz/seeds/print_summary`) give the expected
    /// summaries.
    #[test]
    fn fuzz_seeds_summarize() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/print_summary");
        let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
        let s = FrameSummary(&read("seed_udp4")).to_string();
        assert!(s.ends_with("[udp sport=4000 dport=5000 len=13]"), "{s}");
        let s = FrameSummary(&read("seed_vlan_udp4")).to_string();
        assert!(s.contains("[vlan id=42 pcp=0 type=0x0800]"), "{s}");
        let s = FrameSummary(&read("seed_arp")).to_string();
        assert!(
            s.contains("[arp op=request spa=10.0.0.1 tpa=10.0.0.2]"),
            "{s}"
        );
        let s = FrameSummary(&read("seed_short")).to_string();
        assert!(
            s.contains("[malformed") && s.contains("[raw len=20 "),
            "{s}"
        );
    }

    #[test]
    fn pcap_output_has_a_header_and_one_record_per_frame() {
        let out = Shared::default();
        let frames = vec![udp_frame(), arp_frame()];
        let _g = run(Print::pcap(out.clone()).unwrap(), frames.clone());
        let bytes = out.0.lock().unwrap().clone();
        let mut r = pcap_file::pcap::PcapReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header().datalink, DataLink::ETHERNET);
        let mut got = Vec::new();
        while let Some(p) = r.next_packet() {
            let p = p.unwrap();
            assert!(p.timestamp > Duration::from_secs(1_600_000_000));
            assert_eq!(p.orig_len as usize, p.data.len());
            got.push(p.data.into_owned());
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn pcap_file_errors_name_the_file() {
        let e = Print::pcap_file("/nonexistent-dir/x.pcap").unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x.pcap"), "{e}");
    }
}
