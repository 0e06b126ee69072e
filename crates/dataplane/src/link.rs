//! Dialed links: a gateway that others cannot reach (behind NAT, in a site that allows only
//! outbound connections) keeps a mutual-TLS connection open to a peer's gateway, on that peer's
//! ordinary peer port, and tunnels of both directions ride it.
//!
//! The connection negotiates [`LINK_ALPN`] and carries yamux streams. yamux rather than HTTP/2
//! because it is symmetric: either end opens streams, so the reachable side opens one for each of
//! its clients that goes to the dialing side's exports, and the dialing side one for each of its
//! own. HTTP/2 lets only its client open streams. Each stream speaks the tunnel protocol of a
//! direct peer connection (`tunnel`) and carries one exchange: a tunnel, or a probe (with the
//! revocation lists it may pass on). Streams are served by the same code as direct connections
//! (`ingress` for requests, `egress::dial` for tunnels), with the identity the link
//! authenticated.
//!
//! A link keeps itself honest: each end asks the other for a health answer every
//! [`Limits::probe_reachable_every`] and closes the link after
//! [`Limits::failures_to_unreachable`] unanswered ones, so a link whose far end vanished without
//! a FIN (a cut cable, a NAT that forgot the mapping) is closed within the probe budget. Closing a
//! link resets every stream on it, and the relay turns a reset stream into a reset client and
//! backend at both ends. The dialing side keeps a link to each of the peer's gateways and dials
//! each again with backoff ([`keep_dialed`]).

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use clusterlink_pki::reload::GatewayTls;
use clusterlink_pki::tls::LINK_ALPN;
use parking_lot::RwLock;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::connections::tune_socket;
use crate::limits::Limits;
use crate::snapshot::Snapshot;
use crate::tunnel::{HEALTH_REQUEST, labels_of_health_response, read_head};

/// Stream-open requests waiting for the link's task; beyond this, opening waits.
const OPEN_QUEUE: usize = 64;
/// Inbound streams waiting for the peer port to take them; beyond this, a new stream is reset.
/// The peer port takes them as fast as it spawns tasks, so this is only a burst's room.
pub(crate) const INBOUND_QUEUE: usize = 1024;

/// Why a peer with no gateway address and no link cannot be reached.
pub(crate) const NO_ROUTE: &str = "the peer lists no gateway address and no link from it is up (a peer without an address is reached only over the link it dials to this gateway)";

/// Which end opened a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// This gateway dialed it (its Peer says `dial: true`).
    Dialed,
    /// The peer dialed this gateway's peer port.
    Accepted,
}

/// What a link is: who is at the far end (as its certificate says), where, since when.
#[derive(Debug)]
pub(crate) struct LinkInfo {
    pub peer: String,
    /// The certificate the far end authenticated with: its revocation closes the link.
    pub certificate: Arc<CertificateDer<'static>>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub direction: Direction,
    /// When the link came up (Unix seconds).
    pub since: i64,
    /// When the far end's certificate expires (Unix seconds): the link closes then.
    pub expires: i64,
}

impl LinkInfo {
    /// How operators see the link: "dialed to 10.0.0.1:443 since …".
    pub fn describe(&self) -> String {
        let since = clusterlink_pki::authority::timestamp(self.since);
        match self.direction {
            Direction::Dialed => format!("link dialed to {} since {since}", self.remote),
            Direction::Accepted => format!("link dialed by {} since {since}", self.remote),
        }
    }
}

/// What a link's streams and its task share.
struct Shared {
    info: Arc<LinkInfo>,
    /// Streams open on the link, either way.
    streams: AtomicUsize,
    /// Set when a newer link replaced this one: it closes once its last stream ends.
    retiring: AtomicBool,
    /// Wakes the link's task: a stream ended, or the link is to close.
    wake: Notify,
    /// Set when the link is to close now (revoked, its Peer deleted).
    closing: AtomicBool,
}

type Opening = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// A link that is up: opens streams on it.
#[derive(Clone)]
pub(crate) struct Link {
    id: u64,
    shared: Arc<Shared>,
    opens: mpsc::Sender<Opening>,
}

