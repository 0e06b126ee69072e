//! A joined site's identity on disk: the key it made itself, the certificate and trust bundle the
//! authority returned, and where to renew. It lives in the gateway's data directory:
//!
//! ```text
//! <data-dir>/tls/identity.pem    the certificate the authority issued and the key made here
//!                                (never sent anywhere), in one owner-only file replaced whole
//!                                at each renewal: a crash never leaves a key that does not
//!                                fit its certificate
//! <data-dir>/tls/ca.pem          the trust bundle, as the authority last gave it
//! <data-dir>/tls/pending-key.pem the key of a join not answered yet, reused when it is retried
//! <data-dir>/enrollment.json     the issuing gateway: its name and addresses
//! ```

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, KeyPair};
use serde::{Deserialize, Serialize};

use crate::authority::{Enrolled, write_atomically};
use crate::error::PkiError;
use crate::tls::TlsFiles;

const TLS_DIR: &str = "tls";
const ENROLLMENT_FILE: &str = "enrollment.json";
const CA_FILE: &str = "ca.pem";
const IDENTITY_FILE: &str = "identity.pem";
const PENDING_KEY_FILE: &str = "pending-key.pem";

/// Where a joined site renews its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    /// This site's peer name.
    pub name: String,
    /// The issuing gateway's peer name (its certificate's).
    pub issuer: String,
    /// The issuing gateway's peer port addresses (host:port).
    pub issuer_at: Vec<String>,
}

/// The files of a joined site under `data_dir`.
pub fn tls_files(data_dir: &Path) -> TlsFiles {
    let dir = data_dir.join(TLS_DIR);
    TlsFiles {
        ca: dir.join(CA_FILE),
        cert: dir.join(IDENTITY_FILE),
        key: dir.join(IDENTITY_FILE),
    }
}

fn enrollment_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ENROLLMENT_FILE)
}

/// The site's enrollment, if it joined.
pub fn enrollment(data_dir: &Path) -> Result<Option<Enrollment>, PkiError> {
    let path = enrollment_path(data_dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| PkiError::BadFile {
                path,
                reason: format!("not an enrollment record: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read { path, source }),
    }
}

/// A new P-256 key and a certificate request for `name` signed with it. The key stays here.
pub fn new_request(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    request_for(name, key)
}

fn request_for(name: &str, key: KeyPair) -> Result<(String, String), PkiError> {
    crate::issue::check_peer_name(name)?;
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The key and request of a join: the key of an earlier attempt whose answer never came, if
/// any (the authority gives that key its certificate again), else a new one, kept until the join
/// is answered.
pub fn join_request(data_dir: &Path, name: &str) -> Result<(String, String), PkiError> {
    let path = data_dir.join(TLS_DIR).join(PENDING_KEY_FILE);
    if let Ok(pem) = fs::read_to_string(&path)
        && let Ok(key) = KeyPair::from_pem(&pem)
    {
        return request_for(name, key);
    }
    let (key_pem, csr) = new_request(name)?;
    make_dir(&data_dir.join(TLS_DIR))?;
    crate::files::replace_private(&path, key_pem.as_bytes())?;
    Ok((key_pem, csr))
}

fn make_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Writes the identity a join returned, and the enrollment; refuses if the site already has one.
pub fn write_joined(
    data_dir: &Path,
    enrollment: &Enrollment,
    key_pem: &str,
    enrolled: &Enrolled,
) -> Result<TlsFiles, PkiError> {
    let files = tls_files(data_dir);
    if files.cert.exists() || enrollment_path(data_dir).exists() {
        return Err(PkiError::AlreadyExists { path: files.cert });
    }
    write_identity(data_dir, key_pem, enrolled)?;
    let record = serde_json::to_vec_pretty(enrollment)
        .map_err(|e| PkiError::Identity(format!("cannot encode the enrollment: {e}")))?;
    write_atomically(&enrollment_path(data_dir), &record)?;
    let _ = fs::remove_file(data_dir.join(TLS_DIR).join(PENDING_KEY_FILE));
    Ok(files)
}

/// Replaces the site's key, certificate and trust bundle (a renewal): the bundle first, then
/// the certificate and its key together, each file whole.
pub fn write_identity(data_dir: &Path, key_pem: &str, enrolled: &Enrolled) -> Result<(), PkiError> {
    let files = tls_files(data_dir);
    make_dir(&data_dir.join(TLS_DIR))?;
    write_atomically(&files.ca, enrolled.trust_bundle.as_bytes())?;
    let identity = format!("{}{key_pem}", enrolled.certificate);
    crate::files::replace_private(&files.cert, identity.as_bytes())
}
