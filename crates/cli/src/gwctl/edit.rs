//! `gwctl update` (single fields from the command line) and `gwctl edit` (the object in an
//! editor): read the object, change it, and write it whole, as `kubectl edit` does.
//!
//! The write carries the `metadata.resourceVersion` that was read, so the gateway applies it only
//! if nobody changed the object in between (else `409 Conflict`). `update` then reads the object
//! again and makes its change anew, a few times, as kubectl's own read-modify-write commands do;
//! `edit` reports the conflict and keeps the edited file, since a person decided what it holds.

use crate::terminal::{errln, outln};
use std::io::IsTerminal as _;

use anyhow::{Context as _, anyhow, bail};
use clusterlink_api::manifest::parse_manifests_as_applied;
use clusterlink_api::rest::object_path;
use clusterlink_api::{Object, ObjectKey};
use http::{Method, StatusCode};
use serde_json::Value;

use super::warn;
use crate::client::Client;

/// Times `gwctl update` reads and writes again when the object changed under it: each conflict
/// means another writer landed, so a few tries outlast any real contention.
const UPDATE_ATTEMPTS: usize = 5;

/// Reads `key` as a JSON value without what the server owns (it is not the writer's to set),
/// and the version read.
async fn read(client: &mut Client, key: &ObjectKey) -> anyhow::Result<(Value, Option<String>)> {
    let reply = client.request(Method::GET, &object_path(key), None).await?;
    reply.ensure_ok()?;
    let mut value = reply.body;
    let mut version = None;
    if let Value::Object(object) = &mut value {
        object.remove("status");
        if let Some(Value::Object(meta)) = object.get_mut("metadata") {
            version = meta
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            for field in clusterlink_api::manifest::SERVER_OWNED_METADATA {
                meta.remove(field);
            }
            meta.remove("creationTimestamp");
        }
    }
    Ok((value, version))
}

