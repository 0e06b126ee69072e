//! Import listeners: a local port per import, and for each client connection a tunnel to one of
//! the import's sources.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clusterlink_api::{
    Condition, ConditionReason, ConditionStatus, ConditionType, ImportSource, LbScheme, ObjectKey,
};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, SemaphorePermit, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use clusterlink_api::clients::ClientTable;
use clusterlink_pki::reload::GatewayTls;

use crate::conditions::RuntimeConditions;
use crate::connections::{drain, tune_socket};
use crate::health::PeerHealth;
use crate::hops::RelayedConnections;
use crate::limits::Limits;
use crate::live::LiveTunnels;
use crate::metrics::{Metrics, Side};
use crate::policy::PolicyDecision;
use crate::policy::{Attributes, export_attributes, peer_attributes};
use crate::pool::{ConnectionPool, GatewayKey};
use crate::read_ahead::ReadAhead;
use crate::relay::{TLS_SEND_BUFFER, relay};
use crate::snapshot::{ImportEntry, PeerEntry, Snapshot};
use crate::tunnel::{ExportRef, RefusalReason, TunnelRequest, TunnelResponse, read_head};
use crate::workers::serve_on_worker;

/// A mutual-TLS connection to a peer gateway.
type PeerConnection = TlsStream<ReadAhead<TcpStream>>;

const IMPORT_VALID: ConditionType = ConditionType::ImportValid;

struct RunningListener {
    port: u16,
    task: JoinHandle<()>,
}

/// Keeps one listener per import in step with the snapshots: binds new ones, closes deleted ones
/// (with their connections), rebinds on a port change, and retries a port that was taken.
pub(crate) async fn run_import_listeners(
    address: IpAddr,
    egress: Arc<Egress>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    conditions: Arc<dyn RuntimeConditions>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<ObjectKey, RunningListener> = HashMap::new();
    // Imports whose port could not be bound; retried every `Limits::bind_retry`, and on every change.
    let mut failed: HashSet<ObjectKey> = HashSet::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        failed.retain(|key| {
            let exists = snapshot.imports.contains_key(key);
            if !exists {
                conditions.set(key, IMPORT_VALID, None);
            }
            exists
        });
        let stale: Vec<ObjectKey> = running
            .iter()
            .filter(|(key, l)| snapshot.imports.get(*key).is_none_or(|i| i.port != l.port))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            let Some(listener) = running.remove(&key) else {
                continue;
            };
            listener.task.abort();
            // Awaiting the aborted task guarantees its socket is closed before the port is reused.
            let _ = listener.task.await;
            conditions.set(&key, IMPORT_VALID, None);
        }
        for (key, import) in &snapshot.imports {
            if running.contains_key(key) {
                continue;
            }
            let addr = SocketAddr::new(address, import.port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    failed.remove(key);
                    tracing::info!(import = %key, %addr, "import listening");
                    conditions.set(
                        key,
                        IMPORT_VALID,
                        Some(Condition::new(
                            IMPORT_VALID,
                            ConditionStatus::True,
                            ConditionReason::Listening,
                            format!("listening on {addr}"),
                        )),
                    );
                    let task = tokio::spawn(accept_loop(
                        listener,
                        key.clone(),
                        egress.clone(),
                        snapshots.clone(),
                        shutdown.clone(),
                    ));
                    running.insert(
                        key.clone(),
                        RunningListener {
                            port: import.port,
                            task,
                        },
                    );
                }
                Err(e) => {
                    if failed.insert(key.clone()) {
                        tracing::warn!(import = %key, %addr, error = %e, "import cannot listen");
                    }
                    conditions.set(
                        key,
                        IMPORT_VALID,
                        Some(Condition::new(
                            IMPORT_VALID,
                            ConditionStatus::False,
                            ConditionReason::PortUnavailable,
                            format!("cannot listen on {addr}: {e}"),
                        )),
                    );
                }
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            // A port held by something outside ClusterLink frees up without any change here.
            _ = tokio::time::sleep(Limits::DEFAULT.bind_retry), if !failed.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Each listener stops accepting and drains its connections on its own, all at once.
    for (_, listener) in running {
        let _ = listener.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    key: ObjectKey,
    egress: Arc<Egress>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Round-robin position survives changes of the import's sources.
    let next = Arc::new(AtomicUsize::new(0));
    // Owned here so that closing the listener (import deleted) closes its connections too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, remote)) => {
                    let snapshot = snapshots.borrow().clone();
                    let (key, next, egress) = (key.clone(), next.clone(), egress.clone());
                    serve_on_worker(&mut connections, client, move |client| async move {
                        egress.serve_client(client, remote, &key, &snapshot, &next).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(import = %key, error = %e, "import accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // The guard wait_for returns is not Send: drop it inside the branch's future.
            () = async { drop(shutdown.wait_for(|stop| *stop).await) } => break,
        }
    }
    drop(listener);
    drain(connections, &format!("connections of import {key}")).await;
}

/// The sources in the order to try them for one connection: the import's scheme decides the
/// order, and sources on unreachable peers move to the end (still tried, in case health lags).
fn source_order<'a>(
    import: &'a ImportEntry,
    next: &AtomicUsize,
    unreachable: impl Fn(&str) -> bool,
) -> Vec<&'a ImportSource> {
    let n = import.sources.len();
    let start = match import.lb_scheme {
        LbScheme::Static => 0,
        LbScheme::RoundRobin => next.fetch_add(1, Ordering::Relaxed) % n.max(1),
        LbScheme::Random => random_below(n),
    };
    let mut order: Vec<&ImportSource> = (0..n).map(|i| &import.sources[(start + i) % n]).collect();
    // A stable sort keeps the scheme's order within each group.
    order.sort_by_key(|s| unreachable(&s.peer));
    order
}

