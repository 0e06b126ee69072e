//! `clusterlink deploy peer --output DIR` and `delete peer` through the real binary.

mod support;

use std::os::unix::fs::PermissionsExt;

use support::{CLUSTERLINK, Fabric, run, stderr, stdout};

#[test]
fn deploy_writes_numbered_manifests_a_user_applies_as_they_are() {
    let f = Fabric::new(&["server1"]);
    let o = run(
        CLUSTERLINK,
        &[
            "deploy",
            "peer",
            "--name",
            "server1",
            "--ingress",
            "NodePort",
            "--dataplane-replicas",
            "2",
            "--label",
            "region=eu",
            "--output",
            "out",
        ],
        f.root(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("kubectl apply -f out"),
        "{}",
        stdout(&o)
    );
    let out = f.root().join("out");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "00-crds.yaml",
            "01-namespace.yaml",
            "02-rbac.yaml",
            "03-secret.yaml",
            "04-services.yaml",
            "05-deployments.yaml"
        ],
        "no temporary files are left behind"
    );
    let secret = out.join("03-secret.yaml");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The Secret carries the peer's own key, exactly as `create peer-cert` wrote it.
    let text = std::fs::read_to_string(&secret).unwrap();
    let doc: k8s_openapi::api::core::v1::Secret =
        serde_yaml_ng::from_str(text.trim_start_matches("---\n")).unwrap();
    let key = std::fs::read(f.fabric_dir().join("server1/key.pem")).unwrap();
    assert_eq!(doc.data.unwrap()["tls.key"].0, key);
    let services = std::fs::read_to_string(out.join("04-services.yaml")).unwrap();
    assert!(
        services.contains("type: NodePort") && services.contains("nodePort: 30443"),
        "{services}"
    );
    // With --service-monitor, the monitor has a file of its own; written again without, the
    // file goes (kubectl apply -f refuses a file with no object).
    let monitored = run(
        CLUSTERLINK,
        &[
            "deploy",
            "peer",
            "--name",
            "server1",
            "--service-monitor",
            "--output",
            "monitored",
        ],
        f.root(),
    );
    assert!(monitored.status.success(), "{}", stderr(&monitored));
    let monitoring = f.root().join("monitored/06-monitoring.yaml");
    let text = std::fs::read_to_string(&monitoring).unwrap();
    assert!(text.contains("kind: ServiceMonitor"), "{text}");
    let again = run(
        CLUSTERLINK,
        &[
            "deploy",
            "peer",
            "--name",
            "server1",
            "--output",
            "monitored",
        ],
        f.root(),
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(!monitoring.exists());
    let deployments = std::fs::read_to_string(out.join("05-deployments.yaml")).unwrap();
    assert!(deployments.contains("replicas: 2"), "{deployments}");
    assert!(
        deployments.contains(&format!("clusterlink:{}", env!("CARGO_PKG_VERSION"))),
        "{deployments}"
    );
}

#[test]
fn deploy_refuses_a_certificate_of_another_peer_and_bad_flags() {
    let f = Fabric::new(&["server1"]);
    let o = run(
        CLUSTERLINK,
        &["deploy", "peer", "--name", "server2", "--output", "out"],
        f.root(),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("clusterlink create peer-cert --name server2"),
        "{}",
        stderr(&o)
    );
    assert!(
        !f.root().join("out").exists(),
        "nothing is written on error"
    );

    let o = run(
        CLUSTERLINK,
        &[
            "deploy",
            "peer",
            "--name",
            "server1",
            "--ingress",
            "NodePort",
            "--ingress-port",
            "443",
            "--output",
            "out",
        ],
        f.root(),
    );
    assert!(
        stderr(&o).contains("outside the NodePort range 30000-32767"),
        "{}",
        stderr(&o)
    );
    let o = run(
        CLUSTERLINK,
        &[
            "deploy",
            "peer",
            "--name",
            "server1",
            "--ingress",
            "ingress-nginx",
        ],
        f.root(),
    );
    assert!(
        stderr(&o).contains("use LoadBalancer, NodePort or none"),
        "{}",
        stderr(&o)
    );
    assert!(!f.root().join("out").exists());
}

#[test]
fn without_a_cluster_deploy_and_delete_say_how_to_proceed() {
    let f = Fabric::new(&["server1"]);
    for args in [
        &["deploy", "peer", "--name", "server1"][..],
        &["delete", "peer", "--name", "server1"][..],
    ] {
        let o = std::process::Command::new(CLUSTERLINK)
            .args(args)
            .current_dir(f.root())
            .env("KUBECONFIG", f.root().join("no-such-kubeconfig"))
            .env("HOME", f.root())
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains("no usable kubeconfig"),
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("--output DIR"), "{}", stderr(&o));
    }
}
