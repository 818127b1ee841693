//! butterflyd end to end with real QEMU guests on vhost-user: two hosts as network
//! namespaces joined by a veth underlay, a `butterflyd` in each (AF_XDP on its veth), one
//! guest per host on VNI 42 attached to a vhost-user server socket of its daemon
//! (`butterfly nic add --type vhost-user-server`). The guests ping each other across the
//! hosts; then host 2's daemon is killed with `kill -9` and restarted: the configuration
//! is restored, QEMU reconnects (`reconnect-ms`) and the ping works again; then guest 2
//! restarts (a new QEMU on the same socket) and the ping works again.
//!
//! Needs root, `qemu-system-x86_64` and the guest image of `cargo xtask guest`.

use std::time::Duration;

use butterfly_tests::daemon::Lab;
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
        guests.push(Guest::start(
            &format!("vm{n}"),
            &sock,
            &mac,
            &format!("{ip}/24"),
        ));
    }
    for g in &mut guests {
        g.wait_for("BF-IDLE", 0, Duration::from_secs(90));
    }
    guests[0].ping("10.0.42.2", 5);
    guests[1].ping("10.0.42.1", 2);
    let rx = hosts[0].stat("vm1", "rx_packets");
    assert!(rx >= 6, "vm1 rx_packets {rx}");

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
