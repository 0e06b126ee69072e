//! The data plane's one input: an immutable [`Snapshot`] of the objects it acts on, rebuilt
//! whenever they change and then only read. A connection takes the current snapshot once and
//! decides everything from it, with no locks and no calls back into the control plane.

use std::collections::BTreeMap;
use std::sync::Arc;

use clusterlink_api::clients::ClientHosts;
use clusterlink_api::{
    ImportSource, Kind, LbScheme, Object, ObjectKey, Objects, PeerProtocol, ServiceNaming,
    SharedMap,
};
use tokio::sync::watch;

use crate::policy::PolicyEngine;
use crate::tunnel::ExportRef;

/// A peer as the data plane sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerEntry {
    /// Empty for a peer reached only over the link it dials here.
    pub gateways: Vec<(String, u16)>,
    /// Keep a link dialed to the peer (`dataplane::link`).
    pub dial: bool,
    pub labels: BTreeMap<String, String>,
    /// What its gateways speak: this project's protocol, or the Go ClusterLink's (`go_tunnel`).
    pub protocol: PeerProtocol,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportEntry {
    pub host: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImportEntry {
    pub port: u16,
    pub sources: Vec<ImportSource>,
    pub lb_scheme: LbScheme,
    pub labels: BTreeMap<String, String>,
}

/// An immutable view of everything the data plane acts on. Its maps share structure with the
/// snapshot before, so following a change costs that change, not the configuration.
#[derive(Clone)]
pub struct Snapshot {
    pub local_peer: String,
    pub local_labels: BTreeMap<String, String>,
    pub peers: SharedMap<String, PeerEntry>,
    pub exports: SharedMap<ExportRef, ExportEntry>,
    pub imports: SharedMap<ObjectKey, ImportEntry>,
    pub policy: Arc<PolicyEngine>,
    pub client_hosts: Arc<ClientHosts>,
}

impl Snapshot {
    pub fn build(
        local_peer: &str,
        local_labels: &BTreeMap<String, String>,
        objects: &Objects,
        client_hosts: Arc<ClientHosts>,
    ) -> Snapshot {
        let empty = Snapshot {
            local_peer: local_peer.to_string(),
            local_labels: local_labels.clone(),
            peers: SharedMap::new(),
            exports: SharedMap::new(),
            imports: SharedMap::new(),
            policy: Arc::new(PolicyEngine::compile([])),
            client_hosts,
        };
        empty.follow(&Objects::new(), objects)
    }

    /// This snapshot, built from `before`, brought to `after`: only the objects that differ are
    /// looked at (the two versions share the rest), and the policies are compiled again only
    /// when one of them changed.
    pub fn follow(&self, before: &Objects, after: &Objects) -> Snapshot {
        let mut next = self.clone();
        let mut policies_changed = false;
        for change in before.differences(after) {
            let key = change.key;
            match key.kind {
                Kind::Peer => {
                    let entry = match change.new {
                        Some(Object::Peer(p)) => Some(PeerEntry {
                            gateways: p
                                .spec
                                .gateways
                                .iter()
                                .map(|g| (g.host.clone(), g.port.get()))
                                .collect(),
                            dial: p.spec.dial,
                            labels: p.metadata.labels.clone(),
                            protocol: p.spec.protocol,
                        }),
                        _ => None,
                    };
                    set(&mut next.peers, key.name.clone(), entry);
                }
                Kind::Export => {
                    // Kubernetes exports arrive with their Service's cluster name and port
                    // already set; one whose port is still unknown cannot be served.
                    let entry = match change.new {
                        Some(Object::Export(e)) => e.spec.port.map(|port| ExportEntry {
                            host: e.backend_host(ServiceNaming::Bare),
                            port: port.get(),
                            labels: e.metadata.labels.clone(),
                        }),
                        _ => None,
                    };
                    let export = ExportRef {
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                    };
                    set(&mut next.exports, export, entry);
                }
                Kind::Import => {
                    let entry = match change.new {
                        Some(Object::Import(i)) => Some(ImportEntry {
                            port: i.spec.port.get(),
                            sources: i.spec.sources.clone(),
                            lb_scheme: i.spec.lb_scheme,
                            labels: i.metadata.labels.clone(),
                        }),
                        _ => None,
                    };
                    set(&mut next.imports, key.clone(), entry);
                }
                Kind::AccessPolicy | Kind::PrivilegedAccessPolicy => policies_changed = true,
            }
        }
        if policies_changed {
            // Objects sort by kind first, so each policy kind is one range, read without the rest.
            let policies = [Kind::PrivilegedAccessPolicy, Kind::AccessPolicy]
                .into_iter()
                .flat_map(|kind| {
                    after
                        .range_from(&ObjectKey::new(kind, "", ""))
                        .take_while(move |(k, _)| k.kind == kind)
                        .map(|(_, o)| o)
                });
            next.policy = Arc::new(PolicyEngine::compile(policies));
        }
        next
    }
}

/// Sets `key` to `entry`, or removes it when there is none.
fn set<K: Ord + Clone, V>(map: &mut SharedMap<K, V>, key: K, entry: Option<V>) {
    match entry {
        Some(entry) => drop(map.insert(key, entry)),
        None => drop(map.remove(&key)),
    }
}

/// The snapshot, following every committed change of the objects or of the client hosts.
///
/// Each change is applied to the previous snapshot by the objects that differ
/// ([`Snapshot::follow`]). The objects' version is taken out of the watch at once, so the model's
/// writer never waits for a snapshot to be brought up to date, and changes that come while one
/// is applied are applied together next.
pub fn follow_changes(
    local_peer: &str,
    local_labels: BTreeMap<String, String>,
    mut objects: watch::Receiver<Arc<Objects>>,
    mut hosts: watch::Receiver<Arc<ClientHosts>>,
) -> watch::Receiver<Arc<Snapshot>> {
    let mut seen = objects.borrow_and_update().clone();
    let mut current = Arc::new(Snapshot::build(
        local_peer,
        &local_labels,
        &seen,
        hosts.borrow_and_update().clone(),
    ));
    let (tx, rx) = watch::channel(current.clone());
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
            let latest = objects.borrow_and_update().clone();
            let mut next = current.follow(&seen, &latest);
            next.client_hosts = hosts.borrow_and_update().clone();
            (seen, current) = (latest, Arc::new(next));
            if tx.send(current.clone()).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use clusterlink_api::attributes::Attributes;

    use super::*;

    fn object(yaml: &str) -> Object {
        let yaml = format!("apiVersion: clusterlink.net/v1alpha1\n{yaml}");
        clusterlink_api::parse_manifest(&yaml, "default").unwrap()
    }

    fn put(objects: &mut Objects, obj: Object) {
        objects.insert(obj.key(), obj);
    }

    fn allows(snapshot: &Snapshot) -> bool {
        let none = Attributes::new();
        snapshot.policy.decide("default", &none, &none).allowed
    }

    /// What a snapshot built from scratch holds, to compare a followed one with.
    fn assert_same(followed: &Snapshot, built: &Snapshot) {
        assert_eq!(followed.peers, built.peers);
        assert_eq!(followed.exports, built.exports);
        assert_eq!(followed.imports, built.imports);
        assert_eq!(allows(followed), allows(built));
    }

    #[test]
    fn a_followed_snapshot_holds_what_a_fresh_build_would() {
        let mut objects = Objects::new();
        for i in 0..300 {
            put(
                &mut objects,
                object(&format!(
                    "kind: Import\nmetadata: {{name: svc-{i}}}\n\
                     spec: {{port: {}, sources: [{{peer: p1, exportName: svc-{i}, exportNamespace: default}}]}}",
                    2000 + i
                )),
            );
        }
        put(
            &mut objects,
            object("kind: Peer\nmetadata: {name: p1}\nspec: {gateways: [{host: a, port: 443}]}"),
        );
        put(
            &mut objects,
            object("kind: Export\nmetadata: {name: db}\nspec: {host: db.local, port: 5432}"),
        );
        let labels = BTreeMap::from([("site".to_string(), "eu".to_string())]);
        let first = Snapshot::build("me", &labels, &objects, Arc::default());
        let db = ExportRef {
            namespace: "default".into(),
            name: "db".into(),
        };
        let export = first.exports.get(&db).unwrap();
        assert_eq!((export.host.as_str(), export.port), ("db.local", 5432));
        assert_eq!(first.peers.get("p1").unwrap().gateways, [("a".into(), 443)]);

        let steps: [fn(&mut Objects); 3] = [
            // An import changes its port, another goes, a third comes.
            |o| {
                put(
                    o,
                    object(
                        "kind: Import\nmetadata: {name: svc-7}\n\
                         spec: {port: 9999, sources: [{peer: p2, exportName: x, exportNamespace: default}]}",
                    ),
                );
                o.remove(&ObjectKey::new(Kind::Import, "default", "svc-100"));
                put(
                    o,
                    object(
                        "kind: Import\nmetadata: {name: new}\nspec: {port: 7000, sources: [{peer: p1, exportName: db, exportNamespace: default}]}",
                    ),
                );
            },
            // A peer moves and another joins; an allow-all policy arrives.
            |o| {
                put(
                    o,
                    object(
                        "kind: Peer\nmetadata: {name: p1}\nspec: {gateways: [{host: b, port: 8443}]}",
                    ),
                );
                put(
                    o,
                    object(
                        "kind: Peer\nmetadata: {name: p2}\nspec: {gateways: [{host: c, port: 443}]}",
                    ),
                );
                put(
                    o,
                    object(
                        "kind: AccessPolicy\nmetadata: {name: all}\n\
                         spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}",
                    ),
                );
            },
            // The export loses its port (as a Kubernetes export before its Service is known),
            // a peer goes, and the policy goes.
            |o| {
                let key = ObjectKey::new(Kind::Export, "default", "db");
                let Some(Object::Export(mut export)) = o.get(&key).cloned() else {
                    unreachable!("the export is there")
                };
                export.spec.port = None;
                o.insert(key, Object::Export(export));
                o.remove(&ObjectKey::new(
                    Kind::Peer,
                    clusterlink_api::SYSTEM_NAMESPACE,
                    "p1",
                ));
                o.remove(&ObjectKey::new(Kind::AccessPolicy, "default", "all"));
            },
        ];
        let (mut before, mut snapshot) = (objects, first);
        for (n, step) in steps.iter().enumerate() {
            let mut after = before.clone();
            step(&mut after);
            let followed = snapshot.follow(&before, &after);
            let built = Snapshot::build("me", &labels, &after, Arc::default());
            assert_same(&followed, &built);
            assert_eq!(followed.local_labels, labels, "step {n}");
            (before, snapshot) = (after, followed);
        }
        let moved = snapshot
            .imports
            .get(&ObjectKey::new(Kind::Import, "default", "svc-7"))
            .unwrap();
        assert_eq!((moved.port, moved.sources[0].peer.as_str()), (9999, "p2"));
        assert_eq!(
            snapshot.peers.get("p2").unwrap().gateways,
            [("c".into(), 443)]
        );
        assert!(!snapshot.peers.contains_key("p1"));
        assert_eq!(snapshot.imports.len(), 300);
        assert!(
            snapshot.exports.is_empty(),
            "an export without a port is not served"
        );
    }

    #[test]
    fn policies_are_compiled_again_only_when_one_changed() {
        let mut before = Objects::new();
        put(
            &mut before,
            object(
                "kind: AccessPolicy\nmetadata: {name: all}\n\
                 spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}",
            ),
        );
        let first = Snapshot::build("me", &BTreeMap::new(), &before, Arc::default());
        assert!(allows(&first));

        let mut after = before.clone();
        put(
            &mut after,
            object("kind: Peer\nmetadata: {name: p1}\nspec: {gateways: [{host: a, port: 443}]}"),
        );
        let followed = first.follow(&before, &after);
        assert!(Arc::ptr_eq(&first.policy, &followed.policy));

        let mut denied = after.clone();
        put(
            &mut denied,
            object(
                "kind: PrivilegedAccessPolicy\nmetadata: {name: none}\n\
                 spec: {action: deny, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}",
            ),
        );
        let followed = followed.follow(&after, &denied);
        assert!(!allows(&followed), "the privileged deny was compiled in");
    }
}
