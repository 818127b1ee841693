//! # butterfly-vhost
//!
//! The vhost-user virtio-net backend VMs attach through, and the `vhost` brick that puts
//! it in a packetgraph graph. Three layers, each testable alone (after cloud-hypervisor's
//! queue-pair split):
//!
//! - [`protocol`]: the vhost-user socket (server or client) served by a control thread,
//!   message handling on top of the `vhost` crate's message definitions, in the order
//!   QEMU 10 uses (`SET_VRING_ENABLE` before `SET_FEATURES` is accepted);
//! - [`virtq`]: descriptor chains in guest memory (`vm-memory`, `virtio-queue`) ↔ frames,
//!   with the virtio-net header ([`net_hdr`]) and checksum completion, safe against a
//!   hostile driver;
//! - [`brick`]: the [`Vhost`] brick, polled by a dataplane worker, that moves bursts
//!   between the graph and the guest's virtqueues.
//!
//! ```no_run
//! use butterfly_vhost::{Endpoint, Vhost};
//! use packetgraph::{Graph, Pool, PoolConfig, bricks::Nop};
//!
//! let pool = Pool::new(PoolConfig::default()).unwrap();
//! let vm = Vhost::new(Endpoint::Server("/run/butterfly/vm-a.sock".into()), pool).unwrap();
//! let mut g = Graph::new("host");
//! g.add("vm-a", vm).unwrap();
//! g.add("nop", Nop::new()).unwrap();
//! g.link("vm-a", "nop").unwrap();
//! // QEMU: -chardev socket,id=c0,path=/run/butterfly/vm-a.sock -netdev vhost-user,...
//! ```

pub mod brick;
pub mod device;
pub mod fuzzing;
pub mod guest_map;
pub mod net_hdr;
pub mod protocol;
pub mod virtq;

pub use brick::{Vhost, VhostError};
pub use protocol::Endpoint;
