//! Running the data plane: its tasks (peer port, import listeners, peer probes, connection
//! pool upkeep), their supervision, and what operators ask of it while it runs.

use std::net::IpAddr;
use std::sync::Arc;

use clusterlink_api::clients::ClientTable;
use clusterlink_pki::reload::GatewayTls;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use clusterlink_api::activity::{ExplainRequest, Explanation, Traffic};

use crate::capacity::{Descriptors, Shares, TunnelCounts};
use crate::conditions::RuntimeConditions;
use crate::egress::ExplainError;
use crate::events::EventLog;
use crate::health::{self, PeerHealth};
use crate::limits::Limits;
use crate::link::{self, Links};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::{egress, hops, ingress};

/// What the data plane needs from a gateway's configuration besides the snapshots.
#[derive(Clone)]
pub struct DataPlaneConfig {
    /// Where import listeners bind (standalone mode).
    pub import_address: IpAddr,
    /// Who local clients are, by address range (standalone mode); a new table applies to new
    /// connections.
    pub clients: watch::Receiver<Arc<ClientTable>>,
    pub metrics: Arc<Metrics>,
    /// This gateway's own listeners (management API, peer port): never dialed as a backend.
    pub protected: Vec<std::net::SocketAddr>,
    /// Whether exports may name services on loopback addresses (off by default: a loopback
    /// service trusts every local process, and an export hands that trust to remote peers).
    pub loopback_backends: bool,
    /// Timeouts and bounds.
    pub limits: Limits,
    /// The fabric's issuing authority, when this gateway serves joining and renewal.
    pub authority: Option<Arc<clusterlink_pki::authority::Authority>>,
    /// Admit on the peer port only peers with a Peer object here. Off by default, as in the
    /// reference ClusterLink: any certificate of the fabric may ask, and policies decide.
    pub known_peers_only: bool,
}

/// A data plane: what its tasks share, and what operators may ask of it while it runs (live
/// counts, recent events, a dry-run decision).
pub struct DataPlane {
    config: DataPlaneConfig,
    egress: Arc<egress::Egress>,
}

impl DataPlane {
    pub fn new(config: DataPlaneConfig, tls: watch::Receiver<Arc<GatewayTls>>) -> Arc<DataPlane> {
        let limits = config.limits;
        let descriptors = Descriptors::of_this_process(&limits);
        let shares = Shares::new(&limits, &descriptors);
        let egress = Arc::new(egress::Egress {
            limits,
            descriptors: Arc::new(descriptors),
            peer_tunnels: TunnelCounts::new(shares.tunnels_per_peer),
            dialer: egress::Dialer {
                tls,
                health: PeerHealth::default(),
                pool: Default::default(),
                handshakes: tokio::sync::Semaphore::new(limits.handshakes_at_once),
                links: Links::default(),
                metrics: config.metrics.clone(),
                limits,
            },
            clients: config.clients.clone(),
            metrics: config.metrics.clone(),
            live: Default::default(),
            relayed: Arc::new(hops::RelayedConnections::default()),
            refusal_waits: tokio::sync::Semaphore::new(limits.refusal_waits),
        });
        Arc::new(DataPlane { config, egress })
    }

    /// The gateway's TLS set, as current as the data plane's.
    pub fn tls(&self) -> watch::Receiver<Arc<GatewayTls>> {
        self.egress.dialer.tls.clone()
    }

    /// Live counts per import, export and peer, with each peer's probe results.
    pub fn traffic(&self) -> Traffic {
        let mut traffic = self.config.metrics.traffic();
        self.egress.dialer.health.add_to(&mut traffic);
        for (peer, link) in self.egress.dialer.links.describe() {
            traffic.peers.entry(peer).or_default().link = Some(link);
        }
        traffic
    }

    /// What peers offer this gateway (their catalogs), as it changes.
    pub fn catalogs(&self) -> watch::Receiver<Arc<crate::catalog::Catalogs>> {
        self.egress.dialer.health.catalogs().watch()
    }

    /// The recent tunnels and refusals.
    pub fn events(&self) -> &EventLog {
        &self.config.metrics.events
    }

    /// The decision a new connection would get now, on both sides, from `snapshot`: egress
    /// decided here, ingress asked of each exporting gateway as a dry run.
    pub async fn explain(
        &self,
        snapshot: &Snapshot,
        request: &ExplainRequest,
    ) -> Result<Explanation, ExplainError> {
        self.egress.explain(snapshot, request).await
    }

