//! The peer port: mutual TLS from other gateways, one tunnel per connection.
//!
//! The requesting peer is who its certificate names, never what the request claims. The ingress
//! policy of the export's namespace decides, then the backend is dialed and `200` answered.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::time::Instant;

use clusterlink_pki::{Identity, identity_of};
use rustls::server::Acceptor;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at};
use tokio_rustls::LazyConfigAcceptor;

use clusterlink_pki::authority::Authority;
use clusterlink_pki::reload::GatewayTls;
use clusterlink_pki::tls::{ENROLL_ALPN, LINK_ALPN, PEER_ALPN};

use crate::backend_addresses::BackendAddresses;
use crate::capacity::{Descriptors, HeldDescriptors, ServedTunnels, Shares, TunnelCounts};
use crate::connections::{drain, tune_socket};
use crate::hops::{Relayed, RelayedConnections};
use crate::limits::Limits;
use crate::listener::{Admission, Admitted};
use crate::live::LiveTunnels;
use crate::metrics::{
    Listener, Metrics, Refusal, Refused, RefusedBy, SetupStage, Side, TunnelEnding, TunnelRef,
    Unserved,
};
use crate::rate::RateLimited;
use clusterlink_api::PeerProtocol;
use clusterlink_api::attributes::Attributes;

use crate::catalog::CatalogCache;
use crate::enroll;
use crate::go_tunnel::{self, GoRequest, TokenRefusal};
use crate::health::PeerHealth;
use crate::link::{self, Direction, Inbound, LinkInfo, LinkStream, Links};
use crate::policy::{export_attributes, peer_attributes, peer_labels};
use crate::read_ahead::ReadAhead;
use crate::relay::{Framing, TLS_SEND_BUFFER, relay_as, take_first_frame};
use crate::snapshot::Snapshot;
use crate::tunnel::{
    ExportRef, MAX_HOPS, PeerRequest, ProtocolError, RefusalReason, TunnelRequest, TunnelResponse,
    catalog_response, health_response_with, labels_of_request, read_body, read_head,
    revocations_of,
};
use crate::workers::serve_on_worker;

/// What every peer connection shares.
struct PeerPort {
    /// Who may wait for a handshake, and for how long.
    admission: Arc<Admission>,
    /// Bounds and timeouts, with their reasons.
    limits: Limits,
    /// The data path's descriptors: each connection holds one, and a tunnel's backend another.
    descriptors: Arc<Descriptors>,
    /// Authenticated connections per peer, and open tunnels per peer and per export.
    peer_connections: TunnelCounts,
    served: ServedTunnels,
    /// Dry runs per peer.
    dry_runs: RateLimited<String>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    /// This gateway's own listeners, never dialed as backends.
    protected: Arc<[SocketAddr]>,
    /// Whether exports may name services on loopback addresses.
    loopback_backends: bool,
    live: LiveTunnels<IngressTunnel>,
    /// Backend connections in flight, for loop detection.
    relayed: Arc<RelayedConnections>,
    /// Backends' DNS answers, kept for a few seconds.
    addresses: BackendAddresses,
    /// Flips on shutdown: connections waiting between tunnels close, tunnels finish.
    shutdown: watch::Receiver<bool>,
    /// The TLS set in force: revocation lists to answer probes with, and to take from peers.
    credentials: watch::Receiver<Arc<GatewayTls>>,
    /// The fabric's issuing authority, on the gateway that serves joining and renewal.
    authority: Option<Arc<Authority>>,
    /// Whether a certificate of the fabric is not enough: its peer needs a Peer object here.
    known_peers_only: bool,
    /// Links up now (dialed here or by peers), and where their peers' streams go.
    links: Links,
    inbound: mpsc::Sender<Inbound>,
    /// What each peer is offered, computed once per snapshot.
    catalogs: CatalogCache,
    /// What peers report of themselves to this gateway's probes: a Go peer's labels.
    health: PeerHealth,
    /// Tokens issued to Go peers, each good for one tunnel.
    go_tokens: go_tunnel::Tokens,
}

/// What the peer port needs besides its listener.
pub(crate) struct PeerPortConfig {
    pub limits: Limits,
    pub descriptors: Arc<Descriptors>,
    pub metrics: Arc<Metrics>,
    pub protected: Arc<[SocketAddr]>,
    pub loopback_backends: bool,
    pub relayed: Arc<RelayedConnections>,
    pub authority: Option<Arc<Authority>>,
    pub known_peers_only: bool,
    pub links: Links,
    /// Streams peers open on links, dialed here or accepted: served like peer connections.
    pub inbound: (mpsc::Sender<Inbound>, mpsc::Receiver<Inbound>),
    /// The probes' findings, shared with the egress side.
    pub health: PeerHealth,
}

