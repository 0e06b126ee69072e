//! rustls configurations for the fabric: TLS 1.3 only, aws-lc-rs, certificates verified against
//! the fabric CA in both directions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::PkiError;
use crate::files::read;

/// ALPN of the peer port's tunnel protocol version (2: framed, reusable tunnels); a gateway
/// refuses a handshake that offers none it speaks, so a mixed-version fabric fails loudly rather
/// than misreading bytes.
pub const PEER_ALPN: &[u8] = b"clusterlink/2";

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
        Ok(Credentials {
            roots: load_roots(&files.ca)?,
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
        verifier.verify_client_cert(leaf, intermediates, rustls_pki_types::UnixTime::now())?;
        Ok(())
    }
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
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
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
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(creds.roots.clone(), provider.clone())
            .build()
            .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    Ok(ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())?)
}

/// A client that verifies the server against the fabric and presents its own certificate.
pub fn mutual_client_config(creds: &Credentials) -> Result<ClientConfig, PkiError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(creds.roots.clone())
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())?)
}
