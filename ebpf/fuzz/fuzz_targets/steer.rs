//! Fuzzes the XDP steering program: any frame ends in exactly one counter, the program
//! never fails to run, and without a registered socket the action is always XDP_PASS.

#![no_main]

use std::sync::{Mutex, OnceLock};

use butterfly_ebpf::{Steering, Variant, action};
use libfuzzer_sys::fuzz_target;

fn steering() -> &'static Mutex<Steering> {
    static S: OnceLock<Mutex<Steering>> = OnceLock::new();
    S.get_or_init(|| {
        let mut s = Steering::load(Variant::Linear).expect("needs root (CAP_BPF)");
        s.set_vxlan_port(4789).unwrap();
        s.add_vtep_addr("10.0.0.1".parse().unwrap()).unwrap();
        s.add_vtep_addr("fd00::1".parse().unwrap()).unwrap();
        s.join_group("239.1.1.42".parse().unwrap()).unwrap();
        Mutex::new(s)
    })
}

fuzz_target!(|frame: &[u8]| {
    // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header or above a page.
    if frame.len() < 14 || frame.len() > 3000 {
        return;
    }
    let s = steering().lock().unwrap();
    let before = s.counters().unwrap();
    let act = s.test_run(frame).unwrap();
    let after = s.counters().unwrap();
    assert_eq!(act, action::XDP_PASS);
    let moved = (after.steered - before.steered)
        + (after.passed - before.passed)
        + (after.malformed - before.malformed)
        + (after.no_socket - before.no_socket);
    assert_eq!(moved, 1);
});
