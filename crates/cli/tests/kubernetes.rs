//! Kubernetes mode against a real API server and etcd, as controller-runtime's envtest runs
//! them: no kubelet, no containers (`scripts/k8s-testenv` builds the programs once per machine;
//! `scripts/test` builds them first and passes their directory in CLUSTERLINK_TESTENV_BIN).

mod support;

use std::path::Path;
use std::time::Duration;

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
    // The server publishes a new definition's schema shortly after it is Established.
    let explained = || cluster.kubectl(&["explain", "imports.spec"]);
    assert!(
        eventually(Duration::from_secs(30), || explained().is_ok()),
        "kubectl explain never found imports: {:?}",
        explained()
    );
    let explained = explained().unwrap();
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

/// The custom resource definitions and the peer's namespace, from `deploy peer --output`, applied
/// with kubectl as a user would; returns once the definitions are Established.
fn install_definitions(cluster: &TestCluster, fabric: &Fabric) {
    let out = fabric.root().join("manifests");
    let written = run(
        CLUSTERLINK,
        &[
            "deploy",
            "peer",
            "--name",
            "p1",
            "--output",
            out.to_str().unwrap(),
        ],
        fabric.root(),
    );
    assert!(written.status.success(), "{}", stderr(&written));
    for file in ["00-crds.yaml", "01-namespace.yaml"] {
        cluster
            .kubectl(&["apply", "-f", out.join(file).to_str().unwrap()])
            .unwrap();
    }
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=clusterlink",
        ])
        .unwrap();
}

#[test]
fn the_real_server_admits_the_examples_and_refuses_broken_manifests_naming_the_field() {
    let root = tempfile::tempdir().unwrap();
    let cluster = cluster(root.path());
    let fabric = Fabric::new(&["p1"]);
    install_definitions(&cluster, &fabric);

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let files: Vec<_> = ["kubernetes", "manifests"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(examples.join(dir)).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect();
    // The namespaces the examples live in exist first, as in a cluster they are used in.
    let mut namespaces = std::collections::BTreeSet::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).unwrap();
            if let Some(ns) = value["metadata"]["namespace"].as_str() {
                namespaces.insert(ns.to_string());
            }
        }
    }
    for ns in namespaces {
        let manifest = format!("{{apiVersion: v1, kind: Namespace, metadata: {{name: {ns}}}}}");
        cluster
            .kubectl_with(&["apply", "-f", "-"], Some(&manifest))
            .unwrap();
    }
    let mut applied = 0;
    {
        for path in &files {
            let out = cluster.kubectl(&["apply", "-f", path.to_str().unwrap()]);
            let out = out.unwrap_or_else(|e| panic!("{} was refused: {e}", path.display()));
            applied += out.lines().count();
        }
    }
    assert!(applied >= 8, "only {applied} example objects applied");
    let listed = cluster
        .kubectl(&[
            "get",
            "imports,exports,peers,accesspolicies",
            "-A",
            "-o",
            "name",
        ])
        .unwrap();
    assert!(listed.lines().count() >= 8, "{listed}");
    // The printer columns show the condition each kind carries (none reported yet: no
    // controller runs here) beside the spec.
    let imports = cluster.kubectl(&["get", "imports", "-A"]).unwrap();
    for column in ["PORT", "TARGET", "VALID"] {
        assert!(
            imports.contains(column),
            "no {column} column in:\n{imports}"
        );
    }

    let broken = std::fs::read_to_string(examples.join("broken-import.yaml")).unwrap();
    for (yaml, field) in [
        (broken.as_str(), "spec.sources[1].peer"),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: x}, spec: {port: 0}}",
            "spec.port",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: x}, spec: {port: 80, hots: y}}",
            "hots",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Import, metadata: {name: x}, spec: {port: 80, sources: [], lbScheme: fastest}}",
            "spec.lbScheme",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: AccessPolicy, metadata: {name: x}, spec: {action: maybe, from: [], to: []}}",
            "spec.action",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {name: x}, spec: {gateways: [{host: h}]}}",
            "spec.gateways[0].port",
        ),
    ] {
        let refused = cluster.kubectl_with(&["apply", "-f", "-"], Some(yaml));
        let error = refused.expect_err(yaml).to_string();
        assert!(
            error.contains(field),
            "{yaml}: the refusal does not name {field}: {error}"
        );
    }
}
