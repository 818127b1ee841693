//! Finds libdpdk with pkg-config, compiles the C shim (`shim.c`) with DPDK's cflags and
//! generates bindings for an allowlist of EAL, ethdev, mbuf and mempool items.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    // Link flags (librte_*), emitted as cargo instructions by the pkg-config crate.
    let lib = pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            panic!(
                "libdpdk (DPDK >= 22.11) not found by pkg-config: install it with \
                 `apt-get install dpdk dpdk-dev libdpdk-dev` (cargo xtask deps), or build \
                 without the `dpdk` feature.\n{e}"
            )
        });

    // The full cflags (`-include rte_config.h -march=...` matter, and the pkg-config
    // crate's Library only keeps include paths and defines).
    let out = Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("pkg-config runs");
    assert!(out.status.success(), "pkg-config --cflags libdpdk failed");
    let cflags: Vec<String> = String::from_utf8(out.stdout)
        .expect("cflags are UTF-8")
        .split_whitespace()
        .map(str::to_string)
        .collect();

    let mut cc = cc::Build::new();
    cc.file("shim.c").include(".").opt_level(3).warnings(false);
    for f in &cflags {
        cc.flag(f);
    }
    cc.compile("butterfly_dpdk_shim");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let mut b = bindgen::Builder::default()
        .header("shim.h")
        .clang_args(&cflags)
        .clang_arg("-I.")
        .use_core()
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for f in [
        "bf_.*",
        "rte_eal_init",
        "rte_eal_cleanup",
        "rte_strerror",
        "rte_socket_id",
        "rte_thread_register",
        "rte_thread_unregister",
        "rte_dev_probe",
        "rte_dev_remove",
        "rte_eth_dev_configure",
        "rte_eth_dev_adjust_nb_rx_tx_desc",
        "rte_eth_rx_queue_setup",
        "rte_eth_tx_queue_setup",
        "rte_eth_dev_start",
        "rte_eth_dev_stop",
        "rte_eth_dev_close",
        "rte_eth_dev_info_get",
        "rte_eth_dev_socket_id",
        "rte_eth_dev_is_valid_port",
        "rte_eth_dev_get_port_by_name",
        "rte_eth_dev_get_name_by_port",
        "rte_eth_dev_count_avail",
        "rte_eth_stats_get",
        "rte_eth_stats_reset",
        "rte_eth_macaddr_get",
        "rte_eth_dev_get_mtu",
        "rte_eth_dev_set_mtu",
        "rte_eth_link_get_nowait",
        "rte_eth_promiscuous_enable",
        "rte_eth_promiscuous_disable",
        "rte_pktmbuf_pool_create",
        "rte_pktmbuf_free_bulk",
        "rte_mempool_free",
        "rte_mempool_avail_count",
        "rte_mempool_in_use_count",
    ] {
        b = b.allowlist_function(f);
    }
    for t in [
        "rte_eth_conf",
        "rte_eth_dev_info",
        "rte_eth_stats",
        "rte_eth_link",
        "rte_eth_rxconf",
        "rte_eth_txconf",
        "rte_ether_addr",
        "rte_mbuf",
        "rte_mempool",
        "bf_csum",
        "bf_l3",
    ] {
        b = b.allowlist_type(t);
    }
    // rte_mbuf and rte_mempool stay opaque: Rust only passes pointers to them.
    b = b.opaque_type("rte_mbuf").opaque_type("rte_mempool");
    for v in [
        "RTE_ETH_MQ_RX_NONE",
        "RTE_ETH_MQ_TX_NONE",
        "RTE_ETH_LINK_.*",
        "RTE_ETHER_.*",
        "RTE_MAX_ETHPORTS",
        "RTE_ETH_NAME_MAX_LEN",
        "E_RTE_.*",
        "RTE_MAX_ERRNO",
        "SOCKET_ID_ANY",
    ] {
        b = b.allowlist_var(v);
    }
    let bindings = b.generate().expect("bindgen failed on DPDK headers");
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .expect("write bindings.rs");
    let _ = lib;
}
