//! The management API driven by the real gwctl against a real gateway process.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{
    CLUSTERLINK, Fabric, GWCTL, GatewayProcess, eventually, raw_http, run, stderr, stdout,
};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn example(name: &str) -> String {
    examples().join(name).display().to_string()
}

/// Everything the gateway holds, as JSON text, for before/after comparisons.
fn everything(gw: &GatewayProcess) -> String {
    [
        "peers",
        "exports",
        "imports",
        "accesspolicies",
        "privilegedaccesspolicies",
    ]
    .iter()
    .map(|k| gw.gwctl_ok(&["get", k, "-A", "-o", "json"]))
    .collect()
}

#[test]
fn example_manifests_apply_and_list_back() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    let out = gw.gwctl_ok(&["apply", "-f", &example("manifests")]);
    for line in [
        "Peer server1 created",
        "Peer server2 created",
        "Import default/reviews created",
        "AccessPolicy default/deny-firefox created",
        "AccessPolicy default/allow-all created",
        "Export default/reviews created",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let again = gw.gwctl_ok(&["apply", "-f", &example("manifests")]);
    assert_eq!(again.matches(" unchanged").count(), 6, "{again}");

    // The import listens a moment after the apply is acknowledged.
    let reviews_row = || {
        let table = gw.gwctl_ok(&["get", "imports"]);
        let row = table
            .lines()
            .find(|l| l.starts_with("reviews"))
            .map(String::from);
        (table, row.unwrap_or_default())
    };
    assert!(eventually(Duration::from_secs(10), || gw
        .gwctl_ok(&["get", "import", "reviews", "-n", "default", "-o", "json"])
        .contains("\"Listening\"")));
    let (table, row) = reviews_row();
    for cell in [
        "9080",
        "static",
        "server1/default/reviews,server2/default/reviews",
    ] {
        assert!(row.contains(cell), "{cell} not in {row}");
    }
    // Listening, but not ready: the example's peers are nowhere, and the table says so.
    assert!(
        ["NotProbed", "PeersUnreachable"]
            .iter()
            .any(|reason| row.contains(reason)),
        "{row}"
    );
    assert!(!row.contains("True"), "{row}");
    assert!(table.starts_with("NAME"), "{table}");

    // describe prints a policy's selectors as get does, one a line, not as JSON.
    let described = gw.gwctl_ok(&["describe", "policy", "deny-firefox"]);
    assert!(
        described.contains("From:       client.clusterlink.net/labels.app=firefox"),
        "{described}"
    );
    assert!(
        described.contains("To:         export.clusterlink.net/name in (speedtest)"),
        "{described}"
    );
    assert!(!described.contains("workloadSelector"), "{described}");
    let policies = gw.gwctl_ok(&["get", "policies", "-A"]);
    assert!(
        policies.contains("client.clusterlink.net/labels.app=firefox"),
        "{policies}"
    );
    assert!(
        policies.contains("export.clusterlink.net/name in (speedtest)"),
        "{policies}"
    );

    // YAML output is a manifest again: applying it changes nothing.
    let yaml = gw.gwctl_ok(&["get", "import", "reviews", "-o", "yaml"]);
    assert!(
        yaml.contains("lbScheme: static") && yaml.contains("type: ImportValid"),
        "{yaml}"
    );
    let file = f.root().join("reviews.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = gw.gwctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out.trim(), "Import default/reviews unchanged");

    // A changed spec is reported as configured and is what get returns.
    std::fs::write(&file, yaml.replace("lbScheme: static", "lbScheme: random")).unwrap();
    assert_eq!(
        gw.gwctl_ok(&["apply", "-f", file.to_str().unwrap()]).trim(),
        "Import default/reviews configured"
    );
    let json: serde_json::Value =
        serde_json::from_str(&gw.gwctl_ok(&["get", "import", "reviews", "-o", "json"])).unwrap();
    assert_eq!(json["spec"]["lbScheme"], "random");

    let peers = gw.gwctl_ok(&["get", "peers", "-o", "json"]);
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    assert_eq!(peers["items"].as_array().unwrap().len(), 2);
}

#[test]
fn broken_manifests_are_explained_and_change_nothing() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    gw.gwctl_ok(&["apply", "-f", &example("manifests")]);
    let before = everything(&gw);

    let o = gw.gwctl(&["apply", "-f", &example("broken-import.yaml")]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("spec.sources[1].peer: required"),
        "{}",
        stderr(&o)
    );

    let cases = [
        (
            "malformed.yaml",
            "kind: Import\nmetadata: {name: [unclosed\n",
            "not valid YAML or JSON",
        ),
        (
            "gizmo.yaml",
            "apiVersion: clusterlink.net/v1alpha1\nkind: Gizmo\nmetadata: {name: g}\n",
            "unknown kind \"Gizmo\"",
        ),
        (
            "long.yaml",
            &format!(
                "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: {}}}\nspec: {{port: 80, sources: [{{peer: a, exportName: r, exportNamespace: d}}]}}\n",
                "a".repeat(64)
            ),
            "metadata.name: must be at most 63 characters",
        ),
        (
            "scheme.yaml",
            "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {name: x}\nspec: {port: 80, lbScheme: fastest, sources: [{peer: a, exportName: r, exportNamespace: d}]}\n",
            "spec.lbScheme: unknown variant `fastest`",
        ),
        (
            "port.yaml",
            "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: x}\nspec: {port: 70000}\n",
            "spec.port: must be between 1 and 65535 (got 70000)",
        ),
    ];
    for (name, text, expected) in cases {
        let path = f.root().join(name);
        std::fs::write(&path, text).unwrap();
        let o = gw.gwctl(&["apply", "-f", path.to_str().unwrap()]);
        assert!(!o.status.success(), "{name} was accepted");
        assert!(
            stderr(&o).contains(expected),
            "{name}: expected {expected:?} in {}",
            stderr(&o)
        );
    }

    // The server checks too: a client that skips gwctl gets the same field path.
    let (code, body) = raw_http(
        gw.port(),
        "PUT",
        "/apis/clusterlink.net/v1alpha1/namespaces/default/imports/ratings",
        std::fs::read(example("broken-import.yaml"))
            .unwrap()
            .as_slice(),
    );
    assert_eq!(code, 400, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.sources[1].peer"
    );
    assert_eq!(status["details"]["causes"][0]["message"], "required");

    // 63 characters is fine.
    let ok = gw.gwctl(&[
        "create",
        "import",
        "--name",
        &"a".repeat(63),
        "--port",
        "80",
        "--peer",
        "p2",
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    gw.gwctl_ok(&["delete", "import", &"a".repeat(63)]);

    assert_eq!(
        everything(&gw),
        before,
        "a refused request changed the store"
    );
}

#[test]
fn api_status_codes() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    let api = "/apis/clusterlink.net/v1alpha1";
    let export = b"apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: web}\nspec: {port: 80}\n";

    let (code, _) = raw_http(
        gw.port(),
        "POST",
        &format!("{api}/namespaces/default/exports"),
        export,
    );
    assert_eq!(code, 201);
    let (code, body) = raw_http(
        gw.port(),
        "POST",
        &format!("{api}/namespaces/default/exports"),
        export,
    );
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("\"reason\":\"AlreadyExists\""), "{body}");
    let before = everything(&gw);

    let big = format!(
        "{}# {}\n",
        String::from_utf8_lossy(export),
        "x".repeat(2 * 1024 * 1024)
    );
    let (code, body) = raw_http(
        gw.port(),
        "PUT",
        &format!("{api}/namespaces/default/exports/web"),
        big.as_bytes(),
    );
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("RequestEntityTooLarge"), "{body}");

    let (code, body) = raw_http(
        gw.port(),
        "DELETE",
        &format!("{api}/namespaces/default/exports/nope"),
        b"",
    );
    assert_eq!(code, 404, "{body}");
    let (code, body) = raw_http(gw.port(), "GET", &format!("{api}/gizmos"), b"");
    assert_eq!(code, 404);
    assert!(body.contains("unknown resource \\\"gizmos\\\""), "{body}");
    let (code, body) = raw_http(gw.port(), "GET", &format!("{api}/imports/x"), b"");
    assert_eq!(code, 404);
    assert!(body.contains("namespaced"), "{body}");
    let (code, body) = raw_http(
        gw.port(),
        "PUT",
        &format!("{api}/namespaces/default/exports/other"),
        export,
    );
    assert_eq!(code, 400);
    assert!(body.contains("metadata.name"), "{body}");
    let (code, body) = raw_http(gw.port(), "PUT", &format!("{api}/namespaces/team-a/exports/web"), b"apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: web, namespace: default}\nspec: {port: 80}\n");
    assert_eq!(code, 400);
    assert!(body.contains("metadata.namespace"), "{body}");
    let (code, _) = raw_http(
        gw.port(),
        "PUT",
        &format!("{api}/namespaces/default/imports/web"),
        export,
    );
    assert_eq!(code, 400);
    let (code, _) = raw_http(
        gw.port(),
        "PUT",
        &format!("{api}/namespaces/default/exports/web"),
        b"\xff\xfe",
    );
    assert_eq!(code, 400);
    assert_eq!(everything(&gw), before);

    let o = gw.gwctl(&["create", "export", "--name", "web", "--port", "80"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Export default/web already exists"),
        "{}",
        stderr(&o)
    );
    let o = gw.gwctl(&["delete", "export", "nope"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Export default/nope not found"),
        "{}",
        stderr(&o)
    );
    assert_eq!(everything(&gw), before);

    let (code, body) = raw_http(gw.port(), "GET", &format!("{api}/peers"), b"");
    assert_eq!(code, 200);
    assert!(body.contains("\"kind\":\"PeerList\""), "{body}");
}

#[test]
fn create_get_delete_with_flags_and_namespaces() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    gw.gwctl_ok(&[
        "create",
        "peer",
        "--name",
        "p2",
        "--host",
        "10.0.0.2",
        "--host",
        "gw2.example.com",
        "--port",
        "8443",
        "--label",
        "env=prod",
    ]);
    gw.gwctl_ok(&[
        "create", "import", "--name", "web", "--port", "8080", "--peer", "p2", "--peer", "p3",
        "-n", "team-a",
    ]);
    gw.gwctl_ok(&[
        "create", "export", "--name", "db", "--port", "5432", "--host", "10.1.1.1",
    ]);
    gw.gwctl_ok(&[
        "create",
        "policy",
        "--name",
        "allow-prod",
        "--action",
        "allow",
        "--from",
        "peer.clusterlink.net/labels.env=prod",
    ]);
    gw.gwctl_ok(&[
        "create",
        "policy",
        "--name",
        "deny-all",
        "--action",
        "deny",
        "--privileged",
    ]);

    let peers = gw.gwctl_ok(&["get", "peers"]);
    assert!(
        peers.contains("10.0.0.2:8443,gw2.example.com:8443"),
        "{peers}"
    );
    let import: serde_json::Value =
        serde_json::from_str(&gw.gwctl_ok(&["get", "import", "web", "-n", "team-a", "-o", "json"]))
            .unwrap();
    assert_eq!(import["spec"]["sources"][1]["peer"], "p3");
    assert_eq!(import["spec"]["sources"][1]["exportNamespace"], "team-a");
    assert_eq!(import["spec"]["lbScheme"], "round-robin");
    let o = gw.gwctl(&["get", "imports"]);
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("No imports found in namespace default"),
        "{}",
        stderr(&o)
    );
    let all = gw.gwctl_ok(&["get", "imports", "-A"]);
    assert!(
        all.starts_with("NAMESPACE") && all.contains("team-a"),
        "{all}"
    );
    assert!(gw.gwctl_ok(&["get", "pap"]).contains("deny-all"));

    let bad = gw.gwctl(&[
        "create", "import", "--name", "x", "--port", "0", "--peer", "p2",
    ]);
    assert!(
        stderr(&bad).contains("--port must be between 1 and 65535"),
        "{}",
        stderr(&bad)
    );
    let bad = gw.gwctl(&["create", "peer", "--name", "Bad", "--host", "h"]);
    assert!(stderr(&bad).contains("metadata.name"), "{}", stderr(&bad));

    gw.gwctl_ok(&["delete", "import", "web", "-n", "team-a"]);
    gw.gwctl_ok(&["delete", "pap", "deny-all"]);
    assert!(
        gw.gwctl_ok(&["get", "imports", "-A", "-o", "json"])
            .contains("\"items\": []")
    );

    // delete -f removes what the manifests name.
    gw.gwctl_ok(&["apply", "-f", &example("manifests")]);
    let out = gw.gwctl_ok(&["delete", "-f", &example("manifests/peers.yaml")]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(!gw.gwctl_ok(&["get", "peers"]).contains("server1"));
}

