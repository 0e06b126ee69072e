//! Worlds for the controller's tests, written as the YAML a person would read in a cluster.
#![allow(dead_code)]

use std::path::PathBuf;

use clusterlink_api::kubernetes::{
    KubeAccessPolicy, KubeExport, KubeImport, KubePeer, KubePrivilegedAccessPolicy,
};
use clusterlink_k8s::World;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;

pub const SYSTEM: &str = "clusterlink-system";

pub fn parse<T: DeserializeOwned>(yaml: &str) -> T {
    serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("test object: {e}\n{yaml}"))
}

/// An import created `minute` minutes after the first, so that age decides contested ports.
pub fn import(namespace: &str, name: &str, minute: u32, spec: &str) -> KubeImport {
    parse(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Import\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: uid-{namespace}-{name}\n  creationTimestamp: 2026-12-01T10:{minute:02}:00Z\nspec: {spec}\n"
    ))
}

/// A minimal valid import spec on `port`, with `extra` fields appended.
pub fn import_spec(port: u16, extra: &str) -> String {
    format!(
        "{{port: {port}, sources: [{{peer: server1, exportName: reviews, exportNamespace: default}}]{extra}}}"
    )
}

pub fn export(namespace: &str, name: &str, spec: &str, status: &str) -> KubeExport {
    parse(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  uid: uid-{namespace}-{name}\n  creationTimestamp: 2026-12-01T10:00:00Z\nspec: {spec}\n{status}"
    ))
}

/// A Service as the API server returns it: with a cluster IP and `labels`.
pub fn service(namespace: &str, name: &str, labels: &str) -> Service {
    parse(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels: {labels}\nspec:\n  type: ClusterIP\n  clusterIP: 10.96.0.17\n  ports: [{{port: 80, targetPort: 8080, protocol: TCP}}]\n"
    ))
}

/// An AccessPolicy of `spec` (YAML flow style).
pub fn access_policy(namespace: &str, name: &str, spec: &str) -> KubeAccessPolicy {
    parse(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: AccessPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    ))
}

pub fn privileged_policy(name: &str, spec: &str) -> KubePrivilegedAccessPolicy {
    parse(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: PrivilegedAccessPolicy\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    ))
}

pub fn peer(name: &str, spec: &str) -> KubePeer {
    parse(&format!(
        "apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {{name: {name}, namespace: {SYSTEM}}}\nspec: {spec}\n"
    ))
}

pub fn world() -> World {
    World {
        system_namespace: SYSTEM.into(),
        dataplane_labels: [
            (
                "app.kubernetes.io/name".to_string(),
                "cl-dataplane".to_string(),
            ),
            (
                "app.kubernetes.io/instance".to_string(),
                "server1".to_string(),
            ),
        ]
        .into(),
        dataplane_addresses: vec!["10.244.1.7".parse().unwrap(), "10.244.2.9".parse().unwrap()],
        reserved_ports: vec![4443],
        ..Default::default()
    }
}

/// Two imports whose names are taken by Services the controller did not create: one plain, one
/// labelled for adoption.
pub fn taken_and_adoptable_services() -> World {
    let mut world = world();
    world.imports = vec![
        import("shop", "taken", 1, &import_spec(80, ", targetPort: 20000")),
        import(
            "shop",
            "adoptable",
            2,
            &import_spec(80, ", targetPort: 20001"),
        ),
    ];
    world.services = vec![
        service("shop", "taken", "{app: legacy}"),
        service("shop", "adoptable", "{clusterlink.net/adopt: \"true\"}"),
    ];
    world
}

pub fn slices_of(changes: &[clusterlink_k8s::Change]) -> Vec<&EndpointSlice> {
    changes
        .iter()
        .filter_map(|c| match c {
            clusterlink_k8s::Change::ApplyEndpointSlice(s) => Some(s.as_ref()),
            _ => None,
        })
        .collect()
}

