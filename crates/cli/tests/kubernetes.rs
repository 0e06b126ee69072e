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
    TestCluster::start(&bin, &root.join("cluster")).expect("a test cluster")
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

    // The Prometheus Operator's ServiceMonitor CRD, as the operator installs it.
    let bin = testenv_bin().unwrap();
    let monitor_crd = clusterlink_testbed::cluster::service_monitor_crd(&bin);
    cluster
        .kubectl(&[
            "apply",
            "--server-side",
            "-f",
            monitor_crd.to_str().unwrap(),
        ])
        .unwrap();
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
        ])
        .unwrap();

    let deploy = [
        "deploy",
        "peer",
        "--name",
        "p1",
        "--service-monitor",
        "--path",
    ];
    let path = fabric.root().to_str().unwrap();
    let first = clusterlink(&cluster, root.path(), &[&deploy[..], &[path]].concat());
    assert!(first.status.success(), "{}", stderr(&first));
    // The real server admits the ServiceMonitor, which scrapes the metrics Service.
    let monitor = || {
        cluster.kubectl(&[
            "get",
            "servicemonitor",
            "cl-metrics",
            "-n",
            SYSTEM,
            "-o",
            "jsonpath={.spec.endpoints[0].port} {.spec.endpoints[0].path} {.metadata.resourceVersion}",
        ])
    };
    let first_monitor = monitor().unwrap();
    assert!(
        first_monitor.starts_with("metrics /metrics "),
        "{first_monitor}"
    );

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
    assert_eq!(monitor().unwrap(), first_monitor);

    // Delete removes exactly what deploy created (the definitions stay unless asked).
    let delete = clusterlink(&cluster, root.path(), &["delete", "peer", "--name", "p1"]);
    assert!(delete.status.success(), "{}", stderr(&delete));
    assert_only_definitions_left(&cluster);
    assert!(monitor().is_err(), "the ServiceMonitor was left behind");
    // Without a namespace controller (none runs here) the namespace stays Terminating.
    let phase = cluster.kubectl(&["get", "namespace", SYSTEM, "-o", "jsonpath={.status.phase}"]);
    assert!(
        phase.is_err() || phase.as_deref().ok() == Some("Terminating"),
        "the namespace was not deleted: {phase:?}"
    );
}

/// Asserts that of what deploying made, only the custom resource definitions are left: they
/// stay unless asked, since deleting them deletes every ClusterLink object in the cluster.
fn assert_only_definitions_left(cluster: &TestCluster) {
    let left = deployed(cluster);
    assert!(
        left.iter()
            .all(|o| o.starts_with("CustomResourceDefinition/")),
        "left behind: {left:#?}"
    );
}

/// The kinds and names of [`deployed`] objects, without their versions.
fn kinds_and_names(objects: &[String]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            o.split_once('=')
                .map_or(o.as_str(), |(name, _)| name)
                .to_string()
        })
        .collect()
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

const CL_CONTROLPLANE: &str = env!("CARGO_BIN_EXE_cl-controlplane");

/// `cl-controlplane` as a host process, authenticated as its own ServiceAccount; killed when
/// dropped.
struct Controller {
    child: std::process::Child,
    log: std::path::PathBuf,
    /// /healthz, /readyz and /metrics.
    ops_port: u16,
}

