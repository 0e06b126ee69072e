//! The gateway's TLS set: its configurations, rebuilt when the certificate files change on disk
//! or a newer revocation list arrives.
//!
//! The files are checked every [`RELOAD_INTERVAL`]; a change is applied once all three load and
//! the certificate still names this peer. Until then the current configuration stays in force, so
//! replacing the files one by one never leaves the gateway without working TLS. Each new
//! connection (tunnel or probe) uses the configuration current when it starts.
//!
//! Revocation lists come from peers (through [`GatewayTls::offer_revocations`]) and from files
//! the gateway follows (the issuing gateway follows its authority's); each newer one is stored
//! in the gateway's data directory, so a restart keeps it, and applied at once.

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::PkiError;
use crate::identity::{Identity, identity_of};
use crate::revocation::{Revocations, Summary, Taken};
use crate::tls::{
    ClientCertificate, Credentials, LINK_ALPN, PEER_ALPN, TlsFiles, client_config, server_config,
};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

/// How often the certificate files are checked: a rotated certificate is in force within this.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often a followed revocation list file is checked: a revocation written by
/// `clusterlink revoke` leaves the issuing gateway within this (a `stat`, so it is cheap).
const LIST_INTERVAL: Duration = Duration::from_millis(200);

/// The gateway's TLS configurations, built from one set of credentials and revocation lists:
/// the peer port's server and client sides, the management listener's server side (when it uses
/// TLS), and the issuing gateway's enrollment side.
pub struct GatewayTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// The peer port's client side for dialing a link (`LINK_ALPN`).
    pub link_client: Arc<ClientConfig>,
    /// The client side toward gateways of the Go ClusterLink (`PeerProtocol::Go`): the same
    /// certificate and verification, no ALPN (it offers and expects none).
    pub go_client: Arc<ClientConfig>,
    pub management: Arc<ServerConfig>,
    /// Joining and renewal (`dataplane::enroll`): a client certificate is optional, and the CA
    /// goes with the chain so that a joining site can check it against its token's pin.
    pub enrollment: Arc<ServerConfig>,
    /// When the gateway's own certificate expires, in seconds since the Unix epoch (`None` if
    /// it cannot be read, which the handshake would have refused first).
    pub certificate_expires: Option<i64>,
    /// When it became valid (Unix seconds): with the expiry, its lifetime, which renewal divides.
    pub certificate_valid_from: Option<i64>,
    /// The revocation lists in force.
    pub revocations: Arc<Revocations>,
    /// What this gateway tells peers it holds: every CA of its bundle and its list's number.
    pub revocation_summary: Summary,
    source: Weak<SourceInner>,
}

impl GatewayTls {
    /// A set with no revocation list, followed by nothing (tests, tools).
    pub fn new(credentials: &Credentials) -> Result<GatewayTls, PkiError> {
        GatewayTls::build(credentials, Arc::default(), Weak::new())
    }

    fn build(
        credentials: &Credentials,
        revocations: Arc<Revocations>,
        source: Weak<SourceInner>,
    ) -> Result<GatewayTls, PkiError> {
        let mut server = server_config(credentials, &revocations, ClientCertificate::Required)?;
        server.alpn_protocols = vec![PEER_ALPN.to_vec(), LINK_ALPN.to_vec()];
        let mut client = client_config(credentials, &revocations)?;
        let mut link_client = client.clone();
        let go_client = client.clone();
        client.alpn_protocols = vec![PEER_ALPN.to_vec()];
        link_client.alpn_protocols = vec![LINK_ALPN.to_vec()];
        let mut with_ca = credentials.clone();
        with_ca.chain.extend(issuer_of(credentials));
        let mut enrollment = server_config(&with_ca, &revocations, ClientCertificate::Optional)?;
        enrollment.alpn_protocols = vec![crate::tls::ENROLL_ALPN.to_vec()];
        Ok(GatewayTls {
            server: Arc::new(server),
            client: Arc::new(client),
            go_client: Arc::new(go_client),
            link_client: Arc::new(link_client),
            // The management API speaks plain HTTP/1.1 inside TLS: no tunnel ALPN.
            management: Arc::new(server_config(
                credentials,
                &revocations,
                ClientCertificate::Required,
            )?),
            enrollment: Arc::new(enrollment),
            certificate_expires: credentials
                .chain
                .first()
                .and_then(|c| crate::identity::not_after(c).ok()),
            certificate_valid_from: credentials
                .chain
                .first()
                .and_then(|c| crate::identity::not_before(c).ok()),
            revocation_summary: revocations.summary(&credentials.cas),
            revocations,
            source,
        })
    }