impl Link {
    pub fn info(&self) -> &Arc<LinkInfo> {
        &self.shared.info
    }

    /// A new stream to the far end, within `within`.
    pub async fn open(&self, within: Duration) -> io::Result<LinkStream> {
        let lost = || io::Error::new(io::ErrorKind::ConnectionReset, "the link closed");
        let opened = timeout(within, async {
            let (reply, answer) = oneshot::channel();
            self.opens.send(reply).await.map_err(|_| lost())?;
            answer
                .await
                .map_err(|_| lost())?
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e.to_string()))
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "opening a stream timed out"))??;
        Ok(LinkStream::new(opened, self.shared.clone()))
    }

    /// Closes the link now: every stream on it is reset.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Closes the link once its last stream ends; new streams go to a newer link.
    pub fn retire(&self) {
        self.shared.retiring.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    fn is_retiring(&self) -> bool {
        self.shared.retiring.load(Ordering::Acquire)
    }
}

/// The links up now, by peer: what tunnels, probes and operators find.
#[derive(Clone, Default)]
pub struct Links {
    by_peer: Arc<RwLock<HashMap<String, Vec<Link>>>>,
    next_id: Arc<AtomicU64>,
}

impl Links {
    /// The link to take for a new stream to `peer`: the newest that is not retiring.
    pub(crate) fn to(&self, peer: &str) -> Option<Link> {
        let by_peer = self.by_peer.read();
        let links = by_peer.get(peer)?;
        links.iter().rev().find(|l| !l.is_retiring()).cloned()
    }

    /// How each peer with a link is reached, for operators.
    pub(crate) fn describe(&self) -> Vec<(String, String)> {
        let by_peer = self.by_peer.read();
        by_peer
            .iter()
            .filter_map(|(peer, links)| {
                let link = links.iter().rev().find(|l| !l.is_retiring())?;
                Some((peer.clone(), link.info().describe()))
            })
            .collect()
    }

    /// Closes every link whose far end `keep` no longer wants (its certificate revoked, its
    /// peer no longer admitted).
    pub(crate) fn close_unless(&self, keep: impl Fn(&LinkInfo) -> bool) {
        for link in self.by_peer.read().values().flatten() {
            if !keep(link.info()) {
                link.close();
            }
        }
    }

    /// Adds `link`, unless its peer holds `most` links already.
    fn register(&self, link: Link, most: usize) -> Option<Registered> {
        let id = link.id;
        let peer = link.info().peer.clone();
        let mut by_peer = self.by_peer.write();
        let held = by_peer.entry(peer.clone()).or_default();
        if held.len() >= most {
            return None;
        }
        held.push(link);
        Some(Registered {
            links: self.clone(),
            peer,
            id,
        })
    }
}

/// A link in [`Links`] while its task runs.
struct Registered {
    links: Links,
    peer: String,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut by_peer = self.links.by_peer.write();
        if let Some(links) = by_peer.get_mut(&self.peer) {
            links.retain(|l| l.id != self.id);
            if links.is_empty() {
                by_peer.remove(&self.peer);
            }
        }
    }
}

/// A stream of a link, read and written like a peer connection.
///
/// yamux reports a stream reset (or the loss of its link) as an end of stream, like a clean
/// close. A reset is reported here as an error, `ConnectionReset`, so that the relay resets
/// the client and backend as it does when a direct connection breaks, instead of passing on a
/// clean end that did not happen.
pub(crate) struct LinkStream {
    inner: Compat<yamux::Stream>,
    shared: Arc<Shared>,
}

impl LinkStream {
    fn new(stream: yamux::Stream, shared: Arc<Shared>) -> LinkStream {
        shared.streams.fetch_add(1, Ordering::AcqRel);
        LinkStream {
            inner: stream.compat(),
            shared,
        }
    }

    pub fn link(&self) -> &Arc<LinkInfo> {
        &self.shared.info
    }
}

impl Drop for LinkStream {
    fn drop(&mut self) {
        self.shared.streams.fetch_sub(1, Ordering::AcqRel);
        if self.shared.retiring.load(Ordering::Acquire) {
            self.shared.wake.notify_one();
        }
    }
}

