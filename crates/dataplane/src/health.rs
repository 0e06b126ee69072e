//! Peer health: each gateway probes every gateway address of every peer over the peer port (the
//! same mutual TLS as tunnels), and load balancing tries unreachable peers last.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

use clusterlink_api::activity::Traffic;
use clusterlink_api::{
    Condition, ConditionReason, ConditionStatus, ConditionType, Kind, ObjectKey, SYSTEM_NAMESPACE,
};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use clusterlink_pki::reload::GatewayTls;

use crate::conditions::RuntimeConditions;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::tunnel::{HEALTH_REQUEST, labels_of_health_response, read_head};

/// The probe periods, timeout and counts (with their reasons) are in [`Limits`].
const L: Limits = Limits::DEFAULT;

const PEER_REACHABLE: ConditionType = ConditionType::PeerReachable;

/// What the probes found about each peer: whether it is unreachable (read per connection by load
/// balancing) and the labels it reports about itself (read per connection by egress policy).
#[derive(Clone, Default)]
pub struct PeerHealth {
    reachable: Arc<RwLock<HashMap<String, bool>>>,
    labels: Arc<RwLock<HashMap<String, BTreeMap<String, String>>>>,
    probes: Arc<RwLock<HashMap<String, ProbeRecord>>>,
}

/// What the probes of one peer last found, for operators (`describe`, `check`, the console).
#[derive(Debug, Clone, Default)]
struct ProbeRecord {
    /// Round trip of the last probe that answered.
    latency: Option<Duration>,
    /// The last failure, however long ago.
    last_error: Option<String>,
}

impl PeerHealth {
    /// True only for a peer whose probes have failed; an unprobed peer is given a chance.
    pub fn is_unreachable(&self, peer: &str) -> bool {
        self.reachable.read().get(peer) == Some(&false)
    }

    /// The labels `peer` reported in its last answer to a probe (none before the first).
    pub fn reported_labels(&self, peer: &str) -> BTreeMap<String, String> {
        self.labels.read().get(peer).cloned().unwrap_or_default()
    }

    /// Adds each probed peer's reachability, latency and last error to `traffic`.
    pub fn add_to(&self, traffic: &mut Traffic) {
        let reachable = self.reachable.read();
        for (peer, record) in self.probes.read().iter() {
            let entry = traffic.peers.entry(peer.clone()).or_default();
            entry.reachable = reachable.get(peer).copied();
            entry.latency_ms = record.latency.map(|l| l.as_secs_f64() * 1e3);
            entry.last_error.clone_from(&record.last_error);
        }
    }

    fn record_probe(&self, peer: &str, result: Option<Result<Duration, String>>) {
        let mut probes = self.probes.write();
        match result {
            None => {
                probes.remove(peer);
            }
            Some(Ok(took)) => probes.entry(peer.to_string()).or_default().latency = Some(took),
            Some(Err(e)) => probes.entry(peer.to_string()).or_default().last_error = Some(e),
        }
    }

    fn set(&self, peer: &str, reachable: Option<bool>) {
        let mut map = self.reachable.write();
        match reachable {
            Some(r) => map.insert(peer.to_string(), r),
            None => map.remove(peer),
        };
    }

    /// Records `labels`; true when they differ from what `peer` reported before.
    fn set_labels(&self, peer: &str, labels: Option<BTreeMap<String, String>>) -> bool {
        let mut map = self.labels.write();
        match labels {
            Some(l) if map.get(peer) == Some(&l) => false,
            Some(l) => {
                map.insert(peer.to_string(), l);
                true
            }
            None => map.remove(peer).is_some(),
        }
    }
}

/// Turns probe results into reachability with hysteresis, so one lost probe does not flap a peer.
#[derive(Debug, Default)]
struct Tracker {
    reachable: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// Records one probe; returns the new state when it changed.
    fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let next = match self.reachable {
            // The first probe decides: a peer that is down at start must not wait for a streak.
            None => ok,
            Some(true) => self.failures < L.failures_to_unreachable,
            Some(false) => self.successes >= L.successes_to_reachable,
        };
        (self.reachable != Some(next)).then(|| {
            self.reachable = Some(next);
            next
        })
    }

    fn interval(&self) -> Duration {
        if self.reachable == Some(false) {
            L.probe_unreachable_every
        } else {
            L.probe_reachable_every
        }
    }
}

struct Prober {
    gateways: Vec<(String, u16)>,
    task: JoinHandle<()>,
}

