//! What the cluster should hold, as a pure function of what it holds now.
//!
//! [`plan`] takes everything the controller watches ([`World`]) and returns the changes that
//! bring the cluster to the desired state ([`Change`]), in the order they are to be made. It does
//! no IO, so every rule here is tested by feeding it worlds; the controller only observes and
//! executes.
//!
//! The rules:
//! - Each valid Import gets a ClusterIP Service of its own name in its own namespace, on the
//!   import's `port`, whose endpoints are the data-plane pods on the import's `targetPort`. In the
//!   system namespace the Service selects the data-plane pods; elsewhere it has no selector and the
//!   controller writes its EndpointSlice, so the user's namespace needs no rights of any kind.
//! - A `targetPort` is unique across the cluster (every data-plane pod listens on all of them):
//!   the oldest import keeps a contested port; an import without one is given the lowest free
//!   port of [`TARGET_PORTS`], and the controller writes it back into the import.
//! - A Service the controller did not create is never changed. An import whose name is taken by
//!   one reports the conflict, unless the Service carries [`ADOPT_LABEL`]: then it is adopted.
//! - Managed Services and EndpointSlices with no import behind them are deleted, which frees the
//!   import's target port for the next import that needs one.
//! - An Export without `host` is the Service of its own name; `ExportValid` follows that Service.
//! - A policy the model refuses (a rule the schema cannot express) is not enforced, and its
//!   `PolicyValid` says so: a deny that silently did nothing would be worse than an error.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use clusterlink_api::kubernetes::{
    KubeAccessPolicy, KubeExport, KubeImport, KubePeer, KubePrivilegedAccessPolicy,
};
use clusterlink_api::{
    Condition, ConditionReason, ConditionStatus, ConditionType, FieldErrors, Kind, Object, Status,
};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde::Serialize;

use crate::convert;

const IMPORT_VALID: ConditionType = ConditionType::ImportValid;
const EXPORT_VALID: ConditionType = ConditionType::ExportValid;
const POLICY_VALID: ConditionType = ConditionType::PolicyValid;

/// `app.kubernetes.io/managed-by` value on every object the controller creates; with
/// [`IMPORT_LABEL`] it is how the controller tells its Services from everyone else's.
pub const MANAGED_BY: &str = "clusterlink";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// On managed Services and EndpointSlices: the import they serve.
pub const IMPORT_LABEL: &str = "clusterlink.net/import";
/// A Service labelled `clusterlink.net/adopt: "true"` may be taken over by the import of the
/// same name. Without it, an existing Service is never touched.
pub const ADOPT_LABEL: &str = "clusterlink.net/adopt";
/// EndpointSlices the controller writes name it here, as Kubernetes asks of slice managers.
pub const ENDPOINT_SLICE_MANAGER: &str = "controller.clusterlink.net";
/// The port name shared by an import's Service and its EndpointSlice (they are matched by name).
const PORT_NAME: &str = "tcp";

/// Where target ports are allocated: above the registered ports most servers use, below the
/// default NodePort range (30000–32767) and Linux's ephemeral ports (32768+), so a data-plane
/// listener never collides with a node port or with the port of an outgoing connection.
pub const TARGET_PORTS: RangeInclusive<u16> = 20000..=29999;

/// Everything the controller watches that decides what it writes.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Where the peer is deployed: imports here get a selector Service.
    pub system_namespace: String,
    /// Labels that select this peer's data-plane pods.
    pub dataplane_labels: BTreeMap<String, String>,
    /// Addresses of the ready data-plane pods: the endpoints of imports outside the system
    /// namespace.
    pub dataplane_addresses: Vec<IpAddr>,
    /// Ports the data-plane pods use themselves (the peer port): never a target port.
    pub reserved_ports: Vec<u16>,
    pub imports: Vec<KubeImport>,
    pub exports: Vec<KubeExport>,
    /// This peer's Peers (in the system namespace).
    pub peers: Vec<KubePeer>,
    pub access_policies: Vec<KubeAccessPolicy>,
    pub privileged_policies: Vec<KubePrivilegedAccessPolicy>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// What each peer offers, as the control plane's probes last fetched it.
    pub catalogs: std::sync::Arc<clusterlink_api::catalog::Catalogs>,
    /// Whether the Multi-Cluster Services API is turned on: ServiceExports export, and mirrored
    /// Imports publish ServiceImports.
    pub mcs_api: bool,
    pub service_exports: Vec<crate::mcs::ServiceExport>,
    /// The ServiceImports ClusterLink manages (labelled as its Services are).
    pub service_imports: Vec<crate::mcs::ServiceImport>,
}

