//! Parsing manifests: YAML or JSON, one or many documents, into typed [`Object`]s.
//!
//! Errors name the field path (`spec.sources[1].peer: required`). Parsing never panics on bad
//! input; the caller bounds the input size.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::API_VERSION;
use crate::resources::{
    AccessPolicySpec, ExportSpec, ImportSpec, Kind, Object, PeerSpec, PrivilegedAccessPolicySpec,
    Resource,
};
use crate::validation::{FieldError, FieldErrors};

/// Largest single object the API accepts. Real manifests are a few hundred bytes; the bound keeps
/// a hostile body from costing more than a moment of parsing.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML or JSON: {0}")]
    Syntax(String),
    #[error(
        "kind: unknown kind {0:?}; expected one of Peer, Export, Import, AccessPolicy, PrivilegedAccessPolicy"
    )]
    UnknownKind(String),
    #[error("{0}")]
    Invalid(FieldErrors),
}

impl ManifestError {
    /// The field errors, when the manifest was readable but wrong.
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            ManifestError::Invalid(e) => e.0.clone(),
            ManifestError::UnknownKind(_) => vec![FieldError::new(
                "kind",
                self.to_string().trim_start_matches("kind: "),
            )],
            ManifestError::Syntax(_) => vec![],
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(FieldErrors(vec![FieldError::new(field, reason)]))
}

/// Parses every document of a YAML or JSON text. A `kind: List` document contributes its items.
/// Empty documents are skipped. A syntax error ends the list, since the documents after it cannot
/// be told apart reliably.
pub fn parse_manifests(text: &str) -> Vec<Result<Object, ManifestError>> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        match Value::deserialize(doc) {
            Ok(Value::Null) => {}
            Ok(value) if is_list(&value) => match value {
                Value::Object(mut map) => match map.remove("items") {
                    Some(Value::Array(items)) => {
                        out.extend(items.into_iter().map(object_from_value))
                    }
                    _ => out.push(Err(invalid("items", "a List needs an items array"))),
                },
                _ => unreachable!("is_list checked for an object"),
            },
            Ok(value) => out.push(object_from_value(value)),
            Err(e) => {
                out.push(Err(ManifestError::Syntax(e.to_string())));
                break;
            }
        }
    }
    out
}

/// Parses exactly one object, validated, with its namespace defaulted to `default_namespace`.
pub fn parse_manifest(text: &str, default_namespace: &str) -> Result<Object, ManifestError> {
    let mut docs = parse_manifests(text);
    if docs.len() != 1 {
        return Err(ManifestError::Syntax(format!(
            "expected exactly one object, found {}",
            docs.len()
        )));
    }
    let mut obj = docs.pop().expect("one document")?;
    obj.default_namespace(default_namespace);
    obj.validate().map_err(ManifestError::Invalid)?;
    Ok(obj)
}

fn is_list(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str) == Some("List")
}

/// Turns one parsed document into a typed object. Checks types and required fields, not values:
/// call [`Object::validate`] for those.
pub fn object_from_value(value: Value) -> Result<Object, ManifestError> {
    let Value::Object(ref map) = value else {
        return Err(ManifestError::Syntax(
            "a manifest must be a mapping (apiVersion, kind, metadata, spec)".into(),
        ));
    };
    let mut errors = FieldErrors::default();
    match map.get("apiVersion") {
        None => errors.push("apiVersion", format!("required (use {API_VERSION})")),
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(other) => errors.push("apiVersion", format!("must be {API_VERSION} (got {other})")),
    }
    let kind = match map.get("kind") {
        Some(Value::String(k)) => {
            Kind::from_manifest_kind(k).ok_or_else(|| ManifestError::UnknownKind(k.clone()))?
        }
        None => {
            errors.push("kind", "required");
            return Err(ManifestError::Invalid(errors));
        }
        Some(other) => return Err(ManifestError::UnknownKind(other.to_string())),
    };
    if !errors.is_empty() {
        return Err(ManifestError::Invalid(errors));
    }
    Ok(match kind {
        Kind::Peer => Object::Peer(typed::<PeerSpec>(value)?),
        Kind::Export => Object::Export(typed::<ExportSpec>(value)?),
        Kind::Import => Object::Import(typed::<ImportSpec>(value)?),
        Kind::AccessPolicy => Object::AccessPolicy(typed::<AccessPolicySpec>(value)?),
        Kind::PrivilegedAccessPolicy => {
            Object::PrivilegedAccessPolicy(typed::<PrivilegedAccessPolicySpec>(value)?)
        }
    })
}

fn typed<S: DeserializeOwned>(value: Value) -> Result<Resource<S>, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let (field, reason) = describe(&path, &e.into_inner().to_string());
        invalid(&field, reason)
    })
}