pub(crate) async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Arc<GatewayTls>>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    config: PeerPortConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let (inbound, mut streams) = config.inbound;
    let limits = config.limits;
    let mut connections = JoinSet::new();
    let admission = Arc::new(
        Admission::new(
            Listener::Peer,
            limits.unauthenticated,
            &limits,
            config.metrics.clone(),
        )
        .with_reserved(limits.unauthenticated_from_peers),
    );
    let shares = Shares::new(&limits, &config.descriptors);
    let port = Arc::new(PeerPort {
        admission: admission.clone(),
        limits,
        descriptors: config.descriptors,
        peer_connections: TunnelCounts::new(shares.connections_per_peer),
        served: ServedTunnels::new(&shares),
        dry_runs: RateLimited::new(limits.dry_runs),
        snapshots: snapshots.clone(),
        metrics: config.metrics.clone(),
        protected: config.protected,
        loopback_backends: config.loopback_backends,
        live: LiveTunnels::default(),
        relayed: config.relayed,
        addresses: BackendAddresses::default(),
        shutdown: shutdown.clone(),
        credentials: tls.clone(),
        authority: config.authority,
        known_peers_only: config.known_peers_only,
        links: config.links,
        inbound,
        catalogs: CatalogCache::default(),
        health: config.health,
        go_tokens: go_tunnel::Tokens::new(limits.go_token_life, limits.go_tokens_per_peer),
    });
    let revalidator = tokio::spawn({
        let (port, mut snapshots, mut tls) = (port.clone(), snapshots.clone(), tls.clone());
        async move {
            loop {
                tokio::select! {
                    changed = snapshots.changed() => {
                        if changed.is_err() { return }
                        let snapshot = snapshots.borrow_and_update().clone();
                        port.live.revalidate(|t| {
                            port.admits(&snapshot, &t.peer)
                                && speaks(&snapshot, &t.peer, t.framing)
                                && decide(&snapshot, &t.peer, &t.peer_labels, &t.client, &t.export).is_ok()
                        });
                        port.links.close_unless(|l| port.admits(&snapshot, &l.peer));
                    }
                    // A revoked certificate's tunnels are cut, however long ago it authenticated.
                    changed = tls.changed() => {
                        if changed.is_err() { return }
                        let current = tls.borrow_and_update().clone();
                        port.live.revalidate(|t| !current.revocations.is_revoked(&t.certificate));
                        port.links.close_unless(|l| !current.revocations.is_revoked(&l.certificate));
                    }
                }
            }
        }
    });
    let reserving = tokio::spawn(reserve_for_gateways(admission.clone(), snapshots, limits));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    // Closed at once when the data path is out of descriptors or every place is
                    // held: before TLS, so a refusal costs only the accept.
                    let Some(descriptor) = port.descriptors.take(1) else {
                        let detail = format!("the data path holds all of its {} descriptors", port.descriptors.total());
                        port.metrics.unserved(Listener::Peer, Unserved::ListenerLimit, remote, &detail);
                        continue;
                    };
                    let Some(admitted) = admission.admit(remote) else {
                        continue;
                    };
                    // The configuration current now: rotated certificates apply to new connections.
                    // Marked seen: a later change of the certificates ends this connection's reuse.
                    let mut credentials = tls.clone();
                    let current = credentials.borrow_and_update().clone();
                    let port = port.clone();
                    serve_on_worker(&mut connections, stream, move |stream| async move {
                        let _descriptor: HeldDescriptors = descriptor;
                        if let Err(e) = handle(stream, remote, current, credentials, admitted, &port).await {
                            tracing::debug!(%remote, error = %e, "peer connection ended");
                        }
                    });
                }
                Err(e) => {
                    port.metrics.accept_failed(Listener::Peer, &e);
                    tokio::time::sleep(limits.accept_retry).await;
                }
            },
            Some(Inbound { stream }) = streams.recv() => {
                let port = port.clone();
                connections.spawn(async move { serve_stream(stream, &port).await });
            }
            // Reap finished connections so the set does not grow with every tunnel ever served.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // No new connections; open tunnels finish (and are still revoked if access ends).
    drop(listener);
    reserving.abort();
    drain(connections, limits.drain, "peer connections").await;
    revalidator.abort();
}

/// How often gateway names are looked up again for the reserved places: DNS answers move.
const GATEWAY_NAMES_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps the peer port's reserved places for the addresses of every configured peer's gateways,
/// in step with the snapshots: addresses as given, and names as they resolve (a name that does
/// not resolve reserves nothing; connections from it compete with strangers, unless its gateway
/// has authenticated from there: [`Admission::seen_at`]).
async fn reserve_for_gateways(
    admission: Arc<Admission>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    limits: Limits,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let mut addresses = HashSet::new();
        for (host, port) in snapshot.peers.values().flat_map(|p| p.gateways.iter()) {
            if let Ok(ip) = host.parse::<IpAddr>() {
                addresses.insert(ip);
            } else if let Ok(Ok(found)) = timeout(
                limits.connect,
                tokio::net::lookup_host((host.as_str(), *port)),
            )
            .await
            {
                addresses.extend(found.map(|a| a.ip()));
            }
        }
        admission.reserve_for(addresses);
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(GATEWAY_NAMES_REFRESH) => {}
        }
    }
}

/// Why a peer connection ended before the peer closed it; logged with the connection.
#[derive(Debug, thiserror::Error)]
enum PeerConnectionError {
    /// Closed before it was served (and counted as such).
    #[error("{detail}")]
    Unserved { reason: Unserved, detail: String },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{step}: {error}")]
    Io {
        step: &'static str,
        error: std::io::Error,
    },
}

impl PeerConnectionError {
    fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> PeerConnectionError {
        move |error| PeerConnectionError::Io { step, error }
    }
}

