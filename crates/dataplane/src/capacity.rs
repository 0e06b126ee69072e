//! What the data path may hold at once, so that no peer, export or loop can take a gateway down:
//!
//! - Descriptors: the process's open-file limit less [`Limits::descriptor_reserve`], which stays
//!   for the management API, the operations endpoint, the snapshot stream, probes and files. A
//!   client connection of an import takes two (itself and its peer connection, one of which
//!   stays with the peer connection if it is kept warm), a peer-port connection one, and the
//!   backend of a tunnel one more. Past the budget a connection is
//!   accepted and closed at once: left in the kernel's backlog it would wait for a descriptor
//!   while its client waits for an answer, and a loop's chain of tunnels would never unwind.
//! - Tunnels per peer (each direction apart), per export, and per peer on one export
//!   ([`Shares`]): a peer, an export or a loop between gateways that no hop count sees reaches its
//!   own bound and is refused there (`TunnelLimit`), which unwinds the loop, while other peers
//!   and exports go on. No share exceeds half of what the descriptor budget holds.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::Limits;

/// The data path's share of the process's descriptors.
pub(crate) struct Descriptors {
    available: Arc<Semaphore>,
    total: usize,
}

/// Descriptors held by one connection (and what it brings with it), until dropped.
pub(crate) struct HeldDescriptors(
    // Held for its drop, which gives the descriptors back.
    #[allow(dead_code)] OwnedSemaphorePermit,
);

impl HeldDescriptors {
    /// One of these descriptors, held apart (for a connection that outlives the rest).
    pub fn split_one(&mut self) -> Option<HeldDescriptors> {
        self.0.split(1).map(HeldDescriptors)
    }
}

