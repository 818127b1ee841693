//! The bricks: one file each, with their tests beside them.

mod collect;
pub mod firewall;
pub mod nic;
mod nop;
mod packetgen;

pub use collect::Collect;
pub use firewall::Firewall;
pub use nic::{Nic, NicBackend};
pub use nop::Nop;
pub use packetgen::PacketGen;
