//! The ClusterLink data plane: the peer port (ingress), import listeners (egress), the byte
//! relay and peer health probes.
//!
//! It is fed only by snapshots: in, a `watch::Receiver` of [`Snapshot`]s (built from the
//! control plane's committed objects, or streamed to a replica by [`replica`]) and the TLS
//! credentials; out, [`metrics`] and the [`RuntimeConditions`] only it can know. It never holds
//! the control plane, so a process that runs only the data plane (`cl-dataplane`) links no
//! store, no HTTP server framework and no Kubernetes client.
//!
//! - [`run`]: the data plane's tasks and their supervision; [`snapshot`]: its input.
//! - [`tunnel`]: the CONNECT-based tunnel protocol spoken between gateways on the peer port.
//! - `link`: dialed links, for sites that cannot be reached: tunnels of both directions
//!   ride one mutual-TLS connection the unreachable side keeps open (yamux streams).
//! - [`catalog`]: what this gateway offers each peer, and what peers offer it.
//! - [`policy`]: the access policy engine (tiers, order, what decided).
//! - [`limits`]: the gateway's network timeouts and connection limits, each with its reason.
//! - [`listener`]: admitting strangers' connections (the peer port before its TLS handshake,
//!   the management API, the replica stream, the operations endpoint): bounded in total and per
//!   source network, the least proven closed first under pressure.
//! - [`replica`]: the snapshot stream from a control plane to its data-plane replicas.
//! - [`cmd`]: the `cl-dataplane` process; [`process`]: what every gateway process shares
//!   (logging, signals, exit codes, the open-file limit, certificate and label arguments).

// Network input reaches this crate: a panic here is a crashed gateway, so failures are errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod backend_addresses;
mod capacity;
pub mod catalog;
pub mod cmd;
pub mod conditions;
mod connections;
mod egress;
pub mod enroll;
pub mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod go_tunnel;
mod health;
mod hops;
mod ingress;
pub mod limits;
mod link;
pub mod listener;
mod live;
pub mod memory_copies;
pub mod metrics;
pub mod ops;
pub mod policy;
mod pool;
pub mod process;
mod rate;
mod read_ahead;
mod relay;
pub mod replica;
pub mod snapshot;
mod tasks;
pub mod tunnel;
mod workers;

pub use conditions::{RuntimeConditions, Unreported};
pub use egress::ExplainError;
pub use limits::Limits;
pub use snapshot::Snapshot;
pub use tasks::{DataPlane, DataPlaneConfig, probe_peers, run};
