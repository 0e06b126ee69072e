//! What every path is made of: its kind, the backends behind it and the fronts before it, the
//! certificates and programs all paths share, and the processes a pair runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    Direct,
    Nginx,
    Haproxy,
    EnvoyH1,
    EnvoyH2,
    Clusterlink,
    /// The same two gateways, the importing one keeping a dialed link that carries the tunnels.
    ClusterlinkLink,
}

impl PathKind {
    pub const ALL: [PathKind; 7] = [
        PathKind::Direct,
        PathKind::Nginx,
        PathKind::Haproxy,
        PathKind::EnvoyH1,
        PathKind::EnvoyH2,
        PathKind::Clusterlink,
        PathKind::ClusterlinkLink,
    ];

    /// The name used on the command line and in the JSON.
    pub fn key(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Nginx => "nginx",
            PathKind::Haproxy => "haproxy",
            PathKind::EnvoyH1 => "envoy-h1",
            PathKind::EnvoyH2 => "envoy-h2",
            PathKind::Clusterlink => "clusterlink",
            PathKind::ClusterlinkLink => "clusterlink-link",
        }
    }

    /// The column heading in the table.
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct TCP",
            PathKind::Nginx => "nginx mTLS",
            PathKind::Haproxy => "haproxy mTLS",
            PathKind::EnvoyH1 => "Envoy H1 CONNECT",
            PathKind::EnvoyH2 => "Envoy H2 CONNECT",
            PathKind::Clusterlink => "ClusterLink",
            PathKind::ClusterlinkLink => "ClusterLink link",
        }
    }

    pub fn from_key(key: &str) -> Option<PathKind> {
        PathKind::ALL.into_iter().find(|k| k.key() == key)
    }
}

/// The backends every path leads to, started once by the benchmark.
pub struct Backends {
    pub iperf: SocketAddr,
    pub echo: SocketAddr,
    pub hold: SocketAddr,
}

/// Where a client connects to reach each backend through a path.
#[derive(Debug, Clone, Copy)]
pub struct Fronts {
    pub iperf: SocketAddr,
    pub echo: SocketAddr,
    pub hold: SocketAddr,
}

/// Files and programs shared by every start of every path.
pub struct Setup {
    pub dir: PathBuf,
    /// Where `cl-gateway` is (the release build next to this binary).
    pub bin_dir: PathBuf,
    pub envoy: PathBuf,
    pub certs: Certs,
}

impl Setup {
    /// Makes the fabric (CA and the certificates of `server1` and `client1`) in `dir`.
    pub fn create(dir: &Path, bin_dir: &Path, envoy: PathBuf) -> anyhow::Result<Setup> {
        clusterlink_testbed::launcher::create_fabric(dir, &["server1", "client1"])?;
        let certs = Certs::from_fabric(dir)?;
        Ok(Setup {
            dir: dir.to_path_buf(),
            bin_dir: bin_dir.to_path_buf(),
            envoy,
            certs,
        })
    }
}

/// A process of a pair; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    child: Child,
}

impl Process {
    pub fn spawn(mut command: Command, log: &Path) -> anyhow::Result<Process> {
        let log_file = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {:?}", command.get_program()))?;
        Ok(Process { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        clusterlink_testbed::terminate(&self.child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fabric's certificates, as files the proxies read.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Certificate and key in one file, as haproxy wants them.
    pub server_bundle: PathBuf,
    pub client_bundle: PathBuf,
}

impl Certs {
    /// The CA and the certificates of `server1` and `client1` from the fabric in `dir`.
    pub fn from_fabric(dir: &Path) -> anyhow::Result<Certs> {
        let fabric = dir.join(clusterlink_pki::DEFAULT_FABRIC);
        let file = |peer: &str, name: &str| fabric.join(peer).join(name);
        let bundle = |peer: &str| -> anyhow::Result<PathBuf> {
            let cert = std::fs::read_to_string(file(peer, clusterlink_pki::CERT_FILE))?;
            let key = std::fs::read_to_string(file(peer, clusterlink_pki::KEY_FILE))?;
            let path = fabric.join(peer).join("bundle.pem");
            std::fs::write(&path, format!("{cert}{key}"))?;
            Ok(path)
        };
        Ok(Certs {
            ca: fabric.join(clusterlink_pki::CERT_FILE),
            server_cert: file("server1", clusterlink_pki::CERT_FILE),
            server_key: file("server1", clusterlink_pki::KEY_FILE),
            client_cert: file("client1", clusterlink_pki::CERT_FILE),
            client_key: file("client1", clusterlink_pki::KEY_FILE),
            server_bundle: bundle("server1")?,
            client_bundle: bundle("client1")?,
        })
    }
}

/// A loopback address with a port nothing listens on now.
pub fn free_address() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
