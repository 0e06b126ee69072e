//! The snapshot stream between a control plane and its data-plane replicas (Kubernetes mode).
//!
//! The control plane serves every replica the whole configuration — the model's objects and the
//! client hosts — on connect and again on every change, as length-prefixed JSON over mutual
//! TLS. Both ends hold the same peer certificate: the control plane accepts only a client that
//! proves it is this peer, and the replica checks the server's name the same way, so no other
//! workload can read the configuration or feed a replica a false one.
//!
//! A replica publishes each snapshot's objects and client hosts to the watch channels its data
//! plane's [`Snapshot`](crate::Snapshot)s are built from. When the stream breaks (the control
//! plane restarts, say) it keeps serving the last snapshot and reconnects; the next snapshot
//! replaces it whole.
//!
//! A frame of length zero is a heartbeat: the control plane sends one whenever the stream has
//! been idle for [`Limits::replica_heartbeat`]. A replica that hears nothing, not even a
//! heartbeat, for [`Limits::replica_silence`] takes the stream for dead and reconnects; the
//! control plane drops a connection whose heartbeats go unacknowledged that long
//! (`TCP_USER_TIMEOUT`). Either end thus notices within seconds a peer that vanished without a
//! reset (a node lost, a link cut), where TCP alone would wait for many minutes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clusterlink_api::clients::ClientHosts;
use clusterlink_api::{FieldErrors, Object, Objects};
use clusterlink_pki::reload::GatewayTls;
use clusterlink_pki::{Identity, identity_of};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::limits::Limits;
use crate::listener::{Standing, accept_bounded};
use crate::metrics::{Listener, Metrics, Unserved};

// The stream's bounds and timeouts, with their reasons, are in [`Limits`].
pub const MAX_SNAPSHOT_BYTES: u32 = Limits::DEFAULT.snapshot_bytes;
const HANDSHAKE_TIMEOUT: Duration = Limits::DEFAULT.handshake;
const RECONNECT_FIRST: Duration = Limits::DEFAULT.replica_reconnect_first;
const RECONNECT_MAX: Duration = Limits::DEFAULT.replica_reconnect_max;
const CONNECT_TIMEOUT: Duration = Limits::DEFAULT.connect;
const HEARTBEAT: Duration = Limits::DEFAULT.replica_heartbeat;
const SILENCE: Duration = Limits::DEFAULT.replica_silence;

/// Everything a replica serves from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSnapshot {
    pub objects: Vec<Object>,
    pub client_hosts: ClientHosts,
}

