//! Prometheus metrics, served as text at `/metrics` on the management listener.
//!
//! Byte counts are added when a tunnel ends (from the relay's totals), so the data path does no
//! per-read bookkeeping.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::tunnel::RefusalReason;

/// Which end of a tunnel a gateway is: the importing side (egress) or the exporting side (ingress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Egress,
    Ingress,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Egress => "egress",
            Side::Ingress => "ingress",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    side: String,
    reason: String,
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
}

impl Listener {
    fn as_str(self) -> &'static str {
        match self {
            Listener::Peer => "peer",
            Listener::Management => "management",
            Listener::Replica => "replica",
            Listener::Ops => "ops",
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
    idle_peer_connections: Family<SideLabels, Gauge>,
    runtime_tasks: Gauge,
    unserved: Family<ListenerLabels, Counter>,
    /// One warning per listener and reason per [`WARN_EVERY`], however many connections.
    warned: parking_lot::Mutex<std::collections::HashMap<(Listener, Unserved), LastWarning>>,
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
            "Connections refused, by side and reason",
            refused.clone(),
        );
        registry.register(
            "import_bytes",
            "Bytes carried per import (sent: to the remote side)",
            import_bytes.clone(),
        );
        registry.register(
            "export_bytes",
            "Bytes carried per export (sent: to the backend)",
            export_bytes.clone(),
        );
        registry.register(
            "peer_bytes",
            "Bytes exchanged with each peer",
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
        Metrics {
            registry,
            unserved,
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

    pub fn refused(&self, s: Side, refusal: Refusal) {
        self.refused
            .get_or_create(&RefusedLabels {
                side: s.as_str().into(),
                reason: refusal.as_str().into(),
            })
            .inc();
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
        let now = Instant::now();
        let suppressed = {
            let mut warned = self.warned.lock();
            let entry = warned.entry((listener, reason)).or_insert((None, 0));
            if entry
                .0
                .is_some_and(|last| now.duration_since(last) < WARN_EVERY)
            {
                entry.1 += 1;
                return;
            }
            let suppressed = entry.1;
            *entry = (Some(now), 0);
            suppressed
        };
        tracing::warn!(
            listener = listener.as_str(),
            reason = reason.as_str(),
            %remote,
            suppressed,
            "connection closed unserved: {detail}"
        );
    }

    pub fn authorized(&self, s: Side, took: Duration) {
        self.authorization
            .get_or_create(&side(s))
            .observe(took.as_secs_f64());
    }

    fn bytes(family: &Family<ObjectBytes, Counter>, name: &str, sent: u64, received: u64) {
        for (direction, n) in [("sent", sent), ("received", received)] {
            family
                .get_or_create(&ObjectBytes {
                    name: name.into(),
                    direction: direction.into(),
                })
                .inc_by(n);
        }
    }

    /// A finished egress tunnel: `sent` went from the client towards the peer.
    pub fn import_tunnel_done(&self, import: &str, peer: &str, sent: u64, received: u64) {
        Self::bytes(&self.import_bytes, import, sent, received);
        Self::bytes(&self.peer_bytes, peer, sent, received);
    }

    /// A finished ingress tunnel: `sent` went from the peer towards the backend.
    pub fn export_tunnel_done(&self, export: &str, peer: &str, sent: u64, received: u64) {
        Self::bytes(&self.export_bytes, export, sent, received);
        // Seen from this gateway, what went to the backend was received from the peer.
        Self::bytes(&self.peer_bytes, peer, received, sent);
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

    /// The Prometheus text exposition of every metric.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_exposition() {
        let m = Metrics::default();
        {
            let _guard = m.accepted(Side::Egress);
            m.refused(Side::Egress, Refusal::Tunnel(RefusalReason::PolicyDenied));
            m.authorized(Side::Egress, Duration::from_micros(300));
            m.import_tunnel_done("default/svc", "p1", 10, 20);
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
        let text = m.encode();
        for line in [
            "clusterlink_connections_accepted_total{side=\"egress\"} 1",
            "clusterlink_connections_active{side=\"egress\"} 0",
            "clusterlink_connections_refused_total{side=\"egress\",reason=\"PolicyDenied\"} 1",
            "clusterlink_import_bytes_total{name=\"default/svc\",direction=\"sent\"} 10",
            "clusterlink_peer_bytes_total{name=\"p1\",direction=\"received\"} 20",
            "clusterlink_peer_reachable{peer=\"p1\"} 1",
            "clusterlink_authorization_duration_seconds_count{side=\"egress\"} 1",
            "clusterlink_peer_connections_idle{side=\"egress\"} 3",
            "clusterlink_peer_connections_idle{side=\"ingress\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
