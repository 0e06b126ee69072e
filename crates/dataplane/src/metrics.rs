//! Prometheus metrics, served as text at `/metrics` on the management listener, and the report
//! of each tunnel: counted, kept among the recent events ([`crate::events`]) and logged in one
//! line, all from one call ([`Metrics::tunnel_ended`], [`Metrics::refused`]).
//!
//! Bytes are counted as they move (a relay adds each write to its tunnel's [`TunnelMeter`]), so
//! a day-long tunnel shows its traffic while it lasts.
//!
//! Label values come only from the configuration (imports, exports, peers and policies that
//! exist here) or from closed sets (sides, reasons), so a peer cannot grow the label sets: an
//! export or peer name a request carries is labelled only when it is configured.
//! `docs/METRICS.md` describes every metric; a test keeps it in step with [`Metrics::encode`].

use std::time::Duration;
use tokio::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::collections::HashMap;

use clusterlink_api::activity::{ObjectTraffic, Traffic, TunnelEvent};

use clusterlink_api::text::Escaped;

use crate::events::{EventLog, MAX_EVENT_TEXT};
use crate::limits::Limits;
use crate::rate::RateLimited;
use crate::tunnel::{RefusalReason, TunnelResponse};

/// Which tunnels get a log line of their own. Every tunnel is counted in the metrics and kept
/// among the recent events either way; refused, broken and cut tunnels are always logged, at
/// most [`Limits::problem_log`] lines per side, peer and reason (a line says how many it stands
/// for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLog {
    /// Only the problems: a busy gateway's log grows with its problems, not its traffic.
    #[default]
    Problems,
    /// Every tunnel that ends, one INFO line each (about 200 bytes a tunnel).
    All,
}

/// A peer's or an error's text as a log line shows it: escaped, and cut to a bounded length.
struct LogText<'a>(&'a str);

impl std::fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut end = self.0.len().min(MAX_EVENT_TEXT);
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        Escaped(&self.0[..end]).fmt(f)?;
        if end < self.0.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Which end of a tunnel a gateway is: the importing side (egress) or the exporting side (ingress).
pub use clusterlink_api::activity::TunnelSide as Side;
pub use clusterlink_api::activity::{Outcome, RefusedBy};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    side: String,
    refused_by: String,
    reason: String,
    import: String,
    export: String,
    peer: String,
    policy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    side: String,
    stage: String,
}

/// A step of setting up a tunnel, timed by `clusterlink_tunnel_setup_stage_seconds` (for
/// tunnels that opened), so an operator sees where a slow connect spends its time: this
/// gateway's decision, reaching the peer, the peer's answer, or the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupStage {
    /// Importing side: from accepting the client to the policy allowing a source.
    EgressDecision,
    /// Importing side: a connection to the peer's gateway ready, kept warm or new (connect and
    /// TLS handshake).
    PeerConnection,
    /// Importing side: the tunnel request sent and the answer read. It holds the exporting
    /// side's stages and the trips between the gateways.
    PeerAnswer,
    /// Exporting side: the policy deciding on the request.
    IngressDecision,
    /// Exporting side: the backend connected and checked.
    BackendConnect,
    /// Exporting side: the client's first bytes written to the backend (when they came with the
    /// request) and the answer (`200`) written to the peer.
    Answer,
}

impl SetupStage {
    const ALL: [SetupStage; 6] = [
        SetupStage::EgressDecision,
        SetupStage::PeerConnection,
        SetupStage::PeerAnswer,
        SetupStage::IngressDecision,
        SetupStage::BackendConnect,
        SetupStage::Answer,
    ];

    fn side(self) -> Side {
        match self {
            SetupStage::EgressDecision | SetupStage::PeerConnection | SetupStage::PeerAnswer => {
                Side::Egress
            }
            SetupStage::IngressDecision | SetupStage::BackendConnect | SetupStage::Answer => {
                Side::Ingress
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SetupStage::EgressDecision | SetupStage::IngressDecision => "decision",
            SetupStage::PeerConnection => "peer_connection",
            SetupStage::PeerAnswer => "peer_answer",
            SetupStage::BackendConnect => "backend_connect",
            SetupStage::Answer => "answer",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
    reason: String,
}

/// A listener that faces strangers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The peer port, before a connection has authenticated.
    Peer,
    Management,
    /// The snapshot stream to data-plane replicas (Kubernetes mode).
    Replica,
    /// Health probes and metrics scrapes (Kubernetes mode).
    Ops,
    /// An import's listener, for local clients.
    Import,
}

impl Listener {
    fn as_str(self) -> &'static str {
        match self {
            Listener::Peer => "peer",
            Listener::Management => "management",
            Listener::Replica => "replica",
            Listener::Ops => "ops",
            Listener::Import => "import",
        }
    }
}

/// Why a connection was closed before it authenticated or was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unserved {
    /// Its source holds as many unauthenticated connections as one source may.
    SourceLimit,
    /// The listener holds as many connections as it may.
    ListenerLimit,
    /// The TLS handshake failed (bad certificate, protocol, ALPN).
    HandshakeRefused,
    /// The TLS handshake or first request did not come in time.
    HandshakeTimeout,
    /// Authenticated with a certificate that is not a peer's (or not an admin's, for management).
    WrongIdentity,
    /// Nothing was sent or received for longer than the listener waits.
    Idle,
    /// Authenticated, but its peer holds as many connections as one peer may.
    PeerLimit,
    /// Authenticated, but no Peer object names it, and the gateway admits only configured peers.
    UnknownPeer,
}

