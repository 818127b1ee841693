//! The bricks: one file each, with their tests beside them.

pub mod antispoof;
mod collect;
pub mod nic;
mod nop;
mod packetgen;
pub mod switch;

pub use antispoof::{Antispoof, AntispoofChecks};
pub use collect::Collect;
pub use nic::{Nic, NicBackend};
pub use nop::Nop;
pub use packetgen::PacketGen;
pub use switch::{Switch, SwitchConfig};