async fn handle(
    stream: TcpStream,
    remote: SocketAddr,
    current: Arc<GatewayTls>,
    credentials: watch::Receiver<Arc<GatewayTls>>,
    admitted: Admitted,
    port: &PeerPort,
) -> Result<(), PeerConnectionError> {
    tune_socket(&stream).map_err(PeerConnectionError::io("socket options"))?;
    let unserved = |reason, detail: String| {
        port.metrics
            .unserved(Listener::Peer, reason, remote, &detail);
        PeerConnectionError::Unserved { reason, detail }
    };
    // Until it is authenticated and has sent its first request, the connection may be closed
    // to make room for a newcomer (counted then), and has until its deadline.
    let shed = || PeerConnectionError::Unserved {
        reason: Unserved::ListenerLimit,
        detail: "closed to make room".into(),
    };
    match admitted.first_bytes(&stream).await {
        Ok(()) => {}
        Err(Some(reason)) => return Err(unserved(reason, reason.detail().into())),
        Err(None) => return Err(shed()),
    }
    // The configuration is chosen from the ClientHello: only a gateway with an authority takes a
    // handshake without a client certificate, and only for enrollment.
    let start = LazyConfigAcceptor::new(Acceptor::default(), ReadAhead::new(stream));
    let handshake = timeout_at(admitted.deadline(), async {
        let start = start.await?;
        // No ALPN: a Go ClusterLink gateway, taken only where some Peer speaks its protocol.
        if start.client_hello().alpn().is_none() && !has_go_peers(&port.snapshots.borrow()) {
            return Err(std::io::Error::other(
                "the client offers no ALPN (as the Go ClusterLink does), and no Peer here has protocol: go",
            ));
        }
        let enrolling = port.authority.is_some()
            && start
                .client_hello()
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ENROLL_ALPN));
        let config = if enrolling {
            current.enrollment.clone()
        } else {
            current.server.clone()
        };
        start.into_stream(config).await
    });
    let mut tls = tokio::select! {
        done = handshake => done
            .map_err(|_| unserved(Unserved::HandshakeTimeout, "TLS handshake timed out".into()))?
            .map_err(|e| {
                unserved(
                    Unserved::HandshakeRefused,
                    format!(
                        "TLS handshake refused: {}",
                        clusterlink_pki::tls::handshake_error_text(&e)
                    ),
                )
            })?,
        () = admitted.shed() => return Err(shed()),
    };
    tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
    let (_, session) = tls.get_ref();
    if let (Some(authority), Some(ENROLL_ALPN)) = (&port.authority, session.alpn_protocol()) {
        let identity = session
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| Some((identity_of(c).ok()?, c.clone().into_owned())));
        // Under --known-peers-only a peer without a Peer object here renews nothing either.
        if let Some((Identity::Peer(name), _)) = &identity
            && !port.admits(&port.snapshots.borrow(), name)
        {
            let why = format!(
                "peer {name} has no Peer object at the issuing gateway, which admits only configured peers"
            );
            enroll::refuse(&mut tls, "UnknownPeer", &why).await;
            return Err(unserved(Unserved::UnknownPeer, why));
        }
        let served = tokio::select! {
            served = timeout_at(admitted.deadline(), enroll::serve(&mut tls, authority, identity)) => served,
            () = admitted.shed() => return Err(shed()),
        };
        match served {
            Ok(Ok(request)) => tracing::info!(%remote, %request, "certificate issued"),
            Ok(Err(why)) => tracing::info!(%remote, %why, "certificate request refused"),
            Err(_) => tracing::debug!(%remote, "enrollment request timed out"),
        }
        return Ok(());
    }
    let linking = session.alpn_protocol() == Some(LINK_ALPN);
    let go = session.alpn_protocol().is_none();
    if session.alpn_protocol() != Some(PEER_ALPN) && !linking && !go {
        let detail = "the client does not speak the tunnel protocol (ALPN)".into();
        return Err(unserved(Unserved::HandshakeRefused, detail));
    }
    let Some(certificate) = session.peer_certificates().and_then(|c| c.first()) else {
        let detail = "no client certificate".to_string();
        return Err(unserved(Unserved::WrongIdentity, detail));
    };
    let certificate = Arc::new(certificate.clone().into_owned());
    let peer = match identity_of(&certificate) {
        Ok(Identity::Peer(name)) => name,
        other => {
            let detail = format!("not a peer certificate: {other:?}");
            return Err(unserved(Unserved::WrongIdentity, detail));
        }
    };
    // A connection outlives no certificate: reused past the expiry of the one it was opened
    // with, it closes (the peer renews, and opens the next one with its new certificate).
    let expires = clusterlink_pki::identity::not_after(&certificate).unwrap_or(i64::MIN);
    // A configured peer's gateway: its address keeps the reserved places for a while.
    let configured = port.snapshots.borrow().peers.contains_key(&peer);
    if configured {
        port.admission.seen_at(remote.ip());
    } else if port.known_peers_only {
        let detail = format!(
            "peer {peer} has a certificate of the fabric but no Peer object here, and this gateway admits only configured peers"
        );
        return Err(unserved(Unserved::UnknownPeer, detail));
    }
    if go && !speaks(&port.snapshots.borrow(), &peer, Framing::Unframed) {
        let detail = format!(
            "peer {peer} speaks the Go ClusterLink protocol (no ALPN), and its Peer here does not say protocol: go"
        );
        return Err(unserved(Unserved::UnknownPeer, detail));
    }
    // Authenticated: from here the connection counts against its peer, not against strangers.
    let Some(_counted) = port.peer_connections.enter(&peer) else {
        let detail = format!(
            "peer {peer} holds {} connections here, as many as one peer may",
            port.peer_connections.limit()
        );
        return Err(unserved(Unserved::PeerLimit, detail));
    };
    if linking {
        // A link: the peer's tunnels, and this gateway's to the peer, ride it as streams.
        drop(admitted);
        let (local, remote_end) = {
            let tcp = tls.get_ref().0.get_ref();
            (tcp.local_addr(), tcp.peer_addr())
        };
        let (Ok(local), Ok(remote_end)) = (local, remote_end) else {
            return Ok(());
        };
        let info = LinkInfo {
            peer: peer.clone(),
            certificate,
            local,
            remote: remote_end,
            direction: Direction::Accepted,
            since: crate::metrics::unix_seconds(),
            expires,
        };
        let mode = yamux::Mode::Server;
        let inbound = port.inbound.clone();
        let Some((link, task)) = link::start(tls, mode, info, &port.links, inbound, port.limits)
        else {
            let detail = format!(
                "peer {peer} holds {} links here, as many as one peer may",
                port.limits.links_per_peer
            );
            return Err(unserved(Unserved::PeerLimit, detail));
        };
        tokio::pin!(task);
        let mut stopping = port.shutdown.clone();
        let stopped = async { drop(stopping.wait_for(|stop| *stop).await) };
        let end = tokio::select! {
            end = &mut task => Some(end),
            () = stopped => None,
        };
        let end = match end {
            Some(end) => end,
            // At shutdown the link ends with its last tunnel (or the drain's bound).
            None => {
                link.retire();
                task.await
            }
        };
        tracing::warn!(%peer, %remote, reason = %end, "link down");
        return Ok(());
    }
    if go {
        let deadline = admitted.deadline();
        drop(admitted);
        let here = tls.get_ref().0.get_ref().local_addr();
        let authenticated = GoConnection {
            here,
            deadline,
            expires,
            credentials,
        };
        return serve_go_peer(&mut tls, authenticated, &peer, &certificate, port).await;
    }
    // Its first request comes right after the handshake, by the admission's deadline; later
    // ones whenever the peer has another tunnel to open.
    let mut first = Some(admitted.deadline());
    drop(admitted);
    let mut stopping = port.shutdown.clone();
    loop {
        let waiting = first.is_none().then(|| port.metrics.idle(Side::Ingress));
        let deadline = first.unwrap_or_else(|| Instant::now() + port.limits.between_tunnels);
        let read = tokio::select! {
            read = timeout_at(deadline, read_head(&mut tls)) => read,
            // Between tunnels at shutdown: the peer opens its next tunnel elsewhere.
            _ = stopping.wait_for(|stop| *stop), if first.is_none() => return Ok(()),
        };
        drop(waiting);
        let (head, leftover) = match read {
            Ok(read) => read?,
            Err(_) if first.is_none() => return Ok(()),
            Err(_) => {
                let detail = "authenticated, but no request came in time".into();
                return Err(unserved(Unserved::HandshakeTimeout, detail));
            }
        };
        if first.is_none() && credentials.has_changed().unwrap_or(true) {
            // Authenticated under certificates or revocation lists since replaced (a rotation,
            // a revocation, a move to another fabric): later tunnels need a new handshake.
            return Ok(());
        }
        // Past the certificate's expiry, or no longer admitted (its Peer object deleted under
        // --known-peers-only): the connection carries nothing more.
        if crate::metrics::unix_seconds() >= expires
            || !port.admits(&port.snapshots.borrow(), &peer)
        {
            return Ok(());
        }
        first = None;
        let here = tls.get_ref().0.get_ref().local_addr();
        let served =
            serve_request(&mut tls, here, &head, leftover, &peer, &certificate, port).await?;
        if served == Served::Close {
            return Ok(());
        }
    }
}

