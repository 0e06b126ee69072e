//! `clusterlink create …` through the real binary, checked with openssl.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::{CLUSTERLINK, Fabric, run, stderr};

fn openssl(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl is installed by scripts/install-test-deps.sh")
}

#[test]
fn peer_certificates_verify_against_the_fabric_with_openssl() {
    let f = Fabric::new(&["p1", "p2"]);
    for p in ["p1", "p2"] {
        let o = openssl(
            &[
                "verify",
                "-CAfile",
                "default_fabric/cert.pem",
                &format!("default_fabric/{p}/cert.pem"),
            ],
            f.root(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let text = openssl(
            &[
                "x509",
                "-noout",
                "-text",
                "-in",
                &format!("default_fabric/{p}/cert.pem"),
            ],
            f.root(),
        );
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains(&format!("DNS:{p}")), "{text}");
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{text}"
        );
        assert!(
            text.contains("prime256v1") || text.contains("P-256"),
            "{text}"
        );
    }
    let ca = openssl(
        &["x509", "-noout", "-text", "-in", "default_fabric/cert.pem"],
        f.root(),
    );
    assert!(String::from_utf8_lossy(&ca.stdout).contains("CA:TRUE"));
}

#[test]
fn keys_are_private_and_files_never_overwritten() {
    let f = Fabric::new(&["p1"]);
    for key in ["default_fabric/key.pem", "default_fabric/p1/key.pem"] {
        let mode = std::fs::metadata(f.root().join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let before = std::fs::read(f.root().join("default_fabric/p1/key.pem")).unwrap();
    let o = run(
        CLUSTERLINK,
        &["create", "peer-cert", "--name", "p1"],
        f.root(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let o = run(CLUSTERLINK, &["create", "fabric"], f.root());
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read(f.root().join("default_fabric/p1/key.pem")).unwrap(),
        before
    );
}

#[test]
fn invalid_peer_names_are_refused_with_the_reason() {
    let f = Fabric::new(&[]);
    let o = run(
        CLUSTERLINK,
        &["create", "peer-cert", "--name", "Peer_1"],
        f.root(),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("invalid name \"Peer_1\"") && err.contains("DNS name"),
        "{err}"
    );
    assert!(!f.root().join("default_fabric/Peer_1").exists());

    // The names a Peer object may have, dots included, are accepted.
    let o = run(
        CLUSTERLINK,
        &["create", "peer-cert", "--name", "cluster17.us-east"],
        f.root(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        f.root()
            .join("default_fabric/cluster17.us-east/cert.pem")
            .exists()
    );
    let long_part = "a".repeat(64);
    let o = run(
        CLUSTERLINK,
        &["create", "peer-cert", "--name", &long_part],
        f.root(),
    );
    assert!(stderr(&o).contains("at most 63"), "{}", stderr(&o));
}

#[test]
fn validity_is_configurable_and_paths_follow_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        CLUSTERLINK,
        &["create", "fabric", "--name", "prod", "--path", "pki"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("pki/prod/cert.pem").exists());
    let o = run(
        CLUSTERLINK,
        &[
            "create",
            "peer-cert",
            "--name",
            "edge",
            "--fabric",
            "prod",
            "--path",
            "pki",
            "--validity-days",
            "2",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let cert = "pki/prod/edge/cert.pem";
    let day = 86_400;
    // Valid for one more day, not for three.
    assert!(
        openssl(
            &["x509", "-noout", "-checkend", &day.to_string(), "-in", cert],
            dir.path()
        )
        .status
        .success()
    );
    assert!(
        !openssl(
            &[
                "x509",
                "-noout",
                "-checkend",
                &(3 * day).to_string(),
                "-in",
                cert
            ],
            dir.path()
        )
        .status
        .success()
    );
    let o = run(
        CLUSTERLINK,
        &[
            "create",
            "peer-cert",
            "--name",
            "x",
            "--fabric",
            "prod",
            "--path",
            "pki",
            "--validity-days",
            "0",
        ],
        dir.path(),
    );
    assert!(stderr(&o).contains("at least 1 day"), "{}", stderr(&o));
}

#[test]
fn admin_certificates_are_client_only() {
    let f = Fabric::new(&[]);
    let o = run(
        CLUSTERLINK,
        &["create", "admin-cert", "--name", "alice"],
        f.root(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = openssl(
        &[
            "x509",
            "-noout",
            "-text",
            "-in",
            "default_fabric/admins/alice/cert.pem",
        ],
        f.root(),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("URI:clusterlink://admin/alice"), "{text}");
    assert!(
        !text.contains("DNS:"),
        "an admin certificate must not pass as a peer: {text}"
    );
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
}
