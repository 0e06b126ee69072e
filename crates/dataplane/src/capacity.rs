//! What the data path may hold at once, so that no peer, export or loop can take a gateway down:
//!
//! - Descriptors: the process's open-file limit less [`Limits::descriptor_reserve`], which stays
//!   for the management API, the operations endpoint, the snapshot stream, probes and files. A
//!   client connection of an import takes two (itself and its peer connection), a peer-port
//!   connection one, and the backend of a tunnel one more. Past the budget a connection is
//!   accepted and closed at once: left in the kernel's backlog it would wait for a descriptor
//!   while its client waits for an answer, and a loop's chain of tunnels would never unwind.
//! - Tunnels per peer (each direction apart) and per export: a peer, an export or a loop between
//!   gateways that no hop count sees reaches its own bound and is refused there (`TunnelLimit`),
//!   which unwinds the loop, while other peers and exports go on.

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
    fn descriptors_come_back_when_dropped() {
        let d = Descriptors::for_open_file_limit(4, &Limits::DEFAULT);
        let two = d.take(2).unwrap();
        assert!(d.take(1).is_none());
        drop(two);
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