/// One write to the cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Change {
    /// Record the allocated port in the import's `spec.targetPort`.
    SetTargetPort {
        namespace: String,
        name: String,
        port: u16,
    },
    /// Create or update (server-side apply) a managed Service.
    ApplyService(Box<Service>),
    DeleteService {
        namespace: String,
        name: String,
    },
    ApplyEndpointSlice(Box<EndpointSlice>),
    DeleteEndpointSlice {
        namespace: String,
        name: String,
    },
    /// Replace the object's status conditions (a condition's `lastTransitionTime` is carried over
    /// while its status stays the same; absent means "now").
    SetStatus {
        kind: Kind,
        namespace: String,
        name: String,
        conditions: Vec<Condition>,
    },
    /// Create or update (server-side apply) an Import a Peer's mirror rule asks for (without
    /// `targetPort`, which the controller allocates and writes back on its own).
    ApplyImport(Box<clusterlink_api::Import>),
    /// Delete a mirrored Import no peer offers any more.
    DeleteImport {
        namespace: String,
        name: String,
    },
    /// Create or update (server-side apply) the ServiceImport of a mirrored Import.
    ApplyServiceImport(Box<crate::mcs::ServiceImport>),
    DeleteServiceImport {
        namespace: String,
        name: String,
    },
    /// Show the labels a Peer reports about itself in its `status.labels`: each key set to its
    /// value, or removed where the value is `None`.
    SetPeerLabels {
        namespace: String,
        name: String,
        labels: BTreeMap<String, Option<String>>,
    },
}

