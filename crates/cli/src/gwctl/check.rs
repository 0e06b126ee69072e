//! `gwctl check`: is this gateway working, and is what it was told to do working?

use crate::terminal::{out, outln};
use std::collections::BTreeMap;

use anyhow::bail;
use clusterlink_api::activity::{ExplainRequest, Explanation, Traffic};
use clusterlink_api::attributes::{SelectorSide, selector_key_problem};
use clusterlink_api::catalog::OffersView;
use clusterlink_api::rest::{EXPLAIN_PATH, OFFERS_PATH, TRAFFIC_PATH, VERSION_PATH};
use clusterlink_api::{AccessPolicySpec, ConditionStatus, Kind, Object};
use http::Method;
use serde::Serialize;

use super::get::fetch;
use super::observe::{is_offered, not_offered};
use crate::client::Client;
use crate::output::align;
use clusterlink_pki::status::CertificateStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Outcome {
    Ok,
    Warning,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Finding {
    pub check: String,
    pub result: Outcome,
    pub detail: String,
}

fn finding(check: impl Into<String>, result: Outcome, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.into(),
        result,
        detail: detail.into(),
    }
}

pub(super) async fn check(client: &mut Client, json: bool) -> anyhow::Result<()> {
    let findings = run_checks(client).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        let mut rows = vec![vec!["CHECK".into(), "RESULT".into(), "DETAIL".into()]];
        for f in &findings {
            let result = match f.result {
                Outcome::Ok => "ok",
                Outcome::Warning => "warning",
                Outcome::Failed => "FAILED",
            };
            rows.push(vec![f.check.clone(), result.into(), f.detail.clone()]);
        }
        out!("{}", align(&rows));
    }
    let failed = findings
        .iter()
        .filter(|f| f.result == Outcome::Failed)
        .count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", findings.len());
    }
    Ok(())
}

async fn run_checks(client: &mut Client) -> anyhow::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let reply = client.request(Method::GET, VERSION_PATH, None).await?;
    reply.ensure_ok()?;
    let version = &reply.body;
    let text = |field: &str| version[field].as_str().unwrap_or("?").to_string();
    findings.push(finding(
        "gateway",
        Outcome::Ok,
        format!(
            "peer {}, version {} (API {}); gwctl {}",
            text("peer"),
            text("version"),
            text("apiVersion"),
            env!("CARGO_PKG_VERSION")
        ),
    ));
    findings.push(certificate_finding(
        version,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    ));
    let traffic: Traffic = {
        let reply = client.request(Method::GET, TRAFFIC_PATH, None).await?;
        reply.ensure_ok()?;
        serde_json::from_value(reply.body)?
    };
    let peers = fetch(client, Kind::Peer, None, "", true).await?;
    for peer in &peers {
        let name = &peer.metadata().name;
        let state = traffic.peers.get(name).cloned().unwrap_or_default();
        let latency = state
            .latency_ms
            .map(|ms| format!(", {ms:.1} ms"))
            .unwrap_or_default();
        findings.push(match state.reachable {
            Some(true) => finding(
                format!("peer {name}"),
                Outcome::Ok,
                format!("reachable{latency}"),
            ),
            Some(false) => finding(
                format!("peer {name}"),
                Outcome::Failed,
                format!(
                    "unreachable: {}",
                    state.last_error.as_deref().unwrap_or("no probe answered")
                ),
            ),
            None => finding(format!("peer {name}"), Outcome::Warning, "not probed yet"),
        });
    }
    let known_peers: Vec<&str> = peers.iter().map(|p| p.metadata().name.as_str()).collect();
    // A gateway from before catalogs has no offers to compare with.
    let offers: OffersView = {
        let reply = client.request(Method::GET, OFFERS_PATH, None).await?;
        match reply.ensure_ok() {
            Ok(_) => serde_json::from_value(reply.body).unwrap_or_default(),
            Err(_) => OffersView::new(),
        }
    };
    let imports = fetch(client, Kind::Import, None, "", true).await?;
    for import in &imports {
        let key = import.key();
        let label = format!("import {}/{}", key.namespace, key.name);
        findings.push(condition_finding(&label, import));
        let Object::Import(i) = import else { continue };
        let mut asked = None;
        for source in &i.spec.sources {
            let what = format!("{label} source {}", source.peer);
            // The import's own finding (SourcesReady) already names a Peer nobody defined.
            if !known_peers.contains(&source.peer.as_str()) {
                continue;
            }
            // One dry run per import answers for all its sources.
            if asked.is_none() {
                asked = Some(explain_unknown_client(client, &key.namespace, &key.name).await);
            }
            let export = format!("{}/{}", source.export_namespace, source.export_name);
            let found = source_finding(what.clone(), &source.peer, &export, asked.as_ref());
            // A failed dry run already says why; the catalog speaks when that did not.
            let (namespace, name) = (&source.export_namespace, &source.export_name);
            let unoffered = found.result != Outcome::Failed
                && is_offered(&offers, &source.peer, namespace, name) == Some(false);
            findings.push(found);
            if unoffered {
                findings.push(finding(
                    format!("{what} offer"),
                    Outcome::Warning,
                    not_offered(&source.peer, namespace, name),
                ));
            }
        }
    }
    findings.extend(port_clashes(&imports));
    for kind in [Kind::AccessPolicy, Kind::PrivilegedAccessPolicy] {
        for policy in fetch(client, kind, None, "", true).await? {
            findings.push(policy_finding(&policy));
        }
    }
    Ok(findings)
}

