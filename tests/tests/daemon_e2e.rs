//! butterflyd end to end: two hosts as network namespaces joined by a veth underlay, the
//! real `butterflyd` in each (started with `ip netns exec`, AF_XDP + XDP steering on its
//! underlay veth), driven by the real `butterfly` CLI over its Unix socket.
//!
//! The "VMs" are the daemons' tap NICs moved into their own namespaces (a tap NIC is the
//! interface named by its id): the kernel of each VM namespace pings, and runs socat,
//! through Butterfly's graph (tap → antispoof → firewall → VTEP → AF_XDP → veth → AF_XDP
//! → VTEP → firewall → antispoof → tap). Flooding uses the default multicast group of
//! each VNI (230.0.0.VNI). Underlay 10.99.0.1/24 and 10.99.0.2/24, VMs in 10.0.42.0/24;
//! nothing leaves the namespaces.
//!
//! Needs root, ping, socat and tshark.

use std::time::Duration;

use butterfly_tests::daemon::Lab;
use butterfly_tests::{require_root, require_tool};

fn prerequisites() {
    require_root();
    for t in ["ping", "socat", "tshark", "ip"] {
        require_tool(t);
    }
}

/// Two hosts (underlay 10.99.0.1 and .2), their daemons started.
fn lab(tag: &str) -> Lab {
    lab_on(tag, ["10.99.0.1", "10.99.0.2"])
}

/// Two hosts whose underlay addresses (and VTEP IPs) are `ips`, daemons started.
fn lab_on(tag: &str, ips: [&str; 2]) -> Lab {
    prerequisites();
    let mut lab = Lab::new(&format!("bd{tag}"), ips);
    lab.start();
    lab
}

/// The security group `web` (ICMP and TCP/5000 in) on both hosts.
fn web_sg(lab: &Lab) {
    for h in &lab.hosts {
        h.try_web_sg()
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    }
}

/// Adds a tap VM on host `h` (MAC 52:54:00:42:00:N, N = VMs so far + 1).
fn vm(lab: &mut Lab, h: usize, vni: u32, ip: &str, extra: &[&str]) -> usize {
    let mac = format!("52:54:00:42:00:{:02x}", lab.vms.len() + 1);
    lab.tap_vm(h, "bdv", &mac, vni, ip, extra)
}

#[test]
fn ping_across_hosts_same_host_switch_and_vni_isolation() {
    let mut lab = lab("p");
    web_sg(&lab);
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = vm(&mut lab, 0, 42, "10.0.42.1", &sg);
    let b = vm(&mut lab, 1, 42, "10.0.42.2", &sg);
    // VNI 7, same subnet: must reach nobody on VNI 42.
    let c = vm(&mut lab, 1, 7, "10.0.42.3", &sg);

    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "VM a (host 1) cannot ping VM b (host 2) on VNI 42\nhost1:\n{}\nhost2:\n{}",
        lab.hosts[0].log(),
        lab.hosts[1].log()
    );
    assert!(lab.vms[a].ping("10.0.42.2", 5), "5 more pings a → b");
    assert!(lab.vms[b].ping("10.0.42.1", 3), "pings b → a");
    assert!(!lab.vms[c].ping("10.0.42.1", 2), "VNI 7 reached VNI 42 (a)");
    assert!(!lab.vms[c].ping("10.0.42.2", 2), "VNI 7 reached VNI 42 (b)");
    assert!(!lab.vms[a].ping("10.0.42.3", 2), "VNI 42 reached VNI 7 (c)");

    // Counters: a sent and received at least the 6 echo requests/replies.
    let id_a = lab.vms[a].id.clone();
    let rx = lab.hosts[0].stat(&id_a, "rx_packets");
    let tx = lab.hosts[0].stat(&id_a, "tx_packets");
    assert!(rx >= 6 && tx >= 6, "nic stats of a: rx {rx} tx {tx}");

    // A second NIC on VNI 42 on host 1 inserts a switch; same-host ping works; deleting
    // it removes the switch and a still reaches b.
    let d = vm(&mut lab, 0, 42, "10.0.42.4", &sg);
    let dot = lab.hosts[0].cli(&["status"]);
    assert!(dot.contains("\"switch-42\""), "no switch-42 in: {dot}");
    assert!(lab.vms[d].reach("10.0.42.1"), "same-host ping d → a");
    assert!(lab.vms[d].reach("10.0.42.2"), "d (host 1) → b (host 2)");
    let id_d = lab.vms[d].id.clone();
    lab.hosts[0].cli(&["nic", "del", &id_d]);
    let dot = lab.hosts[0].cli(&["status"]);
    assert!(!dot.contains("switch-42"), "switch-42 still there: {dot}");
    assert!(!dot.contains(&id_d), "NIC d still in the graph: {dot}");
    assert!(
        lab.vms[a].ping("10.0.42.2", 3),
        "a → b after the switch went away"
    );
}