/// A snapshot as read: each object is parsed (and so checked) as a manifest would be.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WireSnapshot {
    objects: Vec<serde_json::Value>,
    client_hosts: ClientHosts,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake did not finish within {HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("no TCP connection within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("nothing received for {SILENCE:?}, not even a heartbeat: the other end is gone")]
    Silent,
    #[error("snapshot of {0} bytes is larger than the {MAX_SNAPSHOT_BYTES}-byte limit")]
    TooLarge(u32),
    #[error("snapshot is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("snapshot holds an invalid object: {0}")]
    InvalidObject(#[from] clusterlink_api::ManifestError),
    #[error("the other end is not this peer ({0})")]
    WrongIdentity(String),
    #[error("snapshot holds an invalid object: {0}")]
    Invalid(#[from] FieldErrors),
}

/// `object` as the stream carries it: without the versions the control plane keeps (the API
/// server's), which a replica has no use for, so replicas of the previous release, which do not
/// know them, go on reading the stream during a rolling upgrade.
fn without_versions(object: &Object) -> Object {
    let mut object = object.clone();
    let meta = object.metadata_mut();
    meta.resource_version = None;
    meta.generation = None;
    object
}

impl StreamError {
    /// How a connection that failed this way before it proved itself is counted.
    fn unserved(&self) -> Unserved {
        match self {
            StreamError::HandshakeTimeout => Unserved::HandshakeTimeout,
            StreamError::WrongIdentity(_) => Unserved::WrongIdentity,
            _ => Unserved::HandshakeRefused,
        }
    }
}

async fn write_snapshot<W: AsyncWrite + Unpin>(
    out: &mut W,
    snapshot: &ReplicaSnapshot,
) -> Result<(), StreamError> {
    let body = serde_json::to_vec(snapshot)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_SNAPSHOT_BYTES)
        .ok_or(StreamError::TooLarge(u32::MAX))?;
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(&body).await?;
    out.flush().await?;
    Ok(())
}

async fn write_heartbeat<W: AsyncWrite + Unpin>(out: &mut W) -> Result<(), StreamError> {
    out.write_all(&0u32.to_be_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// The next snapshot, or `None` for a heartbeat. Every read must make progress within
/// [`SILENCE`], so a vanished control plane is noticed also in the middle of a frame.
async fn read_frame<R: AsyncRead + Unpin>(
    input: &mut R,
) -> Result<Option<ReplicaSnapshot>, StreamError> {
    let mut len = [0; 4];
    read_exact_within(input, &mut len).await?;
    let len = u32::from_be_bytes(len);
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_SNAPSHOT_BYTES {
        return Err(StreamError::TooLarge(len));
    }
    let mut body = vec![0; len as usize];
    read_exact_within(input, &mut body).await?;
    let wire: WireSnapshot = serde_json::from_slice(&body)?;
    let objects: Vec<Object> = wire
        .objects
        .into_iter()
        .map(clusterlink_api::manifest::object_from_value)
        .collect::<Result<_, _>>()?;
    // The replica serves these objects as they are, so each is checked as the model checks it.
    for o in &objects {
        o.validate()?;
    }
    Ok(Some(ReplicaSnapshot {
        objects,
        client_hosts: wire.client_hosts,
    }))
}

async fn read_exact_within<R: AsyncRead + Unpin>(
    input: &mut R,
    buf: &mut [u8],
) -> Result<(), StreamError> {
    let mut filled = 0;
    while filled < buf.len() {
        let read = tokio::time::timeout(SILENCE, input.read(&mut buf[filled..]))
            .await
            .map_err(|_| StreamError::Silent)??;
        if read == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        filled += read;
    }
    Ok(())
}

fn is_peer(
    identity: Option<Result<Identity, clusterlink_pki::PkiError>>,
    peer: &str,
) -> Result<(), StreamError> {
    match identity {
        Some(Ok(Identity::Peer(name))) if name == peer => Ok(()),
        other => Err(StreamError::WrongIdentity(format!("{other:?}"))),
    }
}

/// Serves snapshots of `objects` and `hosts` to every replica that connects on `listener` until
/// `shutdown` flips. Connections are bounded in total and per address.
pub async fn serve(
    listener: TcpListener,
    local_peer: String,
    tls: watch::Receiver<Arc<GatewayTls>>,
    objects: watch::Receiver<Arc<Objects>>,
    hosts: watch::Receiver<Arc<ClientHosts>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let streaming = shutdown.clone();
    let counted = metrics.clone();
    let feed = move |stream, remote: SocketAddr, standing: Standing| {
        let acceptor = TlsAcceptor::from(tls.borrow().management.clone());
        let (peer, objects, hosts, shutdown, metrics) = (
            local_peer.clone(),
            objects.clone(),
            hosts.clone(),
            streaming.clone(),
            counted.clone(),
        );
        async move {
            let stream = match accept_replica(stream, acceptor, &peer).await {
                Ok(stream) => stream,
                // A stranger: counted, and logged with a rate limit, however many there are.
                Err(e) => {
                    let detail = e.to_string();
                    return metrics.unserved(Listener::Replica, e.unserved(), remote, &detail);
                }
            };
            standing.proven();
            tracing::info!(%remote, "replica connected");
            match feed_replica(stream, objects, hosts, shutdown).await {
                Ok(()) => tracing::info!(%remote, "replica disconnected"),
                Err(e) => tracing::warn!(%remote, error = %e, "replica stream ended"),
            }
        }
    };
    let limits = Limits::DEFAULT;
    let mut replicas = accept_bounded(
        listener,
        limits.replicas,
        Listener::Replica,
        &limits,
        &metrics,
        &mut shutdown,
        feed,
    )
    .await;
    replicas.abort_all();
}

/// The TLS handshake of a replica, which must present this peer's own certificate.
async fn accept_replica(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    peer: &str,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, StreamError> {
    // Heartbeats unacknowledged this long mean the replica is gone: the kernel then fails the
    // next write, where it would otherwise retransmit for many minutes.
    socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(SILENCE))?;
    stream.set_nodelay(true)?;
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| StreamError::HandshakeTimeout)??;
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(identity_of);
    is_peer(identity, peer)?;
    Ok(stream)
}

async fn feed_replica(
    mut stream: tokio_rustls::server::TlsStream<TcpStream>,
    mut objects: watch::Receiver<Arc<Objects>>,
    mut hosts: watch::Receiver<Arc<ClientHosts>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StreamError> {
    loop {
        // The versions are taken out of the watches before they are copied, so the model's
        // writer never waits for a copy of the whole configuration.
        let (latest, latest_hosts) = (
            objects.borrow_and_update().clone(),
            hosts.borrow_and_update().clone(),
        );
        let snapshot = ReplicaSnapshot {
            objects: latest.values().map(without_versions).collect(),
            client_hosts: latest_hosts.as_ref().clone(),
        };
        write_snapshot(&mut stream, &snapshot).await?;
        loop {
            tokio::select! {
                changed = objects.changed() => if changed.is_err() { return Ok(()) } else { break },
                changed = hosts.changed() => if changed.is_err() { return Ok(()) } else { break },
                _ = shutdown.changed() => return Ok(()),
                _ = tokio::time::sleep(HEARTBEAT) => write_heartbeat(&mut stream).await?,
            }
        }
    }
}

/// The replica side: follows the control plane at `address` (host:port), publishing every
/// snapshot to `objects` and `hosts`, reconnecting until `shutdown` flips. Between connections
/// the last snapshot stays in force. `first_applied` fires once the first snapshot is published:
/// until then the replica has nothing to serve and should not look ready.
pub async fn follow(
    address: String,
    local_peer: String,
    tls: watch::Receiver<Arc<GatewayTls>>,
    objects: watch::Sender<Arc<Objects>>,
    hosts: watch::Sender<Arc<ClientHosts>>,
    first_applied: oneshot::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = RECONNECT_FIRST;
    let mut first_applied = Some(first_applied);
    loop {
        let session = receive(
            &address,
            &local_peer,
            &tls,
            &objects,
            &hosts,
            &mut first_applied,
            &mut delay,
        );
        tokio::select! {
            result = session => match result {
                Ok(()) => tracing::warn!(control_plane = %address, "control plane closed the stream; serving the last snapshot"),
                Err(e) => tracing::warn!(control_plane = %address, error = %e, "no snapshot stream; serving the last snapshot"),
            },
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

async fn receive(
    address: &str,
    local_peer: &str,
    tls: &watch::Receiver<Arc<GatewayTls>>,
    objects: &watch::Sender<Arc<Objects>>,
    hosts: &watch::Sender<Arc<ClientHosts>>,
    first_applied: &mut Option<oneshot::Sender<()>>,
    delay: &mut Duration,
) -> Result<(), StreamError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| StreamError::ConnectTimeout)??;
    let connector = TlsConnector::from(tls.borrow().client.clone());
    let name = ServerName::try_from(local_peer.to_string())
        .map_err(|e| StreamError::WrongIdentity(e.to_string()))?;
    let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| StreamError::HandshakeTimeout)??;
    loop {
        let snapshot = match read_frame(&mut stream).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(StreamError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        *delay = RECONNECT_FIRST;
        tracing::debug!(
            objects = snapshot.objects.len(),
            hosts = snapshot.client_hosts.len(),
            "snapshot received"
        );
        let received: Objects = snapshot.objects.into_iter().map(|o| (o.key(), o)).collect();
        let count = received.len();
        // A snapshot equal to the one in force (a reconnect, a change of the hosts only) wakes
        // nothing: the data plane rebuilds and re-decides only on a real change.
        objects.send_if_modified(|current| {
            let changed = **current != received;
            if changed {
                *current = Arc::new(received);
            }
            changed
        });
        hosts.send_if_modified(|current| {
            let changed = **current != snapshot.client_hosts;
            if changed {
                *current = Arc::new(snapshot.client_hosts);
            }
            changed
        });
        if let Some(first) = first_applied.take() {
            tracing::info!(
                control_plane = %address,
                objects = count,
                "first snapshot applied"
            );
            let _ = first.send(());
        }
    }
}
