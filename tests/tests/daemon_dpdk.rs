//! butterflyd with the DPDK backend (`--nic-backend dpdk`), end to end: the cross-host
//! scenario of `daemon_e2e` with host 1 on DPDK and host 2 on AF_XDP.
//!
//! Two hosts as network namespaces joined by a veth underlay. Host 1's butterflyd
//! initialises the DPDK EAL with `--no-huge --no-pci --no-shconf` and a `net_af_packet`
//! vdev bound to its underlay veth (inside its namespace), and uses that DPDK port as
//! the underlay: no XDP program, and the kernel of host 1 holds no address on the veth,
//! so the VTEP alone owns 10.99.0.1 (it answers ARP itself). Host 2's butterflyd runs on
//! AF_XDP as usual. "VMs" are tap NICs moved into namespaces (see `daemon_e2e`): a on
//! host 1 and b on host 2 on VNI 42, c on host 2 on VNI 7 in the same subnet.
//!
//! Checks: pings a ⇄ b both ways, VNI 7 isolated (c reaches nobody and nothing of VNI 42
//! is delivered to c), the NICs' counters from `butterfly nic stats`, `status` naming the
//! DPDK port, no XDP program on host 1's veth, a clean exit on SIGTERM; and EAL failures
//! (unknown vdev driver) stop butterflyd at start with the EAL's error and its fix.
//!
//! Built only with the `dpdk` feature of this crate (`cargo xtask test` turns it on),
//! which also builds butterflyd with its DPDK backend. Needs root, ping and libdpdk.

#![cfg(feature = "dpdk")]

use butterfly_tests::daemon::{Host, Lab, bin_dir};
use butterfly_tests::{Netns, TempDir, require_root, require_tool, unique_ifname, veth_pair};

/// EAL arguments of a test daemon: no hugepages, no PCI scan, no shared files (so it
/// runs beside other DPDK tests), a unique file prefix, then the vdevs.
fn eal_args(vdevs: &[String]) -> String {
    let mut a = format!(
        "--no-huge -m 256 --no-pci --no-shconf --file-prefix {}",
        unique_ifname("bfdd")
    );
    for v in vdevs {
        a.push_str(" --vdev ");
        a.push_str(v);
    }
    a
}

