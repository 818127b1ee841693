//! Capture files with real tools on the other end: pcap files written by the `print`
//! brick and by `nic(pcap)` are read back by tshark and hold exactly the frames sent;
//! `nic(pcap)` reads files made by text2pcap (pcap and pcapng), by tcpdump (pcap) and by
//! dumpcap, tshark's capture engine (pcapng), from a live capture between two network
//! namespaces.

use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use butterfly_tests::{Netns, TempDir, require_root, require_tool, tshark, veth_pair};
use etherparse::PacketBuilder;
use packetgraph::bricks::nic::pcap::PcapBackend;
use packetgraph::bricks::{Collect, Nic, Nop, PacketGen, Print, RxTx};
use packetgraph::{Graph, Pool, PoolConfig, Side};

fn pool() -> Pool {
    Pool::new(PoolConfig {
        frame_count: 1024,
        ..Default::default()
    })
    .unwrap()
}

const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

fn udp4(i: u16, payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4([10, 1, 0, 1], [10, 1, 0, (i % 200) as u8 + 2], 64)
        .udp(10_000 + i, 20_000 + i)
        .write(&mut v, &vec![i as u8; payload])
        .unwrap();
    v
}

fn vlan_udp4(vid: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_B, MAC_A)
        .single_vlan(vid.try_into().unwrap())
        .ipv4([192, 168, 7, 1], [192, 168, 7, 2], 9)
        .udp(7000, 7001)
        .write(&mut v, b"vlan")
        .unwrap();
    v
}

fn tcp6() -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .tcp(443, 55_000, 1, 4096)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[10, 1, 0, 1, 0, 0, 0, 0, 0, 0, 10, 1, 0, 2]);
    f
}

/// A varied set of frames: UDP of several sizes (60 to 1514 bytes on the wire), VLAN,
/// IPv6/TCP, ARP, and one truncated IPv4 frame (malformed on purpose).
fn test_frames() -> Vec<Vec<u8>> {
    let mut frames: Vec<Vec<u8>> = [0usize, 18, 100, 500, 1472]
        .iter()
        .enumerate()
        .map(|(i, &n)| udp4(i as u16, n))
        .collect();
    frames.push(vlan_udp4(42));
    frames.push(tcp6());
    frames.push(arp_request());
    let mut short = udp4(9, 10);
    short.truncate(24);
    frames.push(short);
    frames
}

/// Runs `gen(frames) → middle → sink`-like graphs: `build` adds the bricks after "gen".
fn run_gen(frames: &[Vec<u8>], build: impl FnOnce(&mut Graph)) -> Graph {
    let mut g = Graph::new("pcap");
    g.add(
        "gen",
        PacketGen::new(pool(), frames.to_vec(), frames.len() as u64),
    )
    .unwrap();
    build(&mut g);
    g.sanity_check().unwrap();
    while g.poll().unwrap() > 0 {}
    assert_eq!(g.empty_bursts(), 0);
    g
}

fn epoch() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
}

/// Checks that tshark sees exactly `frames` in `path`, with sane timestamps.
fn assert_tshark_sees(path: &std::path::Path, frames: &[Vec<u8>], t0: Duration, t1: Duration) {
    let got = tshark::frames(path);
    assert_eq!(got.len(), frames.len(), "frame count");
    for (i, (g, want)) in got.iter().zip(frames).enumerate() {
        assert_eq!(g, want, "frame {i} differs");
    }
    let rows = tshark::fields(path, &["frame.len", "frame.cap_len", "frame.time_epoch"]);
    for (row, want) in rows.iter().zip(frames) {
        assert_eq!(row[0], want.len().to_string());
        assert_eq!(row[1], want.len().to_string());
        let t: f64 = row[2].parse().unwrap();
        assert!(
            t >= t0.as_secs_f64() - 1.0 && t <= t1.as_secs_f64() + 1.0,
            "timestamp {t} outside the test run"
        );
    }
    // tshark dissects them as what they are.
    assert_eq!(tshark::count(path, "udp && !vlan"), 5);
    assert_eq!(
        tshark::count(path, "vlan.id == 42 && udp.dstport == 7001"),
        1
    );
    assert_eq!(tshark::count(path, "ipv6 && tcp.flags.syn == 1"), 1);
    assert_eq!(tshark::count(path, "arp.opcode == 1"), 1);
    let odd = tshark::fields(
        path,
        &["frame.number", "_ws.malformed", "_ws.expert.message"],
    )
    .into_iter()
    .filter(|r| !r[1].is_empty())
    .collect::<Vec<_>>();
    assert_eq!(
        odd.len(),
        1,
        "only the truncated frame is malformed: {odd:?}"
    );
    assert_eq!(odd[0][0], frames.len().to_string(), "{odd:?}");
}

