//! Reaching a peer's gateways: a warm connection when one is kept, else a new mutual-TLS
//! connection, and the tunnel request on it. Failures keep their `io::ErrorKind`, so logs tell a
//! refused connection from a reset or a timeout.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use clusterlink_pki::reload::GatewayTls;
use rustls_pki_types::{CertificateDer, ServerName};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit, watch};
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::capacity::HeldDescriptors;
use crate::connections::tune_socket;
use crate::go_tunnel;
use crate::health::PeerHealth;
use crate::limits::Limits;
use crate::link::{LinkStream, Links, NO_ROUTE};
use crate::metrics::{Metrics, Refusal, Refused, RefusedBy, SetupStage, Side};
use crate::pool::{ConnectionPool, GatewayKey};
use crate::read_ahead::ReadAhead;
use crate::relay::Framing;
use crate::relay::{MAX_FIRST_FRAME, TLS_SEND_BUFFER, push_frame};
use crate::snapshot::PeerEntry;
use crate::snapshot::Snapshot;
use crate::tunnel::{
    MAX_HOPS, ProtocolError, RefusalReason, TunnelRequest, TunnelResponse, Via, read_body,
    read_head,
};
use clusterlink_api::PeerProtocol;

/// A mutual-TLS connection of its own to a peer gateway.
pub(super) type DirectConnection = TlsStream<ReadAhead<TcpStream>>;

/// Where a tunnel to a peer rides: a connection of its own, or a stream of a link.
pub(super) enum PeerConnection {
    Direct(Box<DirectConnection>),
    Linked(LinkStream),
}

impl PeerConnection {
    /// The certificate the peer's gateway authenticated with (for a link, when it came up).
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        match self {
            PeerConnection::Direct(c) => c
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned()),
            PeerConnection::Linked(s) => Some(s.link().certificate.as_ref().clone()),
        }
    }

    /// The far end's address, as this side sees it.
    fn remote(&self) -> io::Result<SocketAddr> {
        match self {
            PeerConnection::Direct(c) => c.get_ref().0.get_ref().peer_addr(),
            PeerConnection::Linked(s) => Ok(s.link().remote),
        }
    }
}