impl AsyncRead for LinkStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && buf.filled().len() == before
            && buf.remaining() > 0
            && self.inner.get_ref().is_closed()
        {
            // Closed both ways without our side closing: reset, or the link went down.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!(
                    "the stream was reset (the link to {} closed, or its far end broke the tunnel)",
                    self.shared.info.peer
                ),
            )));
        }
        read
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream the far end opened: the peer port serves its request.
pub(crate) struct Inbound {
    pub stream: LinkStream,
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkEnd {
    #[error("the far end closed it")]
    ClosedByPeer,
    #[error("{0}")]
    Broken(yamux::ConnectionError),
    #[error(
        "{0} health probes in a row went unanswered (each within {1:?}): the far end or the path to it is gone"
    )]
    Silent(u32, Duration),
    #[error("closed here (its certificate revoked, its Peer changed, or shutting down)")]
    Closed,
    #[error("replaced by a newer link, and its last stream ended")]
    Retired,
    #[error("the far end's certificate expired")]
    Expired,
}

/// The largest TLS record's plaintext.
const TLS_RECORD: usize = 16 * 1024;
/// yamux's frame header.
const FRAME_HEADER: usize = 12;
/// A data frame's payload: with its header, exactly four full TLS records (through
/// [`WRITE_BUFFER`]), so a bulk stream costs no partial record and a quarter of yamux's default
/// frames (16 KiB); a frame delays other streams' by ~50 µs at 10 Gbit/s.
const FRAME_PAYLOAD: usize = 4 * TLS_RECORD - FRAME_HEADER;
/// yamux writes a frame's header and payload apart and flushes after each frame: buffered, they
/// leave as whole TLS records instead of a 12-byte record per frame.
const WRITE_BUFFER: usize = 2 * (FRAME_PAYLOAD + FRAME_HEADER);

/// The yamux configuration of every link: bounded streams and receive windows ([`Limits`]).
fn yamux_config(limits: &Limits) -> yamux::Config {
    let streams = limits.link_streams.max(1);
    let mut config = yamux::Config::default();
    config.set_split_send_size(FRAME_PAYLOAD);
    // The window first: the stream count is checked against it.
    config.set_max_connection_receive_window(Some(
        streams.saturating_mul(yamux::DEFAULT_CREDIT as usize),
    ));
    config.set_max_num_streams(streams);
    config
}

/// Starts a link over `io` (authenticated as `info` says): registered in `links` at once, and
/// served by the returned future until it ends (its inbound streams handed to `inbound`, probed
/// both ways). The future's end drops the yamux connection, which resets every stream still open
/// on it, and takes the link out of `links`. `None` (and `io` closed) when the peer holds
/// [`Limits::links_per_peer`] links already.
pub(crate) fn start<T>(
    io: T,
    mode: yamux::Mode,
    info: LinkInfo,
    links: &Links,
    inbound: mpsc::Sender<Inbound>,
    limits: Limits,
) -> Option<(Link, impl Future<Output = LinkEnd> + Send + 'static)>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let expires_in = Duration::from_secs(
        u64::try_from(info.expires - crate::metrics::unix_seconds()).unwrap_or(0),
    );
    let shared = Arc::new(Shared {
        info: Arc::new(info),
        streams: AtomicUsize::new(0),
        retiring: AtomicBool::new(false),
        wake: Notify::new(),
        closing: AtomicBool::new(false),
    });
    let (opens, mut requests) = mpsc::channel(OPEN_QUEUE);
    let link = Link {
        id: links.next_id.fetch_add(1, Ordering::Relaxed),
        shared: shared.clone(),
        opens,
    };
    // The bound protects the accepting side; a dialing side holds one per gateway listed (and
    // retired ones finishing).
    let most = match link.info().direction {
        Direction::Accepted => limits.links_per_peer,
        Direction::Dialed => usize::MAX,
    };
    let registered = links.register(link.clone(), most)?;
    let keepalive = keep_alive(link.clone(), limits);
    let task = async move {
        let _registered = registered;
        let io = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, io);
        let mut connection = yamux::Connection::new(io.compat(), yamux_config(&limits), mode);
        let mut waiting: Vec<Opening> = Vec::new();
        tokio::pin!(keepalive);
        let expiry = sleep(expires_in);
        tokio::pin!(expiry);
        loop {
            let event = tokio::select! {
                event = poll_fn(|cx| drive(&mut connection, &mut requests, &mut waiting, cx)) => event,
                end = &mut keepalive => return end,
                () = shared.wake.notified() => {
                    if shared.closing.load(Ordering::Acquire) {
                        return LinkEnd::Closed;
                    }
                    if shared.retiring.load(Ordering::Acquire)
                        && shared.streams.load(Ordering::Acquire) == 0
                    {
                        return LinkEnd::Retired;
                    }
                    continue;
                }
                () = &mut expiry => return LinkEnd::Expired,
            };
            match event {
                Some(Ok(stream)) => {
                    let stream = LinkStream::new(stream, shared.clone());
                    if inbound.try_send(Inbound { stream }).is_err() {
                        // Dropped, so reset: the far end's tunnel fails at once.
                        tracing::debug!(peer = %shared.info.peer, "inbound stream reset: the peer port is behind");
                    }
                }
                Some(Err(e)) => return LinkEnd::Broken(e),
                None => return LinkEnd::ClosedByPeer,
            }
        }
    };
    Some((link, task))
}