#[test]
fn print_pcap_output_holds_the_same_frames_for_tshark() {
    require_tool("tshark");
    let dir = TempDir::new("engine-pcap");
    let path = dir.join("print.pcap");
    let frames = test_frames();
    let t0 = epoch();
    let g = run_gen(&frames, |g| {
        g.add("print", Print::pcap_file(&path).unwrap()).unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link_chain(&["gen", "print", "sink"]).unwrap();
    });
    let t1 = epoch();
    assert_eq!(
        g.get::<Print>("print").unwrap().recorded(),
        frames.len() as u64
    );
    assert_eq!(
        g.get::<Collect>("sink").unwrap().packets(Side::West),
        frames.len() as u64,
        "print passes everything through"
    );
    assert_tshark_sees(&path, &frames, t0, t1);
}

#[test]
fn print_ethertype_filter_writes_only_those_frames() {
    require_tool("tshark");
    let dir = TempDir::new("engine-pcap");
    let path = dir.join("arp-only.pcap");
    let frames = test_frames();
    let _g = run_gen(&frames, |g| {
        g.add(
            "print",
            Print::pcap_file(&path)
                .unwrap()
                .with_ethertypes(&[0x0806, 0x86dd]),
        )
        .unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link_chain(&["gen", "print", "sink"]).unwrap();
    });
    let got = tshark::frames(&path);
    assert_eq!(got, vec![tcp6(), arp_request()]);
}

