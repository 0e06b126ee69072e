//! Kubernetes mode: `clusterlink deploy peer` / `delete peer`, and `cl-controlplane`, the control
//! plane a deployed peer runs (its replicas run `cl-dataplane`, from `clusterlink-dataplane`).

pub mod apply;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Parser;
use clusterlink_dataplane::metrics::Metrics;
use clusterlink_dataplane::ops::{self, ProcessHealth};
use clusterlink_dataplane::process::{TlsArgs, parse_labels, wait_for_signal};
use clusterlink_dataplane::{replica, snapshot};
use clusterlink_gateway::model::ControlPlane;
use clusterlink_k8s::controller::ControllerMetrics;
use clusterlink_k8s::deploy::{self, Ingress, Manifest, PeerDeployment};
use clusterlink_pki::tls::{Credentials, TlsFiles};
use clusterlink_pki::{Identity, identity_of};
use clusterlink_store::MemoryStore;
use tokio::sync::watch;

/// `clusterlink deploy peer`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "The peer's certificate comes from the layout `clusterlink create` \
    writes: <path>/<fabric>/cert.pem (the CA) and <path>/<fabric>/<name>/{cert,key}.pem.\n\n\
    With --output DIR the manifests are written there, numbered in the order to apply them \
    (`kubectl apply -f DIR`); the Secret file holds the peer's private key and is written 0600. \
    Without --output they are applied to the cluster of the kubeconfig context (--kubeconfig, \
    --context)."
)]
pub struct DeployPeerArgs {
    /// The peer's name: its identity in the fabric, as in its certificate.
    #[arg(long)]
    pub name: String,
    /// The namespace the peer runs in (and where its Peer objects live).
    #[arg(long, default_value = deploy::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// How other sites reach the peer port: LoadBalancer, NodePort or none (ClusterIP only).
    #[arg(long, default_value = "LoadBalancer")]
    pub ingress: Ingress,
    /// The peer port other sites connect to (with NodePort: the node port). Default: 443, or
    /// 30443 with NodePort.
    #[arg(long)]
    pub ingress_port: Option<u16>,
    /// How many data-plane pods carry tunnels and imports.
    #[arg(long, default_value_t = 1)]
    pub dataplane_replicas: u16,
    /// A label of this peer, KEY=VALUE (repeatable), matched by policies as
    /// peer.clusterlink.net/labels.KEY.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The registry the `clusterlink` image is pulled from.
    #[arg(long, default_value = deploy::DEFAULT_REGISTRY)]
    pub container_registry: String,
    /// The image tag.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub tag: String,
    /// The fabric's name: its directory under --path.
    #[arg(long, default_value = clusterlink_pki::DEFAULT_FABRIC)]
    pub fabric: String,
    /// Directory holding the fabric.
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// Write the manifests into this directory instead of applying them.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kubeconfig", "context"])]
    pub output: Option<PathBuf>,
    /// Turn on the Multi-Cluster Services API: a ServiceExport exports its Service, and each
    /// mirrored Import publishes a ServiceImport. Its CRDs (multicluster.x-k8s.io) must be
    /// installed in the cluster.
    #[arg(long)]
    pub mcs_api: bool,
    /// Add a Prometheus Operator ServiceMonitor (and the headless Service it selects) that
    /// scrapes the metrics of every pod of the peer. The operator's CRDs must be installed.
    #[arg(long)]
    pub service_monitor: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// `clusterlink delete peer`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Deletes, from the cluster of the kubeconfig context (--kubeconfig, --context), \
    exactly the objects `deploy peer` creates for this name and namespace. The custom resource \
    definitions stay unless --with-crds is given: deleting them deletes every Import, Export, \
    Peer and policy in the whole cluster."
)]
pub struct DeletePeerArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long, default_value = deploy::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Also delete the custom resource definitions (and with them every ClusterLink object).
    #[arg(long)]
    pub with_crds: bool,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Which cluster to talk to, as kubectl's flags of the same names choose it.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the in-cluster
    /// service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl ClusterArgs {
    async fn client(&self) -> anyhow::Result<kube::Client> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("unusable kubeconfig {}", path.display()))?
            }
            (None, Some(context)) => kube::Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("no usable kubeconfig context {context:?}"))?,
            (None, None) => kube::Config::infer().await.context(
                "no usable kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config or in-cluster); \
                 use --output DIR to write the manifests instead",
            )?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

