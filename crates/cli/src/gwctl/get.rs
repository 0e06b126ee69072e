//! `gwctl get`: list objects, or show one.

use crate::terminal::{errln, out};
use anyhow::{anyhow, bail};
use clusterlink_api::rest::{kind_collection_path, object_path};
use clusterlink_api::{
    Kind, LabelSelector, LabelSelectorRequirement, Object, ObjectKey, Scope, SelectorOperator,
};
use http::Method;

use crate::client::Client;
use crate::output::{Format, render};

/// Lists or shows objects of `kinds` (several for `get all`), keeping those `selector` matches.
pub(super) async fn get(
    client: &mut Client,
    kinds: &[Kind],
    name: Option<&str>,
    namespace: &str,
    all: bool,
    selector: Option<&LabelSelector>,
    format: Format,
) -> anyhow::Result<()> {
    let mut shown = Vec::new();
    for &kind in kinds {
        let mut objects = fetch(client, kind, name, namespace, all).await?;
        if let Some(selector) = selector {
            objects.retain(|o| selector.matches(&o.metadata().labels));
        }
        if !objects.is_empty() {
            shown.push((kind, objects));
        }
    }
    if shown.is_empty() {
        if matches!(format, Format::Table | Format::Wide) {
            let what = match kinds {
                [kind] => kind.plural().to_string(),
                _ => "objects".to_string(),
            };
            let scoped = kinds.iter().any(|k| k.scope() == Scope::Namespaced);
            if scoped && !all {
                let namespace = namespace.to_string();
                errln!("No {what} found in namespace {namespace}.");
            } else {
                errln!("No {what} found.");
            }
        } else if format == Format::Json {
            out!("{}", render(&[], kinds[0], format, false, all));
        }
        return Ok(());
    }
    match format {
        // One document stream or list across kinds, as scripts expect.
        Format::Yaml | Format::Json | Format::Name => {
            let objects: Vec<Object> = shown.iter().flat_map(|(_, o)| o.clone()).collect();
            let text = render(&objects, shown[0].0, format, name.is_some(), all);
            if format == Format::Yaml {
                print!("{}", crate::terminal::yaml(&text));
            } else {
                out!("{text}");
            }
        }
        // A table per kind, each under the kind's name when there are several.
        Format::Table | Format::Wide => {
            let tables: Vec<String> = shown
                .iter()
                .map(|(kind, objects)| {
                    let table = render(objects, *kind, format, name.is_some(), all);
                    if kinds.len() > 1 {
                        format!("{} ({}):\n{table}", kind.plural(), objects.len())
                    } else {
                        table
                    }
                })
                .collect();
            out!("{}", tables.join("\n"));
        }
    }
    Ok(())
}

pub(super) async fn fetch(
    client: &mut Client,
    kind: Kind,
    name: Option<&str>,
    namespace: &str,
    all: bool,
) -> anyhow::Result<Vec<Object>> {
    let namespace = kind.namespace_in(namespace).to_string();
    if let Some(name) = name {
        let reply = client
            .request(
                Method::GET,
                &object_path(&ObjectKey::new(kind, namespace, name)),
                None,
            )
            .await?;
        reply.ensure_ok()?;
        return Ok(vec![object_of(reply.body)?]);
    }
    let path = kind_collection_path(kind, (!all).then_some(namespace.as_str()));
    let reply = client.request(Method::GET, &path, None).await?;
    reply.ensure_ok()?;
    let items = match reply.body.get("items") {
        Some(serde_json::Value::Array(items)) => items.clone(),
        _ => bail!("the gateway's list reply has no items"),
    };
    items.into_iter().map(object_of).collect()
}

/// `-l`: `KEY=VALUE`, `KEY==VALUE`, `KEY!=VALUE`, `KEY` or `!KEY`, comma-separated.
/// `--mirror`'s selector: as `-l`, and nothing (every offer) when left empty.
pub(super) fn parse_mirror_selector(text: &str) -> Result<LabelSelector, String> {
    if text.trim().is_empty() {
        return Ok(LabelSelector::everything());
    }
    parse_selector(text)
}

pub(super) fn parse_selector(text: &str) -> Result<LabelSelector, String> {
    let mut selector = LabelSelector::everything();
    let requirement = |key: &str, operator, values: Vec<String>| LabelSelectorRequirement {
        key: key.to_string(),
        operator,
        values,
    };
    for term in text.split(',').map(str::trim) {
        let valid_key = |key: &str| {
            clusterlink_api::validation::check_label_key(key)
                .map_err(|e| format!("-l {text:?}: {key:?} {e}"))
        };
        if let Some((key, value)) = term.split_once("!=") {
            valid_key(key)?;
            selector.match_expressions.push(requirement(
                key,
                SelectorOperator::NotIn,
                vec![value.to_string()],
            ));
        } else if let Some((key, value)) = term.split_once('=') {
            let value = value.strip_prefix('=').unwrap_or(value);
            valid_key(key)?;
            selector
                .match_labels
                .insert(key.to_string(), value.to_string());
        } else if let Some(key) = term.strip_prefix('!') {
            valid_key(key)?;
            selector.match_expressions.push(requirement(
                key,
                SelectorOperator::DoesNotExist,
                vec![],
            ));
        } else if term.contains([' ', '(']) {
            return Err(format!(
                "-l {text:?}: set-based selectors (in, notin) are not supported; use KEY=VALUE, \
                 KEY!=VALUE, KEY or !KEY"
            ));
        } else {
            valid_key(term)?;
            selector
                .match_expressions
                .push(requirement(term, SelectorOperator::Exists, vec![]));
        }
    }
    Ok(selector)
}

fn object_of(value: serde_json::Value) -> anyhow::Result<Object> {
    clusterlink_api::manifest::object_from_value(value)
        .map_err(|e| anyhow!("the gateway sent an object gwctl cannot read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_as_kubectl_reads_them() {
        let gold = labels(&[("tier", "gold"), ("team", "a")]);
        let silver = labels(&[("tier", "silver")]);
        let cases = [
            ("tier=gold", true, false),
            ("tier==gold", true, false),
            ("tier!=gold", false, true),
            ("team", true, false),
            ("!team", false, true),
            ("tier=gold,team", true, false),
        ];
        for (text, on_gold, on_silver) in cases {
            let selector = parse_selector(text).unwrap();
            assert_eq!(selector.matches(&gold), on_gold, "{text} on gold");
            assert_eq!(selector.matches(&silver), on_silver, "{text} on silver");
        }
        assert!(
            parse_selector("tier in (gold)")
                .unwrap_err()
                .contains("set-based")
        );
        assert!(parse_selector("Bad Key=x").is_err());
    }
}