/// Moves the link along: queued opens become streams, frames go both ways, and the next stream
/// the far end opened (or the link's end) comes out.
fn drive<T: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut yamux::Connection<Compat<T>>,
    requests: &mut mpsc::Receiver<Opening>,
    waiting: &mut Vec<Opening>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<yamux::Stream, yamux::ConnectionError>>> {
    while let Poll::Ready(Some(reply)) = requests.poll_recv(cx) {
        waiting.push(reply);
    }
    while !waiting.is_empty() {
        match connection.poll_new_outbound(cx) {
            Poll::Ready(opened) => {
                let reply = waiting.remove(0);
                // A requester that gave up drops the stream, which resets it.
                let _ = reply.send(opened);
            }
            Poll::Pending => break,
        }
    }
    connection.poll_next_inbound(cx)
}

/// Asks the far end for a health answer every probe period; returns once
/// [`Limits::failures_to_unreachable`] in a row went unanswered.
async fn keep_alive(link: Link, limits: Limits) -> LinkEnd {
    let mut failures = 0;
    loop {
        sleep(limits.probe_reachable_every).await;
        let probe = async {
            let mut stream = link.open(limits.probe_timeout).await?;
            // Without the prober's lists: a keepalive carries no revocation lists.
            stream.write_all(HEALTH_REQUEST).await?;
            let (head, _) = read_head(&mut stream)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?;
            labels_of_health_response(&head).map_err(|e| io::Error::other(e.to_string()))?;
            io::Result::Ok(())
        };
        match timeout(limits.probe_timeout, probe).await {
            Ok(Ok(())) => failures = 0,
            Ok(Err(e)) => {
                tracing::debug!(peer = %link.info().peer, error = %e, "link probe failed");
                failures += 1;
            }
            Err(_) => failures += 1,
        }
        if failures >= limits.failures_to_unreachable {
            return LinkEnd::Silent(failures, limits.probe_timeout);
        }
    }
}

/// Why a gateway of the peer did not take a link.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialLinkError {
    #[error("peer name {0:?} is not a DNS name")]
    BadPeerName(String),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error(
        "TLS: {} (a gateway that predates links refuses their ALPN)",
        clusterlink_pki::tls::handshake_error_text(.0)
    )]
    Handshake(io::Error),
    /// Not expected: a dialing side's links are not bounded (one per gateway listed).
    #[error("too many links to the peer are held here")]
    TooManyLinks,
}

