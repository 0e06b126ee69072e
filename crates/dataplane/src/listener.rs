//! Accepting from strangers. Every listener that takes connections before they prove anything
//! (the peer port before its TLS handshake, the management API, the snapshot stream, the
//! operations endpoint) admits them through an [`Admission`], which bounds them in total and per
//! source network, and under pressure closes the connections that have shown the least:
//!
//! - A listener never stops accepting to enforce a bound: connections waiting in the kernel's
//!   backlog would wait for everyone, a peer's handshake among them, until a place freed up.
//! - Past a bound, a connection that has sent nothing is closed to make room; if none has, one
//!   that has sent something but not proven itself (a stalled TLS handshake, half a request).
//!   A connection that proved itself (authenticated, or with a request in progress) is never
//!   closed for a newcomer: then the newcomer is. A real client speaks at once, so a
//!   stranger's silent sockets go first and a peer behind the same NAT as an attacker still gets
//!   in.
//! - Sources are counted by network, a /24 or a /64: one attacker holds many addresses of one
//!   network, and a per-address bound alone is a bound times the addresses. A network at its
//!   share gives up its own oldest connection; a full listener takes one from the network that
//!   holds the most places, so a lone handshake outlasts a crowd spread over many networks.
//! - A listener more than half full gives new connections less time to show something
//!   ([`Limits::handshake_under_pressure`]), as Envoy's overload manager shortens its timeouts.
//! - The peer port keeps places apart for the addresses of configured peers' gateways, and for
//!   the addresses they were seen authenticating from, which strangers' connections never take
//!   or close.
//!
//! Every connection closed unserved is counted and logged (with a rate limit) by
//! [`Metrics::unserved`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::limits::{Bounds, Limits};
use crate::metrics::{Listener, Metrics, Unserved};

/// Accepts on `listener` until `shutdown` flips, admitting connections through an [`Admission`]
/// of `bounds`, and serving each with `serve` as a task of the returned set (for the caller to
/// drain or abort) once it has sent its first byte. `serve` tells its connection's [`Standing`]
/// when the connection proves itself. The listener is closed on return.
pub async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    bounds: Bounds,
    kind: Listener,
    limits: &Limits,
    metrics: &Arc<Metrics>,
    shutdown: &mut watch::Receiver<bool>,
    serve: F,
) -> JoinSet<()>
where
    F: Fn(TcpStream, SocketAddr, Standing) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let admission = Admission::new(kind, bounds, limits, metrics.clone());
    let mut connections = JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off rather than spin.
                    metrics.accept_failed(kind, &e);
                    tokio::time::sleep(limits.accept_retry).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow with every one ever served.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = shutdown.changed() => break,
        };
        let Some(admitted) = admission.admit(remote) else {
            continue;
        };
        let (serve, metrics) = (serve.clone(), metrics.clone());
        connections.spawn(async move {
            match admitted.first_bytes(&stream).await {
                Ok(()) => {}
                Err(Some(unserved)) => {
                    return metrics.unserved(kind, unserved, remote, unserved.detail());
                }
                // Counted when it was chosen.
                Err(None) => return,
            }
            let served = serve(stream, remote, admitted.standing());
            // Shed: counted when it was chosen; dropping the future closes the connection.
            tokio::select! {
                () = served => {}
                () = admitted.shed() => {}
            }
        });
    }
    connections
}

/// The network a source address belongs to for fairness: its /24 (IPv4) or /64 (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceNetwork {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl From<IpAddr> for SourceNetwork {
    fn from(ip: IpAddr) -> SourceNetwork {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, _] = v4.octets();
                SourceNetwork::V4([a, b, c])
            }
            IpAddr::V6(v6) => {
                let o = v6.octets();
                SourceNetwork::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
            }
        }
    }
}

impl fmt::Display for SourceNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SourceNetwork::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            SourceNetwork::V6(o) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(&o);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