/// The files `--output` writes, in apply order (kubectl reads a directory in name order).
const FILES: [(&str, &[&str]); 7] = [
    ("00-crds.yaml", &["CustomResourceDefinition"]),
    ("01-namespace.yaml", &["Namespace"]),
    (
        "02-rbac.yaml",
        &[
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ],
    ),
    ("03-secret.yaml", &["Secret"]),
    ("04-services.yaml", &["Service"]),
    ("05-deployments.yaml", &["Deployment"]),
    // Only with --service-monitor: a file with no object would make `kubectl apply -f` fail.
    ("06-monitoring.yaml", &["ServiceMonitor"]),
];

pub async fn deploy_peer(args: DeployPeerArgs) -> anyhow::Result<()> {
    let fabric = args.path.join(&args.fabric);
    let files = TlsFiles::in_fabric(&fabric, &fabric.join(&args.name));
    let hint = || {
        format!(
            "loading the certificate of peer {:?} (create it with `clusterlink create peer-cert --name {}`)",
            args.name, args.name
        )
    };
    let read = |p: &Path| std::fs::read_to_string(p).with_context(hint);
    let credentials = Credentials::load(&files).with_context(hint)?;
    match identity_of(&credentials.chain[0]) {
        Ok(Identity::Peer(name)) if name == args.name => {}
        other => bail!(
            "{} is not the certificate of peer {:?} ({other:?})",
            files.cert.display(),
            args.name
        ),
    }
    credentials.verify_own_chain().with_context(|| {
        format!(
            "{} is not signed by {}",
            files.cert.display(),
            files.ca.display()
        )
    })?;
    let ingress_port = args.ingress_port.unwrap_or(args.ingress.default_port());
    let peer = PeerDeployment {
        name: args.name.clone(),
        namespace: args.namespace,
        ingress: args.ingress,
        ingress_port,
        dataplane_replicas: args.dataplane_replicas,
        labels: parse_labels(&args.labels)?,
        registry: args.container_registry,
        tag: args.tag,
        ca_pem: read(&files.ca)?,
        cert_pem: read(&files.cert)?,
        key_pem: read(&files.key)?,
        mcs_api: args.mcs_api,
        service_monitor: args.service_monitor,
    };
    let manifests = peer.manifests()?;
    match args.output {
        Some(dir) => {
            write_manifests(&dir, &manifests)?;
            println!(
                "wrote the manifests of peer {} to {}; apply them with: kubectl apply -f {}",
                args.name,
                dir.display(),
                dir.display()
            );
        }
        None => {
            let client = args.cluster.client().await?;
            apply::apply(&client, &manifests).await?;
            for m in &manifests {
                println!("applied {}", deploy::describe(m));
            }
        }
    }
    Ok(())
}

/// Writes each group of manifests to its numbered file. Every file is written to a temporary
/// name first and renamed, so a failure leaves no half-written manifest behind.
pub fn write_manifests(dir: &Path, manifests: &[Manifest]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, kinds) in FILES {
        let group: Vec<Manifest> = manifests
            .iter()
            .filter(|m| kinds.contains(&m.kind()))
            .cloned()
            .collect();
        let path = dir.join(file);
        if group.is_empty() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
                _ => continue,
            }
        }
        let yaml = deploy::to_yaml(&group)?;
        let tmp = dir.join(format!(".{file}.tmp"));
        // The Secret holds the private key: readable by the owner only, from the first byte.
        let mode = if kinds.contains(&"Secret") {
            0o600
        } else {
            0o644
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        out.write_all(yaml.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

pub async fn delete_peer(args: DeletePeerArgs) -> anyhow::Result<()> {
    // Names and kinds are all deletion needs; the certificate contents do not matter.
    let peer = PeerDeployment {
        name: args.name.clone(),
        namespace: args.namespace,
        ingress: Ingress::None,
        ingress_port: deploy::DEFAULT_INGRESS_PORT,
        dataplane_replicas: 1,
        labels: BTreeMap::new(),
        registry: deploy::DEFAULT_REGISTRY.into(),
        tag: String::new(),
        ca_pem: String::new(),
        cert_pem: String::new(),
        key_pem: String::new(),
        mcs_api: true,
        // Deleted if there is one; a cluster without the operator answers 404, which is skipped.
        service_monitor: true,
    };
    let manifests = peer.manifests()?;
    let client = args.cluster.client().await?;
    let deleted = apply::delete(&client, &manifests, args.with_crds).await?;
    if deleted.is_empty() {
        println!("nothing of peer {} was found", args.name);
    }
    for d in deleted {
        println!("deleted {d}");
    }
    Ok(())
}

#[derive(Debug, Parser)]
#[command(
    name = "cl-controlplane",
    version,
    about = "ClusterLink control plane on Kubernetes: the controller and the snapshot stream",
    long_about = "ClusterLink control plane on Kubernetes. Watches the clusterlink.net custom \
        resources, Services and pods; writes statuses, import Services and target ports; probes \
        peers; and streams configuration snapshots to the data-plane replicas over mutual TLS.\n\n\
        `clusterlink deploy peer` runs it with the right arguments."
)]
pub struct ControlPlaneArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The namespace the peer is deployed into (where its Peer objects live).
    #[arg(long, env = "POD_NAMESPACE", default_value = deploy::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Where data-plane replicas fetch snapshots.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], deploy::SNAPSHOT_PORT)))]
    pub snapshot_address: SocketAddr,
    /// Labels selecting the data-plane pods, KEY=VALUE[,KEY=VALUE...].
    #[arg(long, value_delimiter = ',', required = true)]
    pub dataplane_selector: Vec<String>,
    /// The operations endpoint: /healthz, /readyz and /metrics over plain HTTP, for the
    /// kubelet's probes and Prometheus.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], ops::DEFAULT_OPS_PORT)))]
    pub ops_address: SocketAddr,
    /// The data plane's own peer port: never allocated as an import's target port.
    #[arg(long, default_value_t = deploy::DATAPLANE_PEER_PORT)]
    pub dataplane_peer_port: u16,
    /// Watch ServiceExports (each exports its Service) and publish a ServiceImport for each
    /// mirrored Import. The Multi-Cluster Services API's CRDs must be installed.
    #[arg(long)]
    pub mcs_api: bool,
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

