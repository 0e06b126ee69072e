//! Scaffolding for ClusterLink's multi-site tests, its benchmarks and `clusterlink demo`; never
//! part of a product build (the `clusterlink` CLI links it only with its `demo` feature).
//!
//! - [`netns`]: sites as Linux network namespaces on one machine.
//! - [`cluster`]: a real Kubernetes API server and etcd (built by `scripts/k8s-testenv`).
//! - [`go_clusterlink`]: a site of the Go ClusterLink (built by `scripts/reference-testenv`).
//! - [`launcher`]: a fabric of test certificates, and `cl-gateway` processes started from it.
//! - [`manifests`]: the manifests the tests and the demo apply.

pub mod cluster;
pub mod go_clusterlink;
pub mod launcher;
pub mod manifests;
pub mod netns;

/// Asks `child` to stop (SIGTERM), as a service manager would; errors mean it is already gone.
pub fn terminate(child: &std::process::Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}
