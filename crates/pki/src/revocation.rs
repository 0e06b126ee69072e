//! Revocation: X.509 revocation lists (CRLs) signed by a fabric CA, which every gateway keeps and
//! passes on, so that a stolen credential is refused everywhere within seconds.
//!
//! A gateway holds at most one list per CA of its trust bundle (two during a CA rollover), the one
//! with the highest CRL number. A list is taken from anyone (an administrator, a peer, a file)
//! only if a CA of the bundle signed it: lists need no trusted carrier, so gateways spread them
//! over the peer links they already have. [`Revocations::summary`] is what a gateway tells its
//! peers it holds, so that whoever is behind asks for, or is sent, the newer lists.

use std::collections::{BTreeMap, HashSet};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::FromDer;

use crate::error::PkiError;
use clusterlink_api::text::escaped;

/// A revocation list larger than this is refused: a list names about 40 bytes per revoked
/// certificate, so this holds some 25,000 (short-lived certificates leave lists short).
pub const MAX_LIST_BYTES: usize = 1024 * 1024;
/// A summary naming more CAs than this is malformed: a bundle holds one or two.
const MAX_SUMMARY_ENTRIES: usize = 8;

/// Which CA a list comes from: a digest of the CA's public key (two CAs may share a name, as
/// two fabrics made with the default name do), short enough for a header, the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaKey([u8; 8]);

impl CaKey {
    fn of_key(raw_public_key: &[u8]) -> CaKey {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw_public_key);
        let mut key = [0; 8];
        key.copy_from_slice(&digest.as_ref()[..8]);
        CaKey(key)
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn parse(text: &str) -> Option<CaKey> {
        if text.len() != 16 {
            return None;
        }
        let mut key = [0; 8];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(CaKey(key))
    }
}

/// One CA's list, checked.
#[derive(Debug, Clone)]
struct SignedList {
    /// The issuing CA's name as encoded, which certificates it revokes name as their issuer.
    issuer: Vec<u8>,
    number: u64,
    der: CertificateRevocationListDer<'static>,
    /// The serial numbers it revokes, as encoded in certificates.
    serials: HashSet<Vec<u8>>,
}

/// The revocation lists a gateway holds, checked against its trust bundle.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    lists: BTreeMap<CaKey, SignedList>,
}

/// Which lists a gateway holds: its CAs' keys and list numbers (`<ca>:<number>,...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary(BTreeMap<CaKey, u64>);

impl Summary {
    /// Reads a peer's summary; `None` if it is malformed (it is then ignored).
    pub fn parse(text: &str) -> Option<Summary> {
        let mut entries = BTreeMap::new();
        if text.is_empty() {
            return Some(Summary(entries));
        }
        for entry in text.split(',') {
            let (key, number) = entry.split_once(':')?;
            entries.insert(CaKey::parse(key)?, number.parse().ok()?);
            if entries.len() > MAX_SUMMARY_ENTRIES {
                return None;
            }
        }
        Some(Summary(entries))
    }

    /// Whether this summary holds a list newer than `other` does for some CA both trust (a
    /// summary names every CA of its bundle, 0 where it holds no list): lists of a CA the other
    /// side does not trust would be refused there, so they are never sent.
    pub fn is_ahead_of(&self, other: &Summary) -> bool {
        self.0
            .iter()
            .any(|(ca, number)| other.0.get(ca).is_some_and(|theirs| number > theirs))
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (ca, number) in &self.0 {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}:{number}", ca.hex())?;
        }
        Ok(())
    }
}

/// What taking lists changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// At least one list was newer than the one held.
    Newer,
    /// Every list was one already held, or older.
    Nothing,
}

