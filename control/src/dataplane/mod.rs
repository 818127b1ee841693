//! The boundary between the control plane and the packet graph.
//!
//! The API ([`crate::api`]) validates a request on the desired [`Config`], then hands the
//! resulting [`DesiredChange`]s to a [`Dataplane`], then persists the new configuration.
//! The dataplane is the only part that knows about bricks, workers and sockets.
//!
//! # What an implementation that forwards packets must do
//!
//! It owns the host graph of DESIGN.md (NIC (AF_XDP | DPDK) → VTEP → per VNI either the
//! single NIC's chain or a switch with one chain per NIC; a chain is firewall → antispoof
//! → \[pcap sniffer\] → vhost-user or tap) running on worker threads, and edits it with
//! commands applied between polls (`Worker::exec`):
//!
//! - [`DesiredChange::NicAdded`]: create the vhost-user socket (server) or connect to it
//!   (client) or open the tap; build the chain (no firewall/antispoof when
//!   `bypass_filtering`; a sniffer writing `packet_trace_path` when `packet_trace`); link
//!   it to the VTEP for the NIC's VNI, or insert/extend the VNI's switch when the VNI
//!   already has a NIC; load the firewall rules of the NIC's security groups (members of
//!   groups named by `sg_members` expanded to addresses) and the antispoof MAC/IPs.
//! - [`DesiredChange::NicUpdated`]: rebuild what differs (rules, antispoof addresses,
//!   bypass, sniffer) without dropping the vhost-user connection.
//! - [`DesiredChange::NicRemoved`]: unlink and remove the chain and its socket; when the
//!   VNI is left with one NIC, remove the switch and link that NIC to the VTEP directly.
//! - [`DesiredChange::FirewallChanged`]: reload the rules of the listed NICs' firewalls.
//! - [`DesiredChange::FloodChanged`]: set the VNI's flood destinations in the VTEP: the
//!   listed remote VTEPs, or [`crate::model::multicast_group`] when the list is empty.
//! - [`Dataplane::reconcile`]: make the graph match a whole configuration (at start from
//!   the state file, after `load`, and to undo a change whose persistence failed).
//!
//! [`topology`] gives the bricks and links a configuration asks for and the steps from one
//! graph to the next; [`translate`] turns the model into the bricks' settings (firewall
//! groups, antispoof, flood destinations).
//!
//! A call that fails must leave the graph as it was and say which field caused it
//! ([`DataplaneError::Refused`]) when the cause is in the request (for example a socket
//! path another process holds).

use crate::model::{Config, DesiredChange};

pub mod graph;
pub mod topology;
pub mod translate;

/// Why the dataplane could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataplaneError {
    /// The request cannot be carried out because of one of its fields (answered as
    /// FAILED_PRECONDITION `FIELD: REASON`).
    #[error("{field}: {reason}")]
    Refused {
        /// The request field at fault.
        field: String,
        /// Why.
        reason: String,
    },
    /// The information or action is not available (answered as UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (answered as INTERNAL).
    #[error("dataplane failure: {0}")]
    Failed(String),
}

/// Counters of one NIC, as seen from the host (rx = from the VM, tx = to the VM).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicCounters {
    /// Frames received from the VM.
    pub rx_packets: u64,
    /// Bytes received from the VM.
    pub rx_bytes: u64,
    /// Frames sent to the VM.
    pub tx_packets: u64,
    /// Bytes sent to the VM.
    pub tx_bytes: u64,
    /// Frames dropped by the NIC's firewall (both directions).
    pub dropped_firewall: u64,
    /// Frames dropped by the NIC's antispoof brick.
    pub dropped_antispoof: u64,
}

