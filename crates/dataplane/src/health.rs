//! Peer health: each gateway probes every gateway address of every peer over the peer port (the
//! same mutual TLS as tunnels), and load balancing tries unreachable peers last.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;
use tokio::time::Instant;

use clusterlink_api::activity::Traffic;
use clusterlink_api::{
    Condition, ConditionReason, ConditionStatus, ConditionType, Kind, ObjectKey, PeerProtocol,
    SYSTEM_NAMESPACE,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;

use clusterlink_pki::reload::GatewayTls;

use crate::catalog::Received;
use crate::conditions::RuntimeConditions;
use crate::connections::nothing_to_read;
use crate::go_tunnel;
use crate::limits::Limits;
use crate::link::{Link, Links};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::tunnel::{
    ProtocolError, body_length, body_length_within, catalog_digest_of, catalog_request,
    health_request, labels_of_health_response, read_body, read_head, revocations_of,
    revocations_request,
};
use clusterlink_api::catalog::{Catalog, MAX_CATALOG_BYTES};
use clusterlink_pki::revocation::Summary;

const PEER_REACHABLE: ConditionType = ConditionType::PeerReachable;

/// What the probes found about each peer: whether it is unreachable (read per connection by load
/// balancing) and the labels it reports about itself (read per connection by egress policy).
#[derive(Clone, Default)]
pub struct PeerHealth {
    reachable: Arc<RwLock<HashMap<String, bool>>>,
    labels: Arc<RwLock<HashMap<String, BTreeMap<String, String>>>>,
    probes: Arc<RwLock<HashMap<String, ProbeRecord>>>,
    /// What each peer offers, fetched when its health answer names a catalog not held.
    catalogs: Received,
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

    /// Probe results that keep what peers offer in `catalogs`.
    pub fn with_catalogs(catalogs: Received) -> PeerHealth {
        PeerHealth {
            catalogs,
            ..PeerHealth::default()
        }
    }

    /// The catalogs peers offered, as they change.
    pub fn catalogs(&self) -> &Received {
        &self.catalogs
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
/// The probe periods and counts, with their reasons, are in [`Limits`].
#[derive(Debug)]
struct Tracker {
    limits: Limits,
    reachable: Option<bool>,
    successes: u32,
    failures: u32,
}

impl Tracker {
    fn new(limits: Limits) -> Tracker {
        Tracker {
            limits,
            reachable: None,
            successes: 0,
            failures: 0,
        }
    }

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
            Some(true) => self.failures < self.limits.failures_to_unreachable,
            Some(false) => self.successes >= self.limits.successes_to_reachable,
        };
        (self.reachable != Some(next)).then(|| {
            self.reachable = Some(next);
            next
        })
    }

    fn interval(&self) -> Duration {
        if self.reachable == Some(false) {
            self.limits.probe_unreachable_every
        } else {
            self.limits.probe_reachable_every
        }
    }
}

struct Prober {
    gateways: Vec<(String, u16)>,
    protocol: PeerProtocol,
    task: JoinHandle<()>,
}

/// Keeps one prober per peer in step with the snapshots.
/// `links` is `None` where no link is ever held (the Kubernetes control plane): a peer without an
/// address is then not probed at all, rather than reported unreachable.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_probers(
    tls: watch::Receiver<Arc<GatewayTls>>,
    links: Option<Links>,
    health: PeerHealth,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    conditions: Arc<dyn RuntimeConditions>,
    metrics: Arc<Metrics>,
    limits: Limits,
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
                    .is_none_or(|peer| peer.gateways != p.gateways || peer.protocol != p.protocol)
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
            health.catalogs.remove(&name);
            metrics.peer_reachable(&name, None);
            conditions.set(&peer_key(&name), PEER_REACHABLE, None);
            conditions.set_reported_labels(&peer_key(&name), None);
        }
        for (name, peer) in &snapshot.peers {
            if !probers.contains_key(name) {
                let task = tokio::spawn(probe_forever(
                    name.clone(),
                    peer.gateways.clone(),
                    peer.protocol,
                    snapshots.clone(),
                    tls.clone(),
                    links.clone(),
                    health.clone(),
                    conditions.clone(),
                    metrics.clone(),
                    limits,
                ));
                probers.insert(
                    name.clone(),
                    Prober {
                        gateways: peer.gateways.clone(),
                        protocol: peer.protocol,
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

#[allow(clippy::too_many_arguments)]
async fn probe_forever(
    name: String,
    gateways: Vec<(String, u16)>,
    protocol: PeerProtocol,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tls: watch::Receiver<Arc<GatewayTls>>,
    links: Option<Links>,
    health: PeerHealth,
    conditions: Arc<dyn RuntimeConditions>,
    metrics: Arc<Metrics>,
    limits: Limits,
) {
    let links = match links {
        Some(links) => links,
        None if gateways.is_empty() => {
            let condition = Condition::new(
                PEER_REACHABLE,
                ConditionStatus::Unknown,
                ConditionReason::NotProbed,
                "the peer has no address: it is reached over the links it dials to this site's data-plane replicas, which probe it over them",
            );
            conditions.set(&peer_key(&name), PEER_REACHABLE, Some(condition));
            return std::future::pending().await;
        }
        None => Links::default(),
    };
    let mut tracker = Tracker::new(limits);
    let mut kept = KeptProbes::default();
    let mut catalog_fetched: Option<Instant> = None;
    let mut fetching: Option<Fetching> = None;
    let mut tls = tls;
    loop {
        let current = tls.borrow_and_update().clone();
        let labels = snapshots.borrow().local_labels.clone();
        // Over a link when one is up (the peer may have no other way); directly otherwise, or
        // when the link did not answer and the peer has addresses.
        let over_link = match links.to(&name) {
            Some(link) => Some(probe_link(&current, &link, &labels, &limits).await),
            None => None,
        };
        let result = match over_link {
            Some(Ok(answer)) => Ok(answer),
            Some(Err(e)) if gateways.is_empty() => Err(e),
            Some(Err(e)) => probe_any(&current, &name, &gateways, &labels, &mut kept, &limits)
                .await
                .map_err(|direct| format!("{e}; {direct}")),
            None if protocol == PeerProtocol::Go => {
                probe_go(&current, &name, &gateways, &mut kept, &limits).await
            }
            None => probe_any(&current, &name, &gateways, &labels, &mut kept, &limits).await,
        };
        health.record_probe(
            &name,
            Some(result.as_ref().map(|a| a.took).map_err(Clone::clone)),
        );
        if let Ok(answer) = &result
            && health.set_labels(&name, Some(answer.labels.clone()))
        {
            let labels = &answer.labels;
            tracing::info!(peer = %name, ?labels, "peer reports its labels");
            conditions.set_reported_labels(&peer_key(&name), Some(labels.clone()));
        }
        if let Some(reachable) = tracker.observe(result.is_ok()) {
            health.set(&name, Some(reachable));
            metrics.peer_reachable(&name, Some(reachable));
            let condition = match &result {
                Ok(answer) => Condition::new(
                    PEER_REACHABLE,
                    ConditionStatus::True,
                    ConditionReason::Probed,
                    format!("{} answered", answer.gateway),
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
        if let Ok(answer) = &result
            && let Some(digest) = &answer.catalog
            && health.catalogs.is_stale(&name, digest)
            && catalog_fetched.is_none_or(|at| at.elapsed() >= limits.catalog_refetch_after)
            && fetching.as_ref().is_none_or(|f| f.0.is_finished())
        {
            catalog_fetched = Some(Instant::now());
            // Beside the probes, which go on meanwhile: a cut during a slow fetch is still found
            // in time.
            let (current, name, links, address, labels, digest, catalogs) = (
                current.clone(),
                name.clone(),
                links.clone(),
                answer.address.clone(),
                labels.clone(),
                digest.clone(),
                health.catalogs.clone(),
            );
            fetching = Some(Fetching(tokio::spawn(async move {
                let within = limits.catalog_fetch;
                let fetched = timeout(
                    within,
                    fetch_catalog(&current, &name, &links, address.as_ref(), &labels, within),
                )
                .await
                .unwrap_or_else(|_| Err(format!("no catalog within {within:?}")));
                match fetched {
                    Ok(catalog) => {
                        let offers = catalog.offers.len();
                        tracing::info!(peer = %name, offers, "peer offers its exports");
                        catalogs.set(&name, digest, catalog);
                    }
                    // Asked again after a while, as long as probes name a digest not held.
                    Err(e) => {
                        tracing::warn!(peer = %name, error = %e, "peer's catalog not fetched")
                    }
                }
            })));
        }
        // Newer revocation lists are passed on at once, not at the next probe.
        let held = current.revocation_summary.clone();
        let sleep = tokio::time::sleep(tracker.interval());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                changed = tls.changed() => {
                    if changed.is_err() || tls.borrow().revocation_summary != held {
                        break;
                    }
                }
            }
        }
    }
}

/// A catalog fetch running beside its peer's probes; stopped with the prober.
struct Fetching(JoinHandle<()>);

impl Drop for Fetching {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A mutual-TLS connection that carries health probes.
type ProbeConnection = TlsStream<TcpStream>;

/// A probe connection kept between probes of one gateway address.
struct KeptProbe {
    connection: ProbeConnection,
    opened: Instant,
    /// The TLS configuration it was opened with: after a rotation, probes use the new one.
    client: Arc<ClientConfig>,
}

/// The probe connections of one peer's gateways, by address. A probe on a kept connection is one
/// small request and answer: a gateway that many peers probe spends its idle time on
/// handshakes otherwise.
#[derive(Default)]
struct KeptProbes(HashMap<(String, u16), KeptProbe>);

impl KeptProbes {
    /// The connection kept for `gateway`, if it is still good for a probe: opened with the
    /// current TLS configuration, younger than [`Limits::probe_connection_life`], and not closed
    /// by the other side since the last probe.
    fn take(
        &mut self,
        gateway: &(String, u16),
        client: &Arc<ClientConfig>,
        life: Duration,
    ) -> Option<KeptProbe> {
        self.0.remove(gateway).filter(|k| {
            Arc::ptr_eq(&k.client, client)
                && k.opened.elapsed() < life
                && nothing_to_read(k.connection.get_ref().0)
        })
    }
}

/// A gateway of the peer that answered a probe.
struct ProbeAnswer {
    gateway: String,
    /// The address that answered; none when a link did.
    address: Option<(String, u16)>,
    labels: BTreeMap<String, String>,
    /// The digest of the catalog the peer offers this gateway.
    catalog: Option<String>,
    took: Duration,
}

/// Probes every gateway of the peer at once; reachable if any answers. The first answer, with
/// the labels the peer reported in it. Every probe is waited for (each within the probe timeout),
/// so each gateway's connection can be kept for the next probe.
async fn probe_any(
    tls: &Arc<GatewayTls>,
    peer: &str,
    gateways: &[(String, u16)],
    labels: &BTreeMap<String, String>,
    kept: &mut KeptProbes,
    limits: &Limits,
) -> Result<ProbeAnswer, String> {
    let name = ServerName::try_from(peer.to_string()).map_err(|e| e.to_string())?;
    let mut probes = JoinSet::new();
    let within = limits.probe_timeout;
    for gateway in gateways.iter().cloned() {
        let warm = kept.take(&gateway, &tls.client, limits.probe_connection_life);
        let (tls, name, labels) = (tls.clone(), name.clone(), labels.clone());
        probes.spawn(async move {
            let (host, port) = &gateway;
            let addr = format!("{host}:{port}");
            let started = Instant::now();
            let probed = timeout(within, probe(&tls, name, host, *port, &labels, warm)).await;
            let took = started.elapsed();
            match probed {
                Ok((Ok(answered), connection)) => (gateway, Ok((answered, took)), connection),
                Ok((Err(e), _)) => (gateway, Err(format!("{addr}: {e}")), None),
                Err(_) => {
                    let e = format!("{addr}: no answer within {within:?}");
                    (gateway, Err(e), None)
                }
            }
        });
    }
    let mut answer: Option<ProbeAnswer> = None;
    let mut errors = Vec::new();
    while let Some(joined) = probes.join_next().await {
        let (gateway, result, connection) = match joined {
            Ok(probed) => probed,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        match result {
            Ok(((labels, catalog), took)) => {
                if answer.is_none() {
                    answer = Some(ProbeAnswer {
                        gateway: format!("gateway {}:{}", gateway.0, gateway.1),
                        address: Some(gateway.clone()),
                        labels,
                        catalog,
                        took,
                    });
                }
            }
            Err(e) => errors.push(e),
        }
        if let Some(k) = connection {
            kept.0.insert(gateway, k);
        }
    }
    match answer {
        Some(answer) => Ok(answer),
        None if errors.is_empty() => Err(crate::link::NO_ROUTE.into()),
        None => Err(errors.join("; ")),
    }
}

/// Probes the gateways of a Go peer (`go_tunnel`) in turn with its heartbeat, each on the
/// connection kept from its last probe if there is one; reachable if one answers, with the
/// labels it reports.
async fn probe_go(
    tls: &Arc<GatewayTls>,
    peer: &str,
    gateways: &[(String, u16)],
    kept: &mut KeptProbes,
    limits: &Limits,
) -> Result<ProbeAnswer, String> {
    let name = ServerName::try_from(peer.to_string()).map_err(|e| e.to_string())?;
    let client = &tls.go_client;
    let mut errors = Vec::new();
    for gateway in gateways {
        let (host, port) = gateway;
        let started = Instant::now();
        let warm = kept.take(gateway, client, limits.probe_connection_life);
        let probed = timeout(limits.probe_timeout, async {
            let mut kept = match warm {
                Some(kept) => kept,
                None => KeptProbe {
                    connection: connect(client, name.clone(), host, *port).await?,
                    opened: Instant::now(),
                    client: client.clone(),
                },
            };
            let connection = &mut kept.connection;
            let asked = go_tunnel::heartbeat_request(peer);
            connection
                .write_all(&asked)
                .await
                .map_err(|e| e.to_string())?;
            let (head, rest) = read_head(connection).await.map_err(|e| e.to_string())?;
            let answer = go_tunnel::Answer::decode(&head).map_err(|e| e.to_string())?;
            // The body (none in a heartbeat's answer) is read, so the connection can be kept.
            if answer.length > go_tunnel::MAX_ANSWER_BODY {
                return Err(format!("a heartbeat answer of {} bytes", answer.length));
            }
            let body = read_body(connection, rest, answer.length)
                .await
                .map_err(|e| e.to_string())?;
            let labels = answer.labels().map_err(|e| {
                let (_, text) = answer.refusal(&body);
                format!("unexpected heartbeat answer: {e} ({text})")
            })?;
            Ok::<_, String>((labels, kept))
        })
        .await;
        match probed {
            Ok(Ok((labels, connection))) => {
                kept.0.insert(gateway.clone(), connection);
                return Ok(ProbeAnswer {
                    gateway: format!("gateway {host}:{port}"),
                    address: Some(gateway.clone()),
                    labels,
                    catalog: None,
                    took: started.elapsed(),
                });
            }
            Ok(Err(e)) => errors.push(format!("{host}:{port}: {e}")),
            Err(_) => errors.push(format!(
                "{host}:{port}: no answer within {:?}",
                limits.probe_timeout
            )),
        }
    }
    Err(errors.join("; "))
}

/// One probe over a link: a stream of its own, with revocation lists exchanged as on a direct
/// connection.
async fn probe_link(
    tls: &Arc<GatewayTls>,
    link: &Link,
    labels: &BTreeMap<String, String>,
    limits: &Limits,
) -> Result<ProbeAnswer, String> {
    let started = Instant::now();
    let within = limits.probe_timeout;
    let probed = timeout(within, async {
        let mut stream = link.open(within).await.map_err(|e| e.to_string())?;
        let held = tls.revocation_summary.clone();
        stream
            .write_all(&health_request(&held, labels))
            .await
            .map_err(|e| e.to_string())?;
        let (head, rest) = read_head(&mut stream).await.map_err(|e| e.to_string())?;
        let labels = labels_of_health_response(&head)
            .map_err(|e| format!("unexpected health answer: {e}"))?;
        let catalog = catalog_digest_of(&head).map(str::to_string);
        if let Err(e) = exchange_revocations(tls, &mut stream, &head, rest, &held).await {
            tracing::debug!(peer = %link.info().peer, error = %e, "revocation lists not exchanged");
        }
        let _ = stream.shutdown().await;
        Ok::<_, String>((labels, catalog))
    })
    .await;
    let how = link.info().describe();
    match probed {
        Ok(Ok((labels, catalog))) => Ok(ProbeAnswer {
            gateway: format!("the {how}"),
            address: None,
            labels,
            catalog,
            took: started.elapsed(),
        }),
        Ok(Err(e)) => Err(format!("{how}: {e}")),
        Err(_) => Err(format!("{how}: no answer within {within:?}")),
    }
}

/// One probe of one gateway: on `kept` if given, else on a new connection. The connection, if
/// it can carry the next probe.
async fn probe(
    tls: &Arc<GatewayTls>,
    name: ServerName<'static>,
    host: &str,
    port: u16,
    labels: &BTreeMap<String, String>,
    kept: Option<KeptProbe>,
) -> (Result<Answered, String>, Option<KeptProbe>) {
    let client = &tls.client;
    let mut kept = match kept {
        Some(kept) => kept,
        None => match connect(client, name, host, port).await {
            Ok(connection) => KeptProbe {
                connection,
                opened: Instant::now(),
                client: client.clone(),
            },
            Err(e) => return (Err(e), None),
        },
    };
    let held = tls.revocation_summary.clone();
    if let Err(e) = kept
        .connection
        .write_all(&health_request(&held, labels))
        .await
    {
        return (Err(e.to_string()), None);
    }
    let (head, rest) = match read_head(&mut kept.connection).await {
        Ok(read) => read,
        Err(e) => return (Err(e.to_string()), None),
    };
    let labels = match labels_of_health_response(&head) {
        Ok(labels) => labels,
        Err(e) => return (Err(format!("unexpected health answer: {e}")), None),
    };
    let answered = Ok((labels, catalog_digest_of(&head).map(str::to_string)));
    match exchange_revocations(tls, &mut kept.connection, &head, rest, &held).await {
        Ok(Kept::Yes) => (answered, Some(kept)),
        Ok(Kept::No) => (answered, None),
        // The peer answered: it is reachable, whatever became of the lists.
        Err(e) => {
            tracing::debug!(%host, error = %e, "revocation lists not exchanged");
            (answered, None)
        }
    }
}

/// What a health answer says: the peer's labels and the digest of its catalog for this gateway.
type Answered = (BTreeMap<String, String>, Option<String>);

/// Fetches the catalog `peer` offers this gateway: over its link when one is up, else on a new
/// connection to the gateway that answered the probe (`address`).
async fn fetch_catalog(
    tls: &Arc<GatewayTls>,
    peer: &str,
    links: &Links,
    address: Option<&(String, u16)>,
    labels: &BTreeMap<String, String>,
    within: Duration,
) -> Result<Catalog, String> {
    match (links.to(peer), address) {
        (Some(link), _) => {
            let mut stream = link.open(within).await.map_err(|e| e.to_string())?;
            let catalog = ask_catalog(&mut stream, labels).await;
            let _ = stream.shutdown().await;
            catalog
        }
        (None, Some((host, port))) => {
            let name = ServerName::try_from(peer.to_string()).map_err(|e| e.to_string())?;
            let mut connection = connect(&tls.client, name, host, *port).await?;
            let catalog = ask_catalog(&mut connection, labels).await;
            let _ = connection.shutdown().await;
            catalog
        }
        (None, None) => Err(crate::link::NO_ROUTE.into()),
    }
}

/// `GET /catalog` on `connection`, and the catalog it answers, checked.
async fn ask_catalog<S: AsyncRead + AsyncWrite + Unpin>(
    connection: &mut S,
    labels: &BTreeMap<String, String>,
) -> Result<Catalog, String> {
    connection
        .write_all(&catalog_request(labels))
        .await
        .map_err(|e| e.to_string())?;
    let (head, rest) = read_head(connection).await.map_err(|e| e.to_string())?;
    if !head.starts_with(b"HTTP/1.1 200 ") {
        return Err(format!(
            "catalog answer: {}",
            clusterlink_api::text::escaped(&String::from_utf8_lossy(&head))
        ));
    }
    let length = body_length_within(&head, MAX_CATALOG_BYTES).map_err(|e| match e {
        ProtocolError::TooLarge => {
            format!("the catalog is larger than the {MAX_CATALOG_BYTES} bytes taken from a peer")
        }
        e => e.to_string(),
    })?;
    let body = read_body(connection, rest, length)
        .await
        .map_err(|e| e.to_string())?;
    Catalog::parse(&body).map_err(|e| e.to_string())
}

/// Whether a probe connection can carry the next probe.
enum Kept {
    Yes,
    /// The answering gateway took our lists: its TLS set changed, and it closes connections
    /// opened under the old one at their next request.
    No,
}

/// After a health answer: takes the lists it carries (the prober was behind), and sends ours if
/// the answering gateway is behind.
async fn exchange_revocations<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &Arc<GatewayTls>,
    connection: &mut S,
    head: &[u8],
    rest: Vec<u8>,
    held: &Summary,
) -> Result<Kept, String> {
    let length = body_length(head).map_err(|e| e.to_string())?;
    if length > 0 {
        let lists = read_body(connection, rest, length)
            .await
            .map_err(|e| e.to_string())?;
        // Parsing, signature checks and a write: off the runtime's threads.
        let tls = tls.clone();
        tokio::task::spawn_blocking(move || tls.offer_revocations(&lists))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    } else if !rest.is_empty() {
        return Err("bytes after the health answer".into());
    }
    let Some(theirs) = revocations_of(head) else {
        return Ok(Kept::Yes);
    };
    if held.is_ahead_of(&theirs) {
        connection
            .write_all(&revocations_request(&tls.revocations.to_pem()))
            .await
            .map_err(|e| e.to_string())?;
        let (answer, rest) = read_head(connection).await.map_err(|e| e.to_string())?;
        if !answer.starts_with(b"HTTP/1.1 200 ") || !rest.is_empty() {
            return Err(format!(
                "the peer did not take the lists: {}",
                clusterlink_api::text::escaped(&String::from_utf8_lossy(&answer))
            ));
        }
        return Ok(Kept::No);
    }
    Ok(Kept::Yes)
}

async fn connect(
    client: &Arc<ClientConfig>,
    name: ServerName<'static>,
    host: &str,
    port: u16,
) -> Result<ProbeConnection, String> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits::DEFAULT;

    /// What `ask_catalog` makes of an answer: a hostile or broken peer's answer is an error,
    /// and a body past the bound is refused before it is read.
    async fn catalog_from(answer: Vec<u8>) -> Result<Catalog, String> {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let peer = tokio::spawn(async move {
            let _ = read_head(&mut theirs).await;
            let _ = theirs.write_all(&answer).await;
            // Held open: a reader waiting for a body it was promised would hang, not fail.
            std::future::pending::<()>().await;
        });
        let result = ask_catalog(&mut ours, &BTreeMap::new()).await;
        peer.abort();
        result
    }

    #[tokio::test]
    async fn a_catalog_answer_is_bounded_and_checked() {
        let offers = br#"{"offers":[{"namespace":"default","name":"web","port":80}]}"#;
        let catalog = catalog_from(crate::tunnel::catalog_response(offers))
            .await
            .unwrap();
        assert_eq!(catalog.offers[0].name, "web");
        let huge = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            MAX_CATALOG_BYTES + 1
        );
        let e = catalog_from(huge.into_bytes()).await.unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        let refused = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec();
        assert!(catalog_from(refused).await.unwrap_err().contains("404"));
        let garbage = crate::tunnel::catalog_response(b"{\"offers\": [{\"name\": 1}]}");
        assert!(
            catalog_from(garbage)
                .await
                .unwrap_err()
                .contains("not valid")
        );
    }

    #[test]
    fn first_probe_decides_then_hysteresis() {
        let mut t = Tracker::new(L);
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
        let mut down = Tracker::new(L);
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
