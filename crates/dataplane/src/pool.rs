//! Warm connections to peer gateways, kept between tunnels.
//!
//! A tunnel whose both directions ended with end frames leaves its mutual-TLS connection
//! authenticated and idle; the next tunnel to the same gateway takes it and needs neither a TCP
//! nor a TLS handshake, only the CONNECT round trip. Connections are kept per peer *and* gateway
//! address, so a changed Peer never reuses a connection to an address it no longer lists.
//!
//! They are also kept per thread. A socket wakes the data-path thread it was opened on
//! (`dataplane::workers`); a tunnel served on another thread would have both threads woken for
//! each of its reads and writes. So a thread takes only connections it opened.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::thread::ThreadId;
use std::time::Duration;
use tokio::time::Instant;

use crate::limits::Limits;

/// Pooled connections idle longer than this are closed instead of reused (see [`Limits`]).
const IDLE_LIMIT: Duration = Limits::DEFAULT.pool_idle;
/// Beyond this many idle connections to one gateway, a finished tunnel's connection is closed.
const MAX_IDLE_PER_GATEWAY: usize = Limits::DEFAULT.pool_idle_per_gateway;

/// Where a connection goes: the peer it authenticated as, at one of its gateway addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GatewayKey {
    pub peer: String,
    pub host: String,
    pub port: u16,
}

struct Idle<C> {
    connection: C,
    since: Instant,
}

/// One thread's idle connections, by where they go.
type ByGateway<C> = HashMap<GatewayKey, Vec<Idle<C>>>;

/// Idle connections of type `C` (a TLS stream; anything in tests).
pub(crate) struct ConnectionPool<C> {
    /// By the thread that opened them.
    idle: Mutex<HashMap<ThreadId, ByGateway<C>>>,
}

impl<C> Default for ConnectionPool<C> {
    fn default() -> Self {
        ConnectionPool {
            idle: Mutex::default(),
        }
    }
}

impl<C> ConnectionPool<C> {
    /// The most recently used idle connection to `gateway` that this thread opened (the
    /// likeliest to be alive).
    pub fn take(&self, gateway: &GatewayKey) -> Option<C> {
        self.take_at(gateway, Instant::now())
    }

    fn take_at(&self, gateway: &GatewayKey, now: Instant) -> Option<C> {
        let mut idle = self.idle.lock();
        let mine = idle.get_mut(&std::thread::current().id())?;
        let list = mine.get_mut(gateway)?;
        list.retain(|c| now.duration_since(c.since) < IDLE_LIMIT);
        let taken = list.pop().map(|c| c.connection);
        if list.is_empty() {
            mine.remove(gateway);
        }
        taken
    }

    /// Keeps a connection whose tunnel ended cleanly for this thread's next tunnel to `gateway`.
    /// Called on the thread that opened it.
    pub fn put(&self, gateway: GatewayKey, connection: C) {
        let mut idle = self.idle.lock();
        // The bound is per gateway, whichever threads hold its connections.
        let kept: usize = idle
            .values()
            .filter_map(|mine| mine.get(&gateway))
            .map(Vec::len)
            .sum();
        if kept < MAX_IDLE_PER_GATEWAY {
            let list = idle
                .entry(std::thread::current().id())
                .or_default()
                .entry(gateway)
                .or_default();
            list.push(Idle {
                connection,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle too long, and those to gateways `keep` no longer wants (a deleted
    /// Peer, or an address it no longer lists).
    pub fn sweep(&self, keep: impl Fn(&GatewayKey) -> bool) {
        let now = Instant::now();
        let mut idle = self.idle.lock();
        for mine in idle.values_mut() {
            mine.retain(|gateway, list| {
                list.retain(|c| now.duration_since(c.since) < IDLE_LIMIT);
                !list.is_empty() && keep(gateway)
            });
        }
    }

    /// How many idle connections are kept.
    pub fn len(&self) -> usize {
        let idle = self.idle.lock();
        idle.values().flat_map(|m| m.values()).map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(peer: &str) -> GatewayKey {
        GatewayKey {
            peer: peer.into(),
            host: "10.0.0.1".into(),
            port: 443,
        }
    }

    #[test]
    fn the_latest_connection_is_taken_first_and_only_for_its_gateway() {
        let pool = ConnectionPool::default();
        pool.put(gateway("a"), 1);
        pool.put(gateway("a"), 2);
        pool.put(gateway("b"), 3);
        assert_eq!(pool.take(&gateway("a")), Some(2));
        assert_eq!(pool.take(&gateway("a")), Some(1));
        assert_eq!(pool.take(&gateway("a")), None);
        let other_port = GatewayKey {
            port: 444,
            ..gateway("b")
        };
        assert_eq!(pool.take(&other_port), None);
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn idle_connections_expire_and_the_pool_is_bounded() {
        let pool = ConnectionPool::default();
        for i in 0..MAX_IDLE_PER_GATEWAY + 5 {
            pool.put(gateway("a"), i);
        }
        assert_eq!(pool.len(), MAX_IDLE_PER_GATEWAY);
        let later = Instant::now() + IDLE_LIMIT;
        assert_eq!(pool.take_at(&gateway("a"), later), None);
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn a_thread_takes_only_the_connections_it_put() {
        let pool = std::sync::Arc::new(ConnectionPool::default());
        pool.put(gateway("a"), 1);
        let other = pool.clone();
        std::thread::spawn(move || {
            assert_eq!(other.take(&gateway("a")), None);
            other.put(gateway("a"), 2);
        })
        .join()
        .unwrap();
        assert_eq!(pool.take(&gateway("a")), Some(1));
        assert_eq!(pool.take(&gateway("a")), None);
        assert_eq!(pool.len(), 1);
        // The bound counts every thread's connections to the gateway.
        for i in 0..MAX_IDLE_PER_GATEWAY {
            pool.put(gateway("a"), 10 + i);
        }
        assert_eq!(pool.len(), MAX_IDLE_PER_GATEWAY);
        // Forgetting a gateway closes every thread's connections to it.
        pool.sweep(|g| g.peer != "a");
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn sweep_drops_gateways_no_longer_wanted() {
        let pool = ConnectionPool::default();
        pool.put(gateway("a"), 1);
        pool.put(gateway("b"), 2);
        pool.sweep(|g| g.peer == "b");
        assert_eq!(pool.take(&gateway("a")), None);
        assert_eq!(pool.take(&gateway("b")), Some(2));
    }
}
