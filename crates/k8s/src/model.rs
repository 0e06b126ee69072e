//! Feeding the gateway's model from the cluster: the same [`ControlPlane`] standalone mode
//! fills from its store, so policy, load balancing and the data plane do not know which source
//! they run on.

use std::collections::BTreeMap;

use clusterlink_api::catalog::EXPORT_LABEL;
use clusterlink_api::kubernetes::KubePeer;
use clusterlink_api::{
    ConditionReason, ConditionType, Export, ExportSpec, Kind, Object, Port, ServiceNaming,
};
use clusterlink_gateway::model::ControlPlane;
use k8s_openapi::api::core::v1::{Service, ServicePort};

use crate::convert;
use crate::reconcile::{
    Change, MANAGED_BY, MANAGED_BY_LABEL, World, assign_target_ports, refused, service_port,
    status_change,
};

/// The model objects the cluster describes, translated to what the data plane acts on there:
/// - an import listens on its target port (its Service maps the client-facing port to it), and
///   only an import that has one recorded and uncontested is served;
/// - an export without `host` dials its Service by cluster DNS name.
///
/// Objects that fail validation are left out; their status says why.
pub fn objects(world: &World) -> Vec<Object> {
    let mut out: Vec<Object> = Vec::new();
    out.extend(world.peers.iter().filter_map(|p| convert::peer(p).ok()));
    out.extend(
        world
            .access_policies
            .iter()
            .filter_map(|p| convert::access_policy(p).ok()),
    );
    out.extend(
        world
            .privileged_policies
            .iter()
            .filter_map(|p| convert::privileged_access_policy(p).ok()),
    );
    for e in &world.exports {
        if let Ok(Object::Export(mut export)) = convert::export(e) {
            // Without a port, the export serves its Service's one port; until there is one to
            // take (the Service exists, with a single port) it is not served.
            if export.spec.host.is_empty() && export.spec.port.is_none() {
                let service = world.services.iter().find(|s| {
                    s.metadata.namespace.as_deref() == Some(export.metadata.namespace.as_str())
                        && s.metadata.name.as_deref() == Some(export.metadata.name.as_str())
                });
                export.spec.port = service
                    .and_then(|s| service_port(s).ok())
                    .and_then(Port::new);
                if export.spec.port.is_none() {
                    continue;
                }
            }
            export.spec.host = export.backend_host(ServiceNaming::Cluster);
            out.push(Object::Export(export));
        }
    }
    // Services labelled for export, except where an Export of the same name says what to do.
    for service in &world.services {
        let named = world.mcs_api
            && world.service_exports.iter().any(|e| {
                e.metadata.namespace == service.metadata.namespace
                    && e.metadata.name == service.metadata.name
            });
        for export in labelled_exports(service, named) {
            let custom = world.exports.iter().any(|e| {
                e.metadata.namespace.as_deref() == Some(export.metadata.namespace.as_str())
                    && e.metadata.name.as_deref() == Some(export.metadata.name.as_str())
            });
            if !custom {
                out.push(Object::Export(export));
            }
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
        // Target ports come from TARGET_PORTS or a validated spec: never 0.
        let Some(port) = Port::new(target) else {
            continue;
        };
        model.spec.port = port;
        out.push(Object::Import(model));
    }
    out
}

/// The Exports a Service labelled [`EXPORT_LABEL`]` = "true"` (or `named` by a ServiceExport)
/// stands for: one per TCP port, named after the Service (with the port's name, or number, when
/// it has several), dialed by its cluster DNS name, and carrying the Service's labels for mirror
/// rules to select on. Services ClusterLink manages (an import's) are never exported: that would
/// offer back what was imported.
pub fn labelled_exports(service: &Service, named: bool) -> Vec<Export> {
    let meta = &service.metadata;
    let labels = meta.labels.clone().unwrap_or_default();
    if !(named || labels.get(EXPORT_LABEL).map(String::as_str) == Some("true"))
        || labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
    {
        return Vec::new();
    }
    let (Some(name), Some(namespace)) = (&meta.name, &meta.namespace) else {
        return Vec::new();
    };
    let ports: Vec<&ServicePort> = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .collect();
    let several = ports.len() > 1;
    ports
        .into_iter()
        .filter_map(|port| {
            let export_name = match (several, &port.name) {
                (false, _) => name.clone(),
                (true, Some(port_name)) if !port_name.is_empty() => format!("{name}-{port_name}"),
                (true, _) => format!("{name}-{}", port.port),
            };
            let mut export = Export::new(
                export_name,
                namespace.clone(),
                ExportSpec {
                    host: format!("{name}.{namespace}.svc"),
                    port: u16::try_from(port.port).ok().and_then(Port::new),
                },
            );
            export.metadata.labels = labels.clone();
            // A name or label the model refuses is left out, as an invalid Export would be.
            Object::Export(export.clone()).validate().ok()?;
            Some(export)
        })
        .collect()
}

/// Status writes that show each Peer's reachability as the control plane's probes found it, or
/// why a Peer the model refused is neither probed nor used.
pub fn peer_status_changes(control_plane: &ControlPlane, world: &World) -> Vec<Change> {
    let mut changes = Vec::new();
    for peer in &world.peers {
        let condition = match convert::peer(peer) {
            Err(errors) => refused(
                ConditionReason::Invalid,
                format!("the peer is not valid, so it is neither probed nor used: {errors}"),
            ),
            Ok(model) => {
                let probed = control_plane
                    .get(&model.key())
                    .and_then(|o| o.status()?.condition(ConditionType::PeerReachable).cloned());
                // Not probed yet: the status stays as it is until there is something to say.
                let Some(probed) = probed else { continue };
                probed
            }
        };
        changes.extend(status_change(
            Kind::Peer,
            &peer.metadata,
            peer.status.as_ref(),
            condition,
        ));
        changes.extend(peer_labels_change(control_plane, peer));
    }
    changes
}

/// The write that makes a Peer's `status.labels` what the peer last reported, if they differ.
fn peer_labels_change(control_plane: &ControlPlane, peer: &KubePeer) -> Option<Change> {
    let reported = convert::peer(peer)
        .ok()
        .and_then(|model| control_plane.get(&model.key()))
        .and_then(|o| o.status().map(|s| s.labels.clone()))
        .unwrap_or_default();
    let shown = peer
        .status
        .as_ref()
        .map(|s| s.labels.clone())
        .unwrap_or_default();
    if reported == shown {
        return None;
    }
    let mut labels: BTreeMap<String, Option<String>> = shown
        .into_keys()
        .filter(|k| !reported.contains_key(k))
        .map(|k| (k, None))
        .collect();
    labels.extend(reported.into_iter().map(|(k, v)| (k, Some(v))));
    Some(Change::SetPeerLabels {
        namespace: peer.metadata.namespace.clone().unwrap_or_default(),
        name: peer.metadata.name.clone().unwrap_or_default(),
        labels,
    })
}