/// Compares `value` as YAML with `tests/snapshots/<name>.yaml`. With `UPDATE_SNAPSHOTS=1` the
/// file is (re)written instead; review the diff before committing it.
pub fn assert_snapshot<T: serde::Serialize>(name: &str, value: &T) {
    let actual = serde_yaml_ng::to_string(value).expect("serializable");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.yaml"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} differs from the plan (run with UPDATE_SNAPSHOTS=1 and review the diff if the change is intended):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}

/// What the API server would hold after `changes`: used to check that a converged world plans
/// nothing more (no write loops).
pub fn applied(mut world: World, changes: &[clusterlink_k8s::Change]) -> World {
    use clusterlink_api::Kind;
    use clusterlink_k8s::Change;
    for change in changes {
        match change {
            Change::SetTargetPort {
                namespace,
                name,
                port,
            } => {
                for i in &mut world.imports {
                    if key(&i.metadata) == (namespace.clone(), name.clone()) {
                        i.spec.target_port = clusterlink_api::Port::new(*port);
                    }
                }
            }
            Change::ApplyService(s) => {
                world
                    .services
                    .retain(|have| key(&have.metadata) != key(&s.metadata));
                world.services.push(s.as_ref().clone());
            }
            Change::ApplyEndpointSlice(s) => {
                world
                    .endpoint_slices
                    .retain(|have| key(&have.metadata) != key(&s.metadata));
                world.endpoint_slices.push(s.as_ref().clone());
            }
            Change::DeleteService { namespace, name } => world
                .services
                .retain(|s| key(&s.metadata) != (namespace.clone(), name.clone())),
            Change::DeleteEndpointSlice { namespace, name } => world
                .endpoint_slices
                .retain(|s| key(&s.metadata) != (namespace.clone(), name.clone())),
            Change::ApplyImport(import) => {
                let k = (
                    import.metadata.namespace.clone(),
                    import.metadata.name.clone(),
                );
                let kept = world
                    .imports
                    .iter()
                    .find(|i| key(&i.metadata) == k)
                    .and_then(|i| i.spec.target_port);
                world.imports.retain(|i| key(&i.metadata) != k);
                let mut resource = KubeImport::new(&k.1, import.spec.clone());
                resource.spec.target_port = kept;
                resource.metadata.namespace = Some(k.0.clone());
                resource.metadata.uid = Some(format!("uid-{}-{}", k.0, k.1));
                resource.metadata.creation_timestamp =
                    Some(serde_json::from_str("\"2026-12-01T11:00:00Z\"").unwrap());
                resource.metadata.labels = Some(import.metadata.labels.clone());
                resource.metadata.annotations = Some(import.metadata.annotations.clone());
                world.imports.push(resource);
            }
            Change::ApplyServiceImport(s) => {
                world
                    .service_imports
                    .retain(|have| key(&have.metadata) != key(&s.metadata));
                world.service_imports.push(s.as_ref().clone());
            }
            Change::DeleteServiceImport { namespace, name } => world
                .service_imports
                .retain(|s| key(&s.metadata) != (namespace.clone(), name.clone())),
            Change::DeleteImport { namespace, name } => world
                .imports
                .retain(|i| key(&i.metadata) != (namespace.clone(), name.clone())),
            Change::SetStatus {
                kind,
                namespace,
                name,
                conditions,
            } => {
                let status = Some(clusterlink_api::Status {
                    conditions: conditions.clone(),
                    labels: Default::default(),
                });
                let k = (namespace.clone(), name.clone());
                match kind {
                    Kind::Import => set_status(&mut world.imports, &k, status, |o| &mut o.status),
                    Kind::Export => set_status(&mut world.exports, &k, status, |o| &mut o.status),
                    Kind::Peer => set_status(&mut world.peers, &k, status, |o| &mut o.status),
                    Kind::AccessPolicy => {
                        set_status(&mut world.access_policies, &k, status, |o| &mut o.status)
                    }
                    Kind::PrivilegedAccessPolicy => {
                        set_status(&mut world.privileged_policies, &k, status, |o| {
                            &mut o.status
                        })
                    }
                }
            }
            Change::SetPeerLabels {
                namespace,
                name,
                labels,
            } => {
                let k = (namespace.clone(), name.clone());
                for peer in world.peers.iter_mut().filter(|p| key(&p.metadata) == k) {
                    let shown = &mut peer.status.get_or_insert_with(Default::default).labels;
                    for (label, value) in labels {
                        match value {
                            Some(v) => shown.insert(label.clone(), v.clone()),
                            None => shown.remove(label),
                        };
                    }
                }
            }
        }
    }
    world
}

fn key(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fn set_status<K: kube::Resource>(
    objects: &mut [K],
    k: &(String, String),
    status: Option<clusterlink_api::Status>,
    slot: impl Fn(&mut K) -> &mut Option<clusterlink_api::Status>,
) {
    for o in objects.iter_mut().filter(|o| key(o.meta()) == *k) {
        *slot(o) = status.clone();
    }
}

/// The status write the plan makes for the named object: its kind, namespace and last condition.
pub fn status_set_for(
    changes: &[clusterlink_k8s::Change],
    name: &str,
) -> Option<(clusterlink_api::Kind, String, clusterlink_api::Condition)> {
    changes.iter().find_map(|c| match c {
        clusterlink_k8s::Change::SetStatus {
            kind,
            namespace,
            name: n,
            conditions,
        } if n == name => Some((*kind, namespace.clone(), conditions.last()?.clone())),
        _ => None,
    })
}

/// The status condition the plan sets for the named object, as `(status, reason)`.
pub fn condition_of(changes: &[clusterlink_k8s::Change], name: &str) -> Option<(String, String)> {
    status_set_for(changes, name).map(|(_, _, c)| (c.status.as_str().to_string(), c.reason))
}