#[test]
fn security_groups_allow_icmp_and_tcp_5000_block_6000_and_spoofing() {
    let mut lab = lab("s");
    web_sg(&lab);
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = vm(&mut lab, 0, 42, "10.0.42.1", &sg);
    let b = vm(&mut lab, 1, 42, "10.0.42.2", &sg);
    assert!(lab.vms[a].reach("10.0.42.2"), "ICMP allowed a → b");

    let _s5000 = lab.vms[b].ns.spawn(&[
        "socat",
        "TCP-LISTEN:5000,reuseaddr,fork",
        "SYSTEM:echo port5000",
    ]);
    let _s6000 = lab.vms[b].ns.spawn(&[
        "socat",
        "TCP-LISTEN:6000,reuseaddr,fork",
        "SYSTEM:echo port6000",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let connect = |port: u16| {
        let out = lab.vms[a].ns.run(&[
            "socat",
            "-T",
            "3",
            "-",
            &format!("TCP:10.0.42.2:{port},connect-timeout=3"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(connect(5000), "port5000", "TCP/5000 is allowed");
    let id_b = lab.vms[b].id.clone();
    let fw_before = lab.hosts[1].stat(&id_b, "dropped_firewall");
    assert_eq!(connect(6000), "", "TCP/6000 is blocked");
    let fw_after = lab.hosts[1].stat(&id_b, "dropped_firewall");
    assert!(
        fw_after > fw_before,
        "b's firewall dropped nothing ({fw_before} → {fw_after})"
    );

    // A rule added live opens TCP/6000 on every NIC using the group.
    lab.hosts[1].cli(&[
        "sg",
        "rule",
        "add",
        "web",
        "--dir",
        "in",
        "--ip-proto",
        "tcp",
        "--port",
        "6000",
        "--cidr",
        "0.0.0.0/0",
    ]);
    assert_eq!(
        connect(6000),
        "port6000",
        "TCP/6000 after the rule was added"
    );

    // A rule whose remote is the members of another group: TCP/7000 from `friends`,
    // blocked while a is not a member, allowed once it is.
    let _s7000 = lab.vms[b].ns.spawn(&[
        "socat",
        "TCP-LISTEN:7000,reuseaddr,fork",
        "SYSTEM:echo port7000",
    ]);
    lab.hosts[1].cli(&["sg", "add", "friends"]);
    lab.hosts[1].cli(&[
        "sg",
        "rule",
        "add",
        "web",
        "--dir",
        "in",
        "--ip-proto",
        "tcp",
        "--port",
        "7000",
        "--sg-members",
        "friends",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        connect(7000),
        "",
        "TCP/7000 before a is a member of friends"
    );
    lab.hosts[1].cli(&["sg", "member", "add", "friends", "10.0.42.1"]);
    assert_eq!(connect(7000), "port7000", "TCP/7000 once a is a member");

    // Spoofed source: a second address on a's interface that is not the NIC's IP.
    let id_a = lab.vms[a].id.clone();
    lab.vms[a].ns.addr(&id_a, "10.0.42.99/24");
    let spoof_before = lab.hosts[0].stat(&id_a, "dropped_antispoof");
    let spoofed = lab.vms[a].ns.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        "-I",
        "10.0.42.99",
        "10.0.42.2",
    ]);
    assert!(!spoofed.status.success(), "a spoofed source got through");
    let spoof_after = lab.hosts[0].stat(&id_a, "dropped_antispoof");
    assert!(
        spoof_after >= spoof_before + 3,
        "antispoof dropped {} of 3 spoofed pings",
        spoof_after - spoof_before
    );
}

#[test]
fn nic_del_readd_and_daemon_kill9_restart_recover_traffic() {
    let mut lab = lab("r");
    web_sg(&lab);
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = vm(&mut lab, 0, 42, "10.0.42.1", &sg);
    let b = vm(&mut lab, 1, 42, "10.0.42.2", &sg);
    assert!(lab.vms[a].reach("10.0.42.2"), "a → b before anything");

    // nic del: b's tap disappears, a reaches nobody; re-add: traffic again.
    let id_b = lab.vms[b].id.clone();
    let mac_b = lab.vms[b].mac.clone();
    lab.hosts[1].cli(&["nic", "del", &id_b]);
    assert!(!lab.vms[a].ping("10.0.42.2", 2), "b answered after nic del");
    lab.hosts[1].cli(&[
        "nic",
        "add",
        "--id",
        &id_b,
        "--mac",
        &mac_b,
        "--vni",
        "42",
        "--ip",
        "10.0.42.2",
        "--type",
        "tap",
        "--sg",
        "web",
        "--enable-antispoof",
    ]);
    lab.hosts[1].plug(&lab.vms[b]);
    assert!(lab.vms[a].reach("10.0.42.2"), "a → b after nic re-add");

    // kill -9 host 2's daemon: the configuration survives, the tap comes back (a tap
    // lives as long as its file descriptor: the VM gets a new one), traffic recovers.
    let dump = lab.hosts[1].cli(&["dump"]);
    lab.hosts[1].kill9();
    assert!(
        !lab.vms[a].ping("10.0.42.2", 2),
        "b answered with its daemon dead"
    );
    lab.hosts[1].start();
    assert_eq!(
        lab.hosts[1].cli(&["dump"]),
        dump,
        "configuration after kill -9"
    );
    lab.hosts[1].plug(&lab.vms[b]);
    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "a → b after the restart\n{}",
        lab.hosts[1].log()
    );
    assert!(lab.vms[b].ping("10.0.42.1", 3), "b → a after the restart");

    // dump / load round trip on the live daemon: replaying the dump with --replace
    // changes nothing and traffic still flows.
    let file = lab.hosts[1].dir.join("dump.json");
    std::fs::write(&file, lab.hosts[1].cli(&["dump"])).unwrap();
    lab.hosts[1].cli(&["request", "--replace", file.to_str().unwrap()]);
    assert_eq!(
        lab.hosts[1].cli(&["dump"]),
        dump,
        "configuration after load"
    );
    assert!(lab.vms[a].ping("10.0.42.2", 3), "a → b after dump/load");

    // SIGTERM detaches XDP: no program left on the underlay.
    let st = lab.hosts[1].terminate();
    assert!(st.success(), "butterflyd after SIGTERM: {st}");
    let link = lab.hosts[1]
        .ns
        .run_ok(&["ip", "-d", "link", "show", &lab.hosts[1].nic]);
    assert!(!link.contains("prog/xdp"), "XDP still attached: {link}");
}

#[test]
fn packet_trace_file_grows_and_tshark_reads_it() {
    let mut lab = lab("t");
    web_sg(&lab);
    let trace = lab.hosts[0].dir.join("a.pcap");
    let trace_s = trace.to_str().unwrap().to_string();
    let a = vm(
        &mut lab,
        0,
        42,
        "10.0.42.1",
        &["--sg", "web", "--packet-trace", "--trace-path", &trace_s],
    );
    let _b = vm(&mut lab, 1, 42, "10.0.42.2", &["--sg", "web"]);
    assert!(lab.vms[a].reach("10.0.42.2"), "a → b with the trace on");
    let size1 = std::fs::metadata(&trace).map(|m| m.len()).unwrap_or(0);
    assert!(size1 > 24, "trace file {} is empty", trace.display());
    assert!(lab.vms[a].ping("10.0.42.2", 4), "4 more pings");
    let size2 = std::fs::metadata(&trace).unwrap().len();
    assert!(size2 > size1, "trace did not grow: {size1} → {size2}");
    let req = butterfly_tests::tshark::count(&trace, "icmp.type == 8 && ip.dst == 10.0.42.2");
    let rep = butterfly_tests::tshark::count(&trace, "icmp.type == 0 && ip.src == 10.0.42.2");
    assert!(
        req >= 5 && rep >= 5,
        "tshark: {req} requests, {rep} replies"
    );
    // Trace off: the file stops growing.
    let id_a = lab.vms[a].id.clone();
    lab.hosts[0].cli(&["nic", "update", "--id", &id_a, "--packet-trace", "false"]);
    let size3 = std::fs::metadata(&trace).unwrap().len();
    assert!(lab.vms[a].ping("10.0.42.2", 2), "pings with the trace off");
    assert_eq!(std::fs::metadata(&trace).unwrap().len(), size3);
}

#[test]
fn ipv6_guests_across_hosts_with_bypass_filtering() {
    let mut lab = lab("6");
    // No security group at all: with filtering, inbound would be denied; bypass skips
    // firewall and antispoof.
    let a = vm(&mut lab, 0, 42, "fd00:42::1", &["--bypass-filtering"]);
    let b = vm(&mut lab, 1, 42, "fd00:42::2", &["--bypass-filtering"]);
    for i in [a, b] {
        let vm = &lab.vms[i];
        // The VM namespaces start with IPv6 off; this test wants it (without DAD delay).
        for key in ["all", "default", &vm.id] {
            vm.ns.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6=0"));
        }
        vm.ns.run_ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", vm.ip),
            "dev",
            &vm.id,
            "nodad",
        ]);
    }
    let dot = lab.hosts[0].cli(&["status"]);
    let id_a = lab.vms[a].id.clone();
    assert!(
        !dot.contains(&format!("firewall-{id_a}")) && !dot.contains(&format!("antispoof-{id_a}")),
        "bypass_filtering left filtering bricks: {dot}"
    );
    assert!(
        dot.contains(&format!("\"vm-{id_a}\" -> \"vtep\"")),
        "vm-{id_a} not linked straight to the VTEP: {dot}"
    );
    assert!(
        lab.vms[a].reach("fd00:42::2"),
        "ping fd00:42::1 → fd00:42::2"
    );
    assert!(
        lab.vms[b].ping("fd00:42::1", 3),
        "ping fd00:42::2 → fd00:42::1"
    );
}

#[test]
fn ipv6_underlay_carries_ipv4_guests() {
    let mut lab = lab_on("u", ["fd99::1", "fd99::2"]);
    web_sg(&lab);
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = vm(&mut lab, 0, 42, "10.0.42.1", &sg);
    let b = vm(&mut lab, 1, 42, "10.0.42.2", &sg);
    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "a → b over the IPv6 underlay (flood group ff0e::2a)\nhost1:\n{}\nhost2:\n{}",
        lab.hosts[0].log(),
        lab.hosts[1].log()
    );
    assert!(
        lab.vms[b].ping("10.0.42.1", 3),
        "b → a over the IPv6 underlay"
    );
}

#[test]
fn static_flood_lists_replace_the_multicast_group() {
    let mut lab = lab("f");
    web_sg(&lab);
    lab.hosts[0].cli(&["flood", "add", "42", "10.99.0.2"]);
    lab.hosts[1].cli(&["flood", "add", "42", "10.99.0.1"]);
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = vm(&mut lab, 0, 42, "10.0.42.1", &sg);
    let b = vm(&mut lab, 1, 42, "10.0.42.2", &sg);
    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "a → b with static flood lists\nhost1:\n{}",
        lab.hosts[0].log()
    );
    assert!(
        lab.vms[b].ping("10.0.42.1", 3),
        "b → a with static flood lists"
    );
}

