//! The bricks: one file each, with their tests beside them.

mod collect;
pub mod nic;
mod nop;
mod packetgen;
pub mod tap;

pub use collect::Collect;
pub use nic::{Nic, NicBackend};
pub use nop::Nop;
pub use packetgen::PacketGen;
pub use tap::{Tap, TapCounters, TapError};
