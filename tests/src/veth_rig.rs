//! The single-veth bench rig of the AF_XDP and DPDK benches: this process enters a fresh
//! network namespace holding one veth pair `gen` — `dut`, a load generator sends 64-byte
//! VXLAN frames out of `gen`, the forwarder under test sends them back through `dut`, and
//! a counting XDP sink on `gen` measures what came back. Also the two trivial bricks the
//! forwarders use.

use std::fs::File;
use std::os::fd::AsFd;

use packetgraph::{Brick, BrickError, Burst, Emit, Poles, Side};

use crate::netns::run_ok;

/// The namespace (entered by the calling thread and the threads it spawns afterwards),
/// with `dut` = `<subnet>.1/24` and `gen` = `<subnet>.2/24`, both up. On drop the thread
/// goes back to its namespace and the namespace is deleted.
pub struct VethRig {
    name: String,
    back: File,
    /// MAC address of `dut`.
    pub dut_mac: [u8; 6],
    /// First three bytes of the /24 of the pair (e.g. `[10, 88, 0]`).
    pub subnet: [u8; 3],
}

impl VethRig {
    /// Creates namespace `name` (deleting a leftover of the same name), enters it and
    /// creates the veth pair.
    ///
    /// # Panics
    /// When a command fails (not root, name in use).
    pub fn enter(name: &str, subnet: [u8; 3]) -> VethRig {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .output();
        run_ok(&["ip", "netns", "add", name]);
        let back = File::open("/proc/thread-self/ns/net").expect("own network namespace");
        let target = File::open(format!("/run/netns/{name}")).expect("new network namespace");
        nix::sched::setns(target.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("setns into the bench namespace");
        let [a, b, c] = subnet;
        run_ok(&[
            "ip", "link", "add", "gen", "type", "veth", "peer", "name", "dut",
        ]);
        run_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{a}.{b}.{c}.1/24"),
            "dev",
            "dut",
        ]);
        run_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{a}.{b}.{c}.2/24"),
            "dev",
            "gen",
        ]);
        run_ok(&["ip", "link", "set", "gen", "up"]);
        run_ok(&["ip", "link", "set", "dut", "up"]);
        // sysfs shows the namespace it was mounted in: ask iproute2 for the MAC.
        let link = run_ok(&["ip", "-o", "link", "show", "dut"]);
        let mac: Vec<u8> = link
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("MAC of dut")
            .split(':')
            .map(|h| u8::from_str_radix(h, 16).expect("hex MAC"))
            .collect();
        VethRig {
            name: name.to_string(),
            back,
            dut_mac: mac.try_into().expect("6-byte MAC"),
            subnet,
        }
    }

    /// A 64-byte frame from `gen` to `dut`: outer Ethernet / IPv4 `.2` → `.1` / UDP 49152 →
    /// 4789 / VXLAN VNI 42 (RFC 7348 §5) and a 14-byte inner Ethernet header, so the
    /// steering XDP program takes it as VXLAN for the VTEP `.1`.
    pub fn vxlan_frame(&self) -> Vec<u8> {
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
        vx.extend_from_slice(&[0x02, 0, 0, 0, 0x42, 1, 0x02, 0, 0, 0, 0x42, 2, 0x08, 0x06]);
        let [a, b, c] = self.subnet;
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x99], self.dut_mac)
            .ipv4([a, b, c, 2], [a, b, c, 1], 64)
            .udp(49152, 4789)
            .write(&mut f, &vx)
            .expect("frame");
        assert_eq!(f.len(), 64);
        f
    }
}

impl Drop for VethRig {
    fn drop(&mut self) {
        let _ = nix::sched::setns(self.back.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A monopole that drops everything it receives (rx-drop).
pub struct Sink;

impl Brick for Sink {
    fn kind(&self) -> &'static str {
        "sink"
    }
    fn poles(&self) -> Poles {
        Poles::Monopole
    }
    fn burst(&mut self, _: Side, _: usize, _: Burst, _: &mut Emit) -> Result<(), BrickError> {
        Ok(())
    }
}

/// A monopole that swaps source and destination MACs and sends the burst back where it
/// came from (l2fwd with MAC swap, as testpmd's `macswap`).
pub struct Reflect;

impl Brick for Reflect {
    fn kind(&self) -> &'static str {
        "reflect"
    }
    fn poles(&self) -> Poles {
        Poles::Monopole
    }
    fn burst(
        &mut self,
        _: Side,
        _: usize,
        mut pkts: Burst,
        out: &mut Emit,
    ) -> Result<(), BrickError> {
        for p in pkts.iter_mut() {
            let d = p.data_mut();
            if d.len() >= 12 {
                let (a, b) = d.split_at_mut(6);
                a.swap_with_slice(&mut b[..6]);
            }
        }
        out.send_peer(pkts);
        Ok(())
    }
}
