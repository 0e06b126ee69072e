//! rustls configurations for the fabric: TLS 1.3 only, aws-lc-rs, certificates verified against
//! the fabric CA in both directions, and against its revocation lists.
//!
//! No session is ever resumed. A resumed handshake skips the certificate check, so a session
//! would outlive the certificate that opened it (its expiry, its revocation); and gateways keep
//! their connections to each other warm, so a full handshake is rare and resumption saved little.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::PkiError;
use crate::files::read;
use crate::revocation::Revocations;

/// ALPN of the peer port's tunnel protocol version (2: framed, reusable tunnels); a gateway
/// refuses a handshake that offers none it speaks, so a mixed-version fabric fails loudly rather
/// than misreading bytes. (One that offers no ALPN at all is taken only from a Peer of protocol
/// go, the Go ClusterLink's gateways: `dataplane::go_tunnel`.)
pub const PEER_ALPN: &[u8] = b"clusterlink/2";
/// ALPN of joining and renewal on the issuing gateway's peer port (`dataplane::enroll`): the one
/// handshake the peer port takes without a client certificate, and only where it issues.
pub const ENROLL_ALPN: &[u8] = b"clusterlink-enroll/1";
/// ALPN of a dialed link (`dataplane::link`): one mutual-TLS connection kept open by a gateway
/// that others cannot reach, multiplexing tunnels of both directions (yamux). Each stream then
/// speaks the tunnel protocol of [`PEER_ALPN`].
pub const LINK_ALPN: &[u8] = b"clusterlink-link/1";

/// The one crypto provider the project uses, with TLS 1.3 suites only, AES-128-GCM first.
///
/// AES-128 gives 128-bit security like the P-256 keys and X25519 exchange around it. AES-256
/// costs more rounds per byte, and its suite's SHA-384 key schedule alone took a tenth of the
/// gateways' CPU when opening tunnels (profiled); it and ChaCha20 stay available.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..default_provider()
    })
}

/// Where a party's TLS material lives on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The fabric CA certificate.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// The layout `clusterlink create` writes: `<fabric>/cert.pem` and `<fabric>/<party>/…`.
    pub fn in_fabric(fabric_dir: &Path, party_dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: fabric_dir.join(crate::files::CERT_FILE),
            cert: party_dir.join(crate::files::CERT_FILE),
            key: party_dir.join(crate::files::KEY_FILE),
        }
    }
}

/// Loaded TLS material: fabric roots, our certificate chain and key.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub roots: Arc<RootCertStore>,
    /// The CA certificates of the trust bundle (one, or two during a CA rollover).
    pub cas: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Credentials {
    /// Loads the files, and checks that the key is the certificate's: a mismatched pair fails
    /// here, before a gateway binds or creates anything, not in its first handshake.
    pub fn load(files: &TlsFiles) -> Result<Credentials, PkiError> {
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(PkiError::KeyMismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                });
            }
            Err(e) => return Err(bad(&files.key, format!("not a usable private key: {e}"))),
        }
        let cas = load_certs(&files.ca)?;
        Ok(Credentials {
            roots: roots_of(&files.ca, &cas)?,
            cas,
            chain,
            key: Arc::new(key),
        })
    }
}

impl Credentials {
    /// Checks that our own certificate chains to `roots` and is valid now: a set whose files were
    /// replaced one at a time (a new CA, the old certificate) fails here rather than in handshakes.
    pub fn verify_own_chain(&self) -> Result<(), PkiError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
        let (leaf, intermediates) = self
            .chain
            .split_first()
            .ok_or_else(|| PkiError::Identity("no certificate".into()))?;
        verifier
            .verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())
            .map_err(dated)?;
        Ok(())
    }
}

/// A verification error, with a certificate's dates as dates rather than Unix seconds.
fn dated(e: rustls::Error) -> PkiError {
    match dates_of(&e) {
        Some(text) => PkiError::OutsideValidity(text),
        None => PkiError::Tls(e),
    }
}