/// Why a write was not applied.
enum WriteError {
    /// The object changed since `version` was read.
    Conflict(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for WriteError {
    fn from(e: anyhow::Error) -> Self {
        WriteError::Other(e)
    }
}

/// Writes `object` in place of `key` if it is still at `version`, printing what the gateway
/// did and any warning.
async fn write(
    client: &mut Client,
    key: &ObjectKey,
    mut object: Object,
    version: Option<String>,
) -> Result<(), WriteError> {
    if object.key() != *key {
        return Err(WriteError::Other(anyhow!(
            "the edit renamed {key} to {}: a name cannot change; create the new object and \
             delete the old one",
            object.key()
        )));
    }
    object.metadata_mut().resource_version = version;
    let body = serde_json::to_vec(&object).map_err(anyhow::Error::from)?;
    let reply = client
        .request(Method::PUT, &object_path(key), Some(body))
        .await?;
    if reply.status == StatusCode::CONFLICT {
        return Err(WriteError::Conflict(anyhow!(reply.error_message())));
    }
    reply.ensure_ok()?;
    object.metadata_mut().resource_version = None;
    let did = reply.result.unwrap_or_else(|| "configured".into());
    outln!("{key} {did}");
    for warning in warn::after_writes(client, &[(object, did)]).await {
        errln!("warning: {warning}");
    }
    Ok(())
}

/// `gwctl update KIND NAME PATH=VALUE… [PATH-…]`: sets (or with a trailing `-` removes) fields by
/// dotted path, `spec.port=9001`, `metadata.labels.env=prod`, `spec.sources.0.peer=p2`. A value
/// is read as YAML (`9001` a number, `true` a boolean, `'9001'` a string).
pub(super) async fn update(
    client: &mut Client,
    key: &ObjectKey,
    changes: &[String],
) -> anyhow::Result<()> {
    let mut conflict = None;
    for _ in 0..UPDATE_ATTEMPTS {
        let (mut value, version) = read(client, key).await?;
        for change in changes {
            apply_change(&mut value, change)?;
        }
        let object = clusterlink_api::manifest::object_from_value(value)
            .map_err(|e| anyhow!("{key} would be invalid: {e}"))?;
        match write(client, key, object, version).await {
            Ok(()) => return Ok(()),
            Err(WriteError::Conflict(e)) => conflict = Some(e),
            Err(WriteError::Other(e)) => return Err(e),
        }
    }
    let last = conflict.map(|e| e.to_string()).unwrap_or_default();
    bail!(
        "{key} kept changing under this update ({UPDATE_ATTEMPTS} tries); nothing was changed: {last}"
    )
}

fn apply_change(value: &mut Value, change: &str) -> anyhow::Result<()> {
    if let Some(path) = change.strip_suffix('-').filter(|p| !p.contains('=')) {
        let (parent, last) = walk(value, path, false)?;
        let removed = match parent {
            Value::Object(map) => map.remove(last).is_some(),
            Value::Array(items) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => {
                    items.remove(i);
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !removed {
            bail!("{path} is not set, so it cannot be removed");
        }
        return Ok(());
    }
    let (path, text) = change
        .split_once('=')
        .ok_or_else(|| anyhow!("{change:?} is neither PATH=VALUE nor PATH- (to remove it)"))?;
    let new: Value = serde_yaml_ng::from_str(text)
        .with_context(|| format!("{path}: {text:?} is not a YAML value"))?;
    let (parent, last) = walk(value, path, true)?;
    match parent {
        Value::Object(map) => {
            map.insert(last.to_string(), new);
        }
        Value::Array(items) => {
            let i: usize = last
                .parse()
                .map_err(|_| anyhow!("{path}: {last:?} is not a list index"))?;
            match i.cmp(&items.len()) {
                std::cmp::Ordering::Less => items[i] = new,
                std::cmp::Ordering::Equal => items.push(new),
                std::cmp::Ordering::Greater => {
                    bail!("{path}: the list has {} items", items.len())
                }
            }
        }
        _ => bail!("{path}: its parent is not a mapping or a list"),
    }
    Ok(())
}

/// The value holding the last part of `path`, and that part; mappings on the way are made when
/// `create`.
fn walk<'v, 'p>(
    value: &'v mut Value,
    path: &'p str,
    create: bool,
) -> anyhow::Result<(&'v mut Value, &'p str)> {
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) || parts.len() < 2 {
        bail!("{path:?} is not a field path such as spec.port or metadata.labels.env");
    }
    if !matches!(parts[0], "metadata" | "spec") {
        bail!("{path}: only metadata and spec fields can be changed");
    }
    let (last, parents) = parts.split_last().expect("at least two parts");
    let mut at = value;
    for (i, part) in parents.iter().enumerate() {
        let here = parts[..=i].join(".");
        at = match at {
            Value::Object(map) => {
                if !map.contains_key(*part) {
                    if !create {
                        bail!("{here} is not set");
                    }
                    map.insert(part.to_string(), Value::Object(Default::default()));
                }
                map.get_mut(*part).expect("inserted above")
            }
            Value::Array(items) => {
                let len = items.len();
                let index: usize = part
                    .parse()
                    .map_err(|_| anyhow!("{here}: {part:?} is not a list index"))?;
                items
                    .get_mut(index)
                    .ok_or_else(|| anyhow!("{here}: the list has {len} items"))?
            }
            _ => bail!("{here} is a value, not a mapping or a list"),
        };
    }
    Ok((at, last))
}

/// `gwctl edit KIND NAME`: the object as YAML in `$VISUAL`, `$EDITOR` or `vi`; applied when
/// saved changed. If the gateway refuses it, the edited file is kept and named, so nothing typed
/// is lost.
pub(super) async fn edit(client: &mut Client, key: &ObjectKey) -> anyhow::Result<()> {
    let (value, version) = read(client, key).await?;
    let original = serde_yaml_ng::to_string(&value)?;
    let dir = tempfile::Builder::new().prefix("gwctl-edit-").tempdir()?;
    let path = dir
        .path()
        .join(format!("{}-{}.yaml", key.kind.as_str(), key.name));
    let header =
        format!("# Edit {key} and save to apply it; save it unchanged (or empty) to cancel.\n");
    std::fs::write(&path, format!("{header}{original}"))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    if editor == "vi" && !std::io::stdin().is_terminal() {
        bail!("no terminal for vi: set EDITOR, or use `gwctl update` or `gwctl apply -f`");
    }
    // The editor may be a command with arguments (`code --wait`), as kubectl allows.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("gwctl-edit")
        .arg(&path)
        .status()
        .with_context(|| format!("running the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}); nothing was changed");
    }
    let edited = std::fs::read_to_string(&path)?;
    let body: String = edited
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    if body.trim().is_empty() || body.trim() == original.trim() {
        errln!("Edit cancelled, no changes made.");
        return Ok(());
    }
    let (mut parsed, _) = parse_manifests_as_applied(&body);
    let object = match (parsed.len(), parsed.pop()) {
        (1, Some(Ok(object))) => Ok(object),
        (1, Some(Err(e))) => Err(anyhow!("{e}")),
        (n, _) => Err(anyhow!("the file must hold one object, it holds {n}")),
    };
    let result = match object {
        Ok(object) => write(client, key, object, version).await,
        Err(e) => Err(WriteError::Other(e)),
    };
    let kept = |dir: tempfile::TempDir| dir.keep().join(path.file_name().expect("a file name"));
    match result {
        Ok(()) => Ok(()),
        Err(WriteError::Conflict(e)) => bail!(
            "{e}; nothing was changed. Your edit is kept in {}: run `gwctl edit` again and make it on the latest version",
            kept(dir).display()
        ),
        Err(WriteError::Other(e)) => bail!("{e:#}; your edit is kept in {}", kept(dir).display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_set_and_remove_fields() {
        let mut v = serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"port": 9000, "sources": [{"peer": "p1"}]}
        });
        apply_change(&mut v, "spec.port=9001").unwrap();
        apply_change(&mut v, "metadata.labels.env=prod").unwrap();
        apply_change(&mut v, "spec.sources.0.peer=p2").unwrap();
        apply_change(&mut v, "spec.sources.1={peer: p3}").unwrap();
        assert_eq!(v["spec"]["port"], 9001);
        assert_eq!(v["metadata"]["labels"]["env"], "prod");
        assert_eq!(v["spec"]["sources"][0]["peer"], "p2");
        assert_eq!(v["spec"]["sources"][1]["peer"], "p3");
        apply_change(&mut v, "metadata.labels.env-").unwrap();
        assert!(v["metadata"]["labels"].get("env").is_none());
        for bad in [
            "status.x=1",
            "spec",
            "spec.port",
            "spec.sources.9.peer=x",
            "spec.nope-",
        ] {
            assert!(apply_change(&mut v, bad).is_err(), "{bad}");
        }
    }
}
