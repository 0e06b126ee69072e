//! The `cl-dataplane` process as an operator meets it: what it asks for, and the refusal of a
//! certificate it cannot serve with, before anything is bound.

use std::process::{Command, Output};

use clusterlink_pki::{Validity, create_admin_cert, create_fabric, create_peer_cert};

const CL_DATAPLANE: &str = env!("CARGO_BIN_EXE_cl-dataplane");

fn run(args: &[&str]) -> Output {
    Command::new(CL_DATAPLANE).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_names_every_setting() {
    let help = run(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--control-plane",
        "--peer-address",
        "--import-address",
        "--label",
        "--allow-loopback-backends",
        "--ca",
        "--cert",
        "--key",
    ] {
        assert!(
            text.contains(option),
            "--help does not mention {option}:\n{text}"
        );
    }
    assert!(
        text.contains("0.0.0.0:4443"),
        "the default peer port:\n{text}"
    );
}

#[test]
fn the_control_plane_address_is_required() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--control-plane"), "{}", stderr(&out));
}

#[test]
fn a_missing_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("tls.crt");
    let out = run(&[
        "--control-plane",
        "127.0.0.1:1",
        "--ca",
        dir.path().join("ca.crt").to_str().unwrap(),
        "--cert",
        missing.to_str().unwrap(),
        "--key",
        dir.path().join("tls.key").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("ca.crt") || err.contains("tls.crt"), "{err}");
}

#[test]
fn an_admin_certificate_is_not_a_peer_identity() {
    let dir = tempfile::tempdir().unwrap();
    let validity = Validity::days(30).unwrap();
    create_fabric(dir.path(), "fab", validity).unwrap();
    let fabric = dir.path().join("fab");
    create_peer_cert(&fabric, "p1", validity).unwrap();
    let admin = create_admin_cert(&fabric, "alice", validity).unwrap();
    let (ca, cert, key) = (fabric.join("cert.pem"), admin.cert, admin.key);
    let out = run(&[
        "--control-plane",
        "127.0.0.1:1",
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a peer certificate"),
        "{}",
        stderr(&out)
    );
}
