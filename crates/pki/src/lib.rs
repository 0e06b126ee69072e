//! The fabric's root of trust.
//!
//! A fabric is a self-signed ECDSA P-256 CA. It signs two kinds of leaf certificate:
//!
//! - **peer** certificates, whose one DNS SAN is the peer's name: a gateway's TLS identity, used
//!   as server and client on the peer port;
//! - **admin** certificates, client-only, carrying the URI SAN `clusterlink://admin/<name>`: the
//!   credentials for a management API exposed beyond loopback. A peer certificate is never an
//!   admin credential, so one gateway cannot manage another.
//!
//! [`tls`] builds the rustls configurations on top (TLS 1.3 only, aws-lc-rs); [`reload`] holds a
//! gateway's set of them and follows its certificate files as they are rotated.

// Network input reaches this crate: a panic here is a crashed gateway, so failures are errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod authority;
mod error;
mod files;
pub mod identity;
pub mod issue;
mod ledger;
pub mod reload;
pub mod revocation;
pub mod site;
pub mod status;
pub mod tls;

pub use error::PkiError;
pub use files::{ADMINS_DIR, CERT_FILE, DEFAULT_FABRIC, KEY_FILE};
pub use identity::{Identity, identity_of};
pub use issue::{CertPaths, Validity, create_admin_cert, create_fabric, create_peer_cert};

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::issue::FabricCa;
    use crate::tls::{Credentials, TlsFiles, load_certs};

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn fabric_peer_and_admin_layout() {
        let dir = tempfile::tempdir().unwrap();
        let v = Validity::days(30).unwrap();
        let fabric = create_fabric(dir.path(), "default_fabric", v).unwrap();
        assert_eq!(fabric.cert, dir.path().join("default_fabric/cert.pem"));
        assert_eq!(mode(&fabric.key), 0o600);
        let peer = create_peer_cert(&fabric.dir, "server1", v).unwrap();
        assert_eq!(peer.key, dir.path().join("default_fabric/server1/key.pem"));
        assert_eq!(mode(&peer.key), 0o600);
        let admin = create_admin_cert(&fabric.dir, "alice", v).unwrap();
        assert_eq!(
            admin.cert,
            dir.path().join("default_fabric/admins/alice/cert.pem")
        );

        let peer_cert = &load_certs(&peer.cert).unwrap()[0];
        assert_eq!(
            identity_of(peer_cert).unwrap(),
            Identity::Peer("server1".into())
        );
        let admin_cert = &load_certs(&admin.cert).unwrap()[0];
        assert_eq!(
            identity_of(admin_cert).unwrap(),
            Identity::Admin("alice".into())
        );
        let ca_cert = &load_certs(&fabric.cert).unwrap()[0];
        assert!(
            identity_of(ca_cert).is_err(),
            "a CA is neither a peer nor an admin"
        );
    }

    #[test]
    fn never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let v = Validity::days(1).unwrap();
        let fabric = create_fabric(dir.path(), "f", v).unwrap();
        let before = std::fs::read(&fabric.key).unwrap();
        let err = create_fabric(dir.path(), "f", v).unwrap_err();
        assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(&fabric.key).unwrap(), before);
        create_peer_cert(&fabric.dir, "p1", v).unwrap();
        assert!(matches!(
            create_peer_cert(&fabric.dir, "p1", v),
            Err(PkiError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn invalid_names_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let v = Validity::days(1).unwrap();
        let fabric = create_fabric(dir.path(), "f", v).unwrap();
        for bad in ["Peer_1", "-p", "a..b", "..", "../up", "", "admins"] {
            let err = create_peer_cert(&fabric.dir, bad, v)
                .unwrap_err()
                .to_string();
            assert!(err.contains("invalid name"), "{bad}: {err}");
            assert!(!fabric.dir.join(bad).join("key.pem").exists() || bad.is_empty());
        }
        assert!(create_fabric(dir.path(), "../escape", v).is_err());
        assert!(Validity::days(0).is_err());
    }

    #[test]
    fn missing_fabric_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_peer_cert(&dir.path().join("nope"), "p1", Validity::days(1).unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("nope/cert.pem"), "{err}");
    }

    /// A real TLS 1.3 handshake over memory buffers: peers of one fabric accept each other, a
    /// certificate from another fabric is refused.
    #[test]
    fn mutual_tls_accepts_the_fabric_and_refuses_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let v = Validity::days(1).unwrap();
        let a = create_fabric(dir.path(), "a", v).unwrap();
        let b = create_fabric(dir.path(), "b", v).unwrap();
        create_peer_cert(&a.dir, "p1", v).unwrap();
        create_peer_cert(&a.dir, "p2", v).unwrap();
        create_peer_cert(&b.dir, "p2", v).unwrap();
        let creds = |fabric: &std::path::Path, peer: &str| {
            Credentials::load(&TlsFiles::in_fabric(fabric, &fabric.join(peer))).unwrap()
        };
        let server = tls::mutual_server_config(&creds(&a.dir, "p1")).unwrap();
        let good = tls::mutual_client_config(&creds(&a.dir, "p2")).unwrap();
        assert!(handshake(&server, &good, "p1").is_ok());
        // The server's certificate names p1, not p3.
        assert!(handshake(&server, &good, "p3").is_err());
        // A client from another fabric; its own view of the roots is of fabric b.
        let mut stranger_creds = creds(&b.dir, "p2");
        stranger_creds.roots = creds(&a.dir, "p2").roots;
        let stranger = tls::mutual_client_config(&stranger_creds).unwrap();
        let err = handshake(&server, &stranger, "p1").unwrap_err();
        assert!(
            err.contains("UnknownIssuer") || err.contains("BadCertificate"),
            "{err}"
        );
    }

    #[test]
    fn in_memory_issue_for_tests() {
        let (ca, issued) = FabricCa::generate("mem", Validity::days(1).unwrap()).unwrap();
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let peer = ca.issue_peer("p9", Validity::days(1).unwrap()).unwrap();
        assert!(peer.key_pem.contains("PRIVATE KEY"));
    }

    fn handshake(
        server: &rustls::ServerConfig,
        client: &rustls::ClientConfig,
        name: &str,
    ) -> Result<(), String> {
        use std::sync::Arc;
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client.clone()), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server.clone())).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            s.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            s.process_new_packets()
                .map_err(|e| format!("server: {e:?}"))?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).map_err(|e| e.to_string())?;
            c.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            c.process_new_packets()
                .map_err(|e| format!("client: {e:?}"))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err("handshake did not finish".into())
    }
}
