//! The fabric's issuing authority: join tokens, certificates issued from a site's own key
//! (joining and renewal), the ledger of what was issued, and revocation.
//!
//! It lives with the fabric CA's key, in `<fabric>/authority/`, shared by the CA holder's
//! `clusterlink` (tokens, revocation) and the gateway it runs with `--issuer` (redemption and
//! renewal on its peer port). A file lock orders the two.
//!
//! - `issued.jsonl`: one line per certificate issued (serial, name, expiry), so that revoking a
//!   peer revokes every certificate it still holds, not only the newest.
//! - `redeemed/<token id>`: created exclusively when a token is redeemed: a token is redeemed
//!   once, whatever the number of processes or racing requests.
//! - `revocations.pem`: the fabric's revocation list, signed by the CA, numbered upwards.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use rcgen::{
    CertificateParams, CertificateRevocationListParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, KeyIdMethod, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::PkiError;
use crate::files::{CERT_FILE, KEY_FILE, read_string};
use crate::issue::{FabricCa, Validity, check_peer_name};
use crate::revocation::{Revocations, pem_of};

pub use crate::files::AUTHORITY_DIR;
pub use crate::ledger::{hex, record_created, serial_and_expiry};
use crate::ledger::{lock, read_issued, record_issued};
pub use crate::status::timestamp;
/// The trust bundle handed to joining and renewing sites when present (the old and the new CA
/// during a rollover); otherwise the fabric's own CA certificate.
pub const BUNDLE_FILE: &str = "bundle.pem";
/// The fabric's revocation list, inside [`AUTHORITY_DIR`].
pub const REVOCATIONS_FILE: &str = "revocations.pem";
const REDEEMED_DIR: &str = "redeemed";
/// Which gateway serves this authority (its peer name), written when it starts with `--issuer`.
const ISSUER_FILE: &str = "issuer";
/// A peer gets at most this many certificates per lifetime: renewal takes one, and retries after
/// lost answers a few more; past it a peer (or a thief of its key) is renewing in a loop, and
/// would grow the ledger and the revocation list without bound.
const CERTIFICATES_PER_LIFETIME: usize = 8;

/// Certificates issued by the authority last a day by default: a gateway renews at two thirds
/// (16 h), so the issuer may be away for 8 h without harm, and a stolen key that revocation
/// missed dies within a day (Linkerd's choice too).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shorter lifetimes leave too little time to renew across a restart or a slow network.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);
/// A token unused for 15 minutes expires (as Skupper's): long enough to carry it to the new site.
pub const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(15 * 60);
/// Longer-lived tokens are secrets lying around; a week covers shipping a box to a site.
pub const MAX_TOKEN_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);
/// What a token says it is, first, so that it is recognised in a shell history or a Secret.
const TOKEN_PREFIX: &str = "cljoin1.";
/// The MAC key is derived from the CA key under this label, so it is good for nothing else.
const TOKEN_KEY_LABEL: &[u8] = b"clusterlink join token v1";
/// A token longer than this is not one of ours (real ones are about 300 characters).
const MAX_TOKEN_BYTES: usize = 4096;
/// A CSR longer than this is refused unread (real ones are about 400 bytes of PEM).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// What a join token carries. Only the authority can make one (it is MACed with a key derived
/// from the CA key); the joining site reads it unverified, to know where to go and whom to trust.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Random, names the token in the ledger once redeemed.
    pub id: String,
    /// The peer name the certificate will carry.
    pub name: String,
    /// Unix seconds after which it is refused.
    pub expires: i64,
    /// SHA-256 of the fabric CA certificate (DER), hex: the joining site trusts only that CA.
    pub ca_sha256: String,
    /// The issuing gateway's peer name: the joining site accepts no other server, so that a
    /// thief of some other gateway's key cannot stand in for it.
    pub issuer: String,
    /// Where the issuing gateway's peer port is (host:port), tried in order.
    pub redeem_at: Vec<String>,
}

impl JoinToken {
    /// Reads a token's contents without checking it (the joining site cannot; the authority
    /// does, in [`Authority::redeem`]).
    pub fn read(token: &str) -> Result<JoinToken, EnrollError> {
        let (payload, _) = split_token(token)?;
        serde_json::from_slice(&payload).map_err(|_| EnrollError::Forged)
    }
}

