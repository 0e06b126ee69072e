//! ClusterLink's command-line tools. The binaries are thin; everything lives here so tests and
//! other tools can call it.
//!
//! - `clusterlink` ([`clusterlink_cmd`]): fabric PKI and the local demo.
//! - `gwctl` ([`gwctl`]): manage a gateway through its management API.
//! - `cl-gateway` ([`gateway_cmd`]): the gateway process.
//! - `cl-controlplane` and `cl-dataplane` ([`kubernetes_cmd`]): a peer's processes on Kubernetes.
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

/// Structured logs to stderr; `RUST_LOG` overrides `default_level`.
pub fn init_logging(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