/// A new link's connection to one gateway of `peer`, authenticated, with what it is.
async fn dial(
    tls: &GatewayTls,
    peer: &str,
    host: &str,
    port: u16,
    limits: &Limits,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, LinkInfo), DialLinkError> {
    let name = ServerName::try_from(peer.to_string())
        .map_err(|_| DialLinkError::BadPeerName(peer.to_string()))?;
    let tcp = timeout(limits.connect, TcpStream::connect((host, port)))
        .await
        .map_err(|_| DialLinkError::ConnectTimeout)?
        .map_err(DialLinkError::Connect)?;
    tune_socket(&tcp).map_err(DialLinkError::Connect)?;
    let (local, remote) = (
        tcp.local_addr().map_err(DialLinkError::Connect)?,
        tcp.peer_addr().map_err(DialLinkError::Connect)?,
    );
    let connector = TlsConnector::from(tls.link_client.clone());
    let connection = timeout(limits.handshake, connector.connect(name, tcp))
        .await
        .map_err(|_| DialLinkError::HandshakeTimeout)?
        .map_err(DialLinkError::Handshake)?;
    let session = connection.get_ref().1;
    if session.alpn_protocol() != Some(LINK_ALPN) {
        let refused = io::Error::other("the gateway did not agree to carry a link");
        return Err(DialLinkError::Handshake(refused));
    }
    let certificate = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::new(c.clone().into_owned()))
        .ok_or_else(|| DialLinkError::Handshake(io::Error::other("no server certificate")))?;
    let expires = clusterlink_pki::identity::not_after(&certificate).unwrap_or(i64::MIN);
    let info = LinkInfo {
        peer: peer.to_string(),
        certificate,
        local,
        remote,
        direction: Direction::Dialed,
        since: crate::metrics::unix_seconds(),
        expires,
    };
    Ok((connection, info))
}

/// What the dialing side needs to keep its links.
#[derive(Clone)]
pub(crate) struct Dialing {
    pub tls: watch::Receiver<Arc<GatewayTls>>,
    pub links: Links,
    pub inbound: mpsc::Sender<Inbound>,
    pub limits: Limits,
}