impl Descriptors {
    /// The budget for a process whose open-file limit is `open_files`: that less the reserve,
    /// and at least half of it, for a process started with a small limit.
    pub fn for_open_file_limit(open_files: u64, limits: &Limits) -> Descriptors {
        let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
        let total = open_files
            .saturating_sub(limits.descriptor_reserve)
            .max(open_files / 2)
            .min(Semaphore::MAX_PERMITS);
        Descriptors {
            available: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// The budget for this process, from its open-file limit now.
    pub fn of_this_process(limits: &Limits) -> Descriptors {
        let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        Descriptors::for_open_file_limit(open_files, limits)
    }

    /// `n` descriptors, if the budget has them.
    pub fn take(&self, n: u32) -> Option<HeldDescriptors> {
        self.available
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(HeldDescriptors)
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// What one peer, one export, and one peer on one export may hold of the data path: the
/// configured bounds, and never more than a share of the descriptor budget. A tunnel takes two
/// descriptors on either side; one peer or one export gets at most half the tunnels the budget
/// holds, and one peer at most half of an export's, so another always has room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shares {
    pub tunnels_per_peer: usize,
    pub tunnels_per_export: usize,
    pub tunnels_per_peer_export: usize,
    /// Authenticated connections one peer holds on the peer port: one per tunnel, and those
    /// each of its gateways (up to 16: replicas, a Deployment) keeps idle for its next tunnels.
    pub connections_per_peer: usize,
}

impl Shares {
    pub fn new(limits: &Limits, descriptors: &Descriptors) -> Shares {
        let half_the_tunnels = (descriptors.total() / 4).max(1);
        let tunnels_per_peer = limits.tunnels_per_peer.min(half_the_tunnels);
        let tunnels_per_export = limits.tunnels_per_export.min(half_the_tunnels);
        Shares {
            tunnels_per_peer,
            tunnels_per_export,
            tunnels_per_peer_export: (tunnels_per_export / 2).clamp(1, tunnels_per_peer),
            connections_per_peer: (tunnels_per_peer + 16 * limits.pool_idle_per_gateway)
                .min(half_the_tunnels),
        }
    }
}

/// Open tunnels by name (a peer's, an export's), each up to a limit.
pub(crate) struct TunnelCounts {
    limit: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One tunnel's place among its peer's or export's; given back when dropped.
pub(crate) struct TunnelSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    name: String,
}

impl TunnelCounts {
    pub fn new(limit: usize) -> TunnelCounts {
        TunnelCounts {
            limit,
            open: Arc::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for one more tunnel of `name`, unless it holds its limit.
    pub fn enter(&self, name: &str) -> Option<TunnelSlot> {
        let mut open = self.open.lock();
        let count = open.entry(name.to_string()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(TunnelSlot {
            open: self.open.clone(),
            name: name.to_string(),
        })
    }
}

/// The tunnels an exporting gateway serves: per requesting peer, per export, and per peer on
/// one export.
pub(crate) struct ServedTunnels {
    peers: TunnelCounts,
    exports: TunnelCounts,
    pairs: TunnelCounts,
}

/// One served tunnel's places; given back when dropped.
pub(crate) struct ServedSlots {
    _peer: TunnelSlot,
    _export: TunnelSlot,
    _pair: TunnelSlot,
}

impl ServedTunnels {
    pub fn new(shares: &Shares) -> ServedTunnels {
        ServedTunnels {
            peers: TunnelCounts::new(shares.tunnels_per_peer),
            exports: TunnelCounts::new(shares.tunnels_per_export),
            pairs: TunnelCounts::new(shares.tunnels_per_peer_export),
        }
    }

    /// Places for one more tunnel of `peer` to `export`, or what holds as many as it may.
    pub fn enter(&self, peer: &str, export: &str) -> Result<ServedSlots, String> {
        let full =
            |what: String, limit: usize| format!("{what} holds {limit} tunnels, as many as it may");
        let peer_slot = self
            .peers
            .enter(peer)
            .ok_or_else(|| full(format!("peer {peer}"), self.peers.limit))?;
        let export_slot = self
            .exports
            .enter(export)
            .ok_or_else(|| full(format!("export {export}"), self.exports.limit))?;
        // Names hold no spaces: the pair's key is unambiguous.
        let pair_slot = self
            .pairs
            .enter(&format!("{peer} {export}"))
            .ok_or_else(|| full(format!("peer {peer} on export {export}"), self.pairs.limit))?;
        Ok(ServedSlots {
            _peer: peer_slot,
            _export: export_slot,
            _pair: pair_slot,
        })
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_the_reserve_or_half() {
        let l = Limits::DEFAULT;
        assert_eq!(
            Descriptors::for_open_file_limit(20_000, &l).total(),
            20_000 - l.descriptor_reserve
        );
        // A small limit still leaves the data path half.
        assert_eq!(Descriptors::for_open_file_limit(1024, &l).total(), 512);
        assert!(Descriptors::for_open_file_limit(u64::MAX, &l).total() > 0);
    }

    #[test]
    fn no_peer_or_export_takes_more_than_its_share_of_the_budget() {
        let l = Limits::DEFAULT;
        let roomy = Shares::new(&l, &Descriptors::for_open_file_limit(1 << 20, &l));
        assert_eq!(roomy.tunnels_per_peer, l.tunnels_per_peer);
        assert_eq!(roomy.tunnels_per_export, l.tunnels_per_export);
        assert_eq!(roomy.tunnels_per_peer_export, l.tunnels_per_export / 2);
        // 4,096 descriptors: 3,072 for the data path, 1,536 tunnels, 768 for one peer.
        let tight = Shares::new(&l, &Descriptors::for_open_file_limit(4096, &l));
        assert_eq!(tight.tunnels_per_peer, 768);
        assert_eq!(tight.tunnels_per_peer_export, 384);
        assert!(tight.connections_per_peer <= 768);
        // A bound of one still lets one tunnel through.
        let one = Limits {
            tunnels_per_export: 1,
            ..l
        };
        let shares = Shares::new(&one, &Descriptors::for_open_file_limit(4096, &l));
        assert_eq!(shares.tunnels_per_peer_export, 1);
    }

    #[test]
    fn one_peer_never_fills_an_export_alone() {
        let shares = Shares {
            tunnels_per_peer: 100,
            tunnels_per_export: 4,
            tunnels_per_peer_export: 2,
            connections_per_peer: 100,
        };
        let served = ServedTunnels::new(&shares);
        let mine: Vec<_> = (0..2)
            .map(|_| served.enter("p1", "ns/e").unwrap())
            .collect();
        let refused = served.enter("p1", "ns/e").err().unwrap();
        assert!(refused.contains("peer p1 on export ns/e"), "{refused}");
        // Another peer still has room, and p1 on another export.
        assert!(served.enter("p2", "ns/e").is_ok());
        assert!(served.enter("p1", "ns/other").is_ok());
        drop(mine);
        assert!(served.enter("p1", "ns/e").is_ok());
    }

    #[test]
    fn descriptors_come_back_when_dropped() {
        let d = Descriptors::for_open_file_limit(4, &Limits::DEFAULT);
        let mut two = d.take(2).unwrap();
        assert!(d.take(1).is_none());
        // A kept connection holds one of them on its own.
        let kept = two.split_one().unwrap();
        drop(two);
        assert!(d.take(2).is_none());
        assert!(d.take(1).is_some());
        drop(kept);
        assert!(d.take(2).is_some());
    }

    #[test]
    fn each_name_has_its_limit_and_gets_places_back() {
        let counts = TunnelCounts::new(2);
        let first = counts.enter("server1").unwrap();
        let second = counts.enter("server1").unwrap();
        assert!(counts.enter("server1").is_none());
        assert!(counts.enter("server2").is_some());
        drop(first);
        assert!(counts.enter("server1").is_some());
        drop(second);
        assert!(
            counts.open.lock().is_empty(),
            "names without tunnels are forgotten"
        );
    }
}