pub async fn run_controlplane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    crate::init_logging(&args.log_level, true);
    let (stop, shutdown) = watch::channel(false);
    let (name, tls) = args.tls.load(&shutdown)?;
    let selector = parse_labels(&args.dataplane_selector)?;
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API server")?;
    let listener = tokio::net::TcpListener::bind(args.snapshot_address)
        .await
        .with_context(|| format!("cannot listen on {}", args.snapshot_address))?;
    let ops_listener = ops::bind(args.ops_address).await?;
    let control_plane = ControlPlane::open(Arc::new(MemoryStore::default()))?;
    let (hosts_tx, hosts) = watch::channel(Arc::default());
    let mut tasks = tokio::task::JoinSet::new();
    let (synced_tx, synced) = tokio::sync::oneshot::channel();
    // Replicas wait (in the listen backlog, then by reconnecting) until the model holds the
    // cluster's configuration: until then they keep serving their last snapshot.
    let mut metrics = Metrics::default();
    let controller_metrics = ControllerMetrics::register(&mut metrics);
    let metrics = Arc::new(metrics);
    let health = ProcessHealth::with_heartbeat(clusterlink_k8s::controller::WEDGED_AFTER);
    tasks.spawn(ops::serve(
        ops_listener,
        health.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tasks.spawn({
        let (name, tls, objects, metrics, shutdown) = (
            name.clone(),
            tls.clone(),
            control_plane.subscribe(),
            metrics.clone(),
            shutdown.clone(),
        );
        async move {
            if synced.await.is_ok() {
                replica::serve(listener, name, tls, objects, hosts, metrics, shutdown).await;
            }
        }
    });
    // The peers are all that is probed, and what they offer fetched for mirroring; labels and
    // client hosts do not matter here.
    let snapshots = snapshot::follow_changes(
        &name,
        BTreeMap::new(),
        control_plane.subscribe(),
        watch::channel(Arc::default()).1,
    );
    let catalogs = clusterlink_dataplane::catalog::Received::default();
    tasks.spawn(clusterlink_dataplane::probe_peers(
        snapshots,
        Arc::new(control_plane.clone()),
        tls,
        metrics,
        catalogs.clone(),
        shutdown.clone(),
    ));
    let config = clusterlink_k8s::ControllerConfig {
        system_namespace: args.namespace,
        dataplane_labels: selector,
        reserved_ports: vec![args.dataplane_peer_port],
        catalogs: catalogs.watch(),
        mcs_api: args.mcs_api,
    };
    tasks.spawn(clusterlink_k8s::controller::run(
        client,
        config,
        control_plane,
        hosts_tx,
        synced_tx,
        health,
        controller_metrics,
    ));
    tracing::info!(peer = %name, "control plane started");
    // Every task runs until shutdown; a control plane missing one only looks alive.
    tokio::select! {
        signal = wait_for_signal() => signal?,
        Some(ended) = tasks.join_next() => bail!("a control-plane task stopped unexpectedly ({ended:?}); exiting so that it is restarted"),
    }
    let _ = stop.send(true);
    tasks.abort_all();
    Ok(())
}
