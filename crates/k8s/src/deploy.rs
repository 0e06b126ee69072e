//! The Kubernetes objects that deploy one peer: namespace, certificate Secret, least-privilege
//! RBAC, the control-plane and data-plane Deployments, the Services between them and the
//! peer-port Service, and the custom resource definitions. Pure: the CLI writes them to files
//! or applies them ([`Manifest::to_dynamic`] and [`Manifest::api_resource`] say what to send
//! where, [`deletion_order`] what undoing a deployment deletes).

use std::collections::BTreeMap;

use clusterlink_api::kubernetes::crds;
use clusterlink_api::rest::{HEALTHZ_PATH, METRICS_PATH};
use clusterlink_api::validation::{
    check_dns_label, check_dns_name, check_label_key, check_label_value,
};
use clusterlink_dataplane::ops::{DEFAULT_OPS_PORT, READYZ_PATH};
use clusterlink_dataplane::process::{SECRET_CA, SECRET_CERT, SECRET_DIR, SECRET_KEY};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, Namespace, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretVolumeSource, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, DynamicObject};
use serde::Serialize;

/// The name of the operations port (probes, metrics) in both pods.
pub const OPS_PORT_NAME: &str = "metrics";
/// Where a peer is deployed unless told otherwise, as in the established ClusterLink.
pub const DEFAULT_NAMESPACE: &str = clusterlink_api::SYSTEM_NAMESPACE;
/// The registry images are pulled from unless told otherwise.
pub const DEFAULT_REGISTRY: &str = "ghcr.io/clusterlink-rs";
/// The image holding every ClusterLink binary.
pub const IMAGE_NAME: &str = "clusterlink";
/// The port other sites reach unless told otherwise: the one port of the peer protocol.
pub const DEFAULT_INGRESS_PORT: u16 = clusterlink_dataplane::tunnel::PEER_PORT;
/// The data plane's peer port inside its pod: unprivileged, so the container needs no
/// capability to bind it; the peer-port Service maps the public port to it.
pub const DATAPLANE_PEER_PORT: u16 = clusterlink_dataplane::cmd::DEFAULT_PEER_PORT;
/// Where the control plane serves snapshots to the data-plane replicas.
pub const SNAPSHOT_PORT: u16 = 8444;
/// Kubernetes' NodePort range: an ingress port for a NodePort Service must lie in it.
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

pub const CONTROLPLANE: &str = "cl-controlplane";
pub const DATAPLANE: &str = "cl-dataplane";
/// The peer-port Service: what other sites' Peer objects point at.
pub const PEER_SERVICE: &str = "clusterlink";
pub const TLS_SECRET: &str = "cl-peer-tls";
/// On every object deploy makes: `clusterlink delete peer` finds them by it.
pub const PEER_LABEL: &str = "clusterlink.net/peer";

/// The node port used when `--ingress NodePort` is given no port.
pub const DEFAULT_NODE_PORT: u16 = 30443;

/// How other sites reach the peer port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    LoadBalancer,
    NodePort,
    /// A ClusterIP Service only: reach it through your own ingress or tunnel.
    None,
}

impl Ingress {
    /// The port other sites reach when none is given.
    pub fn default_port(self) -> u16 {
        match self {
            Ingress::NodePort => DEFAULT_NODE_PORT,
            Ingress::LoadBalancer | Ingress::None => DEFAULT_INGRESS_PORT,
        }
    }
}

impl std::str::FromStr for Ingress {
    type Err = String;
    fn from_str(s: &str) -> Result<Ingress, String> {
        match s.to_ascii_lowercase().as_str() {
            "loadbalancer" => Ok(Ingress::LoadBalancer),
            "nodeport" => Ok(Ingress::NodePort),
            "none" => Ok(Ingress::None),
            _ => Err(format!(
                "unknown ingress {s:?}: use LoadBalancer, NodePort or none"
            )),
        }
    }
}

/// Everything `deploy peer` needs.
#[derive(Debug, Clone)]
pub struct PeerDeployment {
    pub name: String,
    pub namespace: String,
    pub ingress: Ingress,
    pub ingress_port: u16,
    pub dataplane_replicas: u16,
    /// The peer's own labels (what its policies match as `peer.clusterlink.net/labels.*`).
    pub labels: BTreeMap<String, String>,
    pub registry: String,
    pub tag: String,
    /// PEM: the fabric CA certificate, the peer's certificate and its key.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Turn on the Multi-Cluster Services API (`crate::mcs`): the control plane's flag and its
    /// rights on ServiceExports and ServiceImports. The API's CRDs are installed separately.
    pub mcs_api: bool,
    /// Add a Service over both components' operations ports and a Prometheus Operator
    /// `ServiceMonitor` that scrapes it (its CRD comes with the operator).
    pub service_monitor: bool,
}