impl Controller {
    fn start(cluster: &TestCluster, fabric: &Fabric, peer: &str) -> Controller {
        let kubeconfig = cluster
            .service_account_kubeconfig(SYSTEM, "cl-controlplane")
            .unwrap();
        let dir = fabric.root().join(clusterlink_pki::DEFAULT_FABRIC);
        let log = fabric.root().join("cl-controlplane.log");
        let file = |p: &Path| p.to_str().unwrap().to_string();
        let ops_port = free_port();
        let child = std::process::Command::new(CL_CONTROLPLANE)
            .env("KUBECONFIG", &kubeconfig)
            .args([
                "--ca",
                &file(&dir.join("cert.pem")),
                "--cert",
                &file(&dir.join(peer).join("cert.pem")),
                "--key",
                &file(&dir.join(peer).join("key.pem")),
                "--namespace",
                SYSTEM,
                "--snapshot-address",
                "127.0.0.1:0",
                "--ops-address",
                &format!("127.0.0.1:{ops_port}"),
                "--dataplane-selector",
                &format!("app.kubernetes.io/name=cl-dataplane,app.kubernetes.io/instance={peer}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Controller {
            child,
            log,
            ops_port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster with peer p1 deployed into it by `clusterlink deploy peer`, and p1's fabric.
fn deployed_p1(root: &Path) -> (TestCluster, Fabric) {
    let cluster = cluster(root);
    let fabric = Fabric::new(&["p1"]);
    let path = fabric.root().to_str().unwrap();
    let deploy = clusterlink(
        &cluster,
        root,
        &["deploy", "peer", "--name", "p1", "--path", path],
    );
    assert!(deploy.status.success(), "{}", stderr(&deploy));
    (cluster, fabric)
}

/// An Import of `name` in `default` from peer p2, applied by the admin with kubectl.
fn apply_import(cluster: &TestCluster, name: &str, port: u16) {
    let import = format!(
        "{{apiVersion: clusterlink.net/v1alpha1, kind: Import, metadata: {{name: {name}, namespace: default}}, spec: {{port: {port}, sources: [{{peer: p2, exportName: {name}, exportNamespace: default}}]}}}}"
    );
    cluster
        .kubectl_with(&["apply", "-f", "-"], Some(&import))
        .unwrap();
}

#[test]
fn the_controller_serves_imports_with_its_own_token_and_only_the_generated_rbac() {
    let root = tempfile::tempdir().unwrap();
    let (cluster, fabric) = deployed_p1(root.path());

    // Its token is its ServiceAccount's, not the admin's: it cannot read the peer's key.
    let own = cluster
        .service_account_kubeconfig(SYSTEM, "cl-controlplane")
        .unwrap();
    let secrets = cluster.kubectl_as(&own, &["get", "secrets", "-n", SYSTEM], None);
    assert!(
        secrets
            .as_ref()
            .is_err_and(|e| e.to_string().contains("forbidden")),
        "the controller's account reads secrets: {secrets:?}"
    );

    let controller = Controller::start(&cluster, &fabric, "p1");
    let peer = "{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {name: p2, namespace: clusterlink-system}, spec: {gateways: [{host: 10.0.0.2, port: 443}]}}";
    cluster
        .kubectl_with(&["apply", "-f", "-"], Some(peer))
        .unwrap();
    apply_import(&cluster, "reviews", 9080);

    // The import becomes a Service on its port, forwarding to an allocated target port, with
    // the EndpointSlice the controller writes in a user's namespace; its status says so.
    let service = || {
        cluster
            .kubectl(&[
                "get",
                "service",
                "reviews",
                "-n",
                "default",
                "-o",
                "jsonpath={.spec.ports[0].port} {.spec.ports[0].targetPort}",
            ])
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(60), || service().starts_with("9080 ")),
        "no Service for the import; controller log:\n{}",
        controller.log()
    );
    let target: u16 = service().split(' ').nth(1).unwrap().parse().unwrap();
    // Its probes and metrics: ready after its first pass, and the passes are measured.
    assert_eq!(raw_http(controller.ops_port, "GET", "/healthz", b"").0, 200);
    assert_eq!(raw_http(controller.ops_port, "GET", "/readyz", b"").0, 200);
    let (status, metrics) = raw_http(controller.ops_port, "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert_promtool_accepts(&metrics);
    assert!(
        metrics.contains("clusterlink_controller_pass_duration_seconds_count"),
        "{metrics}"
    );
    assert!((20000..=29999).contains(&target), "target port {target}");
    let slices = cluster
        .kubectl(&[
            "get",
            "endpointslices",
            "-n",
            "default",
            "-l",
            "clusterlink.net/import=reviews",
            "-o",
            "name",
        ])
        .unwrap();
    assert!(!slices.trim().is_empty(), "no EndpointSlice for the import");
    let valid = || {
        cluster
            .kubectl(&["get", "imports", "-A"])
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(30), || valid()
            .lines()
            .any(|l| l.contains("reviews") && l.contains("True"))),
        "the import's status is not shown valid:\n{}\ncontroller log:\n{}",
        valid(),
        controller.log()
    );

    // A Service of the same name that is not ClusterLink's is left alone, and the import says
    // why, until it is labelled for adoption.
    let details = "{apiVersion: v1, kind: Service, metadata: {name: details, namespace: default}, spec: {ports: [{port: 80}]}}";
    cluster
        .kubectl_with(&["apply", "-f", "-"], Some(details))
        .unwrap();
    apply_import(&cluster, "details", 9082);
    let reason = |name: &str| {
        cluster
            .kubectl(&[
                "get",
                "import",
                name,
                "-n",
                "default",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"ImportValid\")].reason}",
            ])
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(30), || reason("details")
            == "ServiceConflict"),
        "the conflict is not reported: {:?}",
        reason("details")
    );
    cluster
        .kubectl(&[
            "label",
            "service",
            "details",
            "-n",
            "default",
            "clusterlink.net/adopt=true",
        ])
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || reason("details")
            == "ServiceReady"),
        "the labelled Service was not adopted: {:?}",
        reason("details")
    );

    // A restarted controller converges on what is there: no second Service or slice.
    let managed = || {
        let list = |kind: &str| {
            cluster
                .kubectl(&[
                    "get",
                    kind,
                    "-n",
                    "default",
                    "-l",
                    "clusterlink.net/import",
                    "-o",
                    "name",
                ])
                .unwrap_or_default()
        };
        format!("{}{}", list("services"), list("endpointslices"))
    };
    let before = managed();
    drop(controller);
    let controller = Controller::start(&cluster, &fabric, "p1");
    assert!(
        eventually(Duration::from_secs(30), || controller
            .log()
            .contains("control plane started")),
        "the controller did not restart:\n{}",
        controller.log()
    );
    // A new import served after the restart proves a whole pass ran since.
    apply_import(&cluster, "stamp", 9083);
    assert!(
        eventually(Duration::from_secs(30), || managed()
            .contains("service/stamp")),
        "the restarted controller serves no new import:\n{}",
        controller.log()
    );
    let after: String = managed()
        .lines()
        .filter(|l| !l.contains("stamp"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(after, before, "the restart changed the managed objects");

    // Deleting an import removes its Service and slice and frees its port.
    cluster
        .kubectl(&["delete", "import", "reviews", "-n", "default"])
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || !managed().contains("/reviews")),
        "the import's objects stayed: {}",
        managed()
    );

    // An Export without a port is admitted and takes its Service's one port; a Service with
    // several ports makes it say which to choose.
    let export_reason = |name: &str| {
        cluster
            .kubectl(&[
                "get",
                "export",
                name,
                "-n",
                "default",
                "-o",
                "jsonpath={.status.conditions[0].reason} {.status.conditions[0].message}",
            ])
            .unwrap_or_default()
    };
    cluster
        .kubectl_with(
            &["apply", "-f", "-"],
            Some(
                "{apiVersion: v1, kind: List, items: [
                  {apiVersion: v1, kind: Service, metadata: {name: web, namespace: default}, spec: {ports: [{port: 8080}]}},
                  {apiVersion: v1, kind: Service, metadata: {name: admin, namespace: default}, spec: {ports: [{name: a, port: 80}, {name: b, port: 81}]}},
                  {apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: web, namespace: default}, spec: {}},
                  {apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: admin, namespace: default}, spec: {}}]}",
            ),
        )
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || export_reason("web")
            == "ServiceFound connections go to Service default/web port 8080"),
        "{:?}",
        export_reason("web")
    );
    assert!(
        eventually(Duration::from_secs(30), || export_reason("admin")
            .starts_with(
                "ServicePortAmbiguous Service default/admin has several ports (80, 81)"
            )),
        "{:?}",
        export_reason("admin")
    );

    // Without one rule of the generated role, the loss is a clear error, not silence: the
    // controller can no longer write Services, and says so naming them.
    let role = cluster
        .kubectl(&[
            "get",
            "clusterrole",
            "-l",
            "app.kubernetes.io/part-of=clusterlink",
            "-o",
            "json",
        ])
        .unwrap();
    let mut roles: serde_json::Value = serde_json::from_str(&role).unwrap();
    let role = roles["items"]
        .as_array_mut()
        .unwrap()
        .first_mut()
        .expect("deploy made the controller's ClusterRole");
    let rules = role["rules"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| r["resources"] != serde_json::json!(["services"]));
    assert_eq!(rules.len(), before - 1, "no services rule to remove");
    cluster
        .kubectl_with(&["replace", "-f", "-"], Some(&role.to_string()))
        .unwrap();
    apply_import(&cluster, "ratings", 9081);
    assert!(
        eventually(Duration::from_secs(60), || {
            let log = controller.log();
            log.contains("forbidden") && log.contains("services") && log.contains("ratings")
        }),
        "the lost permission did not show; controller log:\n{}",
        controller.log()
    );
    assert!(
        cluster
            .kubectl(&["get", "service", "ratings", "-n", "default"])
            .is_err(),
        "a Service was created without the right to"
    );
    // And it is counted, for an alert to fire on.
    let (_, metrics) = raw_http(controller.ops_port, "GET", "/metrics", b"");
    let failed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("clusterlink_controller_failed_changes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(failed.is_some_and(|n| n > 0.0), "{metrics}");
}

