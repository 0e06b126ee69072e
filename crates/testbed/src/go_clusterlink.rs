//! A site of the Go ClusterLink, for the mixed-fabric tests: its `cl-controlplane` and
//! `cl-go-dataplane` (built by `scripts/reference-testenv` from a source outside this project) as
//! processes, against a real API server ([`TestCluster`]).
//!
//! The Go gateway has no standalone mode, and fixed paths and ports:
//! - it reads its cluster from `rest.InClusterConfig()`: `KUBERNETES_SERVICE_HOST`/`_PORT`, and a
//!   ServiceAccount's token and CA under `/run/secrets/kubernetes.io/serviceaccount`;
//! - its certificates from `/etc/ssl/certs/clink_ca.pem`, `/etc/ssl/certs/clink-{controlplane,
//!   dataplane}.pem`, `/etc/ssl/key/clink-{controlplane,dataplane}.pem` (the two processes'
//!   gRPC), and the peer's from `/etc/ssl/certs/clink/{ca,cert,key}.pem`;
//! - the control plane serves gRPC on 4444, the data plane peers on 4443, and both bind 4445 for
//!   readiness, so they run in two sites (network namespaces): the data plane in the site peers
//!   reach, the control plane and its API server in a site of their own.
//!
//! Each process gets a private mount namespace (`unshare --mount`) in which those paths are this
//! site's files, bind-mounted; the machine's own `/etc/ssl` and `/run` are untouched.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clusterlink_pki::issue::{FabricCa, Validity};

use crate::cluster::TestCluster;
use crate::netns::Site;

/// The Go data plane's peer port (its `pkg/dataplane/api` `ListenPort`).
pub const PEER_PORT: u16 = 4443;
/// The Go control plane's gRPC port, which its data plane dials.
pub const CONTROLPLANE_PORT: u16 = 4444;
/// Where both Go processes answer readiness (`GET /` → 200).
const READINESS_PORT: u16 = 4445;
/// The Go gateway's system namespace (its `CL_NAMESPACE` default).
pub const SYSTEM_NAMESPACE: &str = "clusterlink-system";
/// How long the Go processes get to become ready: seconds usually.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The name the Go data plane checks the control plane's gRPC certificate against.
const CONTROLPLANE_NAME: &str = "cl-controlplane";

/// Where `scripts/reference-testenv` put the Go programs: `$CLUSTERLINK_REFERENCE_BIN`, else it
/// is run (it prints the directory, building once per machine).
pub fn reference_bin() -> anyhow::Result<PathBuf> {
    crate::built_by("CLUSTERLINK_REFERENCE_BIN", "reference-testenv")
}

/// What a Go ClusterLink site is made of.
pub struct GoSiteSpec<'a> {
    /// `scripts/k8s-testenv`'s programs, for its API server.
    pub k8s_bin: &'a Path,
    /// `scripts/reference-testenv`'s programs.
    pub bin: &'a Path,
    /// Where its files and logs go.
    pub dir: &'a Path,
    /// The site its data plane runs in, which peers reach.
    pub data: &'a Site,
    /// The site its control plane and API server run in.
    pub control: &'a Site,
    /// The fabric: its CA in `cert.pem`, the peer's certificate and key in `<peer>/`.
    pub fabric_dir: &'a Path,
    /// Its peer name.
    pub peer: &'a str,
    /// Its labels (`--peer-label KEY=VALUE`), which it reports to heartbeats.
    pub peer_labels: &'a [&'a str],
}

/// A running Go ClusterLink site; everything stops when dropped.
pub struct GoSite {
    /// The API server, in the control plane's site.
    pub cluster: TestCluster,
    controlplane: Option<Child>,
    dataplane: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
    data: Site,
    control: Site,
    api_port: u16,
    peer_labels: Vec<String>,
}