/// The gateway's own certificate, as `/version` reports it, judged by the same rule the gateway
/// applies (`clusterlink_pki::status`).
fn certificate_finding(version: &serde_json::Value, now: i64) -> Finding {
    let status: CertificateStatus = serde_json::from_value(version["certificate"].clone())
        .unwrap_or_else(|_| {
            // A gateway from before self-renewing certificates reports only the expiry.
            CertificateStatus {
                expires: version["certificateExpires"].as_i64(),
                ..CertificateStatus::default()
            }
        });
    let condition = status.condition(now);
    let result = match condition.reason.as_str() {
        "CertificateCurrent" if condition.status == ConditionStatus::True => Outcome::Ok,
        "CertificateExpired" => Outcome::Failed,
        _ => Outcome::Warning,
    };
    let message = clusterlink_api::text::escaped(&condition.message).to_string();
    finding("certificate", result, message)
}

/// The object's telling condition (as every view shows it), as a finding.
fn condition_finding(label: &str, object: &Object) -> Finding {
    let condition = object
        .status()
        .and_then(|s| s.telling(object.kind().condition()));
    match condition {
        Some(c) if c.status == ConditionStatus::True => {
            finding(label, Outcome::Ok, format!("{}: {}", c.reason, c.message))
        }
        Some(c) if c.status == ConditionStatus::Unknown => finding(
            label,
            Outcome::Warning,
            format!("{}: {}", c.reason, c.message),
        ),
        Some(c) => finding(
            label,
            Outcome::Failed,
            format!("{}: {}", c.reason, c.message),
        ),
        None => finding(label, Outcome::Warning, "no status reported yet"),
    }
}

/// The explanation for a client with no attributes: what the exporting gateways say of the
/// import's exports, whatever their policies say of clients.
pub(super) async fn explain_unknown_client(
    client: &mut Client,
    namespace: &str,
    import: &str,
) -> Result<Explanation, String> {
    let request = ExplainRequest {
        namespace: namespace.into(),
        import: import.into(),
        client_address: None,
        client_attributes: Some(BTreeMap::new()),
    };
    let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let reply = client
        .request(Method::POST, EXPLAIN_PATH, Some(body))
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status.is_success() {
        return Err(reply.error_message());
    }
    serde_json::from_value(reply.body).map_err(|e| e.to_string())
}

