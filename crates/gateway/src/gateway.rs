//! A standalone gateway: its identity, its store and control plane, and the management listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use clusterlink_pki::tls::{Credentials, TlsFiles};
use clusterlink_pki::{Identity, identity_of};
use clusterlink_store::RedbStore;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::management;
use crate::model::{ControlPlane, ModelError};

/// A TLS handshake that has not finished by then is a stalled or hostile client.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request headers by then is stalled or hostile.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight management requests before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("TLS material: {0}")]
    Pki(#[from] clusterlink_pki::PkiError),
    #[error("{0}")]
    Store(#[from] clusterlink_store::StoreError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("the gateway certificate {path} must be a peer certificate (one DNS name): {reason}")]
    NotAPeerCertificate { path: PathBuf, reason: String },
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// How the management API is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagementSecurity {
    /// Plain HTTP; allowed only on a loopback address.
    LoopbackPlain,
    /// Mutual TLS; clients must present an admin certificate issued by the fabric.
    AdminTls,
}

impl ManagementSecurity {
    /// Loopback is plain unless TLS is asked for; any other address always requires TLS.
    pub fn for_address(addr: SocketAddr, force_tls: bool) -> ManagementSecurity {
        if force_tls || !addr.ip().is_loopback() {
            ManagementSecurity::AdminTls
        } else {
            ManagementSecurity::LoopbackPlain
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The fabric CA, this peer's certificate and key.
    pub tls: TlsFiles,
    /// This peer's own labels, which policies match as `peer.clusterlink.net/labels.*`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where import listeners bind.
    pub import_address: std::net::IpAddr,
    /// Client attributes by address (standalone mode).
    pub clients: crate::dataplane::ClientTable,
    /// Where the store lives.
    pub data_dir: PathBuf,
    pub management_security: ManagementSecurity,
}

/// A running gateway. Dropping it does not stop it; call [`Gateway::shutdown`].
pub struct Gateway {
    name: String,
    control_plane: ControlPlane,
    management_addr: SocketAddr,
    peer_addr: SocketAddr,
    management_security: ManagementSecurity,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Loads the peer identity and the store, serves the management API on `management` and the
    /// peer port (tunnels from other gateways) on `peer`.
    pub async fn start(
        config: GatewayConfig,
        management: TcpListener,
        peer: TcpListener,
    ) -> Result<Gateway, GatewayError> {
        let credentials = Credentials::load(&config.tls)?;
        let name = match identity_of(&credentials.chain[0]) {
            Ok(Identity::Peer(name)) => name,
            Ok(Identity::Admin(admin)) => {
                return Err(GatewayError::NotAPeerCertificate {
                    path: config.tls.cert.clone(),
                    reason: format!("it is the admin certificate of {admin:?}"),
                });
            }
            Err(e) => {
                return Err(GatewayError::NotAPeerCertificate {
                    path: config.tls.cert.clone(),
                    reason: e.to_string(),
                });
            }
        };
        let store = tokio::task::spawn_blocking({
            let dir = config.data_dir.clone();
            move || RedbStore::open(&dir)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        let control_plane = ControlPlane::open(Arc::new(store))?;
        let metrics = Arc::new(crate::metrics::Metrics::default());

        // One watched set of TLS configurations: rotated certificates reach the peer port and the
        // management listener alike, without a restart.
        let (tls_tx, tls) =
            watch::channel(Arc::new(crate::dataplane::GatewayTls::new(&credentials)?));
        let management_addr = management.local_addr()?;
        let peer_addr = peer.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(crate::dataplane::watch_files(
            config.tls.clone(),
            name.clone(),
            tls_tx,
            shutdown_rx.clone(),
        ));
        let dataplane = crate::dataplane::DataPlaneConfig {
            local_peer: name.clone(),
            local_labels: config.labels.clone(),
            import_address: config.import_address,
            clients: config.clients.clone(),
            // Standalone mode has no pods: every client is found by range in `clients`.
            client_hosts: watch::channel(Arc::default()).1,
            metrics: metrics.clone(),
            protected: vec![management_addr, peer_addr],
        };
        tasks.spawn(crate::dataplane::run(
            dataplane,
            peer,
            control_plane.clone(),
            tls.clone(),
            shutdown_rx.clone(),
        ));
        let management_tls = match config.management_security {
            ManagementSecurity::LoopbackPlain => None,
            ManagementSecurity::AdminTls => Some(tls),
        };
        tasks.spawn(serve_management(
            management,
            management_tls,
            management::router(control_plane.clone(), metrics.clone()),
            shutdown_rx,
        ));
        tracing::info!(peer = %name, management = %management_addr, security = ?config.management_security, "gateway started");
        Ok(Gateway {
            name,
            control_plane,
            management_addr,
            peer_addr,
            management_security: config.management_security,
            shutdown,
            tasks,
        })
    }

    /// This peer's name, from its certificate.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn management_addr(&self) -> SocketAddr {
        self.management_addr
    }

    /// Where other gateways reach this one.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn management_security(&self) -> ManagementSecurity {
        self.management_security
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// Stops accepting, lets in-flight requests finish (briefly), and returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        tracing::info!(peer = %self.name, "gateway stopped");
    }
}

async fn serve_management(
    listener: TcpListener,
    tls: Option<watch::Receiver<Arc<crate::dataplane::GatewayTls>>>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "management accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with every request served.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let router = router.clone();
        // The configuration current now: a rotated certificate applies to new connections.
        let acceptor = tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.borrow().management.clone()));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = TowerToHyperService::new(router);
            match acceptor {
                None => serve_connection(TokioIo::new(stream), service, shutdown).await,
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::warn!(%remote, error = %e, "management TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%remote, "management TLS handshake timed out");
                            return;
                        }
                    };
                    let identity = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(identity_of);
                    match identity {
                        Some(Ok(Identity::Admin(admin))) => {
                            tracing::debug!(%remote, %admin, "management connection");
                            serve_connection(TokioIo::new(stream), service, shutdown).await;
                        }
                        other => {
                            // A peer certificate is valid in the fabric but is no admin credential.
                            tracing::warn!(%remote, identity = ?other, "management connection refused: not an admin certificate");
                        }
                    }
                }
            }
        });
    }
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    service: TowerToHyperService<Router>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "management connection ended with an error");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
