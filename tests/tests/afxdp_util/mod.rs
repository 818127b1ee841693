//! Shared pieces of the AF_XDP end-to-end tests: a namespace pair joined by a veth with a
//! kernel VXLAN device on the peer side, and a recording sink brick. Namespaces come from
//! `butterfly_tests::netns`.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

pub use butterfly_tests::netns::{Netns, require_root, require_tool, unique_ifname};
use packetgraph::{Brick, BrickError, Burst, Emit, Poles, Side};

/// Addresses of the test topology.
pub const HOST_V4: &str = "10.77.0.1";
pub const PEER_V4: &str = "10.77.0.2";
pub const HOST_V6: &str = "fd77::1";
pub const PEER_V6: &str = "fd77::2";
pub const GROUP_V4: &str = "239.1.1.42";
/// Overlay addresses on the peer's vxlan devices (VNI 42, 43 and 44).
pub const PEER_OVERLAY_42: &str = "192.168.42.2";
pub const PEER_OVERLAY_43: &str = "192.168.43.2";
pub const PEER_OVERLAY_44: &str = "192.168.44.2";

/// Two namespaces ("host" runs Butterfly, "peer" runs the kernel's VXLAN) joined by a veth:
/// `host_if` = 10.77.0.1/24 + fd77::1/64, `peer_if` = 10.77.0.2/24 + fd77::2/64.
/// On the peer: vx42 (VNI 42 unicast to 10.77.0.1, 192.168.42.2/24), vx43 (VNI 43,
/// multicast group 239.1.1.42, 192.168.43.2/24), vx44 (VNI 44 over IPv6 to fd77::1,
/// 192.168.44.2/24). All on UDP port 4789, TX checksum offload off on the peer.
pub struct Topology {
    pub host: Netns,
    pub peer: Netns,
    pub host_if: String,
    pub peer_if: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Topology {
        require_root();
        let host = Netns::new(&format!("{prefix}h"));
        let peer = Netns::new(&format!("{prefix}p"));
        let host_if = unique_ifname("xh");
        let peer_if = unique_ifname("xp");
        host.run_ok(&[
            "ip",
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
            "netns",
            peer.name(),
        ]);
        for (ns, dev, v4, v6) in [
            (&host, &host_if, HOST_V4, HOST_V6),
            (&peer, &peer_if, PEER_V4, PEER_V6),
        ] {
            ns.run_ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.run_ok(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.run_ok(&["ip", "link", "set", dev, "up"]);
        }
        peer.run_ok(&["ethtool", "-K", &peer_if, "tx", "off"]);
        // No IPv6 on the overlay devices: no router solicitations or MLD reports in VXLAN,
        // so the tests count exactly the frames they send.
        peer.run_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
        let vx = [
            (
                "vx42",
                "42",
                vec!["remote", HOST_V4, "local", PEER_V4],
                PEER_OVERLAY_42,
            ),
            (
                "vx43",
                "43",
                vec!["group", GROUP_V4, "dev", &peer_if],
                PEER_OVERLAY_43,
            ),
            (
                "vx44",
                "44",
                vec!["remote", HOST_V6, "local", PEER_V6],
                PEER_OVERLAY_44,
            ),
        ];
        for (name, vni, extra, addr) in vx {
            let mut args = vec!["ip", "link", "add", name, "type", "vxlan", "id", vni];
            args.extend(extra.iter().copied());
            args.extend(["dstport", "4789", "udp6zerocsumtx", "udp6zerocsumrx"]);
            peer.run_ok(&args);
            peer.run_ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", name]);
            peer.run_ok(&["ip", "link", "set", name, "up"]);
        }
        Topology {
            host,
            peer,
            host_if,
            peer_if,
        }
    }

    /// `ip -d link show` of the host interface, with the counters-free first lines.
    pub fn host_link_details(&self) -> String {
        self.host
            .run_ok(&["ip", "-d", "link", "show", "dev", &self.host_if])
    }
}

/// A frame as recorded by [`Recorder`].
pub type Frames = Arc<Mutex<Vec<Vec<u8>>>>;

/// A test sink: keeps a copy of every frame it receives.
pub struct Recorder {
    pub frames: Frames,
}

impl Brick for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }

    fn poles(&self) -> Poles {
        Poles::Monopole
    }

    fn burst(
        &mut self,
        _from: Side,
        _edge: usize,
        pkts: Burst,
        _out: &mut Emit,
    ) -> Result<(), BrickError> {
        let mut f = self.frames.lock().unwrap();
        for p in pkts.iter() {
            f.push(p.data().to_vec());
        }
        Ok(())
    }
}
