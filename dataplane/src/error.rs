//! Errors of the engine and of bricks.

use crate::brick::Side;

/// Errors of [`crate::packet::Pool`].
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A pool parameter is out of range; the text says which and why.
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// Mapping the frame region failed.
    #[error("cannot map the frame region: {0}")]
    Map(#[source] std::io::Error),
    /// A raw frame reference is outside the pool.
    #[error("frame {frame} (offset {offset}, length {len}) is outside the pool")]
    Frame {
        /// Frame index.
        frame: u32,
        /// Data offset in the frame, bytes.
        offset: usize,
        /// Data length, bytes.
        len: usize,
    },
}

/// Errors a brick returns from its burst or poll handlers, or while being configured.
#[derive(Debug, thiserror::Error)]
pub enum BrickError {
    /// An I/O operation of the brick failed (device read/write, socket, file).
    #[error("{op}: {source}")]
    Io {
        /// What the brick was doing (`"read from tap0"`).
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The brick was given a configuration it cannot apply; the text names the field.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The brick cannot work in its current state (the text says why).
    #[error("{0}")]
    State(String),
    /// A frame pool error.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl BrickError {
    /// Wraps an I/O error with what was being done.
    pub fn io(op: impl Into<String>, source: std::io::Error) -> BrickError {
        BrickError::Io {
            op: op.into(),
            source,
        }
    }
}

/// Errors of [`crate::graph::Graph`] operations.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// A brick with that name is already in the graph.
    #[error("a brick named '{0}' already exists")]
    DuplicateName(String),
    /// No brick has that name.
    #[error("no brick named '{0}'")]
    NoSuchBrick(String),
    /// The brick is not of the type asked for.
    #[error("brick '{name}' is a {kind}, not the type asked for")]
    WrongType {
        /// Brick name.
        name: String,
        /// Its kind.
        kind: &'static str,
    },
    /// All edges of that side are taken.
    #[error("brick '{brick}' has no free edge on its {side} side (at most {max})")]
    EdgeFull {
        /// Brick name.
        brick: String,
        /// Side.
        side: Side,
        /// Most edges on that side.
        max: usize,
    },
    /// The two bricks are not linked (or not by that edge).
    #[error("'{0}' and '{1}' are not linked")]
    NotLinked(String, String),
    /// A brick cannot be linked to itself.
    #[error("brick '{0}' cannot be linked to itself")]
    SelfLink(String),
    /// Sanity check: bricks no pollable brick can reach.
    #[error("unreachable bricks (no path from any pollable brick): {0:?}")]
    Unreachable(Vec<String>),
    /// Sanity check: a dipole with an unlinked side, or a brick without any edge.
    #[error("brick '{brick}' has no edge on its {side} side")]
    Dangling {
        /// Brick name.
        brick: String,
        /// Side with no edge.
        side: Side,
    },
    /// Sanity check: the graph has no pollable brick, so no packet can ever enter it.
    #[error("the graph has no pollable brick")]
    NoSource,
    /// A brick returned an error.
    #[error("brick '{brick}': {source}")]
    Brick {
        /// Brick name.
        brick: String,
        /// What went wrong.
        #[source]
        source: BrickError,
    },
}
