//! The DPDK EAL from the `nic` brick's DPDK backend: initialised once per process, and
//! its failures come back typed, with the cause and the fix. Each test is its own process
//! (cargo-nextest), as the EAL can be initialised only once per process.

mod dpdk_util;

use std::time::Duration;

use butterfly_tests::require_root;
use dpdk_util::*;
use packetgraph::bricks::nic::NicBackend;
use packetgraph::bricks::nic::dpdk::{
    Dpdk, DpdkConfig, DpdkError, PortId, eal_args as running_args, eal_init, port_names, probe,
};

#[test]
fn bad_arguments_fail_with_einval_and_the_failure_sticks() {
    require_root();
    let e = eal_init(&["--no-huge", "--no-such-eal-option"]).unwrap_err();
    match &e {
        DpdkError::EalInit { name, errno, .. } => {
            assert_eq!(*name, "EINVAL");
            assert_eq!(*errno, libc::EINVAL);
        }
        other => panic!("expected EalInit, got {other}"),
    }
    assert!(e.to_string().contains("invalid EAL arguments"), "{e}");
    // rte_eal_init cannot be retried in this process: the same failure comes back.
    let again = eal_init(&eal_args(&[])).unwrap_err();
    assert_eq!(again.to_string(), e.to_string());
    assert!(running_args().is_none());
    assert!(matches!(
        Dpdk::open(&DpdkConfig::new(PortId::Id(0)), &pool()),
        Err(DpdkError::EalInit { .. })
    ));
}

#[test]
fn no_hugepages_fail_with_eacces_and_say_how_to_fix_it() {
    require_root();
    // A --huge-dir that is not a hugetlbfs mount: no hugepage information at all.
    let dir = std::env::temp_dir().join(format!("bf-nohuge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = [
        "--no-pci",
        "--no-shconf",
        "-m",
        "64",
        "-l",
        "0",
        "--huge-dir",
        dir.to_str().unwrap(),
    ];
    let e = eal_init(&args).unwrap_err();
    let _ = std::fs::remove_dir(&dir);
    assert!(
        matches!(&e, DpdkError::EalInit { name: "EACCES", .. }),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("hugepages") && text.contains("--no-huge -m 512"),
        "{text}"
    );
}

#[test]
fn unknown_vdev_driver_fails_with_enodev() {
    require_root();
    let e = eal_init(&eal_args(&["net_nosuchdriver0".into()])).unwrap_err();
    assert!(
        matches!(&e, DpdkError::EalInit { name: "ENODEV", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("driver that does not exist"), "{e}");
}

#[test]
fn eal_runs_once_per_process_and_ports_open_by_name() {
    require_root();
    let args = eal_args(&["net_null0".into()]);
    eal_init(&args).unwrap();
    // The same arguments again: nothing to do.
    eal_init(&args).unwrap();
    assert_eq!(running_args().unwrap(), args.as_slice());
    // Other arguments: refused, naming both.
    let other = eal_args(&["net_null5".into()]);
    let e = eal_init(&other).unwrap_err();
    match &e {
        DpdkError::EalArgsMismatch { first, asked } => {
            assert_eq!(first, &args);
            assert_eq!(asked, &other);
        }
        x => panic!("expected EalArgsMismatch, got {x}"),
    }
    assert_eq!(port_names(), vec!["net_null0".to_string()]);

    // A port that did not probe: the error lists the ports there are.
    let e = Dpdk::open(&DpdkConfig::new(PortId::Name("net_tap9".into())), &pool())
        .err()
        .unwrap();
    match &e {
        DpdkError::NoPort { name, available } => {
            assert_eq!(name, "net_tap9");
            assert_eq!(available, &vec!["net_null0".to_string()]);
        }
        x => panic!("expected NoPort, got {x}"),
    }
    assert!(matches!(
        Dpdk::open(&DpdkConfig::new(PortId::Id(7)), &pool()),
        Err(DpdkError::NoPort { .. })
    ));
    // Hot-plug: an unknown driver is refused, a known one becomes a port.
    let e = probe("net_nosuchdriver1").unwrap_err();
    assert!(matches!(e, DpdkError::Probe { .. }), "{e}");
    probe("net_null1").unwrap();
    assert_eq!(
        port_names(),
        vec!["net_null0".to_string(), "net_null1".to_string()]
    );

    // Configuration checked before touching the port.
    let mut cfg = DpdkConfig::new(PortId::Name("net_null0".into()));
    cfg.mbufs = 100;
    assert!(matches!(
        Dpdk::open(&cfg, &pool()),
        Err(DpdkError::Config(_))
    ));

    // The null PMD: every RX burst is full of 64-byte frames, TX swallows everything.
    let p = pool();
    let mut port = Dpdk::open(&DpdkConfig::new(PortId::Name("net_null0".into())), &p).unwrap();
    assert_eq!(port.name(), "net_null0");
    assert!(port.link().unwrap().up);
    let got = receive(&mut port, 64, Duration::from_secs(2));
    assert_eq!(got.len(), 64);
    assert!(
        got.iter().all(|f| f.len() == 64),
        "null PMD frames are 64 bytes"
    );
    let frames: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 60 + i as usize]).collect();
    assert_eq!(port.tx_burst(burst_of(&p, &frames)).unwrap(), 10);
    let s = port.port_stats().unwrap();
    assert_eq!(s.opackets, 10);
    // (The null PMD counts packets, not bytes: the backend's own counter has them.)
    assert_eq!(
        counter(&port, "tx_bytes"),
        (0..10u64).map(|i| 60 + i).sum::<u64>()
    );
    assert!(s.ipackets >= 64);
    // Every pool frame and mbuf came back.
    drop(got);
    assert_eq!(p.available(), 1024);
    drop(port);
}