/// How many imports and pods the scale test makes: a modest load by default, and the load the
/// figures in the notes were measured with when `CLUSTERLINK_K8S_SCALE=IMPORTS,PODS` says so
/// (`1000,5000`).
fn scale() -> (usize, usize) {
    std::env::var("CLUSTERLINK_K8S_SCALE")
        .ok()
        .and_then(|v| {
            let (imports, pods) = v.split_once(',')?;
            Some((imports.trim().parse().ok()?, pods.trim().parse().ok()?))
        })
        .unwrap_or((100, 500))
}

/// Creates `objects` through the API server with some requests in flight at once, as a busy
/// cluster's controllers would; each is created, then given `status` if one is set.
async fn create_many<K>(api: kube::Api<K>, objects: Vec<(K, Option<serde_json::Value>)>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    /// Requests in flight: enough to keep the API server busy, few enough for its rate limits.
    const IN_FLIGHT: usize = 16;
    let places = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (object, status) in objects {
        let (api, place) = (api.clone(), places.clone().acquire_owned().await.unwrap());
        tasks.spawn(async move {
            let _place = place;
            let name = object.meta().name.clone().unwrap();
            api.create(&kube::api::PostParams::default(), &object)
                .await
                .unwrap_or_else(|e| panic!("creating {name}: {e}"));
            if let Some(status) = status {
                api.patch_status(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(status),
                )
                .await
                .unwrap_or_else(|e| panic!("status of {name}: {e}"));
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// The controller's pass count, total pass time and changes made so far, from its metrics.
fn passes(controller: &Controller) -> (f64, f64, f64) {
    let (_, metrics) = raw_http(controller.ops_port, "GET", "/metrics", b"");
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    (
        value("clusterlink_controller_pass_duration_seconds_count "),
        value("clusterlink_controller_pass_duration_seconds_sum "),
        value("clusterlink_controller_changes_total "),
    )
}

#[test]
fn the_controller_converges_on_many_imports_among_many_pods() {
    use clusterlink_api::kubernetes::KubeImport;
    use k8s_openapi::api::core::v1::{Pod, Service};
    let (imports, pods) = scale();
    let root = tempfile::tempdir().unwrap();
    let (cluster, fabric) = deployed_p1(root.path());
    let controller = Controller::start(&cluster, &fabric, "p1");
    let peer = "{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {name: p2, namespace: clusterlink-system}, spec: {gateways: [{host: 10.0.0.2, port: 443}]}}";
    cluster
        .kubectl_with(&["apply", "-f", "-"], Some(peer))
        .unwrap();
    cluster
        .kubectl(&["create", "serviceaccount", "load", "-n", "default"])
        .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    });
    // Running pods with addresses and labels: each is a client host the controller tracks and
    // streams to the data plane.
    let pod_objects = (0..pods)
        .map(|i| {
            let pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("load-{i}"), "labels": {"app": format!("load-{}", i % 50)}},
                "spec": {"serviceAccountName": "load", "containers": [{"name": "main", "image": "example.invalid/none"}]},
            }))
            .unwrap();
            let address = format!("10.100.{}.{}", i / 250, i % 250 + 1);
            let status = serde_json::json!({"status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}});
            (pod, Some(status))
        })
        .collect();
    let began = std::time::Instant::now();
    runtime.block_on(create_many(
        kube::Api::<Pod>::namespaced(client.clone(), "default"),
        pod_objects,
    ));
    let pods_took = began.elapsed();
    let import_objects = (0..imports)
        .map(|i| {
            let import: KubeImport = serde_json::from_value(serde_json::json!({
                "apiVersion": "clusterlink.net/v1alpha1",
                "kind": "Import",
                "metadata": {"name": format!("load-{i}")},
                "spec": {"port": 80, "sources": [{"peer": "p2", "exportName": format!("load-{i}"), "exportNamespace": "default"}]},
            }))
            .unwrap();
            (import, None)
        })
        .collect();
    let began = std::time::Instant::now();
    runtime.block_on(create_many(
        kube::Api::<KubeImport>::namespaced(client.clone(), "default"),
        import_objects,
    ));
    let imports_took = began.elapsed();

    // Every import gets its Service, each on a port of its own.
    let services = kube::Api::<Service>::namespaced(client, "default");
    let managed = || {
        runtime
            .block_on(
                services.list(&kube::api::ListParams::default().labels("clusterlink.net/import")),
            )
            .map(|list| list.items)
            .unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(300), || managed().len() == imports),
        "{} of {imports} Services; controller log:\n{}",
        managed().len(),
        controller.log()
    );
    let converged = began.elapsed();
    let mut targets: Vec<String> = managed()
        .iter()
        .map(|s| {
            format!(
                "{:?}",
                s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].target_port
            )
        })
        .collect();
    targets.sort();
    targets.dedup();
    assert_eq!(targets.len(), imports, "two imports share a target port");

    // Once all is in place a pass changes nothing (it would otherwise rewrite every object every
    // few seconds); its cost is the mean of the next three.
    let settled = || {
        let (count, _, changes) = passes(&controller);
        eventually(Duration::from_secs(60), || {
            passes(&controller).0 >= count + 2.0
        }) && passes(&controller).2 == changes
    };
    assert!(
        eventually(Duration::from_secs(120), settled),
        "the controller never stopped making changes: {:?}\n{}",
        passes(&controller),
        controller.log()
    );
    let (count, sum, changes) = passes(&controller);
    assert!(
        eventually(Duration::from_secs(60), || passes(&controller).0
            >= count + 3.0),
        "the controller stopped passing"
    );
    let (count_after, sum_after, changes_after) = passes(&controller);
    assert_eq!(changes_after, changes, "a settled controller made changes");
    let pass = (sum_after - sum) / (count_after - count);
    eprintln!(
        "FIGURE controller with {imports} imports and {pods} pods: RSS {:.1} MiB, steady pass {:.0} ms; \
         pods created in {pods_took:.1?}, imports created in {imports_took:.1?}, all Services after {converged:.1?}",
        resident_mib(controller.child.id()),
        pass * 1000.0
    );
}

