//! Loop detection within one gateway: when its ingress dials a backend that turns out to be one
//! of its own import listeners, the new client connection carries the tunnel's hop count into
//! the next tunnel ([`crate::tunnel::MAX_HOPS`] ends the loop).
//!
//! The ingress binds its backend socket before connecting and records the local port, so the
//! import listener finds the count however quickly it accepts. Ports are unique among this host's
//! live outgoing connections to one address; a stranger's connection from a port of the same
//! number (on another host) only starts one hop further along.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

#[derive(Default)]
pub(crate) struct RelayedConnections {
    hops_by_port: Mutex<HashMap<u16, u8>>,
}

impl RelayedConnections {
    /// Records that the backend connection from local `port` carries a tunnel that had `hops`,
    /// until the returned guard drops.
    pub fn record(self: &Arc<Self>, port: u16, hops: u8) -> Relayed {
        self.lock().insert(port, hops);
        Relayed {
            connections: self.clone(),
            port,
        }
    }

    /// The hop count a new client connection from `port` starts with.
    pub fn hops_from(&self, port: u16) -> u8 {
        self.lock()
            .get(&port)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relayed_connection_starts_one_hop_further() {
        let relayed = Arc::new(RelayedConnections::default());
        assert_eq!(relayed.hops_from(40000), 0);
        let guard = relayed.record(40000, 3);
        assert_eq!(relayed.hops_from(40000), 4);
        assert_eq!(relayed.hops_from(40001), 0);
        drop(guard);
        assert_eq!(relayed.hops_from(40000), 0);
        let _max = relayed.record(1, u8::MAX);
        assert_eq!(relayed.hops_from(1), u8::MAX);
    }
}
