//! The ClusterLink gateway.
//!
//! The control plane and the standalone gateway.
//!
//! - [`model`]: the control plane's model of every object, kept durable in the store.
//! - [`management`]: the management REST API over that model.
//! - [`gateway`]: a running standalone gateway tying identity, store, the management listener
//!   and the data plane (`clusterlink-dataplane`, fed the model's snapshots) together.
//! - [`clients`]: the client-attribute table, followed while the gateway runs.
//! - `mirror`: the Imports Peers' mirror rules ask for, kept in step with the peers' offers.

// Network input reaches this crate: a panic here is a crashed gateway, so failures are errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod clients;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod gateway;
pub mod management;
mod mirror;
pub mod model;

pub use gateway::{Gateway, GatewayConfig, GatewayError, ManagementSecurity};
pub use model::{ControlPlane, ModelError, WriteOutcome};
