//! The netns helpers themselves: namespaces and veth pairs are created, usable, entered
//! from a thread, and gone after drop.

use std::path::Path;

use butterfly_tests::{Netns, require_root, run, veth_pair};

fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

#[test]
fn veth_between_two_namespaces_pings_and_everything_is_removed_on_drop() {
    require_root();
    let (a_name, b_name, va, vb);
    {
        let a = Netns::new("nsA");
        let b = Netns::new("nsB");
        let ours = std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/disable_ipv6").unwrap();
        a.disable_ipv6();
        assert_eq!(
            a.run_ok(&["cat", "/proc/sys/net/ipv6/conf/default/disable_ipv6"])
                .trim(),
            "1"
        );
        assert_eq!(
            b.run_ok(&["cat", "/proc/sys/net/ipv6/conf/default/disable_ipv6"]),
            ours,
            "only namespace A changed"
        );
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/disable_ipv6").unwrap(),
            ours,
            "our namespace is untouched"
        );
        let mut veth = veth_pair("ns");
        assert!(veth.a().len() <= 15 && veth.b().len() <= 15);
        assert!(ifindex(veth.a()).is_some(), "veth created in our namespace");
        veth.move_a_to(&a);
        veth.move_b_to(&b);
        assert!(ifindex(veth.a()).is_none(), "veth a left our namespace");
        a.addr(veth.a(), "10.78.0.1/24");
        b.addr(veth.b(), "10.78.0.2/24");
        a.up(veth.a());
        b.up(veth.b());
        let out = a.run(&["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "10.78.0.2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(b.link_stat(veth.b(), "rx_packets") >= 2);

        // Entering B on this thread shows B's interfaces; leaving restores ours.
        b.within(|| {
            assert!(ifindex(veth.b()).is_some(), "inside B, veth b is visible");
        });
        assert!(ifindex(veth.b()).is_none(), "back in our namespace");

        // A spawned process is killed with its guard.
        let child = a.spawn(&["sleep", "30"]);
        let pid = child.id();
        drop(child);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());

        a_name = a.name().to_string();
        b_name = b.name().to_string();
        va = veth.a().to_string();
        vb = veth.b().to_string();
    }
    assert!(!Path::new("/run/netns").join(&a_name).exists());
    assert!(!Path::new("/run/netns").join(&b_name).exists());
    let links = String::from_utf8_lossy(&run(&["ip", "-o", "link"]).stdout).into_owned();
    assert!(!links.contains(&va) && !links.contains(&vb), "{links}");
}

#[test]
fn namespace_is_deleted_even_when_the_test_panics() {
    require_root();
    let name = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let n2 = name.clone();
    let r = std::panic::catch_unwind(move || {
        let ns = Netns::new("nsP");
        *n2.lock().unwrap() = ns.name().to_string();
        panic!("test failure inside a namespace");
    });
    assert!(r.is_err());
    let name = name.lock().unwrap().clone();
    assert!(!name.is_empty());
    assert!(
        !Path::new("/run/netns").join(&name).exists(),
        "{name} left behind"
    );
}