impl AsyncRead for PeerConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerConnection::Direct(c) => Pin::new(c.as_mut()).poll_read(cx, buf),
            PeerConnection::Linked(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerConnection::Direct(c) => Pin::new(c.as_mut()).poll_write(cx, buf),
            PeerConnection::Linked(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerConnection::Direct(c) => Pin::new(c.as_mut()).poll_flush(cx),
            PeerConnection::Linked(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerConnection::Direct(c) => Pin::new(c.as_mut()).poll_shutdown(cx),
            PeerConnection::Linked(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// How this gateway reaches peers: their TLS, their health, and connections kept between tunnels.
pub(crate) struct Dialer {
    /// The peer port's TLS, current as of each new connection.
    pub tls: watch::Receiver<Arc<GatewayTls>>,
    pub health: PeerHealth,
    /// Peer connections between tunnels, each with the descriptor it holds.
    pub pool: ConnectionPool<(DirectConnection, HeldDescriptors)>,
    /// Links up now: a peer with one is reached over it.
    pub links: Links,
    /// Places for new peer connections ([`Limits::handshakes_at_once`]), held from connect until
    /// the first answer. A burst beyond them waits for a place (or a connection coming back warm).
    pub handshakes: Semaphore,
    pub metrics: Arc<Metrics>,
    /// Connect and handshake timeouts.
    pub limits: Limits,
}

impl Dialer {
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
    fn take_warm(&self, gateway: &GatewayKey) -> Option<DirectConnection> {
        // The client that takes it holds a descriptor for it already.
        let taken = self.pool.take(gateway).map(|(connection, _)| connection);
        self.count_idle();
        taken
    }

    /// Keeps a connection whose tunnel ended cleanly for the next tunnel to `gateway`; a link's
    /// stream is closed instead (the next tunnel opens a stream of its own, at no cost).
    pub(super) async fn keep_warm(
        &self,
        gateway: GatewayKey,
        connection: PeerConnection,
        descriptor: HeldDescriptors,
    ) {
        match connection {
            PeerConnection::Direct(connection) => {
                self.pool.put(gateway, (*connection, descriptor));
                self.count_idle();
            }
            PeerConnection::Linked(mut stream) => {
                let _ = stream.shutdown().await;
            }
        }
    }

    /// Every change of the pool goes through a method that calls this, so the gauge follows it.
    fn count_idle(&self) {
        self.metrics.set_idle(Side::Egress, self.pool.len());
    }
}

/// Why one gateway of a peer could not take a tunnel. The message carries the `io::Error`
/// (so it is not also a `source`, which reporters would print twice).
#[derive(Debug, thiserror::Error)]
pub(super) enum DialError {
    #[error("{0} other new peer connections are still being set up")]
    Busy(usize),
    #[error("shutting down")]
    ShuttingDown,
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("socket options: {0}")]
    SocketOptions(io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("TLS: {}", clusterlink_pki::tls::handshake_error_text(.0))]
    Handshake(io::Error),
    #[error("sending the tunnel request: {0}")]
    Send(io::Error),
    #[error("opening a stream on the link: {0}")]
    Link(io::Error),
    #[error("no answer to the tunnel request")]
    NoAnswer,
    /// Reading the answer failed (the connection closed or broke first).
    #[error("{0}")]
    Read(ProtocolError),
    /// The answer is not one this gateway understands.
    #[error("bad answer: {0}")]
    BadAnswer(ProtocolError),
}

/// Why a source could not serve a connection.
#[derive(Debug, thiserror::Error)]
pub(super) enum TunnelFailure {
    /// The peer's gateway answered with a refusal.
    #[error("refused ({}): {message}", reason.as_str())]
    Refused {
        reason: RefusalReason,
        message: String,
        policy: Option<String>,
    },
    /// No gateway of the peer could take the tunnel: why, for each.
    #[error("{}", Unreachable(.0))]
    Unreachable(Vec<(String, DialError)>),
    /// The peer's name cannot be checked against a certificate.
    #[error("peer name {0:?} is not a DNS name")]
    BadPeerName(String),
    /// The request went out with the client's first bytes and no answer came back. The peer may
    /// have passed them on, so no other source is tried: they must not arrive twice.
    #[error(
        "{gateway}: {error}, after the client's first bytes went out with the request; not tried elsewhere, so they cannot arrive twice"
    )]
    Interrupted { gateway: String, error: DialError },
}

impl TunnelFailure {
    /// The failure as reported: a refusal by the peer is the peer's, with its reason and policy;
    /// anything else is this side's `PeerUnreachable`.
    pub(super) fn refusal(&self) -> Refused {
        match self {
            TunnelFailure::Refused {
                reason,
                message,
                policy,
            } => Refused {
                by: RefusedBy::Peer,
                refusal: Refusal::Tunnel(*reason),
                policy: policy.clone(),
                message: message.clone(),
            },
            TunnelFailure::Unreachable(_)
            | TunnelFailure::BadPeerName(_)
            | TunnelFailure::Interrupted { .. } => Refused {
                by: RefusedBy::Local,
                refusal: Refusal::PeerUnreachable,
                policy: None,
                message: self.to_string(),
            },
        }
    }
}

/// Each gateway and why it failed, in the order tried.
struct Unreachable<'a>(&'a [(String, DialError)]);

impl std::fmt::Display for Unreachable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str(NO_ROUTE);
        }
        for (i, (gateway, error)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{gateway}: {error}")?;
        }
        Ok(())
    }
}

/// A tunnel the answering gateway accepted.
pub(super) struct OpenTunnel {
    pub connection: PeerConnection,
    /// What arrived after the answer: the start of the tunnel's frames.
    pub leftover: Vec<u8>,
    /// Where `connection` goes, to keep it for another tunnel when this one ends cleanly.
    pub gateway: GatewayKey,
    /// For a dry run: the peer's allowing policy. The connection then carries nothing more.
    pub would_allow: Option<String>,
    /// How the tunnel's bytes travel: in frames, or as they are to a Go gateway.
    pub framing: Framing,
}