/// What a certificate used outside its validity says, with its dates as dates; `None` for any
/// other error.
fn dates_of(e: &rustls::Error) -> Option<String> {
    use crate::status::{span, timestamp};
    let seconds = |t: &rustls_pki_types::UnixTime| i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
            time,
            not_after,
        }) => Some(format!(
            "the certificate expired at {} ({} ago)",
            timestamp(seconds(not_after)),
            span(seconds(time) - seconds(not_after))
        )),
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYetContext {
            time,
            not_before,
        }) => Some(format!(
            "the certificate is not valid before {} ({} from now; is this machine's clock right?)",
            timestamp(seconds(not_before)),
            span(seconds(not_before) - seconds(time))
        )),
        _ => None,
    }
}

/// A TLS handshake's error as an operator reads it: a certificate's dates as dates (rustls
/// writes Unix seconds), anything else as it is.
pub fn handshake_error_text(e: &std::io::Error) -> String {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(dates_of)
        .unwrap_or_else(|| e.to_string())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "contains no certificate".into()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| bad(path, format!("not a PEM private key: {e}")))
}

pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, PkiError> {
    roots_of(path, &load_certs(path)?)
}

fn roots_of(path: &Path, cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in cas {
        roots
            .add(cert.clone())
            .map_err(|e| bad(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

fn bad(path: &Path, reason: String) -> PkiError {
    PkiError::BadFile {
        path: path.to_owned(),
        reason,
    }
}

/// A server that requires a client certificate issued by the fabric.
pub fn mutual_server_config(creds: &Credentials) -> Result<ServerConfig, PkiError> {
    server_config(creds, &Revocations::default(), ClientCertificate::Required)
}

/// Whether a server asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificate {
    Required,
    /// A joining site has none yet; one that renews presents its current one.
    Optional,
}

/// A server verifying client certificates against the fabric and `revocations`.
pub fn server_config(
    creds: &Credentials,
    revocations: &Revocations,
    client: ClientCertificate,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(creds.roots.clone(), provider.clone())
            .with_crls(revocations.lists())
            // Only leaves are listed, and a CA new in a rollover has no list yet.
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    if client == ClientCertificate::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client that verifies the server against the fabric and presents its own certificate.
pub fn mutual_client_config(creds: &Credentials) -> Result<ClientConfig, PkiError> {
    client_config(creds, &Revocations::default())
}

/// A client verifying servers against the fabric and `revocations`.
pub fn client_config(
    creds: &Credentials,
    revocations: &Revocations,
) -> Result<ClientConfig, PkiError> {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        creds.roots.clone(),
        provider(),
    )
    .with_crls(revocations.lists())
    .only_check_end_entity_revocation()
    .allow_unknown_revocation_status()
    .build()
    .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A client for joining: it has no certificate yet, and trusts only a server whose chain ends in
/// the CA whose SHA-256 is `ca_sha256` (the token's pin) and whose certificate carries the name
/// the client connects to (the token's issuing gateway), so that no other gateway of the fabric
/// can stand in for the issuer. The server sends that CA with its chain
/// ([`crate::reload::GatewayTls::enrollment`]).
pub fn pinned_ca_client_config(ca_sha256: &str) -> Result<ClientConfig, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin: ca_sha256.to_ascii_lowercase(),
        }))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct PinnedCa {
    pin: String,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| crate::authority::sha256_hex(c.as_ref()) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the gateway at the token's address is not of the fabric the token pins (its CA's fingerprint differs)"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::UnixTime;
    use std::time::Duration;

    #[test]
    fn handshake_errors_give_certificate_dates_as_dates() {
        let at = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext {
            time: at(1_800_000_000 + 9 * 86_400),
            not_after: at(1_800_000_000),
        });
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, expired);
        assert_eq!(
            handshake_error_text(&io),
            "the certificate expired at 2027-01-15T08:00:00Z (9 days ago)"
        );
        let other = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(handshake_error_text(&other), "reset");
    }
}
