//! The gateway's TLS configuration, reloaded when the certificate files change on disk.
//!
//! The files are checked every [`RELOAD_INTERVAL`]; a change is applied once all three load and
//! the certificate still names this peer. Until then the current configuration stays in force, so
//! replacing the files one by one never leaves the gateway without working TLS. Each new
//! connection (tunnel or probe) uses the configuration current when it starts.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::PkiError;
use crate::identity::{Identity, identity_of};
use crate::tls::{Credentials, PEER_ALPN, TlsFiles, mutual_client_config, mutual_server_config};
use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;

/// How often the certificate files are checked: a rotated certificate is in force within this.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The gateway's TLS configurations, built from one set of credentials: the peer port's server
/// and client sides, and the management listener's server side (when it uses TLS).
pub struct GatewayTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub management: Arc<ServerConfig>,
    /// When the gateway's own certificate expires, in seconds since the Unix epoch (`None` if
    /// it cannot be read, which the handshake would have refused first).
    pub certificate_expires: Option<i64>,
}

impl GatewayTls {
    pub fn new(credentials: &Credentials) -> Result<GatewayTls, PkiError> {
        let mut server = mutual_server_config(credentials)?;
        server.alpn_protocols = vec![PEER_ALPN.to_vec()];
        let mut client = mutual_client_config(credentials)?;
        client.alpn_protocols = vec![PEER_ALPN.to_vec()];
        Ok(GatewayTls {
            server: Arc::new(server),
            client: Arc::new(client),
            // The management API speaks plain HTTP/1.1 inside TLS: no tunnel ALPN.
            management: Arc::new(mutual_server_config(credentials)?),
            certificate_expires: credentials
                .chain
                .first()
                .and_then(|c| crate::identity::not_after(c).ok()),
        })
    }
}

/// What identifies a version of the files without reading them.
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(files: &TlsFiles) -> Fingerprint {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn load(files: &TlsFiles, peer: &str) -> Result<GatewayTls, String> {
    let credentials = Credentials::load(files).map_err(|e| e.to_string())?;
    credentials
        .verify_own_chain()
        .map_err(|e| format!("the certificate does not fit the CA: {e}"))?;
    match identity_of(&credentials.chain[0]) {
        Ok(Identity::Peer(name)) if name == peer => {}
        other => {
            return Err(format!(
                "the new certificate does not name peer {peer:?} ({other:?})"
            ));
        }
    }
    GatewayTls::new(&credentials).map_err(|e| e.to_string())
}

/// Watches `files` and publishes a new [`GatewayTls`] whenever they change and load cleanly.
pub async fn watch_files(
    files: TlsFiles,
    peer: String,
    tx: watch::Sender<Arc<GatewayTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applied = fingerprint(&files);
    let mut reported: Option<Fingerprint> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        let now = fingerprint(&files);
        if now == applied {
            continue;
        }
        match load(&files, &peer) {
            Ok(tls) => {
                tracing::info!(cert = %files.cert.display(), "certificates reloaded");
                tx.send_replace(Arc::new(tls));
                applied = now;
            }
            Err(e) => {
                // Report each failing version once; files replaced one at a time pass through here.
                if reported.as_ref() != Some(&now) {
                    tracing::warn!(error = %e, "changed certificates not loaded yet; keeping the current ones");
                    reported = Some(now);
                }
            }
        }
    }
}
