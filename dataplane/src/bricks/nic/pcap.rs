//! The `pcap` NIC backend: frames come from a capture file and go to another, for offline
//! runs and tests (DPDK's `net_pcap` equivalent).
//!
//! *Receive*: frames are read in file order from a libpcap file (`.pcap`, micro- or
//! nanosecond, either byte order) or a pcapng file (Enhanced, Simple and obsolete Packet
//! blocks), detected from the file's magic number. Only Ethernet frames
//! (LINKTYPE_ETHERNET) are read: packets of other link types are skipped and counted.
//! Timestamps are ignored: a poll reads up to a full burst. At the end of the file the
//! backend reads nothing more, or starts over when `repeat` is on.
//!
//! *Transmit*: frames sent to the NIC are appended to a libpcap file (LINKTYPE_ETHERNET,
//! microsecond timestamps from the system clock), flushed after every burst.
//!
//! Files are read and written with the `pcap-file` crate (whose reader keeps an 8 MB
//! buffer per open capture).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, PcapError};

use super::NicBackend;
use crate::bricks::print::{write_pcap_header, write_pcap_record};
use crate::burst::{BURST_SIZE, Burst};
use crate::error::BrickError;
use crate::packet::{Packet, Pool};

/// Errors of the pcap backend.
#[derive(Debug, thiserror::Error)]
pub enum PcapNicError {
    /// The capture file cannot be opened.
    #[error("cannot open capture file {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not a pcap or pcapng capture, or is corrupt.
    #[error("{path} is not a valid pcap/pcapng file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A pcap file whose link type is not Ethernet.
    #[error("{path} has link type {linktype}, only Ethernet (LINKTYPE_ETHERNET = 1) is supported")]
    LinkType {
        /// The file.
        path: PathBuf,
        /// The file's link type.
        linktype: String,
    },
    /// The output file cannot be created or its header written.
    #[error("cannot create capture file {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl From<PcapNicError> for BrickError {
    fn from(e: PcapNicError) -> BrickError {
        match e {
            PcapNicError::Open { path, source } => {
                BrickError::io(format!("open {}", path.display()), source)
            }
            PcapNicError::Create { path, source } => {
                BrickError::io(format!("create {}", path.display()), source)
            }
            other => BrickError::Config(other.to_string()),
        }
    }
}

/// First four bytes of a pcapng file (Section Header Block type).
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

enum Reader {
    Pcap(PcapReader<Input>),
    PcapNg {
        reader: PcapNgReader<Input>,
        /// Link type of each interface of the current section, by interface id.
        linktypes: Vec<DataLink>,
    },
}

/// Where capture bytes come from: a file, or any reader (tests, fuzzing).
type Input = Box<dyn BufRead + Send>;

/// Label used in errors for captures that are not files.
const MEMORY: &str = "<reader>";