/// Keeps a link dialed to each gateway of every Peer of the snapshots that says `dial: true`, in
/// step with them: a Peer deleted, or a gateway it no longer lists, closes that link (and its
/// tunnels).
///
/// One link per gateway, not one per peer: every gateway of the peer (each replica of a
/// Kubernetes peer, each of a standalone site's gateways) then has a link to send its tunnels to
/// this site over, and when one gateway goes away the others' links already carry the next
/// tunnels.
pub(crate) async fn keep_dialed(
    dialing: Dialing,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    // By peer and gateway address.
    let mut dialers: HashMap<(String, String, u16), JoinHandle<()>> = HashMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        dialers.retain(|(name, host, port), task| {
            let wanted = snapshot
                .peers
                .get(name)
                .is_some_and(|p| p.dial && p.gateways.iter().any(|(h, p)| h == host && p == port));
            if !wanted {
                task.abort();
            }
            wanted
        });
        for (name, peer) in snapshot.peers.iter().filter(|(_, p)| p.dial) {
            for (host, port) in &peer.gateways {
                let key = (name.clone(), host.clone(), *port);
                dialers.entry(key).or_insert_with(|| {
                    tokio::spawn(dial_forever(
                        name.clone(),
                        (host.clone(), *port),
                        dialing.clone(),
                    ))
                });
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    for (_, task) in dialers {
        task.abort();
    }
}

/// Keeps one link to `gateway` of `peer` up for as long as it runs, dialing again from
/// [`Limits::link_retry_first`] up to [`Limits::link_retry_max`] apart while it cannot. A new TLS
/// set (a renewed certificate, a new revocation list) gets a new link; the old one closes when
/// its last tunnel ends.
async fn dial_forever(peer: String, gateway: (String, u16), dialing: Dialing) {
    let Dialing {
        mut tls,
        links,
        inbound,
        limits,
    } = dialing;
    let (host, port) = &gateway;
    let address = format!("{host}:{port}");
    // Every link of this dialer still running: the current one, and retired ones finishing.
    let mut running: JoinSet<(u64, LinkEnd, Instant)> = JoinSet::new();
    let mut current: Option<Link> = None;
    let mut delay = limits.link_retry_first;
    let mut failing = false;
    loop {
        if current.is_none() {
            let credentials = tls.borrow_and_update().clone();
            let dialed = dial(&credentials, &peer, host, *port, &limits).await;
            let started = dialed.and_then(|(connection, info)| {
                let mode = yamux::Mode::Client;
                start(connection, mode, info, &links, inbound.clone(), limits)
                    .ok_or(DialLinkError::TooManyLinks)
            });
            match started {
                Ok((link, task)) => {
                    tracing::info!(%peer, gateway = %address, "link up");
                    let (id, up) = (link.id, Instant::now());
                    running.spawn(async move { (id, task.await, up) });
                    current = Some(link);
                    failing = false;
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%peer, gateway = %address, %error, "no link; dialing again with backoff");
                    }
                    failing = true;
                    sleep(delay).await;
                    delay = (delay * 2).min(limits.link_retry_max);
                    continue;
                }
            }
        }
        tokio::select! {
            Some(ended) = running.join_next() => {
                let Ok((id, end, up)) = ended else { continue };
                if current.as_ref().is_some_and(|c| c.id == id) {
                    current = None;
                    tracing::warn!(%peer, gateway = %address, reason = %end, "link down; dialing again");
                    // A link that falls as soon as it is up is not dialed again at once.
                    if up.elapsed() < limits.link_stable {
                        sleep(delay).await;
                        delay = (delay * 2).min(limits.link_retry_max);
                    } else {
                        delay = limits.link_retry_first;
                    }
                }
            }
            changed = tls.changed() => {
                if changed.is_err() { return }
                if let Some(old) = current.take() {
                    old.retire();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::health_response;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const L: Limits = Limits::DEFAULT;

    fn info(peer: &str, direction: Direction) -> LinkInfo {
        LinkInfo {
            peer: peer.into(),
            certificate: Arc::new(CertificateDer::from(Vec::new())),
            local: ([127, 0, 0, 1], 1).into(),
            remote: ([127, 0, 0, 1], 2).into(),
            direction,
            since: 0,
            expires: i64::MAX,
        }
    }

    /// One end of a link over `io`, its streams served as a gateway would: health requests
    /// answered, anything else echoed.
    fn end(
        io: DuplexStream,
        mode: yamux::Mode,
        peer: &str,
        links: &Links,
    ) -> tokio::task::JoinHandle<LinkEnd> {
        let (inbound, mut streams) = mpsc::channel::<Inbound>(INBOUND_QUEUE);
        let direction = match mode {
            yamux::Mode::Client => Direction::Dialed,
            yamux::Mode::Server => Direction::Accepted,
        };
        let (_, task) = start(io, mode, info(peer, direction), links, inbound, L).unwrap();
        tokio::spawn(async move {
            while let Some(Inbound { mut stream }) = streams.recv().await {
                tokio::spawn(async move {
                    let (head, rest) = read_head(&mut stream).await.map_err(io::Error::other)?;
                    if head.starts_with(b"GET /healthz") {
                        stream
                            .write_all(&health_response(&Default::default()))
                            .await?;
                        return stream.shutdown().await;
                    }
                    stream.write_all(&head).await?;
                    stream.write_all(&rest).await?;
                    let (mut r, mut w) = tokio::io::split(stream);
                    tokio::io::copy(&mut r, &mut w).await.map(drop)
                });
            }
        });
        tokio::spawn(task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_far_end_that_stops_answering_is_dropped_within_the_probe_budget() {
        let links = Links::default();
        // The far end takes bytes (a socket's buffer) and never answers, as a cut path would.
        let (near, _far) = tokio::io::duplex(1 << 20);
        let started = Instant::now();
        let dialed = info("hub", Direction::Dialed);
        let (_, task) = start(
            near,
            yamux::Mode::Client,
            dialed,
            &links,
            mpsc::channel(1).0,
            L,
        )
        .unwrap();
        assert!(links.to("hub").is_some(), "registered as soon as it starts");
        let end = task.await;
        assert!(matches!(end, LinkEnd::Silent(2, _)), "{end}");
        let budget = (L.probe_reachable_every + L.probe_timeout) * L.failures_to_unreachable;
        assert!(started.elapsed() <= budget, "{:?}", started.elapsed());
        assert!(
            links.to("hub").is_none(),
            "out of the registry once it ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn streams_go_both_ways_and_a_lost_link_resets_them_rather_than_ending_them() {
        let (dialer_links, accepter_links) = (Links::default(), Links::default());
        let (a, b) = tokio::io::duplex(1 << 20);
        let dialed = end(a, yamux::Mode::Client, "hub", &dialer_links);
        let accepted = end(b, yamux::Mode::Server, "branch", &accepter_links);
        // Either end opens streams; the other serves them.
        for (links, peer) in [(&dialer_links, "hub"), (&accepter_links, "branch")] {
            let link = links.to(peer).expect("a link");
            let mut stream = link.open(L.connect).await.unwrap();
            stream.write_all(b"CONNECT x\r\n\r\nhello").await.unwrap();
            let mut echoed = [0u8; 18];
            stream.read_exact(&mut echoed).await.unwrap();
            assert_eq!(&echoed, b"CONNECT x\r\n\r\nhello");
        }
        // Keepalives are answered: the link outlives many probe periods.
        tokio::time::sleep(L.probe_reachable_every * 20).await;
        assert!(!dialed.is_finished() && !accepted.is_finished());

        // A stream open when the link goes: its reader sees a reset, not a clean end.
        let link = accepter_links.to("branch").unwrap();
        let mut open = link.open(L.connect).await.unwrap();
        open.write_all(b"CONNECT y\r\n\r\n").await.unwrap();
        let mut echoed = [0u8; 13];
        open.read_exact(&mut echoed).await.unwrap();
        dialer_links.to("hub").unwrap().close();
        assert!(matches!(dialed.await.unwrap(), LinkEnd::Closed));
        let read = open.read(&mut [0u8; 16]).await;
        assert_eq!(
            read.map_err(|e| e.kind()).unwrap_err(),
            io::ErrorKind::ConnectionReset
        );
        assert!(matches!(
            accepted.await.unwrap(),
            LinkEnd::ClosedByPeer | LinkEnd::Broken(_)
        ));
        assert!(accepter_links.to("branch").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_holds_at_most_its_share_of_links() {
        let links = Links::default();
        let mut held = Vec::new();
        for _ in 0..L.links_per_peer {
            let (near, far) = tokio::io::duplex(1024);
            let accepted = info("branch", Direction::Accepted);
            let started = start(
                near,
                yamux::Mode::Server,
                accepted,
                &links,
                mpsc::channel(1).0,
                L,
            );
            // The registration lives as long as the link's future.
            held.push((started.expect("within the bound"), far));
        }
        let (near, _far) = tokio::io::duplex(1024);
        let one_more = info("branch", Direction::Accepted);
        assert!(
            start(
                near,
                yamux::Mode::Server,
                one_more,
                &links,
                mpsc::channel(1).0,
                L
            )
            .is_none()
        );
        // Another peer is not held back by this one's links.
        let (near, _far) = tokio::io::duplex(1024);
        let other = info("hub", Direction::Accepted);
        assert!(
            start(
                near,
                yamux::Mode::Server,
                other,
                &links,
                mpsc::channel(1).0,
                L
            )
            .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_link_closes_when_its_last_stream_ends() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (dialer_links, accepter_links) = (Links::default(), Links::default());
        let dialed = end(a, yamux::Mode::Client, "hub", &dialer_links);
        let _accepted = end(b, yamux::Mode::Server, "branch", &accepter_links);
        let link = dialer_links.to("hub").unwrap();
        let stream = link.open(L.connect).await.unwrap();
        link.retire();
        assert!(
            dialer_links.to("hub").is_none(),
            "no new streams on a retiring link"
        );
        tokio::time::sleep(L.probe_reachable_every * 4).await;
        assert!(!dialed.is_finished(), "closed under a live stream");
        drop(stream);
        assert!(matches!(dialed.await.unwrap(), LinkEnd::Retired));
    }
}