impl GoSite {
    /// Starts the Go gateway `spec` describes, and returns once both its processes are ready.
    pub fn start(spec: GoSiteSpec<'_>) -> anyhow::Result<GoSite> {
        let GoSiteSpec {
            k8s_bin,
            bin,
            dir,
            data,
            control,
            fabric_dir,
            peer,
            peer_labels,
        } = spec;
        std::fs::create_dir_all(dir)?;
        let cluster = TestCluster::start_in(k8s_bin, &dir.join("cluster"), Some(control))?;
        let api_port = cluster
            .server
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .context("the API server's address has no port")?;
        let crds = bin.join("../crds");
        cluster.kubectl(&["apply", "-f", &crds.display().to_string()])?;
        cluster.kubectl(&["create", "namespace", SYSTEM_NAMESPACE])?;
        cluster.kubectl(&[
            "wait",
            "--for",
            "condition=established",
            "--timeout=60s",
            "crd",
            "--all",
        ])?;
        // The control plane's ServiceAccount, allowed everything: this tests the protocol, not
        // the Go gateway's RBAC.
        cluster.kubectl_with(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: cl-controlplane, namespace: {SYSTEM_NAMESPACE}}}\n---\n\
                 apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: cl-controlplane}}\n\
                 roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}\n\
                 subjects: [{{kind: ServiceAccount, name: cl-controlplane, namespace: {SYSTEM_NAMESPACE}}}]\n"
            )),
        )?;
        let token = cluster.kubectl(&[
            "create",
            "token",
            "cl-controlplane",
            "-n",
            SYSTEM_NAMESPACE,
            "--duration=24h",
        ])?;
        let account = dir.join("serviceaccount");
        std::fs::create_dir_all(&account)?;
        std::fs::write(account.join("token"), token.trim())?;
        std::fs::write(account.join("ca.crt"), cluster.ca_pem())?;
        std::fs::write(account.join("namespace"), SYSTEM_NAMESPACE)?;
        write_ssl_tree(&dir.join("etc-ssl"), fabric_dir, peer)?;
        let mut site = GoSite {
            cluster,
            controlplane: None,
            dataplane: None,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            data: data.clone(),
            control: control.clone(),
            api_port,
            peer_labels: peer_labels.iter().map(|l| l.to_string()).collect(),
        };
        site.start_controlplane()?;
        site.start_dataplane()?;
        site.wait_ready()?;
        Ok(site)
    }

    /// The address peers reach this site's data plane at.
    pub fn peer_address(&self) -> SocketAddr {
        (self.data.address, PEER_PORT).into()
    }

    /// Applies `yaml` to the site's API server.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        self.cluster
            .kubectl_with(&["apply", "-f", "-"], Some(yaml))?;
        Ok(())
    }

    /// The port the Go data plane listens on for Import `namespace/name` (the `targetPort` its
    /// control plane leases, unless the Import names one), once it has one.
    pub fn import_port(&self, namespace: &str, name: &str) -> anyhow::Result<u16> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let port = self.cluster.kubectl(&[
                "get",
                "import",
                name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.spec.targetPort}",
            ])?;
            if let Ok(port) = port.trim().parse::<u16>()
                && port != 0
                && self.answers(&self.data, port, None)
            {
                return Ok(port);
            }
            if Instant::now() > deadline {
                bail!(
                    "import {namespace}/{name} got no listening port:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the data plane (SIGKILL, as a crash), leaving it down.
    pub fn kill_dataplane(&mut self) {
        if let Some(mut child) = self.dataplane.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the data plane again, and waits until it is ready.
    pub fn restart_dataplane(&mut self) -> anyhow::Result<()> {
        self.kill_dataplane();
        self.start_dataplane()?;
        self.wait_ready()
    }

    /// The last lines of both processes' logs, for a failure message.
    pub fn logs(&self) -> String {
        ["controlplane", "dataplane"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {name}:\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn start_controlplane(&mut self) -> anyhow::Result<()> {
        let mut args = vec!["--log-level".to_string(), "info".to_string()];
        for label in &self.peer_labels {
            args.extend(["--peer-label".to_string(), label.clone()]);
        }
        let script = format!(
            "{mounts} && mount -t tmpfs tmpfs /run && mkdir -p {account_dir} && mount --bind {account} {account_dir} && \
             exec env KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT={port} CL_NAMESPACE={SYSTEM_NAMESPACE} {program} {args}",
            mounts = self.ssl_mount(),
            account_dir = "/run/secrets/kubernetes.io/serviceaccount",
            account = self.dir.join("serviceaccount").display(),
            port = self.api_port,
            program = self.bin.join("cl-controlplane").display(),
            args = args.join(" "),
        );
        let control = self.control.clone();
        self.controlplane = Some(self.spawn(&control, "controlplane", &script)?);
        Ok(())
    }

    fn start_dataplane(&mut self) -> anyhow::Result<()> {
        let script = format!(
            "{mounts} && exec {program} --controlplane-host {host} --log-level info",
            mounts = self.ssl_mount(),
            program = self.bin.join("cl-go-dataplane").display(),
            host = self.control.address,
        );
        let data = self.data.clone();
        self.dataplane = Some(self.spawn(&data, "dataplane", &script)?);
        Ok(())
    }

    fn ssl_mount(&self) -> String {
        format!(
            "mount --bind {} /etc/ssl",
            self.dir.join("etc-ssl").display()
        )
    }

    /// Runs `script` with `sh` in a private mount namespace inside `site`, its output appended
    /// to `<dir>/<name>.log`.
    fn spawn(&self, site: &Site, name: &str, script: &str) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))?;
        site.command("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start the Go {name}"))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let exited = [
                ("controlplane", &mut self.controlplane),
                ("dataplane", &mut self.dataplane),
            ]
            .into_iter()
            .find_map(|(name, child)| {
                let status = child.as_mut()?.try_wait().ok().flatten()?;
                Some(format!("the Go {name} exited ({status})"))
            });
            if let Some(exited) = exited {
                bail!("{exited}:\n{}", self.logs());
            }
            let ready =
                |site: &Site| self.answers(site, READINESS_PORT, Some("GET / HTTP/1.0\r\n\r\n"));
            if ready(&self.control) && ready(&self.data) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the Go gateway was not ready within {READY_TIMEOUT:?}:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether `port` on `site`'s loopback takes a connection; with `request`, whether it
    /// answers it with `200`.
    fn answers(&self, site: &Site, port: u16, request: Option<&str>) -> bool {
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let Ok(mut conn) = site.connect(to, Duration::from_secs(2)) else {
            return false;
        };
        let Some(request) = request else {
            return true;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = [0u8; 12];
        conn.write_all(request.as_bytes()).is_ok()
            && conn.read_exact(&mut answer).is_ok()
            && answer.ends_with(b"200")
    }
}

impl Drop for GoSite {
    fn drop(&mut self) {
        for child in [self.dataplane.take(), self.controlplane.take()]
            .into_iter()
            .flatten()
        {
            let mut child: Child = child;
            crate::terminate(&child);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The files the Go gateway reads under `/etc/ssl`: the gRPC certificates between its two
/// processes (from a CA of their own) and the peer's, from the fabric.
fn write_ssl_tree(root: &Path, fabric_dir: &Path, peer: &str) -> anyhow::Result<()> {
    let certs = root.join("certs");
    let keys = root.join("key");
    let clink = certs.join("clink");
    for dir in [&certs, &keys, &clink] {
        std::fs::create_dir_all(dir)?;
    }
    let validity = Validity::days(2)?;
    let (internal, _) = FabricCa::generate("go-clusterlink-internal", validity)?;
    std::fs::write(certs.join("clink_ca.pem"), internal.cert_pem())?;
    for name in [CONTROLPLANE_NAME, "cl-dataplane"] {
        let issued = internal.issue_peer(name, Validity::days(2)?)?;
        std::fs::write(
            certs.join(format!("clink-{}.pem", &name[3..])),
            issued.cert_pem,
        )?;
        std::fs::write(
            keys.join(format!("clink-{}.pem", &name[3..])),
            issued.key_pem,
        )?;
    }
    std::fs::copy(fabric_dir.join("cert.pem"), clink.join("ca.pem"))?;
    std::fs::copy(
        fabric_dir.join(peer).join("cert.pem"),
        clink.join("cert.pem"),
    )?;
    std::fs::copy(fabric_dir.join(peer).join("key.pem"), clink.join("key.pem"))?;
    Ok(())
}