impl Revocations {
    /// The lists of a PEM file (`-----BEGIN X509 CRL-----` blocks), each checked against `cas`.
    pub fn from_pem(pem: &[u8], cas: &[CertificateDer<'_>]) -> Result<Revocations, PkiError> {
        let mut revocations = Revocations::default();
        revocations.take_pem(pem, cas)?;
        Ok(revocations)
    }

    /// Takes every list of `pem` that a CA of `cas` signed and that is newer than the one held
    /// for that CA. Lists of CAs outside the bundle are passed over (during a rollover peers'
    /// bundles differ); a list that is malformed, or claims a CA of the bundle whose signature
    /// it does not carry, fails the whole call and changes nothing.
    pub fn take_pem(&mut self, pem: &[u8], cas: &[CertificateDer<'_>]) -> Result<Taken, PkiError> {
        if pem.len() > MAX_LIST_BYTES {
            return Err(PkiError::Revocation(format!(
                "{} bytes of revocation lists, more than the {MAX_LIST_BYTES} allowed",
                pem.len()
            )));
        }
        let mut checked = Vec::new();
        for (i, der) in CertificateRevocationListDer::pem_slice_iter(pem).enumerate() {
            if i == MAX_SUMMARY_ENTRIES {
                return Err(PkiError::Revocation(format!(
                    "more than {MAX_SUMMARY_ENTRIES} revocation lists at once; a bundle has one or two CAs"
                )));
            }
            let der =
                der.map_err(|e| PkiError::Revocation(format!("not a PEM revocation list: {e}")))?;
            checked.extend(check(der, cas)?);
        }
        let mut taken = Taken::Nothing;
        for (ca, list) in checked {
            if self
                .lists
                .get(&ca)
                .is_none_or(|held| list.number > held.number)
            {
                self.lists.insert(ca, list);
                taken = Taken::Newer;
            }
        }
        Ok(taken)
    }

    /// Drops the lists of CAs no longer in `cas` (after a rollover ends).
    pub fn retain_cas(&mut self, cas: &[CertificateDer<'_>]) {
        let keys: HashSet<CaKey> = cas.iter().filter_map(|c| subject_key(c).ok()).collect();
        self.lists.retain(|ca, _| keys.contains(ca));
    }

    /// Whether `cert` (a leaf) is revoked by a held list. A certificate that cannot be read is
    /// treated as revoked: the handshake would have refused it first.
    pub fn is_revoked(&self, cert: &CertificateDer<'_>) -> bool {
        // Checked as each tunnel opens: with no list (the common case), nothing is parsed.
        if self.lists.is_empty() {
            return false;
        }
        let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else {
            return true;
        };
        let issuer = x509.issuer().as_raw();
        self.lists
            .values()
            .any(|list| list.issuer == issuer && list.serials.contains(x509.raw_serial()))
    }

    /// What a gateway trusting `cas` tells its peers it holds: every CA of its bundle, with the
    /// number of the list it holds for it (0 for none).
    pub fn summary(&self, cas: &[CertificateDer<'_>]) -> Summary {
        Summary(
            cas.iter()
                .filter_map(|c| subject_key(c).ok())
                .map(|ca| (ca, self.lists.get(&ca).map_or(0, |l| l.number)))
                .collect(),
        )
    }

    /// The number of the list held for the CA that issued `ca_cert`, if any.
    pub fn number_for(&self, ca_cert: &CertificateDer<'_>) -> Option<u64> {
        let key = subject_key(ca_cert).ok()?;
        self.lists.get(&key).map(|l| l.number)
    }

    /// The serial numbers the list of `ca_cert`'s CA revokes.
    pub fn serials_of(&self, ca_cert: &CertificateDer<'_>) -> Vec<Vec<u8>> {
        subject_key(ca_cert)
            .ok()
            .and_then(|key| self.lists.get(&key))
            .map(|l| l.serials.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The held lists, for rustls's verifiers.
    pub fn lists(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.lists.values().map(|l| l.der.clone()).collect()
    }

    /// How many certificates the held lists revoke.
    pub fn revoked_count(&self) -> usize {
        self.lists.values().map(|l| l.serials.len()).sum()
    }

    /// The held lists as PEM, to store or to send.
    pub fn to_pem(&self) -> String {
        self.lists
            .values()
            .map(|l| pem_of(l.der.as_ref()))
            .collect()
    }
}

/// A list as PEM.
pub fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN X509 CRL-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END X509 CRL-----\n");
    pem
}

fn subject_key(cert: &CertificateDer<'_>) -> Result<CaKey, PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Revocation(format!("unparseable CA certificate: {e}")))?;
    Ok(CaKey::of_key(x509.public_key().raw))
}

/// Checks that a CA of `cas` signed `der`, and reads it; `None` if its issuer is no CA of `cas`.
fn check(
    der: CertificateRevocationListDer<'static>,
    cas: &[CertificateDer<'_>],
) -> Result<Option<(CaKey, SignedList)>, PkiError> {
    let bad = |reason: String| PkiError::Revocation(reason);
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
        .map_err(|e| bad(format!("unparseable revocation list: {e}")))?;
    let issuer = crl.issuer().as_raw();
    // Every CA of the bundle with the list's issuer name is tried: names are not unique.
    let named: Vec<_> = cas
        .iter()
        .filter_map(|ca| x509_parser::parse_x509_certificate(ca).ok())
        .filter(|(_, ca)| ca.subject().as_raw() == issuer && ca.is_ca())
        .collect();
    if named.is_empty() {
        return Ok(None);
    }
    let signer = named
        .into_iter()
        .find(|(_, ca)| crl.verify_signature(ca.public_key()).is_ok())
        .ok_or_else(|| {
            bad(format!(
                "a revocation list from {} that no CA of this fabric's trust bundle signed",
                escaped(&crl.issuer().to_string())
            ))
        })?;
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| bad("a revocation list without a CRL number".into()))?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    Ok(Some((
        CaKey::of_key(signer.1.public_key().raw),
        SignedList {
            issuer: issuer.to_vec(),
            number,
            der,
            serials,
        },
    )))
}
