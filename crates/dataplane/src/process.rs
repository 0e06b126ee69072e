//! What every ClusterLink gateway process shares (`cl-gateway`, `cl-controlplane`,
//! `cl-dataplane`): logging, signals, exit codes, the open-file limit, and the arguments naming
//! the peer's certificate, its labels and which backends exports may name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clusterlink_pki::reload::{GatewayTls, TlsSource};
use clusterlink_pki::tls::{Credentials, TlsFiles};
use clusterlink_pki::{Identity, identity_of};
use tokio::sync::watch;

use crate::limits::Limits;
use crate::metrics::AccessLog;

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
            // An error may quote what a server or peer sent: shown escaped, line by line.
            let report = error_report(&e);
            let lines: Vec<_> = report.lines().map(clusterlink_api::text::escaped).collect();
            eprintln!("error: {}", lines.join("\n"));
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

/// Waits for SIGTERM (a service manager or Kubernetes stopping the process) or SIGINT.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Raises this process's soft open-file limit to its hard limit and returns the limit in force.
/// Each tunnel holds two sockets, so the common default soft limit of 1024 would cap a gateway at
/// about 500 tunnels (Go's runtime does the same at start-up for the same reason).
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// `--label KEY=VALUE` arguments, each checked as a Kubernetes label.
pub fn parse_labels(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--label {pair:?} must be KEY=VALUE"))?;
        clusterlink_api::validation::check_label_key(k)
            .and_then(|()| clusterlink_api::validation::check_label_value(v))
            .map_err(|e| anyhow::anyhow!("--label {pair:?}: {e}"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

/// Which backends exports may name; shared by every process that serves the peer port.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Let exports name services on loopback addresses (127.0.0.0/8, ::1, localhost). Off by
    /// default: a loopback service trusts every local process (another gateway's management
    /// API, a database bound to localhost), and an export would hand that trust to remote peers.
    #[arg(long)]
    pub allow_loopback_backends: bool,
}

/// How many tunnels the data path carries, and which it logs; shared by every process that
/// serves tunnels.
#[derive(Debug, Clone, clap::Args)]
pub struct TunnelArgs {
    /// The most tunnels one peer may hold through this gateway at once (those it opens here, and
    /// apart, those this gateway opens to it). Past it, its new tunnels are refused with
    /// TunnelLimit while its open ones go on; a loop between gateways ends there too.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT.tunnels_per_peer, value_parser = at_least_one)]
    pub max_tunnels_per_peer: usize,
    /// The most tunnels one export may carry at once, from every peer together; one peer gets
    /// at most half of them. Both bounds stay below half of what the process's open-file limit
    /// allows the data path.
    #[arg(long, value_name = "N", default_value_t = Limits::DEFAULT.tunnels_per_export, value_parser = at_least_one)]
    pub max_tunnels_per_export: usize,
    /// Which tunnels get a log line: `problems` (refused, broken and cut tunnels, at most a few
    /// lines a second per peer and reason, each saying how many it stands for) or `all` (also
    /// one line per tunnel that closes cleanly). The metrics count every tunnel either way.
    #[arg(long, value_enum, default_value_t = AccessLog::Problems)]
    pub access_log: AccessLog,
    /// Admit on the peer port only peers that have a Peer object here. By default any
    /// certificate of the fabric may ask for a tunnel and policies decide, as in the reference
    /// ClusterLink; with this, a stranger's certificate is refused right after the handshake,
    /// and a peer whose Peer object is deleted is cut off.
    #[arg(long)]
    pub known_peers_only: bool,
}

/// A count of one or more.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(format!("must be a whole number ({e})")),
    }
}

impl TunnelArgs {
    /// The default limits with these bounds.
    pub fn limits(&self) -> Limits {
        Limits {
            tunnels_per_peer: self.max_tunnels_per_peer,
            tunnels_per_export: self.max_tunnels_per_export,
            ..Limits::DEFAULT
        }
    }
}

/// Where a deployment on Kubernetes mounts the peer's certificate Secret.
pub const SECRET_DIR: &str = "/etc/clusterlink";
/// The files of that Secret: a `kubernetes.io/tls` Secret's certificate and key, and the CA.
pub const SECRET_CA: &str = "ca.crt";
pub const SECRET_CERT: &str = "tls.crt";
pub const SECRET_KEY: &str = "tls.key";

fn mounted(file: &str) -> PathBuf {
    PathBuf::from(SECRET_DIR).join(file)
}

/// Where a process finds the peer's certificate (the mounted Secret, on Kubernetes).
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    #[arg(long, default_value_os_t = mounted(SECRET_CA))]
    pub ca: PathBuf,
    #[arg(long, default_value_os_t = mounted(SECRET_CERT))]
    pub cert: PathBuf,
    #[arg(long, default_value_os_t = mounted(SECRET_KEY))]
    pub key: PathBuf,
}

impl TlsArgs {
    /// The peer's name from its certificate, and a watched TLS configuration that follows the
    /// files (a rotated Secret applies without a restart).
    pub fn load(
        &self,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<(String, watch::Receiver<Arc<GatewayTls>>)> {
        let files = TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        let credentials = Credentials::load(&files)?;
        let name = match identity_of(&credentials.chain[0]) {
            Ok(Identity::Peer(name)) => name,
            other => bail!(
                "{} is not a peer certificate ({other:?})",
                files.cert.display()
            ),
        };
        // A pod stores no revocation lists: it learns them from its peers at its first probes.
        let (source, rx) = TlsSource::start(files, name.clone(), credentials, None, Vec::new())?;
        tokio::spawn(source.watch(shutdown.clone()));
        Ok((name, rx))
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