/// What a connection has shown so far. Connections are closed to make room in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Shown {
    Nothing = 0,
    /// Some bytes, not yet proof (a TLS handshake under way, part of a request).
    Something = 1,
    /// Authenticated, or otherwise proven: never closed for a newcomer.
    Proof = 2,
}

/// One admitted connection's state, shared by its admission ticket and its pool.
struct Place {
    shown: AtomicU8,
    /// Requests in progress on the connection: while any is, it is not closed for a newcomer.
    busy: AtomicUsize,
    shed: Notify,
}

impl Place {
    fn shown(&self) -> Shown {
        match self.shown.load(Ordering::Acquire) {
            0 => Shown::Nothing,
            1 => Shown::Something,
            _ => Shown::Proof,
        }
    }

    /// Raises what the connection has shown (never lowers it).
    fn show(&self, shown: Shown) {
        self.shown.fetch_max(shown as u8, Ordering::AcqRel);
    }

    /// Whether the connection may be closed for a newcomer, and how early: the lower the sooner.
    fn shed_order(&self) -> Option<Shown> {
        let shown = self.shown();
        (shown != Shown::Proof && self.busy.load(Ordering::Acquire) == 0).then_some(shown)
    }
}

struct Entry {
    network: SourceNetwork,
    remote: SocketAddr,
    place: Arc<Place>,
}

/// The admitted connections of one kind of source, and each network's, oldest first.
struct Pool {
    bounds: Bounds,
    next: u64,
    open: HashMap<u64, Entry>,
    networks: HashMap<SourceNetwork, BTreeSet<u64>>,
}

impl Pool {
    fn new(bounds: Bounds) -> Pool {
        Pool {
            bounds,
            next: 0,
            open: HashMap::new(),
            networks: HashMap::new(),
        }
    }

    fn insert(&mut self, entry: Entry) -> u64 {
        let id = self.next;
        self.next += 1;
        self.networks.entry(entry.network).or_default().insert(id);
        self.open.insert(id, entry);
        id
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.open.remove(&id)?;
        if let Some(ids) = self.networks.get_mut(&entry.network) {
            ids.remove(&id);
            if ids.is_empty() {
                self.networks.remove(&entry.network);
            }
        }
        Some(entry)
    }

    /// The oldest connection of `ids` that may be closed in `order`'s turn.
    fn oldest(&self, ids: &BTreeSet<u64>, order: Shown) -> Option<u64> {
        ids.iter()
            .copied()
            .find(|id| self.open.get(id).and_then(|e| e.place.shed_order()) == Some(order))
    }

    /// The connection of `network` to close first for a newcomer of its own: the oldest that
    /// has sent nothing, else the oldest that has not proven itself.
    fn first_to_shed_in(&self, network: SourceNetwork) -> Option<u64> {
        let ids = self.networks.get(&network)?;
        [Shown::Nothing, Shown::Something]
            .into_iter()
            .find_map(|order| self.oldest(ids, order))
    }

    /// The connection to close first for a newcomer when the pool is full: one that has sent
    /// nothing if any network holds one, else one that has not proven itself; of the network
    /// that holds the most places, its oldest. A lone connection of a quiet network goes last,
    /// however many networks an attacker spreads over.
    fn first_to_shed(&self) -> Option<u64> {
        [Shown::Nothing, Shown::Something]
            .into_iter()
            .find_map(|order| {
                self.networks
                    .values()
                    .filter_map(|ids| {
                        let id = self.oldest(ids, order)?;
                        Some((ids.len(), std::cmp::Reverse(id)))
                    })
                    .max()
                    .map(|(_, std::cmp::Reverse(id))| id)
            })
    }

