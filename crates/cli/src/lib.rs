//! ClusterLink's command-line tools. The binaries are thin; everything lives here so tests and
//! other tools can call it.
//!
//! - `clusterlink` ([`clusterlink_cmd`]): fabric PKI and the local demo.
//! - `gwctl` ([`gwctl`]): manage a gateway through its management API.
//! - `cl-gateway` ([`gateway_cmd`]): the gateway process.
//! - `cl-controlplane` ([`kubernetes_cmd`]): a peer's control plane on Kubernetes (its data-plane
//!   replicas, `cl-dataplane`, are in `clusterlink-dataplane`, which links no store, HTTP server
//!   framework or Kubernetes client).
//!
//! [`netns`] builds sites as network namespaces for the multi-site tests and the demo.

pub mod client;
pub mod clusterlink_cmd;
pub mod context;
pub mod demo;
pub mod gateway_cmd;
pub mod gwctl;
pub mod kubernetes_cmd;
pub mod netns;
pub mod output;

/// Asks `child` to stop (SIGTERM), as a service manager would; errors mean it is already gone.
pub fn terminate(child: &std::process::Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

pub use clusterlink_dataplane::process::{error_report, exit_code, init_logging};