fn open_reader(path: &Path) -> Result<Reader, PcapNicError> {
    let f = File::open(path).map_err(|source| PcapNicError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    reader_from(Box::new(BufReader::new(f)), path)
}

/// Detects pcap or pcapng from the magic number and reads the file header. `path` only
/// names the capture in errors.
fn reader_from(mut r: Input, path: &Path) -> Result<Reader, PcapNicError> {
    let format = |reason: String| PcapNicError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let head = r.fill_buf().map_err(|source| PcapNicError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if head.len() < 4 {
        return Err(format(format!(
            "{} bytes, too short for a capture header",
            head.len()
        )));
    }
    if head[..4] == PCAPNG_MAGIC {
        let reader = PcapNgReader::new(r).map_err(|e| format(e.to_string()))?;
        Ok(Reader::PcapNg {
            reader,
            linktypes: Vec::new(),
        })
    } else {
        let reader = PcapReader::new(r).map_err(|e| format(e.to_string()))?;
        let dl = reader.header().datalink;
        if dl != DataLink::ETHERNET {
            return Err(PcapNicError::LinkType {
                path: path.to_path_buf(),
                linktype: format!("{dl:?}"),
            });
        }
        Ok(Reader::Pcap(reader))
    }
}

/// What reading one record gave.
enum Record<T> {
    /// An Ethernet frame, as returned by the caller's closure.
    Frame(T),
    /// A record that is not a frame (pcapng metadata: `false`) or a packet of another
    /// link type (`true`).
    Skip(bool),
    /// End of file.
    End,
}

impl Reader {
    /// Reads the next record; for an Ethernet frame, calls `f` with its bytes.
    fn next<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Result<Record<T>, PcapError> {
        match self {
            Reader::Pcap(r) => match r.next_packet() {
                None => Ok(Record::End),
                Some(Err(e)) => Err(e),
                Some(Ok(pkt)) => Ok(Record::Frame(f(&pkt.data))),
            },
            Reader::PcapNg { reader, linktypes } => {
                let block = match reader.next_block() {
                    None => return Ok(Record::End),
                    Some(b) => b?,
                };
                let ethernet =
                    |id: u32| linktypes.get(id as usize).copied() == Some(DataLink::ETHERNET);
                match block {
                    Block::SectionHeader(_) => {
                        linktypes.clear();
                        Ok(Record::Skip(false))
                    }
                    Block::InterfaceDescription(idb) => {
                        linktypes.push(idb.linktype);
                        Ok(Record::Skip(false))
                    }
                    Block::EnhancedPacket(epb) if ethernet(epb.interface_id) => {
                        Ok(Record::Frame(f(&epb.data)))
                    }
                    Block::SimplePacket(spb) if ethernet(0) => Ok(Record::Frame(f(&spb.data))),
                    Block::Packet(pb) if ethernet(u32::from(pb.interface_id)) => {
                        Ok(Record::Frame(f(&pb.data)))
                    }
                    Block::EnhancedPacket(_) | Block::SimplePacket(_) | Block::Packet(_) => {
                        Ok(Record::Skip(true))
                    }
                    _ => Ok(Record::Skip(false)),
                }
            }
        }
    }
}

/// Counters of a [`PcapBackend`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PcapCounters {
    /// Frames read from the input file.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Packets skipped because their link type is not Ethernet.
    pub rx_not_ethernet: u64,
    /// Frames skipped because they do not fit in a pool frame.
    pub rx_too_long: u64,
    /// Times the input file was read again from the start (`repeat`).
    pub rx_rewinds: u64,
    /// Frames written to the output file.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Frames dropped because there is no output file.
    pub tx_no_output: u64,
    /// Frames that could not be written.
    pub tx_errors: u64,
}

/// A NIC backend on capture files.
pub struct PcapBackend {
    pool: Pool,
    rx_path: Option<PathBuf>,
    reader: Option<Reader>,
    repeat: bool,
    /// Frames read since the file was last opened (a repeat of an empty file stops).
    frames_this_pass: u64,
    rx_done: bool,
    tx_path: Option<PathBuf>,
    writer: Option<BufWriter<File>>,
    spare: Option<Packet>,
    counters: PcapCounters,
}

impl std::fmt::Debug for PcapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapBackend")
            .field("rx", &self.rx_path)
            .field("tx", &self.tx_path)
            .field("counters", &self.counters)
            .finish()
    }
}

impl PcapBackend {
    /// A backend with neither input nor output yet; received frames are stored in
    /// packets of `pool`.
    pub fn new(pool: Pool) -> PcapBackend {
        PcapBackend {
            pool,
            rx_path: None,
            reader: None,
            repeat: false,
            frames_this_pass: 0,
            rx_done: true,
            tx_path: None,
            writer: None,
            spare: None,
            counters: PcapCounters::default(),
        }
    }

    /// Reads frames from the pcap or pcapng file at `path`.
    ///
    /// # Errors
    /// [`PcapNicError::Open`], [`PcapNicError::Format`] (not a capture file),
    /// [`PcapNicError::LinkType`] (a pcap file of another link type).
    pub fn rx_file(mut self, path: impl AsRef<Path>) -> Result<PcapBackend, PcapNicError> {
        let path = path.as_ref().to_path_buf();
        self.reader = Some(open_reader(&path)?);
        self.rx_path = Some(path);
        self.rx_done = false;
        self.frames_this_pass = 0;
        Ok(self)
    }