fn random_below(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    // RandomState is seeded per process; hashing a counter spreads picks without a crate.
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() % n as u64) as usize
}

/// What every import connection shares: how to reach peers, their health, and who clients are.
pub(crate) struct Egress {
    /// The peer port's TLS, current as of each new connection.
    pub tls: watch::Receiver<Arc<GatewayTls>>,
    pub health: PeerHealth,
    pub clients: ClientTable,
    pub metrics: Arc<Metrics>,
    /// Open tunnels, decided again when the configuration changes.
    pub live: LiveTunnels<EgressTunnel>,
    /// Peer connections between tunnels.
    pub pool: ConnectionPool<PeerConnection>,
    /// Places for new peer connections ([`Limits::handshakes_at_once`]), held from connect until
    /// the first answer. A burst beyond them waits for a place (or a connection coming back warm).
    pub handshakes: Semaphore,
    /// Connections this gateway's ingress made to backends, for loop detection.
    pub relayed: Arc<RelayedConnections>,
}

/// A live egress tunnel, as much as is needed to decide it again.
pub(crate) struct EgressTunnel {
    import: ObjectKey,
    client: Attributes,
    source: ImportSource,
}

impl Egress {
    /// Closes open tunnels that `snapshot` no longer allows: the egress policy now denies them,
    /// their source was removed from the import, or their Peer was deleted.
    pub fn revalidate(&self, snapshot: &Snapshot) {
        self.live.revalidate(|t| {
            snapshot
                .imports
                .get(&t.import)
                .is_some_and(|i| i.sources.contains(&t.source))
                && egress_decision(snapshot, &t.import, &t.client, &t.source).is_ok()
        });
        self.sweep_pool(snapshot);
    }

    /// Closes idle peer connections that expired or lead where `snapshot` no longer goes.
    pub fn sweep_pool(&self, snapshot: &Snapshot) {
        self.pool.sweep(|g| {
            snapshot.peers.get(&g.peer).is_some_and(|p| {
                p.gateways
                    .iter()
                    .any(|(host, port)| *host == g.host && *port == g.port)
            })
        });
        self.count_idle();
    }

    /// Closes every idle peer connection: they were authenticated with replaced certificates.
    pub fn empty_pool(&self) {
        self.pool.sweep(|_| false);
        self.count_idle();
    }

    /// Closes the idle connections to `gateway`.
    fn forget(&self, gateway: &GatewayKey) {
        self.pool.sweep(|g| g != gateway);
        self.count_idle();
    }

    /// The latest idle connection to `gateway`, if one is kept.
    fn take_warm(&self, gateway: &GatewayKey) -> Option<PeerConnection> {
        let taken = self.pool.take(gateway);
        self.count_idle();
        taken
    }

