//! Who a verified certificate belongs to. Call only after the chain was verified against the
//! fabric CA (rustls does that during the handshake); this reads names, it does not check trust.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use crate::error::PkiError;
use crate::issue::ADMIN_URI_PREFIX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A gateway: its one DNS SAN, the peer name policies see.
    Peer(String),
    /// A management client.
    Admin(String),
}

/// The identity a leaf certificate carries: exactly one DNS SAN (a peer) or exactly one admin
/// URI SAN (an admin). Anything else is refused rather than guessed at.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Identity(format!("unparseable certificate: {e}")))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| PkiError::Identity(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| PkiError::Identity("certificate has no subjectAltName".into()))?;
    let mut dns = Vec::new();
    let mut admins = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::URI(u) => {
                if let Some(admin) = u.strip_prefix(ADMIN_URI_PREFIX) {
                    admins.push(admin.to_string());
                }
            }
            _ => {}
        }
    }
    match (dns.as_slice(), admins.as_slice()) {
        ([peer], []) => Ok(Identity::Peer(peer.clone())),
        ([], [admin]) => Ok(Identity::Admin(admin.clone())),
        _ => Err(PkiError::Identity(format!(
            "expected exactly one peer DNS name or one admin URI, found DNS {dns:?} and admin {admins:?}"
        ))),
    }
}

/// When `cert` expires, in seconds since the Unix epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64, PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Identity(format!("unparseable certificate: {e}")))?;
    Ok(x509.validity().not_after.timestamp())
}

/// When `cert` becomes valid, in seconds since the Unix epoch.
pub fn not_before(cert: &CertificateDer<'_>) -> Result<i64, PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Identity(format!("unparseable certificate: {e}")))?;
    Ok(x509.validity().not_before.timestamp())
}