#[test]
fn dpdk_host_and_afxdp_host_ping_across_with_vni_isolation() {
    require_root();
    require_tool("ping");
    require_tool("ip");
    let mut lab = Lab::new("bdd", ["10.99.0.1", "10.99.0.2"]);
    // Host 1: DPDK owns the underlay; the kernel keeps the interface up, no address.
    let h1 = &mut lab.hosts[0];
    h1.ns.run_ok(&["ip", "addr", "flush", "dev", &h1.nic]);
    let vdev = format!("net_af_packet0,iface={}", h1.nic);
    h1.extra_args = vec![
        "--nic-backend".into(),
        "dpdk".into(),
        "--dpdk-args".into(),
        eal_args(&[vdev]),
        "--dpdk-port".into(),
        "0".into(),
    ];
    lab.start();
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);

    let status = h1.cli(&["status"]);
    assert!(
        status.contains("DPDK port 0 (net_af_packet0") && status.contains("no XDP program"),
        "host 1 status does not name the DPDK port:\n{status}"
    );
    let link = h1.ns.run_ok(&["ip", "-d", "link", "show", &h1.nic]);
    assert!(
        !link.contains("prog/xdp"),
        "XDP attached in DPDK mode: {link}"
    );
    assert!(
        h1.log().contains("no XDP program attached"),
        "host 1 log does not say that no XDP program is attached:\n{}",
        h1.log()
    );
    assert!(
        h2.cli(&["status"]).contains("AF_XDP on"),
        "host 2 is not on AF_XDP"
    );

    for h in &lab.hosts {
        h.try_web_sg()
            .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    }
    let sg = ["--sg", "web", "--enable-antispoof"];
    let a = lab.tap_vm(0, "bddv", "52:54:00:42:00:01", 42, "10.0.42.1", &sg);
    let b = lab.tap_vm(1, "bddv", "52:54:00:42:00:02", 42, "10.0.42.2", &sg);
    let c = lab.tap_vm(1, "bddv", "52:54:00:42:00:03", 7, "10.0.42.3", &sg);
    let (id_a, id_b, id_c) = (
        lab.vms[a].id.clone(),
        lab.vms[b].id.clone(),
        lab.vms[c].id.clone(),
    );

    assert!(
        lab.vms[a].reach("10.0.42.2"),
        "a (DPDK host) cannot ping b (AF_XDP host) on VNI 42\n{}",
        lab.logs()
    );
    assert!(lab.vms[a].ping("10.0.42.2", 5), "5 more pings a → b");
    assert!(lab.vms[b].ping("10.0.42.1", 5), "5 pings b → a");

    // VNI isolation: c (VNI 7, same subnet) reaches nobody, nobody reaches c.
    assert!(!lab.vms[c].ping("10.0.42.1", 2), "VNI 7 reached a (VNI 42)");
    assert!(!lab.vms[c].ping("10.0.42.2", 2), "VNI 7 reached b (VNI 42)");
    assert!(!lab.vms[a].ping("10.0.42.3", 2), "VNI 42 (a) reached c");

    // Counters (rx = from the VM, tx = to the VM). a sent ≥ 6 echo requests and 5 replies
    // and received as many, through the DPDK port; b the same through AF_XDP.
    let (h1, h2) = (&lab.hosts[0], &lab.hosts[1]);
    for (h, id, name) in [(h1, &id_a, "a"), (h2, &id_b, "b")] {
        let rx = h.stat(id, "rx_packets");
        let tx = h.stat(id, "tx_packets");
        assert!(
            rx >= 11 && tx >= 11,
            "nic stats of {name}: rx {rx} tx {tx}, expected ≥ 11 each"
        );
        assert_eq!(
            h.stat(id, "dropped_antispoof"),
            0,
            "{name}: antispoof drops"
        );
    }
    // c asked (ARP) for a and b on VNI 7 and got nothing: nothing was delivered to it,
    // not even VNI 42's broadcasts.
    let c_rx = h2.stat(&id_c, "rx_packets");
    let c_tx = h2.stat(&id_c, "tx_packets");
    assert!(c_rx >= 1, "c sent nothing (rx {c_rx})");
    assert_eq!(c_tx, 0, "frames delivered to c on VNI 7");
    // The DPDK underlay brick carried the traffic (status: per-side packet counters).
    let dot = h1.cli(&["status"]);
    let underlay = dot
        .lines()
        .find(|l| l.contains("\"underlay\" [xlabel="))
        .unwrap_or_else(|| panic!("no underlay counters in:\n{dot}"));
    let nums: Vec<u64> = underlay
        .split(|ch: char| !ch.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        nums.iter().any(|&n| n >= 11),
        "underlay brick counters too low: {underlay}"
    );

    // SIGTERM: clean exit, port closed.
    let st = lab.hosts[0].terminate();
    assert!(
        st.success(),
        "butterflyd (DPDK) after SIGTERM: {st}\n{}",
        lab.hosts[0].log()
    );
    let log = lab.hosts[0].log();
    assert!(
        log.contains("dataplane stopped: underlay port closed"),
        "no clean stop in the log:\n{log}"
    );
}

#[test]
fn eal_failures_stop_butterflyd_at_start_with_the_cause() {
    require_root();
    require_tool("ip");
    let dir = TempDir::new("butterfly-bdde");
    let ns = Netns::new("bddeh");
    let mut veth = veth_pair("bddeu");
    veth.move_a_to(&ns);
    veth.move_b_to(&ns);
    let nic = veth.a().to_string();
    ns.up(&nic);
    let mut h = Host::new("host", ns, &nic, "10.99.0.1", dir.join("h"), bin_dir());

    // A vdev whose driver does not exist: the EAL fails (ENODEV) and says why.
    h.extra_args = vec![
        "--nic-backend".into(),
        "dpdk".into(),
        "--dpdk-args".into(),
        eal_args(&["net_nosuchdriver0".to_string()]),
    ];
    let e = h
        .try_start()
        .expect_err("butterflyd started with a bad vdev");
    assert!(
        e.contains("rte_eal_init") && e.contains("ENODEV") && e.contains("--vdev"),
        "unclear EAL error:\n{e}"
    );

    // A port that does not exist: the error lists the ports there are.
    h.extra_args = vec![
        "--nic-backend".into(),
        "dpdk".into(),
        "--dpdk-args".into(),
        eal_args(&[format!("net_af_packet0,iface={nic}")]),
        "--dpdk-port".into(),
        "3".into(),
    ];
    let e = h
        .try_start()
        .expect_err("butterflyd started on a missing port");
    assert!(
        e.contains("--dpdk-port 3") && e.contains("net_af_packet0"),
        "unclear port error:\n{e}"
    );
}