impl Unserved {
    pub fn as_str(self) -> &'static str {
        match self {
            Unserved::SourceLimit => "SourceLimit",
            Unserved::ListenerLimit => "ListenerLimit",
            Unserved::HandshakeRefused => "HandshakeRefused",
            Unserved::HandshakeTimeout => "HandshakeTimeout",
            Unserved::WrongIdentity => "WrongIdentity",
            Unserved::Idle => "Idle",
            Unserved::PeerLimit => "PeerLimit",
            Unserved::UnknownPeer => "UnknownPeer",
        }
    }
}

/// Why a connection was refused or its tunnel cut, as `clusterlink_connections_refused_total`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A reason a gateway also sends on the wire with its refusal.
    Tunnel(RefusalReason),
    /// The import was deleted while the connection was accepted.
    NoSuchImport,
    /// No gateway of a source's peer could take the tunnel.
    PeerUnreachable,
    /// A source names a Peer that is not defined.
    NoSuchPeer,
    /// Every source of the import was denied or failed.
    AllSourcesFailed,
    /// An open tunnel was cut because policy or configuration no longer allows it.
    Revoked,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Tunnel(reason) => reason.as_str(),
            Refusal::NoSuchImport => "NoSuchImport",
            Refusal::PeerUnreachable => "PeerUnreachable",
            Refusal::NoSuchPeer => "NoSuchPeer",
            Refusal::AllSourcesFailed => "AllSourcesFailed",
            Refusal::Revoked => "Revoked",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectBytes {
    name: String,
    direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

/// The counters of one import, export or peer, shared with their metric families so the traffic
/// view ([`Metrics::traffic`]) reads what the exposition shows.
#[derive(Clone, Default)]
struct ObjectCounters {
    active: Gauge,
    sent: Counter,
    received: Counter,
}

/// What identifies a tunnel (or a refused attempt at one) in metrics, events and logs. Names
/// are `namespace/name` for imports and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRef {
    pub side: Side,
    /// The import, on the importing side.
    pub import: Option<String>,
    /// The export; empty when not known (a refusal before any source was tried, or a name no
    /// export here has).
    pub export: String,
    /// The peer at the other end; empty when not known or not configured.
    pub peer: String,
    /// The client, on the importing side.
    pub client: Option<std::net::SocketAddr>,
}

impl TunnelRef {
    /// An event of this tunnel, now, with `outcome` and `message`; what else it says is the
    /// caller's to fill in.
    fn event(&self, outcome: Outcome, message: String) -> TunnelEvent {
        TunnelEvent {
            time_ms: now_ms(),
            side: self.side,
            outcome,
            refused_by: None,
            reason: None,
            policy: None,
            import: self.import.clone(),
            export: self.export.clone(),
            peer: self.peer.clone(),
            client: self.client.map(|c| c.to_string()),
            message,
            sent: 0,
            received: 0,
            duration_ms: 0,
        }
    }
}

/// A refusal, as [`Metrics::refused`] reports it.
#[derive(Debug, Clone)]
pub struct Refused {
    pub by: RefusedBy,
    pub refusal: Refusal,
    /// The policy (or rule) that decided, as [`clusterlink_api::activity::PolicyRef`] spells it.
    pub policy: Option<String>,
    pub message: String,
}

/// How an allowed tunnel ended.
#[derive(Debug, Clone)]
pub enum TunnelEnding {
    Closed,
    /// Broken mid-stream: why.
    Broken(String),
    /// Cut when access ended, by this gateway or (seen from the importing side) by the peer.
    Revoked(RefusedBy),
}

/// An open tunnel's counters: a relay adds each write, and the tunnel counts as open until the
/// meter is dropped (in [`Metrics::tunnel_ended`], or with the connection).
pub struct TunnelMeter {
    started: Instant,
    tunnel: TunnelRef,
    object: ObjectCounters,
    peer: ObjectCounters,
    /// This tunnel's own totals: towards the far end, and back.
    moved: [std::sync::atomic::AtomicU64; 2],
}