/// Whether any Peer here speaks the Go ClusterLink's protocol: only then does the peer port take
/// a handshake without ALPN.
fn has_go_peers(snapshot: &Snapshot) -> bool {
    snapshot
        .peers
        .iter()
        .any(|(_, p)| p.protocol == PeerProtocol::Go)
}

/// An authenticated connection of a Go peer, as `handle` passes it on.
struct GoConnection {
    /// This end's address, for loop detection.
    here: std::io::Result<SocketAddr>,
    /// When its first request is due.
    deadline: Instant,
    /// When its certificate expires (Unix seconds): it serves nothing after.
    expires: i64,
    /// The TLS set it was authenticated under: once replaced, the connection answers one more
    /// request and ends.
    credentials: watch::Receiver<Arc<GatewayTls>>,
}

/// Serves a Go ClusterLink gateway (`go_tunnel`): heartbeats and authorizations, one after
/// another, then at most one tunnel, after which the connection closes. The first request is due
/// by the connection's deadline, later ones within the wait between tunnels.
async fn serve_go_peer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    connection: GoConnection,
    peer: &str,
    certificate: &Arc<CertificateDer<'static>>,
    port: &PeerPort,
) -> Result<(), PeerConnectionError> {
    let GoConnection {
        here,
        mut deadline,
        expires,
        credentials,
    } = connection;
    let mut stopping = port.shutdown.clone();
    loop {
        let read = tokio::select! {
            read = timeout_at(deadline, read_head(tls)) => read,
            _ = stopping.wait_for(|stop| *stop) => return Ok(()),
        };
        let Ok(read) = read else {
            return Ok(());
        };
        let (head, leftover) = read?;
        // Past its certificate's expiry, its certificate revoked, or no longer a Go peer here:
        // the connection carries nothing more, this request included.
        let current = credentials.borrow().clone();
        if crate::metrics::unix_seconds() >= expires
            || current.revocations.is_revoked(certificate)
            || !speaks(&port.snapshots.borrow(), peer, Framing::Unframed)
        {
            return Ok(());
        }
        // Authenticated under certificates or lists since replaced (a rotation, a newer list):
        // this request is answered, as the last; the next needs a new handshake. A Go gateway
        // retries only idempotent requests on a connection closed unanswered.
        let last = credentials.has_changed().unwrap_or(true);
        deadline = Instant::now() + port.limits.between_tunnels;
        let snapshot = port.snapshots.borrow().clone();
        let request = match GoRequest::decode(&head) {
            Ok(request) => request,
            Err(e) => {
                let refusal = TunnelResponse::Refused {
                    reason: RefusalReason::BadRequest,
                    message: e.to_string(),
                    policy: None,
                };
                let tunnel = ingress_tunnel(&snapshot, peer, None);
                refuse(tls, &port.metrics, &tunnel, refusal, Framing::Unframed).await?;
                return Err(e.into());
            }
        };
        let (answer, close) = match request {
            GoRequest::Heartbeat => {
                if !leftover.is_empty() {
                    return Err(ProtocolError::Malformed("bytes after a heartbeat".into()).into());
                }
                (go_tunnel::heartbeat_response(&snapshot.local_labels), last)
            }
            GoRequest::Authorize { length } => {
                let body = timeout(port.limits.handshake, read_body(tls, leftover, length))
                    .await
                    .map_err(|_| PeerConnectionError::Io {
                        step: "reading an authorization request",
                        error: std::io::ErrorKind::TimedOut.into(),
                    })??;
                // A refusal closes the connection, as it does a tunnel request of this project's
                // protocol: asking about exports costs a peer a handshake per refusal.
                match authorize_go_peer(&body, &snapshot, peer, port) {
                    Ok(answer) => (answer, last),
                    Err(refusal) => (refusal, true),
                }
            }
            GoRequest::Connect { token } => {
                let grant = match port.go_tokens.redeem(token.as_deref(), peer) {
                    Ok(grant) => grant,
                    Err(refused) => {
                        let reason = match refused {
                            TokenRefusal::WrongPeer { .. } => RefusalReason::PolicyDenied,
                            TokenRefusal::Missing | TokenRefusal::Unknown => {
                                RefusalReason::BadRequest
                            }
                        };
                        let refusal = TunnelResponse::Refused {
                            reason,
                            message: format!("no tunnel for peer {peer}: {refused}"),
                            policy: None,
                        };
                        let tunnel = ingress_tunnel(&snapshot, peer, None);
                        refuse(tls, &port.metrics, &tunnel, refusal, Framing::Unframed).await?;
                        return Ok(());
                    }
                };
                let request = TunnelRequest {
                    export: grant.export,
                    client: grant.client,
                    hops: 0,
                    peer_labels: port.health.reported_labels(peer),
                    dry_run: false,
                    via: None,
                };
                carry(
                    tls,
                    here,
                    &request,
                    leftover,
                    peer,
                    certificate,
                    port,
                    Framing::Unframed,
                )
                .await?;
                return Ok(());
            }
        };
        let answer = if close {
            go_tunnel::closing(answer)
        } else {
            answer
        };
        // A peer that does not read its answers holds this connection only so long.
        let written = timeout(port.limits.handshake, async {
            tls.write_all(&answer).await?;
            tls.flush().await
        });
        match written.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(PeerConnectionError::Io {
                    step: "answering a Go peer",
                    error,
                });
            }
            Err(_) => {
                return Err(PeerConnectionError::Io {
                    step: "answering a Go peer",
                    error: std::io::ErrorKind::TimedOut.into(),
                });
            }
        }
        if close {
            let _ = timeout(port.limits.handshake, tls.shutdown()).await;
            return Ok(());
        }
    }
}

