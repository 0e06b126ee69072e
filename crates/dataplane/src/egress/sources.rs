//! Which of an import's sources to try for a connection, in which order, and whether egress
//! policy lets the client reach each.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use clusterlink_api::{ImportSource, LbScheme, ObjectKey};

use clusterlink_api::attributes::Attributes;

use crate::health::PeerHealth;
use crate::policy::{PolicyDecision, export_attributes, peer_attributes, peer_labels};
use crate::snapshot::{ImportEntry, PeerEntry, Snapshot};

/// The sources in the order to try them for one connection: the import's scheme decides the
/// order, and sources on unreachable peers move to the end (still tried, in case health lags).
pub(super) fn source_order<'a>(
    import: &'a ImportEntry,
    next: &AtomicUsize,
    unreachable: impl Fn(&str) -> bool,
) -> Vec<&'a ImportSource> {
    let n = import.sources.len();
    let start = match import.lb_scheme {
        LbScheme::Static => 0,
        LbScheme::RoundRobin => next.fetch_add(1, Ordering::Relaxed) % n.max(1),
        LbScheme::Random => random_below(n),
    };
    let mut order: Vec<&ImportSource> = (0..n).map(|i| &import.sources[(start + i) % n]).collect();
    // A stable sort keeps the scheme's order within each group.
    order.sort_by_key(|s| unreachable(&s.peer));
    order
}

fn random_below(n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    // RandomState is seeded per process; hashing a counter spreads picks without a crate.
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(COUNTER.fetch_add(1, Ordering::Relaxed));
    (h.finish() % n as u64) as usize
}

pub(super) enum EgressRefusal {
    NoSuchPeer,
    Denied(PolicyDecision),
}

/// The egress decision for one source of an import, for a client with `client` attributes:
/// the source's peer and the decision that allows it, or why not.
pub(super) fn egress_decision<'a>(
    snapshot: &'a Snapshot,
    import: &ObjectKey,
    client: &Attributes,
    source: &ImportSource,
    health: &PeerHealth,
) -> Result<(&'a PeerEntry, PolicyDecision), EgressRefusal> {
    let peer = snapshot
        .peers
        .get(&source.peer)
        .ok_or(EgressRefusal::NoSuchPeer)?;
    let mut src = client.clone();
    peer_attributes(&mut src, &snapshot.local_peer, &snapshot.local_labels);
    let mut dst = Attributes::new();
    let labels = peer_labels(&health.reported_labels(&source.peer), &peer.labels);
    peer_attributes(&mut dst, &source.peer, &labels);
    // The importing side cannot see the export's labels; as in the reference ClusterLink, the
    // import's own labels stand for them, so `to` can select imports by label on egress.
    let no_labels = Default::default();
    let import_labels = snapshot
        .imports
        .get(import)
        .map_or(&no_labels, |i| &i.labels);
    export_attributes(
        &mut dst,
        &source.export_name,
        &source.export_namespace,
        import_labels,
    );
    let decision = snapshot.policy.decide(&import.namespace, &src, &dst);
    if decision.allowed {
        Ok((peer, decision))
    } else {
        Err(EgressRefusal::Denied(decision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(scheme: LbScheme, n: usize) -> ImportEntry {
        ImportEntry {
            port: 1,
            sources: (0..n)
                .map(|i| ImportSource {
                    peer: format!("p{i}"),
                    export_name: "e".into(),
                    export_namespace: "d".into(),
                })
                .collect(),
            lb_scheme: scheme,
            labels: Default::default(),
        }
    }

    fn firsts(scheme: LbScheme, rounds: usize) -> Vec<String> {
        let imp = import(scheme, 3);
        let next = AtomicUsize::new(0);
        (0..rounds)
            .map(|_| source_order(&imp, &next, |_| false)[0].peer.clone())
            .collect()
    }

    #[test]
    fn round_robin_rotates_static_sticks_random_covers() {
        assert_eq!(firsts(LbScheme::RoundRobin, 4), ["p0", "p1", "p2", "p0"]);
        assert_eq!(firsts(LbScheme::Static, 3), ["p0", "p0", "p0"]);
        let seen: std::collections::BTreeSet<_> =
            firsts(LbScheme::Random, 200).into_iter().collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn unreachable_peers_are_tried_last_in_scheme_order() {
        let imp = import(LbScheme::Static, 4);
        let next = AtomicUsize::new(0);
        let order: Vec<_> = source_order(&imp, &next, |p| p == "p0" || p == "p2")
            .iter()
            .map(|s| s.peer.as_str())
            .collect();
        assert_eq!(order, ["p1", "p3", "p0", "p2"]);
    }

    #[test]
    fn every_order_tries_every_source_once() {
        for scheme in [LbScheme::RoundRobin, LbScheme::Static, LbScheme::Random] {
            let imp = import(scheme, 4);
            let next = AtomicUsize::new(7);
            let mut order: Vec<_> = source_order(&imp, &next, |_| false)
                .iter()
                .map(|s| s.peer.clone())
                .collect();
            order.sort();
            assert_eq!(order, ["p0", "p1", "p2", "p3"]);
        }
    }
}