impl TunnelMeter {
    /// Bytes moved towards the tunnel's far end (the backend).
    pub(crate) fn sent(&self, n: u64) {
        self.object.sent.inc_by(n);
        self.peer.sent.inc_by(n);
        self.moved[0].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes moved back towards the client.
    pub(crate) fn received(&self, n: u64) {
        self.object.received.inc_by(n);
        self.peer.received.inc_by(n);
        self.moved[1].fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// What this tunnel moved so far: (sent, received).
    pub fn moved(&self) -> (u64, u64) {
        let load = |i: usize| self.moved[i].load(std::sync::atomic::Ordering::Relaxed);
        (load(0), load(1))
    }

    pub fn tunnel(&self) -> &TunnelRef {
        &self.tunnel
    }
}

impl Drop for TunnelMeter {
    fn drop(&mut self) {
        self.object.active.dec();
    }
}

/// A client address for a log line: `-` on the exporting side, which does not see it.
struct Client(Option<std::net::SocketAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Wall-clock time in Unix seconds, as certificates count it.
pub(crate) fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct Metrics {
    registry: Registry,
    accepted: Family<SideLabels, Counter>,
    active: Family<SideLabels, Gauge>,
    refused: Family<RefusedLabels, Counter>,
    import_bytes: Family<ObjectBytes, Counter>,
    export_bytes: Family<ObjectBytes, Counter>,
    peer_bytes: Family<ObjectBytes, Counter>,
    peer_reachable: Family<PeerLabels, Gauge>,
    authorization: Family<SideLabels, Histogram>,
    /// One histogram per [`SetupStage`], in [`SetupStage::ALL`]'s order: made once, so timing a
    /// stage allocates no labels.
    setup_stages: [Histogram; SetupStage::ALL.len()],
    idle_peer_connections: Family<SideLabels, Gauge>,
    runtime_tasks: Gauge,
    unserved: Family<ListenerLabels, Counter>,
    import_tunnels: Family<NameLabels, Gauge>,
    export_tunnels: Family<NameLabels, Gauge>,
    /// Handles on the counters above, by object, for [`Metrics::traffic`].
    objects: parking_lot::RwLock<HashMap<(Role, String), ObjectCounters>>,
    /// The recent tunnels and refusals.
    pub events: EventLog,
    /// One warning per listener and reason per [`WARN_EVERY`], however many connections.
    warned: parking_lot::Mutex<HashMap<(Listener, &'static str), LastWarning>>,
    access_log: AccessLog,
    /// Log lines about problems, by side, peer and reason.
    problem_lines: RateLimited<(Side, String, &'static str)>,
    dry_runs: Family<DryRunLabels, Counter>,
    /// Dry runs kept among the events and logged, by peer.
    dry_run_samples: RateLimited<String>,
    /// The gateway's own certificate: its expiry, renewals, and the revocations in force.
    pub credentials: CredentialMetrics,
}

/// What the gateway reports about its own certificate and the revocation lists it holds.
#[derive(Default)]
pub struct CredentialMetrics {
    expires: Gauge,
    renewed: Gauge,
    renewal_failures: Counter,
    revoked: Gauge,
    last: parking_lot::Mutex<RenewalStatus>,
}

/// The last renewal and the last failure since, for `gwctl check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewalStatus {
    /// The issuing gateway the certificate renews with, if it renews itself.
    pub renews_from: Option<String>,
    /// Unix seconds.
    pub renewed_at: Option<i64>,
    /// Why the last attempt failed, if it did (cleared by a success).
    pub failure: Option<String>,
}

impl CredentialMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the gateway's own certificate expires (Unix seconds)",
            self.expires.clone(),
        );
        registry.register(
            "certificate_renewed_timestamp_seconds",
            "When the gateway last renewed its certificate (Unix seconds; 0 if it never did)",
            self.renewed.clone(),
        );
        registry.register(
            "certificate_renewal_failures",
            "Failed attempts to renew the gateway's certificate",
            self.renewal_failures.clone(),
        );
        registry.register(
            "revoked_certificates",
            "Certificates the revocation lists in force revoke",
            self.revoked.clone(),
        );
    }

    /// A certificate set went into force: its expiry and the revocations it carries.
    pub fn in_force(&self, expires: Option<i64>, revoked: usize) {
        self.expires.set(expires.unwrap_or(0));
        self.revoked.set(i64::try_from(revoked).unwrap_or(i64::MAX));
    }

    /// The certificate renews itself with `issuer`.
    pub fn renewing(&self, issuer: &str) {
        self.last.lock().renews_from = Some(issuer.to_string());
    }

    pub fn renewed(&self, at: i64) {
        self.renewed.set(at);
        let mut last = self.last.lock();
        last.renewed_at = Some(at);
        last.failure = None;
    }

    pub fn renewal_failed(&self, why: String) {
        self.renewal_failures.inc();
        self.last.lock().failure = Some(why);
    }

    pub fn renewal(&self) -> RenewalStatus {
        self.last.lock().clone()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DryRunLabels {
    peer: String,
    answer: String,
}

/// What a name in [`Metrics::objects`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Import,
    Export,
    Peer,
}

/// When a kind of warning was last logged, and how many were left out since.
type LastWarning = (Option<Instant>, u64);

/// Shortest time between two warnings of the same kind (see [`Limits::warn_every`]).
pub const WARN_EVERY: Duration = crate::limits::Limits::DEFAULT.warn_every;

/// Buckets from 50 µs to about 1.6 s: a local decision sits at the low end, a two-sided
/// authorization with a fresh TLS handshake in the milliseconds.
fn authorization_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.0, 16,
    ))
}

