//! What a gateway reports about its traffic, as the management API serves it: the recent tunnel
//! events ([`TunnelEvent`]), live counts per object and peer ([`Traffic`]), and the decision a
//! new connection would get ([`Explanation`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which end of a tunnel a gateway is: the importing side (egress) or the exporting side
/// (ingress).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelSide {
    Egress,
    Ingress,
}

impl TunnelSide {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelSide::Egress => "egress",
            TunnelSide::Ingress => "ingress",
        }
    }
}

/// Which gateway refused: the one reporting, or the peer at the other end of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefusedBy {
    /// This gateway (its egress policy as importer, its ingress policy as exporter).
    Local,
    /// The exporting peer's gateway, which answered the tunnel request with a refusal.
    Peer,
}

impl RefusedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedBy::Local => "local",
            RefusedBy::Peer => "peer",
        }
    }
}

/// How a tunnel, or an attempt at one, ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Allowed, carried, and closed cleanly by its ends.
    Closed,
    /// Allowed, then broken mid-stream (a reset, or a peer connection lost).
    Broken,
    /// Open, then cut because policy or configuration stopped allowing it.
    Revoked,
    /// Never opened: denied by policy, or no gateway or backend could take it.
    Refused,
    /// Not a tunnel: a peer asked what a tunnel would get (`explain`, `check`), and nothing
    /// was opened. Kept as a sample: its message says how many it stands for.
    DryRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "Closed",
            Outcome::Broken => "Broken",
            Outcome::Revoked => "Revoked",
            Outcome::Refused => "Refused",
            Outcome::DryRun => "DryRun",
        }
    }
}

/// One tunnel that ended or was refused, as kept in a gateway's ring of recent events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelEvent {
    /// When it ended, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub side: TunnelSide,
    pub outcome: Outcome,
    /// For a refusal or a cut: who decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_by: Option<RefusedBy>,
    /// Machine-readable reason of a refusal or cut (`PolicyDenied`, `BackendUnreachable`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policy (or rule) that decided, as [`PolicyRef`] spells it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The import (`namespace/name`) on the importing side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<String>,
    /// The export (`namespace/name`) the tunnel goes to.
    pub export: String,
    /// The peer at the other end.
    pub peer: String,
    /// The client's address, on the importing side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// What an operator reads: the refusal's message, or why the tunnel broke.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Bytes from the client (egress) or from the peer (ingress) into the tunnel's far end.
    pub sent: u64,
    /// Bytes back.
    pub received: u64,
    pub duration_ms: u64,
}

/// Live counts of one import or export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectTraffic {
    /// Tunnels open now.
    pub active_tunnels: u64,
    /// Bytes towards the backend, counted as they move.
    pub sent: u64,
    /// Bytes back towards the client.
    pub received: u64,
}

/// What this gateway knows about a peer: its probes and the bytes exchanged with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerTraffic {
    /// `None` until the first probe has answered or failed.
    pub reachable: Option<bool>,
    /// Round trip of the last probe that answered (connect, TLS handshake, answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// The last probe failure, however long ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How the peer is reached when a link carries its tunnels: which way it was dialed, to or
    /// from where, since when. `None`: directly, at its gateways' addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub sent: u64,
    pub received: u64,
}

/// A gateway's live counts, keyed by `namespace/name` (imports, exports) and peer name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    pub imports: BTreeMap<String, ObjectTraffic>,
    pub exports: BTreeMap<String, ObjectTraffic>,
    pub peers: BTreeMap<String, PeerTraffic>,
}

/// What `explain` asks: would a new connection from this client to this import be allowed?
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExplainRequest {
    pub namespace: String,
    pub import: String,
    /// The client's address: its attributes are found as for a real connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<std::net::IpAddr>,
    /// Or the client's attributes, given outright.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_attributes: Option<BTreeMap<String, String>>,
}

/// One side's decision, as `explain` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The gateway that decided (its peer name).
    pub gateway: String,
    pub allowed: bool,
    /// The policy or rule that decided, as [`PolicyRef`] spells it; absent when no policy was
    /// reached (no such export, the peer unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Why it was refused, machine-readable (`PolicyDenied`, `NoSuchExport`, `PeerUnreachable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The decisions for one source of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceExplanation {
    pub peer: String,
    /// `namespace/name` of the export on the peer.
    pub export: String,
    pub egress: Verdict,
    /// The exporting gateway's answer to a dry run (asked even when egress denies); absent when
    /// no such Peer is defined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Verdict>,
}

/// The answer to an [`ExplainRequest`]: each source in the order a connection tries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub import: String,
    /// The attributes the client was taken to have.
    pub client: BTreeMap<String, String>,
    pub sources: Vec<SourceExplanation>,
}

impl Explanation {
    /// Whether a connection would be carried: some source allowed on both sides.
    pub fn allowed(&self) -> bool {
        self.sources
            .iter()
            .any(|s| s.egress.allowed && s.ingress.as_ref().is_some_and(|i| i.allowed))
    }
}

/// How a deciding policy or rule is named in events, explanations and metric labels.
pub struct PolicyRef;

impl PolicyRef {
    /// An `AccessPolicy`: `namespace/name`.
    pub fn namespaced(namespace: &str, name: &str) -> String {
        format!("{namespace}/{name}")
    }

    /// A `PrivilegedAccessPolicy`: `privileged:name` (a colon is in no namespace name).
    pub fn privileged(name: &str) -> String {
        format!("privileged:{name}")
    }

    /// No policy matched.
    pub const DEFAULT_DENY: &'static str = "(default deny)";
    /// The client's attributes are unknown while policies select clients by attribute.
    pub const UNKNOWN_CLIENT: &'static str = "(unknown client)";
}
