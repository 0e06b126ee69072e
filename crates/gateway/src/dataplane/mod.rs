//! The data plane: the peer port (ingress), import listeners (egress) and the byte relay.
//!
//! It follows the control plane's committed objects through a [`Snapshot`], rebuilt whenever they
//! change and then only read: a connection takes the current snapshot once and decides everything
//! from it, with no locks and no calls back into the control plane.

mod clients;
mod credentials;
mod egress;
mod health;
mod hops;
mod ingress;
mod live;
mod pool;
mod read_ahead;
pub(crate) mod relay;
mod workers;

pub use clients::{ClientHosts, ClientTable, ClientTableError};
pub use credentials::{GatewayTls, watch_files};
pub use health::PeerHealth;
pub(crate) use workers::alive_tasks;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clusterlink_api::{ImportSource, LbScheme, Object, ObjectKey};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::model::{ControlPlane, Objects};
use crate::policy::PolicyEngine;
use crate::tunnel::ExportRef;

/// Dialing a peer gateway or a backend longer than this means it is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A TLS handshake or tunnel head slower than this is a stalled or hostile party.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown lets open tunnels finish before closing them: longer than most exchanges,
/// shorter than the 30 s a service manager or Kubernetes waits before killing the process.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits for `connections` to end, for at most [`DRAIN_TIMEOUT`]; then closes the rest.
async fn drain(mut connections: JoinSet<()>, what: &str) {
    if connections.is_empty() {
        return;
    }
    tracing::info!(open = connections.len(), "draining {what}");
    let all_done = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, all_done).await.is_err() {
        tracing::warn!(
            left = connections.len(),
            "{what} still open after {DRAIN_TIMEOUT:?}; closing them"
        );
        connections.abort_all();
    }
}

/// What the data plane needs from a gateway's configuration.
#[derive(Clone)]
pub struct DataPlaneConfig {
    pub local_peer: String,
    /// This peer's own labels (`peer.clusterlink.net/labels.*` of the local side in policies).
    pub local_labels: BTreeMap<String, String>,
    /// Where import listeners bind (standalone mode).
    pub import_address: IpAddr,
    /// Who local clients are, by address range (standalone mode).
    pub clients: ClientTable,
    /// Who local clients are, by exact address (Kubernetes pods); consulted before `clients`.
    pub client_hosts: watch::Receiver<Arc<ClientHosts>>,
    pub metrics: Arc<Metrics>,
    /// This gateway's own listeners (management API, peer port): never dialed as a backend.
    pub protected: Vec<std::net::SocketAddr>,
    /// Whether exports may name services on loopback addresses (off by default: a loopback
    /// service trusts every local process, and an export hands that trust to remote peers).
    pub loopback_backends: bool,
}

/// A peer as the data plane sees it.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub gateways: Vec<(String, u16)>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ExportEntry {
    pub host: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ImportEntry {
    pub port: u16,
    pub sources: Vec<ImportSource>,
    pub lb_scheme: LbScheme,
    pub labels: BTreeMap<String, String>,
}

/// An immutable view of everything the data plane acts on.
pub struct Snapshot {
    pub local_peer: String,
    pub local_labels: BTreeMap<String, String>,
    pub peers: HashMap<String, PeerEntry>,
    pub exports: HashMap<ExportRef, ExportEntry>,
    pub imports: BTreeMap<ObjectKey, ImportEntry>,
    pub policy: PolicyEngine,
    pub client_hosts: Arc<ClientHosts>,
}

impl Snapshot {
    pub fn build(
        local_peer: &str,
        local_labels: &BTreeMap<String, String>,
        objects: &Objects,
        client_hosts: Arc<ClientHosts>,
    ) -> Snapshot {
        let mut snapshot = Snapshot {
            local_peer: local_peer.to_string(),
            local_labels: local_labels.clone(),
            peers: HashMap::new(),
            exports: HashMap::new(),
            imports: BTreeMap::new(),
            policy: PolicyEngine::compile(objects.values()),
            client_hosts,
        };
        for (key, obj) in objects {
            match obj {
                Object::Peer(p) => {
                    let gateways = p
                        .spec
                        .gateways
                        .iter()
                        .map(|g| (g.host.clone(), g.port.get()))
                        .collect();
                    snapshot.peers.insert(
                        p.metadata.name.clone(),
                        PeerEntry {
                            gateways,
                            labels: p.metadata.labels.clone(),
                        },
                    );
                }
                Object::Export(e) => {
                    // Without a host, the export is the service of the same name.
                    let host = if e.spec.host.is_empty() {
                        e.metadata.name.clone()
                    } else {
                        e.spec.host.clone()
                    };
                    snapshot.exports.insert(
                        ExportRef {
                            namespace: e.metadata.namespace.clone(),
                            name: e.metadata.name.clone(),
                        },
                        ExportEntry {
                            host,
                            port: e.spec.port.get(),
                            labels: e.metadata.labels.clone(),
                        },
                    );
                }
                Object::Import(i) => {
                    snapshot.imports.insert(
                        key.clone(),
                        ImportEntry {
                            port: i.spec.port.get(),
                            sources: i.spec.sources.clone(),
                            lb_scheme: i.spec.lb_scheme,
                            labels: i.metadata.labels.clone(),
                        },
                    );
                }
                Object::AccessPolicy(_) | Object::PrivilegedAccessPolicy(_) => {}
            }
        }
        snapshot
    }
}

