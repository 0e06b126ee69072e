//! The custom resource definitions generated from the API types: their shape, that Kubernetes
//! would accept them (structural schemas), and that the project's example manifests validate
//! against them, as `kubectl apply` with strict field validation would check.

use std::path::PathBuf;

use clusterlink_api::kubernetes::crds;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn crd(kind: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

fn schema(kind: &str) -> Value {
    let crd = crd(kind);
    let version = &crd.spec.versions[0];
    serde_json::to_value(&version.schema.as_ref().unwrap().open_api_v3_schema).unwrap()
}

#[test]
fn five_kinds_in_the_established_group_with_status_and_columns() {
    let all = crds();
    let names: Vec<_> = all
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "peers.clusterlink.net",
            "exports.clusterlink.net",
            "imports.clusterlink.net",
            "accesspolicies.clusterlink.net",
            "privilegedaccesspolicies.clusterlink.net",
        ]
    );
    for c in &all {
        assert_eq!(c.spec.group, "clusterlink.net");
        assert_eq!(c.spec.versions.len(), 1);
        let v = &c.spec.versions[0];
        assert_eq!(
            (v.name.as_str(), v.served, v.storage),
            ("v1alpha1", true, true)
        );
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{} has no status subresource",
            c.spec.names.kind
        );
        let scope = if c.spec.names.kind == "PrivilegedAccessPolicy" {
            "Cluster"
        } else {
            "Namespaced"
        };
        assert_eq!(c.spec.scope, scope, "{}", c.spec.names.kind);
    }
    let columns = |kind: &str| -> Vec<(String, String)> {
        crd(kind).spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.clone(), c.json_path.clone()))
            .collect()
    };
    assert!(columns("Import").contains(&(
        "Valid".into(),
        ".status.conditions[?(@.type==\"ImportValid\")].status".into()
    )));
    assert!(columns("Import").contains(&("Target".into(), ".spec.targetPort".into())));
    assert!(columns("Export").contains(&(
        "Valid".into(),
        ".status.conditions[?(@.type==\"ExportValid\")].status".into()
    )));
    assert!(columns("Peer").contains(&(
        "Reachable".into(),
        ".status.conditions[?(@.type==\"PeerReachable\")].status".into()
    )));
    for kind in ["AccessPolicy", "PrivilegedAccessPolicy"] {
        assert!(columns(kind).contains(&("Action".into(), ".spec.action".into())));
        assert!(columns(kind).contains(&(
            "Valid".into(),
            ".status.conditions[?(@.type==\"PolicyValid\")].status".into()
        )));
    }
}

/// Kubernetes refuses a CRD whose schema is not structural: every node says its type, and an
/// object lists its properties or allows any (`additionalProperties`), never both.
fn assert_structural(schema: &Value, path: &str) {
    let obj = schema
        .as_object()
        .unwrap_or_else(|| panic!("{path}: not a schema"));
    for banned in ["anyOf", "oneOf", "allOf", "$ref", "definitions", "$defs"] {
        assert!(
            !obj.contains_key(banned),
            "{path}: {banned} is not structural"
        );
    }
    let preserves = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    assert!(obj.contains_key("type") || preserves, "{path}: no type");
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        assert!(
            !obj.contains_key("additionalProperties"),
            "{path}: properties and additionalProperties"
        );
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(extra, &format!("{path}[*]"));
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
}

#[test]
fn schemas_are_structural() {
    for c in crds() {
        assert_structural(&schema(&c.spec.names.kind), &c.spec.names.kind);
    }
}

/// Validates `value` against an OpenAPI v3 schema as the API server does for custom resources,
/// with unknown fields refused (kubectl's default strict field validation).
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {options:?}"));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                return errors.push(format!("{path}: must be an object"));
            };
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !obj.contains_key(r.as_str().unwrap()) {
                    errors.push(format!("{path}.{}: required", r.as_str().unwrap()));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|v| v.is_object());
            if props.is_none() && extra.is_none() {
                return; // free-form (metadata)
            }
            for (k, v) in obj {
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) | (None, Some(s)) => {
                        validate(s, v, &format!("{path}.{k}"), errors)
                    }
                    (None, None) => errors.push(format!("{path}.{k}: unknown field")),
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    validate(&schema["items"], item, &format!("{path}[{i}]"), errors);
                }
            }
            None => errors.push(format!("{path}: must be an array")),
        },
        Some("string") if !value.is_string() => errors.push(format!("{path}: must be a string")),
        Some("boolean") if !value.is_boolean() => errors.push(format!("{path}: must be a boolean")),
        Some("integer") => match value.as_i64() {
            Some(n) => {
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                    && (n as f64) < min
                {
                    errors.push(format!("{path}: {n} is below {min}"));
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                    && (n as f64) > max
                {
                    errors.push(format!("{path}: {n} is above {max}"));
                }
            }
            None => errors.push(format!("{path}: must be an integer")),
        },
        _ => {}
    }
}

fn check(document: &Value) -> Vec<String> {
    let kind = document["kind"].as_str().expect("kind");
    // The API server checks these itself; the generated schema describes the rest.
    let mut body = document.clone();
    for implicit in ["apiVersion", "kind", "metadata"] {
        body.as_object_mut().unwrap().remove(implicit);
    }
    let mut errors = Vec::new();
    validate(&schema(kind), &body, kind, &mut errors);
    errors
}

fn documents(path: &PathBuf) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[test]
fn the_example_manifests_validate_against_the_schemas() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for dir in ["manifests", "kubernetes"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            for doc in documents(&file) {
                if doc["apiVersion"] != "clusterlink.net/v1alpha1" {
                    continue;
                }
                let errors = check(&doc);
                assert!(errors.is_empty(), "{}: {errors:?}", file.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} example objects found");
}

#[test]
fn the_schemas_refuse_what_standalone_mode_refuses() {
    let broken = documents(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/broken-import.yaml"),
    );
    assert_eq!(check(&broken[0]), ["Import.spec.sources[1].peer: required"]);
    for (yaml, want) in [
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: x}, spec: {port: 0}}",
            "Export.spec.port: 0 is below 1",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: x}, spec: {port: 70000}}",
            "Export.spec.port: 70000 is above 65535",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: x}, spec: {port: 80, hots: y}}",
            "Export.spec.hots: unknown field",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Import, metadata: {name: x}, spec: {port: 80, sources: [], lbScheme: fastest}}",
            "Import.spec.lbScheme: \"fastest\" is not one of",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: AccessPolicy, metadata: {name: x}, spec: {action: maybe, from: [], to: []}}",
            "AccessPolicy.spec.action: \"maybe\" is not one of",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: AccessPolicy, metadata: {name: x}, spec: {action: allow, from: [{workloadSelector: {matchExpressions: [{key: a, operator: Like}]}}], to: []}}",
            "operator: \"Like\" is not one of",
        ),
        (
            "{apiVersion: clusterlink.net/v1alpha1, kind: Peer, metadata: {name: x}, spec: {gateways: [{host: h}]}}",
            "Peer.spec.gateways[0].port: required",
        ),
    ] {
        let doc: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let errors = check(&doc);
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{yaml}: {errors:?}"
        );
    }
}

#[test]
fn crds_round_trip_as_kubernetes_objects() {
    for c in crds() {
        let yaml = serde_yaml_ng::to_string(&c).unwrap();
        let back: CustomResourceDefinition = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, c);
    }
}
