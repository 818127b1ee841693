//! `cargo xtask demo` with real QEMU guests: two hosts as network namespaces joined by a
//! veth underlay, a `butterflyd` on each (AF_XDP on its underlay veth), three QEMU guests
//! (TCG, the image of `cargo xtask guest`) on vhost-user sockets served by the daemons:
//! guest 1 on host1 and guest 2 on host2 on VNI 42, guest 3 on host2 on VNI 7.
//!
//! Steps: security group `web` (ICMP and TCP/5000 in) through the CLI on both hosts; ping
//! across the hosts; TCP/5000 works (busybox nc); TCP/6000 is blocked by the firewall;
//! guest 3 (VNI 7) reaches nobody on VNI 42; a spoofed source is dropped by antispoof; then
//! `butterfly status`, `nic stats`, the pcap trace of guest 1 (read back with tshark), and
//! teardown (also when a step fails). Exit status 0 only when every step succeeded.

use std::process::ExitCode;
use std::time::Duration;

use butterfly_tests::daemon::{self, Host, VM_MTU_V4};
use butterfly_tests::demo::{self, Steps};
use butterfly_tests::qemu::{Guest, guest_image};
use butterfly_tests::{require_root, require_tool};

/// The two hosts and the guests (dropped first).
struct Lab {
    guests: Vec<Guest>,
    lab: daemon::Lab,
}

fn setup() -> Result<Lab, String> {
    Ok(Lab {
        guests: Vec::new(),
        lab: demo::start_lab()?,
    })
}

fn demo(lab: &mut Lab, s: &mut Steps) -> Result<(), String> {
    println!("demo: QEMU guests on vhost-user");
    let trace = lab.lab.dir.join("guest1.pcap");
    let trace_s = trace.to_string_lossy().into_owned();
    for (n, h, vni) in [(1u8, 0usize, 42u32), (2, 1, 42), (3, 1, 7)] {
        let mac = format!("52:54:00:42:00:{n:02x}");
        let ip = format!("10.0.42.{n}");
        let sock = lab.lab.hosts[h].dir.join(format!("guest{n}.sock"));
        let sock_s = sock.to_string_lossy().into_owned();
        let vni_s = vni.to_string();
        let id = format!("guest{n}");
        let mut args = vec![
            "nic",
            "add",
            "--id",
            &id,
            "--mac",
            &mac,
            "--vni",
            &vni_s,
            "--ip",
            &ip,
            "--sg",
            "web",
            "--enable-antispoof",
            "--type",
            "vhost-user-server",
            "--socket-path",
            &sock_s,
        ];
        if n == 1 {
            args.extend_from_slice(&["--packet-trace", "--trace-path", &trace_s]);
        }
        print!("{}", lab.lab.hosts[h].try_cli(&args)?);
        println!(
            "        guest {n}: QEMU on {}, MAC {mac}, {ip}/24, VNI {vni}, MTU {VM_MTU_V4}",
            sock.display()
        );
        lab.guests.push(Guest::start_mtu(
            &id,
            &sock,
            &mac,
            &format!("{ip}/24"),
            Some(VM_MTU_V4),
        ));
    }
    for g in &mut lab.guests {
        g.wait_for("BF-IDLE", 0, Duration::from_secs(120));
    }
    println!("demo: guests booted");

    s.check(
        "ping guest 1 (host1) → guest 2 (host2) on VNI 42",
        lab.guests[0].try_ping("10.0.42.2", 5).is_ok(),
        "",
    );
    s.check(
        "ping guest 2 (host2) → guest 1 (host1) on VNI 42",
        lab.guests[1].try_ping("10.0.42.1", 3).is_ok(),
        "",
    );

    for port in [5000, 6000] {
        lab.guests[1].sh(&format!(
            "sh -c 'while true; do echo hello-from-port-{port} | nc -l -p {port}; done' </dev/null >/dev/null 2>&1 &"
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, out) = lab.guests[0].sh("echo hi | nc -w 3 10.0.42.2 5000");
    s.check(
        "TCP/5000 guest 1 → guest 2 allowed",
        out.contains("hello-from-port-5000"),
        &out,
    );
    let (_, out) = lab.guests[0].sh("echo hi | nc -w 3 10.0.42.2 6000");
    s.check(
        "TCP/6000 guest 1 → guest 2 blocked by guest 2's firewall",
        !out.contains("hello-from-port-6000"),
        &out,
    );

    let isolated = lab.guests[2].try_ping("10.0.42.1", 1).is_err()
        && lab.guests[2].try_ping("10.0.42.2", 1).is_err();
    s.check("guest 3 on VNI 7 reaches nobody on VNI 42", isolated, "");

    let before = antispoof_drops(&lab.lab.hosts[0], "guest1")?;
    lab.guests[0].sh("ip addr add 10.0.42.99/24 dev eth0");
    let (ok, _) = lab.guests[0].sh("ping -c 3 -W 1 -I 10.0.42.99 10.0.42.2");
    let after = antispoof_drops(&lab.lab.hosts[0], "guest1")?;
    s.check(
        "spoofed source 10.0.42.99 from guest 1 dropped by antispoof",
        !ok && after >= before + 3,
        &format!("antispoof drops {before} → {after}"),
    );

    println!("demo: butterfly status (host1)");
    print!("{}", lab.lab.hosts[0].try_cli(&["status"])?);
    println!("demo: butterfly nic stats (host1, host2)");
    print!("{}", lab.lab.hosts[0].try_cli(&["nic", "stats", "guest1"])?);
    print!("{}", lab.lab.hosts[1].try_cli(&["nic", "stats", "guest2"])?);
    println!("demo: packet trace of guest 1: {}", trace.display());
    let frames = butterfly_tests::tshark::count(&trace, "icmp");
    s.check(
        &format!("pcap trace readable by tshark ({frames} ICMP frames)"),
        frames >= 6,
        "",
    );
    Ok(())
}

fn antispoof_drops(h: &Host, id: &str) -> Result<u64, String> {
    h.try_stat(id, "dropped_antispoof")
}

fn main() -> ExitCode {
    require_root();
    for t in ["ip", "tshark", "qemu-system-x86_64"] {
        require_tool(t);
    }
    let _ = guest_image();
    println!("demo: two hosts (network namespaces) joined by a veth underlay, butterflyd on each");
    let mut steps = Steps::default();
    let result = setup().and_then(|mut lab| {
        let r = demo(&mut lab, &mut steps);
        if r.is_err() || !steps.failed.is_empty() {
            for h in &lab.lab.hosts {
                println!("demo: {} daemon log:\n{}", h.name, h.log());
            }
        }
        println!("demo: teardown (guests, daemons, namespaces and interfaces removed)");
        drop(lab);
        r
    });
    steps.verdict(result)
}
