//! Loop detection within one gateway: when its ingress dials a backend that turns out to be one
//! of its own import listeners, the new client connection carries the tunnel's hop count into
//! the next tunnel ([`crate::tunnel::MAX_HOPS`] ends the loop).
//!
//! Once connected, the ingress records its backend socket's local port. While it connects, it
//! records where it is connecting, since the kernel picks the port only then (binding a port
//! first would keep it from being reused while an earlier connection's TIME_WAIT holds it: a few
//! hundred new backend connections a second would run out of ports). So an import listener that
//! accepts before the port is recorded still finds the count, by its own address. Ports are unique
//! among this host's live outgoing connections to one address; a stranger's connection from a
//! port of the same number (on another host) only starts one hop further along.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct RelayedConnections {
    hops_by_port: Mutex<HashMap<u16, u8>>,
    /// Backend connections still connecting: their destination, with their hop counts.
    dialing: Mutex<HashMap<SocketAddr, Vec<u8>>>,
}

impl RelayedConnections {
    /// Records that a backend connection carrying a tunnel that had `hops` is being made to `to`,
    /// until the returned guard drops (once [`RelayedConnections::record`] took over).
    pub fn dialing(self: &Arc<Self>, to: SocketAddr, hops: u8) -> Dialing {
        self.dialing.lock().entry(to).or_default().push(hops);
        Dialing {
            connections: self.clone(),
            to,
            hops,
        }
    }

    /// Records that the backend connection from local `port` carries a tunnel that had `hops`,
    /// until the returned guard drops.
    pub fn record(self: &Arc<Self>, port: u16, hops: u8) -> Relayed {
        self.lock().insert(port, hops);
        Relayed {
            connections: self.clone(),
            port,
        }
    }

    /// The hop count a new client connection from `remote` to this gateway's `local` address
    /// starts with. A connection to `local` still being made counts too, with the highest count
    /// among them: erring long only matters to a chain of relays near the hop limit.
    pub fn hops_from(&self, remote: SocketAddr, local: SocketAddr) -> u8 {
        let recorded = self.lock().get(&remote.port()).copied();
        let connecting = || self.dialing.lock().get(&local)?.iter().copied().max();
        recorded
            .or_else(connecting)
            .map_or(0, |hops| hops.saturating_add(1))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u16, u8>> {
        self.hops_by_port.lock()
    }
}

/// A recorded backend connection; forgotten when dropped.
pub(crate) struct Relayed {
    connections: Arc<RelayedConnections>,
    port: u16,
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.port);
    }
}

/// A backend connection being made; forgotten when dropped.
pub(crate) struct Dialing {
    connections: Arc<RelayedConnections>,
    to: SocketAddr,
    hops: u8,
}

impl Drop for Dialing {
    fn drop(&mut self) {
        let mut dialing = self.connections.dialing.lock();
        if let Some(all) = dialing.get_mut(&self.to) {
            if let Some(i) = all.iter().position(|h| *h == self.hops) {
                all.swap_remove(i);
            }
            if all.is_empty() {
                dialing.remove(&self.to);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_relayed_connection_starts_one_hop_further() {
        let relayed = Arc::new(RelayedConnections::default());
        let import = addr(7000);
        assert_eq!(relayed.hops_from(addr(40000), import), 0);
        let guard = relayed.record(40000, 3);
        assert_eq!(relayed.hops_from(addr(40000), import), 4);
        assert_eq!(relayed.hops_from(addr(40001), import), 0);
        drop(guard);
        assert_eq!(relayed.hops_from(addr(40000), import), 0);
        let _max = relayed.record(1, u8::MAX);
        assert_eq!(relayed.hops_from(addr(1), import), u8::MAX);
    }

    #[test]
    fn a_connection_accepted_before_its_port_is_recorded_counts_by_destination() {
        let relayed = Arc::new(RelayedConnections::default());
        let import = addr(7000);
        let first = relayed.dialing(import, 2);
        let second = relayed.dialing(import, 5);
        assert_eq!(relayed.hops_from(addr(40000), import), 6);
        assert_eq!(relayed.hops_from(addr(40000), addr(7001)), 0);
        drop(second);
        assert_eq!(relayed.hops_from(addr(40000), import), 3);
        // Once connected, the port decides.
        let _connected = relayed.record(40000, 2);
        drop(first);
        assert_eq!(relayed.hops_from(addr(40000), import), 3);
        assert_eq!(relayed.hops_from(addr(40002), import), 0);
    }
}
