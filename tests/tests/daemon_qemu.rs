//! butterflyd end to end with real QEMU guests on vhost-user: two hosts as network
//! namespaces joined by a veth underlay, a `butterflyd` in each (AF_XDP on its veth), one
//! guest per host on VNI 42 attached to a vhost-user server socket of its daemon
//! (`butterfly nic add --type vhost-user-server`). The guests ping each other across the
//! hosts; then host 2's daemon is killed with `kill -9` and restarted: the configuration
//! is restored, QEMU reconnects (`reconnect-ms`) and the ping works again; then guest 2
//! restarts (a new QEMU on the same socket) and the ping works again. QEMU offers the
//! VM MTU butterflyd advertises (`host_mtu=`, `VIRTIO_NET_F_MTU`): the guests take 1450
//! and a 1472-byte ping (a 1500-byte IP packet, too big for the VXLAN underlay unless the
//! guest fragments it to the MTU it learnt) crosses the hosts.
//!
//! Needs root, `qemu-system-x86_64` and the guest image of `cargo xtask guest`.

use std::time::Duration;

use butterfly_tests::daemon::{Lab, VM_MTU_V4};
use butterfly_tests::qemu::{Guest, guest_image};
use butterfly_tests::{require_root, require_tool};

#[test]
fn qemu_guests_ping_across_hosts_reconnect_after_kill9_and_guest_restart() {
    require_root();
    require_tool("ip");
    require_tool("qemu-system-x86_64");
    let _ = guest_image();
    let mut lab = Lab::new("bdq", ["10.99.0.1", "10.99.0.2"]);
    lab.start();
    for h in &lab.hosts {
        h.cli(&["sg", "add", "web"]);
        h.cli(&[
            "sg",
            "rule",
            "add",
            "web",
            "--dir",
            "in",
            "--ip-proto",
            "icmp",
            "--cidr",
            "0.0.0.0/0",
        ]);
    }
    let hosts = &mut lab.hosts;
    let mut guests = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        let mac = format!("52:54:00:00:00:{n:02x}");
        let sock = h.dir.join(format!("vm{n}.sock"));
        let sock_s = sock.to_str().unwrap().to_string();
        let ip = format!("10.0.42.{n}");
        h.cli(&[
            "nic",
            "add",
            "--id",
            &format!("vm{n}"),
            "--mac",
            &mac,
            "--vni",
            "42",
            "--ip",
            &ip,
            "--sg",
            "web",
            "--enable-antispoof",
            "--type",
            "vhost-user-server",
            "--socket-path",
            &sock_s,
        ]);
        assert!(sock.exists(), "no vhost-user socket at {}", sock.display());
        guests.push(Guest::start_mtu(
            &format!("vm{n}"),
            &sock,
            &mac,
            &format!("{ip}/24"),
            Some(VM_MTU_V4),
        ));
    }
    for g in &mut guests {
        g.wait_for("BF-IDLE", 0, Duration::from_secs(90));
    }
    guests[0].ping("10.0.42.2", 5);
    guests[1].ping("10.0.42.1", 2);
    let rx = hosts[0].stat("vm1", "rx_packets");
    assert!(rx >= 6, "vm1 rx_packets {rx}");

    // The guests learnt the VM MTU from the virtio-net config space.
    for g in &mut guests {
        let (ok, out) = g.sh("cat /sys/class/net/eth0/mtu");
        assert!(
            ok && out.lines().any(|l| l.trim() == VM_MTU_V4.to_string()),
            "guest {}: eth0 MTU is not {VM_MTU_V4}:\n{out}",
            g.name()
        );
    }
    // A 1500-byte IP packet: the guest fragments it to its MTU, each fragment fits the
    // underlay once encapsulated, and the reply comes back the same way.
    let too_big_before = hosts[0].vtep_too_big();
    let (ok, out) = guests[0].sh("ping -c 3 -W 2 -s 1472 10.0.42.2");
    assert!(
        ok && out.contains("3 packets received"),
        "a 1472-byte ping across the hosts failed:\n{out}"
    );
    assert_eq!(
        hosts[0].vtep_too_big(),
        too_big_before,
        "the VTEP dropped frames too big for the underlay: the guest did not fragment"
    );

    // kill -9 host 2's daemon and restart it: vm2's QEMU reconnects to the restored
    // vhost-user socket and traffic resumes.
    hosts[1].kill9();
    hosts[1].start();
    guests[0].ping("10.0.42.2", 10);

    // Guest restart: vm2's QEMU is killed and a new one attaches to the same socket.
    drop(guests.pop());
    let sock = hosts[1].dir.join("vm2.sock");
    let mut g2 = Guest::start("vm2-again", &sock, "52:54:00:00:00:02", "10.0.42.2/24");
    g2.wait_for("BF-IDLE", 0, Duration::from_secs(90));
    g2.ping("10.0.42.1", 10);
    guests[0].ping("10.0.42.2", 3);
}
