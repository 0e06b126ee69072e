//! `cl-dataplane`: a data-plane replica on Kubernetes, serving the snapshots its control plane
//! streams to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio::sync::{oneshot, watch};

use crate::conditions::Unreported;
use crate::metrics::Metrics;
use crate::ops::ProcessHealth;
use crate::process::{
    BackendArgs, TlsArgs, TunnelArgs, init_logging, parse_labels, raise_open_file_limit,
    wait_for_signal,
};
use crate::tasks::DataPlaneConfig;

/// The port a replica's peer port listens on inside its pod (its Service maps 443 or a node port
/// to it): unprivileged, so the container needs no capability.
pub const DEFAULT_PEER_PORT: u16 = 4443;

#[derive(Debug, Parser)]
#[command(
    name = "cl-dataplane",
    version,
    about = "ClusterLink data-plane replica on Kubernetes",
    long_about = "ClusterLink data-plane replica: serves the peer port and the import listeners \
        from the configuration snapshots its control plane streams to it. The peer port opens \
        (and the pod turns ready) once the first snapshot is applied. If the control plane goes \
        away it keeps serving the last snapshot and reconnects."
)]
pub struct DataPlaneArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The control plane's snapshot address, HOST:PORT.
    #[arg(long)]
    pub control_plane: String,
    /// The peer port: mutual TLS tunnels from other gateways. Opened after the first snapshot.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PEER_PORT)))]
    pub peer_address: SocketAddr,
    /// The operations endpoint: /healthz, /readyz and /metrics over plain HTTP, for the
    /// kubelet's probes and Prometheus.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], crate::ops::DEFAULT_OPS_PORT)))]
    pub ops_address: SocketAddr,
    /// Where import listeners bind (each on its import's target port).
    #[arg(long, default_value = "0.0.0.0")]
    pub import_address: IpAddr,
    /// A label of this peer, KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub backends: BackendArgs,
    #[command(flatten)]
    pub tunnels: TunnelArgs,
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Runs a replica until SIGTERM or SIGINT; an error if any of its tasks stops first.
pub async fn run(args: DataPlaneArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, true);
    let (stop, shutdown) = watch::channel(false);
    let (name, tls) = args.tls.load(&shutdown)?;
    let labels = parse_labels(&args.labels)?;
    raise_open_file_limit();
    let metrics = Arc::new(Metrics::default().with_access_log(args.tunnels.access_log));
    let health = ProcessHealth::new();
    let ops_listener = crate::ops::bind(args.ops_address).await?;
    let ops_address = ops_listener.local_addr()?;
    let mut ops = tokio::spawn(crate::ops::serve(
        ops_listener,
        health.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let (objects_tx, objects) = watch::channel(Arc::default());
    let (hosts_tx, hosts) = watch::channel(Arc::default());
    let (first_applied, first_snapshot) = oneshot::channel();
    let follow = tokio::spawn(crate::replica::follow(
        args.control_plane.clone(),
        name.clone(),
        tls.clone(),
        objects_tx,
        hosts_tx,
        first_applied,
        shutdown.clone(),
    ));
    // The peer port is the readiness probe's target: opened only once there is a configuration
    // to serve, so a new replica joins the Services' endpoints ready, not empty.
    tracing::info!(control_plane = %args.control_plane, "waiting for the first snapshot before opening the peer port");
    tokio::select! {
        first = first_snapshot => first.context("the snapshot stream ended before the first snapshot")?,
        signal = wait_for_signal() => {
            signal?;
            let _ = stop.send(true);
            let _ = tokio::join!(follow, ops);
            return Ok(());
        }
    }
    let peer_listener = tokio::net::TcpListener::bind(args.peer_address)
        .await
        .with_context(|| format!("cannot listen on {} for the peer port", args.peer_address))?;
    let peer_address = peer_listener.local_addr()?;
    let snapshots = crate::snapshot::follow_changes(&name, labels, objects, hosts);
    let config = DataPlaneConfig {
        import_address: args.import_address,
        clients: tokio::sync::watch::channel(Default::default()).1,
        metrics,
        protected: vec![peer_address, ops_address],
        loopback_backends: args.backends.allow_loopback_backends,
        limits: args.tunnels.limits(),
        // Replicas do not issue certificates: the issuing gateway is a standalone one.
        authority: None,
        known_peers_only: args.tunnels.known_peers_only,
    };
    let mut dataplane = tokio::spawn(crate::tasks::run(
        config,
        peer_listener,
        snapshots,
        Arc::new(Unreported),
        tls,
        shutdown,
    ));
    health.set_ready();
    tracing::info!(peer = %name, address = %peer_address, "data plane started: peer port open");
    let mut follow = follow;
    // Both run until shutdown; a replica missing either only looks alive, so it exits instead.
    tokio::select! {
        signal = wait_for_signal() => signal?,
        ended = &mut dataplane => bail!("the data plane stopped unexpectedly ({ended:?}); exiting so that the replica is restarted"),
        ended = &mut follow => bail!("the snapshot stream stopped unexpectedly ({ended:?}); exiting so that the replica is restarted"),
        ended = &mut ops => bail!("the operations endpoint stopped unexpectedly ({ended:?}); exiting so that the replica is restarted"),
    }
    let _ = stop.send(true);
    let _ = tokio::join!(follow, dataplane, ops);
    Ok(())
}