/// Rewrites serde's messages into `field: reason` with the field path completed.
fn describe(path: &str, message: &str) -> (String, String) {
    let join = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(name) = between(message, "missing field `", "`") {
        return (join(name), "required".into());
    }
    if message.starts_with("unknown field `") {
        // Here the path already ends at the unknown field itself.
        let expected = message
            .split_once(", expected ")
            .map(|(_, e)| format!(" (expected {e})"))
            .unwrap_or_default();
        return (path.to_string(), format!("unknown field{expected}"));
    }
    let field = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    (field, message.to_string())
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(start)?;
    rest.split_once(end).map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LbScheme, PolicyAction, SelectorOperator};

    const EXAMPLES: &str = r#"
apiVersion: clusterlink.net/v1alpha1
kind: Import
metadata: {name: reviews, namespace: default}
spec:
  port: 9080
  sources:
    - {exportName: reviews, exportNamespace: default, peer: server1}
    - {exportName: reviews, exportNamespace: default, peer: server2}
  lbScheme: static
---
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: deny-firefox, namespace: default}
spec:
  action: deny
  from: [{workloadSelector: {matchLabels: {client.clusterlink.net/labels.app: firefox}}}]
  to: [{workloadSelector: {matchExpressions: [{key: export.clusterlink.net/name, operator: In, values: [speedtest]}]}}]