/// Runs the data plane until `shutdown` flips: the peer port on `peer_listener` and a listener per
/// import. Returns when every task has stopped.
pub async fn run(
    config: DataPlaneConfig,
    peer_listener: TcpListener,
    control_plane: ControlPlane,
    tls: watch::Receiver<Arc<GatewayTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let snapshots = follow_snapshots(
        &config.local_peer,
        config.local_labels.clone(),
        control_plane.subscribe(),
        config.client_hosts.clone(),
    );
    let health = PeerHealth::default();
    let mut tasks = JoinSet::new();
    tasks.spawn(health::run_probers(
        tls.clone(),
        health.clone(),
        snapshots.clone(),
        control_plane.clone(),
        config.metrics.clone(),
        shutdown.clone(),
    ));
    let relayed = Arc::new(hops::RelayedConnections::default());
    tasks.spawn(ingress::serve(
        peer_listener,
        tls.clone(),
        snapshots.clone(),
        ingress::PeerPortConfig {
            metrics: config.metrics.clone(),
            protected: config.protected.clone().into(),
            loopback_backends: config.loopback_backends,
            relayed: relayed.clone(),
        },
        shutdown.clone(),
    ));
    let egress = Arc::new(egress::Egress {
        tls,
        health,
        clients: config.clients,
        metrics: config.metrics,
        live: Default::default(),
        pool: Default::default(),
        handshakes: tokio::sync::Semaphore::new(egress::MAX_HANDSHAKES),
        relayed,
    });
    tasks.spawn({
        let (egress, mut snapshots, mut shutdown) =
            (egress.clone(), snapshots.clone(), shutdown.clone());
        let mut credentials = egress.tls.clone();
        async move {
            // Idle peer connections expire even when nothing else happens.
            let mut sweep = tokio::time::interval(pool::IDLE_LIMIT / 2);
            loop {
                tokio::select! {
                    changed = snapshots.changed() => {
                        if changed.is_err() { break }
                        let snapshot = snapshots.borrow_and_update().clone();
                        egress.revalidate(&snapshot);
                    }
                    _ = sweep.tick() => egress.sweep_pool(&snapshots.borrow()),
                    // Connections authenticated with replaced certificates are not reused.
                    changed = credentials.changed() => {
                        if changed.is_err() { break }
                        egress.empty_pool();
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
        control_plane,
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

/// Probes every Peer of `control_plane` and records `PeerReachable` in it, without serving any
/// traffic: on Kubernetes the control plane reports reachability while its replicas carry the
/// tunnels (each replica probes for its own load balancing too).
pub async fn probe_peers(
    local_peer: String,
    control_plane: ControlPlane,
    tls: watch::Receiver<Arc<GatewayTls>>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let snapshots = follow_snapshots(
        &local_peer,
        BTreeMap::new(),
        control_plane.subscribe(),
        watch::channel(Arc::default()).1,
    );
    health::run_probers(
        tls,
        PeerHealth::default(),
        snapshots,
        control_plane,
        metrics,
        shutdown,
    )
    .await
}

/// Rebuilds the snapshot on every committed change of the objects or of the client hosts.
fn follow_snapshots(
    local_peer: &str,
    local_labels: BTreeMap<String, String>,
    mut objects: watch::Receiver<Arc<Objects>>,
    mut hosts: watch::Receiver<Arc<ClientHosts>>,
) -> watch::Receiver<Arc<Snapshot>> {
    let local_peer = local_peer.to_string();
    let build = move |objects: &Objects, hosts: Arc<ClientHosts>| {
        Arc::new(Snapshot::build(&local_peer, &local_labels, objects, hosts))
    };
    let first = build(
        &objects.borrow_and_update(),
        hosts.borrow_and_update().clone(),
    );
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        // A source whose sender is gone never changes again; the snapshot follows the other.
        let mut hosts_open = true;
        loop {
            tokio::select! {
                changed = objects.changed() => if changed.is_err() { break },
                changed = hosts.changed(), if hosts_open => if changed.is_err() {
                    hosts_open = false;
                    continue;
                },
            }
            let snapshot = build(
                &objects.borrow_and_update(),
                hosts.borrow_and_update().clone(),
            );
            if tx.send(snapshot).is_err() {
                break;
            }
        }
    });
    rx
}

/// Keepalive idle time: a tunnel whose far end vanished without a FIN or RST (cut link, dead host)
/// is noticed after this plus a few probes, and its sockets are freed.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Every data-path socket: no Nagle delay on small writes, and keepalive so dead ends are found.
fn tune_socket(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