/// The changes that bring the cluster from `world` to the desired state, in the order to make
/// them: target ports first (so a crash leaves allocations recorded), then Services and their
/// endpoints, deletions, and statuses last.
pub fn plan(world: &World) -> Vec<Change> {
    let mut target_ports = Vec::new();
    let mut objects = Vec::new();
    let mut statuses = Vec::new();
    let services: HashMap<(&str, &str), &Service> = world
        .services
        .iter()
        .map(|s| ((namespace_of(&s.metadata), name_of(&s.metadata)), s))
        .collect();
    let slices: HashMap<(&str, &str), &EndpointSlice> = world
        .endpoint_slices
        .iter()
        .filter(|s| is_managed(&s.metadata))
        .map(|s| ((namespace_of(&s.metadata), name_of(&s.metadata)), s))
        .collect();
    // Managed objects that an import still wants; the rest are deleted.
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();

    for (import, target) in assign_target_ports(world) {
        let (namespace, name) = (namespace_of(&import.metadata), name_of(&import.metadata));
        let condition = match target {
            Err(refusal) => refusal,
            Ok(target) => {
                if import.spec.target_port.map(|p| p.get()) != Some(target) {
                    target_ports.push(Change::SetTargetPort {
                        namespace: namespace.to_string(),
                        name: name.to_string(),
                        port: target,
                    });
                }
                let existing = services.get(&(namespace, name)).copied();
                match existing {
                    Some(s) if !is_managed(&s.metadata) && !is_adoptable(&s.metadata) => refused(
                        ConditionReason::ServiceConflict,
                        format!(
                            "Service {namespace}/{name} exists and is not managed by ClusterLink; \
                                 rename the import, delete the Service, or label it \
                                 {ADOPT_LABEL}=true to let ClusterLink manage it"
                        ),
                    ),
                    _ => {
                        wanted.insert((namespace.to_string(), name.to_string()));
                        let desired = import_service(world, import, target);
                        if existing.is_none_or(|s| !service_matches(s, &desired)) {
                            objects.push(Change::ApplyService(Box::new(desired)));
                        }
                        if namespace != world.system_namespace {
                            let desired = import_endpoint_slice(world, import, target);
                            let current = slices.get(&(namespace, name)).copied();
                            if current.is_none_or(|s| !slice_matches(s, &desired)) {
                                objects.push(Change::ApplyEndpointSlice(Box::new(desired)));
                            }
                        }
                        let where_ = if namespace == world.system_namespace {
                            "the data-plane pods".to_string()
                        } else {
                            format!("{} data-plane endpoint(s)", world.dataplane_addresses.len())
                        };
                        Condition::new(
                            IMPORT_VALID,
                            ConditionStatus::True,
                            ConditionReason::ServiceReady,
                            format!(
                                "Service {namespace}/{name} port {} forwards to {where_} on port {target}",
                                import.spec.port
                            ),
                        )
                    }
                }
            }
        };
        statuses.extend(status_change(
            Kind::Import,
            &import.metadata,
            import.status.as_ref(),
            condition,
        ));
    }

    for s in &world.services {
        let key = (namespace_of(&s.metadata), name_of(&s.metadata));
        if is_managed(&s.metadata) && !wanted.contains(&(key.0.to_string(), key.1.to_string())) {
            objects.push(Change::DeleteService {
                namespace: key.0.to_string(),
                name: key.1.to_string(),
            });
        }
    }
    for (&(namespace, name), _) in slices.iter().collect::<BTreeMap<_, _>>() {
        let outside_system = namespace != world.system_namespace;
        if !(outside_system && wanted.contains(&(namespace.to_string(), name.to_string()))) {
            objects.push(Change::DeleteEndpointSlice {
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        }
    }

    for export in sorted(&world.exports) {
        let condition = export_condition(export, &services);
        statuses.extend(status_change(
            Kind::Export,
            &export.metadata,
            export.status.as_ref(),
            condition,
        ));
    }

    for policy in sorted(&world.access_policies) {
        let condition = policy_condition(convert::access_policy(policy));
        statuses.extend(status_change(
            Kind::AccessPolicy,
            &policy.metadata,
            policy.status.as_ref(),
            condition,
        ));
    }
    for policy in sorted(&world.privileged_policies) {
        let condition = policy_condition(convert::privileged_access_policy(policy));
        statuses.extend(status_change(
            Kind::PrivilegedAccessPolicy,
            &policy.metadata,
            policy.status.as_ref(),
            condition,
        ));
    }

    target_ports
        .into_iter()
        .chain(mirror_changes(world))
        .chain(objects)
        .chain(service_import_changes(world))
        .chain(statuses)
        .collect()
}

/// Each import with its target port, or the condition that explains why it has none, oldest
/// import first.
pub(crate) fn assign_target_ports(world: &World) -> Vec<(&KubeImport, Result<u16, Condition>)> {
    let imports = sorted(&world.imports);
    let mut taken: HashMap<u16, String> = world
        .reserved_ports
        .iter()
        .map(|p| (*p, "the data plane itself".to_string()))
        .collect();
    let mut assigned: Vec<Result<Option<u16>, Condition>> = imports
        .iter()
        .map(|import| {
            convert::import(import).map_err(|errors| {
                refused(
                    ConditionReason::Invalid,
                    format!("the import is not valid: {errors}"),
                )
            })?;
            let Some(port) = import.spec.target_port.map(|p| p.get()) else {
                return Ok(None);
            };
            if let Some(owner) = taken.get(&port) {
                return Err(refused(
                    ConditionReason::TargetPortConflict,
                    format!(
                        "targetPort {port} is already used by {owner}; remove spec.targetPort to \
                         have one allocated, or choose another"
                    ),
                ));
            }
            taken.insert(port, format!("import {}", key_of(&import.metadata)));
            Ok(Some(port))
        })
        .collect();
    let mut free = TARGET_PORTS.filter(|p| !taken.contains_key(p));
    for slot in &mut assigned {
        if let Ok(None) = slot {
            *slot = match free.next() {
                Some(p) => Ok(Some(p)),
                None => Err(refused(
                    ConditionReason::NoFreeTargetPort,
                    format!(
                        "every port of {}–{} is in use; delete an unused import or set \
                         spec.targetPort outside that range",
                        TARGET_PORTS.start(),
                        TARGET_PORTS.end()
                    ),
                )),
            };
        }
    }
    imports
        .into_iter()
        .zip(assigned)
        .map(|(i, a)| {
            // Every import without a port was given one, or a refusal, in the loop above.
            let assigned = a.and_then(|p| {
                p.ok_or_else(|| {
                    refused(
                        ConditionReason::NoFreeTargetPort,
                        "no port was assigned".into(),
                    )
                })
            });
            (i, assigned)
        })
        .collect()
}

/// The port an export without `spec.port` takes from its Service: the Service's one port, or
/// why there is none to take.
/// The Imports Peers' mirror rules ask for ([`clusterlink_api::catalog::plan`]), as custom
/// resources to apply, and the mirrored ones to delete. Only Imports carrying the mirrored label
/// are ever changed.
fn mirror_changes(world: &World) -> Vec<Change> {
    use clusterlink_api::catalog::{self, MIRRORED_FROM_ANNOTATION};
    let mut objects = clusterlink_api::Objects::new();
    for peer in &world.peers {
        if let Ok(o) = convert::peer(peer) {
            objects.insert(o.key(), o);
        }
    }
    for import in &world.imports {
        if let Ok(mut o) = convert::import(import) {
            // The model drops annotations; this one is part of what mirroring compares.
            if let Some(from) = import
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIRRORED_FROM_ANNOTATION))
            {
                o.metadata_mut()
                    .annotations
                    .insert(MIRRORED_FROM_ANNOTATION.into(), from.clone());
            }
            objects.insert(o.key(), o);
        }
    }
    let planned = catalog::plan(&objects, &world.catalogs);
    let mut changes: Vec<Change> = planned
        .apply
        .into_iter()
        .map(|mut import| {
            import.spec.target_port = None;
            Change::ApplyImport(Box::new(import))
        })
        .collect();
    changes.extend(planned.delete.into_iter().map(|key| Change::DeleteImport {
        namespace: key.namespace,
        name: key.name,
    }));
    changes
}

