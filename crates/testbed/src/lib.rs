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

/// The directory a `scripts/` build script prints (building once per machine what it builds),
/// unless `$env_var` names it already.
pub(crate) fn built_by(env_var: &str, script: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    if let Ok(dir) = std::env::var(env_var) {
        return Ok(dir.into());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        anyhow::bail!("{} failed; see its output above", script.display());
    }
    Ok(String::from_utf8(out.stdout)?.trim().into())
}
