//! The ClusterLink gateway.
//!
//! - [`model`]: the control plane's model of every object, kept durable in the store.
//! - [`management`]: the management REST API over that model.
//! - [`gateway`]: a running standalone gateway tying identity, store and listeners together.

pub mod gateway;
pub mod management;
pub mod model;

pub use gateway::{Gateway, GatewayConfig, GatewayError, ManagementSecurity};
pub use model::{ControlPlane, ModelError, WriteOutcome};