    /// Keeps a connection whose tunnel ended cleanly for the next tunnel to `gateway`.
    fn keep_warm(&self, gateway: GatewayKey, connection: PeerConnection) {
        self.pool.put(gateway, connection);
        self.count_idle();
    }

    /// Every change of the pool goes through a method that calls this, so the gauge follows it.
    fn count_idle(&self) {
        self.metrics.set_idle(Side::Egress, self.pool.len());
    }
}

enum EgressRefusal {
    NoSuchPeer,
    Denied(PolicyDecision),
}

/// The egress decision for one source of an import, for a client with `client` attributes:
/// the source's peer, or why not.
fn egress_decision<'a>(
    snapshot: &'a Snapshot,
    import: &ObjectKey,
    client: &Attributes,
    source: &ImportSource,
) -> Result<&'a PeerEntry, EgressRefusal> {
    let peer = snapshot
        .peers
        .get(&source.peer)
        .ok_or(EgressRefusal::NoSuchPeer)?;
    let mut src = client.clone();
    peer_attributes(&mut src, &snapshot.local_peer, &snapshot.local_labels);
    let mut dst = Attributes::new();
    peer_attributes(&mut dst, &source.peer, &peer.labels);
    export_attributes(
        &mut dst,
        &source.export_name,
        &source.export_namespace,
        &Default::default(),
    );
    let decision = snapshot.policy.decide(&import.namespace, &src, &dst);
    if decision.allowed {
        Ok(peer)
    } else {
        Err(EgressRefusal::Denied(decision))
    }
}

impl Egress {
    async fn serve_client(
        &self,
        mut client: TcpStream,
        remote: SocketAddr,
        key: &ObjectKey,
        snapshot: &Snapshot,
        next: &AtomicUsize,
    ) {
        let accepted_at = std::time::Instant::now();
        let _active = self.metrics.accepted(Side::Egress);
        let _ = tune_socket(&client);
        let Some(import) = snapshot.imports.get(key) else {
            self.metrics.refused(Side::Egress, "NoSuchImport");
            reset(client);
            return;
        };
        let client_attributes = match snapshot.client_hosts.get(remote.ip()) {
            Some(pod) => pod.clone(),
            None => self.clients.attributes_of(remote.ip()),
        };
        for source in source_order(import, next, |peer| self.health.is_unreachable(peer)) {
            let export = ExportRef {
                namespace: source.export_namespace.clone(),
                name: source.export_name.clone(),
            };
            let peer = match egress_decision(snapshot, key, &client_attributes, source) {
                Ok(peer) => peer,
                Err(EgressRefusal::NoSuchPeer) => {
                    tracing::warn!(import = %key, peer = %source.peer, "source skipped: no such Peer");
                    continue;
                }
                Err(EgressRefusal::Denied(decision)) => {
                    self.metrics
                        .refused(Side::Egress, RefusalReason::PolicyDenied.as_str());
                    tracing::info!(import = %key, %remote, peer = %source.peer, "egress {decision}");
                    continue;
                }
            };
            let request = TunnelRequest {
                export: export.clone(),
                client: client_attributes.clone(),
                hops: self.relayed.hops_from(remote.port()),
            };
            match self
                .open_tunnel(&source.peer, &peer.gateways, &request)
                .await
            {
                Ok(OpenTunnel {
                    mut connection,
                    leftover,
                    gateway,
                }) => {
                    self.metrics.authorized(Side::Egress, accepted_at.elapsed());
                    tracing::debug!(import = %key, %remote, peer = %source.peer, "tunnel open");
                    let registered = self.live.register(EgressTunnel {
                        import: key.clone(),
                        client: client_attributes.clone(),
                        source: source.clone(),
                    });
                    let relayed = tokio::select! {
                        moved = relay(&mut client, &mut connection, leftover) => match moved {
                            Ok(relayed) => relayed,
                            Err(e) => {
                                // One end broke mid-stream (a reset, or TCP closed without
                                // close_notify): the client must not take it for a clean end.
                                // (Bytes of a broken tunnel are not counted.)
                                tracing::info!(import = %key, %remote, peer = %source.peer, "tunnel broken: {e}; resetting the client");
                                reset(client);
                                return;
                            }
                        },
                        _ = registered.revoked.notified() => {
                            self.metrics.refused(Side::Egress, "Revoked");
                            tracing::info!(import = %key, %remote, peer = %source.peer, "tunnel closed: access revoked");
                            reset(client);
                            return;
                        }
                    };
                    if relayed.reusable {
                        self.keep_warm(gateway, connection);
                    }
                    let import_name = format!("{}/{}", key.namespace, key.name);
                    self.metrics.import_tunnel_done(
                        &import_name,
                        &source.peer,
                        relayed.sent,
                        relayed.received,
                    );
                    return;
                }
                Err(failure) => {
                    // A refusal is counted by the side that refused, with its reason.
                    let (side, reason) = match &failure {
                        TunnelFailure::Refused { reason, .. } => (Side::Ingress, reason.as_str()),
                        TunnelFailure::Unreachable(_) => (Side::Egress, "PeerUnreachable"),
                    };
                    self.metrics.refused(side, reason);
                    tracing::info!(import = %key, %remote, peer = %source.peer, "source failed: {failure}")
                }
            }
        }
        tracing::info!(import = %key, %remote, "every source failed; resetting the client");
        self.metrics.refused(Side::Egress, "AllSourcesFailed");
        reset(client);
    }
}

