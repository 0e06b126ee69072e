//! What gwctl shows of a running gateway: `get events`, `describe`, `explain` and `check`.

use crate::terminal::{errln, out, outln};
pub(super) use clusterlink_api::catalog::not_offered;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, anyhow, bail};
use clusterlink_api::activity::{ExplainRequest, Explanation, Traffic, TunnelEvent, Verdict};
use clusterlink_api::catalog::{OfferState, OffersView};
use clusterlink_api::rest::{EVENTS_PATH, EXPLAIN_PATH, OFFERS_PATH, TRAFFIC_PATH, object_path};
use clusterlink_api::{Condition, Kind, Object, ObjectKey};
use http::Method;
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::output::align;

/// What `get events` keeps.
#[derive(Debug, Default, Clone)]
pub(super) struct EventQuery {
    pub import: Option<String>,
    pub export: Option<String>,
    pub peer: Option<String>,
    pub problems: bool,
    pub limit: Option<usize>,
}

impl EventQuery {
    fn path(&self) -> String {
        let mut query = Vec::new();
        let mut add = |key: &str, value: &str| {
            let value: String = url_escape(value);
            query.push(format!("{key}={value}"));
        };
        if let Some(v) = &self.import {
            add("import", v);
        }
        if let Some(v) = &self.export {
            add("export", v);
        }
        if let Some(v) = &self.peer {
            add("peer", v);
        }
        if self.problems {
            add("problems", "true");
        }
        if let Some(limit) = self.limit {
            add("limit", &limit.to_string());
        }
        if query.is_empty() {
            EVENTS_PATH.to_string()
        } else {
            format!("{EVENTS_PATH}?{}", query.join("&"))
        }
    }
}

/// Escapes what a query value may not carry as is (names are DNS names and `/`, so little).
fn url_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get_json<T: DeserializeOwned>(client: &mut Client, path: &str) -> anyhow::Result<T> {
    let reply = client.request(Method::GET, path, None).await?;
    reply.ensure_ok()?;
    serde_json::from_value(reply.body)
        .with_context(|| format!("the gateway's answer to {path} is not what gwctl reads"))
}

