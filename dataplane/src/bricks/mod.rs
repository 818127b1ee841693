//! The bricks: one file each, with their tests beside them.

pub mod antispoof;
mod collect;
mod diode;
mod filter;
pub mod firewall;
mod hub;
pub mod nic;
mod nop;
mod packetgen;
mod print;
mod queue;
mod rxtx;
pub mod switch;
pub mod tap;
pub mod vtep;

pub use antispoof::{Antispoof, AntispoofChecks};
pub use collect::Collect;
pub use diode::Diode;
pub use filter::{Filter, FilterFn};
pub use firewall::Firewall;
pub use hub::{HUB_DEFAULT_EDGES, Hub};
pub use nic::{Nic, NicBackend};
pub use nop::Nop;
pub use packetgen::PacketGen;
pub use print::{FrameSummary, Print, PrintError};
pub use queue::Queue;
pub use rxtx::{RxFn, RxTx, TxFn};
pub use switch::{Switch, SwitchConfig};
pub use tap::{Tap, TapCounters, TapError};
pub use vtep::{Flood, Vtep, VtepConfig};