/// The Service over the operations ports of a peer's pods, which a ServiceMonitor selects.
pub const METRICS_SERVICE: &str = "cl-metrics";
/// How often the ServiceMonitor asks Prometheus to scrape: the gateway's counters move by the
/// second, and the dashboard's panels are per minute.
pub const SCRAPE_INTERVAL: &str = "30s";

/// A Prometheus Operator ServiceMonitor: only the fields ClusterLink writes.
#[derive(kube::CustomResource, Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub namespace_selector: NamespaceSelector,
    pub endpoints: Vec<MonitorEndpoint>,
}

#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    pub match_names: Vec<String>,
}

#[derive(Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitorEndpoint {
    pub port: String,
    pub path: String,
    pub interval: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeployError {
    #[error("--name {0:?}: {1}")]
    Name(String, String),
    #[error("--namespace {0:?}: {1}")]
    Namespace(String, String),
    #[error("--label {0:?}: {1}")]
    Label(String, String),
    #[error(
        "--ingress-port {port} is outside the NodePort range 30000-32767 that --ingress NodePort needs"
    )]
    NodePortRange { port: u16 },
    #[error("--ingress-port must be 1-65535")]
    ZeroPort,
    #[error("--dataplane-replicas must be at least 1")]
    NoReplicas,
}

/// One object of a deployment, in apply order.
// A deployment is about fifteen objects, built once: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Manifest {
    CustomResourceDefinition(CustomResourceDefinition),
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    Secret(Secret),
    Service(Service),
    Deployment(Deployment),
    ServiceMonitor(ServiceMonitor),
}

/// Runs `$m!(object, Type, cluster|namespaced)` for the manifest's variant.
macro_rules! each_manifest {
    ($manifest:expr, $m:ident) => {
        match $manifest {
            Manifest::CustomResourceDefinition(o) => {
                $m!(o, CustomResourceDefinition, cluster)
            }
            Manifest::Namespace(o) => $m!(o, Namespace, cluster),
            Manifest::ServiceAccount(o) => $m!(o, ServiceAccount, namespaced),
            Manifest::ClusterRole(o) => $m!(o, ClusterRole, cluster),
            Manifest::ClusterRoleBinding(o) => $m!(o, ClusterRoleBinding, cluster),
            Manifest::Role(o) => $m!(o, Role, namespaced),
            Manifest::RoleBinding(o) => $m!(o, RoleBinding, namespaced),
            Manifest::Secret(o) => $m!(o, Secret, namespaced),
            Manifest::Service(o) => $m!(o, Service, namespaced),
            Manifest::Deployment(o) => $m!(o, Deployment, namespaced),
            Manifest::ServiceMonitor(o) => $m!(o, ServiceMonitor, namespaced),
        }
    };
}