/// A writer the test can read while the brick owns a clone.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Our one-line summaries agree with tshark's dissection, field by field.
#[test]
fn print_text_summaries_agree_with_tshark() {
    require_tool("tshark");
    let dir = TempDir::new("engine-pcap");
    let path = dir.join("both.pcap");
    let frames: Vec<Vec<u8>> = (0..20).map(|i| udp4(i, 10 + 7 * i as usize)).collect();
    let text = Shared::default();
    let _g = run_gen(&frames, |g| {
        g.add("text", Print::text(text.clone())).unwrap();
        g.add("pcap", Print::pcap_file(&path).unwrap()).unwrap();
        g.add("sink", Collect::new()).unwrap();
        g.link_chain(&["gen", "text", "pcap", "sink"]).unwrap();
    });
    let text = String::from_utf8(text.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let rows = tshark::fields(
        &path,
        &[
            "frame.len",
            "eth.src",
            "eth.dst",
            "eth.type",
            "ip.src",
            "ip.dst",
            "ip.proto",
            "udp.srcport",
            "udp.dstport",
        ],
    );
    assert_eq!(lines.len(), 20);
    assert_eq!(rows.len(), 20);
    for (line, r) in lines.iter().zip(&rows) {
        let want = format!(
            "[west>east len={}] [eth src={} dst={} type={}] [ipv4 src={} dst={} proto={} ",
            r[0], r[1], r[2], r[3], r[4], r[5], r[6]
        );
        assert!(line.starts_with(&want), "{line}\nvs tshark {want}");
        assert!(
            line.contains(&format!("[udp sport={} dport={} ", r[7], r[8])),
            "{line} vs {r:?}"
        );
    }
}

#[test]
fn nic_pcap_output_holds_the_same_frames_for_tshark() {
    require_tool("tshark");
    let dir = TempDir::new("engine-pcap");
    let path = dir.join("nic-out.pcap");
    let frames = test_frames();
    let t0 = epoch();
    let pool = pool();
    let g = run_gen(&frames, |g| {
        g.add(
            "nic",
            Nic::new(PcapBackend::new(pool.clone()).tx_file(&path).unwrap()),
        )
        .unwrap();
        g.link("gen", "nic").unwrap();
    });
    let t1 = epoch();
    let stats = g
        .get::<Nic>("nic")
        .unwrap()
        .backend()
        .counters()
        .into_iter()
        .find(|(k, _)| *k == "tx_frames")
        .unwrap();
    assert_eq!(stats.1, frames.len() as u64);
    assert_tshark_sees(&path, &frames, t0, t1);
}

/// Reads every frame of `path` through `nic(pcap) → nop → rxtx` and returns them in order.
fn read_through_graph(path: &std::path::Path) -> Vec<Vec<u8>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let got2 = got.clone();
    let pool = pool();
    let mut g = Graph::new("reader");
    g.add(
        "nic",
        Nic::new(PcapBackend::new(pool.clone()).rx_file(path).unwrap()),
    )
    .unwrap();
    g.add("nop", Nop::new()).unwrap();
    g.add(
        "app",
        RxTx::tx_only(move |_, b| {
            got2.lock()
                .unwrap()
                .extend(b.iter().map(|p| p.data().to_vec()));
            Ok(())
        }),
    )
    .unwrap();
    g.link_chain(&["nic", "nop", "app"]).unwrap();
    g.sanity_check().unwrap();
    while g.poll().unwrap() > 0 {}
    assert_eq!(g.empty_bursts(), 0);
    drop(g);
    assert_eq!(pool.available(), 1024);
    std::mem::take(&mut *got.lock().unwrap())
}

