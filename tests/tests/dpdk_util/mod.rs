//! Shared pieces of the DPDK end-to-end tests: EAL arguments that need no hugepages and
//! no PCI device, frame builders, and a UDP receiver run by the kernel in a namespace.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use butterfly_tests::{KillOnDrop, Netns, unique_ifname};
use packetgraph::bricks::nic::NicBackend;
use packetgraph::{Burst, Pool, PoolConfig};

/// EAL arguments for a test: no hugepages (`--no-huge -m 256`), no PCI scan, no shared
/// runtime files (`--no-shconf`), a unique `--file-prefix`, one lcore, then `--vdev`
/// for each of `vdevs`.
pub fn eal_args(vdevs: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "--no-shconf",
        "-l",
        "0",
        "--log-level",
        "lib.eal:notice",
        "--file-prefix",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(unique_ifname("bfdpdk"));
    for v in vdevs {
        a.push("--vdev".into());
        a.push(v.clone());
    }
    a
}

/// A pool of 1024 frames.
pub fn pool() -> Pool {
    Pool::new(PoolConfig {
        frame_count: 1024,
        ..PoolConfig::default()
    })
    .unwrap()
}

/// An Ethernet/IPv4/UDP frame with correct checksums.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(40000, dport);
    let mut f = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut f, payload).unwrap();
    f
}

/// The same frame with both the IPv4 header and the UDP checksums wrong.
pub fn break_checksums(f: &mut [u8]) {
    f[14 + 10] ^= 0x5a;
    f[14 + 20 + 6] ^= 0xa5;
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Starts a kernel UDP receiver in `ns` on `ip:port` that prints each payload on a line
/// and exits after `n` datagrams or `secs` seconds. Waits until it is bound.
pub fn udp_receiver(ns: &Netns, ip: &str, port: u16, n: usize, secs: u32) -> KillOnDrop {
    let script = format!(
        "import socket,sys,time\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('{ip}',{port}))\n\
         print('ready',flush=True)\n\
         s.settimeout(0.2)\n\
         end=time.time()+{secs}\n\
         got=0\n\
         while got<{n} and time.time()<end:\n\
         \x20try:\n\
         \x20\x20d=s.recv(4096)\n\
         \x20except socket.timeout:\n\
         \x20\x20continue\n\
         \x20print(d.decode(errors='replace'),flush=True)\n\
         \x20got+=1\n"
    );
    let mut k = ns.spawn(&["python3", "-c", &script]);
    let mut line = String::new();
    let out = k.child().stdout.as_mut().unwrap();
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(out);
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "receiver did not start");
    k
}

/// The payload lines a [`udp_receiver`] printed (after "ready").
pub fn received(k: KillOnDrop) -> Vec<String> {
    let out = k.wait_output();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty() && l != "ready")
        .collect()
}

/// Sends `payloads` as UDP datagrams from `ns` to `dst:port` (kernel stack).
pub fn udp_send(ns: &Netns, dst: &str, port: u16, payloads: &[String]) {
    let list = payloads
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for p in [{list}]:\n\
         \x20s.sendto(p.encode(),('{dst}',{port}))\n"
    );
    ns.run_ok(&["python3", "-c", &script]);
}

/// Polls `b` until `n` frames came in or `timeout` passed; returns their bytes.
pub fn receive(b: &mut dyn NicBackend, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let t = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && t.elapsed() < timeout {
        let mut burst = Burst::new();
        b.rx_burst(&mut burst).unwrap();
        got.extend(burst.iter().map(|p| p.data().to_vec()));
        if burst.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    got
}

/// A burst of packets of `pool` holding `frames`.
pub fn burst_of(pool: &Pool, frames: &[Vec<u8>]) -> Burst {
    let mut b = Burst::new();
    for f in frames {
        b.push(pool.packet_from(f).unwrap()).unwrap();
    }
    b
}

/// Counter `name` of a backend.
pub fn counter(b: &dyn NicBackend, name: &str) -> u64 {
    b.counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}