/// What the API drives after a successful change of the desired configuration.
///
/// Methods are synchronous. `apply` and `reconcile` may block (post commands to workers
/// and wait for them): the API calls them on a blocking thread with the configuration
/// lock held, so they never overlap. `nic_stats`, `graph_dot` and `describe` are called
/// from the API's async runtime and must answer quickly (read counters, no waiting).
pub trait Dataplane: Send + Sync + 'static {
    /// One line for `status`: what forwards packets (`"AF_XDP on eth0 (native, copy
    /// mode), 1 worker"`).
    fn describe(&self) -> String;

    /// Carries out `changes` (in order); `config` is the configuration after them.
    fn apply(&self, changes: &[DesiredChange], config: &Config) -> Result<(), DataplaneError>;

    /// Makes the graph match `config` entirely.
    fn reconcile(&self, config: &Config) -> Result<(), DataplaneError>;

    /// Counters of the NIC `id` (which exists in the current configuration).
    fn nic_stats(&self, id: &str) -> Result<NicCounters, DataplaneError>;

    /// The host graph as Graphviz dot.
    fn graph_dot(&self) -> String;

    /// Stops forwarding: detaches XDP, closes sockets, joins workers. Called once, at
    /// daemon shutdown.
    fn shutdown(&self);
}

/// No dataplane at all: butterflyd's API-only mode (`--no-dataplane`), for testing the
/// API, the CLI and persistence on a machine without the privileges or interfaces the
/// packet path needs. Every change is accepted (the configuration is still validated and
/// persisted); nothing is forwarded, and `nic stats` answers UNAVAILABLE.
#[derive(Debug, Default)]
pub struct Detached;

/// The reason [`Detached`] gives for what it cannot answer.
pub const DETACHED_REASON: &str =
    "no dataplane: butterflyd runs in API-only mode (--no-dataplane), nothing is forwarded";

impl Dataplane for Detached {
    fn describe(&self) -> String {
        "none (API-only mode: configuration is validated and persisted, nothing is forwarded)"
            .to_string()
    }
    fn apply(&self, _: &[DesiredChange], _: &Config) -> Result<(), DataplaneError> {
        Ok(())
    }
    fn reconcile(&self, _: &Config) -> Result<(), DataplaneError> {
        Ok(())
    }
    fn nic_stats(&self, _: &str) -> Result<NicCounters, DataplaneError> {
        Err(DataplaneError::Unavailable(DETACHED_REASON.to_string()))
    }
    fn graph_dot(&self) -> String {
        "digraph butterfly {\n  label=\"no dataplane (API-only mode)\";\n}\n".to_string()
    }
    fn shutdown(&self) {}
}

/// A recording dataplane for unit tests of the API.
#[cfg(test)]
pub mod testing {
    use super::*;
    use std::sync::Mutex;

    /// One call the API made.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        /// `apply(changes)`.
        Apply(Vec<DesiredChange>),
        /// `reconcile(config)`.
        Reconcile(Config),
        /// `shutdown()`.
        Shutdown,
    }

    /// Records every call; can be told to refuse the next `apply`.
    #[derive(Debug, Default)]
    pub struct Recording {
        /// The calls so far.
        pub calls: Mutex<Vec<Call>>,
        /// Returned (once) by the next `apply`.
        pub fail_next_apply: Mutex<Option<DataplaneError>>,
    }

    impl Recording {
        /// The calls so far, emptied.
        pub fn take(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    impl Dataplane for Recording {
        fn describe(&self) -> String {
            "recording (unit tests)".into()
        }
        fn apply(&self, changes: &[DesiredChange], _: &Config) -> Result<(), DataplaneError> {
            if let Some(e) = self.fail_next_apply.lock().unwrap().take() {
                return Err(e);
            }
            self.calls
                .lock()
                .unwrap()
                .push(Call::Apply(changes.to_vec()));
            Ok(())
        }
        fn reconcile(&self, config: &Config) -> Result<(), DataplaneError> {
            self.calls
                .lock()
                .unwrap()
                .push(Call::Reconcile(config.clone()));
            Ok(())
        }
        fn nic_stats(&self, _: &str) -> Result<NicCounters, DataplaneError> {
            Ok(NicCounters {
                rx_packets: 1,
                rx_bytes: 64,
                ..NicCounters::default()
            })
        }
        fn graph_dot(&self) -> String {
            "digraph recording {}\n".into()
        }
        fn shutdown(&self) {
            self.calls.lock().unwrap().push(Call::Shutdown);
        }
    }
}
