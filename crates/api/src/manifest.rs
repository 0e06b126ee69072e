//! Parsing manifests: YAML or JSON, one or many documents, into typed [`Object`]s.
//!
//! Errors name the field path (`spec.sources[1].peer: required`). Parsing never panics on bad
//! input; the caller bounds the input size.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::group::API_VERSION;
use crate::resources::{
    AccessPolicySpec, ExportSpec, ImportSpec, Kind, Object, PeerSpec, PrivilegedAccessPolicySpec,
    Resource,
};
use crate::validation::{FieldError, FieldErrors};

/// Largest single object the API accepts. Real manifests are a few hundred bytes; the bound keeps
/// a hostile body from costing more than a moment of parsing.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;
/// Deepest flow nesting (`{`, `[`) a YAML manifest may have. Real objects nest under ten levels;
/// the YAML scanner's cost grows with the square of the depth, so a deep one is refused before it.
pub const MAX_NESTING: usize = 64;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML or JSON: {0}")]
    Syntax(String),
    #[error("nested deeper than {MAX_NESTING} levels of {{ or [")]
    TooDeep,
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
            ManifestError::Syntax(_) | ManifestError::TooDeep => vec![],
        }
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(FieldErrors(vec![FieldError::new(field, reason)]))
}

/// Parses every document of a YAML or JSON text. A `kind: List` document contributes its items.
/// Empty documents are skipped. A syntax error ends the list, since the documents after it cannot
/// be told apart reliably. A mapping that repeats a key is a syntax error: which of the two
/// values was meant cannot be known.
pub fn parse_manifests(text: &str) -> Vec<Result<Object, ManifestError>> {
    parse_documents(text, |_| {})
}

/// Fields a server owns, which `kubectl get -o yaml` prints and `kubectl apply` ignores.
pub const SERVER_OWNED_METADATA: [&str; 7] = [
    "uid",
    "resourceVersion",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// [`parse_manifests`] for input that may be another server's output (`kubectl get -o yaml`,
/// `gwctl get -o yaml`): the server-owned metadata ([`SERVER_OWNED_METADATA`]) and `status` of
/// each object are dropped, as `kubectl apply` drops them, and named in the returned set
/// (`metadata.uid`, `status`). Every other field is read as [`parse_manifests`] reads it, so a
/// misspelt spec field is still an error.
pub fn parse_manifests_as_applied(
    text: &str,
) -> (Vec<Result<Object, ManifestError>>, BTreeSet<String>) {
    let mut dropped = BTreeSet::new();
    let objects = parse_documents(text, |value| {
        let Value::Object(object) = value else { return };
        if object.remove("status").is_some() {
            dropped.insert("status".to_string());
        }
        if let Some(Value::Object(meta)) = object.get_mut("metadata") {
            for field in SERVER_OWNED_METADATA {
                if meta.remove(field).is_some() {
                    dropped.insert(format!("metadata.{field}"));
                }
            }
        }
    });
    (objects, dropped)
}

/// Every document of `text`, each value passed through `prepare` before it is typed.
fn parse_documents(
    text: &str,
    mut prepare: impl FnMut(&mut Value),
) -> Vec<Result<Object, ManifestError>> {
    let mut typed = |mut value: Value| {
        prepare(&mut value);
        object_from_value(value)
    };
    // JSON is read as JSON: a YAML reader takes some characters JSON allows in strings (U+2028,
    // U+FFFF) for line breaks or refuses them, so it would change or refuse what was sent. The
    // JSON reader's cost grows with the input alone (and it stops at 128 levels), so it needs no
    // depth check; what it cannot read goes to the YAML reader, which does.
    let values: Vec<Result<Value, String>> = match json_documents(text) {
        Some(values) => values.into_iter().map(Ok).collect(),
        None if nesting_exceeds(text, MAX_NESTING) => return vec![Err(ManifestError::TooDeep)],
        None => {
            let mut values = Vec::new();
            // The documents after a syntax error cannot be told apart reliably (and the reader
            // would go on reporting it): stop at the first.
            for doc in serde_yaml_ng::Deserializer::from_str(text) {
                let value = UniqueKeys::deserialize(doc).map(|v| v.0);
                let failed = value.is_err();
                values.push(value.map_err(|e| e.to_string()));
                if failed {
                    break;
                }
            }
            values
        }
    };
    let mut out = Vec::new();
    for value in values {
        match value {
            Ok(Value::Null) => {}
            Ok(Value::Object(mut map)) if is_list(&map) => match map.remove("items") {
                Some(Value::Array(items)) => out.extend(items.into_iter().map(&mut typed)),
                _ => out.push(Err(invalid("items", "a List needs an items array"))),
            },
            Ok(value) => out.push(typed(value)),
            Err(e) => {
                out.push(Err(ManifestError::Syntax(e)));
                break;
            }
        }
    }
    out
}

/// Every value of `text` if it is one or more JSON documents, each read with [`UniqueKeys`];
/// `None` if it is not JSON (then it is YAML, or wrong).
fn json_documents(text: &str) -> Option<Vec<Value>> {
    if !text.trim_start().starts_with(['{', '[']) {
        return None;
    }
    serde_json::Deserializer::from_str(text)
        .into_iter::<UniqueKeys>()
        .map(|v| v.map(|v| v.0))
        .collect::<Result<_, _>>()
        .ok()
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
    let Some(parsed) = docs.pop() else {
        unreachable!("exactly one document was checked above")
    };
    let mut obj = parsed?;
    obj.default_namespace(default_namespace);
    obj.validate().map_err(ManifestError::Invalid)?;
    Ok(obj)
}

/// Whether `text` nests flow collections deeper than `limit`, in one linear pass.
///
/// The count errs on the deep side, never the shallow one: opening brackets count wherever they
/// are, closing ones only outside quoted strings and comments. So no quoting trick can hide depth
/// from it; at worst an odd string of unmatched brackets is refused.
pub fn nesting_exceeds(text: &str, limit: usize) -> bool {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Double,
        Single,
        Comment,
    }
    let mut state = In::Plain;
    let mut depth = 0usize;
    let mut previous = b'\n';
    let mut escaped = false;
    for &b in text.as_bytes() {
        if b == b'{' || b == b'[' {
            depth += 1;
            if depth > limit {
                return true;
            }
        }
        match state {
            In::Plain => match b {
                b'}' | b']' => depth = depth.saturating_sub(1),
                b'"' => state = In::Double,
                b'\'' => state = In::Single,
                b'#' if previous.is_ascii_whitespace() => state = In::Comment,
                _ => {}
            },
            In::Double if escaped => escaped = false,
            In::Double if b == b'\\' => escaped = true,
            In::Double | In::Single if b == if state == In::Double { b'"' } else { b'\'' } => {
                state = In::Plain
            }
            In::Comment if b == b'\n' => state = In::Plain,
            In::Double | In::Single | In::Comment => {}
        }
        previous = b;
    }
    false
}

