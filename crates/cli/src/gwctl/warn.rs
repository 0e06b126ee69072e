//! Warnings after `create` and `apply`: what was written but is not working, said at once rather
//! than found later in a table or a log.

use std::collections::BTreeSet;
use std::time::Duration;

use clusterlink_api::{ConditionReason, ConditionStatus, Kind, Object, ObjectKey};

use super::check::{Outcome, explain_unknown_client, policy_problems, source_finding};
use super::get::fetch;
use crate::client::Client;

/// How long gwctl waits for the gateway to report on what it wrote: binding a port or a first
/// probe of a reachable peer takes milliseconds; a peer that does not answer takes its probe
/// timeout, and is reported as not probed yet rather than waited for.
const SETTLE: Duration = Duration::from_secs(2);
/// How often gwctl looks again while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Warnings about `written` objects (with what each write did: created, configured...).
pub(super) async fn after_writes(client: &mut Client, written: &[(Object, String)]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (obj, did) in written {
        let spec = match obj {
            Object::AccessPolicy(p) => &p.spec,
            Object::PrivilegedAccessPolicy(p) => &p.spec.0,
            _ => continue,
        };
        for problem in policy_problems(spec) {
            warnings.push(format!("{} never matches as written: {problem}", obj.key()));
        }
        // The unknown-client rule (`dataplane::policy`): a surprise when it first applies.
        if did != "unchanged" && spec.selects_clients() {
            warnings.push(format!(
                "{} selects clients by attribute: while it exists, this gateway refuses every \
                 client it knows no attributes of (not a pod, not in cl-gateway \
                 --client-attributes), whatever other policies allow",
                obj.key()
            ));
        }
    }
    let watched: BTreeSet<Kind> = written
        .iter()
        .map(|(o, _)| o.kind())
        .filter(|k| matches!(k, Kind::Import | Kind::Peer))
        .collect();
    if watched.is_empty() {
        return warnings;
    }
    let keys: BTreeSet<ObjectKey> = written.iter().map(|(o, _)| o.key()).collect();
    let deadline = tokio::time::Instant::now() + SETTLE;
    let current = loop {
        let mut current = Vec::new();
        for &kind in &watched {
            // A failure to read back is no warning about the objects: the writes stand.
            let Ok(objects) = fetch(client, kind, None, "", true).await else {
                return warnings;
            };
            current.extend(objects.into_iter().filter(|o| keys.contains(&o.key())));
        }
        if current.iter().all(settled) || tokio::time::Instant::now() >= deadline {
            break current;
        }
        tokio::time::sleep(POLL).await;
    };
    for obj in &current {
        let did = written
            .iter()
            .find(|(o, _)| o.key() == obj.key())
            .map_or("written", |(_, d)| d.as_str());
        warnings.extend(not_working(obj, did));
    }
    // Whether the exports exist is the exporting gateways' to say: a dry run each, for the
    // first few imports (a bulk apply of thousands is `gwctl check`'s job).
    let imports: Vec<&(Object, String)> = written
        .iter()
        .filter(|(o, _)| o.kind() == Kind::Import)
        .collect();
    for (obj, did) in imports.iter().take(EXPORTS_ASKED) {
        let Object::Import(import) = obj else {
            continue;
        };
        let key = obj.key();
        let asked = explain_unknown_client(client, &key.namespace, &key.name).await;
        for source in &import.spec.sources {
            let export = format!("{}/{}", source.export_namespace, source.export_name);
            let found = source_finding(String::new(), &source.peer, &export, Some(&asked));
            // A source without a Peer is already the SourcesReady warning.
            if found.result == Outcome::Failed && !found.detail.contains("not defined") {
                warnings.push(format!(
                    "import {}/{} {did}, but its source does NOT work: {}",
                    key.namespace, key.name, found.detail
                ));
            }
        }
    }
    if imports.len() > EXPORTS_ASKED {
        warnings.push(format!(
            "the exports of {} more imports were not asked about; run `gwctl check`",
            imports.len() - EXPORTS_ASKED
        ));
    }
    warnings
}

/// Imports whose exports a write asks the exporting gateways about, at most.
const EXPORTS_ASKED: usize = 32;

/// Whether the running gateway has reported on `obj` (not only the model's admission).
fn settled(obj: &Object) -> bool {
    let Some(condition) = obj
        .status()
        .and_then(|s| s.condition(obj.kind().condition()))
    else {
        return false;
    };
    let placeholder = match obj.kind() {
        Kind::Import => ConditionReason::Accepted,
        Kind::Peer => ConditionReason::NotProbed,
        _ => return true,
    };
    condition.reason != placeholder.as_str()
}

/// One line per condition of `obj` that is `False`, e.g. `import default/web created, but NOT
/// listening: cannot listen on 127.0.0.1:9000: Address in use`.
fn not_working(obj: &Object, did: &str) -> Vec<String> {
    let key = obj.key();
    let what = format!(
        "{} {}/{}",
        obj.kind().as_str().to_ascii_lowercase(),
        key.namespace,
        key.name
    );
    obj.status()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.status == ConditionStatus::False)
        .map(|c| {
            let state = match c.type_.as_str() {
                "ImportValid" => "listening",
                "PeerReachable" => "reachable",
                "SourcesReady" => "ready to reach its sources",
                other => other,
            };
            format!("{what} {did}, but NOT {state}: {}", c.message)
        })
        .collect()
}
