//! The bricks: one file each, with their tests beside them.

mod collect;
mod nop;
mod packetgen;

pub use collect::Collect;
pub use nop::Nop;
pub use packetgen::PacketGen;
