//! The fabric's ledger of issued certificates (`<fabric>/authority/issued.jsonl`): every peer
//! certificate the fabric signs is recorded, whether issued by the authority or made by
//! `clusterlink create peer-cert`, so that revoking a peer revokes all it holds.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::error::PkiError;
use crate::files::AUTHORITY_DIR;

const ISSUED_FILE: &str = "issued.jsonl";
const LOCK_FILE: &str = "lock";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct IssuedLine {
    pub serial: String,
    pub name: String,
    pub not_after: i64,
}

/// Adds a certificate made outside the authority (`clusterlink create peer-cert`) to the ledger
/// of `fabric_dir`, so that `revoke --peer` finds it.
pub fn record_created(fabric_dir: &Path, cert_pem: &str, name: &str) -> Result<(), PkiError> {
    let dir = fabric_dir.join(AUTHORITY_DIR);
    fs::create_dir_all(&dir).map_err(|source| PkiError::Write {
        path: dir.clone(),
        source,
    })?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| PkiError::Identity(format!("unreadable certificate: {e}")))?;
    let (serial, not_after) = serial_and_expiry(&der)?;
    let _lock = lock(&dir)?;
    record_issued(&dir, &serial, name, not_after)
}

pub(crate) fn lock(dir: &Path) -> Result<File, PkiError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| PkiError::Write {
            path: path.clone(),
            source,
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        PkiError::Write {
            path,
            source: e.into(),
        }
    })?;
    Ok(file)
}

pub(crate) fn record_issued(
    dir: &Path,
    serial: &[u8],
    name: &str,
    not_after: i64,
) -> Result<(), PkiError> {
    let path = dir.join(ISSUED_FILE);
    let line = serde_json::to_string(&IssuedLine {
        serial: hex(serial),
        name: name.to_string(),
        not_after,
    })
    .map_err(|e| PkiError::Identity(e.to_string()))?;
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        writeln!(file, "{line}")?;
        file.sync_all()
    };
    write().map_err(|source| PkiError::Write {
        path: path.clone(),
        source,
    })
}

pub(crate) fn read_issued(dir: &Path) -> Result<Vec<IssuedLine>, PkiError> {
    let path = dir.join(ISSUED_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(PkiError::Read { path, source }),
    };
    // A line torn by a crash is skipped: the certificate it names is revocable by serial.
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect())
}

/// The serial number (as encoded) and expiry (Unix seconds) of a certificate.
pub fn serial_and_expiry(cert: &CertificateDer<'_>) -> Result<(Vec<u8>, i64), PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Identity(format!("unparseable certificate: {e}")))?;
    Ok((
        x509.raw_serial().to_vec(),
        x509.validity().not_after.timestamp(),
    ))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