/// The MTU of interface `dev` in `ns` (`ip -o link show`).
fn link_mtu(ns: &butterfly_tests::Netns, dev: &str) -> u32 {
    let out = ns.run_ok(&["ip", "-o", "link", "show", dev]);
    let at = out.find(" mtu ").expect("mtu in ip link output") + 5;
    out[at..]
        .split_whitespace()
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("bad mtu in {out}"))
}

#[test]
fn mtu_vms_get_underlay_minus_50_df_pings_fit_and_the_vtep_drops_bigger() {
    prerequisites();
    // Host 1 takes its underlay's MTU (1500), host 2 is told --mtu 1400.
    let mut lab = Lab::new("bdm", ["10.99.0.1", "10.99.0.2"]);
    lab.hosts[1].extra_args = vec!["--mtu".into(), "1400".into()];
    for h in &mut lab.hosts {
        h.tap_vm_mtu = None;
    }
    lab.start();
    assert!(
        lab.hosts[0]
            .cli(&["status"])
            .contains("underlay MTU 1500, VM MTU 1450"),
        "host 1 MTUs"
    );
    assert!(
        lab.hosts[1]
            .cli(&["status"])
            .contains("underlay MTU 1400, VM MTU 1350"),
        "host 2 MTUs"
    );
    let a = vm(&mut lab, 0, 42, "10.0.42.1", &["--bypass-filtering"]);
    let b = vm(&mut lab, 1, 42, "10.0.42.2", &["--bypass-filtering"]);
    let (va, vb) = (&lab.vms[a], &lab.vms[b]);
    assert_eq!(link_mtu(&va.ns, &va.id), 1450, "a's tap: 1500 − 50");
    assert_eq!(link_mtu(&vb.ns, &vb.id), 1350, "b's tap: 1400 − 50");
    assert!(va.reach("10.0.42.2"), "a → b\n{}", lab.logs());

    // DF pings of exactly b's MTU (1350-byte IP packets: 1322 bytes of ICMP data) pass
    // both ways; one byte more cannot leave b (its MTU).
    let df = |vm: &butterfly_tests::daemon::TapVm, size: u32, dst: &str| {
        vm.ns
            .run(&[
                "ping",
                "-M",
                "do",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                "-s",
                &size.to_string(),
                dst,
            ])
            .status
            .success()
    };
    assert!(df(va, 1322, "10.0.42.2"), "DF ping at the MTU a → b");
    assert!(df(vb, 1322, "10.0.42.1"), "DF ping at the MTU b → a");
    assert!(!df(vb, 1323, "10.0.42.1"), "DF ping above b's MTU left b");

    // A guest that ignores its MTU: b's interface raised to 1450, 1428-byte packets
    // would make 1478-byte outer packets on host 2's 1400-byte underlay: its VTEP drops
    // and counts them instead of sending them.
    vb.ns.run_ok(&["ip", "link", "set", &vb.id, "mtu", "1450"]);
    let before = lab.hosts[1].vtep_too_big();
    assert!(!df(vb, 1400, "10.0.42.1"), "oversized frames crossed");
    let after = lab.hosts[1].vtep_too_big();
    assert!(
        after >= before + 2,
        "host 2's VTEP dropped {} of 2 oversized frames",
        after - before
    );
    assert!(
        df(vb, 1322, "10.0.42.1"),
        "frames within the MTU still pass"
    );

    // --mtu above the interface's: butterflyd refuses to start and says why.
    let st = lab.hosts[1].terminate();
    assert!(st.success(), "SIGTERM: {st}");
    lab.hosts[1].extra_args = vec!["--mtu".into(), "1600".into()];
    let e = lab.hosts[1]
        .try_start()
        .expect_err("butterflyd started with --mtu above the interface's");
    assert!(
        e.contains("--mtu 1600: the underlay interface") && e.contains("has MTU 1500"),
        "unclear MTU error: {e}"
    );
}