impl Manifest {
    pub fn kind(&self) -> &'static str {
        match self {
            Manifest::CustomResourceDefinition(_) => "CustomResourceDefinition",
            Manifest::Namespace(_) => "Namespace",
            Manifest::ServiceAccount(_) => "ServiceAccount",
            Manifest::ClusterRole(_) => "ClusterRole",
            Manifest::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Manifest::Role(_) => "Role",
            Manifest::RoleBinding(_) => "RoleBinding",
            Manifest::Secret(_) => "Secret",
            Manifest::Service(_) => "Service",
            Manifest::Deployment(_) => "Deployment",
            Manifest::ServiceMonitor(_) => "ServiceMonitor",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Manifest::CustomResourceDefinition(o) => &o.metadata,
            Manifest::Namespace(o) => &o.metadata,
            Manifest::ServiceAccount(o) => &o.metadata,
            Manifest::ClusterRole(o) => &o.metadata,
            Manifest::ClusterRoleBinding(o) => &o.metadata,
            Manifest::Role(o) => &o.metadata,
            Manifest::RoleBinding(o) => &o.metadata,
            Manifest::Secret(o) => &o.metadata,
            Manifest::Service(o) => &o.metadata,
            Manifest::Deployment(o) => &o.metadata,
            Manifest::ServiceMonitor(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// Whether the object's kind lives in namespaces (else it is cluster-scoped).
    pub fn namespaced(&self) -> bool {
        macro_rules! namespaced {
            ($obj:expr, $ty:ty, cluster) => {{
                let _ = $obj;
                false
            }};
            ($obj:expr, $ty:ty, namespaced) => {{
                let _ = $obj;
                true
            }};
        }
        each_manifest!(self, namespaced)
    }

    /// The group, version, kind and plural of the object's kind, as the API server's paths use
    /// them: known from the type, without asking the server.
    pub fn api_resource(&self) -> ApiResource {
        macro_rules! api_resource {
            ($obj:expr, $ty:ty, $scope:ident) => {{
                let _ = $obj;
                ApiResource::erase::<$ty>(&())
            }};
        }
        each_manifest!(self, api_resource)
    }

    /// The object as an untyped Kubernetes object: the same JSON the typed object serializes to.
    pub fn to_dynamic(&self) -> Result<DynamicObject, serde_json::Error> {
        serde_json::to_value(self).and_then(serde_json::from_value)
    }
}

/// What undoing a deployment deletes, in order: the reverse of the order the manifests are
/// applied in. Custom resource definitions are kept unless `with_crds`: deleting one deletes every
/// object of its kind in the whole cluster, including other peers' and users' imports and
/// exports.
pub fn deletion_order(manifests: &[Manifest], with_crds: bool) -> Vec<&Manifest> {
    manifests
        .iter()
        .rev()
        .filter(|m| with_crds || !matches!(m, Manifest::CustomResourceDefinition(_)))
        .collect()
}

impl PeerDeployment {
    pub fn check(&self) -> Result<(), DeployError> {
        // A peer's name is a DNS name (its certificate's) and a label value (it selects the
        // peer's pods), so at most 63 characters.
        check_dns_name(&self.name)
            .and_then(|()| check_label_value(&self.name))
            .map_err(|e| DeployError::Name(self.name.clone(), e))?;
        check_dns_label(&self.namespace)
            .map_err(|e| DeployError::Namespace(self.namespace.clone(), e))?;
        for (k, v) in &self.labels {
            check_label_key(k)
                .and_then(|()| check_label_value(v))
                .map_err(|e| DeployError::Label(format!("{k}={v}"), e))?;
        }
        if self.ingress_port == 0 {
            return Err(DeployError::ZeroPort);
        }
        if self.ingress == Ingress::NodePort && !NODE_PORTS.contains(&self.ingress_port) {
            return Err(DeployError::NodePortRange {
                port: self.ingress_port,
            });
        }
        if self.dataplane_replicas == 0 {
            return Err(DeployError::NoReplicas);
        }
        Ok(())
    }

    fn image(&self) -> String {
        format!(
            "{}/{IMAGE_NAME}:{}",
            self.registry.trim_end_matches('/'),
            self.tag
        )
    }

    /// Labels every object carries; the pods' selectors add the component.
    fn labels(&self, component: Option<&str>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (
                "app.kubernetes.io/part-of".to_string(),
                "clusterlink".to_string(),
            ),
            (PEER_LABEL.to_string(), self.name.clone()),
        ]);
        if let Some(c) = component {
            labels.insert("app.kubernetes.io/name".into(), c.into());
            labels.insert("app.kubernetes.io/instance".into(), self.name.clone());
        }
        labels
    }