fn hexdump(frames: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for f in frames {
        for (i, chunk) in f.chunks(16).enumerate() {
            s.push_str(&format!("{:06x} ", i * 16));
            for b in chunk {
                s.push_str(&format!(" {b:02x}"));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

#[test]
fn nic_pcap_reads_text2pcap_pcap_and_pcapng() {
    require_tool("text2pcap");
    require_tool("tshark");
    let dir = TempDir::new("engine-pcap");
    let frames = test_frames();
    let txt = dir.join("frames.txt");
    std::fs::write(&txt, hexdump(&frames)).unwrap();
    for format in ["pcap", "pcapng", "nsecpcap"] {
        let out = dir.join(&format!("t2p.{format}"));
        let r = std::process::Command::new("text2pcap")
            .args(["-q", "-F", format])
            .arg(&txt)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "text2pcap -F {format}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(
            tshark::frames(&out),
            frames,
            "text2pcap wrote what we meant"
        );
        assert_eq!(read_through_graph(&out), frames, "format {format}");
    }
}

/// Waits until a capture tool prints `ready` on stderr (tcpdump: "listening on",
/// dumpcap: "File:", printed once its capture and output file are open).
fn wait_listening(child: &mut butterfly_tests::KillOnDrop, what: &str, ready: &str) {
    let stderr = child.child().stderr.take().unwrap();
    let mut r = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).unwrap();
        assert!(n > 0, "{what} exited before listening");
        if line.contains(ready) {
            break;
        }
    }
    // Keep draining stderr so the tool never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while r.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
}

/// Waits up to 5 s for a capture tool started with `-c N` to exit by itself, then
/// interrupts it (SIGINT makes tcpdump and dumpcap close their file properly).
fn stop(child: butterfly_tests::KillOnDrop) {
    let out = child.wait_or_interrupt(Duration::from_secs(5));
    assert!(
        out.status.success(),
        "capture tool failed: {:?}",
        out.status
    );
}

/// Live traffic between two namespaces (ping over a veth pair) captured by tcpdump (pcap)
/// and dumpcap/tshark (pcapng) on the receiving end; `nic(pcap)` reads both files and gets the
/// frames tshark sees; passed through the graph into `nic(pcap)` output, tshark sees the
/// same frames again.
#[test]
fn nic_pcap_reads_live_captures_of_tcpdump_and_tshark() {
    require_root();
    require_tool("tcpdump");
    require_tool("tshark");
    require_tool("dumpcap");
    require_tool("ping");
    let dir = TempDir::new("engine-pcap");
    let a = Netns::new("pcapA");
    let b = Netns::new("pcapB");
    a.disable_ipv6();
    b.disable_ipv6();
    let mut veth = veth_pair("pcap");
    veth.move_a_to(&a);
    veth.move_b_to(&b);
    a.addr(veth.a(), "10.79.0.1/24");
    b.addr(veth.b(), "10.79.0.2/24");
    a.up(veth.a());
    b.up(veth.b());

    let pcap = dir.join("tcpdump.pcap");
    let pcapng = dir.join("tshark.pcapng");
    let pcap_s = pcap.to_str().unwrap().to_string();
    let pcapng_s = pcapng.to_str().unwrap().to_string();
    // ARP request and reply, 3 echo requests and 3 replies: 8 frames, then the tools exit.
    let mut td = b.spawn(&[
        "tcpdump",
        "-n",
        "--immediate-mode",
        "-U",
        "-c",
        "8",
        "-i",
        veth.b(),
        "-w",
        &pcap_s,
    ]);
    wait_listening(&mut td, "tcpdump", "listening on");
    // dumpcap is tshark's capture engine.
    let mut ts = b.spawn(&["dumpcap", "-q", "-c", "8", "-i", veth.b(), "-w", &pcapng_s]);
    wait_listening(&mut ts, "dumpcap", "File:");

    let out = a.run(&["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "10.79.0.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stop(td);
    stop(ts);

    let truth = tshark::frames(&pcap);
    eprintln!(
        "tcpdump saw {} frames: {:?}",
        truth.len(),
        tshark::fields(&pcap, &["frame.protocols", "_ws.col.Info"])
    );
    assert_eq!(tshark::count(&pcap, "icmp.type == 8"), 3);
    assert_eq!(tshark::count(&pcap, "icmp.type == 0"), 3);
    assert_eq!(tshark::count(&pcap, "arp"), 2);
    assert_eq!(truth.len(), 8);
    assert_eq!(
        tshark::frames(&pcapng),
        truth,
        "both tools saw the same traffic"
    );

    assert_eq!(read_through_graph(&pcap), truth, "tcpdump's pcap");
    assert_eq!(read_through_graph(&pcapng), truth, "dumpcap's pcapng");

    // nic(pcap) in → print → nic(pcap) out: tshark reads the same frames back.
    let copy = dir.join("copy.pcap");
    let text = Shared::default();
    let pool = pool();
    let mut g = Graph::new("copy");
    g.add(
        "in",
        Nic::new(PcapBackend::new(pool.clone()).rx_file(&pcapng).unwrap()),
    )
    .unwrap();
    g.add("print", Print::text(text.clone())).unwrap();
    g.add(
        "out",
        Nic::new(PcapBackend::new(pool.clone()).tx_file(&copy).unwrap()),
    )
    .unwrap();
    g.link_chain(&["in", "print", "out"]).unwrap();
    while g.poll().unwrap() > 0 {}
    assert_eq!(tshark::frames(&copy), truth);
    let text = String::from_utf8(text.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), truth.len());
    assert_eq!(text.matches("[icmp type=8 code=0]").count(), 3, "{text}");
    assert_eq!(text.matches("[icmp type=0 code=0]").count(), 3, "{text}");
    assert_eq!(g.empty_bursts(), 0);
}