/// The client's first bytes, sent in the same write (and TLS record) as the tunnel request when
/// the client has already sent them, so the backend gets them one round trip sooner.
///
/// They are read without waiting, just before a request goes out, and kept: a request refused by
/// one source's gateway carries the same bytes to the next. A refusal proves they went nowhere,
/// since a gateway writes nothing to a backend before every refusal is ruled out (it writes them
/// just before it answers `200`). A request that carried
/// them and got no answer at all is the one case that cannot be retried
/// ([`TunnelFailure::Interrupted`]).
pub(super) struct FirstBytes<'c> {
    client: Option<&'c TcpStream>,
    bytes: Vec<u8>,
}

impl<'c> FirstBytes<'c> {
    /// Bytes that `client` has sent by the time each request goes out.
    pub fn of(client: &'c TcpStream) -> Self {
        FirstBytes {
            client: Some(client),
            bytes: Vec::new(),
        }
    }

    /// No client bytes: a dry run.
    pub fn none() -> Self {
        FirstBytes {
            client: None,
            bytes: Vec::new(),
        }
    }

    /// What was taken from the client: the tunnel's relay goes on after these.
    pub fn taken(&self) -> usize {
        self.bytes.len()
    }

    /// `head`, followed by a frame of what the client has sent so far (if anything).
    fn with_request(&mut self, head: &[u8]) -> Vec<u8> {
        if let (Some(client), true) = (self.client, self.bytes.is_empty()) {
            let mut buf = vec![0; MAX_FIRST_FRAME];
            // Nothing yet (`WouldBlock`), an end of stream, or an error: the relay meets them.
            if let Ok(n) = client.try_read(&mut buf) {
                buf.truncate(n);
                self.bytes = buf;
            }
        }
        let mut message = Vec::with_capacity(head.len() + 4 + self.bytes.len());
        message.extend_from_slice(head);
        push_frame(&mut message, &self.bytes);
        message
    }
}