/// Whether the export a source names exists on its peer, from the peer's dry-run answer.
pub(super) fn source_finding(
    what: String,
    peer: &str,
    export: &str,
    asked: Option<&Result<Explanation, String>>,
) -> Finding {
    let explanation = match asked {
        Some(Ok(e)) => e,
        Some(Err(e)) => return finding(what, Outcome::Failed, format!("could not ask: {e}")),
        None => return finding(what, Outcome::Warning, "not asked"),
    };
    let Some(source) = explanation
        .sources
        .iter()
        .find(|s| s.peer == peer && s.export == export)
    else {
        return finding(
            what,
            Outcome::Warning,
            "the gateway did not explain this source",
        );
    };
    match &source.ingress {
        None => finding(
            what,
            Outcome::Warning,
            "the exporting gateway was not asked",
        ),
        Some(v) => match v.reason.as_deref() {
            Some("NoSuchExport") => finding(
                what,
                Outcome::Failed,
                format!("peer {peer} has no export {export}"),
            ),
            Some("PeerUnreachable") => finding(
                what,
                Outcome::Failed,
                format!("peer {peer} did not answer: {}", v.message),
            ),
            // Most clients of a standalone gateway have no attributes: if this gateway's own
            // policies refuse such a client, the import serves few or none of them.
            _ if !source.egress.allowed => finding(
                what,
                Outcome::Warning,
                format!(
                    "export {export} exists on {peer}, but a client with no attributes is \
                     refused here: {}; give clients attributes (cl-gateway --client-attributes \
                     FILE) or change the policy",
                    source.egress.message
                ),
            ),
            _ => finding(
                what,
                Outcome::Ok,
                format!(
                    "export {export} exists on {peer} (a client with no attributes: allowed \
                     here by {}, {} there by {})",
                    source.egress.policy.as_deref().unwrap_or("-"),
                    if v.allowed { "allowed" } else { "denied" },
                    v.policy.as_deref().unwrap_or("-")
                ),
            ),
        },
    }
}

/// Imports on the same local port: only one of them can listen.
fn port_clashes(imports: &[Object]) -> Vec<Finding> {
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for import in imports {
        if let Object::Import(i) = import {
            let key = import.key();
            by_port
                .entry(i.spec.port.get())
                .or_default()
                .push(format!("{}/{}", key.namespace, key.name));
        }
    }
    let clashes: Vec<Finding> = by_port
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(port, names)| {
            finding(
                format!("port {port}"),
                Outcome::Failed,
                format!(
                    "imports {} all want it; only one can listen",
                    names.join(", ")
                ),
            )
        })
        .collect();
    if clashes.is_empty() {
        vec![finding("ports", Outcome::Ok, "no two imports share a port")]
    } else {
        clashes
    }
}

/// Problems with a policy's selector keys, as one line each.
pub(super) fn policy_problems(spec: &AccessPolicySpec) -> Vec<String> {
    let mut problems = Vec::new();
    for (side, entries, name) in [
        (SelectorSide::From, &spec.from, "from"),
        (SelectorSide::To, &spec.to, "to"),
    ] {
        for entry in entries {
            let selector = &entry.workload_selector;
            let keys = selector
                .match_labels
                .keys()
                .chain(selector.match_expressions.iter().map(|e| &e.key));
            for key in keys {
                if let Some(problem) = selector_key_problem(key, side) {
                    problems.push(format!("{name}: {problem}"));
                }
            }
        }
    }
    problems
}

fn policy_finding(policy: &Object) -> Finding {
    let key = policy.key();
    let (label, spec) = match policy {
        Object::AccessPolicy(p) => (format!("policy {}/{}", key.namespace, key.name), &p.spec),
        Object::PrivilegedAccessPolicy(p) => (format!("privileged policy {}", key.name), &p.spec.0),
        _ => unreachable!("only policies are passed"),
    };
    let problems = policy_problems(spec);
    if problems.is_empty() {
        finding(label, Outcome::Ok, "every selector key is an attribute")
    } else {
        finding(label, Outcome::Failed, problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_finding_follows_the_gateways_condition() {
        let day = 86_400;
        let old = serde_json::json!({"certificateExpires": 10 * day});
        assert_eq!(certificate_finding(&old, 0).result, Outcome::Warning);
        let renewing = serde_json::json!({"certificate": {
            "expires": 120, "validFrom": 0, "renewsFrom": "hub", "renewed": null, "renewalFailure": null
        }});
        assert_eq!(certificate_finding(&renewing, 10).result, Outcome::Ok);
        assert_eq!(certificate_finding(&renewing, 100).result, Outcome::Warning);
        assert_eq!(certificate_finding(&renewing, 200).result, Outcome::Failed);
        assert_eq!(
            certificate_finding(&serde_json::json!({}), 0).result,
            Outcome::Warning
        );
    }
}