/// Buckets from 5 µs to about 2.6 s: a decision takes microseconds, a connection to a peer
/// with a fresh TLS handshake milliseconds, a backend that does not answer up to its timeout.
fn setup_stage_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000005, 2.0, 20,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("clusterlink");
        let accepted = Family::<SideLabels, Counter>::default();
        let active = Family::<SideLabels, Gauge>::default();
        let refused = Family::<RefusedLabels, Counter>::default();
        let import_bytes = Family::<ObjectBytes, Counter>::default();
        let export_bytes = Family::<ObjectBytes, Counter>::default();
        let peer_bytes = Family::<ObjectBytes, Counter>::default();
        let peer_reachable = Family::<PeerLabels, Gauge>::default();
        let authorization = Family::<SideLabels, Histogram>::new_with_constructor(
            authorization_histogram as fn() -> Histogram,
        );
        registry.register(
            "connections_accepted",
            "Connections accepted, by side",
            accepted.clone(),
        );
        registry.register(
            "connections_active",
            "Connections open now, by side",
            active.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused or tunnels cut: by this gateway's side, who refused (local, peer), reason, and the import, export, peer and policy involved",
            refused.clone(),
        );
        let import_tunnels = Family::<NameLabels, Gauge>::default();
        registry.register(
            "import_tunnels_active",
            "Tunnels open now, per import",
            import_tunnels.clone(),
        );
        let export_tunnels = Family::<NameLabels, Gauge>::default();
        registry.register(
            "export_tunnels_active",
            "Tunnels open now, per export",
            export_tunnels.clone(),
        );
        registry.register(
            "import_bytes",
            "Bytes carried per import, counted as they move (sent: to the remote side)",
            import_bytes.clone(),
        );
        registry.register(
            "export_bytes",
            "Bytes carried per export, counted as they move (sent: to the backend)",
            export_bytes.clone(),
        );
        registry.register(
            "peer_bytes",
            "Bytes exchanged with each peer's gateways through tunnels, counted as they move",
            peer_bytes.clone(),
        );
        registry.register(
            "peer_reachable",
            "1 if the peer's gateway answers health probes",
            peer_reachable.clone(),
        );
        registry.register(
            "authorization_duration_seconds",
            "Time to authorize a connection: egress from accept to the remote 200, ingress to the local decision",
            authorization.clone(),
        );
        let stages = Family::<StageLabels, Histogram>::new_with_constructor(
            setup_stage_histogram as fn() -> Histogram,
        );
        registry.register(
            "tunnel_setup_stage_seconds",
            "Time each step of setting up a tunnel took, for tunnels that opened: egress decision, peer_connection, peer_answer; ingress decision, backend_connect, answer",
            stages.clone(),
        );
        let setup_stages = SetupStage::ALL.map(|stage| {
            let labels = StageLabels {
                side: stage.side().as_str().into(),
                stage: stage.as_str().into(),
            };
            stages.get_or_create(&labels).clone()
        });
        let idle_peer_connections = Family::<SideLabels, Gauge>::default();
        registry.register(
            "peer_connections_idle",
            "Peer connections between tunnels: kept for the next tunnel (egress), waiting for the peer's next request (ingress)",
            idle_peer_connections.clone(),
        );
        let runtime_tasks = Gauge::default();
        registry.register(
            "runtime_alive_tasks",
            "Tasks alive in the gateway's runtimes; at rest it returns to the same level, so growth is a leak",
            runtime_tasks.clone(),
        );
        let unserved = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_unserved",
            "Connections closed before they were authenticated or served, by listener and reason",
            unserved.clone(),
        );
        let dry_runs = Family::<DryRunLabels, Counter>::default();
        registry.register(
            "dry_runs",
            "Dry-run tunnel requests (explain, check) peers asked of this gateway, by peer and answer (allowed, a refusal reason, or TooManyRequests when past the rate limit)",
            dry_runs.clone(),
        );
        let credentials = CredentialMetrics::default();
        credentials.register(&mut registry);
        Metrics {
            registry,
            credentials,
            access_log: AccessLog::default(),
            problem_lines: RateLimited::new(Limits::DEFAULT.problem_log),
            dry_runs,
            dry_run_samples: RateLimited::new(Limits::DEFAULT.dry_run_events),
            unserved,
            import_tunnels,
            export_tunnels,
            objects: Default::default(),
            events: EventLog::default(),
            warned: Default::default(),
            runtime_tasks,
            accepted,
            active,
            refused,
            import_bytes,
            export_bytes,
            peer_bytes,
            peer_reachable,
            authorization,
            setup_stages,
            idle_peer_connections,
        }
    }
}

fn side(side: Side) -> SideLabels {
    SideLabels {
        side: side.as_str().into(),
    }
}

/// Counts a connection as active for as long as it lives.
pub struct ActiveGuard<'a> {
    metrics: &'a Metrics,
    side: Side,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.metrics.active.get_or_create(&side(self.side)).dec();
    }
}

/// Counts a peer connection as idle for as long as it waits.
pub struct IdleGuard<'a> {
    metrics: &'a Metrics,
    side: Side,
}

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        let idle = self
            .metrics
            .idle_peer_connections
            .get_or_create(&side(self.side));
        idle.dec();
    }
}

impl Metrics {
    /// These metrics, logging tunnels as `access_log` says.
    pub fn with_access_log(mut self, access_log: AccessLog) -> Metrics {
        self.access_log = access_log;
        self
    }

