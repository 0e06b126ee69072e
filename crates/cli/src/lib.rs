//! ClusterLink's command-line tools. The binaries are thin; everything lives here so tests and
//! other tools can call it.
//!
//! - `clusterlink` ([`clusterlink_cmd`]): fabric PKI, Kubernetes deployment, and the local demo
//!   (`demo`, with the default feature `demo`, the only part that links the test bed,
//!   `clusterlink-testbed`).
//! - `gwctl` ([`gwctl`]): manage a gateway through its management API.
//! - `cl-gateway` ([`gateway_cmd`]): the gateway process.
//! - `cl-controlplane` ([`kubernetes_cmd`]): a peer's control plane on Kubernetes (its data-plane
//!   replicas, `cl-dataplane`, are in `clusterlink-dataplane`, which links no store, HTTP server
//!   framework or Kubernetes client).

pub mod client;
pub mod clusterlink_cmd;
pub mod context;
#[cfg(feature = "demo")]
pub mod demo;
pub mod gateway_cmd;
pub mod gwctl;
pub mod kubernetes_cmd;
mod manifests;
pub mod output;
pub mod policy_cmd;
mod terminal;

pub use clusterlink_dataplane::process::{error_report, exit_code, init_logging};