fn split_token(token: &str) -> Result<(Vec<u8>, Vec<u8>), EnrollError> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(EnrollError::Forged);
    }
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(EnrollError::Forged)?;
    let (payload, mac) = rest.split_once('.').ok_or(EnrollError::Forged)?;
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok((
        b64.decode(payload).map_err(|_| EnrollError::Forged)?,
        b64.decode(mac).map_err(|_| EnrollError::Forged)?,
    ))
}

/// Why a join or a renewal was refused; the message goes back to the site that asked.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "the join token is forged or damaged: it was not made by this fabric's CA (copy it again, whole, or make a new one with `clusterlink create join-token`)"
    )]
    Forged,
    #[error("the join token expired at {at} (make a new one with `clusterlink create join-token`)")]
    Expired { at: String },
    #[error(
        "the join token was already redeemed, at {at}; a token joins one site once (make a new one with `clusterlink create join-token`)"
    )]
    Reused { at: String },
    #[error("bad certificate request: {0}")]
    BadRequest(String),
    #[error("the certificate presented for renewal is revoked; the site needs a new join token")]
    Revoked,
    #[error(
        "{count} certificates were issued to this peer within the last {lifetime} s, the most one peer gets: it is renewing in a loop"
    )]
    TooManyRenewals { count: usize, lifetime: u64 },
    #[error("the issuing authority failed: {0}")]
    Authority(#[from] PkiError),
}

impl EnrollError {
    /// A short machine-readable reason, for the wire.
    pub fn reason(&self) -> &'static str {
        match self {
            EnrollError::Forged => "TokenForged",
            EnrollError::Expired { .. } => "TokenExpired",
            EnrollError::Reused { .. } => "TokenReused",
            EnrollError::BadRequest(_) => "BadRequest",
            EnrollError::Revoked => "Revoked",
            EnrollError::TooManyRenewals { .. } => "TooManyRenewals",
            EnrollError::Authority(_) => "AuthorityFailed",
        }
    }
}

/// What a joining or renewing site receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub certificate: String,
    /// The CA certificates to trust (one, or two during a rollover).
    pub trust_bundle: String,
    /// The fabric's revocation list, if any certificate was ever revoked.
    #[serde(default)]
    pub revocations: String,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// Every certificate the ledger holds for this peer that has not expired.
    Peer(String),
    /// One certificate, by serial number (as printed by `openssl x509 -serial`).
    Serial(Vec<u8>),
}

/// What a revocation did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// Serial numbers newly revoked (hex).
    pub serials: Vec<String>,
    /// The new list's number.
    pub number: u64,
    pub path: PathBuf,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("dir", &self.dir).finish()
    }
}

/// The issuing authority of a fabric directory.
pub struct Authority {
    dir: PathBuf,
    fabric: PathBuf,
    ca: FabricCa,
    ca_der: CertificateDer<'static>,
    token_key: aws_lc_rs::hmac::Key,
    lifetime: Duration,
}