/// The ServiceImport each mirrored Import publishes when the Multi-Cluster Services API is on:
/// `ClusterSetIP` at the address of the Import's Service, on the Import's port. ServiceImports
/// ClusterLink did not create are never touched; its own with no mirrored Import are deleted.
fn service_import_changes(world: &World) -> Vec<Change> {
    use crate::mcs::{ServiceImport, ServiceImportPort, ServiceImportSpec};
    if !world.mcs_api {
        return Vec::new();
    }
    let mut changes = Vec::new();
    let mut wanted = BTreeSet::new();
    for import in &world.imports {
        let labels = import.metadata.labels.clone().unwrap_or_default();
        if labels
            .get(clusterlink_api::catalog::MIRRORED_LABEL)
            .map(String::as_str)
            != Some("true")
        {
            continue;
        }
        let (namespace, name) = (namespace_of(&import.metadata), name_of(&import.metadata));
        // Published once the Import's Service has its address.
        let Some(ip) = world
            .services
            .iter()
            .filter(|s| is_managed(&s.metadata))
            .find(|s| namespace_of(&s.metadata) == namespace && name_of(&s.metadata) == name)
            .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None")
        else {
            continue;
        };
        let existing = world
            .service_imports
            .iter()
            .find(|s| namespace_of(&s.metadata) == namespace && name_of(&s.metadata) == name);
        if existing.is_some_and(|s| !is_managed(&s.metadata)) {
            continue;
        }
        wanted.insert((namespace.to_string(), name.to_string()));
        let spec = ServiceImportSpec {
            type_: "ClusterSetIP".into(),
            ips: vec![ip],
            ports: vec![ServiceImportPort {
                port: i32::from(import.spec.port.get()),
                protocol: Some("TCP".into()),
            }],
        };
        if existing.is_some_and(|s| s.spec == spec) {
            continue;
        }
        let mut desired = ServiceImport::new(name, spec);
        desired.metadata.namespace = Some(namespace.to_string());
        desired.metadata.labels = Some(
            [
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                (IMPORT_LABEL.to_string(), name.to_string()),
            ]
            .into(),
        );
        changes.push(Change::ApplyServiceImport(Box::new(desired)));
    }
    for s in &world.service_imports {
        let key = (
            namespace_of(&s.metadata).to_string(),
            name_of(&s.metadata).to_string(),
        );
        if is_managed(&s.metadata) && !wanted.contains(&key) {
            changes.push(Change::DeleteServiceImport {
                namespace: key.0,
                name: key.1,
            });
        }
    }
    changes
}