    /// Labels that select the data-plane pods (also the controller's `--dataplane-selector`).
    pub fn dataplane_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), DATAPLANE.to_string()),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
        ])
    }

    fn meta(&self, name: &str, namespaced: bool, component: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: namespaced.then(|| self.namespace.clone()),
            labels: Some(self.labels(component)),
            ..Default::default()
        }
    }

    /// Cluster-scoped names are shared by every peer in the cluster: they carry the namespace.
    fn cluster_name(&self) -> String {
        format!("clusterlink-controlplane-{}", self.namespace)
    }

    /// Every object, in the order to apply them (definitions and RBAC before the pods).
    pub fn manifests(&self) -> Result<Vec<Manifest>, DeployError> {
        self.check()?;
        let mut out: Vec<Manifest> = crds()
            .into_iter()
            .map(|mut c| {
                c.metadata.labels = Some(BTreeMap::from([(
                    "app.kubernetes.io/part-of".into(),
                    "clusterlink".into(),
                )]));
                Manifest::CustomResourceDefinition(c)
            })
            .collect();
        out.push(Manifest::Namespace(Namespace {
            metadata: self.meta(&self.namespace, false, None),
            ..Default::default()
        }));
        out.extend(self.rbac());
        out.push(Manifest::Secret(Secret {
            metadata: self.meta(TLS_SECRET, true, None),
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (
                    SECRET_CA.into(),
                    ByteString(self.ca_pem.clone().into_bytes()),
                ),
                (
                    SECRET_CERT.into(),
                    ByteString(self.cert_pem.clone().into_bytes()),
                ),
                (
                    SECRET_KEY.into(),
                    ByteString(self.key_pem.clone().into_bytes()),
                ),
            ])),
            ..Default::default()
        }));
        out.push(Manifest::Service(self.snapshot_service()));
        out.push(Manifest::Service(self.peer_service()));
        out.push(Manifest::Deployment(self.controlplane()));
        out.push(Manifest::Deployment(self.dataplane()));
        if self.service_monitor {
            out.push(Manifest::Service(self.metrics_service()));
            out.push(Manifest::ServiceMonitor(self.monitor()));
        }
        Ok(out)
    }

    /// Labels of the metrics Service, which its ServiceMonitor selects.
    fn metrics_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels(None);
        labels.insert("app.kubernetes.io/component".into(), "metrics".into());
        labels
    }

    /// A headless Service over the operations port of every pod of the peer (both components).
    fn metrics_service(&self) -> Service {
        let mut metadata = self.meta(METRICS_SERVICE, true, None);
        metadata.labels = Some(self.metrics_labels());
        Service {
            metadata,
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(self.labels(None)),
                ports: Some(vec![ServicePort {
                    name: Some(OPS_PORT_NAME.into()),
                    port: i32::from(DEFAULT_OPS_PORT),
                    target_port: Some(IntOrString::String(OPS_PORT_NAME.into())),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn monitor(&self) -> ServiceMonitor {
        let mut monitor = ServiceMonitor::new(
            METRICS_SERVICE,
            ServiceMonitorSpec {
                selector: LabelSelector {
                    match_labels: Some(self.metrics_labels()),
                    ..Default::default()
                },
                namespace_selector: NamespaceSelector {
                    match_names: vec![self.namespace.clone()],
                },
                endpoints: vec![MonitorEndpoint {
                    port: OPS_PORT_NAME.into(),
                    path: METRICS_PATH.into(),
                    interval: SCRAPE_INTERVAL.into(),
                }],
            },
        );
        monitor.metadata = self.meta(METRICS_SERVICE, true, None);
        monitor
    }

    fn rbac(&self) -> Vec<Manifest> {
        let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let read = ["get", "list", "watch"];
        let write = ["get", "list", "watch", "create", "patch", "delete"];
        let subject = vec![Subject {
            kind: "ServiceAccount".into(),
            name: CONTROLPLANE.into(),
            namespace: Some(self.namespace.clone()),
            ..Default::default()
        }];
        let cluster = self.cluster_name();
        vec![
            Manifest::ServiceAccount(ServiceAccount {
                metadata: self.meta(CONTROLPLANE, true, Some(CONTROLPLANE)),
                ..Default::default()
            }),
            // The data plane reads nothing from the API server: its configuration arrives over
            // the snapshot stream.
            Manifest::ServiceAccount(ServiceAccount {
                metadata: self.meta(DATAPLANE, true, Some(DATAPLANE)),
                automount_service_account_token: Some(false),
                ..Default::default()
            }),
            // Cluster-wide: imports and exports live in users' namespaces, and a client pod may
            // be anywhere. Writes are limited to what the controller manages there.
            Manifest::ClusterRole(ClusterRole {
                metadata: self.meta(&cluster, false, Some(CONTROLPLANE)),
                rules: Some(
                    vec![
                        rule(
                            &["clusterlink.net"],
                            &[
                                "exports",
                                "imports",
                                "accesspolicies",
                                "privilegedaccesspolicies",
                            ],
                            &read,
                        ),
                        // Patch: target ports written back; create and delete: mirrored Imports.
                        rule(
                            &["clusterlink.net"],
                            &["imports"],
                            &["create", "patch", "delete"],
                        ),
                        rule(
                            &["clusterlink.net"],
                            &[
                                "imports/status",
                                "exports/status",
                                "accesspolicies/status",
                                "privilegedaccesspolicies/status",
                            ],
                            &["get", "patch"],
                        ),
                        rule(&[""], &["services"], &write),
                        rule(&["discovery.k8s.io"], &["endpointslices"], &write),
                        rule(&[""], &["pods"], &read),
                    ]
                    .into_iter()
                    .chain(
                        self.mcs_api
                            .then(|| rule(&["multicluster.x-k8s.io"], &["serviceexports"], &read)),
                    )
                    .chain(
                        self.mcs_api
                            .then(|| rule(&["multicluster.x-k8s.io"], &["serviceimports"], &write)),
                    )
                    .collect(),
                ),
                ..Default::default()
            }),
            Manifest::ClusterRoleBinding(ClusterRoleBinding {
                metadata: self.meta(&cluster, false, Some(CONTROLPLANE)),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: cluster.clone(),
                },
                subjects: Some(subject.clone()),
            }),
            // Peers are read (and their status written) in the peer's own namespace only.
            Manifest::Role(Role {
                metadata: self.meta(CONTROLPLANE, true, Some(CONTROLPLANE)),
                rules: Some(vec![
                    rule(&["clusterlink.net"], &["peers"], &read),
                    rule(&["clusterlink.net"], &["peers/status"], &["get", "patch"]),
                ]),
            }),
            Manifest::RoleBinding(RoleBinding {
                metadata: self.meta(CONTROLPLANE, true, Some(CONTROLPLANE)),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: CONTROLPLANE.into(),
                },
                subjects: Some(subject),
            }),
        ]
    }

    fn snapshot_service(&self) -> Service {
        Service {
            metadata: self.meta(CONTROLPLANE, true, Some(CONTROLPLANE)),
            spec: Some(ServiceSpec {
                selector: Some(self.labels(Some(CONTROLPLANE))),
                ports: Some(vec![service_port(
                    "snapshots",
                    SNAPSHOT_PORT,
                    SNAPSHOT_PORT,
                    None,
                )]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn peer_service(&self) -> Service {
        let (type_, port, node_port) = match self.ingress {
            Ingress::LoadBalancer => ("LoadBalancer", self.ingress_port, None),
            // The established CLI's meaning: with NodePort, --ingress-port is the node port.
            Ingress::NodePort => ("NodePort", DEFAULT_INGRESS_PORT, Some(self.ingress_port)),
            Ingress::None => ("ClusterIP", self.ingress_port, None),
        };
        Service {
            metadata: self.meta(PEER_SERVICE, true, Some(DATAPLANE)),
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                selector: Some(self.dataplane_selector()),
                ports: Some(vec![service_port(
                    "peer",
                    port,
                    DATAPLANE_PEER_PORT,
                    node_port,
                )]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(&self, component: &str, args: Vec<String>, port: (&str, u16)) -> Container {
        let mut args = args;
        args.push(format!("--ops-address=0.0.0.0:{DEFAULT_OPS_PORT}"));
        let http_get = |path: &str| HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(OPS_PORT_NAME.into()),
            ..Default::default()
        };
        let container_port = |(name, port): (&str, u16)| ContainerPort {
            name: Some(name.into()),
            container_port: i32::from(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        };
        Container {
            name: component.into(),
            image: Some(self.image()),
            command: Some(vec![format!("/usr/local/bin/{component}")]),
            args: Some(args),
            ports: Some(vec![
                container_port(port),
                container_port((OPS_PORT_NAME, DEFAULT_OPS_PORT)),
            ]),
            // Ready once it has what it serves from: a replica its first snapshot, the control
            // plane its first pass over the cluster.
            readiness_probe: Some(Probe {
                http_get: Some(http_get(READYZ_PATH)),
                period_seconds: Some(5),
                ..Default::default()
            }),
            // A process whose task died exits by itself; this catches one that is wedged (its
            // runtime, or the controller's loop, stopped making progress). Three misses in a
            // row, so a pause of the node does not restart it.
            liveness_probe: Some(Probe {
                http_get: Some(http_get(HEALTHZ_PATH)),
                period_seconds: Some(10),
                timeout_seconds: Some(3),
                failure_threshold: Some(3),
                ..Default::default()
            }),
            resources: Some(self.resources(component)),
            volume_mounts: Some(vec![VolumeMount {
                name: "tls".into(),
                // Where both containers find the certificate Secret.
                mount_path: SECRET_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            }]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Requests what a small site uses at rest, and limits memory well above what the
    /// measured worst case needs (a control plane with 1,000 imports and 5,000 pods; a replica
    /// with thousands of open tunnels), so a leak is stopped before it starves the node. The data
    /// plane's CPU is not limited: throttling a relay adds latency to every tunnel.
    fn resources(&self, component: &str) -> ResourceRequirements {
        let quantities = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect::<BTreeMap<_, _>>()
        };
        let (requests, limits) = if component == CONTROLPLANE {
            (
                quantities(&[("cpu", "100m"), ("memory", "64Mi")]),
                quantities(&[("cpu", "1"), ("memory", "512Mi")]),
            )
        } else {
            (
                quantities(&[("cpu", "250m"), ("memory", "64Mi")]),
                quantities(&[("memory", "1Gi")]),
            )
        };
        ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }
    }

    fn pod(&self, component: &str, container: Container, token: bool) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(self.labels(Some(component))),
                // The convention Prometheus' Kubernetes pod discovery is usually configured with.
                annotations: Some(BTreeMap::from([
                    ("prometheus.io/scrape".to_string(), "true".to_string()),
                    (
                        "prometheus.io/port".to_string(),
                        DEFAULT_OPS_PORT.to_string(),
                    ),
                    ("prometheus.io/path".to_string(), METRICS_PATH.to_string()),
                ])),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                service_account_name: Some(component.into()),
                automount_service_account_token: Some(token),
                containers: vec![container],
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(65532),
                    ..Default::default()
                }),
                volumes: Some(vec![Volume {
                    name: "tls".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(TLS_SECRET.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn tls_args(&self) -> Vec<String> {
        vec![
            format!("--ca={SECRET_DIR}/{SECRET_CA}"),
            format!("--cert={SECRET_DIR}/{SECRET_CERT}"),
            format!("--key={SECRET_DIR}/{SECRET_KEY}"),
        ]
    }

    fn label_args(&self) -> Vec<String> {
        self.labels
            .iter()
            .map(|(k, v)| format!("--label={k}={v}"))
            .collect()
    }

    fn controlplane(&self) -> Deployment {
        let selector: Vec<String> = self
            .dataplane_selector()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut args = self.tls_args();
        args.extend([
            format!("--namespace={}", self.namespace),
            format!("--snapshot-address=0.0.0.0:{SNAPSHOT_PORT}"),
            format!("--dataplane-selector={}", selector.join(",")),
            format!("--dataplane-peer-port={DATAPLANE_PEER_PORT}"),
        ]);
        if self.mcs_api {
            args.push("--mcs-api".into());
        }
        let container = self.container(CONTROLPLANE, args, ("snapshots", SNAPSHOT_PORT));
        Deployment {
            metadata: self.meta(CONTROLPLANE, true, Some(CONTROLPLANE)),
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                // One controller at a time: a rolling update would briefly run two writers.
                strategy: Some(DeploymentStrategy {
                    type_: Some("Recreate".into()),
                    ..Default::default()
                }),
                selector: LabelSelector {
                    match_labels: Some(self.labels(Some(CONTROLPLANE))),
                    ..Default::default()
                },
                template: self.pod(CONTROLPLANE, container, true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn dataplane(&self) -> Deployment {
        let mut args = self.tls_args();
        args.extend([
            format!(
                "--control-plane={CONTROLPLANE}.{}.svc:{SNAPSHOT_PORT}",
                self.namespace
            ),
            format!("--peer-address=0.0.0.0:{DATAPLANE_PEER_PORT}"),
        ]);
        args.extend(self.label_args());
        let container = self.container(DATAPLANE, args, ("peer", DATAPLANE_PEER_PORT));
        Deployment {
            metadata: self.meta(DATAPLANE, true, Some(DATAPLANE)),
            spec: Some(DeploymentSpec {
                replicas: Some(i32::from(self.dataplane_replicas)),
                selector: LabelSelector {
                    match_labels: Some(self.labels(Some(DATAPLANE))),
                    ..Default::default()
                },
                template: self.pod(DATAPLANE, container, false),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn service_port(name: &str, port: u16, target: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        protocol: Some("TCP".into()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(target))),
        node_port: node_port.map(i32::from),
        ..Default::default()
    }
}

/// The manifests as one multi-document YAML stream, as `kubectl apply -f` reads it.
pub fn to_yaml(manifests: &[Manifest]) -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::new();
    for m in manifests {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(m)?);
    }
    Ok(out)
}

/// `Kind namespace/name`, or `Kind name` for cluster-scoped objects.
pub fn describe(m: &Manifest) -> String {
    match m.namespace() {
        Some(ns) => format!("{} {ns}/{}", m.kind(), m.name()),
        None => format!("{} {}", m.kind(), m.name()),
    }
}