impl Authority {
    /// Opens the authority of `fabric_dir` (it needs the CA key), issuing certificates that
    /// last `lifetime`.
    pub fn open(fabric_dir: &Path, lifetime: Duration) -> Result<Authority, PkiError> {
        if lifetime < MIN_LIFETIME {
            return Err(PkiError::Validity(format!(
                "a certificate lifetime of {}s is shorter than the {}s a gateway needs to renew",
                lifetime.as_secs(),
                MIN_LIFETIME.as_secs()
            )));
        }
        let ca = FabricCa::load(fabric_dir)?;
        let key_pem = read_string(&fabric_dir.join(KEY_FILE))?;
        let key_der =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
                PkiError::BadFile {
                    path: fabric_dir.join(KEY_FILE),
                    reason: format!("not a PEM private key: {e}"),
                }
            })?;
        let derive = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, TOKEN_KEY_LABEL);
        let token_key = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            aws_lc_rs::hmac::sign(&derive, key_der.secret_der()).as_ref(),
        );
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).map_err(|e| {
            PkiError::BadFile {
                path: fabric_dir.join(CERT_FILE),
                reason: format!("not a PEM certificate: {e}"),
            }
        })?;
        let dir = fabric_dir.join(AUTHORITY_DIR);
        fs::create_dir_all(dir.join(REDEEMED_DIR)).map_err(|source| PkiError::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Authority {
            dir,
            fabric: fabric_dir.to_owned(),
            ca,
            ca_der,
            token_key,
            lifetime,
        })
    }

    /// Records that the gateway of peer `name` serves this authority: tokens name it, and a
    /// joining site accepts no other server.
    pub fn serve_as(&self, name: &str) -> Result<(), PkiError> {
        check_peer_name(name)?;
        write_atomically(&self.dir.join(ISSUER_FILE), name.as_bytes())
    }

    /// The fabric's revocation list file, which the issuing gateway watches.
    pub fn revocations_path(&self) -> PathBuf {
        self.dir.join(REVOCATIONS_FILE)
    }

    /// SHA-256 of the CA certificate, hex: the pin a joining site checks.
    pub fn ca_sha256(&self) -> String {
        sha256_hex(self.ca_der.as_ref())
    }

    /// A one-time token that lets a site join as `name` until `life` has passed, redeemed at
    /// `redeem_at` (the issuing gateway's peer port).
    pub fn create_token(
        &self,
        name: &str,
        life: Duration,
        redeem_at: Vec<String>,
    ) -> Result<String, PkiError> {
        check_peer_name(name)?;
        let issuer_file = self.dir.join(ISSUER_FILE);
        let issuer = match fs::read_to_string(&issuer_file) {
            Ok(issuer) => issuer.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PkiError::Validity(
                    "no gateway issues for this fabric yet: start the one at the --at address with `cl-gateway --peer NAME --issuer` first".into(),
                ));
            }
            Err(source) => {
                return Err(PkiError::Read {
                    path: issuer_file,
                    source,
                });
            }
        };
        if life.is_zero() || life > MAX_TOKEN_LIFE {
            return Err(PkiError::Validity(format!(
                "a token lives between 1 s and {} days",
                MAX_TOKEN_LIFE.as_secs() / 86_400
            )));
        }
        if redeem_at.is_empty() {
            return Err(PkiError::Validity(
                "say where the token is redeemed: the issuing gateway's peer address (--at HOST:PORT)"
                    .into(),
            ));
        }
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id)
            .map_err(|_| PkiError::Validity("no randomness for the token".into()))?;
        let token = JoinToken {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            name: name.to_string(),
            expires: now() + i64::try_from(life.as_secs()).unwrap_or(i64::MAX),
            ca_sha256: self.ca_sha256(),
            issuer,
            redeem_at,
        };
        let payload = serde_json::to_vec(&token)
            .map_err(|e| PkiError::Validity(format!("cannot encode the token: {e}")))?;
        let mac = aws_lc_rs::hmac::sign(&self.token_key, &payload);
        let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        Ok(format!(
            "{TOKEN_PREFIX}{}.{}",
            b64.encode(&payload),
            b64.encode(mac.as_ref())
        ))
    }

    /// Redeems `token` for a certificate on the key of `csr_pem`: refused if the token is forged,
    /// expired or already redeemed (checked in that order), or the request is not a valid CSR.
    pub fn redeem(&self, token: &str, csr_pem: &str) -> Result<Enrolled, EnrollError> {
        let (payload, mac) = split_token(token)?;
        aws_lc_rs::hmac::verify(&self.token_key, &payload, &mac)
            .map_err(|_| EnrollError::Forged)?;
        let token: JoinToken = serde_json::from_slice(&payload).map_err(|_| EnrollError::Forged)?;
        // The id names a file: only the hex the authority writes, even under a valid MAC.
        if token.id.len() != 32 || !token.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EnrollError::Forged);
        }
        if token.expires <= now() {
            return Err(EnrollError::Expired {
                at: timestamp(token.expires),
            });
        }
        let csr = read_csr(csr_pem)?;
        let key = sha256_hex(rcgen::PublicKeyData::der_bytes(&csr.public_key));
        let _lock = self.lock()?;
        // Exclusive creation: of two redemptions racing, exactly one creates the file. It names
        // the key it was redeemed for: the same site asking again for the same key (its answer
        // was lost) gets a certificate again; anyone else is refused.
        let redeemed = self.dir.join(REDEEMED_DIR).join(&token.id);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&redeemed)
        {
            Ok(mut file) => {
                let _ = writeln!(file, "{} {key}", now());
                let _ = file.sync_all();
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let record = fs::read_to_string(&redeemed).unwrap_or_default();
                let mut fields = record.split_whitespace();
                let at = fields.next().and_then(|t| t.parse().ok());
                if fields.next() != Some(key.as_str()) {
                    let at = at.map_or_else(|| "an earlier time".into(), timestamp);
                    return Err(EnrollError::Reused { at });
                }
            }
            Err(source) => {
                return Err(PkiError::Write {
                    path: redeemed,
                    source,
                }
                .into());
            }
        }
        self.issue(&token.name, &csr)
    }

    /// A new certificate for `name`, authenticated by its current certificate `current`, on the
    /// key of `csr_pem`. Refused if the authority's own list (newer, perhaps, than the one the
    /// handshake was checked against) revokes `current`, or if `name` was given
    /// [`CERTIFICATES_PER_LIFETIME`] certificates within the last lifetime.
    pub fn renew(
        &self,
        name: &str,
        current: &CertificateDer<'_>,
        csr_pem: &str,
    ) -> Result<Enrolled, EnrollError> {
        let csr = read_csr(csr_pem)?;
        let _lock = self.lock()?;
        if let Ok(pem) = fs::read(self.revocations_path())
            && Revocations::from_pem(&pem, std::slice::from_ref(&self.ca_der))?.is_revoked(current)
        {
            return Err(EnrollError::Revoked);
        }
        // Issued within the last lifetime is what has not expired yet.
        let now = now();
        let recent = self
            .issued()?
            .iter()
            .filter(|l| l.name == name && l.not_after > now)
            .count();
        if recent >= CERTIFICATES_PER_LIFETIME {
            return Err(EnrollError::TooManyRenewals {
                count: recent,
                lifetime: self.lifetime.as_secs(),
            });
        }
        self.issue(name, &csr)
    }

    fn issue(
        &self,
        name: &str,
        csr: &CertificateSigningRequestParams,
    ) -> Result<Enrolled, EnrollError> {
        let mut params = CertificateParams::new(vec![name.to_string()]).map_err(PkiError::from)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let validity = Validity::lasting(self.lifetime)?;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let cert = self
            .ca
            .sign_key(&params, &csr.public_key)
            .map_err(EnrollError::Authority)?;
        self.record(&cert, name)?;
        Ok(Enrolled {
            certificate: cert,
            trust_bundle: self.trust_bundle()?,
            revocations: fs::read_to_string(self.revocations_path()).unwrap_or_default(),
        })
    }

    /// The CA certificates handed to sites: `bundle.pem` beside the CA when present.
    pub fn trust_bundle(&self) -> Result<String, PkiError> {
        let bundle = self.fabric.join(BUNDLE_FILE);
        if bundle.exists() {
            read_string(&bundle)
        } else {
            Ok(self.ca.cert_pem().to_string())
        }
    }

    fn record(&self, cert_pem: &str, name: &str) -> Result<(), PkiError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Identity(format!("issued an unreadable certificate: {e}")))?;
        let (serial, not_after) = serial_and_expiry(&der)?;
        record_issued(&self.dir, &serial, name, not_after)
    }

    /// Revokes `target`: writes a new revocation list holding it and everything revoked before
    /// (less certificates long expired), numbered one up.
    pub fn revoke(&self, target: &RevokeTarget) -> Result<Revoked, PkiError> {
        let _lock = self.lock()?;
        let issued = self.issued()?;
        let wanted: Vec<Vec<u8>> = match target {
            RevokeTarget::Serial(serial) => vec![serial.clone()],
            RevokeTarget::Peer(name) => {
                let now = now();
                let serials: Vec<_> = issued
                    .iter()
                    .filter(|l| &l.name == name && l.not_after > now)
                    .filter_map(|l| parse_hex(&l.serial))
                    .collect();
                if serials.is_empty() {
                    return Err(PkiError::Revocation(format!(
                        "the ledger holds no unexpired certificate of peer {name:?}; revoke one made before the ledger by its serial (--serial, or --cert FILE)"
                    )));
                }
                serials
            }
        };
        let path = self.revocations_path();
        let held = match fs::read(&path) {
            Ok(pem) => Revocations::from_pem(&pem, std::slice::from_ref(&self.ca_der))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Revocations::default(),
            Err(source) => return Err(PkiError::Read { path, source }),
        };
        // Unix time when it is higher: a list file deleted or restored from a backup never
        // restarts the numbering below what gateways already hold.
        let number =
            (held.number_for(&self.ca_der).unwrap_or(0) + 1).max(u64::try_from(now()).unwrap_or(0));
        // Entries of certificates expired more than a day ago are dropped: expiry refuses them.
        let expired_before = now() - 86_400;
        let gone: std::collections::HashSet<Vec<u8>> = issued
            .iter()
            .filter(|l| l.not_after < expired_before)
            .filter_map(|l| parse_hex(&l.serial))
            .collect();
        let mut serials: Vec<Vec<u8>> = held
            .serials_of(&self.ca_der)
            .into_iter()
            .filter(|s| !gone.contains(s))
            .collect();
        let mut added = Vec::new();
        for serial in wanted {
            if !serials.contains(&serial) {
                added.push(hex(&serial));
                serials.push(serial);
            }
        }
        let now_t = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now_t,
            // Gateways do not act on nextUpdate (a list stays in force until a newer one); a
            // far date keeps other tools from calling it stale.
            next_update: now_t + time::Duration::days(3650),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now_t,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let der = self.ca.sign_crl(&params)?;
        let pem = pem_of(&der);
        if pem.len() > crate::revocation::MAX_LIST_BYTES {
            return Err(PkiError::Revocation(format!(
                "the list would hold {} certificates, more than gateways take ({} bytes at most)",
                serials.len(),
                crate::revocation::MAX_LIST_BYTES
            )));
        }
        write_atomically(&path, pem.as_bytes())?;
        Ok(Revoked {
            serials: added,
            number,
            path,
        })
    }

    fn issued(&self) -> Result<Vec<crate::ledger::IssuedLine>, PkiError> {
        read_issued(&self.dir)
    }

    fn lock(&self) -> Result<File, PkiError> {
        lock(&self.dir)
    }
}