/// A JSON value read from YAML or JSON, refusing a mapping that repeats a key (serde's own maps
/// keep the last value silently).
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // NaN and infinities have no JSON form; no field of a manifest takes them.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        UniqueKeys::deserialize(d).map(|v| v.0)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let UniqueKeys(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn is_list(map: &serde_json::Map<String, Value>) -> bool {
    map.get("kind").and_then(Value::as_str) == Some("List")
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
    if let Some(unknown) = between(message, "unknown field `", "`") {
        // Here the path already ends at the unknown field itself.
        let expected = message.split_once(", expected ").map(|(_, e)| e);
        let closest = expected
            .into_iter()
            .flat_map(|e| e.split('`').skip(1).step_by(2))
            .map(|known| (crate::attributes::edit_distance(unknown, known), known))
            .min()
            .filter(|(distance, _)| *distance <= 2)
            .map(|(_, known)| format!(", did you mean `{known}`?"))
            .unwrap_or_default();
        let expected = expected
            .map(|e| format!(" (expected {e})"))
            .unwrap_or_default();
        return (
            path.to_string(),
            format!("unknown field{closest}{expected}"),
        );
    }
    let field = if path == "." {
        String::new()
    } else {
        path.to_string()
    };
    (field, plain_words(message))
}

/// serde's "invalid type: string \"x\", expected u16" as a person would put it: "must be a whole
/// number from 0 to 65535 (got the string \"x\")".
fn plain_words(message: &str) -> String {
    let Some((got, expected)) = message.split_once(", expected ") else {
        return message.to_string();
    };
    let Some(got) = got
        .strip_prefix("invalid type: ")
        .or_else(|| got.strip_prefix("invalid value: "))
    else {
        return message.to_string();
    };
    let expected = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        "a map" => "a mapping of keys to values",
        "a boolean" => "true or false",
        other => other,
    };
    let got = match got.split_once(' ') {
        Some(("string" | "integer" | "floating", _)) => format!("the {}", got.replace('`', "")),
        _ if got == "sequence" => "a list".to_string(),
        _ if got == "map" => "a mapping".to_string(),
        _ => got.replace('`', ""),
    };
    format!("must be {expected} (got {got})")
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
        assert_eq!(
            e,
            "spec.port: must be a whole number (got the string \"http\")"
        );
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
    fn misspelt_fields_and_wrong_types_are_named_in_plain_words() {
        let e = err_text(
            "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: x, lables: {a: b}}\nspec: {port: 80}\n",
        );
        assert!(
            e.starts_with("metadata.lables: unknown field, did you mean `labels`? (expected"),
            "{e}"
        );
        let e = err_text(&import(
            "  port: eighty\n  sources: [{peer: a, exportName: r, exportNamespace: d}]\n",
        ));
        assert!(!e.contains("u16") && !e.contains("i64"), "{e}");
        assert!(e.contains("must be a whole number"), "{e}");
        assert!(e.contains("(got the string \"eighty\")"), "{e}");
        let e = err_text(&import("  port: 80\n  sources: {peer: a}\n"));
        assert!(e.contains("must be a list (got a mapping)"), "{e}");
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
            "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: Bad_Name}\nspec: {gateways: [], dial: true}\n",
        );
        assert!(e.contains("metadata.name: invalid character 'B'"), "{e}");
        assert!(
            e.contains("spec.gateways: dial: true needs at least one gateway"),
            "{e}"
        );
    }

    #[test]
    fn a_go_peer_is_reached_directly_and_offers_no_catalog() {
        let peer = |spec: &str| {
            format!(
                "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: go1}}\nspec: {spec}\n"
            )
        };
        let ok = parse_manifest(
            &peer("{gateways: [{host: 10.0.0.1, port: 4443}], protocol: go}"),
            "default",
        )
        .unwrap();
        let Object::Peer(p) = ok else {
            panic!("not a peer")
        };
        assert_eq!(p.spec.protocol, crate::PeerProtocol::Go);
        let e = err_text(&peer(
            "{gateways: [{host: 10.0.0.1, port: 4443}], protocol: go, dial: true, mirror: {}}",
        ));
        assert!(
            e.contains("spec.dial: a peer of protocol go cannot keep a link"),
            "{e}"
        );
        assert!(
            e.contains("spec.mirror: a peer of protocol go offers no catalog"),
            "{e}"
        );
        let e = err_text(&peer("{gateways: [], protocol: go}"));
        assert!(
            e.contains("spec.gateways: a peer of protocol go needs"),
            "{e}"
        );
        let e = err_text(&peer("{gateways: [{host: a, port: 1}], protocol: envoy}"));
        assert!(e.contains("protocol"), "{e}");
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
    fn repeated_keys_are_refused_in_yaml_and_json() {
        for text in [
            "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: x}\nspec: {port: 80, port: 22}\n",
            "{\"apiVersion\":\"clusterlink.net/v1alpha1\",\"kind\":\"Export\",\"metadata\":{\"name\":\"x\",\"labels\":{\"a\":\"1\",\"a\":\"2\"}},\"spec\":{\"port\":80}}",
        ] {
            let e = err_text(text);
            assert!(e.contains("duplicate key"), "{e}");
        }
    }

    #[test]
    fn brackets_in_a_json_string_are_text() {
        // The depth check over-counts brackets inside YAML strings; JSON never meets it, so an
        // object's own JSON always reads back.
        let json = format!(
            "{{\"apiVersion\":\"clusterlink.net/v1alpha1\",\"kind\":\"Export\",\"metadata\":{{\"name\":\"x\",\"annotations\":{{\"note\":\"{}\"}}}},\"spec\":{{\"port\":80}}}}",
            "[".repeat(100)
        );
        assert!(parse_manifest(&json, "default").is_ok());
    }

    #[test]
    fn json_is_read_as_json_even_where_yaml_would_differ() {
        // U+2028 is a line break to a YAML reader and U+FFFF is refused by one; both are plain
        // characters of a JSON string, and come back as sent.
        let json = "{\"apiVersion\":\"clusterlink.net/v1alpha1\",\"kind\":\"Export\",\"metadata\":{\"name\":\"x\",\"annotations\":{\"note\":\"a\u{2028}b\u{ffff}c\"}},\"spec\":{\"port\":80}}";
        let obj = parse_manifest(json, "default").unwrap();
        assert_eq!(obj.metadata().annotations["note"], "a\u{2028}b\u{ffff}c");
        // Flow-style YAML that is not JSON is still YAML.
        let flow = "{apiVersion: clusterlink.net/v1alpha1, kind: Export, metadata: {name: x}, spec: {port: 80}}";
        assert!(parse_manifest(flow, "default").is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = |n: usize| format!("{}{}", "{a: ".repeat(n), "}".repeat(n));
        assert!(!nesting_exceeds(&deep(MAX_NESTING), MAX_NESTING));
        assert_eq!(
            parse_manifests(&deep(MAX_NESTING + 1)),
            vec![Err(ManifestError::TooDeep)]
        );
        // Closing brackets hidden in strings or comments do not hide the depth.
        let closes = "}".repeat(40);
        for hide in [
            format!("\"{closes}\""),
            format!("'{closes}'"),
            format!(" # {closes}\n"),
        ] {
            let text = format!("{}{hide}{}", "[".repeat(40), "[".repeat(40));
            assert!(nesting_exceeds(&text, MAX_NESTING), "{hide}");
        }
        // Brackets inside strings are text, so a real manifest with some is fine.
        assert!(!nesting_exceeds(
            "metadata: {name: \"a}]\"}\nspec: {x: '[['}",
            MAX_NESTING
        ));
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
