//! A real Kubernetes control plane for tests, as controller-runtime's envtest runs one: `etcd`
//! and `kube-apiserver` as processes (built by `scripts/k8s-testenv`), no kubelet and no
//! containers. Pods are objects created through the API; our programs run as processes.
//!
//! The API server authorizes with RBAC, serves TLS with a certificate of its own CA, signs
//! ServiceAccount tokens, and knows one static admin. Everything stops when the cluster is
//! dropped.
//!
//! A cluster runs on the machine's loopback, or inside a site of the sites test bed
//! ([`TestCluster::start_in`]), where the site plays the cluster's node: the API server is then
//! on the site's loopback, and kubectl, like every program that talks to it, runs in the site.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns::Site;

/// How long etcd and the API server get to become ready: seconds usually, more on a loaded
/// machine's first start.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The cluster's Service addresses (what an import's Service gets as its cluster IP).
const SERVICE_RANGE: &str = "10.96.0.0/16";
/// The admin's bearer token (in the API server's static token file).
const ADMIN_TOKEN: &str = "clusterlink-test-admin";

/// Where `scripts/k8s-testenv` put the binaries: `$CLUSTERLINK_TESTENV_BIN`, else it is run
/// (it prints the directory, building once per machine).
pub fn testenv_bin() -> anyhow::Result<PathBuf> {
    crate::built_by("CLUSTERLINK_TESTENV_BIN", "k8s-testenv")
}

/// The Multi-Cluster Services API's CRDs `scripts/k8s-testenv` keeps beside `bin`, for
/// `kubectl apply -f`.
pub fn mcs_api_crds(bin: &Path) -> PathBuf {
    bin.parent().unwrap_or(bin).join("mcs-api-crds")
}

/// The Prometheus Operator's ServiceMonitor CRD that `scripts/k8s-testenv` fetches beside `bin`.
pub fn service_monitor_crd(bin: &Path) -> PathBuf {
    bin.parent()
        .unwrap_or(bin)
        .join("prometheus-operator-crds/monitoring.coreos.com_servicemonitors.yaml")
}

/// A running etcd and API server; stopped when dropped.
pub struct TestCluster {
    processes: Vec<Child>,
    dir: PathBuf,
    bin: PathBuf,
    site: Option<Site>,
    /// `https://address:port` of the API server.
    pub server: String,
    /// An admin kubeconfig (`KUBECONFIG` for kubectl and for kube-rs clients).
    pub kubeconfig: PathBuf,
    ca_pem: String,
}

impl TestCluster {
    /// Starts a cluster on loopback whose files live in `dir`.
    pub fn start(bin: &Path, dir: &Path) -> anyhow::Result<TestCluster> {
        TestCluster::start_in(bin, dir, None)
    }

