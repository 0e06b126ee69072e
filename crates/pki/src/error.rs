//! What can go wrong with certificates and their files, each naming the file or name at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(
        "{path} already exists; refusing to overwrite it (move it away first if you mean to replace it)"
    )]
    AlreadyExists { path: PathBuf },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error(
        "{key} is not the private key of {cert}: the two files come from different peers or different issues; use the pair `clusterlink create` wrote together"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate identity: {0}")]
    Identity(String),
    #[error("revocation: {0}")]
    Revocation(String),
    #[error("invalid validity: {0}")]
    Validity(String),
    /// A certificate used outside its validity, with its dates as a person reads them.
    #[error("{0}")]
    OutsideValidity(String),
}
