//! The fabric's layout on disk, and writing key material: never over an existing file, keys
//! readable by the owner only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::PkiError;

/// File names inside a fabric, peer or admin directory, as in the established ClusterLink CLI.
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
/// Admin certificates live under `<fabric>/admins/<name>/`, apart from peer directories.
pub const ADMINS_DIR: &str = "admins";
/// The issuing authority's ledger, inside the fabric directory (`pki::authority`).
pub const AUTHORITY_DIR: &str = "authority";
/// The fabric's directory when none is named, as in the established ClusterLink CLI.
pub const DEFAULT_FABRIC: &str = "default_fabric";

/// Private keys: owner read/write only.
const KEY_MODE: u32 = 0o600;
/// Certificates are public.
const CERT_MODE: u32 = 0o644;
/// Directories of key material: owner only.
const DIR_MODE: u32 = 0o700;

/// Writes `cert.pem` and `key.pem` into `dir` (created if needed). Refuses if either exists, and
/// leaves neither behind if writing the pair fails half-way.
pub(crate) fn write_pair(dir: &Path, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    for path in [&cert, &key] {
        if path.exists() {
            return Err(PkiError::AlreadyExists { path: path.clone() });
        }
    }
    // Owner only, whatever the umask: the directory holds a private key.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })?;
    write_new(&key, key_pem, KEY_MODE)?;
    if let Err(e) = write_new(&cert, cert_pem, CERT_MODE) {
        let _ = fs::remove_file(&key);
        return Err(e);
    }
    Ok(())
}

fn write_new(path: &PathBuf, contents: &str, mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::AlreadyExists { path: path.clone() },
            _ => PkiError::Write {
                path: path.clone(),
                source,
            },
        })?;
    let result = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    result.map_err(|source| {
        let _ = fs::remove_file(path);
        PkiError::Write {
            path: path.clone(),
            source,
        }
    })
}

/// Replaces `path` whole or not at all (a new file renamed over it), with `mode` from its first
/// byte: a reader never sees half a file, and a key is never readable by others.
pub(crate) fn replace_whole(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        PkiError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// [`replace_whole`] for public files (certificates, lists).
pub(crate) fn replace_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    replace_whole(path, contents, CERT_MODE)
}

/// [`replace_whole`] for files holding a private key.
pub(crate) fn replace_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    replace_whole(path, contents, KEY_MODE)
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn read_string(path: &Path) -> Result<String, PkiError> {
    String::from_utf8(read(path)?).map_err(|_| PkiError::BadFile {
        path: path.to_owned(),
        reason: "not a PEM text file".into(),
    })
}
