//! # packetgraph
//!
//! A graph of network *bricks*, after the C library packetgraph: packet buffers in frame
//! pools that can sit on an AF_XDP UMEM, bursts of up to 64 packets moved (not copied)
//! from brick to brick, bricks with WEST and EAST sides, a [`Graph`] that owns them by
//! name and runs what a poll reads to completion, and [`Worker`] threads that own graphs
//! and take configuration commands between polls.
//!
//! ```
//! use packetgraph::{Graph, Pool, PoolConfig, Side};
//! use packetgraph::bricks::{Collect, Nop, PacketGen};
//!
//! let pool = Pool::new(PoolConfig::default()).unwrap();
//! let mut g = Graph::new("example");
//! g.add("gen", PacketGen::new(pool, vec![vec![0xff; 60]], 3)).unwrap();
//! g.add("nop", Nop::new()).unwrap();
//! g.add("sink", Collect::new()).unwrap();
//! g.link_chain(&["gen", "nop", "sink"]).unwrap();
//! g.sanity_check().unwrap();
//! assert_eq!(g.poll().unwrap(), 3);
//! assert_eq!(g.get::<Collect>("sink").unwrap().last(Side::West).unwrap().len(), 3);
//! ```

pub mod brick;
pub mod bricks;
pub mod burst;
pub mod clock;
pub mod error;
pub mod flowtable;
pub mod graph;
pub mod packet;
pub mod prefetch;
pub mod wire;
pub mod worker;

pub use brick::{Brick, BrickStats, Dest, Emit, Poles, Side, SideStats};
pub use burst::{BURST_SIZE, Burst, HeaderPrefetch};
pub use clock::Clock;
pub use error::{BrickError, GraphError, PoolError};
pub use graph::{BrickReport, Graph};
pub use packet::{Packet, Pool, PoolConfig};
pub use worker::{Worker, WorkerConfig, WorkerError};