/// The answer to a Go peer's `POST /authz`: this gateway's ingress decision, as it would decide
/// a tunnel of this project's protocol, with a token for one tunnel when it allows; a refusal
/// (counted, as any refused tunnel is) when it does not.
fn authorize_go_peer(
    body: &[u8],
    snapshot: &Snapshot,
    peer: &str,
    port: &PeerPort,
) -> Result<Vec<u8>, Vec<u8>> {
    let asked = go_tunnel::authorization_of(body);
    let export = asked.as_ref().ok().map(|(export, _)| export);
    let tunnel = ingress_tunnel(snapshot, peer, export);
    let refusal = match &asked {
        Err(e) => TunnelResponse::Refused {
            reason: RefusalReason::BadRequest,
            message: e.to_string(),
            policy: None,
        },
        Ok((export, client)) => {
            let reported = port.health.reported_labels(peer);
            match decide(snapshot, peer, &reported, client, export) {
                Ok(_) => match port.go_tokens.issue(peer, export.clone(), client.clone()) {
                    Ok(token) => return Ok(go_tunnel::token_response(&token)),
                    Err(no_token) => TunnelResponse::Refused {
                        reason: RefusalReason::TooManyRequests,
                        message: format!("no token for peer {peer}: {no_token}"),
                        policy: None,
                    },
                },
                Err(refusal) => refusal,
            }
        }
    };
    let TunnelResponse::Refused {
        reason,
        message,
        policy,
    } = refusal
    else {
        return Err(go_tunnel::refusal_response(
            RefusalReason::BadRequest,
            "unexpected decision",
        ));
    };
    let answer = go_tunnel::refusal_response(reason, &message);
    port.metrics.refused(
        &tunnel,
        Refused {
            by: RefusedBy::Local,
            refusal: Refusal::Tunnel(reason),
            policy,
            message,
        },
    );
    Err(answer)
}

impl PeerPort {
    /// Whether `peer` may ask at all: always, unless only configured peers are admitted.
    fn admits(&self, snapshot: &Snapshot, peer: &str) -> bool {
        !self.known_peers_only || snapshot.peers.contains_key(peer)
    }
}

/// Whether the connection can carry another tunnel after a request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Reuse,
    Close,
}

/// Serves the requests of a stream a peer opened on a link, as if they came on a connection
/// authenticated as the link was: one after another, each within the handshake timeout.
async fn serve_stream(mut stream: LinkStream, port: &PeerPort) {
    let link = stream.link().clone();
    loop {
        let (head, leftover) = match timeout(port.limits.handshake, read_head(&mut stream)).await {
            Ok(Ok(read)) => read,
            // The far end closed the stream after its last request, or it broke.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!(peer = %link.peer, "link stream sent no request in time");
                return;
            }
        };
        if crate::metrics::unix_seconds() >= link.expires
            || !port.admits(&port.snapshots.borrow(), &link.peer)
        {
            return;
        }
        let served = serve_request(
            &mut stream,
            Ok(link.local),
            &head,
            leftover,
            &link.peer,
            &link.certificate,
            port,
        )
        .await;
        match served {
            Ok(Served::Reuse) => {}
            // Dropped: reset, so the far end does not take a broken tunnel for a clean end.
            Ok(Served::Close) => return,
            Err(e) => {
                tracing::debug!(peer = %link.peer, error = %e, "link stream ended");
                return;
            }
        }
    }
}