/// Why a source could not serve a connection.
#[derive(Debug)]
enum TunnelFailure {
    /// The peer's gateway answered with a refusal.
    Refused {
        reason: RefusalReason,
        message: String,
    },
    /// No gateway of the peer could be reached (or it answered nonsense).
    Unreachable(String),
}

impl std::fmt::Display for TunnelFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelFailure::Refused { reason, message } => {
                write!(f, "refused ({}): {message}", reason.as_str())
            }
            TunnelFailure::Unreachable(e) => f.write_str(e),
        }
    }
}

/// A tunnel the answering gateway accepted.
struct OpenTunnel {
    connection: PeerConnection,
    /// What arrived after the answer: the start of the tunnel's frames.
    leftover: Vec<u8>,
    /// Where `connection` goes, to keep it for another tunnel when this one ends cleanly.
    gateway: GatewayKey,
}

impl Egress {
    /// Asks each gateway of the peer in turn, on a warm connection if one is kept, else on a new
    /// one. A refusal from a gateway ends the attempt on this peer (its other gateways share its
    /// configuration); a connect or handshake failure moves on.
    async fn open_tunnel(
        &self,
        peer: &str,
        gateways: &[(String, u16)],
        request: &TunnelRequest,
    ) -> Result<OpenTunnel, TunnelFailure> {
        let name = ServerName::try_from(peer.to_string())
            .map_err(|e| TunnelFailure::Unreachable(format!("peer name {peer:?}: {e}")))?;
        let head = request.encode();
        let mut errors = Vec::new();
        for (host, port) in gateways {
            let gateway = GatewayKey {
                peer: peer.to_string(),
                host: host.clone(),
                port: *port,
            };
            // A warm connection to a peer that stopped answering probes may hang rather than
            // fail: a new connection, with its connect timeout, is the better bet.
            if self.health.is_unreachable(peer) {
                self.forget(&gateway);
            }
            // A warm connection the far end has closed fails before any client byte went out,
            // so a new connection can take the tunnel instead. Its siblings are likely as stale
            // (the gateway restarted), so they go too.
            let mut answered = None;
            if let Some(connection) = self.take_warm(&gateway) {
                match ask(connection, &head).await {
                    Ok(answer) => answered = Some(answer),
                    Err(_) => self.forget(&gateway),
                }
            }
            let answer = match answered {
                Some(answer) => answer,
                None => match self.connect(&name, host, *port).await {
                    Ok((connection, _handshake)) => match ask(connection, &head).await {
                        Ok(answer) => answer,
                        Err(e) => {
                            errors.push(format!("{host}:{port}: {e}"));
                            continue;
                        }
                    },
                    Err(e) => {
                        errors.push(format!("{host}:{port}: {e}"));
                        continue;
                    }
                },
            };
            let (connection, head, rest) = answer;
            return match TunnelResponse::decode(&head, &rest) {
                Ok(TunnelResponse::Established) => Ok(OpenTunnel {
                    connection,
                    leftover: rest,
                    gateway,
                }),
                Ok(TunnelResponse::Refused { reason, message }) => {
                    Err(TunnelFailure::Refused { reason, message })
                }
                Err(e) => Err(TunnelFailure::Unreachable(format!(
                    "bad answer from {host}:{port}: {e}"
                ))),
            };
        }
        Err(TunnelFailure::Unreachable(if errors.is_empty() {
            "the peer lists no gateway".into()
        } else {
            errors.join("; ")
        }))
    }