/// Keeps one prober per peer in step with the snapshots.
pub(crate) async fn run_probers(
    tls: watch::Receiver<Arc<GatewayTls>>,
    health: PeerHealth,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    conditions: Arc<dyn RuntimeConditions>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut probers: HashMap<String, Prober> = HashMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let stale: Vec<String> = probers
            .iter()
            .filter(|(name, p)| {
                snapshot
                    .peers
                    .get(*name)
                    .is_none_or(|peer| peer.gateways != p.gateways)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let Some(prober) = probers.remove(&name) else {
                continue;
            };
            prober.task.abort();
            // Awaited, so a probe finishing right now cannot write after the state is cleared.
            let _ = prober.task.await;
            health.set(&name, None);
            health.set_labels(&name, None);
            health.record_probe(&name, None);
            metrics.peer_reachable(&name, None);
            conditions.set(&peer_key(&name), PEER_REACHABLE, None);
            conditions.set_reported_labels(&peer_key(&name), None);
        }
        for (name, peer) in &snapshot.peers {
            if !probers.contains_key(name) {
                let task = tokio::spawn(probe_forever(
                    name.clone(),
                    peer.gateways.clone(),
                    tls.clone(),
                    health.clone(),
                    conditions.clone(),
                    metrics.clone(),
                ));
                probers.insert(
                    name.clone(),
                    Prober {
                        gateways: peer.gateways.clone(),
                        task,
                    },
                );
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    for (_, p) in probers {
        p.task.abort();
    }
}

fn peer_key(name: &str) -> ObjectKey {
    ObjectKey::new(Kind::Peer, SYSTEM_NAMESPACE, name)
}

async fn probe_forever(
    name: String,
    gateways: Vec<(String, u16)>,
    tls: watch::Receiver<Arc<GatewayTls>>,
    health: PeerHealth,
    conditions: Arc<dyn RuntimeConditions>,
    metrics: Arc<Metrics>,
) {
    let mut tracker = Tracker::default();
    loop {
        let connector = TlsConnector::from(tls.borrow().client.clone());
        let started = std::time::Instant::now();
        let result = probe_any(&connector, &name, &gateways).await;
        let took = started.elapsed();
        health.record_probe(
            &name,
            Some(result.as_ref().map(|_| took).map_err(Clone::clone)),
        );
        if let Ok((_, labels)) = &result
            && health.set_labels(&name, Some(labels.clone()))
        {
            tracing::info!(peer = %name, ?labels, "peer reports its labels");
            conditions.set_reported_labels(&peer_key(&name), Some(labels.clone()));
        }
        if let Some(reachable) = tracker.observe(result.is_ok()) {
            health.set(&name, Some(reachable));
            metrics.peer_reachable(&name, Some(reachable));
            let condition = match &result {
                Ok((addr, _)) => Condition::new(
                    PEER_REACHABLE,
                    ConditionStatus::True,
                    ConditionReason::Probed,
                    format!("gateway {addr} answered"),
                ),
                Err(e) => Condition::new(
                    PEER_REACHABLE,
                    ConditionStatus::False,
                    ConditionReason::Unreachable,
                    e.clone(),
                ),
            };
            if reachable {
                tracing::info!(peer = %name, "peer reachable");
            } else {
                tracing::warn!(peer = %name, error = %condition.message, "peer unreachable");
            }
            conditions.set(&peer_key(&name), PEER_REACHABLE, Some(condition));
        }
        tokio::time::sleep(tracker.interval()).await;
    }
}

/// Probes every gateway of the peer at once; reachable if any answers. The first answer's
/// address and the labels the peer reported in it.
async fn probe_any(
    connector: &TlsConnector,
    peer: &str,
    gateways: &[(String, u16)],
) -> Result<(String, BTreeMap<String, String>), String> {
    let name = ServerName::try_from(peer.to_string()).map_err(|e| e.to_string())?;
    let mut probes = JoinSet::new();
    for (host, port) in gateways.iter().cloned() {
        let (connector, name) = (connector.clone(), name.clone());
        probes.spawn(async move {
            let addr = format!("{host}:{port}");
            match timeout(L.probe_timeout, probe(&connector, name, &host, port)).await {
                Ok(Ok(labels)) => Ok((addr, labels)),
                Ok(Err(e)) => Err(format!("{addr}: {e}")),
                Err(_) => Err(format!("{addr}: no answer within {:?}", L.probe_timeout)),
            }
        });
    }
    let mut errors = Vec::new();
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(if errors.is_empty() {
        "the peer lists no gateway".into()
    } else {
        errors.join("; ")
    })
}

async fn probe(
    connector: &TlsConnector,
    name: ServerName<'static>,
    host: &str,
    port: u16,
) -> Result<BTreeMap<String, String>, String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    tls.write_all(HEALTH_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    let (head, _) = read_head(&mut tls).await.map_err(|e| e.to_string())?;
    labels_of_health_response(&head).map_err(|e| format!("unexpected health answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_probe_decides_then_hysteresis() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.observe(false), None, "one lost probe does not flap");
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(false));
        assert_eq!(t.interval(), L.probe_unreachable_every);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(true));
        assert_eq!(t.interval(), L.probe_reachable_every);
        let mut down = Tracker::default();
        assert_eq!(down.observe(false), Some(false));
    }

    #[test]
    fn detection_and_recovery_fit_in_three_seconds() {
        let worst_detection = L.probe_reachable_every
            + (L.probe_timeout + L.probe_reachable_every) * (L.failures_to_unreachable - 1)
            + L.probe_timeout;
        assert!(
            worst_detection < Duration::from_secs(3),
            "{worst_detection:?}"
        );
        // A probe in flight when the peer returns may still time out; successes are quick.
        let worst_recovery = L.probe_timeout + L.probe_unreachable_every * L.successes_to_reachable;
        assert!(
            worst_recovery < Duration::from_secs(3),
            "{worst_recovery:?}"
        );
    }
}