impl Dialer {
    /// Asks each gateway of the peer in turn, on a warm connection if one is kept, else on a new
    /// one. A refusal from a gateway ends the attempt on this peer (its other gateways share its
    /// configuration); a connect or handshake failure moves on.
    /// A Go gateway (`entry.protocol`) is asked in its own protocol, as `local_peer`.
    pub(super) async fn open_tunnel(
        &self,
        peer: &str,
        entry: &PeerEntry,
        local_peer: &str,
        request: &TunnelRequest,
        client_ends: Option<(SocketAddr, SocketAddr)>,
        first: &mut FirstBytes<'_>,
    ) -> Result<OpenTunnel, TunnelFailure> {
        let name = ServerName::try_from(peer.to_string())
            .map_err(|_| TunnelFailure::BadPeerName(peer.to_string()))?;
        let gateways = &entry.gateways;
        if entry.protocol == PeerProtocol::Go {
            return self
                .open_go_tunnel(peer, &name, gateways, local_peer, request, first)
                .await;
        }
        let head = request.encode();
        // A client that came from the address of the gateway asked may be a connection that
        // gateway made to this import: it is told which, to find a loop through it (`hops`).
        let head_for = |connection: &PeerConnection| -> Cow<'_, [u8]> {
            let there = connection.remote();
            match client_ends {
                Some((client, import))
                    if there.is_ok_and(|t| t.ip().to_canonical() == client.ip().to_canonical()) =>
                {
                    let via = Via {
                        client_port: client.port(),
                        import,
                    };
                    let relayed = TunnelRequest {
                        via: Some(via),
                        ..request.clone()
                    };
                    Cow::Owned(relayed.encode())
                }
                _ => Cow::Borrowed(&head),
            }
        };
        let mut errors = Vec::new();
        // A link to the peer carries the tunnel if one is up: it is already open.
        if let Some(link) = self.links.to(peer) {
            let attempt_started = Instant::now();
            let address = link.info().describe();
            let opened = link.open(self.limits.connect).await;
            match opened {
                Ok(stream) => {
                    let connection = PeerConnection::Linked(stream);
                    let ready = Instant::now();
                    let message = first.with_request(&head_for(&connection));
                    match self.ask(connection, &message).await {
                        Ok(answer) => {
                            let gateway = GatewayKey {
                                peer: peer.to_string(),
                                host: String::new(),
                                port: 0,
                            };
                            let timing = (attempt_started, ready);
                            let dry_run = request.dry_run;
                            return self.answered(dry_run, timing, answer, gateway, address, first);
                        }
                        Err(error) if first.taken() > 0 => {
                            return Err(TunnelFailure::Interrupted {
                                gateway: address,
                                error,
                            });
                        }
                        Err(e) => errors.push((address, e)),
                    }
                }
                Err(e) => errors.push((address, DialError::Link(e))),
            }
        }
        for (host, port) in gateways {
            let attempt_started = Instant::now();
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
            let address = format!("{host}:{port}");
            // A warm connection the far end has closed (the gateway restarted) is seen before
            // anything is sent on it; its siblings are likely as stale, so they go too.
            let mut warm = self.take_warm(&gateway);
            if warm.as_ref().is_some_and(|c| !c.get_ref().0.is_quiet()) {
                warm = None;
                self.forget(&gateway);
            }
            // Timed for the tunnel that opens: reaching the peer, then its answer.
            let mut answered = None;
            if let Some(connection) = warm {
                let connection = PeerConnection::Direct(Box::new(connection));
                let ready = Instant::now();
                let request = first.with_request(&head_for(&connection));
                match self.ask(connection, &request).await {
                    Ok(answer) => answered = Some((ready, answer)),
                    Err(error) if first.taken() > 0 => {
                        return Err(TunnelFailure::Interrupted {
                            gateway: address,
                            error,
                        });
                    }
                    // Nothing of the client's went out: a new connection can take the tunnel.
                    Err(_) => self.forget(&gateway),
                }
            }
            let answer = match answered {
                Some(answer) => answer,
                None => {
                    let client = self.tls.borrow().client.clone();
                    let connection = match self.connect(client, &name, host, *port).await {
                        Ok((connection, _handshake)) => {
                            PeerConnection::Direct(Box::new(connection))
                        }
                        Err(e) => {
                            errors.push((address, e));
                            continue;
                        }
                    };
                    let ready = Instant::now();
                    let request = first.with_request(&head_for(&connection));
                    match self.ask(connection, &request).await {
                        Ok(answer) => (ready, answer),
                        Err(error) if first.taken() > 0 => {
                            return Err(TunnelFailure::Interrupted {
                                gateway: address,
                                error,
                            });
                        }
                        Err(e) => {
                            errors.push((address, e));
                            continue;
                        }
                    }
                }
            };
            let (ready, answer) = answer;
            let timing = (attempt_started, ready);
            return self.answered(request.dry_run, timing, answer, gateway, address, first);
        }
        Err(TunnelFailure::Unreachable(errors))
    }

    /// Reads the gateway's answer to a tunnel request: the tunnel, a dry run's verdict, or a
    /// refusal. `timing` is when the attempt started and when the request could go out.
    fn answered(
        &self,
        dry_run: bool,
        timing: (Instant, Instant),
        (connection, head, rest): (PeerConnection, Vec<u8>, Vec<u8>),
        gateway: GatewayKey,
        address: String,
        first: &FirstBytes<'_>,
    ) -> Result<OpenTunnel, TunnelFailure> {
        let (attempt_started, ready) = timing;
        let answered_at = Instant::now();
        let decoded = TunnelResponse::decode(&head, &rest).and_then(|response| {
            // A dry run must not be answered with an open tunnel, nor a tunnel with a verdict.
            let dry_answer = matches!(response, TunnelResponse::WouldAllow { .. });
            let tunnel_answer = matches!(response, TunnelResponse::Established);
            if (dry_run && tunnel_answer) || (!dry_run && dry_answer) {
                return Err(ProtocolError::Malformed(
                    "the answer does not match the request (dry run or tunnel)".into(),
                ));
            }
            Ok(response)
        });
        match decoded {
            Ok(TunnelResponse::Established) => {
                let metrics = &self.metrics;
                metrics.stage_took(SetupStage::PeerConnection, ready - attempt_started);
                metrics.stage_took(SetupStage::PeerAnswer, answered_at - ready);
                Ok(OpenTunnel {
                    connection,
                    leftover: rest,
                    gateway,
                    would_allow: None,
                    framing: Framing::Frames,
                })
            }
            Ok(TunnelResponse::WouldAllow { policy }) => Ok(OpenTunnel {
                connection,
                leftover: rest,
                gateway,
                would_allow: Some(policy),
                framing: Framing::Frames,
            }),
            Ok(TunnelResponse::Refused {
                reason,
                message,
                policy,
            }) => Err(TunnelFailure::Refused {
                reason,
                message,
                policy,
            }),
            // An answer this gateway cannot read may hide a tunnel the peer opened.
            Err(e) if first.taken() > 0 => Err(TunnelFailure::Interrupted {
                gateway: address,
                error: DialError::BadAnswer(e),
            }),
            Err(e) => Err(TunnelFailure::Unreachable(vec![(
                address,
                DialError::BadAnswer(e),
            )])),
        }
    }

    /// Opens a tunnel to a Go gateway of `peer` (`go_tunnel`), trying its gateways in turn: on a
    /// new connection, an authorization, then the tunnel with the token it gave. Client bytes go
    /// only after the tunnel's answer (a Go gateway drops what comes before it): those an earlier
    /// source's request took from the client first. The connection carries nothing after the
    /// tunnel.
    async fn open_go_tunnel(
        &self,
        peer: &str,
        name: &ServerName<'static>,
        gateways: &[(String, u16)],
        local_peer: &str,
        request: &TunnelRequest,
        first: &FirstBytes<'_>,
    ) -> Result<OpenTunnel, TunnelFailure> {
        let refused = |(reason, message)| TunnelFailure::Refused {
            reason,
            message,
            policy: None,
        };
        // The Go gateway carries no hop count; this side's own count still rises each time a
        // loop comes back through it.
        if request.hops >= MAX_HOPS {
            return Err(refused((
                RefusalReason::LoopDetected,
                format!(
                    "the connection already went through {} tunnels: a loop through Go peer {peer}",
                    request.hops
                ),
            )));
        }
        let mut errors = Vec::new();
        for (host, port) in gateways {
            let attempt_started = Instant::now();
            let address = format!("{host}:{port}");
            let gateway = GatewayKey {
                peer: peer.to_string(),
                host: host.clone(),
                port: *port,
            };
            let client = self.tls.borrow().go_client.clone();
            let mut connection = match self.connect(client, name, host, *port).await {
                Ok((connection, _handshake)) => connection,
                Err(e) => {
                    errors.push((address, e));
                    continue;
                }
            };
            let ready = Instant::now();
            let export = &request.export;
            let labels = &request.peer_labels;
            let authorize =
                go_tunnel::authorize_request(peer, export, &request.client, local_peer, labels);
            let (token, closes) = match self.ask_go(&mut connection, &authorize, false).await {
                // Its control plane failed to decide: another gateway of the peer may not.
                Ok((answer, body, _)) if answer.status >= 500 => {
                    let (_, text) = answer.refusal(&body);
                    let failed = ProtocolError::Malformed(format!("authorization failed: {text}"));
                    errors.push((address, DialError::BadAnswer(failed)));
                    continue;
                }
                Ok((answer, body, _)) => (answer.token(&body).map_err(refused)?, answer.closes),
                Err(e) => {
                    errors.push((address, e));
                    continue;
                }
            };
            let opened = |connection, leftover, would_allow| OpenTunnel {
                connection: PeerConnection::Direct(Box::new(connection)),
                leftover,
                gateway,
                would_allow,
                framing: Framing::Unframed,
            };
            if request.dry_run {
                let policy = Some(go_tunnel::UNNAMED_POLICY.to_string());
                return Ok(opened(connection, Vec::new(), policy));
            }
            // An answer that closes its connection (the gateway's certificates changed): the
            // tunnel goes on a new one, as a Go gateway would open it anyway.
            if closes {
                let client = self.tls.borrow().go_client.clone();
                connection = match self.connect(client, name, host, *port).await {
                    Ok((connection, _handshake)) => connection,
                    Err(e) => {
                        errors.push((address, e));
                        continue;
                    }
                };
            }
            let connect = go_tunnel::connect_request(peer, &token);
            match self.ask_go(&mut connection, &connect, true).await {
                Ok((answer, _, rest)) if answer.status == 200 => {
                    if !first.bytes.is_empty() {
                        let sent = async {
                            connection.write_all(&first.bytes).await?;
                            connection.flush().await
                        };
                        if let Err(e) = sent.await {
                            return Err(TunnelFailure::Interrupted {
                                gateway: address,
                                error: DialError::Send(e),
                            });
                        }
                    }
                    let answered_at = Instant::now();
                    let metrics = &self.metrics;
                    metrics.stage_took(SetupStage::PeerConnection, ready - attempt_started);
                    metrics.stage_took(SetupStage::PeerAnswer, answered_at - ready);
                    return Ok(opened(connection, rest, None));
                }
                Ok((answer, body, _)) => return Err(refused(answer.refusal(&body))),
                // Nothing of the client's went out: another gateway may take the tunnel.
                Err(e) => errors.push((address, e)),
            }
        }
        Err(TunnelFailure::Unreachable(errors))
    }

    /// Sends `request` to a Go gateway and reads its answer: the head, the body (none after a
    /// tunnel's `200`, where the tunnel's bytes begin), and what followed.
    async fn ask_go(
        &self,
        connection: &mut DirectConnection,
        request: &[u8],
        tunnel: bool,
    ) -> Result<(go_tunnel::Answer, Vec<u8>, Vec<u8>), DialError> {
        connection
            .write_all(request)
            .await
            .map_err(DialError::Send)?;
        connection.flush().await.map_err(DialError::Send)?;
        let within = self.limits.handshake;
        let (head, rest) = timeout(within, read_head(connection))
            .await
            .map_err(|_| DialError::NoAnswer)?
            .map_err(DialError::Read)?;
        let answer = go_tunnel::Answer::decode(&head).map_err(DialError::BadAnswer)?;
        if tunnel && answer.status == 200 {
            return Ok((answer, Vec::new(), rest));
        }
        // A body past the bound is read only as far as the bound: the connection is not used
        // again after such an answer (a refusal ends the attempt; an allowing one with a body
        // is a bad answer).
        let kept = answer.length.min(go_tunnel::MAX_ANSWER_BODY);
        if answer.length > kept && answer.status == 200 {
            return Err(DialError::BadAnswer(ProtocolError::TooLarge));
        }
        let mut rest = rest;
        rest.truncate(kept);
        let body = timeout(within, read_body(connection, rest, kept))
            .await
            .map_err(|_| DialError::NoAnswer)?
            .map_err(DialError::Read)?;
        Ok((answer, body, Vec::new()))
    }

    /// A new mutual-TLS connection to a gateway of the peer `name`, made with `client` (the TLS
    /// configuration of its protocol, current as of now: rotated certificates apply to new
    /// connections).
    async fn connect(
        &self,
        client: Arc<rustls::ClientConfig>,
        name: &ServerName<'static>,
        host: &str,
        port: u16,
    ) -> Result<(DirectConnection, SemaphorePermit<'_>), DialError> {
        let limits = &self.limits;
        let place = timeout(limits.connect, self.handshakes.acquire())
            .await
            .map_err(|_| DialError::Busy(limits.handshakes_at_once))?
            .map_err(|_| DialError::ShuttingDown)?;
        let tcp = timeout(limits.connect, TcpStream::connect((host, port)))
            .await
            .map_err(|_| DialError::ConnectTimeout)?
            .map_err(DialError::Connect)?;
        tune_socket(&tcp).map_err(DialError::SocketOptions)?;
        let connector = TlsConnector::from(client);
        let mut connection = timeout(
            limits.handshake,
            connector.connect(name.clone(), ReadAhead::new(tcp)),
        )
        .await
        .map_err(|_| DialError::HandshakeTimeout)?
        .map_err(DialError::Handshake)?;
        connection
            .get_mut()
            .1
            .set_buffer_limit(Some(TLS_SEND_BUFFER));
        Ok((connection, place))
    }
}

impl Dialer {
    /// Sends a tunnel request on `connection` and reads the answer's head and what followed it.
    async fn ask(
        &self,
        mut connection: PeerConnection,
        request: &[u8],
    ) -> Result<(PeerConnection, Vec<u8>, Vec<u8>), DialError> {
        connection
            .write_all(request)
            .await
            .map_err(DialError::Send)?;
        connection.flush().await.map_err(DialError::Send)?;
        let (head, rest) = timeout(self.limits.handshake, read_head(&mut connection))
            .await
            .map_err(|_| DialError::NoAnswer)?
            .map_err(DialError::Read)?;
        Ok((connection, head, rest))
    }
}
