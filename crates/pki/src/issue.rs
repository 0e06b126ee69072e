//! Creating the fabric CA and the certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::error::PkiError;
use crate::files::{ADMINS_DIR, CERT_FILE, KEY_FILE};
use crate::files::{read_string, write_pair};

/// A fabric CA outlives many rounds of peer certificates.
pub const DEFAULT_CA_VALIDITY_DAYS: u32 = 3650;
/// Leaf certificates are rotated yearly by default; gateways pick up replacements without restart.
pub const DEFAULT_LEAF_VALIDITY_DAYS: u32 = 365;
/// Certificates start a little in the past so sites whose clocks disagree slightly accept them.
const CLOCK_SKEW: Duration = Duration::minutes(5);
/// The URI SAN prefix that marks a management (admin) client certificate.
pub const ADMIN_URI_PREFIX: &str = "clusterlink://admin/";

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From now (less a little clock skew) for `days` days.
    pub fn days(days: u32) -> Result<Validity, PkiError> {
        if days == 0 {
            return Err(PkiError::Validity("must be at least 1 day".into()));
        }
        if days > 100 * 366 {
            return Err(PkiError::Validity(format!(
                "{days} days is more than 100 years"
            )));
        }
        let now = OffsetDateTime::now_utc();
        Ok(Validity {
            not_before: now - CLOCK_SKEW,
            not_after: now + Duration::days(days.into()),
        })
    }

    /// From now (less a little clock skew) for `lifetime`, at least a minute.
    pub fn lasting(lifetime: std::time::Duration) -> Result<Validity, PkiError> {
        let seconds = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
        if seconds < 60 {
            return Err(PkiError::Validity("must be at least 1 minute".into()));
        }
        if seconds > 100 * 366 * 86_400 {
            return Err(PkiError::Validity("more than 100 years".into()));
        }
        let now = OffsetDateTime::now_utc();
        // A short lifetime is backdated less, so that two thirds of it still lie ahead.
        let skew = CLOCK_SKEW.min(Duration::seconds(seconds / 10));
        Ok(Validity {
            not_before: now - skew,
            not_after: now + Duration::seconds(seconds),
        })
    }

    /// An explicit window, for tests of expired or not-yet-valid certificates.
    pub fn between(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Validity, PkiError> {
        if not_after <= not_before {
            return Err(PkiError::Validity(
                "not_after must be later than not_before".into(),
            ));
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where a certificate pair was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertPaths {
    fn in_dir(dir: PathBuf) -> CertPaths {
        CertPaths {
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
            dir,
        }
    }
}

/// The fabric CA: its certificate and the key that signs peer and admin certificates.
pub struct FabricCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl FabricCa {
    /// A new self-signed ECDSA P-256 CA named `name`.
    pub fn generate(name: &str, validity: Validity) -> Result<(FabricCa, IssuedCert), PkiError> {
        check_fabric_name(name)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ClusterLink fabric");
        // Path length 0: the CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        let issued = IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let ca = FabricCa::from_pem(&issued.cert_pem, &issued.key_pem)?;
        Ok((ca, issued))
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<FabricCa, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(FabricCa {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// Loads `<fabric_dir>/cert.pem` and `key.pem`.
    pub fn load(fabric_dir: &Path) -> Result<FabricCa, PkiError> {
        let cert_path = fabric_dir.join(CERT_FILE);
        let key_path = fabric_dir.join(KEY_FILE);
        let cert = read_string(&cert_path)?;
        let key = read_string(&key_path)?;
        FabricCa::from_pem(&cert, &key).map_err(|e| PkiError::BadFile {
            path: fabric_dir.to_owned(),
            reason: format!("not a usable fabric CA (cert.pem + key.pem): {e}"),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A peer certificate: DNS SAN = `name`, usable as TLS server and client.
    pub fn issue_peer(&self, name: &str, validity: Validity) -> Result<IssuedCert, PkiError> {
        check_peer_name(name)?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params, validity)
    }

    /// A management client certificate for the admin `name`. It has no DNS SAN, so it can never
    /// pass as a peer; its URI SAN marks it as an admin.
    pub fn issue_admin(&self, name: &str, validity: Validity) -> Result<IssuedCert, PkiError> {
        check_peer_name(name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::URI(
            format!("{ADMIN_URI_PREFIX}{name}").try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    /// Signs `params` for a key held elsewhere (a site's own, from its certificate request).
    pub(crate) fn sign_key(
        &self,
        params: &CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, PkiError> {
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }

    /// Signs a revocation list; returns its DER.
    pub(crate) fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<Vec<u8>, PkiError> {
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn check_fabric_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName {
            name: name.into(),
            reason: "a fabric name is 1-63 letters, digits, '_', '-' or '.' (it names a directory)"
                .into(),
        })
    }
}

pub(crate) fn check_peer_name(name: &str) -> Result<(), PkiError> {
    clusterlink_api::validation::check_dns_name(name).map_err(|reason| PkiError::InvalidName {
        name: name.into(),
        reason: format!(
            "{reason}; a peer name is a DNS name (dot-separated labels of at most 63 characters) since it is the certificate's DNS name"
        ),
    })
}

/// `clusterlink create fabric`: writes `<path>/<name>/cert.pem` and `key.pem`.
pub fn create_fabric(path: &Path, name: &str, validity: Validity) -> Result<CertPaths, PkiError> {
    let (_, issued) = FabricCa::generate(name, validity)?;
    let paths = CertPaths::in_dir(path.join(name));
    write_pair(&paths.dir, &issued.cert_pem, &issued.key_pem)?;
    Ok(paths)
}

/// `clusterlink create peer-cert`: writes `<fabric_dir>/<name>/cert.pem` and `key.pem`.
pub fn create_peer_cert(
    fabric_dir: &Path,
    name: &str,
    validity: Validity,
) -> Result<CertPaths, PkiError> {
    check_peer_name(name)?;
    for reserved in [ADMINS_DIR, crate::files::AUTHORITY_DIR] {
        if name == reserved {
            return Err(PkiError::InvalidName {
                name: name.into(),
                reason: format!("{reserved:?} is reserved for the fabric's own files"),
            });
        }
    }
    let issued = FabricCa::load(fabric_dir)?.issue_peer(name, validity)?;
    let paths = CertPaths::in_dir(fabric_dir.join(name));
    write_pair(&paths.dir, &issued.cert_pem, &issued.key_pem)?;
    // In the ledger, so that `clusterlink revoke --peer` finds it.
    crate::ledger::record_created(fabric_dir, &issued.cert_pem, name)?;
    Ok(paths)
}

/// `clusterlink create admin-cert`: writes `<fabric_dir>/admins/<name>/cert.pem` and `key.pem`.
pub fn create_admin_cert(
    fabric_dir: &Path,
    name: &str,
    validity: Validity,
) -> Result<CertPaths, PkiError> {
    let issued = FabricCa::load(fabric_dir)?.issue_admin(name, validity)?;
    let paths = CertPaths::in_dir(fabric_dir.join(ADMINS_DIR).join(name));
    write_pair(&paths.dir, &issued.cert_pem, &issued.key_pem)?;
    Ok(paths)
}