    /// A new mutual-TLS connection to a gateway of the peer `name`.
    async fn connect(
        &self,
        name: &ServerName<'static>,
        host: &str,
        port: u16,
    ) -> Result<(PeerConnection, SemaphorePermit<'_>), String> {
        let place = timeout(Limits::DEFAULT.connect, self.handshakes.acquire())
            .await
            .map_err(|_| {
                format!(
                    "{} other new peer connections are still being set up",
                    Limits::DEFAULT.handshakes_at_once
                )
            })?
            .map_err(|_| "shutting down".to_string())?;
        let tcp = timeout(Limits::DEFAULT.connect, TcpStream::connect((host, port)))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        tune_socket(&tcp).map_err(|e| e.to_string())?;
        // The configuration current now: rotated certificates apply to new connections.
        let connector = TlsConnector::from(self.tls.borrow().client.clone());
        let mut connection = timeout(
            Limits::DEFAULT.handshake,
            connector.connect(name.clone(), ReadAhead::new(tcp)),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS: {e}"))?;
        connection
            .get_mut()
            .1
            .set_buffer_limit(Some(TLS_SEND_BUFFER));
        Ok((connection, place))
    }
}

/// Sends a tunnel request on `connection` and reads the answer's head and what followed it.
async fn ask(
    mut connection: PeerConnection,
    request: &[u8],
) -> Result<(PeerConnection, Vec<u8>, Vec<u8>), String> {
    connection
        .write_all(request)
        .await
        .map_err(|e| e.to_string())?;
    connection.flush().await.map_err(|e| e.to_string())?;
    let (head, rest) = timeout(Limits::DEFAULT.handshake, read_head(&mut connection))
        .await
        .map_err(|_| "no answer to the tunnel request".to_string())?
        .map_err(|e| e.to_string())?;
    Ok((connection, head, rest))
}

/// Ends the client's connection with RST, so it sees a failure rather than a clean, empty close.
fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(scheme: LbScheme, n: usize) -> ImportEntry {
        ImportEntry {
            port: 1,
            sources: (0..n)
                .map(|i| ImportSource {
                    peer: format!("p{i}"),
                    export_name: "e".into(),
                    export_namespace: "d".into(),
                })
                .collect(),
            lb_scheme: scheme,
            labels: Default::default(),
        }
    }

    fn firsts(scheme: LbScheme, rounds: usize) -> Vec<String> {
        let imp = import(scheme, 3);
        let next = AtomicUsize::new(0);
        (0..rounds)
            .map(|_| source_order(&imp, &next, |_| false)[0].peer.clone())
            .collect()
    }

    #[test]
    fn round_robin_rotates_static_sticks_random_covers() {
        assert_eq!(firsts(LbScheme::RoundRobin, 4), ["p0", "p1", "p2", "p0"]);
        assert_eq!(firsts(LbScheme::Static, 3), ["p0", "p0", "p0"]);
        let seen: std::collections::BTreeSet<_> =
            firsts(LbScheme::Random, 200).into_iter().collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn unreachable_peers_are_tried_last_in_scheme_order() {
        let imp = import(LbScheme::Static, 4);
        let next = AtomicUsize::new(0);
        let order: Vec<_> = source_order(&imp, &next, |p| p == "p0" || p == "p2")
            .iter()
            .map(|s| s.peer.as_str())
            .collect();
        assert_eq!(order, ["p1", "p3", "p0", "p2"]);
    }

    #[test]
    fn every_order_tries_every_source_once() {
        for scheme in [LbScheme::RoundRobin, LbScheme::Static, LbScheme::Random] {
            let imp = import(scheme, 4);
            let next = AtomicUsize::new(7);
            let mut order: Vec<_> = source_order(&imp, &next, |_| false)
                .iter()
                .map(|s| s.peer.clone())
                .collect();
            order.sort();
            assert_eq!(order, ["p0", "p1", "p2", "p3"]);
        }
    }
}
