//! The ClusterLink gateway.
//!
//! - [`model`]: the control plane's model of every object, kept durable in the store.
//! - [`management`]: the management REST API over that model.
//! - [`gateway`]: a running standalone gateway tying identity, store and listeners together.
//! - [`dataplane`]: the peer port, import listeners and the byte relay.
//! - [`metrics`]: Prometheus metrics of connections, refusals, bytes and peer health.
//! - [`policy`]: the access policy engine (tiers, order, what decided).
//! - [`replica`]: the snapshot stream from a control plane to its data-plane replicas.
//! - [`tunnel`]: the CONNECT-based tunnel protocol spoken between gateways on the peer port.

// Network input reaches this crate: a panic here is a crashed gateway, so failures are errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod dataplane;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gateway;
mod listener;
pub mod management;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod replica;
pub mod tunnel;

pub use gateway::{Gateway, GatewayConfig, GatewayError, ManagementSecurity};
pub use model::{ControlPlane, ModelError, WriteOutcome};