    /// Starts a cluster whose files live in `dir`, inside `site` if one is given (else on the
    /// machine's loopback).
    pub fn start_in(bin: &Path, dir: &Path, site: Option<&Site>) -> anyhow::Result<TestCluster> {
        std::fs::create_dir_all(dir)?;
        let host = "127.0.0.1";
        let pki = Pki::create(dir, host)?;
        let [etcd_port, etcd_peer_port, api_port] = match site {
            Some(site) => site.enter(free_ports)??,
            None => free_ports()?,
        };
        let log = |name: &str| std::fs::File::create(dir.join(format!("{name}.log")));
        let mut cluster = TestCluster {
            processes: Vec::new(),
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            site: site.cloned(),
            server: format!("https://{host}:{api_port}"),
            kubeconfig: dir.join("kubeconfig"),
            ca_pem: pki.ca_pem.clone(),
        };
        let command = |program: &str| command_in(site, &bin.join(program));
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = command("etcd")
            .args([
                "--data-dir",
                &dir.join("etcd").display().to_string(),
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer_port}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{etcd_peer_port}"),
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{etcd_peer_port}"),
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(log("etcd")?)
            .spawn()
            .context("cannot start etcd")?;
        cluster.processes.push(etcd);
        let apiserver = command("kube-apiserver")
            .args([
                &format!("--etcd-servers={etcd_url}"),
                &format!("--bind-address={host}"),
                &format!("--advertise-address={host}"),
                &format!("--secure-port={api_port}"),
                &format!("--tls-cert-file={}", pki.serving_cert.display()),
                &format!("--tls-private-key-file={}", pki.serving_key.display()),
                &format!("--client-ca-file={}", pki.ca.display()),
                &format!("--token-auth-file={}", pki.tokens.display()),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!(
                    "--service-account-key-file={}",
                    pki.service_account_public.display()
                ),
                &format!(
                    "--service-account-signing-key-file={}",
                    pki.service_account_key.display()
                ),
                &format!("--service-cluster-ip-range={SERVICE_RANGE}"),
                "--v=1",
            ])
            .stdout(Stdio::null())
            .stderr(log("kube-apiserver")?)
            .spawn()
            .context("cannot start kube-apiserver")?;
        cluster.processes.push(apiserver);
        std::fs::write(
            &cluster.kubeconfig,
            kubeconfig(&cluster.server, &pki.ca_pem, ADMIN_TOKEN),
        )?;
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// The cluster's CA certificate (PEM): what a pod finds as its ServiceAccount's `ca.crt`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `program` run where the cluster is: in its site, or on this machine.
    pub fn command(&self, program: &Path) -> Command {
        command_in(self.site.as_ref(), program)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for (i, p) in self.processes.iter_mut().enumerate() {
                if let Some(status) = p.try_wait()? {
                    let name = ["etcd", "kube-apiserver"][i];
                    bail!("{name} exited ({status}):\n{}", self.log_tail(name));
                }
            }
            let ready = self.kubectl(&["get", "--raw", "/readyz"]);
            if matches!(&ready, Ok(out) if out.trim() == "ok") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the API server was not ready within {READY_TIMEOUT:?} ({ready:?}):\n{}",
                    self.log_tail("kube-apiserver")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of a program's log, for an error that says why it stopped.
    fn log_tail(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Runs kubectl against this cluster as the admin; its stdout, or its stderr as the error.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_with(args, None)
    }

    /// [`TestCluster::kubectl`] with `input` on stdin (`kubectl apply -f -`).
    pub fn kubectl_with(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        self.kubectl_as(&self.kubeconfig, args, input)
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name`, with a token the
    /// TokenRequest API issued for it (`kubectl create token`), as a pod's projected token is.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=2h"])?;
        let path = self.dir.join(format!("{namespace}-{name}.kubeconfig"));
        std::fs::write(&path, kubeconfig(&self.server, &self.ca_pem, token.trim()))?;
        Ok(path)
    }

    /// Runs kubectl with the credentials of `kubeconfig`.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        input: Option<&str>,
    ) -> anyhow::Result<String> {
        use std::io::Write as _;
        let mut child = self
            .command(&self.bin.join("kubectl"))
            .env("KUBECONFIG", kubeconfig)
            // Discovery cached per cluster, never in the user's ~/.kube.
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kubectl")?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes())?;
        }
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // The API server first, so it does not log etcd's disappearance at length.
        for p in self.processes.iter_mut().rev() {
            crate::terminate(p);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !matches!(p.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// The cluster's key material: a CA and the API server's certificate from it, the
/// ServiceAccount signing key, and the static admin token.
struct Pki {
    ca: PathBuf,
    ca_pem: String,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    service_account_key: PathBuf,
    service_account_public: PathBuf,
    tokens: PathBuf,
}

impl Pki {
    fn create(dir: &Path, host: &str) -> anyhow::Result<Pki> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "clusterlink test cluster CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::from_ca_cert_pem(&ca.pem(), ca_key)?;
        let serving_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(host.parse()?));
        let serving = params.signed_by(&serving_key, &issuer)?;
        let service_account_key = KeyPair::generate()?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        Ok(Pki {
            ca: write("ca.crt", &ca.pem())?,
            ca_pem: ca.pem(),
            serving_cert: write("apiserver.crt", &serving.pem())?,
            serving_key: write("apiserver.key", &serving_key.serialize_pem())?,
            service_account_key: write("sa.key", &service_account_key.serialize_pem())?,
            service_account_public: write("sa.pub", &service_account_key.public_key_pem())?,
            tokens: write(
                "tokens.csv",
                &format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
            )?,
        })
    }
}

fn command_in(site: Option<&Site>, program: &Path) -> Command {
    match site {
        Some(site) => site.command(program),
        None => Command::new(program),
    }
}

fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n"
    )
}

fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    // Held together, so the ports differ; released just before the programs bind them.
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}
