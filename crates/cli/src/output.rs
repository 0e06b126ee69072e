//! Printing objects as tables, YAML or JSON.

use clap::ValueEnum;
use clusterlink_api::{
    Kind, LabelSelector, Object, Scope, SelectorOperator, WorkloadSelectorEntry,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    /// The table, with each condition's message.
    Wide,
    Yaml,
    Json,
    /// `kind.clusterlink.net/name` per line, as `kubectl get -o name` prints, for scripts.
    Name,
}

/// Renders objects in `format`. Several objects in YAML are separate documents; in JSON a `List`.
pub fn render(
    objects: &[Object],
    kind: Kind,
    format: Format,
    single: bool,
    all_namespaces: bool,
) -> String {
    match format {
        Format::Table => table(objects, kind, all_namespaces, false),
        Format::Wide => table(objects, kind, all_namespaces, true),
        Format::Name => objects
            .iter()
            .map(|o| {
                format!(
                    "{}.{}/{}\n",
                    o.kind().as_str().to_ascii_lowercase(),
                    clusterlink_api::API_GROUP,
                    o.metadata().name
                )
            })
            .collect(),
        Format::Yaml => objects
            .iter()
            .map(|o| serde_yaml_ng::to_string(o).expect("objects serialize"))
            .collect::<Vec<_>>()
            .join("---\n"),
        Format::Json if single && objects.len() == 1 => {
            serde_json::to_string_pretty(&objects[0]).expect("objects serialize") + "\n"
        }
        Format::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            serde_json::to_string_pretty(&list).expect("lists serialize") + "\n"
        }
    }
}

/// The condition a table's REASON (and, wide, MESSAGE) column shows: the first that is not
/// `True`, so what is wrong shows, else the kind's own.
fn telling_condition(obj: &Object) -> Option<&clusterlink_api::Condition> {
    obj.status()?.telling(obj.kind().condition())
}

fn table(objects: &[Object], kind: Kind, all_namespaces: bool, wide: bool) -> String {
    let namespaced = kind.scope() == Scope::Namespaced && all_namespaces;
    let mut header: Vec<&str> = Vec::new();
    if namespaced {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    header.extend(match kind {
        Kind::Peer => &["GATEWAYS", "REACHABLE"][..],
        Kind::Export => &["HOST", "PORT", "VALID"][..],
        Kind::Import => &["PORT", "TARGET-PORT", "LB", "SOURCES", "READY"][..],
        Kind::AccessPolicy | Kind::PrivilegedAccessPolicy => &["ACTION", "FROM", "TO"][..],
    });
    let conditioned = !matches!(kind, Kind::AccessPolicy | Kind::PrivilegedAccessPolicy);
    if conditioned {
        header.push("REASON");
    }
    header.push("AGE");
    if wide && conditioned {
        header.push("MESSAGE");
    }
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    let now = OffsetDateTime::now_utc();
    for obj in objects {
        let meta = obj.metadata();
        let mut row = Vec::new();
        if namespaced {
            row.push(meta.namespace.clone());
        }
        row.push(meta.name.clone());
        // The status column and REASON show the same condition: the one that tells.
        let condition = || {
            telling_condition(obj)
                .map(|c| c.status.as_str().to_string())
                .unwrap_or_else(|| "-".into())
        };
        match obj {
            Object::Peer(p) => {
                row.push(
                    p.spec
                        .gateways
                        .iter()
                        .map(|g| format!("{}:{}", g.host, g.port))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                row.push(condition());
            }
            Object::Export(e) => {
                row.push(if e.spec.host.is_empty() {
                    "-".into()
                } else {
                    e.spec.host.clone()
                });
                row.push(e.spec.port.map_or("-".into(), |p| p.to_string()));
                row.push(condition());
            }
            Object::Import(i) => {
                row.push(i.spec.port.to_string());
                row.push(
                    i.spec
                        .target_port
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                );
                row.push(i.spec.lb_scheme.as_str().into());
                row.push(
                    i.spec
                        .sources
                        .iter()
                        .map(|s| format!("{}/{}/{}", s.peer, s.export_namespace, s.export_name))
                        .collect::<Vec<_>>()
                        .join(","),
                );
                row.push(condition());
            }
            Object::AccessPolicy(p) => {
                policy_columns(&mut row, p.spec.action.as_str(), &p.spec.from, &p.spec.to)
            }
            Object::PrivilegedAccessPolicy(p) => policy_columns(
                &mut row,
                p.spec.0.action.as_str(),
                &p.spec.0.from,
                &p.spec.0.to,
            ),
        }
        let telling = telling_condition(obj);
        if conditioned {
            row.push(telling.map_or("-".into(), |c| c.reason.clone()));
        }
        row.push(age(meta.creation_timestamp.as_deref(), now));
        if wide && conditioned {
            row.push(telling.map_or(String::new(), |c| c.message.clone()));
        }
        rows.push(row);
    }
    align(&rows)
}

fn policy_columns(
    row: &mut Vec<String>,
    action: &str,
    from: &[WorkloadSelectorEntry],
    to: &[WorkloadSelectorEntry],
) {
    row.push(action.to_string());
    for side in [from, to] {
        row.push(
            side.iter()
                .map(|e| selector_text(&e.workload_selector))
                .collect::<Vec<_>>()
                .join(" | "),
        );
    }
}

/// A selector in the compact form `kubectl` uses: `app=web,tier in (a,b)`; `*` for everything.
pub fn selector_text(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in &s.match_expressions {
        parts.push(match r.operator {
            SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
            SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
            SelectorOperator::Exists => r.key.clone(),
            SelectorOperator::DoesNotExist => format!("!{}", r.key),
        });
    }
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(",")
    }
}

fn age(created: Option<&str>, now: OffsetDateTime) -> String {
    let Some(created) = created.and_then(|c| OffsetDateTime::parse(c, &Rfc3339).ok()) else {
        return "-".into();
    };
    let secs = (now - created).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub(crate) fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_texts() {
        let s: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"client.clusterlink.net/labels.app": "firefox"},
            "matchExpressions": [{"key": "export.clusterlink.net/name", "operator": "In", "values": ["a", "b"]}, {"key": "x", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert_eq!(
            selector_text(&s),
            "client.clusterlink.net/labels.app=firefox,export.clusterlink.net/name in (a,b),!x"
        );
        assert_eq!(selector_text(&LabelSelector::default()), "*");
    }

    #[test]
    fn ages() {
        let now = OffsetDateTime::parse("2026-01-02T00:00:00Z", &Rfc3339).unwrap();
        assert_eq!(age(Some("2026-01-01T23:59:30Z"), now), "30s");
        assert_eq!(age(Some("2026-01-01T23:00:00Z"), now), "60m");
        assert_eq!(age(Some("2025-12-01T00:00:00Z"), now), "32d");
        assert_eq!(age(None, now), "-");
    }
}
