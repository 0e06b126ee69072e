//! The catalog this gateway offers each peer (`clusterlink_api::catalog`), and the catalogs
//! peers offer it.
//!
//! Offers travel with the health probes, so they cost nothing while nothing changes: every
//! health answer names the digest of the catalog the prober would get (`tunnel::CATALOG_HEADER`), and
//! the prober asks for the catalog itself (`GET /catalog`) only when that digest is not the one
//! it holds. A catalog is computed once per snapshot and peer, not once per probe.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use clusterlink_api::catalog::{Catalog, Offer};
use clusterlink_api::{Port, attributes::Attributes};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::policy::{export_attributes, peer_attributes, peer_labels};
use crate::snapshot::Snapshot;

/// Peers whose catalogs are kept at once: a fabric's peers, with room; past it the cache starts
/// over rather than grow with names a peer cannot choose anyway (they come from certificates).
const CACHED_PEERS: usize = 4096;

/// The exports of `snapshot` that `peer` (reporting `reported` labels about itself) could reach:
/// those its ingress policies allow for at least one client of that peer.
pub fn offers_for(snapshot: &Snapshot, peer: &str, reported: &BTreeMap<String, String>) -> Catalog {
    let administered = snapshot
        .peers
        .get(peer)
        .map(|p| p.labels.clone())
        .unwrap_or_default();
    let mut src = Attributes::new();
    peer_attributes(&mut src, peer, &peer_labels(reported, &administered));
    let mut offers = Vec::new();
    for (export, entry) in &snapshot.exports {
        let mut dst = Attributes::new();
        peer_attributes(&mut dst, &snapshot.local_peer, &snapshot.local_labels);
        export_attributes(&mut dst, &export.name, &export.namespace, &entry.labels);
        let Some(port) = Port::new(entry.port) else {
            continue;
        };
        if snapshot
            .policy
            .allows_some_client(&export.namespace, &src, &dst)
        {
            offers.push(Offer {
                namespace: export.namespace.clone(),
                name: export.name.clone(),
                port,
                labels: entry.labels.clone(),
            });
        }
    }
    offers.sort();
    Catalog { offers }
}

/// A catalog ready to send: its body and digest.
pub struct Offered {
    pub digest: String,
    pub body: Vec<u8>,
}

/// The catalogs computed for the current snapshot, by peer and the labels it reported.
#[derive(Default)]
pub struct CatalogCache {
    inner: Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    snapshot: Option<Arc<Snapshot>>,
    by_peer: HashMap<String, (BTreeMap<String, String>, Arc<Offered>)>,
}

impl CatalogCache {
    /// The catalog `peer` gets from `snapshot`, computed only if the snapshot or the labels it
    /// reports changed since it last asked.
    pub fn offered(
        &self,
        snapshot: &Arc<Snapshot>,
        peer: &str,
        reported: &BTreeMap<String, String>,
    ) -> Arc<Offered> {
        let mut cached = self.inner.lock();
        if !cached
            .snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, snapshot))
            || cached.by_peer.len() >= CACHED_PEERS
        {
            cached.snapshot = Some(snapshot.clone());
            cached.by_peer.clear();
        }
        if let Some((labels, offered)) = cached.by_peer.get(peer)
            && labels == reported
        {
            return offered.clone();
        }
        let body = serde_json::to_vec(&offers_for(snapshot, peer, reported)).unwrap_or_default();
        let digest = clusterlink_pki::authority::sha256_hex(&body);
        let offered = Arc::new(Offered { digest, body });
        cached
            .by_peer
            .insert(peer.to_string(), (reported.clone(), offered.clone()));
        offered
    }
}

pub use clusterlink_api::catalog::Catalogs;

/// The catalogs peers offered, with the digest each came with.
#[derive(Clone)]
pub struct Received {
    sender: Arc<watch::Sender<Arc<Catalogs>>>,
    digests: Arc<Mutex<HashMap<String, String>>>,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            sender: Arc::new(watch::channel(Arc::default()).0),
            digests: Arc::default(),
        }
    }
}

impl Received {
    pub fn watch(&self) -> watch::Receiver<Arc<Catalogs>> {
        self.sender.subscribe()
    }

    /// Whether `digest` is not the digest of what `peer` last sent.
    pub(crate) fn is_stale(&self, peer: &str, digest: &str) -> bool {
        self.digests.lock().get(peer).is_none_or(|d| d != digest)
    }

    pub(crate) fn set(&self, peer: &str, digest: String, catalog: Catalog) {
        self.digests.lock().insert(peer.to_string(), digest);
        self.sender.send_if_modified(|all| {
            if all.get(peer) == Some(&catalog) {
                return false;
            }
            Arc::make_mut(all).insert(peer.to_string(), catalog);
            true
        });
    }

    /// Forgets `peer`'s catalog: it is no longer a Peer here.
    pub(crate) fn remove(&self, peer: &str) {
        self.digests.lock().remove(peer);
        self.sender.send_if_modified(|all| {
            if !all.contains_key(peer) {
                return false;
            }
            Arc::make_mut(all).remove(peer);
            true
        });
    }
}