/// Answers one request on an authenticated peer connection (or link stream) and, for an
/// accepted tunnel, relays it until it ends. `here` is this end's address, for loop detection.
async fn serve_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    here: std::io::Result<SocketAddr>,
    head: &[u8],
    leftover: Vec<u8>,
    peer: &str,
    certificate: &Arc<CertificateDer<'static>>,
    port: &PeerPort,
) -> Result<Served, PeerConnectionError> {
    let PeerPort {
        limits,
        dry_runs,
        snapshots,
        metrics,
        credentials,
        catalogs,
        ..
    } = port;
    let request = match PeerRequest::decode(head) {
        Ok(PeerRequest::Tunnel(r)) => r,
        Ok(PeerRequest::Revocations { length }) => {
            let body = timeout(limits.handshake, read_body(tls, leftover, length))
                .await
                .map_err(|_| PeerConnectionError::Io {
                    step: "reading revocation lists",
                    error: std::io::ErrorKind::TimedOut.into(),
                })??;
            let current = credentials.borrow().clone();
            // Parsing, signature checks and a write: off the data path's threads.
            let offered = tokio::task::spawn_blocking(move || current.offer_revocations(&body))
                .await
                .unwrap_or_else(|e| {
                    Err(clusterlink_pki::PkiError::Revocation(format!(
                        "checking the lists failed: {e}"
                    )))
                });
            let answer = match offered {
                Ok(_) => "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_string(),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "revocation lists from a peer not taken");
                    let message = e.to_string();
                    format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\r\n{message}",
                        message.len()
                    )
                }
            };
            tls.write_all(answer.as_bytes())
                .await
                .map_err(PeerConnectionError::io("answering revocation lists"))?;
            tls.flush()
                .await
                .map_err(PeerConnectionError::io("answering revocation lists"))?;
            // Taking newer lists replaced the TLS set: the connection's next request finds
            // that and closes, so the peer opens a new one under the new lists.
            return Ok(Served::Reuse);
        }
        Ok(PeerRequest::Catalog) => {
            // Labels that do not parse are the prober's problem: it is offered what a peer
            // reporting none would be, as its tunnels would be decided.
            let reported = labels_of_request(head).unwrap_or_default();
            let snapshot = snapshots.borrow().clone();
            let offered = catalogs.offered(&snapshot, peer, &reported);
            tls.write_all(&catalog_response(&offered.body))
                .await
                .map_err(PeerConnectionError::io("answering a catalog request"))?;
            tls.flush()
                .await
                .map_err(PeerConnectionError::io("answering a catalog request"))?;
            return Ok(Served::Reuse);
        }
        Ok(PeerRequest::Health) => {
            let snapshot = snapshots.borrow().clone();
            let labels = snapshot.local_labels.clone();
            let current = credentials.borrow().clone();
            let held = current.revocation_summary.clone();
            // A prober behind this gateway's lists gets them with the answer.
            let lists = revocations_of(head)
                .filter(|theirs| held.is_ahead_of(theirs))
                .map(|_| current.revocations.to_pem());
            let reported = labels_of_request(head).unwrap_or_default();
            let offered = catalogs.offered(&snapshot, peer, &reported);
            tls.write_all(&health_response_with(
                &labels,
                Some(&held),
                lists.as_deref(),
                Some(&offered.digest),
            ))
            .await
            .map_err(PeerConnectionError::io("answering a health probe"))?;
            tls.flush()
                .await
                .map_err(PeerConnectionError::io("answering a health probe"))?;
            // Kept for the next probe: a gateway probed by many peers would otherwise spend its
            // idle time on handshakes.
            return Ok(Served::Reuse);
        }
        Err(e) => {
            let tunnel = ingress_tunnel(&snapshots.borrow(), peer, None);
            let refusal = Refused {
                by: RefusedBy::Local,
                refusal: Refusal::Tunnel(RefusalReason::BadRequest),
                policy: None,
                message: e.to_string(),
            };
            metrics.refused(&tunnel, refusal);
            let answer = TunnelResponse::Refused {
                reason: RefusalReason::BadRequest,
                message: e.to_string(),
                policy: None,
            };
            let _ = tls.write_all(&answer.encode()).await;
            let _ = tls.shutdown().await;
            return Err(e.into());
        }
    };
    // One snapshot for the whole decision.
    let snapshot = snapshots.borrow().clone();
    let tunnel = ingress_tunnel(&snapshot, peer, Some(&request.export));
    if request.dry_run {
        // A question, not a connection: nothing is dialed. A peer asking faster than anyone
        // checking its imports would is enumerating what this gateway exports: slowed down.
        let answer = if dry_runs.pass(peer.to_string()).is_none() {
            TunnelResponse::Refused {
                reason: RefusalReason::TooManyRequests,
                message: format!(
                    "peer {peer} asks more dry runs than {} at once and one per {:?}",
                    limits.dry_runs.burst, limits.dry_runs.every
                ),
                policy: None,
            }
        } else {
            match decide(
                &snapshot,
                peer,
                &request.peer_labels,
                &request.client,
                &request.export,
            ) {
                Ok(target) => TunnelResponse::WouldAllow {
                    policy: target.policy,
                },
                Err(refusal) => refusal,
            }
        };
        metrics.dry_run(&tunnel, &answer);
        let _ = tls.write_all(&answer.encode()).await;
        let _ = tls.shutdown().await;
        return Ok(Served::Close);
    }
    carry(
        tls,
        here,
        &request,
        leftover,
        peer,
        certificate,
        port,
        Framing::Frames,
    )
    .await
}

