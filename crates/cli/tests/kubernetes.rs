//! Kubernetes mode against a real API server and etcd, as controller-runtime's envtest runs
//! them: no kubelet, no containers (`scripts/k8s-testenv` builds the programs once per machine;
//! `scripts/test` builds them first and passes their directory in CLUSTERLINK_TESTENV_BIN).

mod support;

use std::path::Path;

use clusterlink_testbed::cluster::{TestCluster, testenv_bin};
use support::*;

const SYSTEM: &str = "clusterlink-system";

fn cluster(root: &Path) -> TestCluster {
    let bin = testenv_bin().expect("the Kubernetes test environment");
    TestCluster::start(&bin, &root.join("cluster"), None).expect("a test cluster")
}

/// `clusterlink <args>` against `cluster`, in `root` (where the fabric is).
fn clusterlink(cluster: &TestCluster, root: &Path, args: &[&str]) -> std::process::Output {
    let kubeconfig = cluster.kubeconfig.to_str().unwrap();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", kubeconfig]);
    run(CLUSTERLINK, &all, root)
}

/// Every object `deploy peer` made in the peer's namespace, with its resourceVersion.
fn deployed(cluster: &TestCluster) -> Vec<String> {
    let template =
        "{range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}";
    let mut lines: Vec<String> = [
        (
            "deployments,services,secrets,serviceaccounts,roles,rolebindings",
            true,
        ),
        (
            "clusterroles,clusterrolebindings,customresourcedefinitions",
            false,
        ),
    ]
    .iter()
    .flat_map(|(kinds, namespaced)| {
        let mut args = vec!["get", kinds, "-l", "app.kubernetes.io/part-of=clusterlink"];
        if *namespaced {
            args.extend(["-n", SYSTEM]);
        }
        let output = format!("jsonpath={template}");
        args.extend(["-o", &output]);
        let text = cluster.kubectl(&args).unwrap();
        text.lines().map(str::to_string).collect::<Vec<_>>()
    })
    .collect();
    lines.sort();
    lines
}

#[test]
fn deploy_peer_applies_to_a_real_api_server_again_without_change_and_delete_removes_it() {
    let root = tempfile::tempdir().unwrap();
    let cluster = cluster(root.path());
    let fabric = Fabric::new(&["p1"]);

    let deploy = ["deploy", "peer", "--name", "p1", "--path"];
    let path = fabric.root().to_str().unwrap();
    let first = clusterlink(&cluster, root.path(), &[&deploy[..], &[path]].concat());
    assert!(first.status.success(), "{}", stderr(&first));

    // The real server admits the generated definitions and serves them.
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/imports.clusterlink.net",
            "crd/exports.clusterlink.net",
            "crd/peers.clusterlink.net",
            "crd/accesspolicies.clusterlink.net",
            "crd/privilegedaccesspolicies.clusterlink.net",
        ])
        .unwrap();
    let explained = cluster.kubectl(&["explain", "imports.spec"]).unwrap();
    assert!(explained.contains("sources"), "{explained}");
    let objects = deployed(&cluster);
    for expected in [
        "Deployment/cl-controlplane=",
        "Deployment/cl-dataplane=",
        "Secret/",
    ] {
        assert!(
            objects.iter().any(|o| o.starts_with(expected)),
            "no {expected} among {objects:#?}"
        );
    }

    // Applying again changes nothing: every object keeps its resourceVersion.
    let again = clusterlink(&cluster, root.path(), &[&deploy[..], &[path]].concat());
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        deployed(&cluster),
        objects,
        "a second deploy changed objects"
    );

    // Delete removes exactly what deploy created (the definitions stay unless asked).
    let delete = clusterlink(&cluster, root.path(), &["delete", "peer", "--name", "p1"]);
    assert!(delete.status.success(), "{}", stderr(&delete));
    let left = deployed(&cluster);
    assert!(
        left.iter()
            .all(|o| o.starts_with("CustomResourceDefinition/")),
        "left behind: {left:#?}"
    );
    // Without a namespace controller (none runs here) the namespace stays Terminating.
    let phase = cluster.kubectl(&["get", "namespace", SYSTEM, "-o", "jsonpath={.status.phase}"]);
    assert!(
        phase.is_err() || phase.as_deref().ok() == Some("Terminating"),
        "the namespace was not deleted: {phase:?}"
    );
}