    /// Makes room for a connection from `network`, closing at most one other: the one closed,
    /// with why, or why the newcomer is refused.
    fn make_room(&mut self, network: SourceNetwork) -> Result<Option<(Entry, Unserved)>, Unserved> {
        let from_network = self.networks.get(&network).map_or(0, BTreeSet::len);
        let (id, why) = if from_network >= self.bounds.per_source {
            let why = Unserved::SourceLimit;
            (self.first_to_shed_in(network).ok_or(why)?, why)
        } else if self.open.len() >= self.bounds.total {
            let why = Unserved::ListenerLimit;
            (self.first_to_shed().ok_or(why)?, why)
        } else {
            return Ok(None);
        };
        // Closing one of the network's own also frees a place in the total.
        Ok(self.remove(id).map(|entry| (entry, why)))
    }
}

/// Admits the connections of one listener: see the module's documentation.
pub struct Admission {
    kind: Listener,
    handshake: Duration,
    under_pressure: Duration,
    metrics: Arc<Metrics>,
    strangers: Arc<Mutex<Pool>>,
    /// Places kept apart for `reserved_for` (the peer port's configured gateways) and the
    /// addresses they were `seen` authenticating from.
    reserved: Option<Arc<Mutex<Pool>>>,
    reserved_for: RwLock<Arc<HashSet<IpAddr>>>,
    seen: Mutex<HashMap<IpAddr, Instant>>,
    seen_for: Duration,
}

/// Addresses a configured gateway was seen at, kept at once: more than a fabric's gateways.
const MAX_SEEN: usize = 1024;

impl Admission {
    pub fn new(kind: Listener, bounds: Bounds, limits: &Limits, metrics: Arc<Metrics>) -> Self {
        Admission {
            kind,
            handshake: limits.handshake,
            under_pressure: limits.handshake_under_pressure,
            metrics,
            strangers: Arc::new(Mutex::new(Pool::new(bounds))),
            reserved: None,
            reserved_for: RwLock::default(),
            seen: Mutex::default(),
            seen_for: limits.peer_source_remembered,
        }
    }

    /// Keeps `bounds` places apart for the addresses given to [`Admission::reserve_for`].
    pub fn with_reserved(mut self, bounds: Bounds) -> Self {
        self.reserved = Some(Arc::new(Mutex::new(Pool::new(bounds))));
        self
    }

    /// The addresses whose connections take the reserved places from now on.
    pub fn reserve_for(&self, addresses: HashSet<IpAddr>) {
        let addresses = addresses.into_iter().map(|a| a.to_canonical()).collect();
        *self.reserved_for.write() = Arc::new(addresses);
    }

    /// A configured peer's gateway authenticated from `ip`: its later connections from there
    /// take the reserved places for a while, though its Peer object lists another address (it
    /// is behind a NAT, or a cluster's pods connect from their own addresses).
    pub fn seen_at(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        let mut seen = self.seen.lock();
        if seen.len() >= MAX_SEEN && !seen.contains_key(&ip) {
            let oldest = seen.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip);
            if let Some(oldest) = oldest {
                seen.remove(&oldest);
            }
        }
        seen.insert(ip, Instant::now());
    }

    fn is_reserved(&self, ip: IpAddr) -> bool {
        self.reserved_for.read().contains(&ip)
            || self
                .seen
                .lock()
                .get(&ip)
                .is_some_and(|at| at.elapsed() < self.seen_for)
    }

    /// A place for a new connection from `remote`, made by closing another if need be; none
    /// (the newcomer is counted and should be closed) when every place is held by connections
    /// that proved themselves.
    pub fn admit(&self, remote: SocketAddr) -> Option<Admitted> {
        let ip = remote.ip().to_canonical();
        let pool = match &self.reserved {
            Some(reserved) if self.is_reserved(ip) => reserved,
            _ => &self.strangers,
        };
        let network = SourceNetwork::from(ip);
        let (admitted, shed) = {
            let mut open = pool.lock();
            let shed = match open.make_room(network) {
                Ok(shed) => shed,
                Err(why) => {
                    drop(open);
                    let detail = format!(
                        "every place is held by a connection that proved itself ({} from {network})",
                        why.bound_name()
                    );
                    self.metrics.unserved(self.kind, why, remote, &detail);
                    return None;
                }
            };
            let place = Arc::new(Place {
                shown: AtomicU8::new(Shown::Nothing as u8),
                busy: AtomicUsize::new(0),
                shed: Notify::new(),
            });
            let id = open.insert(Entry {
                network,
                remote,
                place: place.clone(),
            });
            let deadline = Instant::now() + self.deadline(open.open.len(), open.bounds.total);
            let admitted = Admitted {
                pool: pool.clone(),
                id,
                place,
                deadline,
            };
            (admitted, shed)
        };
        if let Some((entry, why)) = shed {
            entry.place.shed.notify_one();
            let what = match entry.place.shown() {
                Shown::Nothing => "had sent nothing",
                _ => "had not proven itself",
            };
            let detail = format!(
                "closed to make room ({} from {}): the oldest connection that {what}",
                why.bound_name(),
                entry.network
            );
            self.metrics.unserved(self.kind, why, entry.remote, &detail);
        }
        Some(admitted)
    }

    /// The time a connection admitted as the `open`th of `total` places has to show itself:
    /// the full handshake time up to half full, then less, down to the time under pressure.
    fn deadline(&self, open: usize, total: usize) -> Duration {
        let half = total / 2;
        if open <= half || total == 0 {
            return self.handshake;
        }
        let pressure = (open - half) as f64 / (total - half).max(1) as f64;
        let shortened = self.handshake.saturating_sub(
            (self.handshake.saturating_sub(self.under_pressure)).mul_f64(pressure.min(1.0)),
        );
        shortened.max(self.under_pressure)
    }
}