fn read_csr(pem: &str) -> Result<CertificateSigningRequestParams, EnrollError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(EnrollError::BadRequest(format!(
            "the request is larger than {MAX_CSR_BYTES} bytes"
        )));
    }
    CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| EnrollError::BadRequest(format!("not a signed PKCS#10 request: {e}")))
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial)
        .map_err(|_| PkiError::Validity("no randomness for a serial number".into()))?;
    // Positive and of full length, so its encoding is these 16 bytes.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&serial))
}

/// Writes `path` whole or not at all: a reader never sees half a list.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    crate::files::replace_public(path, contents)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

/// Hex digits (colons allowed, as `openssl` prints them) to bytes.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) || digits.len() > 64 {
        return None;
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2)?, 16).ok())
        .collect()
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::issue::create_fabric;
    use crate::revocation::{Summary, Taken};
    use crate::site::new_request;

    fn authority() -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let fabric = create_fabric(dir.path(), "f", Validity::days(1).unwrap()).unwrap();
        let authority = Authority::open(&fabric.dir, DEFAULT_LIFETIME).unwrap();
        authority.serve_as("hub").unwrap();
        (dir, authority)
    }

    #[test]
    fn a_token_is_redeemed_once_for_its_name_on_the_sites_own_key() {
        let (_dir, authority) = authority();
        let token = authority
            .create_token("site3", DEFAULT_TOKEN_LIFE, vec!["10.0.0.1:443".into()])
            .unwrap();
        let read = JoinToken::read(&token).unwrap();
        assert_eq!(read.name, "site3");
        assert_eq!(read.ca_sha256, authority.ca_sha256());
        let (key_pem, csr) = new_request("site3").unwrap();
        let enrolled = authority.redeem(&token, &csr).unwrap();
        let cert = CertificateDer::from_pem_slice(enrolled.certificate.as_bytes()).unwrap();
        assert_eq!(
            crate::identity_of(&cert).unwrap(),
            crate::Identity::Peer("site3".into())
        );
        // The certificate is for the key the site made.
        let chain = vec![cert];
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        rustls::sign::CertifiedKey::from_der(chain, key, &crate::tls::provider()).unwrap();
        let (_, another_key) = new_request("site3").unwrap();
        let again = authority.redeem(&token, &another_key).unwrap_err();
        assert!(matches!(again, EnrollError::Reused { .. }), "{again}");
    }

    #[test]
    fn forged_and_expired_tokens_and_bad_requests_are_told_apart() {
        let (_dir, authority) = authority();
        let (_, csr) = new_request("site3").unwrap();
        let (_other_dir, other) = self::authority();
        let foreign = other
            .create_token("site3", DEFAULT_TOKEN_LIFE, vec!["h:1".into()])
            .unwrap();
        assert!(matches!(
            authority.redeem(&foreign, &csr),
            Err(EnrollError::Forged)
        ));
        for junk in [
            "",
            "cljoin1.",
            "cljoin1.a.b",
            "nonsense",
            &"x".repeat(10_000),
        ] {
            assert!(matches!(
                authority.redeem(junk, &csr),
                Err(EnrollError::Forged)
            ));
        }
        let token = authority
            .create_token("site3", Duration::from_secs(1), vec!["h:1".into()])
            .unwrap();
        let expires = JoinToken::read(&token).unwrap().expires;
        while now() <= expires {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(matches!(
            authority.redeem(&token, &csr),
            Err(EnrollError::Expired { .. })
        ));
        let token = authority
            .create_token("site4", DEFAULT_TOKEN_LIFE, vec!["h:1".into()])
            .unwrap();
        // A bad request does not use the token up.
        assert!(matches!(
            authority.redeem(&token, "not a csr"),
            Err(EnrollError::BadRequest(_))
        ));
        assert!(authority.redeem(&token, &csr).is_ok());
        assert!(
            authority
                .create_token("site5", MAX_TOKEN_LIFE * 2, vec!["h:1".into()])
                .is_err()
        );
        assert!(
            authority
                .create_token("site5", DEFAULT_TOKEN_LIFE, vec![])
                .is_err()
        );
    }

    #[test]
    fn revoking_a_peer_revokes_every_certificate_it_holds_in_a_newer_list() {
        let (_dir, authority) = authority();
        let (_, csr) = new_request("site3").unwrap();
        let der = |e: &Enrolled| CertificateDer::from_pem_slice(e.certificate.as_bytes()).unwrap();
        let token = authority
            .create_token("site3", DEFAULT_TOKEN_LIFE, vec!["h:1".into()])
            .unwrap();
        let first = authority.redeem(&token, &csr).unwrap();
        let second = authority.renew("site3", &der(&first), &csr).unwrap();
        let token = authority
            .create_token("site4", DEFAULT_TOKEN_LIFE, vec!["h:1".into()])
            .unwrap();
        let other = authority.redeem(&token, &csr).unwrap();
        let revoked = authority
            .revoke(&RevokeTarget::Peer("site3".into()))
            .unwrap();
        assert_eq!(revoked.serials.len(), 2);
        // Numbered at least by the clock: a restored older file never numbers lower.
        assert!(revoked.number >= u64::try_from(now()).unwrap() - 5);
        let cas = vec![authority.ca_der.clone()];
        let pem = fs::read(&revoked.path).unwrap();
        let mut held = Revocations::from_pem(&pem, &cas).unwrap();
        assert!(held.is_revoked(&der(&first)) && held.is_revoked(&der(&second)));
        assert!(!held.is_revoked(&der(&other)));
        let (serial, _) = serial_and_expiry(&der(&other)).unwrap();
        let again = authority.revoke(&RevokeTarget::Serial(serial)).unwrap();
        assert!(again.number > revoked.number);
        let newer = fs::read(&again.path).unwrap();
        let before = held.summary(&cas);
        assert_eq!(held.take_pem(&newer, &cas).unwrap(), Taken::Newer);
        assert!(held.summary(&cas).is_ahead_of(&before));
        assert!(held.is_revoked(&der(&other)) && held.is_revoked(&der(&first)));
        // An older list changes nothing.
        assert_eq!(held.take_pem(&pem, &cas).unwrap(), Taken::Nothing);
        assert_eq!(
            Summary::parse(&held.summary(&cas).to_string()),
            Some(held.summary(&cas))
        );
        assert!(Summary::parse("zz:1").is_none());
        assert!(
            authority
                .revoke(&RevokeTarget::Peer("nobody".into()))
                .is_err()
        );
        // A revoked certificate renews nothing, even before its gateway has the list.
        assert!(matches!(
            authority.renew("site3", &der(&second), &csr),
            Err(EnrollError::Revoked)
        ));
    }

    #[test]
    fn a_peer_renewing_in_a_loop_is_stopped_and_a_lost_answer_is_given_again() {
        let (_dir, authority) = authority();
        let (_, csr) = new_request("site3").unwrap();
        let token = authority
            .create_token("site3", DEFAULT_TOKEN_LIFE, vec!["h:1".into()])
            .unwrap();
        let joined = authority.redeem(&token, &csr).unwrap();
        // The same key asking again (its answer was lost) is answered again; another is not.
        assert!(authority.redeem(&token, &csr).is_ok());
        let (_, other_key) = new_request("site3").unwrap();
        assert!(matches!(
            authority.redeem(&token, &other_key),
            Err(EnrollError::Reused { .. })
        ));
        let current = CertificateDer::from_pem_slice(joined.certificate.as_bytes()).unwrap();
        let mut refused = None;
        for _ in 0..CERTIFICATES_PER_LIFETIME {
            if let Err(e) = authority.renew("site3", &current, &csr) {
                refused = Some(e);
                break;
            }
        }
        assert!(
            matches!(refused, Some(EnrollError::TooManyRenewals { .. })),
            "{refused:?}"
        );
    }
}
