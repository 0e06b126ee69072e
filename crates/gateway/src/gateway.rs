//! A standalone gateway: its identity, its store and control plane, and the management listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clusterlink_pki::tls::{Credentials, TlsFiles};
use clusterlink_pki::{Identity, identity_of};
use clusterlink_store::RedbStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use clusterlink_dataplane::metrics::{AccessLog, Metrics};
use clusterlink_dataplane::{DataPlane, DataPlaneConfig, Limits, snapshot};
use clusterlink_pki::authority::{Authority, REVOCATIONS_FILE};
use clusterlink_pki::reload::TlsSource;
use clusterlink_pki::site::Enrollment;

use crate::management;
use crate::model::{ControlPlane, ModelError};

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
    #[error(
        "the gateway certificate {path} cannot be used with the fabric CA {ca}: {reason} (issue a new one with `clusterlink create peer-cert`)"
    )]
    UnusableCertificate {
        path: PathBuf,
        ca: PathBuf,
        reason: String,
    },
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
    pub clients: clusterlink_api::clients::ClientTable,
    /// The file `clients` came from, followed while the gateway runs.
    pub clients_file: Option<PathBuf>,
    /// Where the store lives.
    pub data_dir: PathBuf,
    pub management_security: ManagementSecurity,
    /// Whether exports may name services on loopback addresses.
    pub loopback_backends: bool,
    /// The data path's timeouts and bounds.
    pub limits: Limits,
    /// Which tunnels get a log line.
    pub access_log: AccessLog,
    /// The fabric's issuing authority, when this gateway serves joining and renewal.
    pub authority: Option<Arc<Authority>>,
    /// Where this gateway renews its certificate, if it joined with a token (its files are then
    /// those of `clusterlink_pki::site` in `data_dir`).
    pub enrollment: Option<Enrollment>,
    /// Admit on the peer port only peers with a Peer object here.
    pub known_peers_only: bool,
}

/// Loads the fabric CA, this peer's certificate and key, and checks them: the certificate must
/// chain to the CA, be valid now, and name a peer. Returns the credentials and the peer's name.
/// A gateway checks this before it binds or creates anything, so a wrong set fails at start-up
/// rather than in every handshake.
pub fn load_identity(tls: &TlsFiles) -> Result<(Credentials, String), GatewayError> {
    let credentials = Credentials::load(tls)?;
    credentials
        .verify_own_chain()
        .map_err(|e| GatewayError::UnusableCertificate {
            path: tls.cert.clone(),
            ca: tls.ca.clone(),
            reason: e.to_string(),
        })?;
    match identity_of(&credentials.chain[0]) {
        Ok(Identity::Peer(name)) => Ok((credentials, name)),
        Ok(Identity::Admin(admin)) => Err(GatewayError::NotAPeerCertificate {
            path: tls.cert.clone(),
            reason: format!("it is the admin certificate of {admin:?}"),
        }),
        Err(e) => Err(GatewayError::NotAPeerCertificate {
            path: tls.cert.clone(),
            reason: e.to_string(),
        }),
    }
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
        let (credentials, name) = load_identity(&config.tls)?;
        let store = tokio::task::spawn_blocking({
            let dir = config.data_dir.clone();
            move || RedbStore::open(&dir)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        let control_plane = ControlPlane::open(Arc::new(store))?;
        let metrics = Arc::new(Metrics::default().with_access_log(config.access_log));

        // One watched set of TLS configurations: rotated certificates reach the peer port and the
        // management listener alike, without a restart.
        // Revocation lists are kept beside the store, and the issuing gateway follows its
        // authority's list.
        let followed = config
            .authority
            .as_ref()
            .map(|a| vec![a.revocations_path()])
            .unwrap_or_default();
        let (tls_source, tls) = TlsSource::start(
            config.tls.clone(),
            name.clone(),
            credentials,
            Some(config.data_dir.join(REVOCATIONS_FILE)),
            followed,
        )?;
        let management_addr = management.local_addr()?;
        let peer_addr = peer.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        if let Some(enrollment) = config.enrollment.clone() {
            tasks.spawn(clusterlink_dataplane::enroll::keep_renewed(
                tls_source.clone(),
                config.data_dir.clone(),
                enrollment,
                metrics.clone(),
                shutdown_rx.clone(),
            ));
        }
        tasks.spawn(tls_source.watch(shutdown_rx.clone()));
        let snapshots = snapshot::follow_changes(
            &name,
            config.labels.clone(),
            control_plane.subscribe(),
            // Standalone mode has no pods: every client is found by range in `clients`.
            watch::channel(Arc::default()).1,
        );
        let (clients, followed_clients) = watch::channel(Arc::new(config.clients.clone()));
        if let Some(path) = &config.clients_file {
            tasks.spawn(crate::clients::follow(
                path.clone(),
                clients,
                shutdown_rx.clone(),
            ));
        }
        let dataplane = DataPlaneConfig {
            import_address: config.import_address,
            clients: followed_clients,
            metrics: metrics.clone(),
            protected: vec![management_addr, peer_addr],
            loopback_backends: config.loopback_backends,
            limits: config.limits,
            authority: config.authority.clone(),
            known_peers_only: config.known_peers_only,
        };
        let dataplane = DataPlane::new(dataplane, tls.clone());
        let observed = management::activity::Observed {
            dataplane: dataplane.clone(),
            snapshots: snapshots.clone(),
            peer_addresses: management::activity::advertised_peer_addresses(peer_addr),
            objects: control_plane.subscribe(),
        };
        control_plane.follow_catalogs(dataplane.catalogs());
        tasks.spawn(crate::mirror::run(
            control_plane.clone(),
            dataplane.catalogs(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(dataplane.run(
            peer,
            snapshots,
            Arc::new(control_plane.clone()),
            shutdown_rx.clone(),
        ));
        let management_tls = match config.management_security {
            ManagementSecurity::LoopbackPlain => None,
            ManagementSecurity::AdminTls => Some(tls),
        };
        let names = management::guard::ServedNames {
            peer: name.clone(),
            any: config.management_security == ManagementSecurity::AdminTls,
        };
        tasks.spawn(management::server::serve(
            management,
            management_tls,
            management::router(control_plane.clone(), metrics.clone(), names, observed),
            metrics.clone(),
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

    /// Completes when a task the gateway cannot serve without (a listener, the data plane, the
    /// certificate watcher) has ended before shutdown, with what happened. The process should
    /// then exit so its supervisor restarts it, rather than look ready while half of it is gone.
    pub async fn failed(&mut self) -> String {
        match self.tasks.join_next().await {
            Some(Ok(())) => "a gateway task ended unexpectedly".into(),
            Some(Err(e)) if e.is_panic() => format!("a gateway task panicked: {e}"),
            Some(Err(e)) => format!("a gateway task was cancelled: {e}"),
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, lets in-flight requests finish (briefly), and returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        tracing::info!(peer = %self.name, "gateway stopped");
    }
}