#[test]
fn objects_survive_a_restart_and_sigterm_is_clean() {
    let f = Fabric::new(&["p1"]);
    let mut gw = f.start("p1");
    gw.gwctl_ok(&["apply", "-f", &example("manifests")]);
    let before = everything(&gw);
    assert!(
        gw.terminate().success(),
        "SIGTERM must end the gateway cleanly"
    );
    let log = std::fs::read_to_string(&gw.stderr_path).unwrap();
    assert!(log.contains("gateway stopped"), "{log}");
    let gw = f.start("p1");
    assert_eq!(everything(&gw), before);
}

#[test]
fn one_data_directory_serves_one_gateway() {
    let f = Fabric::new(&["p1"]);
    let _gw = f.start("p1");
    let o = std::process::Command::new(support::CL_GATEWAY)
        .args([
            "--peer",
            "p1",
            "--management-address",
            "127.0.0.1:0",
            "--peer-address",
            "127.0.0.1:0",
        ])
        .current_dir(f.root())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("in use by another process"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn saved_contexts_make_commands_short() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    let config = f.root().join("gwctl.yaml");
    let gwctl = |args: &[&str]| {
        std::process::Command::new(GWCTL)
            .args(args)
            .env("GWCTL_CONFIG", &config)
            .output()
            .unwrap()
    };
    let o = gwctl(&["get", "peers"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("gwctl config set-context"),
        "{}",
        stderr(&o)
    );
    let o = gwctl(&[
        "config",
        "set-context",
        "p1",
        "--server",
        &gw.url,
        "-n",
        "team-a",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(current)"));
    let o = gwctl(&["create", "export", "--name", "web", "--port", "80"]);
    assert_eq!(
        stdout(&o).trim(),
        "Export team-a/web created",
        "{}",
        stderr(&o)
    );
    assert!(stdout(&gwctl(&["get", "exports"])).contains("web"));
    assert_eq!(stdout(&gwctl(&["config", "current-context"])).trim(), "p1");
    let o = gwctl(&["config", "use-context", "nope"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no context named \"nope\""),
        "{}",
        stderr(&o)
    );
    let o = gwctl(&["--context", "p1", "config", "get-contexts"]);
    assert!(stdout(&o).contains("* p1"), "{}", stdout(&o));

    gw.gwctl_ok(&["get", "peers"]);
    drop(gw);
    let o = gwctl(&["get", "exports"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach the gateway"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn management_beyond_loopback_requires_an_admin_certificate() {
    let f = Fabric::new(&["p1", "p2"]);
    assert!(
        run(
            CLUSTERLINK,
            &["create", "admin-cert", "--name", "alice"],
            f.root()
        )
        .status
        .success()
    );
    let gw = f.start_with(
        "p1",
        &[
            "--management-address",
            "0.0.0.0:0",
            "--peer-address",
            "127.0.0.1:0",
        ],
    );
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    let port = gw.port();
    let fabric = f.fabric_dir();
    let contexts = support::GwctlConfig::new(f.root().join("gwctl.yaml"));
    contexts.set_tls_context("admin", port, "p1", &fabric, &fabric.join("admins/alice"));
    contexts.set_tls_context("impostor", port, "p1", &fabric, &fabric.join("p2"));
    let gwctl = |ctx: &str, args: &[&str]| contexts.run(ctx, args);
    let o = gwctl(
        "admin",
        &["create", "export", "--name", "web", "--port", "80"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&gwctl("admin", &["get", "exports"])).contains("web"));

    // Another peer's certificate is valid in the fabric but is no admin credential.
    let o = gwctl("impostor", &["get", "exports"]);
    assert!(
        !o.status.success(),
        "a peer certificate was accepted as an admin"
    );
    let log = std::fs::read_to_string(&gw.stderr_path).unwrap();
    assert!(
        log.contains("not an admin certificate"),
        "refused for another reason:\n{log}"
    );
    // Plain HTTP is not served there at all.
    let o = gw.gwctl(&["get", "exports"]);
    assert!(!o.status.success());
    let plain = std::process::Command::new(GWCTL)
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "get",
            "exports",
        ])
        .env("GWCTL_CONFIG", &contexts.path)
        .output()
        .unwrap();
    assert!(!plain.status.success());
}

#[test]
fn bulk_apply_reports_in_document_order_and_later_documents_win() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    let doc = |name: &str, port: u32| {
        format!(
            "---\napiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {{name: {name}}}\nspec: {{port: {port}}}\n"
        )
    };
    // Many documents (more than gwctl's connections), one object three times, one broken one.
    let mut text = String::new();
    let mut expected = Vec::new();
    for i in 0..60 {
        text.push_str(&doc(&format!("e{i}"), 1000 + i));
        expected.push(format!("Export default/e{i} created"));
        if i == 30 {
            text.push_str(&doc("e0", 2));
            expected.push("Export default/e0 configured".into());
            text.push_str(&doc("e0", 3));
            expected.push("Export default/e0 configured".into());
            text.push_str(&doc("bad", 0));
        }
    }
    let path = f.root().join("bulk.yaml");
    std::fs::write(&path, text).unwrap();
    let o = gw.gwctl(&["apply", "-f", path.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "the broken document must fail the command"
    );
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), expected);
    assert!(
        stderr(&o).contains("document 34 failed: spec.port: must be between 1 and 65535 (got 0)"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("1 of 63 objects failed"),
        "{}",
        stderr(&o)
    );
    let e0: serde_json::Value =
        serde_json::from_str(&gw.gwctl_ok(&["get", "export", "e0", "-o", "json"])).unwrap();
    assert_eq!(e0["spec"]["port"], 3);

    let o = gw.gwctl(&["delete", "-f", path.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("Export default/e59 deleted"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("Export default/e0 failed: Export default/e0 not found"),
        "{}",
        stderr(&o)
    );
    assert!(
        gw.gwctl_ok(&["get", "exports", "-o", "json"])
            .contains("\"items\": []")
    );
}

#[test]
fn what_get_o_yaml_prints_applies_with_server_owned_fields_ignored_once() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    // What `kubectl get -o yaml` prints for two objects: server-owned metadata and status.
    let dir = tempfile::tempdir().unwrap();
    let printed = dir.path().join("printed.yaml");
    std::fs::write(
        &printed,
        "apiVersion: clusterlink.net/v1alpha1
kind: Peer
metadata:
  name: p2
  namespace: clusterlink-system
  uid: 5f0c8a0e-7a53-4a39-9d1a-1b2c3d4e5f60
  resourceVersion: \"4821\"
  generation: 3
  creationTimestamp: \"2026-01-01T00:00:00Z\"
  managedFields:
  - {manager: kubectl-client-side-apply, operation: Update, apiVersion: clusterlink.net/v1alpha1}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: \"{}\"}
spec: {gateways: [{host: 10.0.0.2, port: 443}]}
status:
  labels: {env: prod}
  conditions:
  - {type: PeerReachable, status: \"True\", reason: Healthy, message: ok, observedGeneration: 3, lastTransitionTime: \"2026-01-01T00:00:00Z\"}
---
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: allow-all, namespace: default, uid: 0b6f, resourceVersion: \"17\", generation: 1}
spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}
status: {conditions: []}
",
    )
    .unwrap();
    let out = gw.gwctl(&["apply", "-f", printed.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let note = stderr(&out);
    assert_eq!(
        note.matches("note: ignored fields the server owns").count(),
        1,
        "{note}"
    );
    for field in [
        "metadata.uid",
        "metadata.managedFields",
        "metadata.generation",
        "status",
    ] {
        assert!(note.contains(field), "{field} not named in: {note}");
    }
    let peer = gw.gwctl_ok(&["get", "peer", "p2", "-o", "yaml"]);
    assert!(!peer.contains("5f0c8a0e"), "the uid was kept:\n{peer}");
    assert!(
        !peer.contains("env: prod"),
        "a status from input was kept:\n{peer}"
    );

    // A misspelt spec field is still an error.
    std::fs::write(
        &printed,
        "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: p3, uid: x}\nspec: {gateway: [{host: h, port: 1}]}\n",
    )
    .unwrap();
    let out = gw.gwctl(&["apply", "-f", printed.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("gateway"), "{}", stderr(&out));

    // An export without a port is a Kubernetes form (the Service's port); here it says so.
    std::fs::write(
        &printed,
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: web}\nspec: {}\n",
    )
    .unwrap();
    let out = gw.gwctl(&["apply", "-f", printed.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("spec.port: required on a standalone gateway"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn version_names_both_ends_and_mistakes_get_a_hint() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    let version = gw.gwctl_ok(&["version"]);
    let client = format!("client: gwctl {}\n", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&client), "{version}");
    assert!(
        version.contains(&format!(
            "server: {} (API clusterlink.net/v1alpha1), peer p1",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );

    // A misspelt kind gets the closest one; a word far from any kind gets only the list.
    let out = gw.gwctl(&["get", "imprts"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("did you mean \"imports\"?"),
        "{}",
        stderr(&out)
    );
    let out = gw.gwctl(&["get", "services"]);
    assert!(!stderr(&out).contains("did you mean"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("use peers, exports"),
        "{}",
        stderr(&out)
    );

    // A server without a scheme is explained, with both forms to choose from.
    let bare = format!("127.0.0.1:{}", gw.port());
    let out = run(GWCTL, &["--server", &bare, "get", "peers"], f.root());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("has no scheme: use http://{bare}")),
        "{}",
        stderr(&out)
    );

    // Pointed at the peer port by mistake, gwctl says what it reached and where to go instead.
    let peer_port = format!("http://{}", gw.peer_address);
    let out = run(GWCTL, &["--server", &peer_port, "get", "peers"], f.root());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is this a gateway's peer port")
            && stderr(&out).contains("--management-address"),
        "{}",
        stderr(&out)
    );

    // A command's --help lists its own options apart from those every command takes.
    let help = run(GWCTL, &["get", "--help"], f.root());
    let help = stdout(&help);
    let (own, global) = help
        .split_once("Global options (every command):")
        .unwrap_or_else(|| panic!("no global heading in\n{help}"));
    assert!(
        own.contains("--selector") && !own.contains("--server"),
        "{help}"
    );
    assert!(
        global.contains("--server") && !global.contains("--selector"),
        "{help}"
    );

    // Completion scripts for three shells, from the same definitions as the parser.
    for (shell, marker) in [
        ("bash", "_gwctl()"),
        ("zsh", "#compdef gwctl"),
        ("fish", "complete -c gwctl"),
    ] {
        let out = run(GWCTL, &["completion", shell], f.root());
        assert!(out.status.success(), "{}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("apply") && script.contains("version"),
            "{shell}"
        );
        // Kinds are completed too (clap's fish scripts complete no positional values).
        if shell != "fish" {
            assert!(
                script.contains("privilegedaccesspolicies") && script.contains("offers"),
                "{shell}: {script}"
            );
        }
    }
}

#[test]
fn get_all_with_a_label_selector_and_names_for_scripts() {
    let f = Fabric::new(&["p1"]);
    let gw = f.start("p1");
    gw.apply(
        "apiVersion: clusterlink.net/v1alpha1
kind: Peer
metadata: {name: p2, labels: {tier: gold}}
spec: {gateways: [{host: 10.0.0.2, port: 443}]}
---
apiVersion: clusterlink.net/v1alpha1
kind: Export
metadata: {name: web, labels: {tier: gold}}
spec: {host: 10.0.0.3, port: 80}
---
apiVersion: clusterlink.net/v1alpha1
kind: Export
metadata: {name: db, labels: {tier: silver}}
spec: {host: 10.0.0.4, port: 5432}
",
    );
    assert_eq!(
        gw.gwctl_ok(&["get", "all", "-A", "-l", "tier=gold", "-o", "name"]),
        "peer.clusterlink.net/p2\nexport.clusterlink.net/web\n"
    );
    assert_eq!(
        gw.gwctl_ok(&["get", "exports", "-l", "tier!=gold", "-o", "name"]),
        "export.clusterlink.net/db\n"
    );
    // One table per kind that has objects.
    let tables = gw.gwctl_ok(&["get", "all", "-A"]);
    let headers = tables.lines().filter(|l| l.ends_with("AGE")).count();
    assert_eq!(headers, 2, "{tables}");
    assert!(
        tables.contains("GATEWAYS") && tables.contains("HOST"),
        "{tables}"
    );
    // Each under its kind's name.
    assert!(
        tables.lines().any(|l| l.starts_with("peers ("))
            && tables.lines().any(|l| l.starts_with("exports (")),
        "{tables}"
    );
    let out = gw.gwctl(&["get", "exports", "-l", "tier in (gold)"]);
    assert!(
        stderr(&out).contains("set-based selectors"),
        "{}",
        stderr(&out)
    );
    let out = gw.gwctl(&["get", "all", "web"]);
    assert!(stderr(&out).contains("name a kind"), "{}", stderr(&out));
}

#[test]
fn a_fabric_on_ipv6_is_managed_by_gwctl_and_carries_traffic() {
    use std::io::{Read, Write};
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED a_fabric_on_ipv6: this machine has no IPv6 loopback (::1)");
        return;
    }
    let fabric = Fabric::new(&["server1", "client1"]);
    let on_ipv6 = [
        "--management-address",
        "[::1]:0",
        "--peer-address",
        "[::1]:0",
        "--import-address",
        "::1",
    ];
    let server = fabric.start_with("server1", &on_ipv6);
    let client = fabric.start_with("client1", &on_ipv6);
    // Every gwctl command below reaches its gateway at http://[::1]:PORT.
    assert!(server.url.starts_with("http://[::1]:"), "{}", server.url);
    let backend = support::Backend::start_at(std::net::Ipv6Addr::LOCALHOST, 0, "v6");
    let backend_port = backend.port.to_string();
    server.gwctl_ok(&[
        "create",
        "export",
        "--name",
        "svc",
        "--host",
        "::1",
        "--port",
        &backend_port,
    ]);
    for gateway in [&server, &client] {
        gateway.gwctl_ok(&["create", "policy", "--name", "allow", "--action", "allow"]);
    }
    let link = server.gwctl_ok(&["link"]);
    assert!(link.contains("::1"), "{link}");
    client.apply(&link);
    let import_port = support::free_port().to_string();
    client.gwctl_ok(&[
        "create",
        "import",
        "--name",
        "svc",
        "--port",
        &import_port,
        "--peer",
        "server1",
    ]);
    client.wait_listening("svc");
    let served = eventually(Duration::from_secs(10), || {
        let Ok(mut stream) = std::net::TcpStream::connect(format!("[::1]:{import_port}")) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(b"over six");
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer == "v6 8\nover six"
    });
    assert!(served, "no answer over IPv6; client log:\n{}", client.log());
    let peers = client.gwctl_ok(&["get", "peers"]);
    assert!(peers.contains("True"), "{peers}");
    let check = client.gwctl(&["check"]);
    assert!(check.status.success(), "{}", stdout(&check));
}
