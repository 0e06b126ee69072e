//! Loop detection: a connection that a gateway's ingress made to a backend, and that turns out to
//! be the client of an import (this gateway's, or the requesting peer's), carries its tunnel's
//! hop count into the next tunnel; at [`crate::tunnel::MAX_HOPS`] the request is refused.
//!
//! Backend connections are known by both ends' addresses, which no other live connection shares:
//! an import that accepts a connection from this host finds it by the same pair, reversed. A
//! peer's tunnel request says (`x-clusterlink-via`) which connection its client came on when that
//! client came from this gateway's own address, so a loop through another gateway's import is
//! found too. A peer can only make its own tunnel count longer this way: the lookup never changes
//! what other connections count, and a hop count a peer claims applies to its own backend
//! connection alone. A loop no gateway can see (through a NAT, or a third gateway) still ends,
//! at the tunnel bounds of [`crate::capacity`].
//!
//! The ingress records a backend connection as soon as it is connected. While it connects, it
//! records only where it is connecting: the kernel picks the local port then (binding a port first
//! would keep it from being reused while an earlier connection's TIME_WAIT holds it: a few hundred
//! new backend connections a second would run out of ports). An import that accepts a connection
//! from this host while a backend connection to it is still being made waits, briefly, for that
//! connection to be recorded or to fail, rather than guess; so does the ingress asked about a
//! connection a peer's import accepted, which may be quicker than the dial that made it.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Both ends of a connection, from the side that opened it: (local, remote).
type Ends = (SocketAddr, SocketAddr);

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[derive(Default)]
pub(crate) struct RelayedConnections {
    /// Connected backend connections and the hop counts of their tunnels.
    hops_by_ends: Mutex<HashMap<Ends, u8>>,
    /// Backend connections still connecting, by destination: each by a number of its own.
    dialing: Mutex<HashMap<SocketAddr, BTreeSet<u64>>>,
    next_dial: AtomicU64,
    /// Told whenever a connection stops being "still connecting".
    settled: Notify,
}

impl RelayedConnections {
    /// Records that a backend connection is being made to `to`, until the returned guard drops
    /// (once [`RelayedConnections::record`] took over).
    pub fn dialing(self: &Arc<Self>, to: SocketAddr) -> Dialing {
        let to = canonical(to);
        let number = self.next_dial.fetch_add(1, Ordering::Relaxed);
        self.dialing.lock().entry(to).or_default().insert(number);
        Dialing {
            connections: self.clone(),
            to,
            number,
        }
    }

    /// Records that the backend connection from `local` to `remote` carries a tunnel that had
    /// `hops`, until the returned guard drops.
    pub fn record(self: &Arc<Self>, local: SocketAddr, remote: SocketAddr, hops: u8) -> Relayed {
        let ends = (canonical(local), canonical(remote));
        self.hops_by_ends.lock().insert(ends, hops);
        Relayed {
            connections: self.clone(),
            ends,
        }
    }

    /// The hop count of the tunnel whose backend connection goes from `local` to `remote`, if
    /// this gateway made it. While backend connections to `remote` are still being made, waits
    /// (at most `patience`) until those, and only those, are recorded or failed: one of them may
    /// be this one (the other end may accept, and even ask its next tunnel, before this side has
    /// recorded it), and a stream of later dials cannot keep the caller waiting.
    pub async fn hops_of(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        patience: Duration,
    ) -> Option<u8> {
        let ends = (canonical(local), canonical(remote));
        let in_flight = self
            .dialing
            .lock()
            .get(&ends.1)
            .cloned()
            .unwrap_or_default();
        let known = async {
            loop {
                let settled = self.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if let Some(hops) = self.hops_by_ends.lock().get(&ends).copied() {
                    return Some(hops);
                }
                let pending = self
                    .dialing
                    .lock()
                    .get(&ends.1)
                    .is_some_and(|now| now.iter().any(|n| in_flight.contains(n)));
                if !pending {
                    return None;
                }
                settled.await;
            }
        };
        tokio::time::timeout(patience, known).await.ok().flatten()
    }

    /// The hop count a client connection from `remote` to this gateway's `local` address starts
    /// with: one more than the tunnel whose backend connection it is (see
    /// [`RelayedConnections::hops_of`]), or 0.
    pub async fn hops_from(&self, remote: SocketAddr, local: SocketAddr, patience: Duration) -> u8 {
        let (remote, local) = (canonical(remote), canonical(local));
        // Only a connection from this host can be one of its backend connections.
        let from_this_host = remote.ip() == local.ip() || remote.ip().is_loopback();
        if !from_this_host {
            return 0;
        }
        self.hops_of(remote, local, patience)
            .await
            .map_or(0, |hops| hops.saturating_add(1))
    }
}

/// A recorded backend connection; forgotten when dropped.
pub(crate) struct Relayed {
    connections: Arc<RelayedConnections>,
    ends: Ends,
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.connections.hops_by_ends.lock().remove(&self.ends);
    }
}