    /// Reports a dry run a peer asked for `tunnel` (`explain`, `check`), answered with
    /// `answer`: counted by peer and answer; a sample is kept among the events and logged, each
    /// saying how many dry runs of the peer it stands for.
    pub fn dry_run(&self, tunnel: &TunnelRef, answer: &TunnelResponse) {
        let (verdict, reason, policy) = match answer {
            TunnelResponse::WouldAllow { policy } => ("allowed", None, Some(policy.clone())),
            TunnelResponse::Refused { reason, policy, .. } => (
                reason.as_str(),
                Some(reason.as_str().to_string()),
                policy.clone(),
            ),
            TunnelResponse::Established => ("allowed", None, None),
        };
        self.dry_runs
            .get_or_create(&DryRunLabels {
                peer: tunnel.peer.clone(),
                answer: verdict.into(),
            })
            .inc();
        let Some(left_out) = self.dry_run_samples.pass(tunnel.peer.clone()) else {
            return;
        };
        let message = format!(
            "dry run answered {verdict}{}",
            if left_out > 0 {
                format!("; {left_out} more dry runs of this peer since the last one shown")
            } else {
                String::new()
            }
        );
        tracing::info!(
            side = tunnel.side.as_str(),
            export = %tunnel.export,
            peer = %tunnel.peer,
            policy = %LogText(policy.as_deref().unwrap_or("-")),
            "{message}"
        );
        let mut event = tunnel.event(Outcome::DryRun, message);
        event.refused_by = reason.is_some().then_some(RefusedBy::Local);
        event.reason = reason;
        event.policy = policy;
        self.events.record(event);
    }

    /// Whether a problem of `reason` on side `side` with `peer` may be logged now: then how many
    /// such lines were left out since.
    fn problem_line(&self, side: Side, peer: &str, reason: &'static str) -> Option<u64> {
        self.problem_lines.pass((side, peer.to_string(), reason))
    }

