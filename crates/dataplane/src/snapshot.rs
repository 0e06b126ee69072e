//! The data plane's one input: an immutable [`Snapshot`] of the objects it acts on, rebuilt
//! whenever they change and then only read. A connection takes the current snapshot once and
//! decides everything from it, with no locks and no calls back into the control plane.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use clusterlink_api::clients::ClientHosts;
use clusterlink_api::{ImportSource, LbScheme, Object, ObjectKey, Objects, ServiceNaming};
use tokio::sync::watch;

use crate::policy::PolicyEngine;
use crate::tunnel::ExportRef;

/// A peer as the data plane sees it.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub gateways: Vec<(String, u16)>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ExportEntry {
    pub host: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct ImportEntry {
    pub port: u16,
    pub sources: Vec<ImportSource>,
    pub lb_scheme: LbScheme,
    pub labels: BTreeMap<String, String>,
}

/// An immutable view of everything the data plane acts on.
pub struct Snapshot {
    pub local_peer: String,
    pub local_labels: BTreeMap<String, String>,
    pub peers: HashMap<String, PeerEntry>,
    pub exports: HashMap<ExportRef, ExportEntry>,
    pub imports: BTreeMap<ObjectKey, ImportEntry>,
    pub policy: PolicyEngine,
    pub client_hosts: Arc<ClientHosts>,
}

impl Snapshot {
    pub fn build(
        local_peer: &str,
        local_labels: &BTreeMap<String, String>,
        objects: &Objects,
        client_hosts: Arc<ClientHosts>,
    ) -> Snapshot {
        let mut snapshot = Snapshot {
            local_peer: local_peer.to_string(),
            local_labels: local_labels.clone(),
            peers: HashMap::new(),
            exports: HashMap::new(),
            imports: BTreeMap::new(),
            policy: PolicyEngine::compile(objects.values()),
            client_hosts,
        };
        for (key, obj) in objects {
            match obj {
                Object::Peer(p) => {
                    let gateways = p
                        .spec
                        .gateways
                        .iter()
                        .map(|g| (g.host.clone(), g.port.get()))
                        .collect();
                    snapshot.peers.insert(
                        p.metadata.name.clone(),
                        PeerEntry {
                            gateways,
                            labels: p.metadata.labels.clone(),
                        },
                    );
                }
                Object::Export(e) => {
                    // Kubernetes exports arrive with their Service's cluster name and port
                    // already set; one whose port is still unknown cannot be served.
                    let Some(port) = e.spec.port else { continue };
                    let host = e.backend_host(ServiceNaming::Bare);
                    snapshot.exports.insert(
                        ExportRef {
                            namespace: e.metadata.namespace.clone(),
                            name: e.metadata.name.clone(),
                        },
                        ExportEntry {
                            host,
                            port: port.get(),
                            labels: e.metadata.labels.clone(),
                        },
                    );
                }
                Object::Import(i) => {
                    snapshot.imports.insert(
                        key.clone(),
                        ImportEntry {
                            port: i.spec.port.get(),
                            sources: i.spec.sources.clone(),
                            lb_scheme: i.spec.lb_scheme,
                            labels: i.metadata.labels.clone(),
                        },
                    );
                }
                Object::AccessPolicy(_) | Object::PrivilegedAccessPolicy(_) => {}
            }
        }
        snapshot
    }
}

/// Rebuilds the snapshot on every committed change of the objects or of the client hosts.
pub fn rebuild_on_change(
    local_peer: &str,
    local_labels: BTreeMap<String, String>,
    mut objects: watch::Receiver<Arc<Objects>>,
    mut hosts: watch::Receiver<Arc<ClientHosts>>,
) -> watch::Receiver<Arc<Snapshot>> {
    let local_peer = local_peer.to_string();
    let build = move |objects: &Objects, hosts: Arc<ClientHosts>| {
        Arc::new(Snapshot::build(&local_peer, &local_labels, objects, hosts))
    };
    let first = build(
        &objects.borrow_and_update(),
        hosts.borrow_and_update().clone(),
    );
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        // A source whose sender is gone never changes again; the snapshot follows the other.
        let mut hosts_open = true;
        loop {
            tokio::select! {
                changed = objects.changed() => if changed.is_err() { break },
                changed = hosts.changed(), if hosts_open => if changed.is_err() {
                    hosts_open = false;
                    continue;
                },
            }
            let snapshot = build(
                &objects.borrow_and_update(),
                hosts.borrow_and_update().clone(),
            );
            if tx.send(snapshot).is_err() {
                break;
            }
        }
    });
    rx
}