    /// Why the certificate files on disk were not put in force, while they differ from the ones
    /// that are (a rotation to a certificate of another CA, expired, or for another name).
    pub fn rotation_rejected(&self) -> Option<String> {
        self.source.upgrade()?.state().rejected.clone()
    }

    /// Offers revocation lists (PEM) from a peer or an administrator: those signed by a CA of
    /// the trust bundle and newer than the ones held are stored and put in force at once.
    pub fn offer_revocations(&self, pem: &[u8]) -> Result<Taken, PkiError> {
        match self.source.upgrade() {
            Some(source) => source.offer(pem),
            None => Err(PkiError::Revocation(
                "this gateway does not keep revocation lists".into(),
            )),
        }
    }
}

/// The CA certificate of the bundle that issued our own leaf, to send along with it.
fn issuer_of(credentials: &Credentials) -> Option<CertificateDer<'static>> {
    let leaf = credentials.chain.first()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf).ok()?;
    credentials
        .cas
        .iter()
        .find(|ca| {
            x509_parser::parse_x509_certificate(ca)
                .is_ok_and(|(_, ca)| ca.subject().as_raw() == leaf.issuer().as_raw())
        })
        .cloned()
}

/// What identifies a version of some files without reading them.
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Fingerprint {
    paths
        .into_iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn load(files: &TlsFiles, peer: &str) -> Result<Credentials, String> {
    let credentials = Credentials::load(files).map_err(|e| e.to_string())?;
    credentials.verify_own_chain().map_err(|e| match e {
        PkiError::OutsideValidity(dates) => dates,
        other => format!("the certificate does not fit the CA: {other}"),
    })?;
    match identity_of(&credentials.chain[0]) {
        Ok(Identity::Peer(name)) if name == peer => Ok(credentials),
        other => Err(format!(
            "the new certificate does not name peer {peer:?} ({other:?})"
        )),
    }
}

/// Where a gateway's TLS set comes from, and the one place that rebuilds and publishes it.
#[derive(Clone)]
pub struct TlsSource {
    inner: Arc<SourceInner>,
}

struct SourceInner {
    files: TlsFiles,
    peer: String,
    /// The gateway's own copy of its revocation lists.
    stored: Option<PathBuf>,
    /// Revocation list files followed (the issuing gateway's authority).
    followed: Vec<PathBuf>,
    state: Mutex<SourceState>,
    tx: watch::Sender<Arc<GatewayTls>>,
}

struct SourceState {
    credentials: Credentials,
    /// The version of the certificate files in force.
    applied: Fingerprint,
    revocations: Arc<Revocations>,
    /// Why the certificate files on disk, which differ from those in force, were refused.
    rejected: Option<String>,
}

impl TlsSource {
    /// A source for `credentials` (already loaded and checked from `files`), keeping its
    /// revocation lists in `stored` and following the list files `followed`.
    pub fn start(
        files: TlsFiles,
        peer: String,
        credentials: Credentials,
        stored: Option<PathBuf>,
        followed: Vec<PathBuf>,
    ) -> Result<(TlsSource, watch::Receiver<Arc<GatewayTls>>), PkiError> {
        let mut revocations = Revocations::default();
        for path in stored.iter().chain(&followed) {
            if let Ok(pem) = std::fs::read(path)
                && let Err(e) = revocations.take_pem(&pem, &credentials.cas)
            {
                tracing::warn!(path = %path.display(), error = %e, "revocation lists not used");
            }
        }
        // A placeholder until the set that can take lists (it needs the source) is published.
        let first = GatewayTls::new(&credentials)?;
        let (tx, mut rx) = watch::channel(Arc::new(first));
        let applied = fingerprint([&files.ca, &files.cert, &files.key]);
        let inner = Arc::new(SourceInner {
            files,
            peer,
            stored,
            followed,
            state: Mutex::new(SourceState {
                credentials,
                applied,
                revocations: Arc::new(revocations),
                rejected: None,
            }),
            tx,
        });
        inner.publish(&inner.state())?;
        // The published set is the first one its readers see, not a change.
        rx.borrow_and_update();
        Ok((TlsSource { inner }, rx))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<GatewayTls>> {
        self.inner.tx.subscribe()
    }

    /// See [`GatewayTls::offer_revocations`].
    pub fn offer(&self, pem: &[u8]) -> Result<Taken, PkiError> {
        self.inner.offer(pem)
    }

    /// Loads the certificate files now (after a renewal wrote them) and puts them in force.
    pub fn reload_now(&self) -> Result<(), String> {
        self.inner.reload().map(|_| ())
    }

    /// Follows the certificate files and the followed list files until `shutdown` flips.
    pub async fn watch(self, mut shutdown: watch::Receiver<bool>) {
        let inner = &self.inner;
        let mut lists = fingerprint(&inner.followed);
        let mut reported: Option<Fingerprint> = None;
        let mut files_due = tokio::time::Instant::now() + RELOAD_INTERVAL;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LIST_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let now_lists = fingerprint(&inner.followed);
            if now_lists != lists {
                lists = now_lists;
                for path in &inner.followed {
                    if let Ok(pem) = std::fs::read(path)
                        && let Err(e) = inner.offer(&pem)
                    {
                        tracing::warn!(path = %path.display(), error = %e, "revocation list not taken");
                    }
                }
            }
            if tokio::time::Instant::now() < files_due {
                continue;
            }
            files_due = tokio::time::Instant::now() + RELOAD_INTERVAL;
            let now = inner.cert_fingerprint();
            {
                let mut state = inner.state();
                if now == state.applied {
                    // The files in force are back on disk.
                    state.rejected = None;
                    continue;
                }
            }
            match inner.reload() {
                Ok(true) => {
                    tracing::info!(cert = %inner.files.cert.display(), "certificates reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    // Report each failing version once; files replaced one at a time pass here.
                    if reported.as_ref() != Some(&now) {
                        tracing::warn!(error = %e, "changed certificates not loaded yet; keeping the current ones");
                        reported = Some(now);
                    }
                    inner.state().rejected = Some(e);
                }
            }
        }
    }
}

impl SourceInner {
    fn cert_fingerprint(&self) -> Fingerprint {
        fingerprint([&self.files.ca, &self.files.cert, &self.files.key])
    }

    /// Loads the certificate files and publishes them if they changed; whether they did.
    fn reload(self: &Arc<Self>) -> Result<bool, String> {
        let now = self.cert_fingerprint();
        let credentials = load(&self.files, &self.peer)?;
        let mut state = self.state();
        if state.applied == now {
            return Ok(false);
        }
        let mut revocations = (*state.revocations).clone();
        // A CA that left the bundle (a rollover's end) leaves its list behind.
        revocations.retain_cas(&credentials.cas);
        let previous = std::mem::replace(&mut state.credentials, credentials);
        let previous_revocations = std::mem::replace(&mut state.revocations, Arc::new(revocations));
        if let Err(e) = self.publish(&state) {
            state.credentials = previous;
            state.revocations = previous_revocations;
            return Err(format!("the new certificates are not usable: {e}"));
        }
        state.applied = now;
        state.rejected = None;
        Ok(true)
    }

    fn state(&self) -> parking_lot::MutexGuard<'_, SourceState> {
        self.state.lock()
    }

    fn publish(self: &Arc<Self>, state: &SourceState) -> Result<(), PkiError> {
        let tls = GatewayTls::build(
            &state.credentials,
            state.revocations.clone(),
            Arc::downgrade(self),
        )?;
        self.tx.send_replace(Arc::new(tls));
        Ok(())
    }

    fn offer(self: &Arc<Self>, pem: &[u8]) -> Result<Taken, PkiError> {
        let mut state = self.state();
        let mut revocations = (*state.revocations).clone();
        if revocations.take_pem(pem, &state.credentials.cas)? == Taken::Nothing {
            return Ok(Taken::Nothing);
        }
        if let Some(path) = &self.stored {
            crate::authority::write_atomically(path, revocations.to_pem().as_bytes())?;
        }
        tracing::info!(
            lists = %revocations.summary(&state.credentials.cas),
            revoked = revocations.revoked_count(),
            "revocation lists updated"
        );
        state.revocations = Arc::new(revocations);
        self.publish(&state)?;
        Ok(Taken::Newer)
    }
}