impl Unserved {
    /// How a bound is named when a connection is closed at it.
    fn bound_name(self) -> &'static str {
        match self {
            Unserved::SourceLimit => "its network's share",
            _ => "the listener's places",
        }
    }

    /// What to log for a connection that ended this way before it was served.
    pub fn detail(self) -> &'static str {
        match self {
            Unserved::HandshakeTimeout => "nothing was sent in time",
            Unserved::HandshakeRefused => "closed before it sent anything",
            _ => "closed before it was served",
        }
    }
}

/// An admitted connection's place: given back when dropped (or taken away, when the connection
/// is closed to make room: [`Admitted::shed`] then completes).
pub struct Admitted {
    pool: Arc<Mutex<Pool>>,
    id: u64,
    place: Arc<Place>,
    deadline: Instant,
}

impl Admitted {
    /// By when the connection must have proven itself (its handshake and first request done).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Completes when the connection is closed to make room for another.
    pub async fn shed(&self) {
        self.place.shed.notified().await
    }

    /// Waits for `stream`'s first byte (or its end), by the deadline and unless shed: why not,
    /// or none when it was shed (then counted already).
    pub async fn first_bytes(&self, stream: &TcpStream) -> Result<(), Option<Unserved>> {
        // A peek, not readiness alone: readiness may be reported with nothing to read.
        let mut first = [0u8; 1];
        tokio::select! {
            peeked = tokio::time::timeout_at(self.deadline, stream.peek(&mut first)) => match peeked {
                Ok(Ok(_)) => {
                    self.place.show(Shown::Something);
                    Ok(())
                }
                Ok(Err(_)) => Err(Some(Unserved::HandshakeRefused)),
                Err(_) => Err(Some(Unserved::HandshakeTimeout)),
            },
            () = self.shed() => Err(None),
        }
    }

    /// A handle for the code serving the connection, to say when it proves itself.
    pub fn standing(&self) -> Standing {
        Standing(self.place.clone())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.pool.lock().remove(self.id);
    }
}

/// What the code serving an admitted connection tells its admission.
#[derive(Clone)]
pub struct Standing(Arc<Place>);

impl Standing {
    /// The connection has proven itself (authenticated): it is no longer closed for a newcomer.
    pub fn proven(&self) {
        self.0.show(Shown::Proof);
    }

    /// A request is in progress: until the guard drops, the connection is not closed for a
    /// newcomer.
    pub fn busy(&self) -> Busy {
        self.0.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.0.clone())
    }
}