pub(super) async fn events(
    client: &mut Client,
    query: &EventQuery,
    json: bool,
) -> anyhow::Result<()> {
    let events: Vec<TunnelEvent> = get_json(client, &query.path()).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&events)?);
    } else if events.is_empty() {
        errln!("No events.");
    } else {
        out!("{}", events_table(&events, now_ms()));
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A table of events, newest first, with how long ago each was.
fn events_table(events: &[TunnelEvent], now_ms: u64) -> String {
    let mut rows = vec![
        [
            "AGE", "SIDE", "OUTCOME", "BY", "REASON", "POLICY", "IMPORT", "EXPORT", "PEER",
            "CLIENT", "SENT", "RECEIVED", "MESSAGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in events {
        let or_dash = |v: Option<&str>| v.filter(|v| !v.is_empty()).unwrap_or("-").to_string();
        rows.push(vec![
            ago(now_ms.saturating_sub(e.time_ms)),
            e.side.as_str().into(),
            e.outcome.as_str().into(),
            or_dash(e.refused_by.map(|b| b.as_str())),
            or_dash(e.reason.as_deref()),
            or_dash(e.policy.as_deref()),
            or_dash(e.import.as_deref()),
            or_dash(Some(&e.export)),
            or_dash(Some(&e.peer)),
            or_dash(e.client.as_deref()),
            bytes(e.sent),
            bytes(e.received),
            or_dash(Some(&e.message)),
        ]);
    }
    align(&rows)
}

/// `gwctl get offers`: what peers offer this gateway, and what became of each offer.
pub(super) async fn offers(
    client: &mut Client,
    peer: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let mut view: OffersView = get_json(client, OFFERS_PATH).await?;
    if let Some(peer) = peer {
        view.retain(|p, _| p == peer);
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
    } else if view.values().all(Vec::is_empty) {
        match peer {
            Some(peer) => errln!(
                "No offers from {peer}: it offers nothing its policies let this site reach, or it has not answered a probe yet."
            ),
            None => errln!(
                "No offers: no peer offers anything this site may reach (or none answered a probe yet)."
            ),
        }
    } else {
        out!("{}", offers_table(&view));
    }
    Ok(())
}

fn offers_table(view: &OffersView) -> String {
    let mut rows = vec![
        ["PEER", "EXPORT", "PORT", "LABELS", "STATE"]
            .map(String::from)
            .to_vec(),
    ];
    for (peer, offers) in view {
        for status in offers {
            rows.push(vec![
                peer.clone(),
                status.offer.key_text(),
                status.offer.port.to_string(),
                labels_text(&status.offer.labels),
                offer_state(&status.state),
            ]);
        }
    }
    align(&rows)
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn offer_state(state: &OfferState) -> String {
    match state {
        OfferState::Imported(import) => format!("imported as {import}"),
        OfferState::NotSelected => {
            "not imported (the Peer's spec.mirror does not select it)".into()
        }
        OfferState::NotImported(why) => format!("not imported: {why}"),
    }
}

fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// A byte count in the unit that keeps it short.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `gwctl describe KIND NAME`: the object, its conditions, and what the data plane knows of it.
pub(super) async fn describe(client: &mut Client, key: &ObjectKey) -> anyhow::Result<()> {
    let reply = client.request(Method::GET, &object_path(key), None).await?;
    reply.ensure_ok()?;
    let object = clusterlink_api::manifest::object_from_value(reply.body)
        .map_err(|e| anyhow!("the gateway sent an object gwctl cannot read: {e}"))?;
    let traffic: Traffic = get_json(client, TRAFFIC_PATH).await?;
    let name = format!("{}/{}", key.namespace, key.name);
    let query = match &object {
        Object::Import(_) => EventQuery {
            import: Some(name.clone()),
            ..Default::default()
        },
        Object::Export(_) => EventQuery {
            export: Some(name.clone()),
            ..Default::default()
        },
        Object::Peer(_) => EventQuery {
            peer: Some(key.name.clone()),
            ..Default::default()
        },
        Object::AccessPolicy(_) | Object::PrivilegedAccessPolicy(_) => EventQuery::default(),
    };
    let query = EventQuery {
        problems: true,
        limit: Some(REFUSALS_SHOWN * 4),
        ..query
    };
    let mut refusals: Vec<TunnelEvent> = get_json(client, &query.path()).await?;
    // Events are not indexed by policy: a policy's are those it decided.
    let policy_ref = match &object {
        Object::AccessPolicy(_) => Some(clusterlink_api::activity::PolicyRef::namespaced(
            &key.namespace,
            &key.name,
        )),
        Object::PrivilegedAccessPolicy(_) => {
            Some(clusterlink_api::activity::PolicyRef::privileged(&key.name))
        }
        _ => None,
    };
    if let Some(policy) = &policy_ref {
        refusals.retain(|e| e.policy.as_ref() == Some(policy));
    }
    refusals.truncate(REFUSALS_SHOWN);
    let mut text = describe_text(&object, &traffic, &refusals, now_ms());
    match &object {
        Object::Peer(p) if p.spec.protocol == clusterlink_api::PeerProtocol::Go => {
            text.push_str("Offers:     none: a Go ClusterLink gateway has no catalog; import its exports by name\n");
        }
        Object::Peer(_) => {
            let offers: OffersView = get_json(client, OFFERS_PATH).await?;
            text.push_str(&peer_offers_text(offers.get(&key.name)));
        }
        Object::Import(i) => {
            let offers: OffersView = get_json(client, OFFERS_PATH).await?;
            for s in &i.spec.sources {
                if is_offered(&offers, &s.peer, &s.export_namespace, &s.export_name) == Some(false)
                {
                    let _ = writeln!(
                        text,
                        "Not offered: {}",
                        not_offered(&s.peer, &s.export_namespace, &s.export_name)
                    );
                }
            }
        }
        _ => {}
    }
    out!("{text}");
    Ok(())
}

/// Whether `peer` offers this gateway export `namespace/name`; `None` while its catalog is not
/// known.
pub(super) fn is_offered(
    offers: &OffersView,
    peer: &str,
    namespace: &str,
    name: &str,
) -> Option<bool> {
    offers.get(peer).map(|listed| {
        listed
            .iter()
            .any(|s| s.offer.namespace == namespace && s.offer.name == name)
    })
}

/// The `Offers:` section of `describe peer`.
fn peer_offers_text(offers: Option<&Vec<clusterlink_api::catalog::OfferStatus>>) -> String {
    let Some(offers) = offers else {
        return "Offers:     not known yet (the peer has not answered a probe since this gateway started)\n".into();
    };
    if offers.is_empty() {
        return "Offers:     none (nothing its policies let this site reach)\n".into();
    }
    let mut out = String::from("Offers:\n");
    for status in offers {
        let _ = writeln!(
            out,
            "  {} port {} [{}]: {}",
            status.offer.key_text(),
            status.offer.port,
            labels_text(&status.offer.labels),
            offer_state(&status.state)
        );
    }
    out
}

/// Refusals `describe` lists: the latest few, enough to see a pattern.
const REFUSALS_SHOWN: usize = 10;

fn describe_text(
    object: &Object,
    traffic: &Traffic,
    refusals: &[TunnelEvent],
    now_ms: u64,
) -> String {
    let mut out = String::new();
    let meta = object.metadata();
    let key = object.key();
    let name = format!("{}/{}", key.namespace, key.name);
    let _ = writeln!(out, "Name:       {}", meta.name);
    let _ = writeln!(out, "Namespace:  {}", meta.namespace);
    let _ = writeln!(out, "Kind:       {}", object.kind());
    if !meta.labels.is_empty() {
        let labels: Vec<String> = meta
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "Labels:     {}", labels.join(", "));
    }
    match object {
        Object::Peer(p) => {
            let gateways: Vec<String> = p
                .spec
                .gateways
                .iter()
                .map(|g| format!("{}:{}", g.host, g.port))
                .collect();
            let gateways = if gateways.is_empty() {
                "none: reached only over the link it dials to this gateway".to_string()
            } else {
                gateways.join(", ")
            };
            let _ = writeln!(out, "Gateways:   {gateways}");
            if p.spec.protocol == clusterlink_api::PeerProtocol::Go {
                let _ = writeln!(out, "Protocol:   go (a Go ClusterLink gateway)");
            }
            let peer = traffic.peers.get(&meta.name).cloned().unwrap_or_default();
            let reached = match (&peer.link, p.spec.dial) {
                (Some(link), _) => link.clone(),
                (None, _) if p.spec.gateways.is_empty() => {
                    "not reached: no link from it is up".into()
                }
                (None, true) => "directly (dial: true, but no link is up yet)".into(),
                (None, false) => "directly".into(),
            };
            let _ = writeln!(out, "Reached:    {reached}");
            let _ = writeln!(out, "Reachable:  {}", reachability(peer.reachable));
            let _ = writeln!(out, "Latency:    {}", latency(peer.latency_ms));
            let _ = writeln!(
                out,
                "Last error: {}",
                peer.last_error.as_deref().unwrap_or("-")
            );
            let _ = writeln!(
                out,
                "Traffic:    {} sent, {} received",
                bytes(peer.sent),
                bytes(peer.received)
            );
        }
        Object::Export(e) => {
            let host = if e.spec.host.is_empty() {
                "(the service of the same name)"
            } else {
                &e.spec.host
            };
            let port = e.spec.port.map_or("-".into(), |p| p.to_string());
            let _ = writeln!(out, "Backend:    {host}:{port}");
            let t = traffic.exports.get(&name).cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "Tunnels:    {} open; {} sent to the backend, {} received from it",
                t.active_tunnels,
                bytes(t.sent),
                bytes(t.received)
            );
        }
        Object::Import(i) => {
            let _ = writeln!(
                out,
                "Port:       {}{}",
                i.spec.port,
                i.spec
                    .target_port
                    .map(|p| format!(" (target port {p})"))
                    .unwrap_or_default()
            );
            let _ = writeln!(out, "LB scheme:  {}", i.spec.lb_scheme.as_str());
            let t = traffic.imports.get(&name).cloned().unwrap_or_default();
            let _ = writeln!(
                out,
                "Tunnels:    {} open; {} sent, {} received",
                t.active_tunnels,
                bytes(t.sent),
                bytes(t.received)
            );
            let _ = writeln!(out, "Sources:");
            let mut rows = vec![
                ["PEER", "EXPORT", "REACHABLE", "LATENCY", "LAST ERROR"]
                    .map(String::from)
                    .to_vec(),
            ];
            for s in &i.spec.sources {
                let peer = traffic.peers.get(&s.peer);
                rows.push(vec![
                    s.peer.clone(),
                    format!("{}/{}", s.export_namespace, s.export_name),
                    match peer {
                        Some(p) => reachability(p.reachable),
                        None => "no such Peer".into(),
                    },
                    latency(peer.and_then(|p| p.latency_ms)),
                    peer.and_then(|p| p.last_error.clone())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            out.push_str(&indent(&align(&rows)));
        }
        Object::AccessPolicy(_) | Object::PrivilegedAccessPolicy(_) => {
            let spec = match object {
                Object::AccessPolicy(p) => &p.spec,
                Object::PrivilegedAccessPolicy(p) => &p.spec.0,
                _ => unreachable!("matched above"),
            };
            let _ = writeln!(out, "Action:     {}", spec.action.as_str());
            // One selector a line, as `get` prints them; any one of them matching is a match.
            let selectors = |entries: &[clusterlink_api::WorkloadSelectorEntry]| {
                let lines: Vec<String> = entries
                    .iter()
                    .map(
                        |e| match crate::output::selector_text(&e.workload_selector) {
                            all if all == "*" => "* (everything)".to_string(),
                            some => some,
                        },
                    )
                    .collect();
                if lines.is_empty() {
                    "nothing (an empty list matches nothing)".to_string()
                } else {
                    lines.join("\n     or     ")
                }
            };
            let _ = writeln!(out, "From:       {}", selectors(&spec.from));
            let _ = writeln!(out, "To:         {}", selectors(&spec.to));
        }
    }
    let conditions: &[Condition] = object
        .status()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let _ = writeln!(out, "Conditions:");
    if conditions.is_empty() {
        let _ = writeln!(out, "  (none reported yet)");
    } else {
        let mut rows = vec![
            ["TYPE", "STATUS", "REASON", "MESSAGE"]
                .map(String::from)
                .to_vec(),
        ];
        for c in conditions {
            rows.push(vec![
                c.type_.clone(),
                c.status.as_str().into(),
                c.reason.clone(),
                c.message.clone(),
            ]);
        }
        out.push_str(&indent(&align(&rows)));
    }
    let _ = writeln!(out, "Recent refusals:");
    if refusals.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let mut rows = vec![
            ["AGE", "SIDE", "BY", "REASON", "POLICY", "PEER", "MESSAGE"]
                .map(String::from)
                .to_vec(),
        ];
        for e in refusals {
            rows.push(vec![
                ago(now_ms.saturating_sub(e.time_ms)),
                e.side.as_str().into(),
                e.refused_by.map_or("-", |b| b.as_str()).into(),
                e.reason
                    .clone()
                    .unwrap_or_else(|| e.outcome.as_str().into()),
                e.policy.clone().unwrap_or_else(|| "-".into()),
                if e.peer.is_empty() {
                    "-".into()
                } else {
                    e.peer.clone()
                },
                e.message.clone(),
            ]);
        }
        out.push_str(&indent(&align(&rows)));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn reachability(reachable: Option<bool>) -> String {
    match reachable {
        Some(true) => "yes".into(),
        Some(false) => "NO".into(),
        None => "not probed yet".into(),
    }
}

fn latency(ms: Option<f64>) -> String {
    ms.map_or("-".into(), |ms| format!("{ms:.1} ms"))
}

/// `gwctl explain`: the decision a new connection would get, on both sides. An error (and a
/// non-zero exit) when it would be refused.
pub(super) async fn explain(
    client: &mut Client,
    request: &ExplainRequest,
    json: bool,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(request)?;
    let reply = client
        .request(Method::POST, EXPLAIN_PATH, Some(body))
        .await?;
    reply.ensure_ok()?;
    let explanation: Explanation = serde_json::from_value(reply.body)
        .context("the gateway's explanation is not what gwctl reads")?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        out!("{}", explanation_text(&explanation));
    }
    if explanation.allowed() {
        Ok(())
    } else {
        bail!(
            "a new connection to import {} would be refused",
            explanation.import
        )
    }
}

fn verdict_text(side: &str, v: &Verdict) -> String {
    let decision = if v.allowed { "allow" } else { "DENY" };
    let why = match (&v.policy, &v.reason) {
        (Some(policy), _) => policy.clone(),
        (None, Some(reason)) => reason.clone(),
        (None, None) => "-".into(),
    };
    // Rules without a policy are named in parentheses already: `(unknown client)`.
    let why = if why.starts_with('(') {
        why
    } else {
        format!("({why})")
    };
    format!("{side}@{}: {decision} {why}", v.gateway)
}

fn explanation_text(e: &Explanation) -> String {
    let mut out = String::new();
    let attributes: Vec<String> = e.client.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(
        out,
        "import {} for a client with {}",
        e.import,
        if attributes.is_empty() {
            "no known attributes".to_string()
        } else {
            attributes.join(", ")
        }
    );
    if e.sources.is_empty() {
        let _ = writeln!(out, "  the import has no sources");
    }
    for s in &e.sources {
        let mut chain = verdict_text("egress", &s.egress);
        if let Some(ingress) = &s.ingress {
            chain.push_str(" → ");
            chain.push_str(&verdict_text("ingress", ingress));
        }
        let _ = writeln!(out, "  source {} export {}: {chain}", s.peer, s.export);
        for v in std::iter::once(&s.egress).chain(&s.ingress) {
            if !v.allowed && !v.message.is_empty() {
                let _ = writeln!(out, "    {}", v.message);
            }
        }
    }
    let verdict = if e.allowed() {
        "a new connection would be carried"
    } else {
        "a new connection would be REFUSED"
    };
    let _ = writeln!(out, "{verdict}");
    out
}

/// Parses `--client-attribute KEY=VALUE` pairs.
pub(super) fn attributes(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--client-attribute {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

/// The key of `name` of `kind` as the gateway addresses it.
pub(super) fn key_of(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, kind.namespace_in(namespace), name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterlink_api::activity::{Outcome, RefusedBy, SourceExplanation, TunnelSide};

    #[test]
    fn a_verdict_names_its_policy_in_parentheses_once() {
        let verdict = |policy: &str| Verdict {
            gateway: "client1".into(),
            allowed: false,
            policy: Some(policy.into()),
            reason: Some("PolicyDenied".into()),
            message: String::new(),
        };
        assert_eq!(
            verdict_text("egress", &verdict("default/deny-web")),
            "egress@client1: DENY (default/deny-web)"
        );
        assert_eq!(
            verdict_text("egress", &verdict("(unknown client)")),
            "egress@client1: DENY (unknown client)"
        );
    }

    #[test]
    fn a_chain_reads_as_the_issue_spells_it() {
        let explanation = Explanation {
            import: "default/web".into(),
            client: BTreeMap::new(),
            sources: vec![SourceExplanation {
                peer: "server1".into(),
                export: "default/web".into(),
                egress: Verdict {
                    gateway: "client1".into(),
                    allowed: true,
                    policy: Some("default/allow-all".into()),
                    reason: None,
                    message: String::new(),
                },
                ingress: Some(Verdict {
                    gateway: "server1".into(),
                    allowed: false,
                    policy: Some("default/deny-web".into()),
                    reason: Some("PolicyDenied".into()),
                    message: "ingress at server1: denied by AccessPolicy default/deny-web".into(),
                }),
            }],
        };
        let text = explanation_text(&explanation);
        assert!(
            text.contains(
                "egress@client1: allow (default/allow-all) → ingress@server1: DENY (default/deny-web)"
            ),
            "{text}"
        );
        assert!(text.contains("REFUSED"), "{text}");
    }

    #[test]
    fn event_tables_name_who_refused() {
        let event = TunnelEvent {
            time_ms: 1_000,
            side: TunnelSide::Egress,
            outcome: Outcome::Refused,
            refused_by: Some(RefusedBy::Peer),
            reason: Some("PolicyDenied".into()),
            policy: Some("default/deny-web".into()),
            import: Some("default/web".into()),
            export: "default/web".into(),
            peer: "server1".into(),
            client: Some("127.0.0.1:5555".into()),
            message: "ingress at server1: denied".into(),
            sent: 0,
            received: 0,
            duration_ms: 0,
        };
        let table = events_table(&[event], 61_000);
        let row = table.lines().nth(1).unwrap();
        for cell in [
            "1m0s",
            "egress",
            "Refused",
            "peer",
            "PolicyDenied",
            "default/deny-web",
        ] {
            assert!(row.contains(cell), "{cell} missing from {row}");
        }
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(url_escape("default/web x"), "default/web%20x");
    }
}
