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

/// An error and its causes on one line, each said once: a cause whose text the message before it
/// already contains (an error that embeds its source) is not repeated.
pub fn error_report(error: &anyhow::Error) -> String {
    let mut report = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if report.contains(&text) {
            continue;
        }
        if !report.is_empty() {
            report.push_str(": ");
        }
        report.push_str(&text);
    }
    report
}

/// Runs a command's result to an exit code, printing a failure once on stderr.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_report(&e));
            std::process::ExitCode::FAILURE
        }
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

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("disk full")]
        Full,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("the store failed: {0}")]
        Store(#[from] Inner),
    }

    #[test]
    fn each_cause_is_said_once() {
        use anyhow::Context as _;
        let e = anyhow::Error::from(Outer::from(Inner::Full)).context("cannot apply web.yaml");
        assert_eq!(
            super::error_report(&e),
            "cannot apply web.yaml: the store failed: disk full"
        );
        let plain = Err::<(), _>(Inner::Full)
            .context("cannot write")
            .unwrap_err();
        assert_eq!(super::error_report(&plain), "cannot write: disk full");
    }
}