pub(crate) fn service_port(service: &Service) -> Result<u16, String> {
    let ports: Vec<u16> = service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    match ports[..] {
        [port] => Ok(port),
        [] => Err("has no port".into()),
        _ => Err(format!(
            "has several ports ({}): set spec.port to the one to export",
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn export_condition(export: &KubeExport, services: &HashMap<(&str, &str), &Service>) -> Condition {
    let (namespace, name) = (namespace_of(&export.metadata), name_of(&export.metadata));
    if let Err(errors) = convert::export(export) {
        return refused(
            ConditionReason::Invalid,
            format!("the export is not valid: {errors}"),
        );
    }
    if !export.spec.host.is_empty() {
        let port = export.spec.port.map_or(0, |p| p.get());
        return Condition::new(
            EXPORT_VALID,
            ConditionStatus::True,
            ConditionReason::HostSet,
            format!("connections go to {}:{port}", export.spec.host),
        );
    }
    match services.get(&(namespace, name)) {
        Some(s) if is_managed(&s.metadata) => Condition::new(
            EXPORT_VALID,
            ConditionStatus::False,
            ConditionReason::ServiceIsImport,
            format!(
                "Service {namespace}/{name} belongs to an import; exporting it would loop back \
                 into the fabric. Set spec.host to the service to export"
            ),
        ),
        Some(s) => {
            let port = match export.spec.port {
                Some(p) => Ok(p.get()),
                None => service_port(s),
            };
            match port {
                Ok(port) => Condition::new(
                    EXPORT_VALID,
                    ConditionStatus::True,
                    ConditionReason::ServiceFound,
                    format!("connections go to Service {namespace}/{name} port {port}"),
                ),
                Err(why) => Condition::new(
                    EXPORT_VALID,
                    ConditionStatus::False,
                    ConditionReason::ServicePortAmbiguous,
                    format!("Service {namespace}/{name} {why}"),
                ),
            }
        }
        None => Condition::new(
            EXPORT_VALID,
            ConditionStatus::False,
            ConditionReason::ServiceNotFound,
            format!(
                "no Service {namespace}/{name}: create it, or set spec.host to the address to \
                 export"
            ),
        ),
    }
}

fn policy_condition(converted: Result<Object, FieldErrors>) -> Condition {
    match converted {
        Err(errors) => refused(
            ConditionReason::Invalid,
            format!("the policy is not valid and is not enforced: {errors}"),
        ),
        Ok(_) => Condition::new(
            POLICY_VALID,
            ConditionStatus::True,
            ConditionReason::Enforced,
            "the policy is part of every decision in its scope".to_string(),
        ),
    }
}

/// A `False` condition; [`status_change`] names its type after the object's kind.
pub(crate) fn refused(reason: ConditionReason, message: String) -> Condition {
    Condition {
        type_: String::new(),
        status: ConditionStatus::False,
        reason: reason.as_str().to_string(),
        message,
        last_transition_time: None,
        observed_generation: None,
    }
}

/// The status write needed to show `condition`, or none if the object already shows it.
pub(crate) fn status_change(
    kind: Kind,
    meta: &ObjectMeta,
    current: Option<&Status>,
    mut condition: Condition,
) -> Option<Change> {
    condition.type_ = kind.condition().as_str().to_string();
    condition.observed_generation = meta.generation;
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut conditions = existing.to_vec();
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(c) => {
            let same = c.status == condition.status
                && c.reason == condition.reason
                && c.message == condition.message
                && c.observed_generation == condition.observed_generation;
            if same {
                return None;
            }
            if c.status == condition.status {
                condition.last_transition_time = c.last_transition_time.clone();
            }
            *c = condition;
        }
        None => conditions.push(condition),
    }
    Some(Change::SetStatus {
        kind,
        namespace: namespace_of(meta).to_string(),
        name: name_of(meta).to_string(),
        conditions,
    })
}

fn import_service(world: &World, import: &KubeImport, target: u16) -> Service {
    let in_system = namespace_of(&import.metadata) == world.system_namespace;
    Service {
        metadata: managed_meta(import, BTreeMap::new()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                protocol: Some("TCP".into()),
                port: i32::from(import.spec.port.get()),
                target_port: Some(IntOrString::Int(i32::from(target))),
                ..Default::default()
            }]),
            selector: in_system.then(|| world.dataplane_labels.clone()),
            ..Default::default()
        }),
        status: None,
    }
}

