//! The demo run by `cargo xtask demo`: two hosts, a `butterflyd` on each, VMs on VXLAN.
//!
//! ```text
//!   host1 (netns)                                     host2 (netns)
//!   butterflyd: AF_XDP on the underlay veth           butterflyd: AF_XDP on the underlay veth
//!   10.99.0.1 ═══════════════ veth underlay ═══════════════ 10.99.0.2
//!     │ VNI 42                                          │ VNI 42       │ VNI 7
//!   "VM" a 10.0.42.1                               "VM" b 10.0.42.2  "VM" c 10.0.42.3
//! ```
//!
//! The "VMs" are TAP NICs of the daemons (`butterfly nic add --type tap`) moved into
//! their own network namespaces: the kernel of each namespace plays the guest. (QEMU
//! guests attach the same way with `--type vhost-user-server`; the end-to-end tests cover
//! the tap path, which is fast and deterministic.)
//!
//! Steps: security group `web` (ICMP and TCP/5000 in) on both hosts through the CLI;
//! ping across the hosts; TCP/5000 works; TCP/6000 is blocked by the firewall; the VNI 7
//! VM reaches nobody on VNI 42; a spoofed source is dropped by antispoof; then `butterfly
//! status`, `nic stats`, the pcap trace of VM a (read back with tshark), and teardown
//! (also when a step fails). Exit status 0 only when every step succeeded.
//!
//! The `butterfly` and `butterflyd` binaries come from `BUTTERFLY_BIN_DIR` (set by
//! `cargo xtask demo`), else from the directory of this example's parent.

use std::process::ExitCode;
use std::time::Duration;

use butterfly_tests::daemon::{self, Host};
use butterfly_tests::demo::{self, Steps};
use butterfly_tests::{KillOnDrop, require_root, require_tool};

/// The two hosts, their tap VMs and the VMs' servers (dropped first).
struct Lab {
    servers: Vec<KillOnDrop>,
    lab: daemon::Lab,
}

impl Lab {
    /// VM `n`: a tap NIC of host `h` (id `vmN…`, MAC 52:54:00:42:00:N) with the `web`
    /// group and antispoof, in its own namespace.
    fn vm(&mut self, h: usize, n: u8, vni: u32, ip: &str, extra: &[&str]) -> Result<usize, String> {
        let mac = format!("52:54:00:42:00:{n:02x}");
        let mut args = vec!["--sg", "web", "--enable-antispoof"];
        args.extend_from_slice(extra);
        let i = self
            .lab
            .try_tap_vm(h, &format!("vm{n}"), &mac, vni, ip, &args)?;
        let vm = &self.lab.vms[i];
        println!(
            "        VM {n}: tap '{}' of {} in netns {}, MAC {mac}, {ip}, VNI {vni}",
            vm.id,
            self.lab.hosts[h].name,
            vm.ns.name()
        );
        Ok(i)
    }
}

fn setup() -> Result<Lab, String> {
    Ok(Lab {
        servers: Vec::new(),
        lab: demo::start_lab()?,
    })
}

fn demo(lab: &mut Lab, s: &mut Steps) -> Result<(), String> {
    println!("demo: VMs (tap NICs in their own network namespaces standing in for guests)");
    let trace = lab.lab.dir.join("vm1.pcap");
    let trace_s = trace.to_string_lossy().into_owned();
    let a = lab.vm(
        0,
        1,
        42,
        "10.0.42.1",
        &["--packet-trace", "--trace-path", &trace_s],
    )?;
    let b = lab.vm(1, 2, 42, "10.0.42.2", &[])?;
    let c = lab.vm(1, 3, 7, "10.0.42.3", &[])?;

    let ok = lab.lab.vms[a].reach("10.0.42.2") && lab.lab.vms[a].ping("10.0.42.2", 3);
    s.check("ping VM 1 (host1) → VM 2 (host2) on VNI 42", ok, "");
    s.check(
        "ping VM 2 (host2) → VM 1 (host1) on VNI 42",
        lab.lab.vms[b].ping("10.0.42.1", 3),
        "",
    );

    for port in [5000u16, 6000] {
        lab.servers.push(lab.lab.vms[b].ns.spawn(&[
            "socat",
            &format!("TCP-LISTEN:{port},reuseaddr,fork"),
            &format!("SYSTEM:echo hello-from-port-{port}"),
        ]));
    }
    std::thread::sleep(Duration::from_millis(300));
    let got = lab.lab.vms[a].tcp("10.0.42.2", 5000);
    s.check(
        "TCP/5000 VM 1 → VM 2 allowed",
        got == "hello-from-port-5000",
        &got,
    );
    let got = lab.lab.vms[a].tcp("10.0.42.2", 6000);
    s.check(
        "TCP/6000 VM 1 → VM 2 blocked by VM 2's firewall",
        got.is_empty(),
        &got,
    );

    let isolated = !lab.lab.vms[c].ping("10.0.42.1", 2) && !lab.lab.vms[c].ping("10.0.42.2", 2);
    s.check("VM 3 on VNI 7 reaches nobody on VNI 42", isolated, "");

    let id_a = lab.lab.vms[a].id.clone();
    let spoof_before = antispoof_drops(&lab.lab.hosts[0], &id_a)?;
    lab.lab.vms[a].ns.addr(&id_a, "10.0.42.99/24");
    let spoofed = lab.lab.vms[a].ns.run(&[
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
    let spoof_after = antispoof_drops(&lab.lab.hosts[0], &id_a)?;
    s.check(
        "spoofed source 10.0.42.99 from VM 1 dropped by antispoof",
        !spoofed.status.success() && spoof_after >= spoof_before + 3,
        &format!("antispoof drops {spoof_before} → {spoof_after}"),
    );

    println!("demo: butterfly status (host1)");
    print!("{}", lab.lab.hosts[0].try_cli(&["status"])?);
    println!("demo: butterfly nic stats (host1, host2)");
    print!("{}", lab.lab.hosts[0].try_cli(&["nic", "stats", &id_a])?);
    print!(
        "{}",
        lab.lab.hosts[1].try_cli(&["nic", "stats", &lab.lab.vms[b].id])?
    );
    println!("demo: packet trace of VM 1: {}", trace.display());
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
    for t in ["ping", "socat", "tshark", "ip"] {
        require_tool(t);
    }
    println!("demo: two hosts (network namespaces) joined by a veth underlay, butterflyd on each");
    let mut steps = Steps::default();
    let result = setup().and_then(|mut lab| {
        let r = demo(&mut lab, &mut steps);
        if r.is_err() || !steps.failed.is_empty() {
            for h in &lab.lab.hosts {
                println!("demo: {} daemon log:\n{}", h.name, h.log());
            }
        }
        println!("demo: teardown (daemons stopped, namespaces and interfaces removed)");
        drop(lab);
        r
    });
    steps.verdict(result)
}