    pub fn accepted(&self, s: Side) -> ActiveGuard<'_> {
        self.accepted.get_or_create(&side(s)).inc();
        self.active.get_or_create(&side(s)).inc();
        ActiveGuard {
            metrics: self,
            side: s,
        }
    }

    /// A peer connection waiting between tunnels, until the guard drops.
    pub fn idle(&self, s: Side) -> IdleGuard<'_> {
        self.idle_peer_connections.get_or_create(&side(s)).inc();
        IdleGuard {
            metrics: self,
            side: s,
        }
    }

    /// How many peer connections are kept idle on side `s`.
    pub fn set_idle(&self, s: Side, count: usize) {
        self.idle_peer_connections
            .get_or_create(&side(s))
            .set(count as i64);
    }

    /// Counts a connection closed unserved, and warns about it at most once per [`WARN_EVERY`]
    /// for each listener and reason, saying how many were not logged in between.
    pub fn unserved(
        &self,
        listener: Listener,
        reason: Unserved,
        remote: std::net::SocketAddr,
        detail: &str,
    ) {
        self.unserved
            .get_or_create(&ListenerLabels {
                listener: listener.as_str().into(),
                reason: reason.as_str().into(),
            })
            .inc();
        let Some(suppressed) = self.may_warn(listener, reason.as_str()) else {
            return;
        };
        tracing::warn!(
            listener = listener.as_str(),
            reason = reason.as_str(),
            %remote,
            suppressed,
            "connection closed unserved: {detail}"
        );
    }

    /// Warns that `listener` could not accept (out of descriptors, say: the connection waits in
    /// the kernel's backlog), at most once per [`WARN_EVERY`], saying how many were not logged.
    pub fn accept_failed(&self, listener: Listener, error: &std::io::Error) {
        if let Some(suppressed) = self.may_warn(listener, "accept") {
            tracing::warn!(
                listener = listener.as_str(),
                error = %error,
                suppressed,
                "accept failed; trying again shortly"
            );
        }
    }

    /// Whether a warning of `what` about `listener` may be logged now: then how many were left
    /// out since the last one.
    fn may_warn(&self, listener: Listener, what: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut warned = self.warned.lock();
        let entry = warned.entry((listener, what)).or_insert((None, 0));
        if entry
            .0
            .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
        {
            entry.1 += 1;
            return None;
        }
        let suppressed = entry.1;
        *entry = (Some(now), 0);
        Some(suppressed)
    }

    pub fn authorized(&self, s: Side, took: Duration) {
        self.authorization
            .get_or_create(&side(s))
            .observe(took.as_secs_f64());
    }

    /// Records how long `stage` of opening a tunnel took.
    pub fn stage_took(&self, stage: SetupStage, took: Duration) {
        // `ALL` lists the stages in declaration order.
        self.setup_stages[stage as usize].observe(took.as_secs_f64());
    }

    /// The counters of `name` in `role`, made on first use.
    fn counters(&self, role: Role, name: &str) -> ObjectCounters {
        if let Some(found) = self.objects.read().get(&(role, name.to_string())) {
            return found.clone();
        }
        let bytes = |family: &Family<ObjectBytes, Counter>, direction: &str| {
            family
                .get_or_create(&ObjectBytes {
                    name: name.into(),
                    direction: direction.into(),
                })
                .clone()
        };
        let labels = NameLabels { name: name.into() };
        let counters = match role {
            Role::Import => ObjectCounters {
                active: self.import_tunnels.get_or_create(&labels).clone(),
                sent: bytes(&self.import_bytes, "sent"),
                received: bytes(&self.import_bytes, "received"),
            },
            Role::Export => ObjectCounters {
                active: self.export_tunnels.get_or_create(&labels).clone(),
                sent: bytes(&self.export_bytes, "sent"),
                received: bytes(&self.export_bytes, "received"),
            },
            Role::Peer => ObjectCounters {
                active: Gauge::default(),
                sent: bytes(&self.peer_bytes, "sent"),
                received: bytes(&self.peer_bytes, "received"),
            },
        };
        self.objects
            .write()
            .entry((role, name.to_string()))
            .or_insert(counters)
            .clone()
    }

    /// Starts counting an allowed tunnel of `tunnel`: open until the meter drops, its bytes
    /// counted as the relay moves them.
    pub fn tunnel_opened(&self, tunnel: TunnelRef) -> TunnelMeter {
        let object = match (&tunnel.import, tunnel.side) {
            (Some(import), Side::Egress) => self.counters(Role::Import, import),
            _ => self.counters(Role::Export, &tunnel.export),
        };
        object.active.inc();
        let mut peer = self.counters(Role::Peer, &tunnel.peer);
        if tunnel.side == Side::Ingress {
            // A peer's "sent" is what went to it: on ingress, what comes back from the backend.
            std::mem::swap(&mut peer.sent, &mut peer.received);
        }
        TunnelMeter {
            started: Instant::now(),
            tunnel,
            object,
            peer,
            moved: Default::default(),
        }
    }

    /// Reports a tunnel that ended: counted if it was cut, kept among the recent events and
    /// logged in one line.
    pub fn tunnel_ended(&self, meter: TunnelMeter, ending: TunnelEnding) {
        let (sent, received) = meter.moved();
        let duration = meter.started.elapsed();
        let (outcome, refused_by, reason, message) = match ending {
            TunnelEnding::Closed => (Outcome::Closed, None, None, String::new()),
            TunnelEnding::Broken(message) => (Outcome::Broken, None, None, message),
            TunnelEnding::Revoked(by) => {
                self.count_refusal(&meter.tunnel, by, Refusal::Revoked, None);
                let message = "access revoked: policy or configuration no longer allows it";
                (
                    Outcome::Revoked,
                    Some(by),
                    Some(Refusal::Revoked),
                    message.to_string(),
                )
            }
        };
        let tunnel = &meter.tunnel;
        let logged = match (outcome, self.access_log) {
            (Outcome::Closed, AccessLog::Problems) => None,
            (Outcome::Closed, AccessLog::All) => Some(0),
            _ => self.problem_line(tunnel.side, &tunnel.peer, outcome.as_str()),
        };
        if let Some(suppressed) = logged {
            tracing::info!(
                side = tunnel.side.as_str(),
                import = tunnel.import.as_deref().unwrap_or("-"),
                export = %tunnel.export,
                peer = %tunnel.peer,
                client = %Client(tunnel.client),
                outcome = outcome.as_str(),
                sent,
                received,
                duration_ms = duration.as_millis() as u64,
                suppressed,
                "tunnel {}{}{}",
                outcome.as_str().to_lowercase(),
                if message.is_empty() { "" } else { ": " },
                LogText(&message),
            );
        }
        let mut event = tunnel.event(outcome, message);
        event.refused_by = refused_by;
        event.reason = reason.map(|r| r.as_str().to_string());
        (event.sent, event.received) = (sent, received);
        event.duration_ms = duration.as_millis() as u64;
        self.events.record(event);
    }

    /// Reports a connection refused before its tunnel opened: counted with its labels, kept
    /// among the recent events and logged in one line.
    pub fn refused(&self, tunnel: &TunnelRef, refusal: Refused) {
        let Refused {
            by,
            refusal: why,
            policy,
            message,
        } = refusal;
        self.count_refusal(tunnel, by, why, policy.as_deref());
        if let Some(suppressed) = self.problem_line(tunnel.side, &tunnel.peer, why.as_str()) {
            tracing::info!(
                side = tunnel.side.as_str(),
                import = tunnel.import.as_deref().unwrap_or("-"),
                export = %tunnel.export,
                peer = %tunnel.peer,
                client = %Client(tunnel.client),
                refused_by = by.as_str(),
                reason = why.as_str(),
                policy = %LogText(policy.as_deref().unwrap_or("-")),
                suppressed,
                "connection refused: {}",
                LogText(&message),
            );
        }
        let mut event = tunnel.event(Outcome::Refused, message);
        event.refused_by = Some(by);
        event.reason = Some(why.as_str().to_string());
        event.policy = policy;
        self.events.record(event);
    }

    /// Counts a refusal; a policy is labelled only when this gateway decided (a peer's policy
    /// names are its own, and unbounded here).
    fn count_refusal(&self, tunnel: &TunnelRef, by: RefusedBy, why: Refusal, policy: Option<&str>) {
        let policy = match by {
            RefusedBy::Local => policy.unwrap_or_default(),
            RefusedBy::Peer => "",
        };
        self.refused
            .get_or_create(&RefusedLabels {
                side: tunnel.side.as_str().into(),
                refused_by: by.as_str().into(),
                reason: why.as_str().into(),
                import: tunnel.import.clone().unwrap_or_default(),
                export: tunnel.export.clone(),
                peer: tunnel.peer.clone(),
                policy: policy.into(),
            })
            .inc();
    }

    /// The live counts of every import, export and peer that carried a tunnel (peers'
    /// reachability is [`crate::health::PeerHealth`]'s to add).
    pub fn traffic(&self) -> Traffic {
        let mut traffic = Traffic::default();
        for ((role, name), c) in self.objects.read().iter() {
            let counts = ObjectTraffic {
                active_tunnels: c.active.get().max(0) as u64,
                sent: c.sent.get(),
                received: c.received.get(),
            };
            match role {
                Role::Import => {
                    traffic.imports.insert(name.clone(), counts);
                }
                Role::Export => {
                    traffic.exports.insert(name.clone(), counts);
                }
                Role::Peer => {
                    let peer = traffic.peers.entry(name.clone()).or_default();
                    peer.sent = counts.sent;
                    peer.received = counts.received;
                }
            }
        }
        traffic
    }

    pub fn peer_reachable(&self, peer: &str, reachable: Option<bool>) {
        let labels = PeerLabels { peer: peer.into() };
        match reachable {
            Some(r) => {
                self.peer_reachable.get_or_create(&labels).set(i64::from(r));
            }
            None => {
                self.peer_reachable.remove(&labels);
            }
        }
    }

    /// Adds a process's own metric (the controller's, say) to those this exposition serves;
    /// `name` gets the `clusterlink_` prefix.
    pub fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
    }

    /// Every metric as a scraper asked for it with its `Accept` header: OpenMetrics to one that
    /// names it (Prometheus does), the Prometheus text format 0.0.4 to anyone else, as that is
    /// what `promtool check metrics`, older scrapers and curl users read.
    pub fn exposition(&self, accept: Option<&str>) -> Exposition {
        let openmetrics = self.encode();
        if accept.is_some_and(accepts_openmetrics) {
            Exposition {
                content_type: OPENMETRICS_CONTENT_TYPE,
                body: openmetrics,
            }
        } else {
            Exposition {
                content_type: PROMETHEUS_TEXT_CONTENT_TYPE,
                body: prometheus_text(&openmetrics),
            }
        }
    }

    /// The OpenMetrics text of every metric (the form `docs/METRICS.md` quotes).
    pub fn encode(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks() + crate::workers::alive_tasks();
            self.runtime_tasks.set(tasks as i64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What `/metrics` answers: the body and the content type naming its format.
#[derive(Debug)]
pub struct Exposition {
    pub content_type: &'static str,
    pub body: String,
}

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics: named with a quality above zero and at least
/// that of the plain text it also takes (`text/plain`, `text/*`, `*/*`). A quality that does not
/// read as a number counts as zero.
fn accepts_openmetrics(accept: &str) -> bool {
    let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let quality = parts
            .find_map(|p| {
                let (key, value) = p.split_once('=')?;
                key.trim().eq_ignore_ascii_case("q").then(|| {
                    value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| q.is_finite())
                        .unwrap_or(0.0)
                })
            })
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => text = text.max(quality),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// The Prometheus text format 0.0.4 of what prometheus-client writes as OpenMetrics. The two
/// differ, for the metric types registered here (counters, gauges, histograms; no exemplars),
/// only in that a counter's family is named after its `_total` series, `_created` series and
/// `# UNIT` lines do not exist, and nothing marks the end.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP line comes before its TYPE line, which says whether it is a counter.
    let mut help: Option<&str> = None;
    let mut counter: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (series, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            counter = (kind == "counter").then_some(name);
            if let Some(help) = help.take() {
                let text = help.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {series} {text}\n"));
            }
            out.push_str(&format!("# TYPE {series} {kind}\n"));
            continue;
        }
        let created = counter.is_some_and(|name| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix("_created"))
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        });
        if !created {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_names_counters_after_their_total_and_drops_what_it_lacks() {
        let openmetrics = "# HELP x_requests Requests.\n# TYPE x_requests counter\n\
            x_requests_total{a=\"b\"} 3\nx_requests_created{a=\"b\"} 1.5\n\
            # HELP x_up Up.\n# TYPE x_up gauge\n# UNIT x_up seconds\nx_up 1\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\n\
             x_requests_total{a=\"b\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }

    #[test]
    fn openmetrics_goes_only_to_scrapers_that_ask_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5,*/*;q=0.1";
        assert!(accepts_openmetrics(prometheus));
        assert!(accepts_openmetrics("application/openmetrics-text"));
        for other in [
            "*/*",
            "text/plain; version=0.0.4",
            "application/openmetrics-text; q=0",
            "application/openmetrics-text; Q=0",
            "application/openmetrics-text;q=0.1, text/plain;q=0.9",
            "application/openmetrics-text;q=NaN",
            "application/openmetrics-text;q=x",
        ] {
            assert!(!accepts_openmetrics(other), "{other}");
        }
        let metrics = Metrics::default();
        metrics.credentials.renewal_failed("down".into());
        let scraped = metrics.exposition(Some(prometheus));
        assert_eq!(scraped.content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(scraped.body.ends_with("# EOF\n"));
        let curled = metrics.exposition(Some("*/*"));
        assert_eq!(curled.content_type, PROMETHEUS_TEXT_CONTENT_TYPE);
        assert!(
            curled
                .body
                .contains("# TYPE clusterlink_certificate_renewal_failures_total counter\n"),
            "{}",
            curled.body
        );
        assert!(!curled.body.contains("# EOF"));
    }

    fn tunnel(side: Side) -> TunnelRef {
        TunnelRef {
            side,
            import: (side == Side::Egress).then(|| "default/svc".to_string()),
            export: "default/svc".into(),
            peer: "p1".into(),
            client: None,
        }
    }

    #[test]
    fn each_setup_stage_is_timed_under_its_side_and_name() {
        let m = Metrics::default();
        for (i, stage) in SetupStage::ALL.into_iter().enumerate() {
            m.stage_took(stage, Duration::from_micros(10 * (i as u64 + 1)));
        }
        let text = m.encode();
        for (side, stage, micros) in [
            ("egress", "decision", 10),
            ("egress", "peer_connection", 20),
            ("egress", "peer_answer", 30),
            ("ingress", "decision", 40),
            ("ingress", "backend_connect", 50),
            ("ingress", "answer", 60),
        ] {
            let labels = format!("{{side=\"{side}\",stage=\"{stage}\"}}");
            let sum = format!("clusterlink_tunnel_setup_stage_seconds_sum{labels} ");
            let line = text.lines().find(|l| l.starts_with(&sum));
            let value: f64 = line.expect(&sum)[sum.len()..].parse().unwrap();
            assert!((value - micros as f64 / 1e6).abs() < 1e-9, "{sum}{value}");
        }
    }

    #[test]
    fn text_exposition() {
        let m = Metrics::default();
        {
            let _guard = m.accepted(Side::Egress);
            m.refused(
                &tunnel(Side::Egress),
                Refused {
                    by: RefusedBy::Peer,
                    refusal: Refusal::Tunnel(RefusalReason::PolicyDenied),
                    policy: Some("the peer's own".into()),
                    message: "denied".into(),
                },
            );
            m.authorized(Side::Egress, Duration::from_micros(300));
            let meter = m.tunnel_opened(tunnel(Side::Egress));
            meter.sent(10);
            meter.received(20);
            // Counted while the tunnel is open, not when it ends.
            let open = m.encode();
            for line in [
                "clusterlink_import_bytes_total{name=\"default/svc\",direction=\"sent\"} 10",
                "clusterlink_import_tunnels_active{name=\"default/svc\"} 1",
            ] {
                assert!(open.contains(line), "missing {line} in\n{open}");
            }
            let traffic = m.traffic();
            assert_eq!(traffic.imports["default/svc"].active_tunnels, 1);
            assert_eq!(traffic.peers["p1"].received, 20);
            m.tunnel_ended(meter, TunnelEnding::Closed);
            m.peer_reachable("p1", Some(true));
            m.set_idle(Side::Egress, 3);
            let _waiting = m.idle(Side::Ingress);
            let text = m.encode();
            assert!(
                text.contains("clusterlink_peer_connections_idle{side=\"ingress\"} 1"),
                "{text}"
            );
            assert!(
                text.contains("clusterlink_connections_active{side=\"egress\"} 1"),
                "{text}"
            );
        }
        // The exporting side counts the peer's bytes the other way round.
        let ingress = m.tunnel_opened(tunnel(Side::Ingress));
        ingress.sent(5);
        m.tunnel_ended(ingress, TunnelEnding::Revoked(RefusedBy::Local));
        let text = m.encode();
        for line in [
            "clusterlink_connections_accepted_total{side=\"egress\"} 1",
            "clusterlink_connections_active{side=\"egress\"} 0",
            // A peer's policy names are not labels here: they are the peer's to choose.
            "clusterlink_connections_refused_total{side=\"egress\",refused_by=\"peer\",reason=\"PolicyDenied\",import=\"default/svc\",export=\"default/svc\",peer=\"p1\",policy=\"\"} 1",
            "clusterlink_connections_refused_total{side=\"ingress\",refused_by=\"local\",reason=\"Revoked\",import=\"\",export=\"default/svc\",peer=\"p1\",policy=\"\"} 1",
            "clusterlink_import_tunnels_active{name=\"default/svc\"} 0",
            "clusterlink_peer_bytes_total{name=\"p1\",direction=\"received\"} 25",
            "clusterlink_export_bytes_total{name=\"default/svc\",direction=\"sent\"} 5",
            "clusterlink_peer_reachable{peer=\"p1\"} 1",
            "clusterlink_authorization_duration_seconds_count{side=\"egress\"} 1",
            "clusterlink_peer_connections_idle{side=\"egress\"} 3",
            "clusterlink_peer_connections_idle{side=\"ingress\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let events = m.events.recent(&Default::default(), 10);
        let outcomes: Vec<Outcome> = events.iter().map(|e| e.outcome).collect();
        assert_eq!(outcomes.len(), 3, "{events:?}");
        assert!(outcomes.contains(&Outcome::Revoked) && outcomes.contains(&Outcome::Refused));
    }
}
