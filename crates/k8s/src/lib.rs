//! ClusterLink on Kubernetes.
//!
//! The API server is the configuration store. This crate is the adapter between it and the
//! gateway, so both configuration sources feed the same model (ARCHITECTURE.md):
//! - [`convert`]: custom resources to the gateway's model objects, validated by the same rules
//!   as standalone mode;
//! - [`reconcile`]: a pure function from what the cluster holds to the changes it needs (import
//!   Services, target ports, statuses);
//! - [`controller`]: watches, feeds the model, executes the plan;
//! - [`pods`]: client attributes from the pod behind an address;
//! - [`deploy`]: the manifests that deploy a peer;
//! - [`mcs`]: the Multi-Cluster Services API's two kinds, when it is turned on.

// Network input reaches this crate: a panic here is a crashed gateway, so failures are errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod controller;
pub mod convert;
pub mod deploy;
pub mod mcs;
pub mod model;
pub mod pods;
pub mod reconcile;

pub use controller::{ControllerConfig, Executor};
pub use reconcile::{Change, World, plan};
