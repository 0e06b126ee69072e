//! `gwctl check`: is this gateway working, and is what it was told to do working?

use crate::terminal::{out, outln};
use std::collections::BTreeMap;

use anyhow::bail;
use clusterlink_api::activity::{ExplainRequest, Explanation, Traffic};
use clusterlink_api::attributes::{SelectorSide, selector_key_problem};
use clusterlink_api::rest::{EXPLAIN_PATH, TRAFFIC_PATH, VERSION_PATH};
use clusterlink_api::{AccessPolicySpec, ConditionStatus, Kind, Object};
use http::Method;
use serde::Serialize;

use super::get::fetch;
use crate::client::Client;
use crate::output::align;

/// A certificate closer to its end than this is a warning: time to rotate.
const EXPIRY_WARNING_DAYS: i64 = 30;

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
        &Certificate::of_version(version),
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
    let imports = fetch(client, Kind::Import, None, "", true).await?;
    for import in &imports {
        let key = import.key();
        let label = format!("import {}/{}", key.namespace, key.name);
        findings.push(condition_finding(&label, import));
        let Object::Import(i) = import else { continue };
        let mut asked = None;
        for source in &i.spec.sources {
            let what = format!("{label} source {}", source.peer);
            if !known_peers.contains(&source.peer.as_str()) {
                findings.push(finding(
                    what,
                    Outcome::Failed,
                    format!("source peer {:?} is not defined", source.peer),
                ));
                continue;
            }
            // One dry run per import answers for all its sources.
            if asked.is_none() {
                asked = Some(explain_unknown_client(client, &key.namespace, &key.name).await);
            }
            let export = format!("{}/{}", source.export_namespace, source.export_name);
            findings.push(source_finding(what, &source.peer, &export, asked.as_ref()));
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

/// What a gateway says of its own certificate (`/version`).
#[derive(Debug, Default)]
struct Certificate {
    expires: Option<i64>,
    valid_from: Option<i64>,
    /// The issuing gateway it renews with, if it renews itself.
    renews_from: Option<String>,
    renewed: Option<i64>,
    renewal_failure: Option<String>,
}

impl Certificate {
    fn of_version(version: &serde_json::Value) -> Certificate {
        let text = |f: &str| {
            version[f]
                .as_str()
                .map(|s| clusterlink_api::text::escaped(s).to_string())
        };
        Certificate {
            expires: version["certificateExpires"].as_i64(),
            valid_from: version["certificateValidFrom"].as_i64(),
            renews_from: text("renewsFrom"),
            renewed: version["certificateRenewed"].as_i64(),
            renewal_failure: text("renewalFailure"),
        }
    }
}

/// A span of seconds as an operator reads it: `12 days`, `5h 20m`, `40s`.
fn span(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn certificate_finding(cert: &Certificate, now: i64) -> Finding {
    let Some(expires) = cert.expires else {
        return finding(
            "certificate",
            Outcome::Warning,
            "the gateway does not say when its certificate expires",
        );
    };
    let days = (expires - now).div_euclid(86_400);
    let date = clusterlink_pki::authority::timestamp(expires);
    if expires <= now {
        return finding(
            "certificate",
            Outcome::Failed,
            format!("expired at {date}: peers refuse it; issue a new one"),
        );
    }
    let left = span(expires - now);
    if let Some(issuer) = &cert.renews_from {
        let renewed = cert.renewed.map_or_else(
            || "not renewed yet".to_string(),
            |at| format!("last renewed {} ago", span(now - at)),
        );
        if let Some(failure) = &cert.renewal_failure {
            return finding(
                "certificate",
                Outcome::Warning,
                format!(
                    "renewal with {issuer} is failing ({failure}); expires in {left} ({date}); {renewed}"
                ),
            );
        }
        // Renewal starts at two thirds of the lifetime; past three quarters it is late.
        let overdue = cert
            .valid_from
            .is_some_and(|from| now > from + (expires - from) * 3 / 4);
        return finding(
            "certificate",
            if overdue {
                Outcome::Warning
            } else {
                Outcome::Ok
            },
            format!(
                "expires in {left} ({date}); renews itself with {issuer}{}; {renewed}",
                if overdue { ", but is overdue" } else { "" }
            ),
        );
    }
    if days < EXPIRY_WARNING_DAYS {
        finding(
            "certificate",
            Outcome::Warning,
            format!(
                "expires in {left} ({date}): rotate it soon, or join with a token to renew it automatically"
            ),
        )
    } else {
        finding(
            "certificate",
            Outcome::Ok,
            format!("expires in {days} days ({date})"),
        )
    }
}

/// The object's own condition, as a finding.
fn condition_finding(label: &str, object: &Object) -> Finding {
    let condition = object
        .status()
        .and_then(|s| s.condition(object.kind().condition()));
    match condition {
        Some(c) if c.status == ConditionStatus::True => {
            finding(label, Outcome::Ok, format!("{}: {}", c.reason, c.message))
        }
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
            _ => finding(
                what,
                Outcome::Ok,
                format!(
                    "export {export} exists on {peer} (a client with no attributes: {} by {})",
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
    fn certificates_near_their_end_warn_and_expired_ones_fail() {
        let day = 86_400;
        let expiring = |expires| Certificate {
            expires,
            ..Certificate::default()
        };
        assert_eq!(
            certificate_finding(&expiring(Some(365 * day)), 0).result,
            Outcome::Ok
        );
        assert_eq!(
            certificate_finding(&expiring(Some(10 * day)), 0).result,
            Outcome::Warning
        );
        assert_eq!(
            certificate_finding(&expiring(Some(-day)), 0).result,
            Outcome::Failed
        );
        assert_eq!(
            certificate_finding(&expiring(None), 0).result,
            Outcome::Warning
        );
    }

    #[test]
    fn a_renewing_certificate_warns_when_renewal_fails_or_is_late() {
        let renewing = |failure: Option<&str>| Certificate {
            expires: Some(120),
            valid_from: Some(0),
            renews_from: Some("hub".into()),
            renewed: None,
            renewal_failure: failure.map(str::to_string),
        };
        // A two-minute certificate is no warning while it renews itself.
        let fine = certificate_finding(&renewing(None), 10);
        assert_eq!(fine.result, Outcome::Ok, "{}", fine.detail);
        assert!(fine.detail.contains("renews itself with hub"));
        let late = certificate_finding(&renewing(None), 100);
        assert_eq!(late.result, Outcome::Warning, "{}", late.detail);
        let failing = certificate_finding(&renewing(Some("no issuing gateway answered")), 10);
        assert_eq!(failing.result, Outcome::Warning);
        assert!(failing.detail.contains("no issuing gateway answered"));
        assert_eq!(
            certificate_finding(&renewing(None), 121).result,
            Outcome::Failed
        );
    }
}