/// A backend connection being made; forgotten when dropped.
pub(crate) struct Dialing {
    connections: Arc<RelayedConnections>,
    to: SocketAddr,
    number: u64,
}

impl Drop for Dialing {
    fn drop(&mut self) {
        {
            let mut dialing = self.connections.dialing.lock();
            if let Some(numbers) = dialing.get_mut(&self.to) {
                numbers.remove(&self.number);
                if numbers.is_empty() {
                    dialing.remove(&self.to);
                }
            }
        }
        self.connections.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(5);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_relayed_connection_starts_one_hop_further() {
        let relayed = Arc::new(RelayedConnections::default());
        let import = addr(7000);
        assert_eq!(relayed.hops_from(addr(40000), import, PATIENCE).await, 0);
        let guard = relayed.record(addr(40000), import, 3);
        assert_eq!(relayed.hops_from(addr(40000), import, PATIENCE).await, 4);
        assert_eq!(relayed.hops_from(addr(40001), import, PATIENCE).await, 0);
        drop(guard);
        assert_eq!(relayed.hops_from(addr(40000), import, PATIENCE).await, 0);
        let _max = relayed.record(addr(1), import, u8::MAX);
        assert_eq!(relayed.hops_from(addr(1), import, PATIENCE).await, u8::MAX);
    }

    #[tokio::test]
    async fn the_same_port_on_another_host_or_to_another_import_is_another_connection() {
        let relayed = Arc::new(RelayedConnections::default());
        // A peer's tunnel claimed 7 hops; its backend connection went from port 40000 to 7000.
        let _forged = relayed.record(addr(40000), addr(7000), 7);
        // Another host's client from a port of the same number, and this host's client of
        // another import from that port, start at 0.
        let elsewhere = SocketAddr::from(([10, 0, 0, 9], 40000));
        let local = SocketAddr::from(([10, 0, 0, 1], 7000));
        assert_eq!(relayed.hops_from(elsewhere, local, PATIENCE).await, 0);
        assert_eq!(
            relayed.hops_from(addr(40000), addr(7001), PATIENCE).await,
            0
        );
        // An IPv4 connection seen on a dual-stack socket is the same connection.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert_eq!(relayed.hops_from(mapped, addr(7000), PATIENCE).await, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_asks_before_the_record_is_made_gets_the_count() {
        let relayed = Arc::new(RelayedConnections::default());
        // This gateway dials the peer's import; the peer accepts and asks its next tunnel of
        // this gateway before the dial is recorded here.
        let theirs = SocketAddr::from(([10, 0, 0, 2], 7000));
        let mine = SocketAddr::from(([10, 0, 0, 1], 40000));
        let dialing = relayed.dialing(theirs);
        let asked = tokio::spawn({
            let relayed = relayed.clone();
            async move { relayed.hops_of(mine, theirs, PATIENCE).await }
        });
        tokio::task::yield_now().await;
        assert!(!asked.is_finished());
        let _connected = relayed.record(mine, theirs, 5);
        drop(dialing);
        assert_eq!(asked.await.unwrap(), Some(5));
        // Nothing in flight, nothing recorded: no wait, no count.
        let other = SocketAddr::from(([10, 0, 0, 3], 7000));
        assert_eq!(relayed.hops_of(mine, other, PATIENCE).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_accepted_before_it_is_recorded_waits_for_the_record() {
        let relayed = Arc::new(RelayedConnections::default());
        let import = addr(7000);
        let dialing = relayed.dialing(import);
        let asked = tokio::spawn({
            let relayed = relayed.clone();
            async move { relayed.hops_from(addr(40000), import, PATIENCE).await }
        });
        tokio::task::yield_now().await;
        assert!(!asked.is_finished(), "answered before the dial settled");
        let _connected = relayed.record(addr(40000), import, 2);
        drop(dialing);
        assert_eq!(asked.await.unwrap(), 3);
        // Another connection accepted while a dial is pending is not that dial's, once it
        // settles elsewhere; and no one waits longer than its patience.
        let pending = relayed.dialing(import);
        let started = tokio::time::Instant::now();
        assert_eq!(relayed.hops_from(addr(40001), import, PATIENCE).await, 0);
        assert_eq!(started.elapsed(), PATIENCE);
        // Dials that start after a connection was accepted never keep it waiting.
        drop(pending);
        let first = relayed.dialing(import);
        let asked = tokio::spawn({
            let relayed = relayed.clone();
            async move { relayed.hops_from(addr(40002), import, PATIENCE).await }
        });
        tokio::task::yield_now().await;
        let _later = relayed.dialing(import);
        let started = tokio::time::Instant::now();
        drop(first);
        assert_eq!(asked.await.unwrap(), 0);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A stranger's connection never waits.
        let stranger = SocketAddr::from(([10, 0, 0, 9], 40001));
        let started = tokio::time::Instant::now();
        assert_eq!(relayed.hops_from(stranger, import, PATIENCE).await, 0);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