fn import_endpoint_slice(world: &World, import: &KubeImport, target: u16) -> EndpointSlice {
    let mut addresses = world.dataplane_addresses.clone();
    addresses.sort();
    // One slice holds one address family; clusters are single-stack far more often than not.
    let ipv6 = addresses.first().is_some_and(IpAddr::is_ipv6);
    let extra = BTreeMap::from([
        (
            "kubernetes.io/service-name".to_string(),
            name_of(&import.metadata).to_string(),
        ),
        (
            "endpointslice.kubernetes.io/managed-by".to_string(),
            ENDPOINT_SLICE_MANAGER.to_string(),
        ),
    ]);
    EndpointSlice {
        metadata: managed_meta(import, extra),
        address_type: if ipv6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: addresses
            .iter()
            .filter(|a| a.is_ipv6() == ipv6)
            .map(|a| Endpoint {
                addresses: vec![a.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(PORT_NAME.into()),
            protocol: Some("TCP".into()),
            port: Some(i32::from(target)),
            ..Default::default()
        }]),
    }
}

/// Metadata of an object made for `import`: its name and namespace, the managed labels, and the
/// import as owner so that Kubernetes removes it with the import even if the controller is down.
fn managed_meta(import: &KubeImport, extra_labels: BTreeMap<String, String>) -> ObjectMeta {
    let mut labels = extra_labels;
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(IMPORT_LABEL.into(), name_of(&import.metadata).into());
    ObjectMeta {
        name: import.metadata.name.clone(),
        namespace: import.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: import.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

fn is_managed(meta: &ObjectMeta) -> bool {
    let labels = meta.labels.as_ref();
    labels
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .map(String::as_str)
        == Some(MANAGED_BY)
        && labels.is_some_and(|l| l.contains_key(IMPORT_LABEL))
}

fn is_adoptable(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(ADOPT_LABEL))
        .is_some_and(|v| v == "true")
}

/// Whether `existing` already has everything `desired` sets. Fields the API server fills in
/// (cluster IP, session affinity, …) are not compared.
fn service_matches(existing: &Service, desired: &Service) -> bool {
    let (Some(have), Some(want)) = (&existing.spec, &desired.spec) else {
        return false;
    };
    let ports = |s: &ServiceSpec| {
        s.ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone(),
                    p.port,
                    p.target_port.clone(),
                    p.protocol.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    labels_include(&existing.metadata, &desired.metadata)
        && owners(&existing.metadata) == owners(&desired.metadata)
        && have.type_.as_deref().unwrap_or("ClusterIP") == "ClusterIP"
        && have.selector == want.selector
        && ports(have) == ports(want)
}

fn slice_matches(existing: &EndpointSlice, desired: &EndpointSlice) -> bool {
    let addresses = |s: &EndpointSlice| {
        s.endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses.clone(),
                    e.conditions.as_ref().and_then(|c| c.ready),
                )
            })
            .collect::<Vec<_>>()
    };
    labels_include(&existing.metadata, &desired.metadata)
        && existing.address_type == desired.address_type
        && addresses(existing) == addresses(desired)
        && existing.ports == desired.ports
}

fn labels_include(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let have = existing.labels.clone().unwrap_or_default();
    desired
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| have.get(k) == Some(v))
}

fn owners(meta: &ObjectMeta) -> Vec<OwnerReference> {
    meta.owner_references.clone().unwrap_or_default()
}

/// Oldest first; ties (and objects without a creation time) by namespace and name, so that the
/// outcome never depends on the order the API server listed them in.
fn sorted<K: Resource>(objects: &[K]) -> Vec<&K> {
    let mut v: Vec<&K> = objects.iter().collect();
    v.sort_by_key(|o| {
        let m = o.meta();
        (
            m.creation_timestamp.as_ref().map(|t| t.0),
            namespace_of(m).to_string(),
            name_of(m).to_string(),
        )
    });
    v
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or_default()
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn key_of(meta: &ObjectMeta) -> String {
    format!("{}/{}", namespace_of(meta), name_of(meta))
}