    /// Reads frames from a pcap or pcapng stream instead of a file (a pipe, bytes in
    /// memory). `repeat` has no effect: a stream cannot be read again.
    ///
    /// # Errors
    /// [`PcapNicError::Format`], [`PcapNicError::LinkType`].
    pub fn rx_reader(
        mut self,
        reader: impl std::io::Read + Send + 'static,
    ) -> Result<PcapBackend, PcapNicError> {
        self.reader = Some(reader_from(
            Box::new(BufReader::new(reader)),
            Path::new(MEMORY),
        )?);
        self.rx_path = None;
        self.rx_done = false;
        self.frames_this_pass = 0;
        Ok(self)
    }

    /// Writes the frames sent to the NIC to a new pcap file at `path` (truncated if it
    /// exists).
    ///
    /// # Errors
    /// [`PcapNicError::Create`].
    pub fn tx_file(mut self, path: impl AsRef<Path>) -> Result<PcapBackend, PcapNicError> {
        let path = path.as_ref().to_path_buf();
        let create = |source| PcapNicError::Create {
            path: path.clone(),
            source,
        };
        let f = File::create(&path).map_err(create)?;
        let mut w = BufWriter::with_capacity(64 * 1024, f);
        write_pcap_header(&mut w).map_err(|e| create(io::Error::other(e.to_string())))?;
        w.flush().map_err(create)?;
        self.writer = Some(w);
        self.tx_path = Some(path);
        Ok(self)
    }

    /// When `true`, the input file is read again from the start after its last frame
    /// (an endless source, like `net_pcap`'s `infinite_rx`).
    pub fn repeat(mut self, yes: bool) -> PcapBackend {
        self.repeat = yes;
        self
    }

    /// True when the input is exhausted (or there is none).
    pub fn rx_done(&self) -> bool {
        self.rx_done
    }

    /// The backend's counters.
    pub fn stats(&self) -> PcapCounters {
        self.counters
    }

    fn rewind(&mut self) -> Result<bool, BrickError> {
        let Some(path) = self.rx_path.clone() else {
            return Ok(false);
        };
        if !self.repeat || self.frames_this_pass == 0 {
            return Ok(false);
        }
        self.reader = Some(open_reader(&path)?);
        self.frames_this_pass = 0;
        self.counters.rx_rewinds += 1;
        Ok(true)
    }
}

impl NicBackend for PcapBackend {
    fn kind(&self) -> &'static str {
        "pcap"
    }

    fn rx_burst(&mut self, out: &mut Burst) -> Result<usize, BrickError> {
        let mut n = 0;
        while !self.rx_done && out.len() < BURST_SIZE {
            let Some(p) = self.spare.take().or_else(|| self.pool.alloc()) else {
                break; // pool empty: read on at the next poll
            };
            let Some(reader) = self.reader.as_mut() else {
                self.spare = Some(p);
                self.rx_done = true;
                break;
            };
            let mut slot = Some(p);
            let rec = reader.next(|data| {
                let mut p = slot.take().expect("called at most once");
                p.reset();
                match p.append(data.len()) {
                    Ok(buf) => {
                        buf.copy_from_slice(data);
                        Ok(p)
                    }
                    Err(_) => Err(p),
                }
            });
            match rec {
                Ok(Record::Frame(Ok(p))) => {
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += p.len() as u64;
                    self.frames_this_pass += 1;
                    n += 1;
                    let _ = out.push(p);
                }
                Ok(Record::Frame(Err(p))) => {
                    self.counters.rx_too_long += 1;
                    self.spare = Some(p);
                }
                Ok(Record::Skip(not_ethernet)) => {
                    self.counters.rx_not_ethernet += u64::from(not_ethernet);
                    self.spare = slot;
                }
                Ok(Record::End) => {
                    self.spare = slot;
                    if !self.rewind()? {
                        self.rx_done = true;
                    }
                }
                Err(e) => {
                    self.rx_done = true;
                    let path = self.rx_path.as_deref().unwrap_or(Path::new(MEMORY));
                    return Err(BrickError::Config(format!(
                        "{}: corrupt record after {} frames: {e}",
                        path.display(),
                        self.counters.rx_frames
                    )));
                }
            }
        }
        Ok(n)
    }

    fn tx_burst(&mut self, pkts: Burst) -> Result<usize, BrickError> {
        let Some(w) = self.writer.as_mut() else {
            self.counters.tx_no_output += pkts.len() as u64;
            return Ok(0);
        };
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut sent = 0;
        let mut err = None;
        for p in &pkts {
            match write_pcap_record(w, ts, p.data()) {
                Ok(()) => {
                    sent += 1;
                    self.counters.tx_frames += 1;
                    self.counters.tx_bytes += p.len() as u64;
                }
                Err(e) => {
                    self.counters.tx_errors += 1;
                    err.get_or_insert(e.to_string());
                }
            }
        }
        let path = self.tx_path.as_deref().unwrap_or(Path::new("?"));
        w.flush()
            .map_err(|e| BrickError::io(format!("write {}", path.display()), e))?;
        match err {
            Some(e) => Err(BrickError::io(
                format!("write {}", path.display()),
                io::Error::other(e),
            )),
            None => Ok(sent),
        }
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = &self.counters;
        vec![
            ("rx_frames", c.rx_frames),
            ("rx_bytes", c.rx_bytes),
            ("rx_not_ethernet", c.rx_not_ethernet),
            ("rx_too_long", c.rx_too_long),
            ("rx_rewinds", c.rx_rewinds),
            ("tx_frames", c.tx_frames),
            ("tx_bytes", c.tx_bytes),
            ("tx_no_output", c.tx_no_output),
            ("tx_errors", c.tx_errors),
        ]
    }
}