    /// Runs the data plane until `shutdown` flips: the peer port on `peer_listener` and a
    /// listener per import, serving what `snapshots` holds and reporting what only it knows to
    /// `conditions`. Returns when every task has stopped.
    pub async fn run(
        self: Arc<Self>,
        peer_listener: TcpListener,
        snapshots: watch::Receiver<Arc<Snapshot>>,
        conditions: Arc<dyn RuntimeConditions>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let config = &self.config;
        let egress = self.egress.clone();
        let tls = egress.dialer.tls.clone();
        let links = egress.dialer.links.clone();
        let (inbound, streams) = tokio::sync::mpsc::channel(link::INBOUND_QUEUE);
        let mut tasks = JoinSet::new();
        tasks.spawn(link::keep_dialed(
            link::Dialing {
                tls: tls.clone(),
                links: links.clone(),
                inbound: inbound.clone(),
                limits: config.limits,
            },
            snapshots.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(health::run_probers(
            tls.clone(),
            Some(links.clone()),
            egress.dialer.health.clone(),
            snapshots.clone(),
            conditions.clone(),
            config.metrics.clone(),
            config.limits,
            shutdown.clone(),
        ));
        tasks.spawn(ingress::serve(
            peer_listener,
            tls,
            snapshots.clone(),
            ingress::PeerPortConfig {
                limits: config.limits,
                descriptors: egress.descriptors.clone(),
                metrics: config.metrics.clone(),
                protected: config.protected.clone().into(),
                loopback_backends: config.loopback_backends,
                relayed: egress.relayed.clone(),
                authority: config.authority.clone(),
                known_peers_only: config.known_peers_only,
                links,
                inbound: (inbound, streams),
                health: egress.dialer.health.clone(),
            },
            shutdown.clone(),
        ));
        tasks.spawn({
            let (egress, mut snapshots, mut shutdown) =
                (egress.clone(), snapshots.clone(), shutdown.clone());
            let mut credentials = egress.dialer.tls.clone();
            let sweep_every = config.limits.pool_idle / 2;
            let metrics = config.metrics.clone();
            {
                let current = credentials.borrow_and_update().clone();
                metrics.credentials.in_force(
                    current.certificate_expires,
                    current.revocations.revoked_count(),
                );
            }
            async move {
                // Idle peer connections expire even when nothing else happens.
                let mut sweep = tokio::time::interval(sweep_every);
                loop {
                    tokio::select! {
                        changed = snapshots.changed() => {
                            if changed.is_err() { break }
                            let snapshot = snapshots.borrow_and_update().clone();
                            egress.revalidate(&snapshot);
                        }
                        _ = sweep.tick() => egress.dialer.sweep_pool(&snapshots.borrow()),
                        // Connections authenticated with replaced certificates are not reused, and
                        // tunnels to a peer whose certificate was revoked are cut.
                        changed = credentials.changed() => {
                            if changed.is_err() { break }
                            egress.dialer.empty_pool();
                            let current = credentials.borrow_and_update().clone();
                            egress.revalidate_certificates(&current);
                            metrics.credentials.in_force(
                                current.certificate_expires,
                                current.revocations.revoked_count(),
                            );
                        }
                        _ = shutdown.changed() => break,
                    }
                }
            }
        });
        tasks.spawn(egress::run_import_listeners(
            config.import_address,
            egress,
            snapshots,
            conditions,
            shutdown.clone(),
        ));
        // Every task runs until shutdown: one that ends sooner leaves a data plane that looks up
        // but is not, so the data plane ends too and the process above it sees that.
        tokio::select! {
            // Tasks end when they see the shutdown, so it is checked first: a task that ended
            // because of it is no failure.
            biased;
            () = async { drop(shutdown.wait_for(|stop| *stop).await) } => {}
            Some(ended) = tasks.join_next() => if !*shutdown.borrow() {
                tracing::error!(?ended, "a data-plane task ended unexpectedly; stopping the data plane");
                return;
            },
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Runs a data plane (see [`DataPlane::run`]) that nothing else asks about.
pub async fn run(
    config: DataPlaneConfig,
    peer_listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    conditions: Arc<dyn RuntimeConditions>,
    tls: watch::Receiver<Arc<GatewayTls>>,
    shutdown: watch::Receiver<bool>,
) {
    DataPlane::new(config, tls)
        .run(peer_listener, snapshots, conditions, shutdown)
        .await
}

/// Probes every Peer of `snapshots` and reports `PeerReachable` to `conditions`, without serving
/// any traffic: on Kubernetes the control plane reports reachability while its replicas carry the
/// tunnels (each replica probes for its own load balancing too).
/// What peers offer is kept in `catalogs`.
pub async fn probe_peers(
    snapshots: watch::Receiver<Arc<Snapshot>>,
    conditions: Arc<dyn RuntimeConditions>,
    tls: watch::Receiver<Arc<GatewayTls>>,
    metrics: Arc<Metrics>,
    catalogs: crate::catalog::Received,
    shutdown: watch::Receiver<bool>,
) {
    let health = PeerHealth::with_catalogs(catalogs);
    let limits = Limits::DEFAULT;
    // The control plane holds no links: a peer reached only over one is probed by the replicas.
    health::run_probers(
        tls, None, health, snapshots, conditions, metrics, limits, shutdown,
    )
    .await
}
