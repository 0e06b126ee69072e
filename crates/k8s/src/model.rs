//! Feeding the gateway's model from the cluster: the same [`ControlPlane`] standalone mode
//! fills from its store, so policy, load balancing and the data plane do not know which source
//! they run on.

use clusterlink_api::kubernetes::{KubeAccessPolicy, KubePeer, KubePrivilegedAccessPolicy};
use clusterlink_api::{Kind, Object, ObjectKey, Port};
use clusterlink_gateway::model::ControlPlane;

use crate::convert;
use crate::reconcile::{Change, World, assign_target_ports};

/// The model objects the cluster describes, translated to what the data plane acts on there:
/// - an import listens on its target port (its Service maps the client-facing port to it), and
///   only an import that has one recorded and uncontested is served;
/// - an export without `host` dials its Service by cluster DNS name.
///
/// Objects that fail validation are left out; their status says why.
pub fn objects(
    world: &World,
    peers: &[KubePeer],
    policies: &[KubeAccessPolicy],
    privileged: &[KubePrivilegedAccessPolicy],
) -> Vec<Object> {
    let mut out: Vec<Object> = Vec::new();
    out.extend(peers.iter().filter_map(|p| convert::peer(p).ok()));
    out.extend(
        policies
            .iter()
            .filter_map(|p| convert::access_policy(p).ok()),
    );
    out.extend(
        privileged
            .iter()
            .filter_map(|p| convert::privileged_access_policy(p).ok()),
    );
    for e in &world.exports {
        if let Ok(Object::Export(mut export)) = convert::export(e) {
            if export.spec.host.is_empty() {
                export.spec.host =
                    format!("{}.{}.svc", export.metadata.name, export.metadata.namespace);
            }
            out.push(Object::Export(export));
        }
    }
    for (import, target) in assign_target_ports(world) {
        let recorded = import.spec.target_port.map(Port::get);
        let (Ok(target), Ok(Object::Import(mut model))) = (target, convert::import(import)) else {
            continue;
        };
        // A port not yet written back is served once it is, so that the Service and the
        // listeners never disagree.
        if recorded != Some(target) {
            continue;
        }
        model.spec.port = Port::new(target).expect("target ports are never 0");
        out.push(Object::Import(model));
    }
    out
}

/// Status writes that show each Peer's reachability, as the control plane's probes found it.
pub fn peer_status_changes(control_plane: &ControlPlane, peers: &[KubePeer]) -> Vec<Change> {
    let mut changes = Vec::new();
    for peer in peers {
        let name = peer.metadata.name.clone().unwrap_or_default();
        let key = ObjectKey::new(Kind::Peer, clusterlink_api::SYSTEM_NAMESPACE, name.clone());
        let Some(reachable) = control_plane
            .get(&key)
            .and_then(|o| o.status()?.condition("PeerReachable").cloned())
        else {
            continue;
        };
        let mut conditions = peer
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let current = conditions.iter_mut().find(|c| c.type_ == reachable.type_);
        let same = current.as_ref().is_some_and(|c| {
            (c.status, &c.reason, &c.message)
                == (reachable.status, &reachable.reason, &reachable.message)
        });
        if same {
            continue;
        }
        match current {
            Some(c) => *c = reachable,
            None => conditions.push(reachable),
        }
        changes.push(Change::SetStatus {
            kind: Kind::Peer,
            namespace: peer.metadata.namespace.clone().unwrap_or_default(),
            name,
            conditions,
        });
    }
    changes
}