/// Decides an authenticated tunnel request and, if it is allowed, dials the backend, answers,
/// and relays until the tunnel ends or policy revokes it. `framing` is how its peer's protocol
/// moves bytes (and answers).
#[allow(clippy::too_many_arguments)]
async fn carry<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    here: std::io::Result<SocketAddr>,
    request: &TunnelRequest,
    mut leftover: Vec<u8>,
    peer: &str,
    certificate: &Arc<CertificateDer<'static>>,
    port: &PeerPort,
    framing: Framing,
) -> Result<Served, PeerConnectionError> {
    let PeerPort {
        limits,
        descriptors,
        served,
        snapshots,
        metrics,
        protected,
        loopback_backends,
        live,
        relayed,
        addresses,
        credentials,
        ..
    } = port;
    let snapshot = snapshots.borrow().clone();
    let tunnel = ingress_tunnel(&snapshot, peer, Some(&request.export));
    let _active = metrics.accepted(Side::Ingress);
    let decision_started = Instant::now();
    let outcome = decide(
        &snapshot,
        peer,
        &request.peer_labels,
        &request.client,
        &request.export,
    );
    let decided = Instant::now();
    metrics.authorized(Side::Ingress, decided - decision_started);
    let Target { host, port, .. } = match outcome {
        Ok(target) => target,
        Err(refusal) => return refuse(tls, metrics, &tunnel, refusal, framing).await,
    };
    // A client that came from this gateway's own address may be a connection this gateway's
    // ingress made: then this tunnel continues that one's (a loop through the peer's import).
    let looped = match (request.via, here) {
        (Some(via), Ok(here)) => {
            let backend_end = SocketAddr::new(here.ip(), via.client_port);
            relayed
                .hops_of(backend_end, via.import, limits.connect)
                .await
        }
        _ => None,
    };
    let hops = request.hops.max(looped.map_or(0, |h| h.saturating_add(1)));
    if hops >= MAX_HOPS {
        let looping = TunnelResponse::Refused {
            reason: RefusalReason::LoopDetected,
            message: format!(
                "the connection already went through {hops} tunnels: export {} leads back into an import that leads to it",
                request.export
            ),
            policy: None,
        };
        return refuse(tls, metrics, &tunnel, looping, framing).await;
    }
    // Bounded per peer, per export, and by the data path's descriptors (the backend's).
    let at_limit = |what: String| TunnelResponse::Refused {
        reason: RefusalReason::TunnelLimit,
        message: format!("{what}; try again later"),
        policy: None,
    };
    let _slots = match served.enter(peer, &tunnel.export) {
        Ok(slots) => slots,
        Err(full) => return refuse(tls, metrics, &tunnel, at_limit(full), framing).await,
    };
    let Some(_backend_descriptor) = descriptors.take(1) else {
        let what = format!(
            "gateway {} is out of descriptors for new tunnels",
            snapshot.local_peer
        );
        return refuse(tls, metrics, &tunnel, at_limit(what), framing).await;
    };
    let unreachable = |error: String| TunnelResponse::Refused {
        reason: RefusalReason::BackendUnreachable,
        message: format!("backend {host}:{port} unreachable: {error}"),
        policy: None,
    };
    let allowed = Destinations {
        protected,
        loopback: *loopback_backends,
    };
    let dialed = timeout(
        limits.connect,
        dial_backend(&host, port, addresses, &allowed, relayed, hops),
    );
    let (mut backend, _relayed) = match dialed.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return refuse(tls, metrics, &tunnel, unreachable(e.to_string()), framing).await;
        }
        Err(_) => {
            let timed_out = unreachable("timed out".into());
            return refuse(tls, metrics, &tunnel, timed_out, framing).await;
        }
    };
    if reaches_own_listener(&backend, protected) {
        // An export naming this gateway's management API (or peer port) by one of the host's
        // other addresses would hand remote peers what only local admins may use.
        let reason = "it is one of this gateway's own listeners".to_string();
        return refuse(tls, metrics, &tunnel, unreachable(reason), framing).await;
    }
    tune_socket(&backend).map_err(PeerConnectionError::io("backend socket options"))?;
    // Timed only now: the stages are those of tunnels that open.
    let connected = Instant::now();
    metrics.stage_took(SetupStage::IngressDecision, decided - decision_started);
    metrics.stage_took(SetupStage::BackendConnect, connected - decided);
    // Every refusal is decided above: a requesting gateway relies on a refusal meaning nothing
    // reached the backend, to send a client's first bytes elsewhere. The first bytes that came
    // with the request go to the backend now, so it works on them while the answer travels. If
    // that write fails, the connection closes unanswered, and the requesting gateway does not
    // try elsewhere (some of the bytes may have arrived).
    let first = match framing {
        Framing::Frames => take_first_frame(&mut leftover),
        // A Go gateway sends nothing before the answer; what came anyway goes out in order.
        Framing::Unframed => Vec::new(),
    };
    if !first.is_empty() {
        backend
            .write_all(&first)
            .await
            .map_err(PeerConnectionError::io(
                "writing the client's first bytes to the backend",
            ))?;
    }
    let established = match framing {
        Framing::Frames => TunnelResponse::Established.encode(),
        Framing::Unframed => go_tunnel::ESTABLISHED.to_vec(),
    };
    tls.write_all(&established)
        .await
        .map_err(PeerConnectionError::io("answering the tunnel request"))?;
    tls.flush()
        .await
        .map_err(PeerConnectionError::io("answering the tunnel request"))?;
    metrics.stage_took(SetupStage::Answer, connected.elapsed());
    let meter = metrics.tunnel_opened(tunnel.clone());
    meter.sent(first.len() as u64);
    let registered = live.register(IngressTunnel {
        certificate: certificate.clone(),
        peer: peer.to_string(),
        peer_labels: request.peer_labels.clone(),
        client: request.client.clone(),
        export: request.export.clone(),
        framing,
    });
    // A list that arrived between the handshake and now was not there to check this tunnel.
    if credentials.borrow().revocations.is_revoked(certificate) {
        registered.revoked.notify_one();
    }
    let revoked = &registered.revoked;
    // The configuration may have changed between the decision and the registration.
    if decide(
        &snapshots.borrow().clone(),
        peer,
        &request.peer_labels,
        &request.client,
        &request.export,
    )
    .is_err()
    {
        revoked.notify_one();
    }
    let relayed = tokio::select! {
        moved = relay_as(framing, &mut backend, tls, leftover, &meter, false) => match moved {
            Ok(relayed) => relayed,
            Err(e) => {
                // The tunnel broke (the importing gateway died or reset): the backend must not
                // take the truncated request for a complete one.
                let _ = backend.set_zero_linger();
                let why = format!("{e}; the backend was reset");
                metrics.tunnel_ended(meter, TunnelEnding::Broken(why));
                return Ok(Served::Close);
            }
        },
        _ = revoked.notified() => {
            // Closing the connection ends the tunnel; the importing side resets its client, and
            // the backend is reset too, so neither end takes the cut for a complete exchange.
            let _ = backend.set_zero_linger();
            metrics.tunnel_ended(meter, TunnelEnding::Revoked(RefusedBy::Local));
            return Ok(Served::Close);
        }
    };
    metrics.tunnel_ended(meter, TunnelEnding::Closed);
    Ok(if relayed.reusable {
        Served::Reuse
    } else {
        Served::Close
    })
}

/// Answers with a refusal, reports it, and closes the connection.
async fn refuse<S: tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    metrics: &Metrics,
    tunnel: &TunnelRef,
    response: TunnelResponse,
    framing: Framing,
) -> Result<Served, PeerConnectionError> {
    let mut answer = response.encode();
    if let TunnelResponse::Refused {
        reason,
        message,
        policy,
    } = &response
    {
        let refusal = Refused {
            by: RefusedBy::Local,
            refusal: Refusal::Tunnel(*reason),
            policy: policy.clone(),
            message: message.clone(),
        };
        metrics.refused(tunnel, refusal);
        if framing == Framing::Unframed {
            answer = go_tunnel::closing(go_tunnel::refusal_response(*reason, message));
        }
    }
    let _ = tls.write_all(&answer).await;
    let _ = tls.shutdown().await;
    Ok(Served::Close)
}

/// How an ingress tunnel is reported. A name the request carries is kept only when an export
/// has it, so a peer cannot grow the metrics' label sets; peer names come from certificates the
/// fabric issued.
fn ingress_tunnel(snapshot: &Snapshot, peer: &str, export: Option<&ExportRef>) -> TunnelRef {
    TunnelRef {
        side: Side::Ingress,
        import: None,
        export: export
            .filter(|e| snapshot.exports.contains_key(*e))
            .map(ToString::to_string)
            .unwrap_or_default(),
        peer: peer.to_string(),
        client: None,
    }
}