/// Reads every Ethernet frame of a pcap or pcapng file (a helper for tests and tools).
///
/// # Errors
/// As [`PcapBackend::rx_file`], and [`PcapNicError::Format`] for a corrupt record.
pub fn read_frames(path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>, PcapNicError> {
    let path = path.as_ref();
    collect_frames(open_reader(path)?, path)
}

/// Reads every Ethernet frame of a pcap or pcapng capture held in memory (used by the
/// fuzz target: any bytes give frames or an error, never a panic).
///
/// # Errors
/// [`PcapNicError::Format`] / [`PcapNicError::LinkType`] for bytes that are not a valid
/// Ethernet capture.
pub fn read_frames_from_bytes(bytes: &[u8]) -> Result<Vec<Vec<u8>>, PcapNicError> {
    let input: Input = Box::new(std::io::Cursor::new(bytes.to_vec()));
    collect_frames(reader_from(input, Path::new(MEMORY))?, Path::new(MEMORY))
}

fn collect_frames(mut r: Reader, path: &Path) -> Result<Vec<Vec<u8>>, PcapNicError> {
    let mut frames = Vec::new();
    loop {
        match r.next(<[u8]>::to_vec) {
            Ok(Record::Frame(f)) => frames.push(f),
            Ok(Record::Skip(_)) => {}
            Ok(Record::End) => return Ok(frames),
            Err(e) => {
                return Err(PcapNicError::Format {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brick::{Brick, Emit, Side};
    use crate::bricks::{Collect, Nic, PacketGen};
    use crate::{Graph, PoolConfig};

    fn pool(frames: u32) -> Pool {
        Pool::new(PoolConfig {
            frame_count: frames,
            ..Default::default()
        })
        .unwrap()
    }

    /// A file path in the system temporary directory, removed when dropped.
    struct TmpFile(PathBuf);

    impl std::ops::Deref for TmpFile {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TmpFile {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn tmp(name: &str) -> TmpFile {
        TmpFile(std::env::temp_dir().join(format!("pg-pcap-{}-{name}", std::process::id())))
    }

    fn frame(i: u32, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
        f[14..18].copy_from_slice(&i.to_be_bytes());
        f
    }

    /// `gen → nic(pcap tx)`, then a second NIC reads the file back into `collect`.
    #[test]
    fn frames_written_are_read_back_identical_and_in_order() {
        let path = tmp("roundtrip.pcap");
        let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(i, 60 + i as usize)).collect();
        let pool = pool(256);
        let mut g = Graph::new("w");
        g.add("gen", PacketGen::new(pool.clone(), frames.clone(), 100))
            .unwrap();
        g.add(
            "nic",
            Nic::new(PcapBackend::new(pool.clone()).tx_file(&path).unwrap()),
        )
        .unwrap();
        g.link("gen", "nic").unwrap();
        g.poll().unwrap();
        g.poll().unwrap();
        let nic = g.get::<Nic>("nic").unwrap();
        assert!(nic.counters().contains(&("tx_frames", 100)));
        assert_eq!(read_frames(&path).unwrap(), frames);

        let mut g = Graph::new("r");
        g.add(
            "nic",
            Nic::new(PcapBackend::new(pool.clone()).rx_file(&path).unwrap()),
        )
        .unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link("nic", "sink").unwrap();
        assert_eq!(g.poll().unwrap(), 64);
        assert_eq!(g.poll().unwrap(), 36);
        assert_eq!(g.poll().unwrap(), 0);
        let sink = g.get::<Collect>("sink").unwrap();
        assert_eq!(sink.packets(Side::West), 100);
        let last: Vec<Vec<u8>> = sink
            .last(Side::West)
            .unwrap()
            .iter()
            .map(|p| p.data().to_vec())
            .collect();
        assert_eq!(last, frames[64..]);
        assert_eq!(g.empty_bursts(), 0);
        drop(g);
        assert_eq!(pool.available(), 256);
    }

    #[test]
    fn repeat_reads_the_file_again_and_an_exhausted_input_emits_nothing() {
        let path = tmp("repeat.pcap");
        let mut w = BufWriter::new(File::create(&path).unwrap());
        write_pcap_header(&mut w).unwrap();
        for i in 0..3 {
            write_pcap_record(&mut w, std::time::Duration::from_secs(1), &frame(i, 60)).unwrap();
        }
        drop(w);
        let pool = pool(64);
        let mut b = PcapBackend::new(pool.clone())
            .rx_file(&path)
            .unwrap()
            .repeat(true);
        let mut burst = Burst::new();
        assert_eq!(b.rx_burst(&mut burst).unwrap(), 64);
        assert_eq!(burst[3].data(), &frame(0, 60)[..]);
        assert!(b.stats().rx_rewinds >= 21);
        drop(burst);

        let mut nic = Nic::new(PcapBackend::new(pool.clone()).rx_file(&path).unwrap());
        let mut out = Emit::new();
        assert_eq!(nic.poll(&mut out).unwrap(), 3);
        assert_eq!(nic.poll(&mut out).unwrap(), 0);
        assert_eq!(nic.poll(&mut out).unwrap(), 0);
        assert_eq!(out.pending().len(), 1);
        assert_eq!(out.empty_bursts(), 0);
        // No output file: frames sent to the NIC are dropped and counted.
        let mut burst = Burst::new();
        burst
            .push(pool.packet_from(&frame(9, 60)).unwrap())
            .unwrap();
        nic.burst(Side::West, 0, burst, &mut out).unwrap();
        assert!(nic.counters().contains(&("tx_no_output", 1)));
        assert!(nic.counters().contains(&("tx_dropped", 1)));
    }

    /// Corrupted pcap and pcapng files (random bytes flipped, cut anywhere) never make
    /// the backend panic: whole frames are read, then an error or the end.
    #[test]
    fn corrupted_files_never_panic() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut pcap = Vec::new();
        write_pcap_header(&mut pcap).unwrap();
        for i in 0..4 {
            write_pcap_record(
                &mut pcap,
                std::time::Duration::from_secs(1),
                &frame(i, 60 + 20 * i as usize),
            )
            .unwrap();
        }
        // A minimal pcapng: SHB, IDB (Ethernet), one EPB of 60 bytes, little-endian.
        let mut ng = Vec::new();
        ng.extend_from_slice(&[
            0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a, 1, 0, 0, 0,
        ]);
        ng.extend_from_slice(&[0xff; 8]);
        ng.extend_from_slice(&[28, 0, 0, 0]);
        ng.extend_from_slice(&[1, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0]);
        ng.extend_from_slice(&[6, 0, 0, 0, 92, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ng.extend_from_slice(&[60, 0, 0, 0, 60, 0, 0, 0]);
        ng.extend_from_slice(&frame(7, 60));
        ng.extend_from_slice(&[92, 0, 0, 0]);
        assert_eq!(
            read_frames(write_tmp("ng-ok.pcapng", &ng)).unwrap(),
            vec![frame(7, 60)]
        );
        assert_eq!(read_frames_from_bytes(&ng).unwrap(), vec![frame(7, 60)]);
        assert_eq!(read_frames_from_bytes(&pcap).unwrap().len(), 4);
        // A stream reader works like a file, without repeat.
        let mut b = PcapBackend::new(pool(8))
            .rx_reader(std::io::Cursor::new(pcap.clone()))
            .unwrap()
            .repeat(true);
        let mut burst = Burst::new();
        assert_eq!(b.rx_burst(&mut burst).unwrap(), 4);
        assert!(b.rx_done());
        drop(burst);

        let pool = pool(64);
        for round in 0..600 {
            let base = if round % 2 == 0 { &pcap } else { &ng };
            let mut f = base.clone();
            let cut = (next() % (f.len() as u64 + 1)) as usize;
            if round % 3 == 0 {
                f.truncate(cut);
            }
            for _ in 0..(next() % 6) {
                if !f.is_empty() {
                    let at = (next() % f.len() as u64) as usize;
                    f[at] = next() as u8;
                }
            }
            let _ = read_frames_from_bytes(&f);
            if let Ok(mut b) = PcapBackend::new(pool.clone()).rx_reader(std::io::Cursor::new(f)) {
                let mut burst = Burst::new();
                for _ in 0..4 {
                    if b.rx_burst(&mut burst).is_err() {
                        break;
                    }
                }
            }
        }
        assert_eq!(pool.available(), 64);
    }

    fn write_tmp(name: &str, bytes: &[u8]) -> TmpFile {
        let p = tmp(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// The fuzz target's seed captures (`fuzz/seeds/pcap_nic`) read as the frames they
    /// hold, through the stream reader and the file reader alike.
    #[test]
    fn fuzz_seeds_are_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/pcap_nic");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let frames = read_frames_from_bytes(&bytes).unwrap();
            assert_eq!(frames.len(), 2, "{}", path.display());
            assert_eq!(read_frames(&path).unwrap(), frames);
            seen += 1;
        }
        assert!(seen >= 2, "seeds missing in {}", dir.display());
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let e = PcapBackend::new(pool(4))
            .rx_file("/nonexistent.pcap")
            .unwrap_err();
        assert!(matches!(e, PcapNicError::Open { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent.pcap"));

        let junk = tmp("junk.pcap");
        std::fs::write(&junk, b"this is not a capture file").unwrap();
        let e = PcapBackend::new(pool(4)).rx_file(&junk).unwrap_err();
        assert!(matches!(e, PcapNicError::Format { .. }), "{e}");

        let short = tmp("short.pcap");
        std::fs::write(&short, b"\xd4\xc3").unwrap();
        assert!(matches!(
            PcapBackend::new(pool(4)).rx_file(&short),
            Err(PcapNicError::Format { .. })
        ));

        // A pcap of link type RAW (101) is refused.
        let raw = tmp("raw.pcap");
        let mut h = Vec::new();
        pcap_file::pcap::PcapHeader {
            datalink: DataLink::RAW,
            ..Default::default()
        }
        .write_to(&mut h)
        .unwrap();
        std::fs::write(&raw, h).unwrap();
        let e = PcapBackend::new(pool(4)).rx_file(&raw).unwrap_err();
        assert!(matches!(e, PcapNicError::LinkType { .. }), "{e}");

        // A file cut in the middle of a record: the whole frames are read, then an error.
        let cut = tmp("cut.pcap");
        let mut w = Vec::new();
        write_pcap_header(&mut w).unwrap();
        for i in 0..2 {
            write_pcap_record(&mut w, std::time::Duration::from_secs(1), &frame(i, 60)).unwrap();
        }
        w.truncate(w.len() - 10);
        std::fs::write(&cut, w).unwrap();
        let pool = pool(8);
        let mut b = PcapBackend::new(pool.clone()).rx_file(&cut).unwrap();
        let mut burst = Burst::new();
        let e = b.rx_burst(&mut burst).unwrap_err();
        assert!(e.to_string().contains("after 1 frames"), "{e}");
        assert_eq!(burst.len(), 1);
        assert!(b.rx_done());
        assert_eq!(b.rx_burst(&mut burst).unwrap(), 0);

        let e = PcapBackend::new(pool)
            .tx_file("/nonexistent-dir/out.pcap")
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/out.pcap"), "{e}");
    }
}