/// A request in progress on an admitted connection.
pub struct Busy(Arc<Place>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits::DEFAULT;

    fn addr(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn admission(total: usize, per_source: usize) -> Admission {
        let bounds = Bounds { total, per_source };
        Admission::new(Listener::Peer, bounds, &L, Arc::new(Metrics::default()))
    }

    /// Whether `a` was closed to make room.
    fn is_shed(a: &Admitted) -> bool {
        let shed = std::pin::pin!(a.shed());
        futures_ready(shed)
    }

    fn futures_ready<F: Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.poll(&mut cx).is_ready()
    }

    fn unserved(a: &Admission, reason: &str) -> u64 {
        let text = a.metrics.encode();
        let series = format!(
            "clusterlink_connections_unserved_total{{listener=\"peer\",reason=\"{reason}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.parse().unwrap())
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        let net = |ip: &str| SourceNetwork::from(ip.parse::<IpAddr>().unwrap());
        assert_eq!(net("10.1.2.3"), net("10.1.2.200"));
        assert_ne!(net("10.1.2.3"), net("10.1.3.3"));
        assert_eq!(net("::ffff:10.1.2.3"), net("10.1.2.9"));
        assert_eq!(net("2001:db8:1:2::1"), net("2001:db8:1:2:ffff::9"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("10.1.2.3").to_string(), "10.1.2.0/24");
        assert_eq!(net("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    #[tokio::test]
    async fn a_network_at_its_share_gives_up_its_oldest_silent_connection() {
        let a = admission(100, 2);
        let first = a.admit(addr("10.0.0.1")).unwrap();
        let second = a.admit(addr("10.0.0.2")).unwrap();
        first.place.show(Shown::Something);
        // Another address of the same /24: the oldest silent one makes room, not the one that
        // is talking, and not another network's.
        let other = a.admit(addr("10.0.1.1")).unwrap();
        let third = a.admit(addr("10.0.0.3")).unwrap();
        assert!(is_shed(&second) && !is_shed(&first) && !is_shed(&other) && !is_shed(&third));
        assert_eq!(unserved(&a, "SourceLimit"), 1);
        // With nothing silent left, the oldest that has not proven itself goes.
        third.place.show(Shown::Something);
        let _fourth = a.admit(addr("10.0.0.4")).unwrap();
        assert!(is_shed(&first));
    }

    #[tokio::test]
    async fn proven_connections_are_never_closed_for_a_newcomer() {
        let a = admission(2, 2);
        let held: Vec<_> = (1..=2)
            .map(|i| a.admit(addr(&format!("10.0.{i}.1"))).unwrap())
            .collect();
        held[0].standing().proven();
        let _busy = held[1].standing().busy();
        assert!(a.admit(addr("10.9.9.9")).is_none());
        assert_eq!(unserved(&a, "ListenerLimit"), 1);
        assert!(held.iter().all(|h| !is_shed(h)));
        // A place given back is free again.
        drop(held);
        assert!(a.admit(addr("10.9.9.9")).is_some());
    }

    #[tokio::test]
    async fn a_full_listener_closes_a_silent_connection_of_the_network_holding_the_most() {
        let a = admission(4, 4);
        let lone = a.admit(addr("10.0.1.1")).unwrap();
        let talking = a.admit(addr("10.0.2.1")).unwrap();
        talking.place.show(Shown::Something);
        let crowd_old = a.admit(addr("10.0.3.1")).unwrap();
        let crowd_young = a.admit(addr("10.0.3.2")).unwrap();
        let _new = a.admit(addr("10.0.4.1")).unwrap();
        // Silent ones go first, and of them the crowded network's oldest, though the lone one
        // is older still.
        assert!(is_shed(&crowd_old));
        assert!(!is_shed(&lone) && !is_shed(&talking) && !is_shed(&crowd_young));
        assert_eq!(unserved(&a, "ListenerLimit"), 1);
        // A shed connection's place is gone at once: dropping its ticket frees nothing twice.
        drop(crowd_old);
        assert_eq!(a.strangers.lock().open.len(), 4);
    }

    #[tokio::test]
    async fn one_byte_per_connection_from_many_networks_never_closes_a_lone_handshake() {
        let a = admission(64, 8);
        // A peer's handshake under way, the only connection of its network.
        let peer = a.admit(addr("192.0.2.10")).unwrap();
        peer.place.show(Shown::Something);
        // An attacker on 32 networks fills the listener with connections that each sent a
        // byte, and keeps opening more.
        let mut held = Vec::new();
        for round in 0..10 {
            for n in 0..32 {
                let conn = a.admit(addr(&format!("10.{n}.0.{}", round + 1))).unwrap();
                conn.place.show(Shown::Something);
                held.push(conn);
            }
        }
        assert!(!is_shed(&peer), "a lone handshake was closed for a crowd");
        assert!(unserved(&a, "ListenerLimit") > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_gateway_seen_at_another_address_keeps_its_places_there_for_a_while() {
        let a = admission(2, 2).with_reserved(Bounds {
            total: 2,
            per_source: 2,
        });
        let nat: IpAddr = "198.51.100.7".parse().unwrap();
        a.seen_at(nat);
        let peer = a.admit(SocketAddr::new(nat, 1)).unwrap();
        let _strangers: Vec<_> = (0..10)
            .filter_map(|i| a.admit(addr(&format!("10.{i}.0.1"))))
            .collect();
        assert!(!is_shed(&peer));
        tokio::time::advance(L.peer_source_remembered).await;
        assert!(!a.is_reserved(nat), "remembered forever");
    }

    #[tokio::test]
    async fn strangers_never_take_or_close_a_configured_gateways_places() {
        let a = admission(4, 4).with_reserved(Bounds {
            total: 2,
            per_source: 2,
        });
        let gateway: IpAddr = "192.0.2.10".parse().unwrap();
        a.reserve_for([gateway].into());
        let peer = a.admit(SocketAddr::new(gateway, 1)).unwrap();
        let strangers: Vec<_> = (0..100)
            .filter_map(|i| a.admit(addr(&format!("10.{i}.0.1"))))
            .collect();
        assert_eq!(strangers.len(), 100, "strangers displace each other");
        assert!(!is_shed(&peer));
        // Even a stranger on the gateway's own network (a NAT) shares only the strangers' pool;
        // on the gateway's very address it competes only with that address.
        let _neighbour = a.admit(addr("192.0.2.11")).unwrap();
        assert!(!is_shed(&peer));
        let _second = a.admit(SocketAddr::new(gateway, 2)).unwrap();
        assert!(!is_shed(&peer));
    }

    #[test]
    fn deadlines_shorten_as_the_listener_fills() {
        let a = admission(100, 100);
        assert_eq!(a.deadline(1, 100), L.handshake);
        assert_eq!(a.deadline(50, 100), L.handshake);
        let three_quarters = a.deadline(75, 100);
        assert!(three_quarters < L.handshake && three_quarters > L.handshake_under_pressure);
        assert_eq!(a.deadline(100, 100), L.handshake_under_pressure);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_dropped_at_its_deadline_and_a_talking_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let a = admission(10, 10);
        let _silent = TcpStream::connect(at).await.unwrap();
        let (accepted, remote) = listener.accept().await.unwrap();
        let admitted = a.admit(remote).unwrap();
        let started = Instant::now();
        assert_eq!(
            admitted.first_bytes(&accepted).await,
            Err(Some(Unserved::HandshakeTimeout))
        );
        assert_eq!(started.elapsed(), L.handshake);

        let mut talking = TcpStream::connect(at).await.unwrap();
        let (accepted, remote) = listener.accept().await.unwrap();
        let admitted = a.admit(remote).unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut talking, b"\x16")
            .await
            .unwrap();
        assert_eq!(admitted.first_bytes(&accepted).await, Ok(()));
        assert_eq!(admitted.place.shown(), Shown::Something);
    }
}