/// Where an allowed tunnel goes, and the policy that allowed it.
struct Target {
    host: String,
    port: u16,
    policy: String,
}

/// The ingress decision for `peer` asking for `export` on behalf of a client with `client`
/// attributes: the backend to dial, or the refusal to send.
fn decide(
    snapshot: &Snapshot,
    peer: &str,
    reported_labels: &BTreeMap<String, String>,
    client: &Attributes,
    export: &ExportRef,
) -> Result<Target, TunnelResponse> {
    let local = &snapshot.local_peer;
    let Some(entry) = snapshot.exports.get(export) else {
        return Err(TunnelResponse::Refused {
            reason: RefusalReason::NoSuchExport,
            message: format!("peer {local} has no export {export}"),
            policy: None,
        });
    };
    let mut src: Attributes = client.clone();
    let administered = snapshot
        .peers
        .get(peer)
        .map(|p| p.labels.clone())
        .unwrap_or_default();
    peer_attributes(&mut src, peer, &peer_labels(reported_labels, &administered));
    let mut dst = Attributes::new();
    peer_attributes(&mut dst, local, &snapshot.local_labels);
    export_attributes(&mut dst, &export.name, &export.namespace, &entry.labels);
    let decision = snapshot.policy.decide(&export.namespace, &src, &dst);
    let policy = decision.decided_by.reference();
    if decision.allowed {
        Ok(Target {
            host: entry.host.clone(),
            port: entry.port,
            policy,
        })
    } else {
        Err(TunnelResponse::Refused {
            reason: RefusalReason::PolicyDenied,
            message: format!("ingress at {local}: {decision}"),
            policy: Some(policy),
        })
    }
}

/// A live ingress tunnel, as much as is needed to decide it again.
pub(crate) struct IngressTunnel {
    /// The certificate the peer authenticated with: its revocation cuts the tunnel.
    certificate: Arc<CertificateDer<'static>>,
    peer: String,
    peer_labels: BTreeMap<String, String>,
    client: Attributes,
    export: ExportRef,
    /// How its bytes move: a Go peer's tunnel ends when the peer is no longer of protocol go.
    framing: Framing,
}

/// Whether `peer` is still configured to speak the protocol a connection of `framing` speaks:
/// a Go peer only while its Peer object says `protocol: go`.
fn speaks(snapshot: &Snapshot, peer: &str, framing: Framing) -> bool {
    framing == Framing::Frames
        || snapshot
            .peers
            .get(peer)
            .is_some_and(|p| p.protocol == PeerProtocol::Go)
}

/// Where an export's backend may not be, decided before connecting: a refusal then says the
/// same whether or not anything listens there.
struct Destinations<'a> {
    /// This gateway's own listeners.
    protected: &'a [SocketAddr],
    /// Whether loopback addresses are allowed.
    loopback: bool,
}

impl Destinations<'_> {
    /// Why `addr` may not be dialed, if it may not.
    fn refusal(&self, addr: SocketAddr) -> Option<String> {
        let ip = addr.ip().to_canonical();
        if !self.loopback && (ip.is_loopback() || ip.is_unspecified()) {
            // A loopback service trusts every local process: another gateway's management API,
            // a database bound to localhost. Exporting one hands that trust to remote peers.
            return Some("it is on a loopback address; start the gateway with --allow-loopback-backends to export local services".into());
        }
        let this_host = ip.is_loopback() || ip.is_unspecified();
        let own = self.protected.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip().to_canonical() == ip
                    || (this_host && (l.ip().is_unspecified() || l.ip().is_loopback())))
        });
        // An export naming this gateway's management API (or peer port) would hand remote peers
        // what only local admins may use.
        own.then(|| "it is one of this gateway's own listeners".into())
    }
}

/// Connects to the first address of `host` that answers and may be dialed, recording the
/// connection (with the tunnel's `hops`) for as long as the returned guard lives.
async fn dial_backend(
    host: &str,
    port: u16,
    addresses: &BackendAddresses,
    allowed: &Destinations<'_>,
    relayed: &Arc<RelayedConnections>,
    hops: u8,
) -> std::io::Result<(TcpStream, Relayed)> {
    let found = addresses.of(host, port).await?;
    match connect_to_any(&found.addresses, allowed, relayed, hops).await {
        // Kept addresses that no longer take connections (a Service recreated elsewhere): the
        // name is looked up again at once.
        Err(e) if found.kept && e.kind() != std::io::ErrorKind::PermissionDenied => {
            addresses.forget(host, port);
            let fresh = addresses.of(host, port).await?;
            connect_to_any(&fresh.addresses, allowed, relayed, hops).await
        }
        dialed => dialed,
    }
}

/// Connects to the first of `addresses` that may be dialed and takes the connection.
async fn connect_to_any(
    addresses: &[SocketAddr],
    allowed: &Destinations<'_>,
    relayed: &Arc<RelayedConnections>,
    hops: u8,
) -> std::io::Result<(TcpStream, Relayed)> {
    let mut last = None;
    for &addr in addresses {
        if let Some(why) = allowed.refusal(addr) {
            last = Some(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                why,
            ));
            continue;
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // No bind first: the kernel then picks the port knowing the destination (see `hops`).
        let dialing = relayed.dialing(addr);
        match socket.connect(addr).await {
            Ok(stream) => {
                let guard = relayed.record(stream.local_addr()?, stream.peer_addr()?, hops);
                drop(dialing);
                return Ok((stream, guard));
            }
            Err(e) => last = Some(e),
        }
    }
    // `BackendAddresses` never gives an empty list.
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

/// Whether `backend` is connected to one of this gateway's own listeners.
fn reaches_own_listener(backend: &TcpStream, protected: &[SocketAddr]) -> bool {
    let (Ok(peer), Ok(local)) = (backend.peer_addr(), backend.local_addr()) else {
        return true;
    };
    // A connection to this host comes from the address it goes to, or over loopback.
    let this_host = peer.ip() == local.ip() || peer.ip().is_loopback();
    this_host
        && protected.iter().any(|l| {
            l.port() == peer.port()
                && (l.ip().is_unspecified() || l.ip() == peer.ip() || l.ip().is_loopback())
        })
}
