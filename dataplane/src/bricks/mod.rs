//! The bricks: one file each, with their tests beside them.

mod collect;
pub mod nic;
mod nop;
mod packetgen;
pub mod vtep;

pub use collect::Collect;
pub use nic::{Nic, NicBackend};
pub use nop::Nop;
pub use packetgen::PacketGen;
pub use vtep::{Flood, Vtep, VtepConfig};