/// The chart in `deploy/helm/clusterlink`.
fn chart() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/clusterlink")
}

/// `helm <args>` from the test environment, with its own cache and configuration in `home`.
fn helm(home: &Path, args: &[&str]) -> std::process::Output {
    let bin = testenv_bin().expect("the Kubernetes test environment");
    std::process::Command::new(bin.join("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm (scripts/k8s-testenv builds it)")
}

/// Every object of a YAML stream, by kind, namespace and name.
fn objects_of(yaml: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| <serde_json::Value as serde::Deserialize>::deserialize(doc).unwrap())
        .filter(|o| !o.is_null())
        .map(|o| {
            let key = format!(
                "{} {}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            );
            (key, o)
        })
        .collect()
}

/// What `deploy peer --output` writes, but the namespace and the definitions (a chart leaves the
/// namespace to `helm --create-namespace`, and keeps the definitions in `crds/`).
fn deployed_objects(
    dir: &Path,
    files: &[&str],
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut all = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if files.contains(&name.as_str()) {
            all.extend(objects_of(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    all
}

#[test]
fn the_helm_chart_lints_and_renders_exactly_what_deploy_peer_writes() {
    let root = tempfile::tempdir().unwrap();
    let fabric = Fabric::new(&["server1"]);
    let fabric_dir = fabric.fabric_dir();
    let file = |p: &str| fabric_dir.join(p).display().to_string();
    let tls = [
        "--set-file".to_string(),
        format!("tls.ca={}", file("cert.pem")),
        "--set-file".to_string(),
        format!("tls.cert={}", file("server1/cert.pem")),
        "--set-file".to_string(),
        format!("tls.key={}", file("server1/key.pem")),
    ];
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let mut lint = vec!["lint", chart, "--strict", "--set", "peer.name=server1"];
    lint.extend(tls.iter().map(String::as_str));
    let linted = helm(root.path(), &lint);
    assert!(
        linted.status.success(),
        "{}{}",
        stdout(&linted),
        stderr(&linted)
    );
    let version = env!("CARGO_PKG_VERSION");
    let chart_yaml = std::fs::read_to_string(Path::new(chart).join("Chart.yaml")).unwrap();
    assert!(
        chart_yaml.contains(&format!("appVersion: \"{version}\"")),
        "the chart's appVersion is not {version}"
    );

    // The same peer three ways, each as `deploy peer` flags and as the chart's values.
    let cases: [(&[&str], &[&str], &str); 3] = [
        (&[], &["--set", "peer.name=server1"], "clusterlink-system"),
        (
            &[
                "--ingress",
                "NodePort",
                "--ingress-port",
                "30999",
                "--dataplane-replicas",
                "2",
                "--label",
                "region=eu",
                "--label",
                "tier=gold",
                "--mcs-api",
                "--service-monitor",
                "--container-registry",
                "registry.example.com/team/",
                "--tag",
                "v9",
                "--namespace",
                "team-a",
            ],
            &[
                "--set",
                "peer.name=server1,ingress.type=NodePort,ingress.port=30999",
                "--set",
                "dataplane.replicas=2,peer.labels.region=eu,peer.labels.tier=gold",
                "--set",
                "mcsApi=true,serviceMonitor=true",
                "--set",
                "image.registry=registry.example.com/team/,image.tag=v9",
            ],
            "team-a",
        ),
        (
            &["--ingress", "none", "--ingress-port", "8443"],
            &[
                "--set",
                "peer.name=server1,ingress.type=none,ingress.port=8443",
            ],
            "clusterlink-system",
        ),
    ];
    for (i, (flags, values, namespace)) in cases.iter().enumerate() {
        let out = root.path().join(format!("deploy-{i}"));
        // Without --tag, deploy peer names its own version, which the chart's default must be.
        let mut deploy = vec!["deploy", "peer", "--name", "server1"];
        deploy.extend_from_slice(flags);
        deploy.extend(["--output", out.to_str().unwrap()]);
        let written = run(CLUSTERLINK, &deploy, fabric.root());
        assert!(written.status.success(), "{}", stderr(&written));
        let mut template = vec!["template", "server1", chart, "--namespace", namespace];
        template.extend_from_slice(values);
        template.extend(tls.iter().map(String::as_str));
        let rendered = helm(root.path(), &template);
        assert!(rendered.status.success(), "{}", stderr(&rendered));
        let from_chart = objects_of(&stdout(&rendered));
        let from_deploy = deployed_objects(
            &out,
            &[
                "02-rbac.yaml",
                "03-secret.yaml",
                "04-services.yaml",
                "05-deployments.yaml",
                "06-monitoring.yaml",
            ],
        );
        assert_eq!(
            from_chart.keys().collect::<Vec<_>>(),
            from_deploy.keys().collect::<Vec<_>>(),
            "case {i}: the chart makes other objects than deploy peer"
        );
        for (key, object) in &from_deploy {
            assert_eq!(
                &from_chart[key], object,
                "case {i}: {key} differs between the chart and deploy peer"
            );
        }

        // The chart's definitions are the ones generated from the types.
        let crds = std::fs::read_to_string(out.join("00-crds.yaml")).unwrap();
        let chart_crds = Path::new(chart).join("crds/clusterlink.yaml");
        if std::env::var_os("UPDATE_CHART").is_some() {
            let header = "# Generated from the resource types (clusterlink deploy peer writes the same definitions);\n\
                # a test keeps this file equal to them: UPDATE_CHART=1 cargo test -p clusterlink --test kubernetes rewrites it.\n";
            std::fs::write(&chart_crds, format!("{header}{crds}")).unwrap();
        }
        assert_eq!(
            objects_of(&std::fs::read_to_string(&chart_crds).unwrap()),
            objects_of(&crds),
            "the chart's CRDs are stale: UPDATE_CHART=1 cargo test -p clusterlink --test kubernetes"
        );
    }

    // Values the chart cannot honour are refused, as deploy peer refuses its flags.
    for (values, says) in [
        (
            "peer.name=server1,ingress.type=NodePort,ingress.port=443",
            "outside the NodePort range",
        ),
        (
            "peer.name=server1,ingress.type=ingress-nginx",
            "use LoadBalancer, NodePort or none",
        ),
        ("peer.name=server1,dataplane.replicas=0", "at least 1"),
        (
            "peer.name=server1,ingress.port=0",
            "ingress.port must be 1-65535",
        ),
        ("peer.name=Server_1", "must be a DNS name"),
        ("ingress.type=none", "peer.name is required"),
    ] {
        let mut template = vec!["template", "server1", chart, "--set", values];
        template.extend(tls.iter().map(String::as_str));
        let refused = helm(root.path(), &template);
        assert!(!refused.status.success(), "{values}");
        assert!(
            stderr(&refused).contains(says),
            "{values}: {}",
            stderr(&refused)
        );
    }
    // A name YAML would read as a number (or `on` as a boolean) stays a string everywhere.
    for name in ["123", "on"] {
        let name_value = format!("peer.name={name}");
        let mut template = vec!["template", name, chart, "--set-string", &name_value];
        template.extend(tls.iter().map(String::as_str));
        let rendered = helm(root.path(), &template);
        assert!(rendered.status.success(), "{name}: {}", stderr(&rendered));
        for (key, object) in objects_of(&stdout(&rendered)) {
            assert_eq!(
                object["metadata"]["labels"]["clusterlink.net/peer"],
                serde_json::json!(name),
                "{key}"
            );
        }
    }
}

#[test]
fn the_helm_chart_installs_on_a_real_api_server_and_uninstalls() {
    let root = tempfile::tempdir().unwrap();
    let cluster = cluster(root.path());
    let fabric = Fabric::new(&["p1"]);
    let fabric_dir = fabric.fabric_dir();
    let set_file = |key: &str, p: &str| format!("{key}={}", fabric_dir.join(p).display());
    let (ca, cert, key) = (
        set_file("tls.ca", "cert.pem"),
        set_file("tls.cert", "p1/cert.pem"),
        set_file("tls.key", "p1/key.pem"),
    );
    let kubeconfig = cluster.kubeconfig.to_str().unwrap();
    let chart = chart();
    let installed = helm(
        root.path(),
        &[
            "install",
            "p1",
            chart.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            SYSTEM,
            "--create-namespace",
            "--set",
            "peer.name=p1",
            "--set-file",
            &ca,
            "--set-file",
            &cert,
            "--set-file",
            &key,
        ],
    );
    assert!(installed.status.success(), "{}", stderr(&installed));
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/imports.clusterlink.net",
        ])
        .unwrap();
    let installed = kinds_and_names(&deployed(&cluster));
    assert!(
        installed.contains(&"Deployment/cl-dataplane".to_string()),
        "{installed:#?}"
    );
    // Exactly what `deploy peer` makes: deploying the same peer over it adds nothing.
    let deploy = ["deploy", "peer", "--name", "p1", "--path"];
    let path = fabric.root().to_str().unwrap();
    let over = clusterlink(&cluster, root.path(), &[&deploy[..], &[path]].concat());
    assert!(over.status.success(), "{}", stderr(&over));
    assert_eq!(kinds_and_names(&deployed(&cluster)), installed);
    let listed = helm(
        root.path(),
        &["list", "--kubeconfig", kubeconfig, "--namespace", SYSTEM],
    );
    assert!(stdout(&listed).contains("deployed"), "{}", stdout(&listed));

    let uninstalled = helm(
        root.path(),
        &[
            "uninstall",
            "p1",
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            SYSTEM,
        ],
    );
    assert!(uninstalled.status.success(), "{}", stderr(&uninstalled));
    assert_only_definitions_left(&cluster);
}