"#;

    fn import(spec: &str) -> String {
        format!(
            "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: reviews}}\nspec:\n{spec}"
        )
    }

    fn err_text(text: &str) -> String {
        parse_manifest(text, "default").unwrap_err().to_string()
    }

    #[test]
    fn the_issue_examples_parse_unchanged() {
        let docs: Vec<Object> = parse_manifests(EXAMPLES)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(docs.len(), 2);
        let Object::Import(i) = &docs[0] else {
            panic!("not an import")
        };
        assert_eq!(i.spec.port.get(), 9080);
        assert_eq!(i.spec.lb_scheme, LbScheme::Static);
        assert_eq!(i.spec.sources[1].peer, "server2");
        let Object::AccessPolicy(p) = &docs[1] else {
            panic!("not a policy")
        };
        assert_eq!(p.spec.action, PolicyAction::Deny);
        assert_eq!(
            p.spec.to[0].workload_selector.match_expressions[0].operator,
            SelectorOperator::In
        );
        for d in &docs {
            d.validate().unwrap();
        }
    }

    #[test]
    fn json_and_round_trip() {
        let obj = parse_manifest(EXAMPLES.split("---").next().unwrap(), "default").unwrap();
        let json = serde_json::to_string(&obj).unwrap();
        assert_eq!(parse_manifest(&json, "default").unwrap(), obj);
        let yaml = serde_yaml_ng::to_string(&obj).unwrap();
        assert_eq!(parse_manifest(&yaml, "default").unwrap(), obj);
    }

    #[test]
    fn list_documents_expand() {
        let obj = parse_manifest(EXAMPLES.split("---").next().unwrap(), "default").unwrap();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [obj, obj]});
        assert_eq!(parse_manifests(&list.to_string()).len(), 2);
    }

    #[test]
    fn missing_source_peer_names_the_path() {
        let text = import(
            "  port: 9080\n  sources:\n    - {peer: a, exportName: r, exportNamespace: default}\n    - {exportName: r, exportNamespace: default}\n",
        );
        assert_eq!(err_text(&text), "spec.sources[1].peer: required");
    }

    #[test]
    fn empty_source_peer_is_required_too() {
        let text = import(
            "  port: 9080\n  sources: [{peer: '', exportName: r, exportNamespace: default}]\n",
        );
        assert_eq!(err_text(&text), "spec.sources[0].peer: required");
    }

    #[test]
    fn ports_are_range_checked() {
        for bad in ["0", "65536", "-1"] {
            let e = err_text(&import(&format!(
                "  port: {bad}\n  sources: [{{peer: a, exportName: r, exportNamespace: d}}]\n"
            )));
            assert_eq!(
                e,
                format!("spec.port: must be between 1 and 65535 (got {bad})")
            );
        }
        let e = err_text(&import(
            "  port: http\n  sources: [{peer: a, exportName: r, exportNamespace: d}]\n",
        ));
        assert!(e.starts_with("spec.port: invalid type: string"), "{e}");
        assert!(
            parse_manifest(
                &import(
                    "  port: 65535\n  sources: [{peer: a, exportName: r, exportNamespace: d}]\n"
                ),
                "default"
            )
            .is_ok()
        );
    }

    #[test]
    fn lb_scheme_must_be_known() {
        let e = err_text(&import(
            "  port: 1\n  lbScheme: weighted\n  sources: [{peer: a, exportName: r, exportNamespace: d}]\n",
        ));
        assert!(e.starts_with("spec.lbScheme: unknown variant `weighted`, expected one of `round-robin`, `random`, `static`"), "{e}");
    }

    #[test]
    fn import_name_length() {
        let make = |n: usize| {
            format!(
                "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata: {{name: {}}}\nspec: {{port: 80, sources: [{{peer: a, exportName: r, exportNamespace: d}}]}}\n",
                "a".repeat(n)
            )
        };
        assert!(parse_manifest(&make(63), "default").is_ok());
        assert_eq!(
            err_text(&make(64)),
            "metadata.name: must be at most 63 characters (got 64)"
        );
    }

    #[test]
    fn unknown_fields_are_refused_not_ignored() {
        let e = err_text(&import(
            "  port: 1\n  weight: 3\n  sources: [{peer: a, exportName: r, exportNamespace: d}]\n",
        ));
        assert!(
            e.starts_with("spec.weight: unknown field (expected one of `port`"),
            "{e}"
        );
        let e = err_text(
            "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: x, uid: 3}\nspec: {port: 80}\n",
        );
        assert!(e.starts_with("metadata.uid: unknown field"), "{e}");
    }

    #[test]
    fn kind_and_api_version() {
        assert_eq!(
            err_text("apiVersion: clusterlink.net/v1alpha1\nkind: Gizmo\nmetadata: {name: x}\n"),
            "kind: unknown kind \"Gizmo\"; expected one of Peer, Export, Import, AccessPolicy, PrivilegedAccessPolicy"
        );
        assert_eq!(
            err_text("apiVersion: v1\nkind: Export\nmetadata: {name: x}\nspec: {port: 1}\n"),
            "apiVersion: must be clusterlink.net/v1alpha1 (got \"v1\")"
        );
        assert_eq!(
            err_text("kind: Export\nmetadata: {name: x}\nspec: {port: 1}\n"),
            "apiVersion: required (use clusterlink.net/v1alpha1)"
        );
    }

    #[test]
    fn policy_action_and_selectors() {
        let policy = |action: &str, op: &str| {
            format!(
                "apiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: p}}\nspec:\n  action: {action}\n  from: [{{workloadSelector: {{}}}}]\n  to: [{{workloadSelector: {{matchExpressions: [{{key: a, operator: {op}}}]}}}}]\n"
            )
        };
        assert!(parse_manifest(&policy("allow", "Exists"), "default").is_ok());
        assert!(
            err_text(&policy("permit", "Exists"))
                .starts_with("spec.action: unknown variant `permit`")
        );
        assert!(err_text(&policy("allow", "Like")).starts_with(
            "spec.to[0].workloadSelector.matchExpressions[0].operator: unknown variant `Like`"
        ));
        assert_eq!(
            err_text(&policy("allow", "In")),
            "spec.to[0].workloadSelector.matchExpressions[0].values: must not be empty when operator is In"
        );
    }

    #[test]
    fn scopes() {
        let peer = |ns: &str| {
            format!(
                "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: p1{ns}}}\nspec: {{gateways: [{{host: 10.0.0.1, port: 443}}]}}\n"
            )
        };
        let p = parse_manifest(&peer(""), "default").unwrap();
        assert_eq!(p.metadata().namespace, crate::SYSTEM_NAMESPACE);
        assert!(parse_manifest(&peer(", namespace: clusterlink-system"), "default").is_ok());
        assert!(err_text(&peer(", namespace: team-a")).contains("system namespace"));
        let pap = "apiVersion: clusterlink.net/v1alpha1\nkind: PrivilegedAccessPolicy\nmetadata: {name: x, namespace: default}\nspec: {action: deny, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}\n";
        assert!(err_text(pap).contains("cluster-scoped"));
    }

    #[test]
    fn several_errors_at_once() {
        let e = err_text(
            "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: Bad_Name}\nspec: {gateways: []}\n",
        );
        assert!(e.contains("metadata.name: invalid character 'B'"), "{e}");
        assert!(
            e.contains("spec.gateways: must list at least one gateway"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_and_garbage_do_not_panic() {
        for bad in [
            "{",
            "key: [unclosed",
            "- just\n- a list\n",
            "42",
            "\u{0}\u{1}",
            ": :",
        ] {
            assert!(parse_manifest(bad, "default").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut text = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .windows(2)
            .map(|w| (w[0], w[1]))
        {
            text.push_str(&format!("{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        assert!(parse_manifest(&text, "default").is_err());
    }
}
