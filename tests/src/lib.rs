//! Helpers for end-to-end tests in network namespaces.
//!
//! Privileged tests start with [`netns::require_root`] (and [`netns::require_tool`] for
//! the external tools they run) so that a missing privilege fails with a message that
//! says what is missing instead of skipping silently.

pub mod cpu;
pub mod daemon;
pub mod demo;
pub mod netns;
pub mod qemu;
pub mod testpmd;
pub mod tmp;
pub mod tshark;
pub mod veth_rig;
pub mod xdpgen;

pub use netns::{
    IFNAME_MAX, KillOnDrop, Netns, NetnsGuard, Veth, link_up, move_to_netns, require_root,
    require_tool, run, run_ok, set_addr, unique_ifname, veth_pair, wait_for,
};
pub use tmp::TempDir;
